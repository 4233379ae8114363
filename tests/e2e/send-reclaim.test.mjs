// A chat send whose consumer died before answering is answered by a live one
// (issue 26): the gateway's chat workers (`produce --chat-worker
// --send-claim-idle-ms`) and kit processes (`onSend`, `sendClaimIdleMs`) take
// over sends left pending in the consumer group `replies` (XAUTOCLAIM), and one
// reply per send is enforced in the Lua append step, so a slow-but-alive
// consumer and the one that took its send over never both append a reply.
// Real processes on a real redis-server: consumer A reads the send (its reply
// waits: "think" in the content) and is SIGKILLed; B answers it, once. A consumer
// killed (or stopped) mid-reply: B ends that reply `message.failed`, once, and the
// stopped one, when it comes back, is refused (lua/orphan.lua, lua/append_step.lua).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { spawnTracked } from "./procs.mjs";
import { root } from "./infra.mjs";
import { launch, watchErrors } from "./lib.mjs";

import { redisStore } from "../../kit/dist/redis.js";
import { haveRedis, startRedis, freePort, redisRaw } from "../../kit/test/support/redis.mjs";

const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const skip = haveRedis() ? false : "redis-server is not installed (scripts/setup.sh installs it)";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** The claim idle time of every consumer here (the default is 30 s). */
const IDLE_MS = 1000;

let redis, gw, store;
const procs = [];

before(async () => {
  if (skip) return;
  redis = await startRedis();
  const port = await freePort();
  // The replica that takes the sends only logs them (--replies none): consumers answer.
  const g = spawnTracked(bin, ["--auth", "none", "--addr", `127.0.0.1:${port}`, "--store", redis.url, "--replies", "none"], procs);
  await until(() => g.lines.some((l) => l.includes("server.listening")), 15000, () => `gateway: ${g.err}`);
  gw = `http://127.0.0.1:${port}`;
  store = redisStore({ url: redis.url });
});

after(async () => {
  await store?.close();
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await redis?.stop();
});

async function until(ok, ms, why) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    assert.ok(Date.now() < end, why());
    await sleep(20);
  }
}

/** A gateway chat worker named `name`: `lines` parsed as `events`. */
async function gatewayWorker(name) {
  const p = spawnTracked(bin, ["produce", "--store", redis.url, "--chat-worker", "--consumer", name, "--send-claim-idle-ms", String(IDLE_MS)], procs);
  Object.defineProperty(p, "events", { get: () => p.lines.map((l) => JSON.parse(l)) });
  await until(() => p.events.some((e) => e.event === "chat_worker.ready"), 10000, () => `${name}: ${p.err}`);
  return p;
}

/** A kit process (tests/e2e/kit-process.mjs) whose "think" replies wait `thinkMs`. */
async function kitConsumer(name, thinkMs, stall = false) {
  const p = spawn(process.execPath, [join(root, "tests/e2e/kit-process.mjs"), redis.url, name, JSON.stringify({ sendClaimIdleMs: IDLE_MS, thinkMs, stall })], { cwd: root, stdio: ["pipe", "pipe", "pipe"] });
  procs.push(p);
  p.events = [];
  p.err = "";
  let buf = "";
  p.stdout.on("data", (d) => {
    buf += d;
    for (let i; (i = buf.indexOf("\n")) >= 0; buf = buf.slice(i + 1)) p.events.push(JSON.parse(buf.slice(0, i)));
  });
  p.stderr.on("data", (d) => { p.err += d; });
  await until(() => p.events.some((e) => e.event === "ready"), 10000, () => `${name}: ${p.err}`);
  return p;
}

async function send(session, crid, content) {
  const r = await fetch(`${gw}/api/chat/${session}/messages`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_request_id: crid, content }) });
  assert.equal(r.status, 202);
}

/** Every event of `id`'s log. */
async function log(id) {
  const out = [];
  for (let after = 0; ;) {
    const rep = await store.read(id, after);
    if (!rep || rep.events.length === 0) return out;
    for (const e of rep.events) out.push(JSON.parse(e));
    after += rep.events.length;
  }
}

/**
 * Waits until the reply to `crid` completed, then a while longer (a second reply would have
 * begun by then), and checks the log holds exactly one reply to it: the time it took.
 */
