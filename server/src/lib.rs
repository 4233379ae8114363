//! The runstream gateway, the server half of the wire contract
//! (`../shared/spec/PROTOCOL.md`, `SERVER.md` §1): SSE with `Last-Event-ID`
//! replay, WebSocket subscribe/resume, snapshots, idempotent chat sends,
//! PROTOCOL §7 authorization on every browser route ([`auth`]), the publish
//! API for a team's backend ([`publish`]), health, readiness and Prometheus
//! metrics, a drain on SIGTERM, and bounds on bodies, connections, runs per
//! socket and per-client buffers ([`Limits`]). Chaos knobs and admin routes
//! for the demo and the tests exist only with `--dev`. The run logs live in a
//! [`store::Store`]: this process's memory or Redis Streams shared by several
//! replicas and producer processes.

pub mod auth;
pub mod cancel;
pub mod hub;
pub mod metrics;
mod outbox;
pub mod publish;
pub mod scenario;
pub mod stall;
pub mod store;
pub mod timed;

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

use auth::{AuthMode, CancelRun, Credentials, Gate, Granted, ReadRun, SendInto};
use hub::{Chaos, ConnKind, Hub};
use metrics::{DropReason, Metrics};
use store::{RunKind, RunSpec, Store, StoreError, Tail};

/// The bounds of one process, each a flag with this default (README, `docs/DEPLOY.md`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (`--max-body-bytes`); past it `413`.
    pub max_body_bytes: usize,
    /// Most open streaming connections, SSE streams plus WebSockets
    /// (`--max-connections`); past it `503` + `Retry-After`.
    pub max_connections: u64,
    /// Most runs subscribed on one WebSocket (`--max-runs-per-socket`); past
    /// it the subscribe is answered `unavailable`.
    pub max_runs_per_socket: usize,
    /// Frames queued per client, per SSE stream or WebSocket (`--client-buffer`).
    pub client_buffer: usize,
    /// Bytes of frames queued per WebSocket (`--client-buffer-bytes`): its frames
    /// are its own copies (an SSE stream's queue holds the shared events).
    pub client_buffer_bytes: usize,
    /// How long a full client buffer may stay full before the client is
    /// disconnected (`--slow-client-ms`): a client that stops reading is
    /// dropped, never buffered without bound.
    pub slow_client_ms: u64,
    /// How long a drain waits for streams to go before the process exits (`--drain-ms`).
    pub drain_ms: u64,
    /// Largest WebSocket frame a client may send (`--max-frame-bytes`); past it the socket closes (1009).
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_connections: 20_000,
            max_runs_per_socket: 256,
            client_buffer: 256,
            client_buffer_bytes: 1 << 20,
            slow_client_ms: 10_000,
            drain_ms: 10_000,
            max_frame_bytes: 1 << 20,
        }
    }
}

/// The `retry:` an SSE stream ends with when the process drains: clients come back at once (elsewhere).
pub const DRAIN_RETRY_MS: u64 = 250;
/// The WebSocket close code of a drain (RFC 6455 "service restart").
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Server settings.
#[derive(Clone)]
pub struct Settings {
    /// Where run logs live (`store::open`).
    pub store: Arc<dyn Store>,
    /// Static demo page directory.
    pub www: PathBuf,
    /// wasm-pack output directory, served under `/pkg`.
    pub pkg: PathBuf,
    /// SSE heartbeat interval.
    pub heartbeat_ms: u64,
    /// Who answers chat sends.
    pub replies: Replies,
    /// Most emitted frames kept for `GET /api/admin/frames` (0 = off; they cost memory).
    pub record_frames: usize,
    /// PROTOCOL §7 on every browser route, or `--auth none`.
    pub auth: Arc<AuthMode>,
    /// The publish API's key (`--publish-key-file`); `None`: those routes are 404.
    pub publish_key: Option<Vec<u8>>,
    /// Admin, chaos, raw-append, restart and frame-log routes (`--dev`); 404 without.
    pub dev: bool,
    /// Bounds.
    pub limits: Limits,
    /// How long a cancelled target may run on before the gateway ends it (`--cancel-grace-ms`).
    pub cancel_grace_ms: u64,
    /// Origins allowed to call cross-origin, with credentials (`--cors-origin`, repeatable).
    /// Empty: same-origin only (with `--dev`: any origin, for the tests' pages).
    pub cors_origins: Vec<String>,
}

impl Settings {
    /// What the tests and the demo run: `--auth none --dev`, memory frames recorded.
    pub fn dev(store: Arc<dyn Store>, replies: Replies, heartbeat_ms: u64) -> Self {
        Self {
            store,
            www: "www".into(),
            pkg: "pkg".into(),
            heartbeat_ms,
            replies,
            record_frames: hub::MAX_RECORDED,
            auth: Arc::new(AuthMode::None),
            publish_key: None,
            dev: true,
            limits: Limits::default(),
            cancel_grace_ms: cancel::DEFAULT_GRACE_MS,
            cors_origins: Vec::new(),
        }
    }
}

/// Who streams the assistant's reply to a chat send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replies {
    /// The process that accepted the send (`--replies local`, the default).
    #[default]
    Local,
    /// A chat worker (`runstream-server produce --chat-worker`) on the shared
    /// store; the replica only logs the send (`--replies worker`).
    Worker,
    /// The team's own backend, through the publish API's long poll or its
    /// own consumer of the sends queue (`--replies none`): the gateway only logs.
    None,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    /// PROTOCOL §7.
    pub gate: Arc<Gate>,
    /// `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Bounds.
    pub limits: Limits,
    /// `--cancel-grace-ms`.
    pub cancel_grace_ms: u64,
    /// Who may call cross-origin (HTTP CORS, and cookies on a WebSocket upgrade).
    pub origins: Arc<Origins>,
}

