// The infrastructure of tests/e2e/infra.test.mjs, started for real on loopback
// ports in one temporary directory: redis-server (or, with `STORE=cluster` or
// `start({ store: "cluster" })`, a 3-master Redis Cluster), API replicas of the
// reference server on `--store redis` (`redis-cluster`), producer processes (the
// same binary's producer role), a chat worker, and Debian's nginx configured
// from deploy/nginx.conf.
// `stop()` ends every process and removes the directory (nginx's pid file lives
// there, given with -g, so nothing is left under /run).
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, chmodSync, readFileSync, writeFileSync, rmSync, createWriteStream, existsSync, mkdirSync, readdirSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer, connect } from "node:net";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");

/** Whether a command exists (the suite is skipped, with a message, without redis-server or nginx). */
export function have(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd} || test -x /usr/sbin/${cmd}`], { stdio: "ignore" }).status === 0;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves when something accepts TCP connections on `port` (bounded). */
export async function waitForPort(port, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((resolve) => {
      const c = connect(port, "127.0.0.1");
      c.on("connect", () => { c.destroy(); resolve(true); });
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${ms} ms`);
}

/** Resolves with the first stdout line of `proc` matching `re` (bounded). */
function waitForLine(proc, re, ms = 10000) {
  return new Promise((resolve, reject) => {
    let buf = "";
    const t = setTimeout(() => { cleanup(); reject(new Error(`no line ${re} within ${ms} ms`)); }, ms);
    const onData = (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (re.test(line)) { cleanup(); resolve(line); return; }
      }
    };
    const onExit = (code) => { cleanup(); reject(new Error(`exited (${code}) before ${re}`)); };
    const cleanup = () => { clearTimeout(t); proc.stdout.off("data", onData); proc.off("exit", onExit); };
    proc.stdout.on("data", onData);
    proc.on("exit", onExit);
  });
}

/** `redis-cli -p port args…` (stdout; "" if it failed). */
function redisCli(port, args) {
  const r = spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { encoding: "utf8", timeout: 5000 });
  return r.stdout || "";
}

/**
 * Starts a Redis Cluster of `masters` masters (no replicas, no persistence) on
 * loopback: `redis-server --cluster-enabled yes` per node, started through
 * `spawnNode(name, args)` (the caller tracks and ends the processes), then
 * `redis-cli --cluster create`, then waits until every node reports
 * `cluster_state:ok`. Resolves with `{ url: "redis-cluster://…", ports }`.
 */
export async function startRedisCluster(dir, spawnNode, masters = 3) {
  const ports = [];
  for (let i = 0; i < masters; i++) {
    const port = await freePort();
    spawnNode(`redis-${port}`, ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--cluster-enabled", "yes",
      "--cluster-config-file", join(dir, `nodes-${port}.conf`), "--save", "", "--appendonly", "no"]);
    ports.push(port);
  }
  for (const p of ports) await waitForPort(p);
  const addrs = ports.map((p) => `127.0.0.1:${p}`);
  const made = spawnSync("redis-cli", ["--cluster", "create", ...addrs, "--cluster-replicas", "0", "--cluster-yes"],
    { encoding: "utf8", timeout: 30000 });
  if (made.status !== 0) throw new Error(`redis-cli --cluster create: ${made.stdout}${made.stderr}`);
  for (const p of ports) {
    const end = Date.now() + 20000;
    while (!/cluster_state:ok/.test(redisCli(p, ["CLUSTER", "INFO"]))) {
      if (Date.now() > end) throw new Error(`cluster node ${p} not ok after 20 s`);
      await sleep(50);
    }
  }
  return { url: `redis-cluster://${addrs.join(",")}`, ports };
}

/**
 * The nginx config of deploy/nginx.conf with this run's ports (and, if asked, a misconfigured front).
 * `tls: { port, cert, key }` keeps the HTTPS + HTTP/2 listen of deploy/nginx.conf on `port` with that
 * certificate; without it those lines are removed. `accessLog`: the main server logs every request to
 * that file (relative to the -p prefix) as `server_port connection connection_requests protocol status uri`.
 */
