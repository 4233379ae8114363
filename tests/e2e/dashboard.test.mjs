// The demo's dashboard view (issue 14): many task runs in one page over one
// WebSocket, reached from the demo's main page. Every run progresses to
// completion and converges to the server's snapshot; the page holds one
// socket (counted by Playwright, by the page and by the server), also after
// the server drops it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, api, server, until, artifacts, watchErrors } from "./lib.mjs";

const N = 12;

test("dashboard: 12 runs over one WebSocket, progressing to completion, connection count 1", async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
    const errors = watchErrors(page);
    const seen = { opened: 0, open: 0, maxOpen: 0 };
    page.on("websocket", (ws) => {
      seen.opened += 1;
      seen.open += 1;
      seen.maxOpen = Math.max(seen.maxOpen, seen.open);
      ws.on("close", () => { seen.open -= 1; });
    });
    // Reached from the demo's main page.
    await page.goto(`${server}/?transport=fetch`);
    const href = await page.getAttribute("#dashboard-link", "href");
    assert.equal(href, "dashboard.html");
    await page.goto(`${server}/${href}?n=${N}&speed=0.5&workers=3`);
    await page.waitForFunction(() => document.getElementById("wasm-status").textContent === "wasm loaded");
    await page.waitForFunction((n) => document.querySelectorAll("#runs tbody tr").length === n, N, { timeout: 10000 });
    const runs = await page.$$eval("#runs tbody tr", (trs) => trs.map((tr) => tr.dataset.runId));
    assert.equal(new Set(runs).size, N, "N distinct runs");

    // Mid-run: several runs streaming at once, one socket, the count shown.
    await page.waitForFunction(() => document.querySelectorAll('#runs tbody td.rconn[data-state="open"]').length >= 6, null, { timeout: 15000 });
    const pill = await page.textContent("#sockets");
    assert.equal(pill, `1 WebSocket for ${N} runs`);
    assert.equal(seen.opened, 1, "one socket for every run");
    // The server agrees: one streaming connection (the suites run one at a
    // time, so this page is its only client), carrying every run.
    const held = await until(async () => {
      const c = await api("GET", "/api/admin/connections");
      return c.open === 1 && c.ws_sockets.open === 1 ? c : null;
    }, 5000);
    assert.ok(held, "the server holds one connection for the page");
    assert.ok(held.ws_subscriptions.open >= 6, `runs subscribed on it: ${JSON.stringify(held)}`);
    assert.match(await page.textContent("#aggregate"), new RegExp(`runs${N}`));
    // Progress moves: some worker finishes while runs are still going.
    await page.waitForFunction(() => [...document.querySelectorAll("#runs .bar > div")].some((d) => parseInt(d.style.width, 10) > 0), null, { timeout: 15000 });
    await page.screenshot({ path: join(artifacts, "dashboard-mid-run.png"), fullPage: true });

    // The server drops the socket: the runs come back over one new socket.
    await api("POST", "/api/admin/restart");
    assert.ok(await until(() => seen.opened === 2 && seen.open === 1, 10000), `one new socket after the drop (${JSON.stringify(seen)})`);

    // Every run completes; the page shows it.
    await page.waitForFunction((n) => document.body.dataset.finished === String(n), N, { timeout: 60000 });
    const rows = await page.$$eval("#runs tbody tr", (trs) => trs.map((tr) => ({
      runId: tr.dataset.runId, status: tr.dataset.status, cursor: Number(tr.dataset.cursor),
      width: tr.querySelector(".bar > div").style.width,
    })));
    for (const row of rows) {
      const snap = await api("GET", `/api/runs/${row.runId}/snapshot`);
      assert.equal(row.status, snap.state.status, `${row.runId}: status`);
      assert.equal(row.cursor, snap.event_id, `${row.runId}: cursor`);
      assert.equal(row.width, "100%", `${row.runId}: progress`);
    }
    const final = await page.evaluate(() => window.runstreamDashboard.rows.map((r) => r.stream.getSnapshot()));
    for (const [i, s] of final.entries()) {
      const snap = await api("GET", `/api/runs/${runs[i]}/snapshot`);
      assert.deepEqual(s.state.workers.map((w) => [w.workerId, w.status]), snap.state.workers.map((w) => [w.worker_id, w.status]), `${runs[i]}: workers`);
      assert.equal(s.metrics.duplicatesDropped, 0, `${runs[i]}: no duplicate`);
    }
    // Never two sockets at once, by Playwright's count and by the page's own.
    assert.equal(seen.maxOpen, 1, "never two sockets at once");
    assert.equal(await page.evaluate(() => document.body.dataset.socketsMaxOpen), "1");
    assert.equal(await page.evaluate(() => document.body.dataset.socketsOpened), String(seen.opened));
    // The socket closes with the last run.
    assert.ok(await until(() => seen.open === 0, 5000), "the socket closes once every run is over");
    await page.waitForFunction(() => document.body.dataset.socketsOpen === "0");
    await page.screenshot({ path: join(artifacts, "dashboard-done.png"), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});

test("dashboard with transport=fetch: one HTTP connection per run, six at most, the rest shown waiting", async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
    const errors = watchErrors(page);
    let sockets = 0;
    page.on("websocket", () => { sockets += 1; });
    await page.goto(`${server}/dashboard.html?n=9&speed=0.5&workers=3&transport=fetch`);
    await page.waitForFunction(() => document.querySelectorAll("#runs tbody tr").length === 9, null, { timeout: 10000 });
    // Chromium's six connections per origin: six stream, three wait, as the page shows.
    await page.waitForFunction(() => document.body.dataset.httpOpen === "6" && document.body.dataset.httpWaiting === "3", null, { timeout: 15000 });
    assert.equal(await page.textContent("#sockets"), "6 HTTP connections streaming, 3 waiting");
    const c = await api("GET", "/api/admin/connections");
    assert.equal(c.sse_streams.open, 6, `the server holds six streams: ${JSON.stringify(c)}`);
    // The waiting ones get a connection as others end, and every run completes.
    await page.waitForFunction(() => document.body.dataset.finished === "9", null, { timeout: 60000 });
    assert.equal(sockets, 0, "no WebSocket on the fetch transport");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
