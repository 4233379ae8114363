//! The sans-IO engine: one run's stream, state, outbox and status.
//!
//! Shaped like quinn-proto: the shell feeds inputs (`handle_*`) with the
//! current time, then drains outputs with [`Engine::poll_action`] and
//! [`Engine::poll_telemetry`], and re-arms a single timer at
//! [`Engine::poll_timeout`], calling [`Engine::handle_timeout`] when it fires.
//! The engine never reads a clock and never draws randomness of its own (its
//! [`Rng`] is seeded by the shell).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::envelope::{decode_envelope, decode_envelope_value, Envelope, EventKind, ProtocolError};
use super::metrics::{
    EventClass, MessageMetrics, Metric, RunMetrics, RuntimeEvent, SpanFields, SpanStatus,
    Telemetry, Termination, MAX_MESSAGE_METRICS,
};
use super::rng::Rng;
use super::sse::{SseItem, SseParser};
use super::state::{Applied, Message, MessageStatus, Parked, RunState};

/// Milliseconds on the shell's monotonic clock (`performance.now()` in browsers).
pub type Ms = f64;

/// Which transport carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// `fetch` + `ReadableStream`, bytes parsed by [`SseParser`].
    #[default]
    Fetch,
    /// Native `EventSource` (already parsed events).
    Sse,
    /// WebSocket (PROTOCOL §2b).
    WebSocket,
}

/// Reconnect backoff policy (full jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first backed-off delay.
    pub initial_ms: Ms,
    /// Largest delay; the server's `retry:` is clamped to it.
    pub max_ms: Ms,
    /// Growth per consecutive failure.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 500.0,
            max_ms: 20_000.0,
            multiplier: 2.0,
        }
    }
}

/// Span recording policy, resolved by the shell (`"auto"` becomes on or off there).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Spans {
    /// No spans.
    #[default]
    Off,
    /// Spans for a fraction of traces (1.0 = all), decided once per trace.
    Sampled(f64),
}

/// Engine configuration. Every bound is documented where it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The run this stream follows.
    pub run_id: String,
    /// Chat session of WebSocket sends (`{"op":"send","session_id":…}`).
    pub session_id: String,
    /// Which transport the shell uses.
    pub transport: Transport,
    /// A snapshot endpoint is configured.
    pub has_snapshot_url: bool,
    /// Sends are possible (a send URL, or the WebSocket transport).
    pub can_send: bool,
    /// "working…" after this long without a token while a reply is pending.
    pub stall_after_ms: Ms,
    /// No response / first byte for this long → retry.
    pub connect_timeout_ms: Ms,
    /// No byte at all for this long → reconnect (suspended while hidden).
    pub heartbeat_timeout_ms: Ms,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// A connection open this long (or that applied a new event) is healthy: attempts reset.
    pub healthy_after_ms: Ms,
    /// A gap not filled within this long → resume from the cursor.
    pub gap_timeout_ms: Ms,
    /// Reorder buffer bound (events held beyond a gap); full → resume from the cursor.
    pub reorder_capacity: usize,
    /// Job-only events parked until their job is mapped; full → the oldest is dropped and reported.
    pub park_capacity: usize,
    /// Largest SSE event / WebSocket frame; larger ones are discarded and reported.
    pub max_event_bytes: usize,
    /// Sends not yet accepted by the server; beyond it `send()` fails with `OutboxFull`.
    pub outbox_capacity: usize,
    /// Attempts per send before it is marked failed.
    pub send_max_attempts: u32,
    /// Failures without progress within `loop_guard_window_ms` that stop retrying.
    pub loop_guard_failures: usize,
    /// The window of the error-loop guard.
    pub loop_guard_window_ms: Ms,
    /// Cursor + state are persisted at most this often (and on demand at page hide).
    pub persist_interval_ms: Ms,
    /// Persist the cursor at all (`resume` ≠ `"none"`).
    pub persist: bool,
    /// Raw telemetry events held until drained; beyond it the oldest are dropped and counted.
    pub telemetry_capacity: usize,
    /// Performance spans.
    pub spans: Spans,
    /// WebSocket ping interval.
    pub ws_ping_interval_ms: Ms,
    /// Inter-arrival gap that ends the replay phase of a resumed connection.
    pub replay_quiet_ms: Ms,
}

impl Config {
    /// Defaults of API.md for `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            session_id: run_id.to_owned(),
            transport: Transport::Fetch,
            has_snapshot_url: false,
            can_send: false,
            stall_after_ms: 2000.0,
            connect_timeout_ms: 10_000.0,
            heartbeat_timeout_ms: 25_000.0,
            backoff: Backoff::default(),
            healthy_after_ms: 5000.0,
            gap_timeout_ms: 1500.0,
            reorder_capacity: 1024,
            park_capacity: 256,
            max_event_bytes: 1 << 20,
            outbox_capacity: 64,
            send_max_attempts: 6,
            loop_guard_failures: 10,
            loop_guard_window_ms: 60_000.0,
            persist_interval_ms: 1000.0,
            persist: true,
            telemetry_capacity: 1024,
            spans: Spans::Off,
            ws_ping_interval_ms: 10_000.0,
            replay_quiet_ms: 30.0,
        }
    }
}

/// Longest `Retry-After` honoured (5 min); longer values are clamped.
pub const MAX_RETRY_AFTER_MS: Ms = 300_000.0;

/// What the shell must do. Drain with [`Engine::poll_action`] after every input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open transport connection `conn`, resuming after `resume_from` (0 = from the start).
    /// Inputs about this connection carry `conn`; inputs of older connections are ignored.
    Connect {
        /// Connection number.
        conn: u64,
        /// The cursor: send as `Last-Event-ID` / `?last_event_id=` / `last_event_id` (0 = omit).
        resume_from: u64,
    },
    /// Abort connection `conn` and drop every later input from it.
    Disconnect {
        /// Connection number.
        conn: u64,
    },
    /// Send this text frame on WebSocket connection `conn`.
    WsSend {
        /// Connection number.
        conn: u64,
        /// The frame.
        text: String,
    },
    /// GET the snapshot endpoint and report with [`Engine::handle_snapshot`].
    FetchSnapshot,
    /// POST a chat send; report with [`Engine::handle_send_result`].
    Post {
        /// Idempotency key.
        client_request_id: String,
        /// Message text.
        content: String,
    },
    /// Store the state and this cursor together (they are consistent right now).
    Persist {
        /// The cursor to store.
        cursor: u64,
    },
    /// Call [`Engine::flush`] at the next animation frame.
    RequestFrame,
    /// Write this finished span to the Performance timeline (spans are on and sampled).
    Measure(SpanFields),
}

/// How a transport connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The response body ended / the server closed the socket cleanly.
    Eof,
    /// A network error.
    Network,
}

/// Outcome of a chat send request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendResult {
    /// HTTP status (`None` = network error).
    pub status: Option<u16>,
    /// `Retry-After` in ms, if the response had one.
    pub retry_after_ms: Option<Ms>,
    /// Response body (JSON `{message_id, run_id}` on 202).
    pub body: Option<String>,
}

