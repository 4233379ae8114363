//! The stored record does not scale with history (issue 13, item 3): with a
//! long chat history (1,500 completed messages of 3 KB and one streaming),
//! every write after the first costs a small head and no body again; a head
//! and its bodies restore the same state and cursor; missing or altered
//! bodies restart the run from the beginning, never applying an event twice.
//! Black-box: the engine's public inputs and outputs, a body store simulated
//! by a map (what IndexedDB holds: `[message_id, hash] → text`).
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use runstream::core::engine::persist::{
    decode_batch, StoredBatch, Write, HEAD_IN_BODY_STORE, INLINE_BODIES_MAX, MERGE_MAX_BYTES,
};
use runstream::core::engine::{Action, Engine, Ms};
use runstream::core::state::MessageStatus;
use serde_json::json;

const HISTORY: u64 = 1500;
const BYTES: usize = 3000;

/// What the shell keeps: the head in session/localStorage, bodies in IndexedDB.
#[derive(Default)]
struct Store {
    head: Option<String>,
    /// One record per batch: key → its text.
    records: BTreeMap<u64, String>,
    /// Bytes written per persist tick (head + bodies).
    ticks: Vec<(usize, usize)>,
    bodies_written: usize,
}

impl Store {
    /// Executes the engine's Persist actions like the web shell: the head now,
    /// the bodies in a transaction that commits at once (`commit`) or never.
    fn run(&mut self, e: &mut Engine, now: Ms, acts: &[Action], commit: bool) {
        let mut todo = acts
            .iter()
            .filter(|a| matches!(a, Action::Persist { .. }))
            .count();
        while todo > 0 {
            todo -= 1;
            let Write { head, batch } = e.storage_write();
            let head_bytes = head.as_ref().map_or(0, String::len);
            if let Some(h) = head {
                self.head = Some(h);
            }
            let mut body_bytes = 0;
            if let Some(b) = batch {
                body_bytes += b.text.len();
                self.bodies_written += b.count;
                if !b.text.is_empty() {
                    assert_eq!(decode_batch(&b.text).unwrap().len(), b.count);
                }
                // Content-addressed: a key is never written with other content.
                if let Some(old) = self.records.get(&b.key) {
                    assert_eq!(old, &b.text, "record rewritten");
                }
                if !b.text.is_empty() {
                    self.records.insert(b.key, b.text.clone());
                }
                for k in &b.replaces {
                    self.records.remove(k);
                }
                if commit {
                    e.bodies_stored(now, b.id, true);
                    todo += drain(e)
                        .iter()
                        .filter(|a| matches!(a, Action::Persist { .. }))
                        .count();
                }
            }
            self.ticks.push((head_bytes, body_bytes));
        }
    }

    /// A new page reads the head, waits for the bodies and gets `e`'s state.
    fn assert_restores(&self, e: &Engine) {
        let head = self.head.clone().unwrap();
        let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
        assert!(e2.awaiting_bodies());
        e2.restore_bodies(1.0, Some(&self.bodies()));
        assert_eq!(e2.storage_stats().restore_failures, 0);
        assert_eq!(e2.state(), e.state());
    }

    fn bodies(&self) -> Vec<StoredBatch> {
        self.records
            .iter()
            .map(|(key, text)| StoredBatch {
                key: *key,
                text: text.clone(),
            })
            .collect()
    }
}

/// The long-history log: `HISTORY` completed messages, then a streaming reply.
fn history_log() -> Vec<String> {
    let text = "x".repeat(BYTES);
    let mut log = Vec::new();
    for i in 0..HISTORY {
        let id = log.len() as u64 + 1;
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        log.push(envelope(
            id,
            "message.created",
            json!({"message_id": format!("h{i}"), "role": role, "content": text}),
        ));
        if role == "assistant" {
            // As the reference server's long-history run logs it.
            let id = log.len() as u64 + 1;
            log.push(envelope(
                id,
                "message.completed",
                json!({"message_id": format!("h{i}"), "finish_reason": "stop"}),
            ));
        }
    }
    let id = log.len() as u64 + 1;
    log.push(envelope(id, "run.started", json!({"title": "t"})));
    let id = log.len() as u64 + 1;
    log.push(envelope(
        id,
        "message.created",
        json!({"message_id": "m1", "role": "assistant"}),
    ));
    log
}

