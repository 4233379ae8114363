//! The `#[wasm_bindgen]` surface: the `RunStream` class (API.md) and the
//! TypeScript declarations of every type it takes and returns.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Function;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::driver::{drive, to_js, with_engine, Inner, Shared};
use super::env;
use super::error::WebError;
use super::options::Options;
use super::storage;
use crate::core::engine::{Action, Engine, StreamStatus};
use crate::core::metrics::RunMetrics;
use crate::core::state::RunState;

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
        let restored = storage::restore(&opts);
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
                storage::persist(&inner);
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
