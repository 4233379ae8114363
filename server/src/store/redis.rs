//! The Redis store (`--store redis://host:port`): one Redis Stream per run,
//! shared by every replica and producer process.
//!
//! Keys (the `{run}` hash tag keeps a run's keys in one cluster slot):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `runstream:{<run>}:log` | stream | entry id `0-<event_id>`, fields `e` (the envelope JSON) and `t` (its type) |
//! | `runstream:{<run>}:meta` | hash | `kind`, `chaos` (JSON), `speed`, `first_id`, `last_id`, `finished`, `next_message`, `session` (the chat session a published run belongs to) |
//! | `runstream:{<run>}:cancel:<target>` | string | the id of the `run.cancel_requested` for target `run` or `reply:<crid>` (PROTOCOL §8: one request per target) |
//! | `runstream:{<run>}:idem:<key>` | string | a publish batch's `<sha256 hex>:<first>:<last>`; `SET EX` 24 h (idempotency across replicas) |
//! | `runstream:{<run>}:base` | string | the reduced state as of `first_id - 1` (written when the log is trimmed) |
//! | `runstream:{<session>}:send:<client_request_id>` | string | the message id of a send; `SET NX EX` (idempotency, TTL) |
//! | `runstream:run_ids` | counter | run ids unique across processes |
//! | `runstream:sends` | stream | accepted sends (`s` session, `c` client_request_id, `x` content), for chat workers and the publish API's long poll; `MAXLEN ~ 100000` |
//!
//! - Append: a Lua script bumps `last_id` and `XADD`s with the explicit id
//!   `0-<last_id>` in one step, so ids are dense whatever the number of writers.
//! - Replay: `XRANGE` from `0-<after+1>` in batches; a resume older than
//!   `first_id` gets the stored base as a `snapshot` first (PROTOCOL §2a).
//! - Live tail: one task per run with local subscribers runs `XREAD BLOCK` on
//!   its own connection (a blocking read would stall the shared multiplexed
//!   one) and keeps the newest events in a bounded cache; every local stream
//!   of the run reads from that cache, so N clients cost one Redis reader.
//! - Window: when a run holds more than `window + 10 %` events, the appender
//!   reduces the oldest ones into the base and `XTRIM MINID`s them.
//! - Snapshot: the base plus `XRANGE` of the window, reduced; each process
//!   caches the reduced state and only applies what is new.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script};
use runstream::core::wire::SnapshotBody;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    BatchOutcome, IdemKey, NewEvent, QueuedSend, Reduced, Replay, RunKind, RunMeta, RunSpec,
    SendOutcome, SendRecord, Store, StoreError, StoreResult, Tail,
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

/// The append step shared by the scripts: dense id, XADD with that id, finished flag.
const LUA_APPEND: &str = r#"
local function append(meta, log, body, ty)
  local n = redis.call('HINCRBY', meta, 'last_id', 1)
  local id = string.format('%d', n)
  redis.call('XADD', log, '0-' .. id, 'e', '{"event_id":' .. id .. ',' .. body, 't', ty)
  if ty == 'run.completed' then redis.call('HSET', meta, 'finished', '1') end
  return n
end
"#;

