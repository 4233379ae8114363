// runstream-doctor (SERVER.md §3, issue 30) against real set-ups on loopback:
// the gateway directly (--auth none, and JWTs with --token), deploy/nginx.conf
// and deploy/Caddyfile in front of two gateway replicas on one redis-server,
// and the TypeScript kit (kit/dist) on its memory store and on that Redis:
// exit 0 and no `error` finding. Then broken set-ups, each reported by its
// own finding id and nothing else as an error: nginx that really buffers
// (gzip + proxy_buffering on, ../../shared/TOOLCHAIN.md), gzip on
// text/event-stream that still streams, a proxy_read_timeout below the
// heartbeat, a rewritten Cache-Control, and the independent spec server
// (spec-server.mjs) with one fault each.
//
// Every doctor run starts at once (they wait, they do not compute): the suite
// takes about one idle hold (22 s) plus start-up. `--hold 6` with nginx's
// `proxy_read_timeout 3s` keeps the idle-timeout case short.
//
// Another server (the TypeScript kit, a staging deployment):
//   DOCTOR_TARGET=http://127.0.0.1:3000 DOCTOR_PUBLISH_KEY=… node --test tests/e2e/doctor.test.mjs
// adds a test that expects exit 0 and no error there (DOCTOR_TARGET_ARGS: extra flags, space-separated).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync, chmodSync, existsSync, createWriteStream, mkdirSync, readdirSync, copyFileSync } from "node:fs";
import { createHmac } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, have, freePort, nginxConfig, waitForPort as waitForPortWithin } from "./infra.mjs";
import { startSpecServer } from "./spec-server.mjs";
import { createServer } from "node:http";
import { createRunstream, memoryStore } from "../../kit/dist/index.js";
import { redisStore } from "../../kit/dist/redis.js";

const SERVER = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const DOCTOR = process.env.RUNSTREAM_DOCTOR_BIN || join(root, "target/debug/runstream-doctor");
const KEY = "doctor-test-publish-key-0123456789";
const HOLD = ["--hold", "6"];
const missing = ["redis-server", "nginx", "caddy", "openssl"].filter((c) => !have(c));
const skip = missing.length ? `not installed: ${missing.join(", ")} (./scripts/setup.sh installs them)` : false;

const dir = mkdtempSync(join(tmpdir(), "runstream-doctor-"));
chmodSync(dir, 0o755); // nginx workers (nobody) reach their temp dirs
const procs = new Set();
const specs = [];
const kits = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function track(name, cmd, args, opts = {}) {
  const p = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], ...opts });
  const out = createWriteStream(join(dir, `${name}.log`), { flags: "a" });
  p.stdout.on("data", (d) => out.write(d));
  p.stderr.on("data", (d) => out.write(d));
  p.exited = new Promise((r) => p.on("exit", (code, signal) => { procs.delete(p); r({ code, signal }); }));
  procs.add(p);
  return p;
}
const killAll = () => { for (const p of procs) try { p.kill("SIGKILL"); } catch {} };
process.on("exit", killAll);

// Replicas, nginx, Caddy and redis get 15 s to listen (several start at once).
const waitForPort = (port) => waitForPortWithin(port, 15000);

/** A gateway replica; resolves with its port once it accepts connections. */
async function gateway(name, args) {
  const port = await freePort();
  track(name, SERVER, ["--addr", `127.0.0.1:${port}`, "--publish-key-file", join(dir, "publish.key"), ...args]);
  await waitForPort(port);
  return port;
}

/**
 * The TypeScript kit (`@runstream/server`, kit/dist) as a team runs it: its
 * node:http adapter and WebSocket on a free port, the publish API on, no
 * answering producer (the doctor's probe run and sends need none), the
 * default 15 s heartbeat. Resolves with its base URL.
 */
async function kitServer(store) {
  const rs = createRunstream({ store, auth: "none", publishKey: KEY });
  const server = createServer(rs.node);
  const ws = rs.attachWebSocket(server, { path: "/api/ws" });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  kits.push({ rs, server, ws, store });
  return `http://127.0.0.1:${server.address().port}`;
}

