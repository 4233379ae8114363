//! The publish API (SERVER.md §1) on both stores, and the binary's
//! production behaviour: it refuses to start without an auth choice, and
//! SIGTERM drains (SSE ends with a short `retry:`, WebSocket closes 1012,
//! the process exits).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use runstream_server::auth::AuthMode;
use runstream_server::{Limits, Replies, Settings};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{http, ids, sse_frames, start_settings, Backend};

const KEY: &str = "publish-key-of-the-publish-suite";

fn settings(store: Arc<dyn runstream_server::store::Store>) -> Settings {
    Settings {
        publish_key: Some(KEY.as_bytes().to_vec()),
        replies: Replies::None,
        auth: Arc::new(AuthMode::None),
        dev: false,
        limits: Limits::default(),
        ..Settings::dev(store, Replies::None, 200)
    }
}

async fn call(
    addr: &str,
    method: &str,
    path: &str,
    idem: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let mut h = vec![("Authorization", auth.as_str())];
    if let Some(k) = idem {
        h.push(("Idempotency-Key", k));
    }
    let body = body.map(|b| b.to_string());
    let (st, _, b) = http(addr, method, path, &h, body.as_deref()).await;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()));
    (st, v)
}

async fn log_ids(addr: &str, run: &str) -> Vec<u64> {
    let (_, _, b) = support::http_for(
        addr,
        "GET",
        &format!("/api/stream/runs/{run}"),
        &[],
        None,
        Duration::from_millis(600),
    )
    .await;
    ids(&sse_frames(&b))
}

fn batch(n: usize, title: &str) -> Value {
    let mut events = vec![json!({"type": "run.started", "payload": {"title": title}})];
    for i in 1..n {
        events.push(json!({"type": "worker.started", "payload": {"worker_id": format!("w{i}")}}));
    }
    json!({"events": events})
}

async fn batches_are_atomic_dense_and_idempotent(b: Backend) {
    let addr = start_settings(settings(b.store().await)).await;
    let (st, v) = call(
        &addr,
        "POST",
        "/api/publish/runs",
        None,
        Some(json!({"run_id": "pub1", "session_id": "s1"})),
    )
    .await;
    assert_eq!((st, &v), (201, &json!({"run_id": "pub1"})));
    let (st, v) = call(
        &addr,
        "POST",
        "/api/publish/runs",
        None,
        Some(json!({"run_id": "pub1"})),
    )
    .await;
    assert_eq!(
        (st, &v),
        (200, &json!({"run_id": "pub1"})),
        "a repeat is the same run"
    );
    let (st, v) = call(&addr, "POST", "/api/publish/runs", None, Some(json!({}))).await;
    assert_eq!(st, 201);
    assert!(
        v["run_id"].as_str().is_some_and(|r| !r.is_empty()),
        "a fresh id: {v}"
    );
    let path = "/api/publish/runs/pub1/events";
    let (st, v) = call(&addr, "POST", path, Some("k1"), Some(batch(3, "a"))).await;
    assert_eq!(
        (st, &v),
        (200, &json!({"first_event_id": 1, "last_event_id": 3}))
    );
    // A producer that timed out retries: the same ids, nothing appended.
    let (st, v) = call(&addr, "POST", path, Some("k1"), Some(batch(3, "a"))).await;
    assert_eq!(
        (st, &v),
        (200, &json!({"first_event_id": 1, "last_event_id": 3}))
    );
    assert_eq!(log_ids(&addr, "pub1").await, vec![1, 2, 3]);
    // The same key with another body: 422, nothing appended.
    let (st, _) = call(&addr, "POST", path, Some("k1"), Some(batch(2, "b"))).await;
    assert_eq!(st, 422);
    // Without a key: 400.
    let (st, _) = call(&addr, "POST", path, None, Some(batch(1, "c"))).await;
    assert_eq!(st, 400);
    // One invalid event: 400 naming it, nothing of the batch appended.
    let bad = json!({"events": [
        {"type": "worker.started", "payload": {"worker_id": "w9"}},
        {"type": "tool.started", "payload": {"worker_id": "w9", "name": "x"}},
    ]});
    let (st, v) = call(&addr, "POST", path, Some("k2"), Some(bad)).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("events[1]"), "{v}");
    for (what, body) in [
        (
            "unknown type",
            json!({"events": [{"type": "progress.tick", "payload": {}}]}),
        ),
        (
            "snapshot",
            json!({"events": [{"type": "snapshot", "payload": {"state": {}}}]}),
        ),
        (
            "payload not an object",
            json!({"events": [{"type": "run.started", "payload": 3}]}),
        ),
        ("empty", json!({"events": []})),
        (
            "a cancel request (the cancel route's alone)",
            json!({"events": [{"type": "run.cancel_requested", "payload": {"client_request_id": "x"}}]}),
        ),
        (
            "after run.completed",
            json!({"events": [{"type": "run.completed", "payload": {"status": "succeeded"}}, {"type": "run.started", "payload": {}}]}),
        ),
    ] {
        let (st, v) = call(&addr, "POST", path, Some(what), Some(body)).await;
        assert_eq!(st, 400, "{what}: {v}");
    }
    assert_eq!(
        log_ids(&addr, "pub1").await,
        vec![1, 2, 3],
        "nothing of a refused batch appended"
    );
    let (st, v) = call(
        &addr,
        "POST",
        path,
        Some("k3"),
        Some(json!({"events": [{"type": "run.completed", "payload": {"status": "succeeded"}}]})),
    )
    .await;
    assert_eq!(
        (st, &v),
        (200, &json!({"first_event_id": 4, "last_event_id": 4}))
    );
    let (st, _) = call(&addr, "POST", path, Some("k4"), Some(batch(1, "late"))).await;
    assert_eq!(st, 409, "a finished run takes nothing");
    // A retry of the batch that finished the run still answers its ids.
    let (st, v) = call(
        &addr,
        "POST",
        path,
        Some("k3"),
        Some(json!({"events": [{"type": "run.completed", "payload": {"status": "succeeded"}}]})),
    )
    .await;
    assert_eq!(
        (st, &v),
        (200, &json!({"first_event_id": 4, "last_event_id": 4}))
    );
    let (st, _) = call(
        &addr,
        "POST",
        "/api/publish/runs/nope/events",
        Some("k5"),
        Some(batch(1, "x")),
    )
    .await;
    assert_eq!(st, 404);
    // The published run's snapshot is the reducer's state of those events.
    let (st, _, body) = http(&addr, "GET", "/api/runs/pub1/snapshot", &[], None).await;
    assert_eq!(st, 200);
    let snap: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(snap["event_id"], 4);
    assert_eq!(snap["state"]["status"], "succeeded");
    assert_eq!(snap["state"]["workers"].as_array().unwrap().len(), 2);
}

