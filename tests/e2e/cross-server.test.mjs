// Cross-server, in a browser (issue #28): on ONE redis-server, a run the
// TypeScript kit appends (rs.append on redisStore) is served by the Rust
// gateway to the browser client, and a run the gateway's `produce`
// subcommand appends is served by the kit (rs.node + rs.attachWebSocket),
// on fetch, sse and websocket, live (the browser joins mid-run) — nothing
// lost or doubled: the client's metrics say no duplicate and no gap, its
// cursor is the server's last id, and its state is both servers' snapshot.
// A chat send taken by the kit is answered by the gateway's chat worker
// (`produce --chat-worker`, consumer group `replies`), once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { join, dirname, normalize, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnTracked } from "./procs.mjs";

import { createRunstream } from "../../kit/dist/index.js";
import { redisStore } from "../../kit/dist/redis.js";
import { haveRedis, startRedis, freePort } from "../../kit/test/support/redis.mjs";
import { launch, watchErrors } from "./lib.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const skip = haveRedis() ? false : "redis-server is not installed (scripts/setup.sh installs it)";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** `STORE=cluster`: the same on a 3-master Redis Cluster (both servers on `redis-cluster://…`). */
const STORE = process.env.STORE === "cluster" ? "cluster" : "redis";
const TRANSPORTS = ["fetch", "sse", "websocket"];
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html; charset=utf-8", ".json": "application/json" };

let redis, gw, kitUrl, rs, kitServer, wsAttach, browser;
const procs = [];

const run = (args) => spawnTracked(bin, args, procs);

async function waitLine(p, re, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const line = p.lines.find((l) => re.test(l));
    if (line) return JSON.parse(line);
    if (Date.now() > end || p.exitCode !== null) throw new Error(`no ${re} from ${p.spawnargs.join(" ")}: ${p.err}`);
    await sleep(20);
  }
}

/** The kit on the same Redis, behind node:http, serving the test page and the client too. */
async function startKit() {
  rs = createRunstream({ store: redisStore({ url: redis.url }), auth: "none", heartbeatMs: 15000 });
  kitServer = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/harness.html" || path.startsWith("/pkg/")) {
      const file = path === "/harness.html" ? join(root, "www", "harness.html") : join(root, normalize(path).replace(/^\/+/, ""));
      try {
        const body = await readFile(file);
        res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream" });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
      return;
    }
    rs.node(req, res);
  });
  wsAttach = rs.attachWebSocket(kitServer, { path: "/api/ws" });
  await new Promise((r) => kitServer.listen(0, "127.0.0.1", r));
  kitUrl = `http://127.0.0.1:${kitServer.address().port}`;
}

before(async () => {
  if (skip) return;
  redis = await startRedis(STORE);
  const port = await freePort();
  const g = run(["--auth", "none", "--dev", "--addr", `127.0.0.1:${port}`, "--store", redis.url, "--replies", "worker"]);
  await waitLine(g, /server\.listening/);
  gw = `http://127.0.0.1:${port}`;
  await startKit();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await wsAttach?.close();
  await rs?.close();
  await new Promise((r) => (kitServer ? kitServer.close(() => r()) : r()));
  await rs?.store?.close?.();
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await redis?.stop();
});

/** Opens `origin`'s harness page and streams `runId` there with `transport` until the run ends. */
async function streamInBrowser(origin, runId, transport) {
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${origin}/harness.html`);
  await page.evaluate(() => window.ready);
  const snap = await page.evaluate(([runId, transport, origin]) => window.streamToEnd({
    runId,
    transport,
    url: `${origin}/api/stream/runs/${runId}`,
    wsUrl: `${origin.replace("http", "ws")}/api/ws`,
    snapshotUrl: `${origin}/api/runs/${runId}/snapshot`,
    resume: "none",
  }, 30000), [runId, transport, origin]);
  await page.close();
  assert.deepEqual(errors, [], `page errors (${transport})`);
  return snap;
}

/** `camelCase` keys of the client's state → the wire's snake_case, to compare with a §6 snapshot. */
function wire(v) {
  if (Array.isArray(v)) return v.map(wire);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), wire(x)]));
  }
  return v;
}

async function snapshotOf(origin, runId) {
  const r = await fetch(`${origin}/api/runs/${runId}/snapshot`);
  assert.equal(r.status, 200);
  return r.json();
}

/**
 * Checks a finished browser stream against both servers: nothing lost, nothing doubled.
 * `fromSnapshot`: the stream began with a `snapshot` (a pruned window), so it applied only
 * the events after it.
 */
async function checkConverged(snap, runId, transport, fromSnapshot = false) {
  const gwSnap = await snapshotOf(gw, runId);
  const kitSnap = await snapshotOf(kitUrl, runId);
  assert.deepEqual(kitSnap, gwSnap, "both servers give one state");
  const m = snap.metrics;
  assert.equal(snap.status.connection, "closed", `${transport}: ended after run.completed (${snap.status.lastError})`);
  assert.equal(m.duplicatesDropped, 0, `${transport}: duplicates`);
  assert.equal(m.gapsSkipped, 0, `${transport}: gaps skipped`);
  assert.equal(m.protocolErrors, 0, `${transport}: protocol errors`);
  assert.equal(snap.state.cursor, gwSnap.event_id, `${transport}: cursor = the server's last id`);
  if (fromSnapshot) assert.ok(m.eventsApplied < gwSnap.event_id, `${transport}: the stream began with the base's snapshot`);
  else assert.equal(m.eventsApplied, gwSnap.event_id, `${transport}: every event applied once`);
  const mine = wire(snap.state);
  for (const k of ["status", "cancel_requested"]) assert.deepEqual(mine[k], gwSnap.state[k], `${transport}: ${k}`);
  assert.deepEqual(
    mine.workers.map((w) => [w.worker_id, w.status, w.tools.map((t) => [t.tool_call_id, t.status])]),
    gwSnap.state.workers.map((w) => [w.worker_id, w.status, w.tools.map((t) => [t.tool_call_id, t.status])]),
    `${transport}: workers and tools`,
  );
  assert.deepEqual(
    mine.messages.map((x) => [x.message_id, x.content, x.status]),
    gwSnap.state.messages.map((x) => [x.message_id, x.content, x.status]),
    `${transport}: messages`,
  );
}

