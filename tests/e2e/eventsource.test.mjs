// Native EventSource hears only the event names a page registers (issue 27):
// an event type the client does not know, arriving mid-run on a live run, is
// never delivered to script, so the client sees a gap at its id. The client
// registers every PROTOCOL §4 type (run.cancel_requested included); an
// unknown one must be repaired (from the snapshot endpoint) or skipped and
// counted, never a reconnect loop: the server's connection count for the run
// is held for seconds after the repair, and a second unknown event costs a
// bounded number of connections again.
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

const stats = (run) => api("GET", `/api/admin/runs/${run}/stats`);
const append = (run, type, payload) => api("POST", `/api/admin/runs/${run}/append`, { type, payload });

for (const withSnapshot of [true, false]) {
  test(`native EventSource: an unknown event type mid-run is ${withSnapshot ? "repaired from the snapshot endpoint" : "skipped and counted"}, never a reconnect loop`, { timeout: 60000 }, async () => {
    const { run_id: run } = await api("POST", "/api/admin/runs", { kind: "chat" });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(`${server}/harness.html`);
    await page.evaluate(() => window.ready);
    await page.evaluate(([run, withSnapshot]) => {
      const s = new window.RunStream({
        runId: run,
        transport: "sse",
        url: `/api/stream/runs/${run}`,
        // null turns the default snapshot endpoint off: the gap can only be skipped.
        snapshotUrl: withSnapshot ? `/api/runs/${run}/snapshot` : null,
        resume: "none",
        backoff: { initialMs: 50, maxMs: 400, multiplier: 2 },
      });
      s.start();
      window.es = s;
    }, [run, withSnapshot]);
    await until(() => page.evaluate(() => window.es.getSnapshot().status.connection === "open"), 10000, 50);
    await append(run, "worker.started", { worker_id: "w1", name: "before" });
    await until(() => page.evaluate(() => window.es.getSnapshot().state.cursor === 1), 10000, 50);
    // An event type this client does not know (forward compatibility, PROTOCOL §1), then a known one.
    await append(run, "progress.tick", { n: 1 });
    await append(run, "worker.started", { worker_id: "w2", name: "after" });
    const reached = await until(() => page.evaluate(() => {
      const s = window.es.getSnapshot();
      return s.state.cursor >= 3 && s.state.workers.length === 2 && s.status.connection === "open";
    }), 20000, 50);
    const snap = await page.evaluate(() => window.es.getSnapshot());
    assert.ok(reached, `the run moved past the unknown event: ${JSON.stringify({ cursor: snap.state.cursor, status: snap.status, metrics: snap.metrics })}`);
    if (!withSnapshot) assert.equal(snap.metrics.gapsSkipped, 1, `the unknown id is skipped and counted: ${JSON.stringify(snap.metrics)}`);
    const held = (await stats(run)).connections_total;
    assert.ok(held <= 4, `a bounded number of connections for one unknown event: ${held}`);
    // Quiet for seconds: no reconnect loop.
    await new Promise((r) => setTimeout(r, 4000));
    assert.equal((await stats(run)).connections_total, held, "the connection count holds");
    // A second unknown event costs a bounded number again, and the run goes on.
    await append(run, "progress.tick", { n: 2 });
    await append(run, "worker.started", { worker_id: "w3", name: "later" });
    await until(() => page.evaluate(() => window.es.getSnapshot().state.workers.length === 3), 20000, 50);
    await new Promise((r) => setTimeout(r, 3000));
    const after = (await stats(run)).connections_total;
    assert.ok(after - held <= 3, `a bounded number of connections for the second one: ${held} → ${after}`);
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal((await stats(run)).connections_total, after, "the count holds again");
    await page.evaluate(() => window.es.close());
    await page.close();
    assert.deepEqual(errors.filter((e) => !e.includes("listener threw")), []);
  });
}

test("native EventSource hears run.cancel_requested (a registered type): cancelRequested without a gap or a reconnect", { timeout: 30000 }, async () => {
  const { run_id: run } = await api("POST", "/api/admin/runs", { seed: 8, workers: 6, speed: 0.3 });
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${server}/harness.html`);
  await page.evaluate(() => window.ready);
  await page.evaluate((run) => {
    const s = new window.RunStream({ runId: run, transport: "sse", url: `/api/stream/runs/${run}`, snapshotUrl: null, resume: "none" });
    s.start();
    window.es = s;
  }, run);
  await until(() => page.evaluate(() => window.es.getSnapshot().state.cursor >= 1), 10000, 50);
  const r = await fetch(`${server}/api/runs/${run}/cancel`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_request_id: "es-1" }),
  });
  assert.equal(r.status, 202);
  const { event_id: id } = await r.json();
  const seen = await until(() => page.evaluate((id) => {
    const s = window.es.getSnapshot();
    return s.state.cancelRequested && s.state.cursor >= id;
  }, id), 10000, 50);
  const snap = await page.evaluate(() => window.es.getSnapshot());
  assert.ok(seen, JSON.stringify(snap.state));
  assert.equal(snap.metrics.reconnects, 0, `applied as it arrived: ${JSON.stringify(snap.metrics.terminations)}`);
  assert.equal(snap.metrics.gapsSkipped, 0);
  await page.evaluate(() => window.es.close());
  await page.close();
  assert.deepEqual(errors.filter((e) => !e.includes("listener threw")), []);
});
