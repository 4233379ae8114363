/**
 * `createRunstream()`: PROTOCOL.md's server half inside a Node backend.
 *
 * One entry, thin adapters (STYLE.md): `rs.fetch(Request) → Response` is the
 * router for every route under `basePath`; `rs.node` (node:http / Express)
 * and `rs.attachWebSocket` (PROTOCOL §2b on `ws`) are adapters over the same
 * handlers. Authorization is one gate every handler passes through before it
 * sees a run (`#gate`), mirroring the gateway's `Granted<Rule>` extractor:
 * the same checks in the same order, the same answers.
 */
import { createHash, randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse, Server as HttpServer } from "node:http";
import type { Server as HttpsServer } from "node:https";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket, type RawData } from "ws";

import {
  type AuthAction,
  type AuthContext,
  type AuthGrant,
  type Authorize,
  type DenyReason,
  PublishKey,
  bearer,
} from "./auth.js";
import { Feeds, type FeedEvent } from "./feed.js";
import { checkBatch } from "./reducer.js";
import {
  type CancelTarget,
  type EventType,
  type Json,
  type JsonObject,
  type NewEvent,
  type RunKind,
  type RunMeta,
  type Store,
  StoreError,
  behind,
  cancelTargetKey,
  rfc3339Now,
  validCursor,
  validId,
} from "./store.js";

/** Options of {@link createRunstream} (SERVER.md §2). */
export interface RunstreamOptions {
  /** Where run logs live: `memoryStore()` (one process) or `redisStore()`. */
  store: Store;
  /**
   * Who may do what (PROTOCOL §7): `jwtAuth({ secret } | { publicKey })`, your
   * own {@link Authorize} function, or `"none"` (explicitly open: local
   * development only). Required: there is no default.
   */
  auth: Authorize | "none";
  /** Enables the publish API (SERVER.md §1) with this key (at least 16 bytes); omitted, those routes answer 404. */
  publishKey?: string | undefined;
  /** Heartbeat comment lines on an idle SSE stream (default 15 000 ms). */
  heartbeatMs?: number | undefined;
  /** Where the PROTOCOL routes live (default `/api`). */
  basePath?: string | undefined;
  /** PROTOCOL §8's grace period: a cancelled target no producer ended is ended by the kit after it (default 30 000 ms). */
  cancelGraceMs?: number | undefined;
  /**
   * A chat send another process took for its `onSend` and left unanswered this long (it died) is
   * taken over by this one (Redis `XAUTOCLAIM`; default {@link DEFAULT_SEND_CLAIM_IDLE_MS}, the
   * gateway's `--send-claim-idle-ms`).
   */
  sendClaimIdleMs?: number | undefined;
  /** A `retry: <ms>` line sent when an SSE stream opens (default: none; the client's own backoff applies). */
  retryMs?: number | undefined;
  /** Largest request body (default 1 MiB; `413` past it). */
  maxBodyBytes?: number | undefined;
  /** Most runs one WebSocket follows at once (default 256; past it `unavailable`). */
  maxRunsPerSocket?: number | undefined;
  /** Bytes a WebSocket may hold unsent before the kit waits for it (default 1 MiB). */
  wsBufferBytes?: number | undefined;
  /** How long a client that stops reading may stall its stream before it is disconnected (default 10 000 ms). */
  slowClientMs?: number | undefined;
  /**
   * Origins (`scheme://host[:port]`) whose pages may call the routes
   * cross-origin, with credentials (CORS; the gateway's `--cors-origin`).
   * Default: same origin only: no CORS headers, and a WebSocket upgrade from
   * another origin carries no cookie credentials (its frames must carry headers).
   */
  corsOrigins?: string[] | undefined;
  /** Structured log lines (`stream.open`, `send.accepted`, …); default: none. Tokens and header values are never passed. */
  log?: ((event: string, fields: Record<string, Json | undefined>) => void) | undefined;
}

/** A chat send handed to {@link Runstream.onSend}. */
export interface SendEvent {
  /** The chat session. */
  sessionId: string;
  /** The session's chat run (its id is the session id): append the reply here. */
  runId: string;
  /** The send's idempotency key: pass it as the reply's `reply_to`. */
  clientRequestId: string;
  /** What the user wrote. */
  content: string;
  /** The user message's id. */
  messageId: string;
}

/** What {@link Runstream.append} and {@link Runstream.createRun} reject with. */
export class RunstreamError extends Error {
  override readonly name = "RunstreamError";
  /**
   * Why: the batch is invalid (`message` names `events[i]`), the run is unknown or finished, the key was
   * used with another batch, or (`reply_taken`) its `message.created` answers a send that already has a
   * reply: another consumer answered it, or it continues a reply that already ended (on redisStore: the
   * send was taken over from this process after it stopped heartbeating for `sendClaimIdleMs`, and its
   * reply ended `message.failed`); an `onSend` handler may stop; the kit acknowledges the send.
   */
  readonly code: "invalid" | "unknown_run" | "finished" | "key_conflict" | "reply_taken";
  constructor(code: RunstreamError["code"], message: string) {
    super(message);
    this.code = code;
  }
}

/** An event to append in-process (the kit gives it its id, run id and timestamp). */
export interface EventInput {
  /** PROTOCOL §4 type (not `snapshot` or `run.cancel_requested`). */
  type: EventType;
  /** Its payload. */
  payload: JsonObject;
}

/** The kit's server: {@link createRunstream}'s result. */
export interface Runstream {
  /** The router: every PROTOCOL route under `basePath` (and the publish API with a key); 404 outside them. */
  fetch(request: Request): Promise<Response>;
  /**
   * The node:http / Express adapter: `http.createServer(rs.node)` or
   * `app.use(rs.node)` (with `next`, a path outside the routes goes on to it).
   * Streams flush their headers at once.
   */
  node(req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): void;
  /** PROTOCOL §2b on `server`'s upgrades at `path` (default `${basePath}/ws`); `close()` detaches and closes its sockets. */
  attachWebSocket(server: HttpServer | HttpsServer, options?: { path?: string }): { close(): Promise<void> };
  /** Creates a run (a fresh id unless `runId` is given); `created` is false when it existed. */
  createRun(options?: { runId?: string; sessionId?: string; kind?: RunKind }): Promise<{ runId: string; created: boolean }>;
  /**
   * Appends events atomically with dense ids, validated as the publish API
   * validates them. With `idempotencyKey`, a repeat of the same key and
   * events appends nothing and answers the same ids.
   */
  append(
    runId: string,
    events: EventInput[],
    options?: { idempotencyKey?: string },
  ): Promise<{ firstEventId: number; lastEventId: number }>;
  /**
   * Calls `handler` once per new chat send (the session's chat run; idempotent by
   * `client_request_id`); returns an unsubscribe. On a store shared by processes
   * (`redisStore`), sends are handed out through one consumer group of every
   * process (the gateway's chat workers' group `replies` too): each send is answered
   * once, by whichever process with a handler takes it, also a send another
   * process accepted. On `memoryStore`, the process that accepted the send answers it.
   */
  onSend(handler: (send: SendEvent) => void | Promise<void>): () => void;
  /** An AbortSignal that fires when `run.cancel_requested` is appended for the run (or, with `replyTo`, for that reply). */
  cancelSignal(runId: string, options?: { replyTo?: string }): AbortSignal;
  /** The store. */
  readonly store: Store;
  /** Stops the grace timer, open streams and sockets (the store stays open). */
  close(): Promise<void>;
}

/** Shortest publish key accepted (the gateway's `--publish-key-file` rule). */
export const MIN_PUBLISH_KEY_BYTES = 16;
/** Longest `Idempotency-Key` (visible ASCII). */
export const MAX_KEY_LEN = 200;
/** Longest wait of the sends long poll. */
export const MAX_WAIT_MS = 30_000;
/** Most sends one poll answers. */
export const SENDS_PER_POLL = 500;
/** How long one claim of the send loop waits for new sends (ms) before it looks again. */
export const SEND_CLAIM_BLOCK_MS = 1000;
/** Default of `sendClaimIdleMs` (ms), as the gateway's `--send-claim-idle-ms`. */
export const DEFAULT_SEND_CLAIM_IDLE_MS = 30_000;
/** The shortest `sendClaimIdleMs` accepted (ms), as the gateway's bound. */
export const MIN_SEND_CLAIM_IDLE_MS = 1000;
/**
 * Most sends one process answers at once through the store's consumer group: at the
 * bound it claims no more until an answer ends (other processes take the rest).
 */
