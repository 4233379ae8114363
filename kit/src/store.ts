/**
 * Where run logs live: the one `Store` interface that `memoryStore()` (one
 * process) and `redisStore()` (any number of processes, the gateway's Redis
 * layout) implement. It mirrors the gateway's `Store` trait
 * (`server/src/store/mod.rs`) operation for operation, so that both servers
 * give the same answers; the router (`createRunstream`) holds every rule of
 * the wire contract, a store only logs, replays, tails, reduces and
 * deduplicates.
 *
 * Contract (what the kit's store tests check for each backend):
 * - ids are dense per run: the n-th event appended to a run gets id n, also
 *   under concurrent appends from any number of callers or processes;
 * - `read(id, after)` returns the events with id > `after` in order, preceded
 *   by a snapshot when `after + 1` is older than the retained window;
 * - a subscription taken before a `read` is called for every later append,
 *   whichever process appended;
 * - `send` is idempotent on `(session, clientRequestId)`;
 * - `appendBatch` is all or nothing, idempotent on its key (same key, same
 *   digest: the first ids, nothing appended; another digest: a conflict);
 * - `requestCancel` appends at most one `run.cancel_requested` per target.
 *
 * Every method may reject with a {@link StoreError} (backend unreachable or
 * corrupt): the router answers it `503` with `Retry-After`, which clients retry.
 */

/** A JSON value (what event payloads and states are made of). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A JSON object (an event payload). */
export type JsonObject = { [key: string]: Json };

/** The event types of PROTOCOL §3–§4. */
export type EventType =
  | "run.started"
  | "run.completed"
  | "supervisor.completed"
  | "worker.started"
  | "worker.job_assigned"
  | "worker.completed"
  | "tool.started"
  | "tool.completed"
  | "message.created"
  | "message.delta"
  | "message.completed"
  | "message.failed"
  | "run.cancel_requested"
  | "snapshot";

/** What produces a run's events. */
export type RunKind =
  /** A supervisor run with workers and tools, then `run.completed`. */
  | "task"
  /** A chat session: events come from sends; it never completes by itself. */
  | "chat";

/** How a run is created. */
export interface RunSpec {
  /** What produces its events. */
  kind: RunKind;
  /** The chat session it belongs to (PROTOCOL §7's `sessions` claim grants it). */
  sessionId?: string | undefined;
}

/** A run's settings and log bounds (the gateway's `RunMeta`). */
export interface RunMeta {
  /** What produces its events. */
  kind: RunKind;
  /** Lowest id still in the replay window. */
  firstId: number;
  /** Highest logged id (0 = empty). */
  lastId: number;
  /** `run.completed` is logged. */
  finished: boolean;
  /** The chat session it belongs to, if it was created with one. */
  sessionId?: string | undefined;
}

/**
 * Events a stream resuming after `last` replays now (within the window; an
 * older resume point gets a snapshot for the rest). The one formula, used by
 * SSE and WebSocket alike (the gateway's `RunMeta::behind`).
 */
export function behind(meta: RunMeta, last: number): number {
  return Math.max(0, meta.lastId - Math.max(last, meta.firstId - 1));
}

/** One event to append (the store gives it its id, run id and timestamp). */
export interface NewEvent {
  /** PROTOCOL §4 type. */
  type: EventType;
  /** Its payload (a JSON object). */
  payload: JsonObject;
}

/** A publish batch's idempotency key and the digest of its body. */
export interface IdemKey {
  /** The producer's `Idempotency-Key`. */
  key: string;
  /** Hex SHA-256 of the batch's canonical JSON: another body under the same key is a conflict. */
  digest: string;
}

/** Idempotency keys are kept this long (SERVER.md §1: "within 24 h"). */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;
/**
 * Default retention of a finished run, seconds: 7 days after its last write
 * (the gateway's `--retention-secs`; docs/REDIS.md "Retention").
 */
export const DEFAULT_RETENTION_S = 7 * 24 * 3600;
/**
 * Default idle retention of an unfinished run, seconds: 30 days after its last
 * append, send or cancel (the gateway's `--idle-retention-secs`).
 */
