//! Metrics (API.md `RunMetrics`) and the raw telemetry event queue.
//!
//! Figures, never percentiles: consumers aggregate. Every map and queue here is
//! bounded and says what happens at the bound.

use std::collections::VecDeque;

use crate::core::vecmap::VecMap;

#[cfg(not(target_arch = "wasm32"))]
use serde::Serialize;

/// Per-send figures, keyed by `client_request_id`.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct MessageMetrics {
    /// send → server accepted the send (POST 202 / WS ack).
    pub ttfb_ms: Option<f64>,
    /// send → first token of the reply that answers this send.
    pub ttft_ms: Option<f64>,
    /// send → reply completed or failed.
    pub duration_ms: Option<f64>,
    /// Tokens (deltas) received for the reply.
    pub tokens: u64,
    /// `fallback` reported by `message.completed`.
    pub fallback: Option<String>,
}

/// Most recent sends whose figures are kept; older ones are dropped first.
pub const MAX_MESSAGE_METRICS: usize = 256;

/// Per-run figures (API.md `RunMetrics`).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct RunMetrics {
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Log events applied to the state (including unknown types, which apply as no-ops).
    pub events_applied: u64,
    /// Events applied during the replay phase of a resumed connection.
    pub events_replayed: u64,
    /// Events dropped as duplicates (id ≤ cursor, already buffered, or stale snapshots).
    pub duplicates_dropped: u64,
    /// Events that arrived ahead of a gap and waited in the reorder buffer.
    pub out_of_order: u64,
    /// Frames and events rejected by validation (see [`ProtocolError`](crate::core::error::ProtocolError)).
    pub protocol_errors: u64,
    /// (Re)subscribe → first event, for the most recent connection that received one.
    pub time_to_first_event_ms: Option<f64>,
    /// Distinct tool calls seen.
    pub tool_calls: u64,
    /// Tool calls that completed with `status: "error"`.
    pub tool_errors: u64,
    /// Connection terminations by reason (see `Termination`).
    pub terminations: VecMap<String, u64>,
    /// Per-send figures, by `client_request_id` (at most [`MAX_MESSAGE_METRICS`]).
    pub messages: VecMap<String, MessageMetrics>,
    /// Protocol errors by kind ([`ProtocolError::kind`](crate::core::error::ProtocolError::kind)).
    pub protocol_errors_by_kind: VecMap<String, u64>,
    /// Event ids given up on: a gap neither replay nor the snapshot endpoint could fill (PROTOCOL §1).
    pub gaps_skipped: u64,
    /// Events of a type this client does not know (applied as no-ops, PROTOCOL §1).
    pub unknown_events: u64,
    /// Messages on the tabs' channel that were ignored (`share: "tabs"`): not
    /// a string, too large, another version, malformed, or another stream's.
    pub channel_errors: u64,
}

/// Why a connection ended: one taxonomy for metrics, spans and `lastError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The server ended the response / closed the socket before the run completed.
    ServerClosed,
    /// The network failed (fetch rejected, socket error, EventSource error).
    NetworkError,
    /// No response or first byte within `connectTimeoutMs`.
    ConnectTimeout,
    /// No byte within `heartbeatTimeoutMs`.
    HeartbeatTimeout,
    /// An HTTP 4xx status (or a WebSocket `unauthorized`, `forbidden`, `not_found`, `bad_request`).
    Http4xx,
    /// An HTTP 5xx status (or a WebSocket `unavailable`).
    Http5xx,
    /// The response was not an event stream, or the server said so over WebSocket.
    ProtocolError,
    /// A gap did not fill in time, or the reorder buffer filled: resume from the cursor.
    Resync,
    /// `close()` was called.
    ClientClosed,
    /// The browser went offline.
    Offline,
    /// `run.completed` was applied.
    RunCompleted,
    /// HTTP 204 (or WebSocket `finished`): the run is finished and there is nothing to replay.
    NoContent,
    /// `retryNow()` replaced a connection attempt.
    RetryNow,
    /// Too many failures in a short window; stopped until `retryNow()`.
    ErrorLoop,
    /// The `headers` option threw (or returned no object of strings); stopped until `retryNow()`.
    HeadersError,
    /// Another tab's connection serves this stream (`share: "tabs"`): this
    /// tab stepped down, or its own catch-up / send connection was done.
    Shared,
    /// The page went into the back/forward cache: the link was ended, not
    /// counted as a failure, and is made again when the page comes back.
    PageHidden,
}