/** A test CA and a certificate for 127.0.0.1 signed by it: `{ ca, cert, key }` (PEM paths). */
function certificates() {
  const f = (n) => join(dir, n);
  writeFileSync(f("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (const args of [
    ["req", "-x509", ...ec, "-days", "1", "-keyout", f("ca.key"), "-out", f("ca.pem"), "-subj", "/CN=runstream-doctor test CA"],
    ["req", ...ec, "-keyout", f("key.pem"), "-out", f("leaf.csr"), "-subj", "/CN=127.0.0.1"],
    ["x509", "-req", "-in", f("leaf.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-days", "1", "-out", f("cert.pem"), "-extfile", f("leaf.ext")],
  ]) {
    const made = spawnSync("openssl", args, { encoding: "utf8" });
    if (made.status !== 0) throw new Error(`openssl ${args[0]}: ${made.stderr}`);
  }
  return { ca: f("ca.pem"), cert: f("cert.pem"), key: f("key.pem") };
}

/**
 * deploy/nginx.conf for the two replicas on `front`, its /api/stream/ location edited by `edit`;
 * `tls: { cert, key }` keeps its HTTPS + HTTP/2 port (returned as `.tls`).
 */
async function nginx(name, replicas, edit = null, tls = null) {
  const front = await freePort();
  const tlsPort = tls && await freePort();
  const base = nginxConfig({ front, replicas, tls: tls && { ...tls, port: tlsPort } });
  const conf = edit ? edit(base) : base;
  if (edit && conf === base) throw new Error(`${name}: the edit changed nothing in deploy/nginx.conf`);
  const d = join(dir, name);
  mkdirSync(d);
  chmodSync(d, 0o755);
  writeFileSync(join(d, "nginx.conf"), conf);
  track(name, "nginx", ["-p", d, "-c", join(d, "nginx.conf"), "-e", join(d, "error.log"), "-g", `daemon off; pid ${join(d, "nginx.pid")};`]);
  await waitForPort(front);
  const url = new String(`http://127.0.0.1:${front}`);
  if (tls) {
    await waitForPort(tlsPort);
    url.tls = `https://127.0.0.1:${tlsPort}`;
  }
  return url;
}

/** The /api/stream/ location's lines `from` replaced by `to` (the edit must apply). */
const streamLocation = (from, to) => (conf) => {
  const loc = conf.indexOf("location /api/stream/ {");
  const end = conf.indexOf("}", loc);
  const block = conf.slice(loc, end);
  if (loc < 0 || !block.includes(from)) throw new Error(`deploy/nginx.conf: "${from}" not in the /api/stream/ location`);
  return conf.slice(0, loc) + block.replace(from, to) + conf.slice(end);
};

async function caddy(replicas) {
  const front = await freePort();
  let conf = readFileSync(join(root, "deploy/Caddyfile"), "utf8");
  for (const [from, to] of [["http://127.0.0.1:8080", `http://127.0.0.1:${front}`], ["127.0.0.1:8801 127.0.0.1:8802", `127.0.0.1:${replicas[0]} 127.0.0.1:${replicas[1]}`]]) {
    if (!conf.includes(from)) throw new Error(`deploy/Caddyfile: "${from}" not found`);
    conf = conf.replaceAll(from, to);
  }
  writeFileSync(join(dir, "Caddyfile"), conf);
  const env = { ...process.env, HOME: dir, XDG_DATA_HOME: join(dir, "caddy-data"), XDG_CONFIG_HOME: join(dir, "caddy-config") };
  track("caddy", "caddy", ["run", "--config", join(dir, "Caddyfile"), "--adapter", "caddyfile"], { env });
  await waitForPort(front);
  return `http://127.0.0.1:${front}`;
}

/** An HS256 JWT (PROTOCOL §7) for the JWT gateway. */
function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** Runs the doctor with `--json`: `{ code, report, ms, stderr }`. */
function doctor(name, base, args = []) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const p = track(`doctor-${name}`, DOCTOR, [base, ...args, "--json"]);
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    // "close", not "exit": "exit" can come before the last stdout chunk is read.
    p.on("close", (code) => {
      let report = null;
      try { report = JSON.parse(out); } catch {}
      writeFileSync(join(dir, `doctor-${name}.json`), out);
      resolve({ code, report, ms: Date.now() - t0, stderr: err, out });
    });
  });
}

