//! What one server process holds besides the log (which lives in a
//! [`Store`]): chaos knobs, the restart epoch, recorded frames and per-run
//! connection accounting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::store::{Store, StoreResult};

/// Chaos knobs, settable per run. A fixed `seed` makes every schedule reproducible.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Chaos {
    /// Seed of every random decision on this run's connections.
    pub seed: u64,
    /// Probability that an event is sent twice.
    pub dup_rate: f64,
    /// Probability that an event is held and sent after the next one.
    pub reorder_rate: f64,
    /// End each connection after this many events (0 = never).
    pub drop_every: u64,
    /// Probability of ending the connection after any event.
    pub drop_rate: f64,
    /// Delay before each event.
    pub latency_ms: u64,
    /// Extra random delay (0..jitter) before each event.
    pub jitter_ms: u64,
    /// Hold the first bytes of each response this long (a buffering proxy).
    pub hold_first_ms: u64,
    /// Probability of injecting a malformed frame before an event.
    pub malformed_rate: f64,
    /// Size of an oversized frame to inject once per connection (0 = never).
    pub oversize_bytes: usize,
    /// A `retry:` value to send at the start of each SSE response.
    pub retry_ms: Option<u64>,
    /// Send a binary frame once per WebSocket subscription.
    pub binary_frame: bool,
    /// Answer the first N stream requests with `fail_status` (SSE only).
    pub fail_first: u64,
    /// Status of those failed requests (default 503).
    pub fail_status: Option<u16>,
    /// `Retry-After` seconds sent with them.
    pub retry_after_s: Option<u64>,
}

/// Most frames recorded for contract tests when `--record-frames` is given without a
/// number's worth of thought (drop-oldest). The frame log is off by default.
pub const MAX_RECORDED: usize = 200_000;
/// Most runs with per-replica counters (beyond it the table starts over).
const MAX_STATS: usize = 100_000;

/// What this process saw of a run's connections (per replica: with a shared
/// store every replica counts its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocalStats {
    /// Streams opened (SSE responses and WebSocket subscriptions).
    pub connections_total: u64,
    /// Of those, still open.
    pub connections_open: u64,
    /// Stream requests received (including ones chaos failed).
    pub attempts: u64,
    /// Duplicate event frames chaos injected.
    pub dups_sent: u64,
    /// Malformed frames chaos injected.
    pub malformed_sent: u64,
}

/// What a connection counter counts (`GET /api/admin/connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// An SSE response streaming a run (one HTTP connection each).
    SseStream,
    /// A WebSocket (one HTTP connection, upgraded), whatever it carries.
    WsSocket,
    /// A run subscribed on a WebSocket (no connection of its own).
    WsSubscription,
}

impl ConnKind {
    const ALL: [ConnKind; 3] = [Self::SseStream, Self::WsSocket, Self::WsSubscription];

    fn index(self) -> usize {
        match self {
            Self::SseStream => 0,
            Self::WsSocket => 1,
            Self::WsSubscription => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::SseStream => "sse_streams",
            Self::WsSocket => "ws_sockets",
            Self::WsSubscription => "ws_subscriptions",
        }
    }
}

/// Open and ever-opened counts of one [`ConnKind`] in this process.
#[derive(Default)]
struct ConnCounter {
    open: AtomicU64,
    total: AtomicU64,
}

/// Holds one open [`ConnKind`] for as long as it lives (also when its task is aborted).
pub struct ConnGuard {
    hub: Arc<Hub>,
    kind: ConnKind,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(c) = self.hub.conns.get(self.kind.index()) {
            // Never below zero: fetch_update with saturating_sub.
            let _ = c
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }
}

/// A recorded frame (contract tests).
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub run_id: String,
    pub transport: &'static str,
    pub frame: String,
}

/// The store plus what belongs to this process: restart epoch, heartbeat,
/// recorded frames, connection ids and per-run connection counters.
pub struct Hub {
    /// Where run logs live.
    pub store: Arc<dyn Store>,
    /// Bumped by a restart: every connection ends.
    pub epoch: watch::Sender<u64>,
    /// True once the process drains (SIGTERM): streams end so clients resume
    /// on another replica, and new ones are refused.
    pub draining: watch::Sender<bool>,
    /// Heartbeat comment interval.
    pub heartbeat_ms: u64,
    /// Who answers chat sends.
    pub replies: crate::Replies,
    recorded: Mutex<VecDeque<Recorded>>,
    /// Most frames recorded (0 = recording off).
    record_cap: usize,
    conn_ids: AtomicU64,
    stats: Mutex<HashMap<String, LocalStats>>,
    /// Process-wide connection counters, indexed by [`ConnKind::index`].
    conns: [ConnCounter; 3],
}

