//! Where run logs live: one [`Store`] trait, two backends.
//!
//! - [`memory::MemoryStore`] (`--store memory`, the default): the log in this
//!   process, as the reference server always kept it. A restart loses it.
//! - [`redis::RedisStore`] (`--store redis://host:port`, or a Redis Cluster with
//!   `--store redis-cluster://host:port,…`): one Redis Stream per
//!   run with the event id as the entry id (`0-<event_id>`), so density and
//!   order are the store's own; any number of replicas and producer processes
//!   share it, and an event appended by one reaches the clients of every other.
//!
//! Everything a connection does (chaos, heartbeats, accounting) stays in
//! `lib.rs`/`hub.rs`; a store only logs, replays, tails, reduces and
//! deduplicates sends.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use runstream::core::wire::SnapshotBody;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::watch;

use crate::hub::Chaos;

/// Events a run keeps for replay by default; older ones are pruned (resumes get a snapshot).
pub const DEFAULT_WINDOW: u64 = 200_000;
// The reducer's driver (stored base, parked events, the window rule) is the
// `runstream` core's, shared with the TypeScript kit (`kit/reducer`).
pub use runstream::core::reduced::{prune_point, Reduced, PARK_CAP};

/// A store failure (the backend is unreachable or answered something unexpected).
/// Handlers answer it with `503` + `Retry-After`, which the client retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis command failed (connection lost, timeout, script error).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The store holds something this server cannot read.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The append would start a second reply to one send (`message.created` with a
    /// `reply_to` that already has a reply): refused, nothing appended.
    #[error("send {0:?} already has a reply")]
    ReplyTaken(String),
    /// A store URL this server does not know.
    #[error("unsupported store {0:?} (expected `memory`, `redis://host:port` or `redis-cluster://host:port,…`)")]
    Unsupported(String),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// What produces a run's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A supervisor run with workers and tools, then `run.completed`.
    Task,
    /// A chat session: events come from sends; it never completes by itself.
    Chat,
}

impl RunKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Chat => "chat",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "chat" {
            Self::Chat
        } else {
            Self::Task
        }
    }
}

/// How a run is created.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// What produces its events.
    pub kind: RunKind,
    /// Chaos applied to its connections (read at each stream's start).
    pub chaos: Chaos,
    /// Playback speed of its script (chat replies use it too).
    pub speed: f64,
    /// The chat session it belongs to (PROTOCOL §7's `sessions` claim grants it).
    pub session_id: Option<String>,
}

/// A run's settings and log bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMeta {
    /// What produces its events.
    pub kind: RunKind,
    /// Chaos applied to its connections.
    pub chaos: Chaos,
    /// Playback speed.
    pub speed: f64,
    /// Lowest id still in the replay window.
    pub first_id: u64,
    /// Highest logged id (0 = empty).
    pub last_id: u64,
    /// `run.completed` is logged.
    pub finished: bool,
    /// The chat session it belongs to, if it was published with one.
    pub session_id: Option<String>,
}

impl RunMeta {
    /// Events a stream resuming after `last` replays (within the window; an
    /// older resume point gets a snapshot for the rest).
    pub fn behind(&self, last: u64) -> u64 {
        self.last_id
            .saturating_sub(last.max(self.first_id.saturating_sub(1)))
    }
}

/// One event to append (the store gives it its id, run id and timestamp).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// PROTOCOL §4 type.
    pub ty: String,
    /// Its payload (a JSON object).
    pub payload: Value,
}

/// A publish batch's idempotency key and the digest of its body.
#[derive(Debug, Clone, PartialEq)]
pub struct IdemKey {
    /// The producer's `Idempotency-Key`.
    pub key: String,
    /// Hex SHA-256 of the batch's canonical JSON: another body under the same key is a conflict.
    pub digest: String,
}

/// How long a run's data is kept after its last write (docs/REDIS.md "Retention"):
/// `finished_s` once `run.completed` is logged, `idle_s` while it is not (a run whose
/// producer died). 0 = keep forever. The gateway's `--retention-secs` and
/// `--idle-retention-secs`; the kit's `retentionS` and `idleRetentionS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Seconds a finished run is kept after its last write (0 = forever).
    pub finished_s: u64,
    /// Seconds an unfinished run is kept after its last append, send or cancel (0 = forever).
    pub idle_s: u64,
}

