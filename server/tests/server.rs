//! The reference server's own tests over real loopback HTTP and WebSocket,
//! each run on both stores: memory and a real `redis-server` (skipped, with a
//! message, only where redis-server is not installed).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use runstream::core::envelope::decode_envelope;
use runstream::core::state::{Parked, RunState};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{create, http, http_for, ids, sse_frames, Backend};

async fn replay_semantics_headers_query_and_statuses(b: Backend) {
    let addr = b.server().await;
    let run = create(&addr, json!({"seed": 5, "workers": 3, "instant": true})).await;
    let path = format!("/api/stream/runs/{run}");
    let (st, head, body) = http(&addr, "GET", &path, &[], None).await;
    assert_eq!(st, 200);
    let h = head.to_ascii_lowercase();
    assert!(h.contains("content-type: text/event-stream"));
    assert!(h.contains("cache-control: no-store"));
    assert!(h.contains("x-accel-buffering: no"));
    let all = ids(&sse_frames(&body));
    let n = all.len() as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "dense ids in order");
    assert!(String::from_utf8_lossy(&body).contains(&format!("id: {n}\nevent: run.completed\n")));
    let (_, _, b) = http(&addr, "GET", &path, &[("Last-Event-ID", "5")], None).await;
    assert_eq!(ids(&sse_frames(&b)), (6..=n).collect::<Vec<_>>());
    let (_, _, b) = http(&addr, "GET", &format!("{path}?last_event_id=7"), &[], None).await;
    assert_eq!(ids(&sse_frames(&b)), (8..=n).collect::<Vec<_>>());
    let (st, _, _) = http(
        &addr,
        "GET",
        &path,
        &[("Last-Event-ID", &n.to_string())],
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _, _) = http(&addr, "GET", "/api/stream/runs/nope", &[], None).await;
    assert_eq!(st, 404);
    let (st, _, _) = http(&addr, "GET", &path, &[("Last-Event-ID", "abc")], None).await;
    assert_eq!(st, 400);
}

