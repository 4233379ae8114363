// PROTOCOL §7 and SERVER.md §1/§2 authorization matrix on jwtAuth (jose) and
// on an authorize(ctx) function, over real HTTP and WebSocket on loopback:
// no token, forged, alg none, expired (and within the 30 s leeway), another
// user's run, unknown runs (404 only to who would have the right), the
// sessions claim, the publish key's authority; a denial leaks nothing and
// changes nothing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { startKit, call, sse, wsClient, token, noneToken, ev, sleep, SECRET } from "./helpers.mjs";
import { jwtAuth } from "../dist/index.js";

const KEY = "the-publish-key-of-tests";
let kit;
let runA; // alice's run (in her token's `runs`)
let runB; // bob's run
let runS; // published with session_id "sa" (alice's session)
const bearer = (t) => ({ authorization: `Bearer ${t}` });

before(async () => {
  kit = await startKit({ auth: jwtAuth({ secret: SECRET }), publishKey: KEY, heartbeatMs: 5000 });
  runA = (await kit.rs.createRun({ runId: "run_alice" })).runId;
  runB = (await kit.rs.createRun({ runId: "run_bob" })).runId;
  runS = (await kit.rs.createRun({ runId: "run_sess", sessionId: "sa" })).runId;
  for (const r of [runA, runB, runS]) await kit.rs.append(r, [ev("run.started", { title: `secret of ${r}` })]);
});
after(async () => kit?.close());

const alice = () => token({ sub: "alice", runs: [runA, "run_alice_future"], sessions: ["sa"] });

test("§7 401: no token, a forged signature, alg none, a wrong algorithm, an expired token, no exp; with WWW-Authenticate and no content", async () => {
  const now = Math.floor(Date.now() / 1000);
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const cases = {
    none: {},
    forged: bearer(await token({ runs: [runA] }, { secret: "another-secret-0123456789abcdef" })),
    algNone: bearer(noneToken({ runs: [runA] })),
    wrongAlg: bearer(await token({ runs: [runA] }, { alg: "RS256", key: privateKey })),
    expired: bearer(await token({ runs: [runA] }, { exp: now - 31 - 5 })),
    noExp: bearer(await token({ runs: [runA] }, { exp: null })),
    garbage: bearer("a.b.c"),
  };
  for (const [name, headers] of Object.entries(cases)) {
    for (const [method, path, body] of [
      ["GET", `/api/runs/${runA}/snapshot`],
      ["GET", `/api/stream/runs/${runA}`],
      ["POST", `/api/runs/${runA}/cancel`, { client_request_id: "x" }],
      ["POST", "/api/chat/sa/messages", { client_request_id: "x", content: "x" }],
    ]) {
      const r = await call(kit.base, method, path, { headers, body });
      assert.equal(r.status, 401, `${name} ${method} ${path}`);
      assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="runstream"');
      assert.doesNotMatch(r.text, /secret of/);
    }
  }
  assert.equal((await kit.store.meta(runA)).lastId, 1, "no cancel was appended");
  assert.equal(await kit.store.meta("sa"), null, "no session was created by a refused send");
});

test("§7 leeway: a token expired 10 s ago is still valid (30 s leeway); the cookie carries a token too", async () => {
  const now = Math.floor(Date.now() / 1000);
  const t = await token({ runs: [runA] }, { exp: now - 10 });
  assert.equal((await call(kit.base, "GET", `/api/runs/${runA}/snapshot`, { headers: bearer(t) })).status, 200);
  assert.equal((await call(kit.base, "GET", `/api/runs/${runA}/snapshot`, { headers: { cookie: `a=1; runstream_token=${t}` } })).status, 200);
});

