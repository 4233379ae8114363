// The TypeScript kit's redisStore() and the Rust gateway on ONE redis-server
// (issue #28): the same logs give the same PROTOCOL §6 state from both
// servers (a differential test: task logs from the gateway's `produce`, chat
// logs written by both, windows pruned by either server), and two kit
// processes share runs (dense ids with concurrent appenders, each send handed
// to one consumer of the gateway's group `replies`, cancels seen everywhere),
// and a cancel a gateway took ends in a kit process after the gateway died.
// `STORE=cluster`: the same on a 3-master Redis Cluster.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnTracked } from "./procs.mjs";

import { redisStore } from "../../kit/dist/redis.js";
import { Reducer } from "../../kit/dist/reducer.js";
import { haveRedis, startRedis, freePort } from "../../kit/test/support/redis.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const skip = haveRedis() ? false : "redis-server is not installed (scripts/setup.sh installs it)";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** `STORE=cluster`: the same on a 3-master Redis Cluster (both servers on `redis-cluster://…`). */
const STORE = process.env.STORE === "cluster" ? "cluster" : "redis";

let redis, gateway, gw, kit;
const procs = [];

const run = (args) => spawnTracked(bin, args, procs);

/** `produce …` to its end: the run ids it created. */
async function produce(...args) {
  const p = run(["produce", "--store", redis.url, ...args]);
  const code = await p.done;
  assert.equal(code, 0, `produce ${args.join(" ")}: ${p.err}`);
  return p.lines.map((l) => JSON.parse(l)).filter((e) => e.event === "produce.created").map((e) => e.run_id);
}

async function gwFetch(method, path, body) {
  const r = await fetch(gw + path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text && r.headers.get("content-type")?.includes("json") ? JSON.parse(text) : text };
}

/** The gateway's §2c snapshot of `id`. */
async function gwSnapshot(id) {
  const { status, body } = await gwFetch("GET", `/api/runs/${encodeURIComponent(id)}/snapshot`);
  assert.equal(status, 200, `gateway snapshot of ${id}: ${status}`);
  return body;
}

/** The kit's snapshot of `id` in the §2c body shape. */
async function kitSnapshot(id) {
  const s = await kit.snapshot(id);
  assert.ok(s, `kit snapshot of ${id}`);
  return { run_id: s.runId, event_id: s.eventId, state: JSON.parse(s.state) };
}

/**
 * The gateway's SSE replay of `id` from `last` (its frames' data, parsed), read until the
 * frame of event `until` (the run's last id) or the end of a finished run's response.
 */
async function gwReplay(id, last, until) {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), 10000);
  const r = await fetch(`${gw}/api/stream/runs/${encodeURIComponent(id)}?last_event_id=${last}`, { signal: ac.signal });
  assert.equal(r.status, 200);
  const frames = [];
  let buf = "";
  const dec = new TextDecoder();
  try {
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const data = buf.slice(0, i).split("\n").find((l) => l.startsWith("data: "));
        buf = buf.slice(i + 2);
        if (data) frames.push(JSON.parse(data.slice(6)));
      }
      if (frames.at(-1)?.event_id >= until) break;
    }
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  return frames;
}

/** The state with its run id replaced (to compare twin runs of one seed). */
const anon = (state) => JSON.parse(JSON.stringify(state).replaceAll(JSON.stringify(state.run_id), '"RUN"'));

before(async () => {
  if (skip) return;
  redis = await startRedis(STORE);
  const port = await freePort();
  gateway = run(["--auth", "none", "--dev", "--addr", `127.0.0.1:${port}`, "--store", redis.url, "--replies", "none"]);
  const end = Date.now() + 15000;
  while (!gateway.lines.some((l) => l.includes("server.listening"))) {
    if (Date.now() > end || gateway.exitCode !== null) throw new Error(`gateway did not start: ${gateway.err}`);
    await sleep(50);
  }
  gw = `http://127.0.0.1:${port}`;
  kit = redisStore({ url: redis.url });
});

after(async () => {
  await kit?.close();
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await redis?.stop();
});