/// Errors of the engine's own API calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// `send()` without a send URL or WebSocket transport.
    #[error("sending needs `sendUrl` or the websocket transport")]
    NoSendTarget,
    /// The outbox bound was reached.
    #[error("too many unsent messages ({0}); wait for some to be accepted")]
    OutboxFull(usize),
    /// The stream was closed with `close()`.
    #[error("the stream is closed")]
    Closed,
    /// Empty message.
    #[error("message content is empty")]
    EmptyMessage,
}

/// Connection status (API.md `StreamStatus.connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Connection {
    Idle,
    Connecting,
    Open,
    Reconnecting,
    Offline,
    Closed,
    Failed,
}

/// Activity (API.md `StreamStatus.activity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    /// No reply pending.
    Idle,
    /// A reply is pending and tokens are flowing.
    Streaming,
    /// A reply is pending and no token arrived for `stall_after_ms`.
    Working,
}

/// What the UI shows about the connection (API.md `StreamStatus`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Connection state.
    pub connection: Connection,
    /// Activity state.
    pub activity: Activity,
    /// Reconnect attempt, 0 when open.
    pub attempt: u32,
    /// Time until the next attempt, while waiting to reconnect.
    pub retry_in_ms: Option<f64>,
    /// Human-readable, never a token or header value.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Conn {
    Idle,
    /// Waiting for the response / socket open / `subscribed`.
    Connecting {
        since: Ms,
    },
    Open {
        opened_at: Ms,
    },
    Waiting {
        at: Ms,
    },
    Offline,
    Closed,
    Failed,
}

/// Per-connection bookkeeping.
#[derive(Debug, Clone, Default)]
struct Link {
    started_at: Ms,
    resumed: bool,
    last_byte_at: Option<Ms>,
    first_event_at: Option<Ms>,
    progressed: bool,
    healthy: bool,
    replaying: bool,
    last_event_at: Ms,
    replayed: u64,
    next_ping: Option<Ms>,
}

#[derive(Debug, Clone, PartialEq)]
enum SendState {
    Queued { due: Ms },
    InFlight,
}

#[derive(Debug, Clone)]
struct PendingSend {
    client_request_id: String,
    content: String,
    state: SendState,
    attempts: u32,
    unauthorized_retried: bool,
}

#[derive(Debug, Clone)]
struct SendTiming {
    sent_at: Ms,
    trace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reconcile {
    None,
    Fetching,
}

/// One run's stream, state, outbox and status. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    rng: Rng,
    state: RunState,
    parked: Parked,
    buffer: BTreeMap<u64, EventKind>,
    gap_deadline: Option<Ms>,
    gap_resyncs: (u64, u32),
    parser: SseParser,
    applied_scratch: Vec<Applied>,
    conn: Conn,
    conn_id: u64,
    link: Link,
    connects: u64,
    failures: u32,
    streak_free: bool,
    server_retry: Option<Ms>,
    guard: VecDeque<Ms>,
    unauthorized_retried: bool,
    online: bool,
    visible: bool,
    last_error: Option<String>,
    outbox: VecDeque<PendingSend>,
    sends: HashMap<String, SendTiming>,
    awaiting: VecDeque<String>,
    last_token_at: Ms,
    dirty: bool,
    frame_requested: bool,
    frame_events: u64,
    version: u64,
    persisted_cursor: u64,
    persist_due: Option<Ms>,
    metrics: RunMetrics,
    telemetry: Telemetry,
    actions: VecDeque<Action>,
    reconcile: Reconcile,
    run_trace: Option<String>,
    tick_at: Option<Ms>,
    stall_notified: bool,
    next_persist_at: Ms,
    /// A `snapshot` event replaced the state: job-only events the server had
    /// parked before it are invisible here, so reconcile once the run ends.
    snapshot_replaced: bool,
    /// Headers resolved for the current WebSocket (sent in subscribe and send frames).
    ws_headers: Option<serde_json::Map<String, Value>>,
}

impl Engine {
    /// A new engine. `seed` seeds jitter, sampling and request ids. `restored`
    /// is the state persisted by an earlier page (its cursor is where to resume).
    pub fn new(cfg: Config, seed: [u64; 2], restored: Option<RunState>) -> Self {
        let mut rng = Rng::new(seed);
        let mut state = match restored {
            Some(s) if s.run_id == cfg.run_id => s,
            _ => RunState::new(&cfg.run_id),
        };
        state.reindex();
        let run_trace = match cfg.spans {
            Spans::Sampled(rate) if rng.next_f64() < rate => Some(hex_id(&mut rng)),
            _ => None,
        };
        let persisted_cursor = state.cursor;
        // Optimistic messages a previous page had not delivered are sent again
        // (same client_request_id, so the server treats it as the same send).
        let outbox: VecDeque<PendingSend> = state
            .messages
            .iter_mut()
            .filter(|m| {
                m.message_id.is_none()
                    && matches!(m.status, MessageStatus::Queued | MessageStatus::Sending)
            })
            .filter_map(|m| {
                m.status = MessageStatus::Queued;
                Some(PendingSend {
                    client_request_id: m.client_request_id.clone()?,
                    content: m.content.clone(),
                    state: SendState::Queued { due: 0.0 },
                    attempts: 0,
                    unauthorized_retried: false,
                })
            })
            .take(cfg.outbox_capacity)
            .collect();
        let awaiting = outbox.iter().map(|s| s.client_request_id.clone()).collect();
        Self {
            parser: SseParser::new(cfg.max_event_bytes),
            telemetry: Telemetry::new(cfg.telemetry_capacity),
            cfg,
            rng,
            state,
            parked: Parked::default(),
            buffer: BTreeMap::new(),
            gap_deadline: None,
            gap_resyncs: (0, 0),
            applied_scratch: Vec::new(),
            conn: Conn::Idle,
            conn_id: 0,
            link: Link::default(),
            connects: 0,
            failures: 0,
            streak_free: false,
            server_retry: None,
            guard: VecDeque::new(),
            unauthorized_retried: false,
            online: true,
            visible: true,
            last_error: None,
            outbox,
            sends: HashMap::new(),
            awaiting,
            last_token_at: 0.0,
            dirty: true,
            frame_requested: false,
            frame_events: 0,
            version: 0,
            persisted_cursor,
            persist_due: None,
            metrics: RunMetrics::default(),
            actions: VecDeque::new(),
            reconcile: Reconcile::None,
            run_trace,
            tick_at: None,
            stall_notified: false,
            next_persist_at: 0.0,
            snapshot_replaced: false,
            ws_headers: None,
        }
    }

    // ----- read side -------------------------------------------------------

    /// The reduced state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The metrics.
    pub fn metrics(&self) -> &RunMetrics {
        &self.metrics
    }

    /// The visible-change counter (increases at each [`Engine::flush`] that had changes).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The cursor (highest contiguously applied event id).
    pub fn cursor(&self) -> u64 {
        self.state.cursor
    }

    /// Events held in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Job-only events parked.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Telemetry events dropped because nobody drained them in time.
    pub fn telemetry_dropped(&self) -> u64 {
        self.telemetry.dropped
    }

    /// Turns raw telemetry on (a listener exists) or off (no event objects are built).
    pub fn set_telemetry(&mut self, on: bool) {
        self.telemetry.enabled = on;
    }

