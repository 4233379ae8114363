//! Run logs: append-only, dense ids, a bounded replay window, the reduced state
//! for snapshots, idempotent chat sends, and connection accounting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use runstream::core::envelope::decode_envelope;
use runstream::core::state::{Parked, RunState};
use runstream::core::wire::{SnapshotBody, WireEnvelope};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

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

/// Most events a run keeps for replay; older ones are pruned (resumes get a snapshot).
pub const MAX_WINDOW: usize = 200_000;
/// Most frames recorded for contract tests (drop-oldest).
pub const MAX_RECORDED: usize = 200_000;

/// One run.
pub struct Run {
    pub id: String,
    /// Retained envelopes (JSON text); `log[0]` has id `first_id`.
    log: VecDeque<Arc<RawValue>>,
    first_id: u64,
    last_id: u64,
    /// State after all events (what the snapshot endpoint returns).
    state: RunState,
    parked: Parked,
    /// State as of `first_id - 1`, for resumes older than the window.
    pruned: Option<(u64, RunState, Parked)>,
    pub finished: bool,
    pub chaos: Chaos,
    sends: HashMap<String, (String, String)>,
    next_message: u64,
    pub connections_total: u64,
    pub connections_open: u64,
    /// Stream requests received (including ones chaos failed).
    pub attempts: u64,
    /// Duplicate event frames chaos injected, and malformed frames it injected.
    pub dups_sent: u64,
    pub malformed_sent: u64,
    pub kind: RunKind,
    pub speed: f64,
}

/// What produces a run's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A supervisor run with workers and tools, then `run.completed`.
    Task,
    /// A chat session: events come from sends; it never completes by itself.
    Chat,
}

/// What a resume gets: an optional snapshot, then events from the window.
pub struct Replay {
    pub snapshot: Option<(u64, Value)>,
    pub events: Vec<Arc<RawValue>>,
    pub next: u64,
    pub done: bool,
}

impl Run {
    fn new(id: &str, kind: RunKind, chaos: Chaos, speed: f64) -> Self {
        Self {
            id: id.to_owned(),
            log: VecDeque::new(),
            first_id: 1,
            last_id: 0,
            state: RunState::new(id),
            parked: Parked::default(),
            pruned: None,
            finished: false,
            chaos,
            sends: HashMap::new(),
            next_message: 1,
            connections_total: 0,
            connections_open: 0,
            attempts: 0,
            dups_sent: 0,
            malformed_sent: 0,
            kind,
            speed,
        }
    }

    /// Lowest id still in the replay window.
    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Highest logged id.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The snapshot endpoint body.
    pub fn snapshot(&self) -> SnapshotBody {
        SnapshotBody::new(&self.id, self.last_id, &self.state)
    }

    /// Appends one event (dense id), updates the reduced state; returns the id.
    pub fn append(&mut self, ty: &str, payload: Value) -> u64 {
        let id = self.last_id + 1;
        let text = WireEnvelope {
            event_id: id,
            run_id: self.id.clone(),
            event_type: ty.to_owned(),
            timestamp: rfc3339_now(),
            payload,
        }
        .to_raw();
        if let Ok(env) = decode_envelope(text.get(), &self.id) {
            let mut out = Vec::new();
            let _ = self
                .state
                .apply(id, env.kind, &mut self.parked, 4096, &mut out);
        }
        self.log.push_back(text.into());
        self.last_id = id;
        if ty == "run.completed" {
            self.finished = true;
        }
        // Pruned in batches (10 % over the window), so a long run costs O(1) per event.
        if self.log.len() > MAX_WINDOW + MAX_WINDOW / 10 {
            self.prune_to(self.first_id + (self.log.len() - MAX_WINDOW) as u64);
        }
        id
    }

    /// Forgets every event with id < `keep_from`; later resumes from before it get a snapshot.
    pub fn prune_to(&mut self, keep_from: u64) {
        let keep_from = keep_from.min(self.last_id + 1);
        if keep_from <= self.first_id {
            return;
        }
        // The state as of keep_from - 1: the previous pruned state plus the dropped events.
        let (mut state, mut parked) = match self.pruned.take() {
            Some((_, st, p)) => (st, p),
            None => (RunState::new(&self.id), Parked::default()),
        };
        let mut out = Vec::new();
        while self.first_id < keep_from {
            if let Some(text) = self.log.pop_front() {
                if let Ok(env) = decode_envelope(text.get(), &self.id) {
                    let _ = state.apply(env.event_id, env.kind, &mut parked, 4096, &mut out);
                }
            }
            self.first_id += 1;
        }
        state.cursor = keep_from - 1;
        self.pruned = Some((keep_from - 1, state, parked));
    }