test("task logs from the gateway's produce: the kit's snapshot equals the gateway's, whole and pruned by either server", { skip }, async () => {
  const whole = await produce("--instant", "--runs", "6", "--seed", "11", "--workers", "6");
  // The same seeds again, appended by a producer with a small window: the gateway trims them
  // (its Rust reducer writes the base); and once more, left whole, for the kit to prune.
  const gwPruned = await produce("--instant", "--runs", "6", "--seed", "11", "--workers", "6", "--window", "12");
  const kitPruned = await produce("--instant", "--runs", "6", "--seed", "11", "--workers", "6");
  const gwPrunedRoute = await produce("--instant", "--runs", "6", "--seed", "11", "--workers", "6");
  let parkedAcross = 0;
  for (let i = 0; i < whole.length; i++) {
    const expect = await gwSnapshot(whole[i]);
    assert.ok(expect.event_id > 20, "a run long enough to prune");
    assert.deepEqual(await kitSnapshot(whole[i]), expect, `run ${whole[i]}`);
    // The one reducer over the raw log, run by the test: the same again.
    const r = Reducer.empty(whole[i]);
    const log = [];
    for (let after = 0; ;) {
      const rep = await kit.read(whole[i], after);
      if (rep.events.length === 0) break;
      for (const e of rep.events) {
        r.apply(++after, e);
        log.push(JSON.parse(e));
      }
    }
    assert.deepEqual(JSON.parse(r.stateJson()), expect.state);
    r.free();
    // The same log written by the kit with each job mapping moved after the first event that
    // names only that job (so that event is parked until its mapping arrives), twice.
    const moved = log.map((e) => ({ type: e.type, payload: e.payload }));
    for (const m of [...moved]) {
      const j = m.payload.job_id;
      if (!j || !m.payload.worker_id) continue;
      const at = moved.indexOf(m);
      const only = moved.findIndex((e, k) => k > at && e.payload.job_id === j && !e.payload.worker_id);
      if (only < 0 || moved.slice(0, at).some((e) => e.payload.job_id === j && e.payload.worker_id)) continue;
      moved.splice(at, 1);
      moved.splice(only, 0, m);
    }
    const twins = [];
    for (const suffix of ["k", "g"]) {
      const id = `${whole[i]}_moved_${suffix}`;
      assert.equal(await kit.create(id, { kind: "task" }), true);
      assert.equal((await kit.appendBatch(id, moved)).kind, "appended");
      twins.push(id);
    }
    const movedState = await gwSnapshot(twins[0]);
    assert.deepEqual(await kitSnapshot(twins[0]), movedState);
    // Prune both right after the first parked event: by the kit, and by the gateway.
    const parkedAt = 1 + moved.findIndex((e, k) => e.payload.job_id && !e.payload.worker_id &&
      !moved.slice(0, k).some((m) => m.payload.worker_id && m.payload.job_id === e.payload.job_id));
    if (parkedAt > 0) {
      assert.equal(await kit.prune(twins[0], parkedAt + 1), true);
      assert.equal((await gwFetch("POST", `/api/admin/runs/${twins[1]}/prune`, { keep_from: parkedAt + 1 })).status, 204);
      const kb = JSON.parse(await redisGet(`runstream:{${twins[0]}}:base`));
      const gb = JSON.parse(await redisGet(`runstream:{${twins[1]}}:base`));
      assert.deepEqual(anon(kb.state), anon(gb.state));
      assert.deepEqual(kb.parked.map((e) => [e.event_id, e.type, e.payload]), gb.parked.map((e) => [e.event_id, e.type, e.payload]));
      parkedAcross += kb.parked.length;
      for (const id of twins) {
        assert.deepEqual(anon((await gwSnapshot(id)).state), anon(movedState.state));
        const fresh = redisStore({ url: redis.url });
        assert.deepEqual(anon(JSON.parse((await fresh.snapshot(id)).state)), anon(movedState.state));
        await fresh.close();
      }
    }

    // Pruned by the gateway's producer (window 12): both servers still give the whole state.
    const meta = await kit.meta(gwPruned[i]);
    assert.ok(meta.firstId > 1, "the producer trimmed the window");
    assert.deepEqual(anon((await kitSnapshot(gwPruned[i])).state), anon(expect.state));
    assert.deepEqual(anon((await gwSnapshot(gwPruned[i])).state), anon(expect.state));
    // A resume from 0 gets the base as a snapshot, then the window, from both servers alike.
    const kitRead = await kit.read(gwPruned[i], 0);
    const gwFrames = await gwReplay(gwPruned[i], 0, meta.lastId);
    assert.equal(gwFrames[0].type, "snapshot");
    assert.equal(gwFrames[0].event_id, kitRead.snapshot.eventId);
    assert.deepEqual(JSON.parse(kitRead.snapshot.state), gwFrames[0].payload.state);
    assert.deepEqual(kitRead.events.map((e) => JSON.parse(e)), gwFrames.slice(1));

    // Pruned by the kit (its wasm reducer writes the base), read by a gateway that never
    // saw the run before (no cached state): the same state, and the same stored base as
    // the gateway's own prune of the twin run at the same point.
    const keep = Math.floor(expect.event_id / 2) + i;
    assert.equal(await kit.prune(kitPruned[i], keep), true);
    const { status } = await gwFetch("POST", `/api/admin/runs/${gwPrunedRoute[i]}/prune`, { keep_from: keep });
    assert.equal(status, 204);
    const kitBase = JSON.parse(await redisGet(`runstream:{${kitPruned[i]}}:base`));
    const gwBase = JSON.parse(await redisGet(`runstream:{${gwPrunedRoute[i]}}:base`));
    assert.equal(kitBase.event_id, keep - 1);
    assert.deepEqual(anon(kitBase.state), anon(gwBase.state));
    assert.deepEqual(kitBase.parked.map((e) => [e.event_id, e.type, e.payload]), gwBase.parked.map((e) => [e.event_id, e.type, e.payload]));
    assert.deepEqual(anon((await gwSnapshot(kitPruned[i])).state), anon(expect.state));
    const frames = await gwReplay(kitPruned[i], 1, expect.event_id);
    assert.equal(frames[0].event_id, keep - 1);
    assert.deepEqual(anon(frames[0].payload.state), anon(kitBase.state));
    assert.deepEqual(anon((await kitSnapshot(gwPrunedRoute[i])).state), anon(expect.state));
  }
  assert.ok(parkedAcross > 0, "some job-only event was parked across a prune point (the hard case)");
});

