// "Quiet is healthy" and "Sends survive everything" (../../shared/spec/API.md),
// checked from outside against spec-server.mjs: an independent server that
// does what PROTOCOL.md says and nothing friendlier (no first byte after its
// SSE headers until the first heartbeat, 15 s apart; no WebSocket frame
// unasked). Each case is one spec sentence; run with --test-concurrency=1.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, until, watchErrors } from "./lib.mjs";
import { startSpecServer } from "./spec-server.mjs";

const TRANSPORTS = ["fetch", "sse", "websocket"];
const STALL_AFTER_MS = 2000; // API.md default
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let srv;
let browser;

before(async () => {
  srv = await startSpecServer({ heartbeatMs: 15000 });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await srv?.close();
});

async function ctl(method, path, body) {
  const r = await fetch(`${srv.url}/_ctl${path}`, { method, body: body ? JSON.stringify(body) : undefined });
  if (!r.ok) throw new Error(`${method} /_ctl${path}: HTTP ${r.status}`);
  return r.json();
}
const ev = (type, payload) => ({ type, payload });
const append = (run, events) => ctl("POST", `/runs/${run}/events`, { events });
const stats = (run) => ctl("GET", `/runs/${run}`);
const sendsOf = async (crid) => (await ctl("GET", "/sends")).filter((s) => s.client_request_id === crid);
let nextRun = 0;
async function newRun(events = [], session) {
  const { run_id } = await ctl("POST", "/runs", { run_id: `run_q${++nextRun}_${Date.now().toString(36)}`, session });
  if (events.length) await append(run_id, events);
  return run_id;
}
/** An assistant reply: created (no reply_to), one delta per token, completed. */
const reply = (id, tokens) => [
  ev("message.created", { message_id: id, role: "assistant", content: "" }),
  ...tokens.map((delta) => ev("message.delta", { message_id: id, delta })),
  ev("message.completed", { message_id: id, finish_reason: "stop" }),
];

const opts = (run, transport, extra = {}) => ({
  runId: run,
  transport,
  url: `/api/stream/runs/${run}`,
  wsUrl: "/api/ws",
  snapshotUrl: `/api/runs/${run}/snapshot`,
  ...extra,
});
const serverKind = (transport) => (transport === "websocket" ? "websocket" : "sse");

async function openPage(path = "/harness.html") {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(srv.url + path);
  if (path.startsWith("/harness")) await page.evaluate(() => window.ready);
  return { context, page, errors };
}
const follow = (page, key, o) => page.evaluate(([k, o]) => window.follow(k, o), [key, o]);
const peek = (page, key) => page.evaluate((k) => window.peek(k), key);

/** Connection values in order, consecutive repeats merged. */
const connections = (samples) => samples.map((s) => s.c).filter((c, i, a) => i === 0 || c !== a[i - 1]);
const timeline = (samples) => {
  const t0 = samples[0]?.t ?? 0;
  return samples.map((s) => `${s.c}/${s.a}@${((s.t - t0) / 1000).toFixed(1)}s`).join(" → ");
};
/** One line of what was observed, for the log and for assertion messages. */
function observed(label, st, view, kind) {
  const m = view.snap.metrics;
  return `${label}: ${st.connections[kind]} connection(s) (last_event_id ${st.conns.map((c) => c.last_event_id).join(",")}), ` +
    `reconnects ${m.reconnects}, terminations ${JSON.stringify(m.terminations)}, lastError ${JSON.stringify(view.snap.status.lastError)}; ` +
    `status ${timeline(view.samples)}`;
}

/**
 * What API.md's "Quiet is healthy" asks of a stream that became open `opens`
 * times: the server counted `conns` connections, the client reconnected
 * `opens - 1` times (one termination per reconnect) and is open now.
 */
