// The npm package as React and Vue users consume it: Vite-built examples that
// install the packed tarball, driven in Chromium against the reference server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, cpSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => browser?.close());

const stats = (run) => api("GET", `/api/admin/runs/${run}/stats`);

for (const fw of ["react", "vue"]) {
  test(`${fw} example: stream, send, refresh mid-run, unmount/remount without leaks`, async (t) => {
    if (!existsSync(new URL(`../../www/examples/${fw}/dist/index.html`, import.meta.url))) {
      assert.fail(`www/examples/${fw}/dist is missing: run ./scripts/examples.sh`);
    }
    const { run_id } = await api("POST", "/api/admin/runs", { seed: fw.length, workers: 4, speed: 1.5 });
    const session = `chat_${fw}_${run_id}`;
    await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(`${server}/examples/${fw}/dist/index.html?run=${run_id}&session=${session}`);
    await page.waitForSelector('[data-testid="workers"] li', { timeout: 15000 });
    await page.waitForTimeout(300);
    // StrictMode's double mount (React) makes no second connection.
    assert.equal((await stats(run_id)).connections_total, 1, "one connection for the task run");
    assert.equal((await stats(session)).connections_total, 1, "one connection for the chat");

    // Send: the optimistic message shows at once, the reply streams under it.
    await page.fill('[data-testid="input"]', "hello from " + fw);
    // The form sits below the task panel, which grows as workers report: the
    // element is clicked itself, not at coordinates a moved layout invalidates.
    await page.$eval("form button", (b) => b.click());
    // "At once" is the next frame; 5 s leaves room for a loaded CI machine, and a miss
    // reports what the page threw (send() before the stream was ready, say).
    await page
      .waitForFunction(() => document.querySelectorAll('[data-testid="messages"] li.user').length === 1, null, { timeout: 5000 })
      .catch((e) => assert.fail(`the sent message did not show: ${e.message}; page errors ${JSON.stringify(errors)}`));
    await page.waitForFunction(() => {
      const a = document.querySelector('[data-testid="messages"] li.assistant');
      return a && a.textContent.length > 40;
    }, null, { timeout: 15000 });

    // Refresh mid-run: converges to the server's state, no duplicated message.
    const cursorBefore = Number(await page.textContent('[data-testid="cursor"]'));
    assert.ok(cursorBefore > 0);
    await page.reload();
    await page.waitForFunction(() => ["succeeded", "failed", "cancelled"].includes(document.querySelector('[data-testid="task-status"]')?.textContent), null, { timeout: 30000 });
    const snap = await api("GET", `/api/runs/${run_id}/snapshot`);
    await until(async () => Number(await page.textContent('[data-testid="cursor"]')) === snap.event_id, 5000);
    assert.equal(Number(await page.textContent('[data-testid="cursor"]')), snap.event_id);
    const statuses = await page.$$eval('[data-testid="workers"] li', (l) => l.map((e) => e.dataset.status));
    assert.deepEqual(statuses, snap.state.workers.map((w) => w.status));
    assert.equal(await page.$$eval('[data-testid="messages"] li.user', (l) => l.length), 1);

    // Unmount closes every stream; remount opens exactly one per run.
    const chatBefore = (await stats(session)).connections_total;
    await page.click('[data-testid="toggle"]');
    await until(async () => (await stats(session)).connections_open === 0, 5000);
    assert.equal((await stats(session)).connections_open, 0, "unmount closed the chat stream");
    await page.click('[data-testid="toggle"]');
    await until(async () => (await stats(session)).connections_open === 1, 5000);
    await page.waitForTimeout(300);
    const after = await stats(session);
    assert.equal(after.connections_open, 1);
    assert.equal(after.connections_total, chatBefore + 1, "remount made exactly one connection");
    assert.deepEqual(errors, []);
    await page.close();
  });
}

