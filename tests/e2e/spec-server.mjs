// An independent server that does what ../../shared/spec/PROTOCOL.md says and
// nothing friendlier: after its SSE headers it writes no byte until its first
// `: hb` heartbeat; over WebSocket it answers ping with pong and sends nothing
// else unasked. Serves pkg/ at /pkg/ and the test pages (spec-www/) at /.
// Control API for tests under /_ctl/. The snapshot reducer covers the run and
// message events (the suites that use this server emit no worker events).
// In-process: `const s = await startSpecServer(); s.url; await s.close()`.
// Child: `node spec-server.mjs [--port 0] [--heartbeat-ms 15000] [--publish-key K] [--fault NAME]…` prints its URL.
// POST /_ctl/config {"pong": false} stops answering pings (a half-open socket).
// `publishKey` (`--publish-key`) serves SERVER.md §1's publish API (create a run, append events with an
// Idempotency-Key) for producers and runstream-doctor; without one those routes answer 404. Cancels
// (PROTOCOL §8, run-wide and reply) are served on POST /api/runs/{id}/cancel.
// `faults` (`--fault NAME`, repeatable; also POST /_ctl/config {"faults": [...]}) breaks one rule each,
// for runstream-doctor's suite; none by default: "omit-ids" (frames without `id:`), "skip-id" (ids jump
// by one from the 3rd event on), "content-type" (text/plain), "no-heartbeat", "no-flush" (headers wait
// for the first write, as Node's res.writeHead does without flushHeaders), "finished-200" (a finished run
// with nothing to replay answers 200, not 204), "duplicate-sends" (a repeated client_request_id makes a
// second message).
import http from "node:http";
import { readFile } from "node:fs/promises";
import { join, dirname, normalize, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocketServer } from "ws";

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html; charset=utf-8", ".json": "application/json", ".ts": "text/plain" };
const CSP = "script-src 'self' 'wasm-unsafe-eval'";

export const FAULTS = ["omit-ids", "skip-id", "content-type", "no-heartbeat", "no-flush", "finished-200", "duplicate-sends"];

