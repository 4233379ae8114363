//! The Redis store (`--store redis://host:port`, or `--store
//! redis-cluster://host:port,host:port,…` for a Redis Cluster): one Redis
//! Stream per run, shared by every replica and producer process. The same code
//! runs on both: `Conn` is a single Redis connection or a cluster connection
//! (which routes each command to the master of its key's slot).
//!
//! Keys. Every Lua script and every `MULTI` pipeline names keys of **one**
//! run or session only, and all of them carry its id as the hash tag `{…}`, so
//! they share one cluster slot; the two global keys are only ever touched by
//! single-key commands (so their names need no tag):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `runstream:{<run>}:log` | stream | entry id `0-<event_id>`, fields `e` (the envelope JSON) and `t` (its type) |
//! | `runstream:{<run>}:meta` | hash | `kind`, `chaos` (JSON), `speed`, `first_id`, `last_id`, `finished`, `next_message`, `session` (the chat session a published run belongs to) |
//! | `runstream:{<run>}:cancel:<target>` | string | the id of the `run.cancel_requested` for target `run` or `reply:<crid>` (PROTOCOL §8: one request per target) |
//! | `runstream:{<run>}:idem:<key>` | string | a publish batch's `<sha256 hex>:<first>:<last>`; `SET PX` 24 h, capped by the run's retention (idempotency across replicas) |
//! | `runstream:{<run>}:keys` | sorted set | the run's per-item keys (`cancel:…`, `idem:…`, `send:…`, `claimed:…`, `unqueued`) scored by the Unix ms each expires by itself (`+inf`: with the run), so the step that finishes the run caps them all |
//! | `runstream:{<run>}:base` | string | the reduced state as of `first_id - 1` (written when the log is trimmed) |
//! | `runstream:{<session>}:send:<client_request_id>` | string | the message id of a send; `SET NX EX` (idempotency, TTL) |
//! | `runstream:{<session>}:unqueued` | hash | `client_request_id` → content of sends accepted but not yet on the queue (a process died between the steps); `EXPIRE` = the send TTL |
//! | `runstream:{<session>}:claimed:<client_request_id>` | string | who answers this send: the queue entry a consumer took (a chat worker, the kit's `onSend`), or `local` (a `--replies local` replica, [`Store::claim_send`]); `SET NX EX` (a send is answered once, also when queued twice) |
//! | `runstream:cancel_graces` | sorted set | `["<run>","<target>"]` scored by the Unix ms its grace period ends; every replica claims due ones with `ZREM` (one winner) and ends the target |
//! | `runstream:run_ids` | counter | run ids unique across processes (`INCR`, single key) |
//! | `runstream:sends` | stream | accepted sends (`s` session, `c` client_request_id, `x` content), for chat workers (consumer group `replies`) and the publish API's long poll; `MAXLEN ~ 100000`; single-key commands only (`XADD`, `XREAD`, `XREADGROUP`, `XACK`, `XGROUP`) |
//!
//! - Send, in three steps because the queue is in another slot than the
//!   session: (1) a Lua script in the session's slot checks the send key,
//!   logs `message.created` and records the send in `unqueued`, atomically;
//!   (2) `XADD runstream:sends`; (3) `HDEL unqueued`. The answer goes out
//!   after step 3. If the process dies (or Redis fails) between the steps, the
//!   client gets no answer and retries the same `client_request_id`; step 1
//!   then answers the same message id and "still unqueued" with the content
//!   first accepted, and the retry does steps 2 and 3. A death between 2 and
//!   3 queues the send twice: the queue is at least once, so chat workers claim
//!   each `(session, client_request_id)` once (`claimed`, `SET NX`) and the
//!   publish API's consumers deduplicate by `client_request_id` (SERVER.md §1).
//!   The TypeScript kit's processes with an `onSend` handler are consumers of the
//!   same group `replies`, so a send is answered once across both servers.
//! - The Lua scripts live in `lua/` at the repository root (composed as
//!   `lua/scripts.json` says), loaded by this file and by the kit's `redisStore()`
//!   alike; docs/REDIS.md has this layout for both servers.
//! - Retention ([`Retention`], docs/REDIS.md "Retention"): every script that writes a run
//!   takes the retention and the idle retention (ms) as its last two ARGV
//!   (`lua/retention.lua`). Each write sets the run's keys to the idle retention;
//!   the step that logs `run.completed` gives every key of the run's slot at most
//!   the retention, in the same script.
//! - Append: a Lua script bumps `last_id` and `XADD`s with the explicit id
//!   `0-<last_id>` in one step, so ids are dense whatever the number of writers.
//! - Replay: `XRANGE` from `0-<after+1>` in batches; a resume older than
//!   `first_id` gets the stored base as a `snapshot` first (PROTOCOL §2a).
//! - Live tail: one task per run with local subscribers runs `XREAD BLOCK` on
//!   its own connection (a blocking read would stall the shared multiplexed
//!   one) and keeps the newest events in a bounded cache; every local stream
//!   of the run reads from that cache, so N clients cost one Redis reader
//!   (and a check of `first_id` per read, from an `HGET` started after the read
//!   began and shared by the run's streams that asked meanwhile: events another
//!   process pruned are never served from the cache, the resume gets the snapshot).
//! - Window: when a run holds more than `window + 10 %` events
//!   ([`prune_point`]), the appender reduces the oldest ones into the base
//!   and `XTRIM MINID`s them.
//! - Snapshot: the base plus `XRANGE` of the window, reduced; each process
//!   caches the reduced state and only applies what is new.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, RedisFuture, Script};
use runstream::core::wire::SnapshotBody;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    prune_point, restore_base, BatchOutcome, IdemKey, NewEvent, QueuedSend, Reduced, Replay,
    Retention, RunKind, RunMeta, RunSpec, SendOutcome, SendRecord, Store, StoreError, StoreResult,
    Tail,
};
use crate::hub::{lock, rfc3339_now, Chaos};

/// Entries per `XRANGE`/`XREAD` call.
const BATCH: usize = 1000;
/// Newest events a live tail keeps for its local streams (drop-oldest; older reads go to Redis).
const TAIL_CACHE: usize = 4096;
/// How long one `XREAD BLOCK` waits before the tail checks whether anyone still listens.
const BLOCK_MS: u64 = 1000;
/// Reduced states cached for the snapshot endpoint (beyond it the cache starts over).
const SNAPSHOT_CACHE: usize = 256;
/// Default lifetime of a chat send's idempotency key.
pub const DEFAULT_SEND_TTL_S: u64 = 24 * 3600;

