// runstream/devtools: <runstream-devtools>, a framework-free live panel over
// one or more RunStreams (API.md's public surface only: getSnapshot, subscribe,
// subscribeEvents), and the trace a user attaches to a bug report.
//
// Its own import: nothing here is loaded by the core package ("runstream"),
// and it imports no runtime code from it. Server-safe: importing it reads no
// browser global at the top level beyond feature checks; the element is defined
// only where `customElements` exists. Untrusted text (errors, labels, message
// content) is rendered with textContent only.
//
// Bounds (per stream, drop-oldest, every drop counted):
//   raw events kept for the trace    DEFAULT_MAX_EVENTS (2000; `max-events` attribute, 100..100000)
//   timeline entries                 MAX_TIMELINE (200)
//   replay sizes, reconnects, cancels MAX_HISTORY (50 each)
//   events-per-second samples        RATE_SAMPLES (60: one a second)

/** Raw events kept per stream unless `max-events` says otherwise. */
export const DEFAULT_MAX_EVENTS = 2000;
/** Smallest and largest accepted `max-events`. */
export const MIN_MAX_EVENTS = 100;
export const MAX_MAX_EVENTS = 100000;
/** Timeline entries kept per stream (state changes and connection endings). */
export const MAX_TIMELINE = 200;
/** Replay sizes, reconnects (with their backoff) and cancel steps kept per stream. */
export const MAX_HISTORY = 50;
/** Events-per-second samples kept per stream (one a second). */
export const RATE_SAMPLES = 60;
/** `format` of an exported trace; `version` changes when its shape does. */
export const TRACE_FORMAT = "runstream-devtools-trace";
export const TRACE_VERSION = 1;

const TAG = "runstream-devtools";
/** Renders at most this often (ms): the panel must not load the page it watches. */
const RENDER_EVERY_MS = 100;
/** Rows of the timeline shown (all MAX_TIMELINE are in the trace). */
const TIMELINE_SHOWN = 12;

/** A bounded FIFO: `push` drops the oldest entry at the bound and counts it. */
class Ring {
  constructor(cap) {
    this.cap = cap;
    this.items = [];
    this.start = 0; // index of the oldest item once full
    this.dropped = 0;
  }
  push(v) {
    if (this.items.length < this.cap) {
      this.items.push(v);
      return;
    }
    this.items[this.start] = v;
    this.start = (this.start + 1) % this.cap;
    this.dropped++;
  }
  /** Oldest first. */
  toArray() {
    return this.start === 0 ? this.items.slice() : this.items.slice(this.start).concat(this.items.slice(0, this.start));
  }
  last() {
    if (this.items.length === 0) return undefined;
    return this.items[(this.start + this.items.length - 1) % this.items.length];
  }
  get size() {
    return this.items.length;
  }
}

const isFinished = (s) => s === "succeeded" || s === "failed" || s === "cancelled";

/**
 * What the panel knows about one stream: its raw events, its timeline, and the
 * figures derived from them. No DOM: `exportTrace` and the tests read it.
 */
class Recorder {
  constructor(stream, label, maxEvents, onChange) {
    this.stream = stream;
    this.label = label;
    this.onChange = onChange;
    this.events = new Ring(maxEvents);
    this.eventsSeen = 0;
    this.timeline = new Ring(MAX_TIMELINE);
    this.replays = new Ring(MAX_HISTORY);
    this.reconnects = new Ring(MAX_HISTORY);
    this.cancels = new Ring(MAX_HISTORY);
    this.rate = new Ring(RATE_SAMPLES);
    this.peakRate = 0;
    this.lastReason = null; // the latest termination reason not yet shown by a state change
    this.snapshot = null;
    this.gone = null; // why the stream can no longer be read (freed), or null
    this.openSince = null;
    this.lastApplied = null;
    this.waiting = null; // { since, plannedMs, attempt, reason }: a reconnect wait in progress
    this.offEvents = null;
    this.offSnapshots = null;
  }

  attach() {
    try {
      this.offEvents = this.stream.subscribeEvents((e) => this.onEvent(e));
      this.offSnapshots = this.stream.subscribe(() => this.onSnapshot());
    } catch (e) {
      this.fail(e);
      return;
    }
    this.onSnapshot();
  }

