import type { CSSProperties, ReactElement } from "react";
import type { DevtoolsStreams, RunStreamDevtools as RunStreamDevtoolsElement } from "./devtools.js";

export type { DevtoolsEntry, DevtoolsStream, DevtoolsStreams, DevtoolsTrace, TraceStream } from "./devtools.js";
export { DEFAULT_MAX_EVENTS, MAX_TIMELINE, MAX_HISTORY, RATE_SAMPLES, TRACE_FORMAT, TRACE_VERSION } from "./devtools.js";

export interface RunStreamDevtoolsProps {
  /** One stream, a list (`null`s, such as `useRunStream`'s `stream` before it is ready, are skipped), or `{ stream, label }` entries. */
  streams: DevtoolsStreams;
  /** Raw events kept per stream for the trace (clamped to 100..100000; default 2000). Set it once: a change restarts the record. */
  maxEvents?: number;
  className?: string;
  style?: CSSProperties;
  /** Receives the element once mounted (for `exportTrace()`), and `null` on unmount. Pass a stable function. */
  onReady?: (element: RunStreamDevtoolsElement | null) => void;
}

/** The `<runstream-devtools>` panel as a React component (runstream/devtools/react). */
export declare function RunStreamDevtools(props: RunStreamDevtoolsProps): ReactElement;