test("a run the kit appends is served by the gateway to the browser (fetch, sse, websocket), live", { skip }, async () => {
  await Promise.all(TRANSPORTS.map(async (transport) => {
    const { runId } = await rs.createRun();
    // The producer: a task with tools and a streamed message, appended by the kit in time
    // while the browser (on the gateway's origin) joins in the middle.
    const producing = (async () => {
      await rs.append(runId, [{ type: "run.started", payload: { title: `kit → gateway (${transport})` } }]);
      for (let w = 1; w <= 3; w++) {
        await rs.append(runId, [
          { type: "worker.started", payload: { worker_id: `w${w}`, name: "search" } },
          { type: "tool.started", payload: { worker_id: `w${w}`, tool_call_id: `t${w}`, name: "fetch" } },
        ]);
        await sleep(30);
      }
      await rs.append(runId, [{ type: "message.created", payload: { message_id: "m1", role: "assistant" } }]);
      for (let i = 0; i < 120; i++) {
        await rs.append(runId, [{ type: "message.delta", payload: { message_id: "m1", delta: `${i} ` } }], { idempotencyKey: `d${i}` });
        if (i % 10 === 0) await sleep(15);
      }
      // A retried append (same key) appends nothing.
      await rs.append(runId, [{ type: "message.delta", payload: { message_id: "m1", delta: "119 " } }], { idempotencyKey: "d119" });
      for (let w = 1; w <= 3; w++) {
        await rs.append(runId, [
          { type: "tool.completed", payload: { worker_id: `w${w}`, tool_call_id: `t${w}`, status: "ok" } },
          { type: "worker.completed", payload: { worker_id: `w${w}`, status: "succeeded" } },
        ]);
      }
      await rs.append(runId, [
        { type: "message.completed", payload: { message_id: "m1", finish_reason: "stop" } },
        { type: "supervisor.completed", payload: { summary: "done" } },
        { type: "run.completed", payload: { status: "succeeded" } },
      ]);
    })();
    await sleep(150);
    const [snap] = await Promise.all([streamInBrowser(gw, runId, transport), producing]);
    await checkConverged(snap, runId, transport);
    assert.equal(snap.state.cursor, 1 + 6 + 1 + 120 + 6 + 3);
    assert.equal(snap.state.messages[0].content, [...Array(120)].map((_, i) => `${i} `).join(""));
  }));
});

test("a run the gateway's produce appends is served by the kit to the browser (fetch, sse, websocket), live", { skip }, async () => {
  const p = run(["produce", "--store", redis.url, "--runs", "3", "--seed", "7", "--workers", "5", "--speed", "6"]);
  const ids = [];
  const end = Date.now() + 15000;
  while (ids.length < 3) {
    ids.splice(0, ids.length, ...p.lines.map((l) => JSON.parse(l)).filter((e) => e.event === "produce.created").map((e) => e.run_id));
    if (Date.now() > end) throw new Error(`produce: ${p.err}`);
    await sleep(20);
  }
  await sleep(200);
  const snaps = await Promise.all(ids.map((id, i) => streamInBrowser(kitUrl, id, TRANSPORTS[i])));
  assert.equal(await p.done, 0);
  for (let i = 0; i < ids.length; i++) {
    await checkConverged(snaps[i], ids[i], TRANSPORTS[i]);
    assert.ok(snaps[i].state.workers.length === 5);
  }
});