fn delta(id: u64, i: u64) -> String {
    envelope(
        id,
        "message.delta",
        json!({"message_id": "m1", "delta": format!("t{i} ")}),
    )
}

/// An engine with a body store, connected (connection number returned), nothing received yet.
fn connected() -> (Engine, u64) {
    let mut c = cfg();
    // Room for a snapshot event of the whole history (one test sends one).
    c.max_event_bytes = 16 << 20;
    let mut e = Engine::new(c, [1, 1], None);
    e.set_body_store(true);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_response(1.0, conn, 200, None, true);
    (e, conn)
}

/// An engine with a body store that received the whole history (one chunk at t = 10).
fn streamed() -> (Engine, u64, Store, u64) {
    let (mut e, conn) = connected();
    let log = history_log();
    let bytes: Vec<u8> = log.iter().flat_map(|t| sse_frame(t)).collect();
    e.handle_bytes(10.0, conn, &bytes);
    (e, conn, Store::default(), log.len() as u64)
}

/// Streams deltas `from..to` at 100 per second, flushing a frame each 16 ms.
fn stream(e: &mut Engine, conn: u64, store: &mut Store, from: u64, to: u64, commit: bool) -> Ms {
    let mut now = 0.0;
    for i in from..to {
        now = 1000.0 + i as f64 * 10.0;
        e.handle_bytes(now, conn, &sse_frame(&delta(i, i)));
        e.flush(now);
        let acts = drain(e);
        store.run(e, now, &acts, commit);
    }
    now
}

#[test]
fn writes_after_the_first_do_not_grow_with_history() {
    let (mut e, conn, mut store, last) = streamed();
    let whole = e.storage_record().len();
    assert!(
        whole > HISTORY as usize * BYTES,
        "the old record: {whole} B"
    );
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    // First tick: every body once; the head that follows the commit holds references.
    assert_eq!(store.bodies_written, HISTORY as usize);
    let first_head = store.head.clone().expect("a head after the commit");
    assert!(first_head.len() < 64 * 1024, "head {} B", first_head.len());
    store.ticks.clear();
    // 10 s of streaming at 100 tokens/s.
    stream(&mut e, conn, &mut store, last + 1, last + 1001, true);
    assert!(store.ticks.len() >= 9, "ticks {:?}", store.ticks.len());
    assert_eq!(
        store.bodies_written, HISTORY as usize,
        "a body written twice"
    );
    for (head, bodies) in &store.ticks {
        assert_eq!(*bodies, 0);
        // A reference per completed message plus the streaming one: ≤ 40 B each.
        assert!(
            *head < HISTORY as usize * 40 + 16 * 1024,
            "head of {head} B"
        );
    }
    let worst = store.ticks.iter().map(|t| t.0).max().unwrap();
    println!(
        "long history: whole record {whole} B; per tick after the first: ≤ {worst} B head, 0 B bodies ({} ticks)",
        store.ticks.len()
    );
    let stats = e.storage_stats();
    assert_eq!(stats.bodies, HISTORY);
    assert_eq!(
        stats.heads_deferred, 1,
        "the first head waited for its bodies"
    );
}

#[test]
fn a_small_history_stays_inline_and_restores_synchronously() {
    let mut e = Engine::new(cfg(), [1, 1], None);
    e.set_body_store(true);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_response(1.0, conn, 200, None, true);
    for i in 0..5u64 {
        let t = envelope(
            i + 1,
            "message.created",
            json!({"message_id": format!("h{i}"), "role": "user", "content": "short"}),
        );
        e.handle_bytes(10.0, conn, &sse_frame(&t));
    }
    e.flush(20.0);
    let mut store = Store::default();
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    assert_eq!(store.bodies_written, 0);
    let e2 = Engine::new(cfg(), [2, 2], store.head.as_deref());
    assert!(!e2.awaiting_bodies());
    assert_eq!(e2.cursor(), 5);
    assert_eq!(e2.state().messages.len(), 5);
    // Inline: the head holds the messages themselves, below INLINE_BODIES_MAX.
    let head = store.head.unwrap();
    assert_eq!(head.matches("\"short\"").count(), 5);
    assert!(head.len() < INLINE_BODIES_MAX);
}

