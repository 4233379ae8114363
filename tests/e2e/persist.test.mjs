// Persistence that does not scale with history (issue 13, item 3), in a real
// Chromium against the reference server: a chat run with 1,500 completed
// messages of 3 KB and one streaming at 100 tokens/s (the server's
// long-history knob). A reload mid-stream shows the whole history restored
// from storage (the 300 ms goal is measured by benches/run.mjs section 4b;
// the time is printed here too), loses and duplicates nothing, and resumes
// from the stored cursor (Last-Event-ID), not from 0; writes after the first
// cost a small head; a full storage area (quota) never loses the cursor.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

const HISTORY = Number(process.env.RUNSTREAM_HISTORY || 1500);
const BYTES = 3000;
const TOKENS = 2500; // 25 s at 100 tokens/s: the reload lands mid-stream
let browser;
const figures = [];

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
  if (figures.length) {
    console.log("\ncase | navigation → full history, median (samples) ms | constructor → full history ms | IndexedDB read | cursor restored | events applied after the last reload (to the end) | head per tick after the first (chars, median/max) | persist tick ms (median/max) | bodies written (count, chars)");
    for (const f of figures) console.log(Object.values(f).join(" | "));
  }
});

async function longRun() {
  const { run_id } = await api("POST", "/api/admin/runs", {
    tokens: TOKENS, rate: 100, history: HISTORY, history_bytes: BYTES,
  });
  return run_id;
}

const q = (xs, f) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(f * s.length))] : NaN;
};

