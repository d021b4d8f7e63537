#!/usr/bin/env bash
# Builds the C tools (each *.c here is one component) into ../dist/, with
# clang and wasi-libc (../build.sh installs them) and a small Rust helper
# that does what the wit-bindgen and wasm-tools CLIs would.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --manifest-path wasm-helper/Cargo.toml
helper=wasm-helper/target/release/wasm-helper
mkdir -p build ../dist
"$helper" bindings ../../wit tool build/gen
for src in *.c; do
  name="${src%.c}"
  clang --target=wasm32-wasi -Os -mexec-model=reactor -Wall -Wextra -Werror -Wno-unused-function \
    -Ibuild/gen -I. -Wl,--strip-all \
    build/gen/tool.c "$src" build/gen/tool_component_type.o -o "build/$name.core.wasm"
  "$helper" component "build/$name.core.wasm" "../dist/$name.wasm"
done
