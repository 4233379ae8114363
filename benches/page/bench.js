// Benchmarks that run inside the page: runstream (wasm) next to a JavaScript
// pipeline built from the peers, on the same bytes from the same server.
import init, { RunStream } from "/pkg/runstream.js";
import { createParser } from "eventsource-parser";
import { fetchEventSource } from "@microsoft/fetch-event-source";

let wasm;
const ready = init().then((w) => (wasm = w));

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: body ? { "Content-Type": "application/json" } : undefined, body: body ? JSON.stringify(body) : undefined });
  const t = await r.text();
  return t ? JSON.parse(t) : null;
}

const createRun = (body) => api("POST", "/api/admin/runs", body).then((r) => r.run_id);

function runstreamUntilClosed(opts, onSubscribe, onEvent) {
  return new Promise((resolve) => {
    const s = new RunStream({ resume: "none", spans: false, ...opts });
    if (onEvent) s.subscribeEvents(onEvent);
    const off = s.subscribe(() => {
      const snap = s.getSnapshot();
      if (onSubscribe) onSubscribe(snap);
      if (snap.status.connection === "closed" || snap.status.connection === "failed") {
        off();
        s.close();
        resolve(snap);
      }
    });
    s.start();
  });
}

/** The JS pipeline: fetch + eventsource-parser + JSON.parse + Map dedupe + immutable update per event. */
async function jsPipeline(url, onEvent) {
  const seen = new Map();
  let state = { cursor: 0, status: "pending", messages: {} };
  const resp = await fetch(url, { headers: { Accept: "text/event-stream" } });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let done = false;
  const parser = createParser({
    onEvent(ev) {
      const e = JSON.parse(ev.data);
      const key = `${e.run_id}\u0000${e.event_id}`;
      if (seen.has(key)) return;
      seen.set(key, true);
      const p = e.payload;
      if (e.type === "message.created") {
        state = { ...state, cursor: e.event_id, messages: { ...state.messages, [p.message_id]: { role: p.role, content: "" } } };
      } else if (e.type === "message.delta") {
        const m = state.messages[p.message_id];
        state = { ...state, cursor: e.event_id, messages: { ...state.messages, [p.message_id]: { ...m, content: m.content + p.delta } } };
      } else if (e.type === "run.completed") {
        state = { ...state, cursor: e.event_id, status: p.status };
        done = true;
      } else {
        state = { ...state, cursor: e.event_id };
      }
      if (onEvent) onEvent(state);
    },
  });
  while (!done) {
    const { value, done: end } = await reader.read();
    if (end) break;
    parser.feed(value);
  }
  reader.cancel().catch(() => {});
  return state;
}

export async function throughput(n, rounds = 7) {
  await ready;
  const run = await createRun({ tokens: n, instant: true });
  // The same SSE bytes for both, served from memory (a blob: URL that fetch reads),
  // so the figure is the pipeline's cost, not the server's or the network's.
  const bytes = await (await fetch(`/api/stream/runs/${run}`)).arrayBuffer();
  const url = URL.createObjectURL(new Blob([bytes], { type: "text/event-stream" }));
  const out = { js: [], rs: [], ratio: [] };
  const jsRound = async () => {
    const t0 = performance.now();
    const js = await jsPipeline(url);
    return { cursor: js.cursor, perSec: js.cursor / ((performance.now() - t0) / 1000) };
  };
  const rsRound = async () => {
    const t0 = performance.now();
    // Timed to the moment run.completed is applied (not to the next animation frame).
    let appliedAt = null;
    const rs = await runstreamUntilClosed({ runId: run, url, snapshotUrl: null }, null, (e) => {
      if (e.name === "stream.termination.total" && e.attrs?.reason === "run_completed") appliedAt = e.ts;
    });
    const ms = (appliedAt ?? performance.now()) - t0;
    return { cursor: rs.state.cursor, perSec: rs.metrics.eventsApplied / (ms / 1000) };
  };
  // Rounds alternate which pipeline goes first, so neither always runs on a
  // warmer (or more fragmented) heap; the ratio is taken per round.
  for (let round = 0; round < rounds; round++) {
    let js, rs;
    if (round % 2 === 0) {
      js = await jsRound();
      rs = await rsRound();
    } else {
      rs = await rsRound();
      js = await jsRound();
    }
    if (js.cursor !== rs.cursor) throw new Error(`mismatch ${js.cursor} vs ${rs.cursor}`);
    out.js.push(js.perSec);
    out.rs.push(rs.perSec);
    out.ratio.push(rs.perSec / js.perSec);
  }
  URL.revokeObjectURL(url);
  const stats = (a) => {
    const s = a.slice().sort((x, y) => x - y);
    return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1] };
  };
  return { events: n + 4, bytes: bytes.byteLength, rounds, runstream: stats(out.rs), jsPipeline: stats(out.js), ratio: stats(out.ratio), samples: out };
}

