import type { MaybeRefOrGetter, ShallowRef } from "vue";
import type { CancelOptions, RunSnapshot, RunStream, RunStreamOptions } from "./runstream.js";

export { initRunStream } from "./lazy.js";

export interface UseRunStream<T = RunSnapshot> {
  /**
   * The snapshot, or the slice `select` picked from it: `null` during server
   * rendering and until the wasm is loaded and the stream created after mount.
   */
  snapshot: ShallowRef<T | null>;
  /** Sends a chat message; returns its client_request_id. Throws while `stream` is null. */
  send: (content: string) => string;
  /** Stop (PROTOCOL §8): the whole run, or with `replyTo` one reply; returns the cancel's client_request_id. Throws while `stream` is null. */
  cancel: (options?: CancelOptions) => string;
  /** Skips the backoff wait (no-op while `stream` is null). */
  retryNow: () => void;
  /** The underlying stream: `null` on the server and until ready. */
  stream: ShallowRef<RunStream | null>;
}

/**
 * Vue composable: loads the wasm once per page, creates the stream in
 * `onMounted` (outside a component at once, in a browser only: nothing
 * happens during server rendering), closes it on `onScopeDispose`.
 * `options` may be a ref or a getter (`() => ({ runId: props.runId })`):
 * when its `runId`, `transport`, `url`, `wsUrl`, `sendUrl` or `cancelUrl`
 * changes, the old stream is closed and a new one opened (`snapshot` is
 * `null` in between); `headers` is read from the latest options on every call.
 */
export declare function useRunStream(options: MaybeRefOrGetter<RunStreamOptions>): UseRunStream<RunSnapshot>;
/**
 * With a selector: `snapshot` holds `select(snapshot)` and is replaced (triggering
 * watchers and renders) only when it changes by `isEqual` (default `Object.is`).
 * Select primitives, or pass an `isEqual` that compares object slices by value.
 */
export declare function useRunStream<T>(
  options: MaybeRefOrGetter<RunStreamOptions>,
  select: (snapshot: RunSnapshot) => T,
  isEqual?: (a: T, b: T) => boolean,
): UseRunStream<T>;