/// One reply per send also inside one batch (the refusals see the batch's earlier events):
/// two `message.created` answering one send, or a delta after its reply's ending, refuse the
/// whole batch (409 `reply_taken`, nothing appended); a whole reply in one batch is taken.
async fn one_reply_per_send_inside_one_batch(b: Backend) {
    let addr = start_settings(settings(b.store().await)).await;
    let (st, _) = call(
        &addr,
        "POST",
        "/api/publish/runs",
        None,
        Some(json!({"run_id": "rb1"})),
    )
    .await;
    assert_eq!(st, 201);
    let created = |mid: &str, to: &str| {
        json!({"type": "message.created",
            "payload": {"message_id": mid, "role": "assistant", "reply_to": to}})
    };
    let delta =
        |mid: &str| json!({"type": "message.delta", "payload": {"message_id": mid, "delta": "x"}});
    let completed = |mid: &str| json!({"type": "message.completed", "payload": {"message_id": mid, "finish_reason": "stop"}});
    let path = "/api/publish/runs/rb1/events";
    let refused = (409, json!({"run_id": "rb1", "status": "reply_taken"}));
    let batches = [
        (
            "two replies to one send",
            vec![created("x1", "qx"), created("x2", "qx")],
        ),
        (
            "a delta after its reply's ending",
            vec![created("y1", "qy"), completed("y1"), delta("y1")],
        ),
    ];
    for (i, (what, events)) in batches.into_iter().enumerate() {
        let key = format!("rb-k{i}");
        let got = call(
            &addr,
            "POST",
            path,
            Some(&key),
            Some(json!({ "events": events })),
        )
        .await;
        assert_eq!(got, refused, "{what}");
    }
    let (st, _, body) = http(&addr, "GET", "/api/runs/rb1/snapshot", &[], None).await;
    assert_eq!(st, 200);
    let snap: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(snap["event_id"], 0, "nothing appended: {snap}");
    let whole = vec![created("z1", "qz"), delta("z1"), completed("z1")];
    let got = call(
        &addr,
        "POST",
        path,
        Some("rb-k2"),
        Some(json!({ "events": whole })),
    )
    .await;
    assert_eq!(
        got,
        (200, json!({"first_event_id": 1, "last_event_id": 3})),
        "a whole reply in one batch"
    );
}

