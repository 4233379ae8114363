// One wasm instantiation per page, shared by runstream/react and runstream/vue.
// Importing this module does nothing: no browser global is read until a hook
// or composable asks for the wasm after mount. See lazy.d.ts.
import init from "./runstream.js";

let pending = null;

/**
 * Instantiates the wasm at most once per page and returns the same promise to
 * every caller. The first call decides where the `.wasm` comes from: without an
 * argument it is `new URL("runstream_bg.wasm", import.meta.url)` (what bundlers
 * emit as an asset); later arguments are ignored. A failed load is forgotten so
 * that the next call (the next mount) tries again.
 */
export function initRunStream(moduleOrPath) {
  if (pending === null) {
    const p = init(moduleOrPath === undefined ? undefined : { module_or_path: moduleOrPath }).then(() => undefined);
    pending = p;
    p.catch(() => {
      if (pending === p) pending = null;
    });
  }
  return pending;
}