async function answeredOnce(session, crid, t0) {
  const replies = async () => (await log(session)).filter((e) => e.type === "message.created" && e.payload.reply_to === crid);
  let ms = 0;
  await until(async () => {
    const ids = (await replies()).map((e) => e.payload.message_id);
    const done = (await log(session)).some((e) => e.type === "message.completed" && ids.includes(e.payload.message_id));
    if (done && !ms) ms = Date.now() - t0;
    return done;
  }, 20000, () => `no completed reply to ${crid}`);
  await sleep(1000);
  const r = await replies();
  assert.equal(r.length, 1, `replies to ${crid}: ${JSON.stringify(r)}`);
  return { ms, by: r[0].payload.message_id };
}

async function killWhenTaken(p, pred) {
  await until(() => (p.events ?? []).some(pred), 10000, () => `the send was not taken: ${p.err}`);
  p.kill("SIGKILL");
  await new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once("exit", r)));
}

test("gateway: worker A dies holding a send; worker B answers it once", { skip }, async () => {
  const a = await gatewayWorker("gw-a");
  const t0 = Date.now();
  await send("gg", "s1", "think about this");
  await killWhenTaken(a, (e) => e.event === "chat_worker.claimed" && e.client_request_id === "s1");
  assert.equal((await log("gg")).filter((e) => e.payload.reply_to === "s1").length, 0, "A started its reply before it died");
  const b = await gatewayWorker("gw-b");
  const { ms } = await answeredOnce("gg", "s1", t0);
  assert.equal(b.events.filter((e) => e.event === "chat_worker.replied" && e.client_request_id === "s1").length, 1);
  b.kill("SIGTERM");
  await b.done;
  console.log(`# gateway: answered by the second worker ${ms} ms after the send (claim idle ${IDLE_MS} ms, 1.5 s "think")`);
});

test("kit: process A dies holding a send; process B answers it once", { skip }, async () => {
  const a = await kitConsumer("KA", 60_000);
  const t0 = Date.now();
  await send("kk", "s1", "think about it");
  await killWhenTaken(a, (e) => e.event === "taken" && e.crid === "s1");
  const b = await kitConsumer("KB", 0);
  const { ms, by } = await answeredOnce("kk", "s1", t0);
  assert.equal(by, "KB_s1");
  b.kill("SIGTERM");
  console.log(`# kit: answered by the second process ${ms} ms after the send`);
});

test("cross: a kit process dies holding a send; a gateway worker answers it once", { skip }, async () => {
  const a = await kitConsumer("XA", 60_000);
  await send("xk", "s1", "hello");
  // Taken by A: answered at once (a warm-up: A is the only consumer).
  await until(() => a.events.some((e) => e.event === "answered" && e.session === "xk"), 10000, () => a.err);
  const t0 = Date.now();
  await send("xk", "s2", "think twice now");
  await killWhenTaken(a, (e) => e.event === "taken" && e.crid === "s2");
  const b = await gatewayWorker("gw-x");
  const { ms } = await answeredOnce("xk", "s2", t0);
  assert.equal(b.events.filter((e) => e.event === "chat_worker.replied" && e.client_request_id === "s2").length, 1);
  b.kill("SIGTERM");
  await b.done;
  console.log(`# cross: the gateway worker answered the kit's dead send ${ms} ms after it`);
});

test("a live consumer keeps a slow send: its claims heartbeat it, nobody takes it over", { skip }, async () => {
  const a = await kitConsumer("LA", 2500);
  await send("lk", "s1", "think long");
  await until(() => a.events.some((e) => e.event === "taken" && e.crid === "s1"), 10000, () => a.err);
  const b = await gatewayWorker("gw-l");
  const { by } = await answeredOnce("lk", "s1", Date.now());
  assert.equal(by, "LA_s1");
  assert.equal(b.events.filter((e) => e.client_request_id === "s1").length, 0, JSON.stringify(b.events));
  b.kill("SIGTERM");
  a.kill("SIGTERM");
  await b.done;
});