/// The Lua scripts, from `lua/` at the repository root: the one copy both servers load
/// (the TypeScript kit ships the same files; see docs/REDIS.md). Each `*.lua` file says
/// its KEYS, ARGV and reply. A script that appends events starts with the shared append
/// step (`append_step.lua`: dense id, `XADD` with that id, the finished flag), prepended
/// here by [`with_append_step`]; `lua/scripts.json` lists the same composition for the kit.
mod lua {
    /// The retention helpers every writing script starts with (TTLs as its last two ARGV).
    pub const RETENTION: &str = include_str!("../../../lua/retention.lua");
    /// The append step the appending scripts share (defines `append(meta, log, body, ty)`).
    pub const APPEND_STEP: &str = include_str!("../../../lua/append_step.lua");
    /// Appends one event (KEYS: meta, log).
    pub const APPEND: &str = include_str!("../../../lua/append.lua");
    /// Step 1 of a chat send (KEYS: meta, log, send key, unqueued).
    pub const SEND: &str = include_str!("../../../lua/send.lua");
    /// Creates a run's meta (KEYS: meta).
    pub const CREATE: &str = include_str!("../../../lua/create.lua");
    /// A cancel request, once per target (KEYS: meta, log, cancel key).
    pub const CANCEL: &str = include_str!("../../../lua/cancel.lua");
    /// An atomic, idempotent batch append (KEYS: meta, log, idempotency key).
    pub const APPEND_BATCH: &str = include_str!("../../../lua/append_batch.lua");
    /// Commits a trim of the window with its base (KEYS: meta, log, base).
    pub const TRIM: &str = include_str!("../../../lua/trim.lua");
    /// Sets a run's chaos (KEYS: meta).
    pub const SET_CHAOS: &str = include_str!("../../../lua/set_chaos.lua");
    /// Bumps a run's message counter unless the run is unknown (KEYS: meta).
    pub const NEXT_MESSAGE: &str = include_str!("../../../lua/next_message.lua");
    /// Ends the reply of a send taken over from a stopped consumer (KEYS: meta, log).
    pub const ORPHAN: &str = include_str!("../../../lua/orphan.lua");
}

/// A script that appends: the shared append step, then `main`.
fn with_append_step(main: &str) -> Script {
    Script::new(&format!("{}{}{main}", lua::RETENTION, lua::APPEND_STEP))
}

/// A script that writes without appending: the retention helpers, then `main`.
fn with_retention(main: &str) -> Script {
    Script::new(&format!("{}{main}", lua::RETENTION))
}

/// Every script the store runs, by its name in `lua/scripts.json`: append, send, create,
/// append_batch, cancel, trim, set_chaos, next_message, orphan.
fn scripts() -> [(&'static str, Script); 9] {
    [
        ("append", with_append_step(lua::APPEND)),
        ("send", with_append_step(lua::SEND)),
        ("create", with_retention(lua::CREATE)),
        ("append_batch", with_append_step(lua::APPEND_BATCH)),
        ("cancel", with_append_step(lua::CANCEL)),
        ("trim", Script::new(lua::TRIM)),
        ("set_chaos", Script::new(lua::SET_CHAOS)),
        ("next_message", Script::new(lua::NEXT_MESSAGE)),
        ("orphan", with_append_step(lua::ORPHAN)),
    ]
}

/// The stream of accepted sends that chat workers consume (consumer group [`SEND_GROUP`]).
const SEND_QUEUE: &str = "runstream:sends";
/// Approximate bound of the send queue (`XADD MAXLEN ~`).
const SEND_QUEUE_MAXLEN: u64 = 100_000;
/// The consumer group of chat workers.
const SEND_GROUP: &str = "replies";
/// Most sends one claim takes (`COUNT` of `XREADGROUP` and `XAUTOCLAIM`).
const SEND_BATCH: usize = 16;
/// A send handed out more often than this (its answer failed every time) is acknowledged
/// unanswered instead of reclaimed again.
pub const MAX_SEND_DELIVERIES: u64 = 5;

fn meta_key(id: &str) -> String {
    format!("runstream:{{{id}}}:meta")
}
fn log_key(id: &str) -> String {
    format!("runstream:{{{id}}}:log")
}
fn base_key(id: &str) -> String {
    format!("runstream:{{{id}}}:base")
}
/// Cancel grace deadlines of every run (one key: a single-key command on a cluster).
const GRACES: &str = "runstream:cancel_graces";

fn cancel_key(id: &str, target: &super::CancelTarget) -> String {
    format!("runstream:{{{id}}}:cancel:{}", target.key())
}
fn idem_key(id: &str, key: &str) -> String {
    format!("runstream:{{{id}}}:idem:{key}")
}
fn send_key(session: &str, crid: &str) -> String {
    format!("runstream:{{{session}}}:send:{crid}")
}
fn unqueued_key(session: &str) -> String {
    format!("runstream:{{{session}}}:unqueued")
}
fn claimed_key(session: &str, crid: &str) -> String {
    format!("runstream:{{{session}}}:claimed:{crid}")
}

const META_FIELDS: [&str; 7] = [
    "kind", "chaos", "speed", "first_id", "last_id", "finished", "session",
];

fn parse_meta(v: &[Option<String>]) -> StoreResult<Option<RunMeta>> {
    let field = |i: usize| v.get(i).and_then(|x| x.as_deref());
    let Some(kind) = field(0) else {
        return Ok(None);
    };
    let num = |i: usize| field(i).and_then(|s| s.parse::<u64>().ok());
    let chaos: Chaos = match field(1) {
        Some(c) => {
            serde_json::from_str(c).map_err(|e| StoreError::Corrupt(format!("chaos: {e}")))?
        }
        None => Chaos::default(),
    };
    Ok(Some(RunMeta {
        kind: RunKind::parse(kind),
        chaos,
        speed: field(2).and_then(|s| s.parse().ok()).unwrap_or(1.0),
        first_id: num(3).unwrap_or(1),
        last_id: num(4).unwrap_or(0),
        finished: field(5) == Some("1"),
        session_id: field(6).map(str::to_owned),
    }))
}

/// One stream entry as XRANGE/XREAD return it (RESP2): id, flat field/value list.
type Entry = (String, Vec<String>);
/// An `XREAD` reply: per stream key, its new entries (nil when the block timed out).
type XreadReply = Option<Vec<(String, Vec<Entry>)>>;

/// The event id of an entry id `0-<n>`.
fn entry_id(id: &str) -> Option<u64> {
    id.strip_prefix("0-").and_then(|n| n.parse().ok())
}

/// The value of field `name` in an entry's flat field list.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|kv| kv.first().is_some_and(|k| k == name))
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

/// Entries as `(event_id, envelope)`, in order.
fn events(entries: Vec<Entry>) -> StoreResult<Vec<(u64, Arc<RawValue>)>> {
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let n = entry_id(&id).ok_or_else(|| StoreError::Corrupt(format!("entry id {id}")))?;
        let e = field(&fields, "e").ok_or_else(|| StoreError::Corrupt(format!("entry {id}")))?;
        let raw = RawValue::from_string(e.to_owned())
            .map_err(|err| StoreError::Corrupt(format!("entry {id}: {err}")))?;
        out.push((n, Arc::from(raw)));
    }
    Ok(out)
}

/// True when `evs` are dense and start at `from`.
fn dense_from(evs: &[(u64, Arc<RawValue>)], from: u64) -> bool {
    evs.iter()
        .enumerate()
        .all(|(i, (n, _))| *n == from + i as u64)
}

/// The envelope JSON without its opening `{` and without `event_id` (the script prepends both).
fn body_rest(run_id: &str, ty: &str, payload_rest: &str) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        run_id: &'a str,
        #[serde(rename = "type")]
        ty: &'a str,
        timestamp: String,
    }
    let head = serde_json::to_string(&Head {
        run_id,
        ty,
        timestamp: rfc3339_now(),
    })
    .unwrap_or_default();
    // `{"run_id":…,"timestamp":"…"}` → `"run_id":…,"timestamp":"…","payload":<rest>}`
    let inner = head
        .strip_prefix('{')
        .and_then(|h| h.strip_suffix('}'))
        .unwrap_or_default();
    format!("{inner},\"payload\":{payload_rest}}}")
}