/// The cross-origin policy: `Any` only with `--dev` and no `--cors-origin`.
#[derive(Debug, Clone)]
pub enum Origins {
    /// Same-origin only: no CORS headers; a WebSocket upgrade from another
    /// origin gets no cookie credentials (its frames must carry headers).
    SameOrigin,
    /// These origins (`scheme://host[:port]`), with credentials.
    List(Vec<String>),
    /// Any origin (`--dev` without a list: the tests' pages on other ports).
    Any,
}

impl Origins {
    fn new(list: &[String], dev: bool) -> Self {
        match (list.is_empty(), dev) {
            (false, _) => Self::List(list.to_vec()),
            (true, true) => Self::Any,
            (true, false) => Self::SameOrigin,
        }
    }

    /// Whether a request from `origin` to `host` may carry cookie credentials.
    /// No `Origin` header: not a browser's cross-origin request.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let same = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(h)
        });
        same || match self {
            Self::SameOrigin => false,
            Self::List(l) => l.iter().any(|o| o == origin),
            Self::Any => true,
        }
    }

    fn layer(&self) -> Option<CorsLayer> {
        use axum::http::{HeaderName, Method};
        let base = || {
            CorsLayer::new()
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                    HeaderName::from_static("idempotency-key"),
                ])
                .allow_credentials(true)
                // Cross-origin clients can read Retry-After only if it is exposed.
                .expose_headers([header::RETRY_AFTER])
        };
        match self {
            Self::SameOrigin => None,
            Self::List(l) => Some(base().allow_origin(tower_http::cors::AllowOrigin::list(
                l.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
            ))),
            Self::Any => Some(CorsLayer::very_permissive().expose_headers([header::RETRY_AFTER])),
        }
    }
}

