//! Native tests of the sans-IO engine on a virtual clock.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
#[allow(unused_imports)]
use runstream::core::engine::Ms;
use runstream::core::engine::{
    Action, Activity, CloseCause, Connection, Engine, EngineError, SendResult, Transport,
};
use runstream::core::state::{MessageStatus, WorkerStatus};
use serde_json::json;

#[test]
fn clean_run_converges_to_the_reference() {
    let log = gen_log(7, 5);
    let mut sim = Sim::new(cfg(), log.clone(), Chaos::default());
    sim.run(100);
    assert_eq!(sim.engine.state(), &reference(&log, log.len()));
    assert_eq!(sim.engine.status(sim.now).connection, Connection::Closed);
    assert_eq!(sim.engine.metrics().events_applied, log.len() as u64);
    assert_eq!(
        sim.engine.metrics().terminations.get("run_completed"),
        Some(&1)
    );
    assert_eq!(sim.engine.state().non_terminal(), 0);
}

#[test]
fn duplicates_reorders_drops_and_tiny_chunks_still_converge() {
    let log = gen_log(3, 6);
    let chaos = Chaos {
        drop_after: vec![7, 3, 12, 5],
        dup_every: 3,
        swap_every: 4,
        chunks: vec![1, 7, 64, 3],
        ..Chaos::default()
    };
    let mut sim = Sim::new(cfg(), log.clone(), chaos);
    sim.run(500);
    assert_eq!(sim.engine.state(), &reference(&log, log.len()));
    let m = sim.engine.metrics();
    assert!(m.duplicates_dropped > 0, "{m:?}");
    assert!(m.out_of_order > 0, "{m:?}");
    assert_eq!(m.reconnects, 4);
    assert_eq!(m.terminations.get("server_closed"), Some(&4));
    assert_eq!(m.events_applied, log.len() as u64);
}

#[test]
fn pruned_log_resume_gets_snapshot_then_window() {
    let log = gen_log(11, 4);
    let chaos = Chaos {
        drop_after: vec![3],
        prune_below: 15,
        ..Chaos::default()
    };
    let mut sim = Sim::new(cfg(), log.clone(), chaos);
    sim.run(200);
    assert_eq!(sim.engine.state(), &reference(&log, log.len()));
    assert!(sim.engine.metrics().events_applied < log.len() as u64);
}

#[test]
fn gap_that_never_fills_resyncs_from_the_cursor() {
    let log = gen_log(5, 2);
    let mut e = Engine::new(cfg(), [1, 1], None);
    e.start(0.0);
    let (conn, from) = connect_of(&drain(&mut e)).unwrap();
    assert_eq!(from, 0);
    e.handle_response(1.0, conn, 200, None, true);
    e.handle_bytes(2.0, conn, &sse_frame(&log[0]));
    e.handle_bytes(3.0, conn, &sse_frame(&log[2]));
    assert_eq!(e.cursor(), 1);
    assert_eq!(e.buffered(), 1);
    let deadline = e.poll_timeout().unwrap();
    assert_eq!(deadline, 3.0 + 1500.0);
    e.handle_timeout(deadline - 1.0);
    assert!(connect_of(&drain(&mut e)).is_none());
    e.handle_timeout(deadline);
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::Disconnect { conn }));
    // The resume goes through the backoff: the link made progress, so at once (≤ 100 ms).
    let (conn2, from2, at) = next_connect(&mut e, deadline, 100.0).unwrap();
    assert_eq!((conn2, from2), (conn + 1, 1));
    assert!(at - deadline <= 100.0);
    assert_eq!(e.buffered(), 0);
    // Inputs of the old connection are ignored from now on.
    e.handle_bytes(deadline + 1.0, conn, &sse_frame(&log[1]));
    assert_eq!(e.cursor(), 1);
    assert_eq!(e.metrics().terminations.get("resync"), Some(&1));
}

#[test]
fn full_reorder_buffer_resyncs_and_memory_stays_bounded() {
    let mut c = cfg();
    c.reorder_capacity = 8;
    let log = gen_log(9, 8);
    let (mut e, conn) = open(c, [1, 1]);
    for text in &log[1..20] {
        e.handle_bytes(2.0, conn, &sse_frame(text));
    }
    assert!(e.buffered() <= 8);
    assert_eq!(next_connect(&mut e, 2.0, 20_000.0).map(|c| c.1), Some(0));
}