    /// The status as of `now`.
    pub fn status(&self, now: Ms) -> StreamStatus {
        let connection = match self.conn {
            Conn::Idle => Connection::Idle,
            Conn::Connecting { .. } if self.connects <= 1 => Connection::Connecting,
            Conn::Connecting { .. } | Conn::Waiting { .. } => Connection::Reconnecting,
            Conn::Open { .. } => Connection::Open,
            Conn::Offline => Connection::Offline,
            Conn::Closed => Connection::Closed,
            Conn::Failed => Connection::Failed,
        };
        let retry_in_ms = match self.conn {
            Conn::Waiting { at } => Some((at - now).max(0.0).ceil()),
            _ => None,
        };
        let attempt = match self.conn {
            Conn::Open { .. } | Conn::Idle | Conn::Closed => 0,
            _ => self.failures,
        };
        StreamStatus {
            connection,
            activity: self.activity(now),
            attempt,
            retry_in_ms,
            last_error: self.last_error.clone(),
        }
    }

    /// Activity as of `now`: `working` exactly when `now - last token ≥ stall_after_ms`.
    pub fn activity(&self, now: Ms) -> Activity {
        if !self.reply_pending() {
            Activity::Idle
        } else if now - self.last_token_at >= self.cfg.stall_after_ms {
            Activity::Working
        } else {
            Activity::Streaming
        }
    }

    fn reply_pending(&self) -> bool {
        !self.awaiting.is_empty()
            || self
                .state
                .messages
                .iter()
                .any(|m| m.status == MessageStatus::Streaming)
    }

    // ----- outputs ---------------------------------------------------------

    /// The next action for the shell; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next raw telemetry event; call until `None` after every input.
    pub fn poll_telemetry(&mut self) -> Option<RuntimeEvent> {
        self.telemetry.pop()
    }

    /// The earliest time [`Engine::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Ms> {
        let mut t: Option<Ms> = None;
        let mut at = |x: Option<Ms>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Ms| t.min(x)));
            }
        };
        match self.conn {
            Conn::Connecting { since } => at(Some(since + self.cfg.connect_timeout_ms)),
            Conn::Open { opened_at } => {
                match self.link.last_byte_at {
                    None => at(Some(opened_at + self.cfg.connect_timeout_ms)),
                    Some(b) if self.visible => at(Some(b + self.cfg.heartbeat_timeout_ms)),
                    Some(_) => {}
                }
                if !self.link.healthy {
                    at(Some(opened_at + self.cfg.healthy_after_ms));
                }
                at(self.link.next_ping);
            }
            Conn::Waiting { at: w } => {
                at(Some(w));
                at(self.tick_at);
            }
            _ => {}
        }
        at(self.gap_deadline);
        at(self.persist_due);
        if self.reply_pending() {
            let stall = self.last_token_at + self.cfg.stall_after_ms;
            if !self.stall_notified {
                at(Some(stall));
            }
        }
        for s in &self.outbox {
            if let SendState::Queued { due } = s.state {
                if self.online && self.send_channel_ready() {
                    at(Some(due));
                }
            }
        }
        t
    }
}

fn hex_id(rng: &mut Rng) -> String {
    format!("{:016x}", rng.next_u64())
}

// ----- inputs -----------------------------------------------------------------
impl Engine {
    /// Starts streaming (from the restored cursor, if any).
    pub fn start(&mut self, now: Ms) {
        if matches!(self.conn, Conn::Idle) {
            if self.online {
                self.connect(now);
            } else {
                self.conn = Conn::Offline;
                self.mark_dirty();
            }
        }
        self.pump_sends(now);
    }

    /// Stops everything: the transport is dropped and nothing is retried.
    pub fn close(&mut self, now: Ms) {
        if matches!(self.conn, Conn::Closed) {
            return;
        }
        self.end_link(now, Termination::ClientClosed, None);
        self.conn = Conn::Closed;
        self.outbox.clear();
        self.gap_deadline = None;
        self.request_persist(now, true);
        self.mark_dirty();
    }

    /// Skips the backoff wait (a "retry" button); also leaves `failed` and `offline`.
    pub fn retry_now(&mut self, now: Ms) {
        match self.conn {
            Conn::Closed => {}
            Conn::Connecting { .. } | Conn::Open { .. } => {}
            Conn::Idle | Conn::Waiting { .. } | Conn::Failed | Conn::Offline => {
                self.guard.clear();
                self.unauthorized_retried = false;
                self.connect(now);
            }
        }
        for s in &mut self.outbox {
            if let SendState::Queued { due } = &mut s.state {
                *due = now;
            }
        }
        self.pump_sends(now);
    }

    /// The browser went online (`true`) or offline (`false`).
    pub fn handle_online(&mut self, now: Ms, online: bool) {
        if self.online == online {
            return;
        }
        self.online = online;
        if online {
            if matches!(self.conn, Conn::Offline) {
                self.connect(now);
            }
            self.pump_sends(now);
        } else if matches!(
            self.conn,
            Conn::Connecting { .. } | Conn::Open { .. } | Conn::Waiting { .. }
        ) {
            // (Not started yet: `start()` sees `online == false` and goes offline itself.)
            self.end_link(now, Termination::Offline, Some("offline".into()));
            self.conn = Conn::Offline;
        }
        self.mark_dirty();
    }