/** GET of a plain key (a second client: the kit's own connection is private). */
async function redisGet(key) {
  const { Redis, Cluster } = await import("../../kit/node_modules/ioredis/built/index.js");
  const c = redis.url.startsWith("redis-cluster://")
    ? new Cluster(redis.ports.map((port) => ({ host: "127.0.0.1", port })))
    : new Redis(redis.url);
  try {
    return await c.get(key);
  } finally {
    c.disconnect();
  }
}

/** `[key suffix, PTTL ms]` of every key of run `id`, sorted (KEYS on every master of a cluster). */
async function runKeys(id) {
  const { Redis, Cluster } = await import("../../kit/node_modules/ioredis/built/index.js");
  const c = redis.url.startsWith("redis-cluster://")
    ? new Cluster(redis.ports.map((port) => ({ host: "127.0.0.1", port })))
    : new Redis(redis.url);
  try {
    const nodes = c instanceof Cluster ? (await c.ping(), c.nodes("master")) : [c];
    const keys = (await Promise.all(nodes.map((n) => n.keys(`runstream:{${id}}:*`)))).flat();
    const prefix = `runstream:{${id}}:`;
    return (await Promise.all(keys.map(async (k) => [k.slice(prefix.length), await c.pttl(k)]))).sort();
  } finally {
    c.disconnect();
  }
}