/** Loads the page, lets the history arrive and a few persist ticks pass, reloads mid-stream. */
async function reloadMidStream(label, resume, { fill = false, reloads = 3 } = {}) {
  const run = await longRun();
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);
  const url = `${server}/bench/history.html?run=${run}&history=${HISTORY}&resume=${resume}`;
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.fullMs, null, { timeout: 60000 });
  // Let the bodies commit and the streaming message grow over a few persist intervals.
  await until(() => page.evaluate((h) => window.stream.getSnapshot().state.cursor > h * 1.5 + 150, HISTORY), 20000);
  await new Promise((r) => setTimeout(r, 3500));
  if (fill) {
    // Fill the storage area to the brim: every later write of the head is refused.
    await page.evaluate((resume) => {
      const st = resume === "local" ? localStorage : sessionStorage;
      let chunk = "z".repeat(1 << 20);
      let i = 0;
      while (chunk.length >= 1) {
        try {
          st.setItem(`junk-${i++}`, chunk);
        } catch {
          chunk = chunk.slice(0, chunk.length >> 1);
        }
      }
    }, resume);
    await new Promise((r) => setTimeout(r, 2500));
    // The area points to the head kept in IndexedDB.
    const stored = await page.evaluate((run) => sessionStorage.getItem(`runstream:${run}`), run);
    assert.equal(stored, '{"v":3,"head":"body_store"}', `${label}: ${String(stored).slice(0, 80)}`);
  }
  const before = await page.evaluate(() => {
    const s = window.stream.getSnapshot();
    return { cursor: s.state.cursor, ticks: window.ticks.slice(), idb: window.idb };
  });
  // The resume request of each reloaded page.
  let resumes = [];
  page.on("request", (r) => {
    if (r.url().includes(`/api/stream/runs/${run}`)) resumes.push({ url: r.url(), lastEventId: r.headers()["last-event-id"] });
  });
  const samples = [];
  const restores = [];
  let restoredCursor = 0;
  let prevCursor = before.cursor;
  for (let i = 0; i < reloads; i++) {
    resumes = [];
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.fullMs, null, { timeout: 30000 });
    const after = await page.evaluate(() => ({ ...document.body.dataset }));
    samples.push(Number(after.fullMs));
    // Stream constructed → whole history shown: IndexedDB open + read, decode, first frame.
    restores.push(Number(after.fullMs) - Number(after.createdMs));
    // What the first snapshot with the whole history held: the restored state
    // plus whatever the resumed stream applied before that frame.
    restoredCursor = Number(after.fullCursor) - Number(after.fullApplied);
    assert.ok(restoredCursor > HISTORY * 1.5, `${label}: the history was replayed, not restored (${JSON.stringify(after)})`);
    // Full storage or not: the head written at page hide (in IndexedDB when the area is full) holds the latest cursor.
    assert.ok(restoredCursor >= prevCursor, `${label}: restored ${restoredCursor} < ${prevCursor} (progress lost)`);
    await until(() => resumes.length > 0, 5000);
    assert.equal(Number(resumes[0].lastEventId), restoredCursor, `${label}: resume ${JSON.stringify(resumes[0])}`);
    // Let the stream move on before the next reload.
    await new Promise((r) => setTimeout(r, 1200));
    prevCursor = await page.evaluate(() => window.stream.getSnapshot().state.cursor);
  }
  const fullMs = q(samples, 0.5);
  // The 300 ms goal is a benchmark figure (benches/run.mjs section 4b, release
  // server, quiet machine); here a bound ten times looser only catches a
  // restore that stopped scaling (a replay, a quadratic decode), whatever
  // the machine is doing.
  assert.ok(fullMs <= 3000, `${label}: navigation → full history, median of ${samples.map((x) => x.toFixed(0))} ms`);
  // The IndexedDB read alone (what the stream does at construction): one getAll over the run's records.
  const idbRead = await page.evaluate(async ([run, area]) => {
    const t0 = performance.now();
    const db = await new Promise((res, rej) => {
      const r = indexedDB.open("runstream");
      r.onsuccess = () => res(r.result);
      r.onerror = () => rej(r.error);
    });
    const t1 = performance.now();
    const range = IDBKeyRange.bound([area, run], [area, run, []]);
    const values = await new Promise((res, rej) => {
      const r = db.transaction("bodies").objectStore("bodies").getAll(range);
      r.onsuccess = () => res(r.result);
      r.onerror = () => rej(r.error);
    });
    db.close();
    return { openMs: t1 - t0, getAllMs: performance.now() - t1, records: values.length, chars: values.reduce((n, v) => n + v.length, 0) };
  }, [run, resume === "local" ? "local" : "session"]);
  assert.ok(idbRead.records >= 1 && idbRead.records <= 12, `${label}: ${idbRead.records} records`);
  // To the end: nothing lost, nothing duplicated.
  await until(() => page.evaluate(() => window.stream.getSnapshot().state.status === "succeeded"), 40000);
  await new Promise((r) => setTimeout(r, 300));
  const snap = await page.evaluate(() => window.stream.getSnapshot());
  const serverSnap = await api("GET", `/api/runs/${run}/snapshot`);
  assert.equal(snap.state.cursor, serverSnap.event_id, `${label}: cursor`);
  assert.equal(snap.state.messages.length, serverSnap.state.messages.length, `${label}: message count`);
  const ids = snap.state.messages.map((m) => m.messageId);
  assert.equal(new Set(ids).size, ids.length, `${label}: duplicate message`);
  for (let i = 0; i < ids.length; i++) {
    const a = snap.state.messages[i];
    const b = serverSnap.state.messages.find((m) => m.message_id === a.messageId);
    assert.ok(b && a.content === b.content && a.status === b.status, `${label}: message ${a.messageId} differs`);
  }
  assert.ok(snap.metrics.eventsApplied < serverSnap.event_id - HISTORY, `${label}: replayed ${snap.metrics.eventsApplied} events`);
  assert.deepEqual(errors, []);
  // Persist ticks of the first page after the first write (the head only).
  const later = before.ticks.slice(1);
  figures.push({
    case: label,
    fullMs: `${fullMs.toFixed(0)} (${samples.map((x) => x.toFixed(0)).join(", ")})`,
    restoreMs: q(restores, 0.5).toFixed(0),
    idb: `open ${idbRead.openMs.toFixed(1)} + getAll ${idbRead.getAllMs.toFixed(1)} ms, ${idbRead.records} records, ${idbRead.chars} chars`,
    cursor: restoredCursor,
    applied: snap.metrics.eventsApplied,
    head: `${q(later.map((t) => t.chars), 0.5)}/${Math.max(...later.map((t) => t.chars))}`,
    tickMs: `${q(later.map((t) => t.ms), 0.5).toFixed(2)}/${Math.max(...later.map((t) => t.ms)).toFixed(2)}`,
    bodies: `${before.idb.puts}, ${before.idb.chars}`,
  });
  await context.close();
  return { before, later, fullMs, restoredCursor, samples };
}

