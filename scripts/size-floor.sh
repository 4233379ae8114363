#!/usr/bin/env bash
# How small a wasm the core alone can be: builds benches/size-floor (minimal
# #[wasm_bindgen] surfaces over the sans-IO core, no src/web) with exactly
# build-pkg.sh's release settings and prints raw / gzip -9 sizes and the
# twiggy top 10 of each variant (~2 min each on 2 cores; not in the test command).
#   v1      the codec: SSE parser + envelope validation
#   v2      v1 + the reorder buffer and the reducer (snapshots installed)
#   v3      the whole Engine, smallest surface (no stored record, no sends)
#   v3full  v3 + restore, WebSocket, snapshots, sends, storage_record, status
# Usage: scripts/size-floor.sh [VARIANT ...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
crate=benches/size-floor
target_dir=$(pwd)/target/size-floor
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "error: rust-src is needed to rebuild std as build-pkg.sh does (./scripts/setup.sh adds it)" >&2
  exit 1
fi
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(v1 v2 v3 v3full)
for v in "${variants[@]}"; do
  out=$target_dir/out/$v
  rm -rf "$out"
  log=$(mktemp)
  if ! RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort" CARGO_TARGET_DIR="$target_dir" \
    wasm-pack build "$crate" --target web --release --out-dir "$out" -- \
    -Zbuild-std=std,panic_abort --features "$v" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
  raw=$(wc -c <"$out"/floor_bg.wasm)
  gz=$(gzip -9 -c "$out"/floor_bg.wasm | wc -c)
  js=$(gzip -9 -c "$out"/floor.js | wc -c)
  echo "[size-floor $v] wasm ${raw} B raw, ${gz} B gzipped; glue ${js} B gzipped; total $((gz + js)) B"
  if command -v twiggy >/dev/null; then
    scripts/named-wasm.sh "$target_dir"/wasm32-unknown-unknown/release/floor.wasm "$out"/named.wasm
    twiggy top -n 10 "$out"/named.wasm
  fi
done
