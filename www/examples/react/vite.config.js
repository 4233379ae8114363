// No framework plugin needed: Vite's esbuild compiles TSX (jsx: react-jsx), and
// runstream's --target web build loads its .wasm through `new URL(…, import.meta.url)`,
// which Vite emits as an asset.
import { defineConfig } from "vite";
export default defineConfig({
  base: "./",
  esbuild: { jsx: "automatic" },
  build: { target: "es2022" },
});