const errors = (r) => r.report.findings.filter((f) => f.severity === "error");
const show = (r) => JSON.stringify(r.report ?? r.out, null, 1) + r.stderr;

/** Exit 0, no error finding, and every probe judged (none skipped unless `skipped` allows it). */
function healthy(r, { allowSkipped = [] } = {}) {
  assert.ok(r.report, `no JSON report: ${r.stderr}${r.out}`);
  assert.deepEqual(errors(r), [], show(r));
  assert.equal(r.code, 0, show(r));
  const skipped = r.report.skipped.map((s) => s.id).filter((id) => !allowSkipped.includes(id));
  assert.deepEqual(skipped, [], show(r));
  for (const f of r.report.findings) assert.ok(f.fix.length > 20, `finding ${f.id} prints its fix`);
}

/** Exit 1, `id` reported as an error, and no other error. */
function broken(r, id) {
  assert.ok(r.report, `no JSON report: ${r.stderr}${r.out}`);
  assert.deepEqual(errors(r).map((f) => f.id), [id], show(r));
  assert.equal(r.code, 1, show(r));
  const f = errors(r)[0];
  assert.ok(f.message.length > 10 && f.fix.length > 20, show(r));
  assert.ok(r.report.checked.includes(id));
}

const runs = {};
let times = {};

before(() => setUp().catch((e) => { console.log(`# set-up failed: ${e.stack}`); throw e; }), { timeout: 150000 });