/// The whole HTTP surface.
pub fn router(settings: Settings) -> (Router, App) {
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = Arc::new(timed::TimedStore::new(
        settings.store.clone(),
        metrics.clone(),
    ));
    let app = App {
        hub: Hub::new(
            store.clone(),
            settings.heartbeat_ms,
            settings.replies,
            settings.record_frames,
        ),
        gate: Arc::new(Gate::new(
            settings.auth.clone(),
            settings.publish_key.clone(),
            store,
            metrics.clone(),
        )),
        metrics,
        limits: settings.limits,
        cancel_grace_ms: settings.cancel_grace_ms,
        origins: Arc::new(Origins::new(&settings.cors_origins, settings.dev)),
    };
    // Cancel grace deadlines, kept in the store: this replica ends those due
    // (whichever replica took the cancel). Needs the runtime the server runs on.
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(cancel::grace_poller(
            app.hub.store.clone(),
            cancel::poll_interval(app.cancel_grace_ms),
        ));
    }
    let mut r = Router::new()
        .route("/api/stream/runs/{run_id}", get(sse))
        .route("/api/ws", get(ws))
        .route("/api/runs/{run_id}/snapshot", get(snapshot))
        .route("/api/chat/{session_id}/messages", post(chat_send))
        .route("/api/runs/{run_id}/cancel", post(cancel_run))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    if app.gate.publishing() {
        r = r.merge(publish::routes());
    }
    if settings.dev {
        r = r
            .route("/api/admin/runs", post(create_run))
            .route("/api/admin/runs/{run_id}/chaos", post(set_chaos))
            .route("/api/admin/runs/{run_id}/prune", post(prune))
            .route("/api/admin/runs/{run_id}/append", post(append_raw))
            .route("/api/admin/runs/{run_id}/stats", get(stats))
            .route("/api/admin/restart", post(restart))
            .route("/api/admin/store", get(store_info))
            .route("/api/admin/frames", get(frames))
            .route("/api/admin/connections", get(connections))
            .merge(scenario::knob_routes());
    }
    let r = r
        // Anything else under /api/ (a test route without --dev, a typo) is 404, whatever the method.
        .route(
            "/api/{*rest}",
            axum::routing::any(|| async { (StatusCode::NOT_FOUND, "not found") }),
        )
        .nest_service("/pkg", ServeDir::new(&settings.pkg))
        .fallback_service(ServeDir::new(&settings.www))
        // 413 past the body bound, before a handler reads anything.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            settings.limits.max_body_bytes,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.limits.max_body_bytes,
        ))
        .with_state(app.clone());
    let r = match app.origins.layer() {
        Some(cors) => r.layer(cors),
        None => r,
    };
    (r, app)
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers and the process is not draining (a load
/// balancer stops sending new clients here when this is not 200).
async fn readyz(State(app): State<App>) -> Response {
    if app.hub.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match app.hub.store.meta("_readyz").await {
        Ok(_) => "ready".into_response(),
        Err(e) => unavailable("", &e),
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics_text(State(app): State<App>) -> Response {
    let body = app.metrics.encode(app.hub.open_counts());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `503` + `Retry-After: 1` while draining or past `--max-connections` (a
/// client retries, through the balancer, on another replica).
fn refuse_stream(app: &App) -> Option<Response> {
    let reason = if app.hub.is_draining() {
        DropReason::Drain
    } else {
        let (sse, ws, _) = app.hub.open_counts();
        if sse + ws < app.limits.max_connections {
            return None;
        }
        DropReason::ConnectionLimit
    };
    app.metrics.dropped(reason);
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, "try another replica").into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Some(resp)
}

/// Prints one JSON log line.
pub(crate) fn log(event: &str, fields: Value) {
    let mut v = json!({"ts": hub::rfc3339_now(), "event": event});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    println!("{v}");
}

// ---- streaming -------------------------------------------------------------

/// Counts an open stream of a run for as long as it lives (also when its task is aborted).
struct OpenGuard(Arc<Hub>, String);

impl OpenGuard {
    fn new(hub: &Arc<Hub>, run_id: &str) -> (Self, u64) {
        let n = hub.count(run_id, |s| {
            s.connections_total += 1;
            s.connections_open += 1;
            s.connections_total
        });
        (Self(hub.clone(), run_id.to_owned()), n)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count(&self.1, |s| {
            s.connections_open = s.connections_open.saturating_sub(1)
        });
    }
}

/// `503` + `Retry-After: 1` for a store failure: the client retries with backoff.
pub(crate) fn unavailable(run_id: &str, e: &StoreError) -> Response {
    log(
        "store.error",
        json!({"run_id": run_id, "error": e.to_string()}),
    );
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// What a producer emits; SSE and WebSocket format it differently.
///
/// Every stream holds a bounded channel of these, which tokio allocates in blocks of 32
/// slots (two per busy stream): the rare, large variants are boxed so a slot is 24
/// bytes (a block ~0.8 KB instead of ~1.3 KB per stream).
enum Frame {
    Retry(u64),
    Event(Arc<RawValue>),
    Snapshot(u64, Box<Value>),
    Heartbeat,
    Malformed(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Frame>() <= 24);

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

/// How one stream is bounded in time and space.
#[derive(Clone, Copy)]
struct StreamBounds {
    /// The caller's credentials expire then (a JWT's `exp` + leeway): the
    /// stream ends, so the client comes back with fresh ones.
    until: Option<std::time::SystemTime>,
    /// A full client buffer may stay full this long.
    slow_client: Duration,
}

impl StreamBounds {
    fn new(app: &App, grant: &auth::Grant) -> Self {
        Self {
            until: grant.principal.expires_at(),
            slow_client: Duration::from_millis(app.limits.slow_client_ms),
        }
    }

    /// The moment the credentials expire, on tokio's clock (far away without one).
    fn deadline(&self) -> tokio::time::Instant {
        let far = Duration::from_secs(365 * 24 * 3600);
        let left = self.until.map_or(far, |u| {
            u.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        tokio::time::Instant::now() + left.min(far)
    }
}

/// Streams run `run_id` to `out` from after `last`: (snapshot,) replay, then
/// live, applying the run's chaos. Returns the termination reason.
#[allow(clippy::too_many_arguments)]
async fn produce(
    hub: Arc<Hub>,
    run_id: String,
    chaos: Chaos,
    mut tail: Tail,
    last: u64,
    out: mpsc::Sender<Frame>,
    conn_index: u64,
    bounds: StreamBounds,
) -> &'static str {
    let mut rng = Rng::new([chaos.seed, conn_index]);
    let mut epoch = hub.epoch.subscribe();
    epoch.borrow_and_update();
    let mut draining = hub.draining.subscribe();
    let expiry = tokio::time::sleep_until(bounds.deadline());
    tokio::pin!(expiry);
    // A client that stops reading fills its bounded buffer; past the stall
    // limit it is dropped instead of holding the producer.
    macro_rules! emit {
        ($f:expr) => {
            match out.send_timeout($f, bounds.slow_client).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return "client_gone",
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => return "slow_client",
            }
        };
    }
    if *draining.borrow_and_update() {
        emit!(Frame::Retry(DRAIN_RETRY_MS));
        return "drain";
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
        emit!(Frame::Malformed(big.into_boxed_slice()));
    }
    let mut cursor = last;
    let mut sent: u64 = 0;
    let mut held: Option<Arc<RawValue>> = None;
    loop {
        tail.rx.borrow_and_update();
        let rep = match hub.store.read(&run_id, cursor).await {
            Ok(Some(rep)) => rep,
            Ok(None) => return "run_gone",
            Err(e) => {
                log(
                    "store.error",
                    json!({"run_id": run_id, "error": e.to_string()}),
                );
                return "store_error";
            }
        };
        let progressed = rep.snapshot.is_some() || !rep.events.is_empty();
        if let Some((id, st)) = rep.snapshot {
            cursor = id;
            emit!(Frame::Snapshot(id, Box::new(st)));
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
                emit!(Frame::Malformed(
                    malformed(&mut rng, &run_id, cursor + 1).into_boxed_slice()
                ));
                hub.count(&run_id, |s| s.malformed_sent += 1);
            }
            cursor += 1;
            if held.is_none() && rng.next_f64() < chaos.reorder_rate {
                held = Some(ev);
                continue;
            }
            emit!(Frame::Event(ev.clone()));
            if rng.next_f64() < chaos.dup_rate {
                emit!(Frame::Event(ev));
                hub.count(&run_id, |s| s.dups_sent += 1);
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
        if let Some(h) = held.take() {
            emit!(Frame::Event(h));
        }
        if cursor < rep.last_id && progressed {
            // A bounded batch: read on before waiting.
            continue;
        }
        if rep.done && cursor >= rep.last_id {
            return "completed";
        }
        tokio::select! {
            r = tail.rx.changed() => if r.is_err() { return "run_gone" },
            _ = tokio::time::sleep(Duration::from_millis(hub.heartbeat_ms)) => emit!(Frame::Heartbeat),
            _ = epoch.changed() => return "restart",
            _ = draining.changed() => {
                emit!(Frame::Retry(DRAIN_RETRY_MS));
                return "drain";
            }
            _ = &mut expiry => return "expired",
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
            let head = EnvelopeHead::of(ev);
            format!("id: {}\nevent: {}\ndata: {ev}\n\n", head.event_id, head.ty).into_bytes()
        }
        Frame::Snapshot(id, st) => {
            let ev = WireEnvelope::snapshot(run_id, id, hub::rfc3339_now(), *st).encode();
            hub.record(run_id, "sse", &ev);
            format!("id: {id}\nevent: snapshot\ndata: {ev}\n\n").into_bytes()
        }
        Frame::Malformed(b) => {
            let mut out = b"event: message\ndata: ".to_vec();
            out.extend(b.iter().filter(|c| **c != b'\n' && **c != b'\r'));
            out.extend_from_slice(b"\n\n");
            out
        }
    };
    bytes::Bytes::from(text)
}

/// An envelope's SSE `id:` and `event:` (PROTOCOL §2a), read per event per
/// client: only these two fields are decoded, the payload is skipped without
/// allocating (a `serde_json::Value` of the whole envelope cost a parse and
/// a tree per delivery). Envelopes in the log were validated on append; an
/// unreadable one gets id 0 and type `message`.
#[derive(Deserialize)]
struct EnvelopeHead<'a> {
    #[serde(default)]
    event_id: u64,
    #[serde(rename = "type", borrow, default = "EnvelopeHead::message")]
    ty: std::borrow::Cow<'a, str>,
}

impl<'a> EnvelopeHead<'a> {
    fn message() -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed("message")
    }

    fn of(ev: &'a str) -> Self {
        serde_json::from_str(ev).unwrap_or(Self {
            event_id: 0,
            ty: Self::message(),
        })
    }
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
    granted: Granted<ReadRun>,
    State(app): State<App>,
    Path(run_id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(last) = parse_last(&headers, &q) else {
        return (StatusCode::BAD_REQUEST, "Last-Event-ID must be an integer").into_response();
    };
    let grant = granted.grant;
    let bounds = StreamBounds::new(&app, &grant);
    // `sub` is logged (PROTOCOL §7: never trusted for access).
    let sub = grant.principal.sub().map(str::to_owned);
    let Some(meta) = grant.meta else {
        return (StatusCode::NOT_FOUND, "unknown run").into_response();
    };
    if let Some(resp) = refuse_stream(&app) {
        return resp;
    }
    let attempts = app.hub.count(&run_id, |s| {
        s.attempts += 1;
        s.attempts
    });
    if attempts <= meta.chaos.fail_first {
        let status = StatusCode::from_u16(meta.chaos.fail_status.unwrap_or(503))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = (status, "chaos: failing this attempt").into_response();
        if let Some(s) = meta.chaos.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        log(
            "stream.rejected",
            json!({"run_id": run_id, "status": status.as_u16(), "reason": "chaos"}),
        );
        return resp;
    }
    if meta.finished && last >= meta.last_id {
        return StatusCode::NO_CONTENT.into_response();
    }
    let tail = match app.hub.store.tail(&run_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return (StatusCode::NOT_FOUND, "unknown run").into_response(),
        Err(e) => return unavailable(&run_id, &e),
    };
    let hub = app.hub.clone();
    let (guard, conn_index) = OpenGuard::new(&hub, &run_id);
    let open = hub.open_conn(ConnKind::SseStream);
    let (tx, rx) = mpsc::channel::<Frame>(app.limits.client_buffer.max(1));
    let conn = hub.conn_id();
    app.metrics.replay_size(meta.behind(last));
    let metrics = app.metrics.clone();
    log(
        "stream.open",
        json!({"conn": conn, "run_id": run_id, "transport": "sse", "last_event_id": last, "sub": sub}),
    );
    {
        let hub = hub.clone();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            let reason = produce(
                hub,
                run_id.clone(),
                meta.chaos,
                tail,
                last,
                tx,
                conn_index,
                bounds,
            )
            .await;
            drop(guard);
            drop(open);
            if reason == "slow_client" {
                metrics.dropped(DropReason::SlowClient);
            }
            log(
                "stream.close",
                json!({"conn": conn, "run_id": run_id, "transport": "sse", "reason": reason}),
            );
        });
    }
    let metrics = app.metrics.clone();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let hub = hub.clone();
        let run_id = run_id.clone();
        let metrics = metrics.clone();
        async move {
            let f = rx.recv().await?;
            if matches!(f, Frame::Event(_) | Frame::Snapshot(..)) {
                metrics.delivered("sse");
            }
            Some((Ok::<_, Infallible>(sse_bytes(&hub, &run_id, f)), rx))
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn ws(State(app): State<App>, headers: HeaderMap, up: WebSocketUpgrade) -> Response {
    // Never refused for auth (PROTOCOL §7: a browser would see only 1006 and
    // retry in a loop); each frame is checked. Refused while draining or full.
    if let Some(resp) = refuse_stream(&app) {
        return resp;
    }
    // A cookie rides every request of its site, also one a page of another
    // origin makes: an upgrade from an origin the policy does not allow gets
    // no cookie credentials (cross-site WebSocket hijacking); its frames
    // must carry headers.
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let cookie_ok = app.origins.allows(origin, host);
    let cookies = headers
        .get(header::COOKIE)
        .filter(|_| cookie_ok)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    up.max_message_size(app.limits.max_frame_bytes)
        .on_upgrade(move |socket| ws_session(app, socket, cookies))
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

/// A run's `error` op.
fn run_error(run_id: &str, code: ErrorCode, message: &str) -> Message {
    ws_text(&ServerOp::Error {
        run_id: Some(run_id.to_owned()),
        code,
        message: message.to_owned(),
        client_request_id: None,
    })
}

async fn ws_session(app: App, socket: WebSocket, cookies: Option<String>) {
    let hub = app.hub.clone();
    let conn = hub.conn_id();
    let _open = hub.open_conn(ConnKind::WsSocket);
    log("ws.open", json!({"conn": conn}));
    let (mut sink, mut stream) = socket.split();
    let buffer = app.limits.client_buffer.max(1);
    let slow = Duration::from_millis(app.limits.slow_client_ms);
    let (tx, mut rx) = outbox::outbox(buffer, app.limits.client_buffer_bytes, app.metrics.clone());
    // A client that stops reading: its write stalls, and past the limit the
    // writer gives up (the socket is dropped, never buffered without bound).
    let writer = tokio::spawn(async move {
        while let Some(mut q) = rx.recv().await {
            let Some(m) = q.take() else { continue };
            let closing = matches!(m, Message::Close(_));
            let written = tokio::time::timeout(slow, sink.send(m)).await;
            // Its bytes return to the socket's budget once written.
            drop(q);
            match written {
                Ok(Ok(())) if !closing => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(slow, sink.close()).await;
    });
    let mut subs: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    let mut epoch = hub.epoch.subscribe();
    epoch.borrow_and_update();
    let mut draining = hub.draining.subscribe();
    // A subscription that chaos drops (or whose client stops reading) takes
    // the whole socket down, like a network drop.
    let kill = Arc::new(tokio::sync::Notify::new());
    let slow_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reason = loop {
        if *draining.borrow_and_update() {
            break "drain";
        }
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = epoch.changed() => break "restart",
            _ = draining.changed() => break "drain",
            // The writer gave up on a client that stopped reading.
            _ = tx.closed() => break "slow_client",
            _ = kill.notified() => break if slow_flag.load(std::sync::atomic::Ordering::Relaxed) { "slow_client" } else { "chaos_drop" },
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
                headers,
            } => {
                let last = last_event_id.unwrap_or(0);
                let creds = Credentials::from_frame(headers.as_ref(), cookies.as_deref());
                let grant = match app.gate.check(creds, auth::Action::Read(&run_id)).await {
                    Ok(g) => g,
                    Err(d) => {
                        if let auth::Denied::Store(e) = &d {
                            let _ = tx.send(store_error_frame(&run_id, e)).await;
                        } else {
                            let _ = tx.send(run_error(&run_id, d.code(), d.message())).await;
                        }
                        continue;
                    }
                };
                let bounds = StreamBounds::new(&app, &grant);
                let Some(meta) = grant.meta else {
                    let _ = tx
                        .send(run_error(&run_id, ErrorCode::NotFound, "unknown run"))
                        .await;
                    continue;
                };
                subs.retain(|_, h| !h.is_finished());
                if !subs.contains_key(&run_id) && subs.len() >= app.limits.max_runs_per_socket {
                    app.metrics.dropped(DropReason::SocketRunLimit);
                    let _ = tx
                        .send(run_error(
                            &run_id,
                            ErrorCode::Unavailable,
                            "too many runs on this socket",
                        ))
                        .await;
                    continue;
                }
                let tail = match hub.store.tail(&run_id).await {
                    Ok(Some(tail)) => tail,
                    Ok(None) => Tail {
                        rx: watch::channel(0).1,
                        _keep: None,
                    },
                    Err(e) => {
                        let _ = tx.send(store_error_frame(&run_id, &e)).await;
                        continue;
                    }
                };
                if let Some(h) = subs.remove(&run_id) {
                    h.abort();
                }
                let binary = meta.chaos.binary_frame;
                let (guard, conn_index) = OpenGuard::new(&hub, &run_id);
                let sub_open = hub.open_conn(ConnKind::WsSubscription);
                let _ = tx
                    .send(ws_text(&ServerOp::Subscribed {
                        run_id: run_id.clone(),
                        replay_from: last + 1,
                    }))
                    .await;
                if binary {
                    let _ = tx.send(Message::Binary(vec![0u8, 1, 2, 3].into())).await;
                }
                app.metrics.replay_size(meta.behind(last));
                log(
                    "stream.open",
                    json!({"conn": conn, "run_id": run_id, "transport": "websocket", "last_event_id": last, "sub": grant.principal.sub()}),
                );
                let tx2 = tx.clone();
                let kill2 = kill.clone();
                let slow2 = slow_flag.clone();
                let hub2 = hub.clone();
                let metrics = app.metrics.clone();
                let rid = run_id.clone();
                subs.insert(run_id, tokio::spawn(async move {
                    let _guard = (guard, sub_open);
                    let (ftx, mut frx) = mpsc::channel::<Frame>(buffer);
                    let producer = tokio::spawn(produce(hub2.clone(), rid.clone(), meta.chaos, tail, last, ftx, conn_index, bounds));
                    let mut stalled = false;
                    while let Some(f) = frx.recv().await {
                        let m = match f {
                            Frame::Event(ev) => {
                                hub2.record(&rid, "websocket", ev.get());
                                metrics.delivered("websocket");
                                ws_text(&ServerOp::Event { event: (*ev).to_owned().into() })
                            }
                            Frame::Snapshot(id, st) => {
                                metrics.delivered("websocket");
                                ws_text(&ServerOp::Snapshot { run_id: rid.clone(), event_id: id, state: runstream::core::json::RawJson::from_value(&st) })
                            }
                            Frame::Malformed(b) => match String::from_utf8(b.into_vec()) {
                                Ok(s) => Message::Text(s.into()),
                                Err(e) => Message::Binary(e.into_bytes().into()),
                            },
                            Frame::Retry(_) | Frame::Heartbeat => continue,
                        };
                        match tx2.send_timeout(m, slow).await {
                            Ok(()) => {}
                            Err(outbox::Refused::Full) => {
                                stalled = true;
                                break;
                            }
                            Err(outbox::Refused::Closed) => break,
                        }
                    }
                    drop(frx);
                    let reason = if stalled { "slow_client" } else { producer.await.unwrap_or("aborted") };
                    let slow_now = match reason {
                        "chaos_drop" | "store_error" => {
                            kill2.notify_one();
                            false
                        }
                        "slow_client" => true,
                        // PROTOCOL §7: the run's token expired; the client resubscribes with fresh headers.
                        // It waits for room like an event (a full queue must not swallow it); a client
                        // that does not read it within --slow-client-ms loses its socket.
                        "expired" => tx2.send_timeout(run_error(&rid, ErrorCode::Unauthorized, "credentials expired"), slow).await == Err(outbox::Refused::Full),
                        _ => false,
                    };
                    if slow_now {
                        metrics.dropped(DropReason::SlowClient);
                        slow2.store(true, std::sync::atomic::Ordering::Relaxed);
                        kill2.notify_one();
                    }
                    log("stream.close", json!({"conn": conn, "run_id": rid, "transport": "websocket", "reason": reason}));
                }));
            }
            ClientOp::Cancel {
                run_id,
                client_request_id,
                reply_to,
                reason,
                headers,
            } => {
                let creds = Credentials::from_frame(headers.as_ref(), cookies.as_deref());
                let refuse = |code: ErrorCode, message: String| ServerOp::Error {
                    run_id: Some(run_id.clone()),
                    code,
                    message,
                    client_request_id: Some(client_request_id.clone()),
                };
                let reply = match app.gate.check(creds, auth::Action::Cancel(&run_id)).await {
                    Err(d) => refuse(d.code(), d.message().into()),
                    Ok(_) => {
                        let body = cancel::CancelBody {
                            client_request_id: client_request_id.clone(),
                            reason,
                            reply_to,
                        };
                        match cancel::cancel(&app, &run_id, body).await {
                            cancel::CancelAnswer::Accepted(event_id) => ServerOp::CancelAck {
                                client_request_id: client_request_id.clone(),
                                run_id: run_id.clone(),
                                event_id,
                            },
                            cancel::CancelAnswer::Finished(status) => {
                                refuse(ErrorCode::Finished, status)
                            }
                            cancel::CancelAnswer::Invalid(m) => refuse(ErrorCode::BadRequest, m),
                            cancel::CancelAnswer::NotFound => {
                                refuse(ErrorCode::NotFound, "unknown run".into())
                            }
                            cancel::CancelAnswer::TooEarly => {
                                refuse(ErrorCode::Unavailable, "no such send yet".into())
                            }
                            cancel::CancelAnswer::Unavailable(e) => {
                                refuse(ErrorCode::Unavailable, store_unavailable_text(&e))
                            }
                        }
                    }
                };
                let _ = tx.send(ws_text(&reply)).await;
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
                headers,
            } => {
                let creds = Credentials::from_frame(headers.as_ref(), cookies.as_deref());
                let reply = match app.gate.check(creds, auth::Action::Send(&session_id)).await {
                    Err(d) => ServerOp::Error {
                        run_id: None,
                        code: d.code(),
                        message: d.message().into(),
                        client_request_id: Some(client_request_id),
                    },
                    Ok(_) => {
                        match accept_send(&hub, &session_id, &client_request_id, &content).await {
                            Ok(Accepted { message_id, run_id }) => ServerOp::Ack {
                                client_request_id,
                                message_id,
                                run_id,
                            },
                            Err(SendError::Finished) => ServerOp::Error {
                                run_id: None,
                                code: ErrorCode::Finished,
                                message: "the session has ended".into(),
                                client_request_id: Some(client_request_id),
                            },
                            Err(SendError::Invalid(message)) => ServerOp::Error {
                                run_id: None,
                                code: ErrorCode::BadRequest,
                                message,
                                client_request_id: Some(client_request_id),
                            },
                            // Not final: the client retries the send (same client_request_id).
                            Err(SendError::Store(e)) => ServerOp::Error {
                                run_id: None,
                                code: ErrorCode::Unavailable,
                                message: store_unavailable_text(&e),
                                client_request_id: Some(client_request_id),
                            },
                        }
                    }
                };
                let _ = tx.send(ws_text(&reply)).await;
            }
        }
    };
    for (_, h) in subs {
        h.abort();
    }
    if reason == "drain" {
        app.metrics.dropped(DropReason::Drain);
        // 1012 "service restart": the client resumes at once, elsewhere.
        let _ = tx.try_send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: CLOSE_SERVICE_RESTART,
            reason: "draining".into(),
        })));
    }
    drop(tx);
    let _ = writer.await;
    log("ws.close", json!({"conn": conn, "reason": reason}));
}

// ---- plain endpoints -----------------------------------------------------------

/// What a client is told of a store failure: a fixed text (the error itself,
/// which may name the store's address, goes to the log only).
fn store_unavailable_text(e: &StoreError) -> String {
    log("store.error", json!({"error": e.to_string()}));
    "store unavailable".into()
}

/// A WebSocket `error` frame for a store failure (not final: the client resumes).
fn store_error_frame(run_id: &str, e: &StoreError) -> Message {
    log(
        "store.error",
        json!({"run_id": run_id, "error": e.to_string()}),
    );
    ws_text(&ServerOp::Error {
        run_id: Some(run_id.to_owned()),
        code: ErrorCode::Unavailable,
        message: "store unavailable".into(),
        client_request_id: None,
    })
}

async fn snapshot(
    _granted: Granted<ReadRun>,
    State(app): State<App>,
    Path(run_id): Path<String>,
) -> Response {
    match app.hub.store.snapshot(&run_id).await {
        Ok(Some(body)) => {
            let mut resp = Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Ok(None) => (StatusCode::NOT_FOUND, "unknown run").into_response(),
        Err(e) => unavailable(&run_id, &e),
    }
}

/// `POST /api/runs/{run_id}/cancel` (PROTOCOL §8), authorized like a read of the run.
async fn cancel_run(
    _granted: Granted<CancelRun>,
    State(app): State<App>,
    Path(run_id): Path<String>,
    body: Result<Json<cancel::CancelBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            // A body of the wrong shape is a 400 (as a send's); a too-large one stays 413.
            let status = match e.status() {
                StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                s => s,
            };
            return (
                status,
                format!(
                    "expected {{client_request_id, reason?, reply_to?}}: {}",
                    e.body_text()
                ),
            )
                .into_response();
        }
    };
    match cancel::cancel(&app, &run_id, b).await {
        cancel::CancelAnswer::Accepted(event_id) => (
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id, "event_id": event_id})),
        )
            .into_response(),
        cancel::CancelAnswer::Finished(status) => (
            StatusCode::CONFLICT,
            Json(json!({"run_id": run_id, "status": status})),
        )
            .into_response(),
        cancel::CancelAnswer::Invalid(m) => (StatusCode::BAD_REQUEST, m).into_response(),
        cancel::CancelAnswer::NotFound => (StatusCode::NOT_FOUND, "unknown run").into_response(),
        cancel::CancelAnswer::TooEarly => (
            StatusCode::TOO_EARLY,
            [(header::RETRY_AFTER, "1")],
            "no such send yet",
        )
            .into_response(),
        cancel::CancelAnswer::Unavailable(e) => unavailable(&run_id, &e),
    }
}