export async function startSpecServer({ port = 0, heartbeatMs = 15000, publishKey = null, faults = [], pkgDir = join(here, "../../pkg"), wwwDir = join(here, "spec-www") } = {}) {
  for (const f of faults) if (!FAULTS.includes(f)) throw new Error(`unknown fault ${f}: one of ${FAULTS.join(", ")}`);
  const cfg = { heartbeatMs, faults };
  const fault = (name) => cfg.faults.includes(name);
  const published = new Map(); // `${run_id} ${Idempotency-Key}` → {body, answer}
  const cancels = new Map(); // `${run_id} ${target}` → event_id of the first request
  const runs = new Map(); // run_id → {id, session, log, conns}
  const sessions = new Map(); // session_id → run_id
  const sends = []; // every send received: {session, client_request_id, content, transport, auth, status}
  const accepted = new Map(); // client_request_id → {message_id, run_id}
  const fail = { next: 0, on: false };
  const ws = new WebSocketServer({ noServer: true });

  const done = (run) => run.log.some((e) => e.type === "run.completed");
  // `timestamp`: given by the test (any ISO 8601 form a server may write), else RFC 3339 UTC.
  function append(run, type, payload, timestamp = new Date().toISOString()) {
    const ev = { event_id: run.log.length + 1, run_id: run.id, type, timestamp, payload };
    run.log.push(ev);
    for (const c of run.conns) if (!c.closed) c.push?.(ev);
    return ev;
  }
  function open(run, transport, last, push, end) {
    const c = { transport, last_event_id: last, opened: Date.now(), closed: null, push, end };
    run.conns.push(c);
    return c;
  }
  function snapshot(run) {
    const st = { run_id: run.id, cursor: run.log.length, status: "pending", workers: [], messages: [], supervisor: { completed: false, summary: null }, cancel_requested: false };
    for (const { type, payload: p } of run.log) {
      const m = st.messages.find((x) => x.message_id === p.message_id);
      if (type === "run.started") st.status = "running";
      else if (type === "run.completed") st.status = p.status;
      else if (type === "run.cancel_requested" && !p.reply_to) st.cancel_requested = true;
      else if (type === "supervisor.completed") st.supervisor = { completed: true, summary: p.summary ?? null };
      else if (type === "message.created" && !m) st.messages.push({ message_id: p.message_id, client_request_id: p.client_request_id, reply_to: p.reply_to, role: p.role, content: p.content ?? "", status: "streaming" });
      else if (type === "message.delta" && m) m.content += p.delta;
      else if (type === "message.completed" && m) m.status = "completed";
      else if (type === "message.failed" && m) m.status = "failed";
    }
    return { run_id: run.id, event_id: run.log.length, state: st };
  }
  /** A chat send (HTTP or WebSocket): [status, body]. Echoed into the run's log once. */
  function accept(session, body, transport, auth) {
    const crid = body?.client_request_id;
    const rec = { session, client_request_id: crid, content: body?.content, transport, auth: auth ?? null, status: 0, at: Date.now() };
    sends.push(rec);
    const run = runs.get(sessions.get(session));
    if (!run) return [(rec.status = 404), { error: "unknown session" }];
    if (typeof crid !== "string" || !crid || typeof body.content !== "string") return [(rec.status = 400), { error: "bad request" }];
    if (fail.on || fail.next > 0) {
      fail.next = Math.max(0, fail.next - 1);
      return [(rec.status = 503), { error: "unavailable" }];
    }
    rec.status = 202;
    if (accepted.has(crid) && !fault("duplicate-sends")) return [202, accepted.get(crid)];
    const ans = { message_id: `m_user_${run.log.length + 1}`, run_id: run.id };
    if (!accepted.has(crid)) accepted.set(crid, ans);
    rec.first = true;
    append(run, "message.created", { message_id: ans.message_id, role: "user", client_request_id: crid, content: body.content });
    return [202, ans];
  }

  /** A cancel (PROTOCOL §8): [status, body]; one event per target, repeats answer its id. */
  function cancel(run, body) {
    if (!run) return [404, { error: "unknown run" }];
    const crid = body?.client_request_id;
    if (typeof crid !== "string" || !crid) return [400, { error: "client_request_id required" }];
    const target = body.reply_to ? `reply ${body.reply_to}` : "run";
    const key = `${run.id} ${target}`;
    if (cancels.has(key)) return [202, { run_id: run.id, event_id: cancels.get(key) }];
    const reply = body.reply_to && run.log.find((e) => e.type === "message.created" && e.payload.reply_to === body.reply_to);
    const replyDone = reply && run.log.some((e) => (e.type === "message.completed" || e.type === "message.failed") && e.payload.message_id === reply.payload.message_id);
    if (done(run) || replyDone) return [409, { run_id: run.id, status: "finished" }];
    const payload = { client_request_id: crid };
    if (body.reason) payload.reason = body.reason;
    if (body.reply_to) payload.reply_to = body.reply_to;
    const ev = append(run, "run.cancel_requested", payload);
    cancels.set(key, ev.event_id);
    return [202, { run_id: run.id, event_id: ev.event_id }];
  }

  async function ctl(req, res, parts, body) {
    const run = runs.get(parts[1]);
    if (req.method === "POST" && parts[0] === "runs" && !parts[1]) {
      const id = body.run_id || `run_${Math.random().toString(36).slice(2, 10)}`;
      runs.set(id, { id, session: body.session || id, log: [], conns: [] });
      sessions.set(body.session || id, id);
      return json(res, 200, { run_id: id, session: body.session || id });
    }
    if (parts[0] === "runs" && !run) return json(res, 404, { error: "unknown run" });
    if (req.method === "POST" && parts[2] === "events") {
      for (const e of body.events) append(run, e.type, e.payload, e.timestamp);
      return json(res, 200, { last_event_id: run.log.length });
    }
    if (req.method === "POST" && parts[2] === "end") {
      const live = run.conns.filter((c) => !c.closed);
      live.forEach((c) => c.end());
      return json(res, 200, { ended: live.length });
    }
    if (req.method === "GET" && parts[0] === "runs") {
      const count = (t) => run.conns.filter((c) => c.transport === t).length;
      const conns = run.conns.map(({ transport, last_event_id, opened, closed }) => ({ transport, last_event_id, opened, closed }));
      return json(res, 200, { connections: { sse: count("sse"), websocket: count("websocket") }, open: conns.filter((c) => !c.closed).length, conns, log: run.log });
    }
    if (req.method === "GET" && parts[0] === "sends") return json(res, 200, sends);
    if (req.method === "POST" && parts[0] === "sends") return json(res, 200, Object.assign(fail, { next: body.next ?? 0, on: !!body.on }));
    if (req.method === "POST" && parts[0] === "config") return json(res, 200, Object.assign(cfg, body));
    json(res, 404, { error: "unknown control route" });
  }

  function sse(req, res, run, url) {
    const raw = req.headers["last-event-id"] ?? url.searchParams.get("last_event_id") ?? "0";
    const last = /^\d+$/.test(raw) ? Number(raw) : 0;
    if (done(run) && last >= run.log.length && !fault("finished-200")) return res.writeHead(204).end();
    res.writeHead(200, { "Content-Type": fault("content-type") ? "text/plain" : "text/event-stream", "Cache-Control": "no-store, no-transform", "X-Accel-Buffering": "no" });
    if (!fault("no-flush")) res.flushHeaders(); // headers only: no first byte until the first heartbeat
    const frame = (e) => {
      const id = fault("skip-id") && e.event_id >= 3 ? e.event_id + 1 : e.event_id;
      const data = JSON.stringify({ ...e, event_id: id });
      res.write(`${fault("omit-ids") ? "" : `id: ${id}\n`}event: ${e.type}\ndata: ${data}\n\n`);
    };
    const c = open(run, "sse", last, (e) => { frame(e); if (e.type === "run.completed") res.end(); }, () => res.end());
    const hb = setInterval(() => fault("no-heartbeat") || res.write(": hb\n\n"), cfg.heartbeatMs);
    res.on("close", () => { clearInterval(hb); c.closed = Date.now(); });
    run.log.slice(last).forEach(frame);
    if (done(run)) res.end();
  }

  function onSocket(sock) {
    const subs = new Map(); // run_id → conn
    const sendJson = (o) => sock.readyState === 1 && sock.send(JSON.stringify(o));
    const drop = (id) => { const c = subs.get(id); if (c) c.closed = Date.now(); subs.delete(id); };
    sock.on("close", () => [...subs.keys()].forEach(drop));
    sock.on("message", (data, binary) => {
      let m;
      try { m = binary ? null : JSON.parse(String(data)); } catch { m = null; }
      if (!m || typeof m !== "object") return sendJson({ op: "error", code: "bad_request", message: "expected one JSON object in a text frame" });
      const run = runs.get(m.run_id);
      if (m.op === "ping") return cfg.pong === false ? undefined : sendJson({ op: "pong", t: m.t });
      if (m.op === "unsubscribe") return drop(m.run_id);
      if (m.op === "send") {
        const [status, ans] = accept(m.session_id, m, "websocket", m.headers?.Authorization);
        return sendJson(status === 202 ? { op: "ack", client_request_id: m.client_request_id, ...ans } : { op: "error", client_request_id: m.client_request_id, code: status === 503 ? "unavailable" : "bad_request", message: `HTTP ${status}` });
      }
      if (m.op !== "subscribe") return sendJson({ op: "error", code: "bad_request", message: "unknown op" });
      if (!run) return sendJson({ op: "error", run_id: m.run_id, code: "not_found", message: "unknown run" });
      drop(m.run_id);
      const last = Number.isSafeInteger(m.last_event_id) && m.last_event_id > 0 ? m.last_event_id : 0;
      subs.set(m.run_id, open(run, "websocket", last, (e) => sendJson({ op: "event", event: e }), () => sock.close(1001, "server ended")));
      sendJson({ op: "subscribed", run_id: run.id, replay_from: last + 1 });
      run.log.slice(last).forEach((e) => sendJson({ op: "event", event: e }));
    });
  }

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    const p = url.pathname;
    let body = {};
    if (req.method === "POST") {
      let t = "";
      for await (const ch of req) t += ch;
      try { body = t ? JSON.parse(t) : {}; } catch { return json(res, 400, { error: "not JSON" }); }
    }
    let m;
    if (p.startsWith("/_ctl/")) return ctl(req, res, p.slice(6).split("/").map(decodeURIComponent), body);
    if ((m = p.match(/^\/api\/stream\/runs\/([^/]+)$/)) && req.method === "GET") {
      const run = runs.get(decodeURIComponent(m[1]));
      return run ? sse(req, res, run, url) : json(res, 404, { error: "unknown run" });
    }
    if ((m = p.match(/^\/api\/runs\/([^/]+)\/snapshot$/))) {
      const run = runs.get(decodeURIComponent(m[1]));
      return run ? json(res, 200, snapshot(run)) : json(res, 404, { error: "unknown run" });
    }
    if ((m = p.match(/^\/api\/chat\/([^/]+)\/messages$/)) && req.method === "POST") return json(res, ...accept(decodeURIComponent(m[1]), body, "http", req.headers.authorization));
    if ((m = p.match(/^\/api\/runs\/([^/]+)\/cancel$/)) && req.method === "POST") return json(res, ...cancel(runs.get(decodeURIComponent(m[1])), body));
    if (p.startsWith("/api/publish/")) {
      if (!publishKey) return json(res, 404, { error: "no publish API" });
      if (req.headers.authorization !== `Bearer ${publishKey}`) return json(res, 401, { error: "publish key" });
      if (p === "/api/publish/runs" && req.method === "POST") {
        const id = body.run_id || `run_${Math.random().toString(36).slice(2, 10)}`;
        if (runs.has(id)) return json(res, 200, { run_id: id });
        const session = body.session_id || id;
        runs.set(id, { id, session, log: [], conns: [] });
        if (!sessions.has(session)) sessions.set(session, id);
        return json(res, 201, { run_id: id });
      }
      if ((m = p.match(/^\/api\/publish\/runs\/([^/]+)\/events$/)) && req.method === "POST") {
        const run = runs.get(decodeURIComponent(m[1]));
        const key = req.headers["idempotency-key"];
        if (!run) return json(res, 404, { error: "unknown run" });
        if (!key) return json(res, 400, { error: "Idempotency-Key required" });
        const seen = published.get(`${run.id} ${key}`);
        const text = JSON.stringify(body);
        if (seen) return seen.body === text ? json(res, 200, seen.answer) : json(res, 422, { error: "another body for this key" });
        if (done(run)) return json(res, 409, { run_id: run.id, status: "finished" });
        const events = Array.isArray(body.events) ? body.events : [];
        const bad = events.findIndex((e) => typeof e?.type !== "string" || e.type === "snapshot" || typeof e.payload !== "object" || e.payload === null);
        if (!events.length || bad >= 0) return json(res, 400, { error: `invalid event ${bad}` });
        const first = run.log.length + 1;
        for (const e of events) append(run, e.type, e.payload);
        const answer = { first_event_id: first, last_event_id: run.log.length };
        published.set(`${run.id} ${key}`, { body: text, answer });
        return json(res, 200, answer);
      }
      return json(res, 404, { error: "unknown publish route" });
    }
    const [dir, rel] = p.startsWith("/pkg/") ? [pkgDir, p.slice(5)] : [wwwDir, p === "/" ? "harness.html" : p.slice(1)];
    const file = normalize(join(dir, rel));
    if (!file.startsWith(dir)) return json(res, 403, { error: "forbidden" });
    try {
      const data = await readFile(file);
      const headers = { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Cache-Control": "no-store" };
      if (/^csp.*\.html$/.test(rel)) headers["Content-Security-Policy"] = CSP;
      res.writeHead(200, headers).end(data);
    } catch {
      json(res, 404, { error: "not found" });
    }
  });
  server.on("upgrade", (req, socket, head) => {
    if (new URL(req.url, "http://x").pathname !== "/api/ws") return socket.destroy();
    ws.handleUpgrade(req, socket, head, onSocket);
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => { ws.clients.forEach((s) => s.terminate()); server.closeAllConnections(); server.close(r); }),
  };
}

function json(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" }).end(JSON.stringify(body));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (k, d) => { const i = process.argv.indexOf(k); return i > 0 ? Number(process.argv[i + 1]) : d; };
  const str = (k) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : null; };
  const faults = process.argv.flatMap((a, i) => (a === "--fault" ? [process.argv[i + 1]] : []));
  const s = await startSpecServer({ port: arg("--port", 0), heartbeatMs: arg("--heartbeat-ms", 15000), publishKey: str("--publish-key"), faults });
  console.log(s.url);
}
