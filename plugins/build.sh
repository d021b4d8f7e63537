#!/usr/bin/env bash
# Builds every tool in this folder into plugins/dist/: Rust (wasm32-wasip2),
# Python (componentize-py), JavaScript (componentize-js) and C (clang +
# wasi-libc). Installs the toolchains it needs on first use, at pinned
# versions, and rebuilds a component only when its sources changed.
# `./build.sh rust` (or python, js, c) builds one language.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
mkdir -p dist
langs=${*:-rust python js c}

COMPONENTIZE_PY=0.25.1
C_PACKAGES="clang lld wasi-libc libclang-rt-dev-wasm32"

say() { echo "build.sh: $*" >&2; }

# True when $1 is missing or older than any of the other paths.
stale() {
  local out=$1
  shift
  [ -e "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -print -quit 2>/dev/null)" ]
}

# The Rust tools: every folder here with a Cargo.toml.
rust_tools() {
  for manifest in */Cargo.toml; do
    if [ -e "$manifest" ]; then dirname "$manifest"; fi
  done
}

build_rust() {
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  # The component is named after the crate and found by its folder: name
  # the rule a tool breaks before cargo says something harder to read.
  local name crate broken=0
  for name in $(rust_tools); do
    crate=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$name/Cargo.toml" | head -1)
    if [ "$crate" != "$name" ]; then
      say "plugins/$name: the crate is named '$crate'; a Rust tool's folder must equal its crate's name (rename one)"
      broken=1
    elif [[ "$name" == *-* ]]; then
      say "plugins/$name: a Rust tool's name may not contain '-' (cargo names the component ${name//-/_}.wasm); use '_'"
      broken=1
    elif ! grep -q "\"$name\"" Cargo.toml; then
      say "plugins/$name is not a member of the plugins workspace: add \"$name\" to members in plugins/Cargo.toml"
      broken=1
    fi
  done
  if [ "$broken" = 1 ] || ! cargo build --release --target wasm32-wasip2 --quiet; then
    # A failed build leaves no component behind that no longer matches
    # its sources.
    for name in $(rust_tools); do rm -f "dist/$name.wasm"; done
    say "rust: build failed"
    return 1
  fi
  for name in $(rust_tools); do
    cp "target/wasm32-wasip2/release/$name.wasm" dist/
  done
}

# Every component the sources here make, one name a line.
expected() {
  rust_tools
  for dir in python/*/; do
    if [ -f "$dir/app.py" ]; then basename "$dir"; fi
  done
  for src in js/*.js c/*.c; do
    if [ -e "$src" ]; then basename "${src%.*}"; fi
  done
}

# A component in dist/ whose sources are gone is removed: a deleted or
# renamed tool must not keep being loadable.
prune() {
  local have want
  want=$(expected)
  for have in dist/*.wasm; do
    [ -e "$have" ] || continue
    if ! grep -qx "$(basename "$have" .wasm)" <<<"$want"; then
      say "removing dist/$(basename "$have"): no tool's sources make it any more"
      rm -f "$have"
    fi
  done
}

build_python() {
  local venv=python/.venv
  if [ "$("$venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" != "$COMPONENTIZE_PY" ]; then
    say "installing componentize-py $COMPONENTIZE_PY into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
  fi
  for dir in python/*/; do
    local name
    name=$(basename "$dir")
    [ -f "$dir/app.py" ] || continue
    if stale "dist/$name.wasm" "$dir"/*.py ../wit build.sh; then
      say "python: $name"
      rm -f "dist/$name.wasm"
      (cd "$dir" && "$here/$venv/bin/componentize-py" -d ../../../wit -w tool componentize app \
        -o "$here/dist/$name.wasm" >/dev/null)
    fi
  done
}

build_js() {
  # The bundled tooling cannot read paths outside the project: keep a copy
  # of the WIT inside it.
  rm -rf js/wit && cp -r ../wit js/wit
  if ! cmp -s js/package-lock.json js/node_modules/.installed-lock.json; then
    say "installing componentize-js (npm ci, versions from js/package-lock.json)"
    (cd js && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.installed-lock.json)
  fi
  for src in js/*.js; do
    [ -e "$src" ] || continue
    local name
    name=$(basename "$src" .js)
    if stale "dist/$name.wasm" "$src" ../wit build.sh; then
      say "js: $name"
      rm -f "dist/$name.wasm"
      (cd js && npx --no-install componentize-js "$name.js" --wit wit -n tool -o "$here/dist/$name.wasm" >/dev/null)
    fi
  done
}

build_c() {
  if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null || [ ! -e /usr/lib/wasm32-wasi/libc.a ]; then
    say "installing $C_PACKAGES (Debian packages)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $C_PACKAGES >/dev/null
  fi
  c/build.sh
}

prune
for lang in $langs; do
  case $lang in
    rust | python | js | c) "build_$lang" ;;
    *) say "unknown language '$lang' (rust, python, js, c)"; exit 1 ;;
  esac
done
ls dist
