//! The in-process store (`--store memory`, the default): every run's log,
//! reduced state and sends in this process's memory, as the reference server
//! always kept them. Nothing survives a restart of the process; nothing is
//! shared with another process.
//!
//! Retention ([`Retention`]): every run has a deadline, its last write plus the
//! retention of its state (finished or not), kept in one sorted map. Each
//! create and each write drops at most [`SWEEP_BATCH`] runs whose deadline has
//! passed (bounded work, no scan of every run), and a run found past its
//! deadline is dropped when it is looked up, so an expired run is unknown at
//! once whether or not a sweep reached it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt};
use runstream::core::vocab::MessageStatus;
use runstream::core::wire::{SnapshotBody, WireEnvelope};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    prune_point, BatchOutcome, CancelOutcome, CancelTarget, IdemKey, NewEvent, Reduced, Replay,
    ReplyEnd, Retention, RunKind, RunMeta, RunSpec, SendOutcome, SendRecord, Store, StoreError,
    StoreResult, Tail, IDEMPOTENCY_TTL_S, MEMORY_IDEM_CAP, MEMORY_SENDS_CAP,
};
use crate::hub::{lock, rfc3339_now, Chaos};

/// One run's log.
struct Run {
    id: String,
    /// Retained envelopes (JSON text); `log[0]` has id `first_id`.
    log: VecDeque<Arc<RawValue>>,
    first_id: u64,
    last_id: u64,
    /// State after all events (what the snapshot endpoint returns).
    state: Reduced,
    /// State as of `first_id - 1`, for resumes older than the window.
    pruned: Option<Reduced>,
    finished: bool,
    spec: RunSpec,
    /// client_request_id → message id.
    sends: HashMap<String, String>,
    next_message: u64,
    window: u64,
    /// Publish idempotency keys: key → (digest, first, last, when), bounded by [`MEMORY_IDEM_CAP`].
    idem: HashMap<String, (String, u64, u64, std::time::Instant)>,
    /// Cancel targets ([`CancelTarget::key`]) → their `run.cancel_requested` id.
    cancels: HashMap<String, u64>,
    /// When it expires: its key in [`Runs::deadlines`] (`None`: kept forever).
    deadline: Option<Deadline>,
}

/// What a batch's earlier events change of the replies [`Run::reply_taken`] reads, so each
/// event of a batch is checked as if they were appended (they are not yet: all or nothing).
/// Bounded by the batch: at most one entry per event in each.
#[derive(Default)]
struct Pending {
    /// Sends the batch's earlier events start a reply to.
    replies: HashSet<String>,
    /// Message id → (the send it answers, whether it ended), as those events leave it.
    messages: HashMap<String, (Option<String>, bool)>,
}

/// Most expired runs one create or write drops (the rest go with the next ones).
pub const SWEEP_BATCH: usize = 64;

/// A deadline: the instant, then a sequence number that makes it unique.
type Deadline = (Instant, u64);

impl Run {
    fn new(id: &str, spec: RunSpec, window: u64) -> Self {
        Self {
            id: id.to_owned(),
            log: VecDeque::new(),
            first_id: 1,
            last_id: 0,
            state: Reduced::new(id),
            pruned: None,
            finished: false,
            spec,
            sends: HashMap::new(),
            next_message: 1,
            window: window.max(1),
            idem: HashMap::new(),
            cancels: HashMap::new(),
            deadline: None,
        }
    }

    fn meta(&self) -> RunMeta {
        RunMeta {
            kind: self.spec.kind,
            chaos: self.spec.chaos.clone(),
            speed: self.spec.speed,
            first_id: self.first_id,
            last_id: self.last_id,
            finished: self.finished,
            session_id: self.spec.session_id.clone(),
        }
    }