// API.md `headers`: "called on every (re)connect and send, so an expired token is
// refreshed". In React the function is a closure over the render's state: the hook
// must call the latest render's, not the one the stream was created with.
test("react example: a send after the token in state changed carries the new token", async () => {
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 5, workers: 1, speed: 1 });
  const session = `chat_token_${run_id}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  // Every POST of a send, in order: its content and the token it carried.
  const posts = [];
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().includes(`/api/chat/${session}/messages`)) {
      posts.push({ content: JSON.parse(r.postData() ?? "{}").content, auth: r.headers()["authorization"] });
    }
  });
  const tokenShown = (t) => page.waitForFunction((t) => document.querySelector('[data-testid="token"]')?.textContent === t, t, { timeout: 5000 });
  await page.goto(`${server}/examples/react/dist/index.html?run=${run_id}&session=${session}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="chat-conn"]')?.textContent === "open", null, { timeout: 15000 });
  const sendText = async (text) => {
    await page.fill('[data-testid="input"]', text);
    await page.$eval("form button", (b) => b.click());
  };
  await tokenShown("t1");
  await sendText("first");
  await until(async () => posts.length === 1, 5000);
  // The buttons sit below the chat, which grows while the reply streams: a
  // click at the button's coordinates can land on a moved layout, so the
  // element is clicked itself, and each rotation is seen rendered first.
  await page.$eval('[data-testid="rotate"]', (b) => b.click());
  await tokenShown("t2");
  await page.$eval('[data-testid="rotate"]', (b) => b.click());
  await tokenShown("t3");
  await sendText("second");
  await until(async () => posts.some((p) => p.content === "second"), 5000);
  assert.deepEqual(
    posts.map((p) => [p.content, p.auth]),
    [["first", "Bearer t1"], ["second", "Bearer t3"]],
    "each send's POST carries the token of the render it was made in, and is posted once",
  );
  assert.deepEqual(errors, []);
  await page.close();
});

test("--target bundler build works through a bundler (Vite + vite-plugin-wasm)", async () => {
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 3, workers: 3, instant: true });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${server}/examples/bundler/dist/index.html?run=${run_id}`);
  await page.waitForFunction(() => document.getElementById("out").textContent.includes('"connection":"closed"'), null, { timeout: 15000 });
  const out = JSON.parse(await page.textContent("#out"));
  const snap = await api("GET", `/api/runs/${run_id}/snapshot`);
  assert.equal(out.cursor, snap.event_id);
  assert.equal(out.status, "succeeded");
  assert.deepEqual(errors, []);
  await page.close();
});

test("vue composable: nothing before mount; a selector replaces the ref only when its slice changes", async () => {
  const run = `vue_select_${Date.now()}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: run }); // empty: the test appends its events
  const page = await browser.newPage();
  const errors = watchErrors(page);
  // A page of the server's origin that maps `vue` to the Vue example's browser build and imports /pkg/vue.js.
  await page.route(`${server}/vue-select.html`, (route) => route.fulfill({
    contentType: "text/html",
    body: '<!doctype html><link rel="icon" href="data:,"><script type="importmap">{"imports":{"vue":"/examples/vue/node_modules/vue/dist/vue.esm-browser.prod.js"}}</script><div id="app"></div>',
  }));
  await page.goto(`${server}/vue-select.html`);
  const beforeMount = await page.evaluate(async (run) => {
    const { createApp, h, watch } = await import("vue");
    const { useRunStream } = await import("/pkg/vue.js");
    const seen = (window.seen = []);
    let beforeMount;
    createApp({
      setup() {
        const { snapshot, stream } = useRunStream(
          { runId: run, url: `/api/stream/runs/${run}`, resume: "none" },
          (s) => ({ connection: s.status.connection, workers: s.state.workers.length }),
          (a, b) => a.connection === b.connection && a.workers === b.workers,
        );
        beforeMount = [snapshot.value, stream.value];
        watch(snapshot, (v) => seen.push(v));
        return () => h("p", JSON.stringify(snapshot.value));
      },
    }).mount("#app");
    return beforeMount;
  }, run);
  assert.deepEqual(beforeMount, [null, null], "no stream and no snapshot before onMounted");
  await page.waitForFunction(() => window.seen.at(-1)?.connection === "open", null, { timeout: 5000 });
  await page.waitForTimeout(300);
  const n = await page.evaluate(() => window.seen.length);
  for (let i = 0; i < 30; i++) await api("POST", `/api/admin/runs/${run}/append`, { type: "progress.tick", payload: { n: i } });
  await page.waitForTimeout(800);
  assert.equal(await page.evaluate(() => window.seen.length), n, "snapshots with an equal slice do not replace the ref");
  await api("POST", `/api/admin/runs/${run}/append`, { type: "worker.started", payload: { worker_id: "w1", name: "probe" } });
  await page.waitForFunction(() => window.seen.at(-1)?.workers === 1, null, { timeout: 5000 });
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.seen.length), n + 1, "a changed slice replaces the ref once");
  assert.equal((await stats(run)).connections_total, 1);
  assert.deepEqual(errors, []);
  await page.close();
});

