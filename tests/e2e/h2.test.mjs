// HTTP/2 through nginx (docs/DEPLOY.md "HTTP/2"): deploy/nginx.conf's HTTPS +
// HTTP/2 listen, with a self-signed certificate made here by openssl, in front
// of the infrastructure of infra.mjs (redis-server, two replicas, nginx). One
// Chromium tab opens 12 concurrent fetch streams of 12 live task runs:
// - over HTTPS (HTTP/2) all 12 are open and receiving events at once, and
//   nginx's access log shows that they shared ONE TCP connection ($connection)
//   with protocol HTTP/2.0;
// - the control, the same 12 streams over the plain HTTP/1.1 port: Chromium
//   opens at most 6 connections per origin: nginx logs several HTTP/1.1
//   connections, at most 6 streams receive events before the first run ends,
//   the others wait for a free connection.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { launch, until, watchErrors, artifacts } from "./lib.mjs";
import { Infra, have } from "./infra.mjs";

const N = 12;
const missing = ["redis-server", "nginx", "openssl"].filter((c) => !have(c));
const skip = missing.length ? `${missing.join(", ")} not installed (./scripts/setup.sh installs them from apt)` : false;
if (skip) console.log(`# SKIPPED: ${skip}`);

let infra;
let browser;
let context;
const table = [];

before(async () => {
  if (skip) return;
  infra = new Infra();
  const cert = join(infra.dir, "cert.pem");
  const key = join(infra.dir, "key.pem");
  const made = spawnSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { encoding: "utf8" });
  assert.equal(made.status, 0, `openssl: ${made.stderr}`);
  await infra.start({ tls: { cert, key }, accessLog: true });
  browser = await launch();
  // The certificate is self-signed: the context ignores certificate errors
  // (what chromedriver's --ignore-certificate-errors does).
  context = await browser.newContext({ ignoreHTTPSErrors: true });
});

after(async () => {
  await browser?.close();
  if (infra) {
    const logsTo = join(artifacts, "h2");
    await infra.stop({ logsTo });
    console.log(`# logs of redis, the replicas and nginx (access.log: port, $connection, $connection_requests, protocol, status, uri): ${logsTo}`);
  }
  if (table.length) {
    console.log("\nfront | protocol | TCP connections for the 12 streams | streams with events before the first run ended | last first event ms | first end ms");
    for (const r of table) console.log(`${r.front} | ${r.protocol} | ${r.connections} | ${r.concurrent} | ${r.lastFirstEvent} | ${r.firstEnd}`);
  }
});

/**
 * In one new tab of `origin`: creates N live task runs (admin API, on a replica)
 * and opens N concurrent fetch streams of them; resolves when every stream has
 * ended, with what each saw (ms since the streams started) and nginx's log lines of them.
 */
async function twelveStreams(origin, seed) {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${origin}/harness.html`);
  await page.evaluate(() => window.ready);
  const runs = [];
  for (let i = 0; i < N; i++) {
    // ~5 s of live events each (3 workers at speed 1): every stream is still going when the last one opens.
    const r = await infra.replicaApi(i % 2, "POST", "/api/admin/runs", { seed: seed + i, workers: 3, speed: 1 });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    runs.push(r.body.run_id);
  }
  const opts = runs.map((run) => ({
    runId: run,
    transport: "fetch",
    url: `/api/stream/runs/${run}`,
    snapshotUrl: `/api/runs/${run}/snapshot`,
    resume: "none",
    // Over HTTP/1.1 the 7th..12th requests wait in the browser for a free connection
    // (a run's length, ~5 s): no connect timeout and retry meanwhile.
    connectTimeoutMs: 30000,
  }));
  const seen = await page.evaluate((list) => new Promise((resolve) => {
    const t0 = performance.now();
    const rec = list.map((o) => ({ runId: o.runId, openAt: null, firstEventAt: null, endAt: null }));
    let left = list.length;
    const timer = setTimeout(() => resolve(rec), 40000);
    list.forEach((o, i) => {
      const s = new window.RunStream(o);
      const r = rec[i];
      const off = s.subscribe(() => {
        const snap = s.getSnapshot();
        const now = Math.round(performance.now() - t0);
        if (r.openAt === null && snap.status.connection === "open") r.openAt = now;
        if (r.firstEventAt === null && snap.metrics.eventsApplied > 0) r.firstEventAt = now;
        if (r.endAt === null && (snap.status.connection === "closed" || snap.status.connection === "failed")) {
          Object.assign(r, {
            endAt: now, connection: snap.status.connection, lastError: snap.status.lastError, runStatus: snap.state.status,
            cursor: snap.state.cursor, applied: snap.metrics.eventsApplied, reconnects: snap.metrics.reconnects,
          });
          off();
          s.close();
          if (--left === 0) { clearTimeout(timer); resolve(rec); }
        }
      });
      s.start();
    });
  }), opts);
  await page.close();
  assert.deepEqual(errors.filter((e) => !e.includes("listener threw")), []);
  for (const r of seen) {
    assert.equal(r.connection, "closed", `${r.runId}: ${JSON.stringify(r)}`);
    assert.equal(r.reconnects, 0, `${r.runId}: one request per stream: ${JSON.stringify(r)}`);
    const { body: server } = await infra.replicaApi(0, "GET", `/api/runs/${r.runId}/snapshot`);
    assert.equal(r.cursor, server.event_id, `${r.runId}: the whole run`);
    assert.equal(r.applied, r.cursor, `${r.runId}: every event once`);
  }
  // nginx logs a request when it ends, which may be just after the browser saw the end.
  const port = Number(new URL(origin).port);
  const logged = () => infra.accessLog().filter((l) => l.port === port && runs.some((run) => l.uri.startsWith(`/api/stream/runs/${run}`)));
  await until(() => logged().length >= N, 5000, 50);
  const lines = logged();
  assert.equal(lines.length, N, `one request per stream: ${JSON.stringify(lines)}`);
  for (const run of runs) assert.equal(lines.filter((l) => l.uri.startsWith(`/api/stream/runs/${run}?`) || l.uri === `/api/stream/runs/${run}`).length, 1, run);
  const firstEnd = Math.min(...seen.map((r) => r.endAt));
  const tab = infra.accessLog().filter((l) => l.port === port && !l.uri.startsWith("/api/stream/"));
  console.log(`# ${origin}: the page's other requests (${tab.length}) on connection(s) ${[...new Set(tab.map((l) => l.connection))]}, the streams on ${[...new Set(lines.map((l) => l.connection))]}`);
  return {
    seen,
    lines,
    connections: new Set(lines.map((l) => l.connection)),
    protocols: new Set(lines.map((l) => l.protocol)),
    firstEnd,
    lastFirstEvent: Math.max(...seen.map((r) => r.firstEventAt)),
    // Streams that had received events before any of the 12 ended.
    concurrent: seen.filter((r) => r.firstEventAt !== null && r.firstEventAt < firstEnd).length,
  };
}

