#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently: each tool is
# checked first and only installed when missing (a second run rebuilds nothing).
# Verified facts behind each step: ../shared/TOOLCHAIN.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/target/tools/node_modules/.bin:$HOME/.cargo/bin:$PATH"
log() { printf '[setup] %s\n' "$*"; }

need_browsers=${NEED_BROWSERS:-1}

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi
# The package's wasm rebuilds std with panic=immediate-abort (build-pkg.sh): that needs std's source.
if ! rustup component list --installed | grep -q '^rust-src'; then
  log "rustup component add rust-src"
  rustup component add rust-src || log "rust-src could not be installed: build-pkg.sh builds without rebuilding std"
fi

# wasm-bindgen-cli must match the wasm-bindgen version in Cargo.lock exactly.
if [ ! -f Cargo.lock ]; then cargo generate-lockfile; fi
wbg=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
if ! command -v wasm-pack >/dev/null || ! wasm-pack --version | grep -q '0.15'; then
  log "cargo install wasm-pack (~4 min)"
  cargo install wasm-pack --locked --version 0.15.1
fi
if ! command -v wasm-bindgen >/dev/null || ! wasm-bindgen --version | grep -q " $wbg\$"; then
  log "cargo install wasm-bindgen-cli $wbg (~4 min; without --locked, see TOOLCHAIN.md)"
  cargo install wasm-bindgen-cli --version "$wbg" --force
fi

# wasm-opt from binaryen >= 116: Debian's binaryen 108 breaks wasm-bindgen's
# externref table (reference types are on by default). The npm package
# binaryen@132 ships wasm-opt 132 and installs in seconds (compiling it with
# `cargo install wasm-opt` takes ~9 min); wasm-pack finds it on PATH.
tools="$(pwd)/target/tools"
if ! wasm-opt --version 2>/dev/null | grep -qE 'version (11[6-9]|1[2-9][0-9])'; then
  log "npm install binaryen@132 (wasm-opt) into target/tools"
  mkdir -p "$tools"
  (cd "$tools" && npm install --no-audit --no-fund --loglevel=error --no-save binaryen@132)
fi

apt_pkgs=()
apt_webkit=()
if [ "$need_browsers" = 1 ]; then
  command -v chromium >/dev/null || apt_pkgs+=(chromium)
  command -v chromedriver >/dev/null || apt_pkgs+=(chromium-driver)
  command -v firefox-esr >/dev/null || apt_pkgs+=(firefox-esr)
  # WebKit (WebKitGTK's WebKitWebDriver + MiniBrowser) for the browser-webkit step and
  # tests/e2e/engines.test.mjs; it needs an X display: Xvfb through xvfb-run (xauth).
  # --no-install-recommends keeps it to ~70 MB (TOOLCHAIN.md "WebKit").
  command -v WebKitWebDriver >/dev/null || apt_webkit+=(webkit2gtk-driver)
  command -v xvfb-run >/dev/null || apt_webkit+=(xvfb)
  command -v xauth >/dev/null || apt_webkit+=(xauth)
fi
# redis-server and nginx for the infrastructure tests (tests/e2e/infra.test.mjs, the
# server's Redis tests) and `./scripts/demo.sh --redis`; started on loopback ports
# with temporary directories by whoever needs them, never as system services.
# redis-cli (Debian's redis-tools, a dependency of redis-server) builds the test
# Redis Clusters (`redis-cli --cluster create`, server/tests/support/mod.rs).
command -v redis-server >/dev/null || apt_pkgs+=(redis-server)
command -v redis-cli >/dev/null || apt_pkgs+=(redis-tools)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_pkgs+=(nginx)
# caddy: the doctor's suite (tests/e2e/doctor.test.mjs) checks deploy/Caddyfile with Debian's caddy 2.6.
command -v caddy >/dev/null || apt_pkgs+=(caddy)
# openssl: tests/e2e/h2.test.mjs writes a self-signed certificate for nginx's HTTPS + HTTP/2 port.
command -v openssl >/dev/null || apt_pkgs+=(openssl)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${apt_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi
if [ ${#apt_webkit[@]} -gt 0 ]; then
  log "apt-get install --no-install-recommends ${apt_webkit[*]}"
  [ ${#apt_pkgs[@]} -gt 0 ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install --no-install-recommends -y -qq "${apt_webkit[@]}" >/dev/null
fi
if [ "$need_browsers" = 1 ] && ! command -v geckodriver >/dev/null; then
  log "cargo install geckodriver"
  cargo install geckodriver --locked || cargo install geckodriver
fi

# twiggy for the size breakdown build-pkg.sh prints.
if ! command -v twiggy >/dev/null; then
  log "cargo install twiggy"
  cargo install twiggy --locked --version 0.8.0
fi

# cargo-fuzz for the bounded fuzzing step (nightly is on the machine).
if [ "$need_browsers" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# npm packages the end-to-end tests and benchmarks use (Playwright drives Debian's Chromium).
# tests/e2e: installs when any devDependency is missing, so a newly added one (ws) arrives too.
e2e_deps_missing() {
  node -e 'const fs = require("fs"); const d = Object.keys(require("./tests/e2e/package.json").devDependencies || {});
    process.exit(d.every((n) => fs.existsSync("tests/e2e/node_modules/" + n + "/package.json")) ? 1 : 0)'
}
if [ -f tests/e2e/package.json ] && e2e_deps_missing; then
  log "npm install (tests/e2e)"
  (cd tests/e2e && npm install --no-audit --no-fund --loglevel=error)
fi
# The TypeScript kit (kit/): jose, ws and its TypeScript toolchain, from its lockfile.
kit_deps_missing() {
  node -e 'const fs = require("fs"); const p = require("./kit/package.json");
    const d = Object.keys({ ...(p.dependencies || {}), ...(p.devDependencies || {}) });
    process.exit(d.every((n) => fs.existsSync("kit/node_modules/" + n + "/package.json")) ? 1 : 0)'
}
if [ -f kit/package.json ] && kit_deps_missing; then
  log "npm ci (kit)"
  (cd kit && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ -f benches/package.json ] && [ ! -d benches/node_modules/esbuild ]; then
  log "npm install (benches)"
  (cd benches && npm install --no-audit --no-fund --loglevel=error)
fi
log "tools ready"
