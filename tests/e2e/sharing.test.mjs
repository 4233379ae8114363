// Connection sharing (API.md "Sharing connections", issue 14 part 1): 50
// websocket runs in one tab hold one WebSocket; the server drops it 5 times
// (POST /api/admin/restart ends every socket); there is never more than one
// socket open at a time, and every run converges to the server's snapshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

let browser;
let page;
let errors;
const sockets = { opened: 0, open: 0, maxOpen: 0 };

before(async () => {
  browser = await launch();
  page = await (await browser.newContext()).newPage();
  errors = watchErrors(page);
  page.on("websocket", (ws) => {
    sockets.opened += 1;
    sockets.open += 1;
    sockets.maxOpen = Math.max(sockets.maxOpen, sockets.open);
    ws.on("close", () => { sockets.open -= 1; });
  });
  await page.goto(`${server}/harness.html`);
  await page.evaluate(() => window.ready);
});

after(async () => {
  await browser?.close();
});

test("50 runs in one tab share one WebSocket through 5 server drops", async () => {
  const runs = [];
  for (let i = 0; i < 50; i++) {
    runs.push((await api("POST", "/api/admin/runs", { seed: 500 + i, workers: 3, speed: 2 })).run_id);
  }
  await page.evaluate((runs) => {
    window.shared = runs.map((run) => {
      const s = new window.RunStream({
        runId: run, transport: "websocket", wsUrl: "/api/ws",
        snapshotUrl: `/api/runs/${run}/snapshot`, resume: "none",
        backoff: { initialMs: 50, maxMs: 400, multiplier: 2 },
      });
      s.start();
      return s;
    });
  }, runs);
  const openRuns = () => page.evaluate(() => window.shared.filter((s) => s.getSnapshot().status.connection === "open").length);
  assert.ok(await until(async () => (await openRuns()) === 50, 10000), "every run open");
  assert.equal(sockets.opened, 1, "one socket for 50 runs");
  for (let drop = 1; drop <= 5; drop++) {
    const before = sockets.opened;
    await api("POST", "/api/admin/restart");
    assert.ok(await until(() => sockets.opened > before && sockets.open === 1, 10000), `socket back after drop ${drop}`);
    await new Promise((r) => setTimeout(r, 300));
  }
  const done = () => page.evaluate(() => window.shared.every((s) => s.getSnapshot().status.connection === "closed"));
  assert.ok(await until(done, 60000), "every run finished");
  const snaps = await page.evaluate(() => window.shared.map((s) => s.getSnapshot()));
  for (const [i, run] of runs.entries()) {
    const srv = await api("GET", `/api/runs/${run}/snapshot`);
    const snap = snaps[i];
    assert.equal(snap.state.cursor, srv.event_id, `${run}: cursor`);
    assert.equal(snap.state.status, srv.state.status, `${run}: status`);
    assert.deepEqual(snap.state.workers.map((w) => [w.workerId, w.status]), srv.state.workers.map((w) => [w.worker_id, w.status]), `${run}: workers`);
    assert.equal(snap.metrics.duplicatesDropped, 0, `${run}: duplicates`);
    assert.equal(snap.status.sharing, "solo");
  }
  // One socket at a time, one new socket per drop (a run that finished may
  // let the socket close and the next one reopen it only once all are done).
  assert.equal(sockets.maxOpen, 1, "never two sockets at once");
  assert.ok(sockets.opened >= 6 && sockets.opened <= 8, `${sockets.opened} sockets for 5 drops`);
  await page.evaluate(() => window.shared.forEach((s) => s.close()));
  assert.ok(await until(() => sockets.open === 0, 5000), "the socket closes with the last run");
  assert.deepEqual(errors, []);
});
