//! One WebSocket per page, `wsUrl` and credentials mode, shared by every
//! `RunStream` on it (API.md "Sharing connections"). The decisions are
//! [`Socket`]'s; this file opens and closes the browser socket, feeds its
//! events to the machine, and hands each run's share to its engine.
//!
//! Ownership is RAII: a stream holds a [`Member`] for its lifetime (it keeps
//! the socket's machine, and so its backoff, alive across drops), and its
//! current connection is an [`Attachment`] whose `Drop` detaches the run
//! (`unsubscribe`; the socket closes with the last run). When the last member
//! goes, the machine, the socket and its timer are dropped with it. The page's
//! registry holds only weak references.

use crate::core::vecmap::VecMap;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak as RcWeak};

use wasm_bindgen::JsValue;
use wasm_bindgen_futures::spawn_local;
use web_sys::{AbortController, AbortSignal};

use super::driver::{with_engine, Weak};
use super::env;
use super::options::resolve_headers;
use super::transport::{report, Handle, Reports};
use crate::core::engine::{CloseCause, Config};
use crate::core::socket::{RunKey, Socket, SocketAction, SocketConfig};

type SocketRc = Rc<RefCell<Shared>>;
type SocketWeak = RcWeak<RefCell<Shared>>;

/// The run behind a [`RunKey`]: its stream, its engine's connection number,
/// and its `headers` option (resolved at each open, sent in its subscribe).
struct RunRef {
    stream: Weak,
    conn: u64,
    headers: JsValue,
    /// Aborted when the run detaches: ends a wait for its `headers` that
    /// never settles (`resolve_headers`), so nothing of it outlives the run.
    abort: Option<AbortController>,
}

impl Drop for RunRef {
    fn drop(&mut self) {
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

/// One shared socket: the machine, the browser socket, the timer, the runs.
struct Shared {
    machine: Socket,
    url: String,
    ws: Option<(u64, Handle)>,
    timer: Option<(f64, env::Timeout)>,
    runs: VecMap<RunKey, RunRef>,
    weak: SocketWeak,
}

thread_local! {
    /// The page's sockets by key (resolved wsUrl + credentials mode); weak,
    /// so a socket lives exactly as long as its members.
    static REGISTRY: RefCell<Vec<(String, SocketWeak)>> = const { RefCell::new(Vec::new()) };
    static NEXT_RUN: Cell<RunKey> = const { Cell::new(1) };
}

/// A stream's membership of the shared socket for `url`; held for the stream's lifetime.
#[must_use = "the socket's machine lives only as long as its members"]
pub(super) struct Member {
    rc: SocketRc,
    run: RunKey,
}

/// A run attached to the socket (the engine's current connection). Dropping
/// it detaches the run: `unsubscribe`, and the socket closes with the last run.
#[must_use = "the run is detached when this is dropped"]
pub struct Attachment {
    rc: SocketRc,
    run: RunKey,
}

impl Member {
    /// Joins the page's socket for `url` (resolved) and `credentials`, created
    /// on first use with the timing of `cfg`.
    pub fn join(url: &str, credentials: bool, cfg: &Config) -> Self {
        let key = [if credentials { "true|" } else { "false|" }, url].concat();
        let run = NEXT_RUN.with(|n| {
            let r = n.get();
            n.set(r.wrapping_add(1));
            r
        });
        let rc = REGISTRY.with(|reg| {
            let mut reg = reg.borrow_mut();
            reg.retain(|(_, w)| w.strong_count() > 0);
            if let Some(rc) = reg
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, w)| w.upgrade())
            {
                return rc;
            }
            let mut machine = Socket::new(SocketConfig::from(cfg));
            // The page may be hidden already (a tab opened in the
            // background): the heartbeat is not watched until it is visible.
            machine.set_visible(env::now(), !env::hidden());
            let rc = Rc::new_cyclic(|weak| {
                RefCell::new(Shared {
                    machine,
                    url: url.to_owned(),
                    ws: None,
                    timer: None,
                    runs: VecMap::new(),
                    weak: weak.clone(),
                })
            });
            reg.push((key, Rc::downgrade(&rc)));
            rc
        });
        Self { rc, run }
    }

