// Server rendering: runstream/react and runstream/vue on the server (plain Node:
// no browser global touched, snapshot null), and the Next.js example
// (www/examples/next, built by ./scripts/examples.sh) served by `next start`
// alone: its /api routes are the TypeScript kit (`export const GET/POST =
// rs.fetch`), its chat answered by the AI SDK's mock model through fromAiSdk;
// no Rust server. Server HTML, hydration, one connection per run,
// convergence, a refresh mid-reply that doubles nothing, Stop, selectors. The
// task runs are published through the kit's publish API (the key is given to
// `next start` in RUNSTREAM_PUBLISH_KEY), as a team's producer would.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { launch, until } from "./lib.mjs";
import { taskScript } from "./kit-server.mjs";

const examples = fileURLToPath(new URL("../../www/examples/", import.meta.url));
const nextDir = examples + "next";
const PUBLISH_KEY = "next-e2e-publish-key-0123456789abcdef";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const freePort = () =>
  new Promise((res) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });

let browser;
let next;
let nextLog = "";
let base;

before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
  if (next && next.exitCode === null) {
    next.kill();
    await new Promise((r) => next.once("exit", r));
  }
});

// The Next server, started on first use (the Node-only test below does not need it).
async function startNext() {
  if (base) return base;
  if (!existsSync(`${nextDir}/.next/BUILD_ID`)) assert.fail("www/examples/next/.next is missing: run ./scripts/examples.sh");
  const port = await freePort();
  next = spawn(process.execPath, ["node_modules/next/dist/bin/next", "start", "-p", String(port), "-H", "127.0.0.1"], {
    cwd: nextDir,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: "1", RUNSTREAM_PUBLISH_KEY: PUBLISH_KEY },
    stdio: ["ignore", "pipe", "pipe"],
  });
  next.stdout.on("data", (d) => (nextLog += d));
  next.stderr.on("data", (d) => (nextLog += d));
  base = `http://127.0.0.1:${port}`;
  const up = await until(async () => {
    try {
      return (await fetch(base + "/favicon.ico")).status > 0;
    } catch {
      return false;
    }
  }, 20000);
  assert.ok(up, `next start did not come up:\n${nextLog}`);
  return base;
}

// Runs `code` as an ES module in `cwd` (so it resolves that example's node_modules)
// after replacing browser globals with getters that record every access made from
// the runstream package's files (React and Vue read some of them themselves).
function nodeProbe(cwd, code) {
  const traps = `
    const touched = [];
    for (const name of ["window", "document", "self", "navigator", "location", "localStorage", "sessionStorage",
      "requestAnimationFrame", "cancelAnimationFrame", "EventSource", "WebSocket", "BroadcastChannel",
      "addEventListener", "removeEventListener", "matchMedia", "indexedDB", "fetch"]) {
      Object.defineProperty(globalThis, name, {
        configurable: true,
        get() {
          if (/node_modules[\\/]runstream[\\/]/.test(new Error().stack)) touched.push(name);
          return undefined;
        },
      });
    }
  `;
  return new Promise((res, rej) => {
    execFile(process.execPath, ["--input-type=module", "-e", traps + code], { cwd, timeout: 30000 }, (err, stdout, stderr) => {
      if (err) return rej(new Error(`${err.message}\n${stderr}`));
      res(JSON.parse(stdout.trim().split("\n").pop()));
    });
  });
}