async function setUp() {
  if (skip) return;
  for (const bin of [SERVER, DOCTOR]) {
    if (!existsSync(bin)) throw new Error(`build first: cargo build -p runstream-server -p runstream-doctor (${bin})`);
  }
  writeFileSync(join(dir, "publish.key"), KEY);
  const secret = "doctor-test-jwt-secret-0123456789abcdef";
  writeFileSync(join(dir, "jwt.secret"), secret);
  const redisPort = await freePort();
  track("redis", "redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"]);
  await waitForPort(redisPort);
  const store = ["--store", `redis://127.0.0.1:${redisPort}`];
  // Production defaults: 15 s heartbeats, no --dev (the test knobs are off).
  const [r0, r1, jwtGw] = await Promise.all([
    gateway("replica-0", ["--auth", "none", ...store]),
    gateway("replica-1", ["--auth", "none", ...store]),
    gateway("jwt", ["--jwt-secret-file", join(dir, "jwt.secret"), "--cors-origin", "https://app.example"]),
  ]);
  const certs = certificates();
  const replicas = [r0, r1];
  const front = {};
  [front.nginx, front.caddy, front.buffering, front.gzip, front.timeout, front.cacheControl] = await Promise.all([
    nginx("nginx", replicas, null, certs),
    caddy(replicas),
    // TOOLCHAIN.md: gzip on text/event-stream with proxy_buffering on holds every event; the
    // server's X-Accel-Buffering is ignored, as many shared configs do.
    nginx("nginx-buffering", replicas, streamLocation("proxy_buffering off;\n            proxy_cache off;\n            gzip off;",
      "proxy_buffering on;\n            proxy_ignore_headers X-Accel-Buffering;\n            gzip on;\n            gzip_types text/event-stream;\n            gzip_min_length 0;")),
    // gzip on with proxy_buffering off: streams live, but compressed.
    nginx("nginx-gzip", replicas, streamLocation("gzip off;", "gzip on;\n            gzip_types text/event-stream;\n            gzip_min_length 0;")),
    nginx("nginx-timeout", replicas, streamLocation("proxy_read_timeout 1h;", "proxy_read_timeout 3s;")),
    nginx("nginx-cache-control", replicas, streamLocation("proxy_cache off;", "proxy_cache off;\n            proxy_hide_header Cache-Control;\n            add_header Cache-Control \"public, max-age=60\";")),
  ]);

  // A run of the JWT gateway and a token that names it, for --run/--token.
  const created = await fetch(`http://127.0.0.1:${jwtGw}/api/publish/runs`, {
    method: "POST", headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" }, body: "{}",
  }).then((r) => r.json());
  const appended = await fetch(`http://127.0.0.1:${jwtGw}/api/publish/runs/${created.run_id}/events`, {
    method: "POST", headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json", "Idempotency-Key": "doctor-test-1" },
    body: JSON.stringify({ events: [{ type: "run.started", payload: {} }] }),
  });
  assert.equal(appended.status, 200);
  // It names the run and one chat session, the one the doctor's send-idempotency probe sends into.
  const session = `doctor-test-session-${Date.now()}`;
  const token = jwt(secret, { sub: "doctor-test", runs: [created.run_id], sessions: [session] });

  // A finished run of the replicas, for --run without a key.
  const finished = await fetch(`http://127.0.0.1:${r0}/api/publish/runs`, {
    method: "POST", headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" }, body: "{}",
  }).then((r) => r.json());
  const ended = await fetch(`http://127.0.0.1:${r0}/api/publish/runs/${finished.run_id}/events`, {
    method: "POST", headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json", "Idempotency-Key": "doctor-test-2" },
    body: JSON.stringify({ events: [{ type: "run.started", payload: {} }, { type: "message.created", payload: { message_id: "m", role: "assistant", content: "hi" } },
      { type: "message.completed", payload: { message_id: "m", finish_reason: "stop" } }, { type: "run.completed", payload: { status: "succeeded" } }] }),
  });
  assert.equal(ended.status, 200);

  const faults = ["omit-ids", "skip-id", "content-type", "no-heartbeat", "no-flush", "finished-200", "duplicate-sends"];
  for (const f of faults) {
    // 2 s heartbeats, but the held headers wait for a 15 s one, as a default Node server's do.
    specs.push([f, await startSpecServer({ publishKey: KEY, faults: [f], heartbeatMs: f === "no-flush" ? 15000 : 2000 })]);
  }
  // The kit on its memory store, and on the replicas' Redis (the gateway's layout).
  const [kitMemory, kitRedis] = await Promise.all([
    kitServer(memoryStore()),
    kitServer(redisStore({ url: `redis://127.0.0.1:${redisPort}` })),
  ]);
  const key = ["--publish-key", KEY];
  const jobs = {
    kitMemory: doctor("kit-memory", kitMemory, [...key, ...HOLD]),
    kitRedis: doctor("kit-redis", kitRedis, [...key, ...HOLD]),
    direct: doctor("direct", `http://127.0.0.1:${r0}`, [...key]), // the default hold (40 s): the ≤ 60 s figure
    jwt: doctor("jwt", `http://127.0.0.1:${jwtGw}`, [...key, ...HOLD, "--run", created.run_id, "--token", token, "--session", session, "--page-origin", "https://app.example"]),
    corsDenied: doctor("cors-denied", `http://127.0.0.1:${jwtGw}`, [...key, ...HOLD, "--page-origin", "https://other.example"]),
    nginx: doctor("nginx", String(front.nginx), [...key, ...HOLD, "--origin", `http://127.0.0.1:${r1}`]),
    h2: doctor("nginx-h2", front.nginx.tls, [...key, ...HOLD, "--ca-file", certs.ca]),
    caddy: doctor("caddy", front.caddy, [...key, ...HOLD]),
    buffering: doctor("buffering", front.buffering, [...key, ...HOLD, "--origin", `http://127.0.0.1:${r0}`]),
    gzip: doctor("gzip", front.gzip, [...key, ...HOLD]),
    timeout: doctor("timeout", front.timeout, [...key, ...HOLD]),
    cacheControl: doctor("cache-control", front.cacheControl, [...key, ...HOLD]),
    noKey: doctor("no-key", `http://127.0.0.1:${r0}`, [...HOLD]),
    noKeyRun: doctor("no-key-run", `http://127.0.0.1:${r1}`, [...HOLD, "--run", finished.run_id]),
    usage: doctor("usage", "not-a-url", []),
  };
  for (const [f, s] of specs) jobs[`spec:${f}`] = doctor(`spec-${f}`, s.url, [...key, ...HOLD]);
  if (process.env.DOCTOR_TARGET) {
    const extra = (process.env.DOCTOR_TARGET_ARGS || "").split(" ").filter(Boolean);
    const k = process.env.DOCTOR_PUBLISH_KEY ? ["--publish-key", process.env.DOCTOR_PUBLISH_KEY] : [];
    jobs.target = doctor("target", process.env.DOCTOR_TARGET, [...k, ...HOLD, ...extra]);
  }
  await Promise.all(Object.entries(jobs).map(async ([k, p]) => { runs[k] = await p; }));
  times = Object.fromEntries(Object.entries(runs).map(([k, r]) => [k, r.ms]));
  console.log(`# doctor run times (ms): ${JSON.stringify(times)}`);
}

