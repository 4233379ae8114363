/**
 * `memoryStore()`: run logs in this process (one process only; a restart
 * loses them). The gateway's `MemoryStore` (`server/src/store/memory.rs`)
 * operation for operation. Every operation runs to completion inside one
 * turn of the event loop, so ids are dense and each batch is atomic without
 * locks. Every buffer is bounded; the bounds are {@link MemoryStoreOptions}.
 */
import { Reducer, prunePoint } from "./reducer.js";
import {
  type AppendListener,
  type BatchOutcome,
  type CancelOutcome,
  type CancelTarget,
  type DueGrace,
  type EventType,
  type IdemKey,
  type JsonObject,
  type NewEvent,
  type Replay,
  type RunMeta,
  type RunSpec,
  type SendOutcome,
  type SendRecord,
  type SnapshotBody,
  type Store,
  type Subscription,
  DEFAULT_IDLE_RETENTION_S,
  DEFAULT_RETENTION_S,
  IDEMPOTENCY_TTL_MS,
  ReplyTakenError,
  StoreError,
  cancelTargetKey,
  envelopeText,
  retentionSeconds,
} from "./store.js";

/** Bounds of a {@link memoryStore} (each with its default). */
export interface MemoryStoreOptions {
  /** Events a run keeps for replay (default 200 000, the gateway's); older ones become the snapshot base (pruned in steps of 10 %). */
  window?: number;
  /**
   * Most runs kept (default 10 000). At the bound the oldest finished run is
   * forgotten; when none is finished, creating a run fails (`503`, retried).
   */
  maxRuns?: number;
  /** Most publish idempotency keys per run (default 10 000; beyond it expired ones go first, then the oldest). */
  maxIdempotencyKeys?: number;
  /** Chat sends kept for the publish API's long poll (default 10 000, drop-oldest). */
  maxSends?: number;
  /** Most events one `read` returns (default 1 000; a stream reads on from its new cursor). */
  readBatch?: number;
  /**
   * Sends (`client_request_id`s) and cancel targets remembered per run for
   * idempotency (default 100 000 each, drop-oldest: a retry of a send older
   * than the newest 100 000 of its session would be taken as a new one).
   */
  maxSendsPerRun?: number;
  /**
   * Seconds a finished run (its `run.completed` logged) is kept after its last
   * write (default 7 days, the gateway's `--retention-secs`; 0 = forever).
   */
  retentionS?: number;
  /**
   * Seconds an unfinished run is kept after its last append, send or cancel
   * (default 30 days, the gateway's `--idle-retention-secs`; 0 = forever): a
   * run whose producer died does not stay forever.
   */
  idleRetentionS?: number;
}

/** Most expired runs one create or write forgets (the rest go with the next ones). */
const SWEEP_BATCH = 64;

interface Run {
  id: string;
  spec: RunSpec;
  /** Retained envelope texts; `log[0]` has id `firstId`. */
  log: string[];
  /** Index of `firstId` in `log` (dropped entries are spliced off in steps). */
  head: number;
  firstId: number;
  lastId: number;
  finished: boolean;
  /** State after every event. */
  state: Reducer;
  /** State as of `firstId - 1`, for resumes older than the window. */
  pruned: Reducer | null;
  /** client_request_id → message id (one per send, bounded by the log's sends). */
  sends: Map<string, string>;
  /**
   * client_request_id → how its reply stands (one reply per send, as the Redis append step
   * keeps it); bounded like `sends`.
   */
  replies: Map<string, "streaming" | "completed" | "failed">;
  /** Message id of a reply → the send it answers (kept once it ended; bounded like `sends`). */
  replyOf: Map<string, string>;
  nextMessage: number;
  /** Idempotency key → [digest, first, last, at ms]. */
  idem: Map<string, [string, number, number, number]>;
  /** Cancel target key → its `run.cancel_requested` id. */
  cancels: Map<string, number>;
  listeners: Set<AppendListener>;
  /** When it expires (`performance.now()` ms; null = never). */
  deadline: number | null;
}

