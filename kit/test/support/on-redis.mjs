// Runs kit test files on redisStore: starts a real redis-server (or, with
// `--cluster`, a 3-master Redis Cluster) on free loopback ports, runs
// `node --test` on the given files with KIT_REDIS_URL set (test/helpers.mjs
// then gives startKit() a redisStore on it), stops Redis, exits with the
// tests' status.
//   node test/support/on-redis.mjs [--cluster] test/http.test.mjs test/ws.test.mjs
import { spawn } from "node:child_process";
import { haveRedis, startRedis } from "./redis.mjs";

const args = process.argv.slice(2);
const cluster = args[0] === "--cluster";
const files = cluster ? args.slice(1) : args;
if (!haveRedis()) {
  console.error("redis-server is not installed (scripts/setup.sh installs it)");
  process.exit(1);
}
const redis = await startRedis(cluster ? "cluster" : "redis");
const child = spawn(process.execPath, ["--test", "--test-concurrency=1", ...files], {
  stdio: "inherit",
  env: { ...process.env, KIT_REDIS_URL: redis.url },
});
const code = await new Promise((r) => child.once("exit", (c) => r(c ?? 1)));
await redis.stop();
process.exit(code);
