// Load: 1,000 concurrent SSE clients over 50 runs on ONE API replica with
// Redis (`--store redis`), runs produced by a separate producer process, all on
// loopback. Counts and duration are fixed; the figures are events/s delivered
// to clients, append→delivery latency (p50/p99/max, from each envelope's
// `timestamp`, set by the producer just before its XADD, to the moment the
// client parsed the frame), connect latency (request → response headers,
// p50/p99), lost/duplicated events, server RSS (peak, after, and per
// connection: (peak − idle) / clients) and Redis `used_memory` after.
// It runs once per authorization mode, side by side in one run: `--auth none`
// and `--jwt-secret-file` (HS256; each client sends its own token naming its
// run), so the cost of a JWT check per connect shows in the connect latency.
//
//   node benches/load.mjs            (after `cargo build --release -p runstream-server`)
//   CLIENTS=200 RUNS=10 SECONDS=10 node benches/load.mjs   (smaller)
//   AUTH=none node benches/load.mjs  (one mode: none or jwt)
//   STORE=cluster node benches/load.mjs   (a 3-master Redis Cluster, `--store redis-cluster://…`)
//   STORE=both node benches/load.mjs      (one Redis, then the cluster; figures side by side)
//   SERVER=gateway,kit node benches/load.mjs  (default: both, side by side on the same producer)
//   SERVER=kit KIT_NODE_ARGS="--cpu-prof --cpu-prof-dir=target/bench" node benches/load.mjs  (profile the kit)
//
// SERVER=kit serves the same runs with the TypeScript kit (benches/kit-serve.mjs:
// createRunstream on redisStore, node:http through rs.node, one Node process)
// instead of the gateway: the gateway's `produce` writes the runs into Redis
// in the one layout both servers share, so only the serving tier differs.
//
// Not part of the test command: ~40 s, and its figures only mean something on
// an otherwise idle machine. Writes target/bench/load.json.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { request } from "node:http";
import { mkdtempSync, rmSync, readFileSync, existsSync, mkdirSync, writeFileSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, startRedisCluster } from "../tests/e2e/infra.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const CLIENTS = Number(process.env.CLIENTS || 1000);
const RUNS = Number(process.env.RUNS || 50);
const SECONDS = Number(process.env.SECONDS || 20);
const RATE = Number(process.env.RATE || 20); // token events per second per run
const TOKENS = SECONDS * RATE;
const EVENTS_PER_RUN = TOKENS + 4; // run.started, message.created, deltas, message.completed, run.completed
const MODES = (process.env.AUTH || "none,jwt").split(",");
const SERVERS = (process.env.SERVER || "gateway,kit").split(",");
if (!SERVERS.every((s) => s === "gateway" || s === "kit")) throw new Error("SERVER: gateway, kit or gateway,kit");
const STORES = { redis: ["redis"], cluster: ["cluster"], both: ["redis", "cluster"] }[process.env.STORE || "redis"];
if (!STORES) throw new Error("STORE: redis, cluster or both");
const SECRET = "load-benchmark-secret-0123456789";
const bin = process.env.RUNSTREAM_SERVER_BIN
  || [join(root, "target/release/runstream-server"), join(root, "target/debug/runstream-server")].find(existsSync);
if (!bin) throw new Error("build the server first: cargo build --release -p runstream-server");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const dir = mkdtempSync(join(tmpdir(), "runstream-load-"));
const procs = [];
const killAll = () => { for (const p of procs) try { p.kill("SIGKILL"); } catch {} };
process.on("exit", killAll);

function start(name, cmd, args) {
  const p = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  const log = createWriteStream(join(dir, `${name}.log`));
  p.stdout.on("data", (d) => log.write(d));
  p.stderr.on("data", (d) => log.write(d));
  p.exited = new Promise((r) => p.on("exit", r));
  procs.push(p);
  return p;
}