test("pruned windows across servers: a run the kit trimmed is served by the gateway from its base, and the other way round", { skip }, async () => {
  // The kit with a window of 20: its appends reduce the oldest events into the base (wasm reducer).
  const small = createRunstream({ store: redisStore({ url: redis.url, window: 20 }), auth: "none" });
  try {
    const { runId } = await small.createRun();
    await small.append(runId, [{ type: "run.started", payload: {} }, { type: "worker.started", payload: { worker_id: "w1", name: "search" } }]);
    await small.append(runId, [{ type: "tool.started", payload: { job_id: "j1", tool_call_id: "t0", name: "early" } }]);
    await small.append(runId, [{ type: "message.created", payload: { message_id: "m1", role: "assistant" } }]);
    for (let i = 0; i < 40; i++) await small.append(runId, [{ type: "message.delta", payload: { message_id: "m1", delta: `${i} ` } }]);
    await small.append(runId, [{ type: "worker.job_assigned", payload: { worker_id: "w1", job_id: "j1" } }]);
    // Every worker ends before run.completed (PROTOCOL §4): a worker left running would make
    // the client reconcile after the end and mark it `unknown`, while both servers keep
    // `running` — a state the comparison below would read before or after that, by timing.
    await small.append(runId, [
      { type: "tool.completed", payload: { job_id: "j1", tool_call_id: "t0", status: "ok" } },
      { type: "worker.completed", payload: { worker_id: "w1", status: "succeeded" } },
      { type: "message.completed", payload: { message_id: "m1", finish_reason: "stop" } },
      { type: "run.completed", payload: { status: "succeeded" } },
    ]);
    const meta = await small.store.meta(runId);
    assert.ok(meta.firstId > 1, "the kit trimmed the log");
    const snap = await streamInBrowser(gw, runId, "fetch");
    await checkConverged(snap, runId, "fetch", true);
    assert.equal(snap.state.messages[0].content, [...Array(40)].map((_, i) => `${i} `).join(""));
    assert.deepEqual(snap.state.workers[0].tools.map((t) => [t.toolCallId, t.status]), [["t0", "ok"]], "the job-only tool parked in the base");
  } finally {
    await small.close();
    await small.store.close();
  }
  // The gateway's producer with a window of 12 trims its runs; the kit serves them from the base.
  const [id] = await (async () => {
    const p = run(["produce", "--store", redis.url, "--instant", "--seed", "3", "--workers", "6", "--window", "12"]);
    assert.equal(await p.done, 0, p.err);
    return p.lines.map((l) => JSON.parse(l)).filter((e) => e.event === "produce.created").map((e) => e.run_id);
  })();
  const snap = await streamInBrowser(kitUrl, id, "websocket");
  await checkConverged(snap, id, "websocket", true);
});

test("a chat send the kit takes is answered once by the gateway's chat worker (group 'replies'), seen live through the kit", { skip }, async () => {
  const worker = run(["produce", "--store", redis.url, "--chat-worker", "--consumer", "gw-worker"]);
  await waitLine(worker, /chat_worker\.ready/);
  const session = `xs_${process.pid}`;
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${kitUrl}/harness.html`);
  await page.evaluate(() => window.ready);
  const result = await page.evaluate(async ([origin, session]) => {
    const s = new window.RunStream({
      runId: session,
      url: `${origin}/api/stream/runs/${session}`,
      snapshotUrl: `${origin}/api/runs/${session}/snapshot`,
      resume: "none",
    });
    // The session's run exists from its first send on (a stream of an unknown run is a final 404).
    const crid = crypto.randomUUID();
    const sent = await fetch(`${origin}/api/chat/${session}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_request_id: crid, content: "hello across servers" }),
    });
    if (sent.status !== 202) return { crid, sent: sent.status };
    s.start();
    const end = Date.now() + 20000;
    for (;;) {
      const snap = s.getSnapshot();
      const reply = snap.state.messages.find((m) => m.role === "assistant" && m.replyTo === crid);
      if (reply && reply.status !== "streaming") {
        s.close();
        return { crid, snap, reply };
      }
      if (Date.now() > end) {
        s.close();
        return { crid, snap, reply: null };
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }, [kitUrl, session]);
  await page.close();
  assert.deepEqual(errors, []);
  assert.ok(result.reply, `the gateway's chat worker answered the send the kit took: ${JSON.stringify(result.snap.state.messages)} ${worker.err}`);
  assert.equal(result.reply.status, "completed");
  assert.ok(result.reply.content.length > 0);
  const m = result.snap.metrics;
  assert.equal(m.duplicatesDropped, 0);
  assert.equal(m.gapsSkipped, 0);
  await waitLine(worker, /chat_worker\.replied/);
  const state = (await snapshotOf(gw, session)).state;
  assert.equal(state.messages.filter((x) => x.role === "assistant" && x.reply_to === result.crid).length, 1, "answered once");
  assert.equal(state.messages.filter((x) => x.role === "user").length, 1, "one user message");
});