#[test]
fn a_restored_head_and_its_bodies_yield_the_same_state_and_cursor() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    let now = stream(&mut e, conn, &mut store, last + 1, last + 301, true);
    e.persist_now(now + 1.0);
    let acts = drain(&mut e);
    store.run(&mut e, now + 1.0, &acts, true);
    let head = store.head.clone().unwrap();

    let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
    assert!(e2.awaiting_bodies());
    e2.start(0.0);
    e2.persist_now(1.0);
    let acts = drain(&mut e2);
    assert!(
        connect_of(&acts).is_none(),
        "connected before the state was rebuilt"
    );
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Persist { .. })),
        "the stored head was overwritten while its bodies were read"
    );
    e2.restore_bodies(5.0, Some(&store.bodies()));
    assert!(!e2.awaiting_bodies());
    assert_eq!(e2.state(), e.state());
    let acts = drain(&mut e2);
    assert_eq!(connect_of(&acts).map(|c| c.1), Some(e.cursor()));
    // The restored bodies are known to be stored: nothing is written again.
    let mut store2 = Store::default();
    e2.persist_now(6.0);
    let acts = drain(&mut e2);
    store2.run(&mut e2, 6.0, &acts, true);
    assert_eq!(store2.bodies_written, 0);
}

#[test]
fn missing_or_altered_bodies_restart_from_the_beginning_without_double_application() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    let now = stream(&mut e, conn, &mut store, last + 1, last + 11, true);
    e.persist_now(now + 1.0);
    let acts = drain(&mut e);
    store.run(&mut e, now + 1.0, &acts, true);
    let head = store.head.clone().unwrap();
    let full = store.bodies();

    assert_eq!(full.len(), 1, "one record for the history");
    let mut missing = full.clone();
    let mut rows: Vec<serde_json::Value> = serde_json::from_str(&missing[0].text).unwrap();
    rows.remove(700);
    missing[0].text = serde_json::Value::Array(rows).to_string();
    let mut altered = full.clone();
    altered[0].text = altered[0].text.replacen("xxx", "xyx", 1);
    for (label, bodies) in [
        ("missing", Some(missing)),
        ("altered", Some(altered)),
        ("no store", None),
    ] {
        let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
        e2.start(0.0);
        e2.restore_bodies(5.0, bodies.as_deref());
        assert_eq!(e2.storage_stats().restore_failures, 1, "{label}");
        assert_eq!(e2.cursor(), 0, "{label}");
        assert!(e2.state().messages.is_empty(), "{label}");
        let (c2, from) = connect_of(&drain(&mut e2)).expect(label);
        assert_eq!(from, 0, "{label}: resumed from a cursor it does not have");
        // The server replays everything: every message exactly once.
        e2.handle_response(6.0, c2, 200, None, true);
        let mut log = history_log();
        for i in last + 1..last + 11 {
            log.push(delta(i, i));
        }
        let bytes: Vec<u8> = log.iter().flat_map(|t| sse_frame(t)).collect();
        e2.handle_bytes(7.0, c2, &bytes);
        assert_eq!(e2.state(), e.state(), "{label}");
        assert_eq!(e2.metrics().events_applied, log.len() as u64, "{label}");
    }
}

#[test]
fn a_failed_body_batch_is_never_referenced_and_is_written_again() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let Write { head, batch } = {
        drain(&mut e);
        e.storage_write()
    };
    assert!(head.is_none(), "a head inlining 4.5 MB was handed out");
    let batch = batch.unwrap();
    e.bodies_stored(21.0, batch.id, false);
    assert_eq!(e.storage_stats().batches_failed, 1);
    // The next tick hands the same bodies out again (nothing was committed).
    let acts = drain(&mut e);
    store.run(&mut e, 21.0, &acts, true);
    assert_eq!(store.bodies_written, HISTORY as usize);
    let now = stream(&mut e, conn, &mut store, last + 1, last + 3, true);
    e.persist_now(now + 1.0);
    let acts = drain(&mut e);
    store.run(&mut e, now + 1.0, &acts, true);
    let head = store.head.clone().unwrap();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
    e2.restore_bodies(1.0, Some(&store.bodies()));
    assert_eq!(e2.storage_stats().restore_failures, 0);
    assert_eq!(e2.cursor(), last + 2);
}