function lines(p, re, n, ms) {
  return new Promise((resolve, reject) => {
    const out = [];
    let buf = "";
    const t = setTimeout(() => reject(new Error(`only ${out.length}/${n} lines ${re} in ${ms} ms`)), ms);
    p.stdout.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (re.test(l)) out.push(l);
        if (out.length === n) { clearTimeout(t); resolve(out); }
      }
    });
  });
}

async function waitHttp(url, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try { await fetch(url, { signal: AbortSignal.timeout(500) }); return; } catch { await sleep(50); }
  }
  throw new Error(`${url} did not answer`);
}

function rssOf(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch { return null; }
}

/** An HS256 JWT (RFC 7519) naming `run`, signed with node's crypto (not the server's code). */
function jwt(run) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "load", exp: Math.floor(Date.now() / 1000) + 3600, runs: [run] })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** One SSE client: counts events, checks density, records latencies. */
function client(port, run, stats, token) {
  return new Promise((resolve) => {
    let buf = "";
    let last = 0;
    const t0 = performance.now();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const req = request({ host: "127.0.0.1", port, path: `/api/stream/runs/${run}`, headers, agent: false }, (res) => {
      if (res.statusCode !== 200) { stats.errors++; res.resume(); resolve(); return; }
      stats.connectMs.push(performance.now() - t0);
      stats.connected++;
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        const now = Date.now();
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const d = frame.indexOf("data: ");
          if (d < 0) continue; // heartbeat
          const id = Number(/"event_id":(\d+)/.exec(frame)?.[1]);
          const ts = /"timestamp":"([^"]+)"/.exec(frame)?.[1];
          if (id <= last) { stats.dups++; continue; }
          if (id !== last + 1) stats.lost += id - last - 1;
          last = id;
          stats.events++;
          if (stats.first === null) stats.first = now;
          stats.lastAt = now;
          if (ts) stats.lat.push(now - Date.parse(ts));
        }
      });
      res.on("end", () => { stats.lost += Math.max(0, EVENTS_PER_RUN - last); resolve(); });
      res.on("error", () => { stats.errors++; resolve(); });
    });
    req.on("error", () => { stats.errors++; resolve(); });
    req.setTimeout((SECONDS + 60) * 1000, () => req.destroy());
    req.end();
  });
}

function pct(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : null;
}

let exitCode = 0;
const results = [];

