// The kit's live fan-out (kit/src/feed.ts, docs/KIT.md "Serving many streams"):
// N streams of one run in one process cost one store subscription and one
// store read per append, not N; every stream still gets every event, dense and
// in order, on both adapters (rs.node writes SSE itself, rs.fetch through a
// web stream), and a resume from further back than the feed's window
// (FEED_EVENTS) reads the store and joins the live tail without a gap.
import { test } from "node:test";
import assert from "node:assert/strict";
import { memoryStore } from "../dist/index.js";
import { startKit, sse, events, until, ev } from "./helpers.mjs";

/** memoryStore with its `read` and `subscribe` calls counted. */
function counted() {
  const inner = memoryStore();
  const calls = { read: 0, subscribe: 0 };
  const store = new Proxy(inner, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target);
      if (typeof v !== "function") return v;
      if (prop === "read" || prop === "subscribe") {
        return (...args) => {
          calls[prop]++;
          return v.apply(target, args);
        };
      }
      return v.bind(target);
    },
  });
  return { store, calls };
}

const STREAMS = 30;
const APPENDS = 20;

test("fan-out: 30 SSE streams of one run cost one store subscription and about one read per append; each gets every event once, in order", async () => {
  const { store, calls } = counted();
  const kit = await startKit({ store, heartbeatMs: 60000 });
  try {
    const { runId } = await kit.rs.createRun({});
    await kit.rs.append(runId, [ev("run.started")]);
    const opened = [];
    const streams = [];
    for (let i = 0; i < STREAMS; i++) {
      const url = `${kit.base}/api/stream/runs/${runId}`;
      if (i % 2 === 0) {
        streams.push(sse(url, { stop: (f) => (f.some((x) => x.id === 1) && opened.push(i), false), timeoutMs: 20000 }));
      } else {
        // The fetch adapter (a web ReadableStream body) beside rs.node's direct writes.
        streams.push(
          (async () => {
            const r = await kit.rs.fetch(new Request(url));
            const text = await new Response(r.body).text();
            return { status: r.status, text };
          })(),
        );
        opened.push(i);
      }
    }
    assert.ok(await until(() => opened.length === STREAMS, 10000), `${opened.length}/${STREAMS} streams open`);
    const readsBefore = calls.read;
    for (let i = 0; i < APPENDS; i++) {
      await kit.rs.append(runId, [ev("worker.started", { worker_id: `w${i}` })]);
      await new Promise((r) => setTimeout(r, 5));
    }
    await kit.rs.append(runId, [ev("run.completed", { status: "succeeded" })]);
    const done = await Promise.all(streams);
    const want = Array.from({ length: APPENDS + 2 }, (_, i) => i + 1);
    for (const [i, s] of done.entries()) {
      if (i % 2 === 0) {
        assert.deepEqual(events(s.frames).map((e) => e.event_id), want, `stream ${i} (rs.node)`);
        assert.equal(s.ended, true, `stream ${i} ended after run.completed`);
      } else {
        assert.equal(s.status, 200);
        const ids = [...s.text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
        assert.deepEqual(ids, want, `stream ${i} (rs.fetch)`);
      }
    }
    assert.equal(calls.subscribe, 1, "one store subscription for the run");
    const reads = calls.read - readsBefore;
    // Per stream and append it would be STREAMS × (APPENDS + 1) = 630.
    assert.ok(reads <= 2 * (APPENDS + 1) + STREAMS, `${reads} store reads for ${APPENDS + 1} appends to ${STREAMS} streams`);
  } finally {
    await kit.close();
  }
});

test("fan-out: a resume from further back than the feed's window reads the store and joins the live tail without a gap or a repeat", async () => {
  const { store } = counted();
  const kit = await startKit({ store, heartbeatMs: 60000 });
  try {
    const { runId } = await kit.rs.createRun({});
    await kit.rs.append(runId, [ev("run.started")]);
    const live = sse(`${kit.base}/api/stream/runs/${runId}`, { stop: (f) => f.some((x) => x.id === 402), timeoutMs: 20000 });
    // 400 appends: more than the feed keeps (FEED_EVENTS = 256).
    for (let i = 0; i < 400; i++) await kit.rs.append(runId, [ev("worker.started", { worker_id: `w${i}` })]);
    const resumed = sse(`${kit.base}/api/stream/runs/${runId}`, { headers: { "last-event-id": "10" }, stop: (f) => f.some((x) => x.id === 402), timeoutMs: 20000 });
    await new Promise((r) => setTimeout(r, 50));
    await kit.rs.append(runId, [ev("run.completed", { status: "succeeded" })]);
    const [a, b] = await Promise.all([live, resumed]);
    assert.deepEqual(events(a.frames).map((e) => e.event_id), Array.from({ length: 402 }, (_, i) => i + 1));
    assert.deepEqual(events(b.frames).map((e) => e.event_id), Array.from({ length: 392 }, (_, i) => i + 11));
  } finally {
    await kit.close();
  }
});