function frameWatch() {
  let longTasks = 0;
  let maxGap = 0;
  let frames = 0;
  let last = performance.now();
  let on = true;
  const obs = new PerformanceObserver((list) => (longTasks += list.getEntries().length));
  try {
    obs.observe({ type: "longtask", buffered: false });
  } catch {}
  const tick = () => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    frames++;
    if (on) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  return () => {
    on = false;
    obs.disconnect();
    return { longTasks, worstFrameMs: maxGap, frames };
  };
}

export async function frameBudget(rate, seconds) {
  await ready;
  const el = document.getElementById("out");
  const n = rate * seconds;
  const res = {};
  {
    const run = await createRun({ tokens: n, rate });
    let calls = 0;
    const stop = frameWatch();
    const t0 = performance.now();
    await runstreamUntilClosed({ runId: run }, (snap) => {
      calls++;
      const m = snap.state.messages[0];
      el.textContent = m ? m.content.slice(-200) : "";
    });
    const secs = (performance.now() - t0) / 1000;
    res.runstream = { callsPerSec: calls / secs, ...stop() };
    res.runstream.callsPerFrame = calls / Math.max(1, res.runstream.frames);
  }
  {
    const run = await createRun({ tokens: n, rate });
    let calls = 0;
    const stop = frameWatch();
    const t0 = performance.now();
    await jsPipeline(`/api/stream/runs/${run}`, (state) => {
      calls++;
      el.textContent = (state.messages.m1?.content || "").slice(-200);
    });
    const secs = (performance.now() - t0) / 1000;
    res.perEvent = { callsPerSec: calls / secs, ...stop() };
    res.perEvent.callsPerFrame = calls / Math.max(1, res.perEvent.frames);
  }
  return res;
}

const pct = (a, p) => {
  const s = a.slice().sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null;
};

export async function reconnect(drops) {
  await ready;
  const every = 20;
  const body = () => ({ tokens: drops * every + every, rate: 400, chaos: { drop_every: every } });
  const out = {};
  for (const transport of ["fetch", "sse", "websocket"]) {
    const run = await createRun(body());
    const lat = [];
    let endedAt = null;
    await new Promise((resolve) => {
      const s = new RunStream({ runId: run, transport, resume: "none", spans: false });
      s.subscribeEvents((e) => {
        if (e.name === "stream.termination.total" && e.attrs?.reason !== "run_completed") endedAt = e.ts;
        if (e.name === "stream.time_to_first_event_ms" && endedAt !== null) {
          lat.push(e.ts - endedAt);
          endedAt = null;
        }
      });
      const off = s.subscribe(() => {
        if (s.getSnapshot().status.connection === "closed") {
          off();
          s.close();
          resolve();
        }
      });
      s.start();
    });
    out[`runstream (${transport})`] = { p50: pct(lat, 0.5), p95: pct(lat, 0.95), n: lat.length };
  }
  {
    const run = await createRun(body());
    const lat = [];
    await new Promise((resolve) => {
      const es = new EventSource(`/api/stream/runs/${run}`);
      let endedAt = null;
      const onEvent = (ev) => {
        if (endedAt !== null) {
          lat.push(performance.now() - endedAt);
          endedAt = null;
        }
        if (JSON.parse(ev.data).type === "run.completed") {
          es.close();
          resolve();
        }
      };
      for (const t of ["message.delta", "message.created", "message.completed", "run.started", "run.completed"]) es.addEventListener(t, onEvent);
      es.onerror = () => {
        if (endedAt === null) endedAt = performance.now();
      };
    });
    out["native EventSource"] = { p50: pct(lat, 0.5), p95: pct(lat, 0.95), n: lat.length };
  }
  {
    const run = await createRun(body());
    const lat = [];
    const ctl = new AbortController();
    let endedAt = null;
    let last = "";
    await new Promise((resolve) => {
      fetchEventSource(`/api/stream/runs/${run}`, {
        signal: ctl.signal,
        openWhenHidden: true,
        onmessage(ev) {
          if (endedAt !== null) {
            lat.push(performance.now() - endedAt);
            endedAt = null;
          }
          last = ev.id;
          if (JSON.parse(ev.data).type === "run.completed") {
            ctl.abort();
            resolve();
          }
        },
        onclose() {
          endedAt = performance.now();
          throw new Error("closed: retry");
        },
        onerror() {
          if (endedAt === null) endedAt = performance.now();
          // undefined = the library's default retry interval
        },
      }).catch(() => resolve());
      void last;
    });
    out["@microsoft/fetch-event-source"] = { p50: pct(lat, 0.5), p95: pct(lat, 0.95), n: lat.length };
  }
  return out;
}

