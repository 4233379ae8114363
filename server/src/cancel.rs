//! PROTOCOL §8, the gateway's half: a cancel is a durable, idempotent
//! request in the run's log (`run.cancel_requested`), one per target however
//! many presses, tabs and replicas, answered in the order §8 gives:
//! authorization (the caller's [`Granted`](crate::auth::Granted) or the
//! WebSocket frame's check), then "already asked" (`202` with the first
//! request's id), then "already finished" (`409`), then the append (`202`
//! with its id).
//!
//! The producer doing the work stops it when the event appears
//! ([`stop_requested`], used by this repository's producers). If no
//! producer ends the target within `--cancel-grace-ms`, the gateway appends
//! the endings itself ([`end_target`]): a reply's `message.completed
//! {"finish_reason":"cancelled"}` (a reply that never started gets an empty
//! one, so no wait stays open), or for a run-wide cancel every streaming
//! message's end and `run.completed {"status":"cancelled"}`. The deadline is
//! kept in the store ([`Store::schedule_grace`]) and every replica's
//! [`grace_poller`] claims due ones (one winner each), so the target ends
//! also when the replica that took the cancel is gone.

use std::sync::Arc;
use std::time::Duration;

use runstream::core::state::MessageStatus;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::store::{CancelOutcome, CancelTarget, NewEvent, Store, StoreError, StoreResult};
use crate::App;

/// The default grace period (`--cancel-grace-ms`).
pub const DEFAULT_GRACE_MS: u64 = 30_000;
/// Longest `reason` kept (characters).
pub const MAX_REASON_CHARS: usize = 1000;

/// A cancel's body (`POST /api/runs/{run_id}/cancel`, or the WebSocket op's fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Idempotency key.
    pub client_request_id: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// The send whose reply to stop (a reply cancel).
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// How a cancel was answered.
#[derive(Debug)]
pub enum CancelAnswer {
    /// `202 {"run_id","event_id"}`: the request is in the log (now or before).
    Accepted(u64),
    /// `409 {"run_id","status"}`: the target already ended (`status` is the
    /// run's, or the reply message's `completed`/`failed`).
    Finished(String),
    /// `400`: the body is not acceptable.
    Invalid(String),
    /// `404`: no such run.
    NotFound,
    /// `425` + `Retry-After` (WebSocket `unavailable`): a reply cancel names a
    /// send this run has not logged (yet: the cancel overtook its send, so
    /// the client retries). Nothing is appended, so made-up `reply_to`
    /// values cannot grow the run.
    TooEarly,
    /// `503`: the store failed (retried).
    Unavailable(StoreError),
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 128
}

/// Handles one cancel of run `run_id` (already authorized).
pub async fn cancel(app: &App, run_id: &str, body: CancelBody) -> CancelAnswer {
    if !valid_id(&body.client_request_id) {
        return CancelAnswer::Invalid("client_request_id must be 1 to 128 characters".into());
    }
    if body.reply_to.as_deref().is_some_and(|r| !valid_id(r)) {
        return CancelAnswer::Invalid("reply_to must be 1 to 128 characters".into());
    }
    if body
        .reason
        .as_deref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return CancelAnswer::Invalid(format!(
            "reason must be at most {MAX_REASON_CHARS} characters"
        ));
    }
    match decide(app, run_id, &body).await {
        Ok(a) => a,
        Err(e) => CancelAnswer::Unavailable(e),
    }
}

async fn decide(app: &App, run_id: &str, body: &CancelBody) -> StoreResult<CancelAnswer> {
    let store = &app.hub.store;
    let target = match &body.reply_to {
        Some(r) => CancelTarget::Reply(r.clone()),
        None => CancelTarget::Run,
    };
    // Already asked: one request per target, whatever ended since.
    if let Some(n) = store.cancel_requested(run_id, &target).await? {
        return Ok(CancelAnswer::Accepted(n));
    }
    if let CancelTarget::Reply(crid) = &target {
        let (sent, reply) = reply_status(&**store, run_id, crid).await?;
        if !sent {
            return Ok(CancelAnswer::TooEarly);
        }
        if let Some(status) = reply {
            if status != "streaming" {
                return Ok(CancelAnswer::Finished(status));
            }
        }
    }
    let mut payload = json!({"client_request_id": body.client_request_id});
    if let Some(o) = payload.as_object_mut() {
        if let Some(r) = &body.reason {
            o.insert("reason".into(), Value::from(r.clone()));
        }
        if let Some(r) = &body.reply_to {
            o.insert("reply_to".into(), Value::from(r.clone()));
        }
    }
    Ok(
        match store.request_cancel(run_id, &target, payload).await? {
            CancelOutcome::Requested(n) => {
                crate::log(
                    "cancel.requested",
                    json!({"run_id": run_id, "event_id": n, "target": target.key(), "client_request_id": body.client_request_id}),
                );
                // The deadline goes to the store: any replica ends the target.
                // A failure here leaves the request in the log (the producer
                // still stops); it is logged, and the cancel is still accepted.
                let due = now_ms().saturating_add(app.cancel_grace_ms);
                if let Err(e) = store.schedule_grace(run_id, &target, due).await {
                    crate::log(
                        "cancel.grace_unscheduled",
                        json!({"run_id": run_id, "error": e.to_string()}),
                    );
                }
                CancelAnswer::Accepted(n)
            }
            CancelOutcome::Already(n) => CancelAnswer::Accepted(n),
            CancelOutcome::Finished => CancelAnswer::Finished(run_status(&**store, run_id).await?),
            CancelOutcome::ReplyFinished(end) => CancelAnswer::Finished(end.as_str().to_owned()),
            CancelOutcome::UnknownRun => CancelAnswer::NotFound,
        },
    )
}

