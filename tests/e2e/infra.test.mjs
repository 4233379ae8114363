// End to end through real infrastructure (issue 15): a real redis-server, two
// API replicas of the reference server on `--store redis`, runs produced by a
// separate producer process, chat replies by a separate chat worker, and
// Debian's nginx in front, configured from deploy/nginx.conf. Chromium loads
// the harness page through nginx, so every request and resume goes through it.
// Everything is started here on free loopback ports in one temporary directory
// and stopped in `after` (also when a test fails). `STORE=cluster` runs the same
// scenarios on a 3-master Redis Cluster (`--store redis-cluster://…`) instead.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, until, watchErrors, artifacts } from "./lib.mjs";
import { Infra, have } from "./infra.mjs";

const TRANSPORTS = ["fetch", "sse", "websocket"];
const missing = ["redis-server", "nginx", ...(process.env.STORE === "cluster" ? ["redis-cli"] : [])].filter((c) => !have(c));
const skip = missing.length ? `${missing.join(" and ")} not installed (./scripts/setup.sh installs them from apt)` : false;
if (skip) console.log(`# SKIPPED: ${skip}`);

let infra;
let browser;
let context;
let page;
let errors;
const table = [];

before(async () => {
  if (skip) return;
  infra = await new Infra().start();
  browser = await launch();
  context = await browser.newContext();
  page = await context.newPage();
  errors = watchErrors(page);
  await page.goto(`${infra.front}/harness.html`);
  await page.evaluate(() => window.ready);
});

after(async () => {
  await browser?.close();
  if (infra) {
    const logsTo = join(artifacts, "infra");
    await infra.stop({ logsTo });
    console.log(`# logs of redis, the replicas, producers, the chat worker and nginx: ${logsTo}`);
  }
  if (table.length) {
    console.log("\nscenario | transport | served by → resumed on | reconnects | duplicates dropped | events applied / cursor | ttfe ms");
    for (const r of table) console.log(`${r.scenario} | ${r.transport} | ${r.route ?? "—"} | ${r.rec} | ${r.dup} | ${r.applied}/${r.cursor} | ${r.ttfe ?? "—"}`);
  }
});

async function front(method, path, body) {
  const r = await fetch(infra.front + path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : undefined,
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(5000),
  });
  const t = await r.text();
  return { status: r.status, body: t ? JSON.parse(t) : null, text: t };
}

function opts(run, transport, extra = {}) {
  return {
    runId: run,
    transport,
    url: `/api/stream/runs/${run}`,
    wsUrl: "/api/ws",
    snapshotUrl: `/api/runs/${run}/snapshot`,
    resume: "none",
    backoff: { initialMs: 50, maxMs: 400, multiplier: 2 },
    ...extra,
  };
}

/** The client's final state equals the store's snapshot, every event applied exactly once. */
async function assertConverged(run, snap, label) {
  const { body: server } = await front("GET", `/api/runs/${run}/snapshot`);
  assert.equal(snap.status.connection, "closed", `${label}: ${JSON.stringify(snap.status)} ${snap.status.lastError ?? ""}`);
  assert.equal(snap.state.cursor, server.event_id, `${label}: cursor`);
  assert.equal(snap.state.status, server.state.status, `${label}: run status`);
  assert.deepEqual(
    snap.state.workers.map((w) => [w.workerId, w.jobId, w.name, w.status, w.tools.map((t) => [t.toolCallId, t.name, t.status])]),
    server.state.workers.map((w) => [w.worker_id, w.job_id, w.name, w.status, w.tools.map((t) => [t.tool_call_id, t.name, t.status])]),
    `${label}: workers`,
  );
  assert.deepEqual(snap.state.supervisor, { completed: server.state.supervisor.completed, summary: server.state.supervisor.summary });
  // Nothing lost, nothing applied twice: ids 1..cursor each applied once, no snapshot needed.
  assert.equal(snap.metrics.eventsApplied, snap.state.cursor, `${label}: events applied`);
  assert.equal(snap.metrics.gapsSkipped, 0, `${label}: gaps skipped`);
}

for (const [k, transport] of TRANSPORTS.entries()) {
  test(`kill the replica serving the client mid-run: the resume lands on the other one through nginx (${transport})`, { skip, timeout: 60000 }, async () => {
    const { runId } = await infra.produce(["--seed", String(40 + k), "--workers", "5", "--speed", "1.5"]);
    const p = page.evaluate(([o]) => window.streamToEnd(o, 45000), [opts(runId, transport)]);
    const reached = await until(() => page.evaluate(() => window.current && window.current.getSnapshot().state.cursor >= 5), 15000, 50);
    assert.ok(reached, "the client got its first events");
    const victim = await infra.servingReplica(runId);
    assert.notEqual(victim, null, "a replica serves the stream");
    const survivor = 1 - victim;
    await infra.killReplica(victim);
    const snap = await p;
    const survived = await infra.replicaApi(survivor, "GET", `/api/admin/runs/${runId}/stats`);
    table.push({ scenario: "kill serving replica", transport, route: `${victim} → ${survivor}`, rec: snap.metrics.reconnects,
      dup: snap.metrics.duplicatesDropped, applied: snap.metrics.eventsApplied, cursor: snap.state.cursor });
    await assertConverged(runId, snap, `failover/${transport}`);
    assert.ok(snap.metrics.reconnects >= 1, JSON.stringify(snap.metrics));
    assert.ok(survived.body.connections_total >= 1, `the survivor served the resume: ${JSON.stringify(survived.body)}`);
    await infra.startReplica(victim);
    // nginx keeps a failed upstream out for fail_timeout (2 s, deploy/nginx.conf): let it
    // back in, so the next test's failover does not find both replicas marked down.
    await new Promise((r) => setTimeout(r, 2100));
  });
}

