// Completes the package.json wasm-pack wrote: exports for the core and the
// React/Vue bindings, exact types, optional framework peers, files, sideEffects.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [dir, target] = process.argv.slice(2);
const path = join(dir, "package.json");
const pkg = JSON.parse(readFileSync(path, "utf8"));
pkg.name = "runstream";
pkg.type = "module";
pkg.description = "Durable chat and task streaming for web apps: resumable SSE/WebSocket, exactly-once events, telemetry (Rust → WebAssembly).";
pkg.files = [...new Set([...(pkg.files || []), "runstream_bg.wasm", "runstream.js", "runstream.d.ts", "runstream_bg.wasm.d.ts", "snippets", "lazy.js", "lazy.d.ts", "react.js", "react.d.ts", "vue.js", "vue.d.ts", "devtools.js", "devtools.d.ts", "devtools-react.js", "devtools-react.d.ts", "README.md"])]
  .filter((f) => f !== "runstream_bg.js" || target === "bundler");
if (target === "bundler") pkg.files.push("runstream_bg.js");
pkg.main = "runstream.js";
pkg.module = "runstream.js";
pkg.types = "runstream.d.ts";
pkg.exports = {
  ".": { types: "./runstream.d.ts", default: "./runstream.js" },
  "./react": { types: "./react.d.ts", default: "./react.js" },
  "./vue": { types: "./vue.d.ts", default: "./vue.js" },
  "./devtools": { types: "./devtools.d.ts", default: "./devtools.js" },
  "./devtools/react": { types: "./devtools-react.d.ts", default: "./devtools-react.js" },
  "./runstream_bg.wasm": "./runstream_bg.wasm",
  "./package.json": "./package.json",
};
// --target web has no top-level side effects but the devtools module, which defines its
// custom element on import; --target bundler also instantiates the wasm on import.
pkg.sideEffects = target === "bundler" ? ["./runstream.js", "./runstream_bg.js", "./devtools.js"] : ["./devtools.js"];
pkg.peerDependencies = { react: ">=18", vue: ">=3.3" };
pkg.peerDependenciesMeta = { react: { optional: true }, vue: { optional: true } };
writeFileSync(path, JSON.stringify(pkg, null, 2) + "\n");
