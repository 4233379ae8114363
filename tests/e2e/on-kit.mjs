// Runs an e2e suite against the TypeScript kit instead of the gateway: starts
// tests/e2e/kit-server.mjs (the kit on memoryStore, or on redisStore with a
// redis-server of its own on a free loopback port), runs `node --test SUITE`
// with RUNSTREAM_SERVER pointing at it, stops everything and exits with the
// suite's code. Its output is the suite's (the test command counts it).
//
//   node tests/e2e/on-kit.mjs [--store memory|redis] [--grep PATTERN] SUITE
//
// --grep passes --test-name-pattern: the scenarios that hold on any server
// (the rest need gateway internals, see docs/AI-SDK.md).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, freePort } from "./infra.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const storeKind = opt("--store", "memory");
const grep = opt("--grep", null);
const suite = args[0];
if (!suite || !["memory", "redis"].includes(storeKind)) throw new Error("usage: node tests/e2e/on-kit.mjs [--store memory|redis] [--grep PATTERN] SUITE");

const dir = mkdtempSync(join(tmpdir(), "runstream-kit-"));
const procs = [];
const stopAll = () => {
  for (const p of procs) try { p.kill("SIGKILL"); } catch {}
};
process.on("exit", () => {
  stopAll();
  rmSync(dir, { recursive: true, force: true });
});

let store = "memory";
if (storeKind === "redis") {
  const port = await freePort();
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  procs.push(redis);
  store = `redis://127.0.0.1:${port}`;
  const { createConnection } = await import("node:net");
  const end = Date.now() + 10000;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = createConnection(port, "127.0.0.1", () => (s.end(), r(true)));
      s.on("error", () => r(false));
    });
    if (ok) break;
    if (Date.now() > end) throw new Error("redis-server did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
}

const server = spawn(process.execPath, [join(root, "tests/e2e/kit-server.mjs"), "--store", store], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
procs.push(server);
const url = await new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error("the kit server did not start")), 20000);
  let buf = "";
  server.stdout.on("data", (d) => {
    buf += d;
    const m = buf.match(/kit\.listening (\S+)/);
    if (m) {
      clearTimeout(t);
      resolve(m[1]);
    }
  });
  server.on("exit", (c) => reject(new Error(`the kit server exited (${c})`)));
});
server.stdout.resume();
console.log(`# ${suite} against the TypeScript kit on ${storeKind === "redis" ? `redisStore (${store})` : "memoryStore"} (${url})${grep ? `, tests matching /${grep}/` : ""}`);
const child = spawn(
  process.execPath,
  ["--test", "--test-concurrency=1", ...(grep ? ["--test-name-pattern", grep] : []), suite],
  { cwd: root, stdio: "inherit", env: { ...process.env, RUNSTREAM_SERVER: url, RUNSTREAM_SERVER_KIND: "kit" } },
);
const code = await new Promise((r) => child.on("exit", (c) => r(c ?? 1)));
stopAll();
process.exit(code);