test("a chat send retried against the other replica is accepted once, and answered once", { skip, timeout: 60000 }, async () => {
  const session = `chat_${Date.now()}`;
  const body = { client_request_id: "crid-failover-1", content: "hello" };
  // Accepted by replica 0 (its answer lost to the client, say), then replica 0 dies.
  const first = await infra.replicaApi(0, "POST", `/api/chat/${session}/messages`, body);
  assert.equal(first.status, 202);
  await infra.killReplica(0);
  // The retry goes through nginx, which can only reach replica 1.
  const retry = await front("POST", `/api/chat/${session}/messages`, body);
  assert.equal(retry.status, 202, retry.text);
  assert.deepEqual(retry.body, first.body, "same message id, same run");
  const ones = await infra.replicaApi(1, "GET", `/api/admin/runs/${session}/stats`);
  assert.equal(ones.status, 200);
  // A client on the session (through nginx) sees one user message and one reply (the chat worker's).
  const seen = await page.evaluate(async ([o]) => {
    const s = new window.RunStream(o);
    s.start();
    const end = Date.now() + 20000;
    while (Date.now() < end) {
      const st = s.getSnapshot().state;
      if (st.messages.some((m) => m.role === "assistant" && m.status === "completed")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const snap = s.getSnapshot();
    s.close();
    return snap.state.messages.map((m) => ({ role: m.role, crid: m.clientRequestId ?? null, replyTo: m.replyTo ?? null, status: m.status }));
  }, [opts(session, "fetch", { sendUrl: `/api/chat/${session}/messages` })]);
  assert.deepEqual(seen, [
    { role: "user", crid: "crid-failover-1", replyTo: null, status: "completed" },
    { role: "assistant", crid: null, replyTo: "crid-failover-1", status: "completed" },
  ]);
  const { body: snap } = await front("GET", `/api/runs/${session}/snapshot`);
  assert.equal(snap.state.messages.filter((m) => m.role === "user").length, 1);
  await infra.startReplica(0);
});

test("restart both replicas mid-run: the log survives in Redis and every client resumes", { skip, timeout: 90000 }, async () => {
  const { runId } = await infra.produce(["--seed", "51", "--workers", "6", "--speed", "1.2"]);
  const all = page.evaluate((list) => Promise.all(list.map((o) => window.streamToEnd(o, 60000))), TRANSPORTS.map((t) => opts(runId, t)));
  const started = await until(async () => (await front("GET", `/api/admin/runs/${runId}/stats`)).body?.last_event_id >= 6, 15000, 50);
  assert.ok(started);
  // A deploy: both replicas stop (graceful SIGTERM), nginx answers 502 meanwhile, both come back.
  for (const i of [0, 1]) infra.replicas[i].kill("SIGTERM");
  await Promise.all([0, 1].map((i) => infra.replicas[i].exited));
  await new Promise((r) => setTimeout(r, 1000));
  const lastWhileDown = (await fetch(`${infra.front}/api/admin/runs/${runId}/stats`)).status;
  assert.equal(lastWhileDown, 502, "nothing behind nginx");
  await Promise.all([0, 1].map((i) => infra.startReplica(i)));
  const snaps = await all;
  for (const [i, snap] of snaps.entries()) {
    table.push({ scenario: "restart both replicas", transport: TRANSPORTS[i], rec: snap.metrics.reconnects,
      dup: snap.metrics.duplicatesDropped, applied: snap.metrics.eventsApplied, cursor: snap.state.cursor });
    await assertConverged(runId, snap, `restart/${TRANSPORTS[i]}`);
    assert.ok(snap.metrics.reconnects >= 1, `${TRANSPORTS[i]}: ${JSON.stringify(snap.metrics.terminations)}`);
  }
});

test("a misconfigured proxy location (buffering on) delays first bytes: timeToFirstEventMs and termination reasons show it", { skip, timeout: 90000 }, async () => {
  const bad = await context.newPage();
  const badErrors = watchErrors(bad);
  await bad.goto(`${infra.misconfigured}/harness.html`);
  await bad.evaluate(() => window.ready);
  // A token stream of ~200-byte events at 8/s: the buffering front holds them until ~4 KB pile up.
  const run = async (pg, extra) => {
    const { runId } = await infra.produce(["--tokens", "40", "--rate", "8"]);
    const snap = await pg.evaluate(([o]) => window.streamToEnd(o, 40000), [opts(runId, "fetch", extra)]);
    return { runId, snap };
  };
  const [good, buffered] = await Promise.all([run(page, {}), run(bad, {})]);
  const ttfe = (s) => Math.round(s.snap.metrics.timeToFirstEventMs);
  table.push({ scenario: "streaming location", transport: "fetch", rec: good.snap.metrics.reconnects, dup: good.snap.metrics.duplicatesDropped,
    applied: good.snap.metrics.eventsApplied, cursor: good.snap.state.cursor, ttfe: ttfe(good) });
  table.push({ scenario: "buffering location", transport: "fetch", rec: buffered.snap.metrics.reconnects, dup: buffered.snap.metrics.duplicatesDropped,
    applied: buffered.snap.metrics.eventsApplied, cursor: buffered.snap.state.cursor, ttfe: ttfe(buffered) });
  for (const r of [good, buffered]) assert.equal(r.snap.status.connection, "closed", JSON.stringify(r.snap.status));
  assert.ok(ttfe(good) < 1000, `through the streaming location: ${ttfe(good)} ms`);
  assert.ok(ttfe(buffered) >= 1500 && ttfe(buffered) > ttfe(good) + 1000, `through the buffering location: ${ttfe(buffered)} ms`);
  // With a heartbeat watchdog shorter than the buffering delay, the client names what it saw:
  // no byte after the response opened → heartbeat_timeout, then it resumes and still converges.
  const watched = await run(bad, { heartbeatTimeoutMs: 1200 });
  table.push({ scenario: "buffering, 1.2 s watchdog", transport: "fetch", rec: watched.snap.metrics.reconnects, dup: watched.snap.metrics.duplicatesDropped,
    applied: watched.snap.metrics.eventsApplied, cursor: watched.snap.state.cursor, ttfe: ttfe(watched) });
  assert.equal(watched.snap.status.connection, "closed", JSON.stringify(watched.snap.status));
  assert.ok((watched.snap.metrics.terminations.heartbeat_timeout ?? 0) >= 1, JSON.stringify(watched.snap.metrics.terminations));
  const { body: server } = await front("GET", `/api/runs/${watched.runId}/snapshot`);
  assert.equal(watched.snap.state.cursor, server.event_id);
  await bad.close();
  assert.deepEqual(badErrors.filter((e) => !e.includes("listener threw")), []);
});

test("the demo's diagnostics panel names the likely cause behind the buffering location, and nothing behind the good one", { skip, timeout: 60000 }, async () => {
  const cause = async (origin) => {
    const p = await context.newPage();
    const errs = watchErrors(p);
    await p.goto(`${origin}/?transport=fetch`);
    await p.waitForFunction(() => document.getElementById("wasm-status").textContent === "wasm loaded", null, { timeout: 10000 });
    // The demo's diagnostics are the runstream/devtools panel: the task stream's "likely cause".
    const read = () => p.evaluate(() =>
      document.getElementById("devtools")?.shadowRoot?.querySelector('section[data-label="task"] [data-part="cause"]')?.textContent ?? null);
    return { p, errs, read };
  };
  const bad = await cause(infra.misconfigured);
  const named = await until(async () => /proxy buffering the stream's location/.test((await bad.read()) ?? ""), 15000, 200);
  const badText = await bad.read();
  const good = await cause(infra.front);
  // window.runstreamDemo is set only after the demo created its run (an await after "wasm loaded").
  await until(() => good.p.evaluate(() => (window.runstreamDemo?.task.getSnapshot().metrics.eventsApplied ?? 0) >= 3), 15000, 100);
  await new Promise((r) => setTimeout(r, 3000)); // past the "no event yet" threshold
  const goodText = await good.read();
  console.log(`# likely cause — buffering location: ${badText}; streaming location: ${goodText}`);
  assert.ok(named, `buffering location: ${badText}`);
  assert.equal(goodText, "—");
  await bad.p.close();
  await good.p.close();
  assert.deepEqual([...bad.errs, ...good.errs].filter((e) => !e.includes("listener threw")), []);
});

test("deploy/nginx.conf keeps /metrics (no authorization) off the public front; a replica serves it on its own port", { skip }, async () => {
  const front = await fetch(`${infra.front}/metrics`);
  assert.equal(front.status, 404);
  assert.doesNotMatch(await front.text(), /runstream_/);
  const direct = await fetch(`http://127.0.0.1:${infra.replicaPorts[0]}/metrics`);
  assert.equal(direct.status, 200);
  assert.match(await direct.text(), /runstream_/);
});

test("no page errors, and the replicas really used Redis", { skip }, async () => {
  const info = await infra.redisUsedMemory();
  assert.equal(info.store, infra.store === "cluster" ? "redis-cluster" : "redis");
  assert.ok(info.used_memory > 0);
  // Chromium logs each refused WebSocket handshake (nginx's 502 while no replica was up) as a console error.
  const expected = (e) => e.includes("listener threw") || /WebSocket connection to .* failed: .*502/.test(e);
  assert.deepEqual(errors.filter((e) => !expected(e)), []);
});