  detach() {
    for (const off of [this.offEvents, this.offSnapshots]) {
      try {
        if (off) off();
      } catch {
        // A freed stream's unsubscribe may throw: nothing is left to remove.
      }
    }
    this.offEvents = this.offSnapshots = null;
  }

  fail(e) {
    if (this.gone) return;
    this.gone = e && e.message ? String(e.message) : "the stream can no longer be read (freed?)";
    this.detach();
  }

  onEvent(e) {
    const now = performance.now();
    this.eventsSeen++;
    // A copy: the trace must not change if the engine reuses or freezes its objects.
    this.events.push(e.attrs ? { ...e, attrs: { ...e.attrs } } : { ...e });
    if (e.kind === "counter" && e.name === "stream.termination.total") {
      const reason = (e.attrs && e.attrs.reason) || "unknown";
      this.lastReason = reason;
      this.timeline.push({ ts: typeof e.ts === "number" ? e.ts : now, kind: "ended", reason });
    } else if (e.kind === "histogram" && e.name === "stream.replay.events") {
      this.replays.push({ ts: typeof e.ts === "number" ? e.ts : now, events: e.value });
    }
  }

  onSnapshot() {
    if (this.gone) return;
    let s;
    try {
      s = this.stream.getSnapshot();
    } catch (e) {
      this.fail(e);
      this.onChange();
      return;
    }
    const prev = this.snapshot;
    this.snapshot = s;
    if (prev === s) return;
    const now = performance.now();
    const st = s.status;
    const was = prev ? prev.status : null;
    if (!was || was.connection !== st.connection || was.attempt !== st.attempt) {
      const reason = this.lastReason;
      this.lastReason = null;
      this.timeline.push({
        ts: now,
        kind: "state",
        connection: st.connection,
        attempt: st.attempt,
        retryInMs: st.retryInMs,
        reason: reason ?? (st.connection === "open" || st.connection === "connecting" ? null : st.lastError),
      });
      // A reconnect wait: from entering `reconnecting` to leaving it (planned vs. waited).
      if (this.waiting && st.connection !== "reconnecting") {
        this.reconnects.push({ ...this.waiting, waitedMs: Math.round(now - this.waiting.since) });
        this.waiting = null;
      }
      if (st.connection === "reconnecting" && !this.waiting) {
        this.waiting = { since: now, attempt: st.attempt, plannedMs: st.retryInMs, reason };
      }
    }
    if (st.connection !== "open") this.openSince = null;
    else if (this.openSince === null) this.openSince = now;
    const c = st.cancel;
    const pc = was ? was.cancel : null;
    if (c && (!pc || pc.clientRequestId !== c.clientRequestId || pc.state !== c.state)) {
      this.cancels.push({ ts: now, clientRequestId: c.clientRequestId, replyTo: c.replyTo, state: c.state });
    }
    this.onChange();
  }

  /** One events-per-second sample; called once a second. */
  tick() {
    if (this.gone || !this.snapshot) return;
    this.onSnapshot(); // time-based figures ("no event yet", a reconnect's wait) move without events
    if (this.gone || !this.snapshot) return;
    const applied = this.snapshot.metrics.eventsApplied;
    const rate = this.lastApplied === null ? 0 : Math.max(0, applied - this.lastApplied);
    this.lastApplied = applied;
    this.peakRate = Math.max(this.peakRate, rate);
    this.rate.push({ rate, connection: this.snapshot.status.connection });
  }

  /** Sends the user made that the server has not accepted yet (API.md: retried, persisted). */
  pendingSends() {
    if (!this.snapshot) return [];
    return this.snapshot.state.messages.filter((m) => m.role === "user" && (m.status === "queued" || m.status === "sending"));
  }

