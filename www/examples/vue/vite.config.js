// Render functions (h) instead of SFCs: no Vue plugin, Vite's esbuild compiles the TS.
import { defineConfig } from "vite";
export default defineConfig({ base: "./", build: { target: "es2022" } });