function quietProblems(st, view, kind, { conns, opens }) {
  const p = [];
  const m = view.snap.metrics;
  const seq = connections(view.samples);
  const terminations = Object.values(m.terminations).reduce((a, b) => a + b, 0);
  if (st.connections[kind] !== conns) p.push(`server counted ${st.connections[kind]} connections, expected ${conns}`);
  if (m.reconnects !== opens - 1) p.push(`metrics.reconnects ${m.reconnects}, expected ${opens - 1}`);
  if (terminations !== opens - 1) p.push(`terminations ${JSON.stringify(m.terminations)}, expected ${opens - 1} in all`);
  // Notifications come at most once per animation frame, and API.md sends the first
  // reconnect after a healthy connection at once (0-100 ms jitter): a reconnect that
  // completes within one frame is never seen as anything but "open". So the samples
  // may show fewer opens than there were (the counters above count each one), never more.
  const openRuns = seq.filter((c) => c === "open").length;
  if (openRuns < 1 || openRuns > opens) p.push(`status.connection became "open" ${openRuns} times, expected 1 to ${opens} (${seq.join(" → ")})`);
  if (view.snap.status.connection !== "open") p.push(`status.connection is "${view.snap.status.connection}" at the end`);
  return p;
}
/** Runs `check` per transport, logs each observed line, and fails once with every problem. */
async function perTransport(check) {
  const results = await Promise.all(TRANSPORTS.map(async (t) => ({ t, ...(await check(t)) })));
  for (const r of results) console.log(r.line);
  const bad = results.filter((r) => r.problems.length);
  assert.deepEqual(bad.map((r) => `${r.t}: ${r.problems.join("; ")}`), [], bad.map((r) => r.line).join("\n"));
}