  /**
   * The likely cause of what the figures show (docs/DEPLOY.md), or null. `peers`:
   * the panel's other streams; one that got its first event promptly clears a
   * quiet stream of the buffering-proxy guess (an idle chat beside a live run).
   */
  likelyCause(now = performance.now(), peers = []) {
    if (!this.snapshot) return null;
    const m = this.snapshot.metrics;
    const status = this.snapshot.status;
    const t = m.terminations;
    const proxy = "a proxy buffering the stream's location: give it its own location with proxy_buffering off (docs/DEPLOY.md)";
    const openMs = this.openSince === null ? 0 : now - this.openSince;
    if ((t.heartbeat_timeout ?? 0) > 0 && m.eventsApplied === 0) return `connected, but not a byte before the heartbeat timeout: ${proxy}`;
    if (m.timeToFirstEventMs !== null && m.timeToFirstEventMs > 1500) {
      return `first event after ${(m.timeToFirstEventMs / 1000).toFixed(1)} s: ${proxy}`;
    }
    const peerStreams = peers.some((p) => p !== this && p.snapshot && p.snapshot.metrics.timeToFirstEventMs !== null && p.snapshot.metrics.timeToFirstEventMs <= 1500);
    if (status.connection === "open" && m.eventsApplied === 0 && openMs > 2500 && !isFinished(this.snapshot.state.status) && !peerStreams) {
      return `connected ${Math.round(openMs / 1000)} s, no event yet: the run has not started (an idle chat is healthy), or ${proxy}`;
    }
    if ((t.http_5xx ?? 0) > 0) return "5xx answers: the server failed, or the proxy has no live replica (502); the client retries";
    if ((t.connect_timeout ?? 0) > 0) return "no response within connectTimeoutMs: the server is unreachable or overloaded";
    if ((t.heartbeat_timeout ?? 0) > 0) return "streams went silent past heartbeatTimeoutMs: a proxy idle timeout, or buffering";
    if ((t.error_loop ?? 0) > 0) return "stopped after 10 failures without progress (error loop): retryNow() resumes";
    if (m.protocolErrors > 0 && status.connection !== "open" && status.lastError) return `protocol errors: ${status.lastError}`;
    return null;
  }

  /** This stream's part of the trace (JSON-ready). */
  trace() {
    const s = this.snapshot;
    return {
      label: this.label,
      runId: s ? s.state.runId : null,
      readError: this.gone,
      eventsSeen: this.eventsSeen,
      eventsDropped: this.events.dropped,
      events: this.events.toArray(),
      timeline: this.timeline.toArray(),
      timelineDropped: this.timeline.dropped,
      replays: this.replays.toArray(),
      reconnectWaits: this.reconnects.toArray(),
      cancels: this.cancels.toArray(),
      eventsPerSecond: this.rate.toArray().map((x) => x.rate),
      snapshot: s
        ? {
            version: s.version,
            status: s.status,
            metrics: s.metrics,
            // The state without message content (a bug report should not carry a user's chat).
            state: {
              runId: s.state.runId,
              cursor: s.state.cursor,
              status: s.state.status,
              cancelRequested: s.state.cancelRequested,
              workers: s.state.workers.map((w) => ({ workerId: w.workerId, jobId: w.jobId, status: w.status, tools: w.tools.length })),
              messages: s.state.messages.map((m) => ({
                messageId: m.messageId,
                clientRequestId: m.clientRequestId,
                replyTo: m.replyTo,
                role: m.role,
                status: m.status,
                length: m.content.length,
              })),
            },
          }
        : null,
    };
  }
}

// ---- rendering -------------------------------------------------------------------

const CSS = `
:host { display: block; font: 12px/1.4 system-ui, sans-serif; color: #1d2330; }
.bar { display: flex; gap: 8px; align-items: center; margin-bottom: 6px; }
.bar .spacer { flex: 1; }
.empty { color: #667; }
section { border: 1px solid #e3e5ea; border-radius: 6px; padding: 8px; margin-bottom: 8px; background: #fff; }
h3 { margin: 0 0 6px; font-size: 13px; display: flex; gap: 6px; align-items: baseline; flex-wrap: wrap; }
h3 small { color: #667; font-weight: normal; }
h4 { margin: 8px 0 2px; font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: #667; }
.pill { padding: 1px 8px; border-radius: 10px; background: #888; color: #fff; font-size: 11px; }
.pill[data-state="open"] { background: #2a9d58; }
.pill[data-state="connecting"] { background: #d4a017; }
.pill[data-state="reconnecting"] { background: #e07b24; }
.pill[data-state="failed"] { background: #c0392b; }
.pill[data-state="closed"] { background: #5470c6; }
.role { background: #445; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 0; }
dt { color: #667; }
dd { margin: 0; font-variant-numeric: tabular-nums; }
ol, ul { margin: 0; padding-left: 16px; font-variant-numeric: tabular-nums; }
ol.timeline { list-style: none; padding: 0; max-height: 160px; overflow: auto; }
ol.timeline li[data-kind="ended"] { color: #8a4b12; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 1px 4px; border-bottom: 1px solid #eee; }
canvas { width: 100%; max-width: 320px; height: 60px; background: #fafbfc; border: 1px solid #eee; display: block; }
.cause { color: #a33; }
.streams { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 520px), 1fr)); gap: 8px; align-items: start; }
.streams > section { margin-bottom: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 0 12px; }
button { font: inherit; cursor: pointer; }
`;

