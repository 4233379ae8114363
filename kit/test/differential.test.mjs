// The gateway is the reference (prompt: "mirror its answers"): the same
// requests go to the Rust gateway (target/debug/runstream-server, memory
// store, window 20) and to the kit (memoryStore, window 20), and the answers
// must be equal: statuses, bodies (publish errors word for word), snapshots
// (the one reducer, also across a pruned window and a parked job-only
// event), SSE replay with the pruned-window snapshot, sends and cancels.
// scripts/test.sh builds the gateway before the kit step; run alone, build it
// with `cargo build -p runstream-server` (the test fails without it).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { startKit, call, sse, events, ev, sleep } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const binary = process.env.RUNSTREAM_SERVER_BIN ?? join(here, "../../target/debug/runstream-server");
const KEY = "differential-publish-key";
let gw;
let gwProc;
let kit;

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

before(async () => {
  assert.ok(existsSync(binary), `the gateway binary ${binary} (cargo build -p runstream-server)`);
  const dir = mkdtempSync(join(tmpdir(), "kit-diff-"));
  writeFileSync(join(dir, "key"), KEY);
  const port = await freePort();
  gwProc = spawn(binary, ["--auth", "none", "--dev", "--replies", "none", "--window", "20", "--cancel-grace-ms", "600000",
    "--publish-key-file", join(dir, "key"), "--addr", `127.0.0.1:${port}`], { stdio: ["ignore", "ignore", "inherit"] });
  gw = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${gw}/healthz`)).ok) break;
    } catch {
      // not up yet
    }
    await sleep(100);
  }
  kit = await startKit({ publishKey: KEY, memory: { window: 20 }, cancelGraceMs: 600000 });
});
after(async () => {
  gwProc?.kill();
  await kit?.close();
});

const pub = { authorization: `Bearer ${KEY}` };
/** The same request to both servers: [gateway answer, kit answer]. */
const both = (method, path, o = {}) => Promise.all([call(gw, method, path, o), call(kit.base, method, path, o)]);
const same = async (method, path, o = {}, what = `${method} ${path}`) => {
  const [g, k] = await both(method, path, o);
  assert.equal(k.status, g.status, `${what}: status (gateway ${g.status}: ${g.text}; kit: ${k.text})`);
  if (!o.statusOnly) assert.deepEqual(k.json ?? k.text, g.json ?? g.text, `${what}: body`);
  return g;
};
const publish = (run, events, key, extra = {}) =>
  same("POST", `/api/publish/runs/${run}/events`, { body: { events }, headers: { ...pub, "idempotency-key": key }, ...extra }, `publish ${key}`);

test("publish API: create, append, repeat, conflict, every kind of invalid batch, finished: the gateway's answers, word for word", async () => {
  await same("POST", "/api/publish/runs", { body: { run_id: "d1", session_id: "sd" }, headers: pub });
  await same("POST", "/api/publish/runs", { body: { run_id: "d1" }, headers: pub });
  await same("POST", "/api/publish/runs", { body: { run_id: "x{y}" }, headers: pub });
  await same("POST", "/api/publish/runs", { body: {}, headers: {} });
  await same("POST", "/api/publish/runs", { body: { run_id: 5 }, headers: pub, statusOnly: true });
  await same("POST", "/api/publish/runs", { body: { run: "x" }, headers: pub, statusOnly: true });
  await same("POST", "/api/publish/runs", { raw: "{", headers: { ...pub, "content-type": "application/json" }, statusOnly: true });
  await same("POST", "/api/publish/runs", { raw: "{}", headers: { ...pub, "content-type": "text/plain" } });
  await publish("d1", [ev("run.started", { title: "diff" }), ev("worker.started", { worker_id: "w1", job_id: "j1" })], "a");
  await publish("d1", [{ payload: { title: "diff" }, type: "run.started" }, ev("worker.started", { job_id: "j1", worker_id: "w1" })], "a");
  await publish("d1", [ev("run.started")], "a");
  const invalid = [
    [ev("tool.started", { tool_call_id: "t" })],
    [ev("worker.started", { worker_id: 5 })],
    [ev("run.completed", { status: "done" })],
    [ev("message.created", { message_id: "m", role: "robot" })],
    [ev("snapshot", { state: {} })],
    [ev("run.cancel_requested", {})],
    [ev("nope.type", {})],
    [{ type: "run.started", payload: [] }],
    [{ type: "run.started" }],
    [{ type: "run.started", payload: {}, extra: 1 }],
    [ev("run.completed", { status: "succeeded" }), ev("run.started")],
    [],
  ];
  for (const [i, batch] of invalid.entries()) await publish("d1", batch, `bad${i}`);
  await same("POST", "/api/publish/runs/d1/events", { raw: "{not json", headers: { ...pub, "idempotency-key": "raw", "content-type": "application/json" } });
  // Not UTF-8 (a 0xff inside a string): 400 from both, nothing stored with U+FFFD in its place.
  const notUtf8 = Buffer.concat([Buffer.from('{"events":[{"type":"run.started","payload":{"title":"'), Buffer.from([0xff]), Buffer.from('"}}]}')]);
  const g8 = await same("POST", "/api/publish/runs/d1/events", { raw: notUtf8, headers: { ...pub, "idempotency-key": "utf8", "content-type": "application/json" } });
  assert.equal(g8.status, 400);
  await same("POST", "/api/publish/runs/d1/events", { raw: JSON.stringify({ events: [ev("run.started")] }), headers: { ...pub, "idempotency-key": "ct", "content-type": "text/plain" } });
  await same("POST", "/api/publish/runs/d1/events", { raw: JSON.stringify({ events: [ev("run.started")] }), headers: { ...pub, "idempotency-key": "ct" } });
  await same("POST", "/api/publish/runs/d1/events", { body: { events: [] }, headers: pub });
  await same("POST", "/api/publish/runs/d1/events", { body: { events: [] }, headers: { ...pub, "idempotency-key": "a b" } });
  await publish("nope", [ev("run.started")], "u");
  await same("GET", "/api/runs/d1/snapshot");
  await publish("d1", [ev("worker.completed", { worker_id: "w1", status: "succeeded" }), ev("run.completed", { status: "succeeded" })], "end");
  await publish("d1", [ev("run.started")], "after");
  await same("GET", "/api/runs/d1/snapshot");
  await same("GET", "/api/stream/runs/d1", { headers: { "last-event-id": "4" } });
});

test("the one reducer: snapshots equal across a pruned window and a parked job-only event; SSE resumes get the same snapshot event and ids", async () => {
  await same("POST", "/api/publish/runs", { body: { run_id: "d2" }, headers: pub });
  // a job-only tool event parked before its job is mapped, then pruned away: the stored base must keep it
  await publish("d2", [ev("run.started"), ev("tool.started", { job_id: "late", tool_call_id: "tp", name: "parked" })], "p0");
  for (let i = 0; i < 30; i++) {
    await publish("d2", [ev("worker.started", { worker_id: `w${i}`, job_id: `j${i}` }), ev("tool.started", { worker_id: `w${i}`, tool_call_id: `t${i}`, name: "x" })], `p${i + 1}`);
  }
  await publish("d2", [ev("worker.job_assigned", { worker_id: "w0", job_id: "late" }), ev("message.created", { message_id: "m1", role: "assistant", content: "hé \u2028 \"q\"" })], "late");
  const g = await same("GET", "/api/runs/d2/snapshot");
  assert.ok(g.json.state.workers[0].tools.some((t) => t.tool_call_id === "tp"), "the parked event was applied after the prune (both servers)");
  for (const last of ["0", "3", "40"]) {
    const [gs, ks] = await Promise.all([gw, kit.base].map((b) => sse(`${b}/api/stream/runs/d2`, { headers: { "last-event-id": last }, stop: (f) => f.some((x) => x.id === 64) })));
    const gSnap = gs.frames.find((f) => f.event === "snapshot");
    const kSnap = ks.frames.find((f) => f.event === "snapshot");
    assert.equal(kSnap?.id, gSnap?.id, `resume after ${last}: snapshot id`);
    assert.deepEqual(kSnap?.data.payload, gSnap?.data.payload, `resume after ${last}: snapshot state`);
    assert.deepEqual(events(ks.frames).map((e) => [e.event_id, e.type, e.payload]), events(gs.frames).map((e) => [e.event_id, e.type, e.payload]));
  }
});

test("sends and cancels: the gateway's answers (ids, 409s, 425, repeats)", async () => {
  await same("POST", "/api/chat/sx/messages", { body: { client_request_id: "c1", content: "hi" } });
  await same("POST", "/api/chat/sx/messages", { body: { client_request_id: "c1", content: "hi" } });
  await same("POST", "/api/chat/sx/messages", { body: { client_request_id: "c2", content: "" } });
  // a body of another shape: 422 from both (the texts are each JSON parser's own)
  await same("POST", "/api/chat/sx/messages", { body: { content: "x" }, statusOnly: true });
  await same("POST", "/api/chat/sx/messages", { raw: "{", headers: { "content-type": "application/json" }, statusOnly: true });
  await same("POST", "/api/chat/sx/messages", { raw: "{}", headers: { "content-type": "text/plain" } });
  await same("POST", "/api/chat/sx/messages", { raw: "{}" });
  await same("POST", "/api/runs/sx/cancel", { raw: "{}" });
  await same("POST", "/api/runs/sx/cancel", { raw: "{", headers: { "content-type": "application/json" }, statusOnly: true });
  await same("POST", "/api/chat/sx/messages", { body: { client_request_id: "c2", content: "x" }, headers: pub });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k0", reply_to: "c9" } });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k1", reply_to: "c1" } });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k2", reply_to: "c1" } });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k3", reason: "r".repeat(1001) } });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k3", other: 1 }, statusOnly: true });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k3" } });
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k4" } });
  await same("POST", "/api/runs/nope/cancel", { body: { client_request_id: "k" } });
  await publish("sx", [ev("run.completed", { status: "cancelled" })], "fin");
  await same("POST", "/api/runs/sx/cancel", { body: { client_request_id: "k5", reply_to: "c1" } });
  await same("POST", "/api/chat/sx/messages", { body: { client_request_id: "c3", content: "late" } });
  await same("GET", "/api/runs/sx/snapshot");
  await same("GET", "/api/stream/runs/nope");
  await same("GET", "/api/runs/nope/snapshot");
});

test("one reply per send: a second message.created answering a send is 409 reply_taken on both stores' servers", async () => {
  await same("POST", "/api/publish/runs", { body: { run_id: "d9" }, headers: pub });
  const created = (mid) => ev("message.created", { message_id: mid, role: "assistant", reply_to: "q1" });
  assert.equal((await publish("d9", [created("a1")], "r1")).status, 200);
  const second = await publish("d9", [ev("message.delta", { message_id: "a1", delta: "x" }), created("a2")], "r2");
  assert.deepEqual([second.status, second.json], [409, { run_id: "d9", status: "reply_taken" }]);
  assert.equal((await publish("d9", [created("a1")], "r1")).status, 200, "a repeat of the key answers its ids");
  assert.equal((await publish("d9", [ev("message.completed", { message_id: "a1", finish_reason: "stop" })], "r3")).status, 200);
  const third = await publish("d9", [created("a3")], "r4");
  assert.equal(third.status, 409, "also once the reply ended");
  // A reply that ended takes no more of it (a producer that stalled while its send was taken
  // over and its reply failed: docs/GATEWAY.md "Sends after a crash"), on both memory stores.
  const late = await publish("d9", [ev("message.delta", { message_id: "a1", delta: "late" })], "r5");
  assert.deepEqual([late.status, late.json], [409, { run_id: "d9", status: "reply_taken" }], "a delta of a reply that ended");
  assert.equal((await publish("d9", [ev("message.failed", { message_id: "a1", error: "x" })], "r6")).status, 409);
  // A message that answers no send is not a reply: its events are taken as before.
  assert.equal((await publish("d9", [ev("message.completed", { message_id: "free", finish_reason: "stop" }),
    ev("message.delta", { message_id: "free", delta: "x" })], "r7")).status, 200);
  await same("GET", "/api/runs/d9/snapshot");
});

test("one reply per send inside one batch: the refusals see the batch's earlier events (all or nothing)", async () => {
  await same("POST", "/api/publish/runs", { body: { run_id: "d10" }, headers: pub });
  const created = (mid, to) => ev("message.created", { message_id: mid, role: "assistant", reply_to: to });
  const refused = [409, { run_id: "d10", status: "reply_taken" }];
  const before = await same("GET", "/api/runs/d10/snapshot");
  const two = await publish("d10", [created("x1", "qx"), created("x2", "qx")], "b1");
  assert.deepEqual([two.status, two.json], refused, "two replies to one send in one batch");
  const ended = await publish("d10", [created("y1", "qy"), ev("message.completed", { message_id: "y1", finish_reason: "stop" }),
    ev("message.delta", { message_id: "y1", delta: "late" })], "b2");
  assert.deepEqual([ended.status, ended.json], refused, "a delta after its reply's ending in one batch");
  const afterRefusals = await same("GET", "/api/runs/d10/snapshot");
  assert.deepEqual(afterRefusals.json, before.json, "a refused batch appends nothing");
  const whole = await publish("d10", [created("z1", "qz"), ev("message.delta", { message_id: "z1", delta: "hi" }),
    ev("message.completed", { message_id: "z1", finish_reason: "stop" })], "b3");
  assert.equal(whole.status, 200, "a whole reply in one batch is taken");
  assert.equal((await same("GET", "/api/runs/d10/snapshot")).json.state.messages.length, 1);
});