async fn pruned_log_resume_gets_a_snapshot_then_the_window_and_snapshot_endpoint_is_authoritative(
    b: Backend,
) {
    let addr = b.server().await;
    let run = create(&addr, json!({"seed": 9, "workers": 4, "instant": true})).await;
    let (st, _, _) = http(
        &addr,
        "POST",
        &format!("/api/admin/runs/{run}/prune"),
        &[],
        Some(r#"{"keep_from": 10}"#),
    )
    .await;
    assert_eq!(st, 204);
    let (_, _, b) = http(
        &addr,
        "GET",
        &format!("/api/stream/runs/{run}"),
        &[("Last-Event-ID", "3")],
        None,
    )
    .await;
    let frames = sse_frames(&b);
    let first: Value = serde_json::from_str(&frames[0]).unwrap();
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["event_id"], 9);
    let rest = ids(&frames[1..]);
    assert_eq!(rest[0], 10);
    // The snapshot's state equals replaying events 1..=9 (taken from a fresh identical run).
    let twin = create(&addr, json!({"seed": 9, "workers": 4, "instant": true})).await;
    let (_, _, tb) = http(&addr, "GET", &format!("/api/stream/runs/{twin}"), &[], None).await;
    let twin_frames = sse_frames(&tb);
    let mut s = RunState::new(&twin);
    let mut parked = Parked::default();
    let mut out = Vec::new();
    for f in &twin_frames[..9] {
        let e = decode_envelope(f, &twin).unwrap();
        s.apply(e.event_id, e.kind, &mut parked, 64, &mut out)
            .unwrap();
    }
    let mut snap_state = first["payload"]["state"].clone();
    snap_state["run_id"] = Value::from(twin.clone());
    assert_eq!(RunState::from_wire(snap_state).unwrap(), s);
    // Snapshot endpoint: state after every event.
    let (st, _, b) = http(
        &addr,
        "GET",
        &format!("/api/runs/{twin}/snapshot"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["event_id"].as_u64().unwrap(), twin_frames.len() as u64);
    assert_eq!(v["state"]["status"], "succeeded");
    assert!(v["state"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["status"] != "running"));
}

async fn sends_are_idempotent_on_client_request_id(b: Backend) {
    let addr = b.server().await;
    let body = r#"{"client_request_id":"c-1","content":"hello"}"#;
    let (st1, _, b1) = http(&addr, "POST", "/api/chat/s1/messages", &[], Some(body)).await;
    let (st2, _, b2) = http(&addr, "POST", "/api/chat/s1/messages", &[], Some(body)).await;
    assert_eq!((st1, st2), (202, 202));
    assert_eq!(b1, b2);
    let v: Value = serde_json::from_slice(&b1).unwrap();
    assert_eq!(v["run_id"], "s1");
    let (st, _, _) = http(
        &addr,
        "POST",
        "/api/chat/s1/messages",
        &[],
        Some(r#"{"client_request_id":"","content":"x"}"#),
    )
    .await;
    assert_eq!(st, 400);
    let (_, _, b) = http(&addr, "GET", "/api/runs/s1/snapshot", &[], None).await;
    let snap: Value = serde_json::from_slice(&b).unwrap();
    let users: Vec<_> = snap["state"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["client_request_id"], "c-1");
}

async fn chaos_tokens(addr: &str, chaos: Value) -> Vec<String> {
    let run = create(
        addr,
        json!({"seed": 3, "workers": 3, "instant": true, "chaos": chaos}),
    )
    .await;
    let (_, _, b) = http(addr, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    String::from_utf8_lossy(&b)
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let data = f.lines().find_map(|l| l.strip_prefix("data: "));
            match data.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
                Some(v) if v["run_id"] == run => format!("{}", v["event_id"]),
                Some(_) => "foreign".into(),
                None if f.starts_with("retry:") => f.to_owned(),
                None => "bad".into(),
            }
        })
        .collect()
}

async fn every_chaos_knob_does_what_it_says_reproducibly(b: Backend) {
    let addr = b.server().await;
    let dup = chaos_tokens(&addr, json!({"dup_rate": 1.0})).await;
    assert!(
        dup.chunks(2).all(|p| p.len() == 2 && p[0] == p[1]),
        "{dup:?}"
    );
    let drop = chaos_tokens(&addr, json!({"drop_every": 5})).await;
    assert_eq!(drop, vec!["1", "2", "3", "4", "5"]);
    let retry = chaos_tokens(&addr, json!({"retry_ms": 0, "drop_every": 1})).await;
    assert_eq!(retry, vec!["retry: 0", "1"]);
    let mixed = json!({"seed": 11, "dup_rate": 0.2, "reorder_rate": 0.3, "malformed_rate": 0.2});
    let a = chaos_tokens(&addr, mixed.clone()).await;
    let b = chaos_tokens(&addr, mixed).await;
    assert_eq!(a, b, "same seed, same schedule");
    assert!(a.iter().any(|t| t == "bad" || t == "foreign"), "{a:?}");
    let nums: Vec<u64> = a.iter().filter_map(|t| t.parse().ok()).collect();
    assert!(nums.windows(2).any(|w| w[1] < w[0]), "reordered: {nums:?}");
    let mut uniq = nums.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq,
        (1..=*uniq.last().unwrap()).collect::<Vec<_>>(),
        "nothing lost"
    );
    // Held first bytes: the response starts only after the hold.
    let t0 = std::time::Instant::now();
    chaos_tokens(&addr, json!({"hold_first_ms": 300})).await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

