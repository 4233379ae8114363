// The demo page: the first user of runstream's public JS API. Untrusted text
// is rendered with textContent only.
import init, { RunStream } from "/pkg/runstream.js";
// The diagnostics panel is runstream's devtools element (runstream/devtools), its own import.
import "/pkg/devtools.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const transport = params.get("transport") || "fetch";
$("transport").value = transport;

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

async function newRun() {
  const seed = Math.floor(Math.random() * 1e9);
  const { run_id } = await api("POST", "/api/admin/runs", { seed, workers: 5, speed: 0.6 });
  return run_id;
}

function go(run, t) {
  const q = new URLSearchParams({ run, transport: t });
  location.search = q.toString();
}

await init();
$("wasm-status").textContent = "wasm loaded";
$("wasm-status").dataset.state = "open";

let runId = params.get("run");
if (!runId) {
  runId = await newRun();
  history.replaceState(null, "", `?run=${encodeURIComponent(runId)}&transport=${transport}`);
}
const session = `chat_${runId}`;
$("run-id").textContent = runId;

const common = { transport, resume: "session", spans: "auto" };
const task = new RunStream({
  ...common,
  runId,
  url: `/api/stream/runs/${encodeURIComponent(runId)}`,
  snapshotUrl: `/api/runs/${encodeURIComponent(runId)}/snapshot`,
  cancelUrl: `/api/runs/${encodeURIComponent(runId)}/cancel`,
});
const chat = new RunStream({
  ...common,
  runId: session,
  url: `/api/stream/runs/${encodeURIComponent(session)}`,
  snapshotUrl: `/api/runs/${encodeURIComponent(session)}/snapshot`,
  sendUrl: `/api/chat/${encodeURIComponent(session)}/messages`,
  cancelUrl: `/api/runs/${encodeURIComponent(session)}/cancel`,
});
window.runstreamDemo = { task, chat, runId, session };
// Attached before start(): the panel records every raw event for its trace.
$("devtools").streams = [
  { stream: task, label: "task" },
  { stream: chat, label: "chat" },
];

// ---- chat ----------------------------------------------------------------------
// The chat session is a run of its own on the server (created idempotently).
await api("POST", "/api/admin/runs", { kind: "chat", run_id: session });
chat.start();

$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("send-input").value.trim();
  if (!text) return;
  try {
    chat.send(text);
    $("send-input").value = "";
  } catch (err) {
    $("chat-conn").textContent = `${err.name}: ${err.message}`;
  }
});

// The send whose reply is still coming (Stop cancels that reply only: the chat stays open).
function pendingReply(s) {
  const msgs = s.state.messages;
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i];
    if (m.role === "user" && m.clientRequestId && m.status !== "failed") {
      const answered = msgs.some(
        (r) => r.replyTo === m.clientRequestId && (r.status === "completed" || r.status === "failed"),
      );
      return answered ? null : m.clientRequestId;
    }
  }
  return null;
}

$("stop-reply").addEventListener("click", () => {
  const replyTo = pendingReply(chat.getSnapshot());
  if (replyTo) chat.cancel({ replyTo, reason: "user" });
});

function cancelText(c) {
  return c ? `stop ${c.state}` : "";
}

function renderChat() {
  const s = chat.getSnapshot();
  $("stop-reply").hidden = pendingReply(s) === null;
  $("chat-cancel").textContent = cancelText(s.status.cancel);
  const ol = $("messages");
  ol.replaceChildren(
    ...s.state.messages.map((m) => {
      const li = el("li", `msg ${m.role}`);
      li.append(el("span", "role", m.role), el("span", "content", m.content || "…"), el("span", "mstatus", m.status));
      return li;
    }),
  );
  ol.scrollTop = ol.scrollHeight;
  $("working").hidden = s.status.activity !== "working";
  $("chat-conn").textContent = s.status.connection;
}
chat.subscribe(renderChat);

// ---- task ----------------------------------------------------------------------
$("stop-run").addEventListener("click", () => task.cancel({ reason: "user" }));

function renderTask() {
  const s = task.getSnapshot();
  const st = s.state;
  const finished = ["succeeded", "failed", "cancelled"].includes(st.status);
  $("stop-run").hidden = finished;
  $("stop-run").disabled = st.cancelRequested;
  $("task-cancel").textContent = st.cancelRequested && !finished ? "stopping…" : cancelText(s.status.cancel);
  $("run-status").textContent = `run ${st.status} · cursor ${st.cursor}`;
  $("run-status").dataset.state = st.status;
  $("workers").replaceChildren(
    ...st.workers.map((w) => {
      const li = el("li", `worker ${w.status}`);
      li.append(el("span", "wname", w.name || w.workerId), el("span", "wstatus", w.status));
      if (w.jobId) li.append(el("span", "job", w.jobId));
      const tools = el("ul", "tools");
      tools.append(...w.tools.map((t) => el("li", `tool ${t.status}`, `${t.name || t.toolCallId}: ${t.status}`)));
      li.append(tools);
      return li;
    }),
  );
  $("supervisor").textContent = st.supervisor.completed ? `Supervisor: ${st.supervisor.summary ?? "done"}` : "Supervisor: working…";
  renderConnection(s.status);
}
task.subscribe(renderTask);

function renderConnection(status) {
  const c = $("conn");
  c.dataset.state = status.connection;
  let text = status.connection === "open" ? "live" : status.connection;
  if (status.connection === "reconnecting" && status.retryInMs !== null) {
    text = `reconnecting in ${Math.ceil(status.retryInMs / 1000)} s (attempt ${status.attempt})`;
  }
  if (status.connection === "failed" && status.lastError) text = `failed: ${status.lastError}`;
  c.textContent = text;
  $("retry").hidden = !(status.connection === "reconnecting" || status.connection === "failed" || status.connection === "offline");
}

// ---- controls -------------------------------------------------------------------
$("retry").addEventListener("click", () => {
  task.retryNow();
  chat.retryNow();
});
$("refresh").addEventListener("click", () => location.reload());
$("new-run").addEventListener("click", async () => go(await newRun(), $("transport").value));
$("transport").addEventListener("change", () => go(runId, $("transport").value));
$("apply-chaos").addEventListener("click", async () => {
  const chaos = { seed: Math.floor(Math.random() * 1e6) };
  if ($("c-dup").checked) chaos.dup_rate = 0.2;
  if ($("c-reorder").checked) chaos.reorder_rate = 0.2;
  if ($("c-drop").checked) chaos.drop_every = 8;
  if ($("c-latency").checked) Object.assign(chaos, { latency_ms: 50, jitter_ms: 200 });
  if ($("c-hold").checked) chaos.hold_first_ms = 1500;
  if ($("c-malformed").checked) chaos.malformed_rate = 0.1;
  await api("POST", `/api/admin/runs/${encodeURIComponent(runId)}/chaos`, chaos);
});
$("restart").addEventListener("click", () => api("POST", "/api/admin/restart"));
$("prune").addEventListener("click", async () => {
  const snap = await api("GET", `/api/runs/${encodeURIComponent(runId)}/snapshot`);
  await api("POST", `/api/admin/runs/${encodeURIComponent(runId)}/prune`, { keep_from: Math.max(1, snap.event_id - 3) });
});

task.start();
renderTask();
renderChat();
