// Cancel (issue 27, PROTOCOL §8, API.md "A cancel is durable like a send") in
// a real Chromium against the gateway the test command started
// (`--auth none --dev`): Stop on a live task run ends it `cancelled` with
// fewer events than its script plans, on fetch, sse and websocket; Stop
// mid-reply ends that reply `cancelled` and the chat answers the next send;
// many presses (two tabs) append one `run.cancel_requested`; a cancel pressed
// during an outage of the cancel route is stored and a reload sends it again
// with the same client_request_id; a second tab (with and without
// `share: "tabs"`) shows `cancelRequested`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

const TRANSPORTS = ["fetch", "sse", "websocket"];
let browser;

before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** The envelopes of `run`'s log: a finished run's stream ends by itself; a live one is read for `ms`. */
async function logOf(run, ms = 1500) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), ms);
  let text = "";
  try {
    const r = await fetch(`${server}/api/stream/runs/${run}`, { signal: ctl.signal });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
  } catch {
    // Aborted: what arrived so far is the log up to now.
  } finally {
    clearTimeout(t);
  }
  return text
    .split("\n")
    .filter((l) => l.startsWith("data:"))
    .map((l) => JSON.parse(l.slice(5)))
    .filter((e) => typeof e.event_id === "number");
}

const taskRun = async (seed) =>
  (await api("POST", "/api/admin/runs", { seed, workers: 6, speed: 0.5 })).run_id;

/** How many events the script of `seed` plans: the same script appended at once. */
async function planned(seed) {
  const { run_id } = await api("POST", "/api/admin/runs", { seed, workers: 6, speed: 0.5, instant: true });
  return (await logOf(run_id, 5000)).length;
}

/** A page of the harness with `window.s`, a started stream of `run`. */
async function open(context, run, transport, extra = {}, query = "") {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${server}/harness.html${query}`);
  await start(page, run, transport, extra);
  return { page, errors };
}

async function start(page, run, transport, extra) {
  await page.evaluate(() => window.ready);
  await page.evaluate(
    ([run, transport, extra]) => {
      const s = new window.RunStream({
        runId: run,
        transport,
        url: `/api/stream/runs/${run}`,
        wsUrl: "/api/ws",
        snapshotUrl: `/api/runs/${run}/snapshot`,
        cancelUrl: `/api/runs/${run}/cancel`,
        resume: "session",
        ...extra,
      });
      window.s = s;
      s.start();
    },
    [run, transport, extra],
  );
}

const snap = (page) => page.evaluate(() => window.s.getSnapshot());

for (const transport of TRANSPORTS) {
  test(`${transport}: Stop on a task run ends it cancelled, before its script's end`, async () => {
    const seed = 2700 + TRANSPORTS.indexOf(transport);
    const run = await taskRun(seed);
    const context = await browser.newContext();
    const { page, errors } = await open(context, run, transport);
    assert.ok(await until(async () => (await snap(page)).state.cursor >= 3, 15000), "events arrive");
    const crid = await page.evaluate(() => window.s.cancel({ reason: "e2e" }));
    assert.match(crid, /^[0-9a-f-]{36}$/);
    assert.ok(
      await until(async () => (await snap(page)).state.cancelRequested, 10000),
      "cancelRequested once run.cancel_requested is applied",
    );
    assert.ok(
      await until(async () => (await snap(page)).state.status === "cancelled", 20000),
      `ended cancelled: ${JSON.stringify((await snap(page)).state.status)}`,
    );
    const s = await snap(page);
    assert.equal(s.status.cancel.clientRequestId, crid);
    assert.equal(s.status.cancel.state, "done");
    assert.equal(s.status.connection, "closed");
    const log = await logOf(run, 5000);
    const want = await planned(seed);
    assert.ok(log.length < want, `${log.length} events, the script plans ${want}`);
    const requests = log.filter((e) => e.type === "run.cancel_requested");
    assert.equal(requests.length, 1);
    assert.equal(requests[0].payload.client_request_id, crid);
    assert.deepEqual(log.at(-1).type, "run.completed");
    assert.equal(log.at(-1).payload.status, "cancelled");
    assert.deepEqual(errors, []);
    await context.close();
  });

  test(`${transport}: Stop mid-reply ends that reply cancelled; the next send is answered`, async () => {
    const session = `chat_cancel_${transport}_${Date.now()}`;
    await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
    const context = await browser.newContext();
    const { page, errors } = await open(context, session, transport, {
      sendUrl: `/api/chat/${session}/messages`,
    });
    await until(async () => (await snap(page)).status.connection === "open", 10000);
    const sent = await page.evaluate(() => window.s.send("a slow question"));
    // Stop once the reply exists (the server pauses 2.6 s before its first token).
    assert.ok(
      await until(async () => (await snap(page)).state.messages.some((m) => m.replyTo === sent), 10000),
      "the reply starts",
    );
    const crid = await page.evaluate((replyTo) => window.s.cancel({ replyTo }), sent);
    assert.ok(
      await until(async () => {
        const s = await snap(page);
        return s.state.messages.some((m) => m.replyTo === sent && m.status === "completed");
      }, 15000),
      "the reply ends",
    );
    await until(async () => (await snap(page)).status.cancel?.state === "done", 5000);
    let s = await snap(page);
    assert.deepEqual(
      { crid: s.status.cancel.clientRequestId, replyTo: s.status.cancel.replyTo, state: s.status.cancel.state },
      { crid, replyTo: sent, state: "done" },
    );
    assert.equal(s.state.cancelRequested, false, "a reply cancel is not run-wide");
    assert.equal(s.status.activity, "idle");
    const reply = s.state.messages.find((m) => m.replyTo === sent);
    let log = await logOf(session);
    const end = log.find((e) => e.type === "message.completed" && e.payload.message_id === reply.messageId);
    assert.equal(end?.payload.finish_reason, "cancelled", JSON.stringify(end));
    // The chat stays open: the next send is answered in full.
    const next = await page.evaluate(() => window.s.send("and now?"));
    assert.ok(
      await until(async () => {
        const s = await snap(page);
        return s.state.messages.some((m) => m.replyTo === next && m.status === "completed");
      }, 20000),
      "the next send is answered",
    );
    s = await snap(page);
    const second = s.state.messages.find((m) => m.replyTo === next);
    log = await logOf(session);
    const end2 = log.find((e) => e.type === "message.completed" && e.payload.message_id === second.messageId);
    assert.equal(end2?.payload.finish_reason, "stop");
    assert.ok(second.content.length > 20, second.content);
    assert.deepEqual(errors, []);
    await context.close();
  });
}