/// Why a send was not accepted.
enum SendError {
    /// The session's run has ended (a run-wide cancel, say): 409 / `finished`.
    Finished,
    /// The request itself is unacceptable (final).
    Invalid(String),
    /// The store failed (retry).
    Store(StoreError),
}

/// Validates and records a send (idempotent); starts the reply for a new one.
async fn accept_send(
    hub: &Arc<Hub>,
    session: &str,
    crid: &str,
    content: &str,
) -> Result<Accepted, SendError> {
    if !store::valid_id(session) {
        return Err(SendError::Invalid(
            "session_id must be 1 to 128 characters, without control characters or braces".into(),
        ));
    }
    if crid.is_empty() || crid.len() > 128 {
        return Err(SendError::Invalid(
            "client_request_id must be 1 to 128 characters".into(),
        ));
    }
    if content.is_empty() || content.len() > 100_000 {
        return Err(SendError::Invalid(
            "content must be 1 to 100000 bytes".into(),
        ));
    }
    let out = hub
        .store
        .send(session, crid, content)
        .await
        .map_err(SendError::Store)?;
    if out.finished {
        return Err(SendError::Finished);
    }
    if out.fresh && hub.replies == Replies::Local {
        // The demo's own bot answers (`--replies local`); `worker` and `none` leave it to a producer.
        // It claims the send first, as the queue's consumers do (chat workers, the kit's onSend
        // on the same Redis): a send one of them took is not answered twice.
        let (store, run_id, crid, content) = (
            hub.store.clone(),
            out.run_id.clone(),
            crid.to_owned(),
            content.to_owned(),
        );
        scenario::spawn("reply", out.run_id.clone(), async move {
            if store.claim_send(&run_id, &crid).await? {
                scenario::reply(store, run_id, crid, content).await
            } else {
                Ok(())
            }
        });
    }
    log(
        "send.accepted",
        json!({"run_id": out.run_id, "client_request_id": crid, "message_id": out.message_id, "fresh": out.fresh}),
    );
    Ok(Accepted {
        message_id: out.message_id,
        run_id: out.run_id,
    })
}