test("retention: a run finished by the kit gets the same keys and TTLs as its twin finished by the gateway's produce (defaults, and the flags = the options)", { skip }, async () => {
  const tolerance = 5000; // the two runs are written a moment apart
  for (const [flags, opts, expectMs] of [
    [[], {}, 7 * 24 * 3600 * 1000],
    [["--retention-secs", "40", "--idle-retention-secs", "400"], { retentionS: 40, idleRetentionS: 400 }, 40_000],
  ]) {
    const [gwRun] = await produce("--instant", "--runs", "1", "--seed", "21", "--workers", "2", ...flags);
    const store = redisStore({ url: redis.url, ...opts });
    try {
      const events = [];
      for (let after = 0; ;) {
        const rep = await store.read(gwRun, after);
        if (rep.events.length === 0) break;
        for (const e of rep.events) {
          const { type, payload } = JSON.parse(e);
          events.push({ type, payload });
          after++;
        }
      }
      assert.equal(events.at(-1).type, "run.completed");
      const twin = `${gwRun}_kit`;
      assert.equal(await store.create(twin, { kind: "task" }), true);
      assert.equal((await store.appendBatch(twin, events.slice(0, -1))).kind, "appended");
      // The kit finishes it: the step that logs run.completed sets the retention.
      assert.notEqual(await store.append(twin, "run.completed", events.at(-1).payload), null);
      const g = await runKeys(gwRun);
      const k = await runKeys(twin);
      assert.deepEqual(k.map(([n]) => n), g.map(([n]) => n), "the same keys");
      for (const n of ["log", "meta"]) assert.ok(g.some(([x]) => x === n), `${n} in ${JSON.stringify(g)}`);
      for (let i = 0; i < g.length; i++) {
        const [name, gt] = g[i];
        const kt = k[i][1];
        assert.ok(gt > expectMs - tolerance && gt <= expectMs, `gateway ${name}: ${gt} ms`);
        assert.ok(kt > expectMs - tolerance && kt <= expectMs, `kit ${name}: ${kt} ms`);
        assert.ok(Math.abs(gt - kt) < tolerance, `${name}: gateway ${gt} ms, kit ${kt} ms`);
      }
    } finally {
      await store.close();
    }
  }
});

test("chat logs written by both servers into one session: same state from both, whole and pruned", { skip }, async () => {
  // A gateway chat run with history and a token reply (its admin route, appended at once).
  const { body: made } = await gwFetch("POST", "/api/admin/runs", { kind: "chat", tokens: 40, rate: 0, instant: true, history: 3, seed: 5 });
  const runs = [made.run_id];

  // One session, written alternately by the gateway (sends, cancels over HTTP) and the kit.
  const s = `chat_${process.pid}`;
  runs.push(s);
  const sent = await gwFetch("POST", `/api/chat/${s}/messages`, { client_request_id: "c1", content: "hello from the gateway" });
  assert.equal(sent.status, 202);
  const mid = await kit.nextMessageId(s);
  await kit.appendBatch(s, [
    { type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: "c1" } },
    ...["Hel", "lo ", "back"].map((d) => ({ type: "message.delta", payload: { message_id: mid, delta: d } })),
    { type: "message.completed", payload: { message_id: mid, finish_reason: "stop", usage: { prompt_tokens: 3, completion_tokens: 3 } } },
  ]);
  const k2 = await kit.send(s, "c2", "hello from the kit");
  assert.equal(k2.fresh, true);
  assert.equal((await gwFetch("POST", `/api/chat/${s}/messages`, { client_request_id: "c2", content: "retry through the gateway" })).body.message_id, k2.messageId, "one send, whichever server took the retry");
  const m3 = await kit.nextMessageId(s);
  await kit.append(s, "message.created", { message_id: m3, role: "assistant", reply_to: "c2" });
  await kit.append(s, "message.delta", { message_id: m3, delta: "thinking" });
  const cancel = await gwFetch("POST", `/api/runs/${s}/cancel`, { client_request_id: "x1", reply_to: "c2" });
  assert.equal(cancel.status, 202);
  assert.deepEqual(await kit.requestCancel(s, { kind: "reply", replyTo: "c2" }, { client_request_id: "x2", reply_to: "c2" }), { kind: "already", eventId: cancel.body.event_id });
  await kit.append(s, "message.completed", { message_id: m3, finish_reason: "cancelled" });
  await gwFetch("POST", `/api/chat/${s}/messages`, { client_request_id: "c3", content: "one more" });
  const m4 = await kit.nextMessageId(s);
  await kit.append(s, "message.created", { message_id: m4, role: "assistant", reply_to: "c3" });
  await kit.append(s, "message.failed", { message_id: m4, error: "model unavailable" });

  // A session written by the kit alone.
  const k = `kitchat_${process.pid}`;
  runs.push(k);
  for (let i = 0; i < 5; i++) {
    await kit.send(k, `k${i}`, `question ${i}`);
    const m = await kit.nextMessageId(k);
    await kit.appendBatch(k, [
      { type: "message.created", payload: { message_id: m, role: "assistant", reply_to: `k${i}` } },
      { type: "message.delta", payload: { message_id: m, delta: `answer ${i}` } },
      { type: "message.completed", payload: { message_id: m, finish_reason: "stop" } },
    ]);
  }

  for (const id of runs) {
    const meta = await kit.meta(id);
    // Dense ids across both writers.
    const ids = [];
    for (let after = 0; ;) {
      const rep = await kit.read(id, after);
      if (rep.events.length === 0) break;
      for (const e of rep.events) ids.push(JSON.parse(e).event_id);
      after = ids.at(-1);
    }
    assert.deepEqual(ids, [...Array(meta.lastId)].map((_, i) => i + 1));
    const expect = await gwSnapshot(id);
    assert.deepEqual(await kitSnapshot(id), expect, `chat run ${id}`);
    assert.ok(expect.state.messages.length >= 4);
    // Pruned (by the kit for one, by the gateway for the others): still the same from both.
    const keep = Math.ceil(meta.lastId * 0.6);
    if (id === s) assert.equal(await kit.prune(id, keep), true);
    else assert.equal((await gwFetch("POST", `/api/admin/runs/${id}/prune`, { keep_from: keep })).status, 204);
    const fresh = redisStore({ url: redis.url });
    try {
      const after = await fresh.snapshot(id);
      assert.deepEqual(JSON.parse(after.state), expect.state);
      const rep = await fresh.read(id, 0);
      assert.equal(rep.snapshot.eventId, keep - 1);
      const frames = await gwReplay(id, 0, meta.lastId);
      assert.equal(frames[0].type, "snapshot");
      assert.deepEqual(frames[0].payload.state, JSON.parse(rep.snapshot.state));
      assert.deepEqual(frames.slice(1), rep.events.map((e) => JSON.parse(e)));
    } finally {
      await fresh.close();
    }
  }
  const state = (await gwSnapshot(s)).state;
  assert.deepEqual(state.messages.filter((m) => m.role === "assistant").map((m) => [m.reply_to, m.content, m.status]), [
    ["c1", "Hello back", "completed"], ["c2", "thinking", "completed"], ["c3", "", "failed"],
  ]);
  assert.deepEqual(state.messages.filter((m) => m.role === "user").map((m) => m.client_request_id), ["c1", "c2", "c3"]);
});