    /// Attaches the run (engine connection `conn`, following `run_id`): the
    /// engine hears `open` once the socket is open.
    pub fn attach(&self, stream: Weak, conn: u64, run_id: &str, headers: JsValue) -> Handle {
        if let Ok(mut s) = self.rc.try_borrow_mut() {
            s.runs.insert(
                self.run,
                RunRef {
                    stream,
                    conn,
                    headers,
                    abort: AbortController::new().ok(),
                },
            );
            s.machine.attach(env::now(), self.run, run_id);
        }
        pump(&self.rc);
        Handle::Shared(Attachment {
            rc: self.rc.clone(),
            run: self.run,
        })
    }

    /// A weak handle on the socket and this stream's run on it, to use once
    /// the stream's borrow is released.
    pub fn handle(&self) -> ShareRef {
        ShareRef(Rc::downgrade(&self.rc), self.run)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // The stream goes: its wish to have the heartbeat watched goes with it.
        if let Ok(mut s) = self.rc.try_borrow_mut() {
            s.machine.set_run_watched(env::now(), self.run, false);
        }
        pump(&self.rc);
    }
}

/// A weak handle on a shared socket, and the run of the stream that holds it.
pub(super) struct ShareRef(SocketWeak, RunKey);

impl ShareRef {
    /// The page became visible or hidden (the heartbeat watch follows it).
    pub fn set_visible(&self, visible: bool) {
        on_socket(&self.0, |m| m.set_visible(env::now(), visible));
    }

    /// The stream's heartbeat is (or is no longer) to be watched whatever the
    /// page's visibility (`Engine::heartbeat_watched`).
    pub fn set_watched(&self, watched: bool) {
        let run = self.1;
        on_socket(&self.0, |m| m.set_run_watched(env::now(), run, watched));
    }
}