// The Vue page of the server's origin: `vue` mapped to the Vue example's browser build.
const vuePage = (page) => page.route(`${server}/vue-page.html`, (route) => route.fulfill({
  contentType: "text/html",
  body: '<!doctype html><link rel="icon" href="data:,"><script type="importmap">{"imports":{"vue":"/examples/vue/node_modules/vue/dist/vue.esm-browser.prod.js"}}</script><div id="app"></div>',
}));

// Issue 29: "the Vue composable follows changes of its options (a reused
// component whose runId changes streams the new run and closes the old one)".
test("vue composable: a reused component whose runId changes streams the new run and closes the old one", async () => {
  const runs = [];
  for (let i = 0; i < 2; i++) {
    const { run_id } = await api("POST", "/api/admin/runs", { kind: "chat" });
    await api("POST", `/api/admin/runs/${run_id}/append`, { type: "worker.started", payload: { worker_id: `w${i}`, name: `run ${i}` } });
    runs.push(run_id);
  }
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await vuePage(page);
  await page.goto(`${server}/vue-page.html`);
  await page.evaluate(async (first) => {
    const { createApp, defineComponent, h, ref } = await import("vue");
    const { useRunStream } = await import("/pkg/vue.js");
    const Run = defineComponent({
      props: { runId: String },
      setup(props) {
        const { snapshot } = useRunStream(() => ({ runId: props.runId, url: `/api/stream/runs/${props.runId}`, resume: "none" }));
        window.mounts = (window.mounts || 0) + 1;
        return () => h("p", { id: "run" }, snapshot.value ? `${snapshot.value.state.runId} ${snapshot.value.state.workers.map((w) => w.name).join()}` : "null");
      },
    });
    const current = (window.current = ref(first));
    createApp({ setup: () => () => h(Run, { runId: current.value }) }).mount("#app");
  }, runs[0]);
  await page.waitForFunction((r) => document.getElementById("run").textContent === `${r} run 0`, runs[0], { timeout: 10000 });
  await until(async () => (await stats(runs[0])).connections_open === 1, 5000);
  assert.equal((await stats(runs[0])).connections_open, 1);

  await page.evaluate((r) => { window.current.value = r; }, runs[1]);
  await page.waitForFunction((r) => document.getElementById("run").textContent === `${r} run 1`, runs[1], { timeout: 10000 })
    .catch((e) => assert.fail(`the reused component did not stream the new run: ${e.message}`));
  assert.equal(await page.evaluate(() => window.mounts), 1, "the component was reused, not remounted");
  await until(async () => (await stats(runs[0])).connections_open === 0, 5000);
  assert.equal((await stats(runs[0])).connections_open, 0, "the old run's stream was closed");
  assert.equal((await stats(runs[1])).connections_open, 1);
  assert.equal((await stats(runs[1])).connections_total, 1, "one connection for the new run");
  assert.equal((await stats(runs[0])).connections_total, 1, "the old run was not reopened");
  assert.deepEqual(errors, []);
  await page.close();
});