after(async () => {
  await Promise.all(specs.map(([, s]) => s.close()));
  for (const k of kits) {
    await k.ws.close();
    await k.rs.close();
    k.server.closeAllConnections();
    await new Promise((r) => k.server.close(r));
    await k.store.close?.();
  }
  for (const p of procs) try { p.kill("SIGTERM"); } catch {}
  await Promise.race([Promise.all([...procs].map((p) => p.exited)), sleep(3000)]);
  killAll();
  const logsTo = join(root, "target/test-logs/doctor");
  mkdirSync(logsTo, { recursive: true });
  for (const f of readdirSync(dir)) if (f.endsWith(".log") || f.endsWith(".json")) copyFileSync(join(dir, f), join(logsTo, f));
  rmSync(dir, { recursive: true, force: true });
});

test("the gateway directly, default --hold 40: exit 0, no error, every probe judged, within 60 s", { skip }, () => {
  healthy(runs.direct);
  assert.ok(runs.direct.ms < 60000, `took ${runs.direct.ms} ms`);
  assert.ok(runs.direct.ms >= 40000, `held the idle stream for --hold 40 (took ${runs.direct.ms} ms)`);
  const checked = runs.direct.report.checked;
  for (const id of ["content-type", "cache-control", "compression", "buffering", "idle-timeout", "heartbeat", "headers-delayed",
    "missing-id", "id-not-dense", "envelope", "replay-header", "replay-query", "status-finished", "status-unknown", "snapshot",
    "send-idempotency", "cancel-idempotency", "auth", "cors", "http1", "websocket"]) {
    assert.ok(checked.includes(id), `${id} checked: ${checked}`);
  }
  // Plain HTTP on loopback: the browser-facing hop is HTTP/1.1 (a warning, not an error).
  assert.ok(runs.direct.report.findings.some((f) => f.id === "http1" && f.severity === "warn"));
});

test("the gateway with JWTs: --run and --token check PROTOCOL §7, exit 0", { skip }, () => {
  healthy(runs.jwt);
  const authFinding = runs.jwt.report.findings.find((f) => f.id === "auth");
  assert.equal(authFinding, undefined, `auth passes quietly with credentials required: ${show(runs.jwt)}`);
  assert.ok(runs.jwt.report.checked.includes("auth"));
});

test("through deploy/nginx.conf (compared with an origin replica): exit 0, no error", { skip }, () => {
  healthy(runs.nginx);
});

test("through deploy/nginx.conf's HTTPS + HTTP/2 port (--ca-file): exit 0, no error, no http1 warning", { skip }, () => {
  healthy(runs.h2);
  assert.ok(runs.h2.report.checked.includes("http1"));
  assert.equal(runs.h2.report.findings.find((f) => f.id === "http1"), undefined, show(runs.h2));
  assert.ok(runs.h2.report.checked.includes("websocket"), "wss through nginx");
});