/// KEYS: meta, log. ARGV: envelope body (without `{` and `event_id`), type.
/// Returns {id, first_id}, or {-1, 0} for an unknown run.
const LUA_APPEND_MAIN: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0} end
local n = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return {n, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
"#;

/// KEYS: meta, log, send key, send queue. ARGV: body head (up to the message id), body tail,
/// TTL s, session, client_request_id, content. Returns {fresh, message_id, id, first_id}.
/// A fresh send is also queued for chat workers (`produce --chat-worker`).
const LUA_SEND_MAIN: &str = r#"
local prev = redis.call('GET', KEYS[3])
if prev then return {0, prev, 0, 0} end
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then
  redis.call('HSET', KEYS[1], 'kind', 'chat', 'chaos', '{}', 'speed', '1', 'first_id', '1', 'last_id', '0', 'next_message', '0', 'session', ARGV[4])
end
local mid = 'msg_' .. string.format('%d', redis.call('HINCRBY', KEYS[1], 'next_message', 1))
redis.call('SET', KEYS[3], mid, 'NX', 'EX', ARGV[3])
local n = append(KEYS[1], KEYS[2], ARGV[1] .. mid .. ARGV[2], 'message.created')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '100000', '*', 's', ARGV[4], 'c', ARGV[5], 'x', ARGV[6])
return {1, mid, n, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
"#;

/// KEYS: meta. ARGV: kind, chaos JSON, speed, session ('' = none). Returns 1 if created.
const LUA_CREATE: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'kind') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'chaos', ARGV[2], 'speed', ARGV[3], 'first_id', '1', 'last_id', '0', 'next_message', '0')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'session', ARGV[4]) end
return 1
"#;

/// KEYS: meta, log, cancel key. ARGV: envelope body, type. Returns {code, id,
/// first_id}: code 0 appended, 1 already asked (the first id), -1 unknown
/// run, -3 finished.
const LUA_CANCEL: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0, 0} end
local prev = redis.call('GET', KEYS[3])
if prev then return {1, tonumber(prev), 0} end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-3, 0, 0} end
local n = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], string.format('%d', n))
return {0, n, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
"#;

/// KEYS: meta, log, idempotency key. ARGV: digest ('' = no key), TTL s, n,
/// then n pairs (envelope body without `{` and `event_id`, type).
/// Returns {code, first, last, first_id}: code 0 appended, 1 repeated,
/// -1 unknown run, -2 key conflict, -3 finished. All or nothing: the checks
/// come before the first append, and a script runs alone.
const LUA_APPEND_BATCH: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0, 0, 0} end
if ARGV[1] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local d, a, b = string.match(prev, '^(%x+):(%d+):(%d+)$')
    if d == ARGV[1] then return {1, tonumber(a), tonumber(b), 0} end
    return {-2, 0, 0, 0}
  end
end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-3, 0, 0, 0} end
local first = tonumber(redis.call('HGET', KEYS[1], 'last_id')) + 1
local last = first - 1
for i = 0, tonumber(ARGV[3]) - 1 do
  last = append(KEYS[1], KEYS[2], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[3], ARGV[1] .. ':' .. string.format('%d', first) .. ':' .. string.format('%d', last), 'EX', ARGV[2])
end
return {0, first, last, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
"#;

/// KEYS: meta, log, base. ARGV: expected first_id, new first_id, base JSON.
/// Commits a trim only if nobody trimmed meanwhile.
const LUA_TRIM: &str = r#"
if redis.call('HGET', KEYS[1], 'first_id') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'first_id', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. ARGV[2])
return 1
"#;

/// KEYS: meta. ARGV: chaos JSON. Returns 1 if the run exists.
const LUA_SET_CHAOS: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'chaos', ARGV[1])
return 1
"#;

/// The stream of accepted sends that chat workers consume (consumer group [`SEND_GROUP`]).
const SEND_QUEUE: &str = "runstream:sends";
/// The consumer group of chat workers.
const SEND_GROUP: &str = "replies";

