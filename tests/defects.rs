//! One black-box regression test per defect of issue 12 whose cause is in the
//! core, each written from the sentence of PROTOCOL.md / API.md it breaks.
//! They drive the engine only through its public inputs and outputs.
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use runstream::core::engine::{
    Action, Activity, CancelState, CloseCause, Config, Connection, Engine, EngineError, SendResult,
    Transport,
};
use runstream::core::state::{MessageStatus, WorkerStatus};
use serde_json::json;

fn ws_cfg() -> Config {
    let mut c = cfg();
    c.transport = Transport::WebSocket;
    c
}

fn ws_sends(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WsSend { text, .. } if text.contains("\"op\":\"send\"") => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn persisted(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Persist { .. }))
}

/// Opens a WebSocket link: open + `subscribed`; returns the connection.
fn ws_open(e: &mut Engine, now: f64) -> u64 {
    let (conn, _, _) = next_connect(e, now, 60_000.0).unwrap();
    e.handle_ws_open(now, conn, Vec::new());
    e.handle_ws_text(
        now,
        conn,
        r#"{"op":"subscribed","run_id":"run_T","replay_from":1}"#,
    );
    conn
}

// ---- 1. idle churn ---------------------------------------------------------------

/// API.md `connectTimeoutMs`: "A server may stay silent after its headers: a
/// resume with nothing to replay sends no byte until its first heartbeat".
#[test]
fn d01_fetch_idle_after_headers_holds_one_connection_for_40_s() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    // First heartbeat at 15 s, then every 15 s.
    let mut acts = run_until(&mut e, 15_001.0);
    e.handle_bytes(15_001.0, conn, b": hb\n\n");
    acts.extend(run_until(&mut e, 30_001.0));
    e.handle_bytes(30_001.0, conn, b": hb\n\n");
    acts.extend(run_until(&mut e, 41_000.0));
    assert!(connect_of(&acts).is_none(), "reconnected: {acts:?}");
    assert_eq!(e.status(41_000.0).connection, Connection::Open);
    assert!(e.metrics().terminations.is_empty());
    assert_eq!(e.metrics().reconnects, 0);
}

/// API.md `heartbeatTimeoutMs`: "Not enforced on native EventSource, which hides comment lines".
#[test]
fn d01_native_eventsource_idle_for_ten_minutes_never_reconnects() {
    let mut c = cfg();
    c.transport = Transport::Sse;
    let (mut e, conn) = connecting(c, [1, 1]);
    e.handle_response(1.0, conn, 200, None, true);
    let acts = run_until(&mut e, 600_000.0);
    assert!(connect_of(&acts).is_none());
    assert_eq!(e.status(600_000.0).connection, Connection::Open);
}

/// A silent server with no heartbeat at all is still detected on fetch.
#[test]
fn d01_fetch_heartbeat_watchdog_still_fires_after_open() {
    let (mut e, _) = open(cfg(), [1, 1]);
    let acts = run_until(&mut e, 25_002.0);
    assert!(acts.iter().any(|a| matches!(a, Action::Disconnect { .. })));
    assert_eq!(e.metrics().terminations.get("heartbeat_timeout"), Some(&1));
    assert_eq!(e.metrics().terminations.get("connect_timeout"), None);
}

/// WebSocket: pings every 10 s, the pongs keep an idle run open.
#[test]
fn d01_websocket_idle_with_pongs_holds() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    let mut now = 1.0;
    while now < 40_000.0 {
        let t = e.poll_timeout().unwrap();
        now = t;
        e.handle_timeout(t);
        let acts = drain(&mut e);
        assert!(connect_of(&acts).is_none());
        if acts
            .iter()
            .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("ping")))
        {
            e.handle_ws_text(now + 5.0, conn, r#"{"op":"pong","t":1}"#);
        }
    }
    assert_eq!(e.status(now).connection, Connection::Open);
    assert!(e.metrics().terminations.is_empty());
}

// ---- 2. sends lost on refresh ------------------------------------------------------

/// API.md: "a send that has not been accepted … is persisted with the cursor,
/// so a refresh re-sends it with the same client_request_id".
#[test]
fn d02_send_during_503_is_stored_and_resent_by_the_next_page() {
    let (mut e, _) = open(cfg(), [1, 1]);
    drain(&mut e);
    let crid = e.send(10.0, "survive me").unwrap();
    let acts = drain(&mut e);
    // The shell writes storage only on Action::Persist: the send must cause one
    // although the cursor has not moved.
    assert!(persisted(&acts), "no Persist after send: {acts:?}");
    e.handle_send_result(
        20.0,
        &crid,
        SendResult {
            status: Some(503),
            ..SendResult::default()
        },
    );
    let record = e.storage_record();
    // Reload.
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&record));
    e2.start(0.0);
    assert_eq!(posted_ids(&mut e2), vec![crid.clone()]);
    let mine: Vec<_> = e2
        .state()
        .messages
        .iter()
        .filter(|m| m.client_request_id.as_deref() == Some(&crid))
        .collect();
    assert_eq!(mine.len(), 1);
}

// ---- 3. WebSocket sends on a socket that drops ------------------------------------

#[test]
fn d03_websocket_send_on_a_dropped_socket_is_sent_again_on_the_next() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    drain(&mut e);
    let crid = e.send(2.0, "hello").unwrap();
    assert_eq!(ws_sends(&drain(&mut e)).len(), 1);
    e.handle_closed(3.0, conn, CloseCause::Network);
    let conn2 = ws_open(&mut e, 3.0);
    assert!(conn2 > conn);
    let again = ws_sends(&drain(&mut e));
    assert_eq!(again.len(), 1, "not re-sent");
    assert!(again[0].contains(&crid));
    e.handle_ws_text(
        5.0,
        conn2,
        &format!(
            r#"{{"op":"ack","client_request_id":"{crid}","message_id":"u1","run_id":"run_T"}}"#
        ),
    );
    assert_eq!(e.state().messages[0].status, MessageStatus::Sent);
}

// ---- 4. "working…" that never ends ------------------------------------------------

#[test]
fn d04_reply_without_reply_to_ends_working() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.send(2.0, "q").unwrap();
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "a", "role": "assistant"}),
        ),
        envelope(2, "message.delta", json!({"message_id": "a", "delta": "x"})),
        envelope(
            3,
            "message.completed",
            json!({"message_id": "a", "finish_reason": "stop"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(3.0, conn, &sse_frame(ev));
    }
    assert_eq!(e.activity(60_000.0), Activity::Idle);
}

#[test]
fn d04_run_completed_with_a_message_still_streaming_ends_working() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.send(2.0, "q").unwrap();
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "a", "role": "assistant", "reply_to": "nope"}),
        ),
        envelope(2, "run.completed", json!({"status": "succeeded"})),
    ];
    for ev in &evs {
        e.handle_bytes(3.0, conn, &sse_frame(ev));
    }
    assert_eq!(e.status(60_000.0).connection, Connection::Closed);
    assert_eq!(e.activity(60_000.0), Activity::Idle);
}

#[test]
fn d04_close_ends_working() {
    let (mut e, _) = open(cfg(), [1, 1]);
    e.send(2.0, "q").unwrap();
    assert_eq!(e.activity(5000.0), Activity::Working);
    e.close(5000.0);
    assert_eq!(e.activity(10_000.0), Activity::Idle);
    assert_eq!(e.poll_timeout(), None, "timers left after close");
}

// ---- 5. the loop guard during an ordinary outage: tests/engine.rs
//         `ordinary_outage_of_three_minutes_keeps_retrying_with_backoff`.

// ---- 6. visibility during a backoff wait ---------------------------------------

/// API.md: "Retries always honour Retry-After and the backoff, whatever wakes
/// the client (visibility, online, a gap); only retryNow() skips them."
#[test]
fn d06_becoming_visible_or_online_never_cuts_a_retry_after_short() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 503, Some(120_000.0), true);
    drain(&mut e);
    e.handle_visibility(10.0, false);
    e.handle_visibility(5000.0, true);
    assert!(
        connect_of(&drain(&mut e)).is_none(),
        "visible reconnected at once"
    );
    e.handle_online(6000.0, false);
    e.handle_online(7000.0, true);
    assert!(
        connect_of(&drain(&mut e)).is_none(),
        "online reconnected at once"
    );
    let (_, _, at) = next_connect(&mut e, 7000.0, 200_000.0).unwrap();
    assert!(at >= 120_001.0, "{at}");
}

// ---- 7/8. a gap that cannot fill -------------------------------------------------

/// PROTOCOL §1: "Where no snapshot can be had either, the client never freezes
/// and never resumes in a loop: it skips the missing ids, counts them
/// (gapsSkipped), and reports them". Also the native-EventSource case (defect
/// 8): an event whose type it cannot listen to leaves exactly this gap.
fn unfillable_gap(transport: Transport, snapshot_url: bool) {
    let mut c = cfg();
    c.transport = transport;
    c.has_snapshot_url = snapshot_url;
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let mut now = 0.0;
    let mut connects = 0;
    // Every connection: the server replays 1, 3, 4 (2 never arrives) and stays open.
    while connects < 10 {
        let Some((conn, from, t)) = next_connect(&mut e, now, 60_000.0) else {
            break;
        };
        connects += 1;
        now = t + 1.0;
        e.handle_response(now, conn, 200, None, true);
        for id in [1u64, 3, 4] {
            if id > from {
                let ev = envelope(id, "run.started", json!({}));
                match transport {
                    Transport::Sse => e.handle_sse_event(now, conn, &ev),
                    _ => e.handle_bytes(now, conn, &sse_frame(&ev)),
                }
            }
        }
        // Answer snapshot requests with a failure.
        for a in drain(&mut e) {
            if a == Action::FetchSnapshot {
                e.handle_snapshot(now, Err("HTTP 503".into()));
            }
        }
        if e.cursor() >= 4 {
            break;
        }
        let acts = run_until(&mut e, now + 3000.0);
        for a in &acts {
            if *a == Action::FetchSnapshot {
                e.handle_snapshot(now, Err("HTTP 503".into()));
            }
        }
        if let Some((c2, f2)) = connect_of(&acts) {
            // Re-queue for the loop.
            let _ = (c2, f2);
            e.retry_now(now);
        }
        now += 3000.0;
        if e.cursor() >= 4 {
            break;
        }
    }
    assert_eq!(
        e.cursor(),
        4,
        "gap never skipped after {connects} connections"
    );
    assert!(connects <= 3, "{connects} connections: resumed in a loop");
    assert_eq!(e.metrics().gaps_skipped, 1);
    assert!(e
        .status(now)
        .last_error
        .unwrap_or_default()
        .contains("skipped"));
    // Nothing more happens: no further resume.
    let acts = run_until(&mut e, now + 20_000.0);
    assert!(connect_of(&acts).is_none());
}

#[test]
fn d07_unfillable_gap_without_snapshot_url_is_skipped_not_looped() {
    unfillable_gap(Transport::Fetch, false);
}

#[test]
fn d07_unfillable_gap_whose_snapshot_fails_is_skipped() {
    unfillable_gap(Transport::Fetch, true);
}

#[test]
fn d08_native_eventsource_gap_from_an_unknown_event_name_is_skipped() {
    unfillable_gap(Transport::Sse, false);
}

// ---- 9. a "sent" message and an older snapshot ----------------------------------

#[test]
fn d09_sent_message_survives_a_snapshot_that_predates_its_echo() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let crid = e.send(2.0, "mine").unwrap();
    drain(&mut e);
    accept(&mut e, 3.0, &crid, "u9");
    let snap = json!({"event_id": 5, "run_id": RUN, "type": "snapshot",
        "timestamp": "2026-11-22T12:00:00Z",
        "payload": {"state": {"run_id": RUN, "cursor": 5, "status": "running",
            "workers": [], "messages": [], "supervisor": {"completed": false}}}});
    e.handle_bytes(4.0, conn, &sse_frame(&snap.to_string()));
    assert_eq!(e.cursor(), 5);
    let ids: Vec<_> = e
        .state()
        .messages
        .iter()
        .filter_map(|m| m.client_request_id.clone())
        .collect();
    assert_eq!(ids, vec![crid]);
}

