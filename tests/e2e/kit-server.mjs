// A dev server for the e2e suites built on the TypeScript kit
// (@runstream/server, kit/dist) instead of the gateway: the kit serves every
// PROTOCOL route (rs.fetch / rs.node, rs.attachWebSocket), and this file adds
// what the suites drive in the gateway's `--dev` mode, with the kit's public
// API only (createRun, append, cancelSignal, onSend, the Store it was given):
//
// - static files: /pkg/* from pkg/, the rest from www/ (harness.html);
// - POST /api/admin/runs {seed, workers, speed, instant, chaos, kind, run_id}:
//   a seeded task producer (the gateway's script shape: workers, jobs, tools,
//   supervisor; stops at a run-wide cancel with run.completed cancelled), or a
//   chat run whose sends are answered by the AI SDK's mock model through
//   fromAiSdk (2.6 s before the first token when the send says "slow");
// - chaos per run, applied to what the kit sends, as a transform on the SSE
//   body and a relay in front of the kit's WebSocket: duplicates, reorder,
//   malformed and oversized frames, a dropped connection every N events, a
//   held first byte, `retry:` and a binary WebSocket frame (the gateway's
//   knobs, same names);
// - GET /api/admin/runs/{id}/stats, POST …/prune, POST …/append,
//   POST /api/admin/restart (every open stream and socket is cut; the store
//   stays), GET /api/admin/frames (every envelope sent, bounded),
//   POST /api/admin/runs/{id}/chaos (change the knobs; `drop_sends`: the relay
//   loses the session's WebSocket `send` ops, for a send lost before the kit).
//
//   node tests/e2e/kit-server.mjs [--store memory|redis://host:port] [--port P]
//   (prints "kit.listening http://127.0.0.1:P" once it accepts connections)
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { WebSocketServer, WebSocket } from "ws";
import { streamText } from "ai";
import { MockLanguageModelV4 } from "ai/test";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const kitDist = pathToFileURL(join(root, "kit", "dist", "index.js")).href;
const FRAMES_MAX = 200_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** mulberry32 on a seed mixed from two numbers: deterministic per (seed, index). */
export function rng(a, b = 0) {
  let s = (Math.imul(a >>> 0, 0x9e3779b1) ^ Math.imul((b >>> 0) + 0x7f4a7c15, 0x85ebca6b)) >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n) };
}

/** The seeded task script: [delayMs, type, payload][] (the gateway's scenario shape). */
export function taskScript(seed, workers) {
  const r = rng(seed, 7);
  const names = ["search", "fetch", "summarize", "code", "browse", "plan"];
  const lanes = [];
  for (let w = 0; w < workers; w++) {
    const wid = `w${w + 1}`;
    const jid = `job_${r.int(0xffff).toString(16).padStart(4, "0")}`;
    const style = r.int(4);
    const tools = 1 + r.int(3);
    const lane = [];
    if (style === 0) {
      lane.push(["tool.started", { worker_id: wid, tool_call_id: `${wid}_t0`, name: "warmup" }]);
      lane.push(["tool.completed", { worker_id: wid, tool_call_id: `${wid}_t0`, status: "ok", duration_ms: 40 }]);
    }
    lane.push(["worker.started", style === 1 ? { worker_id: wid, job_id: jid, name: names[w % names.length] } : { worker_id: wid, name: names[w % names.length] }]);
    for (let t = 1; t <= tools; t++) {
      const tc = `${wid}_t${t}`;
      const fails = r.int(5) === 0;
      lane.push(["tool.started", { worker_id: wid, tool_call_id: tc, name: names[(w + t) % names.length] }]);
      if (t === 1 && style !== 1) lane.push(["worker.job_assigned", { worker_id: wid, job_id: jid }]);
      lane.push([
        "tool.completed",
        fails
          ? { job_id: jid, tool_call_id: tc, status: "error", error: "upstream timeout", duration_ms: 900 }
          : { worker_id: wid, tool_call_id: tc, status: "ok", duration_ms: 120 + r.int(400) },
      ]);
    }
    lane.push([
      "worker.completed",
      r.int(2) === 0 ? { job_id: jid, status: "succeeded" } : { worker_id: wid, job_id: jid, status: r.int(4) === 0 ? "failed" : "succeeded" },
    ]);
    lanes.push(lane);
  }
  const script = [[50, "run.started", { title: `Research task (${workers} workers)` }]];
  for (;;) {
    const live = lanes.filter((l) => l.length);
    if (!live.length) break;
    const [type, payload] = live[r.int(live.length)].shift();
    script.push([80 + r.int(300), type, payload]);
  }
  script.push([200, "supervisor.completed", { summary: `${workers} workers finished; findings merged.` }]);
  script.push([50, "run.completed", { status: "succeeded" }]);
  return script;
}

