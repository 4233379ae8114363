//! What is stored for a refresh, and when (API.md `resume`, "Sends survive everything").
//!
//! A run's record is split in two so that a write never serializes the whole
//! history (issue 13, item 3):
//! - the **head** (small, written synchronously to session/localStorage):
//!   `{"v":3,"cursor":N,"state":{…§6…},"parked":[envelope…]}` where
//!   `state.messages` holds, in order, every message that is not a completed
//!   (or failed) message with a `message_id` inline, and for each such
//!   completed message whose body is in the body store only its reference
//!   `[message_id, hash]`;
//! - the **bodies** (the shell keeps them in IndexedDB): one immutable entry
//!   per completed message, keyed by `[area, run_id, message_id, hash]`, where
//!   `hash` ([`body_hash`]) covers every field of the message, so a key never
//!   names two different bodies and two tabs can never corrupt each other.
//!
//! The invariant that keeps the head consistent without waiting on anything:
//! **a head references only bodies whose write has been reported committed**
//! ([`Persist::bodies_stored`]); every other message is inline. A persist tick
//! hands the shell the bodies not written yet (each body once) and a head;
//! when the completed messages not yet committed are too large to inline
//! ([`INLINE_BODIES_MAX`]), the head is deferred until their batch commits and
//! the previous head (an older but consistent resume point) stays.
//!
//! A head the storage area refuses even after eviction (quota) goes to the
//! body store as well, and the storage area then holds only
//! [`HEAD_IN_BODY_STORE`] (smaller than the head it replaces, so it fits):
//! the next page reads the head from there, so a full area loses no progress.
//!
//! Runs whose completed messages total at most [`INLINE_BODIES_MAX`] bytes
//! (and shells without a body store) keep everything inline: their head is
//! restored synchronously, as version 2 records were (still readable).
//!
//! Per tick the engine hashes only the completed messages that changed since
//! the previous tick (the state's change marks, [`Persist::note_changes`]);
//! the head costs a few dozen bytes per completed message (its reference).
//!
//! - `state` holds the optimistic messages of sends not yet accepted, so a new
//!   page sends them again with the same `client_request_id`;
//! - `parked` holds the job-only events that are applied but waiting for their
//!   job's worker: the cursor is past them, so without them a refresh would
//!   lose them for good.
//!
//! When: a write is due whenever the cursor moved or anything else stored
//! changed (a send queued, accepted or failed; an event parked; bodies
//! committed), at most once per `persist_interval_ms`, and at once on
//! `send()`, page hide, `close()` and run completion.

use crate::core::strmap::StrMap;

use super::config::Ms;
use super::link::Conn;
use super::outbox::CancelReq;
use super::timers::{Timer, TimerTable};
use super::{unanswered, Engine};
use crate::core::envelope::{decode_envelope, EventKind};
use crate::core::json::state::{
    message as read_message, state_with, write_message, write_state_with,
};
use crate::core::json::write::{push_str, push_u64};
use crate::core::json::{Field, Number, Scanner, Token, Writer};
use crate::core::state::{Changes, Message, MessageStatus, Parked, RunState};

/// Version of the stored head format (2 and 1 are still read).
pub const STORAGE_VERSION: u64 = 3;

/// Completed messages stay inline while they total at most this many bytes
/// of content (32 KiB); beyond, their bodies go to the body store. Also the
/// most a head inlines of completed messages whose bodies are still being
/// written: above it the head waits for their commit.
pub const INLINE_BODIES_MAX: usize = 32 * 1024;

/// Body batches written but not yet reported (bounded: a shell whose store
/// never answers makes no new batch beyond this; the messages stay inline).
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Two records merge only while their texts total at most this (1 MiB): a
/// record never grows beyond it by merging, so each body is rewritten at most
/// ⌈log2(MERGE_MAX_BYTES / the size of the batch it was first written in)⌉
/// times whatever the history's length or the number of batches it arrived
/// in, and a run keeps about 2 × its bytes / MERGE_MAX_BYTES full records
/// plus one per level below.
pub const MERGE_MAX_BYTES: usize = 1 << 20;

/// Consecutive failed body batches after which the body store is not used
/// again by this engine (everything inline, as without a store).
pub const MAX_BODY_FAILURES: u32 = 3;

/// Hashes are cut to 53 bits: exact as a JS number and as an IndexedDB key.
const HASH_MASK: u64 = (1 << 53) - 1;

/// One completed message's body for the body store; immutable under
/// `[message_id, hash]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The message's id.
    pub message_id: String,
    /// [`body_hash`] of the message (53 bits).
    pub hash: u64,
    /// [`encode_body`] of the message.
    pub text: String,
}

/// Bodies to write as one record of the body store, in one transaction;
/// report with [`crate::core::engine::Engine::bodies_stored`].
///
/// The store keeps one record per batch, one string ([`encode_batch`]):
/// reading one record of 1,500 bodies costs far less than 1,500 records, and
/// one string crosses into the wasm in one copy. Batches merge like a binary
/// counter so a run has few records: two committed batches of the same
/// level ([`BodyBatch::level`]) whose texts total at most [`MERGE_MAX_BYTES`]
/// are rewritten as one of the next level, which replaces them in the same
/// transaction. Each body is rewritten a bounded number of times over a run's
/// life (see [`MERGE_MAX_BYTES`]), however many batches the history arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyBatch {
    /// Batch number (per engine).
    pub id: u64,
    /// The record's key in the body store ([`batch_key`] of its bodies).
    pub key: u64,
    /// ⌊log2(number of bodies)⌋.
    pub level: u32,
    /// Number of bodies.
    pub count: usize,
    /// The record ([`encode_batch`]); empty when the batch holds no body
    /// (a merge whose bodies were all superseded: only `replaces` applies).
    pub text: String,
    /// Records this one replaces (delete them in the same transaction).
    pub replaces: Vec<u64>,
}