/** One load run on `kind` ("redis" or "cluster") with authorization `mode` ("none" or "jwt"), served by `server` ("gateway" or "kit"). */
async function oneRun(kind, mode, server) {
  const apiPort = await freePort();
  let store;
  if (kind === "cluster") {
    ({ url: store } = await startRedisCluster(dir, (name, args) => start(`${name}-${mode}`, "redis-server", args)));
  } else {
    const redisPort = await freePort();
    store = `redis://127.0.0.1:${redisPort}`;
    start(`redis-${mode}`, "redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"]);
    await sleep(300);
  }
  const auth = mode === "jwt" ? ["--jwt-secret-file", join(dir, "jwt.secret")] : ["--auth", "none"];
  if (mode === "jwt") writeFileSync(join(dir, "jwt.secret"), SECRET);
  // Frame recording (for the contract tests' GET /api/admin/frames) off, as in a deployment.
  const api = server === "kit"
    ? start(`kit-${mode}`, process.execPath, [...(process.env.KIT_NODE_ARGS ? process.env.KIT_NODE_ARGS.split(" ") : []), join(root, "benches/kit-serve.mjs"), "--store", store, "--port", String(apiPort),
      ...(mode === "jwt" ? ["--jwt-secret-file", join(dir, "jwt.secret")] : [])])
    : start(`replica-${mode}`, bin, [...auth, "--dev", "--addr", `127.0.0.1:${apiPort}`, "--store", store, "--www", "www", "--pkg", "pkg",
      "--record-frames", process.env.RECORD_FRAMES || "0"]);
  await waitHttp(`http://127.0.0.1:${apiPort}/readyz`);
  const rssIdle = rssOf(api.pid);
  // The producer creates the runs now and starts appending 3 s + 1 ms per client later.
  const startAt = Date.now() + 3000 + CLIENTS;
  const producer = start(`producer-${mode}`, bin, ["produce", "--store", store, "--runs", String(RUNS), "--tokens", String(TOKENS),
    "--rate", String(RATE), "--start-at-ms", String(startAt)]);
  const created = await lines(producer, /produce\.created/, RUNS, 15000);
  const runs = created.map((l) => JSON.parse(l).run_id);
  const stats = { connected: 0, events: 0, dups: 0, lost: 0, errors: 0, first: null, lastAt: null, lat: [], connectMs: [] };
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const run = runs[i % RUNS];
    clients.push(client(apiPort, run, stats, mode === "jwt" ? jwt(run) : null));
    if (i % 50 === 49) await sleep(5);
  }
  let rssPeak = 0;
  const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, rssOf(api.pid) ?? 0); }, 500);
  const connectedBeforeStart = await (async () => { while (Date.now() < startAt && stats.connected < CLIENTS) await sleep(20); return stats.connected; })();
  const rssConnected = rssOf(api.pid);
  const deadline = sleep((SECONDS + 60) * 1000).then(() => "timeout");
  const outcome = await Promise.race([Promise.all(clients).then(() => "done"), deadline]);
  clearInterval(sampler);
  await producer.exited;
  // The gateway's --dev store info; the kit has no admin routes (its Redis figures are left out).
  const storeInfo = server === "gateway" ? await (await fetch(`http://127.0.0.1:${apiPort}/api/admin/store`)).json() : {};
  const rssAfter = rssOf(api.pid);
  const lat = stats.lat.sort((a, b) => a - b);
  const conn = stats.connectMs.sort((a, b) => a - b);
  const spanS = (stats.lastAt - stats.first) / 1000;
  const result = {
    server, store: kind, auth: mode, clients: CLIENTS, runs: RUNS, seconds: SECONDS, rate_per_run: RATE, events_per_run: EVENTS_PER_RUN,
    outcome, connected_before_start: connectedBeforeStart, connect_errors: stats.errors,
    events_delivered: stats.events, expected: CLIENTS * EVENTS_PER_RUN, lost: stats.lost, duplicates: stats.dups,
    events_per_s_delivered: Math.round(stats.events / spanS), appends_per_s: Math.round((RUNS * EVENTS_PER_RUN) / spanS),
    latency_ms: { p50: pct(lat, 50), p90: pct(lat, 90), p99: pct(lat, 99), max: lat[lat.length - 1] ?? null },
    connect_ms: { p50: pct(conn, 50), p99: pct(conn, 99) },
    server_rss: { idle: rssIdle, connected: rssConnected, peak: rssPeak, after: rssAfter,
      per_connection: Math.round((Math.max(rssPeak, rssConnected ?? 0) - rssIdle) / CLIENTS) },
    redis_nodes: storeInfo.nodes ?? 1, redis_used_memory: storeInfo.used_memory, redis_keys: storeInfo.keys, live_tails_after: storeInfo.tails,
    server_bin: server === "kit" ? "node benches/kit-serve.mjs" : bin.replace(root + "/", ""),
  };
  // Stop this run's processes before the next one starts.
  const mine = procs.splice(0);
  for (const p of mine) try { p.kill("SIGTERM"); } catch {}
  await Promise.race([Promise.all(mine.map((p) => p.exited)), sleep(12000)]);
  for (const p of mine) try { p.kill("SIGKILL"); } catch {}
  if (outcome !== "done" || stats.lost || stats.dups || stats.errors) exitCode = 1;
  return result;
}