/// What taking a send over found of its reply (`lua/orphan.lua`).
#[derive(Debug, PartialEq, Eq)]
enum Orphan {
    /// No reply was started: the taker answers the send.
    Unstarted,
    /// The reply ended (here, `message.failed`, or before), or the run is gone or finished.
    Ended,
}

/// What step 1 of a send answered.
struct Accepted {
    message_id: String,
    fresh: bool,
    /// A new send into a finished run: refused, nothing logged.
    finished: bool,
    /// The `message.created` id and the run's `first_id` (fresh sends only; for the window).
    last: u64,
    first: u64,
    /// The content to put on the queue now: a fresh send, or a repeat whose queue step never completed.
    to_queue: Option<String>,
}

/// The live tail of one run in this process.
struct TailShared {
    /// Highest id the tail has read; every local stream of the run waits on it.
    tx: watch::Sender<u64>,
    cache: Mutex<TailCache>,
    /// The run's `first_id` as Redis has it, read for the streams served from `cache`.
    first_ids: FirstIdReads,
}

/// Reads of a run's `first_id` shared by the run's local streams.
///
/// A stream served from the tail cache must not get events another process pruned
/// before its read began, so it needs `first_id` from a read *started after it asked*.
/// One read (`HGET`) is in flight at a time per run: a stream that asks while one is in
/// flight waits for the next, which every stream that asked meanwhile shares. N streams
/// woken by one append cost at most two reads, not N (each read cost the gateway an
/// in-flight command and its buffers per stream: ~3.5 KB per connection at the peak of
/// `benches/load.mjs` at 5,000 clients).
struct FirstIdReads {
    state: Mutex<FirstIdFlights>,
    /// The latest finished read: its generation and what it answered (`None`: it failed,
    /// and its waiters read `first_id` themselves, to report the store's own error).
    done: watch::Sender<(u64, Option<Option<u64>>)>,
}

#[derive(Default)]
struct FirstIdFlights {
    /// Generation of the latest read started (reads are numbered from 1).
    started: u64,
    /// Whether the read of generation `started` is in flight.
    in_flight: bool,
    /// The newest generation a stream waits for.
    wanted: u64,
}

impl FirstIdReads {
    fn new() -> Self {
        Self {
            state: Mutex::new(FirstIdFlights::default()),
            done: watch::channel((0, None)).0,
        }
    }
}

/// The newest events of a run, contiguous: `events[0]` has id `first`.
struct TailCache {
    events: VecDeque<Arc<RawValue>>,
    first: u64,
    last: u64,
    finished: bool,
}

type Tails = Arc<Mutex<HashMap<String, Arc<TailShared>>>>;

/// A run's reduced state cached for snapshots, with the envelope at its cursor (`None`:
/// not known): reused only while the log still has that envelope there.
type CachedState = (Reduced, Option<Arc<RawValue>>);

/// One connection to a single Redis or to a cluster: every command of the store goes
/// through it unchanged (on a cluster each is routed to the master of its key's slot; a
/// script or `MULTI` pipeline must name keys of one slot, which the key layout guarantees).
#[derive(Clone)]
enum Conn {
    /// The shared, reconnecting connection to a single Redis.
    Manager(ConnectionManager),
    /// A connection of its own to a single Redis (blocking reads).
    Plain(MultiplexedConnection),
    /// A cluster connection (one multiplexed connection per master, slot-routed).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from: a single Redis, or a cluster's seed nodes.
#[derive(Clone)]
enum Source {
    Single(Client),
    Cluster(Vec<String>),
}

impl Source {
    /// A cluster client whose requests time out after `response`. It never re-sends a
    /// command by itself (`retries(0)`): after a dropped connection or a timeout an append
    /// script may have run, and a blind re-send would log its event twice (the single-node
    /// `ConnectionManager` does not re-send either). A `MOVED` during resharding therefore
    /// fails that one command (503; the client retries) and refreshes the slot map.
    fn cluster_client(seeds: &[String], response: Duration) -> redis::RedisResult<ClusterClient> {
        ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(response)
            .retries(0)
            .build()
    }

    /// The shared connection every non-blocking command uses.
    async fn shared(&self) -> redis::RedisResult<Conn> {
        match self {
            Self::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_number_of_retries(3);
                Ok(Conn::Manager(
                    ConnectionManager::new_with_config(client.clone(), cfg).await?,
                ))
            }
            Self::Cluster(seeds) => Ok(Conn::Cluster(
                Self::cluster_client(seeds, Duration::from_secs(10))?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    /// A connection of its own for a blocking read (`XREAD BLOCK`, `XREADGROUP BLOCK`) that
    /// may wait up to `block`: on the shared one it would stall every other command behind it.
    async fn blocking(&self, block: Duration) -> redis::RedisResult<Conn> {
        let response = block + Duration::from_secs(5);
        match self {
            Self::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response));
                Ok(Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Self::Cluster(seeds) => Ok(Conn::Cluster(
                Self::cluster_client(seeds, response)?
                    .get_async_connection()
                    .await?,
            )),
        }
    }
}

/// The seed nodes of `redis-cluster://host:port,host:port,…` as `redis://host:port` URLs.
pub fn cluster_seeds(spec: &str) -> StoreResult<Vec<String>> {
    let rest = spec
        .strip_prefix("redis-cluster://")
        .ok_or_else(|| StoreError::Unsupported(super::redact(spec)))?;
    let seeds: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("redis://{s}"))
        .collect();
    if seeds.is_empty() {
        return Err(StoreError::Unsupported(super::redact(spec)));
    }
    Ok(seeds)
}

/// A run log in Redis Streams, on a single Redis or a Redis Cluster.
pub struct RedisStore {
    source: Source,
    conn: Conn,
    window: u64,
    send_ttl_s: u64,
    /// Passed to every writing script as its last two ARGV (ms): `lua/retention.lua`.
    retention: Retention,
    tails: Tails,
    snapshots: Mutex<HashMap<String, CachedState>>,
    /// The blocking connection of a chat worker's `XREADGROUP`.
    worker_conn: tokio::sync::Mutex<Option<Conn>>,
    /// Where the next `XAUTOCLAIM` of the sends queue goes on (`0-0`: from the start).
    reclaim_cursor: Mutex<String>,
    append_script: Script,
    send_script: Script,
    create_script: Script,
    batch_script: Script,
    cancel_script: Script,
    trim_script: Script,
    chaos_script: Script,
    next_message_script: Script,
    orphan_script: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`, or `redis-cluster://host:port,…` with
    /// seed nodes of a cluster), keeping `window` events per run.
    pub async fn connect(url: &str, window: u64) -> StoreResult<Self> {
        let source = if url.starts_with("redis-cluster://") {
            Source::Cluster(cluster_seeds(url)?)
        } else {
            Source::Single(Client::open(url)?)
        };
        let conn = source.shared().await?;
        let mut ping = conn.clone();
        let _: redis::Value = redis::cmd("PING").query_async(&mut ping).await?;
        let [(_, append_script), (_, send_script), (_, create_script), (_, batch_script), (_, cancel_script), (_, trim_script), (_, chaos_script), (_, next_message_script), (_, orphan_script)] =
            scripts();
        Ok(Self {
            source,
            conn,
            window: window.max(1),
            send_ttl_s: DEFAULT_SEND_TTL_S,
            retention: Retention::default(),
            tails: Arc::default(),
            snapshots: Mutex::default(),
            worker_conn: tokio::sync::Mutex::new(None),
            reclaim_cursor: Mutex::new("0-0".into()),
            append_script,
            send_script,
            create_script,
            batch_script,
            cancel_script,
            trim_script,
            chaos_script,
            next_message_script,
            orphan_script,
        })
    }