test("§7 403: another user's run; unknown runs are 404 only to who would have the right, 403 to anyone else", async () => {
  const t = await alice();
  const r = await call(kit.base, "GET", `/api/runs/${runB}/snapshot`, { headers: bearer(t) });
  assert.equal(r.status, 403);
  assert.doesNotMatch(r.text, /secret of/);
  assert.equal((await call(kit.base, "GET", `/api/stream/runs/${runB}`, { headers: bearer(t) })).status, 403);
  const cancel = await call(kit.base, "POST", `/api/runs/${runB}/cancel`, { headers: bearer(t), body: { client_request_id: "x" } });
  assert.equal(cancel.status, 403);
  assert.equal((await kit.store.meta(runB)).lastId, 1, "a denied cancel changes nothing");
  // unknown: named in her token → 404; her session's id → 404; anything else → 403 (no probing)
  assert.equal((await call(kit.base, "GET", "/api/runs/run_alice_future/snapshot", { headers: bearer(t) })).status, 404);
  assert.equal((await call(kit.base, "GET", "/api/runs/sa/snapshot", { headers: bearer(t) })).status, 404);
  assert.equal((await call(kit.base, "GET", "/api/runs/run_nobody/snapshot", { headers: bearer(t) })).status, 403);
  assert.equal((await call(kit.base, "GET", `/api/runs/${runA}/snapshot`, { headers: bearer(t) })).status, 200);
});

test("§7 sessions claim: send into the session; read and cancel its chat run and runs published with that session_id; another session is 403", async () => {
  const t = await alice();
  const s = await call(kit.base, "POST", "/api/chat/sa/messages", { headers: bearer(t), body: { client_request_id: "c1", content: "hi" } });
  assert.equal(s.status, 202);
  assert.equal((await call(kit.base, "GET", "/api/runs/sa/snapshot", { headers: bearer(t) })).status, 200);
  assert.equal((await call(kit.base, "GET", `/api/runs/${runS}/snapshot`, { headers: bearer(t) })).status, 200);
  const c = await call(kit.base, "POST", `/api/runs/${runS}/cancel`, { headers: bearer(t), body: { client_request_id: "k" } });
  assert.equal(c.status, 202);
  const other = await call(kit.base, "POST", "/api/chat/sb/messages", { headers: bearer(t), body: { client_request_id: "c1", content: "hi" } });
  assert.equal(other.status, 403);
  assert.equal(await kit.store.meta("sb"), null, "a denied send changes nothing");
  // a send into a session id that names a task run of another session is refused
  const bobTask = await call(kit.base, "POST", `/api/chat/${runS}/messages`, { headers: bearer(await token({ sessions: [runS] })), body: { client_request_id: "c", content: "x" } });
  assert.equal(bobTask.status, 403);
});

test("SERVER.md §1 publish key: reads and cancels every run, publishes; a send with it is 403; a user token on publish routes is 403", async () => {
  const k = bearer(KEY);
  assert.equal((await call(kit.base, "GET", `/api/runs/${runB}/snapshot`, { headers: k })).status, 200);
  const s = await sse(`${kit.base}/api/stream/runs/${runB}`, { headers: k, stop: (f) => f.some((x) => x.id === 1) });
  assert.equal(s.status, 200);
  assert.equal((await call(kit.base, "GET", "/api/runs/unknown_x/snapshot", { headers: k })).status, 404);
  assert.equal((await call(kit.base, "POST", "/api/chat/sa/messages", { headers: k, body: { client_request_id: "p", content: "x" } })).status, 403);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { headers: bearer(await alice()), body: {} })).status, 403);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { headers: bearer("forged"), body: {} })).status, 401);
  assert.equal((await call(kit.base, "POST", "/api/publish/runs", { headers: k, body: {} })).status, 201);
  const c = await call(kit.base, "POST", `/api/runs/${runB}/cancel`, { headers: k, body: { client_request_id: "pk" } });
  assert.equal(c.status, 202);
});

