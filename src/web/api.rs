//! The `#[wasm_bindgen]` surface: the `RunStream` class (API.md) and the
//! TypeScript declarations of every type it takes and returns.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::AbortController;

use super::driver::{drive, prune_subscriptions, with_engine, Inner, Shared, Subscription, Weak};
use super::env;
use super::error::WebError;
use super::options::Options;
use super::storage;
use crate::core::engine::Action;

/// A new frozen snapshot of the stream, sharing every unchanged part with the last one.
fn view(inner: &mut Inner) -> JsValue {
    let Inner {
        engine, snapshots, ..
    } = inner;
    snapshots.build(engine, env::now())
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
  /** Enables `cancel()` (PROTOCOL §8), e.g. `/api/runs/{runId}/cancel`; with `transport: "websocket"` cancels ride the socket. */
  cancelUrl?: string;
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  withCredentials?: boolean;
  stallAfterMs?: number;
  /** No response headers (fetch, sends, snapshot) / no `open` (EventSource, WebSocket) within this → retry. */
  connectTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  backoff?: { initialMs?: number; maxMs?: number; multiplier?: number };
  /** "tabs": tabs of one origin following the same stream share one connection (README "Sharing connections"). */
  share?: "none" | "tabs";
  /** Where the cursor survives a refresh. Records of finished runs are removed 10 min after their last
   *  write; runstream's records stay under 2 MiB per storage area (oldest evicted first). A long
   *  history's completed messages are kept in IndexedDB (database "runstream"), not rewritten per write. */
  resume?: "session" | "local" | "none";
  spans?: boolean | "auto" | { sampleRate: number };
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "offline" | "closed" | "failed";
export type Activity = "idle" | "streaming" | "working";

export interface StreamStatus {
  readonly connection: ConnectionState;
  readonly activity: Activity;
  readonly attempt: number;
  readonly retryInMs: number | null;
  readonly lastError: string | null;
  /** API.md "Sharing connections": "solo" without `share: "tabs"` (or without Web Locks / BroadcastChannel). */
  readonly sharing: "solo" | "leader" | "follower";
  /** The latest `cancel()`: "done" once its effect shows in the log (or the target had finished). */
  readonly cancel: CancelStatus | null;
}

export type CancelState = "queued" | "sent" | "accepted" | "done" | "failed";
export interface CancelStatus {
  readonly clientRequestId: string;
  readonly replyTo: string | null;
  readonly state: CancelState;
}

/** `cancel(options)`: without `replyTo` the whole run; with it, the reply to that send. */
export interface CancelOptions {
  reason?: string;
  replyTo?: string;
}

export type RunStatus = "pending" | "running" | "succeeded" | "failed" | "cancelled";
export type WorkerStatus = "pending" | "running" | "succeeded" | "failed" | "cancelled" | "unknown";
export type ToolStatus = "running" | "ok" | "error" | "unknown";
export type MessageStatus = "queued" | "sending" | "sent" | "streaming" | "completed" | "failed";

export interface Tool { readonly toolCallId: string; readonly name: string | null; readonly status: ToolStatus }
export interface Worker {
  readonly workerId: string;
  /** The worker's latest job. */
  readonly jobId: string | null;
  /** Every job the worker was given, in assignment order (PROTOCOL §6 `job_ids`; the latest 256). */
  readonly jobIds: readonly string[];
  readonly name: string | null;
  readonly status: WorkerStatus;
  readonly tools: readonly Tool[];
}
export interface Message {
  readonly messageId: string | null;
  readonly clientRequestId: string | null;
  readonly replyTo: string | null;
  readonly role: "user" | "assistant" | "system" | "tool";
  readonly content: string;
  readonly status: MessageStatus;
}
export interface Supervisor { readonly completed: boolean; readonly summary: string | null }
export interface RunState {
  readonly runId: string;
  readonly cursor: number;
  readonly status: RunStatus;
  readonly workers: readonly Worker[];
  readonly messages: readonly Message[];
  readonly supervisor: Supervisor;
  /** A run-wide `run.cancel_requested` was applied (PROTOCOL §8). */
  readonly cancelRequested: boolean;
}

export interface MessageMetrics {
  readonly ttfbMs: number | null;
  readonly ttftMs: number | null;
  readonly durationMs: number | null;
  readonly tokens: number;
  readonly fallback: string | null;
}

export type TerminationReason =
  | "server_closed" | "network_error" | "connect_timeout" | "heartbeat_timeout" | "http_4xx" | "http_5xx"
  | "protocol_error" | "resync" | "client_closed" | "offline" | "run_completed" | "no_content"
  | "retry_now" | "error_loop" | "headers_error" | "shared" | "page_hidden";

export interface RunMetrics {
  readonly reconnects: number;
  readonly eventsApplied: number;
  readonly eventsReplayed: number;
  readonly duplicatesDropped: number;
  readonly outOfOrder: number;
  readonly protocolErrors: number;
  readonly gapsSkipped: number;
  /** Events of a type this client does not know (applied as no-ops, PROTOCOL §1). */
  readonly unknownEvents: number;
  /** Messages on the tabs' channel that were ignored (`share: "tabs"`): another version, malformed, too large. */
  readonly channelErrors: number;
  readonly timeToFirstEventMs: number | null;
  readonly toolCalls: number;
  readonly toolErrors: number;
  readonly terminations: Readonly<Partial<Record<TerminationReason, number>>>;
  readonly messages: Readonly<Record<string, MessageMetrics>>;
  readonly protocolErrorsByKind: Readonly<Record<string, number>>;
}

/** Every object of a snapshot is frozen (API.md): the types are `readonly` all the way down. */
export interface RunSnapshot {
  readonly version: number;
  readonly state: RunState;
  readonly status: StreamStatus;
  readonly metrics: RunMetrics;
}

export interface MetricEvent {
  kind: "counter" | "gauge" | "histogram";
  name: string;
  value: number;
  ts: number;
  attrs?: Record<string, string>;
}

/** Why a span ended in error: a termination reason, or `"send_failed"` for a `message` span. */
export type SpanErrorKind = TerminationReason | "send_failed";

/** A finished span: the `detail` of `performance.measure("runstream:span", …)`. */
export interface SpanDetail {
  spanId: string;
  traceId: string;
  op: "connect" | "replay" | "message";
  start: number;
  durationMs: number;
  status: "ok" | "error" | "canceled";
  errorKind?: SpanErrorKind;
  error?: string;
  /** Connection attempt number (`connect`). */
  attempt?: number;
  /** Events replayed (`replay`). */
  events?: number;
  /** send → accepted (`message`). */
  ttfbMs?: number;
  /** send → first token (`message`). */
  ttftMs?: number;
  /** The send's client_request_id (`message`). */
  clientRequestId?: string;
}

/** A span as a RuntimeEvent: `value` is its duration, `ts` its end. */
export interface SpanEvent extends SpanDetail {
  kind: "span";
  name: "runstream:span";
  value: number;
  ts: number;
}

export type RuntimeEvent = MetricEvent | SpanEvent;
"#;

/// One run's durable stream (API.md). Create, `start()`, `subscribe()`, `close()`.
#[wasm_bindgen]
pub struct RunStream {
    inner: Shared,
    /// The last snapshot built: what `getSnapshot()` returns when the stream is
    /// busy (called re-entrantly from inside one of its own calls), never `null`.
    last: RefCell<JsValue>,
}

#[wasm_bindgen]
impl RunStream {
    /// Validates `options`; throws `RunStreamOptionError` on bad input. Does not connect yet.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "RunStreamOptions")] options: JsValue,
    ) -> Result<RunStream, JsValue> {
        let opts = Options::parse(&options)?;
        let engine = storage::engine(&opts);
        let inner = Rc::new_cyclic(|weak| {
            RefCell::new(Inner {
                engine,
                opts,
                weak: weak.clone(),
                transport: None,
                share: None,
                share_watched: None,
                tabs: None,
                timer: None,
                frame: None,
                listeners: Vec::new(),
                subscribers: Vec::new(),
                event_listeners: Vec::new(),
                requests: Vec::new(),
                next_request: 1,
                snapshot: None,
                snapshots: Default::default(),
                started: false,
                closed: false,
            })
        });
        if let Ok(i) = inner.try_borrow() {
            storage::load_bodies(&i);
        }
        // Built now, so there is always a last snapshot to return; not cached,
        // so the first getSnapshot() still reflects calls made before it (send()).
        let first = inner
            .try_borrow_mut()
            .map(|mut i| view(&mut i))
            .unwrap_or(JsValue::NULL);
        Ok(RunStream {
            inner,
            last: RefCell::new(first),
        })
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
                let d = weak.clone();
                ls.extend(env::Listener::new(t, "pagehide", move |ev| {
                    with_engine(&c, |e| {
                        e.persist_now(env::now());
                        if env::persisted(&ev) {
                            e.handle_page_cached(env::now(), true);
                        }
                    });
                }));
                ls.extend(env::Listener::new(t, "pageshow", move |ev| {
                    if env::persisted(&ev) {
                        with_engine(&d, |e| e.handle_page_cached(env::now(), false));
                    }
                }));
                if let Some(d) = w.document() {
                    let t: &web_sys::EventTarget = d.as_ref();
                    let v = weak.clone();
                    ls.extend(env::Listener::new(t, "visibilitychange", move |_| {
                        with_engine(&v, |e| e.handle_visibility(env::now(), !env::hidden()));
                        super::driver::share_visibility(&v, !env::hidden());
                    }));
                }
            }
            inner.listeners = ls;
            if let Some(key) = inner.opts.config.share_key.clone() {
                // The channel exists before the engine's first message (its ask).
                let limit = inner.engine.tab_message_limit();
                inner.tabs = super::tabs::Member::join(weak.clone(), &key, limit);
                if inner.tabs.is_none() {
                    // The channel or the lock request failed: connect on our own.
                    inner.engine.handle_share_unavailable(env::now());
                }
            }
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

    /// Calls `listener` after visible changes, at most once per animation frame. Returns an
    /// unsubscribe function (idempotent; a no-op after `close()`).
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "() => void")] listener: Function,
    ) -> JsValue {
        self.add_listener(listener, false)
    }

    /// The current snapshot; the same object until the next visible change. Never `null`.
    #[wasm_bindgen(js_name = getSnapshot, unchecked_return_type = "RunSnapshot")]
    pub fn get_snapshot(&self) -> JsValue {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            // Called from inside one of the stream's own calls: the last snapshot is still current.
            return self.last.borrow().clone();
        };
        if let Some(s) = &inner.snapshot {
            return s.clone();
        }
        let v = view(&mut inner);
        if v.is_null() {
            // Unreachable in practice (serializing plain data); keep the last one.
            return self.last.borrow().clone();
        }
        inner.snapshot = Some(v.clone());
        *self.last.borrow_mut() = v.clone();
        v
    }

    /// Raw telemetry: `listener` gets every counter, histogram and span synchronously. Returns
    /// an unsubscribe function (idempotent; a no-op after `close()`).
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

    /// Stop: asks the server to stop the run, or with `replyTo` the reply to that send
    /// (PROTOCOL §8). Durable like a send. Returns the cancel's `client_request_id`.
    pub fn cancel(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "CancelOptions")] options: Option<
            js_sys::Object,
        >,
    ) -> Result<String, JsValue> {
        let field = |k: &'static str| -> Result<Option<String>, WebError> {
            let Some(o) = &options else { return Ok(None) };
            let v = Reflect::get(o, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
            if v.is_undefined() || v.is_null() {
                return Ok(None);
            }
            v.as_string()
                .map(Some)
                .ok_or(WebError::InvalidOption(k, "a string"))
        };
        let (reason, reply_to) = (field("reason")?, field("replyTo")?);
        let r = {
            let mut inner = self.inner.try_borrow_mut().map_err(|_| WebError::Busy)?;
            inner
                .engine
                .cancel(env::now(), reply_to.as_deref(), reason.as_deref())
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

    /// Stops everything: aborts the connection and every send or snapshot request in flight,
    /// removes every listener, clears every timer.
    pub fn close(&self) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return;
        };
        if inner.closed {
            return;
        }
        inner.engine.close(env::now());
        // Persist, and tell the other tabs (a follower's last `visible: 0`):
        // the only actions that still matter. Then drop everything.
        while let Some(a) = inner.engine.poll_action() {
            match a {
                Action::Persist { .. } => {
                    let _ = storage::persist(&mut inner);
                }
                Action::Broadcast { text } => {
                    if let Some(t) = &inner.tabs {
                        t.post(&text);
                    }
                }
                _ => {}
            }
        }
        inner.closed = true;
        inner.transport = None;
        // The last member's going drops the page's socket for this wsUrl.
        inner.share = None;
        // Releases the lock (the next tab leads) or withdraws the request; closes the channel.
        inner.tabs = None;
        inner.timer = None;
        inner.frame = None;
        inner.listeners.clear();
        inner.subscribers.clear();
        inner.event_listeners.clear();
        // Aborts every send and snapshot request in flight.
        inner.requests.clear();
        inner.snapshot = None;
    }

    fn add_listener(&self, listener: Function, events: bool) -> JsValue {
        let Ok(ctl) = AbortController::new() else {
            return noop();
        };
        let off = unsubscribe_fn(&ctl);
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return off;
        };
        if inner.closed {
            return off;
        }
        drop(prune_subscriptions(&mut inner));
        let signal = ctl.signal();
        let weak = inner.weak.clone();
        let on_abort = env::Listener::new(signal.as_ref(), "abort", move |_| {
            unsubscribe(&weak);
        });
        let sub = Subscription {
            listener,
            signal,
            _on_abort: on_abort,
        };
        if events {
            inner.event_listeners.push(sub);
            inner.engine.set_telemetry(true);
        } else {
            inner.subscribers.push(sub);
        }
        off
    }
}