    /// The page became visible (`true`) or hidden (`false`).
    pub fn handle_visibility(&mut self, now: Ms, visible: bool) {
        self.visible = visible;
        if !visible {
            self.request_persist(now, true);
            return;
        }
        match self.conn {
            Conn::Waiting { .. } => self.connect(now),
            Conn::Open { .. } => {
                if let Some(b) = self.link.last_byte_at {
                    if now - b >= self.cfg.heartbeat_timeout_ms {
                        self.fail(
                            now,
                            Termination::HeartbeatTimeout,
                            None,
                            "no data from the server".into(),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Response headers of connection `conn` (fetch), or its `open` event (EventSource: 200).
    /// `event_stream`: the content type is `text/event-stream`.
    pub fn handle_response(
        &mut self,
        now: Ms,
        conn: u64,
        status: u16,
        retry_after_ms: Option<Ms>,
        event_stream: bool,
    ) {
        if conn != self.conn_id || !matches!(self.conn, Conn::Connecting { .. }) {
            return;
        }
        match status {
            204 => {
                self.end_link(now, Termination::NoContent, None);
                self.conn = Conn::Closed;
                self.after_finish(now);
                self.mark_dirty();
            }
            200..=299 if event_stream => {
                self.unauthorized_retried = false;
                self.opened(now);
            }
            200..=299 => self.fail(
                now,
                Termination::ProtocolError,
                None,
                format!("HTTP {status} is not an event stream"),
            ),
            401 if !self.unauthorized_retried => {
                // The headers function is called once more (a refreshed token) before giving up.
                self.unauthorized_retried = true;
                self.end_link(now, Termination::Http4xx, Some("HTTP 401".into()));
                self.connect(now);
            }
            408 | 425 | 429 => self.fail(
                now,
                Termination::Http4xx,
                retry_after_ms,
                format!("HTTP {status}"),
            ),
            500..=599 => self.fail(
                now,
                Termination::Http5xx,
                retry_after_ms,
                format!("HTTP {status}"),
            ),
            400..=499 => self.fail_final(now, Termination::Http4xx, final_reason(status)),
            _ => self.fail(
                now,
                Termination::ProtocolError,
                retry_after_ms,
                format!("HTTP {status}"),
            ),
        }
    }

    /// Body bytes of fetch connection `conn`.
    pub fn handle_bytes(&mut self, now: Ms, conn: u64, bytes: &[u8]) {
        if !self.accepts(conn) {
            return;
        }
        self.link.last_byte_at = Some(now);
        // Events are handled as the parser completes them (no per-chunk list).
        // The parser is moved out for the duration so the callback can use `self`.
        let mut parser = std::mem::replace(&mut self.parser, SseParser::new(0));
        parser.feed(bytes, &mut |item| {
            if !self.accepts(conn) {
                return;
            }
            match item {
                SseItem::Event(ev) => self.handle_frame(now, &ev.data),
                SseItem::Retry(ms) => self.server_retry = Some(ms as f64),
                SseItem::Comment => {}
                SseItem::TooLarge(n) => self.protocol_error(now, ProtocolError::TooLarge(n)),
            }
        });
        if self.conn_id != conn {
            // A resync started a new connection mid-chunk: it starts a fresh stream.
            parser.reset_stream();
        }
        self.parser = parser;
    }

    /// An event dispatched by native `EventSource` connection `conn` (its `data`).
    pub fn handle_sse_event(&mut self, now: Ms, conn: u64, data: &str) {
        if !self.accepts(conn) {
            return;
        }
        self.link.last_byte_at = Some(now);
        if matches!(self.conn, Conn::Connecting { .. }) {
            self.opened(now);
        }
        if data.len() > self.cfg.max_event_bytes {
            self.protocol_error(now, ProtocolError::TooLarge(data.len()));
            return;
        }
        self.handle_frame(now, data);
    }

    /// WebSocket connection `conn` is open: subscribe (resuming from the cursor).
    /// `headers` (the `headers` option, resolved for this connection) travel in
    /// the subscribe frame and in every send on this socket, since a browser
    /// WebSocket cannot set request headers; empty = none.
    pub fn handle_ws_open(&mut self, now: Ms, conn: u64, headers: Vec<(String, String)>) {
        if conn != self.conn_id || !matches!(self.conn, Conn::Connecting { .. }) {
            return;
        }
        self.link.last_byte_at = Some(now);
        self.ws_headers = if headers.is_empty() {
            None
        } else {
            Some(
                headers
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            )
        };
        let mut sub = serde_json::Map::new();
        sub.insert("op".into(), "subscribe".into());
        sub.insert("run_id".into(), self.cfg.run_id.clone().into());
        if self.state.cursor > 0 {
            sub.insert("last_event_id".into(), self.state.cursor.into());
        }
        if let Some(h) = &self.ws_headers {
            sub.insert("headers".into(), Value::Object(h.clone()));
        }
        self.actions.push_back(Action::WsSend {
            conn,
            text: Value::Object(sub).to_string(),
        });
    }

    /// A text frame on WebSocket connection `conn`.
    pub fn handle_ws_text(&mut self, now: Ms, conn: u64, text: &str) {
        if !self.accepts(conn) {
            return;
        }
        self.link.last_byte_at = Some(now);
        if text.len() > self.cfg.max_event_bytes {
            self.protocol_error(now, ProtocolError::TooLarge(text.len()));
            return;
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.protocol_error(now, ProtocolError::NotJson(e.to_string())),
        };
        let op = v.get("op").and_then(Value::as_str).unwrap_or("").to_owned();
        match op.as_str() {
            "event" => {
                if matches!(self.conn, Conn::Connecting { .. }) {
                    self.opened(now);
                }
                let Some(ev) = v.get("event").cloned() else {
                    return self.protocol_error(now, ProtocolError::MissingField("event"));
                };
                let r = decode_envelope_value(ev, &self.cfg.run_id);
                self.handle_decoded(now, r);
            }
            "snapshot" => {
                if matches!(self.conn, Conn::Connecting { .. }) {
                    self.opened(now);
                }
                match parse_snapshot_body(v, &self.cfg.run_id) {
                    Ok((id, st)) => {
                        self.note_event_arrival(now);
                        self.apply_snapshot(now, id, st)
                    }
                    Err(e) => self.protocol_error(now, e),
                }
            }
            "subscribed" => {
                if matches!(self.conn, Conn::Connecting { .. }) {
                    self.opened(now);
                }
            }
            "pong" => {}
            "ack" => {
                let crid = v.get("client_request_id").and_then(Value::as_str);
                if let Some(crid) = crid {
                    let crid = crid.to_owned();
                    self.send_accepted(now, &crid, v.get("message_id").and_then(Value::as_str));
                }
            }
            "error" => {
                let code = v.get("code").and_then(Value::as_str).unwrap_or("");
                let msg = v
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                let crid = v
                    .get("client_request_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(crid) = crid {
                    self.send_failed_final(now, &crid, format!("{code}: {msg}"));
                } else if code == "not_found" {
                    self.fail_final(now, Termination::Http4xx, "run not found".into());
                } else {
                    self.fail(
                        now,
                        Termination::ProtocolError,
                        None,
                        format!("server error {code}: {msg}"),
                    );
                }
            }
            _ => self.protocol_error(now, ProtocolError::UnknownOp),
        }
    }

    /// A binary frame on WebSocket connection `conn` (a protocol error).
    pub fn handle_ws_binary(&mut self, now: Ms, conn: u64) {
        if !self.accepts(conn) {
            return;
        }
        self.link.last_byte_at = Some(now);
        self.protocol_error(now, ProtocolError::BinaryFrame);
    }

    /// Connection `conn` ended.
    pub fn handle_closed(&mut self, now: Ms, conn: u64, cause: CloseCause) {
        if !self.accepts(conn) {
            return;
        }
        let (t, msg) = match cause {
            CloseCause::Eof => (Termination::ServerClosed, "the server closed the stream"),
            CloseCause::Network => (Termination::NetworkError, "network error"),
        };
        self.fail(now, t, None, msg.into());
    }

    /// Snapshot endpoint answered: `Ok(body)` for a 200, `Err(reason)` otherwise.
    pub fn handle_snapshot(&mut self, now: Ms, result: Result<&str, String>) {
        let parsed = result.and_then(|body| {
            serde_json::from_str::<Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| parse_snapshot_body(v, &self.cfg.run_id).map_err(|e| e.to_string()))
        });
        match parsed {
            Ok((id, st)) if self.reconcile == Reconcile::Fetching && id >= self.state.cursor => {
                // Final reconciliation: the endpoint's state is authoritative.
                self.install_snapshot(id, st);
            }
            Ok((id, st)) => self.apply_snapshot(now, id, st),
            Err(e) => {
                self.last_error = Some(format!("snapshot unavailable: {e}"));
            }
        }
        if self.reconcile == Reconcile::Fetching {
            self.reconcile = Reconcile::None;
            if self.state.is_finished()
                && (self.state.non_terminal() > 0 || !self.parked.is_empty())
            {
                self.state.mark_unknown();
                self.parked.clear();
            }
        }
        self.mark_dirty();
    }

    /// Sends a chat message: the optimistic message shows at once; returns its `client_request_id`.
    pub fn send(&mut self, now: Ms, content: &str) -> Result<String, EngineError> {
        if !self.cfg.can_send {
            return Err(EngineError::NoSendTarget);
        }
        if matches!(self.conn, Conn::Closed) {
            return Err(EngineError::Closed);
        }
        if content.is_empty() {
            return Err(EngineError::EmptyMessage);
        }
        if self.outbox.len() >= self.cfg.outbox_capacity {
            return Err(EngineError::OutboxFull(self.outbox.len()));
        }
        let crid = self.rng.uuid_v4();
        self.state.insert_message(Message {
            message_id: None,
            client_request_id: Some(crid.clone()),
            reply_to: None,
            role: "user".into(),
            content: content.to_owned(),
            status: MessageStatus::Queued,
        });
        let trace = match self.cfg.spans {
            Spans::Sampled(rate) if self.rng.next_f64() < rate => Some(hex_id(&mut self.rng)),
            _ => None,
        };
        self.sends.insert(
            crid.clone(),
            SendTiming {
                sent_at: now,
                trace,
            },
        );
        self.metric_entry(&crid);
        self.outbox.push_back(PendingSend {
            client_request_id: crid.clone(),
            content: content.to_owned(),
            state: SendState::Queued { due: now },
            attempts: 0,
            unauthorized_retried: false,
        });
        self.awaiting.push_back(crid.clone());
        while self.awaiting.len() > MAX_MESSAGE_METRICS {
            self.awaiting.pop_front();
        }
        self.last_token_at = now;
        self.stall_notified = false;
        self.pump_sends(now);
        self.mark_dirty();
        Ok(crid)
    }

    /// Result of the POST for `client_request_id`.
    pub fn handle_send_result(&mut self, now: Ms, client_request_id: &str, r: SendResult) {
        let Some(pos) = self
            .outbox
            .iter()
            .position(|s| s.client_request_id == client_request_id)
        else {
            return;
        };
        match r.status {
            Some(200..=299) => {
                let body: Option<Value> =
                    r.body.as_deref().and_then(|b| serde_json::from_str(b).ok());
                let mid = body
                    .as_ref()
                    .and_then(|b| b.get("message_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.send_accepted(now, client_request_id, mid.as_deref());
            }
            Some(401) => {
                let retried = self.outbox.get(pos).is_some_and(|s| s.unauthorized_retried);
                if retried {
                    self.send_failed_final(now, client_request_id, "HTTP 401".into());
                } else if let Some(s) = self.outbox.get_mut(pos) {
                    s.unauthorized_retried = true;
                    s.state = SendState::Queued { due: now };
                    self.pump_sends(now);
                }
            }
            None | Some(408 | 425 | 429 | 500..=599) => {
                let max_attempts = self.cfg.send_max_attempts;
                let b = self.cfg.backoff;
                let jitter = self.rng.next_f64();
                let Some(s) = self.outbox.get_mut(pos) else {
                    return;
                };
                if s.attempts >= max_attempts {
                    let why = match r.status {
                        Some(c) => format!("HTTP {c} after {max_attempts} attempts"),
                        None => format!("network error after {max_attempts} attempts"),
                    };
                    self.send_failed_final(now, client_request_id, why);
                    return;
                }
                let exp = s.attempts.saturating_sub(1).min(30);
                let cap = (b.initial_ms * b.multiplier.powi(exp as i32)).min(b.max_ms);
                let mut delay = jitter * cap;
                if let Some(ra) = r.retry_after_ms {
                    delay = delay.max(ra.min(MAX_RETRY_AFTER_MS));
                }
                s.state = SendState::Queued { due: now + delay };
                if let Some(m) = self.state.message_by_request(client_request_id) {
                    m.status = MessageStatus::Queued;
                }
                self.mark_dirty();
            }
            Some(code) => self.send_failed_final(now, client_request_id, format!("HTTP {code}")),
        }
    }

    /// Advances timers; call at (or after) [`Engine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Ms) {
        match self.conn {
            Conn::Connecting { since } if now >= since + self.cfg.connect_timeout_ms => {
                self.fail(
                    now,
                    Termination::ConnectTimeout,
                    None,
                    "connection timed out".into(),
                );
            }
            Conn::Open { opened_at } => {
                if !self.link.healthy && now >= opened_at + self.cfg.healthy_after_ms {
                    self.link.healthy = true;
                    self.failures = 0;
                    self.streak_free = false;
                    self.mark_dirty();
                }
                match self.link.last_byte_at {
                    None if now >= opened_at + self.cfg.connect_timeout_ms => {
                        self.fail(
                            now,
                            Termination::ConnectTimeout,
                            None,
                            "no data from the server".into(),
                        );
                    }
                    Some(b) if self.visible && now >= b + self.cfg.heartbeat_timeout_ms => {
                        self.fail(
                            now,
                            Termination::HeartbeatTimeout,
                            None,
                            "no heartbeat from the server".into(),
                        );
                    }
                    _ => {}
                }
                if let Some(p) = self.link.next_ping {
                    if now >= p && matches!(self.conn, Conn::Open { .. }) {
                        self.link.next_ping = Some(now + self.cfg.ws_ping_interval_ms);
                        self.actions.push_back(Action::WsSend {
                            conn: self.conn_id,
                            text: format!("{{\"op\":\"ping\",\"t\":{}}}", now.round()),
                        });
                    }
                }
            }
            Conn::Waiting { at } => {
                if now >= at {
                    self.connect(now);
                } else if self.tick_at.is_some_and(|t| now >= t) {
                    self.tick_at = Some(now + 1000.0);
                    self.mark_dirty();
                }
            }
            _ => {}
        }
        if self.gap_deadline.is_some_and(|g| now >= g) {
            self.gap_deadline = None;
            self.resync(now, "a gap in event ids did not fill in time");
        }
        if self.persist_due.is_some_and(|p| now >= p) {
            self.persist_due = None;
            self.request_persist(now, true);
        }
        if !self.stall_notified
            && self.reply_pending()
            && now >= self.last_token_at + self.cfg.stall_after_ms
        {
            self.stall_notified = true;
            self.mark_dirty();
        }
        self.pump_sends(now);
    }

    /// Called at an animation frame after [`Action::RequestFrame`]: returns
    /// `true` (and bumps `version`) when there is a visible change to render.
    pub fn flush(&mut self, now: Ms) -> bool {
        self.frame_requested = false;
        self.request_persist(now, false);
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        self.version += 1;
        if self.frame_events > 0 {
            let n = self.frame_events as f64;
            self.telemetry
                .metric(EventClass::Histogram, Metric::UiFlushEvents, n, now, &[]);
            self.frame_events = 0;
        }
        true
    }

    /// Asks for a [`Action::Persist`] now if the cursor moved (page hide / unload).
    pub fn persist_now(&mut self, now: Ms) {
        self.request_persist(now, true);
    }
}

// ----- internals ------------------------------------------------------------------
impl Engine {
    fn accepts(&self, conn: u64) -> bool {
        conn == self.conn_id && matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. })
    }

    fn mark_dirty(&mut self) {
        self.dirty = true;
        if !self.frame_requested {
            self.frame_requested = true;
            self.actions.push_back(Action::RequestFrame);
        }
    }

    fn connect(&mut self, now: Ms) {
        if matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. }) {
            self.end_link(now, Termination::RetryNow, None);
        }
        self.conn_id += 1;
        self.connects += 1;
        if self.connects > 1 {
            self.metrics.reconnects += 1;
            self.telemetry
                .metric(EventClass::Counter, Metric::Reconnect, 1.0, now, &[]);
        }
        self.telemetry
            .metric(EventClass::Counter, Metric::Connect, 1.0, now, &[]);
        self.conn = Conn::Connecting { since: now };
        self.tick_at = None;
        self.parser.reset_stream();
        self.link = Link {
            started_at: now,
            resumed: self.state.cursor > 0,
            ..Link::default()
        };
        self.actions.push_back(Action::Connect {
            conn: self.conn_id,
            resume_from: self.state.cursor,
        });
        self.mark_dirty();
    }

    fn opened(&mut self, now: Ms) {
        self.conn = Conn::Open { opened_at: now };
        self.last_error = None;
        if self.cfg.transport == Transport::WebSocket {
            self.link.next_ping = Some(now + self.cfg.ws_ping_interval_ms);
            self.pump_sends(now);
        }
        self.mark_dirty();
    }

    /// Ends the current link (if any) with `reason`: disconnect, count, span.
    fn end_link(&mut self, now: Ms, reason: Termination, error: Option<String>) {
        if !matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. }) {
            return;
        }
        self.actions
            .push_back(Action::Disconnect { conn: self.conn_id });
        *self
            .metrics
            .terminations
            .entry(reason.as_str().to_owned())
            .or_insert(0) += 1;
        self.telemetry.metric(
            EventClass::Counter,
            Metric::Termination,
            1.0,
            now,
            &[("reason", reason.as_str())],
        );
        self.end_replay(now);
        if self.link.first_event_at.is_none() {
            let ok = matches!(
                reason,
                Termination::RunCompleted | Termination::ClientClosed | Termination::NoContent
            );
            let status = if ok {
                SpanStatus::Canceled
            } else {
                SpanStatus::Error
            };
            let f = SpanFields {
                error_kind: Some(reason.as_str()),
                error,
                attempt: Some(self.connects),
                ..SpanFields::new("connect", self.link.started_at, now, status)
            };
            self.span(self.run_trace.clone(), f);
        }
        self.buffer.clear();
        self.gap_deadline = None;
    }