// ---- 12. snapshot events: invalid payloads and nulls ------------------------------

#[test]
fn d12_invalid_snapshot_event_consumes_no_id() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let bad = json!({"event_id": 1, "run_id": RUN, "type": "snapshot",
        "timestamp": "2026-11-22T12:00:00Z", "payload": {"state": 7}});
    e.handle_bytes(2.0, conn, &sse_frame(&bad.to_string()));
    assert_eq!(e.cursor(), 0, "the invalid snapshot consumed id 1");
    assert_eq!(e.metrics().protocol_errors, 1);
    e.handle_bytes(
        3.0,
        conn,
        &sse_frame(&envelope(1, "run.started", json!({"title": "t"}))),
    );
    assert_eq!(e.cursor(), 1);
    assert_eq!(e.state().status, runstream::core::state::RunStatus::Running);
}

#[test]
fn d12_null_optional_snapshot_fields_are_absent() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let snap = json!({"event_id": 3, "run_id": RUN, "type": "snapshot",
        "timestamp": "2026-11-22T12:00:00Z",
        "payload": {"state": {"run_id": RUN, "cursor": null, "status": "running",
            "workers": [{"worker_id": "w1", "job_id": null, "name": null, "status": null, "tools": null}],
            "messages": [{"message_id": "m1", "client_request_id": null, "reply_to": null,
                          "role": "assistant", "content": null, "status": "completed"}],
            "supervisor": {"completed": null, "summary": null}}}});
    e.handle_bytes(2.0, conn, &sse_frame(&snap.to_string()));
    assert_eq!(e.metrics().protocol_errors, 0);
    assert_eq!(e.cursor(), 3);
    assert_eq!(e.state().workers[0].status, WorkerStatus::Pending);
    assert_eq!(e.state().messages[0].content, "");
}

// ---- 13. parked events across a refresh --------------------------------------------

#[test]
fn d13_parked_job_only_events_survive_a_refresh() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let evs = [
        envelope(1, "run.started", json!({})),
        envelope(
            2,
            "tool.completed",
            json!({"job_id": "j1", "tool_call_id": "t1", "status": "error"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(2.0, conn, &sse_frame(ev));
    }
    assert_eq!(e.parked(), 1);
    e.persist_now(3.0);
    assert!(persisted(&drain(&mut e)));
    let record = e.storage_record();
    let mut e2 = Engine::new(cfg(), [2, 2], Some(&record));
    assert_eq!(e2.cursor(), 2);
    assert_eq!(e2.parked(), 1);
    e2.start(0.0);
    let (conn2, from) = connect_of(&drain(&mut e2)).unwrap();
    assert_eq!(from, 2);
    e2.handle_response(1.0, conn2, 200, None, true);
    e2.handle_bytes(
        2.0,
        conn2,
        &sse_frame(&envelope(
            3,
            "worker.started",
            json!({"worker_id": "w1", "job_id": "j1"}),
        )),
    );
    let w = &e2.state().workers[0];
    assert_eq!(w.tools.len(), 1, "the parked tool event was lost: {w:?}");
    assert_eq!(e2.metrics().tool_errors, 1);
}

// ---- 14. unknown types -----------------------------------------------------------------

#[test]
fn d14_unknown_event_types_are_counted_and_reported() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.set_telemetry(true);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(1, "future.thing", json!({"x": 1}))),
    );
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(1, "future.thing", json!({"x": 1}))),
    );
    assert_eq!(e.cursor(), 1);
    assert_eq!(e.metrics().unknown_events, 1);
    let names: Vec<_> = std::iter::from_fn(|| e.poll_telemetry())
        .map(|ev| ev.name)
        .collect();
    assert!(names.contains(&"stream.event.unknown.total"), "{names:?}");
}

// ---- 17. send after the run completed ---------------------------------------------

#[test]
fn d17_send_after_run_completed_still_works() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(
            1,
            "run.completed",
            json!({"status": "succeeded"}),
        )),
    );
    assert_eq!(e.status(3.0).connection, Connection::Closed);
    drain(&mut e);
    let crid = e.send(4.0, "one more").expect("send after completion");
    assert_eq!(posted_ids(&mut e), vec![crid]);
    e.close(5.0);
    assert!(e.send(6.0, "x").is_err());
}

/// A WebSocket run that completed, then a send (at 3 ms): the engine, the
/// send's `client_request_id` and the socket opened for it.
fn late_send_after_completion() -> (Engine, String, u64) {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    let done = envelope(1, "run.completed", json!({"status": "succeeded"}));
    e.handle_ws_text(2.0, conn, &format!(r#"{{"op":"event","event":{done}}}"#));
    drain(&mut e);
    let crid = e.send(3.0, "late").unwrap();
    let (conn2, _) = connect_of(&drain(&mut e)).expect("a socket for the send");
    (e, crid, conn2)
}

#[test]
fn d17_websocket_send_after_run_completed_opens_a_socket_for_it() {
    let (mut e, crid, conn2) = late_send_after_completion();
    e.handle_ws_open(4.0, conn2, Vec::new());
    let acts = drain(&mut e);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("subscribe"))),
        "a finished run is never subscribed again"
    );
    assert_eq!(ws_sends(&acts).len(), 1);
    e.handle_ws_text(
        5.0,
        conn2,
        &format!(
            r#"{{"op":"ack","client_request_id":"{crid}","message_id":"u1","run_id":"run_T"}}"#
        ),
    );
    assert!(drain(&mut e).contains(&Action::Disconnect { conn: conn2 }));
    assert_eq!(e.status(6.0).connection, Connection::Closed);
}

// ---- 18. restore beyond the outbox bound ---------------------------------------------

#[test]
fn d18_restore_beyond_the_outbox_bound_fails_the_excess_visibly() {
    let mut c = cfg();
    c.outbox_capacity = 3;
    let mut e = Engine::new(c.clone(), [1, 1], None);
    e.handle_online(0.0, false);
    for i in 0..3 {
        e.send(1.0, &format!("m{i}")).unwrap();
    }
    let record = e.storage_record();
    // A second page queued three more before the first one's were delivered.
    let mut e2 = Engine::new(c.clone(), [2, 2], Some(&record));
    e2.handle_online(0.0, false);
    let mut big = e2.storage_record();
    for i in 3..6 {
        let mut e3 = Engine::new(c.clone(), [9, i], Some(&big));
        e3.handle_online(0.0, false);
        // Free a slot by failing one visible send, so the record grows past the bound.
        let first = e3
            .state()
            .messages
            .iter()
            .find(|m| m.status == MessageStatus::Queued)
            .and_then(|m| m.client_request_id.clone())
            .unwrap();
        e3.handle_send_result(
            0.0,
            &first,
            SendResult {
                status: Some(400),
                ..SendResult::default()
            },
        );
        e3.send(1.0, &format!("m{i}")).unwrap();
        big = e3.storage_record();
    }
    // Hand-edit the stored statuses back to queued: more undelivered sends than the bound.
    let big = big.replace("\"failed\"", "\"queued\"");
    let mut e4 = Engine::new(c, [4, 4], Some(&big));
    let queued = e4
        .state()
        .messages
        .iter()
        .filter(|m| matches!(m.status, MessageStatus::Queued | MessageStatus::Sending))
        .count();
    let failed = e4
        .state()
        .messages
        .iter()
        .filter(|m| m.status == MessageStatus::Failed)
        .count();
    assert_eq!(queued, 3);
    assert_eq!(failed, 3);
    e4.start(0.0);
    assert_eq!(posted_ids(&mut e4).len(), 3);
    assert!(e4
        .status(0.0)
        .last_error
        .unwrap_or_default()
        .contains("not sent"));
}

// ---- found by a review of the new engine against the spec ----------------------

/// PROTOCOL §2a: once `run.completed` is applied the client "never reconnects",
/// also when the finished state comes back from storage.
#[test]
fn r01_a_stored_finished_run_never_reconnects() {
    for c in [cfg(), ws_cfg()] {
        let (mut e, conn) = open(c.clone(), [1, 1]);
        e.handle_bytes(
            2.0,
            conn,
            &sse_frame(&envelope(
                1,
                "run.completed",
                json!({"status": "succeeded"}),
            )),
        );
        let record = e.storage_record();
        let mut e2 = Engine::new(c, [2, 2], Some(&record));
        e2.start(0.0);
        let acts = run_until(&mut e2, 120_000.0);
        assert!(connect_of(&acts).is_none(), "{acts:?}");
        assert_eq!(e2.status(0.0).connection, Connection::Closed);
    }
}

/// A `snapshot` that already holds a pending send's echo and its finished
/// reply settles both: no re-send, no "working…".
#[test]
fn r03_snapshot_with_the_echo_and_the_reply_settles_the_send() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let crid = e.send(2.0, "q").unwrap();
    drain(&mut e);
    let snap = json!({"event_id": 9, "run_id": RUN, "type": "snapshot",
        "timestamp": "2026-11-22T12:00:00Z",
        "payload": {"state": {"run_id": RUN, "cursor": 9, "status": "running", "workers": [],
            "messages": [
                {"message_id": "u1", "client_request_id": crid, "role": "user", "content": "q", "status": "completed"},
                {"message_id": "a1", "reply_to": crid, "role": "assistant", "content": "hi", "status": "completed"}],
            "supervisor": {"completed": false}}}});
    e.handle_bytes(3.0, conn, &sse_frame(&snap.to_string()));
    assert_eq!(e.activity(60_000.0), Activity::Idle);
    e.handle_send_result(4.0, &crid, SendResult::default());
    let acts = run_until(&mut e, 60_000.0);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Post { .. })),
        "re-sent"
    );
    assert_eq!(e.state().messages.len(), 2);
}

/// PROTOCOL §4: if the reconcile "fails, what is left is marked unknown (never
/// left running)" — a snapshot endpoint that never answers fails too.
#[test]
fn r04_a_reconcile_that_never_answers_marks_leftovers_unknown() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    for ev in [
        envelope(1, "worker.started", json!({"worker_id": "w1"})),
        envelope(2, "run.completed", json!({"status": "succeeded"})),
    ] {
        e.handle_bytes(2.0, conn, &sse_frame(&ev));
    }
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::FetchSnapshot));
    let acts = run_until(&mut e, 60_000.0);
    assert!(persisted(&acts));
    assert_eq!(e.state().workers[0].status, WorkerStatus::Unknown);
    assert!(e.storage_record().contains("unknown"));
}

#[test]
fn r06_a_send_after_completion_shows_no_working() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(
            1,
            "run.completed",
            json!({"status": "succeeded"}),
        )),
    );
    e.send(3.0, "late").unwrap();
    assert_eq!(e.activity(60_000.0), Activity::Idle);
}

/// API.md `connectTimeoutMs`: "no `open` (EventSource, WebSocket)"; a server
/// that has nothing to replay may send nothing after it, not even `subscribed`.
#[test]
fn r07_websocket_silent_after_open_is_not_a_connect_timeout() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_ws_open(5.0, conn, Vec::new());
    let mut now = 5.0;
    while now < 40_000.0 {
        now = e.poll_timeout().unwrap();
        e.handle_timeout(now);
        let acts = drain(&mut e);
        assert!(connect_of(&acts).is_none(), "reconnected at {now}");
        if acts
            .iter()
            .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("ping")))
        {
            e.handle_ws_text(now + 3.0, conn, r#"{"op":"pong","t":1}"#);
        }
    }
    assert_eq!(e.metrics().terminations.get("connect_timeout"), None);
}

