#!/usr/bin/env bash
# Builds the npm package into pkg/ (wasm-pack, --target web, release: opt-level z,
# LTO, wasm-opt -Oz) and prints the wasm size raw and gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
target=${1:-web}
out=pkg
[ "$target" = web ] || out="pkg-$target"
log=$(mktemp)
# std is rebuilt from source with panic=immediate-abort: a panic is a trap, so
# none of std's panic and formatting machinery is linked (-9.1 KB gz), and
# -Zlocation-detail=none drops the file/line/column of the panic locations
# that remain in the code (-0.5 KB gz). The
# library code has no panic paths of its own (clippy denies unwrap/expect/panic/
# indexing), so only an allocation failure or an arithmetic trap would ever get
# there. -Zbuild-std is unstable: RUSTC_BOOTSTRAP lets the pinned stable
# toolchain take it (setup.sh adds rust-src; without it, the plain build, said
# in the [pkg] line). Its own target dir, so the flags never invalidate the
# tests' builds.
pkg_target=target/pkg-build
std_build="std rebuilt with panic=immediate-abort"
build_std=(-- -Zbuild-std=std,panic_abort)
rustflags="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none"
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  std_build="WARNING: rust-src is not installed, std not rebuilt (about 9 KB gz larger)"
  build_std=()
  rustflags=""
fi
if ! RUSTC_BOOTSTRAP=1 RUSTFLAGS="$rustflags" CARGO_TARGET_DIR="$pkg_target" \
  wasm-pack build . --target "$target" --release --out-dir "$out" "${build_std[@]}" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
# Short names for the wasm's internal imports and exports, in the wasm and the
# glue together (wasm-bindgen's are up to ~300 characters, written twice).
node scripts/short-names.mjs "$out"
# The raw ABI declarations wasm-bindgen writes for externref use `any`; they are
# internal (InitOutput / *_bg.wasm.d.ts), so type them `unknown` and keep the
# published declarations free of `any`.
sed -i -E '/^ *readonly [A-Za-z0-9_]+: /s/\bany\b/unknown/g' "$out"/runstream.d.ts
[ -f "$out"/runstream_bg.wasm.d.ts ] && sed -i -E 's/\bany\b/unknown/g' "$out"/runstream_bg.wasm.d.ts
if grep -nwE 'any' "$out"/*.d.ts; then
  echo "error: 'any' in $out/*.d.ts" >&2
  exit 1
fi
# Pages with a strict CSP (`script-src 'self' 'wasm-unsafe-eval'`) forbid building
# functions from strings: the glue and the bindings must not need it.
if grep -nE 'new Function|\beval\(' "$out"/runstream.js js/*.js; then
  echo "error: eval-like code in $out/runstream.js or js/ (breaks strict-CSP pages)" >&2
  exit 1
fi
# Framework bindings (plain JS + .d.ts, no framework in the wasm build) and package metadata.
cp js/lazy.js js/lazy.d.ts js/react.js js/react.d.ts js/vue.js js/vue.d.ts "$out"/
# The devtools panel (runstream/devtools, runstream/devtools/react): its own exports, not in the core's size.
cp js/devtools.js js/devtools.d.ts js/devtools-react.js js/devtools-react.d.ts "$out"/
# --target bundler instantiates the wasm on import: its initRunStream has nothing to load.
if [ "$target" = bundler ]; then
  cp js/lazy.bundler.js "$out"/lazy.js
  cp js/lazy.bundler.d.ts "$out"/lazy.d.ts
fi
cp README.md "$out"/README.md
node scripts/package-json.mjs "$out" "$target"
raw=$(wc -c < "$out"/runstream_bg.wasm)
gz=$(gzip -9 -c "$out"/runstream_bg.wasm | wc -c)
js=$(gzip -9 -c "$out"/runstream.js | wc -c)
# wasm-bindgen snippets (js/idb.js) ship beside the glue and load with it.
snippets=$(find "$out"/snippets -name '*.js' 2>/dev/null | sort)
if [ -z "$snippets" ]; then
  echo "error: no snippets in $out/ (js/idb.js must ship with the glue)" >&2
  exit 1
fi
sn=$(cat $snippets | gzip -9 | wc -c)
echo "[pkg] $out/runstream_bg.wasm: ${raw} B raw, ${gz} B gzipped; JS glue ${js} B + snippets ${sn} B gzipped ($std_build)"
# Size breakdown: twiggy needs function names, which the package's wasm has
# lost; scripts/named-wasm.sh rebuilds the same code with names kept (~10 s).
if command -v twiggy >/dev/null; then
  names=$(mktemp -d)
  lib=$pkg_target/wasm32-unknown-unknown/release/runstream.wasm
  if scripts/named-wasm.sh "$lib" "$names"/named.wasm "$target" 2>/dev/null; then
    echo "[pkg] twiggy top 20 (names kept; the \"function names\" subsection is not shipped):"
    twiggy top -n 20 "$names"/named.wasm
    # Errors carry codes and their text is made by concatenation (`message()`):
    # no core::fmt machinery in the wasm (issue 13), and it stays out.
    if twiggy top -n 100000 "$names"/named.wasm | grep -E 'core\[[0-9a-f]+\]::fmt::(write|Formatter)|core::fmt::(write|Formatter)'; then
      echo "error: core::fmt is linked into the wasm (a format!, to_string() or {} of a Display type in library code)" >&2
      rm -rf "$names"
      exit 1
    fi
  else
    echo "[pkg] twiggy: could not build the names-kept copy" >&2
  fi
  rm -rf "$names"
else
  echo "[pkg] twiggy not installed (./scripts/setup.sh installs it): no size breakdown"
fi