    /// A transient failure: back off and reconnect (or stop if looping / offline).
    fn fail(&mut self, now: Ms, reason: Termination, retry_after: Option<Ms>, msg: String) {
        let progressed = self.link.progressed;
        let healthy = self.link.healthy || progressed;
        self.end_link(now, reason, Some(msg.clone()));
        self.last_error = Some(msg);
        if healthy {
            self.failures = 0;
            self.streak_free = true;
            self.guard.clear();
        } else {
            self.guard.push_back(now);
            while self
                .guard
                .front()
                .is_some_and(|&t| now - t > self.cfg.loop_guard_window_ms)
            {
                self.guard.pop_front();
            }
            if self.guard.len() >= self.cfg.loop_guard_failures {
                self.conn = Conn::Failed;
                *self
                    .metrics
                    .terminations
                    .entry(Termination::ErrorLoop.as_str().to_owned())
                    .or_insert(0) += 1;
                self.last_error = Some(format!(
                    "stopped after {} failed attempts in {} s ({}); retry to continue",
                    self.guard.len(),
                    (self.cfg.loop_guard_window_ms / 1000.0).round(),
                    reason.as_str()
                ));
                self.mark_dirty();
                return;
            }
        }
        self.failures = self.failures.saturating_add(1);
        if !self.online {
            self.conn = Conn::Offline;
            self.mark_dirty();
            return;
        }
        let delay = self.backoff_delay(retry_after);
        self.conn = Conn::Waiting { at: now + delay };
        self.tick_at = Some(now + 1000.0);
        self.mark_dirty();
    }