export const DEFAULT_IDLE_RETENTION_S = 30 * 24 * 3600;
/** The longest retention an option may ask for, seconds: 100 years (the gateway's bound). */
export const MAX_RETENTION_S = 100 * 365 * 24 * 3600;
/**
 * A retention option in whole seconds: `undefined` is the default, 0 keeps forever, a
 * fraction rounds up (0.5 is 1 s, not forever). Negative, not finite or past
 * {@link MAX_RETENTION_S}: a `RangeError` (a deployment's typo must not keep or drop data silently).
 */
export function retentionSeconds(v: number | undefined, dflt: number, name = "retention"): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v < 0 || v > MAX_RETENTION_S) {
    throw new RangeError(`${name}: 0 (keep forever) to ${MAX_RETENTION_S} seconds, not ${String(v)}`);
  }
  return Math.ceil(v);
}

/** What an atomic batch append did. */
export type BatchOutcome =
  /** Appended with ids `first..=last`. */
  | { kind: "appended"; first: number; last: number }
  /** The key was seen with the same body: these ids, nothing appended. */
  | { kind: "repeated"; first: number; last: number }
  /** The key was seen with another body: nothing appended. */
  | { kind: "key_conflict" }
  /** The run is finished: nothing appended. */
  | { kind: "finished" }
  /**
   * A `message.created` of the batch names a `reply_to` whose send already has a reply
   * (one reply per send, checked in the atomic append step): nothing appended.
   */
  | { kind: "reply_taken" }
  /** No such run. */
  | { kind: "unknown_run" };

/** What a cancel asks to stop (PROTOCOL §8): the whole run, or one reply of it. */
export type CancelTarget =
  | { kind: "run" }
  /** The reply to the send with this `client_request_id`. */
  | { kind: "reply"; replyTo: string };

/** The target's key in a run's cancel table (`run` or `reply:<crid>`, as the gateway writes it). */
export function cancelTargetKey(t: CancelTarget): string {
  return t.kind === "run" ? "run" : `reply:${t.replyTo}`;
}

/** Reads {@link cancelTargetKey} back. */
export function cancelTargetFromKey(key: string): CancelTarget | null {
  if (key === "run") return { kind: "run" };
  if (key.startsWith("reply:")) return { kind: "reply", replyTo: key.slice("reply:".length) };
  return null;
}

/** What {@link Store.requestCancel} did. */
export type CancelOutcome =
  /** `run.cancel_requested` appended with this id. */
  | { kind: "requested"; eventId: number }
  /** The target was already asked to stop: the first request's id, nothing appended. */
  | { kind: "already"; eventId: number }
  /** The run is finished: nothing appended. */
  | { kind: "finished" }
  /** The reply named by the target already ended (checked in the same atomic step as the append). */
  | { kind: "reply_finished"; status: "completed" | "failed" }
  /** No such run. */
  | { kind: "unknown_run" };

/** A chat send as the publish API's long poll lists it. */
export interface SendRecord {
  /** Where it is in the sends log (`<ms>-<seq>` or `<n>`; pass the last one back as `after`). */
  cursor: string;
  /** The chat session. */
  sessionId: string;
  /** The run it was logged in (the session's chat run). */
  runId: string;
  /** The send's idempotency key. */
  clientRequestId: string;
  /** What the user wrote. */
  content: string;
}

/** A snapshot of a run (PROTOCOL §2c / §3). */
export interface SnapshotBody {
  /** The run. */
  runId: string;
  /** The last event the state includes. */
  eventId: number;
  /** The §6 state as JSON text, made by the one reducer (the client's, compiled to wasm). */
  state: string;
}

/** What a resume gets now: an optional snapshot, then contiguous events. */
export interface Replay {
  /** `(eventId, state)` when the resume point is older than the window. */
  snapshot?: { eventId: number; state: string } | undefined;
  /**
   * Envelope JSON texts after the resume point (or after the snapshot), in
   * order, dense. A backend may return a bounded batch: read again from the
   * new cursor until it returns none.
   */
  events: string[];
  /** The run's highest id known when this was read. */
  lastId: number;
  /** `run.completed` is logged. */
  done: boolean;
}

