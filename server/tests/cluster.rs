//! Redis Cluster placement: runs and sessions whose `{id}` hash tags land on
//! different masters all work (publish batches, replays across replicas,
//! pruning to the window, sends, the chat worker queue, the sends long
//! poll); and the two-step send survives a process that died between its
//! steps, on a single Redis and on the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use runstream_server::auth::AuthMode;
use runstream_server::store::redis::RedisStore;
use runstream_server::store::Store;
use runstream_server::{Replies, Settings};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

mod support;
use support::{http, http_for, ids, sse_frames, start_settings, Backend, Kind, RedisCluster};

const KEY: &str = "publish-key-of-the-cluster-suite";

/// A replica with the publish API, chat replies by workers, `--auth none --dev`.
async fn replica(b: &Backend) -> String {
    start_settings(Settings {
        publish_key: Some(KEY.as_bytes().to_vec()),
        auth: Arc::new(AuthMode::None),
        ..Settings::dev(b.store().await, Replies::Worker, 200)
    })
    .await
}

async fn publish(addr: &str, path: &str, idem: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let mut h = vec![("Authorization", auth.as_str())];
    if let Some(k) = idem {
        h.push(("Idempotency-Key", k));
    }
    let method = if body.is_some() { "POST" } else { "GET" };
    let body = body.map(|b| b.to_string());
    let (st, _, b) = http(addr, method, path, &h, body.as_deref()).await;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()));
    (st, v)
}

/// `n` ids `<prefix><i>` per master: the master's port → its ids.
fn ids_per_master(c: &RedisCluster, prefix: &str, n: usize) -> BTreeMap<u16, Vec<String>> {
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let id = format!("{prefix}{i}");
        let slot = c.keyslot(&format!("runstream:{{{id}}}:log"));
        // Every key of the run hashes to the slot of its `{id}` tag.
        for k in ["meta", "base", "idem:k1", "send:c1", "unqueued"] {
            assert_eq!(
                c.keyslot(&format!("runstream:{{{id}}}:{k}")),
                slot,
                "{id} {k}"
            );
        }
        let ids = out.entry(c.master_of(slot)).or_default();
        if ids.len() < n {
            ids.push(id);
        }
        if out.len() == 3 && out.values().all(|v| v.len() == n) {
            return out;
        }
    }
    panic!("200 ids did not cover the three masters: {out:?}");
}

fn batch(from: usize, n: usize) -> Value {
    let events: Vec<Value> = (from..from + n)
        .map(|i| match i {
            0 => json!({"type": "run.started", "payload": {"title": "cluster"}}),
            _ => json!({"type": "worker.started", "payload": {"worker_id": format!("w{i}")}}),
        })
        .collect();
    json!({ "events": events })
}