    /// The heartbeat of the sends `consumer` is answering: their idle time starts again
    /// (`XCLAIM … JUSTID`, which counts no delivery), so no other consumer takes them over
    /// while this one lives, however long its answers take.
    async fn keep_answering(&self, consumer: &str, answering: &[String]) -> StoreResult<()> {
        if answering.is_empty() {
            return Ok(());
        }
        let mut c = redis::cmd("XCLAIM");
        c.arg(SEND_QUEUE).arg(SEND_GROUP).arg(consumer).arg(0);
        for id in answering {
            c.arg(id);
        }
        let _: Vec<String> = c.arg("JUSTID").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Up to [`SEND_BATCH`] sends of the queue pending (read, not acknowledged) for at
    /// least `idle_ms`, taken over by `consumer` (`XAUTOCLAIM`, which moves each to one
    /// caller only). The scan goes on from where the last call stopped. A send handed
    /// out [`MAX_SEND_DELIVERIES`] times is acknowledged unanswered (logged
    /// `send.abandoned`): an answer that always fails is not retried forever.
    async fn reclaim(&self, consumer: &str, idle_ms: u64) -> StoreResult<Vec<Entry>> {
        let cursor = self
            .reclaim_cursor
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| "0-0".into());
        let reply: Vec<redis::Value> = redis::cmd("XAUTOCLAIM")
            .arg(SEND_QUEUE)
            .arg(SEND_GROUP)
            .arg(consumer)
            .arg(idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(SEND_BATCH)
            .query_async(&mut self.conn())
            .await?;
        let mut it = reply.into_iter();
        let next: String = match it.next() {
            Some(v) => {
                redis::from_redis_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => "0-0".into(),
        };
        // Redis 6.2 lists a deleted entry with nil fields; 7 lists it apart (third element).
        let raw: Vec<(String, Option<Vec<String>>)> = match it.next() {
            Some(v) => {
                redis::from_redis_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => Vec::new(),
        };
        if let Ok(mut c) = self.reclaim_cursor.lock() {
            *c = next;
        }
        let mut out = Vec::new();
        for (queue_id, fields) in raw {
            let Some(fields) = fields else {
                self.ack_send(&queue_id).await?;
                continue;
            };
            // [[id, consumer, idle ms, deliveries]]
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(SEND_QUEUE)
                .arg(SEND_GROUP)
                .arg(&queue_id)
                .arg(&queue_id)
                .arg(1)
                .query_async(&mut self.conn())
                .await?;
            let deliveries = pending.first().map_or(0, |p| p.3);
            if deliveries > MAX_SEND_DELIVERIES {
                crate::log(
                    "send.abandoned",
                    serde_json::json!({"queue_id": queue_id, "deliveries": deliveries}),
                );
                self.ack_send(&queue_id).await?;
                continue;
            }
            crate::log(
                "send.reclaimed",
                serde_json::json!({"queue_id": queue_id, "consumer": consumer, "deliveries": deliveries}),
            );
            out.push((queue_id, fields));
        }
        Ok(out)
    }

    /// A send taken over from a consumer that stopped (`XAUTOCLAIM`): its reply, if one
    /// was streaming, ends `message.failed` here (`lua/orphan.lua`: checked and appended in
    /// one step, so racing takers append one ending, never after the reply's own).
    async fn end_orphan(&self, session: &str, crid: &str) -> StoreResult<Orphan> {
        let body = body_rest(session, "message.failed", "");
        let head = body.strip_suffix('}').unwrap_or(&body);
        let (code, mid, n, first): (i64, String, u64, u64) = self
            .orphan_script
            .key(meta_key(session))
            .key(log_key(session))
            .arg(crid)
            .arg(head)
            .arg(&self.retention_args()[..])
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match code {
            0 => Orphan::Unstarted,
            1 => {
                self.trim_if_over(session, n, first).await?;
                crate::log(
                    "send.orphan_failed",
                    serde_json::json!({"run_id": session, "client_request_id": crid, "message_id": mid, "event_id": n}),
                );
                Orphan::Ended
            }
            _ => Orphan::Ended,
        })
    }

    /// New sends for `consumer` (`XREADGROUP >`), waiting up to `block_ms`.
    async fn read_new_sends(&self, consumer: &str, block_ms: u64) -> StoreResult<Vec<Entry>> {
        // A blocking read: on a connection of its own, not the shared multiplexed one.
        let mut slot = self.worker_conn.lock().await;
        let c = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(
                self.source
                    .blocking(Duration::from_millis(block_ms))
                    .await?,
            ),
        };
        let reply: redis::RedisResult<XreadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(SEND_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(SEND_BATCH)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(SEND_QUEUE)
            .arg(">")
            .query_async(c)
            .await;
        match reply {
            Ok(r) => Ok(r
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(_, entries)| entries)
                .collect()),
            Err(e) => {
                *slot = None;
                Err(e.into())
            }
        }
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// Sets the lifetime of chat send idempotency keys.
    pub fn with_send_ttl(mut self, seconds: u64) -> Self {
        self.send_ttl_s = seconds.max(1);
        self
    }

    /// Sets how long runs are kept (docs/REDIS.md "Retention").
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The last two ARGV of every script that writes a run: retention and idle retention, ms.
    fn retention_args(&self) -> [u64; 2] {
        [
            self.retention.finished_s.saturating_mul(1000),
            self.retention.idle_s.saturating_mul(1000),
        ]
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    async fn meta_now(&self, id: &str) -> StoreResult<Option<RunMeta>> {
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(meta_key(id))
            .arg(&META_FIELDS[..])
            .query_async(&mut self.conn())
            .await?;
        parse_meta(&v)
    }

    async fn xrange(
        &self,
        id: &str,
        from: u64,
        to: Option<u64>,
    ) -> StoreResult<Vec<(u64, Arc<RawValue>)>> {
        let end = to.map_or_else(|| "+".to_owned(), |t| format!("0-{t}"));
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(log_key(id))
            .arg(format!("0-{from}"))
            .arg(end)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut self.conn())
            .await?;
        events(entries)
    }

    /// The stored base (state as of `first_id - 1`), or an empty state.
    async fn base(&self, id: &str) -> StoreResult<Reduced> {
        let text: Option<String> = redis::cmd("GET")
            .arg(base_key(id))
            .query_async(&mut self.conn())
            .await?;
        match text {
            Some(t) => restore_base(id, &t),
            None => Ok(Reduced::new(id)),
        }
    }

    /// Reads from the run's local tail cache if it covers `after + 1`.
    fn read_cached(shared: &TailShared, after: u64) -> Option<Replay> {
        let c = lock(&shared.cache);
        if after + 1 < c.first {
            return None;
        }
        let skip = usize::try_from(after + 1 - c.first).unwrap_or(usize::MAX);
        Some(Replay {
            snapshot: None,
            events: c.events.iter().skip(skip).take(BATCH).cloned().collect(),
            last_id: c.last,
            done: c.finished,
        })
    }

    /// The run's `first_id` from a read started after this call began, shared with the
    /// run's other local streams ([`FirstIdReads`]); read alone when the shared read failed.
    async fn first_id_shared(
        &self,
        id: &str,
        shared: &Arc<TailShared>,
    ) -> StoreResult<Option<u64>> {
        let reads = &shared.first_ids;
        let mut rx = reads.done.subscribe();
        let need = {
            let mut f = lock(&reads.state);
            let need = f.started + 1;
            f.wanted = f.wanted.max(need);
            if !f.in_flight {
                f.started = need;
                f.in_flight = true;
                tokio::spawn(first_id_flights(self.conn(), meta_key(id), shared.clone()));
            }
            need
        };
        loop {
            let (generation, answer) = *rx.borrow_and_update();
            if generation >= need {
                if let Some(first) = answer {
                    return Ok(first);
                }
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
        Ok(redis::cmd("HGET")
            .arg(meta_key(id))
            .arg("first_id")
            .query_async(&mut self.conn())
            .await?)
    }

    async fn read_now(&self, id: &str, after: u64) -> StoreResult<Option<Replay>> {
        // The run's live tail here, looked up once for this read.
        let shared = lock(&self.tails).get(id).cloned();
        if let Some(shared) = shared.filter(|t| after + 1 >= lock(&t.cache).first) {
            // The cache may still hold events another process has pruned since (trims are
            // not on the log the tail reads): it answers only from `first_id` on, read
            // after the events were cached; an older resume gets the snapshot below.
            let Some(first) = self.first_id_shared(id, &shared).await? else {
                return Ok(None);
            };
            if after + 1 >= first {
                if let Some(rep) = Self::read_cached(&shared, after) {
                    return Ok(Some(rep));
                }
            }
        }
        // A trim between the two reads below is detected (ids not where expected) and retried.
        for _ in 0..5 {
            let (m, entries): (Vec<Option<String>>, Vec<Entry>) = redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(meta_key(id))
                .arg(&META_FIELDS[..])
                .cmd("XRANGE")
                .arg(log_key(id))
                .arg(format!("0-{}", after + 1))
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.conn())
                .await?;
            let Some(meta) = parse_meta(&m)? else {
                return Ok(None);
            };
            if after + 1 >= meta.first_id || after >= meta.last_id {
                let evs = events(entries)?;
                if !dense_from(&evs, after + 1) {
                    continue;
                }
                return Ok(Some(Replay {
                    snapshot: None,
                    events: evs.into_iter().map(|(_, e)| e).collect(),
                    last_id: meta.last_id,
                    done: meta.finished,
                }));
            }
            // Older than the window: the base as a snapshot, then the window.
            let (base, first, entries): (Option<String>, Option<u64>, Vec<Entry>) = redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(base_key(id))
                .cmd("HGET")
                .arg(meta_key(id))
                .arg("first_id")
                .cmd("XRANGE")
                .arg(log_key(id))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.conn())
                .await?;
            let Some(base) = base else { continue };
            let base = restore_base(id, &base)?;
            let evs = events(entries)?;
            if first != Some(base.cursor() + 1) || !dense_from(&evs, base.cursor() + 1) {
                continue;
            }
            return Ok(Some(Replay {
                snapshot: Some((base.cursor(), base.state.to_wire())),
                events: evs.into_iter().map(|(_, e)| e).collect(),
                last_id: meta.last_id,
                done: meta.finished,
            }));
        }
        Err(StoreError::Corrupt(format!(
            "run {id}: the log kept changing under a read"
        )))
    }

    async fn append_now(&self, id: &str, ty: &str, payload: Value) -> StoreResult<Option<u64>> {
        let rest = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into());
        let body = body_rest(id, ty, &rest);
        let (n, first): (i64, u64) = self
            .append_script
            .key(meta_key(id))
            .key(log_key(id))
            .arg(body)
            .arg(ty)
            .arg(&self.retention_args()[..])
            .invoke_async(&mut self.conn())
            .await?;
        if n == -4 {
            let crid = payload
                .get("reply_to")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(StoreError::ReplyTaken(crid.to_owned()));
        }
        let Ok(n) = u64::try_from(n) else {
            return Ok(None);
        };
        self.trim_if_over(id, n, first).await?;
        Ok(Some(n))
    }

    /// Prunes to the window when the run holds 10 % more than it (amortized O(1) per event;
    /// the one rule, [`prune_point`]).
    async fn trim_if_over(&self, id: &str, last: u64, first: u64) -> StoreResult<()> {
        if let Some(keep_from) = prune_point(first, last, self.window) {
            self.prune_now(id, keep_from).await?;
        }
        Ok(())
    }

    async fn prune_now(&self, id: &str, keep_from: u64) -> StoreResult<bool> {
        let Some(meta) = self.meta_now(id).await? else {
            return Ok(false);
        };
        let keep_from = keep_from.min(meta.last_id + 1);
        if keep_from <= meta.first_id {
            return Ok(true);
        }
        let mut base = self.base(id).await?;
        let mut next = meta.first_id;
        while next < keep_from {
            let evs = self.xrange(id, next, Some(keep_from - 1)).await?;
            if evs.is_empty() || !dense_from(&evs, next) {
                // Someone else trimmed meanwhile: theirs stands.
                return Ok(true);
            }
            for (n, e) in &evs {
                base.apply(*n, e.get());
                next = n + 1;
            }
        }
        base.set_cursor(keep_from - 1);
        let _: i64 = self
            .trim_script
            .key(meta_key(id))
            .key(log_key(id))
            .key(base_key(id))
            .arg(meta.first_id.to_string())
            .arg(keep_from.to_string())
            .arg(base.to_stored())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(true)
    }

    async fn tail_now(&self, id: &str) -> StoreResult<Option<Tail>> {
        let Some(meta) = self.meta_now(id).await? else {
            return Ok(None);
        };
        let mut tails = lock(&self.tails);
        let shared = match tails.get(id) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(TailShared {
                    tx: watch::channel(meta.last_id).0,
                    cache: Mutex::new(TailCache {
                        events: VecDeque::new(),
                        first: meta.last_id + 1,
                        last: meta.last_id,
                        finished: meta.finished,
                    }),
                    first_ids: FirstIdReads::new(),
                });
                tails.insert(id.to_owned(), s.clone());
                tokio::spawn(run_tail(
                    self.source.clone(),
                    self.tails.clone(),
                    id.to_owned(),
                    s.clone(),
                ));
                s
            }
        };
        // Subscribed under the map lock: the tail task leaves only when nobody is subscribed.
        let rx = shared.tx.subscribe();
        drop(tails);
        Ok(Some(Tail {
            rx,
            _keep: Some(shared),
        }))
    }

