// redisStore() on a real redis-server and on a real 3-master Redis Cluster
// (started and stopped here): the Store contract (store.ts) and the gateway's
// layout (server/src/store/redis.rs, docs/REDIS.md) key by key.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { Cluster, Redis } from "ioredis";

import { redisStore, loadScripts, keySlot, SEND_QUEUE, SEND_GROUP, GRACES } from "../dist/redis.js";
import { Reducer } from "../dist/reducer.js";
import { haveRedis, startRedis } from "./support/redis.mjs";

const skip = haveRedis() ? false : "redis-server is not installed (scripts/setup.sh installs it)";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A plain client on the same Redis, to look at what the store wrote. */
function raw(url) {
  if (url.startsWith("redis-cluster://")) {
    const seeds = url.slice("redis-cluster://".length).split(",").map((s) => ({ host: s.split(":")[0], port: Number(s.split(":")[1]) }));
    return new Cluster(seeds);
  }
  return new Redis(url);
}

/** Resolves when `fn()` is truthy (bounded). */
async function until(fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out");
    await sleep(20);
  }
}

/** The §6 state of `entries` ([id, envelope]) reduced in one go from an empty state. */
function reduceAll(runId, entries) {
  const r = Reducer.empty(runId);
  try {
    for (const [id, e] of entries) r.apply(id, e);
    return JSON.parse(r.stateJson());
  } finally {
    r.free();
  }
}

let uniq = 0;
const rid = (p = "run") => `${p}_${process.pid}_${++uniq}`;

