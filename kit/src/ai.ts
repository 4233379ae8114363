// fromAiSdk: an AI SDK `streamText(...).fullStream` written into a run as
// PROTOCOL §4 events through the kit's public `rs.append`.
//
// One call answers one send: it writes one assistant message (`reply_to` = the
// send's client_request_id) that spans every step of the generation, the tool
// calls of those steps as `tool.started`/`tool.completed` of one worker per
// reply (created on the first tool, ended with the reply), and exactly one
// ending: `message.completed` (finish_reason from the AI SDK, or "cancelled"),
// or `message.failed`. Token deltas are coalesced: text that arrives within
// `coalesceMs` of the first unwritten token goes out as one `message.delta`,
// and while an append is in flight everything that arrives waits and goes out
// with the next one (one append in flight at a time, so a slow store costs
// fewer, larger events instead of a queue that grows without bound).

import { randomUUID } from "node:crypto";
import type { JsonObject, NewEvent, Store } from "./store.js";

/**
 * One part of an AI SDK `fullStream` as fromAiSdk reads it: its `type` and
 * fields. Declared here rather than imported from `ai`, so the kit's types
 * need no `ai` installed (it is an optional peer); the AI SDK 7
 * `TextStreamPart` is assignable to it, and each field is checked at run time.
 */
export interface AiSdkStreamPart {
  readonly type: string;
  readonly [field: string]: unknown;
}

/**
 * The part of the kit `fromAiSdk` uses (a `Runstream` has it): `append` to
 * write, and the store's `cancelRequested` to tell a run-wide cancel from a
 * reply's when the signal fires.
 */
export interface AiSdkTarget {
  append(runId: string, events: NewEvent[], options?: { idempotencyKey?: string }): Promise<unknown>;
  readonly store: Pick<Store, "cancelRequested">;
}

/** Options of {@link fromAiSdk}. */
export interface FromAiSdkOptions {
  /** The client_request_id of the send this message answers (PROTOCOL §4 `reply_to`). */
  replyTo?: string;
  /**
   * Token deltas that arrive within this many milliseconds of the first
   * unwritten one are written as one `message.delta` (default 16; 0 writes
   * each part as it comes, still merging whatever waits for an append in flight).
   */
  coalesceMs?: number;
  /**
   * Stops the reply when it aborts (`rs.cancelSignal(runId, { replyTo })`):
   * reading ends, the message ends with `message.completed`
   * `{finish_reason: "cancelled"}`, and when the run has a run-wide
   * `run.cancel_requested` the run ends with `run.completed`
   * `{status: "cancelled"}` (PROTOCOL §8). Pass the same signal to
   * `streamText({ abortSignal })` so the model stops too.
   */
  signal?: AbortSignal;
  /** The assistant message's id (default: a new `msg_<uuid>`). */
  messageId?: string;
  /** The worker the reply's tool calls belong to (default: the message id). */
  workerId?: string;
}

/** How a reply ended. */
export type FromAiSdkStatus = "completed" | "failed" | "cancelled";

/** What {@link fromAiSdk} wrote. */
export interface FromAiSdkResult {
  messageId: string;
  status: FromAiSdkStatus;
  /** The `finish_reason` written (`"cancelled"` for a stop); null when the message failed. */
  finishReason: string | null;
  /** How many events were appended (the coalescing shows here). */
  events: number;
  /** How many `rs.append` calls that took. */
  appends: number;
  /** True when a run-wide cancel also ended the run. */
  runEnded: boolean;
}

/**
 * Longest `message.delta` text fromAiSdk writes (UTF-16 code units): merged
 * text past it starts a new delta, so a slow store never makes one event that
 * a client would refuse as too large.
 */
export const MAX_DELTA_CHARS = 16_384;

/** Most events in one `rs.append` (the kit takes at most 1,000 per batch). */
export const MAX_APPEND_EVENTS = 500;

type Usage = { inputTokens: number | undefined; outputTokens: number | undefined };

/** The message of an error part, never its stack (it goes to every reader of the run). */
function errorText(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  if (typeof e === "string") return e;
  try {
    const s = JSON.stringify(e);
    return s === undefined ? String(e) : s;
  } catch {
    return String(e);
  }
}

/**
 * Writes an AI SDK `fullStream` into run `runId` as one assistant reply (see
 * the file's head for the mapping). Resolves when the reply's ending is
 * appended; rejects if `rs.append` fails (nothing is written after a failed append).
 */
