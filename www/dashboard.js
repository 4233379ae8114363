// The dashboard view: many task runs, one RunStream each with transport
// "websocket", and all of them on one WebSocket (API.md "Sharing
// connections"). `?transport=fetch` follows the same runs with one HTTP
// connection each instead, to show the browser's six-per-origin limit. Uses
// only the public API; untrusted text is rendered with textContent only.
//
// The socket count is counted in the page, not taken on trust: every
// WebSocket this page constructs goes through a counting subclass, installed
// before the library opens any (the wasm glue looks `WebSocket` up on the
// global object when it opens one).
const sockets = { open: 0, opened: 0, maxOpen: 0 };
let rows = []; // one per run: its RunStream and its table row
let pending = false; // a render is scheduled for the next frame
const NativeWebSocket = window.WebSocket;
window.WebSocket = class CountedWebSocket extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    // Counted from construction: a connecting socket already holds a connection.
    sockets.opened += 1;
    sockets.open += 1;
    sockets.maxOpen = Math.max(sockets.maxOpen, sockets.open);
    this.addEventListener("close", () => {
      sockets.open -= 1;
      schedule();
    });
    schedule();
  }
};

const { default: init, RunStream } = await import("/pkg/runstream.js");

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_RUNS = 50;
const clamp = (v, lo, hi, dflt) => {
  const n = Number(v);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
};
const count = Math.round(clamp(params.get("n") ?? 24, 1, MAX_RUNS, 24));
const speed = clamp(params.get("speed") ?? 0.5, 0.05, 20, 0.5);
const workers = Math.round(clamp(params.get("workers") ?? 4, 1, 8, 4));
const transport = params.get("transport") === "fetch" ? "fetch" : "websocket";
$("count").value = String(count);
$("transport").value = transport;
$("how").textContent = transport === "websocket"
  ? 'every run a RunStream with transport: "websocket": one socket between them'
  : 'every run a RunStream with transport: "fetch": one HTTP connection each, six at most per origin';

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : undefined,
    body: body ? JSON.stringify(body) : undefined,
  });
  const t = await r.text();
  return t ? JSON.parse(t) : null;
}

await init();
$("wasm-status").textContent = "wasm loaded";
$("wasm-status").dataset.state = "open";

