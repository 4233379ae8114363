// Every HTTP route and status of PROTOCOL.md §2a/§2c/§5/§8 and SERVER.md
// §1/§2 on memoryStore, over real HTTP on loopback (rs.node). Each test
// names the spec sentence it checks.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startKit, call, sse, events, sleep, until, ev } from "./helpers.mjs";

const KEY = "publish-key-for-tests";
let kit;
const pub = { authorization: `Bearer ${KEY}` };

before(async () => {
  kit = await startKit({ publishKey: KEY, heartbeatMs: 300, cancelGraceMs: 400, memory: { window: 20 } });
});
after(async () => kit?.close());

async function run(evs = [], sessionId) {
  const { runId } = await kit.rs.createRun(sessionId ? { sessionId } : {});
  if (evs.length) await kit.rs.append(runId, evs);
  return runId;
}

test("§2a headers: event-stream, no-store no-transform, X-Accel-Buffering no, no Content-Encoding; a first byte at once", async () => {
  const id = await run([ev("run.started")]);
  const s = await sse(`${kit.base}/api/stream/runs/${id}`, { stop: (f) => f.some((x) => x.id === 1) });
  assert.equal(s.status, 200);
  assert.equal(s.headers.get("content-type"), "text/event-stream");
  assert.equal(s.headers.get("cache-control"), "no-store, no-transform");
  assert.equal(s.headers.get("x-accel-buffering"), "no");
  assert.equal(s.headers.get("content-encoding"), null);
  assert.equal(s.frames[0].comment, "open");
  assert.deepEqual(s.frames[1], { at: s.frames[1].at, id: 1, event: "run.started", data: s.frames[1].data });
  assert.equal(s.frames[1].data.run_id, id);
  assert.equal(s.frames[1].data.event_id, 1);
});

test("§2a: headers of a resume with nothing to replay arrive at once, long before the first heartbeat (rs.node flushes them)", async () => {
  const slow = await startKit({ heartbeatMs: 10000 });
  try {
    const { runId } = await slow.rs.createRun({});
    await slow.rs.append(runId, [ev("run.started")]);
    const t0 = Date.now();
    const ac = new AbortController();
    const r = await fetch(`${slow.base}/api/stream/runs/${runId}`, { headers: { "last-event-id": "1" }, signal: ac.signal });
    const dt = Date.now() - t0;
    assert.equal(r.status, 200);
    assert.ok(dt < 5000, `headers after ${dt} ms (heartbeat is 10 s)`);
    ac.abort();
  } finally {
    await slow.close();
  }
});

test("§2a resume: Last-Event-ID and ?last_event_id replay exactly the events after it, then live; the stream ends after run.completed", async () => {
  const id = await run([ev("run.started"), ev("worker.started", { worker_id: "w1" }), ev("worker.started", { worker_id: "w2" })]);
  const byHeader = await sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "1" }, stop: (f) => f.some((x) => x.id === 3) });
  assert.deepEqual(events(byHeader.frames).map((e) => e.event_id), [2, 3]);
  const byQuery = await sse(`${kit.base}/api/stream/runs/${id}?last_event_id=2`, { stop: (f) => f.some((x) => x.id === 3) });
  assert.deepEqual(events(byQuery.frames).map((e) => e.event_id), [3]);
  const live = sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "3" } });
  await sleep(100);
  await kit.rs.append(id, [ev("worker.completed", { worker_id: "w1", status: "succeeded" }), ev("run.completed", { status: "succeeded" })]);
  const l = await live;
  assert.ok(l.ended, "the server ends the response after the last event of a finished run");
  assert.deepEqual(events(l.frames).map((e) => [e.event_id, e.type]), [[4, "worker.completed"], [5, "run.completed"]]);
});

