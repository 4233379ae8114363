// Real Redis for the kit's tests: a redis-server (or a 3-master Redis Cluster)
// on free loopback ports, in a temporary directory, started and stopped by the
// test that asks for it. No persistence.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** True when redis-server is installed (scripts/setup.sh installs it). */
export function haveRedis() {
  return spawnSync("sh", ["-c", "command -v redis-server && command -v redis-cli"], { stdio: "ignore" }).status === 0;
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

async function waitForPort(port, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((resolve) => {
      const c = connect(port, "127.0.0.1");
      c.on("connect", () => { c.destroy(); resolve(true); });
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(30);
  }
  throw new Error(`redis-server did not listen on ${port} within ${ms} ms`);
}

/** `redis-cli -p port args…`: its stdout (raw replies, one per line). */
export function redisCli(port, ...args) {
  const r = spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "--no-raw", ...args.map(String)], { encoding: "utf8", timeout: 5000 });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** `redis-cli --raw`: one value per line. */
export function redisRaw(port, ...args) {
  const r = spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "--raw", ...args.map(String)], { encoding: "utf8", timeout: 5000 });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.replace(/\n$/, "");
}

/**
 * Starts `redis-server` (store "redis") or a 3-master cluster (store "cluster").
 * Resolves with `{ url, ports, stop() }`; `url` is the form redisStore() and the
 * gateway's `--store` take.
 */
export async function startRedis(store = "redis", { persist = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "runstream-kit-redis-"));
  const procs = [];
  const startNode = async (extra) => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = await freePort();
      const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", ...extra(port)],
        { stdio: ["ignore", "ignore", "pipe"] });
      let exited = false;
      p.on("exit", () => { exited = true; });
      try {
        await waitForPort(port, 5000);
        if (!exited) { procs.push(p); return port; }
      } catch { /* a lost port race: try another */ }
      p.kill("SIGKILL");
    }
    throw new Error("redis-server did not start");
  };
  const stop = async () => {
    await Promise.all(procs.map((p) => new Promise((r) => {
      if (p.exitCode !== null || p.signalCode !== null) return r();
      p.once("exit", r);
      p.kill("SIGKILL");
    })));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (store === "redis") {
      // `persist`: an append-only file fsynced per write, so a restart keeps every run.
      const extra = persist ? ["--appendonly", "yes", "--appendfsync", "always"] : [];
      const port = await startNode(() => extra);
      const me = { url: `redis://127.0.0.1:${port}`, ports: [port], stop };
      /** SIGKILLs the server (its clients see the connection drop). */
      me.down = async () => {
        const p = procs.pop();
        await new Promise((r) => { p.once("exit", r); p.kill("SIGKILL"); });
      };
      /** Starts it again on the same port and directory. */
      me.up = async () => {
        const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", ...(persist ? extra : ["--appendonly", "no"])],
          { stdio: ["ignore", "ignore", "pipe"] });
        procs.push(p);
        await waitForPort(port);
      };
      return me;
    }
    const ports = [];
    for (let i = 0; i < 3; i++) {
      ports.push(await startNode((port) => ["--cluster-enabled", "yes", "--cluster-config-file", join(dir, `nodes-${port}.conf`)]));
    }
    const addrs = ports.map((p) => `127.0.0.1:${p}`);
    const made = spawnSync("redis-cli", ["--cluster", "create", ...addrs, "--cluster-replicas", "0", "--cluster-yes"], { encoding: "utf8", timeout: 30000 });
    if (made.status !== 0) throw new Error(`redis-cli --cluster create: ${made.stdout}${made.stderr}`);
    for (const p of ports) {
      const end = Date.now() + 20000;
      while (!/cluster_state:ok/.test(redisRaw(p, "CLUSTER", "INFO"))) {
        if (Date.now() > end) throw new Error(`cluster node ${p} not ok`);
        await sleep(50);
      }
    }
    return { url: `redis-cluster://${addrs.join(",")}`, ports, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
