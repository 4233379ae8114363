#!/usr/bin/env bash
# Runs the demo: installs what is missing, builds pkg/ with wasm-pack, starts
# the reference server on 127.0.0.1 (PORT, default 8787) and prints the URL.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
NEED_BROWSERS=0 ./scripts/setup.sh
./scripts/build-pkg.sh web
cargo build --release -q -p runstream-server
port=${PORT:-8787}
echo "runstream demo: http://127.0.0.1:$port/   (Ctrl-C to stop)"
exec ./target/release/runstream-server --addr "127.0.0.1:$port" --www www --pkg pkg