test("§2a statuses: 204 finished with nothing to replay, 404 unknown run, 400 for a non-integer Last-Event-ID", async () => {
  const id = await run([ev("run.started"), ev("run.completed", { status: "succeeded" })]);
  assert.equal((await call(kit.base, "GET", `/api/stream/runs/${id}`, { headers: { "last-event-id": "2" } })).status, 204);
  const replay = await sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "1" } });
  assert.equal(replay.status, 200);
  assert.deepEqual(events(replay.frames).map((e) => e.event_id), [2]);
  assert.equal((await call(kit.base, "GET", "/api/stream/runs/nope")).status, 404);
  assert.equal((await call(kit.base, "GET", `/api/stream/runs/${id}`, { headers: { "last-event-id": "x" } })).status, 400);
});

test("§2a heartbeats: comment lines on an idle stream, without ids", async () => {
  const id = await run([ev("run.started")]);
  const s = await sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "1" }, stop: (f) => f.filter((x) => x.comment === "hb").length >= 2 });
  const hbs = s.frames.filter((f) => f.comment === "hb");
  assert.equal(hbs.length, 2);
  assert.ok(hbs.every((f) => f.id === undefined));
  assert.ok(hbs[0].at >= 250 && hbs[0].at < 1500, `first heartbeat at ${hbs[0].at} ms (heartbeatMs 300)`);
});

test("§2a replay window + §3: a resume older than the pruned window gets a snapshot event, then the window", async () => {
  const id = await run([ev("run.started")]);
  for (let i = 0; i < 30; i++) await kit.rs.append(id, [ev("worker.started", { worker_id: `w${i}` })]);
  // window 20 (+10 %): ids 1..31, pruned to keep the newest 20
  const meta = await kit.store.meta(id);
  assert.ok(meta.firstId > 1, `pruned: firstId ${meta.firstId}`);
  const s = await sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "2" }, stop: (f) => f.some((x) => x.id === 31) });
  const snap = s.frames.find((f) => f.event === "snapshot");
  assert.ok(snap, "a snapshot event first");
  assert.equal(snap.id, meta.firstId - 1);
  assert.equal(snap.data.type, "snapshot");
  assert.equal(snap.data.payload.state.cursor, meta.firstId - 1);
  assert.equal(snap.data.payload.state.workers.length, meta.firstId - 2);
  const ids = events(s.frames).map((e) => e.event_id);
  assert.deepEqual(ids, Array.from({ length: 31 - meta.firstId + 1 }, (_, i) => meta.firstId + i));
  // The snapshot + window equal the full state.
  const full = await call(kit.base, "GET", `/api/runs/${id}/snapshot`);
  assert.equal(full.json.state.workers.length, 30);
});

test("§2c snapshot: {run_id, event_id, state} of the one reducer; no-store; 404 unknown", async () => {
  const id = await run([
    ev("run.started"),
    ev("tool.started", { job_id: "j1", tool_call_id: "t1", name: "search" }),
    ev("worker.job_assigned", { worker_id: "w1", job_id: "j1" }),
  ]);
  const r = await call(kit.base, "GET", `/api/runs/${id}/snapshot`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("cache-control"), "no-store");
  assert.equal(r.json.run_id, id);
  assert.equal(r.json.event_id, 3);
  assert.equal(r.json.state.status, "running");
  // the parked job-only tool event was applied when its job was mapped (PROTOCOL §4 reconciliation)
  assert.deepEqual(r.json.state.workers.map((w) => [w.worker_id, w.job_id, w.tools.map((t) => t.tool_call_id)]), [["w1", "j1", ["t1"]]]);
  assert.equal((await call(kit.base, "GET", "/api/runs/none/snapshot")).status, 404);
});