class MemoryStore implements Store {
  readonly name = "memory";
  #runs = new Map<string, Run>();
  #runSeq = 1;
  #window: number;
  #maxRuns: number;
  #maxIdem: number;
  #maxSends: number;
  #readBatch: number;
  #maxSendsPerRun: number;
  /** Accepted sends for the long poll: [seq, send], drop-oldest. */
  #sends: Array<[number, SendRecord]> = [];
  #sendSeq = 0;
  #sendWaiters = new Set<() => void>();
  /** Cancel grace deadlines: [due ms, run, target], one per cancelled target. */
  #graces: Array<[number, string, CancelTarget]> = [];
  #closed = false;
  #retentionMs: number;
  #idleMs: number;
  /**
   * Expiry queues, one per retention: run id → deadline. Every deadline in a
   * queue is "the last write + that queue's retention", and a write moves its
   * run to the end, so each queue is in deadline order: the due runs are at
   * its front (O(1) per write, bounded work per sweep, no scan of every run).
   */
  #finishedQ = new Map<string, number>();
  #idleQ = new Map<string, number>();

  constructor(o: MemoryStoreOptions) {
    this.#window = Math.max(1, Math.floor(o.window ?? 200_000));
    this.#maxRuns = Math.max(1, Math.floor(o.maxRuns ?? 10_000));
    this.#maxIdem = Math.max(1, Math.floor(o.maxIdempotencyKeys ?? 10_000));
    this.#maxSends = Math.max(1, Math.floor(o.maxSends ?? 10_000));
    this.#readBatch = Math.max(1, Math.floor(o.readBatch ?? 1000));
    this.#maxSendsPerRun = Math.max(1, Math.floor(o.maxSendsPerRun ?? 100_000));
    this.#retentionMs = retentionSeconds(o.retentionS, DEFAULT_RETENTION_S, "retentionS") * 1000;
    this.#idleMs = retentionSeconds(o.idleRetentionS, DEFAULT_IDLE_RETENTION_S, "idleRetentionS") * 1000;
  }