try {
  for (const kind of STORES) for (const mode of MODES) for (const server of SERVERS) results.push(await oneRun(kind, mode, server));
  const mb = (b) => (b === null || b === undefined ? "—" : `${(b / 1048576).toFixed(1)} MiB`);
  const kb = (b) => `${(b / 1024).toFixed(1)} KB`;
  console.log(`load: ${CLIENTS} SSE clients over ${RUNS} runs, one replica, ${SECONDS} s at ${RATE} events/s per run (${bin.includes("release") ? "release" : "debug"} build)`);
  for (const r of results) {
    console.log(`[${r.server === "kit" ? "kit (node, redisStore)" : "gateway"}, ${r.store === "cluster" ? "--store redis-cluster (3 masters)" : "--store redis"}, auth ${r.auth}]`);
    console.log(`  connected before the first append: ${r.connected_before_start}/${CLIENTS}, errors ${r.connect_errors}, outcome ${r.outcome}`);
    console.log(`  delivered ${r.events_delivered} / ${r.expected} events: ${r.events_per_s_delivered} events/s (appends ${r.appends_per_s}/s); lost ${r.lost}, duplicates ${r.duplicates}`);
    console.log(`  append→delivery latency: p50 ${r.latency_ms.p50} ms, p90 ${r.latency_ms.p90} ms, p99 ${r.latency_ms.p99} ms, max ${r.latency_ms.max} ms`);
    console.log(`  connect (request → headers): p50 ${r.connect_ms.p50?.toFixed(2)} ms, p99 ${r.connect_ms.p99?.toFixed(2)} ms`);
    console.log(`  server RSS: idle ${mb(r.server_rss.idle)}, all connected ${mb(r.server_rss.connected)}, peak ${mb(r.server_rss.peak)}, after ${mb(r.server_rss.after)}; per connection ${kb(r.server_rss.per_connection)}; Redis used_memory after: ${mb(r.redis_used_memory)} (${r.redis_keys ?? "—"} keys)`);
  }
  // The kit beside the gateway: p99 append→delivery within 2× the gateway's is the goal.
  for (const kind of STORES) for (const mode of MODES) {
    const g = results.find((r) => r.server === "gateway" && r.store === kind && r.auth === mode);
    const k = results.find((r) => r.server === "kit" && r.store === kind && r.auth === mode);
    if (g && k) {
      const ratio = k.latency_ms.p99 / Math.max(1, g.latency_ms.p99);
      console.log(`  kit vs gateway (${kind}, auth ${mode}): p99 ${k.latency_ms.p99} vs ${g.latency_ms.p99} ms (×${ratio.toFixed(2)}, goal ≤ 2), p50 ${k.latency_ms.p50} vs ${g.latency_ms.p50} ms, events/s ${k.events_per_s_delivered} vs ${g.events_per_s_delivered}, peak RSS ${mb(k.server_rss.peak)} vs ${mb(g.server_rss.peak)}, lost ${k.lost} vs ${g.lost}`);
    }
  }
  for (const kind of STORES) {
    const none = results.find((r) => r.server === "gateway" && r.store === kind && r.auth === "none");
    const jwtR = results.find((r) => r.server === "gateway" && r.store === kind && r.auth === "jwt");
    if (none && jwtR) {
      console.log(`  ${kind}: JWT check per connect (connect p50, jwt − none): ${((jwtR.connect_ms.p50 - none.connect_ms.p50) * 1000).toFixed(0)} µs (cargo run --release -p runstream-server --example auth_check measures the check alone)`);
    }
  }
  mkdirSync(join(root, "target/bench"), { recursive: true });
  writeFileSync(join(root, "target/bench/load.json"), JSON.stringify(results, null, 2));
} catch (e) {
  console.error(e);
  exitCode = 1;
} finally {
  for (const p of procs) try { p.kill("SIGTERM"); } catch {}
  await Promise.race([Promise.all(procs.map((p) => p.exited)), sleep(3000)]);
  killAll();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