test("§5 send: 202 {message_id, run_id}; a repeat of the client_request_id is the same send; onSend once", async () => {
  const seen = [];
  const off = kit.rs.onSend((s) => void seen.push(s));
  const session = `s_${Date.now()}`;
  const a = await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c1", content: "hi" } });
  const b = await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c1", content: "hi" } });
  assert.equal(a.status, 202);
  assert.deepEqual(a.json, b.json);
  assert.equal(a.json.run_id, session);
  await sleep(20);
  assert.equal(seen.length, 1);
  assert.deepEqual(seen[0], { sessionId: session, runId: session, clientRequestId: "c1", content: "hi", messageId: a.json.message_id });
  const snap = await call(kit.base, "GET", `/api/runs/${session}/snapshot`);
  assert.deepEqual(snap.json.state.messages.map((m) => [m.role, m.client_request_id, m.content]), [["user", "c1", "hi"]]);
  assert.equal((await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "", content: "x" } })).status, 400);
  // a body of another shape is 422, as the gateway's JSON extractor answers
  assert.equal((await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { content: "x" } })).status, 422);
  assert.equal((await call(kit.base, "POST", `/api/chat/${session}/messages`, { raw: "{", headers: { "content-type": "application/json" } })).status, 400);
  off();
});

test("§5: a send into a finished session is 409; a repeat of an earlier send still gets its answer", async () => {
  const session = `s_fin_${Date.now()}`;
  const a = await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c1", content: "hi" } });
  await kit.rs.append(session, [ev("run.completed", { status: "succeeded" })]);
  const again = await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c1", content: "hi" } });
  assert.deepEqual([again.status, again.json], [202, a.json]);
  const late = await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c2", content: "more" } });
  assert.deepEqual([late.status, late.json], [409, { run_id: session, status: "finished" }]);
});

test("§8 cancel: 202 with the event id; repeats and other presses are one request; 409 once finished; 400 bad body; 404 unknown", async () => {
  const id = await run([ev("run.started")]);
  const a = await call(kit.base, "POST", `/api/runs/${id}/cancel`, { body: { client_request_id: "k1", reason: "stop" } });
  assert.deepEqual([a.status, a.json], [202, { run_id: id, event_id: 2 }]);
  const b = await call(kit.base, "POST", `/api/runs/${id}/cancel`, { body: { client_request_id: "k2" } });
  assert.deepEqual([b.status, b.json], [202, { run_id: id, event_id: 2 }]);
  const snap = await call(kit.base, "GET", `/api/runs/${id}/snapshot`);
  assert.equal(snap.json.event_id, 2);
  assert.equal(snap.json.state.cancel_requested, true);
  const done = await run([ev("run.started"), ev("run.completed", { status: "succeeded" })]);
  const c = await call(kit.base, "POST", `/api/runs/${done}/cancel`, { body: { client_request_id: "k3" } });
  assert.deepEqual([c.status, c.json], [409, { run_id: done, status: "succeeded" }]);
  assert.equal((await call(kit.base, "POST", `/api/runs/${id}/cancel`, { body: { nope: 1 } })).status, 400);
  assert.equal((await call(kit.base, "POST", "/api/runs/nope/cancel", { body: { client_request_id: "k" } })).status, 404);
});

test("§8 grace: when no producer ends a cancelled run, the kit appends the endings (streaming message first, then run.completed cancelled)", async () => {
  const id = await run([ev("run.started"), ev("message.created", { message_id: "m1", role: "assistant" }), ev("message.delta", { message_id: "m1", delta: "he" })]);
  const signal = kit.rs.cancelSignal(id);
  const a = await call(kit.base, "POST", `/api/runs/${id}/cancel`, { body: { client_request_id: "k1" } });
  assert.equal(a.status, 202);
  assert.ok(await until(() => signal.aborted), "cancelSignal fired on run.cancel_requested");
  const s = await sse(`${kit.base}/api/stream/runs/${id}`, { headers: { "last-event-id": "4" }, timeoutMs: 5000 });
  assert.ok(s.ended);
  assert.deepEqual(events(s.frames).map((e) => [e.type, e.payload]), [
    ["message.completed", { message_id: "m1", finish_reason: "cancelled" }],
    ["run.completed", { status: "cancelled" }],
  ]);
});

