// Builds the kit: the reducer wasm (kit/reducer, the runstream crate's own
// reducer compiled for Node) into dist/, then the TypeScript to ESM + .d.ts.
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const kit = join(dirname(fileURLToPath(import.meta.url)), "..");
const run = (cmd, args, cwd = kit) => execFileSync(cmd, args, { cwd, stdio: "inherit" });

run(process.execPath, [join(kit, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);

// The Redis Lua scripts: the repository's one copy (lua/, also loaded by the
// gateway), shipped in the package as dist/lua/ for redisStore().
import { cpSync, mkdirSync, readdirSync } from "node:fs";
const lua = join(kit, "..", "lua");
mkdirSync(join(kit, "dist", "lua"), { recursive: true });
for (const f of readdirSync(lua)) {
  if (f.endsWith(".lua") || f === "scripts.json") cpSync(join(lua, f), join(kit, "dist", "lua", f));
}