test("server side: importing runstream/react and runstream/vue touches no browser global; SSR renders snapshot null; init is shared", async () => {
  for (const fw of ["next", "vue"]) {
    if (!existsSync(`${examples}${fw}/node_modules/runstream/package.json`)) assert.fail(`www/examples/${fw} is not installed: run ./scripts/examples.sh`);
  }
  const react = await nodeProbe(nextDir, `
    const { createElement } = await import("react");
    const { renderToString } = await import("react-dom/server");
    touched.length = 0;
    const rs = await import("runstream/react");
    const onImport = touched.splice(0);
    function C() {
      const a = rs.useRunStream({ runId: "r1" });
      const b = rs.useRunStream({ runId: "r2" }, (s) => s.status.connection);
      return createElement("p", null, [a.snapshot, a.stream, b.snapshot, b.stream].map(String).join("|"));
    }
    const html = renderToString(createElement(C));
    const onRender = touched.splice(0);
    // One instantiation, shared: the same promise for every caller (here with the wasm bytes, Node has no fetch of files).
    const { readFileSync } = await import("node:fs");
    const bytes = readFileSync(new URL(import.meta.resolve("runstream/runstream_bg.wasm")));
    const p1 = rs.initRunStream(bytes);
    const p2 = rs.initRunStream();
    await p1;
    console.log(JSON.stringify({ onImport, onRender, html, shared: p1 === p2 && rs.initRunStream() === p1 }));
  `);
  assert.deepEqual(react.onImport, [], "import of runstream/react touched browser globals");
  assert.deepEqual(react.onRender, [], "server rendering with useRunStream touched browser globals");
  assert.equal(react.html, "<p>null|null|null|null</p>");
  assert.equal(react.shared, true, "initRunStream returns one shared promise");

  const vue = await nodeProbe(examples + "vue", `
    const { createSSRApp, h } = await import("vue");
    const { renderToString } = await import("vue/server-renderer");
    touched.length = 0;
    const rs = await import("runstream/vue");
    const onImport = touched.splice(0);
    const app = createSSRApp({
      setup() {
        const a = rs.useRunStream({ runId: "r1" });
        const b = rs.useRunStream({ runId: "r2" }, (s) => s.status.connection);
        return () => h("p", [a.snapshot.value, a.stream.value, b.snapshot.value, b.stream.value].map(String).join("|"));
      },
    });
    const html = await renderToString(app);
    const onRender = touched.splice(0);
    console.log(JSON.stringify({ onImport, onRender, html }));
  `);
  assert.deepEqual(vue.onImport, [], "import of runstream/vue touched browser globals");
  assert.deepEqual(vue.onRender, [], "server rendering with useRunStream touched browser globals");
  assert.equal(vue.html, "<p>null|null|null|null</p>");
});