const STATE_COLOR = { open: "#2a9d58", connecting: "#d4a017", reconnecting: "#e07b24", offline: "#888", failed: "#c0392b", closed: "#5470c6", idle: "#bbb" };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return e;
}
const ms = (v) => (v === null || v === undefined ? "—" : `${Math.round(v)} ms`);
const clock = (ts) => {
  const d = new Date(performance.timeOrigin + ts);
  return `${d.toISOString().slice(11, 23)}`;
};
function dl(rows) {
  return el("dl", null, ...rows.flatMap(([k, v, part]) => [el("dt", null, k), el("dd", part ? { "data-field": part } : null, v)]));
}

function timelineRow(x) {
  if (x.kind === "ended") return el("li", { "data-kind": "ended" }, `${clock(x.ts)}  ended: ${x.reason}`);
  let text = `${clock(x.ts)}  ${x.connection}`;
  if (x.attempt) text += ` · attempt ${x.attempt}`;
  if (x.connection === "reconnecting" && x.retryInMs !== null) text += ` · retry in ${Math.round(x.retryInMs)} ms`;
  // Open/connecting after an ending the snapshot never showed (it came back within one frame).
  if (x.reason) text += x.connection === "open" || x.connection === "connecting" ? ` · after ${x.reason}` : ` · ${x.reason}`;
  return el("li", { "data-kind": "state", "data-state": x.connection }, text);
}

function drawRate(canvas, samples) {
  const g = canvas.getContext && canvas.getContext("2d");
  if (!g) return;
  const W = canvas.width;
  const H = canvas.height;
  g.clearRect(0, 0, W, H);
  const max = Math.max(5, ...samples.map((x) => x.rate));
  const w = W / RATE_SAMPLES;
  const off = RATE_SAMPLES - samples.length;
  samples.forEach((x, i) => {
    const h = ((H - 16) * x.rate) / max;
    g.fillStyle = "#4a6fa5";
    g.fillRect((off + i) * w, H - 8 - h, Math.max(1, w - 1), h);
    g.fillStyle = STATE_COLOR[x.connection] || "#bbb";
    g.fillRect((off + i) * w, H - 5, w, 5);
  });
  g.fillStyle = "#333";
  g.font = "10px sans-serif";
  g.fillText(`events/s, last ${RATE_SAMPLES} s (scale ${max})`, 4, 10);
}