/// The run's status in its reduced state (`succeeded`, `failed`, `cancelled`, …).
async fn run_status(store: &dyn Store, run_id: &str) -> StoreResult<String> {
    let snap = store.snapshot(run_id).await?;
    Ok(snap
        .and_then(|s| s.into_state().ok())
        .map_or_else(|| "finished".to_owned(), |st| st.status.as_str().to_owned()))
}

/// Whether the run logged the send `crid`, and the status of its reply
/// (`streaming`, `completed`, `failed`) if the reply started.
async fn reply_status(
    store: &dyn Store,
    run_id: &str,
    crid: &str,
) -> StoreResult<(bool, Option<String>)> {
    let snap = store.snapshot(run_id).await?;
    let Some(st) = snap.and_then(|s| s.into_state().ok()) else {
        return Ok((false, None));
    };
    let sent = st
        .messages
        .iter()
        .any(|m| m.client_request_id.as_deref() == Some(crid));
    let reply = st
        .messages
        .iter()
        .filter(|m| m.reply_to.as_deref() == Some(crid))
        .map(|m| m.status.as_str().to_owned())
        .next_back();
    Ok((sent, reply))
}

/// Whether a producer of run `run_id` should stop now (a run-wide cancel,
/// or, with `reply_to`, a cancel of that reply): the id of the request.
pub async fn stop_requested(
    store: &dyn Store,
    run_id: &str,
    reply_to: Option<&str>,
) -> StoreResult<Option<u64>> {
    if let Some(n) = store.cancel_requested(run_id, &CancelTarget::Run).await? {
        return Ok(Some(n));
    }
    match reply_to {
        Some(crid) => {
            store
                .cancel_requested(run_id, &CancelTarget::Reply(crid.to_owned()))
                .await
        }
        None => Ok(None),
    }
}

/// The Unix time in ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Most due graces one poll claims.
const GRACES_PER_POLL: usize = 100;

/// Every `every`, claims the graces that are due (in any replica's
/// requests) and ends their targets. Runs for the process's life.
pub async fn grace_poller(store: Arc<dyn Store>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let due = match store.claim_due_graces(now_ms(), GRACES_PER_POLL).await {
            Ok(d) => d,
            Err(e) => {
                crate::log("cancel.grace_poll_failed", json!({"error": e.to_string()}));
                continue;
            }
        };
        for (run, target) in due {
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(e) = end_target(store, &run, target).await {
                    crate::log(
                        "cancel.grace_failed",
                        json!({"run_id": run, "error": e.to_string()}),
                    );
                }
            });
        }
    }
}

/// How often a replica looks for due graces: a quarter of the grace period,
/// between 50 ms and 1 s.
pub fn poll_interval(grace_ms: u64) -> Duration {
    Duration::from_millis((grace_ms / 4).clamp(50, 1000))
}

/// Ends whatever of `target` no producer ended (its grace period is over). A reply that
/// a consumer starts while this decides (the empty ended reply is refused, `reply_taken`)
/// is read again and ended: a stop always ends (PROTOCOL §8).
pub async fn end_target(
    store: Arc<dyn Store>,
    run_id: &str,
    target: CancelTarget,
) -> StoreResult<()> {
    // One reply per send: a second refusal cannot follow the reply's own start.
    for _ in 0..3 {
        if end_once(&store, run_id, &target).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// One attempt of [`end_target`]: `false` when the reply started meanwhile (read again).
async fn end_once(
    store: &Arc<dyn Store>,
    run_id: &str,
    target: &CancelTarget,
) -> StoreResult<bool> {
    let Some(snap) = store.snapshot(run_id).await? else {
        return Ok(true);
    };
    let Ok(state) = snap.into_state() else {
        return Ok(true);
    };
    if state.is_finished() {
        return Ok(true);
    }
    let mut events = Vec::new();
    let end = |mid: &str| NewEvent {
        ty: "message.completed".into(),
        payload: json!({"message_id": mid, "finish_reason": "cancelled"}),
    };
    match target {
        CancelTarget::Reply(crid) => {
            let replies: Vec<_> = state
                .messages
                .iter()
                .filter(|m| m.reply_to.as_deref() == Some(crid.as_str()))
                .collect();
            for m in &replies {
                if let (MessageStatus::Streaming, Some(mid)) = (m.status, &m.message_id) {
                    events.push(end(mid));
                }
            }
            if replies.is_empty() {
                // The reply never started: an empty one, ended, so the sender's wait ends.
                let mid = store.next_message_id(run_id).await?;
                events.push(NewEvent {
                    ty: "message.created".into(),
                    payload: json!({"message_id": mid, "role": "assistant", "reply_to": crid}),
                });
                events.push(end(&mid));
            }
        }
        CancelTarget::Run => {
            for m in &state.messages {
                if let (MessageStatus::Streaming, Some(mid)) = (m.status, &m.message_id) {
                    events.push(end(mid));
                }
            }
            events.push(NewEvent {
                ty: "run.completed".into(),
                payload: json!({"status": "cancelled"}),
            });
        }
    }
    if events.is_empty() {
        return Ok(true);
    }
    let n = events.len();
    if store.append_batch(run_id, events, None).await? == crate::store::BatchOutcome::ReplyTaken {
        // The reply started meanwhile: read again, and end it.
        return Ok(false);
    }
    crate::log(
        "cancel.ended_by_gateway",
        json!({"run_id": run_id, "target": target.key(), "events": n}),
    );
    Ok(true)
}
