//! `share: "tabs"`: the Web Locks election and the BroadcastChannel of one
//! stream key (API.md "Sharing connections"). The decisions are the engine's
//! ([`crate::core::engine::follow`]); this file only turns a granted lock, a
//! page hidden for good and channel messages into engine inputs, and posts
//! the engine's [`Action::Broadcast`](crate::core::engine::Action::Broadcast)s.
//!
//! - The lock (`navigator.locks.request(key, {signal}, cb)`, exclusive) is
//!   held for as long as this tab leads: `cb` returns a promise that is
//!   resolved on `close()`, or at `pagehide` / `freeze` (the page may be
//!   gone or frozen for good: the next queued tab takes over and this one
//!   queues again). The browser releases it too when the page dies.
//! - A follower's queued request is aborted on `close()` (its rejection is
//!   caught). Its callback is a one-shot JS function that frees itself when
//!   called; a request aborted before it was granted never calls it, and that
//!   one small closure is not reclaimed (once per such `close()`).
//! - Channel messages go to the engine as they come: strings to
//!   `handle_tab_text`, anything else to `handle_tab_unreadable`; `pageshow`
//!   and `resume` (the page comes back) to `handle_page_resumed`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortController, BroadcastChannel, MessageEvent};

use super::driver::{with_engine, Weak};
use super::env;