export function nginxConfig({ front, replicas, misconfigured, tls, accessLog }) {
  let conf = readFileSync(join(root, "deploy/nginx.conf"), "utf8");
  conf = conf.replace("listen 127.0.0.1:8080;", `listen 127.0.0.1:${front};`);
  if (tls) {
    for (const [from, to] of [
      ["listen 127.0.0.1:8443 ssl http2;", `listen 127.0.0.1:${tls.port} ssl http2;`],
      ["ssl_certificate     /etc/runstream/tls/cert.pem;", `ssl_certificate     ${tls.cert};`],
      ["ssl_certificate_key /etc/runstream/tls/key.pem;", `ssl_certificate_key ${tls.key};`],
    ]) {
      if (!conf.includes(from)) throw new Error(`deploy/nginx.conf: "${from}" not found`);
      conf = conf.replace(from, to);
    }
  } else {
    conf = conf.replace(/^ *# --- HTTPS[^]*?^ *# --- end HTTPS\n/m, "");
  }
  if (accessLog) {
    conf = conf.replace("access_log off;",
      "access_log off;\n    log_format connections '$server_port $connection $connection_requests $server_protocol $status $request_uri';");
    conf = conf.replace(`listen 127.0.0.1:${front};`, `listen 127.0.0.1:${front};\n        access_log ${accessLog} connections;`);
  }
  conf = conf.replaceAll("server 127.0.0.1:8801 ", `server 127.0.0.1:${replicas[0]} `);
  conf = conf.replaceAll("server 127.0.0.1:8802 ", `server 127.0.0.1:${replicas[1]} `);
  if (!conf.includes(`127.0.0.1:${replicas[1]}`)) throw new Error("deploy/nginx.conf: upstream lines not found");
  if (misconfigured) {
    // The same upstreams behind a front with no streaming location: nginx's
    // defaults (HTTP/1.0 to the upstream, proxy_buffering on) and, as many
    // shared configs do, the upstream's X-Accel-* headers ignored — so the
    // server's `X-Accel-Buffering: no` cannot switch buffering off.
    const server = `
    server {
        listen 127.0.0.1:${misconfigured};
        location / {
            proxy_pass http://runstream_api;
            proxy_ignore_headers X-Accel-Buffering;
        }
    }
`;
    conf = conf.replace(/}\s*$/, `${server}}\n`);
  }
  return conf;
}

