import type { NextConfig } from "next";

// No /api rewrite to the runstream server: Next's rewrite proxy (next start)
// holds a response's headers until its first body byte, and a stream server may
// stay silent after its headers (PROTOCOL.md: a resume with nothing to replay
// sends nothing until its first heartbeat), so a quiet stream would look dead
// for connectTimeoutMs and reconnect; it also gzips, which buffers the events
// unless `compress: false`. The page passes the server's URL to the client
// components instead, and the server allows the cross-origin requests (CORS).
const config: NextConfig = {
  reactStrictMode: true,
};
export default config;
