import type { CancelOptions, RunSnapshot, RunStream, RunStreamOptions } from "./runstream.js";

export { initRunStream } from "./lazy.js";

export interface UseRunStream<T = RunSnapshot> {
  /**
   * The snapshot, or the slice `select` picked from it. `null` during server
   * rendering, hydration, and until the wasm is loaded and the stream created
   * after mount (then `stream` is non-null).
   */
  snapshot: T | null;
  /** Sends a chat message; returns its client_request_id. Throws while `stream` is null. */
  send: (content: string) => string;
  /** Stop (PROTOCOL §8): the whole run, or with `replyTo` one reply; returns the cancel's client_request_id. Throws while `stream` is null. */
  cancel: (options?: CancelOptions) => string;
  /** Skips the backoff wait (no-op while `stream` is null). */
  retryNow: () => void;
  /** The underlying stream: `null` on the server and until ready. */
  stream: RunStream | null;
}

/**
 * React hook over `useSyncExternalStore` (server snapshot `null`): loads the wasm
 * once per page, creates and starts a RunStream after mount, closes it on unmount.
 * A new stream is made when `runId`, `transport`, `url`, `wsUrl`, `sendUrl` or
 * `cancelUrl` change; `headers` is read from the latest render on every (re)connect and
 * send (a closure over a token in state stays current); the other options are
 * those of the render that created the stream.
 */
export declare function useRunStream(options: RunStreamOptions): UseRunStream<RunSnapshot>;
/**
 * With a selector: the component re-renders only when `select(snapshot)` changes
 * by `isEqual` (default `Object.is`). Snapshots share structure: an unchanged
 * message, worker, tool or array is the same object in the next snapshot, so a
 * selected entity or array (`s => s.state.workers`) or a primitive
 * (`s => s.status.connection`) works with `Object.is`; a slice the selector
 * builds anew needs an `isEqual` that compares by value.
 */
export declare function useRunStream<T>(
  options: RunStreamOptions,
  select: (snapshot: RunSnapshot) => T,
  isEqual?: (a: T, b: T) => boolean,
): UseRunStream<T>;