    async fn snapshot_now(&self, id: &str) -> StoreResult<Option<SnapshotBody>> {
        let last: Option<u64> = redis::cmd("HGET")
            .arg(meta_key(id))
            .arg("last_id")
            .query_async(&mut self.conn())
            .await?;
        let Some(last) = last else {
            return Ok(None);
        };
        let cached = lock(&self.snapshots).remove(id);
        // A cached state is reused only while the event at its cursor is still the one it
        // ended with: a run that expired and was created again under its id (retention)
        // is another run, and starts from its own base.
        let mut reused = None;
        if let Some((r, at)) = cached {
            if r.cursor() == 0 {
                reused = Some((r, None));
            } else if let Some(at) = at.filter(|_| r.cursor() <= last) {
                let evs = self.xrange(id, r.cursor(), Some(r.cursor())).await?;
                if evs
                    .first()
                    .is_some_and(|(n, e)| *n == r.cursor() && e.get() == at.get())
                {
                    reused = Some((r, Some(at)));
                }
            }
        }
        let (mut r, mut at) = match reused {
            Some(x) => x,
            None => (self.base(id).await?, None),
        };
        let mut rebuilt = false;
        while r.cursor() < last {
            let from = r.cursor() + 1;
            let evs = self.xrange(id, from, Some(last)).await?;
            if evs.first().map(|(n, _)| *n) != Some(from) || !dense_from(&evs, from) {
                // The cached state is older than the window (trimmed meanwhile): start from the base.
                if rebuilt {
                    return Err(StoreError::Corrupt(format!(
                        "run {id}: gap in the log at {from}"
                    )));
                }
                rebuilt = true;
                r = self.base(id).await?;
                at = None;
                continue;
            }
            for (n, e) in &evs {
                r.apply(*n, e.get());
            }
            at = evs.last().map(|(_, e)| e.clone());
        }
        let body = SnapshotBody::new(id, r.cursor(), &r.state);
        let mut cache = lock(&self.snapshots);
        if cache.len() >= SNAPSHOT_CACHE {
            cache.clear();
        }
        cache.insert(id.to_owned(), (r, at));
        Ok(Some(body))
    }