export async function memory(n) {
  await ready;
  const heap = () => (performance.memory ? performance.memory.usedJSHeapSize : null);
  const run = await createRun({ tokens: n, rate: 0, ticks: true });
  const samples = [];
  const s = new RunStream({ runId: run, resume: "none", spans: false });
  let next = n / 10;
  await new Promise((resolve) => {
    const off = s.subscribe(() => {
      const snap = s.getSnapshot();
      if (snap.state.cursor >= next) {
        if (window.gc) window.gc();
        samples.push({ events: snap.state.cursor, wasmBytes: wasm.memory.buffer.byteLength, jsHeapBytes: heap() });
        next += n / 10;
      }
      if (snap.status.connection === "closed") {
        off();
        resolve();
      }
    });
    s.start();
  });
  const snap = s.getSnapshot();
  s.close();
  // The peer: the JS pipeline over the same kind of run (its dedupe Map grows with history).
  const run2 = await createRun({ tokens: n, rate: 0, ticks: true });
  const jsSamples = [];
  let jsNext = n / 10;
  await jsPipeline(`/api/stream/runs/${run2}`, (state) => {
    if (state.cursor >= jsNext) {
      if (window.gc) window.gc();
      jsSamples.push({ events: state.cursor, jsHeapBytes: heap() });
      jsNext += n / 10;
    }
  });
  return { events: snap.metrics.eventsApplied, samples, jsPipeline: jsSamples };
}

/**
 * A long conversation: `history` completed messages of `bytes` characters,
 * then one message streaming at `rate` tokens/s for `seconds`. runstream: a
 * subscriber calls getSnapshot() on each notification (what React does);
 * measured is that call, and how many unchanged rows kept their identity.
 * The peer: the JS pipeline with an immutable update of a messages array per
 * event (what a hand-written React store does), measured per event.
 */
export async function longHistory(history, bytes, rate, seconds) {
  await ready;
  const n = Math.max(1, Math.round(rate * seconds));
  const body = { tokens: n, rate, history, history_bytes: bytes };
  const out = {};
  {
    const run = await createRun(body);
    const costs = [];
    let kept = 0;
    let rows = 0;
    let prev = null;
    let stop = null;
    const s = new RunStream({ runId: run, url: `/api/stream/runs/${run}`, resume: "none", spans: false });
    await new Promise((resolve) => {
      const off = s.subscribe(() => {
        const t0 = performance.now();
        const snap = s.getSnapshot();
        const dt = performance.now() - t0;
        const msgs = snap.state.messages;
        // Measured once the history has been replayed and the tail streams (the
        // first build of the whole history is the replay's cost, not a frame's).
        if (msgs.length > history && msgs[history].content.length > 0) {
          if (!stop) {
            stop = frameWatch();
            prev = msgs;
            return;
          }
          costs.push(dt);
          if (prev) {
            for (let i = 0; i < history; i++) {
              rows++;
              if (prev[i] === msgs[i]) kept++;
            }
          }
          prev = msgs;
        }
        if (snap.status.connection === "closed" || snap.status.connection === "failed") {
          off();
          resolve();
        }
      });
      s.start();
    });
    s.close();
    const w = stop ? stop() : { longTasks: null, worstFrameMs: null };
    out.runstream = { notifications: costs.length, p95Ms: pct(costs, 0.95), worstMs: Math.max(...costs), longTasks: w.longTasks, keptIdentity: rows ? kept / rows : null };
  }
  {
    const run = await createRun(body);
    const costs = [];
    let kept = 0;
    let rows = 0;
    let stop = null;
    let messages = [];
    const index = new Map();
    let state = { cursor: 0, status: "running", messages };
    const seen = new Set();
    const resp = await fetch(`/api/stream/runs/${run}`, { headers: { Accept: "text/event-stream" } });
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let done = false;
    const parser = createParser({
      onEvent(ev) {
        const t0 = performance.now();
        const e = JSON.parse(ev.data);
        const key = `${e.run_id}\u0000${e.event_id}`;
        if (seen.has(key)) return;
        seen.add(key);
        const p = e.payload;
        const prev = state.messages;
        if (e.type === "message.created") {
          index.set(p.message_id, prev.length);
          state = { ...state, cursor: e.event_id, messages: [...prev, Object.freeze({ id: p.message_id, role: p.role, content: p.content || "", status: "streaming" })] };
        } else if (e.type === "message.delta" || e.type === "message.completed") {
          const i = index.get(p.message_id);
          const m = prev[i];
          const next = e.type === "message.delta" ? { ...m, content: m.content + p.delta } : { ...m, status: "completed" };
          const arr = prev.slice();
          arr[i] = Object.freeze(next);
          state = { ...state, cursor: e.event_id, messages: arr };
        } else if (e.type === "run.completed") {
          state = { ...state, cursor: e.event_id, status: p.status };
          done = true;
        } else {
          state = { ...state, cursor: e.event_id };
        }
        const dt = performance.now() - t0;
        if (state.messages.length > history && state.messages[history].content.length > 0) {
          if (!stop) {
            stop = frameWatch();
            return;
          }
          costs.push(dt);
          for (let i = 0; i < history; i++) {
            rows++;
            if (prev[i] === state.messages[i]) kept++;
          }
        }
      },
    });
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      parser.feed(value);
    }
    reader.cancel().catch(() => {});
    const w = stop ? stop() : { longTasks: null };
    out.jsPipeline = { notifications: costs.length, p95Ms: pct(costs, 0.95), worstMs: Math.max(...costs), longTasks: w.longTasks, keptIdentity: rows ? kept / rows : null };
  }
  return out;
}

