/**
 * `redisStore()`: the kit's {@link Store} on Redis, in **the gateway's Redis
 * layout** (docs/REDIS.md; the contract is the doc comment at the top of
 * `server/src/store/redis.rs`), so a run written by either server is served
 * by the other, and any number of kit processes and gateway replicas share
 * one Redis (or one Redis Cluster).
 *
 * - Writes go through the Lua scripts in the repository's `lua/` folder (the
 *   package ships them in `dist/lua/`), composed as `lua/scripts.json` says:
 *   byte-identical to the gateway's, so Redis knows both by one SHA1.
 * - Replay: `XRANGE` from `0-<after+1>` in batches of {@link BATCH}; a resume
 *   older than the window gets the stored `base` as a snapshot first.
 * - Live tail: one `XREAD BLOCK` loop per run with local subscribers, on a
 *   connection of its own (a blocking read would stall the shared one),
 *   keeping the newest {@link RedisStoreOptions.tailCache} events (drop-oldest;
 *   older reads go to Redis): N local streams of a run cost one Redis reader
 *   (and one `HGET` of `first_id` per read: cached events another process has
 *   pruned since are never served, the resume gets the snapshot instead).
 * - Window: when a run holds more than `window + 10 %` events, the appender
 *   reduces the oldest into the `base` (with the one reducer, the client's
 *   own, compiled to wasm) and `XTRIM MINID`s them.
 * - Retention: every writing script takes {@link RedisStoreOptions.retentionS}
 *   and {@link RedisStoreOptions.idleRetentionS} (as ms) as its last two ARGV;
 *   the run's keys expire with them (`lua/retention.lua`, docs/REDIS.md).
 * - Sends: `runstream:sends` with the consumer group `replies` (the gateway's
 *   chat workers' group): {@link RedisStore.claimSends} answers each send once
 *   across every process.
 *
 * Commands are never re-sent blindly after a dropped connection
 * (`autoResendUnfulfilledCommands: false`): an append script may have run,
 * and a re-send would log its events twice. The caller sees the error (the
 * router answers 503; producers retry with their idempotency key).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";

import { Reducer, prunePoint } from "./reducer.js";
import {
  ReplyTakenError,
  StoreError,
  cancelTargetFromKey,
  cancelTargetKey,
  rfc3339Now,
  retentionSeconds,
  DEFAULT_IDLE_RETENTION_S,
  DEFAULT_RETENTION_S,
  IDEMPOTENCY_TTL_MS,
} from "./store.js";
import type {
  AppendListener,
  BatchOutcome,
  CancelOutcome,
  CancelTarget,
  DueGrace,
  EventType,
  IdemKey,
  JsonObject,
  NewEvent,
  QueuedSend,
  Replay,
  RunKind,
  RunMeta,
  RunSpec,
  SendOutcome,
  SendRecord,
  SnapshotBody,
  Store,
  Subscription,
} from "./store.js";

/** Entries per `XRANGE`/`XREAD` call (the gateway's `BATCH`). */
export const BATCH = 1000;
/** Default events per run kept in Redis (the gateway's `--window` default). */
export const DEFAULT_WINDOW = 200_000;
/** Default newest events a live tail keeps for its local streams. */
export const DEFAULT_TAIL_CACHE = 4096;
/** Default reduced states cached for snapshots (beyond it the cache starts over). */
export const DEFAULT_SNAPSHOT_CACHE = 256;
/** Default lifetime of a chat send's idempotency key, seconds (the gateway's). */
export const DEFAULT_SEND_TTL_S = 24 * 3600;
/** How long one tail's `XREAD BLOCK` waits before it looks again (ms). */
const BLOCK_MS = 1000;
/** The stream of accepted sends (single-key commands only). */
export const SEND_QUEUE = "runstream:sends";
/** Approximate bound of the send queue (`XADD MAXLEN ~`). */
export const SEND_QUEUE_MAXLEN = 100_000;
/** The consumer group of chat workers (the gateway's too). */
export const SEND_GROUP = "replies";
/** A send handed out more often than this (its answer failed every time) is acknowledged unanswered, not reclaimed again (the gateway's `MAX_SEND_DELIVERIES`). */
export const MAX_SEND_DELIVERIES = 5;
/** Cancel grace deadlines of every run (one sorted set). */
export const GRACES = "runstream:cancel_graces";
/** The run id counter. */
const RUN_IDS = "runstream:run_ids";
/** Meta hash fields read by {@link RedisStore.meta}, in this order. */
const META_FIELDS = ["kind", "first_id", "last_id", "finished", "session"] as const;

/** Options of {@link redisStore}. */
export interface RedisStoreOptions {
  /**
   * `redis://[user:password@]host:port[/db]` (or `rediss://`) for one Redis,
   * or `redis-cluster://host:port,host:port,…` with seed nodes of a Redis
   * Cluster (the gateway's `--store` syntax). `undefined` (an unset
   * `process.env.REDIS_URL`) throws a {@link StoreError} naming it, at once.
   */
  url: string | undefined;
  /** Events kept per run before the oldest are reduced into the base (default {@link DEFAULT_WINDOW}; use the gateway's `--window`). */
  window?: number;
  /** Newest events each live tail keeps for local streams (default {@link DEFAULT_TAIL_CACHE}; drop-oldest). */
  tailCache?: number;
  /** Reduced states kept for snapshots (default {@link DEFAULT_SNAPSHOT_CACHE}; beyond it the cache starts over). */
  snapshotCache?: number;
  /** Lifetime of chat send idempotency keys, seconds (default {@link DEFAULT_SEND_TTL_S}). */
  sendTtlS?: number;
  /** Per-command timeout, ms (default 10 000; the gateway's). Blocking reads get their wait plus 5 s. */
  commandTimeoutMs?: number;
  /**
   * Seconds every key of a finished run (its `run.completed` logged) is kept
   * after its last write (default {@link DEFAULT_RETENTION_S}, 7 days; 0 =
   * forever). Use the gateway's `--retention-secs`.
   */
  retentionS?: number;
  /**
   * Seconds every key of an unfinished run is kept after its last append, send
   * or cancel (default {@link DEFAULT_IDLE_RETENTION_S}, 30 days; 0 =
   * forever). Use the gateway's `--idle-retention-secs`.
   */
  idleRetentionS?: number;
}