test("reload mid-stream of a 1,500 × 3 KB history (session): full history restored, resumes from the cursor", async () => {
  const r = await reloadMidStream("session", "session");
  assert.ok(r.later.length >= 2, `persist ticks ${r.later.length}`);
  // Writes after the first: a head of references (~30 chars per completed message), never the history.
  for (const t of r.later) assert.ok(t.chars < HISTORY * 40 + 16384, `a tick wrote ${t.chars} chars`);
  // Bodies: each written once, plus the merges of same-level batches; merging stops at 1 MiB a
  // record (MERGE_MAX_BYTES), so a history replayed over many ticks is rewritten about once, not
  // log2(batches) times (5,460 for 1,500 before the cap, on a slow replay).
  assert.ok(r.before.idb.puts >= HISTORY / 2 && r.before.idb.puts <= 3 * HISTORY, `bodies written ${r.before.idb.puts}`);
});

test("resume: \"local\" works the same", async () => {
  await reloadMidStream("local", "local");
});

test("a full storage area (quota) never loses the cursor: the head goes to IndexedDB", async () => {
  await reloadMidStream("session, storage full", "session", { fill: true, reloads: 1 });
});

// PROTOCOL §6 `job_ids` (issue 29): the stored record carries every
// `job_id → worker_id` mapping of a worker, so after a refresh job-only
// events of its first and of its second job apply at once. (The record held
// one `job_id` per worker: the second job's events waited, parked, for the
// run's end.)
test("a worker's second job survives a refresh: job-only events of both jobs apply at once", { timeout: 60000 }, async () => {
  const { run_id: run } = await api("POST", "/api/admin/runs", { kind: "chat" }); // empty: the test appends
  const append = (type, payload) => api("POST", `/api/admin/runs/${run}/append`, { type, payload });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  const open = async () => {
    await page.evaluate(() => window.ready);
    await page.evaluate((run) => {
      window.s = new window.RunStream({ runId: run, url: `/api/stream/runs/${run}`, resume: "session" });
      window.s.start();
    }, run);
  };
  const state = () => page.evaluate(() => window.s.getSnapshot().state);
  await page.goto(`${server}/harness.html`);
  await open();
  await append("worker.started", { worker_id: "w1", job_id: "j1", name: "search" });
  await append("worker.job_assigned", { worker_id: "w1", job_id: "j2" });
  await append("tool.started", { worker_id: "w1", tool_call_id: "t1", name: "fetch" });
  await until(async () => (await state()).cursor === 3, 10000, 50);
  const w = (await state()).workers[0];
  assert.deepEqual([w.jobId, w.jobIds], ["j2", ["j1", "j2"]], JSON.stringify(w));
  // The stored record has both jobs before the refresh.
  const stored = () => page.evaluate((run) => sessionStorage.getItem(`runstream:${run}`) || "", run);
  await until(async () => (await stored()).includes('"job_ids":["j1","j2"]'), 10000, 50);
  assert.ok((await stored()).includes('"job_ids":["j1","j2"]'), await stored());

  await page.reload();
  await open();
  const restored = await state();
  assert.equal(restored.cursor, 3, "restored from the record");
  assert.deepEqual(restored.workers[0].jobIds, ["j1", "j2"]);
  await until(() => page.evaluate(() => window.s.getSnapshot().status.connection === "open"), 10000, 50);
  await append("tool.completed", { job_id: "j1", tool_call_id: "t1", status: "ok" });
  await append("worker.completed", { job_id: "j2", status: "succeeded" });
  const done = await until(async () => {
    const st = await state();
    return st.cursor === 5 && st.workers[0]?.status === "succeeded" && st.workers[0].tools[0]?.status === "ok";
  }, 10000, 50);
  const st = await state();
  assert.ok(done, `both jobs' events applied at once after the refresh: ${JSON.stringify(st.workers)}`);
  assert.equal(st.workers.length, 1, "no second worker");
  await page.evaluate(() => window.s.close());
  await page.close();
  assert.deepEqual(errors, []);
});