/// Default retention of a finished run: 7 days.
pub const DEFAULT_RETENTION_S: u64 = 7 * 24 * 3600;
/// Default idle retention of an unfinished run: 30 days (a producer that stops for
/// longer than that has died; a live run refreshes it with every write).
pub const DEFAULT_IDLE_RETENTION_S: u64 = 30 * 24 * 3600;

impl Default for Retention {
    fn default() -> Self {
        Self {
            finished_s: DEFAULT_RETENTION_S,
            idle_s: DEFAULT_IDLE_RETENTION_S,
        }
    }
}

/// The longest retention a flag may ask for: 100 years (past it, deadlines overflow
/// clocks and `PEXPIRE` arguments; `0` is the way to say forever).
pub const MAX_RETENTION_S: u64 = 100 * 365 * 24 * 3600;

/// Below this idle retention, a send's and a publish batch's idempotency (24 h,
/// PROTOCOL §5, SERVER.md §1) is cut short with the run: worth a warning at start.
pub const IDEMPOTENCY_S: u64 = 24 * 3600;

impl Retention {
    /// `Err` naming the flag when a value is past [`MAX_RETENTION_S`].
    pub fn check(&self) -> Result<(), String> {
        for (flag, v) in [
            ("--retention-secs", self.finished_s),
            ("--idle-retention-secs", self.idle_s),
        ] {
            if v > MAX_RETENTION_S {
                return Err(format!(
                    "{flag}: at most {MAX_RETENTION_S} (100 years); 0 keeps forever"
                ));
            }
        }
        Ok(())
    }

    /// A warning when an idle retention shorter than 24 h cuts idempotency short.
    pub fn warning(&self) -> Option<String> {
        (self.idle_s > 0 && self.idle_s < IDEMPOTENCY_S).then(|| {
            format!(
                "--idle-retention-secs {}: an idle run and its idempotency keys go before the 24 h a producer's or a client's retry may take",
                self.idle_s
            )
        })
    }

    /// Keeps everything forever (the stores' behaviour before retention existed).
    pub const FOREVER: Self = Self {
        finished_s: 0,
        idle_s: 0,
    };

    /// How long a run in this state is kept after a write (`None` = forever): the one rule.
    pub fn keep_for(&self, finished: bool) -> Option<std::time::Duration> {
        let s = if finished {
            self.finished_s
        } else {
            self.idle_s
        };
        (s > 0).then(|| std::time::Duration::from_secs(s))
    }
}

/// Idempotency keys are kept this long (SERVER.md §1: "within 24 h").
pub const IDEMPOTENCY_TTL_S: u64 = 24 * 3600;
/// Most idempotency keys the memory store keeps per run (beyond it, expired
/// ones go first, then the oldest).
pub const MEMORY_IDEM_CAP: usize = 10_000;
/// Sends the memory store keeps for `GET /api/publish/sends` (drop-oldest).
pub const MEMORY_SENDS_CAP: usize = 10_000;

/// What an atomic batch append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Appended with ids `first..=last`.
    Appended { first: u64, last: u64 },
    /// The key was seen with the same body: these ids, nothing appended.
    Repeated { first: u64, last: u64 },
    /// The key was seen with another body: nothing appended.
    KeyConflict,
    /// The run is finished: nothing appended.
    Finished,
    /// A `message.created` of the batch names a `reply_to` whose send already has a
    /// reply (one reply per send, checked in the append step): nothing appended.
    ReplyTaken,
    /// No such run.
    UnknownRun,
}

/// What a cancel asks to stop (PROTOCOL §8): the whole run, or one reply of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelTarget {
    /// The run.
    Run,
    /// The reply to the send with this `client_request_id`.
    Reply(String),
}

impl CancelTarget {
    /// The target's key in a run's cancel table.
    pub fn key(&self) -> String {
        match self {
            Self::Run => "run".to_owned(),
            Self::Reply(crid) => format!("reply:{crid}"),
        }
    }

