#!/usr/bin/env bash
# Builds the C tools (each *.c here is one component) into ../dist/, with
# clang and wasi-libc (../build.sh installs them) and a small Rust helper
# that does what the wit-bindgen and wasm-tools CLIs would.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --manifest-path wasm-helper/Cargo.toml
helper=wasm-helper/target/release/wasm-helper
mkdir -p build ../dist
# Generated into a scratch folder and copied over only where it differs,
# so unchanged bindings do not make every tool look stale.
rm -rf build/gen.new
"$helper" bindings ../../wit tool build/gen.new
mkdir -p build/gen
for f in build/gen.new/*; do
  cmp -s "$f" "build/gen/$(basename "$f")" || cp "$f" build/gen/
done
rm -rf build/gen.new
# True when $1 is missing or older than any of the other paths.
stale() {
  local out=$1
  shift
  [ -e "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -print -quit 2>/dev/null)" ]
}

# cJSON (vendor/cjson, MIT) for every tool that wants real JSON: compiled
# once, linked into each (the linker drops it where it is unused). Its own
# warnings are its maintainers'; -Werror is for our code.
if stale build/cjson.o vendor build.sh; then
  clang --target=wasm32-wasi -Os -c vendor/cjson/cJSON.c -o build/cjson.o
fi

for src in *.c; do
  [ -e "$src" ] || continue
  name="${src%.c}"
  # Only when its sources (or the shared headers, bindings, this script)
  # changed.
  stale "../dist/$name.wasm" "$src" ./*.h vendor build/gen ../../wit build.sh || continue
  echo "build.sh: c: $name" >&2
  rm -f "../dist/$name.wasm"
  clang --target=wasm32-wasi -Os -mexec-model=reactor -Wall -Wextra -Werror -Wno-unused-function \
    -Ibuild/gen -I. -Ivendor/cjson -Wl,--strip-all \
    build/gen/tool.c "$src" build/gen/tool_component_type.o build/cjson.o -o "build/$name.core.wasm"
  "$helper" component "build/$name.core.wasm" "../dist/$name.wasm"
done
