// Server rendering: runstream/react and runstream/vue on the server (plain Node:
// no browser global touched, snapshot null), and the Next.js example
// (www/examples/next, built by ./scripts/examples.sh) served by `next start` in
// next to the reference server (the browser talks to it directly, CORS; see the
// example's next.config.ts): server HTML, hydration, one connection,
// convergence, a refresh mid-reply, selectors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { launch, api, server, until } from "./lib.mjs";

const examples = fileURLToPath(new URL("../../www/examples/", import.meta.url));
const nextDir = examples + "next";
const stats = (run) => api("GET", `/api/admin/runs/${run}/stats`);
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
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: "1" },
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

test("next: the server page arrives rendered, without errors", async () => {
  const url = await startNext();
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 11, workers: 2, instant: true });
  const r = await fetch(`${url}/?run=${run_id}&session=chat_ssr_${run_id}`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") || "", /text\/html/);
  const html = await r.text();
  assert.match(html, /<h1>runstream × Next\.js<\/h1>/);
  assert.match(html, new RegExp(`data-testid="server-page">Server-rendered page for task <code>${run_id}</code>`));
  // The client components rendered on the server too (snapshot null), not bailed out to the client.
  assert.match(html, /data-testid="task-status">loading</);
  assert.match(html, /data-testid="chat-conn">loading</);
  assert.match(html, /<ol data-testid="messages"><\/ol>/);
  assert.doesNotMatch(html, /BAILOUT_TO_CLIENT_SIDE_RENDERING|__next_error__|Missing getServerSnapshot/);
  assert.doesNotMatch(nextLog, /error|⨯/i, `next start logged an error:\n${nextLog}`);
});