    /// Reads [`Self::key`] back.
    pub fn from_key(key: &str) -> Option<Self> {
        match key {
            "run" => Some(Self::Run),
            k => k.strip_prefix("reply:").map(|c| Self::Reply(c.to_owned())),
        }
    }
}

/// What [`Store::request_cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// `run.cancel_requested` appended with this id.
    Requested(u64),
    /// The target was already asked to stop: the first request's id, nothing appended.
    Already(u64),
    /// The run is finished: nothing appended.
    Finished,
    /// The reply named by the target already ended (`completed` or `failed`): nothing
    /// appended. Checked in the same atomic step as the append (the Redis store).
    ReplyFinished(ReplyEnd),
    /// No such run.
    UnknownRun,
}

/// How a reply ended ([`CancelOutcome::ReplyFinished`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyEnd {
    /// `message.completed`.
    Completed,
    /// `message.failed`.
    Failed,
}

impl ReplyEnd {
    /// The status word of PROTOCOL §8's 409.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// A chat send as the publish API's long poll lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendRecord {
    /// Where it is in the sends log (pass the last one back as `after`).
    pub cursor: String,
    /// The chat session.
    pub session_id: String,
    /// The run it was logged in (the session's chat run).
    pub run_id: String,
    /// The send's idempotency key.
    pub client_request_id: String,
    /// What the user wrote.
    pub content: String,
}

/// A store URL fit for a log line: the password (and user) of
/// `scheme://user:password@host…` replaced by `***`, for every address of a
/// cluster list.
pub fn redact(spec: &str) -> String {
    spec.split(',')
        .map(|part| match (part.find("://"), part.rfind('@')) {
            (Some(s), Some(at)) if at > s => [&part[..s + 3], "***", &part[at..]].concat(),
            (None, Some(at)) => ["***", &part[at..]].concat(),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// True when `id` may name a run or a session this server creates: 1–128
/// characters (PROTOCOL §1), no control characters, and no `{` or `}` (a
/// run's Redis keys share the hash tag `{id}`: a brace would move a key to
/// another slot or make two ids' keys collide).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 128
        && !id.chars().any(|c| c.is_control() || c == '{' || c == '}')
}

/// True when `c` is a sends cursor (`<ms>-<seq>`, or `<n>`), the form both stores use.
pub fn valid_cursor(c: &str) -> bool {
    let mut parts = c.splitn(2, '-');
    let digits = |p: Option<&str>| {
        p.is_some_and(|x| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit()))
    };
    let a = parts.next();
    match parts.next() {
        Some(b) => digits(a) && digits(Some(b)),
        None => digits(a),
    }
}

/// What a resume gets now: an optional snapshot, then contiguous events.
#[derive(Debug, Default)]
pub struct Replay {
    /// `(event_id, state)` when the resume point is older than the window.
    pub snapshot: Option<(u64, Value)>,
    /// Events after the resume point (or after the snapshot), in order, dense.
    /// A backend may return a bounded batch: read again from the new cursor.
    pub events: Vec<Arc<RawValue>>,
    /// The run's highest id known when this was read.
    pub last_id: u64,
    /// `run.completed` is logged.
    pub done: bool,
}

/// The answer to a chat send.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    /// The user message's id.
    pub message_id: String,
    /// The run (chat session) it was logged in.
    pub run_id: String,
    /// First time this `client_request_id` was seen (a reply should start).
    pub fresh: bool,
    /// The session's run had ended (`run.completed`) before this new send:
    /// nothing was logged (a repeat of an earlier send still gets its answer).
    pub finished: bool,
}