/// API.md: a send that has not been accepted is retried; a WebSocket `error`
/// that is not a refusal (e.g. `unavailable`) is not a final answer.
#[test]
fn r09_websocket_send_error_unavailable_is_retried() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    drain(&mut e);
    let crid = e.send(2.0, "x").unwrap();
    assert_eq!(ws_sends(&drain(&mut e)).len(), 1);
    e.handle_ws_text(
        3.0,
        conn,
        &format!(
            r#"{{"op":"error","code":"unavailable","message":"busy","client_request_id":"{crid}"}}"#
        ),
    );
    assert_ne!(e.state().messages[0].status, MessageStatus::Failed);
    let acts = run_until(&mut e, 5_000.0);
    assert_eq!(ws_sends(&acts).len(), 1);
    e.handle_ws_text(
        4.0,
        conn,
        &format!(
            r#"{{"op":"error","code":"bad_request","message":"no","client_request_id":"{crid}"}}"#
        ),
    );
    assert_eq!(e.state().messages[0].status, MessageStatus::Failed);
}

/// PROTOCOL §2a: 204 = "run finished and nothing to replay"; a client whose
/// state is not finished asks the snapshot endpoint for the final state.
#[test]
fn r12_no_content_on_an_unfinished_state_fetches_the_snapshot() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 204, None, true);
    assert!(drain(&mut e).contains(&Action::FetchSnapshot));
    let body = json!({"run_id": RUN, "event_id": 4, "state": {"run_id": RUN, "cursor": 4,
        "status": "succeeded", "workers": [], "messages": [], "supervisor": {"completed": true}}});
    e.handle_snapshot(2.0, Ok(&body.to_string()));
    assert!(e.finished());
    assert_eq!(e.cursor(), 4);
}

/// A new page's engine (seed `seed`) from `e`'s stored record, started at 0.
fn reloaded(e: &Engine, seed: u64) -> Engine {
    let record = e.storage_record();
    let mut next = Engine::new(cfg(), [seed, seed], Some(&record));
    next.start(0.0);
    next
}

/// The server accepts send `crid` as message `mid` (202) at `now`.
fn accept(e: &mut Engine, now: f64, crid: &str, mid: &str) {
    e.handle_send_result(
        now,
        crid,
        SendResult {
            status: Some(202),
            body: Some(format!(r#"{{"message_id":"{mid}","run_id":"run_T"}}"#)),
            ..SendResult::default()
        },
    );
}

/// Sends "q" at 2 ms; the server accepts it as message `u1` at 3 ms. Its client_request_id.
fn accepted_send(e: &mut Engine) -> String {
    let crid = e.send(2.0, "q").unwrap();
    accept(e, 3.0, &crid, "u1");
    crid
}

/// After a refresh, a send that was accepted but not answered yet still shows
/// "working…" once its reply is late.
#[test]
fn r16_refresh_keeps_waiting_for_an_accepted_send() {
    let (mut e, _) = open(cfg(), [1, 1]);
    accepted_send(&mut e);
    let e2 = reloaded(&e, 2);
    assert_eq!(e2.activity(5000.0), Activity::Working);
}

/// API.md `StreamStatus.activity`: "working = a reply is pending and no token
/// for stallAfterMs". The server's echo of a send (`message.created`, role
/// user, with its `client_request_id`) is not its reply: after a refresh the
/// reply is still awaited. (Found by a review: the restore only awaited sends
/// not yet echoed.)
#[test]
fn r17_refresh_keeps_waiting_for_an_echoed_send() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let crid = accepted_send(&mut e);
    let echo = envelope(
        1,
        "message.created",
        json!({"message_id": "u1", "role": "user", "content": "q", "client_request_id": crid}),
    );
    e.handle_bytes(4.0, conn, &sse_frame(&echo));
    assert_eq!(
        e.activity(5000.0),
        Activity::Working,
        "live, before the refresh"
    );
    let e2 = reloaded(&e, 2);
    assert_eq!(e2.activity(5000.0), Activity::Working, "after the refresh");
}

/// The restore replays the rules in the history's order: a finished reply
/// naming the send, or a finished assistant message without `reply_to` after
/// it, means nothing is awaited after a refresh; a later send still is.
#[test]
fn r17_refresh_does_not_wait_for_answered_sends() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "u1", "role": "user", "content": "a", "client_request_id": "c1"}),
        ),
        envelope(
            2,
            "message.created",
            json!({"message_id": "a1", "role": "assistant", "reply_to": "c1"}),
        ),
        envelope(
            3,
            "message.completed",
            json!({"message_id": "a1", "finish_reason": "stop"}),
        ),
        envelope(
            4,
            "message.created",
            json!({"message_id": "u2", "role": "user", "content": "b", "client_request_id": "c2"}),
        ),
        envelope(
            5,
            "message.created",
            json!({"message_id": "a2", "role": "assistant"}),
        ),
        envelope(
            6,
            "message.completed",
            json!({"message_id": "a2", "finish_reason": "stop"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(3.0, conn, &sse_frame(ev));
    }
    let e2 = reloaded(&e, 2);
    assert_eq!(
        e2.activity(60_000.0),
        Activity::Idle,
        "answered sends are not awaited"
    );
    let later = envelope(
        7,
        "message.created",
        json!({"message_id": "u3", "role": "user", "content": "c", "client_request_id": "c3"}),
    );
    e.handle_bytes(4.0, conn, &sse_frame(&later));
    let e3 = reloaded(&e, 3);
    assert_eq!(
        e3.activity(60_000.0),
        Activity::Working,
        "the unanswered last send is"
    );
}

/// A finished run whose worker never reported completion, reconciling from
/// the snapshot endpoint (PROTOCOL §4); returns the engine after it asked.
fn reconciling() -> Engine {
    let (mut e, conn) = open(cfg(), [1, 1]);
    for ev in [
        envelope(1, "worker.started", json!({"worker_id": "w1"})),
        envelope(2, "run.completed", json!({"status": "succeeded"})),
    ] {
        e.handle_bytes(2.0, conn, &sse_frame(&ev));
    }
    assert!(drain(&mut e).contains(&Action::FetchSnapshot));
    e
}

fn settled_snapshot() -> String {
    json!({"run_id": RUN, "event_id": 2, "state": {"run_id": RUN, "cursor": 2,
        "status": "succeeded", "messages": [], "supervisor": {"completed": true},
        "workers": [{"worker_id": "w1", "status": "succeeded", "tools": []}]}})
    .to_string()
}

/// API.md `connectTimeoutMs`: "no response headers (fetch) … for this long".
/// A snapshot whose headers came in time may take longer than that for its
/// body: its answer is used, not replaced by `unknown`. (Found by a review:
/// the engine's timer covered the whole body.)
#[test]
fn r18_a_snapshot_body_slower_than_the_connect_timeout_is_used() {
    let mut e = reconciling();
    e.handle_snapshot_headers(100.0);
    let _ = run_until(&mut e, 12_000.0);
    assert_eq!(
        e.state().workers[0].status,
        WorkerStatus::Running,
        "still waiting for the body"
    );
    e.handle_snapshot(12_000.0, Ok(&settled_snapshot()));
    assert_eq!(e.state().workers[0].status, WorkerStatus::Succeeded);
}

/// PROTOCOL §4: leftovers are `unknown` only "if that fails". An
/// authoritative answer that arrives after the wait gave up still settles a
/// finished run (it was dropped as a duplicate of the final cursor).
#[test]
fn r18_a_late_snapshot_still_settles_a_finished_run() {
    let mut e = reconciling();
    let _ = run_until(&mut e, 60_000.0);
    assert_eq!(e.state().workers[0].status, WorkerStatus::Unknown);
    e.handle_snapshot(60_000.0, Ok(&settled_snapshot()));
    assert_eq!(e.state().workers[0].status, WorkerStatus::Succeeded);
    assert!(e.finished());
}

// ---- found by the third review (session 8) ------------------------------------------

/// PROTOCOL §1: `timestamp` is an "ISO 8601 / RFC 3339 string, server clock.
/// Informational only". ISO 8601 without an offset (Python's `isoformat()` of
/// a naive datetime, Postgres `timestamp`, Java `LocalDateTime`) is valid:
/// the events are applied, not dropped as protocol errors.
#[test]
fn r19_a_timestamp_without_an_offset_is_applied() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let evs = [
        (1, "run.started", json!({})),
        (
            2,
            "message.created",
            json!({"message_id": "a", "role": "assistant"}),
        ),
        (3, "message.delta", json!({"message_id": "a", "delta": "x"})),
    ];
    for (i, (id, ty, payload)) in evs.into_iter().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(&envelope(id, ty, payload)).unwrap();
        v["timestamp"] = json!(
            [
                "2026-11-22T12:00:00.123456",
                "2026-11-22 12:00:00",
                "2026-11-22T12:00:00+0530"
            ][i]
        );
        e.handle_bytes(2.0, conn, &sse_frame(&v.to_string()));
    }
    assert_eq!(e.cursor(), 3);
    assert_eq!(e.metrics().protocol_errors, 0);
    assert_eq!(e.state().messages[0].content, "x");
}

/// A shared-socket run (every WebSocket stream of the browser shell) that
/// connects while another stream's subscription to the same run is live.
fn shared_ws_connecting() -> (Engine, u64) {
    let mut c = ws_cfg();
    c.shared_socket = true;
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).expect("a connect");
    (e, conn)
}

