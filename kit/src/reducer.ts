/**
 * The one reducer (the runstream crate's `src/core/state.rs`, which the
 * browser client and the gateway run too), compiled to wasm by
 * `kit/reducer` and loaded here with Node's own `WebAssembly`. Also the
 * publish API's batch validation (the gateway's `publish.rs` rules on the
 * client's envelope codec). Nothing in this file decides a rule: it moves
 * text in and out of the module.
 */
import { readFileSync } from "node:fs";

interface Exports {
  memory: WebAssembly.Memory;
  rs_alloc(len: number): number;
  rs_out_ptr(): number;
  rs_out_len(): number;
  reducer_new(runPtr: number, runLen: number): number;
  reducer_from_stored(runPtr: number, runLen: number, ptr: number, len: number): number;
  reducer_apply(h: number, id: number, ptr: number, len: number): number;
  reducer_cursor(h: number): number;
  reducer_set_cursor(h: number, id: number): number;
  reducer_state(h: number): number;
  reducer_stored(h: number): number;
  reducer_clone(h: number): number;
  reducer_drop(h: number): void;
  window_prune_point(firstId: number, lastId: number, window: number): number;
  check_batch(runPtr: number, runLen: number, ptr: number, len: number, cancelAllowed: number): number;
}

const wasm = (() => {
  const bytes = readFileSync(new URL("./reducer.wasm", import.meta.url));
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
  return instance.exports as unknown as Exports;
})();

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Copies `text` into a fresh module buffer (consumed by the call it is passed to). */
function put(text: string): [number, number] {
  const bytes = encoder.encode(text);
  const ptr = wasm.rs_alloc(bytes.length);
  new Uint8Array(wasm.memory.buffer, ptr, bytes.length).set(bytes);
  return [ptr, bytes.length];
}

/** The module's last output text. */
function out(): string {
  return decoder.decode(new Uint8Array(wasm.memory.buffer, wasm.rs_out_ptr(), wasm.rs_out_len()));
}

/** Reducers not freed by their owner are freed when collected. */
const finalizer = new FinalizationRegistry<number>((h) => wasm.reducer_drop(h));

/**
 * A run's state reduced from its log (the gateway's `Reduced`): job-only
 * events stay parked across a stored base. Free it with {@link Reducer.free}
 * (or let the collector do it).
 */
export class Reducer {
  #h: number;
  readonly runId: string;

  private constructor(runId: string, handle: number) {
    this.runId = runId;
    this.#h = handle;
    finalizer.register(this, handle, this);
  }

  /** The empty state of run `runId`. */
  static empty(runId: string): Reducer {
    return new Reducer(runId, wasm.reducer_new(...put(runId)));
  }

  /** A state restored from a stored base (`{event_id, parked, state}`, either server's); throws on a corrupt one. */
  static fromStored(runId: string, stored: string): Reducer {
    const h = wasm.reducer_from_stored(...put(runId), ...put(stored));
    if (h === 0) throw new Error(out());
    return new Reducer(runId, h);
  }

  /** The last applied id. */
  get cursor(): number {
    return wasm.reducer_cursor(this.#h);
  }

  /** Applies logged envelope `text` (id `id`); invalid ones are skipped, as the gateway does. */
  apply(id: number, text: string): void {
    wasm.reducer_apply(this.#h, id, ...put(text));
  }

  /** Marks everything up to `id` as covered (a pruned base). */
  setCursor(id: number): void {
    wasm.reducer_set_cursor(this.#h, id);
  }

  /** The §6 state as JSON text. */
  stateJson(): string {
    wasm.reducer_state(this.#h);
    return out();
  }

  /** The stored form `{event_id, parked, state}` (the gateway's `Reduced::to_stored`). */
  toStored(): string {
    wasm.reducer_stored(this.#h);
    return out();
  }

  /** An independent copy. */
  clone(): Reducer {
    return new Reducer(this.runId, wasm.reducer_clone(this.#h));
  }

  /** Frees the module memory it holds (the reducer is unusable afterwards). */
  free(): void {
    if (this.#h !== 0) {
      finalizer.unregister(this);
      wasm.reducer_drop(this.#h);
      this.#h = 0;
    }
  }
}

/**
 * The state of run `runId` after `base` (a stored base, or none) and then
 * `events` (`[id, envelope text]`, in order): `{ eventId, state, stored }`.
 */
export function reduce(
  runId: string,
  base: string | null,
  events: Iterable<readonly [number, string]>,
): { eventId: number; state: string; stored: string } {
  const r = base === null ? Reducer.empty(runId) : Reducer.fromStored(runId, base);
  try {
    for (const [id, text] of events) r.apply(id, text);
    return { eventId: r.cursor, state: r.stateJson(), stored: r.toStored() };
  } finally {
    r.free();
  }
}

/**
 * The window rule, the gateway's (`runstream::core::reduced::prune_point`,
 * from the module): where a run holding events `firstId..=lastId` is pruned
 * to so that it keeps the newest `window` events, or `null` while it holds at
 * most `window + window / 10` (a long run is pruned in steps of 10 %,
 * amortized O(1) per event). Both stores call it after every append.
 */
export function prunePoint(firstId: number, lastId: number, window: number): number | null {
  const keepFrom = wasm.window_prune_point(firstId, lastId, window);
  return keepFrom > 0 ? keepFrom : null;
}

/**
 * Checks a publish body for run `runId` as the gateway does: its canonical
 * JSON text (sorted keys, compact; the idempotency digest is taken of it),
 * or the 400 message naming `events[i]` (`syntax`: the body is not JSON, and
 * the message is the gateway's plain-text answer). `cancelAllowed` lets an in-process
 * producer append `run.cancel_requested` (the publish API never may).
 */
export function checkBatch(
  runId: string,
  body: string,
  cancelAllowed = false,
): { ok: true; canonical: string } | { ok: false; error: string; syntax: boolean } {
  const code = wasm.check_batch(...put(runId), ...put(body), cancelAllowed ? 1 : 0);
  return code === 1 ? { ok: true, canonical: out() } : { ok: false, error: out(), syntax: code === 2 };
}