impl Drop for RunStream {
    fn drop(&mut self) {
        self.close();
    }
}

/// An unsubscribe function was called: drop the subscriptions whose signal
/// aborted. (If the stream is busy right now, they are skipped at delivery and
/// dropped at the next unsubscribe, subscribe or `close()`.)
fn unsubscribe(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let removed = match rc.try_borrow_mut() {
        Ok(mut inner) => prune_subscriptions(&mut inner),
        Err(_) => Vec::new(),
    };
    // Dropped after the borrow ends (one of them owns the listener running now).
    drop(removed);
}

/// `controller.abort` as a plain function: the unsubscribe function handed to
/// JS. Idempotent (aborting twice is a no-op) and made without `new Function`.
fn unsubscribe_fn(ctl: &AbortController) -> JsValue {
    Reflect::get(ctl, &"abort".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .map_or_else(noop, |f| f.bind0(ctl).into())
}

/// A function that does nothing observable (`Object.prototype.valueOf` bound to
/// a fresh object), for when no AbortController can be made. Made without
/// `new Function`, which pages with a strict CSP forbid.
fn noop() -> JsValue {
    let o = js_sys::Object::new();
    Reflect::get(&o, &"valueOf".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .map_or(JsValue::UNDEFINED, |f| f.bind0(&o).into())
}