function renderStream(r, now, all) {
  const s = r.snapshot;
  const sec = el("section", { "data-label": r.label, "data-run-id": s ? s.state.runId : null, part: "stream" });
  const st = s ? s.status : null;
  sec.append(
    el(
      "h3",
      null,
      r.label,
      s && r.label !== s.state.runId ? el("small", null, s.state.runId) : null,
      st ? el("span", { class: "pill", "data-part": "connection", "data-state": st.connection }, st.connection) : null,
      st ? el("span", { class: "pill role", "data-part": "sharing", title: "this tab's sharing role (share: \"tabs\")" }, `tab: ${st.sharing}`) : null,
      s ? el("small", null, `run ${s.state.status} · cursor ${s.state.cursor} · ${st.activity}`) : null,
    ),
  );
  if (r.gone) sec.append(el("p", { class: "cause", "data-part": "gone" }, `no longer readable: ${r.gone}`));
  if (!s) return sec;
  const m = s.metrics;
  const rateNow = r.rate.last() ? r.rate.last().rate : 0;
  const byKind = Object.entries(m.protocolErrorsByKind || {}).map(([k, v]) => `${k}×${v}`).join(", ");
  const terminations = Object.entries(m.terminations).map(([k, v]) => `${k}×${v}`).join(", ");

  const canvas = el("canvas", { width: 320, height: 60, "data-part": "rate-chart", "aria-label": "events per second and connection state" });
  drawRate(canvas, r.rate.toArray());

  const left = el(
    "div",
    null,
    el("h4", null, "Connection"),
    dl([
      ["state", st.connection, "connection"],
      ["attempt", st.attempt, "attempt"],
      ["retry in", st.retryInMs === null ? "—" : `${Math.round(st.retryInMs)} ms`, "retry-in"],
      ["last error", st.lastError ?? "—", "last-error"],
      ["sharing", st.sharing, "sharing"],
      ["reconnects", m.reconnects, "reconnects"],
      ["terminations", terminations || "—", "terminations"],
    ]),
    el("h4", null, "Timeline"),
    el("ol", { class: "timeline", "data-part": "timeline" }, ...r.timeline.toArray().slice(-TIMELINE_SHOWN).reverse().map(timelineRow)),
    el("h4", null, "Reconnects and backoff"),
    r.reconnects.size || r.waiting
      ? el(
          "ol",
          { "data-part": "backoff" },
          ...r.reconnects.toArray().slice(-8).map((x) => el("li", null, `attempt ${x.attempt}${x.reason ? ` after ${x.reason}` : ""}: backoff ${ms(x.plannedMs)}, waited ${ms(x.waitedMs)}`)),
          r.waiting ? el("li", null, `attempt ${r.waiting.attempt}: waiting, ${ms(st.retryInMs)} left`) : null,
        )
      : el("p", { class: "empty", "data-part": "backoff" }, m.reconnects ? `${m.reconnects} reconnects, none waited long enough to show` : "none"),
  );
  const right = el(
    "div",
    null,
    el("h4", null, "Events"),
    el("div", { "data-part": "rate" }, canvas, el("small", null, `${rateNow} events/s now · peak ${r.peakRate}/s`)),
    dl([
      ["events applied", m.eventsApplied, "events-applied"],
      ["events/s", rateNow, "events-per-second"],
      ["replayed", m.eventsReplayed, "events-replayed"],
      ["replay sizes", r.replays.size ? r.replays.toArray().slice(-10).map((x) => x.events).join(", ") : "—", "replay-sizes"],
      ["duplicates dropped", m.duplicatesDropped, "duplicates"],
      ["out of order", m.outOfOrder, "out-of-order"],
      ["gaps skipped", m.gapsSkipped, "gaps-skipped"],
      ["protocol errors", byKind ? `${m.protocolErrors} (${byKind})` : m.protocolErrors, "protocol-errors"],
      ["unknown events", m.unknownEvents ?? 0, "unknown-events"],
      ["tool errors", m.toolCalls ? `${m.toolErrors} of ${m.toolCalls} calls` : "—", "tool-errors"],
      ["time to first event", ms(m.timeToFirstEventMs), "time-to-first-event"],
      ["raw events kept", `${r.events.size} of ${r.eventsSeen} (bound ${r.events.cap})`, "events-kept"],
    ]),
  );
  sec.append(el("div", { class: "grid" }, left, right));

  const contentOf = (crid) => {
    const msg = s.state.messages.find((x) => x.clientRequestId === crid);
    return msg ? msg.content.slice(0, 24) : crid.slice(0, 8);
  };
  const msgRows = Object.entries(m.messages).map(([crid, x]) =>
    el("tr", { "data-client-request-id": crid }, el("td", null, contentOf(crid)), el("td", null, ms(x.ttfbMs)), el("td", null, ms(x.ttftMs)), el("td", null, ms(x.durationMs)), el("td", null, x.tokens), el("td", null, x.fallback ?? "—")),
  );
  sec.append(
    el("h4", null, "Messages (per send)"),
    msgRows.length
      ? el("table", { "data-part": "messages" }, el("thead", null, el("tr", null, ...["message", "TTFB", "TTFT", "duration", "tokens", "fallback"].map((h) => el("th", null, h)))), el("tbody", null, ...msgRows))
      : el("p", { class: "empty", "data-part": "messages" }, "no sends yet"),
  );

  const pending = r.pendingSends();
  const cancels = r.cancels.toArray().slice(-6);
  sec.append(
    el("h4", null, "Pending sends and cancels"),
    el(
      "div",
      { class: "grid" },
      el(
        "div",
        { "data-part": "pending-sends", "data-count": pending.length },
        `${pending.length} pending send${pending.length === 1 ? "" : "s"}`,
        pending.length ? el("ul", null, ...pending.map((p) => el("li", null, `${p.clientRequestId ?? "?"} ${p.status}: ${p.content.slice(0, 24)}`))) : null,
      ),
      el(
        "div",
        { "data-part": "cancels", "data-state": st.cancel ? st.cancel.state : "none" },
        st.cancel ? `latest cancel: ${st.cancel.state}${st.cancel.replyTo ? ` (reply to ${st.cancel.replyTo})` : " (run)"}` : "no cancel",
        s.state.cancelRequested ? " · run cancel requested" : "",
        cancels.length ? el("ul", null, ...cancels.map((c) => el("li", null, `${clock(c.ts)} ${c.clientRequestId.slice(0, 8)} ${c.state}`))) : null,
      ),
    ),
  );
  const cause = r.likelyCause(now, all);
  sec.append(el("h4", null, "Likely cause"), el("p", { class: cause ? "cause" : "empty", "data-part": "cause" }, cause ?? "—"));
  return sec;
}

