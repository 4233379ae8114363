//! Simulated work that looks like the seeds: a supervisor run with workers
//! whose job ids come late, tools that sometimes fail, completions that carry
//! only `job_id`, tool events before `worker.started`; chat replies streamed
//! token by token with realistic pauses (some over 2 s), occasional fallback.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runstream::core::rng::Rng;
use serde_json::{json, Value};

use crate::hub::lock;
use crate::store::{Store, StoreResult};

/// A timed script of events.
pub type Script = Vec<(u64, &'static str, Value)>;

/// The events of a task run with `workers` workers, each with its delay in ms (before speed-up).
pub fn task_script(seed: u64, workers: usize) -> Script {
    let mut r = Rng::new([seed, 7]);
    let mut lanes: Vec<Vec<(&'static str, Value)>> = Vec::new();
    let names = ["search", "fetch", "summarize", "code", "browse", "plan"];
    for w in 0..workers {
        let wid = format!("w{}", w + 1);
        let jid = format!("job_{:04x}", r.next_u64() & 0xffff);
        let name = names.get(w % names.len()).copied().unwrap_or("work");
        let style = r.next_u64() % 4;
        let mut lane: Vec<(&'static str, Value)> = Vec::new();
        let tools = 1 + (r.next_u64() % 3) as usize;
        if style == 0 {
            // A tool event before the worker started: a placeholder that fills in.
            lane.push((
                "tool.started",
                json!({"worker_id": wid, "tool_call_id": format!("{wid}_t0"), "name": "warmup"}),
            ));
            lane.push(("tool.completed", json!({"worker_id": wid, "tool_call_id": format!("{wid}_t0"), "status": "ok", "duration_ms": 40})));
        }
        if style == 1 {
            lane.push((
                "worker.started",
                json!({"worker_id": wid, "job_id": jid, "name": name}),
            ));
        } else {
            lane.push(("worker.started", json!({"worker_id": wid, "name": name})));
        }
        for t in 1..=tools {
            let tc = format!("{wid}_t{t}");
            let fails = r.next_u64().is_multiple_of(5);
            lane.push(("tool.started", json!({"worker_id": wid, "tool_call_id": tc, "name": names.get((w + t) % names.len()).copied().unwrap_or("tool")})));
            if t == 1 && style != 1 {
                // The job id is assigned late.
                lane.push((
                    "worker.job_assigned",
                    json!({"worker_id": wid, "job_id": jid}),
                ));
            }
            let done = if fails {
                json!({"job_id": jid, "tool_call_id": tc, "status": "error", "error": "upstream timeout", "duration_ms": 900})
            } else {
                json!({"worker_id": wid, "tool_call_id": tc, "status": "ok", "duration_ms": 120 + r.next_u64() % 400})
            };
            lane.push(("tool.completed", done));
        }
        let done = if r.next_u64().is_multiple_of(2) {
            json!({"job_id": jid, "status": "succeeded"})
        } else {
            json!({"worker_id": wid, "job_id": jid, "status": if r.next_u64().is_multiple_of(4) { "failed" } else { "succeeded" }})
        };
        lane.push(("worker.completed", done));
        lanes.push(lane);
    }
    let mut script: Script = vec![(
        50,
        "run.started",
        json!({"title": format!("Research task ({workers} workers)")}),
    )];
    loop {
        let live: Vec<usize> = (0..lanes.len())
            .filter(|&i| lanes.get(i).is_some_and(|l| !l.is_empty()))
            .collect();
        if live.is_empty() {
            break;
        }
        let pick = live
            .get((r.next_u64() as usize) % live.len())
            .copied()
            .unwrap_or(0);
        if let Some(lane) = lanes.get_mut(pick) {
            let (ty, p) = lane.remove(0);
            script.push((80 + r.next_u64() % 300, ty, p));
        }
    }
    script.push((
        200,
        "supervisor.completed",
        json!({"summary": format!("{workers} workers finished; findings merged.")}),
    ));
    script.push((50, "run.completed", json!({"status": "succeeded"})));
    script
}

fn scaled(ms: u64, speed: f64) -> Duration {
    Duration::from_secs_f64(ms as f64 / 1000.0 / speed.max(0.01))
}

/// Runs a producer task in the background; a store failure ends it and is logged.
pub fn spawn(
    what: &'static str,
    id: String,
    task: impl Future<Output = StoreResult<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = task.await {
            crate::log(
                "produce.failed",
                json!({"run_id": id, "what": what, "error": e.to_string()}),
            );
        }
    });
}

/// Plays a script into run `id`, in time; returns when it is done (or the
/// run is gone). A `run.cancel_requested` (PROTOCOL §8) stops it: the run
/// ends `cancelled` with the rest of the script never appended.
pub async fn play(
    store: Arc<dyn Store>,
    id: String,
    script: Script,
    speed: f64,
) -> StoreResult<()> {
    for (delay, ty, payload) in script {
        tokio::time::sleep(scaled(delay, speed)).await;
        if crate::cancel::stop_requested(&*store, &id, None)
            .await?
            .is_some()
        {
            return end_cancelled(&*store, &id, &[]).await;
        }
        if store.append(&id, ty, payload).await?.is_none() {
            break;
        }
    }
    Ok(())
}

/// A producer's answer to a cancel: each of `messages` ends `cancelled`,
/// then, for a run-wide cancel, the run (unless something finished it).
async fn end_cancelled(store: &dyn Store, id: &str, messages: &[&str]) -> StoreResult<()> {
    let mut events: Vec<crate::store::NewEvent> = messages
        .iter()
        .map(|m| crate::store::NewEvent {
            ty: "message.completed".into(),
            payload: json!({"message_id": m, "finish_reason": "cancelled"}),
        })
        .collect();
    let run_wide = store
        .cancel_requested(id, &crate::store::CancelTarget::Run)
        .await?
        .is_some();
    if run_wide {
        events.push(crate::store::NewEvent {
            ty: "run.completed".into(),
            payload: json!({"status": "cancelled"}),
        });
    }
    if !events.is_empty() {
        // A finished run takes nothing (the gateway's grace ending came first): fine.
        store.append_batch(id, events, None).await?;
    }
    crate::log(
        "produce.cancelled",
        json!({"run_id": id, "run_wide": run_wide}),
    );
    Ok(())
}

/// Appends a whole script at once (a finished run).
pub async fn play_instant(store: &dyn Store, id: &str, script: Script) -> StoreResult<()> {
    for (_, ty, payload) in script {
        store.append(id, ty, payload).await?;
    }
    Ok(())
}

const REPLY: &str = "Here is what I found. The stream resumed from its cursor, so nothing was lost and nothing was shown twice. Every worker reported a final status, and the supervisor merged the results into one summary.";

/// Streams an assistant reply to the send `crid` in run `id`.
pub async fn reply(
    store: Arc<dyn Store>,
    id: String,
    crid: String,
    content: String,
) -> StoreResult<()> {
    let Some(meta) = store.meta(&id).await? else {
        return Ok(());
    };
    let mid = store.next_message_id(&id).await?;
    let (speed, seed) = (meta.speed, meta.chaos.seed);
    let mut rng = Rng::new([seed ^ crid.len() as u64, content.len() as u64]);
    // "think" in the question: a pause of 1.5 s before the reply starts (the send stays
    // unanswered meanwhile; the tests of taking a dead worker's send over use it).
    let before = if content.contains("think") { 1500 } else { 150 };
    tokio::time::sleep(scaled(before, speed)).await;
    store
        .append(
            &id,
            "message.created",
            json!({"message_id": mid, "role": "assistant", "reply_to": crid}),
        )
        .await?;
    // "slow" in the question, or 1 in 4 replies: a pause over 2 s before the first token.
    if content.contains("slow") || rng.next_u64().is_multiple_of(4) {
        tokio::time::sleep(scaled(2600, speed)).await;
    }
    let mut tokens = 0u64;
    for (i, word) in REPLY.split_inclusive(' ').enumerate() {
        if crate::cancel::stop_requested(&*store, &id, Some(&crid))
            .await?
            .is_some()
        {
            return end_cancelled(&*store, &id, &[&mid]).await;
        }
        let pause = if i == 12 && content.contains("stall") {
            2500
        } else {
            30 + rng.next_u64() % 60
        };
        tokio::time::sleep(scaled(pause, speed)).await;
        store
            .append(
                &id,
                "message.delta",
                json!({"message_id": mid, "delta": word}),
            )
            .await?;
        tokens += 1;
    }
    let mut done = json!({"message_id": mid, "finish_reason": "stop",
        "usage": {"prompt_tokens": content.split_whitespace().count(), "completion_tokens": tokens}});
    if let (true, Some(o)) = (rng.next_u64().is_multiple_of(5), done.as_object_mut()) {
        o.insert("fallback".into(), Value::from("small-model"));
    }
    store.append(&id, "message.completed", done).await?;
    Ok(())
}

/// How a benchmark token run is produced.
#[derive(Debug, Clone, Copy)]
pub struct TokenRun {
    /// Deltas (or ticks) to stream.
    pub n: u64,
    /// Deltas per second (0 = as fast as possible, live).
    pub rate: f64,
    /// Append everything before returning.
    pub instant: bool,
    /// `progress.tick` events (an unknown type: no state growth) instead of deltas.
    pub ticks: bool,
    /// Completed chat messages logged before the stream (the long-history benchmark).
    pub history: u64,
    /// Characters per history message.
    pub history_bytes: usize,
}

/// A benchmark run: one assistant message streamed as `n` deltas (or `n` unknown-type
/// `progress.tick` events), then `run.completed`.
pub async fn tokens(store: Arc<dyn Store>, id: String, t: TokenRun) -> StoreResult<()> {
    let one = |i: u64| {
        if t.ticks {
            ("progress.tick", json!({"n": i}))
        } else {
            (
                "message.delta",
                json!({"message_id": "m1", "delta": format!("t{} ", i % 1000)}),
            )
        }
    };
    // A long conversation before the streamed message (the long-history benchmark).
    let text = "x".repeat(t.history_bytes);
    for i in 0..t.history {
        let (mid, role) = (
            format!("h{i}"),
            if i % 2 == 0 { "user" } else { "assistant" },
        );
        store
            .append(
                &id,
                "message.created",
                json!({"message_id": mid, "role": role, "content": text}),
            )
            .await?;
        if role == "assistant" {
            store
                .append(
                    &id,
                    "message.completed",
                    json!({"message_id": mid, "finish_reason": "stop"}),
                )
                .await?;
        }
    }
    store
        .append(&id, "run.started", json!({"title": "token stream"}))
        .await?;
    store
        .append(
            &id,
            "message.created",
            json!({"message_id": "m1", "role": "assistant"}),
        )
        .await?;
    let start = tokio::time::Instant::now();
    for i in 0..t.n {
        // A cancel is checked every 20 events (a benchmark run appends fast).
        if i % 20 == 19
            && crate::cancel::stop_requested(&*store, &id, None)
                .await?
                .is_some()
        {
            return end_cancelled(&*store, &id, &["m1"]).await;
        }
        if !t.instant {
            if t.rate > 0.0 {
                let due = start + Duration::from_secs_f64(i as f64 / t.rate);
                tokio::time::sleep_until(due).await;
            } else if i % 500 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let (ty, p) = one(i);
        store.append(&id, ty, p).await?;
    }
    store
        .append(
            &id,
            "message.completed",
            json!({"message_id": "m1", "finish_reason": "stop"}),
        )
        .await?;
    store
        .append(&id, "run.completed", json!({"status": "succeeded"}))
        .await?;
    Ok(())
}

// ---- test knobs: requests that never answer, sockets closed with a code --------

/// What a test knob key has seen: requests (or sockets) received, and how many
/// of them are still open (a client that aborts or closes brings this down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KnobStats {
    /// Requests (or WebSocket upgrades) received.
    pub hits: u64,
    /// Of those, still open.
    pub open: u64,
}

/// Most knob keys remembered; beyond it the table starts over (tests use fresh keys).
const MAX_KNOB_KEYS: usize = 4096;

fn knobs() -> &'static std::sync::Mutex<std::collections::HashMap<String, KnobStats>> {
    static KNOBS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, KnobStats>>,
    > = std::sync::OnceLock::new();
    KNOBS.get_or_init(Default::default)
}

