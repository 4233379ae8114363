//! Retention (docs/REDIS.md "Retention", issue 26): a finished run's keys all
//! get the retention as their TTL in the step that logs `run.completed`, an
//! unfinished run expires after the idle retention (refreshed by each write),
//! and an expired run is unknown (404) and can be created again; on the
//! memory store, the Redis store and a 3-master Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use runstream_server::store::{
    self, CancelTarget, IdemKey, NewEvent, Retention, RunKind, RunSpec, Store,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{http, Backend, Kind};

fn task() -> RunSpec {
    RunSpec {
        kind: RunKind::Task,
        chaos: Default::default(),
        speed: 1.0,
        session_id: None,
    }
}

async fn open(b: &Backend, r: Retention) -> Arc<dyn Store> {
    store::open_with(&b.spec(), b.window, r).await.unwrap()
}

/// Every key of run `id` in Redis (`KEYS` on the node of its slot) with its `PTTL`.
fn keys_with_pttl(b: &Backend, id: &str) -> Vec<(String, i64)> {
    let probe = format!("runstream:{{{id}}}:meta");
    let pattern = format!("runstream:{{{id}}}:*");
    b.cli_for_key(&probe, &["KEYS", &pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|k| {
            let t = b.cli_for_key(k, &["PTTL", k]).trim().parse().unwrap();
            (k.to_owned(), t)
        })
        .collect()
}

/// `/api/runs/{id}/snapshot` and the SSE stream's statuses, and a WebSocket subscribe's
/// answer (`subscribed` or the error code).
async fn statuses(addr: &str, id: &str) -> (u16, u16, String) {
    let (snap, _, _) = http(addr, "GET", &format!("/api/runs/{id}/snapshot"), &[], None).await;
    let (sse, _, _) = support::http_for(
        addr,
        "GET",
        &format!("/api/stream/runs/{id}"),
        &[],
        None,
        Duration::from_millis(300),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "run_id": id}).to_string(),
    ))
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(v) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) else {
                continue;
            };
            match v["op"].as_str() {
                Some("subscribed") => return "subscribed".to_owned(),
                Some("error") => return v["code"].as_str().unwrap_or("?").to_owned(),
                _ => {}
            }
        }
        "closed".to_owned()
    })
    .await
    .unwrap();
    (snap, sse, answer)
}