test("§8 reply cancel: 425 before the send exists; 202 stops that reply only (grace ends it); the chat run stays open; 409 once the reply ended", async () => {
  const session = `s_rc_${Date.now()}`;
  const early = await call(kit.base, "POST", `/api/runs/${session}/cancel`, { body: { client_request_id: "k0", reply_to: "c1" } });
  assert.equal(early.status, 404); // the session's run does not exist yet
  await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c0", content: "first" } });
  const tooEarly = await call(kit.base, "POST", `/api/runs/${session}/cancel`, { body: { client_request_id: "k0", reply_to: "c1" } });
  assert.deepEqual([tooEarly.status, tooEarly.headers.get("retry-after")], [425, "1"]);
  await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c1", content: "hi" } });
  const signal = kit.rs.cancelSignal(session, { replyTo: "c1" });
  await kit.rs.append(session, [ev("message.created", { message_id: "a1", role: "assistant", reply_to: "c1" }), ev("message.delta", { message_id: "a1", delta: "x" })]);
  const a = await call(kit.base, "POST", `/api/runs/${session}/cancel`, { body: { client_request_id: "k1", reply_to: "c1" } });
  assert.equal(a.status, 202);
  assert.ok(await until(() => signal.aborted), "cancelSignal({ replyTo }) fired");
  const ended = async () => (await call(kit.base, "GET", `/api/runs/${session}/snapshot`)).json;
  assert.ok(await until(async () => (await ended()).state.messages.find((m) => m.message_id === "a1").status === "completed", 10000), "the grace ended the reply");
  const snap = await call(kit.base, "GET", `/api/runs/${session}/snapshot`);
  const reply = snap.json.state.messages.find((m) => m.message_id === "a1");
  assert.equal(reply.status, "completed");
  assert.equal(snap.json.state.messages.filter((m) => m.reply_to === "c1").length, 1, "no second reply message");
  assert.ok(!["succeeded", "failed", "cancelled"].includes(snap.json.state.status), "the chat run stays open");
  assert.equal(snap.json.state.cancel_requested, false, "a reply cancel is not a run-wide one");
  const after = await call(kit.base, "POST", `/api/runs/${session}/cancel`, { body: { client_request_id: "k1", reply_to: "c1" } });
  assert.deepEqual([after.status, after.json.event_id], [202, a.json.event_id], "a target already asked answers the first request's id");
  // another reply that already completed: 409 with its status
  await call(kit.base, "POST", `/api/chat/${session}/messages`, { body: { client_request_id: "c2", content: "again" } });
  await kit.rs.append(session, [ev("message.created", { message_id: "a2", role: "assistant", reply_to: "c2" }), ev("message.completed", { message_id: "a2", finish_reason: "stop" })]);
  const fin = await call(kit.base, "POST", `/api/runs/${session}/cancel`, { body: { client_request_id: "k2", reply_to: "c2" } });
  assert.deepEqual([fin.status, fin.json], [409, { run_id: session, status: "completed" }]);
});