test("12 concurrent fetch streams in one tab over HTTPS share one HTTP/2 connection; over HTTP/1.1 they need several and wait", { skip, timeout: 60000 }, async () => {
  const h2 = await twelveStreams(infra.tlsFront, 100);
  table.push({ front: "https (HTTP/2)", protocol: [...h2.protocols].join(","), connections: h2.connections.size,
    concurrent: h2.concurrent, lastFirstEvent: h2.lastFirstEvent, firstEnd: h2.firstEnd });
  assert.deepEqual([...h2.protocols], ["HTTP/2.0"]);
  assert.equal(h2.connections.size, 1, `one TCP connection for the 12 streams: ${JSON.stringify(h2.lines)}`);
  for (const r of h2.seen) assert.ok(r.openAt !== null && r.openAt <= r.firstEventAt, `${r.runId} reached open: ${JSON.stringify(r)}`);
  assert.equal(h2.concurrent, N, `every stream was open and receiving events before any finished: ${JSON.stringify(h2.seen)}`);

  const h1 = await twelveStreams(infra.front, 200);
  table.push({ front: "http (HTTP/1.1)", protocol: [...h1.protocols].join(","), connections: h1.connections.size,
    concurrent: h1.concurrent, lastFirstEvent: h1.lastFirstEvent, firstEnd: h1.firstEnd });
  assert.deepEqual([...h1.protocols], ["HTTP/1.1"]);
  // HTTP/1.1 carries one request at a time per connection: concurrent streams
  // need a connection each. (Not "at most 6 distinct": Chromium may close a
  // socket after a stream and open another, one logged 8 over the 12 streams.)
  assert.ok(h1.connections.size > 1, `HTTP/1.1 connections: ${JSON.stringify(h1.lines)}`);
  // Chromium's 6 connections per origin: the 7th..12th requests are sent only
  // once a stream has ended and freed its connection, so at most 6 streams had
  // events before the first run ended.
  assert.ok(h1.concurrent <= 6, `over HTTP/1.1 at most 6 streams at once: ${JSON.stringify(h1.seen)}`);
});

test("the WebSocket transport through the HTTPS port: nginx has no WebSocket over HTTP/2, the upgrade goes over HTTP/1.1 and the run converges", { skip, timeout: 30000 }, async () => {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${infra.tlsFront}/harness.html`);
  await page.evaluate(() => window.ready);
  const { body } = await infra.replicaApi(0, "POST", "/api/admin/runs", { seed: 300, workers: 2, instant: true });
  const run = body.run_id;
  const snap = await page.evaluate(([o]) => window.streamToEnd(o, 20000), [{
    runId: run, transport: "websocket", url: `/api/stream/runs/${run}`, wsUrl: "/api/ws", snapshotUrl: `/api/runs/${run}/snapshot`, resume: "none",
  }]);
  await page.close();
  const { body: server } = await infra.replicaApi(0, "GET", `/api/runs/${run}/snapshot`);
  assert.equal(snap.status.connection, "closed", JSON.stringify(snap.status));
  assert.equal(snap.state.cursor, server.event_id);
  assert.equal(snap.metrics.eventsApplied, snap.state.cursor);
  // nginx logs the upgrade when the socket closes (the page closed it).
  const port = Number(new URL(infra.tlsFront).port);
  const ws = () => infra.accessLog().filter((l) => l.port === port && l.uri === "/api/ws");
  await until(() => ws().length >= 1, 5000, 50);
  assert.deepEqual(ws().map((l) => [l.protocol, l.status]), [["HTTP/1.1", 101]]);
  assert.deepEqual(errors.filter((e) => !e.includes("listener threw")), []);
});
