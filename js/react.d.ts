import type { RunSnapshot, RunStream, RunStreamOptions } from "./runstream.js";

export interface UseRunStream {
  /** `null` until the stream is created after mount. */
  snapshot: RunSnapshot | null;
  /** Sends a chat message; returns its client_request_id. Throws before mount. */
  send: (content: string) => string;
  /** Skips the backoff wait. */
  retryNow: () => void;
  /** The underlying stream (`null` before mount). */
  stream: RunStream | null;
}

/** React hook: `useSyncExternalStore(stream.subscribe, stream.getSnapshot)` with lifecycle handled. */
export declare function useRunStream(options: RunStreamOptions): UseRunStream;
