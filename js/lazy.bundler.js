// The --target bundler build instantiates the wasm when runstream.js is
// imported (ESM integration of the .wasm import), so there is nothing to load:
// build-pkg.sh ships this file as lazy.js in pkg-bundler/. See lazy.d.ts.
export function initRunStream() {
  return Promise.resolve();
}
