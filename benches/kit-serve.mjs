// The TypeScript kit (@runstream/server, kit/dist) as a standalone server for
// benches/load.mjs, beside the gateway: `createRunstream` on redisStore (the
// gateway's Redis layout, so the gateway's `produce` subcommand feeds both),
// served by `http.createServer(rs.node)`; `--jwt-secret-file F` for jwtAuth
// (HS256), else no auth. Prints "kit.listening <url>" once it accepts.
//
//   node benches/kit-serve.mjs --store redis://127.0.0.1:6379 --port 8788 [--jwt-secret-file F]
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const kit = await import(pathToFileURL(join(root, "kit/dist/index.js")).href);
const url = arg("--store", "redis://127.0.0.1:6379");
const secretFile = arg("--jwt-secret-file", null);
const rs = kit.createRunstream({
  store: kit.redisStore({ url }),
  auth: secretFile ? kit.jwtAuth({ secret: readFileSync(secretFile, "utf8").trim() }) : "none",
});
const server = createServer(rs.node);
// The gateway's accept backlog (tokio's TcpListener::bind: 1024), not node's
// default 511: past the backlog a burst of connects (1,000 clients at once)
// has its SYNs dropped and retried by the client's kernel a second later.
server.listen({ port: Number(arg("--port", 0)), host: "127.0.0.1", backlog: 1024 }, () => console.log(`kit.listening http://127.0.0.1:${server.address().port}`));
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