for (const kind of ["redis", "cluster"]) {
  describe(`redisStore on ${kind}`, { skip, concurrency: false }, () => {
    let redis, a, b, r;
    before(async () => {
      redis = await startRedis(kind);
      a = redisStore({ url: redis.url });
      b = redisStore({ url: redis.url });
      r = raw(redis.url);
    });
    after(async () => {
      await a?.close();
      await b?.close();
      r?.disconnect();
      await redis?.stop();
    });

    test("keySlot (a tail's blocking connection goes to its key's master) agrees with CLUSTER KEYSLOT", { skip: kind !== "cluster" }, async () => {
      for (const k of ["runstream:{run_1}:log", "runstream:sends", "runstream:{}:x", "a{b}c{d}", "runstream:{sé𝄞}:log", "plain", "{}", "x{}y{z}"]) {
        assert.equal(keySlot(k), await r.call("CLUSTER", "KEYSLOT", k), k);
      }
    });

    test("a missing or malformed url is refused at once", { skip: kind !== "redis" }, () => {
      assert.throws(() => redisStore({ url: undefined }), { name: "StoreError", message: /REDIS_URL/ });
      assert.throws(() => redisStore({ url: "http://127.0.0.1:6379" }), { name: "StoreError" });
      assert.throws(() => redisStore({ url: "redis-cluster://" }), { name: "StoreError" });
    });

    test("name, ready, run ids unique across processes", async () => {
      assert.equal(a.name, kind === "redis" ? "redis" : "redis-cluster");
      assert.equal(await a.ready(), true);
      const ids = await Promise.all([...Array(20)].map((_, i) => (i % 2 ? a : b).newRunId()));
      assert.equal(new Set(ids).size, 20);
      for (const id of ids) assert.match(id, /^run_\d{6}_[0-9a-f]{8}$/);
    });

    test("create, meta and the meta hash fields as the gateway writes them", async () => {
      const id = rid();
      assert.equal(await a.meta(id), null);
      assert.equal(await a.create(id, { kind: "task", sessionId: "s1" }), true);
      assert.equal(await b.create(id, { kind: "chat" }), false, "a second create leaves the run");
      assert.deepEqual(await b.meta(id), { kind: "task", firstId: 1, lastId: 0, finished: false, sessionId: "s1" });
      const h = await r.hgetall(`runstream:{${id}}:meta`);
      assert.deepEqual(h, { kind: "task", chaos: "{}", speed: "1", first_id: "1", last_id: "0", next_message: "0", session: "s1" });
    });

    test("dense ids under concurrent appends from two processes; entries 0-<id> with fields e and t", async () => {
      const id = rid();
      await a.create(id, { kind: "task" });
      const ids = await Promise.all([...Array(60)].map((_, i) =>
        (i % 2 ? a : b).append(id, "tool.started", { worker_id: "w1", tool_call_id: `t${i}`, name: "fetch" })));
      assert.deepEqual([...ids].sort((x, y) => x - y), [...Array(60)].map((_, i) => i + 1));
      const entries = await r.xrange(`runstream:{${id}}:log`, "-", "+");
      assert.equal(entries.length, 60);
      entries.forEach(([eid, fields], i) => {
        assert.equal(eid, `0-${i + 1}`);
        assert.deepEqual(fields.filter((_, j) => j % 2 === 0), ["e", "t"]);
        const env = JSON.parse(fields[1]);
        assert.deepEqual(Object.keys(env), ["event_id", "run_id", "type", "timestamp", "payload"]);
        assert.equal(env.event_id, i + 1);
        assert.equal(env.run_id, id);
        assert.equal(fields[3], "tool.started");
      });
      assert.equal(await a.append(rid(), "run.started", {}), null, "unknown run");
    });

    test("read: in order from a cursor, in batches, done after run.completed", async () => {
      const id = rid();
      await a.create(id, { kind: "task" });
      await a.appendBatch(id, [...Array(1500)].map((_, i) => ({ type: "message.delta", payload: { message_id: "m1", delta: `${i}` } })));
      const first = await b.read(id, 0);
      assert.equal(first.events.length, 1000, "a bounded batch");
      assert.equal(first.lastId, 1500);
      const rest = await b.read(id, 1000);
      assert.equal(rest.events.length, 500);
      assert.equal(JSON.parse(rest.events[0]).event_id, 1001);
      assert.equal(rest.done, false);
      await a.append(id, "run.completed", { status: "succeeded" });
      const end = await b.read(id, 1500);
      assert.equal(end.done, true);
      assert.equal(end.events.length, 1);
      assert.equal(await b.read(rid(), 0), null);
    });

    test("appendBatch: all or nothing, idempotent on its key, conflicts, finished, unknown", async () => {
      const id = rid();
      await a.create(id, { kind: "task" });
      const evs = [{ type: "run.started", payload: {} }, { type: "worker.started", payload: { worker_id: "w" } }];
      const key = { key: "k1", digest: "ab12" };
      assert.deepEqual(await a.appendBatch(id, evs, key), { kind: "appended", first: 1, last: 2 });
      assert.deepEqual(await b.appendBatch(id, evs, key), { kind: "repeated", first: 1, last: 2 });
      assert.deepEqual(await b.appendBatch(id, evs, { key: "k1", digest: "cd34" }), { kind: "key_conflict" });
      assert.equal(await r.get(`runstream:{${id}}:idem:k1`), "ab12:1:2");
      const ttl = await r.ttl(`runstream:{${id}}:idem:k1`);
      assert.ok(ttl > 24 * 3600 - 60 && ttl <= 24 * 3600, `idempotency TTL 24 h, got ${ttl}`);
      assert.deepEqual(await a.appendBatch(id, [{ type: "run.completed", payload: { status: "failed" } }]), { kind: "appended", first: 3, last: 3 });
      assert.deepEqual(await a.appendBatch(id, evs, { key: "k2", digest: "ef" }), { kind: "finished" });
      assert.equal((await a.meta(id)).lastId, 3);
      assert.deepEqual(await a.appendBatch(rid(), evs), { kind: "unknown_run" });
    });

    test("appendBatch: the one-reply refusals see the batch's earlier events (all or nothing)", async () => {
      const id = rid("sess");
      await a.create(id, { kind: "chat" });
      const created = (mid, to) => ({ type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: to } });
      const meta = `runstream:{${id}}:meta`;
      const before = await r.hgetall(meta);
      assert.deepEqual(await a.appendBatch(id, [created("x1", "qx"), created("x2", "qx")]), { kind: "reply_taken" });
      assert.deepEqual(await b.appendBatch(id, [created("y1", "qy"), { type: "message.completed", payload: { message_id: "y1", finish_reason: "stop" } },
        { type: "message.delta", payload: { message_id: "y1", delta: "late" } }]), { kind: "reply_taken" });
      assert.deepEqual(await r.hgetall(meta), before, "a refused batch writes nothing");
      assert.equal(await r.xlen(`runstream:{${id}}:log`), 0, "a refused batch appends nothing");
      assert.deepEqual(await a.appendBatch(id, [created("z1", "qz"), { type: "message.delta", payload: { message_id: "z1", delta: "hi" } },
        { type: "message.completed", payload: { message_id: "z1", finish_reason: "stop" } }]), { kind: "appended", first: 1, last: 3 });
      assert.equal(await r.hget(meta, "reply:qz"), "d:completed");
    });

    test("subscribe: an append in another process wakes the tail; reads come from its bounded cache", async () => {
      const id = rid();
      await a.create(id, { kind: "task" });
      await a.append(id, "run.started", {});
      const seen = [];
      const sub = await a.subscribe(id, (last) => seen.push(last));
      assert.ok(sub);
      await b.append(id, "worker.started", { worker_id: "w1" });
      await until(() => seen.includes(2));
      const rep = await a.read(id, 1);
      assert.equal(rep.events.length, 1);
      assert.equal(JSON.parse(rep.events[0]).type, "worker.started");
      sub.close();
      sub.close();
      assert.equal(await a.subscribe(rid(), () => {}), null, "unknown run");
    });

    test("the tail cache is bounded (drop-oldest): an older resume reads from Redis, nothing lost", async () => {
      const small = redisStore({ url: redis.url, tailCache: 8 });
      try {
        const id = rid();
        await small.create(id, { kind: "task" });
        let last = 0;
        const sub = await small.subscribe(id, (n) => { last = n; });
        await b.appendBatch(id, [...Array(30)].map((_, i) => ({ type: "message.delta", payload: { message_id: "m", delta: `${i}` } })));
        await until(() => last === 30);
        const all = [];
        let cursor = 0;
        for (;;) {
          const rep = await small.read(id, cursor);
          if (rep.events.length === 0) break;
          for (const e of rep.events) all.push(JSON.parse(e).event_id);
          cursor = all.at(-1);
        }
        assert.deepEqual(all, [...Array(30)].map((_, i) => i + 1));
        sub.close();
      } finally {
        await small.close();
      }
    });

    test("window: the oldest events become the base (the one reducer's stored form), a resume older than it gets a snapshot", async (t) => {
      const w1 = redisStore({ url: redis.url, window: 50 });
      const w2 = redisStore({ url: redis.url, window: 50 });
      t.after(() => Promise.all([w1.close(), w2.close()]));
      const id = rid();
      await w1.create(id, { kind: "task" });
      const evs = [
        { type: "run.started", payload: {} },
        { type: "worker.started", payload: { worker_id: "w1", job_id: "j1", name: "search" } },
        { type: "tool.started", payload: { job_id: "j2", tool_call_id: "t0", name: "fetch" } },
      ];
      for (let i = 0; i < 60; i++) evs.push({ type: "tool.started", payload: { worker_id: "w1", tool_call_id: `t${i + 1}`, name: "fetch" } });
      evs.push({ type: "worker.job_assigned", payload: { worker_id: "w1", job_id: "j2" } });
      // One by one, as producers append: the window (50) trims past 55 events.
      for (const [i, e] of evs.entries()) await (i % 2 ? w1 : w2).append(id, e.type, e.payload);
      const meta = await a.meta(id);
      assert.equal(meta.lastId, 64);
      assert.ok(meta.firstId > 1, `trimmed: first_id ${meta.firstId}`);
      assert.equal(meta.lastId + 1 - meta.firstId <= 55, true);
      const base = JSON.parse(await r.get(`runstream:{${id}}:base`));
      assert.equal(base.event_id, meta.firstId - 1);
      assert.ok(Array.isArray(base.parked) && base.parked.length === 1, "the job-only event stays parked in the base");
      const entries = await r.xrange(`runstream:{${id}}:log`, "-", "+");
      assert.equal(entries[0][0], `0-${meta.firstId}`);

      const rep = await b.read(id, 0);
      assert.equal(rep.snapshot.eventId, meta.firstId - 1);
      assert.equal(JSON.parse(rep.events[0]).event_id, meta.firstId);
      // The snapshot + window equals the whole log reduced at once.
      const full = reduceAll(id, evs.map((e, i) => [i + 1, JSON.stringify({ event_id: i + 1, run_id: id, type: e.type, timestamp: "2026-01-01T00:00:00Z", payload: e.payload })]));
      const snap = await a.snapshot(id);
      assert.equal(snap.eventId, 64);
      assert.deepEqual(JSON.parse(snap.state), full);
      assert.equal(full.workers[0].tools.find((t) => t.tool_call_id === "t0")?.status, "running", "the parked job-only tool applied once its job was mapped");
      // A fresh process (no cache) answers the same.
      const c = redisStore({ url: redis.url });
      try {
        assert.deepEqual(JSON.parse((await c.snapshot(id)).state), full);
      } finally {
        await c.close();
      }
      assert.equal(await a.prune(rid(), 5), false);
    });

    test("window: a live tail's cache never serves pruned events; a resume older than the window gets the snapshot (PROTOCOL §2a)", async (t) => {
      // The reader follows the run (its tail caches every event), the writer trims past the window.
      const reader = redisStore({ url: redis.url, window: 50 });
      const writer = redisStore({ url: redis.url, window: 50 });
      t.after(() => Promise.all([reader.close(), writer.close()]));
      const id = rid();
      await reader.create(id, { kind: "task" });
      let seen = 0;
      const sub = await reader.subscribe(id, (n) => { seen = n; });
      t.after(() => sub.close());
      for (let i = 0; i < 80; i++) await writer.append(id, "message.delta", { message_id: "m", delta: `${i}` });
      await until(() => seen === 80);
      const meta = await reader.meta(id);
      assert.ok(meta.firstId > 1, `trimmed: first_id ${meta.firstId}`);
      for (const after of [0, meta.firstId - 2]) {
        const rep = await reader.read(id, after);
        assert.ok(rep.snapshot, `read after ${after}: a snapshot (first_id ${meta.firstId})`);
        assert.equal(rep.snapshot.eventId, meta.firstId - 1);
        assert.equal(JSON.parse(rep.events[0]).event_id, meta.firstId);
        assert.equal(rep.lastId, 80);
      }
      // Inside the window the cache still answers, without a snapshot.
      const rep = await reader.read(id, meta.firstId - 1);
      assert.equal(rep.snapshot, undefined);
      assert.equal(JSON.parse(rep.events[0]).event_id, meta.firstId);
      assert.equal(JSON.parse(rep.events.at(-1)).event_id, 80);
    });

    test("send: idempotent per client_request_id, queued on runstream:sends, listed by sendsAfter", async () => {
      const s = rid("sess");
      const one = await a.send(s, "c1", "hello");
      assert.equal(one.fresh, true);
      assert.equal(one.runId, s);
      assert.match(one.messageId, /^msg_\d+$/);
      const again = await b.send(s, "c1", "hello (retried)");
      assert.deepEqual(again, { ...one, fresh: false });
      assert.equal((await a.meta(s)).kind, "chat");
      const [created] = (await a.read(s, 0)).events.map((e) => JSON.parse(e));
      assert.deepEqual(created.payload, { message_id: one.messageId, role: "user", client_request_id: "c1", content: "hello" });
      assert.deepEqual(Object.keys(created.payload), ["message_id", "client_request_id", "content", "role"], "the gateway's key order");
      assert.equal(await r.get(`runstream:{${s}}:send:c1`), one.messageId);
      assert.equal(await r.hlen(`runstream:{${s}}:unqueued`), 0);
      const { sends, next } = await b.sendsAfter(null, 1000, 0);
      const mine = sends.filter((x) => x.sessionId === s);
      assert.equal(mine.length, 1);
      assert.deepEqual({ ...mine[0], cursor: "" }, { cursor: "", sessionId: s, runId: s, clientRequestId: "c1", content: "hello" });
      assert.equal(next, sends.at(-1).cursor);
      // A long poll wakes on a send from another process, and an abort ends it early.
      const waiting = b.sendsAfter(next, 10, 5000);
      await sleep(100);
      await a.send(s, "c2", "second");
      const woke = await waiting;
      assert.deepEqual(woke.sends.map((x) => x.clientRequestId), ["c2"]);
      const ac = new AbortController();
      const t0 = Date.now();
      const aborted = b.sendsAfter(woke.next, 10, 10000, ac.signal);
      setTimeout(() => ac.abort(), 100);
      assert.deepEqual((await aborted).sends, []);
      assert.ok(Date.now() - t0 < 3000, "abort ends the long poll");
      // A send into a finished chat run is refused; a repeat of an earlier one still answers.
      await a.append(s, "run.completed", { status: "succeeded" });
      assert.equal((await a.send(s, "c3", "late")).finished, true);
      assert.equal((await a.send(s, "c1", "hello")).messageId, one.messageId);
    });

    test("a send whose queue step never ran is queued by its retry with the content first accepted", async () => {
      const s = rid("sess");
      // What a process that died after step 1 leaves: logged and recorded as unqueued.
      const script = loadScripts().send;
      const before = (await a.sendsAfter(null, 100000, 0)).next;
      const body = `"run_id":${JSON.stringify(s)},"type":"message.created","timestamp":"2026-01-01T00:00:00Z","payload":{"message_id":"`;
      const rest = `",${JSON.stringify({ role: "user", client_request_id: "c9", content: "first" }).slice(1)}`;
      const keys = [`runstream:{${s}}:meta`, `runstream:{${s}}:log`, `runstream:{${s}}:send:c9`, `runstream:{${s}}:unqueued`];
      // The last two ARGV: retention and idle retention, ms (lua/retention.lua).
      await r.eval(script.text, 4, ...keys, body, rest, 60, s, "c9", "first", 604_800_000, 2_592_000_000);
      assert.equal(await r.hget(`runstream:{${s}}:unqueued`, "c9"), "first");
      const retried = await b.send(s, "c9", "second try");
      assert.equal(retried.fresh, false);
      const queued = (await a.sendsAfter(before, 1000, 0)).sends.filter((x) => x.sessionId === s);
      assert.deepEqual(queued.map((x) => x.content), ["first"]);
      assert.equal(await r.hlen(`runstream:{${s}}:unqueued`), 0);
    });

    test("claimSends: through the group 'replies', each send is handed to one process once, duplicates acknowledged", async () => {
      const s = rid("sess");
      for (let i = 0; i < 10; i++) await (i % 2 ? a : b).send(s, `c${i}`, `m${i}`);
      // The same send on the queue twice (a retry after a death between steps 2 and 3).
      await r.xadd(SEND_QUEUE, "*", "s", s, "c", "c3", "x", "m3");
      const got = [];
      const claim = async (store, name) => {
        for (let idle = 0; idle < 3;) {
          const batch = await store.claimSends(name, 100);
          if (batch.length === 0) { idle++; continue; }
          for (const q of batch) {
            // The group starts at 0: sends of earlier tests are handed out too.
            if (q.sessionId === s) got.push(q.clientRequestId);
            await store.ackSend(q.queueId);
          }
        }
      };
      await Promise.all([claim(a, "kit-a"), claim(b, "kit-b")]);
      assert.deepEqual([...got].sort(), [...Array(10)].map((_, i) => `c${i}`).sort());
      assert.equal((await r.call("XPENDING", SEND_QUEUE, SEND_GROUP))[0], 0, "everything acknowledged");
      assert.ok(await r.get(`runstream:{${s}}:claimed:c3`));
      // The queue deleted under a consumer (a flushed Redis): one failed claim, then the group is made again.
      await r.del(SEND_QUEUE);
      await assert.rejects(a.claimSends("kit-a", 50), { name: "StoreError" });
      await a.send(s, "c10", "after the flush");
      const again = (await a.claimSends("kit-a", 1000)).map((q) => q.clientRequestId);
      assert.deepEqual(again, ["c10"]);
    });

    test("a send left pending by a dead consumer is taken over (XAUTOCLAIM); one reply per send; a finished reply's cancel refused in the script", async () => {
      const s = rid("sess");
      await a.send(s, "c1", "m1");
      // Consumer "kit-dead" takes it and never acknowledges it (the group may hold other tests' sends).
      let taken;
      while (!taken) {
        for (const q of await a.claimSends("kit-dead", 100)) {
          if (q.sessionId === s) taken = q;
          else await a.ackSend(q.queueId);
        }
      }
      // Not idle long enough for another consumer; the heartbeat of its own consumer keeps it.
      assert.deepEqual((await b.claimSends("kit-live", 50, undefined, 60_000)).filter((q) => q.sessionId === s), []);
      assert.deepEqual((await a.claimSends("kit-dead", 50, undefined, 0, [taken.queueId])).filter((q) => q.sessionId === s), []);
      await new Promise((r) => setTimeout(r, 150));
      const again = (await b.claimSends("kit-live", 50, undefined, 100)).filter((q) => q.sessionId === s);
      assert.deepEqual(again.map((q) => [q.queueId, q.clientRequestId, q.content]), [[taken.queueId, "c1", "m1"]]);
      const pending = await r.call("XPENDING", SEND_QUEUE, SEND_GROUP, "-", "+", 100, "kit-live");
      assert.ok(pending.some(([id]) => id === taken.queueId), "now pending for kit-live");
      // The reply: the first message.created answering c1 wins, any later one is refused whole.
      const created = (mid) => ({ type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: "c1" } });
      assert.equal((await b.appendBatch(s, [created("live"), { type: "message.delta", payload: { message_id: "live", delta: "hi" } }])).kind, "appended");
      assert.deepEqual(await a.appendBatch(s, [{ type: "message.delta", payload: { message_id: "x", delta: "x" } }, created("dead")]), { kind: "reply_taken" });
      await assert.rejects(a.append(s, "message.created", created("dead").payload), { name: "ReplyTakenError" });
      assert.equal(await r.hget(`runstream:{${s}}:meta`, "reply:c1"), "s:live");
      const reply = { kind: "reply", replyTo: "c1" };
      await b.append(s, "message.completed", { message_id: "live", finish_reason: "stop" });
      assert.equal(await r.hget(`runstream:{${s}}:meta`, "reply:c1"), "d:completed");
      // Kept once the reply ended: more of it is refused (lua/append_step.lua `reply_ended`).
      assert.equal(await r.hget(`runstream:{${s}}:meta`, "replyof:live"), "c1");
      await assert.rejects(b.append(s, "message.delta", { message_id: "live", delta: "late" }), { name: "ReplyTakenError" });
      assert.deepEqual(await a.requestCancel(s, reply, { client_request_id: "x1", reply_to: "c1" }), { kind: "reply_finished", status: "completed" });
      assert.equal(await r.get(`runstream:{${s}}:cancel:reply:c1`), null);
      await b.ackSend(taken.queueId);
    });

    test("an orphaned reply (its consumer stopped mid-reply) ends message.failed once, whoever races to end it; nothing of it after", async () => {
      const id = rid("sess");
      await a.create(id, { kind: "chat" });
      await a.appendBatch(id, [
        { type: "message.created", payload: { message_id: "m1", role: "assistant", reply_to: "c1" } },
        { type: "message.delta", payload: { message_id: "m1", delta: "half " } },
      ]);
      // Takers on two connections racing on the same reply: one step each, one ending in all.
      const results = await Promise.all([...Array(8)].map((_, i) => (i % 2 ? a : b).endOrphan(id, "c1")));
      assert.deepEqual(results.filter((x) => x === "ended").length, 1, JSON.stringify(results));
      assert.ok(results.every((x) => x === "ended" || x === "done"));
      const log = async () => (await a.read(id, 0)).events.map((e) => JSON.parse(e));
      const failed = (await log()).filter((e) => e.type === "message.failed");
      assert.equal(failed.length, 1);
      assert.deepEqual(failed[0].payload, { message_id: "m1", error: "the process answering this message stopped before finishing it" });
      assert.equal(failed[0].run_id, id);
      assert.equal(await r.hget(`runstream:{${id}}:meta`, "reply:c1"), "d:failed");
      // The stalled consumer comes back: its deltas and its ending are refused, whole batches too.
      await assert.rejects(a.append(id, "message.delta", { message_id: "m1", delta: "late" }), { name: "ReplyTakenError" });
      await assert.rejects(b.append(id, "message.completed", { message_id: "m1", finish_reason: "stop" }), { name: "ReplyTakenError" });
      assert.deepEqual(await a.appendBatch(id, [
        { type: "message.delta", payload: { message_id: "m1", delta: "late" } },
        { type: "message.completed", payload: { message_id: "m1", finish_reason: "stop" } },
      ]), { kind: "reply_taken" });
      assert.equal((await log()).length, 3);
      const st = reduceAll(id, (await log()).map((e) => [e.event_id, JSON.stringify(e)]));
      assert.deepEqual(st.messages.map((m) => [m.message_id, m.status, m.content]), [["m1", "failed", "half "]]);
      // A reply that ended by itself is never ended again; a send never answered is the taker's.
      await a.appendBatch(id, [
        { type: "message.created", payload: { message_id: "m2", role: "assistant", reply_to: "c2" } },
        { type: "message.completed", payload: { message_id: "m2", finish_reason: "stop" } },
      ]);
      assert.equal(await b.endOrphan(id, "c2"), "done");
      assert.equal(await b.endOrphan(id, "c3"), "unstarted");
      assert.equal(await b.endOrphan(rid(), "c1"), "done");
      assert.equal((await log()).length, 5);
      // Messages that answer no send are not affected.
      await a.append(id, "message.delta", { message_id: "other", delta: "x" });
    });

    test("cancel: one request per target, 'already' for repeats, 'finished' after the end; graces claimed once", async () => {
      const id = rid();
      await a.create(id, { kind: "chat" });
      await a.append(id, "message.created", { message_id: "m1", role: "assistant", reply_to: "c1" });
      const run = { kind: "run" };
      const reply = { kind: "reply", replyTo: "c1" };
      assert.deepEqual(await a.requestCancel(id, reply, { client_request_id: "x1", reply_to: "c1" }), { kind: "requested", eventId: 2 });
      assert.deepEqual(await b.requestCancel(id, reply, { client_request_id: "x2", reply_to: "c1" }), { kind: "already", eventId: 2 });
      assert.equal(await r.get(`runstream:{${id}}:cancel:reply:c1`), "2");
      assert.equal(await b.cancelRequested(id, reply), 2);
      assert.equal(await b.cancelRequested(id, run), null);
      const results = await Promise.all([...Array(6)].map((_, i) => (i % 2 ? a : b).requestCancel(id, run, { client_request_id: `r${i}` })));
      assert.equal(results.filter((x) => x.kind === "requested").length, 1);
      assert.equal(new Set(results.map((x) => x.eventId)).size, 1);
      await a.append(id, "run.completed", { status: "cancelled" });
      assert.deepEqual(await a.requestCancel(id, { kind: "reply", replyTo: "c2" }, {}), { kind: "finished" });
      assert.deepEqual(await a.requestCancel(rid(), run, {}), { kind: "unknown_run" });

      const now = Date.now();
      await a.scheduleGrace(id, reply, now - 10);
      await b.scheduleGrace(id, run, now + 60_000);
      assert.equal(await r.zscore(GRACES, JSON.stringify([id, "reply:c1"])), String(now - 10));
      const claims = await Promise.all([a.claimDueGraces(now, 10), b.claimDueGraces(now, 10)]);
      const mine = claims.flat().filter((g) => g.runId === id);
      assert.deepEqual(mine, [{ runId: id, target: reply }], "claimed by exactly one process, and only when due");
      assert.deepEqual((await a.claimDueGraces(now + 60_001, 10)).filter((g) => g.runId === id), [{ runId: id, target: run }]);
    });

    test("nextMessageId shares the meta counter with sends", async () => {
      const s = rid("sess");
      const { messageId } = await a.send(s, "c1", "hi");
      assert.equal(messageId, "msg_1");
      assert.equal(await b.nextMessageId(s), "msg_2");
      assert.equal((await a.send(s, "c2", "again")).messageId, "msg_3");
    });

    test("the scripts the store runs are the repository's lua/ files, composed as lua/scripts.json says", async () => {
      const dir = new URL("../../lua/", import.meta.url);
      const manifest = JSON.parse(readFileSync(new URL("scripts.json", dir), "utf8"));
      const loaded = loadScripts();
      for (const [name, files] of Object.entries(manifest.scripts)) {
        const text = files.map((f) => readFileSync(new URL(f, dir), "utf8")).join("");
        assert.equal(loaded[name].text, text, name);
        assert.equal(loaded[name].sha, createHash("sha1").update(text).digest("hex"));
      }
      // Everything above ran them: Redis knows each by that SHA1 (on a cluster, on some node).
      if (kind === "redis") {
        const known = await r.call("SCRIPT", "EXISTS", ...Object.values(loaded).map((s) => s.sha));
        assert.deepEqual(known, Object.keys(loaded).map((n) => (n === "set_chaos" ? 0 : 1)));
      }
    });
  });
}