/// One record of the body store read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Its key.
    pub key: u64,
    /// Its text ([`encode_batch`]).
    pub text: String,
}

/// A record of the body store: `[[message_id, hash, message], …]`, the
/// bodies' texts joined, not re-serialized. The one place batches are encoded.
pub fn encode_batch(bodies: &[Body]) -> String {
    let mut out =
        String::with_capacity(bodies.iter().map(|b| b.text.len() + 40).sum::<usize>() + 2);
    out.push('[');
    for (i, b) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_str(&mut out, &b.message_id);
        out.push(',');
        push_u64(&mut out, b.hash);
        out.push(',');
        out.push_str(&b.text);
        out.push(']');
    }
    out.push(']');
    out
}

/// One body of a record read back: message id, hash, message.
pub type Row = (String, u64, Message);

/// A record read back, each body decoded once. The one place batches are decoded.
pub fn decode_batch(text: &str) -> Option<Vec<Row>> {
    let mut s = Scanner::new(text);
    s.array().ok()?;
    let mut rows = Vec::new();
    while s.item().ok()? {
        s.array().ok()?;
        s.item().ok()?.then_some(())?;
        let id = match s.peek().ok()? {
            Token::String => s.string().ok()?.into_owned(),
            _ => return None,
        };
        s.item().ok()?.then_some(())?;
        let hash = match Field::read(&mut s).ok()? {
            Field::Num(Number::U64(n)) => n,
            _ => return None,
        };
        s.item().ok()?.then_some(())?;
        let m = read_message(&mut s).ok()?;
        if s.item().ok()? {
            return None;
        }
        rows.push((id, hash, m));
    }
    s.end().ok()?;
    Some(rows)
}

/// The key of a batch: FNV-1a over its bodies' ids and hashes, 53 bits
/// (content-addressed: equal keys hold equal bodies).
pub fn batch_key<'a>(members: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, hash) in members {
        for x in (id.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(id.as_bytes())
            .chain(hash.to_le_bytes().iter())
        {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h & HASH_MASK
}

fn level_of(n: usize) -> u32 {
    n.max(1).ilog2()
}

/// What to store at a persist tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Write {
    /// The head to store now (replacing the previous one), or `None`: keep the
    /// previous head (the completed messages it would inline are still being written).
    pub head: Option<String>,
    /// Bodies to write to the body store, if any are new.
    pub batch: Option<BodyBatch>,
}

/// Counters of what the stored record cost (for tests, benches and the lead's numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Heads handed out.
    pub heads: u64,
    /// Bytes (UTF-8) of the last head handed out.
    pub last_head_bytes: u64,
    /// Ticks whose head was deferred until a body batch commits.
    pub heads_deferred: u64,
    /// Bodies handed out to write.
    pub bodies: u64,
    /// Bytes of those bodies.
    pub body_bytes: u64,
    /// Body batches reported failed.
    pub batches_failed: u64,
    /// Restores that could not be completed (body store missing, failed, or a
    /// referenced body absent or altered): the run started from the beginning.
    pub restore_failures: u64,
}

/// A record read back.
#[derive(Debug)]
pub struct Stored {
    /// The state, its cursor set to the stored cursor.
    pub state: RunState,
    /// Parked job-only events (id, event).
    pub parked: Vec<(u64, EventKind)>,
    /// Bodies the head referenced (all present and intact): already stored.
    pub refs: Vec<(String, u64)>,
}

/// One message slot of a head read back.
#[derive(Debug)]
enum Slot {
    Inline(Message),
    Ref(String, u64),
}

/// A head read back whose completed messages are in the body store.
#[derive(Debug)]
pub struct Pending {
    run_id: String,
    cursor: u64,
    /// The §6 state without its messages.
    state: Box<RunState>,
    slots: Vec<Slot>,
    parked: Vec<(u64, EventKind)>,
}

impl Pending {
    /// Number of bodies the head references.
    pub fn refs(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Ref(..)))
            .count()
    }
}

/// What the session/localStorage holds instead of a head the storage area
/// refused (quota) and the body store accepted: the head is read from there.
pub const HEAD_IN_BODY_STORE: &str = r#"{"v":3,"head":"body_store"}"#;

/// What a restored record still waits for.
#[derive(Debug)]
enum Awaiting {
    /// The head itself is in the body store ([`HEAD_IN_BODY_STORE`]).
    Head,
    /// The head references bodies in the body store.
    Bodies(Pending),
}

/// A head read back: complete, or waiting for its bodies.
#[derive(Debug)]
pub enum Decoded {
    /// Everything was inline.
    Ready(Box<Stored>),
    /// Completed messages are in the body store: read them, then [`finish`].
    Pending(Pending),
}

/// A message whose body goes to the body store once committed: completed or
/// failed, and known to the server (`message_id`).
fn external(m: &Message) -> bool {
    m.message_id.is_some() && matches!(m.status, MessageStatus::Completed | MessageStatus::Failed)
}