async fn finished_runs_expire_after_the_retention(b: Backend) {
    let s = open(
        &b,
        Retention {
            finished_s: 2,
            idle_s: 600,
        },
    )
    .await;
    let addr = support::start(s.clone()).await;
    let id = "ret_finished";
    assert!(s.create(id, task()).await.unwrap());
    s.append(id, "run.started", json!({})).await.unwrap();
    let key = IdemKey {
        key: "k1".into(),
        digest: "ab".repeat(32),
    };
    let batch = vec![NewEvent {
        ty: "worker.started".into(),
        payload: json!({"worker_id": "w1"}),
    }];
    s.append_batch(id, batch.clone(), Some(key.clone()))
        .await
        .unwrap();
    s.request_cancel(id, &CancelTarget::Run, json!({"client_request_id": "c1"}))
        .await
        .unwrap();
    s.send("ret_chat", "crid-1", "hello").await.unwrap();
    if b.kind != Kind::Memory {
        // A chat session's keys (meta, log, send key) live the idle retention too.
        let keys = keys_with_pttl(&b, "ret_chat");
        assert!(keys.len() >= 3, "{keys:?}");
        for (k, t) in &keys {
            assert!(*t > 590_000 && *t <= 600_000, "{k}: {t} ms");
        }
        // Unfinished: every key of the run lives the idle retention (or less: its own TTL).
        let keys = keys_with_pttl(&b, id);
        assert!(keys.len() >= 5, "{keys:?}");
        for (k, t) in &keys {
            assert!(*t > 590_000 && *t <= 600_000, "{k}: {t} ms");
        }
    }
    s.append(id, "run.completed", json!({"status": "cancelled"}))
        .await
        .unwrap();
    if b.kind != Kind::Memory {
        // Finished: every key of the run's slot gets the retention, in the same step.
        let keys = keys_with_pttl(&b, id);
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        for part in ["meta", "log", "keys", "cancel:run", "idem:k1"] {
            assert!(
                names.contains(&format!("runstream:{{{id}}}:{part}").as_str()),
                "{part} missing: {names:?}"
            );
        }
        for (k, t) in &keys {
            assert!(*t > 1_000 && *t <= 2_000, "{k}: {t} ms");
        }
    }
    assert_eq!(
        statuses(&addr, id).await,
        (200, 200, "subscribed".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    // Gone: unknown to every route, no key left; the chat session is still there.
    assert!(s.meta(id).await.unwrap().is_none());
    assert_eq!(
        statuses(&addr, id).await,
        (404, 404, "not_found".to_owned())
    );
    // A reply's message counter (a producer that was still at it) writes nothing either.
    s.next_message_id(id).await.unwrap();
    if b.kind != Kind::Memory {
        assert_eq!(keys_with_pttl(&b, id), vec![]);
    }
    assert!(s.meta("ret_chat").await.unwrap().is_some());
    // The same id can be created again, and its idempotency key is new again.
    assert!(s.create(id, task()).await.unwrap());
    assert_eq!(
        s.append_batch(id, batch, Some(key)).await.unwrap(),
        store::BatchOutcome::Appended { first: 1, last: 1 }
    );
    // A new run: no state of the old one (this process cached its snapshot at id 4) leaks in.
    for _ in 0..3 {
        s.append(id, "run.started", json!({})).await.unwrap();
    }
    let (st, _, body) = http(&addr, "GET", &format!("/api/runs/{id}/snapshot"), &[], None).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["event_id"], 4);
    assert_eq!(v["state"]["cancel_requested"], false, "{v}");
    assert_eq!(v["state"]["status"], "running", "{v}");
}

async fn idle_runs_expire_and_writes_refresh_them(b: Backend) {
    let s = open(
        &b,
        Retention {
            finished_s: 600,
            idle_s: 2,
        },
    )
    .await;
    let addr = support::start(s.clone()).await;
    let id = "ret_idle";
    assert!(s.create(id, task()).await.unwrap());
    s.append(id, "run.started", json!({})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // An append refreshes every key of its run.
    s.append(id, "worker.started", json!({"worker_id": "w1"}))
        .await
        .unwrap();
    if b.kind != Kind::Memory {
        for (k, t) in keys_with_pttl(&b, id) {
            assert!(t > 1_500 && t <= 2_000, "{k}: {t} ms after a refresh");
        }
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // 2.4 s after the first write, 1.2 s after the last: still there.
    assert!(s.meta(id).await.unwrap().is_some());
    assert_eq!(
        statuses(&addr, id).await,
        (200, 200, "subscribed".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(s.meta(id).await.unwrap().is_none());
    assert_eq!(
        statuses(&addr, id).await,
        (404, 404, "not_found".to_owned())
    );
    if b.kind != Kind::Memory {
        assert_eq!(keys_with_pttl(&b, id), vec![]);
    }
}

/// Retention 0 keeps runs forever: no TTL on any key.
async fn zero_keeps_forever(b: Backend) {
    let s = open(&b, Retention::FOREVER).await;
    let id = "ret_forever";
    assert!(s.create(id, task()).await.unwrap());
    s.request_cancel(id, &CancelTarget::Run, json!({"client_request_id": "c1"}))
        .await
        .unwrap();
    s.append(id, "run.completed", json!({"status": "cancelled"}))
        .await
        .unwrap();
    let keys = keys_with_pttl(&b, id);
    assert!(keys.len() >= 3, "{keys:?}");
    for (k, t) in keys {
        assert_eq!(t, -1, "{k}");
    }
}

macro_rules! on_every_store {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                let b = super::Backend::new(super::Kind::Memory).await.unwrap();
                super::$name(b).await;
            }
            #[tokio::test]
            async fn redis() {
                let Some(b) = super::Backend::new(super::Kind::Redis).await else {
                    return;
                };
                super::$name(b).await;
            }
            #[tokio::test]
            async fn cluster() {
                let Some(b) = super::Backend::new(super::Kind::Cluster).await else {
                    return;
                };
                super::$name(b).await;
            }
        }
    };
}

on_every_store!(finished_runs_expire_after_the_retention);
on_every_store!(idle_runs_expire_and_writes_refresh_them);

mod zero_keeps_forever {
    #[tokio::test]
    async fn redis() {
        let Some(b) = super::Backend::new(super::Kind::Redis).await else {
            return;
        };
        super::zero_keeps_forever(b).await;
    }
}

/// The memory store forgets expired runs a bounded batch per create or write
/// (`SWEEP_BATCH`), without a lookup of each and without a scan of every run.
#[tokio::test]
async fn the_memory_store_sweeps_expired_runs_in_bounded_batches() {
    use runstream_server::store::memory::{MemoryStore, SWEEP_BATCH};
    let s = MemoryStore::new(100).with_retention(Retention {
        finished_s: 600,
        idle_s: 1,
    });
    let n = 2 * SWEEP_BATCH + 10;
    for i in 0..n {
        assert!(s.create(&format!("sweep_{i}"), task()).await.unwrap());
    }
    let runs = |v: serde_json::Value| v["runs"].as_u64().unwrap() as usize;
    assert_eq!(runs(s.info().await.unwrap()), n);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(s.create("fresh", task()).await.unwrap());
    assert_eq!(runs(s.info().await.unwrap()), n + 1 - SWEEP_BATCH);
    s.append("fresh", "run.started", json!({})).await.unwrap();
    assert_eq!(runs(s.info().await.unwrap()), n + 1 - 2 * SWEEP_BATCH);
    s.append("fresh", "run.completed", json!({"status": "succeeded"}))
        .await
        .unwrap();
    assert_eq!(
        runs(s.info().await.unwrap()),
        1,
        "only the live run is left"
    );
}
