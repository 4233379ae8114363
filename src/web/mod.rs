//! The browser shell and the `#[wasm_bindgen]` JS API (API.md).
//!
//! All decisions live in [`crate::core`]. This module turns browser events into
//! engine inputs, executes the engine's actions, and re-arms one timer at the
//! engine's next deadline ([`drive`]).

mod env;
mod error;
mod options;
mod transport;

use std::cell::RefCell;
use std::rc::{Rc, Weak as RcWeak};

use js_sys::Function;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::core::engine::{Action, Engine, StreamStatus, Transport};
use crate::core::metrics::RunMetrics;
use crate::core::state::RunState;
pub use error::WebError;
use options::{Options, Resume};

type Shared = Rc<RefCell<Inner>>;
type Weak = RcWeak<RefCell<Inner>>;

struct Inner {
    engine: Engine,
    opts: Options,
    weak: Weak,
    transport: Option<(u64, transport::Handle)>,
    timer: Option<(f64, env::Timeout)>,
    frame: Option<(Option<env::Frame>, Option<env::Timeout>)>,
    listeners: Vec<env::Listener>,
    subscribers: Vec<(u32, Function)>,
    event_listeners: Vec<(u32, Function)>,
    next_id: u32,
    snapshot: Option<JsValue>,
    started: bool,
    closed: bool,
}

/// Runs `f` on the engine of a live stream, then [`drive`]s it. `None` when the
/// stream is gone or closed (late callbacks of a closed stream do nothing).
fn with_engine<R>(weak: &Weak, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    let rc = weak.upgrade()?;
    let r = {
        let mut inner = rc.try_borrow_mut().ok()?;
        if inner.closed {
            return None;
        }
        f(&mut inner.engine)
    };
    drive(&rc);
    Some(r)
}

/// Executes the engine's actions, delivers telemetry, re-arms the single timer.
fn drive(rc: &Shared) {
    // Bounded: each round only executes what the previous round produced.
    for _ in 0..64 {
        let (actions, events, listeners) = {
            let Ok(mut inner) = rc.try_borrow_mut() else {
                return;
            };
            let actions: Vec<Action> = std::iter::from_fn(|| inner.engine.poll_action()).collect();
            let mut events = Vec::new();
            if !inner.event_listeners.is_empty() {
                while let Some(ev) = inner.engine.poll_telemetry() {
                    events.push(to_js(&ev));
                }
            }
            let listeners: Vec<Function> = if events.is_empty() {
                Vec::new()
            } else {
                inner
                    .event_listeners
                    .iter()
                    .map(|(_, f)| f.clone())
                    .collect()
            };
            (actions, events, listeners)
        };
        if actions.is_empty() && events.is_empty() {
            break;
        }
        for a in actions {
            execute(rc, a);
        }
        for ev in &events {
            for f in &listeners {
                // A throwing listener is isolated: the others still get the event.
                if let Err(e) = f.call1(&JsValue::UNDEFINED, ev) {
                    env::report_listener_error(&e);
                }
            }
        }
    }
    rearm(rc);
}

fn rearm(rc: &Shared) {
    let Ok(mut inner) = rc.try_borrow_mut() else {
        return;
    };
    if inner.closed {
        inner.timer = None;
        return;
    }
    match inner.engine.poll_timeout() {
        None => inner.timer = None,
        Some(at) => {
            if inner.timer.as_ref().is_some_and(|(t, _)| *t == at) {
                return;
            }
            let weak = inner.weak.clone();
            let delay = (at - env::now()).max(0.0).ceil();
            let t = env::Timeout::new(delay, move || {
                if let Some(rc) = weak.upgrade() {
                    if let Ok(mut i) = rc.try_borrow_mut() {
                        i.timer = None;
                    }
                }
                with_engine(&weak, |e| e.handle_timeout(env::now()));
            });
            inner.timer = t.map(|t| (at, t));
        }
    }
}