/// Web Locks and BroadcastChannel both exist here (else each tab connects on its own).
pub fn supported() -> bool {
    let g = js_sys::global();
    let has = |o: &JsValue, k: &str| {
        Reflect::get(o, &JsValue::from_str(k)).is_ok_and(|v| !v.is_undefined() && !v.is_null())
    };
    let navigator = Reflect::get(&g, &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    has(&g, "BroadcastChannel") && has(&navigator, "locks")
}

/// This tab's lock request and, once granted, the function that releases it.
struct Lock {
    ctl: AbortController,
    release: Rc<RefCell<Option<Function>>>,
    dropped: Rc<Cell<bool>>,
}

impl Lock {
    /// Queues a request for the lock `key`; `weak`'s engine leads when it is granted.
    fn request(weak: Weak, key: &str) -> Option<Self> {
        let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
        let locks = Reflect::get(&navigator, &"locks".into()).ok()?;
        let request: Function = Reflect::get(&locks, &"request".into())
            .ok()?
            .dyn_into()
            .ok()?;
        let ctl = AbortController::new().ok()?;
        let opts = js_sys::Object::new();
        Reflect::set(&opts, &"signal".into(), &ctl.signal()).ok()?;
        Reflect::set(&opts, &"mode".into(), &"exclusive".into()).ok()?;
        let release: Rc<RefCell<Option<Function>>> = Rc::default();
        let dropped = Rc::new(Cell::new(false));
        let (slot, gone) = (release.clone(), dropped.clone());
        let granted = Closure::once_into_js(move |_lock: JsValue| -> JsValue {
            let mut resolve = None;
            let held = Promise::new(&mut |res, _| resolve = Some(res));
            let Some(resolve) = resolve else {
                return held.into();
            };
            if gone.get() || with_engine(&weak, |e| e.handle_lead(env::now())).is_none() {
                // Closed meanwhile: give the lock straight back.
                let _ = resolve.call0(&JsValue::UNDEFINED);
            } else {
                *slot.borrow_mut() = Some(resolve);
            }
            held.into()
        });
        let p = request
            .call3(&locks, &JsValue::from_str(key), &opts, &granted)
            .ok()?;
        // An aborted request rejects: caught, so it is no unhandled rejection.
        if let Ok(catch) = Reflect::get(&p, &"catch".into()) {
            if let (Some(catch), Some(noop)) = (catch.dyn_ref::<Function>(), noop()) {
                let _ = catch.call1(&p, &noop);
            }
        }
        Some(Self {
            ctl,
            release,
            dropped,
        })
    }

    /// This tab holds the lock.
    fn held(&self) -> bool {
        self.release.borrow().is_some()
    }

    /// Gives the lock back (if held) and withdraws the request (if queued).
    fn give_up(&self) {
        self.dropped.set(true);
        self.ctl.abort();
        if let Some(resolve) = self.release.borrow_mut().take() {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.give_up();
    }
}

/// A stream's part in sharing its key: the channel, the lock, the page
/// listeners. Dropping it closes the channel and releases the lock.
#[must_use = "the channel closes and the lock is released when this is dropped"]
pub(super) struct Member {
    key: String,
    weak: Weak,
    channel: BroadcastChannel,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    lock: Option<Lock>,
    _listeners: Vec<env::Listener>,
}

impl Member {
    /// Opens the channel of `key` and queues for its lock.
    pub fn join(weak: Weak, key: &str) -> Option<Self> {
        let channel = BroadcastChannel::new(key).ok()?;
        let w = weak.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            match ev.data().as_string() {
                Some(text) => with_engine(&w, |e| e.handle_tab_text(env::now(), &text)),
                None => with_engine(&w, |e| e.handle_tab_unreadable(env::now())),
            };
        });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        let mut listeners = Vec::new();
        if let Some(win) = web_sys::window() {
            let target: &web_sys::EventTarget = win.as_ref();
            let w = weak.clone();
            listeners.extend(env::Listener::new(target, "pagehide", move |_| {
                step_down(&w)
            }));
            if let Some(doc) = win.document() {
                let target: &web_sys::EventTarget = doc.as_ref();
                let w = weak.clone();
                listeners.extend(env::Listener::new(target, "freeze", move |_| step_down(&w)));
                let w = weak.clone();
                listeners.extend(env::Listener::new(target, "resume", move |_| {
                    with_engine(&w, |e| e.handle_page_resumed(env::now()));
                }));
            }
            let w = weak.clone();
            listeners.extend(env::Listener::new(target, "pageshow", move |_| {
                with_engine(&w, |e| e.handle_page_resumed(env::now()));
            }));
        }
        let lock = Lock::request(weak.clone(), key);
        Some(Self {
            key: key.to_owned(),
            weak,
            channel,
            _on_message: on_message,
            lock,
            _listeners: listeners,
        })
    }

    /// Posts an engine message to the other tabs.
    pub fn post(&self, text: &str) {
        let _ = self.channel.post_message(&JsValue::from_str(text));
    }

    /// Releases the lock if held, and queues again behind the other tabs.
    fn release_and_requeue(&mut self) {
        if self.lock.as_ref().is_some_and(Lock::held) {
            // Dropping gives the lock back.
            self.lock = None;
            self.lock = Lock::request(self.weak.clone(), &self.key);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
        // `lock`'s own Drop releases it.
    }
}

/// The page is hidden for good (`pagehide`) or frozen: a leading tab gives
/// the lock back at once, so another takes over, and follows from now on.
fn step_down(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let leading = match rc.try_borrow() {
        Ok(inner) => inner
            .tabs
            .as_ref()
            .is_some_and(|m| m.lock.as_ref().is_some_and(Lock::held)),
        Err(_) => false,
    };
    if !leading {
        return;
    }
    // The connection ends first, then the lock goes: never two leaders' connections at once.
    with_engine(weak, |e| {
        e.handle_step_down(env::now());
        e.persist_now(env::now());
    });
    if let Ok(mut inner) = rc.try_borrow_mut() {
        if let Some(m) = inner.tabs.as_mut() {
            m.release_and_requeue();
        }
    };
}

/// A function that ignores its arguments (`Object.prototype.valueOf` bound
/// to a fresh object), made without `new Function` (strict CSPs forbid it).
fn noop() -> Option<Function> {
    let o = js_sys::Object::new();
    Reflect::get(&o, &"valueOf".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .map(|f| f.bind0(&o))
}
