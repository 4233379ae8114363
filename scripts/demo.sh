#!/usr/bin/env bash
# Runs the demo: installs what is missing, builds pkg/ with wasm-pack, starts
# the reference server on 127.0.0.1 (PORT, default 8787) and prints the URL.
#
#   ./scripts/demo.sh           one server, the log in its memory (--store memory)
#   ./scripts/demo.sh --redis   the deployment of docs/DEPLOY.md on loopback: redis-server,
#                               two API replicas on --store redis, a chat worker, and
#                               nginx (deploy/nginx.conf) in front on PORT; replicas on
#                               PORT+1 and PORT+2, Redis on PORT+3. Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
mode=${1:-memory}
case "$mode" in memory | --memory) mode=memory ;; --redis) mode=redis ;; *)
  echo "usage: $0 [--redis]" >&2
  exit 2
  ;;
esac
NEED_BROWSERS=0 ./scripts/setup.sh
./scripts/build-pkg.sh web
cargo build --release -q -p runstream-server
port=${PORT:-8787}
bin=./target/release/runstream-server
if [ "$mode" = memory ]; then
  echo "runstream demo: http://127.0.0.1:$port/   (Ctrl-C to stop)"
  # Local development: no authorization, the demo's admin and chaos routes (never in production: docs/GATEWAY.md).
  exec "$bin" --auth none --dev --addr "127.0.0.1:$port" --www www --pkg pkg
fi

r1=$((port + 1)) r2=$((port + 2)) rp=$((port + 3))
dir=$(mktemp -d /tmp/runstream-demo-XXXXXX)
chmod 755 "$dir" # nginx workers (nobody) reach their temp dirs under it
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port "$rp" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  [ "$(redis-cli -p "$rp" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
store="redis://127.0.0.1:$rp"
for p in "$r1" "$r2"; do
  "$bin" --auth none --dev --addr "127.0.0.1:$p" --store "$store" --replies worker --www www --pkg pkg >"$dir/replica-$p.log" 2>&1 &
  pids+=($!)
done
"$bin" produce --store "$store" --chat-worker >"$dir/chat-worker.log" 2>&1 &
pids+=($!)
# Plain HTTP only: the HTTPS + HTTP/2 lines need a certificate (docs/DEPLOY.md "HTTP/2").
sed -e '/^ *# --- HTTPS/,/^ *# --- end HTTPS/d' \
  -e "s/listen 127.0.0.1:8080;/listen 127.0.0.1:$port;/" \
  -e "s/server 127.0.0.1:8801 /server 127.0.0.1:$r1 /g" \
  -e "s/server 127.0.0.1:8802 /server 127.0.0.1:$r2 /g" deploy/nginx.conf >"$dir/nginx.conf"
nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" -g "daemon off; pid $dir/nginx.pid;" &
pids+=($!)
for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
cat <<EOF
runstream demo behind nginx: http://127.0.0.1:$port/   (Ctrl-C to stop)
  replicas  http://127.0.0.1:$r1/  http://127.0.0.1:$r2/   (--store $store --replies worker)
  redis     $store   chat worker: runstream-server produce --chat-worker
  logs      $dir/
  try: kill one replica mid-run (kill \$(pgrep -f 'addr 127.0.0.1:$r1')): the page resumes on the other.
EOF
wait