#[test]
fn a_send_made_while_bodies_are_read_survives_the_restore() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    stream(&mut e, conn, &mut store, last + 1, last + 3, true);
    let head = store.head.clone().unwrap();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
    e2.start(0.0);
    let crid = e2.send(1.0, "early").unwrap();
    assert_eq!(posted_ids(&mut e2), vec![crid.clone()]);
    e2.restore_bodies(5.0, Some(&store.bodies()));
    let msgs = &e2.state().messages;
    assert_eq!(msgs.len(), HISTORY as usize + 2);
    let last_msg = msgs.last().unwrap();
    assert_eq!(last_msg.client_request_id.as_deref(), Some(crid.as_str()));
    assert_eq!(last_msg.status, MessageStatus::Sending);
    // Not posted a second time by the restore.
    assert!(posted_ids(&mut e2).is_empty());
}

#[test]
fn a_version_2_record_is_still_read() {
    let v2 = json!({
        "v": 2, "cursor": 7,
        "state": {"run_id": RUN, "cursor": 7, "status": "running", "workers": [],
                  "messages": [{"message_id": "a", "role": "user", "content": "hi", "status": "completed"}],
                  "supervisor": {"completed": false}},
        "parked": []
    })
    .to_string();
    let e = Engine::new(cfg(), [1, 1], Some(&v2));
    assert!(!e.awaiting_bodies());
    assert_eq!(e.cursor(), 7);
    assert_eq!(e.state().messages[0].content, "hi");
}

#[test]
fn a_completed_message_that_changes_gets_a_new_body_and_reference() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    // The streamed reply completes, then a second created event rewrites nothing
    // (content is kept); a snapshot that changes h0's content does.
    let mut id = last + 1;
    e.handle_bytes(
        30.0,
        conn,
        &sse_frame(&envelope(
            id,
            "message.completed",
            json!({"message_id": "m1", "finish_reason": "stop"}),
        )),
    );
    id += 1;
    let mut snap = e.state().clone();
    snap.messages[0].content = "edited".into();
    snap.cursor = id;
    let wire = snap.to_wire();
    e.handle_bytes(
        40.0,
        conn,
        &sse_frame(&envelope(id, "snapshot", json!({"state": wire}))),
    );
    assert_eq!(e.cursor(), id, "{:?}", e.metrics());
    assert_eq!(e.state().messages[0].content, "edited");
    e.persist_now(50.0);
    let acts = drain(&mut e);
    store.run(&mut e, 50.0, &acts, true);
    assert_eq!(
        store.bodies_written,
        HISTORY as usize + 2,
        "m1 and the edited h0"
    );
    let head = store.head.clone().unwrap();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
    e2.restore_bodies(60.0, Some(&store.bodies()));
    assert_eq!(e2.state().messages[0].content, "edited");
    assert_eq!(e2.state(), e.state());
}

#[test]
fn messages_completed_one_by_one_keep_a_logarithmic_number_of_records() {
    let mut e = Engine::new(cfg(), [1, 1], None);
    e.set_body_store(true);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_response(1.0, conn, 200, None, true);
    let mut store = Store::default();
    let text = "y".repeat(BYTES);
    let mut id = 0;
    let n = 300u64;
    for i in 0..n {
        let now = 10.0 + i as f64 * 1000.0;
        id += 1;
        let t = envelope(
            id,
            "message.created",
            json!({"message_id": format!("q{i}"), "role": "user", "content": text}),
        );
        e.handle_bytes(now, conn, &sse_frame(&t));
        e.flush(now);
        let acts = drain(&mut e);
        store.run(&mut e, now, &acts, true);
        // A tick without a new body merges two records of one level.
        e.persist_now(now + 500.0);
        e.handle_bytes(
            now + 500.0,
            conn,
            &sse_frame(&envelope(id + 1, "progress.tick", json!({"n": i}))),
        );
        id += 1;
        e.flush(now + 500.0);
        let acts = drain(&mut e);
        store.run(&mut e, now + 500.0, &acts, true);
    }
    let records = store.records.len();
    assert!(records <= 10, "{records} records for {n} bodies");
    // Each body rewritten at most log2(n) + 1 times.
    assert!(
        store.bodies_written as u64 <= n * 10,
        "{} bodies written",
        store.bodies_written
    );
    e.persist_now(1e6);
    let acts = drain(&mut e);
    store.run(&mut e, 1e6, &acts, true);
    store.assert_restores(&e);
    println!(
        "{n} messages completed one by one: {records} records, {} bodies written",
        store.bodies_written
    );
}