test("SERVER.md §1 publish: create 201/200, events 200 with dense ids, repeat key same ids, other body 422, invalid 400 naming events[i] (nothing appended), finished 409, key required", async () => {
  const c = await call(kit.base, "POST", "/api/publish/runs", { body: { run_id: "pub_1", session_id: "sess_p" }, headers: pub });
  assert.deepEqual([c.status, c.json], [201, { run_id: "pub_1" }]);
  const again = await call(kit.base, "POST", "/api/publish/runs", { body: { run_id: "pub_1" }, headers: pub });
  assert.deepEqual([again.status, again.json], [200, { run_id: "pub_1" }]);
  const fresh = await call(kit.base, "POST", "/api/publish/runs", { headers: pub });
  assert.equal(fresh.status, 201);
  assert.match(fresh.json.run_id, /^run_/);
  assert.equal((await kit.store.meta("pub_1")).sessionId, "sess_p");
  const body = { events: [ev("run.started", { title: "t" }), ev("worker.started", { worker_id: "w" })] };
  const post = (b, key = "k1") => call(kit.base, "POST", "/api/publish/runs/pub_1/events", { body: b, headers: { ...pub, "idempotency-key": key } });
  const a = await post(body);
  assert.deepEqual([a.status, a.json], [200, { first_event_id: 1, last_event_id: 2 }]);
  // the same body with keys in another order is the same body
  const reordered = { events: [{ payload: { title: "t" }, type: "run.started" }, { payload: { worker_id: "w" }, type: "worker.started" }] };
  assert.deepEqual((await post(reordered)).json, { first_event_id: 1, last_event_id: 2 });
  assert.equal((await post({ events: [ev("run.started")] })).status, 422);
  const bad = await post({ events: [ev("worker.started", { worker_id: "w2" }), ev("tool.started", { tool_call_id: "t" })] }, "k2");
  assert.equal(bad.status, 400);
  assert.match(bad.json.error, /^events\[1\] \(tool\.started\)/);
  assert.match((await post({ events: [ev("snapshot", { state: {} })] }, "k3")).json.error, /^events\[0\]: type "snapshot"/);
  assert.match((await post({ events: [ev("run.cancel_requested", {})] }, "k3")).json.error, /^events\[0\]: run\.cancel_requested/);
  assert.match((await post({ events: [] }, "k3")).json.error, /must not be empty/);
  assert.match((await post({ events: [ev("run.completed", { status: "succeeded" }), ev("run.started")] }, "k3")).json.error, /^events\[1\]: comes after run\.completed/);
  assert.equal((await kit.store.meta("pub_1")).lastId, 2, "nothing of an invalid batch was appended");
  const noKey = await call(kit.base, "POST", "/api/publish/runs/pub_1/events", { body, headers: pub });
  assert.deepEqual([noKey.status, noKey.json], [400, { error: "Idempotency-Key is required" }]);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs/pub_1/events", { body, headers: { ...pub, "idempotency-key": "a b" } })).status, 400);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs/nope/events", { body, headers: { ...pub, "idempotency-key": "z" } })).status, 404);
  assert.equal((await post({ events: [ev("run.completed", { status: "succeeded" })] }, "k4")).status, 200);
  const fin = await post({ events: [ev("run.started")] }, "k5");
  assert.deepEqual([fin.status, fin.json], [409, { run_id: "pub_1", status: "finished" }]);
  assert.deepEqual((await post(body)).json, { first_event_id: 1, last_event_id: 2 }, "a repeat of a key still answers after the run finished");
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { body: { run_id: "a{b}" }, headers: pub })).status, 400);
});

test("SERVER.md §1: dense ids under concurrent appends (40 batches at once, through HTTP and in-process)", async () => {
  const id = await run();
  const jobs = [];
  for (let i = 0; i < 20; i++) {
    const evs = Array.from({ length: (i % 3) + 1 }, (_, j) => ev("worker.started", { worker_id: `h${i}_${j}` }));
    jobs.push(call(kit.base, "POST", `/api/publish/runs/${id}/events`, { body: { events: evs }, headers: { ...pub, "idempotency-key": `c${i}` } }).then((r) => [r.json.first_event_id, r.json.last_event_id, evs.length]));
    jobs.push(kit.rs.append(id, [ev("worker.started", { worker_id: `p${i}` })]).then((r) => [r.firstEventId, r.lastEventId, 1]));
  }
  const ranges = (await Promise.all(jobs)).sort((a, b) => a[0] - b[0]);
  let next = 1;
  for (const [first, last, n] of ranges) {
    assert.equal(first, next, "no gap, no overlap");
    assert.equal(last - first + 1, n, "a batch's ids are contiguous");
    next = last + 1;
  }
  // A client from the start gets a snapshot of the pruned part (window 20 here), then every later id once, in order.
  const s = await sse(`${kit.base}/api/stream/runs/${id}`, { stop: (f) => f.some((x) => x.id === next - 1) });
  const snap = s.frames.find((f) => f.event === "snapshot");
  const from = snap ? snap.id + 1 : 1;
  assert.deepEqual(events(s.frames).map((e) => e.event_id), Array.from({ length: next - from }, (_, i) => from + i));
  assert.equal((await call(kit.base, "GET", `/api/runs/${id}/snapshot`)).json.state.workers.length, next - 1);
});

