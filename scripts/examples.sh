#!/usr/bin/env bash
# Packs pkg/ as the npm tarball a user would install, installs it into the
# React and Vue examples (file: dependency on the tarball: a copy, as from the
# registry), type-checks them with tsc --strict and builds them with Vite; the
# Next.js example the same way, built with `next build` (`next start` serves it;
# its /api routes are the TypeScript kit, packed from kit/ like runstream: a
# copy, as from the registry).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/npm
rm -f target/npm/runstream-*.tgz
(cd pkg && npm pack --silent --pack-destination ../target/npm >/dev/null)
mv target/npm/runstream-*.tgz target/npm/runstream.tgz
# The --target bundler build, packed the same way.
./scripts/build-pkg.sh bundler
# Its declarations type-check as a TypeScript user gets them (strict, lib checks
# on): its lazy.d.ts once imported a type only the web target declares.
tests/e2e/node_modules/.bin/tsc --noEmit --strict --skipLibCheck false --target ES2022 --module ES2022 \
  --moduleResolution bundler --lib ES2022,DOM,ESNext.Disposable pkg-bundler/lazy.d.ts pkg-bundler/runstream.d.ts
(cd pkg-bundler && npm pack --silent --pack-destination ../target/npm >/dev/null)
mv target/npm/runstream-*.tgz target/npm/runstream-bundler.tgz
(
  cd www/examples/bundler
  rm -rf node_modules/runstream package-lock.json
  npm install --no-audit --no-fund --loglevel=error
  npx vite build --logLevel warn
  echo "[examples] bundler: built www/examples/bundler/dist"
)
for ex in react vue; do
  (
    cd "www/examples/$ex"
    rm -rf node_modules/runstream package-lock.json
    npm install --no-audit --no-fund --loglevel=error
    npx tsc --noEmit
    npx vite build --logLevel warn
    echo "[examples] $ex: built www/examples/$ex/dist"
    # React's StrictMode double-mounts (mount → unmount → mount) only in a
    # development build of React: the frameworks suite checks the hook there too.
    if [ "$ex" = react ]; then
      NODE_ENV=development npx vite build --mode development --outDir dist/dev --logLevel warn
      echo "[examples] $ex: built www/examples/$ex/dist/dev (development build of React)"
    fi
  )
done
# The TypeScript kit (@runstream/server), built and packed as a user installs it.
(
  cd kit
  [ -d node_modules ] || npm install --no-audit --no-fund --loglevel=error
  npm run build --silent
  npm pack --silent --pack-destination ../target/npm >/dev/null
)
mv target/npm/runstream-server-*.tgz target/npm/runstream-server.tgz
(
  cd www/examples/next
  rm -rf node_modules/runstream node_modules/@runstream package-lock.json .next
  npm install --no-audit --no-fund --loglevel=error
  export NEXT_TELEMETRY_DISABLED=1
  # next build type-checks too, and writes next-env.d.ts + .next/types (typed routes) that tsc then covers.
  npx next build
  npx tsc --noEmit
  echo "[examples] next: built www/examples/next/.next"
)