    /// An atomic batch under an optional idempotency key (see [`Store::append_batch`]).
    fn append_batch(&mut self, events: Vec<NewEvent>, key: Option<IdemKey>) -> BatchOutcome {
        let ttl = std::time::Duration::from_secs(IDEMPOTENCY_TTL_S);
        let now = std::time::Instant::now();
        if let Some(k) = &key {
            if let Some((digest, first, last, at)) = self.idem.get(&k.key) {
                if now.duration_since(*at) < ttl {
                    return if *digest == k.digest {
                        BatchOutcome::Repeated {
                            first: *first,
                            last: *last,
                        }
                    } else {
                        BatchOutcome::KeyConflict
                    };
                }
            }
        }
        if self.finished {
            return BatchOutcome::Finished;
        }
        // Each event is checked as the batch's earlier events leave the replies (all or nothing).
        let mut pending = Pending::default();
        for e in &events {
            if self.reply_taken(&pending, &e.ty, &e.payload).is_some() {
                return BatchOutcome::ReplyTaken;
            }
            self.note(&mut pending, &e.ty, &e.payload);
        }
        let first = self.last_id + 1;
        for e in events {
            self.append(&e.ty, e.payload);
        }
        let last = self.last_id;
        if let Some(k) = key {
            if self.idem.len() >= MEMORY_IDEM_CAP {
                self.idem.retain(|_, v| now.duration_since(v.3) < ttl);
            }
            if self.idem.len() >= MEMORY_IDEM_CAP {
                if let Some(oldest) = self
                    .idem
                    .iter()
                    .min_by_key(|(_, v)| v.3)
                    .map(|(k, _)| k.clone())
                {
                    self.idem.remove(&oldest);
                }
            }
            self.idem.insert(k.key, (k.digest, first, last, now));
        }
        BatchOutcome::Appended { first, last }
    }

    /// How the reply to send `crid` stands, if it started (the last message answering it).
    fn reply(&self, crid: &str) -> Option<MessageStatus> {
        self.state
            .state
            .messages
            .iter()
            .rev()
            .find(|m| m.reply_to.as_deref() == Some(crid))
            .map(|m| m.status)
    }

    /// The send a message answers and whether it ended, as `pending` (a batch's earlier
    /// events) and then the reduced state have it.
    fn message_reply(&self, pending: &Pending, mid: &str) -> Option<(Option<String>, bool)> {
        if let Some(m) = pending.messages.get(mid) {
            return Some(m.clone());
        }
        let m = self
            .state
            .state
            .messages
            .iter()
            .rev()
            .find(|m| m.message_id.as_deref() == Some(mid))?;
        let ended = matches!(m.status, MessageStatus::Completed | MessageStatus::Failed);
        Some((m.reply_to.clone(), ended))
    }

    /// The send whose reply an append of (`ty`, `payload`) is refused for, as the Redis
    /// store's append step refuses it: a second reply to one send, or a delta or an ending
    /// of a reply that already ended; after `pending`, a batch's earlier events.
    fn reply_taken(&self, pending: &Pending, ty: &str, payload: &Value) -> Option<String> {
        if ty == "message.created" {
            let crid = payload.get("reply_to").and_then(Value::as_str)?;
            let taken = pending.replies.contains(crid) || self.reply(crid).is_some();
            return taken.then(|| crid.to_owned());
        }
        if !matches!(ty, "message.delta" | "message.completed" | "message.failed") {
            return None;
        }
        let mid = payload.get("message_id").and_then(Value::as_str)?;
        let (crid, ended) = self.message_reply(pending, mid)?;
        crid.filter(|_| ended)
    }

    /// Notes in `pending` what appending (`ty`, `payload`) changes of the replies
    /// [`Run::reply_taken`] reads, as the reducer applies it (a message created again
    /// keeps the send it answered and its ending; an unknown message's ending changes nothing).
    fn note(&self, pending: &mut Pending, ty: &str, payload: &Value) {
        let Some(mid) = payload.get("message_id").and_then(Value::as_str) else {
            return;
        };
        let prior = self.message_reply(pending, mid);
        let now = match (ty, prior) {
            ("message.created", Some((crid, ended))) => {
                let to = payload.get("reply_to").and_then(Value::as_str);
                (crid.or_else(|| to.map(str::to_owned)), ended)
            }
            ("message.created", None) => {
                let to = payload.get("reply_to").and_then(Value::as_str);
                let role = payload.get("role").and_then(Value::as_str);
                (to.map(str::to_owned), role != Some("assistant"))
            }
            ("message.completed" | "message.failed", Some((crid, _))) => (crid, true),
            _ => return,
        };
        if let Some(crid) = &now.0 {
            pending.replies.insert(crid.clone());
        }
        pending.messages.insert(mid.to_owned(), now);
    }

    /// Appends one event (dense id), updates the reduced state; returns the id.
    fn append(&mut self, ty: &str, payload: Value) -> u64 {
        let id = self.last_id + 1;
        let text: Arc<RawValue> = WireEnvelope {
            event_id: id,
            run_id: self.id.clone(),
            event_type: ty.to_owned(),
            timestamp: rfc3339_now(),
            payload,
        }
        .to_raw()
        .into();
        self.state.apply(id, text.get());
        self.log.push_back(text);
        self.last_id = id;
        if ty == "run.completed" {
            self.finished = true;
        }
        // Pruned in batches (10 % over the window), so a long run costs O(1) per event.
        if let Some(keep_from) = prune_point(self.first_id, self.last_id, self.window) {
            self.prune_to(keep_from);
        }
        id
    }