async fn live_stream_heartbeats_and_restart_drops_connections(b: Backend) {
    let addr = b.server().await;
    let run = create(&addr, json!({"kind": "chat", "run_id": "live1"})).await;
    let a2 = addr.clone();
    let reader =
        tokio::spawn(async move { http(&a2, "GET", "/api/stream/runs/live1", &[], None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, _, _) = http(&addr, "POST", "/api/admin/restart", &[], None).await;
    assert_eq!(st, 204);
    let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains(": hb"));
    let (_, _, b) = http(
        &addr,
        "GET",
        &format!("/api/admin/runs/{run}/stats"),
        &[],
        None,
    )
    .await;
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["connections_total"], 1);
    assert_eq!(v["connections_open"], 0);
}

async fn websocket_subscribe_resume_ping_send_and_errors(b: Backend) {
    let addr = b.server().await;
    let run = create(&addr, json!({"seed": 2, "workers": 2, "instant": true})).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": run, "last_event_id": 4}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(r#"{"op":"ping","t":42}"#))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2])).await.unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": "missing"}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"op": "send", "session_id": "s9", "client_request_id": "k1", "content": "hi"})
            .to_string(),
    ))
    .await
    .unwrap();
    let mut ops = Vec::new();
    let mut event_ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            break;
        };
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let op = v["op"].as_str().unwrap().to_owned();
        if op == "event" {
            event_ids.push(v["event"]["event_id"].as_u64().unwrap());
        }
        ops.push((op, v));
        if ops.iter().any(|(o, _)| o == "ack") && event_ids.last().is_some_and(|&i| i > 10) {
            break;
        }
    }
    let has = |op: &str, pred: &dyn Fn(&Value) -> bool| ops.iter().any(|(o, v)| o == op && pred(v));
    assert!(has("subscribed", &|v| v["replay_from"] == 5));
    assert!(has("pong", &|v| v["t"] == 42));
    assert!(has("error", &|v| v["code"] == "bad_request"));
    assert!(has("error", &|v| v["code"] == "not_found"
        && v["run_id"] == "missing"));
    assert!(has("ack", &|v| v["client_request_id"] == "k1"
        && v["run_id"] == "s9"));
    assert_eq!(event_ids[0], 5);
    assert!(event_ids.windows(2).all(|w| w[1] == w[0] + 1));
}

async fn latency_drop_rate_oversize_and_fail_first_knobs(b: Backend) {
    let addr = b.server().await;
    // Latency: every event waits latency_ms.
    let t0 = std::time::Instant::now();
    let lat = chaos_tokens(&addr, json!({"latency_ms": 20, "drop_every": 5})).await;
    assert_eq!(lat.len(), 5);
    assert!(t0.elapsed() >= Duration::from_millis(100));
    // drop_rate 1.0: the connection ends after the first event.
    assert_eq!(
        chaos_tokens(&addr, json!({"drop_rate": 1.0})).await,
        vec!["1"]
    );
    // Oversized frame first, then the events.
    let big = chaos_tokens(&addr, json!({"oversize_bytes": 200_000, "drop_every": 2})).await;
    // (The filler frame is valid JSON of another run; its point is its size.)
    assert_eq!(big, vec!["foreign", "1", "2"]);
    // fail_first: the first attempt gets the status and Retry-After, the next one streams.
    let run = create(&addr, json!({"seed": 1, "workers": 1, "instant": true, "chaos": {"fail_first": 1, "fail_status": 429, "retry_after_s": 3}})).await;
    let (st, head, _) = http(&addr, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    assert_eq!(st, 429);
    assert!(head.to_ascii_lowercase().contains("retry-after: 3"));
    let (st, _, body) = http(&addr, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    assert_eq!(st, 200);
    assert!(!sse_frames(&body).is_empty());
}

async fn websocket_binary_frame_knob_sends_one_binary_frame(b: Backend) {
    let addr = b.server().await;
    let run = create(
        &addr,
        json!({"seed": 2, "workers": 1, "instant": true, "chaos": {"binary_frame": true}}),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": run}).to_string(),
    ))
    .await
    .unwrap();
    let mut binary = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
        if m.is_binary() {
            binary += 1;
        }
    }
    assert_eq!(binary, 1);
}