async fn chat_send(
    _granted: Granted<SendInto>,
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
    match accept_send(&app.hub, &session, &b.client_request_id, &b.content).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(SendError::Invalid(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(SendError::Finished) => (
            StatusCode::CONFLICT,
            Json(json!({"run_id": session, "status": "finished"})),
        )
            .into_response(),
        Err(SendError::Store(e)) => unavailable(&session, &e),
    }
}

/// The body of `POST /api/admin/runs` (and the producer's options).
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct CreateRun {
    /// The run id (default: a fresh one from the store).
    pub run_id: Option<String>,
    /// Task (default) or chat.
    pub kind: Option<RunKind>,
    /// Seed of the script and of the chaos schedule.
    pub seed: u64,
    /// Workers of a task run (1..=64, default 4).
    pub workers: Option<usize>,
    /// Playback speed (default 1).
    pub speed: Option<f64>,
    /// Chaos knobs.
    pub chaos: Chaos,
    /// Append the whole script at once (a finished run) instead of playing it in time.
    pub instant: bool,
    /// A token-stream run (benchmarks): one assistant message with this many deltas.
    pub tokens: Option<u64>,
    /// Deltas per second for a token run (0 = as fast as possible, live).
    pub rate: Option<f64>,
    /// Token run of `progress.tick` events (an unknown type: no state growth) instead of deltas.
    pub ticks: bool,
    /// Token run after a chat history of this many completed messages (benchmarks).
    pub history: u64,
    /// Characters per history message (default 3,000).
    pub history_bytes: Option<usize>,
}

/// Creates a run in the store; returns its id and a future that produces its
/// events (already done for an `instant` run; `None` when the run existed).
pub async fn create_and_produce(
    store: &Arc<dyn Store>,
    c: CreateRun,
) -> Result<
    (
        String,
        Option<futures_util::future::BoxFuture<'static, store::StoreResult<()>>>,
    ),
    StoreError,
> {
    use futures_util::FutureExt;
    let kind = c.kind.unwrap_or(RunKind::Task);
    let speed = c.speed.unwrap_or(1.0).clamp(0.01, 1000.0);
    let mut chaos = c.chaos;
    if chaos.seed == 0 {
        chaos.seed = c.seed;
    }
    let id = match c.run_id {
        Some(id) => id,
        None => store.new_run_id(c.seed).await?,
    };
    let fresh = store
        .create(
            &id,
            RunSpec {
                kind,
                chaos,
                speed,
                session_id: None,
            },
        )
        .await?;
    if !fresh {
        return Ok((id, None));
    }
    let store = store.clone();
    let work = if let Some(n) = c.tokens {
        let t = scenario::TokenRun {
            n,
            rate: c.rate.unwrap_or(0.0),
            instant: c.instant,
            ticks: c.ticks,
            history: c.history.min(100_000),
            history_bytes: c.history_bytes.unwrap_or(3000).min(1 << 20),
        };
        let f = scenario::tokens(store, id.clone(), t);
        if c.instant {
            f.await?;
            None
        } else {
            Some(f.boxed())
        }
    } else if kind == RunKind::Task {
        let script = scenario::task_script(c.seed, c.workers.unwrap_or(4).clamp(1, 64));
        if c.instant {
            scenario::play_instant(&*store, &id, script).await?;
            None
        } else {
            Some(scenario::play(store, id.clone(), script, speed).boxed())
        }
    } else {
        None
    };
    Ok((id, work))
}

async fn create_run(State(app): State<App>, body: Option<Json<CreateRun>>) -> Response {
    let c = body.map(|Json(b)| b).unwrap_or_default();
    let (seed, kind) = (c.seed, c.kind.unwrap_or(RunKind::Task));
    let (id, work) = match create_and_produce(&app.hub.store, c).await {
        Ok(x) => x,
        Err(e) => return unavailable("", &e),
    };
    if let Some(work) = work {
        scenario::spawn("play", id.clone(), work);
    }
    log(
        "run.created",
        json!({"run_id": id, "kind": kind, "seed": seed}),
    );
    (StatusCode::CREATED, Json(json!({"run_id": id}))).into_response()
}

fn found(run_id: &str, r: Result<bool, StoreError>) -> Response {
    match r {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(run_id, &e),
    }
}

async fn set_chaos(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Json(chaos): Json<Chaos>,
) -> Response {
    found(&run_id, app.hub.store.set_chaos(&run_id, chaos).await)
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
    found(&run_id, app.hub.store.prune(&run_id, b.keep_from).await)
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
    match app.hub.store.append(&run_id, &b.ty, b.payload).await {
        Ok(Some(id)) => Json(json!({"event_id": id})).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(&run_id, &e),
    }
}

/// The run's log bounds (from the store) and this process's connection counters.
async fn stats(State(app): State<App>, Path(run_id): Path<String>) -> Response {
    match app.hub.store.meta(&run_id).await {
        Ok(Some(m)) => {
            let l = app.hub.stats(&run_id);
            Json(json!({
                "run_id": run_id, "first_event_id": m.first_id, "last_event_id": m.last_id, "finished": m.finished,
                "connections_total": l.connections_total, "connections_open": l.connections_open,
                "attempts": l.attempts, "dups_sent": l.dups_sent, "malformed_sent": l.malformed_sent,
                "store": app.hub.store.name(),
            }))
            .into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable(&run_id, &e),
    }
}

async fn restart(State(app): State<App>) -> StatusCode {
    app.hub.restart();
    log("server.restart", json!({}));
    StatusCode::NO_CONTENT
}

/// The store's own figures (Redis: `used_memory`, keys) and this process's RSS.
async fn store_info(State(app): State<App>) -> Response {
    match app.hub.store.info().await {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("server_rss_bytes".into(), json!(rss_bytes()));
            }
            Json(v).into_response()
        }
        Err(e) => unavailable("", &e),
    }
}

