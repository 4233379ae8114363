// Builds the kit: the reducer wasm (kit/reducer: the runstream crate's own
// reducer, compiled for Node) into dist/reducer.wasm, then the TypeScript to
// ESM + .d.ts in dist/. Run from anywhere: `npm run build` in kit/.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const kit = join(dirname(fileURLToPath(import.meta.url)), "..");
const root = join(kit, "..");
const run = (cmd, args, cwd = kit) => execFileSync(cmd, args, { cwd, stdio: "inherit" });

run("cargo", ["build", "--quiet", "-p", "runstream-kit-reducer", "--target", "wasm32-unknown-unknown", "--profile", "kit-reducer"], root);
mkdirSync(join(kit, "dist"), { recursive: true });
copyFileSync(join(root, "target", "wasm32-unknown-unknown", "kit-reducer", "runstream_kit_reducer.wasm"), join(kit, "dist", "reducer.wasm"));
run(process.execPath, [join(kit, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);

// The Redis Lua scripts: the repository's one copy (lua/, also loaded by the
// gateway), shipped in the package as dist/lua/ for redisStore().
const lua = join(root, "lua");
mkdirSync(join(kit, "dist", "lua"), { recursive: true });
for (const f of readdirSync(lua)) {
  if (f.endsWith(".lua") || f === "scripts.json") copyFileSync(join(lua, f), join(kit, "dist", "lua", f));
}