export const REPLY =
  "Here is what I found. The stream resumed from its cursor, so nothing was lost and nothing was shown twice. Every worker reported a final status, and the supervisor merged the results into one summary.";

/**
 * The AI SDK's mock model answering one send: REPLY word by word, 30–90 ms
 * apart (seeded), after 2.6 s when the send says "slow"; the stream stops
 * when the call's abortSignal fires.
 */
export function replyModel(content, seed, speed = 1) {
  const r = rng(seed ^ content.length, content.length);
  const words = REPLY.split(/(?<= )/);
  return new MockLanguageModelV4({
    doStream: async ({ abortSignal }) => {
      let i = -2;
      const wait = (ms) =>
        new Promise((res) => {
          const t = setTimeout(res, ms / speed);
          abortSignal?.addEventListener("abort", () => (clearTimeout(t), res()), { once: true });
        });
      const stream = new ReadableStream({
        async pull(c) {
          if (abortSignal?.aborted) return c.close();
          if (i === -2) c.enqueue({ type: "stream-start", warnings: [] });
          else if (i === -1) {
            if (content.includes("slow")) await wait(2600);
            c.enqueue({ type: "text-start", id: "t" });
          } else if (i < words.length) {
            await wait(30 + r.int(60));
            if (abortSignal?.aborted) return c.close();
            c.enqueue({ type: "text-delta", id: "t", delta: words[i] });
          } else {
            c.enqueue({ type: "text-end", id: "t" });
            const n = content.split(/\s+/).filter(Boolean).length;
            c.enqueue({
              type: "finish",
              finishReason: { unified: "stop", raw: "stop" },
              usage: { inputTokens: { total: n, noCache: n, cacheRead: 0, cacheWrite: 0 }, outputTokens: { total: words.length, text: words.length, reasoning: 0 } },
            });
            c.close();
          }
          i++;
        },
      });
      return { stream };
    },
  });
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json", ".ts": "text/plain" };

/** What a run's chaos knobs say (the gateway's names and defaults). */
function chaosOf(c = {}) {
  return {
    seed: Number(c.seed ?? 0),
    dup_rate: Number(c.dup_rate ?? 0),
    reorder_rate: Number(c.reorder_rate ?? 0),
    drop_every: Number(c.drop_every ?? 0),
    malformed_rate: Number(c.malformed_rate ?? 0),
    oversize_bytes: Number(c.oversize_bytes ?? 0),
    hold_first_ms: Number(c.hold_first_ms ?? 0),
    retry_ms: c.retry_ms === undefined || c.retry_ms === null ? null : Number(c.retry_ms),
    binary_frame: Boolean(c.binary_frame),
    // WebSocket only: the relay swallows the session's `send` ops (no ack: a lost send).
    drop_sends: Boolean(c.drop_sends),
  };
}

function malformed(r, runId, nextId) {
  switch (r.int(5)) {
    case 0:
      return "{not json";
    case 1:
      return JSON.stringify({ event_id: nextId, run_id: `${runId}_other`, type: "tool.started", timestamp: new Date().toISOString(), payload: { worker_id: "intruder", tool_call_id: "x", name: "x" } });
    case 2:
      return JSON.stringify({ event_id: "seven", run_id: runId, type: "x", timestamp: "now", payload: {} });
    case 3:
      return JSON.stringify({ event_id: Math.max(1, nextId - 3), run_id: runId, type: "tool.started", timestamp: new Date().toISOString(), payload: { worker_id: "backwards" } });
    default:
      return Buffer.from([0xff, 0xfe, 0x7b, 0xc3, 0x28, 0x7d]);
  }
}

/** A frame of `bytes` bytes (the oversize knob): an envelope-looking JSON text past the client's limit. */
function oversized(bytes) {
  const head = '{"event_id":1,"run_id":"x","payload":"';
  return `${head}${"x".repeat(Math.max(0, bytes - head.length - 2))}"}`;
}

/**
 * One connection's chaos over a run's event sequence: feed it each event (its
 * id) and it says what to emit, in order; `end` is set once the connection is
 * to be cut (drop_every).
 */
class ChaosConn {
  constructor(runId, chaos, connIndex, stats) {
    this.runId = runId;
    this.c = chaos;
    this.r = rng(chaos.seed, connIndex);
    this.stats = stats;
    this.sent = 0;
    this.held = null;
    this.end = false;
  }
  /** Emissions for one event: [{kind: "event"|"malformed", data, id?}]. */
  onEvent(id, data) {
    const out = [];
    if (this.end) return out;
    if (this.r.next() < this.c.malformed_rate) {
      out.push({ kind: "malformed", data: malformed(this.r, this.runId, id) });
      this.stats.malformed_sent++;
    }
    if (this.held === null && this.r.next() < this.c.reorder_rate) {
      this.held = { kind: "event", id, data };
      return out;
    }
    out.push({ kind: "event", id, data });
    if (this.r.next() < this.c.dup_rate) {
      out.push({ kind: "event", id, data });
      this.stats.dups_sent++;
    }
    if (this.held) {
      out.push(this.held);
      this.held = null;
    }
    this.sent++;
    if (this.c.drop_every > 0 && this.sent % this.c.drop_every === 0) this.end = true;
    return out;
  }
  /** A held event goes out when no next one comes soon. */
  flush() {
    const h = this.held;
    this.held = null;
    return h ? [h] : [];
  }
}

/** Starts the kit dev server; resolves with { url, port, rs, store, close }. */
export async function startKitServer({ store: storeSpec = "memory", port = 0, heartbeatMs = 15000 } = {}) {
  const kit = await import(kitDist);
  const store = storeSpec === "memory" ? kit.memoryStore() : kit.redisStore({ url: storeSpec });
  const rs = kit.createRunstream({ store, auth: "none", heartbeatMs, basePath: "/api" });

  const runs = new Map(); // run id → { chaos, speed, seed, stats }
  const statsOf = (id) => {
    let r = runs.get(id);
    if (!r) runs.set(id, (r = { chaos: chaosOf(), speed: 1, seed: 0, stats: { connections_total: 0, connections_open: 0, dups_sent: 0, malformed_sent: 0 } }));
    return r;
  };
  const frames = [];
  const record = (runId, transport, frame) => {
    if (frames.length < FRAMES_MAX) frames.push({ run_id: runId, transport, frame });
  };
  const open = new Set(); // open SSE responses and relay sockets, cut by /api/admin/restart

  // Chat sends: answered by the AI SDK's mock model through fromAiSdk.
  rs.onSend(async ({ runId, clientRequestId, content }) => {
    const meta = statsOf(runId);
    await sleep(150 / meta.speed);
    const signal = rs.cancelSignal(runId, { replyTo: clientRequestId });
    const result = streamText({ model: replyModel(content, meta.seed, meta.speed), prompt: content, abortSignal: signal });
    await kit.fromAiSdk(rs, runId, result.fullStream, { replyTo: clientRequestId, signal });
  });

  async function produceTask(id, script, speed, instant) {
    const signal = rs.cancelSignal(id);
    for (const [delay, type, payload] of script) {
      if (!instant) await sleep(delay / speed);
      if (signal.aborted) {
        await rs.append(id, [{ type: "run.completed", payload: { status: "cancelled" } }]);
        return;
      }
      await rs.append(id, [{ type, payload }]);
    }
  }

  async function admin(req, res, path, body) {
    const json = (status, v) => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(v));
    };
    let m;
    if (req.method === "POST" && path === "/api/admin/runs") {
      const kind = body.kind === "chat" ? "chat" : "task";
      const { runId } = await rs.createRun({ runId: body.run_id, kind });
      const meta = statsOf(runId);
      meta.chaos = chaosOf(body.chaos);
      meta.speed = Number(body.speed ?? 1);
      meta.seed = Number(body.seed ?? 0);
      if (kind === "task") {
        const script = taskScript(meta.seed, Number(body.workers ?? 3));
        const p = produceTask(runId, script, meta.speed, Boolean(body.instant));
        p.catch((e) => console.error(`produce ${runId}: ${e.message}`));
        if (body.instant) await p;
      }
      return json(200, { run_id: runId });
    }
    if (req.method === "GET" && (m = path.match(/^\/api\/admin\/runs\/([^/]+)\/stats$/))) {
      const id = decodeURIComponent(m[1]);
      const meta = await store.meta(id);
      if (!meta) return json(404, { error: "unknown run" });
      return json(200, { ...statsOf(id).stats, first_event_id: meta.firstId, last_event_id: meta.lastId, finished: meta.finished });
    }
    if (req.method === "POST" && (m = path.match(/^\/api\/admin\/runs\/([^/]+)\/prune$/))) {
      const ok = await store.prune(decodeURIComponent(m[1]), Number(body.keep_from));
      return json(ok ? 200 : 404, { pruned: ok });
    }
    if (req.method === "POST" && (m = path.match(/^\/api\/admin\/runs\/([^/]+)\/append$/))) {
      const r = await rs.append(decodeURIComponent(m[1]), [{ type: body.type, payload: body.payload ?? {} }]);
      return json(200, r ?? {});
    }
    if (req.method === "POST" && (m = path.match(/^\/api\/admin\/runs\/([^/]+)\/chaos$/))) {
      const meta = statsOf(decodeURIComponent(m[1]));
      meta.chaos = chaosOf({ ...meta.chaos, ...body });
      return json(200, meta.chaos);
    }
    if (req.method === "POST" && path === "/api/admin/restart") {
      const n = open.size;
      for (const c of [...open]) c.cut();
      return json(200, { cut: n });
    }
    if (req.method === "GET" && path === "/api/admin/frames") return json(200, frames);
    return json(404, { error: "no such admin route" });
  }

  /** An SSE stream from rs.fetch, through the run's chaos, recorded, to `res`. */
  async function stream(req, res, runId) {
    const meta = statsOf(runId);
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers.set(k, v);
    const ctl = new AbortController();
    const upstream = await rs.fetch(new Request(`http://${req.headers.host}${req.url}`, { headers, signal: ctl.signal }));
    const out = {};
    upstream.headers.forEach((v, k) => (out[k] = v));
    res.writeHead(upstream.status, out);
    if (typeof res.flushHeaders === "function") res.flushHeaders();
    if (upstream.status !== 200 || !upstream.body) {
      res.end(upstream.body ? Buffer.from(await upstream.arrayBuffer()) : undefined);
      return;
    }
    const stats = meta.stats;
    stats.connections_total++;
    stats.connections_open++;
    const chaos = new ChaosConn(runId, meta.chaos, stats.connections_total, stats);
    const conn = { cut: () => res.destroy() };
    open.add(conn);
    const reader = upstream.body.getReader();
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      open.delete(conn);
      stats.connections_open--;
      ctl.abort();
      reader.cancel().catch(() => {});
    };
    res.on("close", done);
    // A held (reordered) event's timer may fire after the response ended: nothing is written then.
    const write = (s) => {
      if (!finished && !res.writableEnded && !res.destroyed) res.write(s);
    };
    const emit = (list) => {
      for (const e of list) {
        if (e.kind === "event") {
          record(runId, "sse", e.data);
          write(`id: ${e.id}\nevent: ${JSON.parse(e.data).type}\ndata: ${e.data}\n\n`);
        } else {
          write(Buffer.concat([Buffer.from("event: message\ndata: "), Buffer.from(e.data), Buffer.from("\n\n")]));
        }
      }
    };
    try {
      if (meta.chaos.hold_first_ms > 0) await sleep(meta.chaos.hold_first_ms);
      if (meta.chaos.retry_ms !== null) write(`retry: ${meta.chaos.retry_ms}\n\n`);
      if (meta.chaos.oversize_bytes > 0) write(`event: message\ndata: ${oversized(meta.chaos.oversize_bytes)}\n\n`);
      const dec = new TextDecoder();
      let buf = "";
      let flushTimer = null;
      for (;;) {
        const { done: end, value } = await reader.read();
        if (end || finished) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const lines = frame.split("\n");
          const idLine = lines.find((l) => l.startsWith("id:"));
          const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          const type = (lines.find((l) => l.startsWith("event:")) ?? "").slice(6).trim();
          if (idLine && data && type !== "snapshot") {
            emit(chaos.onEvent(Number(idLine.slice(3).trim()), data));
            if (flushTimer) clearTimeout(flushTimer);
            flushTimer = chaos.held ? setTimeout(() => emit(chaos.flush()), 20) : null;
            if (chaos.end) {
              res.end();
              done();
              return;
            }
          } else {
            if (type === "snapshot" && data) record(runId, "sse", data);
            write(`${frame}\n\n`);
          }
        }
      }
      if (flushTimer) clearTimeout(flushTimer);
      emit(chaos.flush());
      if (!finished) res.end();
    } catch {
      if (!res.destroyed) res.destroy();
    } finally {
      done();
    }
  }

  async function serveStatic(req, res, path) {
    const base = path.startsWith("/pkg/") ? join(root, "pkg") : join(root, "www");
    const rel = path.startsWith("/pkg/") ? path.slice(4) : path === "/" ? "/index.html" : path;
    const file = normalize(join(base, decodeURIComponent(rel)));
    if (!file.startsWith(base)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream", "Cache-Control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  }

  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    try {
      if (path.startsWith("/api/admin/")) {
        let text = "";
        for await (const c of req) text += c;
        return await admin(req, res, path, text ? JSON.parse(text) : {});
      }
      const sm = req.method === "GET" && path.match(/^\/api\/stream\/runs\/([^/]+)$/);
      if (sm) return await stream(req, res, decodeURIComponent(sm[1]));
      if (path.startsWith("/api/")) return await rs.node(req, res);
      return await serveStatic(req, res, path);
    } catch (e) {
      console.error(`${req.method} ${path}: ${e.stack ?? e}`);
      if (!res.headersSent) res.writeHead(500, { "Content-Type": "text/plain" });
      res.end();
    }
  });

  // The kit's WebSocket lives on an inner loopback server; the public /api/ws is a
  // relay in front of it that applies each run's chaos to the frames of that run.
  const inner = createServer((req, res) => res.writeHead(404).end());
  rs.attachWebSocket(inner, { path: "/api/ws" });
  await new Promise((r) => inner.listen(0, "127.0.0.1", r));
  const innerUrl = `ws://127.0.0.1:${inner.address().port}/api/ws`;
  const wss = new WebSocketServer({ noServer: true, maxPayload: 1 << 20 });
  server.on("upgrade", (req, socket, head) => {
    if (new URL(req.url, "http://x").pathname !== "/api/ws") return socket.destroy();
    wss.handleUpgrade(req, socket, head, (client) => relay(client, req));
  });

  function relay(client, req) {
    const up = new WebSocket(innerUrl, { headers: req.headers.cookie ? { cookie: req.headers.cookie } : {} });
    const pending = [];
    const subs = new Map(); // run id → { chaos, chain, stats }
    const conn = {
      cut: () => {
        client.terminate();
        up.terminate();
      },
    };
    open.add(conn);
    const close = () => {
      open.delete(conn);
      for (const s of subs.values()) s.stats.connections_open--;
      subs.clear();
      if (client.readyState === WebSocket.OPEN) client.close();
      if (up.readyState === WebSocket.OPEN || up.readyState === WebSocket.CONNECTING) up.terminate();
    };
    up.on("open", () => {
      for (const m of pending.splice(0)) up.send(m);
    });
    up.on("close", (code) => {
      open.delete(conn);
      if (client.readyState === WebSocket.OPEN) client.close(code === 1005 || code === 1006 ? 1011 : code);
    });
    up.on("error", () => close());
    client.on("close", () => close());
    client.on("error", () => close());
    client.on("message", (data, isBinary) => {
      const text = isBinary ? data : data.toString();
      if (!isBinary) {
        try {
          const op = JSON.parse(text);
          if (op.op === "subscribe" && typeof op.run_id === "string") {
            const meta = statsOf(op.run_id);
            const prev = subs.get(op.run_id);
            if (prev) prev.stats.connections_open--;
            meta.stats.connections_total++;
            meta.stats.connections_open++;
            subs.set(op.run_id, {
              chaos: new ChaosConn(op.run_id, meta.chaos, meta.stats.connections_total, meta.stats),
              hold: meta.chaos.hold_first_ms > 0 ? sleep(meta.chaos.hold_first_ms) : null,
              chain: Promise.resolve(),
              binary: meta.chaos.binary_frame,
              oversize: meta.chaos.oversize_bytes,
              stats: meta.stats,
              timer: null,
            });
          } else if (op.op === "send" && typeof op.session_id === "string" && statsOf(op.session_id).chaos.drop_sends) {
            statsOf(op.session_id).stats.sends_dropped = (statsOf(op.session_id).stats.sends_dropped ?? 0) + 1;
            return;
          } else if (op.op === "unsubscribe" && typeof op.run_id === "string") {
            const s = subs.get(op.run_id);
            if (s) s.stats.connections_open--;
            subs.delete(op.run_id);
          }
        } catch {
          // Not ours to judge: the kit answers it.
        }
      }
      if (up.readyState === WebSocket.OPEN) up.send(text);
      else pending.push(text);
    });
    up.on("message", (data, isBinary) => {
      if (isBinary) return client.send(data, { binary: true });
      const text = data.toString();
      let op;
      try {
        op = JSON.parse(text);
      } catch {
        return client.send(text);
      }
      const runId = op.op === "event" ? op.event?.run_id : op.run_id;
      const s = runId !== undefined ? subs.get(runId) : undefined;
      if (!s) return client.send(text);
      const send = (list) => {
        for (const e of list) {
          if (client.readyState !== WebSocket.OPEN) return;
          if (e.kind === "event") {
            record(runId, "websocket", e.data);
            client.send(`{"op":"event","event":${e.data}}`);
          } else client.send(e.data, { binary: typeof e.data !== "string" });
        }
      };
      s.chain = s.chain.then(async () => {
        if (op.op === "subscribed") {
          client.send(text);
          if (s.binary) client.send(Buffer.from([0, 1, 2, 3]), { binary: true });
          if (s.hold) await s.hold;
          if (s.oversize > 0 && client.readyState === WebSocket.OPEN) client.send(oversized(s.oversize));
          return;
        }
        if (op.op !== "event") return client.send(text);
        if (s.chaos.end) return;
        const data = JSON.stringify(op.event);
        send(s.chaos.onEvent(op.event.event_id, data));
        if (s.timer) clearTimeout(s.timer);
        s.timer = s.chaos.held ? setTimeout(() => send(s.chaos.flush()), 20) : null;
        if (s.chaos.end) {
          // The connection is cut (every run on it resumes on a fresh socket).
          client.terminate();
          close();
        }
      });
    });
  }

  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    port: server.address().port,
    rs,
    store,
    async close() {
      for (const c of [...open]) c.cut();
      wss.close();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
      inner.closeAllConnections?.();
      await new Promise((r) => inner.close(r));
      await rs.close?.();
      await store.close();
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const s = await startKitServer({ store: arg("--store", "memory"), port: Number(arg("--port", 0)) });
  console.log(`kit.listening ${s.url}`);
  const stop = async () => {
    await s.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