/// A live-tail subscription: `rx` changes whenever the run's log grows
/// (its value is the highest id seen). Dropping it unsubscribes.
pub struct Tail {
    /// Wakes on every append.
    pub rx: watch::Receiver<u64>,
    /// Keeps a backend's shared tail alive while this subscription lives.
    pub _keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// A run log backend. Every method is async and cancel-safe to drop.
///
/// Contract (what the server tests check for each backend):
/// - ids are dense per run: the n-th append gets id n;
/// - `read(after)` returns the events with id > `after` in order, preceded by
///   a snapshot when `after + 1` is older than the window;
/// - a [`Tail`] taken before a `read` wakes for every later append, whichever
///   process appended;
/// - `send` is idempotent on `(session, client_request_id)`.
pub trait Store: Send + Sync + 'static {
    /// `"memory"`, `"redis"` or `"redis-cluster"`.
    fn name(&self) -> &'static str;

    /// A fresh run id, unique across every process sharing the store.
    fn new_run_id(&self, seed: u64) -> BoxFuture<'_, StoreResult<String>>;

    /// Creates run `id` unless it exists; true when it was created.
    fn create<'a>(&'a self, id: &'a str, spec: RunSpec) -> BoxFuture<'a, StoreResult<bool>>;

    /// The run's settings and bounds, `None` if unknown.
    fn meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<RunMeta>>>;

    /// Appends one event with the next dense id; `None` if the run is unknown.
    fn append<'a>(
        &'a self,
        id: &'a str,
        ty: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>>;

    /// What a client resuming after `after` gets now; `None` if the run is unknown.
    fn read<'a>(&'a self, id: &'a str, after: u64) -> BoxFuture<'a, StoreResult<Option<Replay>>>;

    /// Subscribes to the run's appends; `None` if the run is unknown.
    fn tail<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Tail>>>;

    /// The state after every logged event (PROTOCOL §2c), reduced from the log.
    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<SnapshotBody>>>;

    /// An idempotent chat send into session `session` (created as a chat run if new).
    fn send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
        content: &'a str,
    ) -> BoxFuture<'a, StoreResult<SendOutcome>>;

    /// A fresh message id in run `id`.
    fn next_message_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<String>>;

    /// Forgets events with id < `keep_from` (they become a snapshot); false if unknown.
    fn prune<'a>(&'a self, id: &'a str, keep_from: u64) -> BoxFuture<'a, StoreResult<bool>>;

    /// Replaces the run's chaos knobs; false if unknown.
    fn set_chaos<'a>(&'a self, id: &'a str, chaos: Chaos) -> BoxFuture<'a, StoreResult<bool>>;

    /// Backend figures for diagnostics (Redis: `used_memory`, clients).
    fn info(&self) -> BoxFuture<'_, StoreResult<Value>>;

    /// Sends accepted in any process and not yet answered, for a chat worker
    /// (`produce --chat-worker`); waits up to `block_ms` for one. Only a shared
    /// store has a queue: the memory store answers [`StoreError::Unsupported`].
    /// Sends another consumer took and left unacknowledged for `reclaim_idle_ms`
    /// (it died before answering, or its answer failed) are taken over first.
    /// `answering` are the queue ids this consumer is still answering: kept (their
    /// idle time starts again, a heartbeat), never handed out again.
    fn claim_sends<'a>(
        &'a self,
        consumer: &'a str,
        block_ms: u64,
        reclaim_idle_ms: u64,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<QueuedSend>>> {
        let _ = (consumer, block_ms, reclaim_idle_ms, answering);
        let name = self.name();
        async move { Err(StoreError::Unsupported(format!("{name}: no send queue"))) }.boxed()
    }

    /// The heartbeat alone of [`Store::claim_sends`]: the sends `consumer` is still
    /// answering are kept from being taken over, for a consumer too busy to claim more.
    fn heartbeat_sends<'a>(
        &'a self,
        consumer: &'a str,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (consumer, answering);
        async move { Ok(()) }.boxed()
    }

    /// Appends `events` atomically with dense ids (all or nothing). With
    /// `key`, a repeat of the same key and body appends nothing and answers
    /// the first ids; the same key with another body is a conflict. A
    /// finished run takes nothing.
    fn append_batch<'a>(
        &'a self,
        id: &'a str,
        events: Vec<NewEvent>,
        key: Option<IdemKey>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>>;

    /// Chat sends logged after `after` (`None`: from the oldest kept), at
    /// most `max`, waiting up to `wait_ms` for one; and the cursor to pass
    /// next. At least once: a consumer deduplicates by `client_request_id`.
    fn sends_after<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        wait_ms: u64,
    ) -> BoxFuture<'a, StoreResult<(Vec<SendRecord>, String)>>;

    /// Asks to stop `target` of run `id` (PROTOCOL §8), atomically: the
    /// first request for a target appends `run.cancel_requested` with
    /// `payload`; every later one answers that event's id and appends nothing;
    /// a finished run takes nothing.
    fn request_cancel<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>>;

    /// Records that the gateway must end `target` of run `id` at `due_ms`
    /// (Unix ms) unless a producer did (PROTOCOL §8's grace period). Kept in
    /// the store, so any replica ends it, also when the one that took the
    /// cancel is gone.
    fn schedule_grace<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>>;

    /// Claims at most `max` graces due at `now_ms`: each one is claimed by
    /// exactly one caller, whichever process asks.
    fn claim_due_graces(
        &self,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<(String, CancelTarget)>>>;

    /// The id of the `run.cancel_requested` that asked to stop `target`, if any.
    fn cancel_requested<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>>;

    /// Marks a claimed send as answered.
    fn ack_send<'a>(&'a self, queue_id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let _ = queue_id;
        async move { Ok(()) }.boxed()
    }

    /// Claims the answer to send `crid` of `session` for this process (`--replies local`):
    /// true when nobody claimed it before. On a shared store it is the claim the queue's
    /// consumers make (chat workers, the TypeScript kit's `onSend`), so a send is answered
    /// once whoever takes it first; the memory store has no other consumer (always true).
    fn claim_send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        let _ = (session, crid);
        async move { Ok(true) }.boxed()
    }
}

