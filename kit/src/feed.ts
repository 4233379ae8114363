/**
 * The kit's live fan-out: one {@link RunFeed} per run with open streams in
 * this process. A feed holds the run's one store subscription, reads each
 * append once (not once per stream), parses each envelope's id and type once,
 * and keeps the newest {@link FEED_EVENTS} events as {@link FeedEvent}s whose
 * SSE frame (a `Buffer`) and WebSocket frame are encoded once and shared by
 * every stream of the run. A stream the feed's window does not cover (a
 * replay, a resume from far back, a reader more than the window behind)
 * reads the store itself, as before, until it has caught up.
 */
import type { Store, Subscription } from "./store.js";

/** Newest events each run's feed keeps for its streams (drop-oldest; a stream further behind reads the store). */
export const FEED_EVENTS = 256;

/** `[event_id, type]` of a logged envelope text (servers write `event_id`, `run_id`, `type` first). */
export function idAndType(ev: string): [number, string] {
  const m = /^\{"event_id":(\d+),"run_id":"(?:[^"\\]|\\.)*","type":"([a-z_.]+)"/.exec(ev);
  if (m?.[1] !== undefined && m[2] !== undefined) return [Number(m[1]), m[2]];
  try {
    const v = JSON.parse(ev) as { event_id?: unknown; type?: unknown };
    return [typeof v.event_id === "number" ? v.event_id : 0, typeof v.type === "string" ? v.type : "message"];
  } catch {
    return [0, "message"];
  }
}

/** One logged event as the streams write it; each frame is encoded on first use, once. */
export class FeedEvent {
  #sse: Buffer | null = null;
  #ws: string | null = null;

  constructor(
    /** The stream position (the envelope's `event_id`, or the position a dense log gives it). */
    readonly id: number,
    /** The envelope's `type` (the SSE `event:` line). */
    readonly type: string,
    /** The envelope JSON text. */
    readonly text: string,
  ) {}

  /** The SSE frame (PROTOCOL §2a): `id:`, `event:`, `data:` lines. */
  get sse(): Buffer {
    this.#sse ??= Buffer.from(`id: ${this.id}\nevent: ${this.type}\ndata: ${this.text}\n\n`);
    return this.#sse;
  }

  /** The WebSocket frame (PROTOCOL §2b `event`). */
  get ws(): string {
    this.#ws ??= `{"op":"event","event":${this.text}}`;
    return this.#ws;
  }
}

/** What a stream reads next: like the store's `Replay`, with parsed, shared events. */
export interface FeedRead {
  snapshot?: { eventId: number; state: string } | undefined;
  events: FeedEvent[];
  lastId: number;
  done: boolean;
}

/** The events of `texts`, positioned after `after`. */
function parsed(texts: string[], after: number): FeedEvent[] {
  let cursor = after;
  return texts.map((ev) => {
    const [id, type] = idAndType(ev);
    cursor = id > 0 ? id : cursor + 1;
    return new FeedEvent(cursor, type, ev);
  });
}

/** One stream's hold on its run's feed. */
export interface Follow {
  /** The events after `after`: from the feed's window when it covers them, else from the store. `null`: the run is gone. */
  read(after: number): Promise<FeedRead | null>;
  /** Stops following (idempotent); the last follower closes the feed's store subscription. */
  close(): void;
}

/** One run's feed: one subscription, one reader, a bounded window of shared events. */
class RunFeed {
  readonly followers = new Set<() => void>();
  sub: Subscription | null = null;
  /** Resolves once the store subscription is made (false: the run is gone). */
  ready: Promise<boolean> | null = null;
  /** Newest events read, dense and in order, at most FEED_EVENTS. */
  #window: FeedEvent[] = [];
  /** The last id the feed has read (`null`: not anchored yet: streams read the store). */
  #anchor: number | null = null;
  #lastId = 0;
  #done = false;
  /** The newest id the store announced. */
  #announced = 0;
  #pulling = false;
  #again = false;

  constructor(
    private readonly store: Store,
    readonly runId: string,
  ) {}