// ---- the element ------------------------------------------------------------------

const Base = typeof HTMLElement === "undefined" ? class {} : HTMLElement;

/**
 * `<runstream-devtools>`: set `streams` to one RunStream, an array of them, or
 * `{ stream, label }` entries. Attach it before `start()` for a complete raw
 * event record (events are built only while someone listens).
 */
export class RunStreamDevtools extends Base {
  constructor() {
    super();
    this._entries = [];
    this._recorders = [];
    this._timer = null;
    this._renderAt = 0;
    this._renderPending = null;
    this._connected = false;
    this._root = this.attachShadow({ mode: "open" });
    const css = CSS;
    if (typeof CSSStyleSheet !== "undefined" && "adoptedStyleSheets" in this._root) {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      this._root.adoptedStyleSheets = [sheet];
      this._style = null;
    } else {
      this._style = document.createElement("style");
      this._style.textContent = css;
    }
    this._body = document.createElement("div");
    this._body.setAttribute("part", "body");
    this._body.className = "streams";
    this._exportButton = document.createElement("button");
    this._exportButton.type = "button";
    this._exportButton.textContent = "Export trace";
    this._exportButton.setAttribute("data-part", "export");
    this._exportButton.addEventListener("click", () => this.downloadTrace());
    const title = document.createElement("strong");
    title.textContent = "runstream devtools";
    const spacer = document.createElement("span");
    spacer.className = "spacer";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.append(title, spacer, this._exportButton);
    if (this._style) this._root.append(this._style);
    this._root.append(bar, this._body);
  }

  static get observedAttributes() {
    return ["max-events"];
  }

  /** Raw events kept per stream (`max-events`, clamped to 100..100000; default 2000). */
  get maxEvents() {
    const v = Number.parseInt(this.getAttribute("max-events") ?? "", 10);
    if (!Number.isFinite(v)) return DEFAULT_MAX_EVENTS;
    return Math.min(MAX_MAX_EVENTS, Math.max(MIN_MAX_EVENTS, v));
  }

  attributeChangedCallback() {
    // The bound applies to streams attached from now on: re-attach so every stream uses it.
    if (this._connected) this._reattach(true);
  }

  /** The watched streams, as `{ stream, label }` entries. */
  get streams() {
    return this._entries.slice();
  }