impl Attachment {
    /// Writes a frame of this run (subscribe, send) on the open socket.
    pub fn send(&self, text: &str) {
        if let Ok(s) = self.rc.try_borrow() {
            if let Some((_, ws)) = &s.ws {
                ws.ws_send(text);
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let gone = match self.rc.try_borrow_mut() {
            Ok(mut s) => {
                s.machine.detach(self.run);
                s.runs.remove(&self.run)
            }
            Err(_) => None,
        };
        drop(gone);
        pump(&self.rc);
    }
}

/// Runs `f` on the machine of a live socket, then executes what it decided.
fn on_socket(weak: &SocketWeak, f: impl FnOnce(&mut Socket)) {
    let Some(rc) = weak.upgrade() else { return };
    {
        let Ok(mut s) = rc.try_borrow_mut() else {
            return;
        };
        f(&mut s.machine);
    }
    pump(&rc);
}

/// Executes the machine's actions (no borrow is held while an engine runs),
/// then re-arms the socket's one timer.
fn pump(rc: &SocketRc) {
    // Bounded: each round only executes what the previous round produced.
    for _ in 0..64 {
        let actions: Vec<SocketAction> = match rc.try_borrow_mut() {
            Ok(mut s) => std::iter::from_fn(|| s.machine.poll_action()).collect(),
            Err(_) => return,
        };
        if actions.is_empty() {
            break;
        }
        for a in actions {
            execute(rc, a);
        }
    }
    rearm(rc);
}

fn rearm(rc: &SocketRc) {
    let Ok(mut s) = rc.try_borrow_mut() else {
        return;
    };
    match s.machine.poll_timeout() {
        None => s.timer = None,
        Some(at) => {
            if s.timer.as_ref().is_some_and(|(t, _)| *t == at) {
                return;
            }
            let weak = s.weak.clone();
            let delay = (at - env::now()).max(0.0).ceil();
            let t = env::Timeout::new(delay, move || {
                if let Some(rc) = weak.upgrade() {
                    if let Ok(mut s) = rc.try_borrow_mut() {
                        s.timer = None;
                    }
                }
                on_socket(&weak, |m| {
                    m.handle_timeout(env::now(), js_sys::Math::random())
                });
            });
            s.timer = t.map(|t| (at, t));
        }
    }
}

/// The stream and engine connection of run `run`, if still attached.
fn run_ref(rc: &SocketRc, run: RunKey) -> Option<(Weak, u64, JsValue)> {
    let s = rc.try_borrow().ok()?;
    let r = s.runs.get(&run)?;
    Some((r.stream.clone(), r.conn, r.headers.clone()))
}

/// The signal that aborts when run `run` detaches (see [`RunRef::abort`]).
fn run_signal(rc: &SocketRc, run: RunKey) -> Option<AbortSignal> {
    let s = rc.try_borrow().ok()?;
    Some(s.runs.get(&run)?.abort.as_ref()?.signal())
}

fn execute(rc: &SocketRc, action: SocketAction) {
    match action {
        SocketAction::Open { conn } => {
            let Ok(mut s) = rc.try_borrow_mut() else {
                return;
            };
            let old = s.ws.take();
            let handle = open(s.weak.clone(), conn, &s.url);
            let refused = handle.is_none();
            s.ws = handle.map(|h| (conn, h));
            let weak = s.weak.clone();
            drop(s);
            drop(old);
            if refused {
                // The browser refused to create it (bad URL, CSP): a drop,
                // reported after the engine that attached is done.
                spawn_local(async move {
                    on_socket(&weak, |m| {
                        m.handle_closed(env::now(), conn, CloseCause::Network, 0.5)
                    });
                });
            }
        }
        SocketAction::Close { conn } => {
            let old = match rc.try_borrow_mut() {
                Ok(mut s) if s.ws.as_ref().is_some_and(|(c, _)| *c == conn) => s.ws.take(),
                _ => None,
            };
            drop(old);
        }
        SocketAction::Send { conn, text } => {
            if let Ok(s) = rc.try_borrow() {
                if let Some((c, ws)) = &s.ws {
                    if *c == conn {
                        ws.ws_send(&text);
                    }
                }
            }
        }
        SocketAction::RunOpen { run } => {
            let (Some((stream, conn, headers)), Some(signal)) =
                (run_ref(rc, run), run_signal(rc, run))
            else {
                return;
            };
            // Headers go in the run's subscribe frame: resolved per run, per
            // open, within the run's connect timeout. In a task: an attach to
            // an open socket comes here while the stream is borrowed.
            spawn_local(async move {
                with_engine(&stream, |e| e.handle_ws_ready(env::now(), conn));
                match resolve_headers(&headers, &signal).await {
                    Ok(h) => with_engine(&stream, |e| e.handle_ws_open(env::now(), conn, h)),
                    Err(err) => {
                        let cause = CloseCause::HeadersFailed(err.message());
                        with_engine(&stream, |e| e.handle_closed(env::now(), conn, cause))
                    }
                };
            });
        }
        SocketAction::Deliver { run, op } => {
            if let Some((stream, conn, _)) = run_ref(rc, run) {
                with_engine(&stream, |e| e.handle_ws_op(env::now(), conn, op));
            }
        }
        SocketAction::Unreadable { run, error } => {
            if let Some((stream, conn, _)) = run_ref(rc, run) {
                with_engine(&stream, |e| {
                    e.handle_ws_frame_error(env::now(), conn, error)
                });
            }
        }
        SocketAction::RunDropped { run, cause } => {
            if let Some((stream, conn, _)) = run_ref(rc, run) {
                with_engine(&stream, |e| e.handle_closed(env::now(), conn, cause));
            }
        }
    }
}

/// Opens browser socket `conn`; each of its events becomes one machine input.
fn open(weak: SocketWeak, conn: u64, url: &str) -> Option<Handle> {
    let on = Reports::new(move |kind: u32, arg: JsValue| match kind {
        report::WS_OPEN => on_socket(&weak, |m| m.handle_open(env::now(), conn)),
        report::WS_TEXT => match arg.as_string() {
            Some(text) => on_socket(&weak, |m| m.handle_text(env::now(), conn, &text)),
            None => on_socket(&weak, |m| m.handle_binary(env::now(), conn)),
        },
        report::WS_BINARY => on_socket(&weak, |m| m.handle_binary(env::now(), conn)),
        report::WS_CLOSE => {
            // The close code tells an auth refusal (1008, 4401, 4403) or a
            // missing run (4404) from an ordinary drop (1000, 1001, 1006, 1011).
            let cause = match arg.as_f64() {
                Some(code) if (0.0..=65535.0).contains(&code) => {
                    CloseCause::WsClose { code: code as u16 }
                }
                _ => CloseCause::Network,
            };
            on_socket(&weak, |m| {
                m.handle_closed(env::now(), conn, cause, js_sys::Math::random())
            });
        }
        _ => {}
    });
    Handle::open_ws(url, on)
}