/// FNV-1a (64-bit) over every field of `m`, each length-prefixed, cut to 53
/// bits. Two messages with the same `message_id` and hash are the same body.
pub fn body_hash(m: &Message) -> u64 {
    fn field(h: &mut u64, b: Option<&[u8]>) {
        let (tag, bytes): (u8, &[u8]) = match b {
            Some(b) => (1, b),
            None => (0, &[]),
        };
        for x in [tag]
            .iter()
            .chain((bytes.len() as u64).to_le_bytes().iter())
            .chain(bytes.iter())
        {
            *h ^= u64::from(*x);
            *h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    field(&mut h, m.message_id.as_deref().map(str::as_bytes));
    field(&mut h, m.client_request_id.as_deref().map(str::as_bytes));
    field(&mut h, m.reply_to.as_deref().map(str::as_bytes));
    field(&mut h, Some(m.role.as_str().as_bytes()));
    field(&mut h, Some(m.content.as_bytes()));
    let status: u8 = match m.status {
        MessageStatus::Queued => 0,
        MessageStatus::Sending => 1,
        MessageStatus::Sent => 2,
        MessageStatus::Streaming => 3,
        MessageStatus::Completed => 4,
        MessageStatus::Failed => 5,
    };
    field(&mut h, Some(&[status]));
    h & HASH_MASK
}

/// The stored text of one body (a §6 message). The one place bodies are encoded.
pub fn encode_body(m: &Message) -> String {
    let mut w = Writer::new();
    write_message(&mut w, m);
    w.finish()
}

/// One message of a head to write: inline, or a reference to a committed body.
#[derive(Debug, Clone, Copy)]
enum Entry<'a> {
    Inline(&'a Message),
    Ref(&'a str, u64),
}

/// The head text: cursor, state (messages inline or as references, in
/// order), parked events. The one place heads are encoded.
fn encode_head(
    state: &RunState,
    entries: &[Entry<'_>],
    parked: &Parked,
    cancels: &[(String, CancelReq)],
) -> String {
    let mut w = Writer::new();
    w.begin_object();
    w.key("v").u64(STORAGE_VERSION);
    w.key("cursor").u64(state.cursor);
    w.key("state");
    write_state_with(&mut w, state, &mut |w| {
        for e in entries {
            match e {
                Entry::Inline(m) => write_message(w, m),
                Entry::Ref(id, hash) => {
                    w.begin_array();
                    w.str(id).u64(*hash);
                    w.end_array();
                }
            }
        }
    });
    w.key("parked").begin_array();
    for (id, kind) in parked.iter() {
        parked_envelope(&mut w, &state.run_id, id, kind);
    }
    w.end_array();
    if !cancels.is_empty() {
        // `[[client_request_id, reply_to|null, reason|null], …]`; absent when
        // empty (older pages skip the key, and read records without it).
        w.key("cancels").begin_array();
        for (crid, c) in cancels {
            w.begin_array();
            w.str(crid)
                .opt_str(c.reply_to.as_deref())
                .opt_str(c.reason.as_deref());
            w.end_array();
        }
        w.end_array();
    }
    w.end_object();
    w.finish()
}

/// The whole record with every message inline (no body store).
pub fn encode(state: &RunState, parked: &Parked, cancels: &[(String, CancelReq)]) -> String {
    let entries: Vec<Entry<'_>> = state.messages.iter().map(Entry::Inline).collect();
    encode_head(state, &entries, parked, cancels)
}

/// The cancels a head holds (its `cancels` list; none in records written
/// before cancels existed, or in anything unreadable).
pub fn decode_cancels(text: &str) -> Vec<(String, CancelReq)> {
    fn read(text: &str) -> Option<Vec<(String, CancelReq)>> {
        let mut s = Scanner::new(text);
        s.object().ok()?;
        while let Some(k) = s.key().ok()? {
            if k != "cancels" {
                s.skip().ok()?;
                continue;
            }
            let mut out = Vec::new();
            s.array().ok()?;
            while s.item().ok()? {
                s.array().ok()?;
                let mut f: [Option<String>; 3] = [None, None, None];
                for slot in &mut f {
                    s.item().ok()?.then_some(())?;
                    *slot = match s.peek().ok()? {
                        Token::String => Some(s.string().ok()?.into_owned()),
                        Token::Null => {
                            s.null().ok()?;
                            None
                        }
                        _ => return None,
                    };
                }
                if s.item().ok()? {
                    return None;
                }
                let [crid, reply_to, reason] = f;
                out.push((crid?, CancelReq { reply_to, reason }));
            }
            return Some(out);
        }
        None
    }
    read(text).unwrap_or_default()
}

/// Reads a head of `run_id` back (versions 1–3); `None` for anything
/// unreadable, foreign or of another version (the run then starts from the
/// beginning). The one place heads are decoded.
pub fn decode_head(text: &str, run_id: &str) -> Option<Decoded> {
    let mut s = Scanner::new(text);
    let (mut v, mut cursor, mut state_text, mut parked_text) = (None, None, None, None);
    s.object().ok()?;
    while let Some(k) = s.key().ok()? {
        match &*k {
            "v" | "cursor" => {
                let n = match Field::read(&mut s).ok()? {
                    Field::Num(Number::U64(n)) => n,
                    _ => return None,
                };
                if k == "v" {
                    v = Some(n);
                } else {
                    cursor = Some(n);
                }
            }
            "state" => state_text = Some(s.raw().ok()?),
            "parked" => {
                parked_text = match s.peek().ok()? {
                    Token::Array => Some(s.raw().ok()?),
                    _ => return None,
                }
            }
            _ => s.skip().ok()?,
        }
    }
    s.end().ok()?;
    let (v, cursor) = (v?, cursor?);
    if !(1..=STORAGE_VERSION).contains(&v) {
        return None;
    }
    let mut slots = Vec::new();
    let mut st = Scanner::new(state_text?);
    let state = state_with(&mut st, &mut |s| {
        const BAD: &str = "bad stored message";
        let j = |_| BAD;
        match s.peek().map_err(j)? {
            Token::Null => return s.null().map_err(j),
            Token::Array => {}
            _ => return Err(BAD),
        }
        s.array().map_err(j)?;
        while s.item().map_err(j)? {
            let slot = match s.peek().map_err(j)? {
                Token::Array if v >= 3 => {
                    s.array().map_err(j)?;
                    let id = match (s.item().map_err(j)?, s.peek().map_err(j)?) {
                        (true, Token::String) => s.string().map_err(j)?.into_owned(),
                        _ => return Err(BAD),
                    };
                    let hash = match (s.item().map_err(j)?, Field::read(s).map_err(j)?) {
                        (true, Field::Num(Number::U64(n))) => n,
                        _ => return Err(BAD),
                    };
                    if s.item().map_err(j)? {
                        return Err(BAD);
                    }
                    Slot::Ref(id, hash)
                }
                _ => Slot::Inline(read_message(s)?),
            };
            slots.push(slot);
        }
        Ok(())
    })
    .ok()?;
    st.end().ok()?;
    if state.run_id != run_id {
        return None;
    }
    let mut parked = Vec::new();
    if let Some(list) = parked_text {
        let mut s = Scanner::new(list);
        s.array().ok()?;
        while s.item().ok()? {
            if let Ok(e) = decode_envelope(s.raw().ok()?, run_id) {
                if e.event_id <= cursor {
                    parked.push((e.event_id, e.kind));
                }
            }
        }
    }
    let pending = Pending {
        run_id: run_id.to_owned(),
        cursor,
        state: Box::new(state),
        slots,
        parked,
    };
    if pending.refs() == 0 {
        finish(pending, Vec::new()).map(|s| Decoded::Ready(Box::new(s)))
    } else {
        Some(Decoded::Pending(pending))
    }
}

/// Completes a head with the bodies read from the body store (any order,
/// extra ones ignored). `None` when a referenced body is missing, unreadable
/// or not the one referenced (its hash differs): the head cannot be used.
pub fn finish(p: Pending, bodies: Vec<Row>) -> Option<Stored> {
    // One map type (id → number) for every lookup here: less code in the wasm.
    let wanted: StrMap<u64> = p
        .slots
        .iter()
        .filter_map(|s| match s {
            Slot::Ref(id, hash) => Some((id.clone(), *hash)),
            Slot::Inline(_) => None,
        })
        .collect();
    let mut at: StrMap<u64> = StrMap::new();
    for (i, (id, hash, _)) in bodies.iter().enumerate() {
        if wanted.get(id) == Some(hash) {
            at.insert(id.clone(), i as u64);
        }
    }
    let mut rows: Vec<Option<Row>> = bodies.into_iter().map(Some).collect();
    let mut state = *p.state;
    if state.run_id != p.run_id {
        return None;
    }
    let mut messages = Vec::with_capacity(p.slots.len());
    let mut refs = Vec::new();
    for slot in p.slots {
        match slot {
            Slot::Inline(m) => messages.push(m),
            Slot::Ref(id, hash) => {
                let i = usize::try_from(*at.get(&id)?).ok()?;
                let (_, _, m) = rows.get_mut(i)?.take()?;
                if m.message_id.as_deref() != Some(id.as_str()) || body_hash(&m) != hash {
                    return None;
                }
                messages.push(m);
                refs.push((id, hash));
            }
        }
    }
    state.messages = messages;
    state.cursor = p.cursor;
    state.reindex();
    Some(Stored {
        state,
        parked: p.parked,
        refs,
    })
}

/// Reads a record of `run_id` whose messages are all inline (tests, and
/// records of shells without a body store).
pub fn decode(text: &str, run_id: &str) -> Option<Stored> {
    match decode_head(text, run_id)? {
        Decoded::Ready(s) => Some(*s),
        Decoded::Pending(_) => None,
    }
}

/// Writes a parked job-only event as the envelope it came in (PROTOCOL §1, §4).
fn parked_envelope(w: &mut Writer, run_id: &str, id: u64, kind: &EventKind) {
    let ty = match kind {
        EventKind::WorkerCompleted { .. } => "worker.completed",
        EventKind::ToolStarted { .. } => "tool.started",
        EventKind::ToolCompleted { .. } => "tool.completed",
        _ => return,
    };
    w.begin_object();
    w.key("event_id").u64(id);
    w.key("run_id").str(run_id);
    w.key("type").str(ty);
    w.key("timestamp").str("1970-01-01T00:00:00Z");
    w.key("payload").begin_object();
    match kind {
        EventKind::WorkerCompleted {
            job_id,
            status,
            error,
            ..
        } => {
            if let Some(e) = error {
                w.key("error").str(e);
            }
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("status").str(status.as_str());
        }
        EventKind::ToolStarted {
            job_id,
            tool_call_id,
            name,
            ..
        } => {
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("name").str(name);
            w.key("tool_call_id").str(tool_call_id);
        }
        EventKind::ToolCompleted {
            job_id,
            tool_call_id,
            ok,
            error,
            duration_ms,
            ..
        } => {
            if let Some(d) = duration_ms {
                w.key("duration_ms").f64(*d);
            }
            if let Some(e) = error {
                w.key("error").str(e);
            }
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("status").str(if *ok { "ok" } else { "error" });
            w.key("tool_call_id").str(tool_call_id);
        }
        _ => {}
    }
    w.end_object();
    w.end_object();
}

/// A batch's bookkeeping: its number, key, level, size, members, what it replaces.
#[derive(Debug, Clone)]
struct Batch {
    id: u64,
    key: u64,
    level: u32,
    /// Length of its text ([`encode_batch`]).
    bytes: usize,
    members: Vec<(String, u64)>,
    replaces: Vec<u64>,
}

/// When the stored record is written, and which bodies are already stored.
#[derive(Debug)]
pub struct Persist {
    enabled: bool,
    interval: Ms,
    /// Something stored other than the cursor changed since the last write.
    dirty: bool,
    written_cursor: u64,
    next_at: Ms,
    /// The shell has a body store (IndexedDB) that has not failed too often.
    body_store: bool,
    /// Committed bodies: message id → hash of its stored body.
    committed: StrMap<u64>,
    /// Batches handed out and not yet reported.
    in_flight: Vec<Batch>,
    /// Records of the body store this engine knows (written, or read at restore).
    records: Vec<Batch>,
    /// The same, by message id (for the per-message lookup).
    pending: StrMap<u64>,
    /// Hash cache of completed messages; an entry is dropped when the state
    /// marks its message changed.
    known: StrMap<u64>,
    /// Every cached hash is suspect (the state was replaced or reordered wholesale).
    rescan: bool,
    next_batch: u64,
    failures: u32,
    /// The head waits for its bodies' commit: the record loaded at page load
    /// is not complete yet, and nothing may overwrite it.
    awaiting: Option<Awaiting>,
    /// A connection was asked for while `awaiting`: made once the state is rebuilt.
    connect_deferred: bool,
    stats: Stats,
}

impl Persist {
    /// `enabled` = `resume` ≠ `"none"`; `cursor` = the restored cursor.
    pub fn new(enabled: bool, interval: Ms, cursor: u64) -> Self {
        Self {
            enabled,
            interval,
            dirty: false,
            written_cursor: cursor,
            next_at: 0.0,
            body_store: false,
            committed: StrMap::new(),
            in_flight: Vec::new(),
            records: Vec::new(),
            pending: StrMap::new(),
            known: StrMap::new(),
            rescan: false,
            next_batch: 1,
            failures: 0,
            awaiting: None,
            connect_deferred: false,
            stats: Stats::default(),
        }
    }

    /// Something stored besides the cursor changed (outbox, parked events).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// The storage refused the last write (quota): it is due again at the next
    /// interval, even if nothing else changes.
    pub fn refused(&mut self, timers: &mut TimerTable) {
        self.dirty = true;
        timers.set(Timer::Persist, self.next_at);
    }

    /// Whether to write now. `force` skips the throttle (send, page hide,
    /// close, completion); otherwise a due write is timed by [`Timer::Persist`].
    /// Never while a restored head waits for its bodies (it would overwrite it).
    pub fn due(&mut self, now: Ms, cursor: u64, force: bool, timers: &mut TimerTable) -> bool {
        if !self.enabled
            || self.awaiting.is_some()
            || (!self.dirty && cursor == self.written_cursor)
        {
            return false;
        }
        if force || now >= self.next_at {
            self.dirty = false;
            self.written_cursor = cursor;
            self.next_at = now + self.interval;
            timers.clear(Timer::Persist);
            return true;
        }
        if !timers.is_armed(Timer::Persist) {
            timers.set(Timer::Persist, self.next_at);
        }
        false
    }

    /// The body store is in use (present, and not failed too often).
    pub fn body_store(&self) -> bool {
        self.body_store
    }

    /// The shell has (`true`) or lacks a body store.
    pub fn set_body_store(&mut self, on: bool) {
        self.body_store = on && self.failures < MAX_BODY_FAILURES;
    }

    /// Records which messages the state marked changed (positions valid for
    /// `state` now): their cached hashes are recomputed at the next tick.
    pub fn note_changes(&mut self, changes: &Changes, state: &RunState) {
        if changes.messages.all {
            self.rescan = true;
            return;
        }
        for &p in &changes.messages.positions {
            if let Some(id) = state.messages.get(p).and_then(|m| m.message_id.as_ref()) {
                self.known.remove(id);
            }
        }
    }

    /// What to store now (after [`Persist::due`] said so): the head and the
    /// bodies not written yet. `changes`: the state's change marks not taken yet.
    pub fn write(
        &mut self,
        state: &RunState,
        parked: &Parked,
        changes: &Changes,
        cancels: &[(String, CancelReq)],
    ) -> Write {
        self.note_changes(changes, state);
        let externalize = self.body_store
            && (!self.committed.is_empty()
                || !self.in_flight.is_empty()
                || state
                    .messages
                    .iter()
                    .filter(|m| external(m))
                    .map(|m| m.content.len())
                    .sum::<usize>()
                    > INLINE_BODIES_MAX);
        if !externalize {
            let head = encode(state, parked, cancels);
            self.count_head(&head);
            return Write {
                head: Some(head),
                batch: None,
            };
        }
        if std::mem::take(&mut self.rescan) {
            self.known.clear();
        }
        let room = self.in_flight.len() < MAX_BATCHES_IN_FLIGHT;
        let mut entries = Vec::with_capacity(state.messages.len());
        let mut bodies = Vec::new();
        let mut inline_done = 0usize;
        for m in &state.messages {
            let Some(id) = m.message_id.as_deref().filter(|_| external(m)) else {
                entries.push(Entry::Inline(m));
                continue;
            };
            let hash = match self.known.get(id) {
                Some(&h) => h,
                _ => {
                    let h = body_hash(m);
                    self.known.insert(id.to_owned(), h);
                    h
                }
            };
            if self.committed.get(id) == Some(&hash) {
                entries.push(Entry::Ref(id, hash));
                continue;
            }
            entries.push(Entry::Inline(m));
            inline_done += m.content.len();
            if room && self.pending.get(id) != Some(&hash) {
                bodies.push(Body {
                    message_id: id.to_owned(),
                    hash,
                    text: encode_body(m),
                });
            }
        }
        let batch = if bodies.is_empty() {
            self.merge(state)
        } else {
            Some(self.batch(bodies, Vec::new()))
        };
        let head = if inline_done > INLINE_BODIES_MAX && !self.in_flight.is_empty() {
            // Too large to inline, and its bodies are on their way: the
            // previous head stays until they commit ([`Persist::bodies_stored`]).
            self.stats.heads_deferred += 1;
            self.dirty = true;
            None
        } else {
            let head = encode_head(state, &entries, parked, cancels);
            self.count_head(&head);
            Some(head)
        };
        Write { head, batch }
    }

    fn count_head(&mut self, head: &str) {
        self.stats.heads += 1;
        self.stats.last_head_bytes = head.len() as u64;
    }

    /// Registers a batch handed out to the shell.
    fn batch(&mut self, bodies: Vec<Body>, replaces: Vec<u64>) -> BodyBatch {
        let id = self.next_batch;
        self.next_batch += 1;
        let members: Vec<(String, u64)> = bodies
            .iter()
            .map(|b| (b.message_id.clone(), b.hash))
            .collect();
        let key = batch_key(members.iter().map(|(k, h)| (k.as_str(), *h)));
        let level = level_of(members.len());
        for (k, h) in &members {
            self.pending.insert(k.clone(), *h);
        }
        let text = if bodies.is_empty() {
            String::new()
        } else {
            encode_batch(&bodies)
        };
        self.in_flight.push(Batch {
            id,
            key,
            level,
            bytes: text.len(),
            members,
            replaces: replaces.clone(),
        });
        self.stats.bodies += bodies.len() as u64;
        self.stats.body_bytes += bodies.iter().map(|b| b.text.len() as u64).sum::<u64>();
        BodyBatch {
            id,
            key,
            level,
            count: bodies.len(),
            text,
            replaces,
        }
    }

    /// Two records of the same level whose texts total at most
    /// [`MERGE_MAX_BYTES`], merged into one of the next (nothing else in
    /// flight). Only bodies that still match the state are carried: a
    /// superseded body is dropped with its record.
    fn merge(&mut self, state: &RunState) -> Option<BodyBatch> {
        if !self.in_flight.is_empty() {
            return None;
        }
        let (a, b) = self.records.iter().enumerate().find_map(|(i, x)| {
            let j = self
                .records
                .iter()
                .enumerate()
                .skip(i + 1)
                .find(|(_, y)| y.level == x.level && x.bytes + y.bytes <= MERGE_MAX_BYTES)?
                .0;
            Some((i, j))
        })?;
        let (ra, rb) = (self.records.get(a)?, self.records.get(b)?);
        let replaces = vec![ra.key, rb.key];
        let by_id: StrMap<u64> = state
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((m.message_id.clone()?, i as u64)))
            .collect();
        let mut bodies = Vec::new();
        for (id, hash) in ra.members.iter().chain(rb.members.iter()) {
            if self.committed.get(id) != Some(hash) {
                continue;
            }
            let m = by_id
                .get(id)
                .and_then(|&i| state.messages.get(usize::try_from(i).ok()?));
            // Hashed again: only a body equal to the committed one is carried.
            if let Some(m) = m.filter(|m| external(m) && body_hash(m) == *hash) {
                bodies.push(Body {
                    message_id: id.clone(),
                    hash: *hash,
                    text: encode_body(m),
                });
            }
        }
        Some(self.batch(bodies, replaces))
    }

    /// The shell reports batch `id`: committed (`ok`) or failed. Returns true
    /// when a new head is worth writing (its bodies can now be referenced).
    pub fn bodies_stored(&mut self, id: u64, ok: bool) -> bool {
        let Some(at) = self.in_flight.iter().position(|b| b.id == id) else {
            return false;
        };
        let batch = self.in_flight.remove(at);
        for (k, h) in &batch.members {
            if self.pending.get(k) == Some(h) {
                self.pending.remove(k);
            }
            if ok {
                self.committed.insert(k.clone(), *h);
            }
        }
        if ok {
            self.failures = 0;
            // Bodies of the replaced records that the merge did not carry
            // (superseded) are gone: never reference them again.
            if !batch.replaces.is_empty() {
                let carried: StrMap<u64> = batch.members.iter().cloned().collect();
                for r in self
                    .records
                    .iter()
                    .filter(|r| batch.replaces.contains(&r.key))
                {
                    for (k, h) in &r.members {
                        if self.committed.get(k) == Some(h) && carried.get(k) != Some(h) {
                            self.committed.remove(k);
                        }
                    }
                }
            }
            self.records.retain(|r| !batch.replaces.contains(&r.key));
            if !batch.members.is_empty() {
                self.records.push(batch);
            }
        } else {
            self.failures += 1;
            self.stats.batches_failed += 1;
            if self.failures >= MAX_BODY_FAILURES {
                self.body_store = false;
            }
        }
        self.dirty = true;
        true
    }

    /// Number of body-store records this engine knows for its run.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// A restored head waits for its bodies: nothing is written meanwhile.
    pub fn await_bodies(&mut self, p: Pending) {
        self.awaiting = Some(Awaiting::Bodies(p));
    }

    /// The head itself is in the body store: nothing is written until it is read.
    pub fn await_head(&mut self) {
        self.awaiting = Some(Awaiting::Head);
    }

    /// A restored record waits for the body store.
    pub fn is_awaiting(&self) -> bool {
        self.awaiting.is_some()
    }

    /// The head itself is awaited from the body store.
    pub fn awaiting_head(&self) -> bool {
        matches!(self.awaiting, Some(Awaiting::Head))
    }

    /// Completes the awaited record with what the body store holds for the
    /// run: its head (when [`Persist::awaiting_head`]) and its `records`
    /// (`None`: the store failed). `Err` (counted) when it cannot be
    /// completed, with the head's sends not delivered yet (they are not lost
    /// with it); `None` when nothing was awaited.
    pub fn take_awaited(
        &mut self,
        run_id: &str,
        head: Option<&str>,
        records: Option<&[StoredBatch]>,
    ) -> Option<Result<Stored, Vec<Message>>> {
        let p = match self.awaiting.take()? {
            Awaiting::Bodies(p) => p,
            Awaiting::Head => match head.and_then(|h| decode_head(h, run_id)) {
                Some(Decoded::Ready(s)) => {
                    self.adopt(&s);
                    return Some(Ok(*s));
                }
                Some(Decoded::Pending(p)) => p,
                None => {
                    self.stats.restore_failures += 1;
                    return Some(Err(Vec::new()));
                }
            },
        };
        let sends: Vec<Message> = p
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Inline(m) if m.message_id.is_none() => Some(m.clone()),
                _ => None,
            })
            .collect();
        // Each record decoded once; one that does not decode counts as absent.
        let decoded: Option<Vec<(u64, usize, Vec<Row>)>> = records.map(|rs| {
            rs.iter()
                .filter_map(|r| Some((r.key, r.text.len(), decode_batch(&r.text)?)))
                .collect()
        });
        let mut kept = Vec::new();
        let bodies = decoded.map(|d| {
            let mut all = Vec::new();
            for (key, bytes, rows) in d {
                kept.push(Batch {
                    id: 0,
                    key,
                    level: level_of(rows.len()),
                    bytes,
                    members: rows.iter().map(|(k, h, _)| (k.clone(), *h)).collect(),
                    replaces: Vec::new(),
                });
                all.extend(rows);
            }
            all
        });
        match bodies.and_then(|b| finish(p, b)) {
            Some(s) => {
                self.adopt(&s);
                for r in kept {
                    // Read from the store: committed. The head's references win.
                    for (k, h) in &r.members {
                        self.committed.get_or_insert_with(k, || *h);
                    }
                    self.records.push(r);
                }
                Some(Ok(s))
            }
            None => {
                self.stats.restore_failures += 1;
                Some(Err(sends))
            }
        }
    }

    /// A connection was wanted while the head awaited its bodies.
    pub fn defer_connect(&mut self) {
        self.connect_deferred = true;
    }

    /// A restored record's bodies are already stored; its cursor was written.
    pub fn adopt(&mut self, s: &Stored) {
        for (k, h) in &s.refs {
            self.committed.insert(k.clone(), *h);
            self.known.insert(k.clone(), *h);
        }
        self.written_cursor = s.state.cursor;
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

// ----- the engine's side of the stored record ---------------------------------
impl Engine {
    /// The shell has a body store (IndexedDB) for completed messages
    /// (`false`: every message stays in the head, as a version 2 record).
    pub fn set_body_store(&mut self, on: bool) {
        self.persist.set_body_store(on);
    }

    /// What to store after [`Action::Persist`](super::Action::Persist) (and at
    /// page hide): write the batch's bodies (if any) to the body store and
    /// report with [`Engine::bodies_stored`]; store the head (if any) now, in
    /// place of the previous one. Costs the bodies not written before plus a
    /// reference per stored body: never the whole history again.
    pub fn storage_write(&mut self) -> Write {
        let cancels = self.outbox.cancels();
        self.persist
            .write(&self.state, &self.parked, self.state.changes(), &cancels)
    }

    /// The body store committed (`ok`) or failed batch `batch`; a head that
    /// references the committed bodies is then written at once.
    pub fn bodies_stored(&mut self, now: Ms, batch: u64, ok: bool) {
        if self.persist.bodies_stored(batch, ok) {
            self.request_persist(now, true);
        }
    }

    /// The body store is in use (present, and not failed too often).
    pub fn body_store(&self) -> bool {
        self.persist.body_store()
    }

    /// The stored head references bodies in the body store: read them (every
    /// body stored for this run) and hand them to [`Engine::restore_bodies`].
    /// Until then the engine neither connects nor writes its record.
    pub fn awaiting_bodies(&self) -> bool {
        self.persist.is_awaiting()
    }

    /// The stored head itself is in the body store ([`HEAD_IN_BODY_STORE`]):
    /// read it with the bodies and hand both to [`Engine::restore_stored`].
    pub fn awaiting_head(&self) -> bool {
        self.persist.awaiting_head()
    }

    /// [`Engine::restore_bodies`] for a head read from the body store as well
    /// (`head`: `None` when it was not found).
    pub fn restore_stored(&mut self, now: Ms, head: Option<&str>, records: Option<&[StoredBatch]>) {
        let run_id = self.cfg.run_id.clone();
        // A head read from the body store carries its cancels too.
        let cancels = head
            .filter(|h| decode_head(h, &run_id).is_some())
            .map(decode_cancels)
            .unwrap_or_default();
        let Some(outcome) = self.persist.take_awaited(&run_id, head, records) else {
            return;
        };
        self.install(now, outcome);
        self.restore_cancels(now, cancels);
    }

    /// The records read for the awaited head (`None`: the body store is missing
    /// or failed). With every referenced body present and intact, the stored
    /// state and cursor are installed; otherwise (counted in
    /// [`Stats::restore_failures`]) the run starts from the beginning, keeping
    /// only the head's undelivered sends, so no event is applied twice. A
    /// connection asked for meanwhile is made now.
    pub fn restore_bodies(&mut self, now: Ms, records: Option<&[StoredBatch]>) {
        self.restore_stored(now, None, records);
    }

    /// Installs a restored record (or a fresh state with its undelivered sends).
    fn install(&mut self, now: Ms, outcome: Result<Stored, Vec<Message>>) {
        let cap = self.cfg.outbox_capacity;
        let mut restored = match outcome {
            Ok(stored) => {
                for (id, kind) in stored.parked {
                    self.parked.restore(id, kind, self.cfg.park_capacity);
                }
                stored.state
            }
            Err(sends) => {
                let mut fresh = RunState::new(&self.cfg.run_id);
                for m in sends {
                    fresh.insert_message(m);
                }
                fresh
            }
        };
        restored.reindex();
        let failed = self.outbox.restore(&mut restored.messages, cap);
        if failed > 0 {
            self.link.last_error = Some(crate::core::json::write::concat_u64(
                "",
                failed as u64,
                " stored messages were not sent again: the outbox is full",
            ));
        }
        if !restored.is_finished() {
            self.activity.restore(unanswered(&restored), now);
        }
        // Sends made while the bodies were read stay, after the stored messages.
        let live = std::mem::replace(&mut self.state, restored);
        for m in live.messages.into_iter().filter(|m| m.message_id.is_none()) {
            let known = m
                .client_request_id
                .as_deref()
                .is_some_and(|c| self.state.message_by_request(c).is_some());
            if !known {
                self.state.insert_message(m);
            }
        }
        self.state.mark_all_changed();
        self.mark_dirty();
        self.pump_sends(now);
        if std::mem::take(&mut self.persist.connect_deferred) {
            match self.link.conn {
                Conn::Idle => self.start(now),
                Conn::Closed | Conn::Finished => {}
                _ if self.link.online => self.connect(now),
                _ => {}
            }
        }
        if self.follow.following() && self.link.conn == Conn::Following {
            // Relays were ignored while the record was read: ask for
            // everything after the restored cursor.
            self.ask(now);
        }
    }

    /// What the stored record cost so far.
    pub fn storage_stats(&self) -> Stats {
        self.persist.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::{Message, MessageRole, MessageStatus};

    #[test]
    fn a_changed_outbox_is_written_even_when_the_cursor_did_not_move() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 7);
        assert!(!p.due(0.0, 7, true, &mut t));
        p.touch();
        assert!(p.due(0.0, 7, true, &mut t));
        assert!(!p.due(1.0, 7, true, &mut t));
    }

    #[test]
    fn a_refused_write_is_due_again_at_the_next_interval() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 0);
        assert!(p.due(0.0, 1, true, &mut t));
        p.refused(&mut t);
        assert_eq!(t.get(Timer::Persist), Some(1000.0));
        assert!(p.due(1000.0, 1, false, &mut t));
    }

    #[test]
    fn writes_are_throttled_by_the_timer() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 0);
        assert!(p.due(0.0, 1, false, &mut t));
        assert!(!p.due(10.0, 2, false, &mut t));
        assert_eq!(t.get(Timer::Persist), Some(1000.0));
        assert!(p.due(1000.0, 2, false, &mut t));
        assert!(!Persist::new(false, 1.0, 0).due(0.0, 5, true, &mut t));
    }

    #[test]
    fn record_round_trips_state_outbox_and_parked_events() {
        let mut s = RunState::new("r");
        s.cursor = 9;
        s.insert_message(Message {
            message_id: None,
            client_request_id: Some("c1".into()),
            reply_to: None,
            role: MessageRole::User,
            content: "hi".into(),
            status: MessageStatus::Sending,
        });
        let mut parked = Parked::default();
        parked.restore(
            8,
            EventKind::ToolCompleted {
                worker_id: None,
                job_id: Some("j1".into()),
                tool_call_id: "t1".into(),
                ok: false,
                error: Some("boom".into()),
                duration_ms: None,
            },
            16,
        );
        let text = encode(&s, &parked, &[]);
        let back = decode(&text, "r").expect("record");
        assert_eq!(back.state.cursor, 9);
        assert_eq!(back.state.messages.len(), 1);
        assert_eq!(back.parked.len(), 1);
        assert!(matches!(
            back.parked.first(),
            Some((8, EventKind::ToolCompleted { ok: false, .. }))
        ));
        assert!(decode(&text, "other").is_none());
        assert!(decode("{not json", "r").is_none());
    }
}
