//! The publish API (SERVER.md §1): how a team's backend, in any language,
//! creates runs, appends their events and hears chat sends, over HTTP with
//! the key of `--publish-key-file` (routes absent without one).
//!
//! - `POST /api/publish/runs` `{"run_id"?, "session_id"?}` → `201 {"run_id"}`
//!   (`200` for a run that exists).
//! - `POST /api/publish/runs/{run_id}/events` with `Idempotency-Key` and
//!   `{"events":[{"type","payload"}, …]}` → `200 {"first_event_id",
//!   "last_event_id"}`: atomic, dense ids; a repeat of the key (same body)
//!   appends nothing and answers the same ids; the key with another body is
//!   `422`; a finished run `409`; an invalid event `400` naming it (its index
//!   and why), nothing appended. The key is kept in the store 24 h, so it
//!   holds across replicas on Redis.
//! - `GET /api/publish/sends?after=<cursor>&wait_ms=<≤ 30000>` → `200
//!   {"sends":[…], "next"}`: chat sends, long polled, at least once.
//!
//! Every route passes the [`Granted<Publish>`](crate::auth::Granted) extractor:
//! the key, compared in constant time, or `401`/`403`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use runstream::core::batch::{check_batch, BatchError};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Granted, Publish};
use crate::store::{valid_cursor, valid_id, BatchOutcome, IdemKey, NewEvent, RunKind, RunSpec};
use crate::{log, unavailable, App};

/// Most events in one batch (the shared check's bound).
pub use runstream::core::batch::MAX_BATCH;
/// Longest `Idempotency-Key` (visible ASCII).
pub const MAX_KEY_LEN: usize = 200;
/// Longest wait of the sends long poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most sends one poll answers.
pub const SENDS_PER_POLL: usize = 500;

/// The publish routes (merged only when a publish key is configured).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/publish/runs", post(create_run))
        .route("/api/publish/runs/{run_id}/events", post(append_events))
        .route("/api/publish/sends", get(sends))
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CreateBody {
    run_id: Option<String>,
    session_id: Option<String>,
}

async fn create_run(
    _granted: Granted<Publish>,
    State(app): State<App>,
    body: Option<Json<CreateBody>>,
) -> Response {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    if let Some(s) = &b.session_id {
        if !valid_id(s) {
            return bad(
                "session_id must be 1 to 128 characters, without control characters or braces",
            );
        }
    }
    let id = match b.run_id {
        Some(id) if valid_id(&id) => id,
        Some(_) => {
            return bad("run_id must be 1 to 128 characters, without control characters or braces")
        }
        None => match app.hub.store.new_run_id(rand_seed()).await {
            Ok(id) => id,
            Err(e) => return unavailable("", &e),
        },
    };
    let spec = RunSpec {
        kind: RunKind::Task,
        chaos: Default::default(),
        speed: 1.0,
        session_id: b.session_id.clone(),
    };
    match app.hub.store.create(&id, spec).await {
        Ok(fresh) => {
            if fresh {
                log(
                    "publish.run_created",
                    json!({"run_id": id, "session_id": b.session_id}),
                );
            }
            let status = if fresh {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(json!({"run_id": id}))).into_response()
        }
        Err(e) => unavailable(&id, &e),
    }
}

/// A seed for a fresh run id (the store makes it unique; this only spreads them).
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Whether `headers` name a JSON body (`application/json`, `application/*+json`), as
/// axum's `Json` extractor (and the kit) decide.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
}

async fn append_events(
    _granted: Granted<Publish>,
    State(app): State<App>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => return bad("Idempotency-Key is required"),
        Some(Ok(k))
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        Some(_) => return bad("Idempotency-Key must be 1 to 200 visible ASCII characters"),
    };
    // The body as axum's optional `Json` reads one: no Content-Type → none, another type → 415.
    if !headers.contains_key(CONTENT_TYPE) {
        return bad("expected a JSON body {\"events\": [...]}");
    }
    if !json_content_type(&headers) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`",
        )
            .into_response();
    }
    // The one batch check of both servers (the kit calls it in its wasm).
    // Not UTF-8: refused, never stored with U+FFFD in its place (the kit answers the same).
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "Failed to parse the request body as JSON: invalid UTF-8",
            )
                .into_response()
        }
    };
    let batch = match check_batch(&run_id, text, false) {
        Ok(b) => b,
        Err(BatchError::Syntax(m)) => return (StatusCode::BAD_REQUEST, m).into_response(),
        Err(BatchError::Invalid(m)) => return bad(m),
    };
    // The digest of the canonical body: keys sorted, so key order does not matter.
    let digest = hex(&Sha256::digest(batch.canonical.as_bytes()));
    let n = batch.events.len() as u64;
    let mut events = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        // Checked JSON (the codec's canonical text): serde reads it back for the store.
        let payload = match serde_json::from_str(&e.payload) {
            Ok(p) => p,
            Err(err) => return bad(format!("payload of {}: {err}", e.ty)),
        };
        events.push(NewEvent { ty: e.ty, payload });
    }
    let out = app
        .hub
        .store
        .append_batch(&run_id, events, Some(IdemKey { key, digest }))
        .await;
    match out {
        Ok(BatchOutcome::Appended { first, last }) => {
            app.metrics.published(n);
            Json(json!({"first_event_id": first, "last_event_id": last})).into_response()
        }
        Ok(BatchOutcome::Repeated { first, last }) => {
            Json(json!({"first_event_id": first, "last_event_id": last})).into_response()
        }
        Ok(BatchOutcome::KeyConflict) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "this Idempotency-Key was used with another body"})),
        )
            .into_response(),
        Ok(BatchOutcome::Finished) => (
            StatusCode::CONFLICT,
            Json(json!({"run_id": run_id, "status": "finished"})),
        )
            .into_response(),
        Ok(BatchOutcome::ReplyTaken) => (
            StatusCode::CONFLICT,
            Json(json!({"run_id": run_id, "status": "reply_taken"})),
        )
            .into_response(),
        Ok(BatchOutcome::UnknownRun) => (StatusCode::NOT_FOUND, "unknown run").into_response(),
        Err(e) => unavailable(&run_id, &e),
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(D[usize::from(x >> 4)]));
        s.push(char::from(D[usize::from(x & 15)]));
    }
    s
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SendsQuery {
    after: Option<String>,
    wait_ms: Option<u64>,
}

async fn sends(
    _granted: Granted<Publish>,
    State(app): State<App>,
    Query(q): Query<SendsQuery>,
) -> Response {
    let after = q.after.filter(|a| !a.is_empty());
    if let Some(a) = &after {
        if !valid_cursor(a) {
            return bad("after: a cursor from an earlier answer's `next`");
        }
    }
    let wait = q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS);
    // A drain ends a waiting poll at once (nothing new; the producer polls
    // again, through the balancer, on another replica).
    let mut draining = app.hub.draining.subscribe();
    let poll = app
        .hub
        .store
        .sends_after(after.as_deref(), SENDS_PER_POLL, wait);
    let result = tokio::select! {
        r = poll => r,
        _ = draining.wait_for(|d| *d) => {
            let next = after.clone().unwrap_or_else(|| "0-0".to_owned());
            return Json(json!({"sends": [], "next": next})).into_response();
        }
    };
    match result {
        Ok((sends, next)) => Json(json!({"sends": sends, "next": next})).into_response(),
        Err(e) => unavailable("", &e),
    }
}