// Issue 29: "Vue outside a component during SSR neither starts loading nor
// leaves an unhandled rejection". Server rendering in Node with Vue's own
// renderer (the Vue example's node_modules): the composable in a store's
// effectScope and in a rendered component; `fetch` (how the glue loads the
// wasm) is watched.
test("vue composable during server rendering: no wasm loading, no unhandled rejection", () => {
  const vueModules = fileURLToPath(new URL("../../www/examples/vue/node_modules", import.meta.url));
  if (!existsSync(vueModules)) assert.fail("www/examples/vue/node_modules is missing: run ./scripts/examples.sh");
  const dir = fileURLToPath(new URL("../../target/vue-ssr", import.meta.url));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // The package as installed: its files, with `vue` resolved from the example's node_modules.
  cpSync(fileURLToPath(new URL("../../pkg", import.meta.url)), `${dir}/runstream`, { recursive: true });
  symlinkSync(vueModules, `${dir}/node_modules`, "dir");
  writeFileSync(`${dir}/ssr.mjs`, `
    const seen = { fetches: 0, rejections: [] };
    process.on("unhandledRejection", (e) => seen.rejections.push(String(e && e.message || e)));
    globalThis.fetch = (...args) => { seen.fetches++; return Promise.reject(new Error("fetch during SSR: " + args[0])); };
    const { createSSRApp, effectScope, h } = await import("vue");
    const { renderToString } = await import("vue/server-renderer");
    const { useRunStream } = await import("./runstream/vue.js");
    const scope = effectScope();
    const store = scope.run(() => useRunStream({ runId: "ssr_store" }));
    const html = await renderToString(createSSRApp({
      setup() {
        const { snapshot } = useRunStream({ runId: "ssr_component" });
        return () => h("p", String(snapshot.value));
      },
    }));
    await new Promise((r) => setTimeout(r, 300));
    scope.stop();
    console.log(JSON.stringify({ ...seen, html, store: [store.snapshot.value, store.stream.value] }));
  `);
  const out = JSON.parse(execFileSync(process.execPath, [`${dir}/ssr.mjs`], { encoding: "utf8" }).trim().split("\n").pop());
  assert.deepEqual(out, { fetches: 0, rejections: [], html: "<p>null</p>", store: [null, null] });
  rmSync(dir, { recursive: true, force: true });
});

// Issue 29: "React StrictMode is tested in a development build (double mount:
// one connection, no leak)". StrictMode mounts, unmounts and mounts every
// component again only in React's development build (scripts/examples.sh
// builds the React example once more with NODE_ENV=development into
// dist/dev); the production build above never double-mounts.
test("react example in a development build: StrictMode's double mount makes one connection per run and leaks none", async () => {
  if (!existsSync(new URL("../../www/examples/react/dist/dev/index.html", import.meta.url))) {
    assert.fail("www/examples/react/dist/dev is missing: run ./scripts/examples.sh");
  }
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 7, workers: 3, speed: 1 });
  const session = `chat_dev_${run_id}`;
  await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));
  await page.goto(`${server}/examples/react/dist/dev/index.html?run=${run_id}&session=${session}`);
  await page.waitForSelector('[data-testid="workers"] li', { timeout: 15000 });
  await page.waitForTimeout(500);
  // React's development build says so on the console (the production build never does).
  assert.ok(consoleLines.some((l) => l.includes("React DevTools")), `a development build of React: ${JSON.stringify(consoleLines)}`);
  for (const run of [run_id, session]) {
    const st = await stats(run);
    assert.equal(st.connections_total, 1, `${run}: one connection through StrictMode's double mount`);
    assert.equal(st.connections_open, 1, `${run}: open`);
  }
  // Unmount closes every stream (nothing left open by the discarded first mount); remount opens one per run.
  await page.click('[data-testid="toggle"]');
  await until(async () => (await stats(session)).connections_open === 0, 5000);
  assert.equal((await stats(session)).connections_open, 0, "unmount closed the chat stream");
  await page.click('[data-testid="toggle"]');
  await until(async () => (await stats(session)).connections_open === 1, 5000);
  await page.waitForTimeout(500);
  const after = await stats(session);
  assert.equal(after.connections_open, 1);
  assert.equal(after.connections_total, 2, "a remount under StrictMode makes exactly one connection");
  assert.deepEqual(errors, []);
  await page.close();
});