export class Infra {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "runstream-infra-"));
    // nginx workers run as `nobody` when the master is root: they must reach their temp dirs.
    chmodSync(this.dir, 0o755);
    this.procs = new Set();
    this.replicas = [];
    this.onExit = () => { for (const p of this.procs) try { p.kill("SIGKILL"); } catch {} };
    process.on("exit", this.onExit);
  }

  log(name) {
    return createWriteStream(join(this.dir, `${name}.log`), { flags: "a" });
  }

  track(proc, name) {
    this.procs.add(proc);
    const out = this.log(name);
    proc.stdout?.on("data", (d) => out.write(d));
    proc.stderr?.on("data", (d) => out.write(d));
    proc.exited = new Promise((r) => proc.on("exit", (code, signal) => { this.procs.delete(proc); r({ code, signal }); }));
    return proc;
  }

  /**
   * `store`: "redis" (one redis-server) or "cluster" (3 masters); default `$STORE` or "redis".
   * `tls: { cert, key }` (PEM files) also serves HTTPS + HTTP/2 on `tlsPort` (`tlsFront`);
   * `accessLog: true` logs every request of the main server to `access.log` (`accessLog()`).
   */
  async start({ replicaArgs = [], store = process.env.STORE || "redis", tls, accessLog } = {}) {
    if (!existsSync(bin)) throw new Error(`build the server first: cargo build -p runstream-server (${bin})`);
    if (store !== "redis" && store !== "cluster") throw new Error(`store: "redis" or "cluster", not ${store}`);
    this.replicaArgs = replicaArgs;
    this.store = store;
    if (store === "cluster") {
      const spawnNode = (name, args) => this.track(spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] }), name);
      this.cluster = await startRedisCluster(this.dir, spawnNode);
      this.redisUrl = this.cluster.url;
    } else {
      const redisPort = await freePort();
      this.redisUrl = `redis://127.0.0.1:${redisPort}`;
      this.redis = this.track(
        spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--dir", this.dir,
          "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] }),
        "redis",
      );
      await waitForPort(redisPort);
    }
    this.replicaPorts = [await freePort(), await freePort()];
    await Promise.all([0, 1].map((i) => this.startReplica(i)));
    this.worker = this.track(
      spawn(bin, ["produce", "--store", this.redisUrl, "--chat-worker"], { cwd: root, stdio: ["ignore", "pipe", "pipe"] }),
      "chat-worker",
    );
    await waitForLine(this.worker, /chat_worker\.ready/);
    this.frontPort = await freePort();
    this.misconfiguredPort = await freePort();
    if (tls) this.tlsPort = await freePort();
    const conf = nginxConfig({ front: this.frontPort, replicas: this.replicaPorts, misconfigured: this.misconfiguredPort,
      tls: tls && { ...tls, port: this.tlsPort }, accessLog: accessLog && "access.log" });
    writeFileSync(join(this.dir, "nginx.conf"), conf);
    this.nginx = this.track(
      spawn("nginx", ["-p", this.dir, "-c", join(this.dir, "nginx.conf"), "-e", join(this.dir, "nginx-error.log"),
        "-g", `daemon off; pid ${join(this.dir, "nginx.pid")};`], { stdio: ["ignore", "pipe", "pipe"] }),
      "nginx",
    );
    await waitForPort(this.frontPort);
    await waitForPort(this.misconfiguredPort);
    this.front = `http://127.0.0.1:${this.frontPort}`;
    this.misconfigured = `http://127.0.0.1:${this.misconfiguredPort}`;
    if (tls) {
      await waitForPort(this.tlsPort);
      this.tlsFront = `https://127.0.0.1:${this.tlsPort}`;
    }
    return this;
  }

  /** The requests nginx logged so far (`start({ accessLog: true })`), oldest first. */
  accessLog() {
    const f = join(this.dir, "access.log");
    if (!existsSync(f)) return [];
    return readFileSync(f, "utf8").split("\n").filter(Boolean).map((line) => {
      const [port, connection, requests, protocol, status, uri] = line.split(" ");
      return { port: Number(port), connection, requests: Number(requests), protocol, status: Number(status), uri };
    });
  }

  replicaUrl(i) {
    return `http://127.0.0.1:${this.replicaPorts[i]}`;
  }

  async startReplica(i) {
    const p = this.track(
      spawn(bin, ["--auth", "none", "--dev", "--addr", `127.0.0.1:${this.replicaPorts[i]}`, "--store", this.redisUrl, "--www", "www", "--pkg", "pkg",
        "--heartbeat-ms", "2000", "--replies", "worker", ...this.replicaArgs], { cwd: root, stdio: ["ignore", "pipe", "pipe"] }),
      `replica-${i}`,
    );
    this.replicas[i] = p;
    await waitForLine(p, /server\.listening/);
    return p;
  }

  /** SIGKILL (a crash: no graceful end of its streams). */
  async killReplica(i) {
    const p = this.replicas[i];
    p.kill("SIGKILL");
    await p.exited;
  }

  /** Starts a producer process for one run; resolves with its run id once created. */
  async produce(args) {
    const p = this.track(spawn(bin, ["produce", "--store", this.redisUrl, ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] }), "producer");
    const line = await waitForLine(p, /produce\.created/);
    return { runId: JSON.parse(line).run_id, proc: p };
  }

  /** Admin/API call straight to replica `i` (bypassing nginx). */
  async replicaApi(i, method, path, body) {
    const r = await fetch(this.replicaUrl(i) + path, {
      method,
      headers: body ? { "Content-Type": "application/json" } : undefined,
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(5000),
    });
    const t = await r.text();
    return { status: r.status, body: t ? JSON.parse(t) : null };
  }

  /** Which replica has an open stream of `runId` (polled; null if none within `ms`). */
  async servingReplica(runId, ms = 5000) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      for (const i of [0, 1]) {
        if (!this.replicas[i] || this.replicas[i].exitCode !== null || this.replicas[i].signalCode) continue;
        const s = await this.replicaApi(i, "GET", `/api/admin/runs/${runId}/stats`).catch(() => null);
        if (s?.body?.connections_open > 0) return i;
      }
      await sleep(50);
    }
    return null;
  }

  async redisUsedMemory() {
    const r = await this.replicaApi(0, "GET", "/api/admin/store");
    return r.body;
  }

  /** Ends every process (TERM, then KILL after 3 s), copies the logs to `logsTo`, removes the directory. */
  async stop({ logsTo } = {}) {
    const all = [...this.procs];
    for (const p of all) try { p.kill("SIGTERM"); } catch {}
    await Promise.race([Promise.all(all.map((p) => p.exited)), sleep(3000)]);
    for (const p of this.procs) try { p.kill("SIGKILL"); } catch {}
    await Promise.race([Promise.all(all.map((p) => p.exited)), sleep(2000)]);
    process.off("exit", this.onExit);
    if (logsTo) {
      mkdirSync(logsTo, { recursive: true });
      for (const f of readdirSync(this.dir)) {
        if (f.endsWith(".log") || f === "nginx.conf") copyFileSync(join(this.dir, f), join(logsTo, f));
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
