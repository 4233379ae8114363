//! What a shared store adds: several replicas and a producer process on one
//! Redis (an event appended through one reaches clients of another, sends
//! stay idempotent across replicas, the log outlives a replica), and the
//! replay window (trim → snapshot) on both stores.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use runstream::core::envelope::decode_envelope;
use runstream::core::state::{Parked, RunState};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{create, http, http_for, ids, sse_frames, Backend, Kind};

/// Reduces frames (a leading snapshot event, then events) like a client would.
fn reduce(run: &str, frames: &[String]) -> RunState {
    let mut s = RunState::new(run);
    let mut parked = Parked::default();
    let mut out = Vec::new();
    for f in frames {
        let v: Value = serde_json::from_str(f).unwrap();
        if v["type"] == "snapshot" {
            s = RunState::from_wire(v["payload"]["state"].clone()).unwrap();
            s.cursor = v["event_id"].as_u64().unwrap();
            parked = Parked::default();
            continue;
        }
        let e = decode_envelope(f, run).unwrap();
        s.apply(e.event_id, e.kind, &mut parked, 4096, &mut out)
            .unwrap();
    }
    s
}

async fn snapshot_state(addr: &str, run: &str) -> (u64, RunState) {
    let (st, _, b) = http(addr, "GET", &format!("/api/runs/{run}/snapshot"), &[], None).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&b).unwrap();
    let mut s = RunState::from_wire(v["state"].clone()).unwrap();
    let id = v["event_id"].as_u64().unwrap();
    s.cursor = id;
    (id, s)
}

async fn stats(addr: &str, run: &str) -> Value {
    let (_, _, b) = http(
        addr,
        "GET",
        &format!("/api/admin/runs/{run}/stats"),
        &[],
        None,
    )
    .await;
    serde_json::from_slice(&b).unwrap()
}

