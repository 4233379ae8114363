import { defineConfig } from "vite";
import wasm from "vite-plugin-wasm";
// --target bundler imports the .wasm as an ES module: vite-plugin-wasm provides that.
export default defineConfig({ base: "./", plugins: [wasm()], build: { target: "es2022" } });
