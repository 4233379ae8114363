//! Browser plumbing with RAII ownership: every listener, timer and animation
//! frame is owned by a value whose `Drop` removes it; no closure is leaked.

use js_sys::{Function, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Event, EventTarget};

/// The global object's `performance.now()`, or 0 where there is none.
pub fn now() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

/// 128 bits from `crypto.getRandomValues` (falls back to `Math.random`).
pub fn seed() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let ok = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .and_then(|c| c.get_random_values_with_u8_array(&mut bytes).ok())
        .is_some();
    if !ok {
        for b in &mut bytes {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    let (a, b) = bytes.split_at(8);
    let mut x = [0u8; 8];
    let mut y = [0u8; 8];
    x.copy_from_slice(a);
    y.copy_from_slice(b);
    [u64::from_le_bytes(x), u64::from_le_bytes(y)]
}

/// An event listener, removed on drop.
#[must_use = "the listener is removed when this is dropped"]
pub struct Listener {
    target: EventTarget,
    kind: &'static str,
    cb: Closure<dyn FnMut(Event)>,
}

impl Listener {
    /// Adds `f` as a `kind` listener on `target`.
    pub fn new(
        target: &EventTarget,
        kind: &'static str,
        f: impl FnMut(Event) + 'static,
    ) -> Option<Self> {
        let cb = Closure::<dyn FnMut(Event)>::new(f);
        target
            .add_event_listener_with_callback(kind, cb.as_ref().unchecked_ref())
            .ok()?;
        Some(Self {
            target: target.clone(),
            kind,
            cb,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener_with_callback(self.kind, self.cb.as_ref().unchecked_ref());
    }
}

/// A `setTimeout`, cleared on drop.
#[must_use = "the timer is cleared when this is dropped"]
pub struct Timeout {
    id: i32,
    _cb: Closure<dyn FnMut()>,
}

impl Timeout {
    /// Calls `f` after `ms` milliseconds.
    pub fn new(ms: f64, f: impl FnMut() + 'static) -> Option<Self> {
        let cb = Closure::<dyn FnMut()>::new(f);
        let ms = ms.clamp(0.0, 2_147_483_647.0) as i32;
        let id = web_sys::window()?
            .set_timeout_with_callback_and_timeout_and_arguments_0(cb.as_ref().unchecked_ref(), ms)
            .ok()?;
        Some(Self { id, _cb: cb })
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        if let Some(w) = web_sys::window() {
            w.clear_timeout_with_handle(self.id);
        }
    }
}

/// A `requestAnimationFrame`, cancelled on drop.
#[must_use = "the frame is cancelled when this is dropped"]
pub struct Frame {
    id: i32,
    _cb: Closure<dyn FnMut()>,
}

impl Frame {
    /// Calls `f` at the next animation frame.
    pub fn new(f: impl FnMut() + 'static) -> Option<Self> {
        let cb = Closure::<dyn FnMut()>::new(f);
        let id = web_sys::window()?
            .request_animation_frame(cb.as_ref().unchecked_ref())
            .ok()?;
        Some(Self { id, _cb: cb })
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        if let Some(w) = web_sys::window() {
            let _ = w.cancel_animation_frame(self.id);
        }
    }
}

/// Resolves after `ms` milliseconds (a `setTimeout` whose callback is the
/// promise's own `resolve`: no Rust closure to own). Never resolves where
/// there is no window.
pub async fn sleep(ms: f64) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let ms = ms.clamp(0.0, 2_147_483_647.0) as i32;
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

/// True when the document is hidden (rAF does not run then).
pub fn hidden() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .is_some_and(|d| d.hidden())
}

/// `navigator.onLine` (true where unknown).
pub fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}

/// `location.href`, for resolving relative URLs.
pub fn base_href() -> String {
    web_sys::window()
        .and_then(|w| w.location().href().ok())
        .unwrap_or_default()
}

/// Resolves `url` against the page; for WebSockets maps http(s) to ws(s).
pub fn resolve(url: &str, websocket: bool) -> String {
    match web_sys::Url::new_with_base(url, &base_href()) {
        Ok(u) => {
            if websocket {
                match u.protocol().as_str() {
                    "http:" => u.set_protocol("ws:"),
                    "https:" => u.set_protocol("wss:"),
                    _ => {}
                }
            }
            u.href()
        }
        Err(_) => url.to_owned(),
    }
}

/// A `pagehide` / `pageshow` event's `persisted`: the page goes into (or
/// comes back from) the back/forward cache.
pub fn persisted(ev: &Event) -> bool {
    Reflect::get(ev, &"persisted".into()).is_ok_and(|v| v.is_truthy())
}

/// `sessionStorage` or `localStorage`.
pub fn storage(local: bool) -> Option<web_sys::Storage> {
    let w = web_sys::window()?;
    if local {
        w.local_storage().ok().flatten()
    } else {
        w.session_storage().ok().flatten()
    }
}

/// `performance.measure(name, {start, end, detail})`, ignoring failures.
pub fn measure(name: &str, start: f64, end: f64, detail: &JsValue) {
    let Some(perf) = web_sys::window().and_then(|w| w.performance()) else {
        return;
    };
    let opts = js_sys::Object::new();
    let _ = Reflect::set(&opts, &"start".into(), &start.into());
    let _ = Reflect::set(&opts, &"end".into(), &end.max(start).into());
    let _ = Reflect::set(&opts, &"detail".into(), detail);
    if let Ok(f) = Reflect::get(&perf, &"measure".into()) {
        if let Some(f) = f.dyn_ref::<Function>() {
            let _ = f.call2(&perf, &name.into(), &opts);
        }
    }
}

/// Reports a listener's exception without letting it escape (isolation).
pub fn report_listener_error(e: &JsValue) {
    web_sys::console::error_2(&"runstream: a listener threw".into(), e);
}