// The runs: from the address (a reload follows the same runs and resumes each
// from its stored cursor), else created now through the admin API.
let runIds = (params.get("runs") ?? "").split(",").filter(Boolean).slice(0, MAX_RUNS);
if (runIds.length === 0) {
  const created = await Promise.all(
    Array.from({ length: count }, () => api("POST", "/api/admin/runs", { seed: Math.floor(Math.random() * 1e9), workers, speed })),
  );
  runIds = created.map((r) => r.run_id);
  const q = new URLSearchParams({ n: String(count), speed: String(speed), workers: String(workers), transport, runs: runIds.join(",") });
  history.replaceState(null, "", `?${q}`);
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const WORKER_DONE = new Set(["succeeded", "failed", "cancelled", "unknown"]);

rows = runIds.map((runId) => {
  const stream = new RunStream({
    runId,
    transport,
    url: `/api/stream/runs/${encodeURIComponent(runId)}`,
    wsUrl: "/api/ws",
    snapshotUrl: `/api/runs/${encodeURIComponent(runId)}/snapshot`,
    resume: "session",
    spans: false,
  });
  const tr = el("tr", "run-row");
  tr.dataset.runId = runId;
  const cells = {
    id: el("td", "rid", runId.slice(-8)),
    status: el("td", "rstatus"),
    connection: el("td", "rconn"),
    workers: el("td", "rworkers"),
    tools: el("td", "rtools"),
    progress: el("td", "rprogress"),
    cursor: el("td", "rcursor"),
  };
  cells.id.title = runId;
  const bar = el("div", "bar");
  const fill = el("div");
  bar.append(fill);
  cells.progress.append(bar);
  tr.append(...Object.values(cells));
  const row = { runId, stream, tr, cells, fill, shown: null };
  stream.subscribe(() => schedule());
  return row;
});
$("runs").tBodies[0].replaceChildren(...rows.map((r) => r.tr));
window.runstreamDashboard = { rows, sockets };

/** Progress of a run: its finished workers (all of it once the run is over). */
function progress(st) {
  if (TERMINAL.has(st.status)) return 1;
  if (st.workers.length === 0) return 0;
  return st.workers.filter((w) => WORKER_DONE.has(w.status)).length / st.workers.length;
}

function renderRow(row) {
  const snap = row.stream.getSnapshot();
  if (snap === row.shown) return; // same snapshot object: nothing changed
  row.shown = snap;
  const st = snap.state;
  const { cells } = row;
  row.tr.dataset.status = st.status;
  row.tr.dataset.cursor = String(st.cursor);
  cells.status.textContent = st.status;
  cells.status.dataset.state = st.status;
  cells.connection.textContent = snap.status.connection;
  cells.connection.dataset.state = snap.status.connection;
  const done = st.workers.filter((w) => WORKER_DONE.has(w.status)).length;
  cells.workers.replaceChildren(
    el("span", "count", `${done}/${st.workers.length}`),
    ...st.workers.map((w) => {
      const dot = el("span", `dot ${w.status}`);
      dot.title = `${w.name || w.workerId}: ${w.status}`;
      return dot;
    }),
  );
  const tools = st.workers.flatMap((w) => w.tools);
  const failedTools = tools.filter((t) => t.status === "error").length;
  cells.tools.textContent = `${tools.filter((t) => t.status !== "running").length}/${tools.length}${failedTools ? ` (${failedTools} failed)` : ""}`;
  row.fill.style.width = `${Math.round(100 * progress(st))}%`;
  cells.cursor.textContent = String(st.cursor);
}

function renderAggregate() {
  const snaps = rows.map((r) => r.stream.getSnapshot());
  const finished = snaps.filter((s) => TERMINAL.has(s.state.status));
  const failed = snaps.filter((s) => s.state.status === "failed").length;
  const allWorkers = snaps.flatMap((s) => s.state.workers);
  const sum = (f) => snaps.reduce((a, s) => a + f(s), 0);
  const items = [
    ["runs", snaps.length],
    ["finished", `${finished.length} (${failed} failed)`],
    ["running", snaps.filter((s) => s.state.status === "running").length],
    ["streams open", snaps.filter((s) => s.status.connection === "open").length],
    ["workers done", `${allWorkers.filter((w) => WORKER_DONE.has(w.status)).length}/${allWorkers.length}`],
    ["events applied", sum((s) => s.metrics.eventsApplied)],
    ["reconnects", sum((s) => s.metrics.reconnects)],
    ["duplicates dropped", sum((s) => s.metrics.duplicatesDropped)],
    ["WebSockets opened", sockets.opened],
  ];
  $("aggregate").replaceChildren(...items.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", v)]));
  const overall = snaps.length ? snaps.reduce((a, s) => a + progress(s.state), 0) / snaps.length : 0;
  $("aggregate-bar").style.width = `${Math.round(100 * overall)}%`;
  document.body.dataset.finished = String(finished.length);
  document.body.dataset.runs = String(snaps.length);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function renderSockets() {
  const pill = $("sockets");
  if (transport === "websocket") {
    pill.textContent = `${plural(sockets.open, "WebSocket")} for ${rows.length} runs`;
    pill.dataset.state = sockets.open === 1 ? "open" : sockets.open === 0 ? "closed" : "failed";
  } else {
    // A fetch stream holds one HTTP connection from its request to its end:
    // the open ones hold one each, the connecting ones wait for one.
    const conn = rows.map((r) => r.stream.getSnapshot().status.connection);
    const open = conn.filter((c) => c === "open").length;
    const waiting = conn.filter((c) => c === "connecting").length;
    pill.textContent = `${plural(open, "HTTP connection")} streaming, ${waiting} waiting`;
    pill.dataset.state = waiting > 0 ? "reconnecting" : open > 0 ? "open" : "closed";
    document.body.dataset.httpOpen = String(open);
    document.body.dataset.httpWaiting = String(waiting);
  }
  document.body.dataset.socketsOpen = String(sockets.open);
  document.body.dataset.socketsOpened = String(sockets.opened);
  document.body.dataset.socketsMaxOpen = String(sockets.maxOpen);
}

// One render per animation frame, whatever woke it (a run's notification, a socket).
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    rows.forEach(renderRow);
    renderAggregate();
    renderSockets();
  });
}

// The server's own count (every client of it, not only this page). One
// request at a time: on fetch with six streams open, the request itself waits
// for a free connection, and the pill says so.
let pollSince = null;
async function pollServer() {
  if (pollSince !== null) {
    const s = Math.floor((performance.now() - pollSince) / 1000);
    if (s >= 1) $("server-conns").textContent = `server: request waiting ${s} s for a free connection`;
    return;
  }
  pollSince = performance.now();
  try {
    const c = await api("GET", "/api/admin/connections");
    $("server-conns").textContent = `server: ${plural(c.open, "streaming connection")}, ${plural(c.ws_subscriptions.open, "subscription")}`;
  } catch {
    $("server-conns").textContent = "server: –";
  } finally {
    pollSince = null;
  }
}
setInterval(pollServer, 1000);
void pollServer();

$("new-runs").addEventListener("click", () => {
  const q = new URLSearchParams({ n: $("count").value, speed: String(speed), workers: String(workers), transport: $("transport").value });
  location.search = q.toString();
});
// The same runs over the other transport.
$("transport").addEventListener("change", () => {
  const q = new URLSearchParams({ n: String(count), speed: String(speed), workers: String(workers), transport: $("transport").value, runs: runIds.join(",") });
  location.search = q.toString();
});
// Ends every connection on the server: the runs come back over one new socket,
// each from its own cursor.
$("drop").addEventListener("click", () => api("POST", "/api/admin/restart"));

rows.forEach((r) => r.stream.start());
schedule();