fn execute(rc: &Shared, action: Action) {
    let Ok(mut inner) = rc.try_borrow_mut() else {
        return;
    };
    let weak = inner.weak.clone();
    match action {
        Action::Connect { conn, resume_from } => {
            inner.transport = None;
            let o = &inner.opts;
            let handle = match o.config.transport {
                Transport::Fetch => transport::open_fetch(
                    weak,
                    conn,
                    env::resolve(&o.url, false),
                    resume_from,
                    o.headers.clone(),
                    o.with_credentials,
                ),
                Transport::Sse => transport::open_sse(
                    weak,
                    conn,
                    env::resolve(&o.url, false),
                    resume_from,
                    o.with_credentials,
                ),
                Transport::WebSocket => {
                    transport::open_ws(weak, conn, o.ws_url.clone(), o.headers.clone())
                }
            };
            match handle {
                Some(h) => inner.transport = Some((conn, h)),
                None => {
                    // The browser refused to even create the connection (bad URL, CSP).
                    inner.engine.handle_closed(
                        env::now(),
                        conn,
                        crate::core::engine::CloseCause::Network,
                    );
                }
            }
        }
        Action::Disconnect { conn } => {
            if inner.transport.as_ref().is_some_and(|(c, _)| *c == conn) {
                inner.transport = None;
            }
        }
        Action::WsSend { conn, text } => {
            if let Some((c, h)) = &inner.transport {
                if *c == conn {
                    h.ws_send(&text);
                }
            }
        }
        Action::FetchSnapshot => match inner.opts.snapshot_url.clone() {
            Some(url) => {
                let o = &inner.opts;
                transport::fetch_snapshot(
                    weak,
                    env::resolve(&url, false),
                    o.headers.clone(),
                    o.with_credentials,
                );
            }
            None => inner
                .engine
                .handle_snapshot(env::now(), Err("no snapshotUrl configured".into())),
        },
        Action::Post {
            client_request_id,
            content,
        } => {
            if let Some(url) = inner.opts.send_url.clone() {
                let o = &inner.opts;
                transport::post(
                    weak,
                    env::resolve(&url, false),
                    o.headers.clone(),
                    o.with_credentials,
                    client_request_id,
                    content,
                );
            }
        }
        Action::Persist { .. } => persist(&inner),
        Action::RequestFrame => {
            if inner.frame.is_none() {
                let w1 = weak.clone();
                let w2 = weak;
                // rAF when visible; a timer as well, because rAF does not run in hidden tabs.
                let raf = if env::hidden() {
                    None
                } else {
                    env::Frame::new(move || on_frame(&w1))
                };
                let fallback =
                    env::Timeout::new(if raf.is_some() { 100.0 } else { 50.0 }, move || {
                        on_frame(&w2)
                    });
                inner.frame = Some((raf, fallback));
            }
        }
        Action::Measure(span) => {
            let detail = to_js(&span);
            env::measure(
                "runstream:span",
                span.start,
                span.start + span.duration_ms,
                &detail,
            );
        }
    }
}

/// A Rust value as a plain JS object: serialized to JSON here, parsed by the
/// engine's native `JSON.parse` (fewer boundary crossings than building the
/// object field by field, and no second serializer in the wasm).
fn to_js<T: Serialize>(v: &T) -> JsValue {
    serde_json::to_string(v)
        .ok()
        .and_then(|s| js_sys::JSON::parse(&s).ok())
        .unwrap_or(JsValue::NULL)
}

fn storage_key(run_id: &str) -> String {
    format!("runstream:{run_id}")
}

fn storage_of(resume: Resume) -> Option<web_sys::Storage> {
    match resume {
        Resume::None => None,
        Resume::Local => env::storage(true),
        Resume::Session => env::storage(false),
    }
}

fn persist(inner: &Inner) {
    let Some(storage) = storage_of(inner.opts.resume) else {
        return;
    };
    let key = storage_key(&inner.opts.run_id);
    if storage
        .set_item(&key, &inner.engine.storage_record())
        .is_err()
    {
        // Quota exceeded: drop the stale record rather than resume from a wrong place.
        let _ = storage.remove_item(&key);
    }
}

fn restore(opts: &Options) -> Option<String> {
    storage_of(opts.resume)?
        .get_item(&storage_key(&opts.run_id))
        .ok()?
}