test("SERVER.md §1 sends long poll: waits for a send, lists it with a cursor, `next` resumes after it; bad cursor 400", async () => {
  const first = await call(kit.base, "GET", "/api/publish/sends?wait_ms=0", { headers: pub });
  assert.equal(first.status, 200);
  const t0 = Date.now();
  const poll = call(kit.base, "GET", `/api/publish/sends?after=${first.json.next}&wait_ms=5000`, { headers: pub });
  await sleep(150);
  await call(kit.base, "POST", "/api/chat/s_poll/messages", { body: { client_request_id: "cp", content: "ping" } });
  const got = await poll;
  assert.ok(Date.now() - t0 < 3000);
  assert.deepEqual(got.json.sends.map((s) => [s.session_id, s.run_id, s.client_request_id, s.content]), [["s_poll", "s_poll", "cp", "ping"]]);
  assert.equal(got.json.next, got.json.sends[0].cursor);
  const empty = await call(kit.base, "GET", `/api/publish/sends?after=${got.json.next}&wait_ms=100`, { headers: pub });
  assert.deepEqual(empty.json, { sends: [], next: got.json.next });
  assert.equal((await call(kit.base, "GET", "/api/publish/sends?after=x", { headers: pub })).status, 400);
});

test("SERVER.md §1: publish routes need the key (401 without, 403 for a user where auth is on) and answer 404 without a configured key", async () => {
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { body: {} })).status, 401);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { body: {}, headers: { authorization: "Bearer wrong" } })).status, 401);
  assert.equal((await call(kit.base, "GET", "/api/publish/sends", {})).status, 401);
  const plain = await startKit({});
  try {
    assert.equal((await call(plain.base, "POST", "/api/publish/runs", { body: {}, headers: pub })).status, 404);
    assert.equal((await call(plain.base, "GET", "/api/publish/sends", { headers: pub })).status, 404);
  } finally {
    await plain.close();
  }
});

test("SERVER.md §2: 404 outside the kit's routes, 405 for a wrong method; rs.fetch is the same router; basePath moves the routes", async () => {
  assert.equal((await call(kit.base, "GET", "/api/nothing")).status, 404);
  assert.equal((await call(kit.base, "GET", "/elsewhere")).status, 404);
  assert.equal((await call(kit.base, "POST", "/api/stream/runs/x")).status, 405);
  const id = await run([ev("run.started")]);
  const r = await kit.rs.fetch(new Request(`http://h/api/runs/${id}/snapshot`));
  assert.equal(r.status, 200);
  assert.equal((await r.json()).event_id, 1);
  assert.equal((await kit.rs.fetch(new Request("http://h/other"))).status, 404);
  const moved = await startKit({ basePath: "/rs/" });
  try {
    const { runId } = await moved.rs.createRun({});
    assert.equal((await call(moved.base, "GET", `/rs/runs/${runId}/snapshot`)).status, 200);
    assert.equal((await call(moved.base, "GET", `/api/runs/${runId}/snapshot`)).status, 404);
  } finally {
    await moved.close();
  }
});

test("SERVER.md §1 bounded: a body past maxBodyBytes is 413", async () => {
  const small = await startKit({ maxBodyBytes: 100 });
  try {
    const r = await call(small.base, "POST", "/api/chat/s/messages", { body: { client_request_id: "c", content: "x".repeat(200) } });
    assert.equal(r.status, 413);
  } finally {
    await small.close();
  }
});

