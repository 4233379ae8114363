// The browser client (pkg/, in Debian's Chromium) against the TypeScript kit
// (kit/dist: createRunstream + memoryStore on rs.node and rs.attachWebSocket),
// once per transport: a run streams, resumes after every connection is cut
// (Last-Event-ID / WebSocket last_event_id), converges to the kit's
// snapshot, and a send is accepted and answered exactly once (the kit's
// onSend called once, one user message and one reply shown). Needs
// `npm run build` in kit/ (scripts/test.sh's `kit` step) and pkg/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { readFile } from "node:fs/promises";
import { join, dirname, extname, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, until, watchErrors } from "./lib.mjs";
import { createRunstream, memoryStore } from "../../kit/dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, "../../pkg");
const wwwDir = join(here, "spec-www");
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ev = (type, payload = {}) => ({ type, payload });

let rs;
let server;
let base;
let browser;
const sockets = new Set();
const sends = [];

/** Static files beside the kit: pkg/ at /pkg/, the spec harness at /. */
async function serveStatic(req, res) {
  const p = new URL(req.url, "http://x").pathname;
  const [dir, rel] = p.startsWith("/pkg/") ? [pkgDir, p.slice(5)] : [wwwDir, p === "/" ? "harness.html" : p.slice(1)];
  const file = normalize(join(dir, rel));
  if (!file.startsWith(dir)) return void res.writeHead(403).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" }).end(body);
  } catch {
    res.writeHead(404).end();
  }
}

before(async () => {
  rs = createRunstream({ store: memoryStore(), auth: "none", heartbeatMs: 2000 });
  // The producer: answers each new send once, with a streamed reply.
  rs.onSend(async ({ runId, clientRequestId, content }) => {
    sends.push(clientRequestId);
    const mid = `reply_${clientRequestId.slice(0, 8)}`;
    await rs.append(runId, [ev("message.created", { message_id: mid, role: "assistant", reply_to: clientRequestId, content: "" })]);
    for (const w of `you said: ${content}`.split(" ")) {
      await sleep(20);
      await rs.append(runId, [ev("message.delta", { message_id: mid, delta: `${w} ` })]);
    }
    await rs.append(runId, [ev("message.completed", { message_id: mid, finish_reason: "stop" })]);
  });
  server = http.createServer((req, res) => rs.node(req, res, () => void serveStatic(req, res)));
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  rs.attachWebSocket(server);
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}`;
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await rs?.close();
  server?.closeAllConnections();
  for (const s of sockets) s.destroy();
  await new Promise((r) => server?.close(r));
});

for (const transport of ["fetch", "sse", "websocket"]) {
  test(`kit + browser client (${transport}): streams, resumes after a cut, converges; a send is answered exactly once`, { timeout: 60000 }, async () => {
    const session = `kit_${transport}_${Date.now().toString(36)}`;
    await rs.createRun({ runId: session, sessionId: session, kind: "chat" });
    await rs.append(session, [ev("run.started", { title: "kit e2e" }), ev("worker.started", { worker_id: "w1" })]);
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = watchErrors(page);
    try {
      await page.goto(`${base}/harness.html`);
      await page.evaluate(() => window.ready);
      const opts = {
        runId: session,
        transport,
        url: `/api/stream/runs/${session}`,
        wsUrl: "/api/ws",
        snapshotUrl: `/api/runs/${session}/snapshot`,
        sendUrl: `/api/chat/${session}/messages`,
        resume: "none",
        backoff: { initialMs: 100, maxMs: 1000, multiplier: 2 },
      };
      await page.evaluate(([o]) => window.follow("k", o), [opts]);
      const peek = () => page.evaluate(() => window.peek("k"));
      assert.ok(await until(async () => (await peek()).snap.state.cursor === 2, 10000), "the run streamed");
      for (let i = 2; i <= 4; i++) await rs.append(session, [ev("worker.started", { worker_id: `w${i}` })]);
      assert.ok(await until(async () => (await peek()).snap.state.cursor === 5, 5000), "live events arrived");

      // Cut every connection (HTTP streams and the WebSocket alike), then append while it is down.
      for (const s of sockets) s.destroy();
      for (let i = 5; i <= 8; i++) await rs.append(session, [ev("worker.started", { worker_id: `w${i}` })]);
      assert.ok(await until(async () => (await peek()).snap.state.cursor === 9, 10000), "resumed and caught up");
      const afterCut = await peek();
      assert.ok(afterCut.snap.metrics.reconnects >= 1, `reconnected: ${JSON.stringify(afterCut.snap.metrics.reconnects)}`);

      const crid = await page.evaluate(() => window.sendOn("k", "hello kit"));
      const done = await until(async () => {
        const m = (await peek()).snap.state.messages.find((x) => x.replyTo === crid);
        return m && m.status === "completed";
      }, 10000);
      assert.ok(done, "the reply streamed to completion");
      await sleep(500); // room for a late duplicate
      const view = await peek();
      const mine = view.snap.state.messages.filter((m) => m.role === "user");
      const replies = view.snap.state.messages.filter((m) => m.role === "assistant");
      assert.deepEqual(mine.map((m) => [m.clientRequestId, m.content]), [[crid, "hello kit"]], "the send shown once");
      assert.equal(replies.length, 1, "answered once");
      assert.equal(replies[0].content, "you said: hello kit ");
      assert.deepEqual(sends.filter((c) => c === crid), [crid], "onSend called once");
      // The client's state equals the kit's snapshot (the one reducer on both sides).
      const snap = await (await fetch(`${base}/api/runs/${session}/snapshot`)).json();
      assert.equal(view.snap.state.cursor, snap.event_id);
      assert.deepEqual(view.snap.state.workers.map((w) => [w.workerId, w.status]), snap.state.workers.map((w) => [w.worker_id, w.status]));
      assert.deepEqual(view.snap.state.messages.map((m) => [m.messageId, m.status, m.content]), snap.state.messages.map((m) => [m.message_id, m.status, m.content]));
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
    }
  });
}