fn on_frame(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let subs: Vec<Function> = {
        let Ok(mut inner) = rc.try_borrow_mut() else {
            return;
        };
        inner.frame = None;
        if inner.closed {
            return;
        }
        if inner.engine.flush(env::now()) {
            inner.snapshot = None;
            inner.subscribers.iter().map(|(_, f)| f.clone()).collect()
        } else {
            Vec::new()
        }
    };
    for f in subs {
        if let Err(e) = f.call0(&JsValue::UNDEFINED) {
            env::report_listener_error(&e);
        }
    }
    drive(&rc);
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    version: u64,
    state: &'a RunState,
    status: StreamStatus,
    metrics: &'a RunMetrics,
}

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `new RunStream(options)` (API.md). */
export interface RunStreamOptions {
  runId: string;
  url?: string;
  transport?: "fetch" | "sse" | "websocket";
  wsUrl?: string;
  snapshotUrl?: string | null;
  sendUrl?: string;
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  withCredentials?: boolean;
  stallAfterMs?: number;
  connectTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  backoff?: { initialMs?: number; maxMs?: number; multiplier?: number };
  resume?: "session" | "local" | "none";
  spans?: boolean | "auto" | { sampleRate: number };
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "offline" | "closed" | "failed";
export type Activity = "idle" | "streaming" | "working";

export interface StreamStatus {
  connection: ConnectionState;
  activity: Activity;
  attempt: number;
  retryInMs: number | null;
  lastError: string | null;
}

export type RunStatus = "pending" | "running" | "succeeded" | "failed" | "cancelled";
export type WorkerStatus = "pending" | "running" | "succeeded" | "failed" | "cancelled" | "unknown";
export type ToolStatus = "running" | "ok" | "error" | "unknown";
export type MessageStatus = "queued" | "sending" | "sent" | "streaming" | "completed" | "failed";

export interface Tool { toolCallId: string; name: string | null; status: ToolStatus }
export interface Worker { workerId: string; jobId: string | null; name: string | null; status: WorkerStatus; tools: Tool[] }
export interface Message {
  messageId: string | null;
  clientRequestId: string | null;
  replyTo: string | null;
  role: "user" | "assistant" | "system" | "tool";
  content: string;
  status: MessageStatus;
}
export interface Supervisor { completed: boolean; summary: string | null }
export interface RunState {
  runId: string;
  cursor: number;
  status: RunStatus;
  workers: Worker[];
  messages: Message[];
  supervisor: Supervisor;
}

export interface MessageMetrics {
  ttfbMs: number | null;
  ttftMs: number | null;
  durationMs: number | null;
  tokens: number;
  fallback: string | null;
}

export type TerminationReason =
  | "server_closed" | "network_error" | "connect_timeout" | "heartbeat_timeout" | "http_4xx" | "http_5xx"
  | "protocol_error" | "resync" | "client_closed" | "offline" | "run_completed" | "no_content"
  | "retry_now" | "error_loop";

export interface RunMetrics {
  reconnects: number;
  eventsApplied: number;
  eventsReplayed: number;
  duplicatesDropped: number;
  outOfOrder: number;
  protocolErrors: number;
  timeToFirstEventMs: number | null;
  toolCalls: number;
  toolErrors: number;
  terminations: Partial<Record<TerminationReason, number>>;
  messages: Record<string, MessageMetrics>;
  protocolErrorsByKind: Record<string, number>;
}

export interface RunSnapshot {
  version: number;
  state: RunState;
  status: StreamStatus;
  metrics: RunMetrics;
}

export interface MetricEvent {
  kind: "counter" | "gauge" | "histogram";
  name: string;
  value: number;
  ts: number;
  attrs?: Record<string, string>;
}

export interface SpanEvent {
  kind: "span";
  name: "runstream:span";
  value: number;
  ts: number;
  spanId: string;
  traceId?: string;
  op: "connect" | "replay" | "message";
  start: number;
  durationMs: number;
  status: "ok" | "error" | "canceled";
  errorKind?: string;
  error?: string;
}

export type RuntimeEvent = MetricEvent | SpanEvent;
"#;

/// One run's durable stream (API.md). Create, `start()`, `subscribe()`, `close()`.
#[wasm_bindgen]
pub struct RunStream {
    inner: Shared,
}

#[wasm_bindgen]
impl RunStream {
    /// Validates `options`; throws `RunStreamOptionError` on bad input. Does not connect yet.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "RunStreamOptions")] options: JsValue,
    ) -> Result<RunStream, JsValue> {
        let opts = Options::parse(&options)?;
        let restored = restore(&opts);
        let engine = Engine::new(opts.config.clone(), env::seed(), restored.as_deref());
        let inner = Rc::new_cyclic(|weak| {
            RefCell::new(Inner {
                engine,
                opts,
                weak: weak.clone(),
                transport: None,
                timer: None,
                frame: None,
                listeners: Vec::new(),
                subscribers: Vec::new(),
                event_listeners: Vec::new(),
                next_id: 1,
                snapshot: None,
                started: false,
                closed: false,
            })
        });
        Ok(RunStream { inner })
    }