/// API.md "Many runs, one socket": "each run is a `subscribe` on it". A frame
/// of another stream's subscription that reaches this run before its own
/// `open` (its `headers` still resolving) must not stand in for it: the run
/// still subscribes from its cursor, so the history before that frame is replayed.
#[test]
fn r20_a_shared_socket_frame_before_open_does_not_stop_the_subscribe() {
    let (mut e, conn) = shared_ws_connecting();
    let live = envelope(7, "run.started", json!({}));
    e.handle_ws_text(1.0, conn, &format!(r#"{{"op":"event","event":{live}}}"#));
    e.handle_ws_text(
        1.0,
        conn,
        r#"{"op":"subscribed","run_id":"run_T","replay_from":5}"#,
    );
    drain(&mut e);
    e.handle_ws_open(2.0, conn, Vec::new());
    let acts = drain(&mut e);
    assert!(
        acts.iter().any(|a| matches!(a, Action::WsSend { text, .. }
            if text.contains(r#""op":"subscribe""#) && !text.contains("last_event_id"))),
        "no subscribe from the cursor: {acts:?}"
    );
    assert_eq!(e.status(2.0).connection, Connection::Open);
}

/// API.md `connectTimeoutMs`: "no `open` (…, WebSocket) for this long →
/// retry". On a shared socket the run's `open` is its subscribe, which waits
/// for its `headers`: a `headers` promise that never settles is retried
/// (and `headers` called again), as it is over fetch.
#[test]
fn r21_a_shared_socket_run_whose_headers_never_settle_is_retried() {
    let (mut e, conn) = shared_ws_connecting();
    // The socket is open: the shell starts resolving this run's headers.
    e.handle_ws_ready(100.0, conn);
    let acts = run_until(&mut e, 100.0 + cfg().connect_timeout_ms + 1.0);
    assert!(
        acts.contains(&Action::Disconnect { conn }),
        "still waiting: {acts:?}"
    );
    assert_eq!(e.metrics().terminations.get("connect_timeout"), Some(&1));
    let again = next_connect(&mut e, 10_101.0, 60_000.0);
    assert!(again.is_some_and(|(c, _, _)| c != conn), "not retried");
    // The late answer of the first resolution is ignored.
    e.handle_ws_open(70_000.0, conn, Vec::new());
    assert_ne!(e.status(70_000.0).connection, Connection::Open);
}

/// PROTOCOL §2a End: once `run.completed` is applied the client "closes the
/// stream itself (connection `closed`) and never reconnects". A socket
/// opened after that only to deliver a send is not a reconnect: the
/// connection stays `closed` throughout and `reconnects` does not move.
#[test]
fn r22_a_websocket_send_after_completion_is_not_shown_as_a_reconnect() {
    let (mut e, crid, conn2) = late_send_after_completion();
    assert_eq!(e.status(3.5).connection, Connection::Closed);
    e.handle_ws_open(4.0, conn2, Vec::new());
    assert_eq!(e.status(4.5).connection, Connection::Closed);
    assert_eq!(e.status(4.5).attempt, 0);
    e.handle_ws_text(
        5.0,
        conn2,
        &format!(
            r#"{{"op":"ack","client_request_id":"{crid}","message_id":"u1","run_id":"run_T"}}"#
        ),
    );
    assert_eq!(e.status(6.0).connection, Connection::Closed);
    assert_eq!(e.metrics().reconnects, 0);
}

/// API.md `version`: "increases with every visible change". `close()` is
/// one (the connection becomes `closed`), and no frame follows it.
#[test]
fn r23_close_is_a_new_version() {
    let (mut e, _) = open(cfg(), [1, 1]);
    e.flush(1.0);
    let before = e.version();
    e.close(2.0);
    assert_eq!(e.status(2.0).connection, Connection::Closed);
    assert!(e.version() > before, "close() kept version {before}");
}

/// PROTOCOL §1: `timestamp` is "Informational only", and bad input "gets a
/// typed error that is counted and reported; nothing already applied is
/// lost". A timestamp that is not ISO 8601 at all is counted as
/// `bad_timestamp` and its event still applies: no gap, no resync.
#[test]
fn r24_a_timestamp_that_is_not_iso8601_is_counted_and_its_event_applied() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    for id in 1..=3 {
        let ty = if id == 1 {
            "run.started"
        } else {
            "message.delta"
        };
        let p = if id == 1 {
            json!({})
        } else {
            json!({"message_id": "a", "delta": "x"})
        };
        let mut v: serde_json::Value = serde_json::from_str(&envelope(id, ty, p)).unwrap();
        if id == 2 {
            v["timestamp"] = json!("yesterday at noon");
        }
        e.handle_bytes(2.0, conn, &sse_frame(&v.to_string()));
    }
    assert_eq!(e.cursor(), 3);
    assert_eq!(e.metrics().protocol_errors, 1);
    assert_eq!(
        e.metrics().protocol_errors_by_kind.get("bad_timestamp"),
        Some(&1)
    );
    // Within the heartbeat timeout (25 s), nothing to repair: no reconnect.
    let acts = run_until(&mut e, 20_000.0);
    assert!(connect_of(&acts).is_none(), "resynced: {acts:?}");
}

/// API.md "Many runs, one socket": an `error` naming no send that reaches a
/// run before its own subscribe (another stream's subscription on the shared
/// socket was refused, or the server answered a bad frame to every run) is
/// not this run's: it still subscribes, and nothing fails.
#[test]
fn r25_a_run_level_error_before_the_subscribe_is_another_streams() {
    let (mut e, conn) = shared_ws_connecting();
    e.handle_ws_text(
        1.0,
        conn,
        r#"{"op":"error","run_id":"run_T","code":"unavailable","message":"store down"}"#,
    );
    e.handle_ws_text(
        1.0,
        conn,
        r#"{"op":"error","code":"bad_request","message":"unreadable frame"}"#,
    );
    assert!(
        e.metrics().terminations.is_empty(),
        "{:?}",
        e.metrics().terminations
    );
    drain(&mut e);
    e.handle_ws_open(2.0, conn, Vec::new());
    assert!(drain(&mut e)
        .iter()
        .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains(r#""op":"subscribe""#))));
    assert_eq!(e.status(2.0).connection, Connection::Open);
}

/// PROTOCOL §2a End: after `run.completed` the connection is `closed`,
/// whatever happens to a socket opened later for a send: one the server
/// refuses for good (1008) leaves the send failed and the stream `closed`.
#[test]
fn r26_a_failed_send_socket_after_completion_leaves_the_stream_closed() {
    let (mut e, _, conn2) = late_send_after_completion();
    e.handle_closed(4.0, conn2, CloseCause::WsClose { code: 1008 });
    let s = e.status(5.0);
    assert_eq!(s.connection, Connection::Closed, "{s:?}");
    assert_eq!((s.attempt, s.retry_in_ms), (0, None));
}

/// API.md `headers`: "called on every (re)connect and send, so an expired
/// token is refreshed; on a 401 it is called once more before the stream
/// gives up". A WebSocket server refuses an expired token by closing with
/// 4401; a token that expires every hour does so every hour, and each
/// expiry gets its refresh, as on fetch (where a 2xx re-arms it). (Found by
/// a review: on WebSocket nothing re-armed it, so the second expiry failed
/// the stream for good.)
#[test]
fn r27_websocket_each_token_expiry_gets_its_refresh() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let mut conn = ws_open(&mut e, 1.0);
    let mut now = 1.0;
    for hour in 1..=3 {
        // An hour of idle, pongs answering pings.
        let end = now + 3_600_000.0;
        while now < end {
            now = e.poll_timeout().unwrap();
            e.handle_timeout(now);
            if drain(&mut e)
                .iter()
                .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("ping")))
            {
                e.handle_ws_text(now, conn, r#"{"op":"pong","t":1}"#);
            }
        }
        e.handle_closed(now, conn, CloseCause::WsClose { code: 4401 });
        let (c, _, t) = next_connect(&mut e, now, 1_000.0)
            .unwrap_or_else(|| panic!("expiry {hour}: no refresh: {:?}", e.status(now)));
        assert_eq!(t, now, "expiry {hour}: the refresh goes at once");
        now = t + 1.0;
        e.handle_ws_open(now, c, Vec::new());
        e.handle_ws_text(
            now,
            c,
            r#"{"op":"subscribed","run_id":"run_T","replay_from":1}"#,
        );
        conn = c;
        assert_eq!(e.status(now).connection, Connection::Open, "expiry {hour}");
    }
    // A token the refresh does not fix: one retry, then final.
    e.handle_closed(now, conn, CloseCause::WsClose { code: 4401 });
    let (c, _, _) = next_connect(&mut e, now, 1_000.0).unwrap();
    e.handle_ws_open(now + 1.0, c, Vec::new());
    e.handle_closed(now + 2.0, c, CloseCause::WsClose { code: 4401 });
    assert_eq!(e.status(now + 3.0).connection, Connection::Failed);
}

/// README: "a dropped Wi-Fi … never leaves a spinner stuck", with API.md
/// `headers: async () => ({ Authorization: await getToken() })`: during an
/// outage the token endpoint is unreachable too, so the function rejects.
/// That is an outage, not a verdict: the stream backs off and reconnects
/// (calling `headers` again) as for a network error, and ends `failed` only
/// as a network error would (API.md "Quiet is healthy … resumed once per
/// ending"; link.rs: "an ordinary outage backs off for as long as it lasts").
/// (Found by a review: the first rejection failed the stream for good.)
#[test]
fn r28_a_headers_function_that_rejects_during_an_outage_is_retried_with_backoff() {
    for transport in [Transport::Fetch, Transport::WebSocket] {
        let mut c = cfg();
        c.transport = transport;
        let (mut e, mut conn) = connecting(c, [1, 1]);
        if transport == Transport::WebSocket {
            e.handle_ws_open(1.0, conn, Vec::new());
        } else {
            e.handle_response(1.0, conn, 200, None, true);
        }
        let mut now = 1.0;
        // Ten minutes of a failing token endpoint: every attempt's headers reject.
        let mut attempts = 0;
        while now < 600_000.0 {
            e.handle_closed(
                now,
                conn,
                CloseCause::HeadersFailed("Failed to fetch".into()),
            );
            let s = e.status(now);
            assert_eq!(
                s.connection,
                Connection::Reconnecting,
                "{transport:?}: {s:?}"
            );
            assert!(
                s.last_error.as_deref().unwrap_or("").contains("headers"),
                "{s:?}"
            );
            let (c2, _, t) = next_connect(&mut e, now, 60_000.0)
                .unwrap_or_else(|| panic!("{transport:?}: no retry after {attempts}"));
            (conn, now) = (c2, t);
            attempts += 1;
        }
        // Paced by the backoff (maxMs 20 s): no loop, no burst.
        assert!(
            (30..=1300).contains(&attempts),
            "{transport:?}: {attempts} attempts"
        );
        assert_eq!(e.metrics().terminations.get("error_loop"), None);
        // The token endpoint is back: the stream opens.
        if transport == Transport::WebSocket {
            e.handle_ws_open(now, conn, Vec::new());
        } else {
            e.handle_response(now, conn, 200, None, true);
        }
        let s = e.status(now);
        assert_eq!(s.connection, Connection::Open, "{transport:?}: {s:?}");
        assert_eq!(s.last_error, None);
    }
}

/// The same for a send: API.md "Sends survive everything the stream
/// survives". A send whose `headers` reject is queued again after its
/// backoff, posted again (with `headers` called again), and accepted.
#[test]
fn r28_a_send_whose_headers_reject_is_retried_not_failed() {
    let mut c = cfg();
    c.can_send = true;
    let (mut e, _) = open(c, [1, 1]);
    let crid = e.send(2.0, "hi").unwrap();
    assert_eq!(posted_ids(&mut e), vec![crid.clone()]);
    e.handle_send_result(
        3.0,
        &crid,
        SendResult {
            status: None,
            retry_after_ms: None,
            body: None,
            headers_error: Some("Failed to fetch".into()),
        },
    );
    let m = &e.state().messages[0];
    assert_ne!(m.status, MessageStatus::Failed, "{m:?}");
    let acts = run_until(&mut e, 60_000.0);
    let again: Vec<_> = acts
        .iter()
        .filter(
            |a| matches!(a, Action::Post { client_request_id, .. } if *client_request_id == crid),
        )
        .collect();
    assert_eq!(again.len(), 1, "posted again once: {acts:?}");
    e.handle_send_result(
        60_000.0,
        &crid,
        SendResult {
            status: Some(202),
            retry_after_ms: None,
            body: Some(r#"{"message_id":"m1","run_id":"run_T"}"#.into()),
            headers_error: None,
        },
    );
    assert_ne!(e.state().messages[0].status, MessageStatus::Failed);
}

/// API.md: "A reply without `reply_to` … ends 'working'", and PROTOCOL §3: a
/// snapshot replaces the state. A snapshot (after a pruned log, a gap
/// repair, a tab's catch-up) that already holds the echo and a finished
/// reply without `reply_to` ends the wait as the live events would have,
/// and as a refresh of the same history does. (Found by a review: only a
/// reply naming the send ended it, so "working…" stayed on.)
#[test]
fn r29_snapshot_with_a_finished_reply_without_reply_to_ends_working() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let crid = accepted_send(&mut e);
    let snap = json!({"event_id": 60, "run_id": RUN, "type": "snapshot",
        "timestamp": "2026-11-22T12:00:00Z",
        "payload": {"state": {"run_id": RUN, "cursor": 60, "status": "running", "workers": [],
            "messages": [
                {"message_id": "u1", "client_request_id": crid, "role": "user", "content": "q", "status": "completed"},
                {"message_id": "a1", "role": "assistant", "content": "hi", "status": "completed"}],
            "supervisor": {"completed": false}}}});
    e.handle_bytes(4.0, conn, &sse_frame(&snap.to_string()));
    assert_eq!(e.activity(60_000.0), Activity::Idle);
    // A send the snapshot predates is still awaited.
    let (mut e, conn) = open(cfg(), [2, 2]);
    let later = e.send(2.0, "later").unwrap();
    assert_ne!(later, crid);
    e.handle_bytes(4.0, conn, &sse_frame(&snap.to_string()));
    assert_eq!(e.activity(60_000.0), Activity::Working);
}

/// API.md "working = a reply is pending": a user message the server fails
/// (`message.failed` on its echo: moderation, a rejected input) will get no
/// reply, so its wait ends, as it does after a refresh of the same history;
/// and it is not a reply, so it ends no other send's wait. (Found by a
/// review: after its echo the failure changed nothing and "working…" stayed
/// on; before its echo it ended every wait like a reply without `reply_to`.)
#[test]
fn r30_a_failed_user_message_ends_its_own_wait_only() {
    // Failed after its echo: its wait ends.
    let (mut e, conn) = open(cfg(), [1, 1]);
    let c1 = e.send(2.0, "q1").unwrap();
    accept(&mut e, 3.0, &c1, "u1");
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "u1", "role": "user", "client_request_id": c1, "content": "q1"}),
        ),
        envelope(
            2,
            "message.failed",
            json!({"message_id": "u1", "error": "moderation"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(4.0, conn, &sse_frame(ev));
    }
    assert_eq!(
        e.activity(60_000.0),
        Activity::Idle,
        "failed after its echo"
    );
    // Failed before its echo: only its own wait ends.
    let (mut e, conn) = open(cfg(), [1, 1]);
    let c1 = e.send(2.0, "q1").unwrap();
    let c2 = e.send(2.0, "q2").unwrap();
    accept(&mut e, 3.0, &c1, "u1");
    accept(&mut e, 3.0, &c2, "u2");
    e.handle_bytes(
        4.0,
        conn,
        &sse_frame(&envelope(
            1,
            "message.failed",
            json!({"message_id": "u2", "error": "moderation"}),
        )),
    );
    assert_eq!(
        e.activity(60_000.0),
        Activity::Working,
        "c1 still awaits its reply"
    );
}

/// API.md `headers`: "a function (sync or async) called on every (re)connect
/// and send, so an expired token is refreshed" — on WebSocket too. An idle
/// socket outlives its subscribe's token by hours ("Quiet is healthy"): a
/// send then asks for the headers afresh and its frame carries them; a
/// failure to get them is retried after the send's backoff; headers that
/// arrive after the socket dropped are not written anywhere (the send goes
/// again, with fresh headers, on the next socket). (Found by a review: every
/// send frame carried the headers resolved at subscribe.)
#[test]
fn r31_websocket_sends_ask_for_fresh_headers() {
    let mut c = ws_cfg();
    c.headers_per_send = true;
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_ws_open(
        1.0,
        conn,
        vec![("Authorization".into(), "Bearer t1".into())],
    );
    drain(&mut e);
    let asked = |acts: &[Action]| -> Vec<(u64, String)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::WsSendHeaders {
                    conn,
                    client_request_id,
                } => Some((*conn, client_request_id.clone())),
                _ => None,
            })
            .collect()
    };
    let crid = e.send(7_200_000.0, "hi").unwrap();
    let acts = drain(&mut e);
    assert_eq!(asked(&acts), vec![(conn, crid.clone())]);
    assert!(
        ws_sends(&acts).is_empty(),
        "written before its headers: {acts:?}"
    );
    let fresh = vec![("Authorization".to_owned(), "Bearer t2".to_owned())];
    e.handle_ws_send_headers(7_200_001.0, conn, &crid, Ok(fresh.clone()));
    let frames = ws_sends(&drain(&mut e));
    assert_eq!(frames.len(), 1);
    assert!(frames[0].contains("Bearer t2"), "{}", frames[0]);
    assert!(!frames[0].contains("Bearer t1"), "{}", frames[0]);
    e.handle_ws_text(
        7_200_002.0,
        conn,
        &json!({"op": "ack", "client_request_id": crid, "message_id": "u1", "run_id": "run_T"})
            .to_string(),
    );

    // The headers fail: retried after the backoff (asked again), not failed.
    let c2 = e.send(7_300_000.0, "again").unwrap();
    drain(&mut e);
    e.handle_ws_send_headers(7_300_001.0, conn, &c2, Err("no token".into()));
    assert_ne!(e.state().messages[1].status, MessageStatus::Failed);
    let mut again = Vec::new();
    let mut now = 7_300_001.0;
    while again.is_empty() && now < 7_400_000.0 {
        now = e.poll_timeout().unwrap();
        e.handle_timeout(now);
        let acts = drain(&mut e);
        if acts
            .iter()
            .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("ping")))
        {
            e.handle_ws_text(now, conn, r#"{"op":"pong","t":1}"#);
        }
        again = asked(&acts);
    }
    assert_eq!(
        again,
        vec![(conn, c2.clone())],
        "asked again after the backoff"
    );

    // Headers that arrive after the socket dropped are dropped with it.
    e.handle_closed(now, conn, CloseCause::WsClose { code: 1006 });
    e.handle_ws_send_headers(now, conn, &c2, Ok(fresh));
    assert!(ws_sends(&drain(&mut e)).is_empty());
    let (conn2, _, t) = next_connect(&mut e, now, 60_000.0).unwrap();
    e.handle_ws_open(t, conn2, Vec::new());
    assert_eq!(
        asked(&drain(&mut e)),
        vec![(conn2, c2)],
        "asked again on the new socket"
    );
}