test("next: hydration without warnings, one wasm load, one connection per run, converges; a refresh mid-reply resumes", async () => {
  const url = await startNext();
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 5, workers: 4, speed: 1.5 });
  const session = `chat_next_${run_id}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console_.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  const wasm = [];
  const streams = [];
  page.on("request", (req) => {
    if (req.url().endsWith(".wasm")) wasm.push(req.url());
    if (req.url().includes("/api/stream/runs/")) streams.push({ url: req.url(), lastEventId: req.headers()["last-event-id"] });
  });

  await page.goto(`${url}/?run=${run_id}&session=${session}`);
  // The chat run is empty: its stream is silent after the headers, and must show open at once.
  await page.waitForFunction(() => document.querySelector('[data-testid="chat-conn"]')?.textContent === "open", null, { timeout: 5000 });
  await page.waitForSelector('[data-testid="workers"] li', { timeout: 15000 });
  await page.waitForTimeout(300);
  assert.equal(wasm.length, 1, `the wasm is fetched once for two hooks: ${wasm}`);
  assert.equal((await stats(run_id)).connections_total, 1, "one connection for the task run");
  assert.equal((await stats(session)).connections_total, 1, "one connection for the chat");

  // Send: the optimistic message shows at once; the reply streams token by token.
  await page.fill('[data-testid="input"]', "hello from next");
  // Clicked as an element: the form sits below the task panel, which grows as workers report.
  await page.$eval("form button", (b) => b.click());
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
  const before = streams.length;
  await page.reload();
  await page.waitForFunction(() => document.querySelector('[data-testid="messages"] li.assistant')?.dataset.status === "completed", null, { timeout: 20000 });
  const chatSnap = await api("GET", `/api/runs/${session}/snapshot`);
  await until(async () => Number(await page.textContent('[data-testid="chat-cursor"]')) === chatSnap.event_id, 5000);
  assert.equal(Number(await page.textContent('[data-testid="chat-cursor"]')), chatSnap.event_id, "chat converged to the server's cursor");
  const resumed = streams.slice(before).filter((s) => s.url.includes(session));
  assert.equal(resumed.length, 1, "one chat connection after the refresh");
  const from = Number(resumed[0].lastEventId);
  assert.ok(from > 0 && from <= chatSnap.event_id, `resumed from the stored cursor (Last-Event-ID ${resumed[0].lastEventId})`);
  assert.equal(Number(await page.textContent('[data-testid="chat-applied"]')), chatSnap.event_id - from, "after the refresh only the events past the stored cursor were applied");
  assert.ok(Number(await page.textContent('[data-testid="chat-replayed"]')) >= 1, "the events missed during the refresh were replayed");
  const texts = await page.$$eval('[data-testid="messages"] li', (l) => l.map((e) => `${e.className}:${e.textContent}`));
  assert.equal(texts.length, 2, `one user message and one reply, no duplicate: ${JSON.stringify(texts)}`);
  assert.equal(texts[0], "user:user hello from next");
  assert.equal(texts[1], `assistant:assistant ${chatSnap.state.messages[1].content}`);

  // The task converges to the server snapshot.
  await page.waitForFunction(() => ["succeeded", "failed", "cancelled"].includes(document.querySelector('[data-testid="task-status"]')?.textContent), null, { timeout: 30000 });
  const snap = await api("GET", `/api/runs/${run_id}/snapshot`);
  assert.equal(await page.textContent('[data-testid="task-status"]'), snap.state.status);
  const workers = await page.$$eval('[data-testid="workers"] li', (l) => l.map((e) => [e.dataset.status, e.textContent]));
  assert.deepEqual(workers, snap.state.workers.map((w) => [w.status, `${w.name ?? w.worker_id}: ${w.status} (${w.tools.map((t) => `${t.name ?? t.tool_call_id} ${t.status}`).join(", ")})`]));
  assert.equal(await page.textContent('[data-testid="supervisor"]'), snap.state.supervisor.summary);
  assert.equal((await stats(session)).connections_total, 2, "one chat connection per page load");

  // In production React reports hydration mismatches as minified errors #418/#419/#421-#425.
  const hydration = console_.filter((m) => /hydrat|did not match|server rendered|react\.dev\/errors\/(418|419|42[1-5])\b/i.test(m));
  assert.deepEqual(hydration, [], "hydration warnings");
  assert.deepEqual(console_, [], "console errors or warnings");
  assert.doesNotMatch(nextLog, /error|⨯/i, `next start logged an error:\n${nextLog}`);
  await page.close();
});

test("next: a selector re-renders the task panel only when its slice changes", async () => {
  const url = await startNext();
  // An empty run (no script): the test appends its events itself.
  const run = `sel_${Date.now()}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: run });
  const page = await browser.newPage();
  await page.goto(`${url}/?run=${run}&session=chat_${run}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="task-conn"]')?.textContent === "open", null, { timeout: 5000 });
  await page.waitForTimeout(300);
  const renders = async () => Number(await page.getAttribute('[data-testid="task"]', "data-renders"));
  const r0 = await renders();
  // 30 events of a type the client does not know: new snapshots (cursor, metrics), same slice.
  for (let i = 0; i < 30; i++) await api("POST", `/api/admin/runs/${run}/append`, { type: "progress.tick", payload: { n: i } });
  await page.waitForTimeout(800);
  const r1 = await renders();
  assert.equal(r1, r0, "snapshots that do not change the selected slice do not re-render");
  // A change to the slice: one more render, and it shows (so the ticks before it were applied).
  await api("POST", `/api/admin/runs/${run}/append`, { type: "worker.started", payload: { worker_id: "w1", name: "probe" } });
  await page.waitForSelector('[data-testid="workers"] li[data-status="running"]', { timeout: 5000 });
  await page.waitForTimeout(300);
  assert.equal(await renders(), r1 + 1, "a change of the slice renders once");
  // The stored resume record (throttled writes) reaches cursor 31: the ticks were applied before the worker.
  const storedCursor = () => page.evaluate((id) => JSON.parse(sessionStorage.getItem(`runstream:${id}`) ?? "{}").cursor, run);
  await until(async () => (await storedCursor()) === 31, 5000);
  assert.equal(await storedCursor(), 31, "the client applied the 30 ticks and the worker event");
  await page.close();
});
