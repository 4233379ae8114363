//! The stream's shared state and the one loop that runs it: every browser
//! event becomes an engine input ([`with_engine`]), then [`drive`] executes the
//! engine's actions, delivers telemetry and re-arms the single timer.

use std::cell::RefCell;
use std::rc::{Rc, Weak as RcWeak};

use js_sys::Function;
use serde::Serialize;
use wasm_bindgen::JsValue;

use super::env;
use super::options::Options;
use super::storage;
use super::transport;
use crate::core::engine::{Action, Engine, Transport};

pub(super) type Shared = Rc<RefCell<Inner>>;
pub(super) type Weak = RcWeak<RefCell<Inner>>;

/// Everything one `RunStream` owns; dropping it closes the transport and
/// clears every timer, frame and listener.
pub(super) struct Inner {
    pub engine: Engine,
    pub opts: Options,
    pub weak: Weak,
    pub transport: Option<(u64, transport::Handle)>,
    pub timer: Option<(f64, env::Timeout)>,
    pub frame: Option<(Option<env::Frame>, Option<env::Timeout>)>,
    pub listeners: Vec<env::Listener>,
    pub subscribers: Vec<(u32, Function)>,
    pub event_listeners: Vec<(u32, Function)>,
    pub next_id: u32,
    pub snapshot: Option<JsValue>,
    pub started: bool,
    pub closed: bool,
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

/// Executes the engine's actions, delivers telemetry, re-arms the single timer.
pub(super) fn drive(rc: &Shared) {
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
        Action::Persist { .. } => storage::persist(&inner),
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
pub(super) fn to_js<T: Serialize>(v: &T) -> JsValue {
    serde_json::to_string(v)
        .ok()
        .and_then(|s| js_sys::JSON::parse(&s).ok())
        .unwrap_or(JsValue::NULL)
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