async fn an_event_appended_through_one_replica_reaches_clients_of_another(b: Backend) {
    let (a, other) = (b.server().await, b.server().await);
    create(&a, json!({"kind": "chat", "run_id": "cross"})).await;
    // SSE and WebSocket clients on replica `other`, live before anything is appended.
    let o2 = other.clone();
    let sse = tokio::spawn(async move {
        http_for(
            &o2,
            "GET",
            "/api/stream/runs/cross",
            &[],
            None,
            Duration::from_millis(2500),
        )
        .await
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{other}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"op":"subscribe","run_id":"cross"}"#))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let (st, _, _) = http(
            &a,
            "POST",
            "/api/admin/runs/cross/append",
            &[],
            Some(&json!({"type": "progress.tick", "payload": {"n": i}}).to_string()),
        )
        .await;
        assert_eq!(st, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws_ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ws_ids.len() < 5 && tokio::time::Instant::now() < deadline {
        let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["op"] == "event" {
            ws_ids.push(v["event"]["event_id"].as_u64().unwrap());
        }
    }
    assert_eq!(
        ws_ids,
        vec![1, 2, 3, 4, 5],
        "websocket on the other replica"
    );
    let (_, _, body) = sse.await.unwrap();
    assert_eq!(
        ids(&sse_frames(&body)),
        vec![1, 2, 3, 4, 5],
        "sse on the other replica"
    );
    // Per-replica accounting: the appends were not counted as connections on `a`.
    assert_eq!(stats(&a, "cross").await["connections_total"], 0);
    assert_eq!(stats(&a, "cross").await["last_event_id"], 5);
}

async fn a_producer_process_feeds_the_replicas(b: Backend) {
    let api = b.server().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args(["produce", "--store", &b.spec()])
        .args(["--seed", "4", "--workers", "3", "--speed", "25"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["event"], "produce.created");
    let run = v["run_id"].as_str().unwrap().to_owned();
    // Streams from the API replica while the producer appends, to the end.
    let (st, _, body) = http(&api, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    assert_eq!(st, 200);
    let frames = sse_frames(&body);
    let got = ids(&frames);
    let n = got.len() as u64;
    assert!(n > 10);
    assert_eq!(
        got,
        (1..=n).collect::<Vec<_>>(),
        "dense, in order, nothing twice"
    );
    assert!(frames.last().unwrap().contains("\"run.completed\""));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        lines
            .next_line()
            .await
            .unwrap()
            .map(|l| l.contains("produce.done")),
        Some(true)
    );
    let (id, state) = snapshot_state(&api, &run).await;
    assert_eq!(id, n);
    assert_eq!(state, reduce(&run, &frames), "snapshot = the log reduced");
}

async fn sends_are_accepted_once_across_replicas(b: Backend) {
    let (a, other) = (b.server().await, b.server().await);
    let body = r#"{"client_request_id":"c-42","content":"hello"}"#;
    let (s1, _, b1) = http(&a, "POST", "/api/chat/sx/messages", &[], Some(body)).await;
    let (s2, _, b2) = http(&other, "POST", "/api/chat/sx/messages", &[], Some(body)).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1, b2, "the retry on another replica gets the same answer");
    let other_send = r#"{"client_request_id":"c-43","content":"again"}"#;
    let (_, _, b3) = http(
        &other,
        "POST",
        "/api/chat/sx/messages",
        &[],
        Some(other_send),
    )
    .await;
    assert_ne!(b1, b3);
    let (_, _, snap) = http(&a, "GET", "/api/runs/sx/snapshot", &[], None).await;
    let snap: Value = serde_json::from_slice(&snap).unwrap();
    let users: Vec<&Value> = snap["state"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(users.len(), 2, "{snap}");
    assert_eq!(users[0]["client_request_id"], "c-42");
    // The idempotency key carries a TTL.
    let key = "runstream:{sx}:send:c-42";
    let ttl: i64 = b.cli_for_key(key, &["TTL", key]).trim().parse().unwrap();
    assert!(ttl > 3600, "ttl {ttl}");
}

async fn the_log_outlives_the_replicas(b: Backend) {
    let first = b.server().await;
    let run = create(&first, json!({"seed": 3, "workers": 3, "instant": true})).await;
    let (_, _, before) = http(&first, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    // A replica that starts later (a restart, another machine) serves the same log.
    let later = b.server().await;
    let (_, _, after) = http(&later, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    assert_eq!(sse_frames(&before), sse_frames(&after));
    assert_eq!(
        snapshot_state(&first, &run).await,
        snapshot_state(&later, &run).await
    );
    // Run ids come from the store: two replicas never hand out the same one.
    let x = create(&first, json!({"seed": 1, "workers": 1, "instant": true})).await;
    let y = create(&later, json!({"seed": 1, "workers": 1, "instant": true})).await;
    assert_ne!(x, y);
}

async fn window_trims_to_a_snapshot(b: Backend) {
    let addr = b.server().await;
    // A task run (job-only events get parked) much longer than the window of 10.
    let run = create(&addr, json!({"seed": 12, "workers": 8, "instant": true})).await;
    let st = stats(&addr, &run).await;
    let (first, last) = (
        st["first_event_id"].as_u64().unwrap(),
        st["last_event_id"].as_u64().unwrap(),
    );
    assert!(first > 1 && last - first < 11, "{st}");
    let (_, _, body) = http(
        &addr,
        "GET",
        &format!("/api/stream/runs/{run}"),
        &[("Last-Event-ID", "2")],
        None,
    )
    .await;
    let frames = sse_frames(&body);
    let head: Value = serde_json::from_str(&frames[0]).unwrap();
    assert_eq!(head["type"], "snapshot");
    assert_eq!(head["event_id"].as_u64().unwrap(), first - 1);
    assert_eq!(ids(&frames[1..]), (first..=last).collect::<Vec<_>>());
    // Snapshot event + window reduce to the snapshot endpoint's state, which
    // equals the same run reduced in full (a twin on a store with a big window).
    let (sid, state) = snapshot_state(&addr, &run).await;
    assert_eq!(sid, last);
    assert_eq!(reduce(&run, &frames), state);
    let full = Backend::new(Kind::Memory).await.unwrap().server().await;
    let twin = create(
        &full,
        json!({"run_id": run, "seed": 12, "workers": 8, "instant": true}),
    )
    .await;
    let (_, _, tb) = http(&full, "GET", &format!("/api/stream/runs/{twin}"), &[], None).await;
    let mut whole = reduce(&run, &sse_frames(&tb));
    whole.cursor = last;
    assert_eq!(state, whole);
    // A long token run replays in bounded batches, dense, to the end.
    let long = create(&addr, json!({"tokens": 2500, "instant": true})).await;
    let (_, _, body) = http(
        &addr,
        "GET",
        &format!("/api/stream/runs/{long}"),
        &[("Last-Event-ID", "2494")],
        None,
    )
    .await;
    assert_eq!(ids(&sse_frames(&body)), (2495..=2504).collect::<Vec<_>>());
}

async fn long_replays_are_dense(b: Backend) {
    let addr = b.server().await;
    let run = create(&addr, json!({"tokens": 2500, "instant": true})).await;
    let (_, _, body) = http(&addr, "GET", &format!("/api/stream/runs/{run}"), &[], None).await;
    assert_eq!(ids(&sse_frames(&body)), (1..=2504).collect::<Vec<_>>());
    let (id, _) = snapshot_state(&addr, &run).await;
    assert_eq!(id, 2504);
}

mod window_trims_to_a_snapshot {
    #[tokio::test]
    async fn memory() {
        let b = super::Backend::with_window(super::Kind::Memory, 10)
            .await
            .unwrap();
        super::window_trims_to_a_snapshot(b).await;
    }
    #[tokio::test]
    async fn redis() {
        let Some(b) = super::Backend::with_window(super::Kind::Redis, 10).await else {
            return;
        };
        super::window_trims_to_a_snapshot(b).await;
    }
    #[tokio::test]
    async fn cluster() {
        let Some(b) = super::Backend::with_window(super::Kind::Cluster, 10).await else {
            return;
        };
        super::window_trims_to_a_snapshot(b).await;
    }
}

/// A task run's spec, without chaos.
fn task_spec() -> runstream_server::store::RunSpec {
    runstream_server::store::RunSpec {
        kind: runstream_server::store::RunKind::Task,
        chaos: Default::default(),
        speed: 1.0,
        session_id: None,
    }
}

/// A replica's live tail cache never serves events another replica has pruned
/// since: a resume older than the window gets the snapshot (PROTOCOL §2a).
async fn a_live_tail_never_serves_pruned_events(b: Backend) {
    let (reader, writer) = (b.store().await, b.store().await);
    assert!(reader.create("lt", task_spec()).await.unwrap());
    let mut tail = reader.tail("lt").await.unwrap().unwrap();
    for i in 0..40 {
        let delta = json!({"message_id": "m", "delta": i.to_string()});
        writer.append("lt", "message.delta", delta).await.unwrap();
    }
    // The reader's tail (and its cache) has every event, also the pruned ones.
    tokio::time::timeout(Duration::from_secs(10), async {
        while *tail.rx.borrow_and_update() < 40 {
            tail.rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let meta = reader.meta("lt").await.unwrap().unwrap();
    assert!(meta.first_id > 1, "pruned: {meta:?}");
    for after in [0, meta.first_id - 2] {
        let rep = reader.read("lt", after).await.unwrap().unwrap();
        let snap = rep.snapshot.as_ref().map(|(id, _)| *id);
        assert_eq!(snap, Some(meta.first_id - 1), "read after {after}");
        let first = decode_envelope(rep.events[0].get(), "lt").unwrap().event_id;
        assert_eq!(first, meta.first_id);
    }
    // Inside the window: events only.
    let rep = reader.read("lt", meta.first_id - 1).await.unwrap().unwrap();
    assert!(rep.snapshot.is_none());
    assert_eq!(rep.events.len() as u64, 40 - meta.first_id + 1);
}

/// The streams of one run read from the live tail's cache, and each read must see
/// `first_id` as Redis has it after the read began (a prune by another process is never
/// served from the cache). That check is one `HGET` shared by every stream of the run that
/// asks while one is in flight, not one per stream: 200 streams woken by the same append
/// cost a handful of `HGET`s (each read still gets the pruned answer right, see above).
async fn the_streams_of_a_run_share_their_first_id_checks(b: Backend) {
    let (reader, writer) = (b.store().await, b.store().await);
    assert!(reader.create("fi", task_spec()).await.unwrap());
    let mut tail = reader.tail("fi").await.unwrap().unwrap();
    writer
        .append(
            "fi",
            "message.delta",
            json!({"message_id": "m", "delta": "a"}),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while *tail.rx.borrow_and_update() < 1 {
            tail.rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let hgets = || {
        let info = b.cli_for_key("runstream:{fi}:meta", &["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_hget:calls="))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = hgets();
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.read("fi", 0).await })
        })
        .collect();
    for r in reads {
        let rep = r.await.unwrap().unwrap().unwrap();
        assert!(rep.snapshot.is_none());
        assert_eq!(rep.events.len(), 1);
    }
    let used = hgets() - before;
    assert!(
        (1..=20).contains(&used),
        "200 cached reads of one run made {used} HGETs"
    );
}

mod the_streams_of_a_run_share_their_first_id_checks {
    #[tokio::test]
    async fn redis() {
        let Some(b) = super::Backend::new(super::Kind::Redis).await else {
            return;
        };
        super::the_streams_of_a_run_share_their_first_id_checks(b).await;
    }
    #[tokio::test]
    async fn cluster() {
        let Some(b) = super::Backend::new(super::Kind::Cluster).await else {
            return;
        };
        super::the_streams_of_a_run_share_their_first_id_checks(b).await;
    }
}

mod a_live_tail_never_serves_pruned_events {
    #[tokio::test]
    async fn redis() {
        let Some(b) = super::Backend::with_window(super::Kind::Redis, 10).await else {
            return;
        };
        super::a_live_tail_never_serves_pruned_events(b).await;
    }
    #[tokio::test]
    async fn cluster() {
        let Some(b) = super::Backend::with_window(super::Kind::Cluster, 10).await else {
            return;
        };
        super::a_live_tail_never_serves_pruned_events(b).await;
    }
}

both_stores!(long_replays_are_dense);

shared_stores!(
    an_event_appended_through_one_replica_reaches_clients_of_another,
    a_producer_process_feeds_the_replicas,
    sends_are_accepted_once_across_replicas,
    the_log_outlives_the_replicas,
    live_tails_end_with_their_clients,
    a_chat_worker_answers_each_send_once_whichever_replica_took_it,
    a_local_replier_and_a_chat_worker_answer_each_send_once
);

async fn live_tails_end_with_their_clients(b: Backend) {
    let addr = b.server().await;
    create(&addr, json!({"kind": "chat", "run_id": "t1"})).await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let a = addr.clone();
        readers.push(tokio::spawn(async move {
            http_for(
                &a,
                "GET",
                "/api/stream/runs/t1",
                &[],
                None,
                Duration::from_millis(800),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = |addr: String| async move {
        let (_, _, b) = http(&addr, "GET", "/api/admin/store", &[], None).await;
        serde_json::from_slice::<Value>(&b).unwrap()
    };
    let during = info(addr.clone()).await;
    assert_eq!(
        during["tails"], 1,
        "one Redis reader for 20 clients: {during}"
    );
    assert!(during["used_memory"].as_u64().unwrap() > 0);
    for r in readers {
        r.await.unwrap();
    }
    // Each tail notices within one XREAD BLOCK period that nobody listens.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(info(addr).await["tails"], 0);
}

async fn a_chat_worker_answers_each_send_once_whichever_replica_took_it(b: Backend) {
    let url = b.spec();
    let a = support::start_with(b.store().await, runstream_server::Replies::Worker).await;
    let other = support::start_with(b.store().await, runstream_server::Replies::Worker).await;
    // A send accepted before any worker runs is queued, not lost.
    let body = r#"{"client_request_id":"w-1","content":"hi"}"#;
    let (s1, _, b1) = http(&a, "POST", "/api/chat/sw/messages", &[], Some(body)).await;
    let (s2, _, b2) = http(&other, "POST", "/api/chat/sw/messages", &[], Some(body)).await;
    assert_eq!((s1, s2, b1.clone()), (202, 202, b2));
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args(["produce", "--store", &url, "--chat-worker"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap().unwrap();
    assert!(ready.contains("chat_worker.ready"), "{ready}");
    let claimed = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(claimed.contains("chat_worker.claimed"), "{claimed}");
    let replied = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(replied.contains("chat_worker.replied"), "{replied}");
    assert!(replied.contains("\"w-1\""), "{replied}");
    let (_, _, snap) = http(&other, "GET", "/api/runs/sw/snapshot", &[], None).await;
    let snap: Value = serde_json::from_slice(&snap).unwrap();
    let msgs = snap["state"]["messages"].as_array().unwrap();
    let roles: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        vec![("user", "completed"), ("assistant", "completed")],
        "{snap}"
    );
    assert_eq!(msgs[1]["reply_to"], "w-1");
    // Nothing more to answer.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), lines.next_line())
            .await
            .is_err()
    );
}

async fn a_local_replier_and_a_chat_worker_answer_each_send_once(b: Backend) {
    let url = b.spec();
    // The default `--replies local` replica answers in-process; a chat worker (and the
    // TypeScript kit's onSend, docs/REDIS.md) consumes the same queue. Both claim the send.
    let a = support::start_with(b.store().await, runstream_server::Replies::Local).await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args(["produce", "--store", &url, "--chat-worker"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap().unwrap();
    assert!(ready.contains("chat_worker.ready"), "{ready}");
    for i in 0..4 {
        let body = format!(r#"{{"client_request_id":"lw-{i}","content":"hi"}}"#);
        let (st, _, _) = http(&a, "POST", "/api/chat/slw/messages", &[], Some(&body)).await;
        assert_eq!(st, 202);
    }
    let replies = || async {
        let (_, _, snap) = http(&a, "GET", "/api/runs/slw/snapshot", &[], None).await;
        let snap: Value = serde_json::from_slice(&snap).unwrap();
        snap["state"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| {
                (
                    m["reply_to"].as_str().unwrap().to_owned(),
                    m["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while replies()
        .await
        .iter()
        .filter(|(_, st)| st == "completed")
        .count()
        < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            replies().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second answer would have begun by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut to: Vec<String> = replies().await.into_iter().map(|(r, _)| r).collect();
    to.sort();
    assert_eq!(
        to,
        ["lw-0", "lw-1", "lw-2", "lw-3"],
        "each send answered once"
    );
}

#[tokio::test]
async fn the_memory_store_has_no_send_queue() {
    let b = Backend::new(Kind::Memory).await.unwrap();
    let s = b.store().await;
    assert!(s.claim_sends("x", 10, 30_000, &[]).await.is_err());
}

/// A chat worker answers at most `MAX_SENDS_IN_FLIGHT` sends at once (it claims only with
/// room for a whole claim of 16): 90 sends queued, 64 claimed before the first reply ends,
/// and every one answered in the end.
#[tokio::test]
async fn a_busy_chat_worker_holds_at_most_max_sends_in_flight() {
    let Some(b) = Backend::new(Kind::Redis).await else {
        return;
    };
    let url = b.spec();
    let addr = support::start_with(b.store().await, runstream_server::Replies::Worker).await;
    let n = 90;
    for i in 0..n {
        let body = format!(r#"{{"client_request_id":"c{i}","content":"hi"}}"#);
        let (st, _, _) = http(
            &addr,
            "POST",
            &format!("/api/chat/bw{i}/messages"),
            &[],
            Some(&body),
        )
        .await;
        assert_eq!(st, 202);
    }
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args(["produce", "--store", &url, "--chat-worker"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let (mut claimed, mut replied) = (0usize, 0usize);
    let mut claimed_before_a_reply = None;
    let t0 = std::time::Instant::now();
    while replied < n {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("stalled: {claimed} claimed, {replied} replied"))
            .unwrap()
            .unwrap();
        if line.contains("chat_worker.claimed") {
            claimed += 1;
        } else if line.contains("chat_worker.replied") {
            claimed_before_a_reply.get_or_insert(claimed);
            replied += 1;
        }
        assert!(t0.elapsed() < Duration::from_secs(90));
    }
    let first = claimed_before_a_reply.unwrap();
    assert!(
        (48..=runstream_server::store::MAX_SENDS_IN_FLIGHT).contains(&first),
        "claimed before the first reply ended: {first}"
    );
    assert_eq!(claimed, n);
}
