// The demo page, opened mid-run with chaos on, as a user sees it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, api, server, until, artifacts, watchErrors } from "./lib.mjs";

test("demo shows live data in every panel mid-run with chaos on, and survives a refresh", async () => {
  const { run_id } = await api("POST", "/api/admin/runs", {
    seed: 77, workers: 5, speed: 2,
    chaos: { seed: 77, dup_rate: 0.2, reorder_rate: 0.2, drop_every: 8, malformed_rate: 0.1 },
  });
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 950 } });
    const errors = watchErrors(page);
    await page.goto(`${server}/?run=${run_id}&transport=fetch`);
    await page.waitForFunction(() => document.getElementById("wasm-status").textContent === "wasm loaded");
    // Tasks stream in (mid-run): workers with tools, cursor moving.
    await page.waitForFunction(() => document.querySelectorAll("#workers > li").length >= 2, null, { timeout: 15000 });
    // Chat: send, optimistic at once, reply streams under it.
    await page.fill("#send-input", "hello there");
    // Clicked as an element: the panels grow while the run streams.
    await page.$eval("#send-form button", (b) => b.click());
    await page.waitForFunction(() => document.querySelectorAll("#messages li.user").length === 1, null, { timeout: 2000 });
    await page.waitForFunction(() => [...document.querySelectorAll("#messages li.assistant .content")].some((e) => e.textContent.length > 20), null, { timeout: 15000 });
    // Diagnostics: the runstream/devtools panel over both streams, counters moving, chaos visible.
    const field = (label, name) =>
      page.evaluate(([label, name]) => document.getElementById("devtools").shadowRoot
        .querySelector(`section[data-label="${label}"] [data-field="${name}"]`)?.textContent ?? null, [label, name]);
    await page.waitForFunction(() => Number(document.getElementById("devtools").shadowRoot
      .querySelector('section[data-label="task"] [data-field="events-applied"]')?.textContent) > 0, null, { timeout: 5000 });
    const applied = Number(await field("task", "events-applied"));
    assert.ok(applied > 0, `events applied: ${applied}`);
    assert.match(await field("task", "duplicates"), /^\d+$/);
    assert.ok((await field("chat", "events-applied")) !== null, "the chat stream has its section");
    await page.waitForTimeout(1500);
    await page.screenshot({ path: join(artifacts, "demo-mid-run.png"), fullPage: true });
    const cursorBefore = await page.evaluate(() => window.runstreamDemo.task.getSnapshot().state.cursor);
    // Refresh mid-run: the page resumes from its stored cursor and converges.
    await page.reload();
    await page.waitForFunction(() => window.runstreamDemo && window.runstreamDemo.task.getSnapshot().state.cursor > 0);
    const resumed = await page.evaluate(() => window.runstreamDemo.task.getSnapshot().state.cursor);
    assert.ok(resumed >= cursorBefore, `restored cursor ${resumed} >= ${cursorBefore}`);
    await page.waitForFunction(() => window.runstreamDemo.task.getSnapshot().status.connection === "closed", null, { timeout: 30000 });
    const final = await page.evaluate(() => window.runstreamDemo.task.getSnapshot());
    const snap = await api("GET", `/api/runs/${run_id}/snapshot`);
    assert.equal(final.state.cursor, snap.event_id);
    assert.deepEqual(final.state.workers.map((w) => [w.workerId, w.status]), snap.state.workers.map((w) => [w.worker_id, w.status]));
    assert.ok(final.state.workers.every((w) => w.status !== "running" && w.status !== "pending"));
    assert.ok(final.metrics.eventsApplied < snap.event_id, "replayed only the tail after the refresh");
    const userMsgs = await page.$$eval("#messages li.user", (l) => l.length);
    assert.equal(userMsgs, 1, "no duplicated message after the refresh");
    await page.screenshot({ path: join(artifacts, "demo-after-refresh.png"), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
