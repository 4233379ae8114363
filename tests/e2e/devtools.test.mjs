// runstream/devtools (issue 29, part 2): the <runstream-devtools> panel over
// real streams of the reference server under its --dev chaos, in Chromium. Every
// part of the panel is read from its shadow DOM and compared with the stream's
// own snapshot; the exported trace (the "Export trace" download) is parsed and
// its raw events are checked against what the engine applied; the bound on
// kept events drops the oldest. The React example shows the panel too.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { launch, api, server, until, artifacts, watchErrors } from "./lib.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => browser?.close());

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The panel's figures for one stream (by label), read from its shadow DOM. */
function readPanel(page, selector, label) {
  return page.evaluate(
    ([selector, label]) => {
      const root = document.querySelector(selector).shadowRoot;
      const sec = root.querySelector(`section[data-label="${label}"]`);
      if (!sec) return null;
      const field = (name) => sec.querySelector(`[data-field="${name}"]`)?.textContent ?? null;
      const part = (name) => sec.querySelector(`[data-part="${name}"]`);
      return {
        connection: part("connection")?.dataset.state ?? null,
        sharing: field("sharing"),
        reconnects: field("reconnects"),
        terminations: field("terminations"),
        timeline: [...part("timeline").querySelectorAll("li")].map((li) => ({ kind: li.dataset.kind, text: li.textContent })),
        backoff: part("backoff")?.textContent ?? null,
        rate: part("rate")?.textContent ?? null,
        rateChart: part("rate-chart") !== null,
        eventsApplied: field("events-applied"),
        replayed: field("events-replayed"),
        replaySizes: field("replay-sizes"),
        duplicates: field("duplicates"),
        gapsSkipped: field("gaps-skipped"),
        protocolErrors: field("protocol-errors"),
        messages: [...sec.querySelectorAll('[data-part="messages"] tbody tr')].map((tr) => ({
          crid: tr.dataset.clientRequestId,
          cells: [...tr.cells].map((c) => c.textContent),
        })),
        pending: Number(part("pending-sends")?.dataset.count ?? NaN),
        pendingText: part("pending-sends")?.textContent ?? null,
        cancel: part("cancels")?.dataset.state ?? null,
        cause: part("cause")?.textContent ?? null,
      };
    },
    [selector, label],
  );
}

const countOf = (events, name, pred = () => true) => events.filter((e) => e.name === name && pred(e)).length;