/// PROTOCOL §4: "`job_id → worker_id` is learned from any event that carries
/// both"; a job-only event for a learned job applies at once. A worker given
/// a second job (`worker.job_assigned`) keeps that mapping while chat sends
/// are accepted. (Found by a review: every accepted send rebuilt the lookup
/// tables from `workers[].job_id`, the first job only, so the second job's
/// events were parked until the run's end.)
#[test]
fn r32_a_workers_second_job_stays_mapped_across_an_accepted_send() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let evs = [
        envelope(
            1,
            "worker.started",
            json!({"worker_id": "w1", "job_id": "j1"}),
        ),
        envelope(
            2,
            "worker.job_assigned",
            json!({"worker_id": "w1", "job_id": "j2"}),
        ),
        envelope(
            3,
            "tool.started",
            json!({"worker_id": "w1", "tool_call_id": "t1", "name": "fetch"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(2.0, conn, &sse_frame(ev));
    }
    let crid = e.send(3.0, "hi").unwrap();
    accept(&mut e, 4.0, &crid, "u1");
    let evs = [
        envelope(
            4,
            "tool.completed",
            json!({"job_id": "j2", "tool_call_id": "t1", "status": "ok"}),
        ),
        envelope(
            5,
            "worker.completed",
            json!({"job_id": "j2", "status": "succeeded"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(5.0, conn, &sse_frame(ev));
    }
    let w = &e.state().workers;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].status, WorkerStatus::Succeeded, "{w:?}");
    assert_eq!(
        w[0].tools[0].status,
        runstream::core::state::ToolStatus::Ok,
        "{w:?}"
    );
}

// ---- PROTOCOL §7 / §2b: what each refusal means ------------------------------------

/// A run-level WebSocket `error` of run `run_T` (no `client_request_id`).
fn run_error(code: &str) -> String {
    json!({"op": "error", "run_id": RUN, "code": code, "message": "refused"}).to_string()
}

/// A WebSocket `error` answering send `crid` (the reference server names no run).
fn send_error(code: &str, crid: &str) -> String {
    json!({"op": "error", "code": code, "message": "refused", "client_request_id": crid})
        .to_string()
}

/// The subscribe frames among `actions`.
fn subscribes(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WsSend { text, .. } if text.contains(r#""op":"subscribe""#) => {
                Some(text.clone())
            }
            _ => None,
        })
        .collect()
}

/// PROTOCOL §2b: `unauthorized` = "refresh headers once"; §7: "two
/// consecutive 401s are final". A subscribe refused `unauthorized` is
/// retried at once on a new connection (the shell calls `headers` again for
/// its subscribe), and a second refusal with no `subscribed` in between is
/// final. (It was retried with backoff for ever, as a protocol error.)
#[test]
fn a01_websocket_unauthorized_refreshes_once_then_is_final() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let (conn, _) = connect_of(&drain(&mut e)).unwrap();
    e.handle_ws_open(1.0, conn, Vec::new());
    drain(&mut e);
    e.handle_ws_text(2.0, conn, &run_error("unauthorized"));
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::Disconnect { conn }), "{acts:?}");
    let (conn2, _) = connect_of(&acts).expect("refreshed at once, without a backoff wait");
    assert!(conn2 > conn);
    e.handle_ws_open(3.0, conn2, Vec::new());
    assert_eq!(subscribes(&drain(&mut e)).len(), 1, "subscribes again");
    e.handle_ws_text(4.0, conn2, &run_error("unauthorized"));
    let s = e.status(4.0);
    assert_eq!(s.connection, Connection::Failed, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("authorized"),
        "{s:?}"
    );
    assert!(connect_of(&run_until(&mut e, 600_000.0)).is_none());
    assert_eq!(e.metrics().terminations.get("http_4xx"), Some(&2));
}