    /// Step 1 of a send, in the session's slot: the idempotency check, the
    /// `message.created` event and the `unqueued` record, atomically.
    async fn accept_send(&self, session: &str, crid: &str, content: &str) -> StoreResult<Accepted> {
        // The payload is `{"message_id":"<allocated in the script>", …rest}`.
        let rest =
            json!({"role": "user", "client_request_id": crid, "content": content}).to_string();
        let rest = rest.strip_prefix('{').unwrap_or(&rest);
        let body = body_rest(session, "message.created", "{\"message_id\":\"");
        let head = body.strip_suffix('}').unwrap_or(&body).to_owned();
        let (fresh, message_id, n, first, unqueued, stored): (i64, String, u64, u64, i64, String) =
            self.send_script
                .key(meta_key(session))
                .key(log_key(session))
                .key(send_key(session, crid))
                .key(unqueued_key(session))
                .arg(head)
                .arg(format!("\",{rest}}}"))
                .arg(self.send_ttl_s)
                .arg(session)
                .arg(crid)
                .arg(content)
                .arg(&self.retention_args()[..])
                .invoke_async(&mut self.conn())
                .await?;
        let finished = fresh == -3;
        let fresh = fresh == 1;
        Ok(Accepted {
            message_id,
            fresh,
            finished,
            last: n,
            first,
            // A fresh send queues what it was given; a repeat, what was first accepted.
            to_queue: match (unqueued == 1, fresh) {
                (false, _) => None,
                (true, true) => Some(content.to_owned()),
                (true, false) => Some(stored),
            },
        })
    }

    /// Steps 2 and 3 of a send: `XADD` to the global queue (its own slot), then clear the
    /// session's `unqueued` record. A failure between them leaves the record: the next
    /// retry of the send queues it again (consumers deduplicate by `client_request_id`).
    async fn queue_send(&self, session: &str, crid: &str, content: &str) -> StoreResult<()> {
        let _: String = redis::cmd("XADD")
            .arg(SEND_QUEUE)
            .arg("MAXLEN")
            .arg("~")
            .arg(SEND_QUEUE_MAXLEN)
            .arg("*")
            .arg("s")
            .arg(session)
            .arg("c")
            .arg(crid)
            .arg("x")
            .arg(content)
            .query_async(&mut self.conn())
            .await?;
        let _: i64 = redis::cmd("HDEL")
            .arg(unqueued_key(session))
            .arg(crid)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Only the first step of a send (logged, recorded as unqueued, not queued): what a
    /// process that dies between the steps leaves behind. For tests.
    #[doc(hidden)]
    pub async fn accept_send_only(
        &self,
        session: &str,
        crid: &str,
        content: &str,
    ) -> StoreResult<String> {
        Ok(self.accept_send(session, crid, content).await?.message_id)
    }

    async fn send_now(&self, session: &str, crid: &str, content: &str) -> StoreResult<SendOutcome> {
        let a = self.accept_send(session, crid, content).await?;
        if let Some(c) = &a.to_queue {
            self.queue_send(session, crid, c).await?;
        }
        if a.fresh {
            self.trim_if_over(session, a.last, a.first).await?;
        }
        Ok(SendOutcome {
            message_id: a.message_id,
            run_id: session.to_owned(),
            fresh: a.fresh,
            finished: a.finished,
        })
    }

    async fn append_batch_now(
        &self,
        id: &str,
        events: Vec<NewEvent>,
        key: Option<IdemKey>,
    ) -> StoreResult<BatchOutcome> {
        let (digest, name) = match &key {
            Some(k) => (k.digest.as_str(), k.key.as_str()),
            None => ("", ""),
        };
        let mut inv = self.batch_script.key(meta_key(id));
        inv.key(log_key(id))
            .key(idem_key(id, name))
            .arg(digest)
            .arg(super::IDEMPOTENCY_TTL_S)
            .arg(events.len());
        for e in &events {
            let rest = serde_json::to_string(&e.payload).unwrap_or_else(|_| "{}".into());
            inv.arg(body_rest(id, &e.ty, &rest)).arg(&e.ty);
        }
        inv.arg(&self.retention_args()[..]);
        let (code, first, last, first_id): (i64, u64, u64, u64) =
            inv.invoke_async(&mut self.conn()).await?;
        Ok(match code {
            0 => {
                self.trim_if_over(id, last, first_id).await?;
                BatchOutcome::Appended { first, last }
            }
            1 => BatchOutcome::Repeated { first, last },
            -2 => BatchOutcome::KeyConflict,
            -3 => BatchOutcome::Finished,
            -4 => BatchOutcome::ReplyTaken,
            _ => BatchOutcome::UnknownRun,
        })
    }

    async fn sends_after_now(
        &self,
        after: Option<&str>,
        max: usize,
        wait_ms: u64,
    ) -> StoreResult<(Vec<SendRecord>, String)> {
        let after = after.unwrap_or("0-0").to_owned();
        // A blocking read gets a connection of its own (it would stall the shared one).
        let mut conn = if wait_ms > 0 {
            self.source.blocking(Duration::from_millis(wait_ms)).await?
        } else {
            self.conn()
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max.max(1));
        if wait_ms > 0 {
            cmd.arg("BLOCK").arg(wait_ms);
        }
        cmd.arg("STREAMS").arg(SEND_QUEUE).arg(&after);
        let reply: XreadReply = cmd.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            for (eid, fields) in entries {
                let get = |k: &str| field(&fields, k).unwrap_or_default().to_owned();
                let session = get("s");
                out.push(SendRecord {
                    cursor: eid,
                    run_id: session.clone(),
                    session_id: session,
                    client_request_id: get("c"),
                    content: get("x"),
                });
            }
        }
        let next = out.last().map_or(after, |s| s.cursor.clone());
        Ok((out, next))
    }