/** A kit process (tests/e2e/kit-process.mjs) on the test's Redis: `send(cmd)`, `wait(pred)`. */
async function kitProcess(name) {
  const p = spawn(process.execPath, [join(root, "tests/e2e/kit-process.mjs"), redis.url, name], { cwd: root, stdio: ["pipe", "pipe", "pipe"] });
  procs.push(p);
  p.events = [];
  p.err = "";
  let buf = "";
  p.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      p.events.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  p.stderr.on("data", (d) => { p.err += d; });
  p.send = (cmd) => p.stdin.write(`${JSON.stringify(cmd)}\n`);
  p.wait = async (pred, ms = 10000) => {
    const end = Date.now() + ms;
    for (;;) {
      const e = p.events.find(pred);
      if (e) return e;
      if (Date.now() > end || p.exitCode !== null) throw new Error(`${name}: no such event; ${p.err}`);
      await sleep(10);
    }
  };
  p.url = (await p.wait((e) => e.event === "ready")).url;
  return p;
}

test("two kit processes and the gateway's chat worker on one Redis: dense ids, each send answered once, cancelSignal fires in the other process", { skip }, async () => {
  const [a, b] = await Promise.all([kitProcess("A"), kitProcess("B")]);
  const worker = run(["produce", "--store", redis.url, "--chat-worker", "--consumer", "gateway-worker"]);
  const ready = Date.now() + 10000;
  while (!worker.lines.some((l) => l.includes("chat_worker.ready"))) {
    assert.ok(Date.now() < ready && worker.exitCode === null, `chat worker: ${worker.err}`);
    await sleep(20);
  }

  // Dense ids with concurrent appenders in three processes.
  const id = `dense_${process.pid}`;
  await kit.create(id, { kind: "task" });
  a.send({ op: "append", runId: id, n: 150 });
  b.send({ op: "append", runId: id, n: 150 });
  const mine = await Promise.all([...Array(100)].map(() => kit.append(id, "message.delta", { message_id: "m", delta: "x" })));
  const ids = [...(await a.wait((e) => e.event === "appended")).ids, ...(await b.wait((e) => e.event === "appended")).ids, ...mine];
  assert.deepEqual(ids.sort((x, y) => x - y), [...Array(400)].map((_, i) => i + 1));

  // cancelSignal in B fires for a cancel taken by A (over HTTP).
  const task = `cancel_${process.pid}`;
  await kit.create(task, { kind: "task" });
  await kit.append(task, "run.started", {});
  b.send({ op: "watch", runId: task });
  await b.wait((e) => e.event === "watching");
  const t0 = Date.now();
  const r = await fetch(`${a.url}/api/runs/${task}/cancel`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_request_id: "stop1" }) });
  assert.equal(r.status, 202);
  await b.wait((e) => e.event === "cancelled" && e.runId === task, 5000);
  const firedMs = Date.now() - t0;

  // Sends taken by A and B (each retried through the other), answered once each by
  // whichever consumer of the group `replies` takes it: A, B or the gateway's worker.
  const sessions = [`sa_${process.pid}`, `sb_${process.pid}`];
  const crids = [];
  for (let i = 0; i < 12; i++) {
    const session = sessions[i % 2];
    const crid = `q${i}`;
    crids.push([session, crid]);
    const [first, retry] = i % 3 ? [a, b] : [b, a];
    for (const p of [first, retry]) {
      const s = await fetch(`${p.url}/api/chat/${session}/messages`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_request_id: crid, content: `question ${i}` }) });
      assert.equal(s.status, 202);
    }
  }
  // Every reply begun (message.created with reply_to), and how many of them completed.
  const answers = async () => {
    const out = new Map();
    let completed = 0;
    for (const s of sessions) {
      const state = JSON.parse((await kit.snapshot(s)).state);
      for (const m of state.messages) {
        if (m.role !== "assistant") continue;
        out.set(`${s}/${m.reply_to}`, (out.get(`${s}/${m.reply_to}`) ?? 0) + 1);
        if (m.status === "completed") completed++;
      }
    }
    out.completed = completed;
    return out;
  };
  const end = Date.now() + 30000;
  while ((await answers()).completed < crids.length) {
    assert.ok(Date.now() < end, `not every send was answered: ${JSON.stringify([...(await answers())])}`);
    await sleep(100);
  }
  await sleep(1500); // a second answer would have started by now
  const counts = await answers();
  for (const [s, c] of crids) assert.equal(counts.get(`${s}/${c}`), 1, `${s}/${c} answered ${counts.get(`${s}/${c}`)} times`);
  // Sends of the earlier tests are in the group too (it starts at 0): count this test's.
  const ours = (session) => sessions.includes(session);
  const by = {
    A: a.events.filter((e) => e.event === "answered" && ours(e.session)).length,
    B: b.events.filter((e) => e.event === "answered" && ours(e.session)).length,
    gateway: worker.lines.map((l) => JSON.parse(l)).filter((e) => e.event === "chat_worker.replied" && ours(e.run_id)).length,
  };
  assert.equal(by.A + by.B + by.gateway, crids.length, JSON.stringify(by));
  console.log(`# cross-process: cancelSignal fired ${firedMs} ms after the cancel; sends answered by ${JSON.stringify(by)}`);
});