/// Counts one open request of `key` for as long as it lives (also when the
/// client goes away and the server drops the handler).
struct KnobGuard(String);

impl KnobGuard {
    fn new(key: String) -> Self {
        let mut m = lock(knobs());
        if m.len() >= MAX_KNOB_KEYS && !m.contains_key(&key) {
            m.clear();
        }
        let s = m.entry(key.clone()).or_default();
        s.hits += 1;
        s.open += 1;
        Self(key)
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        if let Some(s) = lock(knobs()).get_mut(&self.0) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// Routes of the test knobs, merged into the main router:
/// - `ANY /api/chaos/hang/{key}`: counts the request and never answers (a send
///   or snapshot request to a server that hangs); the client must time out or abort.
/// - `GET /api/chaos/stats/{key}`: `{hits, open}` of that key.
/// - `GET /api/chaos/ws/{key}/{code}` (WebSocket): reads the first frame (the
///   subscribe), then closes the socket with close code `code` (e.g. 4401, 4403).
pub fn knob_routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
    use axum::extract::Path;
    use axum::routing::{any, get};
    use futures_util::StreamExt;

    async fn hang(Path(key): Path<String>) -> axum::response::Response {
        let _open = KnobGuard::new(key);
        std::future::pending().await
    }
    async fn stats(Path(key): Path<String>) -> axum::Json<KnobStats> {
        axum::Json(lock(knobs()).get(&key).copied().unwrap_or_default())
    }
    async fn close_with(mut socket: WebSocket, code: u16, key: String) {
        let _open = KnobGuard::new(key);
        let _ = socket.next().await;
        let frame = CloseFrame {
            code,
            reason: "chaos: closing with a code".into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
        // Wait for the client's close reply (or its going away).
        while let Some(Ok(_)) = socket.next().await {}
    }
    async fn ws(
        Path((key, code)): Path<(String, u16)>,
        up: WebSocketUpgrade,
    ) -> axum::response::Response {
        up.on_upgrade(move |s| close_with(s, code, key))
    }
    axum::Router::new()
        .route("/api/chaos/hang/{key}", any(hang))
        .route("/api/chaos/stats/{key}", get(stats))
        .route("/api/chaos/ws/{key}/{code}", get(ws))
}