/** The example's own routes, from Node (same origin as the page). */
async function call(method, path, body, headers = {}) {
  const r = await fetch(base + path, {
    method,
    headers: { ...(body ? { "Content-Type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const t = await r.text();
  return { status: r.status, body: t && /json/.test(r.headers.get("content-type") ?? "") ? JSON.parse(t) : t };
}
const publish = (path, body, key) =>
  call("POST", `/api/publish${path}`, body, { Authorization: `Bearer ${PUBLISH_KEY}`, ...(key ? { "Idempotency-Key": key } : {}) });

/** A task run published through the kit's publish API; `play` appends the seeded script (speed × real time). */
async function taskRun(seed, workers, speed = 1) {
  const r = await publish("/runs", {});
  assert.equal(r.status, 201, JSON.stringify(r));
  const runId = r.body.run_id;
  const script = taskScript(seed, workers);
  const play = async () => {
    let n = 0;
    for (const [delay, type, payload] of script) {
      await sleep(delay / speed);
      const a = await publish(`/runs/${runId}/events`, { events: [{ type, payload }] }, `${runId}-${n++}`);
      assert.equal(a.status, 200, JSON.stringify(a));
    }
  };
  return { runId, play };
}

/** The envelopes of `run`'s log read for at most `ms` (a finished run's stream ends by itself). */
async function logOf(run, ms = 1500) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), ms);
  let text = "";
  try {
    const r = await fetch(`${base}/api/stream/runs/${run}`, { signal: ctl.signal });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
  } catch {
    // Aborted: what arrived so far.
  } finally {
    clearTimeout(t);
  }
  return text.split("\n").filter((l) => l.startsWith("data:")).map((l) => JSON.parse(l.slice(5)));
}

function watch(page) {
  const console_ = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console_.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  return console_;
}

test("next: the server page arrives rendered, without errors", async () => {
  const url = await startNext();
  const { runId } = await taskRun(11, 2);
  const r = await fetch(`${url}/?run=${runId}&session=chat_ssr_${runId}`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") || "", /text\/html/);
  const html = await r.text();
  assert.match(html, /<h1>runstream × Next\.js<\/h1>/);
  assert.match(html, new RegExp(`data-testid="server-page">Server-rendered page for task <code>${runId}</code>`));
  // The client components rendered on the server too (snapshot null), not bailed out to the client.
  assert.match(html, /data-testid="task-status">loading</);
  assert.match(html, /data-testid="chat-conn">loading</);
  assert.match(html, /<ol data-testid="messages"><\/ol>/);
  assert.doesNotMatch(html, /BAILOUT_TO_CLIENT_SIDE_RENDERING|__next_error__|Missing getServerSnapshot/);
  // A session id the kit refuses (over 128 characters) falls back to the demo chat instead of an error page.
  const long = await fetch(`${url}/?session=${"s".repeat(200)}`);
  assert.equal(long.status, 200);
  assert.match(await long.text(), /and chat <code>chat_demo<\/code>/);
  // The kit answers the PROTOCOL routes of the same app: an unknown run is a 404, the publish API wants its key.
  assert.equal((await call("GET", "/api/runs/nope/snapshot")).status, 404);
  assert.equal((await call("POST", "/api/publish/runs", {})).status, 401);
  assert.doesNotMatch(nextLog, /error|⨯/i, `next start logged an error:\n${nextLog}`);
});

test("next: hydration without warnings, one wasm load, one connection per run, converges; a refresh mid-reply resumes, nothing doubled", async () => {
  const url = await startNext();
  const task = await taskRun(5, 4, 1.5);
  const playing = task.play();
  const run_id = task.runId;
  const session = `chat_next_${run_id}`;
  const page = await browser.newPage();
  const console_ = watch(page);
  const wasm = [];
  const streams = [];
  page.on("request", (req) => {
    if (req.url().endsWith(".wasm")) wasm.push(req.url());
    if (req.url().includes("/api/stream/runs/")) streams.push({ url: req.url(), lastEventId: req.headers()["last-event-id"] });
  });
  const streamsOf = (run) => streams.filter((s) => new URL(s.url).pathname === `/api/stream/runs/${run}`);

  await page.goto(`${url}/?run=${run_id}&session=${session}`);
  // The chat session is empty: its stream is silent after the headers, and must show open at once.
  await page.waitForFunction(() => document.querySelector('[data-testid="chat-conn"]')?.textContent === "open", null, { timeout: 5000 });
  await page.waitForSelector('[data-testid="workers"] li', { timeout: 15000 });
  await page.waitForTimeout(300);
  assert.equal(wasm.length, 1, `the wasm is fetched once for two hooks: ${wasm}`);
  assert.equal(streamsOf(run_id).length, 1, "one connection for the task run");
  assert.equal(streamsOf(session).length, 1, "one connection for the chat");

  // Send: the optimistic message shows at once; the reply (fromAiSdk, mock model) streams.
  await page.fill('[data-testid="input"]', "hello from next");
  await page.$eval("form:has(input[data-testid=input]) button", (b) => b.click());
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="messages"] li.user').length === 1, null, { timeout: 1000 });
  await page.waitForFunction(() => (document.querySelector('[data-testid="messages"] li.assistant')?.textContent.length ?? 0) > 40, null, { timeout: 15000 });

  // Refresh mid-reply. The resumed stream is held 400 ms, so the reply moves on meanwhile
  // and the resume has events to replay.
  const cursorBefore = Number(await page.textContent('[data-testid="chat-cursor"]'));
  assert.ok(cursorBefore > 0);
  await page.route(`**/api/stream/runs/${session}*`, async (route) => {
    await sleep(400);
    await route.continue();
  });
  const before = streamsOf(session).length;
  await page.reload();
  await page.waitForFunction(() => document.querySelector('[data-testid="messages"] li.assistant')?.dataset.status === "completed", null, { timeout: 20000 });
  const chatSnap = (await call("GET", `/api/runs/${session}/snapshot`)).body;
  await until(async () => Number(await page.textContent('[data-testid="chat-cursor"]')) === chatSnap.event_id, 5000);
  assert.equal(Number(await page.textContent('[data-testid="chat-cursor"]')), chatSnap.event_id, "chat converged to the server's cursor");
  const resumed = streamsOf(session).slice(before);
  assert.equal(resumed.length, 1, "one chat connection after the refresh");
  const from = Number(resumed[0].lastEventId);
  assert.ok(from > 0 && from <= chatSnap.event_id, `resumed from the stored cursor (Last-Event-ID ${resumed[0].lastEventId})`);
  assert.equal(Number(await page.textContent('[data-testid="chat-applied"]')), chatSnap.event_id - from, "after the refresh only the events past the stored cursor were applied");
  assert.ok(Number(await page.textContent('[data-testid="chat-replayed"]')) >= 1, "the events missed during the refresh were replayed");
  const texts = await page.$$eval('[data-testid="messages"] li', (l) => l.map((e) => `${e.className}:${e.textContent}`));
  assert.equal(texts.length, 2, `one user message and one reply, no duplicate: ${JSON.stringify(texts)}`);
  assert.equal(texts[0], "user:user hello from next");
  const reply = chatSnap.state.messages[1];
  assert.equal(texts[1], `assistant:assistant ${reply.content}`);
  assert.match(reply.content, /^This answer is streamed by the AI SDK's mock model.*next question\.$/, "the whole answer, once");
  const log = await logOf(session);
  assert.equal(log.find((e) => e.type === "message.completed")?.payload.finish_reason, "stop");

  // The task converges to the server snapshot.
  await playing;
  await page.waitForFunction(() => ["succeeded", "failed", "cancelled"].includes(document.querySelector('[data-testid="task-status"]')?.textContent), null, { timeout: 30000 });
  const snap = (await call("GET", `/api/runs/${run_id}/snapshot`)).body;
  assert.equal(await page.textContent('[data-testid="task-status"]'), snap.state.status);
  const workers = await page.$$eval('[data-testid="workers"] li', (l) => l.map((e) => [e.dataset.status, e.textContent]));
  assert.deepEqual(workers, snap.state.workers.map((w) => [w.status, `${w.name ?? w.worker_id}: ${w.status} (${w.tools.map((t) => `${t.name ?? t.tool_call_id} ${t.status}`).join(", ")})`]));
  assert.equal(await page.textContent('[data-testid="supervisor"]'), snap.state.supervisor.summary);
  assert.equal(streamsOf(session).length, 2, "one chat connection per page load");

  // In production React reports hydration mismatches as minified errors #418/#419/#421-#425.
  const hydration = console_.filter((m) => /hydrat|did not match|server rendered|react\.dev\/errors\/(418|419|42[1-5])\b/i.test(m));
  assert.deepEqual(hydration, [], "hydration warnings");
  assert.deepEqual(console_, [], "console errors or warnings");
  assert.doesNotMatch(nextLog, /error|⨯/i, `next start logged an error:\n${nextLog}`);
  await page.close();
});

test("next: Stop ends the reply cancelled (the model stops), and the next send is answered in full", async () => {
  const url = await startNext();
  const session = `chat_stop_${Date.now()}`;
  const page = await browser.newPage();
  const console_ = watch(page);
  await page.goto(`${url}/?session=${session}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="chat-conn"]')?.textContent === "open", null, { timeout: 5000 });
  await page.fill('[data-testid="input"]', "tell me everything");
  await page.$eval("form:has(input[data-testid=input]) button", (b) => b.click());
  await page.waitForFunction(() => (document.querySelector('[data-testid="messages"] li.assistant')?.textContent.length ?? 0) > 30, null, { timeout: 15000 });
  await page.click('[data-testid="stop"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="messages"] li.assistant')?.dataset.status === "completed", null, { timeout: 10000 });
  await page.waitForSelector('[data-testid="stop"]', { state: "detached", timeout: 5000 });
  const stopped = (await call("GET", `/api/runs/${session}/snapshot`)).body;
  const first = stopped.state.messages.find((m) => m.role === "assistant");
  let log = await logOf(session);
  const requests = log.filter((e) => e.type === "run.cancel_requested");
  assert.equal(requests.length, 1, "one cancel request");
  assert.equal(requests[0].payload.reply_to, stopped.state.messages[0].client_request_id, "the reply's cancel, not the run's");
  const end = log.find((e) => e.type === "message.completed" && e.payload.message_id === first.message_id);
  assert.equal(end?.payload.finish_reason, "cancelled");
  // The model stopped too: nothing more is appended to the reply.
  const at = stopped.event_id;
  await sleep(500);
  assert.equal((await call("GET", `/api/runs/${session}/snapshot`)).body.event_id, at, "nothing appended after the stop");
  assert.equal(stopped.state.cancel_requested, false, "a reply cancel is not run-wide");
  assert.equal(stopped.state.status === "cancelled", false, "the chat run stays open");

  await page.fill('[data-testid="input"]', "and now?");
  await page.$eval("form:has(input[data-testid=input]) button", (b) => b.click());
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="messages"] li.assistant[data-status="completed"]').length === 2, null, { timeout: 20000 });
  const snap = (await call("GET", `/api/runs/${session}/snapshot`)).body;
  const second = snap.state.messages.filter((m) => m.role === "assistant")[1];
  assert.match(second.content, /^This answer is streamed by the AI SDK's mock model.*next question\.$/);
  assert.ok(second.content.startsWith(first.content) && first.content.length < second.content.length,
    `the stopped reply is a strict prefix of the whole answer: ${first.content.length} of ${second.content.length} characters`);
  log = await logOf(session);
  assert.equal(log.find((e) => e.type === "message.completed" && e.payload.message_id === second.message_id)?.payload.finish_reason, "stop");
  const texts = await page.$$eval('[data-testid="messages"] li', (l) => l.map((e) => e.className));
  assert.deepEqual(texts, ["user", "assistant", "user", "assistant"]);
  assert.deepEqual(console_, [], "console errors or warnings");
  await page.close();
});

test("next: a selector re-renders the task panel only when its slice changes", async () => {
  const url = await startNext();
  const { runId: run } = await taskRun(1, 1);
  const page = await browser.newPage();
  await page.goto(`${url}/?run=${run}&session=chat_${run}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="task-conn"]')?.textContent === "open", null, { timeout: 5000 });
  await page.waitForTimeout(300);
  const renders = async () => Number(await page.getAttribute('[data-testid="task"]', "data-renders"));
  const r0 = await renders();
  // 30 message events on the task run: new snapshots (cursor, messages, metrics), same slice.
  await publish(`/runs/${run}/events`, { events: [{ type: "message.created", payload: { message_id: "m1", role: "assistant" } }] }, `${run}-m`);
  for (let i = 1; i < 30; i++) await publish(`/runs/${run}/events`, { events: [{ type: "message.delta", payload: { message_id: "m1", delta: `t${i} ` } }] }, `${run}-d${i}`);
  await page.waitForTimeout(800);
  const r1 = await renders();
  assert.equal(r1, r0, "snapshots that do not change the selected slice do not re-render");
  // A change to the slice: one more render, and it shows (so the events before it were applied).
  await publish(`/runs/${run}/events`, { events: [{ type: "worker.started", payload: { worker_id: "w1", name: "probe" } }] }, `${run}-w`);
  await page.waitForSelector('[data-testid="workers"] li[data-status="running"]', { timeout: 5000 });
  await page.waitForTimeout(300);
  assert.equal(await renders(), r1 + 1, "a change of the slice renders once");
  const storedCursor = () => page.evaluate((id) => JSON.parse(sessionStorage.getItem(`runstream:${id}`) ?? "{}").cursor, run);
  await until(async () => (await storedCursor()) === 31, 5000);
  assert.equal(await storedCursor(), 31, "the client applied the 30 message events and the worker event");
  await page.close();
});
