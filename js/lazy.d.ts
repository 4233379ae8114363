import type { InitInput } from "./runstream.js";

/**
 * Instantiates the wasm at most once per page; every call returns the same
 * promise (a failed load is forgotten, so the next call retries). The hooks and
 * composables call it themselves after mount: call it only to preload, or to
 * load the `.wasm` from an explicit URL (before the first hook mounts; later
 * arguments are ignored).
 */
export declare function initRunStream(moduleOrPath?: InitInput | Promise<InitInput>): Promise<void>;
