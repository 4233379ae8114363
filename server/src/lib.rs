//! The reference server of runstream's wire contract (`../shared/spec/PROTOCOL.md`):
//! SSE with `Last-Event-ID` replay, WebSocket subscribe/resume, snapshots,
//! idempotent chat sends, and chaos knobs for the demo and the tests.

pub mod hub;
pub mod scenario;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use runstream::core::rng::Rng;
use runstream::core::wire::{
    Accepted, ClientOp, ErrorCode, SendBody, ServerOp, WireEnvelope, WireError,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tower_http::cors::CorsLayer;
use tower_http::services::ServeDir;

use hub::{lock, Chaos, Hub, Run, RunKind};

/// Server settings.
#[derive(Clone)]
pub struct Settings {
    /// Static demo page directory.
    pub www: PathBuf,
    /// wasm-pack output directory, served under `/pkg`.
    pub pkg: PathBuf,
    /// SSE heartbeat interval.
    pub heartbeat_ms: u64,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
}

/// The whole HTTP surface.
pub fn router(settings: Settings) -> (Router, App) {
    let app = App {
        hub: Hub::new(settings.heartbeat_ms),
    };
    let r = Router::new()
        .route("/api/stream/runs/{run_id}", get(sse))
        .route("/api/ws", get(ws))
        .route("/api/runs/{run_id}/snapshot", get(snapshot))
        .route("/api/chat/{session_id}/messages", post(chat_send))
        .route("/api/admin/runs", post(create_run))
        .route("/api/admin/runs/{run_id}/chaos", post(set_chaos))
        .route("/api/admin/runs/{run_id}/prune", post(prune))
        .route("/api/admin/runs/{run_id}/append", post(append_raw))
        .route("/api/admin/runs/{run_id}/stats", get(stats))
        .route("/api/admin/restart", post(restart))
        .route("/api/admin/frames", get(frames))
        .merge(scenario::knob_routes())
        .nest_service("/pkg", ServeDir::new(&settings.pkg))
        .fallback_service(ServeDir::new(&settings.www))
        // Cross-origin clients can read Retry-After only if it is exposed.
        .layer(CorsLayer::very_permissive().expose_headers([header::RETRY_AFTER]))
        .with_state(app.clone());
    (r, app)
}

fn log(event: &str, fields: Value) {
    let mut v = json!({"ts": hub::rfc3339_now(), "event": event});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    println!("{v}");
}

// ---- streaming -------------------------------------------------------------

/// Counts an open stream of a run for as long as it lives (also when its task is aborted).
struct OpenGuard(Arc<std::sync::Mutex<Run>>);

impl OpenGuard {
    fn new(run: &Arc<std::sync::Mutex<Run>>) -> (Self, u64) {
        let mut r = lock(run);
        r.connections_total += 1;
        r.connections_open += 1;
        (Self(run.clone()), r.connections_total)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut r = lock(&self.0);
        r.connections_open = r.connections_open.saturating_sub(1);
    }
}

/// What a producer emits; SSE and WebSocket format it differently.
enum Frame {
    Retry(u64),
    Event(Arc<RawValue>),
    Snapshot(u64, Value),
    Heartbeat,
    Malformed(Vec<u8>),
}

fn malformed(rng: &mut Rng, run_id: &str, next_id: u64) -> Vec<u8> {
    match rng.next_u64() % 5 {
        0 => b"{not json".to_vec(),
        1 => json!({"event_id": next_id, "run_id": format!("{run_id}_other"), "type": "tool.started",
            "timestamp": hub::rfc3339_now(), "payload": {"worker_id": "intruder", "tool_call_id": "x", "name": "x"}})
        .to_string()
        .into_bytes(),
        2 => json!({"event_id": "seven", "run_id": run_id, "type": "x", "timestamp": "now", "payload": {}})
            .to_string()
            .into_bytes(),
        3 => json!({"event_id": next_id.saturating_sub(3).max(1), "run_id": run_id, "type": "tool.started",
            "timestamp": hub::rfc3339_now(), "payload": {"worker_id": "backwards"}})
        .to_string()
        .into_bytes(),
        _ => vec![0xff, 0xfe, b'{', 0xc3, 0x28, b'}'],
    }
}

/// Streams run `run` to `out` from after `last`: (snapshot,) replay, then live,
/// applying the run's chaos. Returns the termination reason.
async fn produce(
    hub: Arc<Hub>,
    run: Arc<std::sync::Mutex<Run>>,
    mut notify: watch::Receiver<u64>,
    last: u64,
    out: mpsc::Sender<Frame>,
    conn_index: u64,
) -> &'static str {
    let (chaos, run_id) = {
        let r = lock(&run);
        (r.chaos.clone(), r.id.clone())
    };
    let mut rng = Rng::new([chaos.seed, conn_index]);
    let mut epoch = hub.epoch.subscribe();
    epoch.borrow_and_update();
    macro_rules! emit {
        ($f:expr) => {
            if out.send($f).await.is_err() {
                return "client_gone";
            }
        };
    }
    if chaos.hold_first_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(chaos.hold_first_ms)) => {}
            _ = epoch.changed() => return "restart",
        }
    }
    if let Some(ms) = chaos.retry_ms {
        emit!(Frame::Retry(ms));
    }
    if chaos.oversize_bytes > 0 {
        let mut big = br#"{"event_id":1,"run_id":"x","payload":""#.to_vec();
        big.resize(chaos.oversize_bytes, b'x');
        big.extend_from_slice(b"\"}");
        emit!(Frame::Malformed(big));
    }
    let mut cursor = last;
    let mut sent: u64 = 0;
    let mut held: Option<Arc<RawValue>> = None;
    loop {
        notify.borrow_and_update();
        let rep = lock(&run).replay(cursor);
        if let Some((id, st)) = rep.snapshot {
            emit!(Frame::Snapshot(id, st));
        }
        for ev in rep.events {
            if chaos.latency_ms > 0 || chaos.jitter_ms > 0 {
                let j = if chaos.jitter_ms > 0 {
                    rng.next_u64() % chaos.jitter_ms
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(chaos.latency_ms + j)).await;
            }
            if rng.next_f64() < chaos.malformed_rate {
                emit!(Frame::Malformed(malformed(&mut rng, &run_id, cursor + 1)));
                lock(&run).malformed_sent += 1;
            }
            cursor += 1;
            if held.is_none() && rng.next_f64() < chaos.reorder_rate {
                held = Some(ev);
                continue;
            }
            emit!(Frame::Event(ev.clone()));
            if rng.next_f64() < chaos.dup_rate {
                emit!(Frame::Event(ev));
                lock(&run).dups_sent += 1;
            }
            if let Some(h) = held.take() {
                emit!(Frame::Event(h));
            }
            sent += 1;
            let drop_now = (chaos.drop_every > 0 && sent.is_multiple_of(chaos.drop_every))
                || rng.next_f64() < chaos.drop_rate;
            if drop_now {
                return "chaos_drop";
            }
        }
        cursor = cursor.max(rep.next - 1);
        if let Some(h) = held.take() {
            emit!(Frame::Event(h));
        }
        if rep.done && cursor >= lock(&run).last_id() {
            return "completed";
        }
        tokio::select! {
            r = notify.changed() => if r.is_err() { return "run_gone" },
            _ = tokio::time::sleep(Duration::from_millis(hub.heartbeat_ms)) => emit!(Frame::Heartbeat),
            _ = epoch.changed() => return "restart",
            _ = out.closed() => return "client_gone",
        }
    }
}