#[test]
fn protocol_errors_are_counted_and_nothing_applied_is_lost() {
    let log = gen_log(2, 2);
    let (mut e, conn) = open(cfg(), [1, 1]);
    for t in &log[..3] {
        e.handle_bytes(2.0, conn, &sse_frame(t));
    }
    let before = e.state().clone();
    let foreign = log[3].replace(RUN, "run_other");
    let bad: Vec<Vec<u8>> = vec![
        b"data: not json\n\n".to_vec(),
        b"data: [1]\n\n".to_vec(),
        b"data: {\"event_id\":\"4\"}\n\n".to_vec(),
        sse_frame(&foreign),
        format!("data: {}\n\n", "x".repeat(2 << 20)).into_bytes(),
        b"\xff\xfe data: \xc3\x28\n\n".to_vec(),
        b"retry: 0\n\n".to_vec(),
    ];
    for b in &bad {
        e.handle_bytes(3.0, conn, b);
    }
    assert_eq!(e.state(), &before);
    assert_eq!(e.cursor(), 3);
    let m = e.metrics();
    // The non-UTF-8 line is a field named "\u{FFFD}\u{FFFD} data", which SSE ignores: 5 errors.
    assert_eq!(m.protocol_errors, 5, "{:?}", m.protocol_errors_by_kind);
    for k in [
        "not_json",
        "not_object",
        "wrong_type",
        "foreign_run",
        "too_large",
    ] {
        assert!(
            m.protocol_errors_by_kind.contains_key(k),
            "{k}: {:?}",
            m.protocol_errors_by_kind
        );
    }
    // The stream is still up: the next event applies.
    e.handle_bytes(4.0, conn, &sse_frame(&log[3]));
    assert_eq!(e.cursor(), 4);
    assert_eq!(e.status(4.0).connection, Connection::Open);
}

#[test]
fn invalid_payload_consumes_its_id_without_effect() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(1, "tool.started", json!({"tool_call_id": "t"}))),
    );
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(2, "run.started", json!({}))),
    );
    assert_eq!(e.cursor(), 2);
    assert!(e.state().workers.is_empty());
    assert_eq!(e.metrics().protocol_errors, 1);
}

#[test]
fn snapshot_event_not_in_the_state_shape_is_an_invalid_payload_and_consumes_no_id() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    for payload in [
        json!({}),
        json!({"state": null}),
        json!({"state": {"run_id": RUN, "cursor": "x"}}),
        json!({"state": {"run_id": RUN, "workers": [{"name": "no id"}]}}),
    ] {
        e.handle_bytes(2.0, conn, &sse_frame(&envelope(3, "snapshot", payload)));
    }
    assert_eq!(e.cursor(), 0);
    let m = e.metrics();
    assert_eq!(m.protocol_errors, 4);
    assert_eq!(
        m.protocol_errors_by_kind.get("invalid_payload"),
        Some(&4),
        "{:?}",
        m.protocol_errors_by_kind
    );
    e.handle_bytes(
        3.0,
        conn,
        &sse_frame(&envelope(1, "run.started", json!({}))),
    );
    assert_eq!(e.cursor(), 1);
}

#[test]
fn hostile_retry_zero_cannot_make_the_client_hammer() {
    let mut e = Engine::new(cfg(), [3, 3], None);
    e.start(0.0);
    let mut now = 0.0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let conn = loop {
            if let Some((c, _)) = connect_of(&drain(&mut e)) {
                break c;
            }
            now = e.poll_timeout().unwrap();
            e.handle_timeout(now);
        };
        e.handle_response(now, conn, 200, None, true);
        e.handle_bytes(now, conn, b"retry: 0\n: hb\n\n");
        e.handle_closed(now, conn, CloseCause::Eof);
        let st = e.status(now);
        assert_eq!(st.connection, Connection::Reconnecting);
        waits.push(st.retry_in_ms.unwrap());
    }
    // retry: 0 is only a floor: connections that make no progress still back off.
    let total: f64 = waits.iter().sum();
    assert!(total > 2000.0, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= 20_000.0), "{waits:?}");
}

#[test]
fn backoff_grows_with_full_jitter_and_caps() {
    let mut c = cfg();
    c.loop_guard_failures = 100;
    let mut e = Engine::new(c, [42, 7], None);
    e.start(0.0);
    let mut now = 0.0;
    let mut waits = Vec::new();
    for _ in 0..12 {
        let (conn, _) = loop {
            if let Some(c) = connect_of(&drain(&mut e)) {
                break c;
            }
            now = e.poll_timeout().unwrap();
            e.handle_timeout(now);
        };
        e.handle_closed(now, conn, CloseCause::Network);
        waits.push(e.status(now).retry_in_ms.unwrap());
    }
    for (i, w) in waits.iter().enumerate() {
        let cap = (500.0 * 2f64.powi(i as i32)).min(20_000.0);
        assert!(*w <= cap, "attempt {i}: {w} > {cap}");
    }
    assert!(waits[8..].iter().any(|w| *w > 2000.0), "{waits:?}");
    assert_eq!(e.status(now).attempt, 12);
}

