// Builds the kit: the reducer wasm (kit/reducer, the runstream crate's own
// reducer compiled for Node) into dist/, then the TypeScript to ESM + .d.ts.
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const kit = join(dirname(fileURLToPath(import.meta.url)), "..");
const run = (cmd, args, cwd = kit) => execFileSync(cmd, args, { cwd, stdio: "inherit" });

run(process.execPath, [join(kit, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);