/// `GET /api/admin/connections`.
async fn connections(addr: &str) -> Value {
    let (st, _, b) = http(addr, "GET", "/api/admin/connections", &[], None).await;
    assert_eq!(st, 200);
    serde_json::from_slice(&b).unwrap()
}

/// Polls `/api/admin/connections` until `ok` holds (5 s), returning the last answer.
async fn connections_until(addr: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = connections(addr).await;
        if ok(&v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_connections_counts_open_streams_and_sockets_by_kind(b: Backend) {
    let addr = b.server().await;
    let zero = json!({"open": 0, "total": 0});
    let v = connections(&addr).await;
    assert_eq!(v["sse_streams"], zero);
    assert_eq!(v["ws_sockets"], zero);
    assert_eq!(v["ws_subscriptions"], zero);
    assert_eq!(v["open"], 0);
    for id in ["conn1", "conn2"] {
        create(&addr, json!({"kind": "chat", "run_id": id})).await;
    }
    // Two live SSE streams (chat runs never finish) ...
    let readers: Vec<_> = ["conn1", "conn2"]
        .into_iter()
        .map(|id| {
            let a = addr.clone();
            tokio::spawn(async move {
                let path = format!("/api/stream/runs/{id}");
                http_for(&a, "GET", &path, &[], None, Duration::from_secs(30)).await
            })
        })
        .collect();
    // ... and one WebSocket with two runs (a repeated subscribe replaces the first).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    for id in ["conn1", "conn2", "conn1"] {
        ws.send(Message::text(
            json!({"op": "subscribe", "run_id": id}).to_string(),
        ))
        .await
        .unwrap();
    }
    let v = connections_until(&addr, |v| {
        v["sse_streams"]["open"] == 2 && v["ws_subscriptions"]["total"] == 3
    })
    .await;
    assert_eq!(v["sse_streams"], json!({"open": 2, "total": 2}), "{v}");
    assert_eq!(v["ws_sockets"], json!({"open": 1, "total": 1}), "{v}");
    assert_eq!(v["ws_subscriptions"], json!({"open": 2, "total": 3}), "{v}");
    assert_eq!(v["open"], 3, "connections the server holds: {v}");
    ws.send(Message::text(
        json!({"op": "unsubscribe", "run_id": "conn2"}).to_string(),
    ))
    .await
    .unwrap();
    let v = connections_until(&addr, |v| v["ws_subscriptions"]["open"] == 1).await;
    assert_eq!(v["ws_subscriptions"], json!({"open": 1, "total": 3}), "{v}");
    // Every client goes: the counts fall to zero, the totals stay.
    ws.close(None).await.unwrap();
    for r in readers {
        r.abort();
    }
    let v = connections_until(&addr, |v| {
        v["open"] == 0 && v["ws_subscriptions"]["open"] == 0
    })
    .await;
    assert_eq!(v["sse_streams"], json!({"open": 0, "total": 2}), "{v}");
    assert_eq!(v["ws_sockets"], json!({"open": 0, "total": 1}), "{v}");
    assert_eq!(v["ws_subscriptions"], json!({"open": 0, "total": 3}), "{v}");
    assert_eq!(v["open"], 0);
}

both_stores!(
    admin_connections_counts_open_streams_and_sockets_by_kind,
    replay_semantics_headers_query_and_statuses,
    pruned_log_resume_gets_a_snapshot_then_the_window_and_snapshot_endpoint_is_authoritative,
    sends_are_idempotent_on_client_request_id,
    every_chaos_knob_does_what_it_says_reproducibly,
    live_stream_heartbeats_and_restart_drops_connections,
    websocket_subscribe_resume_ping_send_and_errors,
    latency_drop_rate_oversize_and_fail_first_knobs,
    websocket_binary_frame_knob_sends_one_binary_frame,
);