/// A head the storage area refused is kept in the body store; the storage
/// area holds a marker, and the next page reads the head from there.
#[test]
fn a_head_kept_in_the_body_store_restores_the_latest_cursor() {
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    let now = stream(&mut e, conn, &mut store, last + 1, last + 50, true);
    e.persist_now(now + 1.0);
    let acts = drain(&mut e);
    store.run(&mut e, now + 1.0, &acts, true);
    let head = store.head.clone().unwrap();

    let mut e2 = Engine::new(cfg(), [2, 2], Some(HEAD_IN_BODY_STORE));
    assert!(e2.awaiting_bodies() && e2.awaiting_head());
    e2.start(0.0);
    e2.persist_now(1.0);
    let acts = drain(&mut e2);
    assert!(connect_of(&acts).is_none());
    assert!(!acts.iter().any(|a| matches!(a, Action::Persist { .. })));
    e2.restore_stored(2.0, Some(&head), Some(&store.bodies()));
    assert_eq!(e2.state(), e.state());
    assert_eq!(connect_of(&drain(&mut e2)).map(|c| c.1), Some(e.cursor()));

    // The head is gone too: start from the beginning, counted.
    let mut e3 = Engine::new(cfg(), [3, 3], Some(HEAD_IN_BODY_STORE));
    e3.start(0.0);
    e3.restore_stored(2.0, None, Some(&store.bodies()));
    assert_eq!(e3.storage_stats().restore_failures, 1);
    assert_eq!(connect_of(&drain(&mut e3)).map(|c| c.1), Some(0));
}

/// A merge drops a body that no longer matches the state; if the message
/// later comes back to exactly that content, its body is written again
/// (never referenced from the record the merge deleted).
#[test]
fn a_body_dropped_by_a_merge_is_written_again_when_its_content_returns() {
    let mut e = Engine::new(cfg(), [1, 1], None);
    e.set_body_store(true);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_response(1.0, conn, 200, None, true);
    let mut store = Store::default();
    let mut id = 0u64;
    let mut now = 10.0;
    let text = "z".repeat(BYTES);
    let mut feed = |e: &mut Engine, store: &mut Store, frame: String| {
        now += 1000.0;
        e.handle_bytes(now, conn, &sse_frame(&frame));
        e.flush(now);
        let acts = drain(e);
        store.run(e, now, &acts, true);
    };
    let snapshot_with = |e: &Engine, id: u64, status: &str| {
        let mut snap = e.state().clone();
        snap.cursor = id;
        let mut wire = snap.to_wire();
        wire["messages"][0]["status"] = json!(status);
        envelope(id, "snapshot", json!({"state": wire}))
    };
    let mut add = |e: &mut Engine, store: &mut Store, from: u64, to: u64, id: &mut u64| {
        for i in from..to {
            *id += 1;
            let t = envelope(
                *id,
                "message.created",
                json!({"message_id": format!("q{i}"), "role": "user", "content": text}),
            );
            feed(e, store, t);
            // Idle ticks: merges happen when no body is new.
            for _ in 0..3 {
                *id += 1;
                feed(e, store, envelope(*id, "progress.tick", json!({"n": 0})));
            }
        }
    };
    add(&mut e, &mut store, 0, 11, &mut id);
    id += 1;
    let t = snapshot_with(&e, id, "streaming");
    // Times after the closure's clock (44 s here, 96 s after the next step).
    feed_once(&mut e, &mut store, t, &mut 50_000.0, conn);
    add(&mut e, &mut store, 11, 24, &mut id);
    let written = store.bodies_written;
    assert_eq!(e.state().messages[0].status, MessageStatus::Streaming);
    assert!(
        !store.records.values().any(|t| t.contains("\"q0\"")),
        "the merge carried a body that no longer matches"
    );
    id += 1;
    let t = snapshot_with(&e, id, "completed");
    feed_once(&mut e, &mut store, t, &mut 200_000.0, conn);
    assert!(
        store.bodies_written > written,
        "q0's body was not written again"
    );
    e.persist_now(300_000.0);
    let acts = drain(&mut e);
    store.run(&mut e, 300_000.0, &acts, true);
    let head = store.head.clone().unwrap();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&head));
    e2.restore_bodies(1.0, Some(&store.bodies()));
    assert_eq!(e2.storage_stats().restore_failures, 0);
    assert_eq!(e2.state(), e.state());
}

fn feed_once(e: &mut Engine, store: &mut Store, frame: String, now: &mut Ms, conn: u64) {
    *now += 1000.0;
    e.handle_bytes(*now, conn, &sse_frame(&frame));
    e.flush(*now);
    let acts = drain(e);
    store.run(e, *now, &acts, true);
}