fn meta_key(id: &str) -> String {
    format!("runstream:{{{id}}}:meta")
}
fn log_key(id: &str) -> String {
    format!("runstream:{{{id}}}:log")
}
fn base_key(id: &str) -> String {
    format!("runstream:{{{id}}}:base")
}
fn cancel_key(id: &str, target: &super::CancelTarget) -> String {
    format!("runstream:{{{id}}}:cancel:{}", target.key())
}
fn idem_key(id: &str, key: &str) -> String {
    format!("runstream:{{{id}}}:idem:{key}")
}
fn send_key(session: &str, crid: &str) -> String {
    format!("runstream:{{{session}}}:send:{crid}")
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

/// The live tail of one run in this process.
struct TailShared {
    /// Highest id the tail has read; every local stream of the run waits on it.
    tx: watch::Sender<u64>,
    cache: Mutex<TailCache>,
}

/// The newest events of a run, contiguous: `events[0]` has id `first`.
struct TailCache {
    events: VecDeque<Arc<RawValue>>,
    first: u64,
    last: u64,
    finished: bool,
}

type Tails = Arc<Mutex<HashMap<String, Arc<TailShared>>>>;

/// A run log in Redis Streams.
pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
    window: u64,
    send_ttl_s: u64,
    tails: Tails,
    snapshots: Mutex<HashMap<String, Reduced>>,
    /// The blocking connection of a chat worker's `XREADGROUP`.
    worker_conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    append_script: Script,
    send_script: Script,
    create_script: Script,
    batch_script: Script,
    cancel_script: Script,
    trim_script: Script,
    chaos_script: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`), keeping `window` events per run.
    pub async fn connect(url: &str, window: u64) -> StoreResult<Self> {
        let client = Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client.clone(), cfg).await?;
        let mut ping = conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut ping).await?;
        Ok(Self {
            client,
            conn,
            window: window.max(1),
            send_ttl_s: DEFAULT_SEND_TTL_S,
            tails: Arc::default(),
            snapshots: Mutex::default(),
            worker_conn: tokio::sync::Mutex::new(None),
            append_script: Script::new(&format!("{LUA_APPEND}{LUA_APPEND_MAIN}")),
            send_script: Script::new(&format!("{LUA_APPEND}{LUA_SEND_MAIN}")),
            create_script: Script::new(LUA_CREATE),
            batch_script: Script::new(&format!("{LUA_APPEND}{LUA_APPEND_BATCH}")),
            cancel_script: Script::new(&format!("{LUA_APPEND}{LUA_CANCEL}")),
            trim_script: Script::new(LUA_TRIM),
            chaos_script: Script::new(LUA_SET_CHAOS),
        })
    }

    /// Sets the lifetime of chat send idempotency keys.
    pub fn with_send_ttl(mut self, seconds: u64) -> Self {
        self.send_ttl_s = seconds.max(1);
        self
    }

    fn conn(&self) -> ConnectionManager {
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
            Some(t) => Reduced::from_stored(id, &t),
            None => Ok(Reduced::new(id)),
        }
    }

    /// Reads from the run's local tail cache if it covers `after + 1`.
    fn read_cached(&self, id: &str, after: u64) -> Option<Replay> {
        let shared = lock(&self.tails).get(id).cloned()?;
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

    async fn read_now(&self, id: &str, after: u64) -> StoreResult<Option<Replay>> {
        if let Some(rep) = self.read_cached(id, after) {
            return Ok(Some(rep));
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
            let base = Reduced::from_stored(id, &base)?;
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
            .invoke_async(&mut self.conn())
            .await?;
        let Ok(n) = u64::try_from(n) else {
            return Ok(None);
        };
        self.trim_if_over(id, n, first).await?;
        Ok(Some(n))
    }

    /// Prunes to the window when the run holds 10 % more than it (amortized O(1) per event).
    async fn trim_if_over(&self, id: &str, last: u64, first: u64) -> StoreResult<()> {
        let held = (last + 1).saturating_sub(first);
        if held > self.window + self.window / 10 {
            self.prune_now(id, last + 1 - self.window).await?;
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
                base.apply(*n, e);
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
                });
                tails.insert(id.to_owned(), s.clone());
                tokio::spawn(run_tail(
                    self.client.clone(),
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
        let mut r = match cached {
            Some(r) if r.cursor() <= last => r,
            _ => self.base(id).await?,
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
                continue;
            }
            for (n, e) in &evs {
                r.apply(*n, e);
            }
        }
        let body = SnapshotBody::new(id, r.cursor(), &r.state);
        let mut cache = lock(&self.snapshots);
        if cache.len() >= SNAPSHOT_CACHE {
            cache.clear();
        }
        cache.insert(id.to_owned(), r);
        Ok(Some(body))
    }

    async fn send_now(&self, session: &str, crid: &str, content: &str) -> StoreResult<SendOutcome> {
        // The payload is `{"message_id":"<allocated in the script>", …rest}`.
        let rest =
            json!({"role": "user", "client_request_id": crid, "content": content}).to_string();
        let rest = rest.strip_prefix('{').unwrap_or(&rest);
        let body = body_rest(session, "message.created", "{\"message_id\":\"");
        let head = body.strip_suffix('}').unwrap_or(&body).to_owned();
        let (fresh, mid, n, first): (i64, String, u64, u64) = self
            .send_script
            .key(meta_key(session))
            .key(log_key(session))
            .key(send_key(session, crid))
            .key(SEND_QUEUE)
            .arg(head)
            .arg(format!("\",{rest}}}"))
            .arg(self.send_ttl_s)
            .arg(session)
            .arg(crid)
            .arg(content)
            .invoke_async(&mut self.conn())
            .await?;
        if fresh == 1 {
            self.trim_if_over(session, n, first).await?;
        }
        Ok(SendOutcome {
            message_id: mid,
            run_id: session.to_owned(),
            fresh: fresh == 1,
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
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(wait_ms + 5000)));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
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
        let text: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.conn())
            .await?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut self.conn()).await?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_owned())
        };
        Ok(json!({
            "store": "redis",
            "used_memory": get("used_memory").and_then(|v| v.parse::<u64>().ok()),
            "used_memory_human": get("used_memory_human"),
            "keys": keys,
            "tails": lock(&self.tails).len(),
        }))
    }
}

/// The live tail of run `id`: `XREAD BLOCK` on a connection of its own, into the
/// shared cache, waking local streams; ends when no local stream listens.
async fn run_tail(client: Client, tails: Tails, id: String, shared: Arc<TailShared>) {
    let key = log_key(&id);
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 5000)));
    let mut conn: Option<MultiplexedConnection> = None;
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
            None => match client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
            {
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
        "redis"
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
            let (code, n, first): (i64, u64, u64) = self
                .cancel_script
                .key(meta_key(id))
                .key(log_key(id))
                .key(cancel_key(id, target))
                .arg(body_rest(id, ty, &rest))
                .arg(ty)
                .invoke_async(&mut self.conn())
                .await?;
            Ok(match code {
                0 => {
                    self.trim_if_over(id, n, first).await?;
                    super::CancelOutcome::Requested(n)
                }
                1 => super::CancelOutcome::Already(n),
                -3 => super::CancelOutcome::Finished,
                _ => super::CancelOutcome::UnknownRun,
            })
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
            let n: u64 = redis::cmd("HINCRBY")
                .arg(meta_key(id))
                .arg("next_message")
                .arg(1)
                .query_async(&mut self.conn())
                .await?;
            Ok(format!("msg_{n}"))
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

    fn claim_sends<'a>(
        &'a self,
        consumer: &'a str,
        block_ms: u64,
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
            // A blocking read: on a connection of its own, not the shared multiplexed one.
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_millis(block_ms + 5000)));
            let mut slot = self.worker_conn.lock().await;
            let c = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(
                    self.client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ),
            };
            let reply: redis::RedisResult<XreadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(SEND_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(16)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(SEND_QUEUE)
                .arg(">")
                .query_async(c)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    *slot = None;
                    return Err(e.into());
                }
            };
            let mut out = Vec::new();
            for (_, entries) in reply.unwrap_or_default() {
                for (queue_id, f) in entries {
                    if let (Some(s), Some(c), Some(x)) =
                        (field(&f, "s"), field(&f, "c"), field(&f, "x"))
                    {
                        out.push(QueuedSend {
                            queue_id,
                            session: s.to_owned(),
                            crid: c.to_owned(),
                            content: x.to_owned(),
                        });
                    }
                }
            }
            Ok(out)
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