    /// Full-jitter backoff; see API.md `backoff`.
    fn backoff_delay(&mut self, retry_after: Option<Ms>) -> Ms {
        let b = self.cfg.backoff;
        let r = self.rng.next_f64();
        let real = if self.streak_free {
            self.failures.saturating_sub(1)
        } else {
            self.failures
        };
        let server = self.server_retry.map(|s| s.min(b.max_ms));
        let mut delay = if real == 0 {
            match server {
                Some(s) => s,
                None => r * 100.0,
            }
        } else {
            let exp = (real - 1).min(30) as i32;
            let cap = (b.initial_ms * b.multiplier.max(1.0).powi(exp)).min(b.max_ms);
            (r * cap).max(server.unwrap_or(0.0))
        };
        if let Some(ra) = retry_after {
            delay = delay.max(ra.clamp(0.0, MAX_RETRY_AFTER_MS));
        }
        delay
    }

    fn fail_final(&mut self, now: Ms, reason: Termination, msg: String) {
        self.end_link(now, reason, Some(msg.clone()));
        self.last_error = Some(msg);
        self.conn = Conn::Failed;
        self.mark_dirty();
    }

    fn protocol_error(&mut self, now: Ms, e: ProtocolError) {
        self.metrics.protocol_errors += 1;
        *self
            .metrics
            .protocol_errors_by_kind
            .entry(e.kind().to_owned())
            .or_insert(0) += 1;
        self.telemetry.metric(
            EventClass::Counter,
            Metric::ProtocolError,
            1.0,
            now,
            &[("kind", e.kind())],
        );
        self.mark_dirty();
    }

    fn handle_frame(&mut self, now: Ms, text: &str) {
        let r = decode_envelope(text, &self.cfg.run_id);
        self.handle_decoded(now, r);
    }

    fn note_event_arrival(&mut self, now: Ms) {
        if self.link.first_event_at.is_none() {
            self.link.first_event_at = Some(now);
            let ttfe = now - self.link.started_at;
            self.metrics.time_to_first_event_ms = Some(ttfe);
            self.telemetry.metric(
                EventClass::Histogram,
                Metric::TimeToFirstEvent,
                ttfe,
                now,
                &[],
            );
            let f = SpanFields {
                attempt: Some(self.connects),
                ..SpanFields::new("connect", self.link.started_at, now, SpanStatus::Ok)
            };
            self.span(self.run_trace.clone(), f);
            self.link.replaying = self.link.resumed;
        } else if self.link.replaying && now - self.link.last_event_at >= self.cfg.replay_quiet_ms {
            self.end_replay(now);
        }
        self.link.last_event_at = now;
    }

    fn end_replay(&mut self, _now: Ms) {
        if !self.link.replaying {
            return;
        }
        self.link.replaying = false;
        let end = self.link.last_event_at;
        let n = self.link.replayed;
        self.telemetry.metric(
            EventClass::Histogram,
            Metric::ReplayEvents,
            n as f64,
            end,
            &[],
        );
        if let Some(start) = self.link.first_event_at {
            let f = SpanFields {
                events: Some(n),
                ..SpanFields::new(
                    "replay",
                    self.link.started_at,
                    end.max(start),
                    SpanStatus::Ok,
                )
            };
            self.span(self.run_trace.clone(), f);
        }
    }