fn sse_bytes(hub: &Hub, run_id: &str, f: Frame) -> bytes::Bytes {
    let text = match f {
        Frame::Retry(ms) => format!("retry: {ms}\n\n").into_bytes(),
        Frame::Heartbeat => b": hb\n\n".to_vec(),
        Frame::Event(ev) => {
            let ev = ev.get();
            hub.record(run_id, "sse", ev);
            let (id, ty) = id_and_type(ev);
            format!("id: {id}\nevent: {ty}\ndata: {ev}\n\n").into_bytes()
        }
        Frame::Snapshot(id, st) => {
            let ev = WireEnvelope::snapshot(run_id, id, hub::rfc3339_now(), st).encode();
            hub.record(run_id, "sse", &ev);
            format!("id: {id}\nevent: snapshot\ndata: {ev}\n\n").into_bytes()
        }
        Frame::Malformed(mut b) => {
            let mut out = b"event: message\ndata: ".to_vec();
            b.retain(|c| *c != b'\n' && *c != b'\r');
            out.extend_from_slice(&b);
            out.extend_from_slice(b"\n\n");
            out
        }
    };
    bytes::Bytes::from(text)
}

fn id_and_type(ev: &str) -> (u64, String) {
    let v: Value = serde_json::from_str(ev).unwrap_or(Value::Null);
    (
        v.get("event_id").and_then(Value::as_u64).unwrap_or(0),
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_owned(),
    )
}

#[derive(Deserialize, Default)]
struct StreamQuery {
    last_event_id: Option<String>,
}

