// PROTOCOL §2b on rs.attachWebSocket (the `ws` package), over real loopback
// sockets: subscribe/replay/live, snapshot op for a pruned window, ping/pong,
// send/ack, cancel/ack, per-run errors with §2b codes, protocol errors that
// never crash the socket.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startKit, wsClient, ev, sleep } from "./helpers.mjs";

let kit;
before(async () => {
  kit = await startKit({ memory: { window: 10 } });
});
after(async () => kit?.close());

async function run(evs = []) {
  const { runId } = await kit.rs.createRun({});
  if (evs.length) await kit.rs.append(runId, evs);
  return runId;
}

test("§2b subscribe: subscribed {replay_from}, replay after last_event_id, then live events; two runs on one socket", async () => {
  const a = await run([ev("run.started"), ev("worker.started", { worker_id: "w1" })]);
  const b = await run([ev("run.started")]);
  const c = await wsClient(kit.base);
  try {
    c.send({ op: "subscribe", run_id: a, last_event_id: 1 });
    c.send({ op: "subscribe", run_id: b });
    assert.deepEqual(await c.next((f) => f.op === "subscribed" && f.run_id === a), { op: "subscribed", run_id: a, replay_from: 2 });
    assert.deepEqual(await c.next((f) => f.op === "subscribed" && f.run_id === b), { op: "subscribed", run_id: b, replay_from: 1 });
    const e2 = await c.next((f) => f.op === "event" && f.event.run_id === a);
    assert.equal(e2.event.event_id, 2);
    assert.equal((await c.next((f) => f.op === "event" && f.event.run_id === b)).event.event_id, 1);
    await kit.rs.append(a, [ev("run.completed", { status: "succeeded" })]);
    const e3 = await c.next((f) => f.op === "event" && f.event.run_id === a);
    assert.deepEqual([e3.event.event_id, e3.event.type], [3, "run.completed"]);
    await sleep(50);
    assert.equal(c.frames.filter((f) => f.op === "event").length, 0, "no duplicate or extra event");
  } finally {
    c.close();
  }
});

test("§2b unsubscribe stops a run's events", async () => {
  const a = await run([ev("run.started")]);
  const c = await wsClient(kit.base);
  try {
    c.send({ op: "subscribe", run_id: a, last_event_id: 1 });
    await c.next((f) => f.op === "subscribed");
    c.send({ op: "unsubscribe", run_id: a });
    c.send({ op: "ping", t: 1 });
    await c.next((f) => f.op === "pong");
    await kit.rs.append(a, [ev("worker.started", { worker_id: "w" })]);
    await sleep(100);
    assert.equal(c.frames.filter((f) => f.op === "event").length, 0);
  } finally {
    c.close();
  }
});

test("§2b + §3: a resume older than the window gets {op:snapshot,run_id,event_id,state}, then the window", async () => {
  const a = await run([ev("run.started")]);
  for (let i = 0; i < 20; i++) await kit.rs.append(a, [ev("worker.started", { worker_id: `w${i}` })]);
  const meta = await kit.store.meta(a);
  const c = await wsClient(kit.base);
  try {
    c.send({ op: "subscribe", run_id: a, last_event_id: 0 });
    const snap = await c.next((f) => f.op === "snapshot");
    assert.equal(snap.run_id, a);
    assert.equal(snap.event_id, meta.firstId - 1);
    assert.equal(snap.state.cursor, meta.firstId - 1);
    const ids = [];
    while (ids.length < meta.lastId - meta.firstId + 1) ids.push((await c.next((f) => f.op === "event")).event.event_id);
    assert.deepEqual(ids, Array.from({ length: ids.length }, (_, i) => meta.firstId + i));
  } finally {
    c.close();
  }
});

