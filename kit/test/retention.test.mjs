// Retention (docs/REDIS.md "Retention", issue 26), on memoryStore and redisStore on a
// real redis-server: a finished run's keys all
// get `retentionS` as their TTL in the step that logs `run.completed`, an unfinished
// run expires `idleRetentionS` after its last write (each write refreshes it), and an
// expired run is unknown (snapshot and stream 404) and can be created again.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";

import { Cluster, Redis } from "ioredis";

import { createRunstream, memoryStore, redisStore, MAX_RETENTION_S, MIN_SEND_CLAIM_IDLE_MS } from "../dist/index.js";
import { haveRedis, startRedis } from "./support/redis.mjs";
import { sleep, startKit, wsClient } from "./helpers.mjs";

const skip = haveRedis() ? false : "redis-server is not installed (scripts/setup.sh installs it)";
let uniq = 0;
const rid = (p) => `${p}_${process.pid}_${++uniq}`;

/** A plain client on the same Redis, to look at what the store wrote. */
function raw(url) {
  if (url.startsWith("redis-cluster://")) {
    const seeds = url.slice("redis-cluster://".length).split(",").map((s) => ({ host: s.split(":")[0], port: Number(s.split(":")[1]) }));
    return new Cluster(seeds);
  }
  return new Redis(url);
}

/** Every key of run `id` with its PTTL (KEYS on every master of a cluster). */
async function keysWithPttl(r, id) {
  const pattern = `runstream:{${id}}:*`;
  const nodes = r instanceof Cluster ? r.nodes("master") : [r];
  const keys = (await Promise.all(nodes.map((n) => n.keys(pattern)))).flat();
  return Promise.all(keys.map(async (k) => [k, await r.pttl(k)]));
}

/** The snapshot's and the SSE stream's statuses for run `id`, and a WebSocket subscribe's answer. */
async function statuses(base, id) {
  const snap = await fetch(`${base}/api/runs/${id}/snapshot`);
  await snap.body?.cancel();
  const ac = new AbortController();
  const sse = await fetch(`${base}/api/stream/runs/${id}`, { signal: ac.signal });
  ac.abort();
  const c = await wsClient(base);
  try {
    c.send({ op: "subscribe", run_id: id });
    const f = await c.next((x) => x.run_id === id && (x.op === "subscribed" || x.op === "error"));
    return [snap.status, sse.status, f.op === "error" ? f.code : f.op];
  } finally {
    c.close();
  }
}

const batch = [{ type: "worker.started", payload: { worker_id: "w1" } }];
const key = { key: "k1", digest: "ab".repeat(32) };

/** Finishes a run with every kind of per-run key; `look` sees its keys (Redis) or null. */
async function finishedRunExpires(store, base, look) {
  const id = rid("ret_fin");
  assert.equal(await store.create(id, { kind: "task" }), true);
  await store.append(id, "run.started", {});
  await store.appendBatch(id, batch, key);
  await store.requestCancel(id, { kind: "run" }, { client_request_id: "c1" });
  if (look) {
    const keys = await look(id);
    assert.ok(keys.length >= 5, JSON.stringify(keys));
    for (const [k, t] of keys) assert.ok(t > 590_000 && t <= 600_000, `${k}: ${t} ms while unfinished`);
  }
  await store.append(id, "run.completed", { status: "cancelled" });
  if (look) {
    const keys = await look(id);
    const names = keys.map(([k]) => k);
    for (const part of ["meta", "log", "keys", "cancel:run", "idem:k1"]) assert.ok(names.includes(`runstream:{${id}}:${part}`), `${part}: ${names}`);
    for (const [k, t] of keys) assert.ok(t > 500 && t <= 1000, `${k}: ${t} ms once finished`);
  }
  assert.deepEqual(await statuses(base, id), [200, 200, "subscribed"]);
  await sleep(1200);
  assert.equal(await store.meta(id), null);
  assert.deepEqual(await statuses(base, id), [404, 404, "not_found"]);
  // A reply's message counter (a producer that was still at it) is refused and writes nothing.
  await assert.rejects(store.nextMessageId(id), { name: "StoreError" });
  if (look) assert.deepEqual(await look(id), []);
  assert.equal(await store.create(id, { kind: "task" }), true, "the id is free again");
  assert.deepEqual(await store.appendBatch(id, batch, key), { kind: "appended", first: 1, last: 1 }, "its idempotency key too");
  // A new run: no state of the old one (this process cached its snapshot at id 4) leaks in.
  for (let i = 0; i < 3; i++) await store.append(id, "run.started", {});
  const snap = await (await fetch(`${base}/api/runs/${id}/snapshot`)).json();
  assert.equal(snap.event_id, 4);
  assert.equal(snap.state.cancel_requested, false, JSON.stringify(snap));
  assert.equal(snap.state.status, "running", JSON.stringify(snap));
}

