//! Engine configuration: transport, timeouts, backoff policy and every bound.

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
    /// Cancels are possible (a cancel URL, or the WebSocket transport).
    pub can_cancel: bool,
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
    /// The WebSocket is shared with other runs ([`crate::core::socket`]): the
    /// socket's machine owns the connect timeout, pings and the heartbeat
    /// watch, so this engine arms none of them.
    pub shared_socket: bool,
    /// The `headers` option is a function (API.md: "called on every
    /// (re)connect and send"): a WebSocket send asks for them
    /// ([`Action::WsSendHeaders`](super::Action::WsSendHeaders)) instead of
    /// reusing its subscribe's.
    pub headers_per_send: bool,
    /// `share: "tabs"`: the stream key tabs share one connection under
    /// (transport, credentials mode, resolved URL, and the run id for
    /// WebSocket). `None`: this tab connects on its own.
    pub share_key: Option<String>,
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
            can_cancel: false,
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
            loop_guard_failures: 10,
            loop_guard_window_ms: 60_000.0,
            persist_interval_ms: 1000.0,
            persist: true,
            telemetry_capacity: 1024,
            spans: Spans::Off,
            ws_ping_interval_ms: 10_000.0,
            replay_quiet_ms: 30.0,
            shared_socket: false,
            headers_per_send: false,
            share_key: None,
        }
    }
}

/// Longest `Retry-After` honoured (5 min); longer values are clamped.
pub const MAX_RETRY_AFTER_MS: Ms = 300_000.0;