test("§2b ping/pong echoes t; send → ack (idempotent); cancel → ack with event_id; finished cancel → error finished", async () => {
  const c = await wsClient(kit.base);
  try {
    c.send({ op: "ping", t: 1234.5 });
    assert.deepEqual(await c.next((f) => f.op === "pong"), { op: "pong", t: 1234.5 });
    const session = `ws_s_${Date.now()}`;
    c.send({ op: "send", session_id: session, client_request_id: "c1", content: "hi" });
    const ack = await c.next((f) => f.op === "ack" && f.client_request_id === "c1");
    assert.equal(ack.run_id, session);
    assert.match(ack.message_id, /^msg_/);
    c.send({ op: "send", session_id: session, client_request_id: "c1", content: "hi" });
    assert.deepEqual(await c.next((f) => f.op === "ack" && f.client_request_id === "c1"), ack);
    assert.equal((await kit.store.meta(session)).lastId, 1, "one message for two sends of one client_request_id");
    const r = await run([ev("run.started")]);
    c.send({ op: "cancel", run_id: r, client_request_id: "k1" });
    assert.deepEqual(await c.next((f) => f.client_request_id === "k1"), { op: "ack", client_request_id: "k1", run_id: r, event_id: 2 });
    const done = await run([ev("run.started"), ev("run.completed", { status: "failed" })]);
    c.send({ op: "cancel", run_id: done, client_request_id: "k2" });
    const e = await c.next((f) => f.client_request_id === "k2");
    assert.deepEqual([e.op, e.code, e.run_id, e.message], ["error", "finished", done, "failed"]);
  } finally {
    c.close();
  }
});

test("§2b errors: unknown run → not_found for that run; binary, non-JSON and unknown ops → bad_request; the socket stays open", async () => {
  const c = await wsClient(kit.base);
  try {
    c.send({ op: "subscribe", run_id: "nope" });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: "nope", code: "not_found", message: "unknown run" });
    c.ws.send(Buffer.from([0, 1, 2]), { binary: true });
    assert.equal((await c.next((f) => f.op === "error")).code, "bad_request");
    c.send("not json");
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", code: "bad_request", message: "not JSON" });
    c.send({ op: "fly" });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", code: "bad_request", message: "unknown op" });
    c.send({ op: "subscribe", run_id: 5 });
    assert.equal((await c.next((f) => f.op === "error")).code, "bad_request");
    c.send({ op: "cancel", run_id: "nope", client_request_id: "k" });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: "nope", client_request_id: "k", code: "not_found", message: "unknown run" });
    c.send({ op: "ping", t: 1 });
    assert.equal((await c.next((f) => f.op === "pong")).t, 1);
  } finally {
    c.close();
  }
});

test("§2b: the WebSocket path only; another path is refused (404) when no other upgrade listener takes it", async () => {
  const { WebSocket } = await import("ws");
  const other = new WebSocket(kit.base.replace("http", "ws") + "/elsewhere");
  const outcome = await new Promise((resolve) => {
    other.once("open", () => resolve("open"));
    other.once("error", () => resolve("error"));
    setTimeout(() => resolve("pending"), 300);
  });
  other.terminate();
  assert.equal(outcome, "error");
});

test("SERVER.md §1 bounded: runs per socket (maxRunsPerSocket) → `unavailable` for the one past the bound; resubscribing a followed run is no new run", async () => {
  const k = await startKit({ maxRunsPerSocket: 2 });
  const c = await wsClient(k.base);
  try {
    for (const id of ["a", "b", "c"]) {
      await k.rs.createRun({ runId: id });
      await k.rs.append(id, [ev("run.started")]);
    }
    c.send({ op: "subscribe", run_id: "a" });
    c.send({ op: "subscribe", run_id: "b" });
    c.send({ op: "subscribe", run_id: "a", last_event_id: 1 });
    c.send({ op: "subscribe", run_id: "c" });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: "c", code: "unavailable", message: "too many runs on this socket" });
    assert.equal(c.frames.filter((f) => f.op === "subscribed").length, 3);
    c.send({ op: "unsubscribe", run_id: "b" });
    c.send({ op: "subscribe", run_id: "c" });
    assert.equal((await c.next((f) => f.op === "subscribed" && f.run_id === "c")).replay_from, 1);
  } finally {
    c.close();
    await k.close();
  }
});
