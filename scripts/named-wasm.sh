#!/usr/bin/env bash
# Writes OUT: the release wasm LIB (cargo's output, before wasm-bindgen) run
# through wasm-bindgen and the package's wasm-opt passes with function names
# kept (-g), so twiggy can name what the shipped wasm holds: the same code as
# the package's wasm, which has lost its names. Used by build-pkg.sh and
# size-floor.sh. Usage: scripts/named-wasm.sh LIB OUT [TARGET]
set -euo pipefail
lib=$1
out=$2
target=${3:-web}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wasm-bindgen --keep-debug --target "$target" --out-dir "$tmp" "$lib" >/dev/null
name=$(basename "$lib" .wasm)
wasm-opt --low-memory-unused -Oz --converge --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue -g \
  "$tmp/${name}_bg.wasm" -o "$out" >/dev/null