  set streams(value) {
    const list = value === null || value === undefined ? [] : Array.isArray(value) ? value : [value];
    const entries = [];
    for (const v of list) {
      if (!v) continue;
      const entry = typeof v.getSnapshot === "function" ? { stream: v, label: null } : v.stream ? { stream: v.stream, label: v.label ?? null } : null;
      if (entry && !entries.some((e) => e.stream === entry.stream)) entries.push(entry);
    }
    const same = entries.length === this._entries.length && entries.every((e, i) => e.stream === this._entries[i].stream && e.label === this._entries[i].label);
    if (same) return;
    this._entries = entries;
    if (this._connected) this._reattach(false);
  }

  connectedCallback() {
    this._connected = true;
    this._reattach(false);
    if (this._timer === null) {
      this._timer = setInterval(() => {
        for (const r of this._recorders) r.tick();
        this._render();
      }, 1000);
    }
  }

  disconnectedCallback() {
    this._connected = false;
    if (this._timer !== null) clearInterval(this._timer);
    this._timer = null;
    if (this._renderPending !== null) clearTimeout(this._renderPending);
    this._renderPending = null;
    for (const r of this._recorders) r.detach();
  }

  /** Keeps the recorders of streams still listed (their history), attaches new ones. */
  _reattach(fresh) {
    const keep = new Map(fresh ? [] : this._recorders.map((r) => [r.stream, r]));
    for (const r of this._recorders) if (fresh || !this._entries.some((e) => e.stream === r.stream)) r.detach();
    const max = this.maxEvents;
    this._recorders = this._entries.map((e) => {
      const old = keep.get(e.stream);
      if (old) {
        old.label = e.label ?? old.label;
        if (!old.offSnapshots && !old.gone) old.attach();
        return old;
      }
      const r = new Recorder(e.stream, e.label, max, () => this._scheduleRender());
      r.attach();
      if (r.label === null) r.label = r.snapshot ? r.snapshot.state.runId : "stream";
      return r;
    });
    this._render();
  }

  _scheduleRender() {
    if (this._renderPending !== null) return;
    const wait = Math.max(0, this._renderAt + RENDER_EVERY_MS - performance.now());
    this._renderPending = setTimeout(() => {
      this._renderPending = null;
      this._render();
    }, wait);
  }

  _render() {
    if (!this._connected) return;
    this._renderAt = performance.now();
    const now = this._renderAt;
    if (this._recorders.length === 0) {
      this._body.replaceChildren(el("p", { class: "empty" }, "no stream attached: set element.streams"));
      return;
    }
    this._body.replaceChildren(...this._recorders.map((r) => renderStream(r, now, this._recorders)));
  }

  /**
   * The trace to attach to a bug report: per stream, the raw RuntimeEvents kept
   * (bounded, drop count included), the timeline, and the latest snapshot's
   * status, metrics and state (without message content). JSON-ready.
   */
  exportTrace() {
    // Bring every figure up to date (a snapshot may have changed since the last frame).
    for (const r of this._recorders) r.onSnapshot();
    return {
      format: TRACE_FORMAT,
      version: TRACE_VERSION,
      createdAt: new Date().toISOString(),
      page: typeof location === "undefined" ? null : location.origin + location.pathname,
      userAgent: typeof navigator === "undefined" ? null : navigator.userAgent,
      timeOrigin: performance.timeOrigin,
      bounds: { eventsPerStream: this.maxEvents, timelinePerStream: MAX_TIMELINE, historyPerStream: MAX_HISTORY, rateSamples: RATE_SAMPLES },
      streams: this._recorders.map((r) => r.trace()),
    };
  }

  /** `exportTrace()` as pretty JSON text. */
  traceJSON() {
    return JSON.stringify(this.exportTrace(), null, 2);
  }

  /** Saves the trace as `runstream-trace-<time>.json` (the panel's "Export trace" button). */
  downloadTrace() {
    const blob = new Blob([this.traceJSON()], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = `runstream-trace-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
    this._root.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
}

/** Defines `<runstream-devtools>` (or `tagName`) once; a no-op where custom elements do not exist (server rendering). */
export function defineRunStreamDevtools(tagName = TAG) {
  if (typeof customElements === "undefined") return;
  if (!customElements.get(tagName)) customElements.define(tagName, tagName === TAG ? RunStreamDevtools : class extends RunStreamDevtools {});
}

defineRunStreamDevtools();