    /// Forgets every event with id < `keep_from`; later resumes from before it get a snapshot.
    fn prune_to(&mut self, keep_from: u64) {
        let keep_from = keep_from.min(self.last_id + 1);
        if keep_from <= self.first_id {
            return;
        }
        // The state as of keep_from - 1: the previous pruned state plus the dropped events.
        let mut base = self.pruned.take().unwrap_or_else(|| Reduced::new(&self.id));
        while self.first_id < keep_from {
            if let Some(text) = self.log.pop_front() {
                base.apply(self.first_id, text.get());
            }
            self.first_id += 1;
        }
        base.set_cursor(keep_from - 1);
        self.pruned = Some(base);
    }

    /// What a client resuming after `last` must get now.
    fn replay(&self, last: u64) -> Replay {
        let mut next = last + 1;
        let mut snapshot = None;
        if next < self.first_id {
            if let Some(base) = &self.pruned {
                snapshot = Some((base.cursor(), base.state.to_wire()));
                next = base.cursor() + 1;
            }
        }
        let start = next.max(self.first_id);
        let skip = (start - self.first_id) as usize;
        Replay {
            snapshot,
            events: self.log.iter().skip(skip).cloned().collect(),
            last_id: self.last_id,
            done: self.finished,
        }
    }

    /// An idempotent chat send: the same `client_request_id` gets the same answer.
    /// `(message id, fresh, finished)`: a new send into a finished run is refused.
    fn send(&mut self, crid: &str, content: &str) -> (String, bool, bool) {
        if let Some(m) = self.sends.get(crid) {
            return (m.clone(), false, false);
        }
        if self.finished {
            return (String::new(), false, true);
        }
        let mid = self.next_message_id();
        self.sends.insert(crid.to_owned(), mid.clone());
        self.append(
            "message.created",
            json!({"message_id": mid, "role": "user", "client_request_id": crid, "content": content}),
        );
        (mid, true, false)
    }

    fn next_message_id(&mut self) -> String {
        let mid = format!("msg_{}", self.next_message);
        self.next_message += 1;
        mid
    }
}

/// A run and the notifier its streams wait on.
type RunEntry = (Arc<Mutex<Run>>, watch::Sender<u64>);

/// Every run and when each expires.
#[derive(Default)]
struct Runs {
    map: HashMap<String, RunEntry>,
    /// Deadline → run id, soonest first (each run's current deadline, once).
    deadlines: BTreeMap<Deadline, String>,
    seq: u64,
}

impl Runs {
    /// The live run `id`; one past its deadline is dropped (and is unknown).
    fn live(&mut self, id: &str, now: Instant) -> Option<&RunEntry> {
        let due = self
            .map
            .get(id)
            .and_then(|(r, _)| lock(r).deadline)
            .filter(|d| d.0 <= now);
        if let Some(d) = due {
            self.deadlines.remove(&d);
            self.map.remove(id);
        }
        self.map.get(id)
    }

    /// Drops at most [`SWEEP_BATCH`] runs whose deadline has passed.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_BATCH {
            let Some(entry) = self.deadlines.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let id = entry.remove();
            self.map.remove(&id);
        }
    }

    /// Moves run `r`'s deadline to `now` plus what `retention` gives its state.
    fn reschedule(&mut self, id: &str, r: &mut Run, retention: Retention, now: Instant) {
        if let Some(old) = r.deadline.take() {
            self.deadlines.remove(&old);
        }
        // A deadline past what the clock can hold is no deadline (kept forever).
        if let Some(at) = retention
            .keep_for(r.finished)
            .and_then(|keep| now.checked_add(keep))
        {
            self.seq += 1;
            let d = (at, self.seq);
            self.deadlines.insert(d, id.to_owned());
            r.deadline = Some(d);
        }
    }
}

/// Every run in this process.
pub struct MemoryStore {
    runs: Mutex<Runs>,
    retention: Retention,
    run_ids: AtomicU64,
    window: u64,
    /// Accepted sends for the publish API's long poll: `(seq, send)`, drop-oldest.
    sends: Mutex<VecDeque<(u64, SendRecord)>>,
    /// The newest send's seq (long polls wait on it).
    sends_tx: watch::Sender<u64>,
    /// Cancel grace deadlines: (due ms, run, target), one per cancelled target.
    graces: Mutex<Vec<(u64, String, CancelTarget)>>,
}

