#!/usr/bin/env bash
# Builds every Rust tool in this folder for wasm32-wasip2 into plugins/dist/.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2 --quiet
mkdir -p dist
for wasm in target/wasm32-wasip2/release/*.wasm; do
  cp "$wasm" dist/
done
ls dist