    /// What a client resuming after `last` must get now.
    pub fn replay(&self, last: u64) -> Replay {
        let mut next = last + 1;
        let mut snapshot = None;
        if next < self.first_id {
            if let Some((id, st, _)) = &self.pruned {
                snapshot = Some((*id, st.to_wire()));
                next = id + 1;
            }
        }
        let start = next.max(self.first_id);
        let skip = (start - self.first_id) as usize;
        let events: Vec<Arc<RawValue>> = self.log.iter().skip(skip).cloned().collect();
        Replay {
            snapshot,
            events,
            next: (self.last_id + 1).max(last + 1),
            done: self.finished,
        }
    }

    /// An idempotent chat send: the same `client_request_id` gets the same answer.
    pub fn send(&mut self, crid: &str, content: &str) -> (String, String, bool) {
        if let Some((m, r)) = self.sends.get(crid) {
            return (m.clone(), r.clone(), false);
        }
        let mid = format!("msg_{}", self.next_message);
        self.next_message += 1;
        self.sends
            .insert(crid.to_owned(), (mid.clone(), self.id.clone()));
        self.append(
            "message.created",
            json!({"message_id": mid, "role": "user", "client_request_id": crid, "content": content}),
        );
        (mid, self.id.clone(), true)
    }

    /// A fresh assistant message id.
    pub fn next_message_id(&mut self) -> String {
        let mid = format!("msg_{}", self.next_message);
        self.next_message += 1;
        mid
    }
}

/// A recorded frame (contract tests).
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub run_id: String,
    pub transport: &'static str,
    pub frame: String,
}

/// A run and the notifier its streams wait on.
type RunEntry = (Arc<Mutex<Run>>, watch::Sender<u64>);

/// All runs, plus restart and recording.
pub struct Hub {
    runs: Mutex<HashMap<String, RunEntry>>,
    /// Bumped by a restart: every connection ends.
    pub epoch: watch::Sender<u64>,
    /// Heartbeat comment interval.
    pub heartbeat_ms: u64,
    recorded: Mutex<VecDeque<Recorded>>,
    conn_ids: AtomicU64,
    run_ids: AtomicU64,
}

/// Locks, recovering from a poisoned mutex (a panicked request must not take the server down).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub whose SSE heartbeats go every `heartbeat_ms`.
    pub fn new(heartbeat_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::new(HashMap::new()),
            epoch: watch::channel(0).0,
            heartbeat_ms,
            recorded: Mutex::new(VecDeque::new()),
            conn_ids: AtomicU64::new(1),
            run_ids: AtomicU64::new(1),
        })
    }

    /// Creates (or returns) a run.
    pub fn create(
        &self,
        id: Option<String>,
        kind: RunKind,
        chaos: Chaos,
        speed: f64,
    ) -> (String, Arc<Mutex<Run>>, bool) {
        let id = id.unwrap_or_else(|| {
            let n = self.run_ids.fetch_add(1, Ordering::Relaxed);
            format!(
                "run_{:06}_{:08x}",
                n,
                (chaos.seed.wrapping_mul(0x9E37_79B9)) as u32
            )
        });
        let mut runs = lock(&self.runs);
        if let Some((r, _)) = runs.get(&id) {
            return (id, r.clone(), false);
        }
        let run = Arc::new(Mutex::new(Run::new(&id, kind, chaos, speed)));
        runs.insert(id.clone(), (run.clone(), watch::channel(0).0));
        (id, run, true)
    }

    /// The run `id` and its change notifier.
    pub fn get(&self, id: &str) -> Option<(Arc<Mutex<Run>>, watch::Receiver<u64>)> {
        lock(&self.runs)
            .get(id)
            .map(|(r, w)| (r.clone(), w.subscribe()))
    }

    /// Appends to run `id` and wakes its streams.
    pub fn append(&self, id: &str, ty: &str, payload: Value) -> Option<u64> {
        let runs = lock(&self.runs);
        let (run, tx) = runs.get(id)?;
        let n = lock(run).append(ty, payload);
        tx.send_replace(n);
        Some(n)
    }

    /// Wakes the streams of run `id` (after a change made under its lock).
    pub fn notify(&self, id: &str) {
        if let Some((run, tx)) = lock(&self.runs).get(id) {
            let n = lock(run).last_id();
            tx.send_replace(n);
        }
    }

    /// Drops every connection (the log is kept).
    pub fn restart(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// A fresh connection number.
    pub fn conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an emitted frame (bounded, drop-oldest).
    pub fn record(&self, run_id: &str, transport: &'static str, frame: &str) {
        let mut r = lock(&self.recorded);
        if r.len() >= MAX_RECORDED {
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