impl Termination {
    /// The stable name used as a metric attribute and in `terminations`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerClosed => "server_closed",
            Self::NetworkError => "network_error",
            Self::ConnectTimeout => "connect_timeout",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::ProtocolError => "protocol_error",
            Self::Resync => "resync",
            Self::ClientClosed => "client_closed",
            Self::Offline => "offline",
            Self::RunCompleted => "run_completed",
            Self::NoContent => "no_content",
            Self::RetryNow => "retry_now",
            Self::ErrorLoop => "error_loop",
            Self::HeadersError => "headers_error",
            Self::Shared => "shared",
            Self::PageHidden => "page_hidden",
        }
    }
}

/// A metric name (the metric table of `docs/TELEMETRY.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `stream.connect.total` (counter): a connection attempt starts.
    Connect,
    /// `stream.reconnect.total` (counter): an attempt after the first starts.
    Reconnect,
    /// `stream.termination.total` (counter, attr `reason`): a connection ends.
    Termination,
    /// `stream.time_to_first_event_ms` (histogram): the first valid event of a (re)subscribe.
    TimeToFirstEvent,
    /// `stream.replay.events` (histogram): events of a finished replay phase.
    ReplayEvents,
    /// `stream.event.duplicate.total` (counter): an event dropped as a duplicate.
    Duplicate,
    /// `stream.event.out_of_order.total` (counter): an event waits beyond a gap.
    OutOfOrder,
    /// `stream.protocol_error.total` (counter, attr `kind`): a frame/event fails validation.
    ProtocolError,
    /// `tool.error.total` (counter): a tool call completed with an error.
    ToolError,
    /// `message.ttfb_ms` (histogram): send → accepted.
    MessageTtfb,
    /// `message.ttft_ms` (histogram): send → first token of the reply.
    MessageTtft,
    /// `message.duration_ms` (histogram): send → reply completed or failed.
    MessageDuration,
    /// `ui.flush.events` (histogram): events applied since the previous frame.
    UiFlushEvents,
    /// `stream.event.unknown.total` (counter): an event of a type this client does not know.
    UnknownEvent,
    /// `stream.gap.skipped.total` (counter, value = ids skipped): a gap nothing could fill.
    GapSkipped,
    /// `tabs.channel.error.total` (counter, attr `kind`): a tabs' channel message was ignored.
    ChannelError,
}

impl Metric {
    /// Every metric, in the order of the table.
    pub const ALL: [Metric; 16] = [
        Self::Connect,
        Self::Reconnect,
        Self::Termination,
        Self::TimeToFirstEvent,
        Self::ReplayEvents,
        Self::Duplicate,
        Self::OutOfOrder,
        Self::ProtocolError,
        Self::ToolError,
        Self::MessageTtfb,
        Self::MessageTtft,
        Self::MessageDuration,
        Self::UiFlushEvents,
        Self::UnknownEvent,
        Self::GapSkipped,
        Self::ChannelError,
    ];

    /// The stable name, as in `RuntimeEvent::name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "stream.connect.total",
            Self::Reconnect => "stream.reconnect.total",
            Self::Termination => "stream.termination.total",
            Self::TimeToFirstEvent => "stream.time_to_first_event_ms",
            Self::ReplayEvents => "stream.replay.events",
            Self::Duplicate => "stream.event.duplicate.total",
            Self::OutOfOrder => "stream.event.out_of_order.total",
            Self::ProtocolError => "stream.protocol_error.total",
            Self::ToolError => "tool.error.total",
            Self::MessageTtfb => "message.ttfb_ms",
            Self::MessageTtft => "message.ttft_ms",
            Self::MessageDuration => "message.duration_ms",
            Self::UiFlushEvents => "ui.flush.events",
            Self::UnknownEvent => "stream.event.unknown.total",
            Self::GapSkipped => "stream.gap.skipped.total",
            Self::ChannelError => "tabs.channel.error.total",
        }
    }
}

/// What kind of raw telemetry event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
#[allow(missing_docs)]
pub enum EventClass {
    Counter,
    Gauge,
    Histogram,
    Span,
}

/// Status of a finished span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
#[allow(missing_docs)]
pub enum SpanStatus {
    Ok,
    Error,
    Canceled,
}