test("a page origin the gateway does not allow (--cors-origin is another): `cors`", { skip }, () => {
  // The JWT gateway allows https://app.example; the jwt run above checks that origin passes.
  broken(runs.corsDenied, "cors");
  assert.ok(runs.jwt.report.checked.includes("cors"));
});

test("through deploy/Caddyfile: exit 0, no error", { skip }, () => {
  healthy(runs.caddy);
});

test("nginx with gzip + proxy_buffering on for the stream: `buffering`, at the proxy and not at the origin", { skip }, () => {
  broken(runs.buffering, "buffering");
  assert.match(errors(runs.buffering)[0].fix, /proxy_buffering off;/);
  // --origin: the replica behind it streams, so the hop in between is named.
  assert.match(errors(runs.buffering)[0].message, /the origin does not: a hop between the public URL and the origin causes it/);
});

test("nginx gzip on text/event-stream that still streams: `compression`", { skip }, () => {
  broken(runs.gzip, "compression");
  assert.match(errors(runs.gzip)[0].fix, /gzip off;/);
  assert.ok(runs.gzip.report.checked.includes("buffering"), "the events were read through the gzip stream");
});

test("nginx proxy_read_timeout 3s below the 15 s heartbeat: `idle-timeout`", { skip }, () => {
  broken(runs.timeout, "idle-timeout");
  assert.match(errors(runs.timeout)[0].fix, /proxy_read_timeout/);
});

test("nginx rewriting Cache-Control: `cache-control`", { skip }, () => {
  broken(runs.cacheControl, "cache-control");
});

for (const [fault, id] of [["omit-ids", "missing-id"], ["skip-id", "id-not-dense"], ["content-type", "content-type"], ["no-heartbeat", "heartbeat"],
  ["no-flush", "headers-delayed"], ["finished-200", "status-finished"], ["duplicate-sends", "send-idempotency"]]) {
  test(`the spec server with fault ${fault}: \`${id}\``, { skip }, () => broken(runs[`spec:${fault}`], id));
}

test("without a publish key: checks what it can, lists what it skipped", { skip }, () => {
  const r = runs.noKey;
  assert.deepEqual(errors(r), [], show(r));
  assert.equal(r.code, 0);
  const skipped = r.report.skipped.map((s) => s.id);
  for (const id of ["buffering", "send-idempotency", "cancel-idempotency", "idle-timeout"]) assert.ok(skipped.includes(id), `${id} skipped: ${skipped}`);
  for (const id of ["status-unknown", "websocket", "cors"]) assert.ok(r.report.checked.includes(id), `${id} checked`);
});

test("without a publish key, --run of a finished run: its framing, replays, snapshot and 204 are checked", { skip }, () => {
  const r = runs.noKeyRun;
  assert.deepEqual(errors(r), [], show(r));
  assert.equal(r.code, 0);
  for (const id of ["content-type", "cache-control", "compression", "missing-id", "id-not-dense", "envelope", "replay-header", "replay-query",
    "status-finished", "snapshot", "websocket", "auth"]) assert.ok(r.report.checked.includes(id), `${id} checked: ${r.report.checked}`);
  const skipped = r.report.skipped.map((s) => s.id);
  for (const id of ["buffering", "idle-timeout", "heartbeat", "cancel-idempotency"]) assert.ok(skipped.includes(id), `${id} skipped: ${skipped}`);
});

test("the TypeScript kit on memoryStore (node:http adapter, WebSocket): exit 0, no error, every probe judged", { skip }, () => {
  healthy(runs.kitMemory);
});

test("the TypeScript kit on redisStore (the gateway's Redis): exit 0, no error, every probe judged", { skip }, () => {
  healthy(runs.kitRedis);
});

test("usage errors exit 2", { skip }, () => {
  assert.equal(runs.usage.code, 2, runs.usage.stderr);
  assert.match(runs.usage.stderr, /usage: runstream-doctor/);
});

test("DOCTOR_TARGET (another server, e.g. the TypeScript kit): exit 0, no error", { skip: skip || !process.env.DOCTOR_TARGET }, () => {
  healthy(runs.target, { allowSkipped: runs.target.report?.skipped.map((s) => s.id) });
});
