//! The gateway's Prometheus metrics (`GET /metrics`, text exposition), on the
//! `prometheus-client` crate. One [`Metrics`] per process; every family is
//! named here, so a dashboard has one place to look.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `runstream_open_connections` | gauge | `transport`: `sse`, `websocket`, `ws_subscription` |
//! | `runstream_events_delivered_total` | counter | `transport` |
//! | `runstream_replay_events` | histogram | events a stream had to replay when it opened |
//! | `runstream_auth_denials_total` | counter | `reason` ([`DenyReason`]) |
//! | `runstream_store_latency_seconds` | histogram | `op` (store method) |
//! | `runstream_store_errors_total` | counter | `op` |
//! | `runstream_clients_dropped_total` | counter | `reason`: `slow_client`, `write_stall`, `drain`, `connection_limit`, `socket_run_limit` |
//! | `runstream_published_events_total` | counter | — |

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::auth::DenyReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transport {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

/// Why the server ended a client's connection itself.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    /// It stopped reading: its bounded buffer stayed full past the stall limit.
    SlowClient,
    /// It stopped reading: one write to its socket stayed pending past the
    /// stall limit (`stall.rs`; SSE, WebSocket, any response).
    WriteStall,
    /// The process is draining (SIGTERM).
    Drain,
    /// `--max-connections` reached: refused with 503.
    ConnectionLimit,
    /// `--max-runs-per-socket` reached: the subscribe was refused.
    SocketRunLimit,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::SlowClient => "slow_client",
            Self::WriteStall => "write_stall",
            Self::Drain => "drain",
            Self::ConnectionLimit => "connection_limit",
            Self::SocketRunLimit => "socket_run_limit",
        }
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    open: Family<Transport, Gauge>,
    /// Per-event counters, resolved once (no family lookup per frame).
    delivered_sse: Counter,
    delivered_ws: Counter,
    replay: Histogram,
    denials: Family<Reason, Counter>,
    store_latency: Family<Op, Histogram>,
    store_errors: Family<Op, Counter>,
    dropped: Family<Reason, Counter>,
    published: Counter,
    ws_queued: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let open = Family::<Transport, Gauge>::default();
        let delivered = Family::<Transport, Counter>::default();
        let replay = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        let denials = Family::<Reason, Counter>::default();
        let store_latency = Family::<Op, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.5, 12))
        });
        let store_errors = Family::<Op, Counter>::default();
        let dropped = Family::<Reason, Counter>::default();
        let published = Counter::default();
        let ws_queued = Gauge::default();
        registry.register(
            "runstream_open_connections",
            "Open streaming connections by transport (WebSocket subscriptions ride their socket)",
            open.clone(),
        );
        registry.register(
            "runstream_events_delivered",
            "Event frames written to clients",
            delivered.clone(),
        );
        registry.register(
            "runstream_replay_events",
            "Events a stream had to replay when it opened (its resume point to the log's end)",
            replay.clone(),
        );
        registry.register(
            "runstream_auth_denials",
            "Requests and WebSocket frames refused by PROTOCOL §7, by reason",
            denials.clone(),
        );
        registry.register(
            "runstream_store_latency_seconds",
            "Latency of store operations",
            store_latency.clone(),
        );
        registry.register(
            "runstream_store_errors",
            "Store operations that failed",
            store_errors.clone(),
        );
        registry.register(
            "runstream_clients_dropped",
            "Connections the server ended or refused itself, by reason",
            dropped.clone(),
        );
        registry.register(
            "runstream_published_events",
            "Events appended through the publish API",
            published.clone(),
        );
        registry.register(
            "runstream_websocket_queued_bytes",
            "Bytes of frames queued for WebSocket clients and not yet written (each socket bounded by --client-buffer-bytes)",
            ws_queued.clone(),
        );
        for r in DenyReason::ALL {
            let _ = denials.get_or_create(&Reason { reason: r.as_str() });
        }
        for t in ["sse", "websocket", "ws_subscription"] {
            let _ = open.get_or_create(&Transport { transport: t });
        }
        let delivered_sse = delivered
            .get_or_create(&Transport { transport: "sse" })
            .clone();
        let delivered_ws = delivered
            .get_or_create(&Transport {
                transport: "websocket",
            })
            .clone();
        Self {
            registry: Mutex::new(registry),
            open,
            delivered_sse,
            delivered_ws,
            replay,
            denials,
            store_latency,
            store_errors,
            dropped,
            published,
            ws_queued,
        }
    }

    /// Counts one refusal.
    pub fn auth_denied(&self, reason: DenyReason) {
        self.denials
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts one event frame written on `transport` (`sse` or `websocket`).
    pub fn delivered(&self, transport: &'static str) {
        match transport {
            "sse" => self.delivered_sse.inc(),
            _ => self.delivered_ws.inc(),
        };
    }

    /// Records how many events a stream opened behind the log's end.
    pub fn replay_size(&self, events: u64) {
        self.replay.observe(events as f64);
    }

    /// Records one store operation's latency and outcome.
    pub fn store_op(&self, op: &'static str, seconds: f64, ok: bool) {
        self.store_latency
            .get_or_create(&Op { op })
            .observe(seconds);
        if !ok {
            self.store_errors.get_or_create(&Op { op }).inc();
        }
    }

    /// Counts a connection the server ended or refused itself.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts events appended through the publish API.
    pub fn published(&self, n: u64) {
        self.published.inc_by(n);
    }

    /// Adds `delta` to the bytes queued for WebSocket clients.
    pub fn ws_queued(&self, delta: i64) {
        self.ws_queued.inc_by(delta);
    }

    /// The bytes queued for WebSocket clients now.
    pub fn ws_queued_now(&self) -> i64 {
        self.ws_queued.get()
    }

    /// The text exposition, with the open-connection gauges set from `open`
    /// (`(sse, websocket, ws_subscription)`, the hub's own counters).
    pub fn encode(&self, open: (u64, u64, u64)) -> String {
        for (t, n) in [
            ("sse", open.0),
            ("websocket", open.1),
            ("ws_subscription", open.2),
        ] {
            self.open
                .get_or_create(&Transport { transport: t })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }
}
