#!/usr/bin/env bash
# Installs what building the WebAssembly transforms needs, idempotently: the Rust wasm target
# (Rust guests), and for the C example Debian's clang + wasi-libc and wit-bindgen's C generator.
# Safe to run again: each step checks first.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have rustup && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

missing=()
for p in make clang lld wasi-libc libclang-rt-dev-wasm32; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

WIT_BINDGEN_VERSION=0.63.0
if ! wit-bindgen --version 2>/dev/null | grep -q "$WIT_BINDGEN_VERSION"; then
  cargo install wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked \
    --target-dir "${TMPDIR:-/tmp}/wit-bindgen-build"
fi
