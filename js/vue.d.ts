import type { ShallowRef } from "vue";
import type { RunSnapshot, RunStream, RunStreamOptions } from "./runstream.js";

export interface UseRunStream {
  snapshot: ShallowRef<RunSnapshot>;
  send: (content: string) => string;
  retryNow: () => void;
  stream: RunStream;
}

/** Vue composable: `shallowRef` snapshot, stream closed on `onScopeDispose`. */
export declare function useRunStream(options: RunStreamOptions): UseRunStream;