test("the devtools panel renders every part live from real streams under chaos, and its trace matches what was applied", { timeout: 60000 }, async () => {
  // A task run through fetch with duplicates, reordering, drops and malformed frames.
  const { run_id: task } = await api("POST", "/api/admin/runs", {
    seed: 29, workers: 8, speed: 1.5,
    chaos: { seed: 29, dup_rate: 0.3, reorder_rate: 0.2, drop_every: 7, malformed_rate: 0.15 },
  });
  // A chat through native EventSource shared between tabs (this tab leads), with
  // no snapshot endpoint: an event type the client does not know is a skipped gap.
  const chat = `chat_devtools_${task}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: chat });

  // One context: its tabs share the chat's connection (share: "tabs").
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = watchErrors(page);
  // The send and the cancel wait at the "proxy": both are pending long enough to see.
  let releaseSend;
  const sendHeld = new Promise((r) => (releaseSend = r));
  await page.route("**/api/chat/*/messages", async (route) => {
    await sendHeld;
    await route.continue();
  });
  await page.route("**/api/runs/*/cancel", async (route) => {
    await sleep(700);
    await route.continue();
  });
  await page.goto(`${server}/harness.html`);
  await page.evaluate(() => window.ready);
  const t0 = Date.now();
  await page.evaluate(async ([task, chat]) => {
    await import("/pkg/devtools.js");
    const backoff = { initialMs: 100, maxMs: 800, multiplier: 2 };
    const t = new window.RunStream({ runId: task, transport: "fetch", url: `/api/stream/runs/${task}`, snapshotUrl: `/api/runs/${task}/snapshot`, resume: "none", backoff });
    const c = new window.RunStream({
      runId: chat, transport: "sse", url: `/api/stream/runs/${chat}`, snapshotUrl: null, share: "tabs",
      sendUrl: `/api/chat/${chat}/messages`, cancelUrl: `/api/runs/${chat}/cancel`, resume: "none", backoff,
    });
    const panel = document.createElement("runstream-devtools");
    panel.id = "main";
    const small = document.createElement("runstream-devtools");
    small.id = "small";
    small.setAttribute("max-events", "100");
    document.body.append(panel, small);
    // Attached before start(): every raw event is recorded.
    panel.streams = [{ stream: t, label: "task" }, { stream: c, label: "chat" }];
    small.streams = t;
    window.dt = { t, c, panel, small };
    t.start();
    c.start();
  }, [task, chat]);

  // The chat is open: an unknown event type (PROTOCOL §1) then a known one; over native
  // EventSource without a snapshot endpoint the unknown id is a gap, skipped and counted.
  await until(() => page.evaluate(() => window.dt.c.getSnapshot().status.connection === "open"), 10000, 50);
  await api("POST", `/api/admin/runs/${chat}/append`, { type: "progress.tick", payload: { n: 1 } });
  await api("POST", `/api/admin/runs/${chat}/append`, { type: "worker.started", payload: { worker_id: "w1", name: "after the gap" } });

  // A second tab following the same chat: its panel shows it as a follower of this tab's connection.
  const tab2 = await context.newPage();
  const errors2 = watchErrors(tab2);
  await tab2.goto(`${server}/harness.html`);
  await tab2.evaluate(() => window.ready);
  await tab2.evaluate(async (chat) => {
    await import("/pkg/devtools.js");
    const c = new window.RunStream({ runId: chat, transport: "sse", url: `/api/stream/runs/${chat}`, snapshotUrl: null, share: "tabs", resume: "none" });
    const panel = document.createElement("runstream-devtools");
    panel.id = "main";
    document.body.append(panel);
    panel.streams = { stream: c, label: "chat" };
    c.start();
    window.c = c;
  }, chat);
  assert.ok(await until(async () => (await readPanel(tab2, "#main", "chat"))?.sharing === "follower", 10000, 50), "the second tab follows");
  assert.equal((await readPanel(page, "#main", "chat")).sharing, "leader");
  await tab2.evaluate(() => window.c.close());
  await tab2.close();
  assert.deepEqual(errors2, []);

  // A send held at the proxy: the panel lists it as pending.
  const crid = await page.evaluate(() => window.dt.c.send("hello devtools, slow please"));
  assert.ok(await until(async () => (await readPanel(page, "#main", "chat"))?.pending === 1, 5000, 50), "the held send shows as pending");
  const held = await readPanel(page, "#main", "chat");
  assert.match(held.pendingText, /1 pending send/);
  assert.ok(held.pendingText.includes(crid), held.pendingText);
  releaseSend();
  assert.ok(await until(async () => (await readPanel(page, "#main", "chat"))?.pending === 0, 5000, 50), "accepted: no longer pending");
  // The reply streams; TTFB and TTFT of that send show in the messages table.
  await until(() => page.evaluate((crid) => window.dt.c.getSnapshot().metrics.messages[crid]?.ttftMs != null, crid), 15000, 50);
  // Stop that reply: the cancel is held at the proxy for 0.7 s, the panel follows its steps.
  await page.evaluate((crid) => window.dt.c.cancel({ replyTo: crid, reason: "user" }), crid);
  assert.ok(await until(async () => ["done", "failed"].includes((await readPanel(page, "#main", "chat")).cancel), 15000, 50), "the cancel settled");

  // The task run ends (closed) and the chat settles; the panel's 1 s samples caught events/s.
  assert.ok(await until(() => page.evaluate(() => window.dt.t.getSnapshot().status.connection === "closed"), 30000, 100), "the task run ended");
  await until(() => page.evaluate(() => window.dt.c.getSnapshot().metrics.gapsSkipped >= 1 && window.dt.c.getSnapshot().state.workers.length === 1), 15000, 50);
  await sleep(1200); // one more sample and render after the last event

  const live = await page.evaluate(() => ({ t: window.dt.t.getSnapshot(), c: window.dt.c.getSnapshot() }));
  const pt = await readPanel(page, "#main", "task");
  const pc = await readPanel(page, "#main", "chat");
  // The picture in docs/DEVTOOLS.md (docs/devtools.png) is this screenshot.
  await page.locator("#main").screenshot({ path: join(artifacts, "devtools-panel.png") });

  // ---- every part, from the panel, equal to the stream's own figures -------------------
  const mt = live.t.metrics;
  assert.ok(mt.reconnects > 0 && mt.duplicatesDropped > 0 && mt.protocolErrors > 0, `the chaos showed: ${JSON.stringify(mt)}`);
  assert.equal(pt.connection, "closed");
  assert.equal(pt.reconnects, String(mt.reconnects));
  for (const [reason, n] of Object.entries(mt.terminations)) assert.ok(pt.terminations.includes(`${reason}×${n}`), pt.terminations);
  // Timeline: each state change with its reason; the connections that ended, with theirs.
  assert.ok(pt.timeline.some((x) => x.kind === "ended" && /ended: server_closed/.test(x.text)), JSON.stringify(pt.timeline));
  assert.ok(pt.timeline.some((x) => x.kind === "state" && /closed · run_completed/.test(x.text)), JSON.stringify(pt.timeline));
  assert.ok(pt.backoff && (/backoff \d+ ms, waited \d+ ms/.test(pt.backoff) || /reconnects/.test(pt.backoff)), pt.backoff);
  assert.ok(pt.rateChart, "the events-per-second chart");
  const peak = Number(/peak (\d+)\/s/.exec(pt.rate)?.[1]);
  assert.ok(peak > 0, `events per second: ${pt.rate}`);
  assert.equal(pt.eventsApplied, String(mt.eventsApplied));
  assert.equal(pt.replayed, String(mt.eventsReplayed));
  assert.equal(pt.duplicates, String(mt.duplicatesDropped));
  assert.equal(pt.gapsSkipped, String(mt.gapsSkipped));
  assert.ok(pt.protocolErrors.startsWith(String(mt.protocolErrors)), pt.protocolErrors);
  for (const [kind, n] of Object.entries(mt.protocolErrorsByKind)) assert.ok(pt.protocolErrors.includes(`${kind}×${n}`), pt.protocolErrors);
  assert.equal(pt.sharing, "solo");
  assert.equal(pt.cause, "—", "nothing to blame on a healthy server");

  const mc = live.c.metrics;
  assert.equal(pc.sharing, "leader", "share: \"tabs\" with one tab: it leads");
  assert.equal(mc.gapsSkipped, 1);
  assert.equal(pc.gapsSkipped, "1");
  const row = pc.messages.find((r) => r.crid === crid);
  assert.ok(row, JSON.stringify(pc.messages));
  const [, ttfb, ttft] = row.cells;
  assert.equal(ttfb, `${Math.round(mc.messages[crid].ttfbMs)} ms`);
  assert.equal(ttft, `${Math.round(mc.messages[crid].ttftMs)} ms`);
  assert.equal(pc.cancel, live.c.status.cancel.state);

  // ---- the exported trace: the download a user attaches -----------------------------
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.evaluate(() => window.dt.panel.shadowRoot.querySelector('[data-part="export"]').click()),
  ]);
  assert.match(download.suggestedFilename(), /^runstream-trace-.*\.json$/);
  const trace = JSON.parse(readFileSync(await download.path(), "utf8"));
  const now = await page.evaluate(() => ({ t: window.dt.t.getSnapshot(), c: window.dt.c.getSnapshot() }));
  assert.equal(trace.format, "runstream-devtools-trace");
  assert.equal(trace.version, 1);
  assert.equal(trace.bounds.eventsPerStream, 2000);
  assert.deepEqual(trace.streams.map((s) => s.label), ["task", "chat"]);
  assert.ok(!JSON.stringify(trace).includes("hello devtools"), "no message content in the trace");
  const server_ = await api("GET", `/api/runs/${task}/snapshot`);
  for (const [s, snap] of [[trace.streams[0], now.t], [trace.streams[1], now.c]]) {
    assert.equal(s.runId, snap.state.runId);
    assert.equal(s.readError, null);
    assert.deepEqual(s.snapshot.status, JSON.parse(JSON.stringify(snap.status)), `${s.label}: the snapshot's status`);
    assert.deepEqual(s.snapshot.metrics, JSON.parse(JSON.stringify(snap.metrics)), `${s.label}: the snapshot's metrics`);
    assert.equal(s.snapshot.state.cursor, snap.state.cursor);
    // Complete (under the bound): the raw events say what the engine applied.
    assert.equal(s.eventsDropped, 0);
    assert.equal(s.events.length, s.eventsSeen);
    const m = snap.metrics;
    assert.equal(countOf(s.events, "stream.event.duplicate.total"), m.duplicatesDropped, `${s.label}: duplicates`);
    assert.equal(countOf(s.events, "stream.protocol_error.total"), m.protocolErrors, `${s.label}: protocol errors`);
    assert.equal(countOf(s.events, "stream.reconnect.total"), m.reconnects, `${s.label}: reconnects`);
    assert.equal(countOf(s.events, "stream.connect.total"), m.reconnects + 1, `${s.label}: connection attempts`);
    for (const [reason, n] of Object.entries(m.terminations)) {
      assert.equal(countOf(s.events, "stream.termination.total", (e) => e.attrs?.reason === reason), n, `${s.label}: terminations ${reason}`);
      assert.equal(s.timeline.filter((x) => x.kind === "ended" && x.reason === reason).length, n, `${s.label}: timeline endings ${reason}`);
    }
    const replayed = s.events.filter((e) => e.name === "stream.replay.events").map((e) => e.value);
    assert.deepEqual(s.replays.map((r) => r.events), replayed, `${s.label}: replay sizes`);
    assert.equal(replayed.reduce((a, b) => a + b, 0), m.eventsReplayed, `${s.label}: replayed events`);
    assert.ok(s.eventsPerSecond.reduce((a, b) => a + b, 0) <= m.eventsApplied);
  }
  assert.equal(trace.streams[0].snapshot.state.cursor, server_.event_id, "the task converged on the server's log");
  const taskPanelSizes = trace.streams[0].replays.slice(-10).map((r) => r.events).join(", ") || "—";
  assert.equal(pt.replaySizes, taskPanelSizes);
  assert.equal(countOf(trace.streams[1].events, "stream.gap.skipped.total"), 1, "the skipped gap's event");
  // The cancel's steps, as the panel saw them frame by frame (the POST was held 0.7 s in "sent").
  const steps = trace.streams[1].cancels.map((c) => c.state);
  assert.ok(steps.includes("sent") && steps.includes(pc.cancel), `the cancel's steps: ${steps}`);
  assert.equal(trace.streams[1].snapshot.state.messages.find((m) => m.clientRequestId === crid).role, "user");

  // ---- the bound: 100 kept of more, the oldest dropped ----------------------------------
  const small = await page.evaluate(() => window.dt.small.exportTrace());
  const full = trace.streams[0];
  const s0 = small.streams[0];
  assert.equal(small.bounds.eventsPerStream, 100);
  assert.ok(full.eventsSeen > 100, `enough events to reach the bound: ${full.eventsSeen}`);
  assert.equal(s0.eventsSeen, full.eventsSeen);
  assert.equal(s0.events.length, 100);
  assert.equal(s0.eventsDropped, full.eventsSeen - 100);
  assert.deepEqual(s0.events, full.events.slice(-100), "the newest 100, in order");

  await page.evaluate(() => {
    window.dt.t.close();
    window.dt.c.close();
    window.dt.t.free();
    // A freed stream is reported, never thrown from the panel's timer.
    window.dt.panel.exportTrace();
  });
  await sleep(1200);
  assert.ok((await page.evaluate(() => window.dt.panel.exportTrace().streams[0].readError)) !== null, "the freed stream is reported");
  console.log(`# devtools: task ${mt.eventsApplied} applied, ${mt.reconnects} reconnects, ${mt.duplicatesDropped} dup, ${mt.protocolErrors} protocol errors, replays [${full.replays.map((r) => r.events)}], ${full.eventsSeen} raw events; chat ttfb ${Math.round(mc.messages[crid].ttfbMs)} ms ttft ${Math.round(mc.messages[crid].ttftMs)} ms; trace ${JSON.stringify(trace).length} B; ${Date.now() - t0} ms`);
  await context.close();
  assert.deepEqual(errors, []);
});