export async function fromAiSdk(
  rs: AiSdkTarget,
  runId: string,
  fullStream: AsyncIterable<AiSdkStreamPart>,
  options: FromAiSdkOptions = {},
): Promise<FromAiSdkResult> {
  const coalesceMs = Math.max(0, options.coalesceMs ?? 16);
  const messageId = options.messageId ?? `msg_${randomUUID()}`;
  const workerId = options.workerId ?? messageId;
  const { signal } = options;
  const w = new Writer(rs, runId);

  const created: JsonObject = { message_id: messageId, role: "assistant" };
  if (options.replyTo !== undefined) created.reply_to = options.replyTo;
  w.push({ type: "message.created", payload: created });

  // Text not yet handed to the writer, and the timer that hands it over.
  let text = "";
  let timer: ReturnType<typeof setTimeout> | null = null;
  const release = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    // At most MAX_DELTA_CHARS per event (split on a code point boundary).
    let rest = text;
    text = "";
    while (rest) {
      let cut = Math.min(rest.length, MAX_DELTA_CHARS);
      const c = rest.charCodeAt(cut - 1);
      if (cut < rest.length && c >= 0xd800 && c <= 0xdbff) cut -= 1;
      w.push({ type: "message.delta", payload: { message_id: messageId, delta: rest.slice(0, cut) } });
      rest = rest.slice(cut);
    }
  };

  let workerStarted = false;
  const tools = new Map<string, number>(); // tool_call_id → start time (running tools)
  // A tool part without an id is not written (PROTOCOL §4 keys tools by tool_call_id).
  const toolStarted = (id: string, name: string) => {
    if (!id || tools.has(id)) return;
    release();
    if (!workerStarted) {
      workerStarted = true;
      w.push({ type: "worker.started", payload: { worker_id: workerId, name: "assistant" } });
    }
    tools.set(id, Date.now());
    w.push({ type: "tool.started", payload: { worker_id: workerId, tool_call_id: id, name: name || "tool" } });
  };
  const toolCompleted = (id: string, name: string, error: string | null) => {
    if (!id) return;
    toolStarted(id, name);
    const t0 = tools.get(id);
    tools.delete(id);
    const payload: JsonObject = { worker_id: workerId, tool_call_id: id, status: error === null ? "ok" : "error" };
    if (error !== null) payload.error = error;
    if (t0 !== undefined) payload.duration_ms = Date.now() - t0;
    release();
    w.push({ type: "tool.completed", payload });
  };

  let status: FromAiSdkStatus | null = null;
  let finishReason: string | null = null;
  let failure: string | null = null;
  let usage: Usage | null = null;

  const it = fullStream[Symbol.asyncIterator]();
  // The next part, or "aborted" as soon as the signal fires (a pending read
  // does not hold a stop). One listener per read, removed when it settles:
  // nothing piles up on a long stream.
  const nextPart = (): Promise<IteratorResult<AiSdkStreamPart> | "aborted"> => {
    const read = it.next();
    if (!signal) return read;
    return new Promise((resolve, reject) => {
      const onAbort = (): void => resolve("aborted");
      signal.addEventListener("abort", onAbort, { once: true });
      read.then(
        (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        },
        (e: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  };

  try {
    for (;;) {
      if (w.failed) break;
      if (signal?.aborted) {
        status = "cancelled";
        break;
      }
      const next = await nextPart();
      if (next === "aborted") {
        status = "cancelled";
        break;
      }
      if (next.done) break;
      const part = next.value;
      const str = (k: string): string => {
        const v = part[k];
        return typeof v === "string" ? v : "";
      };
      switch (part.type) {
        case "text-delta": {
          const t = str("text");
          if (t) {
            text += t;
            if (coalesceMs === 0) release();
            else if (timer === null) timer = setTimeout(release, coalesceMs);
          }
          break;
        }
        case "tool-input-start":
          toolStarted(str("id"), str("toolName"));
          break;
        case "tool-call":
          toolStarted(str("toolCallId"), str("toolName"));
          break;
        case "tool-result":
          toolCompleted(str("toolCallId"), str("toolName"), null);
          break;
        case "tool-error":
          toolCompleted(str("toolCallId"), str("toolName"), errorText(part.error));
          break;
        case "tool-output-denied":
          toolCompleted(str("toolCallId"), str("toolName"), "denied");
          break;
        case "error":
          // The generation failed; the stream may still end with a finish part.
          failure ??= errorText(part.error);
          break;
        case "abort":
          status = "cancelled";
          break;
        case "finish": {
          finishReason = str("finishReason") || null;
          const u = part.totalUsage;
          const n = (k: string): number | undefined => {
            const v = typeof u === "object" && u !== null ? (u as Record<string, unknown>)[k] : undefined;
            return typeof v === "number" && Number.isFinite(v) ? v : undefined;
          };
          usage = { inputTokens: n("inputTokens"), outputTokens: n("outputTokens") };
          break;
        }
        default:
          // Reasoning, sources, files, step boundaries, raw and custom parts have
          // no PROTOCOL §4 event: the message carries the answer's text only.
          break;
      }
      if (status === "cancelled") break;
    }
  } catch (e) {
    // The stream itself threw (a model error outside an error part).
    if (!(signal?.aborted)) failure ??= errorText(e);
    else status = "cancelled";
  }
  if (status === "cancelled") {
    // Stop the producer; its own cleanup may take a while and is not waited for.
    void Promise.resolve(it.return?.()).catch(() => undefined);
  }

  // The ending: buffered text first, then every running tool, then the message, then the worker.
  release();
  const ended: FromAiSdkStatus = status === "cancelled" ? "cancelled" : failure !== null ? "failed" : "completed";
  for (const [id] of tools) {
    const payload: JsonObject = {
      worker_id: workerId,
      tool_call_id: id,
      status: "error",
      error: ended === "cancelled" ? "cancelled" : (failure ?? "no result"),
    };
    w.push({ type: "tool.completed", payload });
  }
  tools.clear();
  if (ended === "failed") {
    w.push({ type: "message.failed", payload: { message_id: messageId, error: failure ?? "failed" } });
    finishReason = null;
  } else {
    finishReason = ended === "cancelled" ? "cancelled" : (finishReason ?? "stop");
    const payload: JsonObject = { message_id: messageId, finish_reason: finishReason };
    if (ended === "completed" && usage && usage.inputTokens !== undefined && usage.outputTokens !== undefined) {
      payload.usage = { prompt_tokens: usage.inputTokens, completion_tokens: usage.outputTokens };
    }
    w.push({ type: "message.completed", payload });
  }
  if (workerStarted) {
    w.push({ type: "worker.completed", payload: { worker_id: workerId, status: ended === "completed" ? "succeeded" : ended } });
  }
  // A run-wide cancel ends the run after its messages (PROTOCOL §8).
  let runEnded = false;
  if (ended === "cancelled" && !w.failed) {
    try {
      runEnded = (await rs.store.cancelRequested(runId, { kind: "run" })) !== null;
    } catch (e) {
      w.fail(e);
    }
    if (runEnded) w.push({ type: "run.completed", payload: { status: "cancelled" } });
  }
  await w.drain();
  return { messageId, status: ended, finishReason, events: w.events, appends: w.appends, runEnded };
}

/**
 * Appends events in order with at most one `rs.append` in flight; what is
 * pushed meanwhile waits and goes out as the next batch (at most
 * MAX_APPEND_EVENTS per append), consecutive deltas of one message merged up
 * to MAX_DELTA_CHARS. The wait list holds what the model produced during one
 * append (deltas merged): it grows with the model's pace times the store's
 * latency, never with the number of tokens.
 */
class Writer {
  private outbox: NewEvent[] = [];
  private inflight: Promise<void> | null = null;
  private error: unknown = null;
  /** An append failed (or the run-wide check did): nothing more is written. */
  failed = false;
  events = 0;
  appends = 0;

  constructor(
    private readonly rs: AiSdkTarget,
    private readonly runId: string,
  ) {}

  push(e: NewEvent): void {
    if (this.failed) return;
    const last = this.outbox[this.outbox.length - 1];
    if (
      last !== undefined &&
      last.type === "message.delta" &&
      e.type === "message.delta" &&
      last.payload.message_id === e.payload.message_id &&
      String(last.payload.delta).length + String(e.payload.delta).length <= MAX_DELTA_CHARS
    ) {
      last.payload.delta = `${String(last.payload.delta)}${String(e.payload.delta)}`;
    } else {
      this.outbox.push(e);
    }
    this.pump();
  }

  private pump(): void {
    if (this.inflight !== null || this.failed || this.outbox.length === 0) return;
    const batch = this.outbox.splice(0, MAX_APPEND_EVENTS);
    this.appends += 1;
    this.events += batch.length;
    this.inflight = this.rs.append(this.runId, batch).then(
      () => {
        this.inflight = null;
        this.pump();
      },
      (e: unknown) => {
        this.inflight = null;
        this.fail(e);
      },
    );
  }

  /** Stops writing; `drain` rejects with `e`. */
  fail(e: unknown): void {
    this.failed = true;
    this.error = e;
    this.outbox = [];
  }

  /** Resolves when everything pushed is appended; rejects with the first append's error. */
  async drain(): Promise<void> {
    while (this.inflight !== null) await this.inflight;
    if (this.failed) throw this.error;
  }
}