/// Locks, recovering from a poisoned mutex (a panicked request must not take the server down).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub over `store` whose SSE heartbeats go every `heartbeat_ms`.
    pub fn new(
        store: Arc<dyn Store>,
        heartbeat_ms: u64,
        replies: crate::Replies,
        record_cap: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            epoch: watch::channel(0).0,
            draining: watch::channel(false).0,
            heartbeat_ms,
            replies,
            recorded: Mutex::new(VecDeque::new()),
            record_cap,
            conn_ids: AtomicU64::new(1),
            stats: Mutex::new(HashMap::new()),
            conns: Default::default(),
        })
    }

    /// Appends to run `id` (the store wakes its streams, in every process).
    pub async fn append(&self, id: &str, ty: &str, payload: Value) -> StoreResult<Option<u64>> {
        self.store.append(id, ty, payload).await
    }

    /// Updates this process's counters of run `id`.
    pub fn count<T>(&self, id: &str, f: impl FnOnce(&mut LocalStats) -> T) -> T {
        let mut m = lock(&self.stats);
        if m.len() >= MAX_STATS && !m.contains_key(id) {
            m.clear();
        }
        f(m.entry(id.to_owned()).or_default())
    }

    /// This process's counters of run `id`.
    pub fn stats(&self, id: &str) -> LocalStats {
        lock(&self.stats).get(id).cloned().unwrap_or_default()
    }

    /// Counts one open connection of `kind` until the guard drops.
    pub fn open_conn(self: &Arc<Self>, kind: ConnKind) -> ConnGuard {
        if let Some(c) = self.conns.get(kind.index()) {
            c.open.fetch_add(1, Ordering::Relaxed);
            c.total.fetch_add(1, Ordering::Relaxed);
        }
        ConnGuard {
            hub: self.clone(),
            kind,
        }
    }

    /// This process's connections by kind, `{kind: {open, total}}`, plus
    /// `open`: the HTTP connections it holds for streaming (SSE streams +
    /// WebSockets; subscriptions ride their socket).
    pub fn connections(&self) -> Value {
        let mut out = serde_json::Map::new();
        let mut held = 0;
        for kind in ConnKind::ALL {
            let (open, total) = self.conns.get(kind.index()).map_or((0, 0), |c| {
                (
                    c.open.load(Ordering::Relaxed),
                    c.total.load(Ordering::Relaxed),
                )
            });
            if kind != ConnKind::WsSubscription {
                held += open;
            }
            out.insert(
                kind.name().into(),
                serde_json::json!({"open": open, "total": total}),
            );
        }
        out.insert("open".into(), held.into());
        Value::Object(out)
    }

    /// Starts draining: open streams end (SSE with a short `retry:`, WebSocket
    /// with close 1012) and new ones are refused.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Open counts `(sse streams, websockets, ws subscriptions)`.
    pub fn open_counts(&self) -> (u64, u64, u64) {
        let get = |k: ConnKind| {
            self.conns
                .get(k.index())
                .map_or(0, |c| c.open.load(Ordering::Relaxed))
        };
        (
            get(ConnKind::SseStream),
            get(ConnKind::WsSocket),
            get(ConnKind::WsSubscription),
        )
    }

    /// Drops every connection of this process (the log is kept).
    pub fn restart(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// A fresh connection number.
    pub fn conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an emitted frame (bounded, drop-oldest).
    pub fn record(&self, run_id: &str, transport: &'static str, frame: &str) {
        if self.record_cap == 0 {
            return;
        }
        let mut r = lock(&self.recorded);
        if r.len() >= self.record_cap {
            r.pop_front();
        }
        r.push_back(Recorded {
            run_id: run_id.to_owned(),
            transport,
            frame: frame.to_owned(),
        });
    }

    /// Recorded frames (optionally of one run).
    pub fn recorded(&self, run_id: Option<&str>) -> Vec<Recorded> {
        lock(&self.recorded)
            .iter()
            .filter(|r| run_id.is_none_or(|id| r.run_id == id))
            .cloned()
            .collect()
    }
}

/// The current UTC time as RFC 3339 with milliseconds.
pub fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}