#[test]
fn first_reconnect_after_a_healthy_connection_is_immediate_and_retry_is_a_floor() {
    let log = gen_log(1, 3);
    let (mut e, conn) = open(cfg(), [5, 5]);
    e.handle_bytes(2.0, conn, &sse_frame(&log[0]));
    e.handle_closed(3.0, conn, CloseCause::Eof);
    let wait = e.status(3.0).retry_in_ms.unwrap();
    assert!(wait <= 100.0, "{wait}");
    // With a server retry: it is used (clamped to max).
    now_reconnect(&mut e);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap_or((conn + 1, 1));
    e.handle_response(10_000.0, conn, 200, None, true);
    e.handle_bytes(10_001.0, conn, b"retry: 999999999\n\n");
    e.handle_bytes(10_002.0, conn, &sse_frame(&log[1]));
    e.handle_closed(10_003.0, conn, CloseCause::Eof);
    assert_eq!(e.status(10_003.0).retry_in_ms, Some(20_000.0));
}

fn now_reconnect(e: &mut Engine) {
    let t = e.poll_timeout().unwrap();
    e.handle_timeout(t);
}

#[test]
fn final_statuses_are_not_retried_and_401_refreshes_once() {
    for (status, final_) in [
        (404u16, true),
        (403, true),
        (410, true),
        (400, true),
        (503, false),
        (429, false),
        (408, false),
    ] {
        let mut e = Engine::new(cfg(), [1, 1], None);
        e.start(0.0);
        let (conn, _) = connect_of(&drain(&mut e)).unwrap();
        e.handle_response(1.0, conn, status, Some(7000.0), false);
        let st = e.status(1.0);
        if final_ {
            assert_eq!(st.connection, Connection::Failed, "{status}");
            assert!(e.poll_timeout().is_none() || connect_of(&drain(&mut e)).is_none());
        } else {
            assert_eq!(st.connection, Connection::Reconnecting, "{status}");
            assert!(
                st.retry_in_ms.unwrap() >= 7000.0,
                "Retry-After honoured for {status}"
            );
        }
    }
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 401, None, false);
    let (conn2, _) = connect_of(&drain(&mut e)).expect("401 retried once at once");
    e.handle_response(2.0, conn2, 401, None, false);
    assert_eq!(e.status(2.0).connection, Connection::Failed);
    assert!(e.status(2.0).last_error.unwrap().contains("401"));
    // retryNow leaves failed.
    e.retry_now(3.0);
    assert!(connect_of(&drain(&mut e)).is_some());
}

#[test]
fn no_content_204_stops_without_retry() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 204, None, false);
    assert_eq!(e.status(1.0).connection, Connection::Closed);
    assert!(connect_of(&drain(&mut e)).is_none());
}

#[test]
fn not_an_event_stream_is_a_protocol_failure_with_backoff() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 200, None, false);
    assert_eq!(e.status(1.0).connection, Connection::Reconnecting);
    assert_eq!(e.metrics().terminations.get("protocol_error"), Some(&1));
}

/// Defect 5: the error-loop guard ended clients in `failed` during an
/// ordinary outage although every wait followed the backoff.
#[test]
fn ordinary_outage_of_three_minutes_keeps_retrying_with_backoff() {
    let mut c = cfg();
    c.backoff.initial_ms = 100.0;
    c.backoff.max_ms = 2000.0;
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let mut now = 0.0;
    let mut attempts = 0;
    while now < 180_000.0 {
        let (conn, _, t) = next_connect(&mut e, now, 10_000.0).expect("keeps retrying");
        now = t + 5.0;
        attempts += 1;
        if attempts % 2 == 0 {
            e.handle_response(now, conn, 503, None, true);
        } else {
            e.handle_closed(now, conn, CloseCause::Network);
        }
        assert_ne!(
            e.status(now).connection,
            Connection::Failed,
            "after {attempts} attempts"
        );
    }
    assert!(attempts > 60, "{attempts}");
    assert_eq!(e.metrics().terminations.get("error_loop"), None);
    // The network is back: the next attempt opens and streams.
    let (conn, _, t) = next_connect(&mut e, now, 10_000.0).unwrap();
    e.handle_response(t + 1.0, conn, 200, None, true);
    assert_eq!(e.status(t + 1.0).connection, Connection::Open);
    assert_eq!(e.status(t + 1.0).attempt, 0);
}

#[test]
fn retry_now_leaves_failed() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 404, None, true);
    assert_eq!(e.status(1.0).connection, Connection::Failed);
    assert!(next_connect(&mut e, 1.0, 600_000.0).is_none());
    e.retry_now(2.0);
    assert!(connect_of(&drain(&mut e)).is_some());
}

#[test]
fn connect_and_heartbeat_timeouts_reconnect_and_hidden_tab_suspends_watchdog() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    assert_eq!(e.poll_timeout(), Some(10_000.0));
    e.handle_timeout(10_000.0);
    assert_eq!(e.metrics().terminations.get("connect_timeout"), Some(&1));
    let t = e.poll_timeout().unwrap();
    e.handle_timeout(t);
    let (conn2, _) = connect_of(&drain(&mut e)).unwrap();
    assert!(conn2 > conn);
    e.handle_response(t + 1.0, conn2, 200, None, true);
    e.handle_bytes(t + 2.0, conn2, b": hb\n");
    e.handle_visibility(t + 3.0, false);
    // Hidden: no heartbeat deadline (only the healthy mark remains).
    let deadline = e.poll_timeout().unwrap();
    assert!(deadline < t + 2.0 + 25_000.0);
    e.handle_timeout(deadline);
    assert!(e.poll_timeout().is_none_or(|d| d > t + 100_000.0));
    // Visible again long after: re-checked at once.
    e.handle_visibility(t + 60_000.0, true);
    assert_eq!(e.metrics().terminations.get("heartbeat_timeout"), Some(&1));
}