/** An unfinished run lives `idle` (1 s) after its last write. */
async function idleRunExpires(store, base, look) {
  const id = rid("ret_idle");
  assert.equal(await store.create(id, { kind: "task" }), true);
  await store.append(id, "run.started", {});
  await store.send(id, "crid-1", "hi");
  await sleep(600);
  await store.append(id, "worker.started", { worker_id: "w1" });
  if (look) {
    // The run's own keys are refreshed; a per-item key (the send's) keeps its own TTL, capped.
    for (const [k, t] of await look(id)) {
      const own = /:(meta|log|keys)$/.test(k);
      assert.ok(t > (own ? 800 : 0) && t <= 1000, `${k}: ${t} ms after a refresh`);
    }
  }
  await sleep(600);
  assert.notEqual(await store.meta(id), null, "1.2 s after the first write, 0.6 s after the last: kept");
  assert.deepEqual(await statuses(base, id), [200, 200, "subscribed"]);
  await sleep(600);
  assert.equal(await store.meta(id), null);
  assert.deepEqual(await statuses(base, id), [404, 404, "not_found"]);
  if (look) assert.deepEqual(await look(id), []);
}

describe("retention on memoryStore", { concurrency: true }, () => {
  test("a finished run is forgotten retentionS after its last write, then unknown, and its id is free again", async () => {
    const kit = await startKit({ store: memoryStore({ retentionS: 1, idleRetentionS: 600 }) });
    try {
      await finishedRunExpires(kit.store, kit.base, null);
    } finally {
      await kit.close();
    }
  });
  test("an unfinished run is forgotten idleRetentionS after its last append, send or cancel", async () => {
    const kit = await startKit({ store: memoryStore({ retentionS: 600, idleRetentionS: 1 }) });
    try {
      await idleRunExpires(kit.store, kit.base, null);
    } finally {
      await kit.close();
    }
  });
});

// On a redis-server only: the Lua is the gateway's, whose suite (server/tests/retention.rs)
// runs it on a 3-master cluster too, and e2e-kit-redis-cluster compares the kit's TTLs with
// the gateway's there (kept out of this step for its run time).
for (const kind of ["redis"]) {
  describe(`retention on redisStore (${kind})`, { skip, concurrency: true }, () => {
    let redis, r;
    before(async () => {
      redis = await startRedis(kind);
      r = raw(redis.url);
    });
    after(async () => {
      r?.disconnect();
      await redis?.stop();
    });
    test("a finished run's keys all get retentionS in the step that finishes it, then expire: unknown, id free again", async () => {
      const kit = await startKit({ store: redisStore({ url: redis.url, retentionS: 1, idleRetentionS: 600 }) });
      try {
        await finishedRunExpires(kit.store, kit.base, (id) => keysWithPttl(r, id));
      } finally {
        await kit.close();
      }
    });
    test("an unfinished run's keys live idleRetentionS after its last write", async () => {
      const kit = await startKit({ store: redisStore({ url: redis.url, retentionS: 600, idleRetentionS: 1 }) });
      try {
        await idleRunExpires(kit.store, kit.base, (id) => keysWithPttl(r, id));
      } finally {
        await kit.close();
      }
    });
    test("retention 0 keeps every key forever", async () => {
      const store = redisStore({ url: redis.url, retentionS: 0, idleRetentionS: 0 });
      try {
        const id = rid("ret_forever");
        await store.create(id, { kind: "task" });
        await store.requestCancel(id, { kind: "run" }, { client_request_id: "c1" });
        await store.append(id, "run.completed", { status: "cancelled" });
        const keys = await keysWithPttl(r, id);
        assert.ok(keys.length >= 3, JSON.stringify(keys));
        for (const [k, t] of keys) assert.equal(t, -1, k);
      } finally {
        await store.close();
      }
    });
  });
}

describe("retention and claim-idle options out of range", () => {
  test("are refused with a RangeError naming the option", () => {
    for (const bad of [-1, Number.NaN, Infinity, MAX_RETENTION_S + 1]) {
      assert.throws(() => memoryStore({ retentionS: bad }), (e) => e instanceof RangeError && /retentionS/.test(e.message), String(bad));
      assert.throws(() => memoryStore({ idleRetentionS: bad }), (e) => e instanceof RangeError && /idleRetentionS/.test(e.message), String(bad));
    }
    assert.doesNotThrow(() => memoryStore({ retentionS: 0, idleRetentionS: MAX_RETENTION_S }));
    for (const bad of [0, MIN_SEND_CLAIM_IDLE_MS - 1, Number.NaN]) {
      assert.throws(() => createRunstream({ store: memoryStore(), auth: "none", sendClaimIdleMs: bad }), RangeError, String(bad));
    }
  });
});