/// How long a send stays with a consumer that read it without answering before a live
/// one takes it over (`--send-claim-idle-ms`, the kit's `sendClaimIdleMs`), in ms.
pub const DEFAULT_SEND_CLAIM_IDLE_MS: u64 = 30_000;
/// The shortest claim idle a consumer accepts: a live consumer heartbeats its sends every
/// third of it, which needs some room (0 would take live consumers' sends at every claim).
pub const MIN_SEND_CLAIM_IDLE_MS: u64 = 1_000;
/// Most sends a chat worker answers at once (the kit's `MAX_SENDS_IN_FLIGHT`): it claims
/// again only with room for a whole claim, and heartbeats what it holds meanwhile.
pub const MAX_SENDS_IN_FLIGHT: usize = 64;

/// A chat send waiting for its reply (the shared store's send queue).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedSend {
    /// The queue entry, for [`Store::ack_send`].
    pub queue_id: String,
    /// The chat session (run).
    pub session: String,
    /// The send's `client_request_id`.
    pub crid: String,
    /// What the user wrote.
    pub content: String,
}

/// Opens the store named by `--store`: `memory`, `redis://host:port[/db]`, or
/// `redis-cluster://host:port,host:port,…` (seed nodes of a Redis Cluster).
pub async fn open(spec: &str, window: u64) -> StoreResult<Arc<dyn Store>> {
    open_with(spec, window, Retention::default()).await
}

/// [`open`] with a [`Retention`] other than the default.
pub async fn open_with(
    spec: &str,
    window: u64,
    retention: Retention,
) -> StoreResult<Arc<dyn Store>> {
    if spec == "memory" {
        return Ok(Arc::new(
            memory::MemoryStore::new(window).with_retention(retention),
        ));
    }
    if spec.starts_with("redis://")
        || spec.starts_with("redis+unix://")
        || spec.starts_with("redis-cluster://")
    {
        return Ok(Arc::new(
            redis::RedisStore::connect(spec, window)
                .await?
                .with_retention(retention),
        ));
    }
    Err(StoreError::Unsupported(redact(spec)))
}

/// A stored base read back ([`Reduced::from_stored`]); one that cannot be read is
/// [`StoreError::Corrupt`].
pub fn restore_base(run_id: &str, text: &str) -> StoreResult<Reduced> {
    Reduced::from_stored(run_id, text).map_err(|e| StoreError::Corrupt(e.to_string()))
}