/// PROTOCOL §7: "when a subscribed run's token expires the server sends that
/// run an `unauthorized` error and stops its events, and the client
/// resubscribes with fresh headers"; "a success in between re-arms the
/// retry, so each expiry gets one refresh". Each expiry resubscribes from the
/// cursor at once; `subscribed` re-arms the refresh.
#[test]
fn a02_websocket_token_expiry_mid_stream_resubscribes_from_the_cursor() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let mut conn = ws_open(&mut e, 1.0);
    let mut now = 1.0;
    for expiry in 1..=3u64 {
        let ev = envelope(
            expiry,
            "worker.started",
            json!({"worker_id": format!("w{expiry}")}),
        );
        e.handle_ws_text(now, conn, &format!(r#"{{"op":"event","event":{ev}}}"#));
        assert_eq!(e.cursor(), expiry);
        now += 60_000.0;
        e.handle_ws_text(now, conn, &run_error("unauthorized"));
        let acts = drain(&mut e);
        let (c, from) = connect_of(&acts)
            .unwrap_or_else(|| panic!("expiry {expiry}: no refresh: {:?}", e.status(now)));
        assert_eq!(from, expiry, "resumes from its cursor");
        e.handle_ws_open(now + 1.0, c, Vec::new());
        let subs = subscribes(&drain(&mut e));
        assert_eq!(subs.len(), 1);
        assert!(
            subs[0].contains(&format!(r#""last_event_id":{expiry}"#)),
            "{}",
            subs[0]
        );
        e.handle_ws_text(
            now + 2.0,
            c,
            &format!(
                r#"{{"op":"subscribed","run_id":"run_T","replay_from":{}}}"#,
                expiry + 1
            ),
        );
        conn = c;
        assert_eq!(
            e.status(now + 2.0).connection,
            Connection::Open,
            "expiry {expiry}"
        );
    }
}

/// PROTOCOL §2b: `forbidden`, `not_found`, `bad_request`, `finished` are
/// "final: never retried"; §7: 403 is "Final, never retried". A run refused
/// `forbidden` or `bad_request` ends `failed` with the reason, as a 403 or a
/// 404 does. (`forbidden` and `bad_request` were retried for ever.)
#[test]
fn a03_websocket_forbidden_not_found_and_bad_request_are_final() {
    for (code, shown) in [
        ("forbidden", "forbidden"),
        ("not_found", "not found"),
        ("bad_request", "bad request"),
    ] {
        let mut e = Engine::new(ws_cfg(), [1, 1], None);
        e.start(0.0);
        let conn = ws_open(&mut e, 1.0);
        drain(&mut e);
        e.handle_ws_text(2.0, conn, &run_error(code));
        let acts = run_until(&mut e, 600_000.0);
        assert!(acts.contains(&Action::Disconnect { conn }), "{code}");
        assert!(connect_of(&acts).is_none(), "{code}: retried: {acts:?}");
        let s = e.status(600_000.0);
        assert_eq!(s.connection, Connection::Failed, "{code}: {s:?}");
        assert!(
            s.last_error.as_deref().unwrap_or("").contains(shown),
            "{code}: {s:?}"
        );
        assert_eq!(e.metrics().terminations.get("http_4xx"), Some(&1), "{code}");
    }
}

/// PROTOCOL §2b: `finished` is final, never retried; it is the socket's
/// HTTP 204 ("run finished and nothing to replay": the client stops, and a
/// state that is not finished asks the snapshot endpoint, see r12).
#[test]
fn a04_websocket_finished_ends_the_stream_like_a_204() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    drain(&mut e);
    e.handle_ws_text(2.0, conn, &run_error("finished"));
    let acts = drain(&mut e);
    assert!(acts.contains(&Action::Disconnect { conn }), "{acts:?}");
    assert!(acts.contains(&Action::FetchSnapshot), "{acts:?}");
    assert_eq!(e.status(2.0).connection, Connection::Closed);
    assert_eq!(e.metrics().terminations.get("no_content"), Some(&1));
    assert!(connect_of(&run_until(&mut e, 600_000.0)).is_none());
    assert_eq!(e.status(600_000.0).connection, Connection::Closed);
}

/// PROTOCOL §2b: `unavailable` is "retried with backoff, like a 5xx"; a code
/// the contract does not name is retried with backoff as before (a protocol
/// error): neither is final.
#[test]
fn a05_websocket_unavailable_and_unknown_codes_are_retried_with_backoff() {
    for (code, termination) in [
        ("unavailable", "http_5xx"),
        ("overloaded", "protocol_error"),
    ] {
        let mut e = Engine::new(ws_cfg(), [1, 1], None);
        e.start(0.0);
        let conn = ws_open(&mut e, 1.0);
        drain(&mut e);
        e.handle_ws_text(2.0, conn, &run_error(code));
        let s = e.status(2.0);
        assert_eq!(s.connection, Connection::Reconnecting, "{code}: {s:?}");
        assert!(s.retry_in_ms.is_some(), "{code}: {s:?}");
        assert_eq!(
            e.metrics().terminations.get(termination),
            Some(&1),
            "{code}"
        );
        assert!(next_connect(&mut e, 2.0, 60_000.0).is_some(), "{code}");
    }
}

/// PROTOCOL §7: a refusal is "for that run alone". An `error` naming another
/// run (one socket carries many runs) leaves this one open. (Any `error`
/// without a `client_request_id` was taken as this run's.)
#[test]
fn a06_a_websocket_error_naming_another_run_is_not_ours() {
    let mut e = Engine::new(ws_cfg(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    drain(&mut e);
    for code in [
        "forbidden",
        "unauthorized",
        "not_found",
        "finished",
        "unavailable",
    ] {
        e.handle_ws_text(
            2.0,
            conn,
            &json!({"op": "error", "run_id": "run_other", "code": code, "message": "x"})
                .to_string(),
        );
    }
    let acts = run_until(&mut e, 4_000.0);
    assert!(!acts.contains(&Action::Disconnect { conn }), "{acts:?}");
    assert_eq!(e.status(4_000.0).connection, Connection::Open);
    assert!(
        e.metrics().terminations.is_empty(),
        "{:?}",
        e.metrics().terminations
    );
}

/// The `client_request_id`s of the sends whose headers the engine asked for.
fn headers_asked(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WsSendHeaders {
                client_request_id, ..
            } => Some(client_request_id.clone()),
            _ => None,
        })
        .collect()
}

/// A new page (seed `seed`) from `e`'s stored record with config `c`,
/// started at 0 and open: the send frames it writes (or headers it asks for).
fn reloaded_ws_sends(e: &Engine, c: Config, seed: u64) -> (Engine, Vec<String>) {
    let record = e.storage_record();
    let mut next = Engine::new(c, [seed, seed], Some(&record));
    next.start(0.0);
    ws_open(&mut next, 1.0);
    let acts = run_until(&mut next, 60_000.0);
    let mut out = ws_sends(&acts);
    out.extend(headers_asked(&acts));
    (next, out)
}

/// PROTOCOL §2b / §7 for a send: `unauthorized` = "refresh headers once"
/// (the `headers` function is asked again for that send at once), then
/// final: the send fails, leaves the outbox and, at once, the stored record
/// (a reload does not send it again). (It was retried with backoff for ever.)
#[test]
fn a07_websocket_send_unauthorized_gets_one_refreshed_retry_then_fails() {
    let mut c = ws_cfg();
    c.headers_per_send = true;
    let mut e = Engine::new(c.clone(), [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 1.0);
    drain(&mut e);
    let crid = e.send(2.0, "hi").unwrap();
    assert_eq!(headers_asked(&drain(&mut e)), vec![crid.clone()]);
    e.handle_ws_send_headers(2.5, conn, &crid, Ok(Vec::new()));
    assert_eq!(ws_sends(&drain(&mut e)).len(), 1);
    e.handle_ws_text(3.0, conn, &send_error("unauthorized", &crid));
    assert_eq!(
        headers_asked(&drain(&mut e)),
        vec![crid.clone()],
        "headers asked again at once"
    );
    assert_ne!(e.state().messages[0].status, MessageStatus::Failed);
    e.handle_ws_send_headers(3.5, conn, &crid, Ok(Vec::new()));
    assert_eq!(ws_sends(&drain(&mut e)).len(), 1);
    e.handle_ws_text(4.0, conn, &send_error("unauthorized", &crid));
    let acts = drain(&mut e);
    assert_eq!(e.state().messages[0].status, MessageStatus::Failed);
    assert!(persisted(&acts), "the record drops it at once: {acts:?}");
    let later = run_until(&mut e, 120_000.0);
    assert!(headers_asked(&later).is_empty() && ws_sends(&later).is_empty());
    let (next, sent) = reloaded_ws_sends(&e, c, 2);
    assert!(sent.is_empty(), "sent again after a reload: {sent:?}");
    assert_eq!(next.state().messages[0].status, MessageStatus::Failed);
}

/// PROTOCOL §2b: `forbidden`, `not_found`, `bad_request`, `finished` are
/// final; §7: "a send … answered 403 (or 404) is dropped from the outbox and
/// from the stored record, and shown as failed". (`forbidden` and `finished`
/// were retried for ever; a final failure reached storage only at the next
/// throttled write, so a reload right after it sent the refused send again.)
#[test]
fn a08_websocket_send_refusals_are_final_and_leave_the_record() {
    for code in ["forbidden", "not_found", "bad_request", "finished"] {
        let mut e = Engine::new(ws_cfg(), [1, 1], None);
        e.start(0.0);
        let conn = ws_open(&mut e, 1.0);
        drain(&mut e);
        let crid = e.send(2.0, "hi").unwrap();
        assert_eq!(ws_sends(&drain(&mut e)).len(), 1);
        e.handle_ws_text(3.0, conn, &send_error(code, &crid));
        let acts = drain(&mut e);
        assert_eq!(
            e.state().messages[0].status,
            MessageStatus::Failed,
            "{code}"
        );
        assert!(persisted(&acts), "{code}: not stored at once: {acts:?}");
        assert!(
            e.status(3.0).last_error.unwrap_or_default().contains(code),
            "{code}"
        );
        assert_eq!(e.status(3.0).connection, Connection::Open, "{code}");
        assert!(ws_sends(&run_until(&mut e, 120_000.0)).is_empty(), "{code}");
        let (next, sent) = reloaded_ws_sends(&e, ws_cfg(), 2);
        assert!(
            sent.is_empty(),
            "{code}: sent again after a reload: {sent:?}"
        );
        assert_eq!(next.state().messages[0].status, MessageStatus::Failed);
    }
}

/// PROTOCOL §2b: `unavailable` is retried with backoff; so is a code the
/// contract does not name (not a refusal): the send is written again later.
#[test]
fn a09_websocket_send_unavailable_and_unknown_codes_are_retried() {
    for code in ["unavailable", "overloaded"] {
        let mut e = Engine::new(ws_cfg(), [1, 1], None);
        e.start(0.0);
        let conn = ws_open(&mut e, 1.0);
        drain(&mut e);
        let crid = e.send(2.0, "hi").unwrap();
        drain(&mut e);
        e.handle_ws_text(3.0, conn, &send_error(code, &crid));
        assert!(ws_sends(&drain(&mut e)).is_empty(), "{code}: not at once");
        assert_ne!(
            e.state().messages[0].status,
            MessageStatus::Failed,
            "{code}"
        );
        let mut now = 3.0;
        let mut again = Vec::new();
        while again.is_empty() && now < 60_000.0 {
            now = e.poll_timeout().unwrap();
            e.handle_timeout(now);
            let acts = drain(&mut e);
            if acts
                .iter()
                .any(|a| matches!(a, Action::WsSend { text, .. } if text.contains("ping")))
            {
                e.handle_ws_text(now, conn, r#"{"op":"pong","t":1}"#);
            }
            again = ws_sends(&acts);
        }
        assert_eq!(again.len(), 1, "{code}: written again after the backoff");
        assert!(again[0].contains(&crid));
    }
}

/// PROTOCOL §7 on a fetch stream: "two consecutive 401s are final (a
/// success in between re-arms the retry, so each expiry gets one refresh)".
#[test]
fn a10_fetch_stream_each_401_expiry_gets_one_refresh() {
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 401, None, false);
    let (c, _) = connect_of(&drain(&mut e)).expect("refreshed at once");
    e.handle_response(2.0, c, 200, None, true);
    e.handle_bytes(3.0, c, &sse_frame(&envelope(1, "run.started", json!({}))));
    // The token expires an hour later: the stream drops, and the resume is refused.
    e.handle_closed(3_600_000.0, c, CloseCause::Network);
    let (c, from, t) = next_connect(&mut e, 3_600_000.0, 60_000.0).unwrap();
    assert_eq!(from, 1);
    e.handle_response(t + 1.0, c, 401, None, false);
    let (c, _) = connect_of(&drain(&mut e)).expect("the new expiry gets its refresh");
    e.handle_response(t + 2.0, c, 401, None, false);
    let s = e.status(t + 2.0);
    assert_eq!(s.connection, Connection::Failed, "{s:?}");
    assert!(connect_of(&run_until(&mut e, t + 600_000.0)).is_none());
    // 403, 404, 410: final, never retried.
    for status in [403u16, 404, 410] {
        let (mut e, conn) = connecting(cfg(), [1, 1]);
        e.handle_response(1.0, conn, status, None, false);
        assert_eq!(e.status(1.0).connection, Connection::Failed, "{status}");
        assert!(
            connect_of(&run_until(&mut e, 600_000.0)).is_none(),
            "{status}"
        );
    }
}

/// PROTOCOL §7: "a send … answered 403 (or 404) is dropped from the outbox
/// and from the stored record, and shown as failed". The failure is stored at
/// once (as the send itself was), so a reload right after it does not POST
/// the refused send again. (The write waited for the next throttled tick.)
#[test]
fn a11_http_send_403_or_404_is_final_and_leaves_the_record_at_once() {
    for status in [403u16, 404] {
        let (mut e, _) = open(cfg(), [1, 1]);
        let crid = e.send(2.0, "hi").unwrap();
        assert_eq!(posted_ids(&mut e), vec![crid.clone()]);
        e.handle_send_result(
            3.0,
            &crid,
            SendResult {
                status: Some(status),
                ..SendResult::default()
            },
        );
        let acts = drain(&mut e);
        assert_eq!(
            e.state().messages[0].status,
            MessageStatus::Failed,
            "{status}"
        );
        assert!(persisted(&acts), "{status}: not stored at once: {acts:?}");
        let later = run_until(&mut e, 120_000.0);
        assert!(
            !later.iter().any(|a| matches!(a, Action::Post { .. })),
            "{status}: posted again"
        );
        let mut next = reloaded(&e, 2);
        assert!(
            posted_ids(&mut next).is_empty(),
            "{status}: posted after a reload"
        );
        assert_eq!(next.state().messages[0].status, MessageStatus::Failed);
    }
}

/// PROTOCOL §7 for a send POST: a 401 gets one retry at once (the shell
/// calls `headers` for each POST), a second 401 is final.
#[test]
fn a12_http_send_401_gets_one_refreshed_retry_then_fails() {
    let (mut e, _) = open(cfg(), [1, 1]);
    let crid = e.send(2.0, "hi").unwrap();
    assert_eq!(posted_ids(&mut e), vec![crid.clone()]);
    let r401 = SendResult {
        status: Some(401),
        ..SendResult::default()
    };
    e.handle_send_result(3.0, &crid, r401.clone());
    assert_eq!(posted_ids(&mut e), vec![crid.clone()], "retried at once");
    assert_ne!(e.state().messages[0].status, MessageStatus::Failed);
    e.handle_send_result(4.0, &crid, r401);
    let acts = drain(&mut e);
    assert_eq!(e.state().messages[0].status, MessageStatus::Failed);
    assert!(persisted(&acts), "not stored at once: {acts:?}");
    assert!(!run_until(&mut e, 120_000.0)
        .iter()
        .any(|a| matches!(a, Action::Post { .. })));
}

/// PROTOCOL §2a End: a finished run "never reconnects", and its connection
/// stays `closed`. A socket opened after completion only for a send
/// subscribes to nothing, so a run-level `error` on it answers another
/// stream's subscription: it neither fails nor reopens this stream, and the
/// send is still delivered.
#[test]
fn a13_a_run_level_error_on_a_send_only_socket_is_not_ours() {
    for code in ["forbidden", "unauthorized", "unavailable"] {
        let (mut e, crid, conn2) = late_send_after_completion();
        e.handle_ws_open(4.0, conn2, Vec::new());
        drain(&mut e);
        e.handle_ws_text(4.5, conn2, &run_error(code));
        let acts = drain(&mut e);
        assert!(connect_of(&acts).is_none(), "{code}: {acts:?}");
        assert_eq!(e.status(4.5).connection, Connection::Closed, "{code}");
        e.handle_ws_text(
            5.0,
            conn2,
            &json!({"op": "ack", "client_request_id": crid, "message_id": "u1", "run_id": RUN})
                .to_string(),
        );
        assert_eq!(e.state().messages[0].status, MessageStatus::Sent, "{code}");
        assert_eq!(e.status(6.0).connection, Connection::Closed, "{code}");
    }
}

// ---- issue 27: cancel (PROTOCOL §8, API.md "A cancel is durable like a send") ------

fn cancel_cfg() -> Config {
    let mut c = cfg();
    c.can_cancel = true;
    c
}

/// The cancels the engine asked to POST: `(client_request_id, body)`.
fn cancel_posts(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PostCancel {
                client_request_id,
                body,
            } => Some((client_request_id.clone(), body.clone())),
            _ => None,
        })
        .collect()
}

fn ws_cancels(actions: &[Action]) -> Vec<serde_json::Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WsSend { text, .. } if text.contains("\"op\":\"cancel\"") => {
                Some(serde_json::from_str(text).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn cancel_state(e: &Engine, now: f64) -> Option<(String, Option<String>, CancelState)> {
    e.status(now)
        .cancel
        .map(|c| (c.client_request_id, c.reply_to, c.state))
}

fn status(code: u16) -> SendResult {
    SendResult {
        status: Some(code),
        ..SendResult::default()
    }
}

#[test]
fn c01_a_cancel_made_offline_is_queued_and_posted_when_online() {
    let (mut e, _) = open(cancel_cfg(), [1, 1]);
    e.handle_online(2.0, false);
    drain(&mut e);
    let crid = e.cancel(3.0, None, Some("user")).unwrap();
    let acts = drain(&mut e);
    assert!(cancel_posts(&acts).is_empty(), "posted offline: {acts:?}");
    assert!(persisted(&acts), "not stored at once");
    assert_eq!(
        cancel_state(&e, 3.0),
        Some((crid.clone(), None, CancelState::Queued))
    );
    e.handle_online(4.0, true);
    let posts = cancel_posts(&drain(&mut e));
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, crid);
    let body: serde_json::Value = serde_json::from_str(&posts[0].1).unwrap();
    assert_eq!(body, json!({"client_request_id": crid, "reason": "user"}));
    assert_eq!(cancel_state(&e, 4.0).unwrap().2, CancelState::Sent);
}

#[test]
fn c02_a_503_is_retried_with_the_same_id_then_accepted_then_done_when_the_run_ends() {
    let (mut e, conn) = open(cancel_cfg(), [1, 1]);
    let crid = e.cancel(2.0, None, None).unwrap();
    assert_eq!(cancel_posts(&drain(&mut e))[0].0, crid);
    e.handle_send_result(
        3.0,
        &crid,
        SendResult {
            status: Some(503),
            retry_after_ms: Some(2000.0),
            ..SendResult::default()
        },
    );
    assert_eq!(cancel_state(&e, 3.0).unwrap().2, CancelState::Queued);
    assert!(
        cancel_posts(&run_until(&mut e, 2002.0)).is_empty(),
        "before Retry-After"
    );
    let again = cancel_posts(&run_until(&mut e, 2003.0));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, crid, "the same client_request_id");
    e.handle_send_result(2004.0, &crid, status(202));
    assert_eq!(cancel_state(&e, 2004.0).unwrap().2, CancelState::Accepted);
    assert!(cancel_posts(&run_until(&mut e, 20_000.0)).is_empty());
    // The run keeps streaming: only the events change the run status.
    let ev = envelope(
        1,
        "run.cancel_requested",
        json!({"client_request_id": crid}),
    );
    e.handle_bytes(5001.0, conn, &sse_frame(&ev));
    assert!(e.state().cancel_requested);
    assert_eq!(cancel_state(&e, 5001.0).unwrap().2, CancelState::Accepted);
    let end = envelope(2, "run.completed", json!({"status": "cancelled"}));
    e.handle_bytes(5002.0, conn, &sse_frame(&end));
    assert_eq!(cancel_state(&e, 5002.0).unwrap().2, CancelState::Done);
}

#[test]
fn c03_a_cancel_is_stored_and_a_reload_sends_it_again_with_the_same_id() {
    let (mut e, _) = open(cancel_cfg(), [1, 1]);
    let crid = e.cancel(2.0, Some("s1"), Some("user")).unwrap();
    e.handle_send_result(3.0, &crid, SendResult::default()); // network error
    let record = e.storage_record();
    assert!(record.contains(&crid), "{record}");
    let mut next = Engine::new(cancel_cfg(), [2, 2], Some(&record));
    assert_eq!(
        cancel_state(&next, 0.0),
        Some((crid.clone(), Some("s1".into()), CancelState::Queued))
    );
    next.start(0.0);
    let posts = cancel_posts(&drain(&mut next));
    assert_eq!(posts.len(), 1, "sent again after the reload");
    assert_eq!(posts[0].0, crid);
    let body: serde_json::Value = serde_json::from_str(&posts[0].1).unwrap();
    assert_eq!(body["reply_to"], "s1");
    // Accepted: it leaves the record; a later reload sends nothing.
    next.handle_send_result(1.0, &crid, status(202));
    let mut third = Engine::new(cancel_cfg(), [3, 3], Some(&next.storage_record()));
    third.start(0.0);
    assert!(cancel_posts(&drain(&mut third)).is_empty());
    // A record of a page before cancels existed is still read.
    let old = r#"{"v":3,"cursor":4,"state":{"run_id":"run_T","status":"running","workers":[],"messages":[]},"parked":[]}"#;
    let e4 = Engine::new(cancel_cfg(), [4, 4], Some(old));
    assert_eq!(e4.cursor(), 4);
    assert!(e4.status(0.0).cancel.is_none());
}

#[test]
fn c04_a_409_settles_the_cancel_quietly_as_done() {
    let (mut e, _) = open(cancel_cfg(), [1, 1]);
    let crid = e.cancel(2.0, None, None).unwrap();
    drain(&mut e);
    e.handle_send_result(3.0, &crid, status(409));
    assert_eq!(cancel_state(&e, 3.0).unwrap().2, CancelState::Done);
    assert_eq!(e.status(3.0).last_error, None, "quietly");
    assert!(!e.storage_record().contains(&crid));
    assert!(cancel_posts(&run_until(&mut e, 20_000.0)).is_empty());
}

#[test]
fn c05_a_403_or_404_fails_the_cancel_and_drops_it_from_the_record_at_once() {
    for code in [403, 404] {
        let (mut e, _) = open(cancel_cfg(), [1, 1]);
        let crid = e.cancel(2.0, None, None).unwrap();
        drain(&mut e);
        e.handle_send_result(3.0, &crid, status(code));
        let acts = drain(&mut e);
        assert!(persisted(&acts), "{code}: not stored at once");
        assert_eq!(cancel_state(&e, 3.0).unwrap().2, CancelState::Failed);
        assert!(!e.storage_record().contains(&crid), "{code}");
        assert!(cancel_posts(&run_until(&mut e, 20_000.0)).is_empty());
        let mut next = Engine::new(cancel_cfg(), [2, 2], Some(&e.storage_record()));
        next.start(0.0);
        assert!(cancel_posts(&drain(&mut next)).is_empty(), "{code}");
    }
}

#[test]
fn c06_a_401_gets_one_refreshed_retry_then_fails() {
    let (mut e, _) = open(cancel_cfg(), [1, 1]);
    let crid = e.cancel(2.0, None, None).unwrap();
    drain(&mut e);
    e.handle_send_result(3.0, &crid, status(401));
    assert_eq!(cancel_posts(&drain(&mut e)).len(), 1, "retried at once");
    e.handle_send_result(4.0, &crid, status(401));
    assert_eq!(cancel_state(&e, 4.0).unwrap().2, CancelState::Failed);
    assert!(cancel_posts(&run_until(&mut e, 20_000.0)).is_empty());
}

#[test]
fn c07_over_websocket_the_cancel_op_is_resent_after_a_drop_and_acked() {
    let mut c = ws_cfg();
    c.can_cancel = true;
    let mut e = Engine::new(c, [1, 1], None);
    e.start(0.0);
    let conn = ws_open(&mut e, 0.0);
    drain(&mut e);
    let crid = e.cancel(2.0, Some("s1"), None).unwrap();
    let frames = ws_cancels(&drain(&mut e));
    assert_eq!(
        frames,
        vec![json!({"op": "cancel", "run_id": RUN, "client_request_id": crid, "reply_to": "s1"})]
    );
    assert_eq!(cancel_state(&e, 2.0).unwrap().2, CancelState::Sent);
    // The socket drops before the ack: only an ack proves delivery.
    e.handle_closed(3.0, conn, CloseCause::Network);
    assert_eq!(cancel_state(&e, 3.0).unwrap().2, CancelState::Queued);
    let (conn2, _, t) = next_connect(&mut e, 3.0, 60_000.0).unwrap();
    e.handle_ws_open(t, conn2, Vec::new());
    let again = ws_cancels(&drain(&mut e));
    assert_eq!(again.len(), 1, "sent again on the new socket");
    assert_eq!(again[0]["client_request_id"], crid.as_str());
    e.handle_ws_text(
        t + 1.0,
        conn2,
        &json!({"op": "ack", "client_request_id": crid, "run_id": RUN, "event_id": 7}).to_string(),
    );
    assert_eq!(cancel_state(&e, t + 1.0).unwrap().2, CancelState::Accepted);
    assert!(ws_cancels(&run_until(&mut e, t + 10_000.0)).is_empty());
    // A `finished` answer settles a cancel as done; `forbidden` / `not_found` fail it.
    let mut now = t + 10_000.0;
    for (code, want) in [
        ("finished", CancelState::Done),
        ("forbidden", CancelState::Failed),
        ("not_found", CancelState::Failed),
    ] {
        now += 1.0;
        let id = e.cancel(now, Some(code), None).unwrap();
        assert_eq!(ws_cancels(&drain(&mut e)).len(), 1, "{code}");
        e.handle_ws_text(
            now,
            conn2,
            &json!({"op": "error", "run_id": RUN, "client_request_id": id, "code": code, "message": "x"})
                .to_string(),
        );
        assert_eq!(cancel_state(&e, now).unwrap().2, want, "{code}");
        assert!(!e.storage_record().contains(&id), "{code}");
        assert!(
            ws_cancels(&run_until(&mut e, now + 5000.0)).is_empty(),
            "{code}"
        );
        assert_eq!(
            e.status(now).connection,
            Connection::Open,
            "{code}: the run is not refused"
        );
    }
}

#[test]
fn c08_a_reply_cancel_is_done_when_that_reply_ends_and_presses_repeat_one_request() {
    let (mut e, conn) = open(cancel_cfg(), [1, 1]);
    let s = e.send(2.0, "q").unwrap();
    drain(&mut e);
    let crid = e.cancel(3.0, Some(&s), None).unwrap();
    assert_eq!(e.cancel(3.1, Some(&s), None).unwrap(), crid, "one request");
    assert_eq!(cancel_posts(&drain(&mut e)).len(), 1);
    e.handle_send_result(4.0, &crid, status(202));
    assert_eq!(e.cancel(4.1, Some(&s), None).unwrap(), crid);
    assert_eq!(cancel_state(&e, 4.1).unwrap().2, CancelState::Accepted);
    let evs = [
        envelope(
            1,
            "message.created",
            json!({"message_id": "a", "role": "assistant", "reply_to": s}),
        ),
        envelope(
            2,
            "run.cancel_requested",
            json!({"client_request_id": crid, "reply_to": s}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(5.0, conn, &sse_frame(ev));
    }
    assert!(
        !e.state().cancel_requested,
        "a reply cancel is not run-wide"
    );
    assert_eq!(cancel_state(&e, 5.0).unwrap().2, CancelState::Accepted);
    let done = envelope(
        3,
        "message.completed",
        json!({"message_id": "a", "finish_reason": "cancelled"}),
    );
    e.handle_bytes(6.0, conn, &sse_frame(&done));
    assert_eq!(
        cancel_state(&e, 6.0),
        Some((crid.clone(), Some(s.clone()), CancelState::Done))
    );
    assert_eq!(e.status(6.0).activity, Activity::Idle);
    // A new press on a finished reply: done at once, nothing sent.
    let late = e.cancel(7.0, Some(&s), None).unwrap();
    assert_ne!(late, crid);
    assert_eq!(cancel_state(&e, 7.0).unwrap().2, CancelState::Done);
    assert!(cancel_posts(&drain(&mut e)).is_empty());
}

#[test]
fn c09_a_cancel_unanswered_when_its_run_ends_is_done_and_leaves_the_record() {
    let (mut e, conn) = open(cancel_cfg(), [1, 1]);
    e.handle_online(1.5, false);
    let crid = e.cancel(2.0, None, None).unwrap();
    drain(&mut e);
    let end = envelope(1, "run.completed", json!({"status": "cancelled"}));
    e.handle_online(3.0, true);
    let (conn2, _, t) = next_connect(&mut e, 3.0, 60_000.0).unwrap();
    let _ = conn;
    e.handle_response(t, conn2, 200, None, true);
    e.handle_bytes(t, conn2, &sse_frame(&end));
    let _ = drain(&mut e);
    assert_eq!(cancel_state(&e, t).unwrap().0, crid);
    assert_eq!(cancel_state(&e, t).unwrap().2, CancelState::Done);
    assert!(!e.storage_record().contains(&crid));
    // A late answer changes nothing.
    e.handle_send_result(t + 1.0, &crid, status(202));
    assert_eq!(cancel_state(&e, t + 1.0).unwrap().2, CancelState::Done);
}

#[test]
fn c10_cancel_needs_a_target_and_an_open_stream() {
    let mut e = Engine::new(cfg(), [1, 1], None);
    assert_eq!(e.cancel(0.0, None, None), Err(EngineError::NoCancelTarget));
    let mut e = Engine::new(cancel_cfg(), [1, 1], None);
    e.close(0.0);
    assert_eq!(e.cancel(0.0, None, None), Err(EngineError::Closed));
}

// ---- issue 29: a worker's second job survives a refresh and a snapshot (PROTOCOL §6 `job_ids`) ----

/// Job-only events of both of w1's jobs, after the mappings were learned elsewhere.
fn job_only_events(first_id: u64) -> [String; 2] {
    [
        envelope(
            first_id,
            "tool.completed",
            json!({"job_id": "j1", "tool_call_id": "t1", "status": "ok"}),
        ),
        envelope(
            first_id + 1,
            "worker.completed",
            json!({"job_id": "j2", "status": "succeeded"}),
        ),
    ]
}

/// Both jobs of w1 were applied at once (nothing parked, no second worker).
fn assert_both_jobs_applied(e: &Engine) {
    assert_eq!(e.parked(), 0, "a job-only event was parked");
    let w = &e.state().workers;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].status, WorkerStatus::Succeeded, "{w:?}");
    assert_eq!(w[0].tools.len(), 1, "{w:?}");
    assert_eq!(
        w[0].tools[0].status,
        runstream::core::state::ToolStatus::Ok,
        "{w:?}"
    );
}

/// PROTOCOL §6: "`job_ids` … lists every job the worker was given, so that a
/// client restoring from … a stored record still maps job-only events of a
/// worker's earlier or later jobs". The reducer keeps them in assignment
/// order with `job_id` the latest; the stored record carries them; after a
/// refresh, job-only events of the first and of the second job apply at once.
/// (The record held one `job_id` per worker: the second job's events were
/// parked until the run's end.)
#[test]
fn i29_a_workers_second_job_survives_a_refresh() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let evs = [
        envelope(
            1,
            "worker.started",
            json!({"worker_id": "w1", "job_id": "j1"}),
        ),
        envelope(
            2,
            "worker.job_assigned",
            json!({"worker_id": "w1", "job_id": "j2"}),
        ),
        envelope(
            3,
            "tool.started",
            json!({"worker_id": "w1", "tool_call_id": "t1", "name": "fetch"}),
        ),
    ];
    for ev in &evs {
        e.handle_bytes(2.0, conn, &sse_frame(ev));
    }
    let w = &e.state().workers[0];
    assert_eq!(w.job_ids, ["j1", "j2"]);
    assert_eq!(w.job_id.as_deref(), Some("j2"), "job_id is the latest job");
    e.persist_now(3.0);
    assert!(persisted(&drain(&mut e)));
    let mut e2 = reloaded(&e, 2);
    assert_eq!(e2.state().workers[0].job_ids, ["j1", "j2"]);
    let (conn2, from) = connect_of(&drain(&mut e2)).unwrap();
    assert_eq!(from, 3);
    e2.handle_response(1.0, conn2, 200, None, true);
    for ev in &job_only_events(4) {
        e2.handle_bytes(2.0, conn2, &sse_frame(ev));
    }
    assert_both_jobs_applied(&e2);
}

