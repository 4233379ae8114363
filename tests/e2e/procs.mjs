// Child processes of the e2e suites that start gateways and producers
// themselves (kit-redis, cross-server): spawned with their stdout kept as
// lines, tracked so `after` can kill what is left.
import { spawn } from "node:child_process";
import { root } from "./infra.mjs";

/**
 * Spawns `bin args…` in the repository's root and adds it to `procs`. The
 * process gets `lines` (its stdout so far, one entry a line, kept updated),
 * `err` (its stderr so far) and `done` (a promise of its exit code).
 */
export function spawnTracked(bin, args, procs) {
  const p = spawn(bin, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  procs.push(p);
  p.lines = [];
  p.err = "";
  let buf = "";
  p.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      p.lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  p.stderr.on("data", (d) => { p.err += d; });
  p.done = new Promise((r) => p.once("exit", (code) => r(code)));
  return p;
}