test("the React example shows the panel over both of its streams", { timeout: 30000 }, async () => {
  if (!existsSync(new URL("../../www/examples/react/dist/index.html", import.meta.url))) {
    assert.fail("www/examples/react/dist is missing: run ./scripts/examples.sh");
  }
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 5, workers: 3, speed: 3, chaos: { seed: 5, dup_rate: 0.3, drop_every: 6 } });
  const session = `chat_devtools_react_${run_id}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${server}/examples/react/dist/index.html?run=${run_id}&session=${session}`);
  await page.waitForFunction(() => document.querySelector("runstream-devtools")?.shadowRoot?.querySelectorAll("section[data-label]").length === 2, null, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector("runstream-devtools").shadowRoot.querySelector('section[data-label="task"] [data-part="connection"]')?.dataset.state === "closed", null, { timeout: 20000 });
  const p = await readPanel(page, "runstream-devtools", "task");
  const trace = await page.evaluate(() => document.querySelector("runstream-devtools").exportTrace());
  const t = trace.streams.find((s) => s.label === "task");
  assert.equal(t.runId, run_id);
  assert.ok(t.snapshot.metrics.duplicatesDropped > 0, JSON.stringify(t.snapshot.metrics));
  assert.equal(p.duplicates, String(t.snapshot.metrics.duplicatesDropped));
  // useRunStream starts the stream before the panel gets it: the raw record may miss the first events, never invent one.
  assert.ok(countOf(t.events, "stream.event.duplicate.total") <= t.snapshot.metrics.duplicatesDropped);
  assert.equal(trace.streams.find((s) => s.label === "chat").runId, session);
  // The chat is idle (nothing sent): quiet is healthy. Past the 2.5 s "no event yet" guess, the
  // task beside it that got its first event promptly clears the chat of the buffering-proxy guess.
  const chatOpenSince = trace.streams.find((s) => s.label === "chat").timeline.findLast((x) => x.kind === "state" && x.connection === "open");
  assert.ok(chatOpenSince, "the chat is open");
  const openFor = await page.evaluate((ts) => performance.now() - ts, chatOpenSince.ts);
  await page.waitForTimeout(Math.max(0, 3200 - openFor));
  assert.equal((await readPanel(page, "runstream-devtools", "chat")).cause, "—", "an idle chat beside a live run is not blamed on a proxy");
  // Unmounting the streams' components frees them: the panel lets them go.
  await page.click('[data-testid="toggle"]');
  await page.waitForFunction(() => document.querySelector("runstream-devtools").shadowRoot.querySelectorAll("section[data-label]").length === 0, null, { timeout: 5000 });
  await page.waitForTimeout(1200);
  await page.close();
  assert.deepEqual(errors, []);
});
