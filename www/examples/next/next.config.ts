import type { NextConfig } from "next";

// The runstream routes are this app's own route handlers (app/api/[...path]/route.ts),
// served by the kit (@runstream/server) in the Next server process: same origin, no CORS.
const config: NextConfig = {
  reactStrictMode: true,
  // gzip holds a text/event-stream until its buffer fills: the kit's streams must go out uncompressed
  // (PROTOCOL §2a: no Content-Encoding). Put compression in a proxy that skips text/event-stream instead.
  compress: false,
  // The kit loads its reducer (wasm) and `ws` at run time: required from node_modules, not bundled.
  serverExternalPackages: ["@runstream/server"],
};
export default config;