test("many presses in two tabs append exactly one run.cancel_requested", async () => {
  const run = await taskRun(2710);
  const context = await browser.newContext();
  const a = await open(context, run, "fetch");
  const b = await open(context, run, "websocket");
  // What goes on the wire: a's POSTs, b's cancel ops.
  const posts = [];
  a.page.on("request", (r) => {
    if (r.url().endsWith("/cancel")) posts.push(JSON.parse(r.postData()).client_request_id);
  });
  const ops = [];
  b.page.on("websocket", (ws) =>
    ws.on("framesent", (f) => {
      if (typeof f.payload === "string" && f.payload.includes('"op":"cancel"')) ops.push(JSON.parse(f.payload));
    }),
  );
  await until(async () => (await snap(a.page)).state.cursor >= 2 && (await snap(b.page)).state.cursor >= 2, 15000);
  const first = await a.page.evaluate(() => window.s.cancel({ reason: "press" }));
  for (let i = 0; i < 5; i++) {
    // A press while the tab's cancel is open repeats it; once the run ended, a
    // press is done at once and sends nothing.
    await a.page.evaluate(() => window.s.cancel({ reason: "press" }));
    await b.page.evaluate(() => window.s.cancel({ reason: "press" }));
  }
  for (const t of [a, b]) {
    assert.ok(await until(async () => (await snap(t.page)).state.status === "cancelled", 20000));
  }
  assert.deepEqual(posts, [first], "one POST from the pressing tab");
  assert.ok(ops.length <= 1, JSON.stringify(ops));
  const log = await logOf(run, 5000);
  assert.equal(log.filter((e) => e.type === "run.cancel_requested").length, 1);
  assert.equal(log.filter((e) => e.type === "run.completed").length, 1);
  // a's first press is queued as a POST; b's press goes out on its open socket and
  // may reach the server first: the one request recorded is whichever came first.
  assert.ok(
    [first, ...ops.map((o) => o.client_request_id)].includes(log.find((e) => e.type === "run.cancel_requested").payload.client_request_id),
    "the recorded cancel is one of the presses sent",
  );
  await context.close();
});