test("a. an idle run keeps one connection for 40 s on fetch, sse and websocket (heartbeats every 15 s, silent after headers)", { timeout: 90000 }, async () => {
  const { context, page, errors } = await openPage();
  try {
    await perTransport(async (t) => {
      const run = await newRun();
      await follow(page, t, opts(run, t, { resume: "none" }));
      await sleep(40000);
      const [st, view] = [await stats(run), await peek(page, t)];
      return { line: observed(`idle 40 s / ${t}`, st, view, serverKind(t)), problems: quietProblems(st, view, serverKind(t), { conns: 1, opens: 1 }) };
    });
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("b. a server-ended connection on an idle run is resumed exactly once, then holds", { timeout: 90000 }, async () => {
  const { context, page, errors } = await openPage();
  try {
    await perTransport(async (t) => {
      const run = await newRun([ev("run.started", {})]);
      await follow(page, t, opts(run, t, { resume: "none" }));
      await until(async () => (await peek(page, t)).snap.state.cursor === 1 && (await stats(run)).open === 1, 5000);
      await sleep(1000);
      const { ended } = await ctl("POST", `/runs/${run}/end`);
      await until(async () => (await stats(run)).connections[serverKind(t)] >= 2, 8000);
      await sleep(20000);
      const [st, view] = [await stats(run), await peek(page, t)];
      const problems = quietProblems(st, view, serverKind(t), { conns: 2, opens: 2 });
      if (ended !== 1) problems.unshift(`the server ended ${ended} streams, expected 1`);
      if (st.conns[1] && st.conns[1].last_event_id !== 1) problems.push(`resumed with last_event_id ${st.conns[1].last_event_id}, expected 1`);
      return { line: observed(`server-ended once / ${t}`, st, view, serverKind(t)), problems };
    });
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("c. a send refused with 503 survives a reload: re-sent with the same client_request_id, accepted once, shown once", { timeout: 60000 }, async () => {
  const session = `sess_c_${Date.now().toString(36)}`;
  const run = await newRun([ev("run.started", {})], session);
  const o = opts(run, "fetch", { sendUrl: `/api/chat/${session}/messages`, backoff: { initialMs: 200, maxMs: 1000, multiplier: 2 } });
  const { context, page, errors } = await openPage();
  try {
    await ctl("POST", "/sends", { on: true });
    await follow(page, "c", o);
    await until(async () => (await peek(page, "c")).snap.state.cursor === 1, 5000);
    const crid = await page.evaluate(() => window.sendOn("c", "hello from c"));
    assert.ok(await until(async () => (await sendsOf(crid)).some((s) => s.status === 503), 5000), "the first page tried the send (and got 503)");
    await sleep(300);
    const reloadedAt = Date.now();
    await page.reload();
    await page.evaluate(() => window.ready);
    const restored = await follow(page, "c", o);
    console.log(`after the reload, before start: ${JSON.stringify(restored.state.messages)}`);
    await sleep(800);
    await ctl("POST", "/sends", { on: false });
    const accepted = await until(async () => (await sendsOf(crid)).some((s) => s.status === 202), 10000);
    const echo = (await stats(run)).log.find((e) => e.type === "message.created" && e.payload.client_request_id === crid);
    if (echo) await until(async () => (await peek(page, "c")).snap.state.cursor >= echo.event_id, 5000);
    await sleep(1000); // room for a late duplicate to show
    const view = await peek(page, "c");
    const all = (await ctl("GET", "/sends")).filter((s) => s.session === session);
    const mine = view.snap.state.messages.filter((m) => m.role === "user");
    console.log(`sends received: ${all.map((s) => `${s.client_request_id.slice(0, 8)}…→${s.status}${s.at > reloadedAt ? " (after reload)" : ""}`).join(", ")}`);
    console.log(`user messages shown: ${JSON.stringify(mine)}; status ${timeline(view.samples)}`);
    assert.deepEqual([...new Set(all.map((s) => s.client_request_id))], [crid], "every send carried the one client_request_id");
    assert.ok(accepted && all.some((s) => s.at > reloadedAt && s.status === 202), `the reloaded page re-sent it and it was accepted: ${JSON.stringify(all)}`);
    assert.equal(all.filter((s) => s.first).length, 1, "accepted once");
    assert.equal((await stats(run)).log.filter((e) => e.payload.client_request_id === crid).length, 1, "echoed once");
    assert.equal(mine.length, 1, `shown exactly once: ${JSON.stringify(mine)}`);
    assert.equal(mine[0].clientRequestId, crid);
    assert.equal(mine[0].content, "hello from c");
    assert.deepEqual(errors, []);
  } finally {
    await ctl("POST", "/sends", { on: false });
    await context.close();
  }
});

test("d. a reply without reply_to ends \"working\": activity is idle within stallAfterMs + 1 s of its completion", { timeout: 30000 }, async () => {
  const session = `sess_d_${Date.now().toString(36)}`;
  const run = await newRun([ev("run.started", {})], session);
  const { context, page, errors } = await openPage();
  try {
    await follow(page, "d", opts(run, "fetch", { resume: "none", sendUrl: `/api/chat/${session}/messages`, stallAfterMs: STALL_AFTER_MS }));
    await until(async () => (await peek(page, "d")).snap.state.cursor === 1, 5000);
    const crid = await page.evaluate(() => window.sendOn("d", "question d"));
    assert.ok(await until(async () => (await sendsOf(crid)).some((s) => s.status === 202), 5000), "the send was accepted");
    await sleep(300);
    for (const e of reply("m_asst_d", ["Hel", "lo ", "there"])) {
      await append(run, [e]);
      await sleep(100);
    }
    const last = (await stats(run)).log.length;
    await until(async () => (await peek(page, "d")).snap.state.cursor === last, 5000);
    await sleep(STALL_AFTER_MS + 1000);
    const a1 = (await peek(page, "d")).snap.status.activity;
    await sleep(1500);
    const view = await peek(page, "d");
    console.log(`activity after the reply: ${a1}, then ${view.snap.status.activity}; status ${timeline(view.samples)}`);
    const asst = view.snap.state.messages.find((m) => m.role === "assistant");
    assert.equal(asst?.content, "Hello there");
    assert.equal(asst?.status, "completed");
    assert.equal(a1, "idle", `activity ${STALL_AFTER_MS + 1000} ms after the reply completed: ${timeline(view.samples)}`);
    assert.equal(view.snap.status.activity, "idle", `activity later: ${timeline(view.samples)}`);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("e. under Content-Security-Policy script-src 'self' 'wasm-unsafe-eval' a run streams to completion on every transport", { timeout: 60000 }, async () => {
  const results = await Promise.all(TRANSPORTS.map(async (t) => {
    const run = await newRun([ev("run.started", {}), ...reply("m_csp", ["strict ", "CSP "]).slice(0, 3)]);
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = watchErrors(page);
    try {
      await page.goto(`${srv.url}/csp.html?run=${run}&transport=${t}`);
      await until(async () => (await stats(run)).open === 1, 10000);
      await append(run, [ev("message.delta", { message_id: "m_csp", delta: "holds" }), ev("message.completed", { message_id: "m_csp", finish_reason: "stop" }), ev("run.completed", { status: "succeeded" })]);
      const r = await page.evaluate(() => window.cspResult);
      return { t, r, errors };
    } finally {
      await context.close();
    }
  }));
  const problems = [];
  for (const { t, r, errors } of results) {
    const s = r.snap;
    const m = s?.state.messages.find((x) => x.messageId === "m_csp");
    console.log(`csp / ${t}: connection ${s?.status.connection}, run ${s?.state.status}, message ${JSON.stringify(m?.content)}, violations ${JSON.stringify(r.violations)}, page errors ${JSON.stringify([...r.errors, ...errors])}`);
    if (s?.status.connection !== "closed") problems.push(`${t}: connection ${s?.status.connection} (${s?.status.lastError})`);
    if (s?.state.status !== "succeeded") problems.push(`${t}: run status ${s?.state.status}`);
    if (m?.content !== "strict CSP holds" || m?.status !== "completed") problems.push(`${t}: message ${JSON.stringify(m)}`);
    if (r.violations.length) problems.push(`${t}: CSP violations ${JSON.stringify(r.violations)}`);
    if (r.errors.length || errors.length) problems.push(`${t}: errors ${JSON.stringify([...r.errors, ...errors])}`);
  }
  assert.deepEqual(problems, []);
});

test("f. a resume with nothing to replay stays open for 30 s without reconnecting (server silent after headers)", { timeout: 90000 }, async () => {
  const { context, page, errors } = await openPage();
  try {
    const runs = {};
    for (const t of TRANSPORTS) {
      runs[t] = await newRun(reply(`m_f_${t}`, ["three events"])); // created, delta, completed
      await follow(page, t, opts(runs[t], t));
    }
    for (const t of TRANSPORTS) assert.ok(await until(async () => (await peek(page, t)).snap.state.cursor === 3, 8000), `${t}: applied the 3 events`);
    await sleep(500);
    await page.reload();
    await page.evaluate(() => window.ready);
    // Only the new page's connections count (the old page's end as it unloads).
    const reloadedAt = Date.now();
    const restored = {};
    for (const t of TRANSPORTS) restored[t] = await follow(page, t, opts(runs[t], t));
    await sleep(30000);
    await perTransport(async (t) => {
      const [st, view] = [await stats(runs[t]), await peek(page, t)];
      const conns = st.conns.filter((c) => c.opened >= reloadedAt);
      const after = { ...st, connections: { [serverKind(t)]: conns.length }, conns };
      const problems = quietProblems(after, view, serverKind(t), { conns: 1, opens: 1 });
      if (restored[t].state.cursor !== 3) problems.unshift(`the reload restored cursor ${restored[t].state.cursor}, expected 3`);
      if (after.conns[0] && after.conns[0].last_event_id !== 3) problems.push(`resumed with last_event_id ${after.conns[0].last_event_id}, expected 3`);
      const m = view.snap.state.messages.find((x) => x.messageId === `m_f_${t}`);
      if (m?.content !== "three events") problems.push(`message after the reload: ${JSON.stringify(m)}`);
      return { line: observed(`resume, nothing to replay, 30 s / ${t}`, after, view, serverKind(t)), problems };
    });
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("g. websocket in a page opened in the background: a server that stops answering pings is not timed out while hidden, and is re-checked at once when the page becomes visible", { timeout: 90000 }, async () => {
  // API.md heartbeatTimeoutMs: "not enforced while the tab is hidden,
  // re-checked when it is visible". The page is hidden before the stream
  // starts (a tab opened in the background), so the page's shared socket
  // must start unwatched. (Found by a review: only a later visibilitychange
  // reached the socket, which enforced the timeout in a background tab.)
  const { context, page, errors } = await openPage();
  await ctl("POST", "/config", { pong: false });
  try {
    await page.evaluate(() => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
    });
    const run = await newRun([ev("run.started", {})]);
    await follow(page, "ws", opts(run, "websocket", { resume: "none", heartbeatTimeoutMs: 3000 }));
    assert.ok(await until(async () => (await peek(page, "ws")).snap.state.cursor === 1, 8000), "applied run.started");
    // Four heartbeat timeouts' worth of silence: no pong, no frame.
    await sleep(12000);
    let [st, view] = [await stats(run), await peek(page, "ws")];
    const hidden = observed("hidden 12 s, pongs muted / websocket", st, view, "websocket");
    console.log(hidden);
    assert.deepEqual(quietProblems(st, view, "websocket", { conns: 1, opens: 1 }), [], hidden);
    // Visible again: silent far longer than 3 s, so it is re-checked at once:
    // pinged (our own pings were throttled too while hidden), and dropped when
    // nothing answers within the re-check grace (3 s, src/core/socket.rs
    // RECHECK_GRACE_MS).
    await page.evaluate(() => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "visible" });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    const shown = Date.now();
    assert.ok(await until(async () => (await stats(run)).connections.websocket === 2, 5000), "reconnected within 5 s of becoming visible");
    console.log(`visible → reconnected after ${Date.now() - shown} ms`);
    [st, view] = [await stats(run), await peek(page, "ws")];
    const visible = observed("then visible / websocket", st, view, "websocket");
    console.log(visible);
    assert.equal(view.snap.metrics.terminations.heartbeat_timeout, 1, visible);
    assert.deepEqual(errors, []);
  } finally {
    await ctl("POST", "/config", { pong: true });
    await context.close();
  }
});

test("h. share: \"tabs\" on websocket: a leading tab in the background times out a server that stops answering pings while a follower is visible, and stops once none is", { timeout: 90000 }, async () => {
  // API.md heartbeatTimeoutMs (not enforced while hidden) with README
  // "Sharing connections": the leader watches its heartbeat as if visible
  // while a follower's page is. On websocket the leader's page socket must
  // learn it. (Found by a review: a hidden leader's socket never timed out.)
  const context = await browser.newContext();
  const errors = [];
  const hide = (page, hidden) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => h });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (h ? "hidden" : "visible") });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  try {
    const [leader, follower] = [await context.newPage(), await context.newPage()];
    for (const p of [leader, follower]) {
      errors.push(watchErrors(p));
      await p.goto(srv.url + "/harness.html");
      await p.evaluate(() => window.ready);
    }
    const run = await newRun([ev("run.started", {})]);
    const o = opts(run, "websocket", { share: "tabs", resume: "none", heartbeatTimeoutMs: 3000 });
    await hide(leader, true);
    await follow(leader, "h", o);
    assert.ok(await until(async () => (await peek(leader, "h")).snap.status.sharing === "leader", 5000), "the hidden page leads");
    await follow(follower, "h", o);
    assert.ok(await until(async () => (await peek(follower, "h")).snap.state.cursor === 1, 5000), "the follower has the run");
    const timeouts = async () => (await peek(leader, "h")).snap.metrics.terminations.heartbeat_timeout ?? 0;
    await ctl("POST", "/config", { pong: false });
    const muted = Date.now();
    const timedOut = await until(async () => (await timeouts()) >= 1, 10000);
    console.log(`leader hidden, follower visible, pongs muted: heartbeat timeouts ${await timeouts()} after ${Date.now() - muted} ms; server subscriptions ${(await stats(run)).connections.websocket}`);
    assert.ok(timedOut, "the hidden leader's socket timed out for its visible follower");
    // Nobody watches any more: the hidden leader's socket holds, however silent.
    await hide(follower, true);
    await sleep(1000);
    const before = await timeouts();
    await sleep(10000);
    const after = await timeouts();
    console.log(`then both hidden: heartbeat timeouts ${before} → ${after} in 10 s`);
    assert.equal(after, before, "no timeout while no page watches");
    assert.deepEqual(errors.flat(), []);
  } finally {
    await ctl("POST", "/config", { pong: true });
    await context.close();
  }
});

test("i. timestamps in ISO 8601 forms other than RFC 3339 UTC (no offset, a space, +hhmm) are applied on every transport: PROTOCOL §1 makes the field informational", { timeout: 60000 }, async () => {
  // Python's isoformat() of a naive datetime, Postgres' timestamp text, Java's OffsetDateTime with a basic offset.
  const forms = ["2026-11-22T12:00:00.123456", "2026-11-22 12:00:00.5", "2026-11-22T12:00:00+0530"];
  const stamped = (events) => events.map((e, i) => ({ ...e, timestamp: forms[i % forms.length] }));
  await perTransport(async (t) => {
    const run = await newRun(stamped([ev("run.started", {}), ...reply("m_ts", ["local ", "time"]), ev("run.completed", { status: "succeeded" })]));
    const { context, page, errors } = await openPage();
    try {
      await follow(page, "i", opts(run, t, { resume: "none" }));
      await until(async () => (await peek(page, "i")).snap.status.connection === "closed", 10000);
      const { snap } = await peek(page, "i");
      const m = snap.state.messages.find((x) => x.messageId === "m_ts");
      const line = `timestamps / ${t}: connection ${snap.status.connection}, cursor ${snap.state.cursor}, run ${snap.state.status}, message ${JSON.stringify(m?.content)}, protocolErrors ${snap.metrics.protocolErrors}`;
      const problems = [];
      if (snap.state.cursor !== 6) problems.push(`cursor ${snap.state.cursor}, expected 6`);
      if (snap.state.status !== "succeeded") problems.push(`run ${snap.state.status}`);
      if (m?.content !== "local time") problems.push(`message ${JSON.stringify(m)}`);
      if (snap.metrics.protocolErrors !== 0) problems.push(`protocolErrors ${snap.metrics.protocolErrors} (${JSON.stringify(snap.metrics.protocolErrorsByKind)})`);
      if (errors.length) problems.push(`page errors ${JSON.stringify(errors)}`);
      return { line, problems };
    } finally {
      await context.close();
    }
  });
});

test("j. a token rotated while the stream stays open: the next send carries it, over fetch and websocket (API.md headers: called on every (re)connect and send)", { timeout: 60000 }, async () => {
  // An idle stream keeps its connection for hours (case a), longer than a
  // token lives: a send must not reuse the token of the connect. (Found by a
  // review: a WebSocket send frame carried the headers of its subscribe.)
  const { context, page, errors } = await openPage();
  try {
    const lines = [];
    for (const transport of ["fetch", "websocket"]) {
      const session = `sess_j_${transport}_${Date.now().toString(36)}`;
      const run = await newRun([ev("run.started", {})], session);
      await page.evaluate(() => { window.token = "t1"; });
      await follow(page, transport, opts(run, transport, { sendUrl: `/api/chat/${session}/messages`, tokenHeaders: true }));
      assert.ok(await until(async () => (await peek(page, transport)).snap.status.connection === "open", 5000), `${transport}: open`);
      const first = await page.evaluate((k) => window.sendOn(k, "with t1"), transport);
      assert.ok(await until(async () => (await sendsOf(first)).length > 0, 5000), `${transport}: first send received`);
      await page.evaluate(() => { window.token = "t2"; });
      const second = await page.evaluate((k) => window.sendOn(k, "with t2"), transport);
      assert.ok(await until(async () => (await sendsOf(second)).some((s) => s.status === 202), 5000), `${transport}: second send accepted`);
      const auth = [...(await sendsOf(first)), ...(await sendsOf(second))].map((s) => `${s.content}: ${s.auth}`);
      lines.push(`${transport}: ${auth.join(", ")}; connections ${(await stats(run)).connections[serverKind(transport)]}`);
      assert.deepEqual(auth, ["with t1: Bearer t1", "with t2: Bearer t2"], `${transport}: each send carries the token current when it is sent`);
      assert.equal((await stats(run)).connections[serverKind(transport)], 1, `${transport}: no reconnect was needed`);
      await page.evaluate((k) => window.stop(k), transport);
    }
    console.log(lines.join("\n"));
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