impl MemoryStore {
    /// An empty store keeping `window` events per run for replay.
    pub fn new(window: u64) -> Self {
        Self {
            runs: Mutex::default(),
            retention: Retention::default(),
            run_ids: AtomicU64::new(1),
            window,
            sends: Mutex::new(VecDeque::new()),
            sends_tx: watch::channel(0).0,
            graces: Mutex::new(Vec::new()),
        }
    }

    /// Sets how long runs are kept (module docs).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    fn run(&self, id: &str) -> Option<Arc<Mutex<Run>>> {
        lock(&self.runs)
            .live(id, Instant::now())
            .map(|(r, _)| r.clone())
    }

    fn create_now(&self, id: &str, spec: RunSpec) -> bool {
        let now = Instant::now();
        let mut runs = lock(&self.runs);
        runs.sweep(now);
        if runs.live(id, now).is_some() {
            return false;
        }
        let mut fresh = Run::new(id, spec, self.window);
        runs.reschedule(id, &mut fresh, self.retention, now);
        let run = Arc::new(Mutex::new(fresh));
        runs.map.insert(id.to_owned(), (run, watch::channel(0).0));
        true
    }

    /// Logs a fresh send for the long poll (bounded, drop-oldest).
    fn log_send(&self, session: &str, crid: &str, content: &str) {
        let mut q = lock(&self.sends);
        let seq = q.back().map_or(*self.sends_tx.borrow(), |(n, _)| *n) + 1;
        if q.len() >= MEMORY_SENDS_CAP {
            q.pop_front();
        }
        q.push_back((
            seq,
            SendRecord {
                cursor: format!("0-{seq}"),
                session_id: session.to_owned(),
                run_id: session.to_owned(),
                client_request_id: crid.to_owned(),
                content: content.to_owned(),
            },
        ));
        self.sends_tx.send_replace(seq);
    }

    /// Sends after seq `after`, at most `max`.
    fn sends_since(&self, after: u64, max: usize) -> Vec<SendRecord> {
        lock(&self.sends)
            .iter()
            .filter(|(n, _)| *n > after)
            .take(max)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Runs `f` on run `id` under its lock, then wakes its streams. A write (the log
    /// grew) moves the run's deadline.
    fn change<T>(&self, id: &str, f: impl FnOnce(&mut Run) -> T) -> Option<T> {
        let now = Instant::now();
        let mut runs = lock(&self.runs);
        runs.sweep(now);
        let (run, tx) = runs.live(id, now)?;
        let (run, tx) = (run.clone(), tx.clone());
        let mut r = lock(&run);
        let before = r.last_id;
        let out = f(&mut r);
        if r.last_id != before {
            runs.reschedule(id, &mut r, self.retention, now);
        }
        tx.send_replace(r.last_id);
        Some(out)
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn new_run_id(&self, seed: u64) -> BoxFuture<'_, StoreResult<String>> {
        let n = self.run_ids.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "run_{:06}_{:08x}",
            n,
            (seed.wrapping_mul(0x9E37_79B9)) as u32
        );
        async move { Ok(id) }.boxed()
    }

    fn create<'a>(&'a self, id: &'a str, spec: RunSpec) -> BoxFuture<'a, StoreResult<bool>> {
        let fresh = self.create_now(id, spec);
        async move { Ok(fresh) }.boxed()
    }

    fn meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<RunMeta>>> {
        let m = self.run(id).map(|r| lock(&r).meta());
        async move { Ok(m) }.boxed()
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        ty: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        let n = self.change(id, |r| {
            match r.reply_taken(&Pending::default(), ty, &payload) {
                Some(crid) => Err(StoreError::ReplyTaken(crid)),
                None => Ok(r.append(ty, payload)),
            }
        });
        async move { n.transpose() }.boxed()
    }

    fn read<'a>(&'a self, id: &'a str, after: u64) -> BoxFuture<'a, StoreResult<Option<Replay>>> {
        let rep = self.run(id).map(|r| lock(&r).replay(after));
        async move { Ok(rep) }.boxed()
    }

    fn tail<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Tail>>> {
        let t = lock(&self.runs)
            .live(id, Instant::now())
            .map(|(_, tx)| Tail {
                rx: tx.subscribe(),
                _keep: None,
            });
        async move { Ok(t) }.boxed()
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<SnapshotBody>>> {
        let s = self.run(id).map(|r| {
            let r = lock(&r);
            SnapshotBody::new(&r.id, r.last_id, &r.state.state)
        });
        async move { Ok(s) }.boxed()
    }

    fn send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
        content: &'a str,
    ) -> BoxFuture<'a, StoreResult<SendOutcome>> {
        self.create_now(
            session,
            RunSpec {
                kind: RunKind::Chat,
                chaos: Chaos::default(),
                speed: 1.0,
                session_id: Some(session.to_owned()),
            },
        );
        let out =
            self.change(session, |r| r.send(crid, content))
                .map(|(message_id, fresh, finished)| SendOutcome {
                    finished,
                    message_id,
                    run_id: session.to_owned(),
                    fresh,
                });
        if out.as_ref().is_some_and(|o| o.fresh) {
            self.log_send(session, crid, content);
        }
        async move { out.ok_or_else(|| super::StoreError::Corrupt("session vanished".into())) }
            .boxed()
    }

    fn next_message_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        let m = self
            .run(id)
            .map(|r| lock(&r).next_message_id())
            .unwrap_or_else(|| "msg_0".into());
        async move { Ok(m) }.boxed()
    }

    fn prune<'a>(&'a self, id: &'a str, keep_from: u64) -> BoxFuture<'a, StoreResult<bool>> {
        let ok = self.change(id, |r| r.prune_to(keep_from)).is_some();
        async move { Ok(ok) }.boxed()
    }

    fn set_chaos<'a>(&'a self, id: &'a str, chaos: Chaos) -> BoxFuture<'a, StoreResult<bool>> {
        let ok = self.run(id).map(|r| lock(&r).spec.chaos = chaos).is_some();
        async move { Ok(ok) }.boxed()
    }

    fn append_batch<'a>(
        &'a self,
        id: &'a str,
        events: Vec<NewEvent>,
        key: Option<IdemKey>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>> {
        let out = self
            .change(id, |r| r.append_batch(events, key))
            .unwrap_or(BatchOutcome::UnknownRun);
        async move { Ok(out) }.boxed()
    }

    fn sends_after<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        wait_ms: u64,
    ) -> BoxFuture<'a, StoreResult<(Vec<SendRecord>, String)>> {
        async move {
            // `0-<seq>` (this store's form) or a bare number.
            let after = after
                .map(|c| c.rsplit('-').next().unwrap_or(c))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let mut rx = self.sends_tx.subscribe();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
            loop {
                let got = self.sends_since(after, max);
                if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                    let next = got
                        .last()
                        .map_or_else(|| format!("0-{after}"), |s| s.cursor.clone());
                    return Ok((got, next));
                }
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    continue;
                }
            }
        }
        .boxed()
    }

    fn request_cancel<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        let out = self
            .change(id, |r| {
                let key = target.key();
                if let Some(n) = r.cancels.get(&key) {
                    return CancelOutcome::Already(*n);
                }
                if r.finished {
                    return CancelOutcome::Finished;
                }
                if let CancelTarget::Reply(crid) = target {
                    match r.reply(crid) {
                        Some(MessageStatus::Completed) => {
                            return CancelOutcome::ReplyFinished(ReplyEnd::Completed)
                        }
                        Some(MessageStatus::Failed) => {
                            return CancelOutcome::ReplyFinished(ReplyEnd::Failed)
                        }
                        _ => {}
                    }
                }
                let n = r.append("run.cancel_requested", payload);
                r.cancels.insert(key, n);
                CancelOutcome::Requested(n)
            })
            .unwrap_or(CancelOutcome::UnknownRun);
        async move { Ok(out) }.boxed()
    }

    fn schedule_grace<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        // One per target (a cancel is appended once per target), so bounded by the cancels.
        lock(&self.graces).push((due_ms, id.to_owned(), target.clone()));
        async move { Ok(()) }.boxed()
    }

    fn claim_due_graces(
        &self,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<(String, CancelTarget)>>> {
        let mut g = lock(&self.graces);
        let mut due = Vec::new();
        g.retain(|(at, run, target)| {
            if *at <= now_ms && due.len() < max {
                due.push((run.clone(), target.clone()));
                false
            } else {
                true
            }
        });
        async move { Ok(due) }.boxed()
    }

    fn cancel_requested<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        let n = self
            .run(id)
            .and_then(|r| lock(&r).cancels.get(&target.key()).copied());
        async move { Ok(n) }.boxed()
    }

    fn info(&self) -> BoxFuture<'_, StoreResult<Value>> {
        let n = lock(&self.runs).map.len();
        async move { Ok(json!({"store": "memory", "runs": n})) }.boxed()
    }
}