test("rs.append validates with the gateway's rules and rejects unknown/finished runs and key conflicts with a typed error", async () => {
  const id = await run();
  await assert.rejects(kit.rs.append(id, [ev("tool.started", {})]), (e) => e.name === "RunstreamError" && e.code === "invalid" && /^events\[0\]/.test(e.message));
  await assert.rejects(kit.rs.append("nope", [ev("run.started")]), (e) => e.code === "unknown_run");
  assert.deepEqual(await kit.rs.append(id, [ev("run.started")], { idempotencyKey: "x" }), { firstEventId: 1, lastEventId: 1 });
  assert.deepEqual(await kit.rs.append(id, [ev("run.started")], { idempotencyKey: "x" }), { firstEventId: 1, lastEventId: 1 });
  await assert.rejects(kit.rs.append(id, [ev("run.started", { title: "other" })], { idempotencyKey: "x" }), (e) => e.code === "key_conflict");
  await kit.rs.append(id, [ev("run.completed", { status: "failed", error: "boom" })]);
  await assert.rejects(kit.rs.append(id, [ev("run.started")]), (e) => e.code === "finished");
});

test("SERVER.md §1 bounded: an SSE client that stops reading is disconnected after slowClientMs, not buffered without bound", async () => {
  const net = await import("node:net");
  const logs = [];
  const k = await startKit({ slowClientMs: 500, heartbeatMs: 60000, log: (e, f) => logs.push([e, f]) });
  try {
    const { runId } = await k.rs.createRun({});
    const big = "x".repeat(16 * 1024);
    for (let b = 0; b < 20; b++) {
      await k.rs.append(runId, Array.from({ length: 50 }, () => ev("message.delta", { message_id: "m", delta: big })));
    }
    // ~16 MB of events (more than loopback socket buffers hold); a raw socket that asks and never reads
    const port = new URL(k.base).port;
    const sock = net.connect(Number(port), "127.0.0.1");
    sock.pause();
    sock.write(`GET /api/stream/runs/${runId} HTTP/1.1\r\nHost: x\r\n\r\n`);
    // (a paused client sees nothing: count the server's connections)
    const conns = () => new Promise((r) => k.server.getConnections((_e, n) => r(n)));
    assert.ok(await until(async () => (await conns()) === 1, 5000), "the stream is open");
    const t0 = Date.now();
    assert.ok(await until(async () => (await conns()) === 0, 15000, 100), "the server dropped the connection");
    const dt = Date.now() - t0;
    assert.ok(dt < 10000, `dropped after ${dt} ms (slowClientMs 500)`);
    // and its producer ended at once (not at the next heartbeat, 60 s away)
    assert.ok(await until(() => logs.some(([e]) => e === "stream.close"), 5000), `stream.close logged: ${JSON.stringify(logs)}`);
    sock.destroy();
  } finally {
    await k.close();
  }
});

test("memoryStore bounds: sends remembered per run (maxSendsPerRun, drop-oldest), long-poll sends (maxSends), runs (maxRuns: oldest finished first, else 503)", async () => {
  const { memoryStore } = await import("../dist/index.js");
  const s = memoryStore({ maxSendsPerRun: 2, maxSends: 2, maxRuns: 2 });
  const a = await s.send("s", "c1", "x");
  await s.send("s", "c2", "x");
  assert.equal((await s.send("s", "c2", "x")).messageId, (await s.send("s", "c2", "x")).messageId);
  await s.send("s", "c3", "x");
  const again = await s.send("s", "c1", "x");
  assert.ok(again.fresh && again.messageId !== a.messageId, "c1 fell out of the bound: taken as new");
  const { sends } = await s.sendsAfter(null, 10, 0);
  assert.deepEqual(sends.map((x) => x.clientRequestId), ["c3", "c1"]);
  await s.create("r2", { kind: "task" });
  await assert.rejects(s.create("r3", { kind: "task" }), (e) => e.name === "StoreError");
  await s.append("r2", "run.completed", { status: "succeeded" });
  assert.equal(await s.create("r3", { kind: "task" }), true, "the finished run made room");
  assert.equal(await s.meta("r2"), null);
  const k = await startKit({ store: s });
  try {
    const r = await call(k.base, "POST", "/api/chat/s9/messages", { body: { client_request_id: "c", content: "x" } });
    assert.deepEqual([r.status, r.headers.get("retry-after")], [503, "1"], "a full store answers 503, retried");
  } finally {
    await k.close();
  }
});