export const MAX_SENDS_IN_FLIGHT = 64;
/** Longest cancel `reason`. */
export const MAX_REASON_CHARS = 1000;
/** WebSocket frames of one socket waiting to be handled (past it the socket is closed with 1008). */
export const MAX_PENDING_FRAMES = 256;
/** Graces claimed per poll. */
const GRACES_PER_POLL = 100;

type Principal = { kind: "open" } | { kind: "publisher" } | { kind: "user"; grant: AuthGrant };

type Gate =
  | { ok: true; principal: Principal; meta: RunMeta | null; expiresAtMs: number | undefined; subject: string | undefined }
  | { ok: false; status: 401 | 403 | 404 | 503; reason: DenyReason | "store" };

const enc = new TextEncoder();
/** An SSE heartbeat comment, encoded once. */
const HEARTBEAT = enc.encode(": hb\n\n");
/** The first bytes of an SSE stream without `retryMs`. */
const OPENED = enc.encode(": open\n\n");
/** Chunks an SSE body for the fetch adapter holds for a reader that is behind before the stream waits for it. */
const SSE_STREAM_CHUNKS = 64;
/** The longest delay setTimeout takes (2^31 − 1 ms); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8", ...headers } });
}

function json(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, { status, headers: { "content-type": "application/json", ...headers } });
}

function unavailable(): Response {
  return text(503, "store unavailable", { "retry-after": "1" });
}

function denied(g: Extract<Gate, { ok: false }>): Response {
  switch (g.status) {
    case 401:
      return text(401, "unauthorized", { "www-authenticate": 'Bearer realm="runstream"' });
    case 403:
      return text(403, "forbidden");
    case 404:
      return text(404, "unknown run");
    case 503:
      return unavailable();
  }
}

/** The §2b error code of a gate refusal. */
function denyCode(g: Extract<Gate, { ok: false }>): { code: string; message: string } {
  switch (g.status) {
    case 401:
      return { code: "unauthorized", message: "unauthorized" };
    case 403:
      return { code: "forbidden", message: "forbidden" };
    case 404:
      return { code: "not_found", message: "unknown run" };
    case 503:
      return { code: "unavailable", message: "store unavailable" };
  }
}

/** A request body that is not UTF-8: answered 400, never stored with U+FFFD in its place (as the gateway). */
class InvalidUtf8 {
  readonly message = "Failed to parse the request body as JSON: invalid UTF-8";
}
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** The text of `bytes`, or {@link InvalidUtf8}. */
function utf8(bytes: Buffer): string | InvalidUtf8 {
  try {
    return UTF8.decode(bytes);
  } catch {
    return new InvalidUtf8();
  }
}

/** Reads a request body, at most `max` bytes (`null`: too large; {@link InvalidUtf8}: not UTF-8). */
async function readBody(request: Request, max: number): Promise<string | null | InvalidUtf8> {
  const len = request.headers.get("content-length");
  if (len !== null && Number(len) > max) return null;
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => undefined);
      return null;
    }
    chunks.push(value);
  }
  return utf8(Buffer.concat(chunks));
}

function parseJson(s: string): Json | undefined {
  try {
    return JSON.parse(s) as Json;
  } catch {
    return undefined;
  }
}