    async fn info_now(&self) -> StoreResult<Value> {
        // A single Redis answers one text; a cluster, one per node (summed below).
        let reply: redis::Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.conn())
            .await?;
        let texts: Vec<String> = match reply {
            redis::Value::Map(nodes) => nodes
                .into_iter()
                .filter_map(|(_, v)| redis::from_redis_value(v).ok())
                .collect(),
            v => redis::from_redis_value(v).into_iter().collect(),
        };
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut self.conn()).await?;
        let get = |text: &str, k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_owned())
        };
        let used: Option<u64> = texts
            .iter()
            .map(|t| get(t, "used_memory").and_then(|v| v.parse::<u64>().ok()))
            .sum();
        let human = match texts.as_slice() {
            [one] => get(one, "used_memory_human"),
            _ => used.map(|b| format!("{:.2}M", b as f64 / (1024.0 * 1024.0))),
        };
        Ok(json!({
            "store": self.name(),
            "nodes": texts.len(),
            "used_memory": used,
            "used_memory_human": human,
            "keys": keys,
            "tails": lock(&self.tails).len(),
        }))
    }
}

/// The live tail of run `id`: `XREAD BLOCK` on a connection of its own, into the
/// shared cache, waking local streams; ends when no local stream listens.
/// Runs the shared `first_id` reads of one run ([`FirstIdReads`]) while streams want them:
/// one `HGET` at a time, the next one started at once if a stream asked during this one.
async fn first_id_flights(mut conn: Conn, key: String, shared: Arc<TailShared>) {
    let reads = &shared.first_ids;
    loop {
        let generation = lock(&reads.state).started;
        let answer: Option<Option<u64>> = redis::cmd("HGET")
            .arg(&key)
            .arg("first_id")
            .query_async(&mut conn)
            .await
            .ok();
        reads.done.send_replace((generation, answer));
        let mut f = lock(&reads.state);
        if f.wanted > generation {
            f.started = generation + 1;
        } else {
            f.in_flight = false;
            return;
        }
    }
}