#[test]
fn offline_stops_retries_and_online_reconnects_at_once() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_online(2.0, false);
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::Disconnect { conn }));
    assert_eq!(e.status(2.0).connection, Connection::Offline);
    assert!(e.poll_timeout().is_none());
    e.handle_online(50_000.0, true);
    let (_, from) = connect_of(&drain(&mut e)).unwrap();
    assert_eq!(from, 0);
    assert_eq!(e.metrics().terminations.get("offline"), Some(&1));
}

#[test]
fn working_shows_exactly_at_the_stall_threshold() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    assert_eq!(e.activity(5.0), Activity::Idle);
    let crid = e.send(10.0, "hello").unwrap();
    assert_eq!(e.activity(10.0), Activity::Streaming);
    assert_eq!(e.poll_timeout().map(|t| t <= 2010.0), Some(true));
    assert_eq!(e.activity(2009.999), Activity::Streaming);
    assert_eq!(e.activity(2010.0), Activity::Working);
    drain(&mut e);
    e.flush(2000.0);
    e.handle_timeout(2010.0);
    assert!(drain(&mut e).contains(&Action::RequestFrame));
    // A token of the reply: streaming again, and the threshold restarts.
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "u", "role": "user", "client_request_id": crid, "content": "hello"}),
        ),
        envelope(
            2,
            "message.created",
            json!({"message_id": "a", "role": "assistant", "reply_to": crid}),
        ),
        envelope(
            3,
            "message.delta",
            json!({"message_id": "a", "delta": "Hi"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(3000.0, conn, &sse_frame(ev));
    }
    assert_eq!(e.activity(3000.0), Activity::Streaming);
    assert_eq!(e.activity(4999.0), Activity::Streaming);
    assert_eq!(e.activity(5000.0), Activity::Working);
    e.handle_bytes(
        5100.0,
        conn,
        &sse_frame(&envelope(
            4,
            "message.completed",
            json!({"message_id": "a", "finish_reason": "stop", "fallback": "small"}),
        )),
    );
    assert_eq!(e.activity(9000.0), Activity::Idle);
    let m = e.metrics().messages.get(&crid).unwrap();
    assert_eq!(m.ttft_ms, Some(2990.0));
    assert_eq!(m.duration_ms, Some(5090.0));
    assert_eq!(m.tokens, 1);
    assert_eq!(m.fallback.as_deref(), Some("small"));
}

#[test]
fn frame_batcher_gives_one_visible_change_per_frame() {
    let log = gen_log(4, 5);
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    assert!(e.flush(0.5));
    let v0 = e.version();
    e.handle_response(1.0, conn, 200, None, true);
    for t in &log[..30] {
        e.handle_bytes(2.0, conn, &sse_frame(t));
    }
    let frames = drain(&mut e)
        .iter()
        .filter(|a| matches!(a, Action::RequestFrame))
        .count();
    assert_eq!(frames, 1);
    assert!(e.flush(16.0));
    assert_eq!(e.version(), v0 + 1);
    assert!(!e.flush(32.0));
    assert_eq!(e.version(), v0 + 1);
}

#[test]
fn outbox_optimistic_message_retries_and_merges_with_echo_in_place() {
    let (mut e, conn) = open(cfg(), [9, 9]);
    let crid = e.send(5.0, "hello").unwrap();
    assert_eq!(e.state().messages.len(), 1);
    assert_eq!(e.state().messages[0].status, MessageStatus::Sending);
    let posts: Vec<_> = drain(&mut e)
        .into_iter()
        .filter(|a| matches!(a, Action::Post { .. }))
        .collect();
    assert_eq!(posts.len(), 1);
    // 503 with Retry-After: queued, retried after ≥ 3 s with the same id.
    e.handle_send_result(
        6.0,
        &crid,
        SendResult {
            status: Some(503),
            retry_after_ms: Some(3000.0),
            ..SendResult::default()
        },
    );
    assert_eq!(e.state().messages[0].status, MessageStatus::Queued);
    let mut t;
    let again: Vec<_> = loop {
        t = e.poll_timeout().unwrap();
        e.handle_timeout(t);
        let posts: Vec<_> = posted_ids(&mut e);
        if !posts.is_empty() {
            break posts;
        }
    };
    assert!(t >= 3006.0, "{t}");
    assert_eq!(again, vec![crid.clone()]);
    e.handle_send_result(
        t + 40.0,
        &crid,
        SendResult {
            status: Some(202),
            retry_after_ms: None,
            body: Some(r#"{"message_id":"u1","run_id":"run_T"}"#.into()),
            ..SendResult::default()
        },
    );
    assert_eq!(e.state().messages[0].status, MessageStatus::Sent);
    assert_eq!(
        e.metrics().messages.get(&crid).unwrap().ttfb_ms,
        Some(t + 40.0 - 5.0)
    );
    // Another message arrives before the echo; then the echo merges in place.
    e.handle_bytes(
        t + 50.0,
        conn,
        &sse_frame(&envelope(
            1,
            "message.created",
            json!({"message_id": "s0", "role": "system", "content": "note"}),
        )),
    );
    e.handle_bytes(t + 60.0, conn, &sse_frame(&envelope(2, "message.created", json!({"message_id": "u1", "role": "user", "client_request_id": crid, "content": "hello"}))));
    let st = e.state();
    assert_eq!(st.messages.len(), 2);
    assert_eq!(st.messages[0].message_id.as_deref(), Some("u1"));
    assert_eq!(st.messages[0].status, MessageStatus::Completed);
    assert_eq!(st.messages[1].message_id.as_deref(), Some("s0"));
}

#[test]
fn send_retries_through_any_outage_and_rejects_final_statuses() {
    // API.md: "Sends survive everything the stream survives".
    let mut e = Engine::new(cfg(), [9, 9], None);
    e.start(0.0);
    let crid = e.send(0.0, "x").unwrap();
    let mut now = 0.0;
    let mut attempts = 0;
    while now < 120_000.0 {
        let posted = posted_ids(&mut e);
        if posted.contains(&crid) {
            attempts += 1;
            e.handle_send_result(now, &crid, SendResult::default());
        }
        let t = e.poll_timeout().unwrap();
        now = t.max(now);
        e.handle_timeout(now);
    }
    assert!(attempts > 8, "{attempts}");
    assert_ne!(e.state().messages[0].status, MessageStatus::Failed);
    let c2 = e.send(now, "y").unwrap();
    e.handle_send_result(
        now,
        &c2,
        SendResult {
            status: Some(422),
            ..SendResult::default()
        },
    );
    assert_eq!(e.state().messages[1].status, MessageStatus::Failed);
    let mut c = cfg();
    c.can_send = false;
    assert_eq!(
        Engine::new(c, [1, 1], None).send(0.0, "x"),
        Err(EngineError::NoSendTarget)
    );
}

#[test]
fn outbox_is_bounded() {
    let mut c = cfg();
    c.outbox_capacity = 3;
    let mut e = Engine::new(c, [1, 1], None);
    e.handle_online(0.0, false);
    for i in 0..3 {
        e.send(0.0, &format!("m{i}")).unwrap();
    }
    assert_eq!(e.send(0.0, "x"), Err(EngineError::OutboxFull(3)));
    // Offline: nothing posted; online: all three, oldest first.
    assert!(!drain(&mut e)
        .iter()
        .any(|a| matches!(a, Action::Post { .. })));
    e.handle_online(1.0, true);
    let posts: Vec<_> = drain(&mut e)
        .into_iter()
        .filter_map(|a| match a {
            Action::Post { content, .. } => Some(content),
            _ => None,
        })
        .collect();
    assert_eq!(posts, vec!["m0", "m1", "m2"]);
}

#[test]
fn websocket_subscribe_resume_and_sends_queue_until_open() {
    let mut c = cfg();
    c.transport = Transport::WebSocket;
    let log = gen_log(8, 2);
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let crid = e.send(0.0, "hello").unwrap();
    let acts = drain(&mut e);
    assert!(!acts.iter().any(|a| matches!(a, Action::WsSend { .. })));
    let (conn, _) = connect_of(&acts).unwrap();
    e.handle_ws_open(1.0, conn, Vec::new());
    let sub = drain(&mut e);
    assert!(
        matches!(&sub[0], Action::WsSend { text, .. } if text == r#"{"op":"subscribe","run_id":"run_T"}"#)
    );
    // The socket is open: the queued send follows the subscribe at once.
    let sends: Vec<_> = sub
        .into_iter()
        .skip(1)
        .filter_map(|a| match a {
            Action::WsSend { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1);
    assert!(sends[0].contains(&crid));
    for t in &log[..4] {
        e.handle_ws_text(3.0, conn, &format!(r#"{{"op":"event","event":{t}}}"#));
    }
    e.handle_ws_binary(3.0, conn);
    e.handle_ws_text(3.0, conn, r#"{"op":"mystery"}"#);
    e.handle_ws_text(
        4.0,
        conn,
        &format!(
            r#"{{"op":"ack","client_request_id":"{crid}","message_id":"m9","run_id":"run_T"}}"#
        ),
    );
    assert_eq!(e.cursor(), 4);
    assert_eq!(e.metrics().protocol_errors, 2);
    assert!(e.metrics().messages.get(&crid).unwrap().ttfb_ms.is_some());
    e.handle_closed(5.0, conn, CloseCause::Eof);
    let t = e.poll_timeout().unwrap();
    e.handle_timeout(t);
    let (conn2, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_ws_open(
        t + 1.0,
        conn2,
        vec![("Authorization".into(), "Bearer t2".into())],
    );
    let sub = drain(&mut e);
    assert!(
        matches!(&sub[0], Action::WsSend { text, .. }
            if text.contains("\"last_event_id\":4") && text.contains(r#""headers":{"Authorization":"Bearer t2"}"#)),
        "{sub:?}"
    );
    e.handle_ws_text(
        t + 2.0,
        conn2,
        r#"{"op":"error","run_id":"run_T","code":"not_found","message":"no"}"#,
    );
    assert_eq!(e.status(t + 2.0).connection, Connection::Failed);
}

#[test]
fn run_completed_with_parked_job_reconciles_from_snapshot_else_unknown() {
    let evs = [
        envelope(1, "worker.started", json!({"worker_id": "w1"})),
        envelope(
            2,
            "tool.started",
            json!({"worker_id": "w1", "tool_call_id": "t1", "name": "x"}),
        ),
        envelope(
            3,
            "worker.completed",
            json!({"job_id": "j-never-mapped", "status": "succeeded"}),
        ),
        envelope(4, "run.completed", json!({"status": "succeeded"})),
    ];
    for with_snapshot_url in [true, false] {
        let mut c = cfg();
        c.has_snapshot_url = with_snapshot_url;
        let mut e = Engine::new(c, [1, 1], None);
        e.start(0.0);
        let (conn, _) = connect_of(&drain(&mut e)).unwrap();
        e.handle_response(1.0, conn, 200, None, true);
        for ev in &evs {
            e.handle_bytes(2.0, conn, &sse_frame(ev));
        }
        let acts = drain(&mut e);
        assert!(acts.contains(&Action::Disconnect { conn }));
        assert_eq!(acts.contains(&Action::FetchSnapshot), with_snapshot_url);
        if with_snapshot_url {
            // The endpoint fails: what is left is marked unknown, never left running.
            e.handle_snapshot(3.0, Err("HTTP 500".into()));
        }
        assert_eq!(e.state().non_terminal(), 0);
        assert_eq!(e.state().workers[0].status, WorkerStatus::Unknown);
        assert_eq!(e.status(3.0).connection, Connection::Closed);
    }
}

#[test]
fn restored_state_resumes_from_its_cursor() {
    let log = gen_log(6, 3);
    let half = log.len() / 2;
    let restored = reference(&log, half);
    let record = json!({"v": 1, "cursor": half, "state": restored.to_wire()}).to_string();
    let mut e = Engine::new(cfg(), [1, 1], Some(&record));
    e.start(0.0);
    let (_, from) = connect_of(&drain(&mut e)).unwrap();
    assert_eq!(from, half as u64);
}

#[test]
fn persist_is_throttled_and_never_ahead_of_state() {
    let log = gen_log(6, 3);
    let mut sim = Sim::new(
        cfg(),
        log.clone(),
        Chaos {
            chunks: vec![50],
            ..Chaos::default()
        },
    );
    sim.run(100);
    let persists: Vec<u64> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist { cursor } => Some(*cursor),
            _ => None,
        })
        .collect();
    assert!(!persists.is_empty());
    assert!(persists.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*persists.last().unwrap(), log.len() as u64);
}

#[test]
fn telemetry_events_only_when_enabled_and_spans_when_sampled() {
    let log = gen_log(6, 2);
    let mut c = cfg();
    c.spans = runstream::core::engine::Spans::Sampled(1.0);
    let mut sim = Sim::new(
        c,
        log.clone(),
        Chaos {
            drop_after: vec![5],
            ..Chaos::default()
        },
    );
    sim.engine.set_telemetry(true);
    sim.run(100);
    let evs: Vec<_> = std::iter::from_fn(|| sim.engine.poll_telemetry()).collect();
    let names: Vec<&str> = evs.iter().map(|e| e.name).collect();
    for n in [
        "stream.connect.total",
        "stream.reconnect.total",
        "stream.time_to_first_event_ms",
        "stream.termination.total",
        "runstream:span",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(sim.actions.iter().any(|a| matches!(a, Action::Measure(_))));
    let mut c = cfg();
    c.spans = runstream::core::engine::Spans::Sampled(0.0);
    let mut sim = Sim::new(c, log, Chaos::default());
    sim.run(100);
    assert!(sim.engine.poll_telemetry().is_none());
    assert!(!sim.actions.iter().any(|a| matches!(a, Action::Measure(_))));
}

#[test]
fn long_run_uses_bounded_memory() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        1.0,
        conn,
        &sse_frame(&envelope(
            1,
            "message.created",
            json!({"message_id": "a", "role": "assistant"}),
        )),
    );
    let mut buf = Vec::new();
    for id in 2..=200_001u64 {
        // Every 50th pair arrives swapped: the reorder buffer works but stays small.
        let id = if id % 50 == 0 {
            id + 1
        } else if id % 50 == 1 {
            id - 1
        } else {
            id
        };
        buf.extend_from_slice(&sse_frame(&envelope(id, "future.tick", json!({"n": id}))));
        if buf.len() > 64 * 1024 {
            e.handle_bytes(2.0, conn, &buf);
            buf.clear();
            assert!(e.buffered() <= 1);
            drain(&mut e);
        }
    }
    e.handle_bytes(2.0, conn, &buf);
    assert_eq!(e.cursor(), 200_001);
    assert_eq!(e.buffered(), 0);
}

// ---- properties ----------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any valid log, any chunking, any mix of duplicates, reorderings,
    /// disconnects with resume and pruned-log snapshots: the final state equals
    /// applying the log once in order, and no message is duplicated or moved.
    #[test]
    fn any_delivery_schedule_converges(
        seed in 0u64..10_000,
        workers in 1usize..7,
        drops in proptest::collection::vec(0usize..25, 0..6),
        dup_every in 0usize..5,
        swap_every in 0usize..6,
        chunks in proptest::collection::vec(1usize..300, 0..5),
        prune in 0u64..30,
        live_step in 0usize..15,
    ) {
        let log = gen_log(seed, workers);
        let chaos = Chaos {
            drop_after: drops.into_iter().filter(|d| *d > 0).collect(),
            dup_every, swap_every, chunks,
            prune_below: prune.min(log.len() as u64 - 1),
            live_step,
        };
        let mut sim = Sim::new(cfg(), log.clone(), chaos);
        sim.run(5_000);
        let want = reference(&log, log.len());
        prop_assert_eq!(sim.engine.state(), &want);
        prop_assert_eq!(sim.engine.status(sim.now).connection, Connection::Closed);
        let ids: Vec<_> = sim.engine.state().messages.iter().filter_map(|m| m.message_id.clone()).collect();
        let mut dedup = ids.clone();
        dedup.sort();
        dedup.dedup();
        prop_assert_eq!(ids.len(), dedup.len());
    }

    /// The SSE parser gives the same events for any chunking of the same bytes.
    #[test]
    fn sse_chunking_is_invisible(seed in 0u64..1000, cuts in proptest::collection::vec(1usize..40, 1..20)) {
        use runstream::core::sse::{SseParser, SseItem};
        let log = gen_log(seed, 2);
        let mut bytes = Vec::new();
        for (i, t) in log.iter().enumerate() {
            let eol: &[u8] = match i % 3 { 0 => b"\n", 1 => b"\r\n", _ => b"\r" };
            bytes.extend_from_slice(b": hb");
            bytes.extend_from_slice(eol);
            bytes.extend_from_slice(format!("id: {}", i + 1).as_bytes());
            bytes.extend_from_slice(eol);
            bytes.extend_from_slice(b"data: ");
            bytes.extend_from_slice(t.as_bytes());
            bytes.extend_from_slice(eol);
            bytes.extend_from_slice(eol);
        }
        let whole = {
            let mut p = SseParser::new(1 << 20);
            let mut v = Vec::new();
            p.feed(&bytes, &mut |i| v.push(i));
            v
        };
        let mut p = SseParser::new(1 << 20);
        let mut v = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < bytes.len() {
            let end = (pos + cuts[k % cuts.len()]).min(bytes.len());
            p.feed(&bytes[pos..end], &mut |i| v.push(i));
            pos = end;
            k += 1;
        }
        prop_assert_eq!(&v, &whole);
        let n = whole.iter().filter(|i| matches!(i, SseItem::Event(_))).count();
        prop_assert_eq!(n, log.len());
    }

    /// Whatever the bytes, decoding never panics and the engine stays consistent.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut e = Engine::new(cfg(), [1, 1], None);
        e.start(0.0);
        let (conn, _) = connect_of(&drain(&mut e)).unwrap();
        e.handle_response(1.0, conn, 200, None, true);
        e.handle_bytes(2.0, conn, &data);
        let text = String::from_utf8_lossy(&data);
        e.handle_ws_text(2.0, conn, &text);
        prop_assert_eq!(e.cursor(), 0);
    }
}

#[test]
fn undelivered_optimistic_messages_are_resent_after_a_refresh() {
    let mut e = Engine::new(cfg(), [1, 1], None);
    e.handle_online(0.0, false);
    let crid = e.send(0.0, "persist me").unwrap();
    let saved = e.storage_record();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&saved));
    e2.start(10.0);
    let posts: Vec<_> = posted_ids(&mut e2);
    assert_eq!(posts, vec![crid]);
    assert_eq!(e2.state().messages.len(), 1);
}

// ---- the back/forward cache (pagehide / pageshow with `persisted`) ----------------

/// An engine whose link has been healthy (open for longer than `healthy_after_ms`).
fn healthy() -> (Engine, u64, Ms) {
    let (mut e, conn) = open(cfg(), [5, 5]);
    run_until(&mut e, 6000.0);
    (e, conn, 6000.0)
}

/// WebKit cancels a page's loads as it goes into the back/forward cache,
/// before `pagehide`: the healthy link's error schedules a reconnect at once,
/// and that attempt, made as the page leaves, is cancelled too. It must not
/// count as a failure: back from the cache, the stream reconnects at once
/// instead of after a backoff wait.
#[test]
fn an_attempt_made_as_the_page_goes_into_the_back_forward_cache_is_no_failure() {
    let (mut e, conn, now) = healthy();
    e.handle_closed(now, conn, CloseCause::Network);
    let (conn2, _, t1) = next_connect(&mut e, now, 200.0).expect("a reconnect at once");
    e.handle_page_cached(t1 + 2.0, true);
    assert!(drain(&mut e).contains(&Action::Disconnect { conn: conn2 }));
    assert_eq!(e.metrics().terminations.get("page_hidden"), Some(&1));
    // The cancelled attempt's own error, delivered late, changes nothing.
    e.handle_closed(t1 + 3.0, conn2, CloseCause::Network);
    assert_eq!(e.metrics().terminations.get("network_error"), Some(&1));
    // No attempt while the page is cached, however long.
    let acts = run_until(&mut e, t1 + 600_000.0);
    assert!(connect_of(&acts).is_none(), "{acts:?}");
    // Back: at once, from the cursor.
    let back = t1 + 600_000.0;
    e.handle_page_cached(back, false);
    let (conn3, _) = connect_of(&drain(&mut e)).expect("reconnects at once when the page is back");
    assert!(conn3 > conn2);
    e.handle_response(back + 5.0, conn3, 200, None, true);
    assert_eq!(e.status(back + 5.0).connection, Connection::Open);
    assert_eq!(e.status(back + 5.0).last_error, None);
}

/// The reconnect was still waiting when the page left (the usual order): it
/// waits for the page to come back, then goes at once (the link was healthy).
#[test]
fn a_reconnect_pending_when_the_page_is_cached_goes_when_it_is_back() {
    let (mut e, conn, now) = healthy();
    e.handle_closed(now, conn, CloseCause::Network);
    drain(&mut e);
    e.handle_page_cached(now + 0.5, true);
    assert!(connect_of(&run_until(&mut e, now + 60_000.0)).is_none());
    e.handle_page_cached(now + 60_000.0, false);
    assert!(connect_of(&drain(&mut e)).is_some());
    assert_eq!(e.metrics().terminations.get("page_hidden"), None);
}

/// API.md: retries honour `Retry-After` and the backoff whatever wakes the
/// client: coming back from the cache does not cut a pending wait short.
#[test]
fn coming_back_from_the_back_forward_cache_honours_a_pending_retry_after() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 503, Some(120_000.0), true);
    drain(&mut e);
    e.handle_page_cached(10.0, true);
    e.handle_page_cached(5000.0, false);
    assert!(
        connect_of(&drain(&mut e)).is_none(),
        "the page's return cut Retry-After short"
    );
    let (_, _, at) = next_connect(&mut e, 5000.0, 200_000.0).expect("reconnects after Retry-After");
    assert!(at >= 120_001.0, "{at}");
}

/// An open link is closed when the page goes into the cache (not a failure)
/// and made again, from the cursor, the moment the page is back; a page that
/// is offline when it comes back waits for `online`.
#[test]
fn the_back_forward_cache_closes_an_open_link_and_offline_still_waits_for_online() {
    let (mut e, conn) = open(cfg(), [2, 2]);
    e.handle_page_cached(10.0, true);
    assert!(drain(&mut e).contains(&Action::Disconnect { conn }));
    assert_eq!(e.metrics().terminations.get("page_hidden"), Some(&1));
    assert!(connect_of(&run_until(&mut e, 100_000.0)).is_none());
    e.handle_page_cached(100_000.0, false);
    assert!(
        connect_of(&drain(&mut e)).is_some(),
        "not at once when the page is back"
    );
    assert_eq!(e.metrics().reconnects, 1);

    let (mut e, conn, now) = healthy();
    e.handle_closed(now, conn, CloseCause::Network);
    drain(&mut e);
    e.handle_page_cached(now + 1.0, true);
    e.handle_online(now + 2.0, false);
    e.handle_page_cached(now + 3.0, false);
    assert!(connect_of(&drain(&mut e)).is_none());
    assert_eq!(e.status(now + 3.0).connection, Connection::Offline);
    e.handle_online(now + 4.0, true);
    assert!(next_connect(&mut e, now + 4.0, 200.0).is_some());
}

/// `share: "tabs"` has its own pagehide/pageshow handling (the lock is given
/// up and asked for again): this input leaves such a stream alone.
#[test]
fn the_back_forward_cache_input_leaves_a_tab_shared_stream_to_its_own_handling() {
    let mut c = cfg();
    c.share_key = Some("k".into());
    let mut e = Engine::new(c, [3, 3], None);
    e.start(0.0);
    drain(&mut e);
    let before = e.status(0.0);
    e.handle_page_cached(1.0, true);
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.status(1.0), before);
}
