// A rolling restart (issue 26): two gateway replicas on Redis behind nginx
// (deploy/nginx.conf), 1,000 SSE clients (node, resuming as PROTOCOL §2a
// says: `retry:`, then `Last-Event-ID`) over 50 live runs, plus the library
// in Chromium on fetch, sse and websocket. SIGTERM replica 0 (it drains: SSE
// ends with `retry: 250`, WebSocket closes 1012), start it again, then the
// same for replica 1. Every client resumes on the other replica and ends with
// every event exactly once; the resume times (stream end → next 200) are
// printed as p50/p99. ROLLING_CLIENTS=N for another client count.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { request } from "node:http";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { launch, until, watchErrors, artifacts } from "./lib.mjs";
import { Infra, have } from "./infra.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const CLIENTS = Number(process.env.ROLLING_CLIENTS || 1000);
const RUNS = 50;
const RATE = 20;
const TOKENS = 300; // 15 s of production per run
const EVENTS_PER_RUN = TOKENS + 4;
const TRANSPORTS = ["fetch", "sse", "websocket"];
const missing = ["redis-server", "nginx"].filter((c) => !have(c));
const skip = missing.length ? `${missing.join(" and ")} not installed (./scripts/setup.sh installs them from apt)` : false;
if (skip) console.log(`# SKIPPED: ${skip}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let infra;
let browser;
let page;
let errors;

before(async () => {
  if (skip) return;
  infra = await new Infra().start();
  browser = await launch();
  const context = await browser.newContext();
  page = await context.newPage();
  errors = watchErrors(page);
  await page.goto(`${infra.front}/harness.html`);
  await page.evaluate(() => window.ready);
});

after(async () => {
  await browser?.close();
  if (infra) await infra.stop({ logsTo: join(artifacts, "rolling") });
});

/** One resuming SSE client through nginx: every event once, in order, across any number of streams. */
function sseClient(port, run, stats) {
  return new Promise((resolve) => {
    let last = 0;
    let retryMs = 1000;
    let endedAt = null;
    const connect = () => {
      const headers = last ? { "Last-Event-ID": String(last) } : {};
      const req = request({ host: "127.0.0.1", port, path: `/api/stream/runs/${run}`, headers, agent: false }, (res) => {
        if (res.statusCode === 204) { res.resume(); return finish(); }
        if (res.statusCode !== 200) {
          stats.refused[res.statusCode] = (stats.refused[res.statusCode] ?? 0) + 1;
          res.resume();
          return again(100);
        }
        if (endedAt !== null) { stats.resumeMs.push(Date.now() - endedAt); endedAt = null; }
        stats.streams++;
        let buf = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          buf += chunk;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const r = /^retry: (\d+)$/m.exec(frame);
            if (r) { retryMs = Number(r[1]); stats.retries[r[1]] = (stats.retries[r[1]] ?? 0) + 1; }
            const m = /"event_id":(\d+)/.exec(frame);
            if (!m) continue;
            const id = Number(m[1]);
            if (id <= last) { stats.dups++; continue; }
            if (id !== last + 1) stats.lost += id - last - 1;
            last = id;
            stats.events++;
          }
        });
        res.on("end", () => (last >= EVENTS_PER_RUN ? finish() : again(retryMs)));
        res.on("error", () => again(retryMs));
      });
      req.on("error", () => again(100));
      req.setTimeout(60000, () => req.destroy());
      req.end();
    };
    const again = (ms) => {
      if (endedAt === null) endedAt = Date.now();
      setTimeout(connect, ms);
    };
    const finish = () => {
      stats.lost += Math.max(0, EVENTS_PER_RUN - last);
      resolve(last);
    };
    connect();
  });
}

const pct = (s, p) => (s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : null);

/** SIGTERM replica `i`, wait for its exit (a drain), start it again. */
async function rollReplica(i) {
  const t0 = Date.now();
  infra.replicas[i].kill("SIGTERM");
  const { code, signal } = await infra.replicas[i].exited;
  const drainMs = Date.now() - t0;
  await infra.startReplica(i);
  // nginx keeps a failed upstream out for fail_timeout (2 s): let it back in before the next one goes.
  await sleep(2100);
  return { code, signal, drainMs };
}

test(`rolling restart with SIGTERM: ${CLIENTS} SSE clients and the library on fetch, sse and websocket resume, nothing lost or doubled`, { skip, timeout: 120000 }, async () => {
  const startAt = Date.now() + 4000;
  const producer = infra.track(spawn(bin, ["produce", "--store", infra.redisUrl, "--runs", String(RUNS), "--tokens", String(TOKENS),
    "--rate", String(RATE), "--start-at-ms", String(startAt)], { cwd: root, stdio: ["ignore", "pipe", "pipe"] }), "producer-rolling");
  const runs = await new Promise((resolve, reject) => {
    const ids = [];
    let buf = "";
    const t = setTimeout(() => reject(new Error(`only ${ids.length} runs created`)), 15000);
    producer.stdout.on("data", (d) => {
      buf += d;
      for (let i; (i = buf.indexOf("\n")) >= 0;) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (l.includes("produce.created")) ids.push(JSON.parse(l).run_id);
        if (ids.length === RUNS) { clearTimeout(t); resolve(ids); }
      }
    });
  });
  const stats = { events: 0, dups: 0, lost: 0, streams: 0, refused: {}, retries: {}, resumeMs: [] };
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    clients.push(sseClient(infra.frontPort, runs[i % RUNS], stats));
    if (i % 100 === 99) await sleep(10);
  }
  const browserRuns = TRANSPORTS.map((t, k) => ({
    runId: runs[k], transport: t, url: `/api/stream/runs/${runs[k]}`, wsUrl: "/api/ws", snapshotUrl: `/api/runs/${runs[k]}/snapshot`,
    resume: "none", backoff: { initialMs: 50, maxMs: 400, multiplier: 2 },
  }));
  const inBrowser = page.evaluate((list) => Promise.all(list.map((o) => window.streamToEnd(o, 90000))), browserRuns);
  // Mid-production: roll replica 0, then replica 1.
  while (Date.now() < startAt + 3000) await sleep(50);
  const rolled = [await rollReplica(0), await rollReplica(1)];
  const lasts = await Promise.all(clients);
  const snaps = await inBrowser;
  const resume = stats.resumeMs.sort((a, b) => a - b);
  console.log(`# rolling restart: ${CLIENTS} SSE clients over ${RUNS} runs + ${TRANSPORTS.length} browser streams; drains ${rolled.map((r) => `${r.drainMs} ms`).join(", ")}`);
  console.log(`# events ${stats.events} / ${CLIENTS * EVENTS_PER_RUN}, lost ${stats.lost}, duplicates ${stats.dups}, streams ${stats.streams}, refused ${JSON.stringify(stats.refused)}, retry: values seen ${JSON.stringify(stats.retries)}`);
  console.log(`# resume (stream end → next 200): n ${resume.length}, p50 ${pct(resume, 50)} ms, p99 ${pct(resume, 99)} ms, max ${resume[resume.length - 1] ?? "—"} ms`);
  for (const [k, s] of snaps.entries()) {
    console.log(`# browser ${TRANSPORTS[k]}: connection ${s.status.connection}, cursor ${s.state.cursor}, reconnects ${s.metrics.reconnects}, duplicates dropped ${s.metrics.duplicatesDropped}, terminations ${JSON.stringify(s.metrics.terminations)}`);
  }
  for (const r of rolled) assert.equal(r.code, 0, `a drained replica exits 0: ${JSON.stringify(r)}`);
  assert.equal(stats.lost, 0);
  assert.equal(stats.dups, 0);
  assert.ok(lasts.every((l) => l === EVENTS_PER_RUN), "every client reached run.completed");
  assert.equal(stats.events, CLIENTS * EVENTS_PER_RUN);
  assert.ok((stats.retries["250"] ?? 0) >= 1, "drained streams ended with retry: 250");
  assert.ok(resume.length >= CLIENTS, `every client resumed at least once (${resume.length})`);
  for (const [k, s] of snaps.entries()) {
    assert.equal(s.status.connection, "closed", `${TRANSPORTS[k]}: ${JSON.stringify(s.status)}`);
    assert.equal(s.state.cursor, EVENTS_PER_RUN, TRANSPORTS[k]);
    assert.equal(s.metrics.eventsApplied, EVENTS_PER_RUN, `${TRANSPORTS[k]}: every event applied once`);
    assert.equal(s.metrics.gapsSkipped, 0);
    assert.ok(s.metrics.reconnects >= 1, `${TRANSPORTS[k]} resumed: ${JSON.stringify(s.metrics.terminations)}`);
  }
  await until(() => producer.exitCode !== null, 20000, 100);
  // Chromium logs each refused WebSocket handshake as a console error.
  const expected = (e) => e.includes("listener threw") || /WebSocket connection to .* failed/.test(e);
  assert.deepEqual(errors.filter((e) => !expected(e)), []);
});
