// Runs an e2e suite against a gateway on a real 3-master Redis Cluster
// (issue 26: "the e2e reliability scenarios pass on the 3-master cluster"):
// starts the cluster (tests/e2e/infra.mjs `startRedisCluster`) and one
// `runstream-server --auth none --dev --record-frames … --store
// redis-cluster://…` on free loopback ports, runs `node --test SUITE` with
// RUNSTREAM_SERVER pointing at it, stops everything and exits with the
// suite's code. Its output is the suite's (the test command counts it).
//
//   node tests/e2e/on-cluster.mjs tests/e2e/reliability.test.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, freePort, startRedisCluster } from "./infra.mjs";

const suite = process.argv[2];
if (!suite) throw new Error("usage: node tests/e2e/on-cluster.mjs SUITE");
const bin = process.env.RUNSTREAM_SERVER_BIN || join(root, "target/debug/runstream-server");
const dir = mkdtempSync(join(tmpdir(), "runstream-cluster-"));
chmodSync(dir, 0o755);
const procs = [];
const stopAll = () => { for (const p of procs) try { p.kill("SIGKILL"); } catch {} };
process.on("exit", () => { stopAll(); rmSync(dir, { recursive: true, force: true }); });

const { url } = await startRedisCluster(dir, (name, args) => {
  const p = spawn("redis-server", args, { stdio: "ignore" });
  procs.push(p);
  return p;
});
const port = await freePort();
const gateway = spawn(bin, ["--auth", "none", "--dev", "--record-frames", "200000", "--addr", `127.0.0.1:${port}`,
  "--store", url, "--www", "www", "--pkg", "pkg"], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
procs.push(gateway);
await new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error("the gateway did not start on the cluster")), 20000);
  let buf = "";
  gateway.stdout.on("data", (d) => {
    buf += d;
    if (buf.includes("server.listening")) { clearTimeout(t); resolve(); }
  });
  gateway.on("exit", (c) => reject(new Error(`the gateway exited (${c})`)));
});
// Its log lines are not kept (one per stream): drained and dropped.
gateway.stdout.removeAllListeners("data");
gateway.stdout.resume();
console.log(`# ${suite} against a gateway on a 3-master Redis Cluster (${url})`);
const child = spawn(process.execPath, ["--test", "--test-concurrency=1", suite], {
  cwd: root, stdio: "inherit", env: { ...process.env, RUNSTREAM_SERVER: `http://127.0.0.1:${port}` },
});
const code = await new Promise((r) => child.on("exit", (c) => r(c ?? 1)));
stopAll();
process.exit(code);