fn parse_last(headers: &HeaderMap, q: &StreamQuery) -> Result<u64, ()> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| q.last_event_id.clone());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => s.parse::<u64>().map_err(|_| ()),
    }
}

async fn sse(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(last) = parse_last(&headers, &q) else {
        return (StatusCode::BAD_REQUEST, "Last-Event-ID must be an integer").into_response();
    };
    let Some((run, notify)) = app.hub.get(&run_id) else {
        log("stream.rejected", json!({"run_id": run_id, "status": 404}));
        return (StatusCode::NOT_FOUND, "unknown run").into_response();
    };
    {
        let mut r = lock(&run);
        r.attempts += 1;
        if r.attempts <= r.chaos.fail_first {
            let status = StatusCode::from_u16(r.chaos.fail_status.unwrap_or(503))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = (status, "chaos: failing this attempt").into_response();
            if let Some(s) = r.chaos.retry_after_s {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            log(
                "stream.rejected",
                json!({"run_id": run_id, "status": status.as_u16(), "reason": "chaos"}),
            );
            return resp;
        }
        if r.finished && last >= r.last_id() {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    let (guard, conn_index) = OpenGuard::new(&run);
    let (tx, rx) = mpsc::channel::<Frame>(256);
    let hub = app.hub.clone();
    let conn = hub.conn_id();
    log(
        "stream.open",
        json!({"conn": conn, "run_id": run_id, "transport": "sse", "last_event_id": last}),
    );
    {
        let run = run.clone();
        let hub = hub.clone();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            let reason = produce(hub, run.clone(), notify, last, tx, conn_index).await;
            drop(guard);
            log(
                "stream.close",
                json!({"conn": conn, "run_id": run_id, "transport": "sse", "reason": reason}),
            );
        });
    }
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let hub = hub.clone();
        let run_id = run_id.clone();
        async move {
            let f = rx.recv().await?;
            Some((Ok::<_, Infallible>(sse_bytes(&hub, &run_id, f)), rx))
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn ws(State(app): State<App>, up: WebSocketUpgrade) -> Response {
    up.max_message_size(1 << 20)
        .on_upgrade(move |socket| ws_session(app, socket))
}

fn ws_text(op: &ServerOp) -> Message {
    Message::Text(op.encode().into())
}

/// A `bad_request` error frame (not about a run or a send).
fn bad_request(message: String) -> Message {
    ws_text(&ServerOp::Error {
        run_id: None,
        code: ErrorCode::BadRequest,
        message,
        client_request_id: None,
    })
}

async fn ws_session(app: App, socket: WebSocket) {
    let hub = app.hub.clone();
    let conn = hub.conn_id();
    log("ws.open", json!({"conn": conn}));
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut subs: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    let mut epoch = hub.epoch.subscribe();
    epoch.borrow_and_update();
    // A subscription that chaos drops takes the whole socket down, like a network drop.
    let kill = Arc::new(tokio::sync::Notify::new());
    let reason = loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = epoch.changed() => break "restart",
            _ = kill.notified() => break "chaos_drop",
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let _ = tx
                    .send(bad_request(
                        "binary frames are not part of the protocol".into(),
                    ))
                    .await;
                continue;
            }
            Some(Ok(Message::Close(_))) | None => break "client_closed",
            Some(Err(_)) => break "network_error",
            Some(Ok(_)) => continue,
        };
        let op = match ClientOp::decode(text.as_str()) {
            Ok(op) => op,
            Err(e) => {
                let message = match e {
                    WireError::NotJson(_) => "not JSON".to_owned(),
                    WireError::NotObject | WireError::MissingOp | WireError::UnknownOp(_) => {
                        "unknown op".to_owned()
                    }
                    WireError::Invalid(_) => e.to_string(),
                };
                let _ = tx.send(bad_request(message)).await;
                continue;
            }
        };
        match op {
            ClientOp::Ping { t } => {
                let _ = tx.send(ws_text(&ServerOp::Pong { t })).await;
            }
            ClientOp::Subscribe {
                run_id,
                last_event_id,
                headers: _,
            } => {
                let last = last_event_id.unwrap_or(0);
                let Some((run, notify)) = hub.get(&run_id) else {
                    let _ = tx
                        .send(ws_text(&ServerOp::Error {
                            run_id: Some(run_id),
                            code: ErrorCode::NotFound,
                            message: "unknown run".into(),
                            client_request_id: None,
                        }))
                        .await;
                    continue;
                };
                if let Some(h) = subs.remove(&run_id) {
                    h.abort();
                }
                let binary = lock(&run).chaos.binary_frame;
                let (guard, conn_index) = OpenGuard::new(&run);
                let _ = tx
                    .send(ws_text(&ServerOp::Subscribed {
                        run_id: run_id.clone(),
                        replay_from: last + 1,
                    }))
                    .await;
                if binary {
                    let _ = tx.send(Message::Binary(vec![0u8, 1, 2, 3].into())).await;
                }
                log(
                    "stream.open",
                    json!({"conn": conn, "run_id": run_id, "transport": "websocket", "last_event_id": last}),
                );
                let tx2 = tx.clone();
                let kill2 = kill.clone();
                let hub2 = hub.clone();
                let rid = run_id.clone();
                subs.insert(run_id, tokio::spawn(async move {
                    let _guard = guard;
                    let (ftx, mut frx) = mpsc::channel::<Frame>(256);
                    let producer = tokio::spawn(produce(hub2.clone(), run.clone(), notify, last, ftx, conn_index));
                    while let Some(f) = frx.recv().await {
                        let m = match f {
                            Frame::Event(ev) => {
                                hub2.record(&rid, "websocket", ev.get());
                                ws_text(&ServerOp::Event { event: (*ev).to_owned() })
                            }
                            Frame::Snapshot(id, st) => ws_text(&ServerOp::Snapshot { run_id: rid.clone(), event_id: id, state: st }),
                            Frame::Malformed(b) => match String::from_utf8(b) {
                                Ok(s) => Message::Text(s.into()),
                                Err(e) => Message::Binary(e.into_bytes().into()),
                            },
                            Frame::Retry(_) | Frame::Heartbeat => continue,
                        };
                        if tx2.send(m).await.is_err() {
                            break;
                        }
                    }
                    let reason = producer.await.unwrap_or("aborted");
                    if reason == "chaos_drop" {
                        kill2.notify_one();
                    }
                    log("stream.close", json!({"conn": conn, "run_id": rid, "transport": "websocket", "reason": reason}));
                }));
            }
            ClientOp::Unsubscribe { run_id } => {
                if let Some(h) = subs.remove(&run_id) {
                    h.abort();
                }
            }
            ClientOp::Send {
                session_id,
                client_request_id,
                content,
                headers: _,
            } => {
                let reply = match accept_send(&hub, &session_id, &client_request_id, &content) {
                    Ok(Accepted { message_id, run_id }) => ServerOp::Ack {
                        client_request_id,
                        message_id,
                        run_id,
                    },
                    Err(message) => ServerOp::Error {
                        run_id: None,
                        code: ErrorCode::BadRequest,
                        message,
                        client_request_id: Some(client_request_id),
                    },
                };
                let _ = tx.send(ws_text(&reply)).await;
            }
        }
    };
    for (_, h) in subs {
        h.abort();
    }
    drop(tx);
    let _ = writer.await;
    log("ws.close", json!({"conn": conn, "reason": reason}));
}