test("§7 WebSocket: the upgrade is never refused; each frame is checked with its own headers; refusals are per run with §2b codes", async () => {
  const c = await wsClient(kit.base);
  try {
    const t = await alice();
    c.send({ op: "subscribe", run_id: runA, headers: { Authorization: `Bearer ${t}` } });
    assert.equal((await c.next((f) => f.op === "subscribed")).run_id, runA);
    assert.equal((await c.next((f) => f.op === "event")).event.run_id, runA);
    c.send({ op: "subscribe", run_id: runB, headers: { Authorization: `Bearer ${t}` } });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: runB, code: "forbidden", message: "forbidden" });
    c.send({ op: "subscribe", run_id: runB });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: runB, code: "unauthorized", message: "unauthorized" });
    c.send({ op: "subscribe", run_id: "run_alice_future", headers: { authorization: `Bearer ${t}` } });
    assert.equal((await c.next((f) => f.op === "error")).code, "not_found");
    c.send({ op: "send", session_id: "sb", client_request_id: "w1", content: "x", headers: { Authorization: `Bearer ${t}` } });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", client_request_id: "w1", code: "forbidden", message: "forbidden" });
    c.send({ op: "cancel", run_id: runB, client_request_id: "w2", headers: { Authorization: `Bearer ${t}` } });
    assert.deepEqual(await c.next((f) => f.op === "error"), { op: "error", run_id: runB, client_request_id: "w2", code: "forbidden", message: "forbidden" });
    await sleep(50);
    assert.equal(c.frames.filter((f) => f.op === "event").length, 0, "no event of a refused run");
  } finally {
    c.close();
  }
});

test("§7 expiry: an SSE stream ends and a WebSocket subscription gets `unauthorized` when the token expires (exp + leeway)", async () => {
  const short = await startKit({ auth: jwtAuth({ secret: SECRET }), heartbeatMs: 5000 });
  try {
    await short.rs.createRun({ runId: "r" });
    await short.rs.append("r", [ev("run.started")]);
    // expires 29 s ago + 30 s leeway = valid for ~1 s more
    const t = await token({ runs: ["r"] }, { exp: Math.floor(Date.now() / 1000) - 29 });
    const t0 = Date.now();
    const s = await sse(`${short.base}/api/stream/runs/r`, { headers: bearer(t), timeoutMs: 6000 });
    assert.ok(s.ended, "the stream ended");
    assert.ok(Date.now() - t0 < 4000, `ended after ${Date.now() - t0} ms`);
    const c = await wsClient(short.base);
    try {
      const t2 = await token({ runs: ["r"] }, { exp: Math.floor(Date.now() / 1000) - 29 });
      c.send({ op: "subscribe", run_id: "r", headers: { authorization: `Bearer ${t2}` } });
      await c.next((f) => f.op === "subscribed");
      assert.deepEqual(await c.next((f) => f.op === "error", 4000), { op: "error", run_id: "r", code: "unauthorized", message: "credentials expired" });
    } finally {
      c.close();
    }
  } finally {
    await short.close();
  }
});

test("§7 expiry: a token valid for longer than a timer can wait (40 days > 2^31 ms) keeps its SSE stream open; it is not ended as expired at once", async () => {
  const long = await startKit({ auth: jwtAuth({ secret: SECRET }), heartbeatMs: 5000 });
  try {
    await long.rs.createRun({ runId: "r" });
    await long.rs.append("r", [ev("run.started")]);
    const t = await token({ runs: ["r"] }, { exp: Math.floor(Date.now() / 1000) + 40 * 24 * 3600 });
    const s = sse(`${long.base}/api/stream/runs/r`, { headers: bearer(t), stop: (f) => f.some((x) => x.id === 2), timeoutMs: 5000 });
    await sleep(300);
    await long.rs.append("r", [ev("worker.started", { worker_id: "w1" })]);
    const out = await s;
    assert.deepEqual(out.frames.filter((f) => f.id).map((f) => f.id), [1, 2], "the stream stayed open for the event after 300 ms");
    assert.equal(out.ended, false);
  } finally {
    await long.close();
  }
});

test("jwtAuth publicKey: RS256 for an RSA key, ES256 for a P-256 key; the other algorithm is refused", async () => {
  for (const [type, opts, alg] of [["rsa", { modulusLength: 2048 }, "RS256"], ["ec", { namedCurve: "P-256" }, "ES256"]]) {
    const { publicKey, privateKey } = generateKeyPairSync(type, opts);
    const k = await startKit({ auth: jwtAuth({ publicKey: publicKey.export({ type: "spki", format: "pem" }) }) });
    try {
      await k.rs.createRun({ runId: "r" });
      const good = await token({ runs: ["r"] }, { alg, key: privateKey });
      assert.equal((await call(k.base, "GET", "/api/runs/r/snapshot", { headers: bearer(good) })).status, 200, alg);
      const hs = await token({ runs: ["r"] });
      assert.equal((await call(k.base, "GET", "/api/runs/r/snapshot", { headers: bearer(hs) })).status, 401, `${alg} refuses HS256`);
    } finally {
      await k.close();
    }
  }
});