test("a gateway replica on its default --replies local beside kit onSend consumers: each send answered once", { skip }, async () => {
  // The kit processes and the chat worker of the test above still consume the group `replies`.
  const port = await freePort();
  const g = run(["--auth", "none", "--addr", `127.0.0.1:${port}`, "--store", redis.url]);
  const up = Date.now() + 15000;
  while (!g.lines.some((l) => l.includes("server.listening"))) {
    assert.ok(Date.now() < up && g.exitCode === null, `gateway: ${g.err}`);
    await sleep(20);
  }
  const session = `local_${process.pid}`;
  for (let i = 0; i < 8; i++) {
    const r = await fetch(`http://127.0.0.1:${port}/api/chat/${session}/messages`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_request_id: `l${i}`, content: `local ${i}` }),
    });
    assert.equal(r.status, 202);
  }
  const replies = async () => JSON.parse((await kit.snapshot(session)).state).messages.filter((m) => m.role === "assistant");
  const end = Date.now() + 30000;
  while ((await replies()).filter((m) => m.status === "completed").length < 8) {
    assert.ok(Date.now() < end, "every send answered");
    await sleep(100);
  }
  await sleep(1500); // a second answer would have begun by now
  const counts = {};
  for (const m of await replies()) counts[m.reply_to] = (counts[m.reply_to] ?? 0) + 1;
  assert.deepEqual(counts, Object.fromEntries([...Array(8)].map((_, i) => [`l${i}`, 1])));
  g.kill("SIGKILL");
  await g.done;
});