// ---- plain endpoints -----------------------------------------------------------

async fn snapshot(State(app): State<App>, Path(run_id): Path<String>) -> Response {
    match app.hub.get(&run_id) {
        Some((run, _)) => {
            let body = lock(&run).snapshot();
            let mut resp = Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        None => (StatusCode::NOT_FOUND, "unknown run").into_response(),
    }
}

/// Validates and records a send (idempotent); starts the reply for a new one.
fn accept_send(
    hub: &Arc<Hub>,
    session: &str,
    crid: &str,
    content: &str,
) -> Result<Accepted, String> {
    if session.is_empty() || session.len() > 128 {
        return Err("session_id must be 1 to 128 characters".into());
    }
    if crid.is_empty() || crid.len() > 128 {
        return Err("client_request_id must be 1 to 128 characters".into());
    }
    if content.is_empty() || content.len() > 100_000 {
        return Err("content must be 1 to 100000 bytes".into());
    }
    let (id, run, _) = hub.create(
        Some(session.to_owned()),
        RunKind::Chat,
        Chaos::default(),
        1.0,
    );
    let (message_id, run_id, fresh) = lock(&run).send(crid, content);
    hub.notify(&id);
    if fresh {
        scenario::reply(hub.clone(), id, crid.to_owned(), content.to_owned());
    }
    Ok(Accepted { message_id, run_id })
}

async fn chat_send(
    State(app): State<App>,
    Path(session): Path<String>,
    body: Option<Json<SendBody>>,
) -> Response {
    let Some(Json(b)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {client_request_id, content}",
        )
            .into_response();
    };
    match accept_send(&app.hub, &session, &b.client_request_id, &b.content) {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateRun {
    run_id: Option<String>,
    kind: Option<RunKind>,
    seed: u64,
    workers: Option<usize>,
    speed: Option<f64>,
    chaos: Chaos,
    /// Append the whole script at once (a finished run) instead of playing it in time.
    instant: bool,
    /// A token-stream run (benchmarks): one assistant message with this many deltas.
    tokens: Option<u64>,
    /// Deltas per second for a token run (0 = as fast as possible, live).
    rate: Option<f64>,
    /// Token run of `progress.tick` events (an unknown type: no state growth) instead of deltas.
    ticks: bool,
    /// Token run after a chat history of this many completed messages (benchmarks).
    history: u64,
    /// Characters per history message (default 3,000).
    history_bytes: Option<usize>,
}

async fn create_run(State(app): State<App>, body: Option<Json<CreateRun>>) -> Response {
    let c = body.map(|Json(b)| b).unwrap_or_default();
    let kind = c.kind.unwrap_or(RunKind::Task);
    let speed = c.speed.unwrap_or(1.0).clamp(0.01, 1000.0);
    let mut chaos = c.chaos;
    if chaos.seed == 0 {
        chaos.seed = c.seed;
    }
    let (id, _, fresh) = app.hub.create(c.run_id, kind, chaos, speed);
    if let (true, Some(n)) = (fresh, c.tokens) {
        // A long conversation before the streamed message (the long-history benchmark).
        let text = "x".repeat(c.history_bytes.unwrap_or(3000).min(1 << 20));
        for i in 0..c.history.min(100_000) {
            let (mid, role) = (
                format!("h{i}"),
                if i % 2 == 0 { "user" } else { "assistant" },
            );
            app.hub.append(
                &id,
                "message.created",
                json!({"message_id": mid, "role": role, "content": text}),
            );
            if role == "assistant" {
                app.hub.append(
                    &id,
                    "message.completed",
                    json!({"message_id": mid, "finish_reason": "stop"}),
                );
            }
        }
        scenario::tokens(
            app.hub.clone(),
            id.clone(),
            n,
            c.rate.unwrap_or(0.0),
            c.instant,
            c.ticks,
        );
    } else if fresh && kind == RunKind::Task {
        let script = scenario::task_script(c.seed, c.workers.unwrap_or(4).clamp(1, 64));
        if c.instant {
            for (_, ty, p) in script {
                app.hub.append(&id, ty, p);
            }
        } else {
            scenario::play(app.hub.clone(), id.clone(), script, speed);
        }
    }
    log(
        "run.created",
        json!({"run_id": id, "kind": kind, "seed": c.seed}),
    );
    (StatusCode::CREATED, Json(json!({"run_id": id}))).into_response()
}

async fn set_chaos(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Json(chaos): Json<Chaos>,
) -> Response {
    match app.hub.get(&run_id) {
        Some((run, _)) => {
            lock(&run).chaos = chaos;
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct PruneBody {
    keep_from: u64,
}

async fn prune(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Json(b): Json<PruneBody>,
) -> Response {
    match app.hub.get(&run_id) {
        Some((run, _)) => {
            lock(&run).prune_to(b.keep_from);
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct AppendBody {
    #[serde(rename = "type")]
    ty: String,
    payload: Value,
}

async fn append_raw(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Json(b): Json<AppendBody>,
) -> Response {
    if !b.payload.is_object() {
        return (StatusCode::BAD_REQUEST, "payload must be an object").into_response();
    }
    match app.hub.append(&run_id, &b.ty, b.payload) {
        Some(id) => Json(json!({"event_id": id})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats(State(app): State<App>, Path(run_id): Path<String>) -> Response {
    match app.hub.get(&run_id) {
        Some((run, _)) => {
            let r = lock(&run);
            Json(json!({
                "run_id": r.id, "first_event_id": r.first_id(), "last_event_id": r.last_id(), "finished": r.finished,
                "connections_total": r.connections_total, "connections_open": r.connections_open,
                "attempts": r.attempts, "dups_sent": r.dups_sent, "malformed_sent": r.malformed_sent,
            }))
            .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn restart(State(app): State<App>) -> StatusCode {
    app.hub.restart();
    log("server.restart", json!({}));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FramesQuery {
    run_id: Option<String>,
}

async fn frames(State(app): State<App>, Query(q): Query<FramesQuery>) -> Response {
    Json(app.hub.recorded(q.run_id.as_deref())).into_response()
}