test("a stalled-but-alive consumer and the one that takes its send over: one reply", { skip }, async () => {
  // Kit A's process stalls 2 s (a busy loop) holding the send, so its heartbeat lapses.
  // Gateway worker B takes the send over after 1 s and starts its reply after its 1.5 s
  // "think". Whichever starts second (A, normally) is refused in the append step and
  // acknowledges the send.
  const a = await kitConsumer("SA", 2000, true);
  await send("sk", "s1", "think slowly");
  await until(() => a.events.some((e) => e.event === "taken" && e.crid === "s1"), 10000, () => a.err);
  const b = await gatewayWorker("gw-s");
  await until(() => b.events.some((e) => e.event === "chat_worker.claimed" && e.client_request_id === "s1"), 5000,
    () => `B did not take the send over: ${JSON.stringify(b.events)}`);
  await answeredOnce("sk", "s1", Date.now());
  const refused = [
    ...a.events.filter((e) => e.event === "reply_taken" && e.crid === "s1"),
    ...b.events.filter((e) => e.event === "chat_worker.reply_taken" && e.client_request_id === "s1"),
  ];
  const answered = [
    ...a.events.filter((e) => e.event === "answered" && e.crid === "s1"),
    ...b.events.filter((e) => e.event === "chat_worker.replied" && e.client_request_id === "s1"),
  ];
  assert.equal(refused.length, 1, `one start refused: ${JSON.stringify([a.events, b.events])}`);
  assert.equal(answered.length, 1);
  // Nothing is left pending in the group.
  await until(() => redisRaw(redis.ports[0], "XPENDING", "runstream:sends", "replies").split("\n")[0] === "0", 5000,
    () => "sends left pending");
  b.kill("SIGTERM");
  a.kill("SIGTERM");
  await b.done;
});

// A consumer that dies (or stalls) mid-reply: the reply already streams, so the taker
// cannot answer the send again (one reply per send); it ends that reply `message.failed`
// instead (lua/orphan.lua), once, and acknowledges the send: no client is left with a
// message streaming for ever (docs/GATEWAY.md, docs/KIT.md "Sends after a crash").

/** `id`'s reply to `crid` (its message.created), once it exists. */
async function replyTo(id, crid, deltas) {
  let mid = null;
  await until(async () => {
    const l = await log(id);
    mid = l.find((e) => e.type === "message.created" && e.payload.reply_to === crid)?.payload.message_id ?? null;
    return mid !== null && l.filter((e) => e.type === "message.delta" && e.payload.message_id === mid).length >= deltas;
  }, 10000, () => `no reply to ${crid} streaming`);
  return mid;
}

/**
 * Waits until `mid` of `id` failed, then a while longer (a second ending, a completion or a
 * second reply would have come by then: `settleMs`), and checks: one reply to `crid`, ended by exactly one
 * `message.failed` naming the stopped process, nothing of it after that, and the run's
 * snapshot (PROTOCOL §6, over HTTP) shows it failed. The time it took from `t0`.
 */
async function failedOnce(id, crid, mid, t0, settleMs = 1000) {
  let ms = 0;
  await until(async () => {
    const done = (await log(id)).some((e) => e.type === "message.failed" && e.payload.message_id === mid);
    if (done && !ms) ms = Date.now() - t0;
    return done;
  }, 10000, () => `${mid} was not ended`);
  await sleep(settleMs);
  const l = await log(id);
  const ends = l.filter((e) => (e.type === "message.failed" || e.type === "message.completed") && e.payload.message_id === mid);
  assert.equal(ends.length, 1, `endings of ${mid}: ${JSON.stringify(ends)}`);
  assert.equal(ends[0].type, "message.failed");
  assert.match(ends[0].payload.error, /the process answering this message stopped/);
  assert.ok(!l.some((e) => e.event_id > ends[0].event_id && e.payload.message_id === mid), "events of the reply after its ending");
  assert.equal(l.filter((e) => e.type === "message.created" && e.payload.reply_to === crid).length, 1, "a second reply");
  const snap = await (await fetch(`${gw}/api/runs/${id}/snapshot`)).json();
  const m = snap.state.messages.find((x) => x.message_id === mid);
  assert.equal(m?.status, "failed", JSON.stringify(snap.state.messages));
  // Nothing is left pending in the group: the send counts as answered.
  await until(() => redisRaw(redis.ports[0], "XPENDING", "runstream:sends", "replies").split("\n")[0] === "0", 5000,
    () => "sends left pending");
  return ms;
}

const exited = (p) => new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once("exit", r)));