// ---- section 8: many concurrent streams over HTTP/1.1 ----------------------------
// Times are epoch milliseconds (performance.timeOrigin + performance.now()), so
// that several tabs (each with its own time origin) share one clock with Node.
const epoch = (t = performance.now()) => performance.timeOrigin + t;
const SSE_TYPES = ["message", "run.started", "run.completed", "message.created", "message.delta", "message.completed"];

/** Twelve (or `runs.length`) native EventSources, one per run, in this tab. */
function nativeEventSources(runs, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = epoch();
    const first = runs.map(() => null);
    const sources = runs.map((run, i) => {
      const es = new EventSource(`/api/stream/runs/${run}`);
      const onEvent = (ev) => {
        if (first[i] === null) first[i] = epoch();
        if (JSON.parse(ev.data).type === "run.completed") es.close();
        if (first.every((x) => x !== null)) done();
      };
      for (const t of SSE_TYPES) es.addEventListener(t, onEvent);
      return es;
    });
    const timer = setTimeout(() => done(), timeoutMs);
    function done() {
      clearTimeout(timer);
      sources.forEach((es) => es.close());
      resolve({ t0, first, sharing: ["n/a"] });
    }
  });
}

/**
 * One RunStream per options object in this tab; resolves when each has
 * applied its first event (or at `timeoutMs`), then closes them, unless
 * `keep`: then they stay open until `release()` (several tabs measured
 * together must hold their connections until the slowest one is in). `first` is
 * when the engine applied the stream's first valid event (the
 * `stream.time_to_first_event_ms` event's `ts`; else the first notification
 * or 50 ms poll showing an applied event or a cursor). `sharing`: every `status.sharing` seen.
 */
let held = [];

/** Closes the streams `follow(…, keep)` left open. */
export function release() {
  held.forEach((s) => s.close());
  held = [];
}

export function follow(optsList, timeoutMs, keep = false) {
  return ready.then(() => new Promise((resolve) => {
    const t0 = epoch();
    const first = optsList.map(() => null);
    const sharing = new Set();
    const offs = [];
    const streams = optsList.map((opts, i) => {
      const s = new RunStream({ resume: "none", spans: false, ...opts });
      s.subscribeEvents((e) => {
        if (first[i] === null && e.name === "stream.time_to_first_event_ms") {
          first[i] = epoch(e.ts);
          check();
        }
      });
      offs.push(s.subscribe(() => seen(i, s)));
      return s;
    });
    // A tab caught up from a snapshot has a cursor without an applied event.
    function seen(i, s) {
      const snap = s.getSnapshot();
      sharing.add(snap.status.sharing);
      if (first[i] === null && (snap.metrics.eventsApplied > 0 || snap.state.cursor > 0)) {
        first[i] = epoch();
        check();
      }
    }
    // Notifications come at most once per animation frame: a background tab
    // may get few, so the snapshot is also read every 50 ms.
    const poll = setInterval(() => streams.forEach((s, i) => seen(i, s)), 50);
    const timer = setTimeout(() => done(), timeoutMs);
    let finished = false;
    function check() {
      if (first.every((x) => x !== null)) done();
    }
    function done() {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearInterval(poll);
      for (const s of streams) sharing.add(s.getSnapshot().status.sharing);
      offs.forEach((off) => off());
      if (keep) held.push(...streams);
      else streams.forEach((s) => s.close());
      resolve({ t0, first, sharing: [...sharing] });
    }
    streams.forEach((s) => s.start());
  }));
}

/** Section 8 in one tab: `kind` is "eventsource", "websocket" or "fetch". */
export function concurrent(kind, runs, timeoutMs) {
  if (kind === "eventsource") return nativeEventSources(runs, timeoutMs);
  return follow(runs.map((run) => ({ runId: run, transport: kind, url: `/api/stream/runs/${run}`, wsUrl: "/api/ws" })), timeoutMs);
}

window.bench = { throughput, frameBudget, reconnect, memory, longHistory, concurrent, follow, release, ready };