/// The same through a `snapshot` event (§3, the shape of §6): a snapshot
/// whose worker lists `job_ids` maps both jobs; one from a server that
/// omits `job_ids` maps its `job_id` alone (and keeps it among `job_ids`).
#[test]
fn i29_a_snapshot_carries_every_job_mapping() {
    let snapshot = |worker: serde_json::Value| {
        json!({"event_id": 3, "run_id": RUN, "type": "snapshot",
            "timestamp": "2026-11-22T12:00:00Z",
            "payload": {"state": {"run_id": RUN, "cursor": 3, "status": "running",
                "workers": [worker], "messages": []}}})
        .to_string()
    };
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&snapshot(json!({"worker_id": "w1", "job_id": "j2",
            "job_ids": ["j1", "j2"], "status": "running",
            "tools": [{"tool_call_id": "t1", "name": "fetch", "status": "running"}]}))),
    );
    assert_eq!(e.metrics().protocol_errors, 0);
    assert_eq!(e.state().workers[0].job_ids, ["j1", "j2"]);
    for ev in &job_only_events(4) {
        e.handle_bytes(3.0, conn, &sse_frame(ev));
    }
    assert_both_jobs_applied(&e);

    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&snapshot(
            json!({"worker_id": "w1", "job_id": "j1", "status": "running"}),
        )),
    );
    assert_eq!(e.state().workers[0].job_ids, ["j1"]);
    e.handle_bytes(
        3.0,
        conn,
        &sse_frame(&envelope(
            4,
            "worker.completed",
            json!({"job_id": "j1", "status": "succeeded"}),
        )),
    );
    assert_eq!(e.parked(), 0);
    assert_eq!(e.state().workers[0].status, WorkerStatus::Succeeded);

    // Not an array of strings: the snapshot is invalid (a counted protocol error).
    let (mut e, conn) = open(cfg(), [1, 1]);
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&snapshot(
            json!({"worker_id": "w1", "job_ids": ["j1", 2], "status": "running"}),
        )),
    );
    assert_eq!(e.metrics().protocol_errors, 1);
    assert!(e.state().workers.is_empty());
}