test("a cancel the gateway took ends after its grace in a kit process, once, when that gateway died", { skip }, async () => {
  // No other process polls the graces or answers sends from here on: the shared gateway
  // and the kit processes of the test above stop.
  gateway.kill("SIGKILL");
  await gateway.done;
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => (p.exitCode === null && p.signalCode === null ? new Promise((r) => p.once("exit", r)) : null)));
  const port = await freePort();
  const g2 = run(["--auth", "none", "--addr", `127.0.0.1:${port}`, "--store", redis.url, "--replies", "none", "--cancel-grace-ms", "300"]);
  const up = Date.now() + 15000;
  while (!g2.lines.some((l) => l.includes("server.listening"))) {
    assert.ok(Date.now() < up && g2.exitCode === null, `gateway: ${g2.err}`);
    await sleep(20);
  }
  const g2url = `http://127.0.0.1:${port}`;

  // A chat reply streaming and a task run, both cancelled through the gateway.
  const session = `grace_${process.pid}`;
  const post = (path, body) => fetch(g2url + path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  assert.equal((await post(`/api/chat/${session}/messages`, { client_request_id: "g1", content: "hi" })).status, 202);
  const mid = await kit.nextMessageId(session);
  await kit.appendBatch(session, [
    { type: "message.created", payload: { message_id: mid, role: "assistant", reply_to: "g1" } },
    { type: "message.delta", payload: { message_id: mid, delta: "partial" } },
  ]);
  const task = `gracetask_${process.pid}`;
  await kit.create(task, { kind: "task" });
  await kit.appendBatch(task, [{ type: "run.started", payload: {} }, { type: "message.created", payload: { message_id: "t1", role: "assistant" } }]);
  assert.equal((await post(`/api/runs/${session}/cancel`, { client_request_id: "x1", reply_to: "g1" })).status, 202);
  assert.equal((await post(`/api/runs/${task}/cancel`, { client_request_id: "x2" })).status, 202);
  g2.kill("SIGKILL");
  await g2.done;
  // A kit process that was not there when the cancels were taken ends them.
  const c = await kitProcess("C");

  const endings = async (id) => {
    const out = [];
    for (let after = 0; ;) {
      const rep = await kit.read(id, after);
      if (rep.events.length === 0) return out;
      for (const e of rep.events) {
        const env = JSON.parse(e);
        after = env.event_id;
        if (env.type === "message.completed" || env.type === "run.completed") out.push([env.type, env.payload]);
      }
    }
  };
  const end = Date.now() + 10000;
  while (!(await endings(session)).some(([, p]) => p.message_id === mid) || (await endings(task)).length < 2) {
    assert.ok(Date.now() < end, "the kit process ended the targets the dead gateway had taken");
    await sleep(100);
  }
  await sleep(1500); // a second ending would have come by now
  // (Kit process C, a consumer of the group 'replies', also answered the send: its own reply.)
  assert.deepEqual((await endings(session)).filter(([, p]) => p.message_id === mid), [["message.completed", { message_id: mid, finish_reason: "cancelled" }]]);
  assert.deepEqual(await endings(task), [
    ["message.completed", { message_id: "t1", finish_reason: "cancelled" }],
    ["run.completed", { status: "cancelled" }],
  ]);
  assert.equal(JSON.parse((await kit.snapshot(session)).state).status !== "cancelled", true, "a reply cancel leaves the chat run open");
  c.kill("SIGKILL");
});