type Client = Redis | Cluster;

/** The Lua scripts both servers run, by their name in `lua/scripts.json`. */
export type ScriptName = "append" | "send" | "create" | "append_batch" | "cancel" | "trim" | "set_chaos" | "next_message" | "orphan";

/** One composed script: what is sent on `EVAL`, and the SHA1 Redis knows it by (`EVALSHA`). */
export interface LuaScript {
  /** The script text (its files of `lua/`, concatenated in the manifest's order). */
  text: string;
  /** Hex SHA1 of `text`. */
  sha: string;
}

const SCRIPT_NAMES: readonly ScriptName[] = [
  "append",
  "send",
  "create",
  "append_batch",
  "cancel",
  "trim",
  "set_chaos",
  "next_message",
  "orphan",
];

/**
 * Reads the scripts from the `lua/` folder shipped beside this module
 * (`dist/lua/`, copied from the repository's `lua/` by the build), composed as
 * its `scripts.json` says.
 */
export function loadScripts(dir: URL = new URL("./lua/", import.meta.url)): Record<ScriptName, LuaScript> {
  const manifest: unknown = JSON.parse(readFileSync(new URL("scripts.json", dir), "utf8"));
  const scripts = (manifest as { scripts?: Record<string, unknown> }).scripts ?? {};
  const out: Partial<Record<ScriptName, LuaScript>> = {};
  for (const name of SCRIPT_NAMES) {
    const files = scripts[name];
    if (!Array.isArray(files) || files.some((f) => typeof f !== "string")) {
      throw new StoreError(`lua/scripts.json: no file list for script ${name}`);
    }
    const text = (files as string[]).map((f) => readFileSync(new URL(f, dir), "utf8")).join("");
    out[name] = { text, sha: createHash("sha1").update(text).digest("hex") };
  }
  return out as Record<ScriptName, LuaScript>;
}

// Keys: every key of one run or session carries its id as the hash tag `{…}`.
const metaKey = (id: string): string => `runstream:{${id}}:meta`;
const logKey = (id: string): string => `runstream:{${id}}:log`;
const baseKey = (id: string): string => `runstream:{${id}}:base`;
const cancelKey = (id: string, t: CancelTarget): string => `runstream:{${id}}:cancel:${cancelTargetKey(t)}`;
const idemKey = (id: string, key: string): string => `runstream:{${id}}:idem:${key}`;
const sendKey = (session: string, crid: string): string => `runstream:{${session}}:send:${crid}`;
const unqueuedKey = (session: string): string => `runstream:{${session}}:unqueued`;
const claimedKey = (session: string, crid: string): string => `runstream:{${session}}:claimed:${crid}`;

/** The envelope JSON without its `{` and `event_id` (the append step prepends both). */
function bodyRest(runId: string, type: string, payloadJson: string): string {
  const head = JSON.stringify({ run_id: runId, type, timestamp: rfc3339Now() });
  return `${head.slice(1, -1)},"payload":${payloadJson}}`;
}

/** The event id of a stream entry id `0-<n>`, or null. */
function entryId(id: string): number | null {
  if (!id.startsWith("0-")) return null;
  const n = Number(id.slice(2));
  return Number.isSafeInteger(n) ? n : null;
}