test("SERVER.md §2 authorize(ctx): allow/unauthorized/forbidden (or a Promise); ctx has request, action, runId, sessionId; unknown run after allow is 404", async () => {
  const seen = [];
  const k = await startKit({
    auth: async (ctx) => {
      seen.push({ action: ctx.action, runId: ctx.runId, sessionId: ctx.sessionId, exists: ctx.runExists, url: new URL(ctx.request.url).pathname });
      const u = ctx.headers.get("authorization");
      if (!u) return "unauthorized";
      return u === "Bearer ok" ? "allow" : "forbidden";
    },
  });
  try {
    await k.rs.createRun({ runId: "r", sessionId: "s1" });
    assert.equal((await call(k.base, "GET", "/api/runs/r/snapshot")).status, 401);
    assert.equal((await call(k.base, "GET", "/api/runs/r/snapshot", { headers: { authorization: "Bearer no" } })).status, 403);
    assert.equal((await call(k.base, "GET", "/api/runs/r/snapshot", { headers: { authorization: "Bearer ok" } })).status, 200);
    assert.equal((await call(k.base, "GET", "/api/runs/zz/snapshot", { headers: { authorization: "Bearer ok" } })).status, 404);
    assert.equal((await call(k.base, "GET", "/api/runs/zz/snapshot", { headers: { authorization: "Bearer no" } })).status, 403);
    assert.equal((await call(k.base, "POST", "/api/chat/s9/messages", { headers: { authorization: "Bearer ok" }, body: { client_request_id: "c", content: "x" } })).status, 202);
    assert.deepEqual(seen[2], { action: "read", runId: "r", sessionId: "s1", exists: true, url: "/api/runs/r/snapshot" });
    assert.deepEqual(seen.at(-1), { action: "send", runId: "s9", sessionId: "s9", exists: false, url: "/api/chat/s9/messages" });
  } finally {
    await k.close();
  }
});

test("SERVER.md §2: createRunstream without an auth choice refuses to start", async () => {
  const { createRunstream, memoryStore } = await import("../dist/index.js");
  assert.throws(() => createRunstream({ store: memoryStore() }), /choose `auth`/);
  assert.throws(() => createRunstream({ store: memoryStore(), auth: "none", publishKey: "short" }), /at least 16 bytes/);
});

test("jwtAuth issuer/audience: checked when configured (a token without them or with others is 401); nbf in the future beyond the leeway is 401", async () => {
  const { SignJWT } = await import("jose");
  const k = await startKit({ auth: jwtAuth({ secret: SECRET }, { issuer: "https://auth.example", audience: "runstream" }) });
  const sign = (claims, f = (j) => j) =>
    f(new SignJWT({ runs: ["r"], ...claims }).setProtectedHeader({ alg: "HS256" }).setExpirationTime("1h")).sign(new TextEncoder().encode(SECRET));
  try {
    await k.rs.createRun({ runId: "r" });
    const get = async (t) => (await call(k.base, "GET", "/api/runs/r/snapshot", { headers: bearer(t) })).status;
    assert.equal(await get(await sign({}, (j) => j.setIssuer("https://auth.example").setAudience("runstream"))), 200);
    assert.equal(await get(await sign({})), 401, "no iss/aud");
    assert.equal(await get(await sign({}, (j) => j.setIssuer("https://evil.example").setAudience("runstream"))), 401, "another issuer");
    assert.equal(await get(await sign({}, (j) => j.setIssuer("https://auth.example").setAudience("other"))), 401, "another audience");
    const later = Math.floor(Date.now() / 1000) + 120;
    assert.equal(await get(await sign({}, (j) => j.setIssuer("https://auth.example").setAudience("runstream").setNotBefore(later))), 401, "nbf in 2 min");
    const soon = Math.floor(Date.now() / 1000) + 10;
    assert.equal(await get(await sign({}, (j) => j.setIssuer("https://auth.example").setAudience("runstream").setNotBefore(soon))), 200, "nbf within the leeway");
  } finally {
    await k.close();
  }
});