test("a cancel pressed during an outage is stored; the reloaded page sends it again with the same id", async () => {
  const run = await taskRun(2711);
  const context = await browser.newContext();
  const bodies = [];
  // The cancel route is down for the first page load (503 with Retry-After), up for the reload.
  await context.route("**/cancel", (route) => {
    const r = route.request();
    bodies.push({ first: (r.headers().referer || "").includes("load=1"), body: JSON.parse(r.postData()) });
    if ((r.headers().referer || "").includes("load=1")) {
      return route.fulfill({ status: 503, headers: { "Retry-After": "1" }, body: "down" });
    }
    return route.continue();
  });
  const { page, errors } = await open(context, run, "fetch", {}, "?load=1");
  await until(async () => (await snap(page)).state.cursor >= 2, 15000);
  const crid = await page.evaluate(() => window.s.cancel({ reason: "outage" }));
  assert.ok(await until(() => bodies.filter((b) => b.first).length >= 2, 10000), "retried during the outage");
  let s = await snap(page);
  assert.ok(["queued", "sent"].includes(s.status.cancel.state), s.status.cancel.state);
  assert.equal(s.state.cancelRequested, false);
  assert.ok((await page.evaluate((r) => sessionStorage.getItem(`runstream:${r}`), run)).includes(crid), "stored");
  // Reload (same tab: the session record survives), the route is up again.
  await page.goto(`${server}/harness.html?load=2`);
  await start(page, run, "fetch", {});
  assert.ok(await until(async () => (await snap(page)).state.status === "cancelled", 20000), "ended cancelled");
  s = await snap(page);
  assert.equal(s.status.cancel.clientRequestId, crid);
  assert.equal(s.status.cancel.state, "done");
  const again = bodies.filter((b) => !b.first);
  assert.ok(again.length >= 1, "sent again after the reload");
  assert.ok(bodies.every((b) => b.body.client_request_id === crid), JSON.stringify(bodies));
  assert.equal(again[0].body.reason, "outage");
  const log = await logOf(run, 5000);
  const requests = log.filter((e) => e.type === "run.cancel_requested");
  assert.equal(requests.length, 1);
  assert.equal(requests[0].payload.client_request_id, crid);
  assert.deepEqual(errors.filter((e) => !e.includes("503")), []);
  await context.close();
});

for (const share of ["none", "tabs"]) {
  test(`a second tab (share: "${share}") shows cancelRequested`, async () => {
    for (const transport of share === "tabs" ? TRANSPORTS : ["fetch"]) {
      const run = await taskRun(2720 + TRANSPORTS.indexOf(transport));
      const context = await browser.newContext();
      const a = await open(context, run, transport, { share });
      const b = await open(context, run, transport, { share });
      await until(async () => (await snap(b.page)).state.cursor >= 2, 15000);
      if (share === "tabs") {
        await until(async () => (await snap(b.page)).status.sharing === "follower", 5000);
      }
      // The press is the second tab's (a follower with share: "tabs").
      const presser = share === "tabs" ? ((await snap(b.page)).status.sharing === "follower" ? b : a) : b;
      const other = presser === a ? b : a;
      const crid = await presser.page.evaluate(() => window.s.cancel({}));
      assert.ok(
        await until(async () => (await snap(other.page)).state.cancelRequested, 10000),
        `${transport}: the other tab shows cancelRequested`,
      );
      assert.equal((await snap(other.page)).status.cancel, null, "the other tab did not press");
      for (const t of [a, b]) {
        assert.ok(await until(async () => (await snap(t.page)).state.status === "cancelled", 20000), transport);
      }
      assert.equal((await snap(presser.page)).status.cancel.clientRequestId, crid);
      const log = await logOf(run, 5000);
      assert.equal(log.filter((e) => e.type === "run.cancel_requested").length, 1);
      assert.deepEqual([...a.errors, ...b.errors], []);
      await context.close();
    }
  });
}
