// End-to-end reliability in a real Chromium against the reference server:
// refresh mid-run, a chaos matrix per transport, seeded random schedules,
// hostile input, and contract checks of every frame the server emitted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, api, server, until, watchErrors } from "./lib.mjs";

const TRANSPORTS = ["fetch", "sse", "websocket"];
const SCHEDULES = Number(process.env.RUNSTREAM_SCHEDULES || 200);
let browser;
let context;
let page;
let errors;
const table = [];

before(async () => {
  browser = await launch();
  context = await browser.newContext();
  page = await context.newPage();
  errors = watchErrors(page);
  await page.goto(`${server}/harness.html`);
  await page.evaluate(() => window.ready);
});

after(async () => {
  await browser?.close();
  if (table.length) {
    console.log("\nscenario | transport | result | duplicates dropped | out of order | reconnects | protocol errors");
    for (const r of table) console.log(`${r.scenario} | ${r.transport} | ${r.ok ? "pass" : "FAIL"} | ${r.dup} | ${r.ooo ?? "—"} | ${r.rec} | ${r.perr}`);
  }
});

function opts(run, transport, extra = {}) {
  return {
    runId: run,
    transport,
    url: `/api/stream/runs/${run}`,
    wsUrl: "/api/ws",
    snapshotUrl: `/api/runs/${run}/snapshot`,
    resume: "none",
    backoff: { initialMs: 50, maxMs: 400, multiplier: 2 },
    ...extra,
  };
}

/** The final UI state equals the server's snapshot; nothing duplicated, lost or stuck. */
async function assertConverged(run, snap, label) {
  const server = await api("GET", `/api/runs/${run}/snapshot`);
  assert.equal(snap.status.connection, "closed", `${label}: ${JSON.stringify(snap.status)}`);
  assert.equal(snap.state.cursor, server.event_id, `${label}: cursor`);
  assert.equal(snap.state.status, server.state.status, `${label}: run status`);
  assert.deepEqual(
    snap.state.workers.map((w) => [w.workerId, w.jobId, w.name, w.status, w.tools.map((t) => [t.toolCallId, t.name, t.status])]),
    server.state.workers.map((w) => [w.worker_id, w.job_id, w.name, w.status, w.tools.map((t) => [t.tool_call_id, t.name, t.status])]),
    `${label}: workers`,
  );
  assert.deepEqual(snap.state.supervisor, { completed: server.state.supervisor.completed, summary: server.state.supervisor.summary });
  const ids = snap.state.workers.map((w) => w.workerId);
  assert.equal(new Set(ids).size, ids.length, `${label}: duplicate worker`);
  assert.ok(snap.state.workers.every((w) => !["running", "pending"].includes(w.status)), `${label}: stuck worker`);
  assert.ok(snap.state.workers.every((w) => w.tools.every((t) => t.status !== "running")), `${label}: stuck tool`);
}

async function runScenario(name, transport, createBody, during, check) {
  const { run_id } = await api("POST", "/api/admin/runs", createBody);
  const p = page.evaluate(([o]) => window.streamToEnd(o, 30000), [opts(run_id, transport)]);
  if (during) await during(run_id);
  const snap = await p;
  const row = { scenario: name, transport, ok: false, dup: snap.metrics.duplicatesDropped, ooo: snap.metrics.outOfOrder, rec: snap.metrics.reconnects, perr: snap.metrics.protocolErrors };
  table.push(row);
  await assertConverged(run_id, snap, `${name}/${transport}`);
  if (check) await check(snap, run_id, transport);
  row.ok = true;
}

const scenarios = [
  ["duplicates", { seed: 1, workers: 5, instant: true, chaos: { seed: 1, dup_rate: 0.4 } }, null,
    async (s, run) => {
      const st = await api("GET", `/api/admin/runs/${run}/stats`);
      assert.equal(s.metrics.duplicatesDropped, st.dups_sent);
    }],
  ["tool-before-worker+job-only", { seed: 12, workers: 8, instant: true }, null, null],
  ["reorder", { seed: 2, workers: 5, instant: true, chaos: { seed: 2, reorder_rate: 0.4 } }, null,
    (s) => assert.ok(s.metrics.outOfOrder > 0 || s.metrics.terminations.resync > 0)],
  ["disconnect-loop", { seed: 3, workers: 5, instant: true, chaos: { seed: 3, drop_every: 3 } }, null,
    (s) => assert.ok(s.metrics.reconnects >= 5, JSON.stringify(s.metrics))],
  ["server-restart", { seed: 4, workers: 4, speed: 6 },
    async () => {
      await new Promise((r) => setTimeout(r, 700));
      await api("POST", "/api/admin/restart");
    },
    (s) => assert.ok(s.metrics.reconnects >= 1)],
  ["malformed+oversized", { seed: 5, workers: 4, instant: true, chaos: { seed: 5, malformed_rate: 0.25, oversize_bytes: 3000000 } }, null,
    (s) => {
      assert.ok(s.metrics.protocolErrors > 0);
      assert.ok(s.metrics.protocolErrorsByKind.too_large >= 1, JSON.stringify(s.metrics.protocolErrorsByKind));
    }],
  ["buffering-proxy", { seed: 6, workers: 3, instant: true, chaos: { seed: 6, hold_first_ms: 1500 } }, null,
    (s) => assert.ok(s.metrics.timeToFirstEventMs >= 1400, `${s.metrics.timeToFirstEventMs}`)],
  ["hostile-retry-0-and-foreign-ids", { seed: 7, workers: 4, instant: true, chaos: { seed: 7, retry_ms: 0, drop_every: 4, malformed_rate: 0.3, binary_frame: true } }, null,
    (s, run, transport) => {
      assert.ok(s.metrics.protocolErrors > 0 && s.metrics.reconnects > 0);
      if (transport === "websocket") assert.ok(s.metrics.protocolErrorsByKind.binary_frame >= 1, JSON.stringify(s.metrics.protocolErrorsByKind));
    }],
];