async fn run_tail(source: Source, tails: Tails, id: String, shared: Arc<TailShared>) {
    let key = log_key(&id);
    let mut conn: Option<Conn> = None;
    loop {
        if shared.tx.receiver_count() == 0 {
            let mut m = lock(&tails);
            if shared.tx.receiver_count() == 0 {
                if m.get(&id).is_some_and(|s| Arc::ptr_eq(s, &shared)) {
                    m.remove(&id);
                }
                return;
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match source.blocking(Duration::from_millis(BLOCK_MS)).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
        };
        let last = lock(&shared.cache).last;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&key)
            .arg(format!("0-{last}"));
        let reply: Option<redis::RedisResult<XreadReply>> = tokio::select! {
            r = cmd.query_async(c) => Some(r),
            _ = shared.tx.closed() => None,
        };
        let Some(reply) = reply else {
            // Nobody listens: drop the connection (a blocked read is pending on it).
            conn = None;
            continue;
        };
        let streams = match reply {
            Ok(s) => s.unwrap_or_default(),
            Err(_) => {
                conn = None;
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut newest = None;
        {
            let mut cache = lock(&shared.cache);
            for (_, entries) in streams {
                for (eid, fields) in entries {
                    let (Some(n), Some(e)) = (entry_id(&eid), field(&fields, "e")) else {
                        continue;
                    };
                    let Ok(raw) = RawValue::from_string(e.to_owned()) else {
                        continue;
                    };
                    if n <= cache.last {
                        continue;
                    }
                    if n != cache.last + 1 {
                        // Trimmed past what this tail had read: the cache restarts at n.
                        cache.events.clear();
                        cache.first = n;
                    }
                    if cache.events.len() >= TAIL_CACHE {
                        cache.events.pop_front();
                        cache.first += 1;
                    }
                    if cache.events.is_empty() {
                        cache.first = n;
                    }
                    cache.events.push_back(Arc::from(raw));
                    cache.last = n;
                    if field(&fields, "t") == Some("run.completed") {
                        cache.finished = true;
                    }
                    newest = Some(n);
                }
            }
        }
        if let Some(n) = newest {
            shared.tx.send_replace(n);
        }
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        if self.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn new_run_id(&self, seed: u64) -> BoxFuture<'_, StoreResult<String>> {
        async move {
            let n: u64 = redis::cmd("INCR")
                .arg("runstream:run_ids")
                .query_async(&mut self.conn())
                .await?;
            Ok(format!(
                "run_{:06}_{:08x}",
                n,
                (seed.wrapping_mul(0x9E37_79B9)) as u32
            ))
        }
        .boxed()
    }

    fn create<'a>(&'a self, id: &'a str, spec: RunSpec) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let chaos = serde_json::to_string(&spec.chaos).unwrap_or_else(|_| "{}".into());
            let created: i64 = self
                .create_script
                .key(meta_key(id))
                .arg(spec.kind.as_str())
                .arg(chaos)
                .arg(spec.speed.to_string())
                .arg(spec.session_id.as_deref().unwrap_or(""))
                .arg(&self.retention_args()[..])
                .invoke_async(&mut self.conn())
                .await?;
            Ok(created == 1)
        }
        .boxed()
    }

    fn meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<RunMeta>>> {
        self.meta_now(id).boxed()
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        ty: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        self.append_now(id, ty, payload).boxed()
    }

    fn read<'a>(&'a self, id: &'a str, after: u64) -> BoxFuture<'a, StoreResult<Option<Replay>>> {
        self.read_now(id, after).boxed()
    }

    fn tail<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Tail>>> {
        self.tail_now(id).boxed()
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<SnapshotBody>>> {
        self.snapshot_now(id).boxed()
    }

    fn send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
        content: &'a str,
    ) -> BoxFuture<'a, StoreResult<SendOutcome>> {
        self.send_now(session, crid, content).boxed()
    }

    fn append_batch<'a>(
        &'a self,
        id: &'a str,
        events: Vec<NewEvent>,
        key: Option<IdemKey>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>> {
        self.append_batch_now(id, events, key).boxed()
    }

    fn sends_after<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        wait_ms: u64,
    ) -> BoxFuture<'a, StoreResult<(Vec<SendRecord>, String)>> {
        self.sends_after_now(after, max, wait_ms).boxed()
    }

    fn request_cancel<'a>(
        &'a self,
        id: &'a str,
        target: &'a super::CancelTarget,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<super::CancelOutcome>> {
        async move {
            let rest = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into());
            let ty = "run.cancel_requested";
            let reply = match target {
                super::CancelTarget::Reply(crid) => crid.as_str(),
                super::CancelTarget::Run => "",
            };
            let (code, n, first, status): (i64, u64, u64, String) = self
                .cancel_script
                .key(meta_key(id))
                .key(log_key(id))
                .key(cancel_key(id, target))
                .arg(body_rest(id, ty, &rest))
                .arg(ty)
                .arg(reply)
                .arg(&self.retention_args()[..])
                .invoke_async(&mut self.conn())
                .await?;
            Ok(match code {
                0 => {
                    self.trim_if_over(id, n, first).await?;
                    super::CancelOutcome::Requested(n)
                }
                1 => super::CancelOutcome::Already(n),
                -3 => match status.as_str() {
                    "completed" => super::CancelOutcome::ReplyFinished(super::ReplyEnd::Completed),
                    "failed" => super::CancelOutcome::ReplyFinished(super::ReplyEnd::Failed),
                    _ => super::CancelOutcome::Finished,
                },
                _ => super::CancelOutcome::UnknownRun,
            })
        }
        .boxed()
    }

    fn schedule_grace<'a>(
        &'a self,
        id: &'a str,
        target: &'a super::CancelTarget,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let member = serde_json::json!([id, target.key()]).to_string();
            let _: i64 = redis::cmd("ZADD")
                .arg(GRACES)
                .arg(due_ms)
                .arg(member)
                .query_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn claim_due_graces(
        &self,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<(String, super::CancelTarget)>>> {
        async move {
            let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(GRACES)
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(max)
                .query_async(&mut self.conn())
                .await?;
            let mut claimed = Vec::new();
            for m in members {
                // ZREM answers 1 to one caller only: that replica ends the target.
                let won: i64 = redis::cmd("ZREM")
                    .arg(GRACES)
                    .arg(&m)
                    .query_async(&mut self.conn())
                    .await?;
                if won != 1 {
                    continue;
                }
                let parsed: Option<(String, String)> = serde_json::from_str(&m).ok();
                if let Some((run, t)) = parsed {
                    if let Some(target) = super::CancelTarget::from_key(&t) {
                        claimed.push((run, target));
                    }
                }
            }
            Ok(claimed)
        }
        .boxed()
    }

    fn cancel_requested<'a>(
        &'a self,
        id: &'a str,
        target: &'a super::CancelTarget,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        async move {
            let n: Option<u64> = redis::cmd("GET")
                .arg(cancel_key(id, target))
                .query_async(&mut self.conn())
                .await?;
            Ok(n)
        }
        .boxed()
    }

    fn next_message_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        async move {
            let n: i64 = self
                .next_message_script
                .key(meta_key(id))
                .invoke_async(&mut self.conn())
                .await?;
            // An unknown run (expired meanwhile): the memory store's answer; nothing written.
            Ok(format!("msg_{}", n.max(0)))
        }
        .boxed()
    }

    fn prune<'a>(&'a self, id: &'a str, keep_from: u64) -> BoxFuture<'a, StoreResult<bool>> {
        self.prune_now(id, keep_from).boxed()
    }

    fn set_chaos<'a>(&'a self, id: &'a str, chaos: Chaos) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let chaos = serde_json::to_string(&chaos).unwrap_or_else(|_| "{}".into());
            let ok: i64 = self
                .chaos_script
                .key(meta_key(id))
                .arg(chaos)
                .invoke_async(&mut self.conn())
                .await?;
            Ok(ok == 1)
        }
        .boxed()
    }

    fn info(&self) -> BoxFuture<'_, StoreResult<Value>> {
        self.info_now().boxed()
    }

    fn heartbeat_sends<'a>(
        &'a self,
        consumer: &'a str,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.keep_answering(consumer, answering).boxed()
    }

    fn claim_sends<'a>(
        &'a self,
        consumer: &'a str,
        block_ms: u64,
        reclaim_idle_ms: u64,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<QueuedSend>>> {
        async move {
            // The group starts at 0: sends accepted before any worker ran are answered too.
            let created: redis::RedisResult<String> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(SEND_QUEUE)
                .arg(SEND_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn())
                .await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    return Err(e.into());
                }
            }
            // First the sends another consumer read and left unanswered for `reclaim_idle_ms`
            // (it died, or its answer failed): taken over, at most SEND_BATCH per call.
            self.keep_answering(consumer, answering).await?;
            let mut reclaimed = self.reclaim(consumer, reclaim_idle_ms).await?;
            // One of ours the heartbeat missed (this process stalled): still being answered here.
            reclaimed.retain(|(id, _)| !answering.contains(id));
            let taken_over = !reclaimed.is_empty();
            let entries = if taken_over {
                reclaimed
            } else {
                self.read_new_sends(consumer, block_ms).await?
            };
            let mut out = Vec::new();
            for (queue_id, f) in entries {
                if let (Some(s), Some(c), Some(x)) =
                    (field(&f, "s"), field(&f, "c"), field(&f, "x"))
                {
                    // The queue is at least once (a send whose queue step was retried may be
                    // on it twice): the first claim of (session, client_request_id) wins,
                    // a later entry for it is acknowledged unanswered. A reclaimed entry
                    // finds its own claim and is answered (one reply per send is then
                    // enforced by the append step: `reply_taken`, lua/append_step.lua).
                    let first: Option<String> = redis::cmd("SET")
                        .arg(claimed_key(s, c))
                        .arg(&queue_id)
                        .arg("NX")
                        .arg("EX")
                        .arg(self.send_ttl_s)
                        .query_async(&mut self.conn())
                        .await?;
                    if first.is_none() {
                        let owner: Option<String> = redis::cmd("GET")
                            .arg(claimed_key(s, c))
                            .query_async(&mut self.conn())
                            .await?;
                        if owner.as_deref() != Some(queue_id.as_str()) {
                            self.ack_send(&queue_id).await?;
                            continue;
                        }
                    }
                    // Taken over: a reply its consumer had started ends `message.failed`
                    // (or had ended): the send is answered, not answered again.
                    if taken_over && self.end_orphan(s, c).await? == Orphan::Ended {
                        self.ack_send(&queue_id).await?;
                        continue;
                    }
                    out.push(QueuedSend {
                        queue_id,
                        session: s.to_owned(),
                        crid: c.to_owned(),
                        content: x.to_owned(),
                    });
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn claim_send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            // The same key the queue's consumers claim with (`claim_sends`, the kit's `claimSends`):
            // whoever sets it first answers; the queue entry is then acknowledged unanswered.
            let first: Option<String> = redis::cmd("SET")
                .arg(claimed_key(session, crid))
                .arg("local")
                .arg("NX")
                .arg("EX")
                .arg(self.send_ttl_s)
                .query_async(&mut self.conn())
                .await?;
            Ok(first.is_some())
        }
        .boxed()
    }

    fn ack_send<'a>(&'a self, queue_id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let _: i64 = redis::cmd("XACK")
                .arg(SEND_QUEUE)
                .arg(SEND_GROUP)
                .arg(queue_id)
                .query_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway composes its scripts exactly as `lua/scripts.json` (which the kit
    /// follows) says: same files, same order, so both servers run byte-identical scripts
    /// (and Redis knows them by the same SHA1).
    #[test]
    fn scripts_follow_the_shared_manifest() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua");
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("scripts.json")).expect("lua/scripts.json"),
        )
        .expect("manifest JSON");
        let listed = manifest["scripts"].as_object().expect("scripts object");
        let ours = scripts();
        assert_eq!(listed.len(), ours.len(), "a script missing on one side");
        for (name, script) in ours {
            let files = listed[name].as_array().expect("file list");
            let text: String = files
                .iter()
                .map(|f| {
                    std::fs::read_to_string(dir.join(f.as_str().expect("file name")))
                        .expect("script file")
                })
                .collect();
            assert_eq!(
                Script::new(&text).get_hash(),
                script.get_hash(),
                "{name}: composed otherwise than lua/scripts.json says"
            );
        }
    }
}