/// On Redis the key lives in the store: the same key sent to two replicas at once appends once.
async fn one_key_appends_once_across_replicas(b: Backend) {
    if b.kind == support::Kind::Memory {
        return; // one process: the memory store has no second replica
    }
    let r1 = start_settings(settings(b.store().await)).await;
    let r2 = start_settings(settings(b.store().await)).await;
    let (st, _) = call(
        &r1,
        "POST",
        "/api/publish/runs",
        None,
        Some(json!({"run_id": "x1"})),
    )
    .await;
    assert_eq!(st, 201);
    for round in 0..10 {
        let key = format!("k{round}");
        let body = batch(5, &key);
        let (a, b2) = tokio::join!(
            call(
                &r1,
                "POST",
                "/api/publish/runs/x1/events",
                Some(&key),
                Some(body.clone())
            ),
            call(
                &r2,
                "POST",
                "/api/publish/runs/x1/events",
                Some(&key),
                Some(body)
            ),
        );
        assert_eq!(a, b2, "both replicas answer the same ids");
        assert_eq!(a.0, 200);
    }
    let n = log_ids(&r2, "x1").await;
    assert_eq!(
        n,
        (1..=50).collect::<Vec<_>>(),
        "10 batches of 5, each once"
    );
}

async fn sends_long_poll_hears_every_send_at_least_once(b: Backend) {
    let addr = start_settings(settings(b.store().await)).await;
    let (st, v) = call(&addr, "GET", "/api/publish/sends?wait_ms=0", None, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sends"], json!([]));
    let start = v["next"].as_str().unwrap().to_owned();
    // A poll waiting when the send arrives wakes for it.
    let poller = {
        let addr = addr.clone();
        let start = start.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = call(
                &addr,
                "GET",
                &format!("/api/publish/sends?after={start}&wait_ms=10000"),
                None,
                None,
            )
            .await;
            (r, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _, _) = http(
        &addr,
        "POST",
        "/api/chat/sessX/messages",
        &[],
        Some(&json!({"client_request_id": "c1", "content": "hi"}).to_string()),
    )
    .await;
    assert_eq!(st, 202);
    let ((st, v), waited) = poller.await.unwrap();
    assert_eq!(st, 200);
    assert!(
        waited < Duration::from_secs(5),
        "woken by the send, not the timeout: {waited:?}"
    );
    let sends = v["sends"].as_array().unwrap();
    assert_eq!(sends.len(), 1, "{v}");
    assert_eq!(sends[0]["session_id"], "sessX");
    assert_eq!(sends[0]["run_id"], "sessX");
    assert_eq!(sends[0]["client_request_id"], "c1");
    assert_eq!(sends[0]["content"], "hi");
    let next = v["next"].as_str().unwrap().to_owned();
    // A repeated send is the same send: nothing new to hear.
    let (st, _, _) = http(
        &addr,
        "POST",
        "/api/chat/sessX/messages",
        &[],
        Some(&json!({"client_request_id": "c1", "content": "hi"}).to_string()),
    )
    .await;
    assert_eq!(st, 202);
    let t0 = Instant::now();
    let (_, v) = call(
        &addr,
        "GET",
        &format!("/api/publish/sends?after={next}&wait_ms=500"),
        None,
        None,
    )
    .await;
    assert_eq!(v["sends"], json!([]), "{v}");
    assert!(t0.elapsed() >= Duration::from_millis(450), "it waited");
    assert_eq!(v["next"], next.as_str());
    // From the start again: the send is still there (at least once).
    let (_, v) = call(
        &addr,
        "GET",
        &format!("/api/publish/sends?after={start}"),
        None,
        None,
    )
    .await;
    assert_eq!(v["sends"].as_array().unwrap().len(), 1);
    let (st, _) = call(
        &addr,
        "GET",
        "/api/publish/sends?after=not-a-cursor",
        None,
        None,
    )
    .await;
    assert_eq!(st, 400);
}

/// PROTOCOL §6 `job_ids` (issue 29): the gateway's snapshots come from the
/// client's reducer, so a worker given a second job carries both mappings
/// (`job_ids` in assignment order, `job_id` the latest): in the snapshot
/// endpoint's body and in the `snapshot` event a resume from before the
/// replay window gets (its state is the store's base state, which survives
/// a round trip through the store: JSON in Redis).
async fn snapshots_carry_every_job_of_a_worker(b: Backend) {
    let store = runstream_server::store::open(&b.spec(), 3).await.unwrap();
    let addr = start_settings(settings(store)).await;
    let (st, _) = call(
        &addr,
        "POST",
        "/api/publish/runs",
        None,
        Some(json!({"run_id": "jobs1"})),
    )
    .await;
    assert!(st == 201 || st == 200, "{st}");
    let mut events = vec![
        json!({"type": "run.started", "payload": {}}),
        json!({"type": "worker.started", "payload": {"worker_id": "w1", "job_id": "j1"}}),
        json!({"type": "worker.job_assigned", "payload": {"worker_id": "w1", "job_id": "j2"}}),
    ];
    for i in 0..5 {
        events.push(json!({"type": "tool.started",
            "payload": {"worker_id": "w1", "tool_call_id": format!("t{i}"), "name": "fetch"}}));
    }
    let path = "/api/publish/runs/jobs1/events";
    let (st, v) = call(
        &addr,
        "POST",
        path,
        Some("jobs-k1"),
        Some(json!({"events": events})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let check = |w: &Value, what: &str| {
        assert_eq!(w["job_ids"], json!(["j1", "j2"]), "{what}: {w}");
        assert_eq!(w["job_id"], "j2", "{what}: {w}");
    };
    let (st, _, body) = http(&addr, "GET", "/api/runs/jobs1/snapshot", &[], None).await;
    assert_eq!(st, 200);
    let snap: Value = serde_json::from_slice(&body).unwrap();
    check(&snap["state"]["workers"][0], "snapshot endpoint");
    let (_, _, body) = support::http_for(
        &addr,
        "GET",
        "/api/stream/runs/jobs1",
        &[("Last-Event-ID", "1")],
        None,
        Duration::from_millis(600),
    )
    .await;
    let frames = sse_frames(&body);
    let head: Value = serde_json::from_str(&frames[0]).unwrap();
    assert_eq!(
        head["type"], "snapshot",
        "a resume from before the window: {frames:?}"
    );
    check(&head["payload"]["state"]["workers"][0], "snapshot event");
}

both_stores!(
    snapshots_carry_every_job_of_a_worker,
    batches_are_atomic_dense_and_idempotent,
    one_reply_per_send_inside_one_batch,
    one_key_appends_once_across_replicas,
    sends_long_poll_hears_every_send_at_least_once,
);

const BIN: &str = env!("CARGO_BIN_EXE_runstream-server");

#[test]
fn refuses_to_start_without_an_auth_choice_and_names_the_flags() {
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for flag in ["--jwt-secret-file", "--jwt-public-key-file", "--auth none"] {
        assert!(err.contains(flag), "names {flag}: {err}");
    }
    let out = Command::new(BIN)
        .args([
            "--auth",
            "none",
            "--record-frames",
            "10",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the frame log needs --dev");
}

/// Retention and claim-idle flags out of range refuse to start (a typo must not keep or
/// drop data silently); a short idle retention starts with a warning.
#[test]
fn out_of_range_retention_and_claim_idle_refuse_to_start() {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for flag in ["--retention-secs", "--idle-retention-secs"] {
        let out = run(&[
            "--auth",
            "none",
            flag,
            "99999999999",
            "--addr",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{flag} past 100 years");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "names {flag}: {err}");
        let out = run(&["produce", "--store", "memory", flag, "99999999999"]);
        assert!(!out.status.success(), "produce {flag} past 100 years");
    }
    let out = run(&[
        "produce",
        "--store",
        "redis://127.0.0.1:1",
        "--chat-worker",
        "--send-claim-idle-ms",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--send-claim-idle-ms: at least 1000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM drains: an SSE stream ends with `retry: 250`, a WebSocket closes
/// with 1012, /readyz is 503 meanwhile, and the process exits.
#[tokio::test]
async fn sigterm_drains_streams_and_exits() {
    let port = support::free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--auth",
            "none",
            "--dev",
            "--heartbeat-ms",
            "500",
            "--drain-ms",
            "5000",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next_line().await.unwrap().unwrap();
    assert!(listening.contains("server.listening"), "{listening}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = format!("127.0.0.1:{port}");
    let run = support::create(&addr, json!({"kind": "chat"})).await;
    let mut sse = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sse.write_all(format!("GET /api/stream/runs/{run} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": run}).to_string(),
    ))
    .await
    .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("subscribed"));
    let t0 = Instant::now();
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The SSE stream ends with a short retry.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sse.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("retry: 250"), "{text}");
    // The WebSocket closes with 1012.
    let mut close = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = m {
            close = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(1012));
    let status = tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .expect("the process exits")
        .unwrap();
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exits when the streams are gone, before the deadline: {:?}",
        t0.elapsed()
    );
}
