// Shared helpers of the kit's tests: a kit on a real loopback HTTP server
// (rs.node + rs.attachWebSocket), an SSE reader that parses frames as a
// client does, a WebSocket client that queues frames, and JWT minting (jose).
import http from "node:http";
import { WebSocket } from "ws";
import { SignJWT } from "jose";
import { createRunstream, memoryStore, redisStore } from "../dist/index.js";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or `ms` pass; returns the last value. */
export async function until(fn, ms = 5000, step = 20) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v || Date.now() > end) return v;
    await sleep(step);
  }
}

/** A kit on 127.0.0.1:<free port>; `extra(req, res)` may answer paths outside the kit. */
export async function startKit(options = {}, extra) {
  // KIT_REDIS_URL (set by test/support/on-redis.mjs): the same suites on redisStore, same window.
  const store = options.store ?? (process.env.KIT_REDIS_URL
    ? redisStore({ url: process.env.KIT_REDIS_URL, window: options.memory?.window })
    : memoryStore(options.memory));
  const rs = createRunstream({ auth: "none", ...options, store });
  const server = http.createServer((req, res) => rs.node(req, res, extra ? () => extra(req, res) : undefined));
  const ws = rs.attachWebSocket(server);
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    rs,
    store,
    base,
    server,
    async close() {
      await ws.close();
      await rs.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await store.close();
    },
  };
}

/** Fetch helper: JSON body, returns { status, headers, text, json }. */
export async function call(base, method, path, { body, headers = {}, raw } = {}) {
  const r = await fetch(base + path, {
    method,
    headers: { ...(body !== undefined ? { "content-type": "application/json" } : {}), ...headers },
    body: raw ?? (body !== undefined ? JSON.stringify(body) : undefined),
  });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, headers: r.headers, text, json };
}

/**
 * Opens an SSE stream and collects frames: { id, event, data, comment, retry }.
 * `stop(frames)` decides when to stop (default: when the server ends it).
 */
export async function sse(url, { headers = {}, stop = () => false, timeoutMs = 10000 } = {}) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const r = await fetch(url, { headers: { "accept-encoding": "gzip, deflate, br", ...headers }, signal: ac.signal });
  const out = { status: r.status, headers: r.headers, frames: [], firstByteMs: null, ended: false };
  if (r.status !== 200 || !r.body) {
    clearTimeout(timer);
    return out;
  }
  const t0 = Date.now();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        out.ended = true;
        break;
      }
      if (out.firstByteMs === null) out.firstByteMs = Date.now() - t0;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const f = { at: Date.now() - t0 };
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) f.comment = line.slice(1).trim();
          else if (line.startsWith("id: ")) f.id = Number(line.slice(4));
          else if (line.startsWith("event: ")) f.event = line.slice(7);
          else if (line.startsWith("data: ")) f.data = JSON.parse(line.slice(6));
          else if (line.startsWith("retry: ")) f.retry = Number(line.slice(7));
        }
        out.frames.push(f);
      }
      if (stop(out.frames)) break;
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return out;
}

export const events = (frames) => frames.filter((f) => f.data && f.event !== "snapshot").map((f) => f.data);

/** A WebSocket client whose frames queue up; `next(pred)` waits for the first matching one. */
export async function wsClient(base, { headers } = {}) {
  const ws = new WebSocket(base.replace("http", "ws") + "/api/ws", { headers });
  const frames = [];
  const waiters = [];
  ws.on("message", (d) => {
    frames.push(JSON.parse(d.toString()));
    for (const w of [...waiters]) w();
  });
  await new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("error", rej);
  });
  return {
    ws,
    frames,
    send: (o) => ws.send(typeof o === "string" ? o : JSON.stringify(o)),
    async next(pred, ms = 5000) {
      const end = Date.now() + ms;
      for (;;) {
        const i = frames.findIndex(pred);
        if (i >= 0) return frames.splice(i, 1)[0];
        if (Date.now() > end) throw new Error(`no matching frame in ${ms} ms; got ${JSON.stringify(frames)}`);
        await new Promise((r) => {
          const t = setTimeout(r, Math.max(1, end - Date.now()));
          waiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
        waiters.length = 0;
      }
    },
    close: () => ws.close(),
  };
}

export const SECRET = "kit-test-secret-0123456789abcdef";

/** A signed HS256 token with these claims (`exp` default: in an hour; null: none). */
export async function token(claims = {}, { secret = SECRET, exp = Math.floor(Date.now() / 1000) + 3600, alg = "HS256", key } = {}) {
  let j = new SignJWT(claims).setProtectedHeader({ alg });
  if (exp !== null) j = j.setExpirationTime(exp);
  return j.sign(key ?? new TextEncoder().encode(secret));
}

/** An `alg: none` token (unsigned). */
export function noneToken(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}.`;
}

export const ev = (type, payload = {}) => ({ type, payload });