    fn handle_decoded(&mut self, now: Ms, r: Result<Envelope, ProtocolError>) {
        match r {
            Ok(env) => {
                self.note_event_arrival(now);
                match env.kind {
                    EventKind::Snapshot(st) => self.apply_snapshot(now, env.event_id, *st),
                    kind => self.offer(now, env.event_id, kind),
                }
            }
            Err(e) => {
                if let ProtocolError::InvalidPayload { event_id, .. } = &e {
                    // The id is consumed so the log can move on; the event has no effect.
                    // (An invalid event with an id already applied consumes nothing.)
                    let id = *event_id;
                    self.note_event_arrival(now);
                    self.protocol_error(now, e);
                    if id > self.state.cursor && !self.buffer.contains_key(&id) {
                        self.offer(now, id, EventKind::Unknown);
                    }
                } else {
                    self.protocol_error(now, e);
                }
            }
        }
    }

    /// Exactly-once, in-order: duplicate, apply (+ drain), or hold beyond a gap.
    fn offer(&mut self, now: Ms, id: u64, kind: EventKind) {
        let cursor = self.state.cursor;
        if id <= cursor || self.buffer.contains_key(&id) {
            self.metrics.duplicates_dropped += 1;
            self.telemetry
                .metric(EventClass::Counter, Metric::Duplicate, 1.0, now, &[]);
            self.mark_dirty();
            return;
        }
        if id == cursor + 1 {
            self.apply(now, id, kind);
            self.drain(now);
            return;
        }
        if self.buffer.len() >= self.cfg.reorder_capacity {
            self.resync(now, "reorder buffer full");
            return;
        }
        self.metrics.out_of_order += 1;
        self.telemetry
            .metric(EventClass::Counter, Metric::OutOfOrder, 1.0, now, &[]);
        self.buffer.insert(id, kind);
        if self.gap_deadline.is_none() {
            self.gap_deadline = Some(now + self.cfg.gap_timeout_ms);
        }
        self.mark_dirty();
    }

    fn drain(&mut self, now: Ms) {
        while let Some(entry) = self.buffer.first_entry() {
            if *entry.key() != self.state.cursor + 1 {
                break;
            }
            let (id, kind) = entry.remove_entry();
            self.apply(now, id, kind);
        }
        self.gap_deadline = if self.buffer.is_empty() {
            None
        } else {
            Some(now + self.cfg.gap_timeout_ms)
        };
    }

    fn apply(&mut self, now: Ms, id: u64, kind: EventKind) {
        let mut out = std::mem::take(&mut self.applied_scratch);
        let r = self
            .state
            .apply(id, kind, &mut self.parked, self.cfg.park_capacity, &mut out);
        self.metrics.events_applied += 1;
        self.frame_events += 1;
        self.link.progressed = true;
        if self.link.replaying {
            self.link.replayed += 1;
            self.metrics.events_replayed += 1;
        }
        if let Err(e) = r {
            self.protocol_error(now, e);
        }
        for a in out.drain(..) {
            self.on_applied(now, a);
        }
        self.applied_scratch = out;
        self.mark_dirty();
    }

    fn on_applied(&mut self, now: Ms, a: Applied) {
        match a {
            Applied::ToolSeen => self.metrics.tool_calls += 1,
            Applied::ToolCompleted { ok, first_seen } => {
                if first_seen {
                    self.metrics.tool_calls += 1;
                }
                if !ok {
                    self.metrics.tool_errors += 1;
                    self.telemetry
                        .metric(EventClass::Counter, Metric::ToolError, 1.0, now, &[]);
                }
            }
            Applied::Token { reply_to } => {
                self.last_token_at = now;
                self.stall_notified = false;
                if let Some(crid) = reply_to {
                    let sent = self.sends.get(&crid).map(|s| s.sent_at);
                    if let (Some(sent), Some(m)) = (sent, self.metrics.messages.get_mut(&crid)) {
                        m.tokens += 1;
                        if m.ttft_ms.is_none() {
                            let ttft = now - sent;
                            m.ttft_ms = Some(ttft);
                            self.telemetry.metric(
                                EventClass::Histogram,
                                Metric::MessageTtft,
                                ttft,
                                now,
                                &[],
                            );
                        }
                    }
                }
            }
            Applied::MessageDone { reply_to, fallback } => {
                let Some(crid) = reply_to else { return };
                self.awaiting.retain(|c| c != &crid);
                let timing = self.sends.remove(&crid);
                if let (Some(t), Some(m)) = (timing, self.metrics.messages.get_mut(&crid)) {
                    let d = now - t.sent_at;
                    m.duration_ms = Some(d);
                    m.fallback = fallback;
                    let (ttfb, ttft) = (m.ttfb_ms, m.ttft_ms);
                    self.telemetry.metric(
                        EventClass::Histogram,
                        Metric::MessageDuration,
                        d,
                        now,
                        &[],
                    );
                    let f = SpanFields {
                        ttfb_ms: ttfb,
                        ttft_ms: ttft,
                        client_request_id: Some(crid),
                        ..SpanFields::new("message", t.sent_at, now, SpanStatus::Ok)
                    };
                    self.span(t.trace, f);
                }
            }
            Applied::Echo { client_request_id } => {
                if let Some(pos) = self
                    .outbox
                    .iter()
                    .position(|s| s.client_request_id == client_request_id)
                {
                    // The echo proves the server has it: no further attempts needed.
                    self.record_ttfb(now, &client_request_id);
                    self.outbox.remove(pos);
                }
            }
            Applied::RunCompleted => {
                self.end_link(now, Termination::RunCompleted, None);
                self.conn = Conn::Closed;
                self.after_finish(now);
            }
        }
    }

    /// After the run finished: every worker and tool must reach a terminal status.
    fn after_finish(&mut self, now: Ms) {
        self.request_persist(now, true);
        if self.state.non_terminal() == 0 && self.parked.is_empty() && !self.snapshot_replaced {
            return;
        }
        if self.cfg.has_snapshot_url {
            if self.reconcile == Reconcile::None {
                self.reconcile = Reconcile::Fetching;
                self.actions.push_back(Action::FetchSnapshot);
            }
        } else if self.state.is_finished() {
            self.state.mark_unknown();
            self.parked.clear();
        }
    }

    /// Replaces the state with snapshot `st` as of `id` (parked events are covered by it).
    fn install_snapshot(&mut self, id: u64, mut st: RunState) {
        st.cursor = id;
        st.run_id = self.cfg.run_id.clone();
        self.state.replace_with(st);
        self.parked.clear();
    }

    fn apply_snapshot(&mut self, now: Ms, id: u64, st: RunState) {
        if id <= self.state.cursor {
            self.metrics.duplicates_dropped += 1;
            return;
        }
        self.install_snapshot(id, st);
        self.snapshot_replaced = true;
        self.buffer = self.buffer.split_off(&(id + 1));
        self.link.progressed = true;
        self.drain(now);
        if self.state.is_finished() {
            self.end_link(now, Termination::RunCompleted, None);
            self.conn = Conn::Closed;
            self.after_finish(now);
        }
        self.mark_dirty();
    }