/** The value of `name` in a flat field list. */
function field(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

type Entry = [string, string[]];
type XreadReply = [string, Entry[]][] | null;

/** Entries as `[eventId, envelope]`, in order. */
function events(entries: Entry[]): [number, string][] {
  return entries.map(([id, fields]) => {
    const n = entryId(id);
    const e = field(fields, "e");
    if (n === null || e === undefined) throw new StoreError(`corrupt log entry ${id}`);
    return [n, e];
  });
}

/** True when `evs` are dense and start at `from`. */
function denseFrom(evs: readonly [number, string][], from: number): boolean {
  return evs.every(([n], i) => n === from + i);
}

function num(v: unknown): number {
  const n = typeof v === "number" ? v : Number(v);
  if (!Number.isFinite(n)) throw new StoreError(`expected a number from Redis, got ${String(v)}`);
  return n;
}

function str(v: unknown): string {
  if (typeof v === "string") return v;
  if (Buffer.isBuffer(v)) return v.toString("utf8");
  if (typeof v === "number") return String(v);
  throw new StoreError(`expected a string from Redis, got ${typeof v}`);
}

function parseKind(k: string): RunKind {
  return k === "chat" ? "chat" : "task";
}

function parseMeta(v: (string | null)[]): RunMeta | null {
  const [kind, first, last, finished, session] = v;
  if (kind === null || kind === undefined) return null;
  const meta: RunMeta = {
    kind: parseKind(kind),
    firstId: first != null ? Number(first) || 1 : 1,
    lastId: last != null ? Number(last) || 0 : 0,
    finished: finished === "1",
  };
  if (session != null) meta.sessionId = session;
  return meta;
}

/** A reducer restored from a stored base; a corrupt base is a {@link StoreError}. */
function fromStored(id: string, text: string): Reducer {
  try {
    return Reducer.fromStored(id, text);
  } catch (e) {
    throw new StoreError(`run ${id}: corrupt base: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function isNoScript(e: unknown): boolean {
  return e instanceof Error && e.message.startsWith("NOSCRIPT");
}

function wrap(e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const err = new StoreError(`redis: ${e instanceof Error ? e.message : String(e)}`);
  return err;
}

/** Where connections come from: one Redis, or a cluster's seed nodes. */
class Source {
  readonly cluster: boolean;
  private readonly url: string;
  private readonly seeds: { host: string; port: number }[];
  private readonly timeoutMs: number;

  constructor(url: string | undefined, timeoutMs: number) {
    if (url === undefined || url === "") throw new StoreError("redisStore: `url` is required (is REDIS_URL set?)");
    this.url = url;
    this.timeoutMs = timeoutMs;
    this.cluster = url.startsWith("redis-cluster://");
    this.seeds = [];
    if (this.cluster) {
      for (const s of url.slice("redis-cluster://".length).split(",")) {
        const t = s.trim();
        if (!t) continue;
        const i = t.lastIndexOf(":");
        const port = Number(t.slice(i + 1));
        if (i <= 0 || !Number.isInteger(port)) throw new StoreError(`redis-cluster seed "${t}" is not host:port`);
        this.seeds.push({ host: t.slice(0, i), port });
      }
      if (this.seeds.length === 0) throw new StoreError("redis-cluster:// names no seed node");
    } else if (!/^rediss?:\/\//.test(url)) {
      throw new StoreError("redisStore: url must start with redis://, rediss:// or redis-cluster://");
    }
  }

  private options(timeoutMs: number): RedisOptions {
    return {
      // Never re-send a command whose answer was lost: an append may have run.
      autoResendUnfulfilledCommands: false,
      // Commands queued while disconnected were never sent: safe to send once connected.
      maxRetriesPerRequest: 3,
      commandTimeout: timeoutMs,
      connectTimeout: 2000,
      retryStrategy: (times: number) => Math.min(50 * 2 ** times, 1000),
    };
  }

  /** The shared connection (a cluster client on a cluster). */
  connect(): Client {
    const opts = this.options(this.timeoutMs);
    if (this.cluster) {
      const c: ClusterOptions = { redisOptions: opts, enableOfflineQueue: true, maxRedirections: 16 };
      return quiet(new Cluster(this.seeds, c));
    }
    return quiet(new Redis(this.url, opts));
  }

  /**
   * A connection of its own for a blocking read on `key` of up to `blockMs` (on the shared
   * one it would stall every other command). On a cluster: a plain connection to the
   * master of `key`'s slot, from `shared`'s slot map (one TCP connect, not a cluster
   * client's discovery); a `MOVED` answer fails the read, and the caller reconnects after
   * {@link Source.refresh}.
   */
  blocking(key: string, blockMs: number, shared: Client): Client {
    const opts = this.options(blockMs + 5000);
    if (!(shared instanceof Cluster)) return quiet(new Redis(this.url, opts));
    const master = shared.slots[keySlot(key)]?.[0];
    const i = master?.lastIndexOf(":") ?? -1;
    if (master === undefined || i <= 0) {
      const c: ClusterOptions = { redisOptions: opts, enableOfflineQueue: true, maxRedirections: 16 };
      return quiet(new Cluster(this.seeds, c));
    }
    return quiet(new Redis({ ...opts, host: master.slice(0, i), port: Number(master.slice(i + 1)) }));
  }

  /** After a failed blocking read on a cluster: the slot map may be stale (resharding, failover). */
  refresh(shared: Client): void {
    if (shared instanceof Cluster) shared.refreshSlotsCache();
  }
}

/**
 * A client whose connection errors are not printed as ioredis's "Unhandled error event":
 * they reach the caller as the failed command (a {@link StoreError}; the router answers 503),
 * and the client reconnects by itself.
 */
function quiet<C extends Client>(c: C): C {
  c.on("error", () => {});
  return c;
}

/** CRC16-XMODEM (polynomial 0x1021), Redis Cluster's key hash. */
function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let k = 0; k < 8; k++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** The cluster slot of `key` (its hash tag `{…}` when it has a non-empty one). */
export function keySlot(key: string): number {
  const open = key.indexOf("{");
  if (open >= 0) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  return crc16(Buffer.from(key, "utf8")) % 16384;
}

/** A bounded FIFO of the newest events of a run: `get(i)` is the event with id `first + i`. */
class TailCache {
  private buf: string[] = [];
  private head = 0;
  first: number;
  last: number;
  finished: boolean;

  constructor(
    private readonly cap: number,
    last: number,
    finished: boolean,
  ) {
    this.first = last + 1;
    this.last = last;
    this.finished = finished;
  }

  get length(): number {
    return this.buf.length - this.head;
  }

  push(n: number, e: string): void {
    if (n !== this.last + 1 || this.length === 0) {
      // Trimmed past what this tail had read (or empty): the cache restarts at n.
      this.buf = [];
      this.head = 0;
      this.first = n;
    }
    if (this.length >= this.cap) {
      this.head += 1;
      this.first += 1;
      if (this.head > this.cap) {
        this.buf = this.buf.slice(this.head);
        this.head = 0;
      }
    }
    this.buf.push(e);
    this.last = n;
  }

  /** True when the events after `after` start inside the cache. */
  holds(after: number): boolean {
    return after + 1 >= this.first;
  }

  /** Events after `after`, at most `max`; null when `after + 1` is older than the cache. */
  after(after: number, max: number): string[] | null {
    if (!this.holds(after)) return null;
    const skip = after + 1 - this.first;
    const start = this.head + skip;
    return this.buf.slice(start, start + max);
  }
}

/** The live tail of one run in this process. */
class Tail {
  readonly listeners = new Set<AppendListener>();
  readonly cache: TailCache;
  private conn: Client | null = null;
  private stopped = false;

  constructor(
    private readonly source: Source,
    private readonly shared: Client,
    readonly runId: string,
    cap: number,
    last: number,
    finished: boolean,
  ) {
    this.cache = new TailCache(cap, last, finished);
  }

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    this.conn?.disconnect();
    this.conn = null;
  }

  private async loop(): Promise<void> {
    const key = logKey(this.runId);
    while (!this.stopped) {
      if (this.conn === null) this.conn = this.source.blocking(key, BLOCK_MS, this.shared);
      const conn = this.conn;
      let reply: XreadReply;
      try {
        reply = (await conn.call(
          "XREAD",
          "COUNT",
          String(BATCH),
          "BLOCK",
          String(BLOCK_MS),
          "STREAMS",
          key,
          `0-${this.cache.last}`,
        )) as XreadReply;
      } catch {
        if (this.stopped) return;
        conn.disconnect();
        if (this.conn === conn) this.conn = null;
        this.source.refresh(this.shared);
        await new Promise((r) => setTimeout(r, 250));
        continue;
      }
      if (this.stopped) return;
      let newest: number | null = null;
      for (const [, entries] of reply ?? []) {
        for (const [eid, fields] of entries) {
          const n = entryId(eid);
          const e = field(fields, "e");
          if (n === null || e === undefined || n <= this.cache.last) continue;
          this.cache.push(n, e);
          if (field(fields, "t") === "run.completed") this.cache.finished = true;
          newest = n;
        }
      }
      if (newest !== null) {
        for (const l of [...this.listeners]) {
          try {
            l(newest);
          } catch {
            // A listener's failure is its own; the tail goes on for the others.
          }
        }
      }
    }
  }
}

/** A run log on Redis in the gateway's layout (see the module docs). */
export class RedisStore implements Store {
  readonly name: string;
  private readonly source: Source;
  private readonly conn: Client;
  private readonly scripts: Record<ScriptName, LuaScript>;
  private readonly window: number;
  private readonly tailCap: number;
  private readonly snapshotCap: number;
  private readonly sendTtlS: number;
  /** The last two ARGV of every script that writes a run: retention and idle retention, ms (`lua/retention.lua`). */
  private readonly retentionArgs: [number, number];
  private readonly tails = new Map<string, Tail>();
  /** Reduced states by run, each with the envelope at its cursor (null: not known). */
  private readonly snapshots = new Map<string, { r: Reducer; at: string | null }>();
  private readonly blocking = new Set<Client>();
  private groupReady = false;
  /** Where the next `XAUTOCLAIM` of the sends queue goes on. */
  private reclaimCursor = "0-0";
  private closed = false;

  constructor(opts: RedisStoreOptions) {
    this.source = new Source(opts.url, opts.commandTimeoutMs ?? 10_000);
    this.name = this.source.cluster ? "redis-cluster" : "redis";
    this.conn = this.source.connect();
    this.scripts = loadScripts();
    this.window = Math.max(1, Math.floor(opts.window ?? DEFAULT_WINDOW));
    this.tailCap = Math.max(1, Math.floor(opts.tailCache ?? DEFAULT_TAIL_CACHE));
    this.snapshotCap = Math.max(1, Math.floor(opts.snapshotCache ?? DEFAULT_SNAPSHOT_CACHE));
    this.sendTtlS = Math.max(1, Math.floor(opts.sendTtlS ?? DEFAULT_SEND_TTL_S));
    this.retentionArgs = [
      retentionSeconds(opts.retentionS, DEFAULT_RETENTION_S, "retentionS") * 1000,
      retentionSeconds(opts.idleRetentionS, DEFAULT_IDLE_RETENTION_S, "idleRetentionS") * 1000,
    ];
  }

  /** Runs a script by SHA1, loading it on `NOSCRIPT` (not run then: safe to send again). */
  private async script(name: ScriptName, keys: string[], args: (string | number)[]): Promise<unknown> {
    const s = this.scripts[name];
    const a = args.map(String);
    try {
      return await this.conn.evalsha(s.sha, keys.length, ...keys, ...a);
    } catch (e) {
      if (!isNoScript(e)) throw wrap(e);
      try {
        return await this.conn.eval(s.text, keys.length, ...keys, ...a);
      } catch (e2) {
        throw wrap(e2);
      }
    }
  }

  private async cmd(...args: (string | number)[]): Promise<unknown> {
    const [c, ...rest] = args.map(String);
    if (c === undefined) throw new StoreError("empty command");
    try {
      return await this.conn.call(c, ...rest);
    } catch (e) {
      throw wrap(e);
    }
  }

  async newRunId(): Promise<string> {
    const n = num(await this.cmd("INCR", RUN_IDS));
    const rand = createHash("sha1").update(`${n}:${process.pid}:${Math.random()}`).digest("hex").slice(0, 8);
    return `run_${String(n).padStart(6, "0")}_${rand}`;
  }

  async create(id: string, spec: RunSpec): Promise<boolean> {
    const created = await this.script("create", [metaKey(id)], [spec.kind, "{}", "1", spec.sessionId ?? "", ...this.retentionArgs]);
    return num(created) === 1;
  }

  async meta(id: string): Promise<RunMeta | null> {
    const v = (await this.cmd("HMGET", metaKey(id), ...META_FIELDS)) as (string | null)[];
    return parseMeta(v);
  }

  async append(id: string, type: EventType, payload: JsonObject): Promise<number | null> {
    const r = (await this.script("append", [metaKey(id), logKey(id)], [bodyRest(id, type, JSON.stringify(payload)), type, ...this.retentionArgs])) as unknown[];
    const n = num(r[0]);
    if (n === -4) throw new ReplyTakenError(typeof payload["reply_to"] === "string" ? payload["reply_to"] : "");
    if (n < 0) return null;
    await this.trimIfOver(id, n, num(r[1]));
    return n;
  }

  async appendBatch(id: string, evs: NewEvent[], key?: IdemKey): Promise<BatchOutcome> {
    const args: (string | number)[] = [key?.digest ?? "", IDEMPOTENCY_TTL_MS / 1000, evs.length];
    for (const e of evs) args.push(bodyRest(id, e.type, JSON.stringify(e.payload)), e.type);
    args.push(...this.retentionArgs);
    const r = (await this.script("append_batch", [metaKey(id), logKey(id), idemKey(id, key?.key ?? "")], args)) as unknown[];
    const [code, first, last, firstId] = r.map(num) as [number, number, number, number];
    switch (code) {
      case 0:
        await this.trimIfOver(id, last, firstId);
        return { kind: "appended", first, last };
      case 1:
        return { kind: "repeated", first, last };
      case -2:
        return { kind: "key_conflict" };
      case -3:
        return { kind: "finished" };
      case -4:
        return { kind: "reply_taken" };
      default:
        return { kind: "unknown_run" };
    }
  }

  private async xrange(id: string, from: number, to: number | null): Promise<[number, string][]> {
    const entries = (await this.cmd("XRANGE", logKey(id), `0-${from}`, to === null ? "+" : `0-${to}`, "COUNT", BATCH)) as Entry[];
    return events(entries);
  }

  /** A reducer restored from the stored base (state as of `first_id - 1`), or a fresh one. */
  private async base(id: string): Promise<Reducer> {
    const text = (await this.cmd("GET", baseKey(id))) as string | null;
    return text === null ? Reducer.empty(id) : fromStored(id, text);
  }

  private async multi(build: (m: ReturnType<Client["multi"]>) => void): Promise<unknown[]> {
    const m = this.conn.multi();
    build(m);
    let res: [Error | null, unknown][] | null;
    try {
      res = await m.exec();
    } catch (e) {
      throw wrap(e);
    }
    if (res === null) throw new StoreError("redis: transaction aborted");
    return res.map(([err, v]) => {
      if (err) throw wrap(err);
      return v;
    });
  }

  async read(id: string, after: number): Promise<Replay | null> {
    const tail = this.tails.get(id);
    if (tail && tail.cache.holds(after)) {
      // The cache may still hold events another process has pruned since (trims are not
      // on the log the tail reads): it answers only from inside the window, `first_id`
      // being read after the events were cached. Older resumes go to Redis for the
      // snapshot (PROTOCOL §2a).
      const first = (await this.cmd("HGET", metaKey(id), "first_id")) as string | null;
      if (first === null) return null;
      const cached = after + 1 >= num(first) ? tail.cache.after(after, BATCH) : null;
      if (cached) return { events: cached, lastId: tail.cache.last, done: tail.cache.finished };
    }
    // A trim between the reads below is detected (ids not where expected) and retried.
    for (let attempt = 0; attempt < 5; attempt++) {
      const [m, entries] = await this.multi((t) => {
        t.hmget(metaKey(id), ...META_FIELDS);
        t.call("XRANGE", logKey(id), `0-${after + 1}`, "+", "COUNT", String(BATCH));
      });
      const meta = parseMeta(m as (string | null)[]);
      if (meta === null) return null;
      if (after + 1 >= meta.firstId || after >= meta.lastId) {
        const evs = events(entries as Entry[]);
        if (!denseFrom(evs, after + 1)) continue;
        return { events: evs.map(([, e]) => e), lastId: meta.lastId, done: meta.finished };
      }
      // Older than the window: the base as a snapshot, then the window.
      const [base, first, all] = await this.multi((t) => {
        t.get(baseKey(id));
        t.hget(metaKey(id), "first_id");
        t.call("XRANGE", logKey(id), "-", "+", "COUNT", String(BATCH));
      });
      if (typeof base !== "string") continue;
      const r = fromStored(id, base);
      try {
        const cursor = r.cursor;
        const evs = events(all as Entry[]);
        if (Number(first) !== cursor + 1 || !denseFrom(evs, cursor + 1)) continue;
        return {
          snapshot: { eventId: cursor, state: r.stateJson() },
          events: evs.map(([, e]) => e),
          lastId: meta.lastId,
          done: meta.finished,
        };
      } finally {
        r.free();
      }
    }
    throw new StoreError(`run ${id}: the log kept changing under a read`);
  }

  async subscribe(id: string, listener: AppendListener): Promise<Subscription | null> {
    if (this.closed) throw new StoreError("store closed");
    const meta = await this.meta(id);
    if (meta === null) return null;
    let tail = this.tails.get(id);
    if (tail === undefined) {
      tail = new Tail(this.source, this.conn, id, this.tailCap, meta.lastId, meta.finished);
      this.tails.set(id, tail);
      tail.start();
    }
    const t = tail;
    t.listeners.add(listener);
    let open = true;
    return {
      close: () => {
        if (!open) return;
        open = false;
        t.listeners.delete(listener);
        if (t.listeners.size === 0 && this.tails.get(id) === t) {
          this.tails.delete(id);
          t.stop();
        }
      },
    };
  }

  async snapshot(id: string): Promise<SnapshotBody | null> {
    const lastText = (await this.cmd("HGET", metaKey(id), "last_id")) as string | null;
    if (lastText === null) return null;
    const last = num(lastText);
    const cached = this.snapshots.get(id);
    this.snapshots.delete(id);
    // A cached state is reused only while the event at its cursor is still the one it ended
    // with: a run that expired and was created again under its id (retention) is another
    // run, and starts from its own base.
    let r: Reducer | undefined;
    let at: string | null = null;
    if (cached !== undefined) {
      let ok = cached.r.cursor === 0;
      if (!ok && cached.at !== null && cached.r.cursor <= last) {
        try {
          const evs = await this.xrange(id, cached.r.cursor, cached.r.cursor);
          ok = evs[0]?.[0] === cached.r.cursor && evs[0]?.[1] === cached.at;
        } catch (e) {
          cached.r.free();
          throw e;
        }
      }
      if (ok) {
        r = cached.r;
        at = cached.at;
      } else {
        cached.r.free();
      }
    }
    r ??= await this.base(id);
    try {
      let rebuilt = false;
      while (r.cursor < last) {
        const from = r.cursor + 1;
        const evs = await this.xrange(id, from, last);
        if (evs[0]?.[0] !== from || !denseFrom(evs, from)) {
          // The cached state is older than the window (trimmed meanwhile): start from the base.
          if (rebuilt) throw new StoreError(`run ${id}: gap in the log at ${from}`);
          rebuilt = true;
          r.free();
          r = await this.base(id);
          at = null;
          continue;
        }
        for (const [n, e] of evs) r.apply(n, e);
        at = evs[evs.length - 1]?.[1] ?? at;
      }
      const body: SnapshotBody = { runId: id, eventId: r.cursor, state: r.stateJson() };
      if (this.snapshots.size >= this.snapshotCap) {
        for (const old of this.snapshots.values()) old.r.free();
        this.snapshots.clear();
      }
      this.snapshots.set(id, { r, at });
      return body;
    } catch (e) {
      r.free();
      throw wrap(e);
    }
  }

  async send(session: string, clientRequestId: string, content: string): Promise<SendOutcome> {
    // The payload is `{"message_id":"<allocated in the script>", …rest}` (rest's keys in the
    // gateway's order: serde_json sorts them).
    const rest = JSON.stringify({ client_request_id: clientRequestId, content, role: "user" }).slice(1);
    const body = bodyRest(session, "message.created", '{"message_id":"');
    const head = body.slice(0, -1);
    const r = (await this.script(
      "send",
      [metaKey(session), logKey(session), sendKey(session, clientRequestId), unqueuedKey(session)],
      [head, `",${rest}}`, this.sendTtlS, session, clientRequestId, content, ...this.retentionArgs],
    )) as unknown[];
    const code = num(r[0]);
    const messageId = str(r[1]);
    const fresh = code === 1;
    const unqueued = num(r[4]) === 1;
    if (unqueued) await this.queueSend(session, clientRequestId, fresh ? content : str(r[5]));
    if (fresh) await this.trimIfOver(session, num(r[2]), num(r[3]));
    return { messageId, runId: session, fresh, finished: code === -3 };
  }

  /**
   * Steps 2 and 3 of a send: `XADD` to the global queue (its own slot), then
   * clear the session's `unqueued` record (a failure between them queues the
   * send again on its retry: consumers deduplicate, `claimed`).
   */
  private async queueSend(session: string, crid: string, content: string): Promise<void> {
    await this.cmd("XADD", SEND_QUEUE, "MAXLEN", "~", SEND_QUEUE_MAXLEN, "*", "s", session, "c", crid, "x", content);
    await this.cmd("HDEL", unqueuedKey(session), crid);
  }

  async nextMessageId(id: string): Promise<string> {
    // A script, not a bare HINCRBY: an expired run's meta is not re-created without a TTL.
    const n = num(await this.script("next_message", [metaKey(id)], []));
    if (n < 0) throw new StoreError(`unknown run ${JSON.stringify(id)}`);
    return `msg_${n}`;
  }

  /** Prunes to the window when the run holds 10 % more than it (the one rule, {@link prunePoint}). */
  private async trimIfOver(id: string, last: number, first: number): Promise<void> {
    const keepFrom = prunePoint(first, last, this.window);
    if (keepFrom !== null) await this.prune(id, keepFrom);
  }

  async prune(id: string, keepFrom: number): Promise<boolean> {
    const meta = await this.meta(id);
    if (meta === null) return false;
    const keep = Math.min(keepFrom, meta.lastId + 1);
    if (keep <= meta.firstId) return true;
    const base = await this.base(id);
    try {
      let next = meta.firstId;
      while (next < keep) {
        const evs = await this.xrange(id, next, keep - 1);
        // Someone else trimmed meanwhile: theirs stands.
        if (evs.length === 0 || !denseFrom(evs, next)) return true;
        for (const [n, e] of evs) {
          base.apply(n, e);
          next = n + 1;
        }
      }
      base.setCursor(keep - 1);
      await this.script("trim", [metaKey(id), logKey(id), baseKey(id)], [String(meta.firstId), String(keep), base.toStored()]);
      return true;
    } finally {
      base.free();
    }
  }

  async sendsAfter(
    after: string | null,
    max: number,
    waitMs: number,
    signal?: AbortSignal,
  ): Promise<{ sends: SendRecord[]; next: string }> {
    const from = after ?? "0-0";
    const args = ["COUNT", String(Math.max(1, max))];
    let conn = this.conn;
    let own: Client | null = null;
    if (waitMs > 0 && !signal?.aborted) {
      // A blocking read gets a connection of its own (it would stall the shared one).
      own = this.source.blocking(SEND_QUEUE, waitMs, this.conn);
      this.blocking.add(own);
      conn = own;
      args.push("BLOCK", String(waitMs));
    }
    const abort = (): void => own?.disconnect();
    signal?.addEventListener("abort", abort, { once: true });
    let reply: XreadReply = null;
    try {
      reply = (await conn.call("XREAD", ...args, "STREAMS", SEND_QUEUE, from)) as XreadReply;
    } catch (e) {
      if (!signal?.aborted) {
        this.source.refresh(this.conn);
        throw wrap(e);
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      if (own) {
        this.blocking.delete(own);
        own.disconnect();
      }
    }
    const sends: SendRecord[] = [];
    for (const [, entries] of reply ?? []) {
      for (const [eid, f] of entries) {
        const s = field(f, "s") ?? "";
        sends.push({
          cursor: eid,
          sessionId: s,
          runId: s,
          clientRequestId: field(f, "c") ?? "",
          content: field(f, "x") ?? "",
        });
      }
    }
    return { sends, next: sends.at(-1)?.cursor ?? from };
  }

  /**
   * Takes up to 16 new chat sends for `consumer` through the consumer group
   * `replies` of `runstream:sends` (the gateway's chat workers' group: every
   * send is handed to one consumer of all processes, kit or gateway), waiting
   * up to `blockMs`. The queue is at least once: a send queued twice is
   * handed out once (`claimed`, `SET NX`); the other entry is acknowledged
   * unanswered. Acknowledge each with {@link ackSend} once answered.
   */
  async claimSends(
    consumer: string,
    blockMs: number,
    signal?: AbortSignal,
    reclaimIdleMs = 30_000,
    answering: readonly string[] = [],
  ): Promise<QueuedSend[]> {
    if (!this.groupReady) {
      try {
        // The group starts at 0: sends accepted before any worker ran are answered too.
        await this.conn.call("XGROUP", "CREATE", SEND_QUEUE, SEND_GROUP, "0", "MKSTREAM");
      } catch (e) {
        if (!(e instanceof Error && e.message.startsWith("BUSYGROUP"))) throw wrap(e);
      }
      this.groupReady = true;
    }
    if (signal?.aborted) return [];
    // First the sends another consumer read and left unanswered for `reclaimIdleMs`.
    await this.heartbeatSends(consumer, answering);
    // One of ours the heartbeat missed (this process stalled) is still being answered here.
    const reclaimed = (await this.reclaim(consumer, reclaimIdleMs)).filter(([id]) => !answering.includes(id));
    if (reclaimed.length > 0) return this.handOut(reclaimed, true);
    const own = this.source.blocking(SEND_QUEUE, blockMs, this.conn);
    this.blocking.add(own);
    const abort = (): void => own.disconnect();
    signal?.addEventListener("abort", abort, { once: true });
    let reply: XreadReply = null;
    try {
      reply = (await own.call(
        "XREADGROUP", "GROUP", SEND_GROUP, consumer, "COUNT", "16", "BLOCK", String(blockMs), "STREAMS", SEND_QUEUE, ">",
      )) as XreadReply;
    } catch (e) {
      if (!signal?.aborted) {
        // The stream or its group was deleted (a flushed Redis): create it again next time.
        if (e instanceof Error && e.message.startsWith("NOGROUP")) this.groupReady = false;
        this.source.refresh(this.conn);
        throw wrap(e);
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      this.blocking.delete(own);
      own.disconnect();
    }
    return this.handOut((reply ?? []).flatMap(([, entries]) => entries));
  }

  /** The heartbeat of the sends being answered here (`JUSTID` counts no delivery). */
  async heartbeatSends(consumer: string, answering: readonly string[]): Promise<void> {
    if (answering.length > 0) await this.cmd("XCLAIM", SEND_QUEUE, SEND_GROUP, consumer, 0, ...answering, "JUSTID");
  }

  /**
   * Up to 16 sends of the queue pending for at least `idleMs`, taken over by `consumer`
   * (`XAUTOCLAIM` moves each to one caller only), the scan going on where the last call
   * stopped. A send handed out more than {@link MAX_SEND_DELIVERIES} times (its answer
   * always failed) is acknowledged unanswered instead.
   */
  private async reclaim(consumer: string, idleMs: number): Promise<Entry[]> {
    let r: unknown[];
    try {
      r = (await this.cmd("XAUTOCLAIM", SEND_QUEUE, SEND_GROUP, consumer, Math.floor(idleMs), this.reclaimCursor, "COUNT", 16)) as unknown[];
    } catch (e) {
      // The stream or its group was deleted (a flushed Redis): create it again next time.
      if (e instanceof Error && e.message.includes("NOGROUP")) this.groupReady = false;
      throw e;
    }
    this.reclaimCursor = typeof r[0] === "string" ? r[0] : "0-0";
    // Redis 6.2 lists a deleted entry with nil fields; 7 lists it apart (third element).
    const raw = (Array.isArray(r[1]) ? r[1] : []) as [string, string[] | null][];
    const out: Entry[] = [];
    for (const [queueId, fields] of raw) {
      if (fields === null) {
        await this.ackSend(queueId);
        continue;
      }
      const p = (await this.cmd("XPENDING", SEND_QUEUE, SEND_GROUP, queueId, queueId, 1)) as [string, string, number, number][];
      const deliveries = p[0]?.[3] ?? 0;
      if (deliveries > MAX_SEND_DELIVERIES) {
        await this.ackSend(queueId);
        continue;
      }
      out.push([queueId, fields]);
    }
    return out;
  }

  /**
   * The sends of `entries` this consumer answers: the first claim of (session,
   * client_request_id) wins (`claimed`, `SET NX`); a later entry for it is acknowledged
   * unanswered, and a reclaimed entry finds its own claim and is answered again (one
   * reply per send is then enforced by the append step, `reply_taken`). A send `takenOver`
   * from a consumer that stopped whose reply had started is not handed out: that reply
   * ends `message.failed` ({@link endOrphan}) and the send is acknowledged.
   */
  private async handOut(entries: Entry[], takenOver = false): Promise<QueuedSend[]> {
    const out: QueuedSend[] = [];
    for (const [queueId, f] of entries) {
      const s = field(f, "s");
      const c = field(f, "c");
      const x = field(f, "x");
      if (s === undefined || c === undefined || x === undefined) continue;
      const first = await this.cmd("SET", claimedKey(s, c), queueId, "NX", "EX", this.sendTtlS);
      if (first === null && (await this.cmd("GET", claimedKey(s, c))) !== queueId) {
        await this.ackSend(queueId);
        continue;
      }
      if (takenOver && (await this.endOrphan(s, c)) !== "unstarted") {
        await this.ackSend(queueId);
        continue;
      }
      const messageId = (await this.cmd("GET", sendKey(s, c))) as string | null;
      out.push({ queueId, sessionId: s, clientRequestId: c, content: x, messageId: messageId ?? "" });
    }
    return out;
  }

  /**
   * The reply to send `clientRequestId` of session `sessionId`, taken over from a consumer that
   * stopped: if it was streaming it ends here with `message.failed` (`"ended"`), checked and
   * appended in one step (`lua/orphan.lua`, the gateway's too), so takers racing append one
   * ending and never one after the reply's own; `"done"`: it had ended (or the run is gone or
   * finished); `"unstarted"`: no reply began, the taker answers the send.
   */
  async endOrphan(sessionId: string, clientRequestId: string): Promise<"unstarted" | "ended" | "done"> {
    const body = bodyRest(sessionId, "message.failed", "");
    const r = (await this.script("orphan", [metaKey(sessionId), logKey(sessionId)], [clientRequestId, body.slice(0, -1), ...this.retentionArgs])) as unknown[];
    const [code, , n, first] = r.map((v, i) => (i === 1 ? 0 : num(v))) as [number, number, number, number];
    if (code === 0) return "unstarted";
    if (code !== 1) return "done";
    await this.trimIfOver(sessionId, n, first);
    return "ended";
  }

  /** Acknowledges a send taken by {@link claimSends} (it is answered). */
  async ackSend(queueId: string): Promise<void> {
    await this.cmd("XACK", SEND_QUEUE, SEND_GROUP, queueId);
  }

  async requestCancel(id: string, target: CancelTarget, payload: JsonObject): Promise<CancelOutcome> {
    const type = "run.cancel_requested";
    const r = (await this.script(
      "cancel",
      [metaKey(id), logKey(id), cancelKey(id, target)],
      [bodyRest(id, type, JSON.stringify(payload)), type, target.kind === "reply" ? target.replyTo : "", ...this.retentionArgs],
    )) as unknown[];
    const [code, n, first] = r.slice(0, 3).map(num) as [number, number, number];
    const status = r[3] instanceof Buffer ? r[3].toString() : String(r[3] ?? "");
    switch (code) {
      case 0:
        await this.trimIfOver(id, n, first);
        return { kind: "requested", eventId: n };
      case 1:
        return { kind: "already", eventId: n };
      case -3:
        return status === "completed" || status === "failed" ? { kind: "reply_finished", status } : { kind: "finished" };
      default:
        return { kind: "unknown_run" };
    }
  }

  async cancelRequested(id: string, target: CancelTarget): Promise<number | null> {
    const v = await this.cmd("GET", cancelKey(id, target));
    return v === null ? null : num(v);
  }

  async scheduleGrace(id: string, target: CancelTarget, dueMs: number): Promise<void> {
    await this.cmd("ZADD", GRACES, Math.floor(dueMs), JSON.stringify([id, cancelTargetKey(target)]));
  }

  async claimDueGraces(nowMs: number, max: number): Promise<DueGrace[]> {
    const members = (await this.cmd("ZRANGEBYSCORE", GRACES, "-inf", Math.floor(nowMs), "LIMIT", 0, Math.max(1, max))) as string[];
    const out: DueGrace[] = [];
    for (const m of members) {
      // ZREM answers 1 to one caller only: that process ends the target.
      if (num(await this.cmd("ZREM", GRACES, m)) !== 1) continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(m);
      } catch {
        continue;
      }
      if (!Array.isArray(parsed) || typeof parsed[0] !== "string" || typeof parsed[1] !== "string") continue;
      const target = cancelTargetFromKey(parsed[1]);
      if (target) out.push({ runId: parsed[0], target });
    }
    return out;
  }

  async ready(): Promise<boolean> {
    try {
      return (await this.conn.call("PING")) === "PONG";
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.tails.values()) t.stop();
    this.tails.clear();
    for (const c of this.blocking) c.disconnect();
    this.blocking.clear();
    for (const c of this.snapshots.values()) c.r.free();
    this.snapshots.clear();
    try {
      await this.conn.quit();
    } catch {
      this.conn.disconnect();
    }
  }
}

/** The kit's store on Redis, in the gateway's layout (see the module docs). */
export function redisStore(opts: RedisStoreOptions): RedisStore {
  return new RedisStore(opts);
}
