// Uses every name of API.md with exact types; `tsc --strict --noEmit` must pass.
import init, {
  RunStream,
  type RunSnapshot,
  type RunStreamOptions,
  type RuntimeEvent,
  type StreamStatus,
  type CancelStatus,
  type RunState,
  type RunMetrics,
  type Worker,
  type Message,
  type SpanDetail,
  type SpanErrorKind,
  type TerminationReason,
} from "runstream";

async function getToken(): Promise<string> {
  return "t";
}

export async function main(): Promise<void> {
  await init();
  const options: RunStreamOptions = {
    runId: "run_01JD3Q8Z8M4V6W",
    url: "/api/stream/runs/run_01JD3Q8Z8M4V6W",
    transport: "fetch",
    wsUrl: "/api/ws",
    snapshotUrl: "/api/runs/run_01JD3Q8Z8M4V6W/snapshot",
    sendUrl: "/api/chat/s1/messages",
    cancelUrl: "/api/runs/run_01JD3Q8Z8M4V6W/cancel",
    headers: async () => ({ Authorization: `Bearer ${await getToken()}` }),
    withCredentials: false,
    stallAfterMs: 2000,
    connectTimeoutMs: 10000,
    heartbeatTimeoutMs: 25000,
    backoff: { initialMs: 500, maxMs: 20000, multiplier: 2 },
    share: "tabs",
    resume: "session",
    spans: { sampleRate: 0.1 },
  };
  // @ts-expect-error: share is "none" | "tabs"
  const badShare: RunStreamOptions = { runId: "r", share: "windows" };
  void badShare;
  const stream = new RunStream(options);
  stream.start();
  const off: () => void = stream.subscribe(() => render(stream.getSnapshot()));
  // Unsubscribe functions are idempotent.
  off();
  const snap: RunSnapshot = stream.getSnapshot();
  const offEvents: () => void = stream.subscribeEvents((e: RuntimeEvent) => {
    if (e.kind === "span") {
      const d: number = e.durationMs;
      const s: "ok" | "error" | "canceled" = e.status;
      const trace: string = e.traceId;
      const attempt: number | undefined = e.attempt;
      const replayed: number | undefined = e.events;
      const ttfb: number | undefined = e.ttfbMs;
      const ttft: number | undefined = e.ttftMs;
      const crid: string | undefined = e.clientRequestId;
      const why: SpanErrorKind | undefined = e.errorKind;
      const detail: SpanDetail = e;
      void [d, s, trace, attempt, replayed, ttfb, ttft, crid, why, detail];
    } else {
      const v: number = e.value;
      void v;
    }
  });
  const id: string = stream.send("hello");
  const stop: string = stream.cancel({ replyTo: id });
  const stopRun: string = stream.cancel({ reason: "user" });
  const stopBare: string = stream.cancel();
  // @ts-expect-error: replyTo is a client_request_id string
  stream.cancel({ replyTo: 1 });
  void [stop, stopRun, stopBare];
  stream.retryNow();
  stream.close();
  off();
  offEvents();
  void snap;
  void id;
}

function render(s: RunSnapshot): void {
  const status: StreamStatus = s.status;
  const state: RunState = s.state;
  const metrics: RunMetrics = s.metrics;
  const retry: number | null = status.retryInMs;
  const cancelRequested: boolean = state.cancelRequested;
  const cancel: CancelStatus | null = status.cancel;
  if (cancel) {
    const cs: "queued" | "sent" | "accepted" | "done" | "failed" = cancel.state;
    const target: string | null = cancel.replyTo;
    const cid: string = cancel.clientRequestId;
    void [cs, target, cid];
  }
  void cancelRequested;
  const workers: readonly Worker[] = state.workers;
  const messages: readonly Message[] = state.messages;
  // Snapshots are frozen (API.md): the types say so, so these fail to compile instead of throwing.
  // @ts-expect-error: messages is a readonly array
  state.messages.push(messages[0]);
  // @ts-expect-error: workers is a readonly array
  state.workers.sort();
  // @ts-expect-error: a message's fields are readonly
  state.messages[0].content = "edited";
  // @ts-expect-error: a readonly array is not a mutable one
  const mutable: Message[] = state.messages;
  const ttft: number | null | undefined = metrics.messages["x"]?.ttftMs;
  const completed: number | undefined = metrics.terminations.run_completed;
  const headersFailed: number | undefined = metrics.terminations.headers_error;
  const gaps: number = metrics.gapsSkipped;
  const unknown: number = metrics.unknownEvents;
  const channelErrors: number = metrics.channelErrors;
  const shared: number | undefined = metrics.terminations.shared;
  const sharing: "solo" | "leader" | "follower" = status.sharing;
  const reason: TerminationReason = "headers_error";
  // @ts-expect-error: termination reasons are a closed union
  const badReason: TerminationReason = "gremlins";
  // getSnapshot() is never null
  const version: number = s.version;
  // @ts-expect-error: connection states are a closed union
  const bad: StreamStatus["connection"] = "sleeping";
  void [retry, workers, messages, mutable, ttft, completed, headersFailed, gaps, unknown, channelErrors, shared, sharing, reason, badReason, version, bad];
}