  /** The store announced an append up to `lastId`. */
  appended(lastId: number): void {
    this.#announced = Math.max(this.#announced, lastId);
    if (this.#anchor === null) this.#wakeAll();
    else void this.#pull();
  }

  read(after: number): FeedRead | null {
    const anchor = this.#anchor;
    if (anchor === null || after > anchor) return null;
    const first = this.#window[0]?.id ?? anchor + 1;
    if (after + 1 < first) return null;
    return { events: this.#window.slice(after + 1 - first), lastId: Math.max(this.#lastId, anchor), done: this.#done };
  }

  /** A stream's own store read found the run caught up at `lastId`: the feed reads on from there. */
  adopt(lastId: number, done: boolean): void {
    if (this.#anchor !== null) return;
    this.#anchor = lastId;
    this.#lastId = lastId;
    this.#done = done;
    this.#window = [];
    if (this.#announced > lastId) void this.#pull();
  }

  #wakeAll(): void {
    for (const f of [...this.followers]) f();
  }

  /** Reads what the store announced, one read at a time, then wakes the streams. */
  async #pull(): Promise<void> {
    if (this.#pulling) {
      this.#again = true;
      return;
    }
    this.#pulling = true;
    try {
      do {
        this.#again = false;
        const anchor = this.#anchor;
        if (anchor === null) break;
        const rep = await this.store.read(this.runId, anchor);
        if (this.#anchor !== anchor) break;
        if (rep === null || rep.snapshot !== undefined) {
          // Gone, or the feed fell behind the store's window: streams read the store themselves.
          this.#anchor = null;
          this.#window = [];
          break;
        }
        const evs = parsed(rep.events, anchor);
        const last = evs[evs.length - 1];
        if (last !== undefined) {
          this.#window.push(...evs);
          if (this.#window.length > FEED_EVENTS) this.#window.splice(0, this.#window.length - FEED_EVENTS);
          this.#anchor = last.id;
        }
        this.#lastId = rep.lastId;
        this.#done = rep.done;
        if (last !== undefined && last.id < Math.max(rep.lastId, this.#announced)) this.#again = true;
        if (last !== undefined) this.#wakeAll();
      } while (this.#again);
    } catch {
      // The streams see the store's error on their own reads.
      this.#anchor = null;
      this.#window = [];
    } finally {
      this.#pulling = false;
    }
    if (this.#anchor === null) this.#wakeAll();
  }
}

/** The feeds of one kit process, by run. */
export class Feeds {
  readonly #runs = new Map<string, RunFeed>();

  constructor(private readonly store: Store) {}

  /** Runs with an open feed (streams in this process). */
  get size(): number {
    return this.#runs.size;
  }

  /**
   * Follows run `runId`: `wake` is called when it has new events (or the
   * stream should look at the store). `null`: the run is gone.
   */
  async follow(runId: string, wake: () => void): Promise<Follow | null> {
    let feed = this.#runs.get(runId);
    if (feed === undefined) {
      const f = new RunFeed(this.store, runId);
      feed = f;
      this.#runs.set(runId, f);
      f.ready = this.store.subscribe(runId, (n) => f.appended(n)).then(
        (sub) => {
          if (sub === null) {
            if (this.#runs.get(runId) === f) this.#runs.delete(runId);
            return false;
          }
          f.sub = sub;
          // Everyone left while the subscription was being made.
          if (f.followers.size === 0) this.#drop(f);
          return true;
        },
        (e: unknown) => {
          if (this.#runs.get(runId) === f) this.#runs.delete(runId);
          throw e;
        },
      );
    }
    const f = feed;
    f.followers.add(wake);
    let ok: boolean;
    try {
      ok = (await f.ready) ?? false;
    } catch (e) {
      f.followers.delete(wake);
      throw e;
    }
    if (!ok) {
      f.followers.delete(wake);
      return null;
    }
    let open = true;
    return {
      read: async (after) => {
        const fromFeed = f.read(after);
        if (fromFeed !== null) return fromFeed;
        const rep = await this.store.read(runId, after);
        if (rep === null) return null;
        const from = rep.snapshot?.eventId ?? after;
        const events = parsed(rep.events, from);
        const end = events[events.length - 1]?.id ?? from;
        if (end >= rep.lastId) f.adopt(end, rep.done);
        return { snapshot: rep.snapshot, events, lastId: rep.lastId, done: rep.done };
      },
      close: () => {
        if (!open) return;
        open = false;
        f.followers.delete(wake);
        if (f.followers.size === 0 && f.sub !== null) this.#drop(f);
      },
    };
  }

  #drop(f: RunFeed): void {
    if (this.#runs.get(f.runId) === f) this.#runs.delete(f.runId);
    f.sub?.close();
    f.sub = null;
  }
}