    /// Connects (resuming from the stored cursor) and starts listening to online/visibility.
    pub fn start(&self) {
        {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return;
            };
            if inner.started || inner.closed {
                return;
            }
            inner.started = true;
            let weak = inner.weak.clone();
            let mut ls = Vec::new();
            if let Some(w) = web_sys::window() {
                let t: &web_sys::EventTarget = w.as_ref();
                let (a, b, c) = (weak.clone(), weak.clone(), weak.clone());
                ls.extend(env::Listener::new(t, "online", move |_| {
                    with_engine(&a, |e| e.handle_online(env::now(), true));
                }));
                ls.extend(env::Listener::new(t, "offline", move |_| {
                    with_engine(&b, |e| e.handle_online(env::now(), false));
                }));
                ls.extend(env::Listener::new(t, "pagehide", move |_| {
                    with_engine(&c, |e| e.persist_now(env::now()));
                }));
                if let Some(d) = w.document() {
                    let t: &web_sys::EventTarget = d.as_ref();
                    let v = weak.clone();
                    ls.extend(env::Listener::new(t, "visibilitychange", move |_| {
                        with_engine(&v, |e| e.handle_visibility(env::now(), !env::hidden()));
                    }));
                }
            }
            inner.listeners = ls;
            let now = env::now();
            if !env::online() {
                inner.engine.handle_online(now, false);
            }
            if env::hidden() {
                inner.engine.handle_visibility(now, false);
            }
            inner.engine.start(now);
        }
        drive(&self.inner);
    }

    /// Calls `listener` after visible changes, at most once per animation frame. Returns an unsubscribe function.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "() => void")] listener: Function,
    ) -> JsValue {
        self.add_listener(listener, false)
    }

    /// The current snapshot; the same object until the next visible change.
    #[wasm_bindgen(js_name = getSnapshot, unchecked_return_type = "RunSnapshot")]
    pub fn get_snapshot(&self) -> JsValue {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return JsValue::NULL;
        };
        if let Some(s) = &inner.snapshot {
            return s.clone();
        }
        let now = env::now();
        let view = View {
            version: inner.engine.version(),
            state: inner.engine.state(),
            status: inner.engine.status(now),
            metrics: inner.engine.metrics(),
        };
        let v = to_js(&view);
        inner.snapshot = Some(v.clone());
        v
    }

    /// Raw telemetry: `listener` gets every counter, histogram and span synchronously. Returns an unsubscribe function.
    #[wasm_bindgen(js_name = subscribeEvents, unchecked_return_type = "() => void")]
    pub fn subscribe_events(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: RuntimeEvent) => void")] listener: Function,
    ) -> JsValue {
        self.add_listener(listener, true)
    }

    /// Sends a chat message; it shows at once. Returns its `client_request_id`.
    pub fn send(&self, content: &str) -> Result<String, JsValue> {
        let r = {
            let mut inner = self.inner.try_borrow_mut().map_err(|_| WebError::Busy)?;
            inner
                .engine
                .send(env::now(), content)
                .map_err(WebError::from)?
        };
        drive(&self.inner);
        Ok(r)
    }

    /// Skips the backoff wait (a "Retry now" button); also leaves `failed` / `offline`.
    #[wasm_bindgen(js_name = retryNow)]
    pub fn retry_now(&self) {
        let weak = Rc::downgrade(&self.inner);
        with_engine(&weak, |e| e.retry_now(env::now()));
    }

    /// Stops everything: aborts the connection, removes every listener, clears every timer.
    pub fn close(&self) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return;
        };
        if inner.closed {
            return;
        }
        inner.engine.close(env::now());
        // Persist (the only action that still matters), then drop everything.
        while let Some(a) = inner.engine.poll_action() {
            if let Action::Persist { .. } = a {
                persist(&inner);
            }
        }
        inner.closed = true;
        inner.transport = None;
        inner.timer = None;
        inner.frame = None;
        inner.listeners.clear();
        inner.subscribers.clear();
        inner.event_listeners.clear();
        inner.snapshot = None;
    }

    fn add_listener(&self, listener: Function, events: bool) -> JsValue {
        let id = {
            let Ok(mut inner) = self.inner.try_borrow_mut() else {
                return noop();
            };
            if inner.closed {
                return noop();
            }
            let id = inner.next_id;
            inner.next_id = inner.next_id.wrapping_add(1);
            if events {
                inner.event_listeners.push((id, listener));
                inner.engine.set_telemetry(true);
            } else {
                inner.subscribers.push((id, listener));
            }
            id
        };
        let weak = Rc::downgrade(&self.inner);
        // Holds only a weak reference: an unsubscribe function never keeps a stream alive.
        Closure::once_into_js(move || {
            if let Some(rc) = weak.upgrade() {
                if let Ok(mut inner) = rc.try_borrow_mut() {
                    if events {
                        inner.event_listeners.retain(|(i, _)| *i != id);
                        let on = !inner.event_listeners.is_empty();
                        inner.engine.set_telemetry(on);
                    } else {
                        inner.subscribers.retain(|(i, _)| *i != id);
                    }
                }
            }
        })
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.close();
    }
}

fn noop() -> JsValue {
    Function::new_no_args("").into()
}