    /// Drops the current link and resumes from the cursor (gap or full buffer).
    fn resync(&mut self, now: Ms, why: &str) {
        let cursor = self.state.cursor;
        if self.gap_resyncs.0 == cursor {
            self.gap_resyncs.1 += 1;
        } else {
            self.gap_resyncs = (cursor, 1);
        }
        if self.gap_resyncs.1 > 2 && self.cfg.has_snapshot_url {
            // Replay could not fill the gap twice: ask for the authoritative state.
            self.actions.push_back(Action::FetchSnapshot);
            self.gap_resyncs.1 = 0;
        }
        if matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. }) {
            let healthy = self.link.healthy || self.link.progressed;
            self.end_link(now, Termination::Resync, Some(why.to_owned()));
            if healthy {
                self.failures = 0;
                self.streak_free = true;
            }
            self.connect(now);
        } else {
            self.buffer.clear();
        }
    }

    fn request_persist(&mut self, now: Ms, force: bool) {
        if !self.cfg.persist || self.state.cursor == self.persisted_cursor {
            return;
        }
        let due = self.persist_due.unwrap_or(now);
        if force || now >= due {
            self.persisted_cursor = self.state.cursor;
            self.persist_due = None;
            self.actions.push_back(Action::Persist {
                cursor: self.state.cursor,
            });
            self.next_persist_at = now + self.cfg.persist_interval_ms;
        } else if self.persist_due.is_none() {
            self.persist_due = Some(self.next_persist_at.max(now));
        }
    }

    fn send_channel_ready(&self) -> bool {
        match self.cfg.transport {
            Transport::WebSocket => matches!(self.conn, Conn::Open { .. }),
            _ => true,
        }
    }

    /// Starts every queued send that is due (oldest first).
    fn pump_sends(&mut self, now: Ms) {
        if !self.online || !self.send_channel_ready() {
            return;
        }
        let ws = self.cfg.transport == Transport::WebSocket;
        let conn = self.conn_id;
        let mut changed = Vec::new();
        for s in &mut self.outbox {
            let SendState::Queued { due } = s.state else {
                continue;
            };
            if due > now {
                continue;
            }
            s.state = SendState::InFlight;
            s.attempts += 1;
            changed.push(s.client_request_id.clone());
            if ws {
                let mut frame = serde_json::json!({
                    "op": "send",
                    "session_id": self.cfg.session_id,
                    "client_request_id": s.client_request_id,
                    "content": s.content,
                });
                if let (Some(h), Some(o)) = (&self.ws_headers, frame.as_object_mut()) {
                    o.insert("headers".into(), Value::Object(h.clone()));
                }
                let text = frame.to_string();
                self.actions.push_back(Action::WsSend { conn, text });
            } else {
                self.actions.push_back(Action::Post {
                    client_request_id: s.client_request_id.clone(),
                    content: s.content.clone(),
                });
            }
        }
        for crid in changed {
            if let Some(m) = self.state.message_by_request(&crid) {
                if m.status == MessageStatus::Queued {
                    m.status = MessageStatus::Sending;
                }
            }
            self.mark_dirty();
        }
    }

    fn record_ttfb(&mut self, now: Ms, crid: &str) {
        let sent = self.sends.get(crid).map(|s| s.sent_at);
        if let (Some(sent), Some(m)) = (sent, self.metrics.messages.get_mut(crid)) {
            if m.ttfb_ms.is_none() {
                let v = now - sent;
                m.ttfb_ms = Some(v);
                self.telemetry
                    .metric(EventClass::Histogram, Metric::MessageTtfb, v, now, &[]);
            }
        }
    }

    fn send_accepted(&mut self, now: Ms, crid: &str, message_id: Option<&str>) {
        self.record_ttfb(now, crid);
        self.outbox.retain(|s| s.client_request_id != crid);
        if let Some(m) = self.state.message_by_request(crid) {
            if matches!(m.status, MessageStatus::Queued | MessageStatus::Sending) {
                m.status = MessageStatus::Sent;
            }
            if m.message_id.is_none() {
                if let Some(id) = message_id {
                    m.message_id = Some(id.to_owned());
                }
            }
        }
        self.state.reindex();
        self.mark_dirty();
    }

    fn send_failed_final(&mut self, now: Ms, crid: &str, why: String) {
        self.outbox.retain(|s| s.client_request_id != crid);
        self.awaiting.retain(|c| c != crid);
        if let Some(m) = self.state.message_by_request(crid) {
            if m.message_id.is_none() {
                m.status = MessageStatus::Failed;
            }
        }
        if let Some(t) = self.sends.remove(crid) {
            let f = SpanFields {
                error_kind: Some("send_failed"),
                error: Some(why.clone()),
                client_request_id: Some(crid.to_owned()),
                ..SpanFields::new("message", t.sent_at, now, SpanStatus::Error)
            };
            self.span(t.trace, f);
        }
        self.last_error = Some(format!("message not sent: {why}"));
        self.mark_dirty();
    }

    fn metric_entry(&mut self, crid: &str) {
        while self.metrics.messages.len() >= MAX_MESSAGE_METRICS {
            // Drop the oldest send's figures (the one sent first).
            let oldest = self
                .metrics
                .messages
                .keys()
                .min_by(|a, b| {
                    let ta = self.sends.get(*a).map_or(f64::MIN, |s| s.sent_at);
                    let tb = self.sends.get(*b).map_or(f64::MIN, |s| s.sent_at);
                    ta.total_cmp(&tb)
                })
                .cloned();
            match oldest {
                Some(k) => {
                    self.metrics.messages.remove(&k);
                    self.sends.remove(&k);
                }
                None => break,
            }
        }
        self.metrics
            .messages
            .insert(crid.to_owned(), MessageMetrics::default());
    }

    /// Records a finished span if its trace is sampled: a Performance measure and a span event.
    fn span(&mut self, trace: Option<String>, mut f: SpanFields) {
        let Some(trace_id) = trace else { return };
        f.span_id = hex_id(&mut self.rng);
        f.trace_id = trace_id;
        self.actions.push_back(Action::Measure(f.clone()));
        self.telemetry.push(RuntimeEvent {
            kind: EventClass::Span,
            name: "runstream:span",
            value: f.duration_ms,
            ts: f.start + f.duration_ms,
            attrs: BTreeMap::new(),
            span: Some(f),
        });
    }
}

fn final_reason(status: u16) -> String {
    match status {
        401 => "HTTP 401: not authorized".into(),
        403 => "HTTP 403: forbidden".into(),
        404 => "HTTP 404: run not found".into(),
        410 => "HTTP 410: run gone".into(),
        s => format!("HTTP {s}"),
    }
}

/// Parses `{"run_id","event_id","state"}` (endpoint body or WS `snapshot` op).
fn parse_snapshot_body(v: Value, run_id: &str) -> Result<(u64, RunState), ProtocolError> {
    let Value::Object(mut o) = v else {
        return Err(ProtocolError::BadSnapshot("not an object".into()));
    };
    match o.get("run_id") {
        Some(Value::String(r)) if r == run_id => {}
        Some(Value::String(_)) => return Err(ProtocolError::ForeignRun),
        _ => return Err(ProtocolError::BadSnapshot("`run_id` missing".into())),
    }
    let id = o
        .get("event_id")
        .and_then(Value::as_u64)
        .filter(|&i| i <= super::envelope::MAX_EVENT_ID)
        .ok_or_else(|| ProtocolError::BadSnapshot("`event_id` missing or invalid".into()))?;
    let state = o
        .remove("state")
        .ok_or_else(|| ProtocolError::BadSnapshot("`state` missing".into()))?;
    let st = RunState::from_wire(state)?;
    Ok((id, st))
}
