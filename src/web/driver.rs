//! The stream's shared state and the one loop that runs it: every browser
//! event becomes an engine input ([`with_engine`]), then [`drive`] executes the
//! engine's actions, delivers telemetry and re-arms the single timer.

use std::cell::RefCell;
use std::rc::{Rc, Weak as RcWeak};

use crate::core::json::{self, ToJson};
use js_sys::Function;
use wasm_bindgen::JsValue;
use web_sys::AbortSignal;

use super::env;
use super::options::Options;
use super::storage;
use super::transport;
use crate::core::engine::{Action, CloseCause, Engine, SendResult, Transport};

pub(super) type Shared = Rc<RefCell<Inner>>;
pub(super) type Weak = RcWeak<RefCell<Inner>>;

/// Everything one `RunStream` owns; dropping it closes the transport and
/// clears every timer, frame and listener.
pub(super) struct Inner {
    pub engine: Engine,
    pub opts: Options,
    pub weak: Weak,
    pub transport: Option<(u64, transport::Handle)>,
    /// Membership of the page's shared WebSocket (websocket transport), held
    /// until `close()`: its machine, and its backoff, outlive any one connection.
    pub share: Option<super::socket::Member>,
    /// What the shared socket was last told of this stream's heartbeat watch
    /// ([`crate::core::engine::Engine::heartbeat_watched`]).
    pub share_watched: Option<bool>,
    /// `share: "tabs"`: the channel and the lock of the stream key, from `start()` to `close()`.
    pub tabs: Option<super::tabs::Member>,
    pub timer: Option<(f64, env::Timeout)>,
    pub frame: Option<(Option<env::Frame>, Option<env::Timeout>)>,
    pub listeners: Vec<env::Listener>,
    pub subscribers: Vec<Subscription>,
    pub event_listeners: Vec<Subscription>,
    /// Send POSTs and snapshot GETs in flight, with their request numbers
    /// (at most the outbox bound plus one snapshot: a Vec is enough).
    pub requests: Vec<(u64, transport::Request)>,
    pub next_request: u64,
    pub snapshot: Option<JsValue>,
    /// The parts of the last snapshot, reused for what did not change.
    pub snapshots: super::snapshot::SnapshotCache,
    pub started: bool,
    pub closed: bool,
}

/// A `subscribe` / `subscribeEvents` listener. Its unsubscribe function is
/// `AbortController.prototype.abort` bound to the controller of `signal`, so
/// it is idempotent, still callable after `close()`, built without
/// `new Function`, and holds no reference to the stream. The stream drops the
/// subscription (and this listener) when the signal aborts, or on `close()`.
pub(super) struct Subscription {
    pub listener: Function,
    pub signal: AbortSignal,
    /// Removes the subscription when the signal aborts; held for its `Drop`.
    pub _on_abort: Option<env::Listener>,
}

impl Subscription {
    /// False once its unsubscribe function was called.
    pub fn active(&self) -> bool {
        !self.signal.aborted()
    }
}

/// The listeners to call now, each with the signal to re-check right before
/// the call (an earlier listener may unsubscribe a later one).
fn callable(subs: &[Subscription]) -> Vec<(Function, AbortSignal)> {
    subs.iter()
        .filter(|s| s.active())
        .map(|s| (s.listener.clone(), s.signal.clone()))
        .collect()
}

/// Takes out unsubscribed listeners (for the caller to drop); telemetry is
/// built only while someone listens.
pub(super) fn prune_subscriptions(inner: &mut Inner) -> Vec<Subscription> {
    let mut gone = Vec::new();
    for list in [&mut inner.subscribers, &mut inner.event_listeners] {
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(Subscription::active);
        *list = keep;
        gone.extend(drop);
    }
    let on = !inner.event_listeners.is_empty();
    inner.engine.set_telemetry(on);
    gone
}