/** The answer to a chat send. */
export interface SendOutcome {
  /** The user message's id. */
  messageId: string;
  /** The run (chat session) it was logged in. */
  runId: string;
  /** First time this `client_request_id` was seen (a reply should start). */
  fresh: boolean;
  /**
   * The session's run had ended (`run.completed`) before this new send:
   * nothing was logged (a repeat of an earlier send still gets its answer).
   */
  finished: boolean;
}

/** A live-tail subscription; `close()` unsubscribes (idempotent). */
export interface Subscription {
  /** Stops the calls. */
  close(): void;
}

/** Called after appends to a run, with the highest id now logged (calls may be coalesced). */
export type AppendListener = (lastId: number) => void;

/** Cancel grace deadline that is due (PROTOCOL §8): the server must end `target` of `runId`. */
export interface DueGrace {
  /** The run. */
  runId: string;
  /** What to end. */
  target: CancelTarget;
}

/** A chat send handed out by {@link Store.claimSends}: answer it, then {@link Store.ackSend} it. */
export interface QueuedSend {
  /** Its entry in the shared send queue (for `ackSend`). */
  queueId: string;
  /** The chat session (its chat run has the same id). */
  sessionId: string;
  /** The send's idempotency key. */
  clientRequestId: string;
  /** What the user wrote. */
  content: string;
  /** The user message's id (`""` when its send record expired before the send was taken). */
  messageId: string;
}

/** A store failure (the backend is unreachable or answered something unexpected). */
export class StoreError extends Error {
  override readonly name = "StoreError";
}

/** {@link Store.append} of a second reply to one send (its `reply_to` already has one): nothing appended. */
export class ReplyTakenError extends Error {
  override readonly name = "ReplyTakenError";
  constructor(readonly replyTo: string) {
    super(`send ${JSON.stringify(replyTo)} already has a reply`);
  }
}

/** A run log backend (see the module docs for the contract). */
export interface Store {
  /** `"memory"`, `"redis"`, … (logs and `/readyz`). */
  readonly name: string;

  /** A fresh run id, unique across every process sharing the store. */
  newRunId(): Promise<string>;

  /** Creates run `id` unless it exists; true when it was created. */
  create(id: string, spec: RunSpec): Promise<boolean>;

  /** The run's settings and bounds, `null` if unknown. */
  meta(id: string): Promise<RunMeta | null>;

  /** Appends one event with the next dense id; `null` if the run is unknown. */
  append(id: string, type: EventType, payload: JsonObject): Promise<number | null>;

  /**
   * Appends `events` atomically with dense ids (all or nothing). With `key`,
   * a repeat of the same key and digest appends nothing and answers the first
   * ids; the same key with another digest is a conflict. A finished run takes
   * nothing. Keys are kept {@link IDEMPOTENCY_TTL_MS}.
   */
  appendBatch(id: string, events: NewEvent[], key?: IdemKey): Promise<BatchOutcome>;

  /** What a client resuming after `after` gets now; `null` if the run is unknown. */
  read(id: string, after: number): Promise<Replay | null>;

  /**
   * Calls `listener` after every later append to run `id` (from any process
   * sharing the store); `null` if the run is unknown. Take it before the
   * `read` it follows, so nothing falls between the two.
   */
  subscribe(id: string, listener: AppendListener): Promise<Subscription | null>;

  /** The state after every logged event (PROTOCOL §2c), from the one reducer; `null` if unknown. */
  snapshot(id: string): Promise<SnapshotBody | null>;

  /**
   * An idempotent chat send into session `session` (created as a chat run,
   * id = session id, if new): logs `message.created` (role user, with the
   * `client_request_id`) and the send for {@link Store.sendsAfter}.
   */
  send(session: string, clientRequestId: string, content: string): Promise<SendOutcome>;

  /** A fresh message id in run `id` (`msg_<n>`, unique in the run). */
  nextMessageId(id: string): Promise<string>;

  /** Forgets events with id < `keepFrom` (they become the snapshot base); false if unknown. */
  prune(id: string, keepFrom: number): Promise<boolean>;

