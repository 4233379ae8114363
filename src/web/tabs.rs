//! `share: "tabs"`: the Web Locks election and the BroadcastChannel of one
//! stream key (API.md "Sharing connections"). The decisions are the engine's
//! ([`crate::core::engine::follow`]); this file only turns a granted lock, a
//! page hidden for good and channel messages into engine inputs, and posts
//! the engine's [`Action::Broadcast`](crate::core::engine::Action::Broadcast)s.
//!
//! - The lock (`navigator.locks.request(key, {signal}, cb)`, exclusive) is
//!   held for as long as this tab leads: `cb` returns a promise that is
//!   resolved on `close()`, or at `pagehide` / `freeze`. The browser
//!   releases it too when the page dies.
//! - At `pagehide` / `freeze` the page may be gone or frozen for good: a
//!   leading tab steps down and gives the lock back, and a follower
//!   withdraws its queued request (a lock granted to a frozen page could not
//!   run its callback, and no tab would lead). At `pageshow` / `resume` the
//!   tab queues again and asks the leader for what it missed.
//! - A request that rejects other than by our own abort (an opaque origin
//!   raises a SecurityError), or that cannot be made, turns the tab solo
//!   (`handle_share_unavailable`): it connects on its own.
//! - A withdrawn request's rejection is awaited and ignored. Its callback is
//!   a one-shot JS function that frees itself when called; a request aborted
//!   before it was granted never calls it, and that one small closure is not
//!   reclaimed (once per withdrawal).
//! - Channel messages go to the engine as they come: strings to
//!   `handle_tab_text` (one longer than the engine's limit, checked on its
//!   JS length before it is copied into wasm memory, to
//!   `handle_tab_too_large`), anything else to `handle_tab_unreadable`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, JsString, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
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
        let weak_for_error = weak.clone();
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
        let p: Promise = request
            .call3(&locks, &JsValue::from_str(key), &opts, &granted)
            .ok()?
            .dyn_into()
            .ok()?;
        // A request we withdrew rejects with an AbortError: ignored. Any other
        // rejection (a SecurityError in an opaque origin): sharing cannot
        // work here, so this tab connects on its own.
        let gone = dropped.clone();
        spawn_local(async move {
            if JsFuture::from(p).await.is_err() && !gone.get() {
                with_engine(&weak_for_error, |e| e.handle_share_unavailable(env::now()));
            }
        });
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
    /// Opens the channel of `key` and queues for its lock; messages longer
    /// than `limit` (the engine's `tab_message_limit`) are not read. `None`:
    /// the channel or the lock request could not be made (the caller turns
    /// the engine solo).
    pub fn join(weak: Weak, key: &str, limit: usize) -> Option<Self> {
        let channel = BroadcastChannel::new(key).ok()?;
        let w = weak.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let data = ev.data();
            match data.dyn_ref::<JsString>() {
                Some(s) if s.length() as usize > limit => {
                    let len = s.length() as usize;
                    with_engine(&w, |e| e.handle_tab_too_large(env::now(), len))
                }
                Some(s) => {
                    let text = String::from(s);
                    with_engine(&w, |e| e.handle_tab_text(env::now(), &text))
                }
                None => with_engine(&w, |e| e.handle_tab_unreadable(env::now())),
            };
        });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        let mut listeners = Vec::new();
        if let Some(win) = web_sys::window() {
            let target: &web_sys::EventTarget = win.as_ref();
            let w = weak.clone();
            listeners.extend(env::Listener::new(target, "pagehide", move |_| {
                withdraw(&w)
            }));
            if let Some(doc) = win.document() {
                let target: &web_sys::EventTarget = doc.as_ref();
                let w = weak.clone();
                listeners.extend(env::Listener::new(target, "freeze", move |_| withdraw(&w)));
                let w = weak.clone();
                listeners.extend(env::Listener::new(target, "resume", move |_| rejoin(&w)));
            }
            let w = weak.clone();
            listeners.extend(env::Listener::new(target, "pageshow", move |_| rejoin(&w)));
        }
        let lock = Some(Lock::request(weak.clone(), key)?);
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

    /// Gives the lock back (if held) or withdraws the queued request.
    fn withdraw(&mut self) {
        // Dropping gives the lock back and aborts the request.
        self.lock = None;
    }

    /// Queues for the lock again (after [`Self::withdraw`]); `false` if the
    /// request could not be made.
    fn requeue(&mut self) -> bool {
        if self.lock.is_none() {
            self.lock = Lock::request(self.weak.clone(), &self.key);
        }
        self.lock.is_some()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
        // `lock`'s own Drop releases it.
    }
}

/// The page is hidden for good (`pagehide`) or frozen: a leading tab steps
/// down and gives the lock back at once, so another takes over; a follower
/// withdraws its queued request. Both follow from now on.
fn withdraw(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let leading = match rc.try_borrow() {
        Ok(inner) => inner
            .tabs
            .as_ref()
            .is_some_and(|m| m.lock.as_ref().is_some_and(Lock::held)),
        Err(_) => false,
    };
    if leading {
        // The connection ends first, then the lock goes: never two leaders' connections at once.
        with_engine(weak, |e| {
            e.handle_step_down(env::now());
            e.persist_now(env::now());
        });
    }
    if let Ok(mut inner) = rc.try_borrow_mut() {
        if let Some(m) = inner.tabs.as_mut() {
            m.withdraw();
        }
    };
}

/// The page came back (`pageshow`, `resume`): queues for the lock again and
/// asks the leader for what this tab missed.
fn rejoin(weak: &Weak) {
    let Some(rc) = weak.upgrade() else { return };
    let queued = match rc.try_borrow_mut() {
        Ok(mut inner) => inner.tabs.as_mut().is_none_or(Member::requeue),
        Err(_) => true,
    };
    if queued {
        with_engine(weak, |e| e.handle_page_resumed(env::now()));
    } else {
        with_engine(weak, |e| e.handle_share_unavailable(env::now()));
    }
}