/// One raw telemetry event (API.md `RuntimeEvent`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct RuntimeEvent {
    /// Counter, gauge, histogram or span.
    pub kind: EventClass,
    /// Metric name (see the metric table in `docs/TELEMETRY.md`), `runstream:span` for spans.
    pub name: &'static str,
    /// Counter increment, gauge value, histogram sample, or span duration.
    pub value: f64,
    /// Time of the event (the core's clock: `performance.now()` in the browser).
    pub ts: f64,
    /// Attributes.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "VecMap::is_empty")
    )]
    pub attrs: VecMap<&'static str, String>,
    /// Span fields, for `kind: "span"` only.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(flatten, skip_serializing_if = "Option::is_none")
    )]
    pub span: Option<SpanFields>,
}

/// The fields of a span event.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct SpanFields {
    /// Unique per span.
    pub span_id: String,
    /// The trace (one per run, one per send).
    pub trace_id: String,
    /// `connect`, `replay` or `message`.
    pub op: &'static str,
    /// Start time.
    pub start: f64,
    /// Duration.
    pub duration_ms: f64,
    /// Outcome.
    pub status: SpanStatus,
    /// Termination reason or error class, when not ok.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub error_kind: Option<&'static str>,
    /// Human-readable error, when not ok.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub error: Option<String>,
    /// Connection attempt number (`connect`).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub attempt: Option<u64>,
    /// Events replayed (`replay`).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub events: Option<u64>,
    /// send → accepted (`message`).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub ttfb_ms: Option<f64>,
    /// send → first token (`message`).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub ttft_ms: Option<f64>,
    /// The send's `client_request_id` (`message`).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(skip_serializing_if = "Option::is_none")
    )]
    pub client_request_id: Option<String>,
}

impl SpanFields {
    /// A span of `op` from `start` to `end`; ids are filled in when it is recorded.
    pub fn new(op: &'static str, start: f64, end: f64, status: SpanStatus) -> Self {
        Self {
            span_id: String::new(),
            trace_id: String::new(),
            op,
            start,
            duration_ms: (end - start).max(0.0),
            status,
            error_kind: None,
            error: None,
            attempt: None,
            events: None,
            ttfb_ms: None,
            ttft_ms: None,
            client_request_id: None,
        }
    }
}

/// Bounded queue of raw telemetry events, built only while someone listens.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Build events at all (false = no listener: no event objects are made).
    pub enabled: bool,
    queue: VecDeque<RuntimeEvent>,
    cap: usize,
    /// Events dropped because the queue was full (oldest first).
    pub dropped: u64,
}

impl Telemetry {
    /// A queue holding at most `cap` undrained events (drop-oldest beyond).
    pub fn new(cap: usize) -> Self {
        Self {
            enabled: false,
            queue: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Queues `ev` if enabled, dropping the oldest when full.
    pub fn push(&mut self, ev: RuntimeEvent) {
        if !self.enabled {
            return;
        }
        if self.queue.len() >= self.cap {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(ev);
    }

    /// A metric event of `kind` (no-op unless enabled).
    pub fn metric(
        &mut self,
        kind: EventClass,
        name: Metric,
        value: f64,
        ts: f64,
        attrs: &[(&'static str, &str)],
    ) {
        if !self.enabled {
            return;
        }
        self.push(RuntimeEvent {
            kind,
            name: name.name(),
            value,
            ts,
            attrs: attrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            span: None,
        });
    }

    /// Takes the next queued event; call until `None` after every input.
    pub fn pop(&mut self) -> Option<RuntimeEvent> {
        self.queue.pop_front()
    }

    /// Queued events.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_bounded_drop_oldest_and_off_by_default() {
        let mut t = Telemetry::new(2);
        t.metric(EventClass::Counter, Metric::Connect, 1.0, 0.0, &[]);
        assert!(t.is_empty());
        t.enabled = true;
        for i in 0..5 {
            t.metric(EventClass::Counter, Metric::Connect, f64::from(i), 0.0, &[]);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.dropped, 3);
        assert_eq!(t.pop().map(|e| e.value), Some(3.0));
    }

    #[test]
    fn metric_names_are_distinct_and_documented() {
        let doc = include_str!("../../docs/TELEMETRY.md");
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        for n in &names {
            assert!(
                doc.contains(&format!("| `{n}` |")),
                "{n} missing from TELEMETRY.md"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
    }
}
