//! `share: "tabs"`: the Web Locks election and the BroadcastChannel of one
//! stream key (API.md "Sharing connections"). The decisions are the engine's
//! ([`crate::core::engine::follow`]); the browser calls are plain JS
//! (`js/tabs.js`, a wasm-bindgen snippet: through web-sys and one closure per
//! callback the same code cost ~13 KB of wasm). This file turns what the
//! snippet reports into engine inputs and posts the engine's
//! [`Action::Broadcast`](crate::core::engine::Action::Broadcast)s.
//!
//! - The lock (`navigator.locks.request(key, {signal}, cb)`, exclusive) is
//!   held for as long as this tab leads: `cb` returns a promise that is
//!   resolved on `close()`, or at `pagehide` / `freeze`. The browser
//!   releases it too when the page dies.
//! - At `pagehide` / `freeze` the page may be gone or frozen for good: a
//!   leading tab steps down (and persists) before the lock goes back, and a
//!   follower withdraws its queued request (a lock granted to a frozen page
//!   could not run its callback, and no tab would lead). At `pageshow` /
//!   `resume` the tab queues again and asks the leader for what it missed.
//! - A request that rejects other than by our own abort (an opaque origin
//!   raises a SecurityError), or that cannot be made, turns the tab solo
//!   (`handle_share_unavailable`): it connects on its own.
//! - Channel messages go to the engine as they come: strings to
//!   `handle_tab_text` (one longer than the engine's limit, checked on its
//!   JS length before it is copied into wasm memory, to
//!   `handle_tab_too_large`), anything else to `handle_tab_unreadable`.
//! - One closure per member receives every report; it is dropped with the
//!   member, after `tabs_leave` has made the snippet stop calling it.

use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

use super::driver::{with_engine, Weak};
use super::env;

#[wasm_bindgen(module = "/js/tabs.js")]
extern "C" {
    fn tabs_supported() -> bool;
    fn tabs_join(key: &str, limit: f64, on: &Closure<dyn FnMut(u32, JsValue) -> bool>) -> JsValue;
    fn tabs_post(member: &JsValue, text: &str);
    fn tabs_leave(member: &JsValue);
}

/// What `js/tabs.js` reports through a member's `on(kind, arg)` (its header lists them).
mod report {
    pub const LEAD: u32 = 0;
    pub const UNAVAILABLE: u32 = 1;
    pub const TEXT: u32 = 2;
    pub const TOO_LARGE: u32 = 3;
    // 4: UNREADABLE, and any other kind

    pub const HIDDEN: u32 = 5;
    pub const RESUMED: u32 = 6;
}

/// Web Locks and BroadcastChannel both exist here (else each tab connects on its own).
pub fn supported() -> bool {
    tabs_supported()
}

/// A stream's part in sharing its key: the channel, the lock, the page
/// listeners (all in the snippet). Dropping it closes the channel and
/// releases the lock.
#[must_use = "the channel closes and the lock is released when this is dropped"]
pub(super) struct Member {
    member: JsValue,
    _on: Closure<dyn FnMut(u32, JsValue) -> bool>,
}

impl Member {
    /// Opens the channel of `key` and queues for its lock; messages longer
    /// than `limit` (the engine's `tab_message_limit`) are not read. `None`:
    /// the channel or the lock request could not be made (the caller turns
    /// the engine solo).
    pub fn join(weak: Weak, key: &str, limit: usize) -> Option<Self> {
        let on = Closure::<dyn FnMut(u32, JsValue) -> bool>::new(move |kind: u32, arg: JsValue| {
            let now = env::now();
            match kind {
                report::LEAD => with_engine(&weak, |e| e.handle_lead(now)).is_some(),
                report::UNAVAILABLE => {
                    with_engine(&weak, |e| e.handle_share_unavailable(now));
                    true
                }
                report::TEXT => {
                    match arg.as_string() {
                        Some(text) => with_engine(&weak, |e| e.handle_tab_text(now, &text)),
                        None => with_engine(&weak, |e| e.handle_tab_unreadable(now)),
                    };
                    true
                }
                report::TOO_LARGE => {
                    let len = arg.as_f64().unwrap_or(0.0) as usize;
                    with_engine(&weak, |e| e.handle_tab_too_large(now, len));
                    true
                }
                report::HIDDEN => {
                    if arg.as_bool() == Some(true) {
                        // The connection ends first, then the snippet gives the lock back.
                        with_engine(&weak, |e| {
                            e.handle_step_down(now);
                            e.persist_now(now);
                        });
                    }
                    true
                }
                report::RESUMED => {
                    if arg.as_bool() == Some(true) {
                        with_engine(&weak, |e| e.handle_page_resumed(now));
                    } else {
                        with_engine(&weak, |e| e.handle_share_unavailable(now));
                    }
                    true
                }
                _ => {
                    with_engine(&weak, |e| e.handle_tab_unreadable(now));
                    true
                }
            }
        });
        let member = tabs_join(key, limit as f64, &on);
        if member.is_null() || member.is_undefined() {
            return None;
        }
        Some(Self { member, _on: on })
    }

    /// Posts an engine message to the other tabs.
    pub fn post(&self, text: &str) {
        tabs_post(&self.member, text);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // The snippet stops reporting before the closure is dropped.
        tabs_leave(&self.member);
    }
}
