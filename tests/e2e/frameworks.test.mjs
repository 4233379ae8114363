// The npm package as React and Vue users consume it: Vite-built examples that
// install the packed tarball, driven in Chromium against the reference server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
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
    await page.click("form button");
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="messages"] li.user').length === 1, null, { timeout: 1000 });
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