describe("redisStore when Redis restarts", { skip, concurrency: false }, () => {
  test("commands fail fast while Redis is down (no hang), and the store and its live tail recover when it is back", async (t) => {
    const redis = await startRedis("redis", { persist: true });
    const s = redisStore({ url: redis.url, commandTimeoutMs: 3000 });
    t.after(async () => {
      await s.close();
      await redis.stop();
    });
    const id = rid();
    await s.create(id, { kind: "task" });
    await s.append(id, "run.started", {});
    const seen = [];
    const sub = await s.subscribe(id, (n) => seen.push(n));
    t.after(() => sub.close());

    await redis.down();
    const t0 = Date.now();
    await assert.rejects(s.append(id, "worker.started", { worker_id: "w1" }), { name: "StoreError" });
    assert.ok(Date.now() - t0 < 5000, `failed in ${Date.now() - t0} ms`);
    assert.equal(await s.ready(), false);

    await redis.up();
    // Back: the first commands may still see the reconnect; then appends go through.
    let n = null;
    const end = Date.now() + 10000;
    while (n === null) {
      try {
        n = await s.append(id, "worker.started", { worker_id: "w1" });
      } catch (e) {
        assert.equal(e.name, "StoreError");
        assert.ok(Date.now() < end, "the store did not recover");
        await sleep(100);
      }
    }
    assert.equal(n, 2, "the failed append appended nothing; ids stay dense");
    assert.equal(await s.ready(), true);
    await until(() => seen.includes(2), 8000);
    const rep = await s.read(id, 0);
    assert.deepEqual(rep.events.map((e) => JSON.parse(e).event_id), [1, 2]);
  });
});