  /**
   * Chat sends logged after `after` (`null`: from the oldest kept), at most
   * `max`, waiting up to `waitMs` for one (less when `signal` aborts); and
   * the cursor to pass next. At least once: a consumer deduplicates by
   * `clientRequestId`.
   */
  sendsAfter(
    after: string | null,
    max: number,
    waitMs: number,
    signal?: AbortSignal,
  ): Promise<{ sends: SendRecord[]; next: string }>;

  /**
   * Asks to stop `target` of run `id` (PROTOCOL §8), atomically: the first
   * request for a target appends `run.cancel_requested` with `payload`; every
   * later one answers that event's id and appends nothing; a finished run
   * takes nothing.
   */
  requestCancel(id: string, target: CancelTarget, payload: JsonObject): Promise<CancelOutcome>;

  /** The id of the `run.cancel_requested` that asked to stop `target`, if any. */
  cancelRequested(id: string, target: CancelTarget): Promise<number | null>;

  /**
   * Records that the server must end `target` of run `id` at `dueMs` (Unix
   * ms) unless a producer did (PROTOCOL §8's grace period). Kept in the
   * store, so any process ends it.
   */
  scheduleGrace(id: string, target: CancelTarget, dueMs: number): Promise<void>;

  /** Claims at most `max` graces due at `nowMs`: each one is claimed by exactly one caller. */
  claimDueGraces(nowMs: number, max: number): Promise<DueGrace[]>;

  /**
   * Optional, for stores that several processes share (Redis): takes new chat
   * sends for `consumer` through one consumer group of every process (the
   * gateway's chat workers' group `replies` too), waiting up to `blockMs`
   * (less when `signal` aborts). Each send is handed to one consumer once.
   * When a store has it, `onSend` handlers are called through it (in
   * whichever process takes the send) instead of in the process that
   * accepted the send. Sends another consumer took and left unacknowledged for
   * `reclaimIdleMs` (it died before answering, or its handler failed) are taken
   * over first. `answering` are the queue ids this consumer is still answering:
   * kept (their idle time starts again, a heartbeat), never handed out again.
   */
  claimSends?(consumer: string, blockMs: number, signal?: AbortSignal, reclaimIdleMs?: number, answering?: readonly string[]): Promise<QueuedSend[]>;

  /**
   * Marks the sends `answering` (queue ids) as still being answered by `consumer`, so no
   * other consumer takes them over (Redis: `XCLAIM … JUSTID`; {@link Store.claimSends} does
   * it too, this is for a consumer too busy to claim).
   */
  heartbeatSends?(consumer: string, answering: readonly string[]): Promise<void>;
  /** Acknowledges a send taken by {@link Store.claimSends} once it is answered. */
  ackSend?(queueId: string): Promise<void>;

  /** True when the backend answers (`/readyz`). */
  ready(): Promise<boolean>;

  /** Releases connections and timers (the store is unusable afterwards). */
  close(): Promise<void>;
}

/** True when `id` may name a run or a session: 1–128 characters, no control characters, no `{`/`}` (Redis hash tags). */
export function validId(id: string): boolean {
  const chars = [...id];
  if (chars.length === 0 || chars.length > 128) return false;
  // eslint-disable-next-line no-control-regex
  return !/[\u0000-\u001f\u007f-\u009f{}]/u.test(id);
}

/** True when `c` is a sends cursor (`<ms>-<seq>`, or `<n>`), the form both stores use. */
export function validCursor(c: string): boolean {
  return /^[0-9]{1,20}(-[0-9]{1,20})?$/.test(c);
}

/** The current time as the envelope's `timestamp` (RFC 3339, UTC, milliseconds). */
export function rfc3339Now(): string {
  return new Date().toISOString();
}

/** The envelope JSON text of one logged event (field order as the gateway writes it). */
export function envelopeText(
  eventId: number,
  runId: string,
  type: EventType,
  payload: JsonObject,
  timestamp: string = rfc3339Now(),
): string {
  return JSON.stringify({ event_id: eventId, run_id: runId, type, timestamp, payload });
}