#[test]
fn a_following_tab_ignores_relays_until_its_stored_state_is_read_then_asks_from_its_cursor() {
    use runstream::core::tabs::{Body, Message};
    const KEY: &str = "runstream-tabs|fetch|false|http://x/s";
    let (mut e, conn, mut store, last) = streamed();
    e.flush(20.0);
    let acts = drain(&mut e);
    store.run(&mut e, 20.0, &acts, true);
    let now = stream(&mut e, conn, &mut store, last + 1, last + 11, true);
    e.persist_now(now + 1.0);
    let acts = drain(&mut e);
    store.run(&mut e, now + 1.0, &acts, true);
    let head = store.head.clone().unwrap();
    let cursor = e.cursor();

    let mut c = cfg();
    c.share_key = Some(KEY.into());
    let mut f = Engine::new(c, [3, 3], Some(&head));
    assert!(f.awaiting_bodies());
    f.start(0.0);
    let asks = |acts: &[Action]| -> Vec<u64> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Broadcast { text } => {
                    match Message::decode(text, KEY, 1 << 22).ok()?.body {
                        Body::Ask(c) => Some(c),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    };
    let acts = drain(&mut f);
    assert!(
        asks(&acts).is_empty(),
        "asked before its cursor was known: {acts:?}"
    );
    // The leader relays the next delta while the bodies are being read.
    let relay = Message {
        from: "leader1".into(),
        to: None,
        body: Body::Event(delta(cursor + 1, cursor + 1)),
    }
    .encode(KEY);
    f.handle_tab_text(2.0, &relay);
    f.restore_bodies(5.0, Some(&store.bodies()));
    assert_eq!(
        f.cursor(),
        cursor,
        "the relay was not applied to the state being read"
    );
    let acts = drain(&mut f);
    assert_eq!(asks(&acts), vec![cursor], "asks from the restored cursor");
    assert!(connect_of(&acts).is_none(), "a follower never connects");
    // The leader answers: the delta is applied once.
    f.handle_tab_text(6.0, &relay);
    f.flush(7.0);
    assert_eq!(f.cursor(), cursor + 1);
    let m = f
        .state()
        .messages
        .iter()
        .find(|m| m.message_id.as_deref() == Some("m1"))
        .unwrap();
    assert_eq!(m.content.matches(&format!("t{} ", cursor + 1)).count(), 1);
}

/// A history replayed over many persist ticks (a slow link, a busy page: the
/// e2e saw 5,460 bodies written for 1,500) arrives in many batches. Merging
/// stops at `MERGE_MAX_BYTES`, so each body is rewritten a bounded number of
/// times whatever the number of batches: 16 batches of ~280 KB are written
/// once and merged once (2×), not log2(16) = 4 times (5×); records stay few.
#[test]
fn a_history_replayed_over_many_ticks_is_rewritten_a_bounded_number_of_times() {
    let (mut e, conn) = connected();
    let mut store = Store::default();
    let log = history_log();
    let chunks = 16;
    let per = log.len().div_ceil(chunks);
    let mut ticks: Vec<Vec<u8>> = log
        .chunks(per)
        .map(|part| part.iter().flat_map(|t| sse_frame(t)).collect())
        .collect();
    // Then ticks with no new body (a delta each): the merges still due happen there.
    let next = log.len() as u64 + 1;
    ticks.extend((next..next + 8).map(|id| sse_frame(&delta(id, id))));
    let mut now = 10.0;
    for bytes in &ticks {
        e.handle_bytes(now, conn, bytes);
        e.flush(now);
        e.persist_now(now);
        let acts = drain(&mut e);
        store.run(&mut e, now, &acts, true);
        now += 1100.0;
    }
    let records = store.records.len();
    println!(
        "history in {chunks} batches: {} bodies written for {HISTORY}, {records} records",
        store.bodies_written
    );
    assert!(
        store.bodies_written as u64 <= HISTORY * 5 / 2,
        "{} bodies written for {HISTORY}",
        store.bodies_written
    );
    assert!(records <= 12, "{records} records");
    let largest = store.records.values().map(String::len).max().unwrap();
    assert!(
        largest <= MERGE_MAX_BYTES + BYTES + 256,
        "a record of {largest} B"
    );
    // The records restore the same state.
    store.assert_restores(&e);
}