describe("onSend on redisStore", { skip, concurrency: false }, () => {
  test("sends go through the group to whichever process has room: one process holds at most MAX_SENDS_IN_FLIGHT, another takes the rest, each answered once", async (t) => {
    const { createRunstream, MAX_SENDS_IN_FLIGHT } = await import("../dist/index.js");
    const redis = await startRedis("redis");
    const rs1 = createRunstream({ store: redisStore({ url: redis.url }), auth: "none" });
    const rs2 = createRunstream({ store: redisStore({ url: redis.url }), auth: "none" });
    t.after(async () => {
      await rs1.close();
      await rs2.close();
      await rs1.store.close();
      await rs2.store.close();
      await redis.stop();
    });
    let held = 0;
    let maxHeld = 0;
    let release;
    const gate = new Promise((r) => { release = r; });
    const answered = [];
    const off1 = rs1.onSend(async (s) => {
      held++;
      maxHeld = Math.max(maxHeld, held);
      await gate;
      held--;
      answered.push(["rs1", s.clientRequestId]);
    });
    // Let rs1 fill up first, then rs2 joins.
    const n = MAX_SENDS_IN_FLIGHT + 30;
    for (let i = 0; i < n; i++) await rs1.store.send("sess_bound", `b${i}`, `m${i}`);
    // rs1 claims (16 at most at a time) while it has room for a whole claim.
    await until(() => held > MAX_SENDS_IN_FLIGHT - 16, 10000);
    await sleep(500);
    const holding = held;
    assert.ok(holding > MAX_SENDS_IN_FLIGHT - 16 && holding <= MAX_SENDS_IN_FLIGHT, `in flight: ${holding}`);
    const off2 = rs2.onSend((s) => { answered.push(["rs2", s.clientRequestId]); });
    await until(() => answered.length === n - holding, 10000);
    assert.ok(answered.every(([who]) => who === "rs2"));
    release();
    await until(() => answered.length === n, 10000);
    await sleep(300);
    assert.equal(answered.length, n);
    assert.equal(new Set(answered.map(([, c]) => c)).size, n, "each send answered once");
    assert.equal(maxHeld, holding, "rs1 took no more while full");
    off1();
    off2();
  });
  test("a process at MAX_SENDS_IN_FLIGHT still heartbeats its sends: replies longer than the claim idle are not taken over and answered twice", async (t) => {
    const { createRunstream, MAX_SENDS_IN_FLIGHT } = await import("../dist/index.js");
    const redis = await startRedis("redis");
    const rs1 = createRunstream({ store: redisStore({ url: redis.url }), auth: "none", sendClaimIdleMs: 1000 });
    const rs2 = createRunstream({ store: redisStore({ url: redis.url }), auth: "none", sendClaimIdleMs: 1000 });
    t.after(async () => {
      await rs1.close();
      await rs2.close();
      await rs1.store.close();
      await rs2.store.close();
      await redis.stop();
    });
    let held = 0;
    let release;
    const gate = new Promise((r) => { release = r; });
    const answered = [];
    const off1 = rs1.onSend(async (s) => {
      held++;
      await gate;
      answered.push(["rs1", s.clientRequestId]);
    });
    const n = MAX_SENDS_IN_FLIGHT;
    for (let i = 0; i < n; i++) await rs1.store.send("sess_busy", `h${i}`, `m${i}`);
    await until(() => held > MAX_SENDS_IN_FLIGHT - 16, 10000);
    const holding = held;
    const off2 = rs2.onSend((s) => { answered.push(["rs2", s.clientRequestId]); });
    // rs1 is full and its handlers run 3.5 claim idles: rs2 answers only what rs1 never took.
    await sleep(3500);
    release();
    await until(() => answered.length >= n, 10000);
    await sleep(1500);
    assert.equal(answered.length, n, `each send answered once: ${JSON.stringify(answered.filter(([w]) => w === "rs2").length)} by rs2`);
    assert.equal(new Set(answered.map(([, c]) => c)).size, n);
    assert.equal(answered.filter(([w]) => w === "rs1").length, holding, "rs1 answered what it held");
    off1();
    off2();
  });
});