for (const transport of TRANSPORTS) {
  for (const [name, body, during, check] of scenarios) {
    test(`chaos ${name} over ${transport}`, async () => {
      // oversize only matters where a frame can be that big (SSE bytes); WS has a 1 MiB server limit.
      await runScenario(name, transport, body, during, check);
    });
  }

  test(`pruned log → snapshot over ${transport}`, async () => {
    const { run_id } = await api("POST", "/api/admin/runs", { seed: 8, workers: 6, speed: 3 });
    const p = page.evaluate(([o]) => window.streamToEnd(o, 40000), [opts(run_id, transport)]);
    await until(() => page.evaluate(() => window.current && window.current.getSnapshot().state.cursor >= 4));
    await context.setOffline(true);
    await page.evaluate(() => window.dispatchEvent(new Event("offline")));
    await new Promise((r) => setTimeout(r, 1500));
    const snap0 = await api("GET", `/api/runs/${run_id}/snapshot`);
    await api("POST", `/api/admin/runs/${run_id}/prune`, { keep_from: snap0.event_id });
    await context.setOffline(false);
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    const snap = await p;
    table.push({ scenario: "pruned-log", transport, ok: true, dup: snap.metrics.duplicatesDropped, rec: snap.metrics.reconnects, perr: snap.metrics.protocolErrors });
    await assertConverged(run_id, snap, `pruned/${transport}`);
    assert.ok(snap.metrics.eventsApplied < snap.state.cursor, "the snapshot covered the pruned part");
    assert.equal(snap.metrics.terminations.offline, 1);
  });

  test(`offline and back, hidden tab over ${transport}`, async () => {
    const { run_id } = await api("POST", "/api/admin/runs", { seed: 9, workers: 5, speed: 4 });
    const p = page.evaluate(([o]) => window.streamToEnd(o, 40000), [opts(run_id, transport)]);
    await until(() => page.evaluate(() => window.current && window.current.getSnapshot().state.cursor >= 3));
    // A hidden tab: rAF stops; the timer fallback keeps state converging.
    await page.evaluate(() => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    await context.setOffline(true);
    await page.evaluate(() => window.dispatchEvent(new Event("offline")));
    await new Promise((r) => setTimeout(r, 1000));
    const mid = await page.evaluate(() => window.current.getSnapshot().status.connection);
    assert.equal(mid, "offline");
    await context.setOffline(false);
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    const snap = await p;
    await page.evaluate(() => {
      delete document.hidden;
      delete document.visibilityState;
      document.dispatchEvent(new Event("visibilitychange"));
    });
    table.push({ scenario: "offline+hidden", transport, ok: true, dup: snap.metrics.duplicatesDropped, rec: snap.metrics.reconnects, perr: snap.metrics.protocolErrors });
    await assertConverged(run_id, snap, `offline/${transport}`);
  });
}

test("hostile: a 50 MB frame over fetch is counted, the stream stays up, wasm memory stays bounded", async () => {
  const before = await page.evaluate(() => window.wasmMemory());
  const { run_id } = await api("POST", "/api/admin/runs", { seed: 13, workers: 3, instant: true, chaos: { seed: 13, oversize_bytes: 50_000_000 } });
  const snap = await page.evaluate(([o]) => window.streamToEnd(o, 60000), [opts(run_id, "fetch")]);
  const after = await page.evaluate(() => window.wasmMemory());
  await assertConverged(run_id, snap, "50MB/fetch");
  assert.equal(snap.metrics.protocolErrorsByKind.too_large, 1);
  assert.ok(after - before < 8 * 1024 * 1024, `wasm memory grew ${before} → ${after}`);
  table.push({ scenario: "50MB-frame", transport: "fetch", ok: true, dup: 0, rec: snap.metrics.reconnects, perr: snap.metrics.protocolErrors });
});

test(`refresh mid-run resumes from the stored cursor (fetch, sse, websocket)`, async () => {
  for (const transport of TRANSPORTS) {
    const { run_id } = await api("POST", "/api/admin/runs", { seed: 10, workers: 6, speed: 3 });
    const o = opts(run_id, transport, { resume: "session" });
    await page.evaluate(([o]) => {
      window.s = new window.RunStream(o);
      window.s.start();
    }, [o]);
    await until(() => page.evaluate(() => window.s.getSnapshot().state.cursor >= 8));
    await page.reload();
    await page.evaluate(() => window.ready);
    const restored = await page.evaluate(([o]) => {
      window.s = new window.RunStream(o);
      const c = window.s.getSnapshot().state.cursor;
      window.s.start();
      return c;
    }, [o]);
    assert.ok(restored >= 8, `restored cursor ${restored}`);
    await until(() => page.evaluate(() => window.s.getSnapshot().status.connection === "closed"), 40000);
    const snap = await page.evaluate(() => window.s.getSnapshot());
    await page.evaluate(() => window.s.close());
    await assertConverged(run_id, snap, `refresh/${transport}`);
    assert.ok(snap.metrics.eventsApplied < snap.state.cursor, "replay started from the stored cursor");
    assert.ok(snap.state.supervisor.completed);
  }
  await page.evaluate(() => sessionStorage.clear());
});

test(`${SCHEDULES} seeded random schedules converge`, async () => {
  const failures = [];
  const batch = 10;
  for (let i = 0; i < SCHEDULES; i += batch) {
    const seeds = Array.from({ length: Math.min(batch, SCHEDULES - i) }, (_, k) => 1000 + i + k);
    const runs = await Promise.all(
      seeds.map(async (seed) => {
        // Knobs drawn from the seed.
        const r = (n) => ((seed * 2654435761) >>> (n * 3)) % 100 / 100;
        const chaos = {
          seed,
          dup_rate: r(1) * 0.4,
          reorder_rate: r(2) * 0.3,
          drop_every: r(3) > 0.5 ? 3 + Math.floor(r(4) * 10) : 0,
          malformed_rate: r(5) > 0.6 ? 0.1 : 0,
        };
        const transport = TRANSPORTS[seed % 3];
        const { run_id } = await api("POST", "/api/admin/runs", { seed, workers: 2 + (seed % 5), instant: true, chaos });
        return { seed, run_id, transport, chaos };
      }),
    );
    const snaps = await page.evaluate(
      (list) => Promise.all(list.map((o) => window.streamToEnd(o, 20000))),
      runs.map((r) => opts(r.run_id, r.transport)),
    );
    for (let k = 0; k < runs.length; k++) {
      try {
        await assertConverged(runs[k].run_id, snaps[k], `seed ${runs[k].seed}`);
      } catch (e) {
        failures.push(`seed ${runs[k].seed} (${runs[k].transport}, ${JSON.stringify(runs[k].chaos)}): ${e.message.split("\n")[0]}`);
      }
    }
  }
  console.log(`schedules run: ${SCHEDULES}, failed: ${failures.length}`);
  assert.deepEqual(failures, [], `replay a failing seed with RUNSTREAM_SCHEDULES and the seed above`);
});

test("contract: every frame the server emitted validates against PROTOCOL.md", async () => {
  const frames = await api("GET", "/api/admin/frames");
  assert.ok(frames.length > 1000, `${frames.length} frames`);
  const rfc3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
  const byRun = new Map();
  for (const f of frames) {
    const e = JSON.parse(f.frame);
    assert.equal(typeof e.run_id, "string");
    assert.ok(e.run_id.length >= 1 && e.run_id.length <= 128);
    assert.equal(e.run_id, f.run_id);
    assert.ok(Number.isInteger(e.event_id) && e.event_id >= 1 && e.event_id <= 2 ** 53 - 1);
    assert.equal(typeof e.type, "string");
    assert.match(e.timestamp, rfc3339);
    assert.equal(typeof e.payload, "object");
    assert.ok(e.payload !== null && !Array.isArray(e.payload));
    if (e.type === "snapshot") continue;
    if (!byRun.has(e.run_id)) byRun.set(e.run_id, new Map());
    const seen = byRun.get(e.run_id);
    const prev = seen.get(e.event_id);
    if (prev) assert.equal(prev, f.frame, "an id always carries the same event");
    seen.set(e.event_id, f.frame);
  }
  // Dense ids per run: within the server's window every id up to the highest emitted was emitted.
  for (const [run, seen] of byRun) {
    const st = await api("GET", `/api/admin/runs/${run}/stats`);
    const ids = [...seen.keys()].sort((a, b) => a - b);
    const max = ids[ids.length - 1];
    assert.ok(max <= st.last_event_id, `run ${run}: id beyond the log`);
    const inWindow = ids.filter((i) => i >= st.first_event_id);
    if (inWindow.length) {
      assert.equal(max - inWindow[0] + 1, inWindow.length, `run ${run}: ids not dense`);
    }
  }
  assert.deepEqual(errors.filter((e) => !e.includes("listener threw")), []);
});
