import type {
  CancelState,
  ConnectionState,
  MessageStatus,
  Message,
  RunMetrics,
  RunSnapshot,
  RunStatus,
  RuntimeEvent,
  StreamStatus,
  WorkerStatus,
} from "./runstream.js";

/** What the panel reads of a stream: the public surface of `RunStream` (API.md). */
export interface DevtoolsStream {
  getSnapshot(): RunSnapshot;
  subscribe(listener: () => void): () => void;
  subscribeEvents(listener: (event: RuntimeEvent) => void): () => void;
}

/** A stream with the name the panel shows for it (default: its `runId`). */
export interface DevtoolsEntry {
  stream: DevtoolsStream;
  label?: string | null;
}

/** What `streams` accepts: one stream, or a list of streams and entries (`null`s are skipped). */
export type DevtoolsStreams = DevtoolsStream | DevtoolsEntry | ReadonlyArray<DevtoolsStream | DevtoolsEntry | null | undefined> | null | undefined;

/** Raw events kept per stream unless the `max-events` attribute says otherwise (drop-oldest). */
export declare const DEFAULT_MAX_EVENTS: 2000;
/** Smallest accepted `max-events`. */
export declare const MIN_MAX_EVENTS: 100;
/** Largest accepted `max-events`. */
export declare const MAX_MAX_EVENTS: 100000;
/** Timeline entries kept per stream (drop-oldest). */
export declare const MAX_TIMELINE: 200;
/** Replay sizes, reconnect waits and cancel steps kept per stream (drop-oldest). */
export declare const MAX_HISTORY: 50;
/** Events-per-second samples kept per stream (one a second). */
export declare const RATE_SAMPLES: 60;
/** `format` of an exported trace. */
export declare const TRACE_FORMAT: "runstream-devtools-trace";
/** `version` of an exported trace's shape. */
export declare const TRACE_VERSION: 1;

/** A connection state the panel saw (from a snapshot), with the reason it changed. */
export interface TraceStateEntry {
  /** `performance.now()` of the page (add `timeOrigin` for wall time). */
  ts: number;
  kind: "state";
  connection: ConnectionState;
  attempt: number;
  retryInMs: number | null;
  /** The termination reason of the connection that ended before this change, else `lastError` (`null` when none). */
  reason: string | null;
}

/** A connection that ended (`stream.termination.total`), with its reason. */
export interface TraceEndedEntry {
  ts: number;
  kind: "ended";
  reason: string;
}

export type TraceTimelineEntry = TraceStateEntry | TraceEndedEntry;

/** One wait in `reconnecting`: the backoff the snapshot announced and the time it took. */
export interface TraceReconnectWait {
  since: number;
  attempt: number;
  plannedMs: number | null;
  waitedMs: number;
  reason: string | null;
}

/** One step of a cancel (`status.cancel`). */
export interface TraceCancelStep {
  ts: number;
  clientRequestId: string;
  replyTo: string | null;
  state: CancelState;
}

/** A message in the trace: its identity and status, never its content. */
export interface TraceMessage {
  messageId: string | null;
  clientRequestId: string | null;
  replyTo: string | null;
  role: Message["role"];
  status: MessageStatus;
  /** Length of the content (the content itself stays out of a bug report). */
  length: number;
}

/** The latest snapshot of a stream as the trace carries it. */
export interface TraceSnapshot {
  version: number;
  status: StreamStatus;
  metrics: RunMetrics;
  state: {
    runId: string;
    cursor: number;
    status: RunStatus;
    cancelRequested: boolean;
    workers: Array<{ workerId: string; jobId: string | null; status: WorkerStatus; tools: number }>;
    messages: TraceMessage[];
  };
}

/** One stream's part of a trace. */
export interface TraceStream {
  label: string;
  runId: string | null;
  /** Why the stream could no longer be read (a freed RunStream), else `null`. */
  readError: string | null;
  /** RuntimeEvents seen since the panel attached. */
  eventsSeen: number;
  /** The oldest ones dropped at the bound (`eventsSeen - events.length`). */
  eventsDropped: number;
  /** The raw RuntimeEvents kept, oldest first (at most `bounds.eventsPerStream`). */
  events: RuntimeEvent[];
  timeline: TraceTimelineEntry[];
  timelineDropped: number;
  /** Sizes of the replay phases of resumed connections (`stream.replay.events`). */
  replays: Array<{ ts: number; events: number }>;
  reconnectWaits: TraceReconnectWait[];
  cancels: TraceCancelStep[];
  /** Events applied in each of the last seconds, oldest first. */
  eventsPerSecond: number[];
  snapshot: TraceSnapshot | null;
}

/** What "Export trace" saves: JSON a user attaches to a bug report. */
export interface DevtoolsTrace {
  format: typeof TRACE_FORMAT;
  version: typeof TRACE_VERSION;
  createdAt: string;
  page: string | null;
  userAgent: string | null;
  /** `performance.timeOrigin`: `timeOrigin + ts` is the wall-clock time of an entry. */
  timeOrigin: number;
  bounds: { eventsPerStream: number; timelinePerStream: number; historyPerStream: number; rateSamples: number };
  streams: TraceStream[];
}

/**
 * `<runstream-devtools>`: a live panel over one or more streams: connection
 * timeline with reasons, reconnects and their backoff, events per second,
 * replay sizes, duplicates, gaps skipped, protocol errors, per-message
 * TTFB/TTFT, pending sends and cancels, the tab's sharing role, the likely
 * cause; and a trace export. Attach it before `start()` for a complete record.
 */
export declare class RunStreamDevtools extends HTMLElement {
  /** The streams shown; set one stream, a list, or `{ stream, label }` entries. Unchanged streams keep their history. */
  get streams(): DevtoolsEntry[];
  set streams(value: DevtoolsStreams);
  /** Raw events kept per stream: the `max-events` attribute clamped to 100..100000 (default 2000). */
  readonly maxEvents: number;
  /** The trace of every watched stream (JSON-ready). */
  exportTrace(): DevtoolsTrace;
  /** `exportTrace()` as JSON text. */
  traceJSON(): string;
  /** Saves the trace as a `.json` file (the panel's "Export trace" button). */
  downloadTrace(): void;
}

/** Defines the element under `tagName` (default `runstream-devtools`, done on import); a no-op without `customElements` (server rendering). */
export declare function defineRunStreamDevtools(tagName?: string): void;

declare global {
  interface HTMLElementTagNameMap {
    "runstream-devtools": RunStreamDevtools;
  }
}
