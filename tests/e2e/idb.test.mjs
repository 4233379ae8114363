// The body store's upkeep (IndexedDB, `js/idb.js`), through the public API in
// a real Chromium: at page load a stream that persists removes the bodies,
// head and last-use time of every run idle for 7 days, and keeps the others;
// a page without IndexedDB still streams. (Writes and reads of the store are
// covered by persist.test.mjs: reload, full history, quota.)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const DAY = 24 * 3600 * 1000;

/** Everything in the page's "runstream" database: { store: [[key, value], ...] }. */
const dump = () =>
  new Promise((resolve, reject) => {
    const r = indexedDB.open("runstream");
    r.onerror = () => reject(r.error);
    r.onsuccess = async () => {
      const db = r.result;
      const out = {};
      for (const name of db.objectStoreNames) {
        const st = db.transaction(name).objectStore(name);
        const [keys, values] = await Promise.all(
          [st.getAllKeys(), st.getAll()].map((q) => new Promise((res) => (q.onsuccess = () => res(q.result)))),
        );
        out[name] = keys.map((k, i) => [k, values[i]]);
      }
      db.close();
      resolve(out);
    };
  });

test("page load removes the bodies, head and last use of runs idle for 7 days, and keeps the rest", async () => {
  const { run_id } = await api("POST", "/api/admin/runs", { tokens: 20, rate: 50 });
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);
  // Any page of the origin: seed the database as an earlier visit would have left it.
  await page.goto(`${server}/pkg/package.json`);
  await page.evaluate(
    ({ now, DAY }) =>
      new Promise((resolve, reject) => {
        const r = indexedDB.open("runstream", 1);
        r.onupgradeneeded = () => ["bodies", "runs", "heads"].forEach((n) => r.result.createObjectStore(n));
        r.onerror = () => reject(r.error);
        r.onsuccess = () => {
          const db = r.result;
          const t = db.transaction(["bodies", "runs", "heads"], "readwrite");
          const [bodies, runs, heads] = ["bodies", "runs", "heads"].map((n) => t.objectStore(n));
          for (const [area, run, age] of [["session", "old-run", 7.1 * DAY], ["local", "old-local", 30 * DAY], ["session", "recent-run", 6.9 * DAY]]) {
            bodies.put("batch-1", [area, run, 1]);
            bodies.put("batch-2", [area, run, 2]);
            heads.put("head", [area, run]);
            runs.put(now - age, [area, run]);
          }
          t.oncomplete = () => {
            db.close();
            resolve();
          };
          t.onerror = () => reject(t.error);
        };
      }),
    { now: Date.now(), DAY },
  );
  await page.goto(`${server}/bench/history.html?run=${run_id}&resume=session`);
  await until(() => page.evaluate(() => window.stream?.getSnapshot().status.connection === "closed"), 20000);
  let db;
  await until(async () => {
    db = await page.evaluate(dump);
    return !db.runs.some(([k]) => k[1] === "old-run" || k[1] === "old-local");
  }, 10000);
  // Only the seeded runs (the stream's own run may have written records too).
  const seeded = new Set(["old-run", "old-local", "recent-run"]);
  const runsOf = (store) => [...new Set(db[store].filter(([k]) => seeded.has(k[1])).map(([k]) => `${k[0]}/${k[1]}`))].sort();
  assert.deepEqual(runsOf("bodies"), ["session/recent-run"], "bodies of runs idle for over 7 days removed, of one idle for 6.9 days kept");
  assert.deepEqual(runsOf("heads"), ["session/recent-run"]);
  assert.ok(runsOf("runs").includes("session/recent-run"));
  assert.ok(!runsOf("runs").some((r) => r.includes("old-")));
  assert.deepEqual(errors, []);
  await context.close();
});

test("a page whose IndexedDB throws on access still streams, resumes from session storage and reports no error", async () => {
  const { run_id } = await api("POST", "/api/admin/runs", { tokens: 30, rate: 50 });
  const context = await browser.newContext();
  await context.addInitScript(() => {
    Object.defineProperty(globalThis, "indexedDB", { get() { throw new DOMException("denied", "SecurityError"); } });
  });
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${server}/bench/history.html?run=${run_id}&resume=session`);
  await until(() => page.evaluate(() => window.stream?.getSnapshot().state.cursor >= 10), 20000);
  await page.reload();
  await until(() => page.evaluate(() => window.stream?.getSnapshot().status.connection === "closed"), 20000);
  const snap = await page.evaluate(() => window.stream.getSnapshot());
  const server_ = await api("GET", `/api/runs/${run_id}/snapshot`);
  assert.equal(snap.state.cursor, server_.event_id);
  assert.equal(snap.state.messages.length, server_.state.messages.length);
  assert.equal(snap.metrics.duplicatesDropped, 0);
  // Resumed from the stored cursor: the reloaded page applied fewer events than the run has.
  assert.ok(snap.metrics.eventsApplied < server_.event_id, `restarted from event 1 (${snap.metrics.eventsApplied} of ${server_.event_id} applied)`);
  assert.deepEqual(errors, []);
  await context.close();
});