  /** Run `id` unless unknown or past its deadline (then it is forgotten now). */
  #get(id: string): Run | undefined {
    const r = this.#runs.get(id);
    if (r && r.deadline !== null && r.deadline <= performance.now()) {
      this.#forget(r);
      return undefined;
    }
    return r;
  }

  /** Moves `r`'s deadline to now plus the retention of its state (after a write). */
  #touch(r: Run): void {
    this.#finishedQ.delete(r.id);
    this.#idleQ.delete(r.id);
    const ms = r.finished ? this.#retentionMs : this.#idleMs;
    r.deadline = ms > 0 ? performance.now() + ms : null;
    if (r.deadline !== null) (r.finished ? this.#finishedQ : this.#idleQ).set(r.id, r.deadline);
    this.#sweep();
  }

  /** Forgets at most {@link SWEEP_BATCH} runs past their deadline. */
  #sweep(): void {
    const now = performance.now();
    let budget = SWEEP_BATCH;
    for (const q of [this.#finishedQ, this.#idleQ]) {
      for (const [id, at] of q) {
        if (at > now || budget <= 0) break;
        budget--;
        const r = this.#get(id);
        if (r) this.#forget(r);
        else q.delete(id);
      }
    }
  }

  #live(): void {
    if (this.#closed) throw new StoreError("memory store closed");
  }

  async newRunId(): Promise<string> {
    this.#live();
    const n = this.#runSeq++;
    const rand = Math.floor(Math.random() * 0x1_0000_0000);
    return `run_${String(n).padStart(6, "0")}_${rand.toString(16).padStart(8, "0")}`;
  }

  #createNow(id: string, spec: RunSpec): boolean {
    this.#sweep();
    if (this.#get(id)) return false;
    if (this.#runs.size >= this.#maxRuns) {
      let victim: Run | undefined;
      for (const r of this.#runs.values()) {
        if (r.finished) {
          victim = r;
          break; // Map order is creation order: the oldest finished run
        }
      }
      if (!victim) throw new StoreError(`memory store full: ${this.#maxRuns} unfinished runs (maxRuns)`);
      this.#forget(victim);
    }
    this.#runs.set(id, {
      id,
      spec: { ...spec },
      log: [],
      head: 0,
      firstId: 1,
      lastId: 0,
      finished: false,
      state: Reducer.empty(id),
      pruned: null,
      sends: new Map(),
      replies: new Map(),
      replyOf: new Map(),
      nextMessage: 1,
      idem: new Map(),
      cancels: new Map(),
      listeners: new Set(),
      deadline: null,
    });
    const created = this.#runs.get(id);
    if (created) this.#touch(created);
    return true;
  }

  #forget(r: Run): void {
    this.#runs.delete(r.id);
    this.#finishedQ.delete(r.id);
    this.#idleQ.delete(r.id);
    r.state.free();
    r.pruned?.free();
    r.listeners.clear();
  }

  async create(id: string, spec: RunSpec): Promise<boolean> {
    this.#live();
    return this.#createNow(id, spec);
  }

  #meta(r: Run): RunMeta {
    return { kind: r.spec.kind, firstId: r.firstId, lastId: r.lastId, finished: r.finished, sessionId: r.spec.sessionId };
  }

  async meta(id: string): Promise<RunMeta | null> {
    this.#live();
    const r = this.#get(id);
    return r ? this.#meta(r) : null;
  }

  /** Appends one event to `r` (dense id), reduces it, prunes in steps; returns its id. */
  #appendOne(r: Run, type: EventType, payload: JsonObject): number {
    const id = r.lastId + 1;
    const text = envelopeText(id, r.id, type, payload);
    r.state.apply(id, text);
    r.log.push(text);
    r.lastId = id;
    if (type === "run.completed") r.finished = true;
    const w = replyWrite(r, type, payload);
    if (w) {
      if (w.mid !== undefined) {
        bounded(r.replies, this.#maxSendsPerRun);
        r.replies.set(w.crid, w.status);
        bounded(r.replyOf, this.#maxSendsPerRun);
        r.replyOf.set(w.mid, w.crid);
      } else {
        r.replies.set(w.crid, w.status);
      }
    }
    this.#touch(r);
    // Pruned in steps of 10 % over the window (the one rule, the gateway's: prunePoint).
    const keepFrom = prunePoint(r.firstId, r.lastId, this.#window);
    if (keepFrom !== null) this.#pruneTo(r, keepFrom);
    return id;
  }

  #pruneTo(r: Run, keepFrom: number): void {
    keepFrom = Math.min(keepFrom, r.lastId + 1);
    if (keepFrom <= r.firstId) return;
    const base = r.pruned ?? Reducer.empty(r.id);
    while (r.firstId < keepFrom) {
      const text = r.log[r.head];
      if (text !== undefined) base.apply(r.firstId, text);
      r.head++;
      r.firstId++;
    }
    base.setCursor(keepFrom - 1);
    r.pruned = base;
    r.log.splice(0, r.head);
    r.head = 0;
  }

  #notify(r: Run): void {
    for (const l of [...r.listeners]) {
      try {
        l(r.lastId);
      } catch {
        // A listener's failure is its own; the append stands.
      }
    }
  }

  async append(id: string, type: EventType, payload: JsonObject): Promise<number | null> {
    this.#live();
    const r = this.#get(id);
    if (!r) return null;
    if (replyTaken(r, type, payload)) throw new ReplyTakenError(String(payload["reply_to"]));
    const n = this.#appendOne(r, type, payload);
    this.#notify(r);
    return n;
  }

  async appendBatch(id: string, events: NewEvent[], key?: IdemKey): Promise<BatchOutcome> {
    this.#live();
    const r = this.#get(id);
    if (!r) return { kind: "unknown_run" };
    const now = Date.now();
    if (key) {
      const seen = r.idem.get(key.key);
      if (seen && now - seen[3] < IDEMPOTENCY_TTL_MS) {
        return seen[0] === key.digest ? { kind: "repeated", first: seen[1], last: seen[2] } : { kind: "key_conflict" };
      }
    }
    if (r.finished) return { kind: "finished" };
    // Each event is checked as the batch's earlier events leave the replies (all or nothing).
    const pending: PendingReplies = { replies: new Map(), replyOf: new Map() };
    for (const e of events) {
      if (replyTaken(r, e.type, e.payload, pending)) return { kind: "reply_taken" };
      noteReply(r, e.type, e.payload, pending);
    }
    const first = r.lastId + 1;
    for (const e of events) this.#appendOne(r, e.type, e.payload);
    const last = r.lastId;
    if (key) {
      if (r.idem.size >= this.#maxIdem) {
        for (const [k, v] of r.idem) if (now - v[3] >= IDEMPOTENCY_TTL_MS) r.idem.delete(k);
      }
      if (r.idem.size >= this.#maxIdem) {
        // Map order is insertion order: the first entry is the oldest.
        const oldest = r.idem.keys().next();
        if (!oldest.done) r.idem.delete(oldest.value);
      }
      r.idem.delete(key.key);
      r.idem.set(key.key, [key.digest, first, last, now]);
    }
    if (events.length > 0) this.#notify(r);
    return { kind: "appended", first, last };
  }

  async read(id: string, after: number): Promise<Replay | null> {
    this.#live();
    const r = this.#get(id);
    if (!r) return null;
    let next = after + 1;
    let snapshot: Replay["snapshot"];
    if (next < r.firstId && r.pruned) {
      snapshot = { eventId: r.pruned.cursor, state: r.pruned.stateJson() };
      next = r.pruned.cursor + 1;
    }
    const start = Math.max(next, r.firstId);
    const from = r.head + (start - r.firstId);
    return {
      snapshot,
      events: r.log.slice(from, from + this.#readBatch),
      lastId: r.lastId,
      done: r.finished,
    };
  }

  async subscribe(id: string, listener: AppendListener): Promise<Subscription | null> {
    this.#live();
    const r = this.#get(id);
    if (!r) return null;
    const l: AppendListener = (n) => listener(n);
    r.listeners.add(l);
    return { close: () => void r.listeners.delete(l) };
  }

  async snapshot(id: string): Promise<SnapshotBody | null> {
    this.#live();
    const r = this.#get(id);
    return r ? { runId: r.id, eventId: r.lastId, state: r.state.stateJson() } : null;
  }

  async send(session: string, clientRequestId: string, content: string): Promise<SendOutcome> {
    this.#live();
    this.#createNow(session, { kind: "chat", sessionId: session });
    const r = this.#get(session);
    if (!r) throw new StoreError("session vanished");
    const seen = r.sends.get(clientRequestId);
    if (seen !== undefined) return { messageId: seen, runId: session, fresh: false, finished: false };
    if (r.finished) return { messageId: "", runId: session, fresh: false, finished: true };
    const mid = this.#nextMessageId(r);
    bounded(r.sends, this.#maxSendsPerRun);
    r.sends.set(clientRequestId, mid);
    this.#appendOne(r, "message.created", {
      message_id: mid,
      role: "user",
      client_request_id: clientRequestId,
      content,
    });
    this.#notify(r);
    this.#logSend(session, clientRequestId, content);
    return { messageId: mid, runId: session, fresh: true, finished: false };
  }

  #logSend(session: string, crid: string, content: string): void {
    const seq = ++this.#sendSeq;
    if (this.#sends.length >= this.#maxSends) this.#sends.shift();
    this.#sends.push([
      seq,
      { cursor: `0-${seq}`, sessionId: session, runId: session, clientRequestId: crid, content },
    ]);
    for (const w of [...this.#sendWaiters]) w();
  }

  #nextMessageId(r: Run): string {
    return `msg_${r.nextMessage++}`;
  }

  async nextMessageId(id: string): Promise<string> {
    this.#live();
    const r = this.#get(id);
    if (!r) throw new StoreError(`unknown run ${JSON.stringify(id)}`);
    return this.#nextMessageId(r);
  }

  async prune(id: string, keepFrom: number): Promise<boolean> {
    this.#live();
    const r = this.#get(id);
    if (!r) return false;
    this.#pruneTo(r, keepFrom);
    return true;
  }

  #sendsSince(after: number, max: number): SendRecord[] {
    const out: SendRecord[] = [];
    for (const [n, s] of this.#sends) {
      if (n > after) out.push(s);
      if (out.length >= max) break;
    }
    return out;
  }

  async sendsAfter(
    after: string | null,
    max: number,
    waitMs: number,
    signal?: AbortSignal,
  ): Promise<{ sends: SendRecord[]; next: string }> {
    this.#live();
    // `0-<seq>` (this store's form) or a bare number.
    const tail = after === null ? "0" : (after.split("-").pop() ?? "0");
    const seq = Number.parseInt(tail, 10);
    const from = Number.isFinite(seq) ? seq : 0;
    const deadline = Date.now() + Math.max(0, waitMs);
    for (;;) {
      const got = this.#sendsSince(from, max);
      if (got.length > 0 || Date.now() >= deadline || signal?.aborted || this.#closed) {
        const next = got.length > 0 ? (got[got.length - 1]?.cursor ?? `0-${from}`) : `0-${from}`;
        return { sends: got, next };
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.#sendWaiters.delete(done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
        this.#sendWaiters.add(done);
        signal?.addEventListener("abort", done, { once: true });
      });
    }
  }

  async requestCancel(id: string, target: CancelTarget, payload: JsonObject): Promise<CancelOutcome> {
    this.#live();
    const r = this.#get(id);
    if (!r) return { kind: "unknown_run" };
    const key = cancelTargetKey(target);
    const seen = r.cancels.get(key);
    if (seen !== undefined) return { kind: "already", eventId: seen };
    if (r.finished) return { kind: "finished" };
    const reply = target.kind === "reply" ? r.replies.get(target.replyTo) : undefined;
    if (reply === "completed" || reply === "failed") return { kind: "reply_finished", status: reply };
    const n = this.#appendOne(r, "run.cancel_requested", payload);
    bounded(r.cancels, this.#maxSendsPerRun);
    r.cancels.set(key, n);
    this.#notify(r);
    return { kind: "requested", eventId: n };
  }

  async cancelRequested(id: string, target: CancelTarget): Promise<number | null> {
    this.#live();
    return this.#get(id)?.cancels.get(cancelTargetKey(target)) ?? null;
  }

  async scheduleGrace(id: string, target: CancelTarget, dueMs: number): Promise<void> {
    this.#live();
    // One per target (a cancel is appended once per target), so bounded by the cancels.
    this.#graces.push([dueMs, id, target]);
  }

  async claimDueGraces(nowMs: number, max: number): Promise<DueGrace[]> {
    this.#live();
    const due: DueGrace[] = [];
    this.#graces = this.#graces.filter(([at, runId, target]) => {
      if (at <= nowMs && due.length < max) {
        due.push({ runId, target });
        return false;
      }
      return true;
    });
    return due;
  }

  async ready(): Promise<boolean> {
    return !this.#closed;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const w of [...this.#sendWaiters]) w();
    for (const r of [...this.#runs.values()]) this.#forget(r);
  }
}

/**
 * What a batch's earlier events change of the replies {@link replyTaken} reads (`r.replies`,
 * `r.replyOf`), so each event of a batch is checked as if they were appended (they are not
 * yet: all or nothing). Bounded by the batch: at most one entry per event in each.
 */
interface PendingReplies {
  replies: Map<string, "streaming" | "completed" | "failed">;
  replyOf: Map<string, string>;
}

/**
 * Whether appending (`type`, `payload`) to `r` is refused as the Redis append step refuses it:
 * a second reply to one send, or a delta or an ending of a reply that already ended; after
 * `pending`, a batch's earlier events.
 */
function replyTaken(r: Run, type: EventType, payload: JsonObject, pending?: PendingReplies): boolean {
  const replyTo = payload["reply_to"];
  if (type === "message.created") {
    return typeof replyTo === "string" && (pending?.replies.has(replyTo) === true || r.replies.has(replyTo));
  }
  const mid = payload["message_id"];
  if ((type !== "message.delta" && type !== "message.completed" && type !== "message.failed") || typeof mid !== "string") return false;
  const crid = pending?.replyOf.get(mid) ?? r.replyOf.get(mid);
  const st = crid === undefined ? undefined : (pending?.replies.get(crid) ?? r.replies.get(crid));
  return st === "completed" || st === "failed";
}

/**
 * What appending (`type`, `payload`) writes of the replies, after `pending` (a batch's earlier
 * events): the send `crid` its reply's new status, and on `message.created` the message `mid`
 * answering it. The one formula `#appendOne` writes and a batch's checks note (the Redis
 * append step's `reply_writes`).
 */
function replyWrite(
  r: Run,
  type: EventType,
  payload: JsonObject,
  pending?: PendingReplies,
): { crid: string; status: "streaming" | "completed" | "failed"; mid?: string } | null {
  const mid = payload["message_id"];
  if (typeof mid !== "string") return null;
  const replyTo = payload["reply_to"];
  if (type === "message.created") return typeof replyTo === "string" ? { crid: replyTo, status: "streaming", mid } : null;
  if (type !== "message.completed" && type !== "message.failed") return null;
  const crid = pending?.replyOf.get(mid) ?? r.replyOf.get(mid);
  return crid === undefined ? null : { crid, status: type === "message.completed" ? "completed" : "failed" };
}

/** Notes in `pending` what appending (`type`, `payload`) writes of the replies ({@link replyWrite}). */
function noteReply(r: Run, type: EventType, payload: JsonObject, pending: PendingReplies): void {
  const w = replyWrite(r, type, payload, pending);
  if (!w) return;
  pending.replies.set(w.crid, w.status);
  if (w.mid !== undefined) pending.replyOf.set(w.mid, w.crid);
}

/** Makes room for one more entry in `m` (drop-oldest: a Map iterates in insertion order). */
function bounded<K, V>(m: Map<K, V>, cap: number): void {
  while (m.size >= cap) {
    const oldest = m.keys().next();
    if (oldest.done) return;
    m.delete(oldest.value);
  }
}

/** A store in this process's memory (one process; see {@link MemoryStoreOptions} for its bounds). */
export function memoryStore(options: MemoryStoreOptions = {}): Store {
  return new MemoryStore(options);
}
