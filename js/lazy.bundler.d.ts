/**
 * The `--target bundler` package: the bundler instantiates the wasm when
 * `runstream.js` is imported (ESM integration of its `.wasm` import), so there
 * is nothing to load and no URL to choose. Kept so that code written for the
 * `--target web` package (and the hooks and composables) works unchanged: it
 * resolves at once.
 */
export declare function initRunStream(): Promise<void>;