test("gateway: worker A dies mid-reply; worker B ends that reply failed, once (and a browser's message leaves streaming)", { skip }, async () => {
  // A real client (Chromium, the wasm RunStream over SSE) watching the session.
  const [a, browser] = await Promise.all([gatewayWorker("gw-oa"), launch()]);
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${gw}/harness.html`);
  await page.evaluate(() => window.ready);
  // "stall": a 2.5 s pause after 12 tokens, so A is surely killed mid-reply.
  await send("go", "s1", "stall here");
  const mid = await replyTo("go", "s1", 3);
  await page.evaluate(([origin, session]) => {
    window.s = new window.RunStream({ runId: session, url: `${origin}/api/stream/runs/${session}`, resume: "none" });
    window.s.start();
  }, [gw, "go"]);
  const status = (m) => page.evaluate((m) => window.s.getSnapshot().state.messages.find((x) => x.messageId === m)?.status ?? null, m);
  await until(async () => (await status(mid)) === "streaming", 5000, () => "the browser never saw the reply streaming");
  a.kill("SIGKILL");
  await exited(a);
  const t0 = Date.now();
  const b = await gatewayWorker("gw-ob");
  const ms = await failedOnce("go", "s1", mid, t0);
  assert.equal(b.events.filter((e) => e.event === "send.orphan_failed" && e.message_id === mid).length, 1, JSON.stringify(b.events));
  assert.equal(b.events.filter((e) => e.event === "chat_worker.claimed" && e.client_request_id === "s1").length, 0, "B answered the send again");
  await until(async () => (await status(mid)) !== "streaming", 5000, () => "the browser still shows the reply streaming");
  assert.equal(await status(mid), "failed");
  await page.evaluate(() => window.s.close());
  await browser.close();
  assert.deepEqual(errors, []);
  b.kill("SIGTERM");
  await b.done;
  console.log(`# gateway: the dead worker's reply ended failed ${ms} ms after the second worker started (claim idle ${IDLE_MS} ms)`);
});

test("kit: process A dies mid-reply; process B ends that reply failed, once", { skip }, async () => {
  const a = await kitConsumer("OA", 60_000);
  await send("ko", "s1", "answer halfway");
  await until(() => a.events.some((e) => e.event === "streaming" && e.crid === "s1"), 10000, () => a.err);
  a.kill("SIGKILL");
  await exited(a);
  const t0 = Date.now();
  const b = await kitConsumer("OB", 0);
  const ms = await failedOnce("ko", "s1", "OA_s1", t0);
  assert.equal(b.events.filter((e) => e.crid === "s1").length, 0, `B answered the send again: ${JSON.stringify(b.events)}`);
  b.kill("SIGTERM");
  console.log(`# kit: the dead process's reply ended failed ${ms} ms after the second process started`);
});

test("a gateway worker stopped mid-reply comes back after a kit process ended its reply: refused, the reply stays failed", { skip }, async () => {
  const a = await gatewayWorker("gw-pa");
  await send("gp", "s1", "stall there");
  const mid = await replyTo("gp", "s1", 3);
  a.kill("SIGSTOP"); // stalled: no heartbeat, no deltas
  const b = await kitConsumer("PB", 0);
  await failedOnce("gp", "s1", mid, Date.now());
  a.kill("SIGCONT");
  // A goes on with its reply: its next append is refused, it acknowledges the send.
  await until(() => a.events.some((e) => e.event === "chat_worker.reply_taken" && e.client_request_id === "s1"), 10000,
    () => `A was not refused: ${JSON.stringify(a.events)}`);
  await failedOnce("gp", "s1", mid, Date.now(), 0);
  assert.equal(b.events.filter((e) => e.crid === "s1").length, 0);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  await a.done;
});

test("a kit process stopped mid-reply comes back after a gateway worker ended its reply: refused, the reply stays failed", { skip }, async () => {
  const a = await kitConsumer("QA", 1500);
  await send("kq", "s1", "answer halfway");
  await until(() => a.events.some((e) => e.event === "streaming" && e.crid === "s1"), 10000, () => a.err);
  a.kill("SIGSTOP");
  const b = await gatewayWorker("gw-qb");
  await failedOnce("kq", "s1", "QA_s1", Date.now());
  a.kill("SIGCONT");
  await until(() => a.events.some((e) => e.event === "reply_taken" && e.crid === "s1"), 10000,
    () => `A was not refused: ${JSON.stringify(a.events)}`);
  await failedOnce("kq", "s1", "QA_s1", Date.now(), 0);
  assert.equal(b.events.filter((e) => e.event === "send.orphan_failed" && e.message_id === "QA_s1").length, 1);
  a.kill("SIGTERM");
  b.kill("SIGTERM");
  await b.done;
});