/// `job_ids` is bounded (`MAX_JOBS_PER_WORKER`, oldest dropped with its
/// mapping): a worker given more jobs keeps the latest, and the state
/// carries exactly the mappings it can restore.
#[test]
fn i29_job_ids_are_bounded_per_worker() {
    use runstream::core::state::MAX_JOBS_PER_WORKER;
    let (mut e, conn) = open(cfg(), [1, 1]);
    let n = MAX_JOBS_PER_WORKER as u64 + 2;
    for i in 1..=n {
        let ev = envelope(
            i,
            "worker.job_assigned",
            json!({"worker_id": "w1", "job_id": format!("j{i}")}),
        );
        e.handle_bytes(2.0, conn, &sse_frame(&ev));
    }
    let w = &e.state().workers[0];
    assert_eq!(w.job_ids.len(), MAX_JOBS_PER_WORKER);
    assert_eq!(w.job_ids.first().map(String::as_str), Some("j3"));
    assert_eq!(w.job_id, Some(format!("j{n}")));
    // j1's mapping went with it: its job-only event waits (parked); j3's applies.
    let ev = |id: u64, job: &str| {
        envelope(
            id,
            "tool.started",
            json!({"job_id": job, "tool_call_id": format!("t_{job}"), "name": "x"}),
        )
    };
    e.handle_bytes(3.0, conn, &sse_frame(&ev(n + 1, "j1")));
    assert_eq!(e.parked(), 1);
    e.handle_bytes(3.0, conn, &sse_frame(&ev(n + 2, "j3")));
    assert_eq!(e.parked(), 1);
    assert_eq!(e.state().workers[0].tools.len(), 1);
}

// ---- issue 29: a message role outside PROTOCOL §4's four, in a snapshot ------------

/// A §6 state whose one message has role `role`.
fn state_with_role(role: &str) -> serde_json::Value {
    json!({"run_id": RUN, "cursor": 3, "status": "running", "workers": [],
        "messages": [{"message_id": "m1", "role": role, "content": "hi", "status": "completed"}]})
}

/// PROTOCOL §4 types `role` as `"user"|"assistant"|"system"|"tool"`; a
/// `message.created` with another role is a counted protocol error and is
/// not applied. The same role in a snapshot (a `snapshot` event, or the
/// snapshot endpoint's body) is the same error: counted, the state is not
/// replaced. (It was kept as an untyped string, so the JS `role` union lied.)
#[test]
fn i29_a_role_outside_the_union_in_a_snapshot_is_a_counted_protocol_error() {
    let (mut e, conn) = open(cfg(), [1, 1]);
    let snap = |role: &str| {
        json!({"event_id": 3, "run_id": RUN, "type": "snapshot",
            "timestamp": "2026-11-22T12:00:00Z", "payload": {"state": state_with_role(role)}})
        .to_string()
    };
    e.handle_bytes(2.0, conn, &sse_frame(&snap("robot")));
    assert_eq!(e.metrics().protocol_errors, 1);
    assert!(e.state().messages.is_empty());
    assert_eq!(e.cursor(), 0);
    // Like in an event.
    e.handle_bytes(
        2.0,
        conn,
        &sse_frame(&envelope(
            1,
            "message.created",
            json!({"message_id": "m0", "role": "robot"}),
        )),
    );
    assert_eq!(e.metrics().protocol_errors, 2);
    assert!(e.state().messages.is_empty());
    // Each of the four is accepted.
    for (i, role) in ["user", "assistant", "system", "tool"].iter().enumerate() {
        let (mut e, conn) = open(cfg(), [1, 1]);
        e.handle_bytes(2.0, conn, &sse_frame(&snap(role)));
        assert_eq!(e.metrics().protocol_errors, 0, "{i}: {role}");
        assert_eq!(e.state().messages[0].role.as_str(), *role);
    }

    // The snapshot endpoint's body.
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 204, None, true);
    assert!(drain(&mut e).contains(&Action::FetchSnapshot));
    let body = json!({"run_id": RUN, "event_id": 3, "state": state_with_role("robot")});
    e.handle_snapshot(2.0, Ok(&body.to_string()));
    assert_eq!(e.metrics().protocol_errors, 1);
    assert!(e.state().messages.is_empty());
    // An HTTP failure of the endpoint is not a protocol error.
    let (mut e, conn) = connecting(cfg(), [1, 1]);
    e.handle_response(1.0, conn, 204, None, true);
    drain(&mut e);
    e.handle_snapshot(2.0, Err("HTTP 503".into()));
    assert_eq!(e.metrics().protocol_errors, 0);
}