/// This process's resident set size (Linux `/proc/self/statm`), if known.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[derive(Deserialize)]
struct FramesQuery {
    run_id: Option<String>,
}

/// Open and total streaming connections of this process by kind (the benchmark
/// and the sharing tests count what a page holds with it).
async fn connections(State(app): State<App>) -> Response {
    Json(app.hub.connections()).into_response()
}

async fn frames(State(app): State<App>, Query(q): Query<FramesQuery>) -> Response {
    Json(app.hub.recorded(q.run_id.as_deref())).into_response()
}

#[cfg(test)]
mod tests {
    use super::EnvelopeHead;

    #[test]
    fn envelope_head_reads_the_top_level_id_and_type_only() {
        let ev = r#"{"payload":{"type":"nested","event_id":99,"text":"a\"b"},"event_id":7,"run_id":"r","type":"message.delta","timestamp":"t"}"#;
        let h = EnvelopeHead::of(ev);
        assert_eq!((h.event_id, h.ty.as_ref()), (7, "message.delta"));
        let escaped = EnvelopeHead::of(r#"{"event_id":3,"type":"tool\u002estarted"}"#);
        assert_eq!((escaped.event_id, escaped.ty.as_ref()), (3, "tool.started"));
        let broken = EnvelopeHead::of("{not json");
        assert_eq!((broken.event_id, broken.ty.as_ref()), (0, "message"));
    }
}