/** A JSON `Content-Type` (`application/json` or `…+json`), as the gateway's JSON extractor requires. */
function isJsonType(request: Request): boolean {
  const ct = (request.headers.get("content-type") ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  return ct === "application/json" || (ct.startsWith("application/") && ct.endsWith("+json"));
}

const NOT_JSON_TYPE = "Expected request with `Content-Type: application/json`";

/**
 * A JSON body read as the gateway's extractor reads it: no `Content-Type`
 * → none (an optional body), another type → 415, not JSON → 400.
 */
type BodyJson = { kind: "none" } | { kind: "value"; value: Json } | { kind: "reject"; status: 400 | 415; text: string };
function jsonBody(request: Request, raw: string): BodyJson {
  if (request.headers.get("content-type") === null) return { kind: "none" };
  if (!isJsonType(request)) return { kind: "reject", status: 415, text: NOT_JSON_TYPE };
  const value = parseJson(raw);
  if (value === undefined) return { kind: "reject", status: 400, text: "Failed to parse the request body as JSON" };
  return { kind: "value", value };
}

const SHAPE = "Failed to deserialize the JSON body into the target type";

function isObject(v: Json | undefined): v is { [k: string]: Json } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Unknown keys of `o` outside `allowed` (the gateway's bodies deny them). */
function unknownKey(o: { [k: string]: Json }, allowed: string[]): string | undefined {
  return Object.keys(o).find((k) => !allowed.includes(k));
}

/** The §6 state fields the cancel rules read. */
interface StateView {
  status: string;
  messages: Array<{ message_id?: string | null; client_request_id?: string | null; reply_to?: string | null; status: string }>;
}

function isFinishedStatus(s: string): boolean {
  return s === "succeeded" || s === "failed" || s === "cancelled";
}

type CancelAnswer =
  | { kind: "accepted"; eventId: number }
  | { kind: "finished"; status: string }
  | { kind: "invalid"; message: string }
  | { kind: "not_found" }
  | { kind: "too_early" }
  | { kind: "unavailable" };

type SendAnswer =
  | { kind: "accepted"; messageId: string; runId: string }
  | { kind: "finished" }
  | { kind: "invalid"; message: string }
  | { kind: "unavailable" };

/**
 * A stream's output: the producer loop calls these, each transport writes them
 * its way. `event`, `snapshot` and `heartbeat` queue a frame; `flush` ends a
 * batch (one socket write for all of them) and waits, bounded, for a reader
 * that is behind.
 */
interface Sink {
  event(ev: FeedEvent): void | Promise<void>;
  snapshot(id: number, state: string): void | Promise<void>;
  heartbeat(): void | Promise<void>;
  flush(): Promise<void>;
}

/** Where an SSE stream's bytes go: a node `ServerResponse` (direct) or a web `ReadableStream`. */
interface SseOut {
  /** Queues bytes; they go out on the next {@link SseOut.flush}. */
  write(b: Uint8Array): void;
  /** Sends what was queued; false when the client did not read for `slowClientMs`. */
  flush(): Promise<boolean>;
  /** Ends the response; `drop`: at once, queued bytes unsent. */
  end(drop: boolean): void;
}

type EndReason = "completed" | "run_gone" | "store_error" | "expired" | "client_gone" | "closed";

/** Creates the kit's server (SERVER.md §2). */
export function createRunstream(options: RunstreamOptions): Runstream {
  const store = options.store;
  if (options.auth === undefined) {
    throw new Error('createRunstream: choose `auth`: jwtAuth({ secret } | { publicKey }), your own function, or "none" (local development)');
  }
  const auth = options.auth;
  if (options.publishKey !== undefined && Buffer.byteLength(options.publishKey) < MIN_PUBLISH_KEY_BYTES) {
    throw new Error(`createRunstream: publishKey must be at least ${MIN_PUBLISH_KEY_BYTES} bytes`);
  }
  const key = options.publishKey !== undefined ? new PublishKey(options.publishKey) : null;
  const heartbeatMs = Math.max(1, options.heartbeatMs ?? 15_000);
  const base = (options.basePath ?? "/api").replace(/\/+$/, "");
  const graceMs = Math.max(0, options.cancelGraceMs ?? 30_000);
  const sendClaimIdleMs = options.sendClaimIdleMs ?? DEFAULT_SEND_CLAIM_IDLE_MS;
  // A live consumer heartbeats its sends every third of it: shorter than 1 s would take
  // live consumers' sends (the gateway's --send-claim-idle-ms has the same bound).
  if (!Number.isFinite(sendClaimIdleMs) || sendClaimIdleMs < MIN_SEND_CLAIM_IDLE_MS) {
    throw new RangeError(`sendClaimIdleMs: at least ${MIN_SEND_CLAIM_IDLE_MS}, not ${String(options.sendClaimIdleMs)}`);
  }
  const maxBody = options.maxBodyBytes ?? 1 << 20;
  const maxRunsPerSocket = options.maxRunsPerSocket ?? 256;
  const wsBufferBytes = options.wsBufferBytes ?? 1 << 20;
  const slowClientMs = options.slowClientMs ?? 10_000;
  const log = (event: string, fields: Record<string, Json | undefined>): void => {
    try {
      options.log?.(event, fields);
    } catch {
      // A logger's failure never fails a request.
    }
  };
  const corsOrigins = new Set(options.corsOrigins ?? []);
  /** A cross-origin caller this kit lets in (`null`: same origin or no Origin header: no CORS needed). */
  const crossOrigin = (origin: string | null | undefined, host: string | null | undefined): "allowed" | "refused" | null => {
    if (!origin) return null;
    const bare = origin.replace(/^https?:\/\//, "");
    if (host && bare === host && bare !== origin) return null;
    return corsOrigins.has(origin) ? "allowed" : "refused";
  };
  const sendHandlers = new Set<(s: SendEvent) => void | Promise<void>>();
  /** Aborted by close(): every open stream and long poll ends. */
  const life = new AbortController();

  /**
   * Calls every onSend handler with `ev`; true when all of them succeeded. A handler whose reply
   * was refused as a second reply to the send (`reply_taken`: another consumer answered it, this
   * one was slow or the send was taken over from it) counts as done.
   */
  async function answer(ev: SendEvent): Promise<boolean> {
    const results = await Promise.allSettled([...sendHandlers].map((h) => Promise.resolve().then(() => h(ev))));
    let ok = true;
    for (const r of results) {
      if (r.status === "rejected") {
        const e: unknown = r.reason;
        if (e instanceof RunstreamError && e.code === "reply_taken") {
          log("send.reply_taken", { run_id: ev.runId, client_request_id: ev.clientRequestId });
          continue;
        }
        ok = false;
        log("send.handler_failed", { run_id: ev.runId, error: e instanceof Error ? e.message : String(e) });
      }
    }
    return ok;
  }

  // Sends through the store's consumer group (Redis: `replies` on `runstream:sends`, the
  // gateway's chat workers' group): while this process has onSend handlers it is one
  // consumer, so each send is answered once across every process, kit or gateway. A send
  // is acknowledged once its handlers succeeded (as the gateway's worker does); one whose
  // handler failed stays pending in the group.
  const consumer = `kit-${process.pid}-${randomUUID().slice(0, 8)}`;
  let sendLoopStop: AbortController | null = null;
  async function sendLoop(stop: AbortController): Promise<void> {
    const claim = store.claimSends?.bind(store);
    const ack = store.ackSend?.bind(store);
    if (!claim || !ack) return;
    let inFlight = 0;
    /** The queue ids being answered here: kept by each claim's heartbeat, never taken twice. */
    const answering = new Set<string>();
    let freed: (() => void) | null = null;
    // Claims (and so heartbeats the sends being answered) at least 3 times per idle time.
    const blockMs = Math.min(SEND_CLAIM_BLOCK_MS, Math.max(50, Math.floor(sendClaimIdleMs / 3)));
    const heartbeat = store.heartbeatSends?.bind(store);
    while (!stop.signal.aborted && !life.signal.aborted) {
      // A claim takes up to 16 sends: claim only with room for all of them. While full, the
      // sends being answered are still heartbeaten every blockMs, or a long reply (past the
      // claim idle) would be taken over by another process and answered twice.
      while (inFlight > MAX_SENDS_IN_FLIGHT - 16 && !stop.signal.aborted) {
        const woke = await new Promise<boolean>((r) => {
          const done = (v: boolean): void => {
            clearTimeout(t);
            freed = null;
            stop.signal.removeEventListener("abort", onAbort);
            r(v);
          };
          const onAbort = (): void => done(true);
          const t = setTimeout(() => done(false), blockMs);
          freed = () => done(true);
          stop.signal.addEventListener("abort", onAbort, { once: true });
        });
        if (!woke && heartbeat && answering.size > 0) {
          await heartbeat(consumer, [...answering]).catch((e: unknown) =>
            log("send.heartbeat_failed", { error: e instanceof Error ? e.message : String(e) }),
          );
        }
      }
      if (stop.signal.aborted) break;
      let batch;
      try {
        batch = await claim(consumer, blockMs, stop.signal, sendClaimIdleMs, [...answering]);
      } catch (e) {
        log("send.claim_failed", { error: e instanceof Error ? e.message : String(e) });
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      for (const q of batch) {
        const ev: SendEvent = { sessionId: q.sessionId, runId: q.sessionId, clientRequestId: q.clientRequestId, content: q.content, messageId: q.messageId };
        inFlight++;
        answering.add(q.queueId);
        void answer(ev)
          .then(async (ok) => {
            if (!ok) return;
            try {
              await ack(q.queueId);
            } catch (e) {
              log("send.ack_failed", { run_id: ev.runId, error: e instanceof Error ? e.message : String(e) });
            }
          })
          .finally(() => {
            answering.delete(q.queueId);
            inFlight--;
            const wake = freed;
            freed = null;
            wake?.();
          });
      }
    }
  }
  life.signal.addEventListener("abort", () => sendLoopStop?.abort(), { once: true });
  const sockets = new Set<{ close(): Promise<void> }>();

  // ---- the gate (PROTOCOL §7; the gateway's Gate::check) ----

  const principalOf = async (ctx: Omit<AuthContext, "runExists" | "runSessionId">, meta: RunMeta | null): Promise<Principal | AuthGrant> => {
    if (key && key.matches(bearer(ctx.headers.get("authorization")))) return { kind: "publisher" };
    if (auth === "none") return { kind: "open" };
    const r = await auth({ ...ctx, runExists: meta !== null, runSessionId: meta?.sessionId });
    const grant: AuthGrant = typeof r === "string" ? { decision: r } : r;
    return { kind: "user", grant };
  };

  /**
   * In-flight meta reads of streams being opened, by run: a burst of clients
   * opening one run shares one store read. Only a known run is shared (a read
   * sent before the run was created must not answer 404 to a client who saw
   * it created: an unknown run is read again); a shared meta may be a moment
   * old, which a stream tolerates (it reads the log itself). Entries last
   * while their read does: at most one per run being opened.
   */
  const metaReads = new Map<string, Promise<RunMeta | null>>();
  async function readMeta(id: string): Promise<RunMeta | null> {
    const shared = metaReads.get(id);
    if (shared) {
      const m = await shared.catch(() => null);
      if (m !== null) return m;
      return store.meta(id);
    }
    const p = store.meta(id);
    metaReads.set(id, p);
    try {
      return await p;
    } finally {
      if (metaReads.get(id) === p) metaReads.delete(id);
    }
  }

  async function gate(
    request: Request,
    headers: Headers,
    action: AuthAction,
    id: string,
  ): Promise<Gate> {
    let meta: RunMeta | null = null;
    try {
      if (action === "read") meta = await readMeta(id);
      else if (action !== "publish") meta = await store.meta(id);
    } catch {
      return { ok: false, status: 503, reason: "store" };
    }
    const ctx = {
      request,
      headers,
      action,
      runId: id,
      sessionId: action === "send" ? id : meta?.sessionId,
    };
    let p: Principal | AuthGrant;
    try {
      p = await principalOf(ctx, meta);
    } catch (e) {
      log("auth.error", { error: e instanceof Error ? e.message : String(e) });
      return { ok: false, status: 503, reason: "store" };
    }
    const deny = (status: 401 | 403 | 404, reason: DenyReason): Gate => {
      log("auth.denied", { action, run_id: id, reason, status });
      return { ok: false, status, reason };
    };
    const principal: Principal = "decision" in p ? { kind: "user", grant: p } : p;
    if (principal.kind === "user") {
      const g = principal.grant;
      if (g.decision === "unauthorized") return deny(401, g.reason ?? "missing");
      if (g.decision === "forbidden") return deny(403, g.reason ?? "not_granted");
    }
    const allowed = (): Gate => ({
      ok: true,
      principal,
      meta,
      expiresAtMs: principal.kind === "user" ? principal.grant.expiresAtMs : undefined,
      subject: principal.kind === "user" ? principal.grant.subject : undefined,
    });
    switch (action) {
      case "publish":
        if (principal.kind === "publisher") return allowed();
        if (principal.kind === "open") return deny(401, "missing");
        return deny(403, "not_granted"); // an "allow" opens no publish route: the key alone does
      case "send":
        if (principal.kind === "publisher") return deny(403, "publisher_send");
        return allowed();
      case "read":
      case "cancel":
        if (meta === null) return deny(404, "unknown_run");
        return allowed();
    }
  }

  // ---- shared handlers ----

  async function acceptSend(session: string, crid: string, content: string): Promise<SendAnswer> {
    if (!validId(session)) {
      return { kind: "invalid", message: "session_id must be 1 to 128 characters, without control characters or braces" };
    }
    if (crid.length === 0 || Buffer.byteLength(crid) > 128) {
      return { kind: "invalid", message: "client_request_id must be 1 to 128 characters" };
    }
    const bytes = Buffer.byteLength(content);
    if (bytes === 0 || bytes > 100_000) return { kind: "invalid", message: "content must be 1 to 100000 bytes" };
    let out;
    try {
      out = await store.send(session, crid, content);
    } catch (e) {
      log("store.error", { error: String(e) });
      return { kind: "unavailable" };
    }
    if (out.finished) return { kind: "finished" };
    log("send.accepted", { run_id: out.runId, client_request_id: crid, message_id: out.messageId, fresh: out.fresh });
    // A store shared by processes hands the send to one consumer of its group (sendLoop);
    // otherwise the handlers run here, in the process that accepted it.
    if (out.fresh && !store.claimSends) {
      const ev: SendEvent = { sessionId: session, runId: out.runId, clientRequestId: crid, content, messageId: out.messageId };
      void answer(ev);
    }
    return { kind: "accepted", messageId: out.messageId, runId: out.runId };
  }

  async function snapshotState(runId: string): Promise<StateView | null> {
    const snap = await store.snapshot(runId);
    if (!snap) return null;
    return JSON.parse(snap.state) as StateView;
  }

  async function cancel(runId: string, body: Json | undefined): Promise<CancelAnswer> {
    if (!isObject(body) || unknownKey(body, ["client_request_id", "reason", "reply_to"]) !== undefined) {
      return { kind: "invalid", message: "expected {client_request_id, reason?, reply_to?}" };
    }
    const crid = body["client_request_id"];
    const reason = body["reason"] ?? null;
    const replyTo = body["reply_to"] ?? null;
    if (typeof crid !== "string" || (reason !== null && typeof reason !== "string") || (replyTo !== null && typeof replyTo !== "string")) {
      return { kind: "invalid", message: "expected {client_request_id, reason?, reply_to?}" };
    }
    const okId = (s: string): boolean => s.length > 0 && [...s].length <= 128;
    if (!okId(crid)) return { kind: "invalid", message: "client_request_id must be 1 to 128 characters" };
    if (replyTo !== null && !okId(replyTo)) return { kind: "invalid", message: "reply_to must be 1 to 128 characters" };
    if (reason !== null && [...reason].length > MAX_REASON_CHARS) {
      return { kind: "invalid", message: `reason must be at most ${MAX_REASON_CHARS} characters` };
    }
    const target: CancelTarget = replyTo !== null ? { kind: "reply", replyTo } : { kind: "run" };
    try {
      const seen = await store.cancelRequested(runId, target);
      if (seen !== null) return { kind: "accepted", eventId: seen };
      if (target.kind === "reply") {
        const st = await snapshotState(runId);
        const sent = st?.messages.some((m) => m.client_request_id === target.replyTo) ?? false;
        if (!sent) return { kind: "too_early" };
        const replies = st?.messages.filter((m) => m.reply_to === target.replyTo) ?? [];
        const last = replies[replies.length - 1];
        if (last && last.status !== "streaming") return { kind: "finished", status: last.status };
      }
      const payload: JsonObject = { client_request_id: crid };
      if (reason !== null) payload["reason"] = reason;
      if (replyTo !== null) payload["reply_to"] = replyTo;
      const out = await store.requestCancel(runId, target, payload);
      switch (out.kind) {
        case "requested":
          log("cancel.requested", { run_id: runId, event_id: out.eventId, target: cancelTargetKey(target), client_request_id: crid });
          await store.scheduleGrace(runId, target, Date.now() + graceMs).catch((e: unknown) =>
            log("cancel.grace_unscheduled", { run_id: runId, error: String(e) }),
          );
          return { kind: "accepted", eventId: out.eventId };
        case "already":
          return { kind: "accepted", eventId: out.eventId };
        case "finished": {
          const st = await snapshotState(runId);
          return { kind: "finished", status: st?.status ?? "finished" };
        }
        case "reply_finished":
          return { kind: "finished", status: out.status };
        case "unknown_run":
          return { kind: "not_found" };
      }
    } catch (e) {
      log("store.error", { run_id: runId, error: String(e) });
      return { kind: "unavailable" };
    }
  }

  /**
   * Ends `target` of `runId` when no producer did within the grace (the gateway's
   * `cancel::end_target`). A reply a consumer starts while this decides (the empty ended
   * reply is refused, `reply_taken`) is read again and ended: a stop always ends (PROTOCOL §8).
   */
  async function endTarget(runId: string, target: CancelTarget): Promise<void> {
    for (let i = 0; i < 3; i++) if (await endOnce(runId, target)) return;
  }

  /** One attempt of {@link endTarget}: false when the reply started meanwhile (read again). */
  async function endOnce(runId: string, target: CancelTarget): Promise<boolean> {
    const st = await snapshotState(runId);
    if (!st || isFinishedStatus(st.status)) return true;
    const events: NewEvent[] = [];
    const end = (mid: string): NewEvent => ({ type: "message.completed", payload: { message_id: mid, finish_reason: "cancelled" } });
    if (target.kind === "reply") {
      const replies = st.messages.filter((m) => m.reply_to === target.replyTo);
      for (const m of replies) if (m.status === "streaming" && m.message_id) events.push(end(m.message_id));
      if (replies.length === 0) {
        const mid = await store.nextMessageId(runId);
        events.push({ type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: target.replyTo } });
        events.push(end(mid));
      }
    } else {
      for (const m of st.messages) if (m.status === "streaming" && m.message_id) events.push(end(m.message_id));
      events.push({ type: "run.completed", payload: { status: "cancelled" } });
    }
    if (events.length === 0) return true;
    // The reply started meanwhile: read again, and end it.
    if ((await store.appendBatch(runId, events)).kind === "reply_taken") return false;
    log("cancel.ended_by_server", { run_id: runId, target: cancelTargetKey(target), events: events.length });
    return true;
  }

  // Every process polls for due graces, so a cancel ends also when the process that took it died.
  let polling = false;
  const graceTimer = setInterval(
    () => {
      if (polling) return;
      polling = true;
      store
        .claimDueGraces(Date.now(), GRACES_PER_POLL)
        .then((due) =>
          Promise.all(
            due.map((d) =>
              endTarget(d.runId, d.target).catch((e: unknown) => log("cancel.grace_failed", { run_id: d.runId, error: String(e) })),
            ),
          ),
        )
        .catch((e: unknown) => log("cancel.grace_poll_failed", { error: String(e) }))
        .finally(() => {
          polling = false;
        });
    },
    Math.min(1000, Math.max(50, Math.floor(graceMs / 4))),
  );
  graceTimer.unref();

  /** The live fan-out: one store subscription and one read per append per run, frames encoded once. */
  const feeds = new Feeds(store);

  /**
   * Streams run `runId` to `sink` from after `last`: (snapshot,) replay, then
   * live, until the run completes, the credentials expire or `signal` aborts.
   * Per stream: one heartbeat timer (re-armed, not re-made, per wait), one
   * expiry timer and one abort listener for its whole life.
   */
  async function produce(
    runId: string,
    last: number,
    sink: Sink,
    signal: AbortSignal,
    untilMs: number | undefined,
    heartbeats: boolean,
  ): Promise<EndReason> {
    type Wake = "wake" | "heartbeat" | "expired" | "abort";
    let dirty = true;
    let waiter: ((w: Wake) => void) | null = null;
    const follow = await feeds.follow(runId, () => {
      dirty = true;
      waiter?.("wake");
    });
    if (!follow) return "run_gone";
    const hb = heartbeats ? setTimeout(() => waiter?.("heartbeat"), heartbeatMs) : null;
    // setTimeout's longest delay is 2^31 − 1 ms (~24.8 days): a later expiry is re-armed when it fires early.
    const armExpiry = (at: number): NodeJS.Timeout =>
      setTimeout(() => waiter?.("expired"), Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now())));
    let exp = untilMs !== undefined ? armExpiry(untilMs) : null;
    const onAbort = (): void => waiter?.("abort");
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      let cursor = last;
      for (;;) {
        if (signal.aborted) return life.signal.aborted ? "closed" : "client_gone";
        if (untilMs !== undefined && Date.now() >= untilMs) return "expired";
        dirty = false;
        const rep = await follow.read(cursor);
        if (!rep) return "run_gone";
        const progressed = rep.snapshot !== undefined || rep.events.length > 0;
        if (rep.snapshot) {
          cursor = rep.snapshot.eventId;
          const p = sink.snapshot(rep.snapshot.eventId, rep.snapshot.state);
          if (p) await p;
        }
        for (const ev of rep.events) {
          cursor = ev.id;
          const p = sink.event(ev);
          if (p) await p;
        }
        if (progressed) await sink.flush();
        if (cursor < rep.lastId && progressed) continue;
        if (rep.done && cursor >= rep.lastId) return "completed";
        if (dirty || signal.aborted) continue;
        const woke = await new Promise<Wake>((resolve) => {
          waiter = resolve;
          hb?.refresh();
        });
        waiter = null;
        if (woke === "expired") {
          if (untilMs === undefined || Date.now() >= untilMs) return "expired";
          exp = armExpiry(untilMs);
        }
        if (woke === "heartbeat") {
          const p = sink.heartbeat();
          if (p) await p;
          await sink.flush();
        }
      }
    } catch (e) {
      if (signal.aborted) return life.signal.aborted ? "closed" : "client_gone";
      log("store.error", { run_id: runId, error: String(e) });
      return "store_error";
    } finally {
      if (hb) clearTimeout(hb);
      if (exp) clearTimeout(exp);
      signal.removeEventListener("abort", onAbort);
      follow.close();
    }
  }

  // ---- HTTP routes ----

  function parseLast(request: Request, url: URL): number | null {
    const raw = request.headers.get("last-event-id") ?? url.searchParams.get("last_event_id");
    const s = raw?.trim() ?? "";
    if (s === "") return 0;
    if (!/^\+?[0-9]{1,20}$/.test(s)) return null;
    const n = Number(s);
    return Number.isSafeInteger(n) ? n : null;
  }

  /** Requests from the node adapter, whose SSE responses it writes itself (no web stream per client). */
  const fromNode = new WeakSet<Request>();
  /** SSE responses the node adapter writes: their producer, started on the `ServerResponse`. */
  const direct = new WeakMap<Response, (out: SseOut) => void>();

  async function sse(request: Request, url: URL, runId: string): Promise<Response> {
    const g = await gate(request, request.headers, "read", runId);
    if (!g.ok) return denied(g);
    const last = parseLast(request, url);
    if (last === null) return text(400, "Last-Event-ID must be an integer");
    const meta = g.meta;
    if (!meta) return text(404, "unknown run");
    if (meta.finished && last >= meta.lastId) return new Response(null, { status: 204 });
    const stop = new AbortController();
    const onLife = (): void => stop.abort();
    life.signal.addEventListener("abort", onLife, { once: true });
    request.signal?.addEventListener("abort", () => stop.abort(), { once: true });
    log("stream.open", { run_id: runId, transport: "sse", last_event_id: last, replay: behind(meta, last), sub: g.subject });
    const run = (out: SseOut): void => {
      let slow = false;
      const sink: Sink = {
        event: (ev) => out.write(ev.sse),
        snapshot: (id, state) =>
          out.write(
            enc.encode(
              `id: ${id}\nevent: snapshot\ndata: {"event_id":${id},"run_id":${JSON.stringify(runId)},"type":"snapshot","timestamp":"${rfc3339Now()}","payload":{"state":${state}}}\n\n`,
            ),
          ),
        heartbeat: () => out.write(HEARTBEAT),
        flush: async () => {
          if (stop.signal.aborted) return;
          if (!(await out.flush())) {
            // The client is not reading: it is disconnected, its queued frames dropped.
            slow = true;
            stop.abort();
          }
        },
      };
      // A first byte at once (PROTOCOL §2a), so clients and proxies see the stream open.
      out.write(options.retryMs !== undefined ? enc.encode(`retry: ${options.retryMs}\n\n`) : OPENED);
      void sink.flush();
      void produce(runId, last, sink, stop.signal, g.expiresAtMs, true).then((reason) => {
        life.signal.removeEventListener("abort", onLife);
        log("stream.close", { run_id: runId, transport: "sse", reason: slow ? "slow_client" : reason });
        out.end(slow);
      });
    };
    const headers = {
      "content-type": "text/event-stream",
      "cache-control": "no-store, no-transform",
      "x-accel-buffering": "no",
    };
    if (fromNode.has(request)) {
      const response = new Response(null, { status: 200, headers });
      direct.set(response, run);
      return response;
    }
    // A web stream: at most SSE_STREAM_CHUNKS chunks (plus one batch) queued for a reader that is behind.
    let pulled: (() => void) | null = null;
    let ctl: ReadableStreamDefaultController<Uint8Array> | null = null;
    const body = new ReadableStream<Uint8Array>(
      {
        start(controller) {
          ctl = controller;
        },
        pull() {
          pulled?.();
        },
        cancel() {
          stop.abort();
        },
      },
      { highWaterMark: SSE_STREAM_CHUNKS },
    );
    const out: SseOut = {
      write: (b) => {
        if (!stop.signal.aborted) ctl?.enqueue(b);
      },
      flush: async () => {
        if ((ctl?.desiredSize ?? 1) > 0 || stop.signal.aborted) return true;
        const ok = await new Promise<boolean>((resolve) => {
          const t = setTimeout(() => resolve(false), slowClientMs);
          pulled = () => {
            clearTimeout(t);
            resolve(true);
          };
        });
        pulled = null;
        return ok;
      },
      end: (drop) => {
        try {
          // A dropped client's body errors (the response is aborted); otherwise it ends cleanly.
          if (drop) ctl?.error(new Error("slow client"));
          else ctl?.close();
        } catch {
          // Already cancelled by the client.
        }
      },
    };
    run(out);
    return new Response(body, { status: 200, headers });
  }

  async function snapshot(request: Request, runId: string): Promise<Response> {
    const g = await gate(request, request.headers, "read", runId);
    if (!g.ok) return denied(g);
    try {
      const s = await store.snapshot(runId);
      if (!s) return text(404, "unknown run");
      return json(200, `{"run_id":${JSON.stringify(s.runId)},"event_id":${s.eventId},"state":${s.state}}`, {
        "cache-control": "no-store",
      });
    } catch {
      return unavailable();
    }
  }

  async function chatSend(request: Request, session: string): Promise<Response> {
    const g = await gate(request, request.headers, "send", session);
    if (!g.ok) return denied(g);
    const raw = await readBody(request, maxBody);
    if (raw === null) return text(413, "request body too large");
    if (raw instanceof InvalidUtf8) return text(400, raw.message);
    const j = jsonBody(request, raw);
    if (j.kind === "none") return text(400, "expected {client_request_id, content}");
    if (j.kind === "reject") return text(j.status, j.text);
    const b = j.value;
    if (!isObject(b) || typeof b["client_request_id"] !== "string" || typeof b["content"] !== "string") {
      return text(422, `${SHAPE}: expected {client_request_id, content}`);
    }
    const a = await acceptSend(session, b["client_request_id"], b["content"]);
    switch (a.kind) {
      case "accepted":
        return json(202, JSON.stringify({ message_id: a.messageId, run_id: a.runId }));
      case "invalid":
        return text(400, a.message);
      case "finished":
        return json(409, JSON.stringify({ run_id: session, status: "finished" }));
      case "unavailable":
        return unavailable();
    }
  }

  async function cancelRoute(request: Request, runId: string): Promise<Response> {
    const g = await gate(request, request.headers, "cancel", runId);
    if (!g.ok) return denied(g);
    const raw = await readBody(request, maxBody);
    if (raw === null) return text(413, "request body too large");
    if (raw instanceof InvalidUtf8) return text(400, raw.message);
    const j = jsonBody(request, raw);
    if (j.kind !== "value") {
      const why = j.kind === "none" ? NOT_JSON_TYPE : j.text;
      return text(j.kind === "none" ? 415 : j.status, `expected {client_request_id, reason?, reply_to?}: ${why}`);
    }
    const a = await cancel(runId, j.value);
    switch (a.kind) {
      case "accepted":
        return json(202, JSON.stringify({ run_id: runId, event_id: a.eventId }));
      case "finished":
        return json(409, JSON.stringify({ run_id: runId, status: a.status }));
      case "invalid":
        return text(400, a.message);
      case "not_found":
        return text(404, "unknown run");
      case "too_early":
        return text(425, "no such send yet", { "retry-after": "1" });
      case "unavailable":
        return unavailable();
    }
  }

  const bad = (msg: string): Response => json(400, JSON.stringify({ error: msg }));

  async function publishCreate(request: Request): Promise<Response> {
    const g = await gate(request, request.headers, "publish", "");
    if (!g.ok) return denied(g);
    const raw = await readBody(request, maxBody);
    if (raw === null) return text(413, "request body too large");
    if (raw instanceof InvalidUtf8) return text(400, raw.message);
    // The body is optional: without a Content-Type, none.
    const j = jsonBody(request, raw);
    if (j.kind === "reject") return text(j.status, j.text);
    const b = j.kind === "value" ? j.value : {};
    const shape = `${SHAPE}: expected {run_id?, session_id?}`;
    if (!isObject(b) || unknownKey(b, ["run_id", "session_id"]) !== undefined) return text(422, shape);
    const runIdIn = b["run_id"] ?? null;
    const sessionIn = b["session_id"] ?? null;
    if ((runIdIn !== null && typeof runIdIn !== "string") || (sessionIn !== null && typeof sessionIn !== "string")) {
      return text(422, shape);
    }
    if (sessionIn !== null && !validId(sessionIn)) {
      return bad("session_id must be 1 to 128 characters, without control characters or braces");
    }
    if (runIdIn !== null && !validId(runIdIn)) {
      return bad("run_id must be 1 to 128 characters, without control characters or braces");
    }
    try {
      const id = runIdIn ?? (await store.newRunId());
      const fresh = await store.create(id, { kind: "task", sessionId: sessionIn ?? undefined });
      if (fresh) log("publish.run_created", { run_id: id, session_id: sessionIn ?? undefined });
      return json(fresh ? 201 : 200, JSON.stringify({ run_id: id }));
    } catch {
      return unavailable();
    }
  }

  /** Validates `body` for `runId` (the gateway's rules, via the wasm) and appends it under `key`. */
  async function appendChecked(
    runId: string,
    body: string,
    key: string | undefined,
  ): Promise<
    | { kind: "ok"; first: number; last: number; appended: number }
    | { kind: "invalid"; message: string; syntax: boolean }
    | { kind: "key_conflict" }
    | { kind: "finished" }
    | { kind: "reply_taken" }
    | { kind: "unknown_run" }
  > {
    const c = checkBatch(runId, body);
    if (!c.ok) return { kind: "invalid", message: c.error, syntax: c.syntax };
    const digest = createHash("sha256").update(c.canonical).digest("hex");
    const events = (JSON.parse(c.canonical) as { events: NewEvent[] }).events;
    const out = await store.appendBatch(runId, events, key !== undefined ? { key, digest } : undefined);
    switch (out.kind) {
      case "appended":
        return { kind: "ok", first: out.first, last: out.last, appended: events.length };
      case "repeated":
        return { kind: "ok", first: out.first, last: out.last, appended: 0 };
      default:
        return out;
    }
  }

  async function publishEvents(request: Request, runId: string): Promise<Response> {
    const g = await gate(request, request.headers, "publish", "");
    if (!g.ok) return denied(g);
    const k = request.headers.get("idempotency-key");
    if (k === null) return bad("Idempotency-Key is required");
    if (k.length === 0 || k.length > MAX_KEY_LEN || !/^[\x21-\x7e]+$/.test(k)) {
      return bad("Idempotency-Key must be 1 to 200 visible ASCII characters");
    }
    const raw = await readBody(request, maxBody);
    if (raw === null) return text(413, "request body too large");
    if (raw instanceof InvalidUtf8) return text(400, raw.message);
    const j = jsonBody(request, raw);
    if (j.kind === "none") return bad('expected a JSON body {"events": [...]}');
    if (j.kind === "reject" && j.status === 415) return text(415, j.text);
    try {
      const out = await appendChecked(runId, raw, k);
      switch (out.kind) {
        case "ok":
          return json(200, JSON.stringify({ first_event_id: out.first, last_event_id: out.last }));
        case "invalid":
          return out.syntax ? text(400, out.message) : bad(out.message);
        case "key_conflict":
          return json(422, JSON.stringify({ error: "this Idempotency-Key was used with another body" }));
        case "finished":
          return json(409, JSON.stringify({ run_id: runId, status: "finished" }));
        case "reply_taken":
          return json(409, JSON.stringify({ run_id: runId, status: "reply_taken" }));
        case "unknown_run":
          return text(404, "unknown run");
      }
    } catch {
      return unavailable();
    }
  }

  async function publishSends(request: Request, url: URL): Promise<Response> {
    const g = await gate(request, request.headers, "publish", "");
    if (!g.ok) return denied(g);
    const after = url.searchParams.get("after") || null;
    if (after !== null && !validCursor(after)) return bad("after: a cursor from an earlier answer's `next`");
    const w = url.searchParams.get("wait_ms");
    if (w !== null && !/^[0-9]{1,20}$/.test(w)) {
      return text(400, "Failed to deserialize query string: wait_ms: invalid digit found in string");
    }
    const wait = Math.min(Number(w ?? "0"), MAX_WAIT_MS);
    const stop = new AbortController();
    const onAbort = (): void => stop.abort();
    request.signal?.addEventListener("abort", onAbort, { once: true });
    life.signal.addEventListener("abort", onAbort, { once: true });
    try {
      const { sends, next } = await store.sendsAfter(after, SENDS_PER_POLL, wait, stop.signal);
      const wire = sends.map((s) => ({
        cursor: s.cursor,
        session_id: s.sessionId,
        run_id: s.runId,
        client_request_id: s.clientRequestId,
        content: s.content,
      }));
      return json(200, JSON.stringify({ sends: wire, next }));
    } catch {
      return unavailable();
    } finally {
      life.signal.removeEventListener("abort", onAbort);
    }
  }

  type Handler = (request: Request, url: URL, params: string[]) => Promise<Response>;
  interface Route {
    pattern: RegExp;
    methods: Record<string, Handler>;
  }
  const seg = "([^/]+)";
  const routes: Route[] = [
    { pattern: new RegExp(`^/stream/runs/${seg}$`), methods: { GET: (r, u, [id]) => sse(r, u, id ?? "") } },
    { pattern: new RegExp(`^/runs/${seg}/snapshot$`), methods: { GET: (r, _u, [id]) => snapshot(r, id ?? "") } },
    { pattern: new RegExp(`^/chat/${seg}/messages$`), methods: { POST: (r, _u, [id]) => chatSend(r, id ?? "") } },
    { pattern: new RegExp(`^/runs/${seg}/cancel$`), methods: { POST: (r, _u, [id]) => cancelRoute(r, id ?? "") } },
  ];
  if (key) {
    routes.push(
      { pattern: /^\/publish\/runs$/, methods: { POST: (r) => publishCreate(r) } },
      { pattern: new RegExp(`^/publish/runs/${seg}/events$`), methods: { POST: (r, _u, [id]) => publishEvents(r, id ?? "") } },
      { pattern: /^\/publish\/sends$/, methods: { GET: (r, u) => publishSends(r, u) } },
    );
  }

  /** The response for `request`, or `null` when its path is outside the kit's routes. */
  async function route(request: Request): Promise<Response | null> {
    let url: URL;
    try {
      url = new URL(request.url);
    } catch {
      return null;
    }
    const path = url.pathname;
    if (path !== base && !path.startsWith(`${base}/`)) return null;
    const rest = path.slice(base.length);
    const origin = request.headers.get("origin");
    const cors = crossOrigin(origin, request.headers.get("host") ?? url.host);
    const withCors = (resp: Response): Response => {
      if (cors !== "allowed" || origin === null) return resp;
      resp.headers.set("access-control-allow-origin", origin);
      resp.headers.set("access-control-allow-credentials", "true");
      resp.headers.set("access-control-expose-headers", "retry-after");
      resp.headers.append("vary", "origin");
      return resp;
    };
    for (const r of routes) {
      const m = r.pattern.exec(rest);
      if (!m) continue;
      if (request.method === "OPTIONS" && request.headers.has("access-control-request-method")) {
        // A CORS preflight: answered for the listed origins only.
        const pre = new Response(null, { status: 204 });
        if (cors === "allowed") {
          pre.headers.set("access-control-allow-methods", "GET, POST");
          pre.headers.set("access-control-allow-headers", "authorization, content-type, last-event-id, idempotency-key");
        }
        return withCors(pre);
      }
      const method = request.method === "HEAD" ? "GET" : request.method;
      const h = r.methods[method];
      if (!h) return text(405, "method not allowed", { allow: Object.keys(r.methods).join(", ") });
      let params: string[];
      try {
        params = m.slice(1).map((p) => decodeURIComponent(p));
      } catch {
        return text(400, "invalid percent-encoding in the path");
      }
      try {
        return withCors(await h(request, url, params));
      } catch (e) {
        log("handler.error", { path: rest, error: e instanceof Error ? e.message : String(e) });
        return withCors(unavailable());
      }
    }
    return null;
  }

  const fetchHandler = async (request: Request): Promise<Response> => (await route(request)) ?? text(404, "not found");

  // ---- node:http adapter ----

  function toRequest(req: IncomingMessage, signal: AbortSignal): Request {
    const host = req.headers.host ?? "localhost";
    const url = `http://${host}${req.url ?? "/"}`;
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined) continue;
      if (Array.isArray(v)) for (const x of v) headers.append(k, x);
      else headers.set(k, v);
    }
    const method = req.method ?? "GET";
    const hasBody = method !== "GET" && method !== "HEAD";
    const init: RequestInit & { duplex?: "half" } = { method, headers, signal };
    if (hasBody) {
      init.body = new ReadableStream<Uint8Array>({
        start(controller) {
          req.on("data", (c: Buffer) => controller.enqueue(new Uint8Array(c.buffer, c.byteOffset, c.byteLength)));
          req.on("end", () => controller.close());
          req.on("error", (e) => controller.error(e));
        },
        cancel() {
          req.destroy();
        },
      });
      init.duplex = "half";
    }
    const request = new Request(url, init);
    if (method === "GET") fromNode.add(request);
    return request;
  }

  /**
   * An SSE stream written straight to `res`: a batch's frames (each a Buffer
   * shared by every stream of the run) go out in one corked write; when the
   * socket's buffer is past its high-water mark (16 KiB) the stream waits for
   * `drain`, at most `slowClientMs`, then the client is dropped. So a stream
   * holds at most the high-water mark plus one batch unsent.
   */
  function resOut(res: ServerResponse): SseOut {
    let corked = false;
    return {
      write: (b) => {
        if (res.destroyed || res.writableEnded) return;
        if (!corked) {
          res.cork();
          corked = true;
        }
        res.write(b);
      },
      flush: async () => {
        if (corked) {
          corked = false;
          res.uncork();
        }
        if (!res.writableNeedDrain || res.destroyed) return true;
        return new Promise<boolean>((resolve) => {
          const fin = (ok: boolean): void => {
            clearTimeout(t);
            res.off("drain", onDrain);
            res.off("close", onDrain);
            resolve(ok);
          };
          const onDrain = (): void => fin(true);
          const t = setTimeout(() => fin(false), slowClientMs);
          res.on("drain", onDrain);
          res.on("close", onDrain);
        });
      },
      end: (drop) => {
        if (corked) {
          corked = false;
          res.uncork();
        }
        // A dropped client's connection closes without waiting for unsent bytes.
        if (drop) res.destroy();
        else res.end();
      },
    };
  }

  async function writeResponse(res: ServerResponse, response: Response, abort: AbortController): Promise<void> {
    const headers: Record<string, string> = {};
    response.headers.forEach((v, k) => {
      headers[k] = v;
    });
    res.writeHead(response.status, headers);
    res.socket?.setNoDelay(true);
    const run = direct.get(response);
    if (run) {
      // Its first bytes go out at once, in one write with the headers.
      run(resOut(res));
      return;
    }
    // Node sends nothing until the first write: flush the headers at once, so
    // a resume with nothing to replay is not mistaken for a dead server.
    res.flushHeaders();
    if (!response.body) {
      res.end();
      return;
    }
    const reader = response.body.getReader();
    res.on("close", () => {
      abort.abort();
      void reader.cancel().catch(() => undefined);
    });
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (!res.write(value)) {
          // The client is not reading: wait for it, at most slowClientMs, then drop it.
          const drained = await new Promise<boolean>((resolve) => {
            const fin = (ok: boolean): void => {
              clearTimeout(t);
              res.off("drain", onDrain);
              res.off("close", onDrain);
              resolve(ok);
            };
            const onDrain = (): void => fin(true);
            const t = setTimeout(() => fin(false), slowClientMs);
            res.on("drain", onDrain);
            res.on("close", onDrain);
          });
          if (!drained) throw new Error("slow client");
        }
        if (res.destroyed) break;
      }
    } catch {
      // The body failed (a slow client is dropped) or the client went away:
      // close the connection without waiting for unsent bytes.
      res.destroy();
      return;
    }
    res.end();
  }

  const node = (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): void => {
    const abort = new AbortController();
    // The client went away before the response was finished: a waiting long
    // poll or an open stream ends (the request's signal aborts).
    res.on("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    const request = toRequest(req, abort.signal);
    route(request)
      .then(async (response) => {
        if (response === null) {
          if (next) return next();
          return writeResponse(res, text(404, "not found"), abort);
        }
        return writeResponse(res, response, abort);
      })
      .catch((e: unknown) => {
        if (next) return next(e);
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
  };

  // ---- WebSocket (PROTOCOL §2b) ----

  function attachWebSocket(server: HttpServer | HttpsServer, opts: { path?: string } = {}): { close(): Promise<void> } {
    const path = opts.path ?? `${base}/ws`;
    const wss = new WebSocketServer({ noServer: true, maxPayload: maxBody });
    const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
      let p: string;
      try {
        p = new URL(req.url ?? "/", "http://x").pathname;
      } catch {
        return;
      }
      if (p !== path) {
        // Another listener's path; with no other listener, refuse instead of leaving the socket hanging.
        if (server.listenerCount("upgrade") <= 1) socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => session(ws, req));
    };
    server.on("upgrade", onUpgrade);
    const handle = {
      close: async (): Promise<void> => {
        server.off("upgrade", onUpgrade);
        for (const c of wss.clients) c.close(1001, "going away");
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        sockets.delete(handle);
      },
    };
    sockets.add(handle);
    return handle;
  }

  function session(ws: WebSocket, req: IncomingMessage): void {
    const upgrade = toRequest(req, life.signal);
    // Cookies authenticate frames only for a same-origin page or a listed
    // origin (no cross-site WebSocket hijacking with a user's cookie).
    const cookies = crossOrigin(req.headers.origin, req.headers.host) === "refused" ? undefined : req.headers.cookie;
    const subs = new Map<string, AbortController>();
    const closed = new AbortController();
    const onLife = (): void => ws.close(1001, "going away");
    life.signal.addEventListener("abort", onLife, { once: true });
    log("ws.open", {});

    /** Sends one frame; waits (bounded) when the socket's buffer is full; false when the socket is gone. */
    const send = async (obj: string): Promise<boolean> => {
      if (ws.readyState !== ws.OPEN) return false;
      if (ws.bufferedAmount <= wsBufferBytes) {
        ws.send(obj);
        return true;
      }
      const ok = await new Promise<boolean>((resolve) => {
        const t = setTimeout(() => resolve(false), slowClientMs);
        ws.send(obj, (err) => {
          clearTimeout(t);
          resolve(!err);
        });
      });
      if (!ok) {
        log("ws.slow_client", {});
        ws.terminate();
      }
      return ok;
    };
    const frameHeaders = (h: Json | undefined): Headers | null => {
      const out = new Headers();
      if (h !== undefined && h !== null) {
        if (!isObject(h)) return null;
        for (const [k, v] of Object.entries(h)) {
          if (typeof v !== "string") return null;
          if (k.toLowerCase() === "authorization") out.set("authorization", v);
        }
      }
      if (cookies !== undefined) out.set("cookie", cookies);
      return out;
    };
    const err = (code: string, message: string, runId?: string, crid?: string): string =>
      JSON.stringify({ op: "error", ...(runId !== undefined ? { run_id: runId } : {}), ...(crid !== undefined ? { client_request_id: crid } : {}), code, message });

    const onFrame = async (data: RawData, isBinary: boolean): Promise<void> => {
      if (isBinary) {
        await send(err("bad_request", "binary frames are not part of the protocol"));
        return;
      }
      const op = parseJson(Buffer.isBuffer(data) ? data.toString("utf8") : Buffer.concat(Array.isArray(data) ? data : [Buffer.from(data)]).toString("utf8"));
      if (op === undefined) {
        await send(err("bad_request", "not JSON"));
        return;
      }
      if (!isObject(op) || typeof op["op"] !== "string") {
        await send(err("bad_request", "unknown op"));
        return;
      }
      const str = (k: string): string | undefined => (typeof op[k] === "string" ? (op[k] as string) : undefined);
      switch (op["op"]) {
        case "ping": {
          const t = op["t"];
          if (typeof t !== "number") {
            await send(err("bad_request", "invalid frame: ping needs a numeric t"));
            return;
          }
          await send(JSON.stringify({ op: "pong", t }));
          return;
        }
        case "unsubscribe": {
          const runId = str("run_id");
          if (runId === undefined) {
            await send(err("bad_request", "invalid frame: unsubscribe needs run_id"));
            return;
          }
          subs.get(runId)?.abort();
          subs.delete(runId);
          return;
        }
        case "subscribe": {
          const runId = str("run_id");
          const lastIn = op["last_event_id"] ?? 0;
          const headers = frameHeaders(op["headers"]);
          if (runId === undefined || typeof lastIn !== "number" || !Number.isSafeInteger(lastIn) || lastIn < 0 || headers === null) {
            await send(err("bad_request", "invalid frame: subscribe needs run_id, last_event_id? (integer ≥ 0), headers? (strings)"));
            return;
          }
          const g = await gate(upgrade, headers, "read", runId);
          if (!g.ok) {
            const d = denyCode(g);
            await send(err(d.code, d.message, runId));
            return;
          }
          const meta = g.meta;
          if (!meta) {
            await send(err("not_found", "unknown run", runId));
            return;
          }
          if (!subs.has(runId) && subs.size >= maxRunsPerSocket) {
            await send(err("unavailable", "too many runs on this socket", runId));
            return;
          }
          subs.get(runId)?.abort();
          const stop = new AbortController();
          subs.set(runId, stop);
          const onClosed = (): void => stop.abort();
          closed.signal.addEventListener("abort", onClosed, { once: true });
          await send(JSON.stringify({ op: "subscribed", run_id: runId, replay_from: lastIn + 1 }));
          log("stream.open", { run_id: runId, transport: "websocket", last_event_id: lastIn, replay: behind(meta, lastIn), sub: g.subject });
          const gone = async (ok: boolean): Promise<void> => {
            if (!ok) stop.abort();
          };
          const sink: Sink = {
            event: async (ev) => gone(await send(ev.ws)),
            snapshot: async (id, state) =>
              gone(await send(`{"op":"snapshot","run_id":${JSON.stringify(runId)},"event_id":${id},"state":${state}}`)),
            heartbeat: () => undefined,
            flush: async () => undefined,
          };
          void produce(runId, lastIn, sink, stop.signal, g.expiresAtMs, false).then(async (reason) => {
            closed.signal.removeEventListener("abort", onClosed);
            if (subs.get(runId) === stop) subs.delete(runId);
            if (reason === "expired") await send(err("unauthorized", "credentials expired", runId));
            if (reason === "store_error") await send(err("unavailable", "store unavailable", runId));
            log("stream.close", { run_id: runId, transport: "websocket", reason });
          });
          return;
        }
        case "send": {
          const session = str("session_id");
          const crid = str("client_request_id");
          const content = str("content");
          const headers = frameHeaders(op["headers"]);
          if (session === undefined || crid === undefined || content === undefined || headers === null) {
            await send(err("bad_request", "invalid frame: send needs session_id, client_request_id, content"));
            return;
          }
          const g = await gate(upgrade, headers, "send", session);
          if (!g.ok) {
            const d = denyCode(g);
            await send(err(d.code, d.message, undefined, crid));
            return;
          }
          const a = await acceptSend(session, crid, content);
          switch (a.kind) {
            case "accepted":
              await send(JSON.stringify({ op: "ack", client_request_id: crid, message_id: a.messageId, run_id: a.runId }));
              return;
            case "finished":
              await send(err("finished", "the session has ended", undefined, crid));
              return;
            case "invalid":
              await send(err("bad_request", a.message, undefined, crid));
              return;
            case "unavailable":
              await send(err("unavailable", "store unavailable", undefined, crid));
              return;
          }
          return;
        }
        case "cancel": {
          const runId = str("run_id");
          const crid = str("client_request_id");
          const headers = frameHeaders(op["headers"]);
          if (runId === undefined || crid === undefined || headers === null) {
            await send(err("bad_request", "invalid frame: cancel needs run_id, client_request_id"));
            return;
          }
          const g = await gate(upgrade, headers, "cancel", runId);
          if (!g.ok) {
            const d = denyCode(g);
            await send(err(d.code, d.message, runId, crid));
            return;
          }
          const body: JsonObject = { client_request_id: crid };
          if (op["reason"] !== undefined) body["reason"] = op["reason"];
          if (op["reply_to"] !== undefined) body["reply_to"] = op["reply_to"];
          const a = await cancel(runId, body);
          const refuse = (code: string, message: string): string => err(code, message, runId, crid);
          switch (a.kind) {
            case "accepted":
              await send(JSON.stringify({ op: "ack", client_request_id: crid, run_id: runId, event_id: a.eventId }));
              return;
            case "finished":
              await send(refuse("finished", a.status));
              return;
            case "invalid":
              await send(refuse("bad_request", a.message));
              return;
            case "not_found":
              await send(refuse("not_found", "unknown run"));
              return;
            case "too_early":
              await send(refuse("unavailable", "no such send yet"));
              return;
            case "unavailable":
              await send(refuse("unavailable", "store unavailable"));
              return;
          }
          return;
        }
        default:
          await send(err("bad_request", "unknown op"));
      }
    };
    // Frames are handled in order, one at a time (a send's ack before the
    // next frame's answer); at most MAX_PENDING_FRAMES wait, past it the
    // socket is closed (1008) instead of queueing without bound.
    let chain: Promise<void> = Promise.resolve();
    let pending = 0;
    ws.on("message", (data, isBinary) => {
      if (++pending > MAX_PENDING_FRAMES) {
        log("ws.flood", {});
        ws.close(1008, "too many frames in flight");
        return;
      }
      chain = chain
        .then(() => onFrame(data, isBinary))
        .catch((e: unknown) => log("ws.error", { error: String(e) }))
        .finally(() => {
          pending--;
        });
    });
    ws.on("close", () => {
      closed.abort();
      life.signal.removeEventListener("abort", onLife);
      log("ws.close", {});
    });
    ws.on("error", () => undefined);
  }

  // ---- in-process producer API ----

  async function createRun(o: { runId?: string; sessionId?: string; kind?: RunKind } = {}): Promise<{ runId: string; created: boolean }> {
    if (o.runId !== undefined && !validId(o.runId)) {
      throw new RunstreamError("invalid", "runId must be 1 to 128 characters, without control characters or braces");
    }
    if (o.sessionId !== undefined && !validId(o.sessionId)) {
      throw new RunstreamError("invalid", "sessionId must be 1 to 128 characters, without control characters or braces");
    }
    const runId = o.runId ?? (await store.newRunId());
    const created = await store.create(runId, { kind: o.kind ?? "task", sessionId: o.sessionId });
    return { runId, created };
  }

  async function append(
    runId: string,
    events: EventInput[],
    o: { idempotencyKey?: string } = {},
  ): Promise<{ firstEventId: number; lastEventId: number }> {
    const out = await appendChecked(runId, JSON.stringify({ events }), o.idempotencyKey);
    switch (out.kind) {
      case "ok":
        return { firstEventId: out.first, lastEventId: out.last };
      case "invalid":
        throw new RunstreamError("invalid", out.message);
      case "key_conflict":
        throw new RunstreamError("key_conflict", "this idempotency key was used with other events");
      case "finished":
        throw new RunstreamError("finished", `run ${runId} is finished`);
      case "reply_taken":
        throw new RunstreamError("reply_taken", "this send already has a reply, or this reply already ended (another consumer answered or ended it)");
      case "unknown_run":
        throw new RunstreamError("unknown_run", `unknown run ${runId}`);
    }
  }

  function cancelSignal(runId: string, o: { replyTo?: string } = {}): AbortSignal {
    const ac = new AbortController();
    const targets: CancelTarget[] = [{ kind: "run" }];
    if (o.replyTo !== undefined) targets.push({ kind: "reply", replyTo: o.replyTo });
    let sub: { close(): void } | null = null;
    let checking = false;
    let again = false;
    const stop = (): void => {
      sub?.close();
      sub = null;
      life.signal.removeEventListener("abort", stop);
    };
    const check = async (): Promise<void> => {
      if (checking) {
        again = true;
        return;
      }
      checking = true;
      try {
        do {
          again = false;
          for (const t of targets) {
            const n = await store.cancelRequested(runId, t);
            if (n !== null) {
              stop();
              ac.abort(new DOMException(`run.cancel_requested (event ${n})`, "AbortError"));
              return;
            }
          }
          const meta = await store.meta(runId);
          if (!meta || meta.finished) {
            stop();
            return;
          }
        } while (again);
      } catch (e) {
        log("cancel_signal.error", { run_id: runId, error: String(e) });
      } finally {
        checking = false;
      }
    };
    life.signal.addEventListener("abort", stop, { once: true });
    void store
      .subscribe(runId, () => void check())
      .then((s) => {
        if (!s) return;
        if (ac.signal.aborted || life.signal.aborted) s.close();
        else sub = s;
        return check();
      })
      .catch((e: unknown) => log("cancel_signal.error", { run_id: runId, error: String(e) }));
    return ac.signal;
  }

  return {
    fetch: fetchHandler,
    node,
    attachWebSocket,
    createRun,
    append,
    onSend(handler) {
      sendHandlers.add(handler);
      if (store.claimSends && sendLoopStop === null && !life.signal.aborted) {
        const stop = new AbortController();
        sendLoopStop = stop;
        void sendLoop(stop);
      }
      return () => {
        sendHandlers.delete(handler);
        if (sendHandlers.size === 0 && sendLoopStop) {
          sendLoopStop.abort();
          sendLoopStop = null;
        }
      };
    },
    cancelSignal,
    store,
    async close() {
      clearInterval(graceTimer);
      life.abort();
      await Promise.all([...sockets].map((s) => s.close()));
    },
  };
}