/// Runs `f` on the engine of a live stream, then [`drive`]s it. `None` when the
/// stream is gone or closed (late callbacks of a closed stream do nothing).
pub(super) fn with_engine<R>(weak: &Weak, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
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

/// Tells the stream's shared socket (if any) that the page became visible or hidden.
pub(super) fn share_visibility(weak: &Weak, visible: bool) {
    let Some(rc) = weak.upgrade() else { return };
    let share = match rc.try_borrow() {
        Ok(inner) => inner.share.as_ref().map(super::socket::Member::handle),
        Err(_) => None,
    };
    if let Some(share) = share {
        share.set_visible(visible);
    }
}

/// Executes the engine's actions, delivers telemetry, re-arms the single timer.
pub(super) fn drive(rc: &Shared) {
    // Bounded: each round only executes what the previous round produced.
    for _ in 0..64 {
        let (actions, events, listeners) = {
            let Ok(mut inner) = rc.try_borrow_mut() else {
                return;
            };
            inner.engine.relay_status(env::now());
            let actions: Vec<Action> = std::iter::from_fn(|| inner.engine.poll_action()).collect();
            let mut events = Vec::new();
            if inner.event_listeners.iter().any(Subscription::active) {
                while let Some(ev) = inner.engine.poll_telemetry() {
                    events.push(to_js(&ev));
                }
            }
            let listeners = if events.is_empty() {
                Vec::new()
            } else {
                callable(&inner.event_listeners)
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
            for (f, signal) in &listeners {
                if signal.aborted() {
                    continue;
                }
                // A throwing listener is isolated: the others still get the event.
                if let Err(e) = f.call1(&JsValue::UNDEFINED, ev) {
                    env::report_listener_error(&e);
                }
            }
        }
    }
    sync_watch(rc);
    rearm(rc);
}

/// Tells the stream's shared socket (if any) whether its heartbeat is to be
/// watched (its page or, leading, a follower's is visible) when that changed.
fn sync_watch(rc: &Shared) {
    let change = match rc.try_borrow_mut() {
        Ok(mut inner) => {
            let watched = inner.engine.heartbeat_watched();
            let share = match &inner.share {
                Some(m) if inner.share_watched != Some(watched) => Some(m.handle()),
                _ => None,
            };
            if share.is_some() {
                inner.share_watched = Some(watched);
            }
            share.map(|s| (s, watched))
        }
        Err(_) => None,
    };
    // Outside the borrow: the socket may drop (and so call every engine).
    if let Some((share, watched)) = change {
        share.set_watched(watched);
    }
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

/// POSTs `body` (a send or a cancel) to `url` as a request of its own; the
/// outcome goes to [`crate::core::engine::Engine::handle_send_result`].
fn post(inner: &mut Inner, weak: Weak, url: Option<String>, crid: String, body: String) {
    let Some(url) = url else { return };
    match start_request(inner, Pending::Send(crid.clone())) {
        Some((id, signal)) => {
            let o = &inner.opts;
            transport::post(
                weak,
                id,
                signal,
                env::resolve(&url, false),
                o.headers.clone(),
                o.with_credentials,
                crid,
                body,
            );
        }
        // No AbortController: reported as a network error (retried with backoff).
        None => inner
            .engine
            .handle_send_result(env::now(), &crid, SendResult::default()),
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
            // Disjoint borrows of the fields (`share` is filled while `opts` is read).
            let inner = &mut *inner;
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
                // Every WebSocket stream rides the page's socket for its wsUrl
                // (options set `shared_socket`); the engine's own-socket mode is
                // for other shells and the native tests.
                Transport::WebSocket => {
                    let share = inner.share.get_or_insert_with(|| {
                        let url = env::resolve(&o.ws_url, true);
                        super::socket::Member::join(&url, o.with_credentials, &o.config)
                    });
                    Some(share.attach(weak, conn, &o.config.run_id, o.headers.clone()))
                }
            };
            match handle {
                Some(h) => inner.transport = Some((conn, h)),
                None => {
                    // The browser refused to even create the connection (bad URL, CSP).
                    inner
                        .engine
                        .handle_closed(env::now(), conn, CloseCause::Network);
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
        Action::WsSendHeaders {
            conn,
            client_request_id,
        } => match start_request(&mut inner, Pending::Send(client_request_id.clone())) {
            Some((id, signal)) => transport::ws_send_headers(
                weak,
                id,
                signal,
                inner.opts.headers.clone(),
                conn,
                client_request_id,
            ),
            // No AbortController: reported as a network error (retried with backoff).
            None => inner.engine.handle_send_result(
                env::now(),
                &client_request_id,
                SendResult::default(),
            ),
        },
        Action::FetchSnapshot => match inner.opts.snapshot_url.clone() {
            Some(url) => match start_request(&mut inner, Pending::Snapshot) {
                Some((id, signal)) => {
                    let o = &inner.opts;
                    transport::fetch_snapshot(
                        weak,
                        id,
                        signal,
                        env::resolve(&url, false),
                        o.headers.clone(),
                        o.with_credentials,
                    );
                }
                None => inner
                    .engine
                    .handle_snapshot(env::now(), Err("the request could not be made".into())),
            },
            None => inner
                .engine
                .handle_snapshot(env::now(), Err("no snapshotUrl configured".into())),
        },
        Action::Post {
            client_request_id,
            content,
        } => {
            let body = crate::core::wire::SendBody {
                client_request_id: client_request_id.clone(),
                content,
            }
            .encode();
            let url = inner.opts.send_url.clone();
            post(&mut inner, weak, url, client_request_id, body);
        }
        Action::PostCancel {
            client_request_id,
            body,
        } => {
            let url = inner.opts.cancel_url.clone();
            post(&mut inner, weak, url, client_request_id, body);
        }
        Action::Persist { .. } => {
            if !storage::persist(&mut inner) {
                inner.engine.persist_refused();
            }
        }
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
        Action::Broadcast { text } => {
            if let Some(t) = &inner.tabs {
                t.post(&text);
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

/// What a request in flight reports if its deadline passes.
enum Pending {
    /// The POST of this send (`client_request_id`).
    Send(String),
    /// The snapshot GET.
    Snapshot,
}

/// Registers a new request (aborted on `close()`, timed out after
/// `connectTimeoutMs` without response headers); its number and fetch signal.
fn start_request(inner: &mut Inner, pending: Pending) -> Option<(u64, AbortSignal)> {
    let id = inner.next_request;
    inner.next_request = inner.next_request.wrapping_add(1);
    let weak = inner.weak.clone();
    let (request, signal) =
        transport::Request::new(inner.opts.config.connect_timeout_ms, move || {
            request_timed_out(&weak, id, &pending);
        })?;
    inner.requests.push((id, request));
    Some((id, signal))
}

/// Request `id` got no response headers in time: abort it and report it as a
/// network error, so the engine's retry and backoff apply.
fn request_timed_out(weak: &Weak, id: u64, pending: &Pending) {
    if !take_request(weak, id) {
        return;
    }
    with_engine(weak, |e| {
        let now = env::now();
        match pending {
            Pending::Send(crid) => e.handle_send_result(now, crid, SendResult::default()),
            Pending::Snapshot => {
                e.handle_snapshot(now, Err("the snapshot request timed out".into()))
            }
        }
    });
}

/// Ends request `id`: true when it was still pending, i.e. when the caller
/// must report its outcome (false once it timed out or the stream closed).
pub(super) fn take_request(weak: &Weak, id: u64) -> bool {
    let Some(rc) = weak.upgrade() else {
        return false;
    };
    let request = match rc.try_borrow_mut() {
        Ok(mut inner) => {
            let at = inner.requests.iter().position(|(i, _)| *i == id);
            at.map(|at| inner.requests.swap_remove(at))
        }
        Err(_) => None,
    };
    // Dropped (and aborted, a no-op once answered) outside the borrow.
    request.is_some()
}

/// Request `id` has its response headers: its deadline no longer applies.
pub(super) fn headers_arrived(weak: &Weak, id: u64) {
    if let Some(rc) = weak.upgrade() {
        if let Ok(mut inner) = rc.try_borrow_mut() {
            if let Some((_, r)) = inner.requests.iter_mut().find(|(i, _)| *i == id) {
                r.headers_arrived();
            }
        }
    }
}

/// A Rust value as a plain JS object: serialized to JSON here, parsed by the
/// engine's native `JSON.parse` (fewer boundary crossings than building the
/// object field by field, and no second serializer in the wasm).
pub(super) fn to_js<T: ToJson + ?Sized>(v: &T) -> JsValue {
    js_sys::JSON::parse(&json::to_string(v)).unwrap_or(JsValue::NULL)
}
fn on_frame(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let subs = {
        let Ok(mut inner) = rc.try_borrow_mut() else {
            return;
        };
        inner.frame = None;
        if inner.closed {
            return;
        }
        if inner.engine.flush(env::now()) {
            inner.snapshot = None;
            callable(&inner.subscribers)
        } else {
            Vec::new()
        }
    };
    for (f, signal) in subs {
        if signal.aborted() {
            continue;
        }
        if let Err(e) = f.call0(&JsValue::UNDEFINED) {
            env::report_listener_error(&e);
        }
    }
    drive(&rc);
}
