#!/usr/bin/env bash
# Runs every test: formatting, clippy (no-panic lints on library code), native
# tests (core + reference server, the server's on both stores: memory and a
# real redis-server each test starts), the npm package build, browser tests in
# headless Chromium and Firefox and in WebKit (under Xvfb) against the reference server, the TypeScript
# check of the public API, and the end-to-end suites (infra.test.mjs starts its
# own redis-server, replicas and nginx; the reliability and infra suites run
# once more on a 3-master Redis Cluster). Installs what is missing first.
# Ends with one line "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
logs="$root/target/test-logs"
mkdir -p "$logs"

start_all=$(date +%s)
./scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
failures=()

# step NAME CMD...: runs CMD, counts the tests it reports ("test result:" lines of
# cargo / wasm-bindgen-test, "# pass/# fail" of node:test), or 1 check if it reports none.
step() {
  local name=$1; shift
  local log="$logs/$name.log"
  local t0=$(date +%s)
  printf '==> %s\n' "$name"
  "$@" >"$log" 2>&1
  local rc=$?
  local p f
  p=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {if (NR) print s}')
  f=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\2/' | awk '{s+=$1} END {if (NR) print s}')
  if [ -z "$p" ]; then
    p=$(grep -E '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
    f=$(grep -E '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
    if [ "${p:-0}" = 0 ] && [ "${f:-0}" = 0 ]; then
      if [ $rc -eq 0 ]; then p=1; f=0; else p=0; f=1; fi
    fi
  fi
  [ $rc -ne 0 ] && [ "${f:-0}" = 0 ] && f=1
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then
    printf '    ok: %s passed (%ss)\n' "${p:-0}" "$dt"
  else
    failures+=("$name")
    printf '    FAILED (%ss): last lines of %s\n' "$dt" "$log"
    # node:test prints its summary last: show each failing test's own report
    # (name, location, error) first, so a CI log that keeps only the tail says what failed.
    awk '/^ *not ok /{n=30} n>0{print; n--}' "$log" | grep -vE '^\s+at ' | head -n 120 | sed 's/^/    ! /'
    grep -vE '^\s+[0-9]+: |^\s+at ' "$log" | tail -n 40 | sed 's/^/    | /'
  fi
  grep -E '^\[pkg\]' "$log" | sed 's/^/    /'
  echo "${p:-0} ${f:-0} $rc" >"$logs/$name.result"
}

# step_bg NAME CMD...: the same step in the background, for suites that mostly
# wait (idle holds, heartbeat timeouts) on servers of their own; join_bg prints
# each one's report in the order started and counts it. Two cores: only suites
# that wait, never two CPU-bound ones.
bg_pids=()
bg_names=()
step_bg() {
  local name=$1
  rm -f "$logs/$name.result"
  ( step "$@" ) >"$logs/$name.step" 2>&1 &
  bg_pids+=($!)
  bg_names+=("$name")
  printf '==> %s (in the background)\n' "$name"
}
join_bg() {
  local i name p f rc
  for i in "${!bg_pids[@]}"; do
    name=${bg_names[$i]}
    wait "${bg_pids[$i]}"
    cat "$logs/$name.step"
    read -r p f rc <"$logs/$name.result" 2>/dev/null || { p=0; f=1; rc=1; }
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$rc" -ne 0 ] && failures+=("$name")
  done
  bg_pids=()
  bg_names=()
}

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step clippy-wasm cargo clippy --target wasm32-unknown-unknown -p runstream -p runstream-codec --lib --tests -- -D warnings
step native-tests cargo test --workspace
# benches/size-floor (scripts/size-floor.sh) is outside the workspace: kept
# compiling and formatted against the engine's API here (a check, ~30 s).
step size-floor-check bash -c 'rustfmt --edition 2021 --check benches/size-floor/src/lib.rs &&
  for v in v1 v2 v3 v3full; do
    CARGO_TARGET_DIR=target/size-floor-check cargo check --quiet --manifest-path benches/size-floor/Cargo.toml \
      --target wasm32-unknown-unknown --features "$v" || exit 1
  done'
step pkg ./scripts/build-pkg.sh web
# Bounded fuzzing (seconds); `FUZZ_SECONDS=600 ./scripts/test.sh` or `cargo +nightly fuzz run <target>` for longer.
for target in sse_parser envelope json; do
  step "fuzz-$target" cargo +nightly fuzz run "$target" -- -max_total_time="${FUZZ_SECONDS:-15}" -rss_limit_mb=2048
done

# The reference server on a free loopback port, for the browser tests.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# runstream-doctor too: tests/e2e/doctor.test.mjs runs it against real set-ups (issue 30).
cargo build -q -p runstream-server -p runstream-doctor >"$logs/server-build.log" 2>&1
"$root/target/debug/runstream-server" --auth none --dev --record-frames 200000 --addr "127.0.0.1:$port" --www www --pkg pkg >"$logs/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null' EXIT
for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/api/runs/none/snapshot" 2>/dev/null; [ $? -eq 22 ] && break
  sleep 0.2
done
export RUNSTREAM_SERVER="http://127.0.0.1:$port"
export WASM_BINDGEN_TEST_TIMEOUT=300
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export GECKODRIVER=${GECKODRIVER:-$HOME/.cargo/bin/geckodriver}

# wasm-bindgen-test-runner picks GECKODRIVER over CHROMEDRIVER whenever both are
# set, whatever --chrome says: give each step only its own driver.
step browser-chromium env -u GECKODRIVER wasm-pack test --headless --chrome
step browser-firefox env -u CHROMEDRIVER wasm-pack test --headless --firefox
# WebKit: the runner's Safari mode drives WebKitGTK's WebKitWebDriver (it sends
# the capabilities Safari takes, which WebKitWebDriver accepts), under a fresh
# Xvfb display: without one, WebKitWebDriver's POST /session hangs.
step browser-webkit env -u CHROMEDRIVER -u GECKODRIVER xvfb-run -a wasm-pack test --headless --safari --safaridriver /usr/bin/WebKitWebDriver
# The TypeScript kit (@runstream/server, kit/): its reducer wasm + TypeScript
# build, then its node:test suites over loopback HTTP/WebSocket. Before the
# e2e suites: tests/e2e/kit.test.mjs runs the browser client against kit/dist.
step kit bash -c 'cd kit && npm run build && npm test'
# The kit's HTTP and WebSocket route suites again on redisStore (a real
# redis-server, then a 3-master Redis Cluster; kit/test/redis-store.test.mjs, in the step above, covers the
# store itself on redis-server and on a 3-master cluster), docs/REDIS.md.
step kit-redis bash -c 'cd kit && node test/support/on-redis.mjs test/http.test.mjs test/ws.test.mjs'
step kit-redis-cluster bash -c 'cd kit && node test/support/on-redis.mjs --cluster test/http.test.mjs test/ws.test.mjs'
if [ -f tests/e2e/package.json ]; then
  step typescript bash -c 'cd tests/e2e && npx tsc -p tsconfig.json'
  # Suites that mostly wait, on servers of their own (quiet: the independent
  # spec server's idle holds; doctor: its 40 s idle-stream hold), run beside
  # the others.
  background="quiet doctor"
  for name in $background; do
    step_bg "e2e-$name" node --test --test-concurrency=1 "tests/e2e/$name.test.mjs"
  done
  step examples ./scripts/examples.sh
  for suite in tests/e2e/*.test.mjs; do
    [ -e "$suite" ] || continue
    name=$(basename "$suite" .test.mjs)
    case " $background " in *" $name "*) continue ;; esac
    step "e2e-$name" node --test --test-concurrency=1 "$suite"
  done
  join_bg
  # The same reliability scenarios and the infrastructure suite on a real
  # 3-master Redis Cluster (--store redis-cluster://…), issue 26.
  step e2e-reliability-cluster node tests/e2e/on-cluster.mjs tests/e2e/reliability.test.mjs
  step e2e-infra-cluster env STORE=cluster node --test --test-concurrency=1 tests/e2e/infra.test.mjs
  # The kit and the gateway on one Redis Cluster: the differential, cross-process and
  # cross-server browser suites (e2e-kit-redis, e2e-cross-server) again (docs/REDIS.md).
  step e2e-kit-redis-cluster env STORE=cluster node --test --test-concurrency=1 tests/e2e/kit-redis.test.mjs tests/e2e/cross-server.test.mjs
  # The reliability and cancel suites against the TypeScript kit instead of the
  # gateway (tests/e2e/kit-server.mjs: the kit + the admin routes and chaos knobs
  # those suites drive; docs/AI-SDK.md), on memoryStore and on redisStore with a
  # redis-server of its own (the whole reliability suite on both).
  step e2e-kit-reliability env RUNSTREAM_SCHEDULES=50 node tests/e2e/on-kit.mjs --store memory tests/e2e/reliability.test.mjs
  step e2e-kit-cancel node tests/e2e/on-kit.mjs --store memory tests/e2e/cancel.test.mjs
  step e2e-kit-reliability-redis env RUNSTREAM_SCHEDULES=20 node tests/e2e/on-kit.mjs --store redis tests/e2e/reliability.test.mjs
  step e2e-kit-cancel-redis node tests/e2e/on-kit.mjs --store redis --grep 'Stop|presses' tests/e2e/cancel.test.mjs
fi
# The benchmark suite's short version (figures printed in its log; the full run: node benches/run.mjs).
step bench-smoke node benches/run.mjs --smoke

echo
echo "total time: $(( $(date +%s) - start_all ))s; logs in target/test-logs/"
[ ${#failures[@]} -gt 0 ] && echo "failed steps: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
