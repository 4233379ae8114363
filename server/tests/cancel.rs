//! PROTOCOL §8 on the gateway, both stores: a cancel is one
//! `run.cancel_requested` per target however many presses, tabs and
//! replicas; the answers come in §8's order (already asked → 202 with the
//! first id, before finished → 409); the producers stop (a task run ends
//! `cancelled` with fewer events than planned, a reply ends `cancelled` and
//! the next send is answered); with no producer the gateway ends the target
//! after the grace period; the WebSocket op answers like the route.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use runstream_server::{Replies, Settings};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{create, http, http_for, sse_frames, start_settings, Backend};

/// The run's whole log so far (an SSE read for `ms`).
async fn log(addr: &str, run: &str, ms: u64) -> Vec<Value> {
    let (_, _, b) = http_for(
        addr,
        "GET",
        &format!("/api/stream/runs/{run}"),
        &[],
        None,
        Duration::from_millis(ms),
    )
    .await;
    sse_frames(&b)
        .iter()
        .filter_map(|f| serde_json::from_str(f).ok())
        .collect()
}

fn of_type<'a>(log: &'a [Value], ty: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["type"] == ty).collect()
}

async fn cancel(addr: &str, run: &str, body: Value) -> (u16, Value) {
    let (st, _, b) = http(
        addr,
        "POST",
        &format!("/api/runs/{run}/cancel"),
        &[],
        Some(&body.to_string()),
    )
    .await;
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// Waits until `run`'s log satisfies `ok` (polled), or panics after `within`.
async fn until_log(
    addr: &str,
    run: &str,
    within: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let l = log(addr, run, 300).await;
        if ok(&l) {
            return l;
        }
        assert!(
            t0.elapsed() < within,
            "not within {within:?}: {:?}",
            l.iter().map(|e| e["type"].clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn settings(store: std::sync::Arc<dyn runstream_server::store::Store>, grace_ms: u64) -> Settings {
    Settings {
        cancel_grace_ms: grace_ms,
        ..Settings::dev(store, Replies::Local, 200)
    }
}

async fn a_task_run_stops_once_however_many_presses(b: Backend) {
    let addr = start_settings(settings(b.store().await, 30_000)).await;
    // 6 workers at speed 1: a few seconds of events.
    let run = create(&addr, json!({"seed": 3, "workers": 6, "speed": 1.0})).await;
    let full = runstream_server::scenario::task_script(3, 6).len();
    until_log(&addr, &run, Duration::from_secs(5), |l| l.len() >= 3).await;
    let t0 = Instant::now();
    let (st, first) = cancel(
        &addr,
        &run,
        json!({"client_request_id": "k1", "reason": "user pressed stop"}),
    )
    .await;
    assert_eq!(st, 202, "{first}");
    assert_eq!(first["run_id"], run.as_str());
    let id = first["event_id"].as_u64().unwrap();
    // The same press retried, and another tab's press: the same request.
    for crid in ["k1", "k2", "k3"] {
        let (st, v) = cancel(&addr, &run, json!({"client_request_id": crid})).await;
        assert_eq!((st, v["event_id"].as_u64()), (202, Some(id)), "{crid}: {v}");
    }
    let l = until_log(&addr, &run, Duration::from_secs(3), |l| {
        of_type(l, "run.completed").len() == 1
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the producer stopped within one event's delay, well within a heartbeat: {took:?}"
    );
    assert_eq!(of_type(&l, "run.cancel_requested").len(), 1);
    let req = of_type(&l, "run.cancel_requested")[0];
    assert_eq!(req["event_id"], id);
    assert_eq!(
        req["payload"],
        json!({"client_request_id": "k1", "reason": "user pressed stop"})
    );
    assert_eq!(
        of_type(&l, "run.completed")[0]["payload"]["status"],
        "cancelled"
    );
    assert!(
        l.len() < full + 1,
        "fewer events than the producer planned: {} of {full}",
        l.len() - 1
    );
    // Presses after the end: still the same request (already asked comes before finished).
    let (st, v) = cancel(&addr, &run, json!({"client_request_id": "k4"})).await;
    assert_eq!((st, v["event_id"].as_u64()), (202, Some(id)));
    let (st, _, body) = http(
        &addr,
        "GET",
        &format!("/api/runs/{run}/snapshot"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200);
    let snap: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(snap["state"]["status"], "cancelled");
    assert_eq!(snap["state"]["cancel_requested"], true);
}

async fn a_finished_run_answers_409_and_bad_bodies_400(b: Backend) {
    let addr = start_settings(settings(b.store().await, 30_000)).await;
    let run = create(&addr, json!({"seed": 4, "workers": 2, "instant": true})).await;
    let (st, v) = cancel(&addr, &run, json!({"client_request_id": "k1"})).await;
    assert_eq!(st, 409);
    assert_eq!(v["run_id"], run.as_str());
    assert!(
        ["succeeded", "failed"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    assert!(of_type(&log(&addr, &run, 300).await, "run.cancel_requested").is_empty());
    for body in [
        json!({}),
        json!({"client_request_id": ""}),
        json!({"client_request_id": "x", "extra": 1}),
        json!({"client_request_id": "x", "reply_to": ""}),
    ] {
        let (st, _) = cancel(&addr, &run, body.clone()).await;
        assert_eq!(st, 400, "{body}");
    }
    let (st, _) = cancel(&addr, "nope", json!({"client_request_id": "k"})).await;
    assert_eq!(st, 404);
}

async fn a_reply_cancel_stops_that_reply_and_the_next_send_is_answered(b: Backend) {
    let addr = start_settings(settings(b.store().await, 30_000)).await;
    let session = "chat_cancel_1";
    // "slow": a 2.6 s pause before the first token, then ~40 tokens.
    let send = |crid: &'static str, content: &'static str| {
        let addr = addr.clone();
        async move {
            let (st, _, _) = http(
                &addr,
                "POST",
                &format!("/api/chat/{session}/messages"),
                &[],
                Some(&json!({"client_request_id": crid, "content": content}).to_string()),
            )
            .await;
            assert_eq!(st, 202);
        }
    };
    send("s1", "tell me, but slow").await;
    let l = until_log(&addr, session, Duration::from_secs(5), |l| {
        l.iter().any(|e| e["payload"]["reply_to"] == "s1")
    })
    .await;
    let mid = l.iter().find(|e| e["payload"]["reply_to"] == "s1").unwrap()["payload"]["message_id"]
        .clone();
    let (st, v) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c1", "reply_to": "s1"}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let l = until_log(&addr, session, Duration::from_secs(4), |l| {
        l.iter()
            .any(|e| e["type"] == "message.completed" && e["payload"]["message_id"] == mid)
    })
    .await;
    let done = l
        .iter()
        .find(|e| e["type"] == "message.completed" && e["payload"]["message_id"] == mid)
        .unwrap();
    assert_eq!(done["payload"]["finish_reason"], "cancelled");
    assert!(
        of_type(&l, "run.completed").is_empty(),
        "a reply cancel leaves the chat run open"
    );
    let deltas = l
        .iter()
        .filter(|e| e["type"] == "message.delta" && e["payload"]["message_id"] == mid)
        .count();
    assert!(deltas < 10, "the reply stopped: {deltas} deltas");
    // The same reply again: the same request; the reply's end does not turn it into a 409.
    let (st, v2) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c2", "reply_to": "s1"}),
    )
    .await;
    assert_eq!((st, &v2["event_id"]), (202, &v["event_id"]));
    // The next send is answered normally.
    send("s2", "and now?").await;
    let l = until_log(&addr, session, Duration::from_secs(15), |l| {
        l.iter()
            .any(|e| e["type"] == "message.completed" && e["payload"]["finish_reason"] == "stop")
    })
    .await;
    assert_eq!(of_type(&l, "run.cancel_requested").len(), 1);
    // A reply cancel naming a send the run never logged: 425 (retried), nothing appended.
    let before = log(&addr, session, 300).await.len();
    let (st, _) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c9", "reply_to": "never-sent"}),
    )
    .await;
    assert_eq!(st, 425);
    assert_eq!(
        log(&addr, session, 300).await.len(),
        before,
        "a made-up reply_to appends nothing"
    );
    // A reply that already ended: 409 with its status.
    let (st, v) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c3", "reply_to": "s2"}),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["status"], "completed");
}

/// A producer that died (none was ever attached here): the gateway ends the
/// target after the grace period, so no spinner stays.
async fn without_a_producer_the_gateway_ends_the_target_after_the_grace(b: Backend) {
    let store = b.store().await;
    let addr = start_settings(settings(store.clone(), 400)).await;
    let session = "chat_nobody";
    // A chat run with a streaming reply whose producer is gone, and a send nobody answered.
    store
        .create(
            session,
            runstream_server::store::RunSpec {
                kind: runstream_server::store::RunKind::Chat,
                chaos: Default::default(),
                speed: 1.0,
                session_id: Some(session.into()),
            },
        )
        .await
        .unwrap();
    store
        .append(
            session,
            "message.created",
            json!({"message_id": "u1", "role": "user", "client_request_id": "s1", "content": "hi"}),
        )
        .await
        .unwrap();
    store
        .append(
            session,
            "message.created",
            json!({"message_id": "a1", "role": "assistant", "reply_to": "s1"}),
        )
        .await
        .unwrap();
    store
        .append(
            session,
            "message.delta",
            json!({"message_id": "a1", "delta": "hal"}),
        )
        .await
        .unwrap();
    store.append(session, "message.created", json!({"message_id": "u2", "role": "user", "client_request_id": "s2", "content": "again"})).await.unwrap();
    let (st, _) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c1", "reply_to": "s1"}),
    )
    .await;
    assert_eq!(st, 202);
    let (st, _) = cancel(
        &addr,
        session,
        json!({"client_request_id": "c2", "reply_to": "s2"}),
    )
    .await;
    assert_eq!(st, 202);
    let l = until_log(&addr, session, Duration::from_secs(3), |l| {
        l.iter()
            .filter(|e| e["type"] == "message.completed")
            .count()
            == 2
    })
    .await;
    let ends: Vec<_> = of_type(&l, "message.completed");
    assert!(
        ends.iter()
            .all(|e| e["payload"]["finish_reason"] == "cancelled"),
        "{ends:?}"
    );
    // The two grace timers run concurrently: their endings come in either order.
    assert!(
        ends.iter().any(|e| e["payload"]["message_id"] == "a1"),
        "{ends:?}"
    );
    // The reply that never started got an empty one, ended, naming its send.
    let started = l
        .iter()
        .find(|e| e["type"] == "message.created" && e["payload"]["reply_to"] == "s2")
        .expect("an empty reply to s2");
    assert_eq!(started["payload"]["role"], "assistant");
    assert!(of_type(&l, "run.completed").is_empty());
    // A run-wide cancel of a run with no producer: its streaming message and the run end.
    store
        .append(
            session,
            "message.created",
            json!({"message_id": "a3", "role": "assistant"}),
        )
        .await
        .unwrap();
    let (st, _) = cancel(&addr, session, json!({"client_request_id": "c3"})).await;
    assert_eq!(st, 202);
    let l = until_log(&addr, session, Duration::from_secs(3), |l| {
        !of_type(l, "run.completed").is_empty()
    })
    .await;
    let n = l.len();
    assert_eq!(l[n - 2]["type"], "message.completed");
    assert_eq!(l[n - 2]["payload"]["message_id"], "a3");
    assert_eq!(l[n - 1]["payload"], json!({"status": "cancelled"}));
    // The session has ended: a new send is 409 and nothing is appended
    // after run.completed.
    let send = json!({"client_request_id": "late", "content": "more"}).to_string();
    let path = format!("/api/chat/{session}/messages");
    let (st, _, b) = http(&addr, "POST", &path, &[], Some(&send)).await;
    assert_eq!(st, 409, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        log(&addr, session, 300).await.len(),
        n,
        "nothing appended after run.completed"
    );
}

async fn the_websocket_op_answers_like_the_route(b: Backend) {
    let addr = start_settings(settings(b.store().await, 30_000)).await;
    let live = create(&addr, json!({"seed": 9, "workers": 6, "speed": 0.5})).await;
    let done = create(&addr, json!({"seed": 9, "workers": 1, "instant": true})).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    let mut answer = async |op: Value| -> Value {
        ws.send(Message::text(op.to_string())).await.unwrap();
        loop {
            if let Message::Text(t) = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    let a = answer(json!({"op": "cancel", "run_id": live, "client_request_id": "w1"})).await;
    assert_eq!(a["op"], "ack", "{a}");
    assert_eq!(a["client_request_id"], "w1");
    assert_eq!(a["run_id"], live.as_str());
    let id = a["event_id"]
        .as_u64()
        .expect("a cancel's ack carries event_id");
    assert!(a.get("message_id").is_none());
    let again = answer(json!({"op": "cancel", "run_id": live, "client_request_id": "w2"})).await;
    assert_eq!(again["event_id"].as_u64(), Some(id));
    let http_press = cancel(&addr, &live, json!({"client_request_id": "h1"})).await;
    assert_eq!(
        http_press.1["event_id"].as_u64(),
        Some(id),
        "one request across transports"
    );
    let e = answer(json!({"op": "cancel", "run_id": done, "client_request_id": "w3"})).await;
    assert_eq!(
        (
            e["op"].as_str(),
            e["code"].as_str(),
            e["client_request_id"].as_str()
        ),
        (Some("error"), Some("finished"), Some("w3")),
        "{e}"
    );
    let e = answer(json!({"op": "cancel", "run_id": "nope", "client_request_id": "w4"})).await;
    assert_eq!(e["code"], "not_found", "{e}");
}

/// Behind two replicas on Redis: a cancel posted to one replica stops the
/// producer attached through the other.
async fn a_cancel_on_one_replica_stops_the_producer_of_the_other(b: Backend) {
    if b.redis.is_none() {
        return;
    }
    let r1 = start_settings(settings(b.store().await, 30_000)).await;
    let r2 = start_settings(settings(b.store().await, 30_000)).await;
    let run = create(&r1, json!({"seed": 5, "workers": 6, "speed": 1.0})).await;
    until_log(&r2, &run, Duration::from_secs(5), |l| l.len() >= 3).await;
    let (st, _) = cancel(&r2, &run, json!({"client_request_id": "x1"})).await;
    assert_eq!(st, 202);
    let l = until_log(&r1, &run, Duration::from_secs(3), |l| {
        !of_type(l, "run.completed").is_empty()
    })
    .await;
    assert_eq!(
        of_type(&l, "run.completed")[0]["payload"]["status"],
        "cancelled"
    );
    // The producer (on r1) ended it, long before the 30 s grace of r2.
    assert_eq!(of_type(&l, "run.cancel_requested").len(), 1);
}

/// The replica that took a cancel dies (SIGKILL) before the grace period
/// ends: another replica ends the target (the deadline is in the store).
async fn the_grace_outlives_the_replica_that_took_the_cancel(b: Backend) {
    if b.kind == support::Kind::Memory {
        return; // one process: nothing outlives it
    }
    let port = support::free_port();
    let mut a = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args([
            "--auth",
            "none",
            "--dev",
            "--replies",
            "none",
            "--cancel-grace-ms",
            "600",
        ])
        .args(["--store", &b.spec(), "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(a.stdout.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.contains("server.listening") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let a_addr = format!("127.0.0.1:{port}");
    // A chat session whose reply nobody will ever stream (--replies none).
    let (st, _, _) = http(
        &a_addr,
        "POST",
        "/api/chat/chat_orphan/messages",
        &[],
        Some(&json!({"client_request_id": "s1", "content": "hi"}).to_string()),
    )
    .await;
    assert_eq!(st, 202);
    let (st, _) = cancel(
        &a_addr,
        "chat_orphan",
        json!({"client_request_id": "c1", "reply_to": "s1"}),
    )
    .await;
    assert_eq!(st, 202);
    a.kill().await.unwrap();
    // Replica B, on the same store, ends the reply when the grace is over.
    let b_addr = start_settings(settings(b.store().await, 600)).await;
    let l = until_log(&b_addr, "chat_orphan", Duration::from_secs(5), |l| {
        l.iter().any(|e| {
            e["type"] == "message.completed" && e["payload"]["finish_reason"] == "cancelled"
        })
    })
    .await;
    let ends = of_type(&l, "message.completed");
    assert_eq!(ends.len(), 1, "ended once: {ends:?}");
}

both_stores!(
    the_grace_outlives_the_replica_that_took_the_cancel,
    a_task_run_stops_once_however_many_presses,
    a_finished_run_answers_409_and_bad_bodies_400,
    a_reply_cancel_stops_that_reply_and_the_next_send_is_answered,
    without_a_producer_the_gateway_ends_the_target_after_the_grace,
    the_websocket_op_answers_like_the_route,
    a_cancel_on_one_replica_stops_the_producer_of_the_other,
);

/// PROTOCOL §8's 409 for a finished reply is decided in the same atomic step as the
/// append (lua/cancel.lua), so replicas racing cannot both pass it: replica A's store
/// appends a reply's `message.completed` while replica B takes a cancel of that reply,
/// 200 times on one Redis; nothing is ever appended after the reply's end, and a 409
/// appends nothing at all.
#[tokio::test]
async fn a_reply_cancel_racing_the_reply_end_never_appends_after_it() {
    let Some(b) = Backend::new(support::Kind::Redis).await else {
        return;
    };
    let a = b.store().await;
    let b_addr = start_settings(Settings {
        cancel_grace_ms: 30_000,
        ..Settings::dev(b.store().await, Replies::None, 200)
    })
    .await;
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..200u64 {
        let run = format!("race_{i}");
        let (st, _, _) = http(
            &b_addr,
            "POST",
            &format!("/api/chat/{run}/messages"),
            &[],
            Some(&json!({"client_request_id": "s", "content": "hi"}).to_string()),
        )
        .await;
        assert_eq!(st, 202);
        a.append(
            &run,
            "message.created",
            json!({"message_id": "r", "role": "assistant", "reply_to": "s"}),
        )
        .await
        .unwrap();
        // The end lands somewhere inside the cancel's handling (0 to 4 ms in).
        let end = async {
            tokio::time::sleep(Duration::from_micros((i % 5) * 1000)).await;
            a.append(
                &run,
                "message.completed",
                json!({"message_id": "r", "finish_reason": "stop"}),
            )
            .await
            .unwrap();
        };
        let (_, (st, body)) = tokio::join!(
            end,
            cancel(
                &b_addr,
                &run,
                json!({"client_request_id": "c", "reply_to": "s"})
            )
        );
        let events: Vec<Value> = a
            .read(&run, 0)
            .await
            .unwrap()
            .unwrap()
            .events
            .iter()
            .map(|e| serde_json::from_str(e.get()).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        let ended = types
            .iter()
            .position(|t| *t == "message.completed")
            .unwrap();
        let asked = types.iter().position(|t| *t == "run.cancel_requested");
        match st {
            202 => {
                accepted += 1;
                assert!(asked.is_some_and(|n| n < ended), "round {i}: {types:?}");
            }
            409 => {
                refused += 1;
                assert_eq!(body["status"], "completed", "round {i}");
                assert_eq!(asked, None, "round {i}: a 409 appended {types:?}");
            }
            _ => panic!("round {i}: {st} {body}"),
        }
    }
    println!("# 200 races: {accepted} cancels accepted before the end, {refused} answered 409");
}

/// A reply cancel's grace ends a reply whatever it races: when the grace finds no reply
/// and an empty ended one is refused because a consumer started the reply meanwhile
/// (`reply_taken`), the reply now streaming is ended (PROTOCOL §8: "a stop always ends
/// and no spinner stays"). 100 rounds of the grace's ending against the reply's start,
/// each landing 0 to 4 ms apart: afterwards no reply to the send is streaming.
#[tokio::test]
async fn a_grace_ending_racing_the_reply_start_still_ends_the_reply() {
    for kind in [support::Kind::Memory, support::Kind::Redis] {
        let Some(b) = Backend::new(kind).await else {
            continue;
        };
        let store = b.store().await;
        let addr = start_settings(Settings {
            cancel_grace_ms: 30_000,
            ..Settings::dev(store.clone(), Replies::None, 200)
        })
        .await;
        for i in 0..100u64 {
            let run = format!("grace_race_{i}");
            let (st, _, _) = http(
                &addr,
                "POST",
                &format!("/api/chat/{run}/messages"),
                &[],
                Some(&json!({"client_request_id": "s", "content": "hi"}).to_string()),
            )
            .await;
            assert_eq!(st, 202);
            let start = async {
                tokio::time::sleep(Duration::from_micros((i % 5) * 1000)).await;
                // A consumer's start: refused (reply_taken) if the grace's ending came first.
                let _ = store
                    .append(
                        &run,
                        "message.created",
                        json!({"message_id": "r", "role": "assistant", "reply_to": "s"}),
                    )
                    .await;
            };
            let grace = runstream_server::cancel::end_target(
                store.clone(),
                &run,
                runstream_server::store::CancelTarget::Reply("s".into()),
            );
            let ((), ended) = tokio::join!(start, grace);
            ended.unwrap();
            let snap: Value = serde_json::from_slice(
                &http(
                    &addr,
                    "GET",
                    &format!("/api/runs/{run}/snapshot"),
                    &[],
                    None,
                )
                .await
                .2,
            )
            .unwrap();
            let replies: Vec<&Value> = snap["state"]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["reply_to"] == "s")
                .collect();
            assert!(!replies.is_empty(), "{kind:?} round {i}: {snap}");
            assert!(
                replies.iter().all(|m| m["status"] != "streaming"),
                "{kind:?} round {i}: a reply left streaming: {snap}"
            );
        }
    }
}