#[tokio::test]
async fn runs_and_sessions_on_every_master_work_end_to_end() {
    let Some(b) = Backend::with_window(Kind::Cluster, 10).await else {
        return;
    };
    let c = b.cluster.as_ref().unwrap();
    assert_eq!(c.ports.len(), 3);
    let runs = ids_per_master(c, "run-c", 1);
    let sessions = ids_per_master(c, "sess-c", 1);
    let (a, other) = (replica(&b).await, replica(&b).await);
    // Run ids from the store (one counter key) stay unique across replicas.
    let (st1, x) = publish(&a, "/api/publish/runs", None, Some(json!({}))).await;
    let (st2, y) = publish(&other, "/api/publish/runs", None, Some(json!({}))).await;
    assert_eq!((st1, st2), (201, 201));
    assert_ne!(x["run_id"], y["run_id"]);

    for (port, ids_on) in &runs {
        let run = &ids_on[0];
        let (st, v) = publish(&a, "/api/publish/runs", None, Some(json!({"run_id": run}))).await;
        assert_eq!(st, 201, "{v}");
        // 3 batches of 12 events through replica `a`; the second is repeated through `other`.
        let mut last = 0;
        for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
            let path = format!("/api/publish/runs/{run}/events");
            let (st, v) = publish(&a, &path, Some(k), Some(batch(i * 12, 12))).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["first_event_id"], i as u64 * 12 + 1);
            last = v["last_event_id"].as_u64().unwrap();
            if i == 1 {
                let (st, again) = publish(&other, &path, Some(k), Some(batch(i * 12, 12))).await;
                assert_eq!((st, &again), (200, &v), "a repeated key appends nothing");
            }
        }
        assert_eq!(last, 36);
        // The log lives on the master of the run's slot (redis-cli without -c would get
        // MOVED elsewhere), pruned to the window: 36 events held in at most 10 + 10 %.
        let log = format!("runstream:{{{run}}}:log");
        let meta = format!("runstream:{{{run}}}:meta");
        assert_eq!(c.master_of(c.keyslot(&log)), *port);
        let xlen: u64 = support::redis_cli(*port, &["XLEN", &log])
            .trim()
            .parse()
            .unwrap();
        let first: u64 = support::redis_cli(*port, &["HGET", &meta, "first_id"])
            .trim()
            .parse()
            .unwrap();
        assert!(
            first > 1 && xlen <= 11 && xlen == 37 - first,
            "{run}: first {first} xlen {xlen}"
        );
        // A resume from before the window on the other replica: snapshot, then the window.
        let (_, _, body) = http_for(
            &other,
            "GET",
            &format!("/api/stream/runs/{run}"),
            &[("Last-Event-ID", "3")],
            None,
            Duration::from_millis(800),
        )
        .await;
        let frames = sse_frames(&body);
        let head: Value = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(head["type"], "snapshot", "{run}");
        assert_eq!(head["event_id"], first - 1);
        assert_eq!(ids(&frames[1..]), (first..=36).collect::<Vec<_>>());
        let (st, _, snap) = http(&a, "GET", &format!("/api/runs/{run}/snapshot"), &[], None).await;
        assert_eq!(st, 200);
        let snap: Value = serde_json::from_slice(&snap).unwrap();
        assert_eq!(snap["event_id"], 36);
    }

    // Sessions on every master: each send logged in its session, queued once, answered
    // once by a chat worker whatever replica took it.
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_runstream-server"))
        .args(["produce", "--store", &b.spec(), "--chat-worker"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap().unwrap();
    assert!(ready.contains("chat_worker.ready"), "{ready}");
    let mut expected = BTreeSet::new();
    for (i, ids_on) in sessions.values().enumerate() {
        let s = &ids_on[0];
        let crid = format!("crid-{i}");
        let body = json!({"client_request_id": crid, "content": format!("hello {i}")}).to_string();
        let (s1, _, b1) = http(
            &a,
            "POST",
            &format!("/api/chat/{s}/messages"),
            &[],
            Some(&body),
        )
        .await;
        let (s2, _, b2) = http(
            &other,
            "POST",
            &format!("/api/chat/{s}/messages"),
            &[],
            Some(&body),
        )
        .await;
        assert_eq!((s1, s2), (202, 202));
        assert_eq!(b1, b2, "the retry on the other replica is the same send");
        expected.insert((s.clone(), crid));
    }
    let mut replied = BTreeSet::new();
    while replied.len() < expected.len() {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a reply within 20 s")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "chat_worker.claimed" {
            continue;
        }
        assert_eq!(v["event"], "chat_worker.replied", "{line}");
        let key = (
            v["run_id"].as_str().unwrap().to_owned(),
            v["client_request_id"].as_str().unwrap().to_owned(),
        );
        assert!(replied.insert(key), "answered twice: {line}");
    }
    assert_eq!(replied, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), lines.next_line())
            .await
            .is_err(),
        "nothing more to answer"
    );
    for ids_on in sessions.values() {
        let s = &ids_on[0];
        let (_, _, snap) = http(&other, "GET", &format!("/api/runs/{s}/snapshot"), &[], None).await;
        let snap: Value = serde_json::from_slice(&snap).unwrap();
        let roles: Vec<&str> = snap["state"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant"], "{snap}");
    }
    // The publish API's long poll hears each send (from the one queue stream).
    let (st, v) = publish(&other, "/api/publish/sends?wait_ms=0", None, None).await;
    assert_eq!(st, 200, "{v}");
    let heard: BTreeSet<(String, String)> = v["sends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["session_id"].as_str().unwrap().to_owned(),
                s["client_request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(heard, expected);
}

/// The sends in the queue for `crid`: their contents, in queue order.
async fn queued(store: &RedisStore, crid: &str) -> Vec<String> {
    let (sends, _) = store.sends_after(None, 1000, 0).await.unwrap();
    sends
        .into_iter()
        .filter(|s| s.client_request_id == crid)
        .map(|s| s.content)
        .collect()
}

async fn a_send_whose_queue_step_never_ran_is_queued_by_its_retry(b: Backend) {
    let store = RedisStore::connect(&b.spec(), 1000).await.unwrap();
    let unq = "runstream:{sq}:unqueued";
    // A process accepted the send (logged, recorded as unqueued) and died before queueing it.
    let mid = store.accept_send_only("sq", "c1", "hello").await.unwrap();
    assert!(queued(&store, "c1").await.is_empty());
    assert_eq!(b.cli_for_key(unq, &["HGET", unq, "c1"]).trim(), "hello");
    // The client's retry (another content would not be a retry, but the first content wins)
    // gets the same message and queues the send.
    let again = store.send("sq", "c1", "hello, edited").await.unwrap();
    assert_eq!(
        (again.message_id.as_str(), again.fresh),
        (mid.as_str(), false)
    );
    assert_eq!(queued(&store, "c1").await, ["hello"]);
    assert_eq!(b.cli_for_key(unq, &["HEXISTS", unq, "c1"]).trim(), "0");
    // A further retry finds it queued: nothing more.
    store.send("sq", "c1", "hello").await.unwrap();
    assert_eq!(queued(&store, "c1").await, ["hello"]);

    // Died after queueing, before clearing the record: the retry queues it again (at least
    // once) and a chat worker claims it once.
    store.accept_send_only("sq", "c2", "again").await.unwrap();
    let q = "runstream:sends";
    let xadd = b.cli_for_key(q, &["XADD", q, "*", "s", "sq", "c", "c2", "x", "again"]);
    assert!(xadd.contains('-'), "{xadd}");
    store.send("sq", "c2", "again").await.unwrap();
    assert_eq!(queued(&store, "c2").await, ["again", "again"]);
    let mut claimed = Vec::new();
    for _ in 0..3 {
        claimed.extend(store.claim_sends("w1", 100, 30_000, &[]).await.unwrap());
    }
    let crids: Vec<&str> = claimed.iter().map(|s| s.crid.as_str()).collect();
    assert_eq!(crids, ["c1", "c2"], "each send claimed once");
    // The duplicate was acknowledged; the two claimed wait for their replies.
    let pending = b.cli_for_key(q, &["XPENDING", q, "replies"]);
    assert_eq!(
        pending.lines().next().map(str::trim),
        Some("2"),
        "{pending}"
    );
    // The session holds each user message once.
    let snap = store.snapshot("sq").await.unwrap().unwrap();
    let snap = serde_json::to_value(&snap).unwrap();
    let users: Vec<&Value> = snap["state"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["client_request_id"])
        .collect();
    assert_eq!(users, [&json!("c1"), &json!("c2")], "{snap}");
}

shared_stores!(a_send_whose_queue_step_never_ran_is_queued_by_its_retry);
