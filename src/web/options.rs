//! Reads the JS options object (API.md) into typed options.

use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::AbortSignal;

use super::error::WebError;
use crate::core::engine::{Backoff, Config, Spans, Transport};

/// Where the cursor survives a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// `sessionStorage` (per tab).
    Session,
    /// `localStorage` (across tabs).
    Local,
    /// Nowhere.
    None,
}

/// Typed options.
pub struct Options {
    pub run_id: String,
    pub url: String,
    pub ws_url: String,
    pub snapshot_url: Option<String>,
    pub send_url: Option<String>,
    pub cancel_url: Option<String>,
    pub headers: JsValue,
    pub with_credentials: bool,
    pub resume: Resume,
    pub config: Config,
}

#[wasm_bindgen(module = "/js/options.js")]
extern "C" {
    /// Validates the options object and returns its compact form (js/options.js).
    #[wasm_bindgen(catch)]
    fn read_options(o: &JsValue) -> Result<Array, JsValue>;
}

// Positions in `read_options`' array.
const AT_RUN_ID: u32 = 0;
const AT_TRANSPORT: u32 = 1;
const AT_URL: u32 = 2;
const AT_WS_URL: u32 = 3;
const AT_SNAPSHOT_URL: u32 = 4;
const AT_SEND_URL: u32 = 5;
const AT_CANCEL_URL: u32 = 6;
const AT_HEADERS: u32 = 7;
const AT_CREDENTIALS: u32 = 8;
const AT_RESUME: u32 = 9;
const AT_SHARE_TABS: u32 = 10;
const AT_STALL: u32 = 11;
const AT_CONNECT_TIMEOUT: u32 = 12;
const AT_HEARTBEAT_TIMEOUT: u32 = 13;
const AT_BACKOFF_INITIAL: u32 = 14;
const AT_BACKOFF_MAX: u32 = 15;
const AT_BACKOFF_MULTIPLIER: u32 = 16;
const AT_SPANS: u32 = 17;

impl Options {
    /// Parses and validates `opts` (API.md): js/options.js validates it and
    /// fills in the URL defaults; this reads the result by position. Throws
    /// what `read_options` throws (a `RunStreamOptionError`).
    pub fn parse(opts: &JsValue) -> Result<Self, JsValue> {
        let a = read_options(opts)?;
        let string = |i| a.get(i).as_string();
        let number = |i| a.get(i).as_f64();
        let run_id = string(AT_RUN_ID).unwrap_or_default();
        let transport = match number(AT_TRANSPORT) {
            Some(1.0) => Transport::Sse,
            Some(2.0) => Transport::WebSocket,
            _ => Transport::Fetch,
        };
        let url = string(AT_URL).unwrap_or_default();
        let ws_url = string(AT_WS_URL).unwrap_or_default();
        let snapshot_url = string(AT_SNAPSHOT_URL);
        let send_url = string(AT_SEND_URL);
        let cancel_url = string(AT_CANCEL_URL);
        let session_id = send_url
            .as_deref()
            .and_then(session_from_send_url)
            .unwrap_or_else(|| run_id.clone());
        let headers = a.get(AT_HEADERS);
        let with_credentials = a.get(AT_CREDENTIALS).is_truthy();
        let resume = match number(AT_RESUME) {
            Some(1.0) => Resume::Local,
            Some(2.0) => Resume::None,
            _ => Resume::Session,
        };
        let mut c = Config::new(&run_id);
        // Where Web Locks or BroadcastChannel are missing, each tab connects on its own.
        if a.get(AT_SHARE_TABS).is_truthy() && super::tabs::supported() {
            c.share_key = Some(share_key(
                transport,
                with_credentials,
                &url,
                &ws_url,
                &run_id,
            ));
        }
        c.session_id = session_id;
        c.transport = transport;
        c.has_snapshot_url = snapshot_url.is_some();
        c.can_send = send_url.is_some() || transport == Transport::WebSocket;
        c.can_cancel = cancel_url.is_some() || transport == Transport::WebSocket;
        c.persist = resume != Resume::None;
        // Every websocket stream of the page shares its wsUrl's socket.
        c.shared_socket = transport == Transport::WebSocket;
        c.headers_per_send = headers.is_function();
        if let Some(v) = number(AT_STALL) {
            c.stall_after_ms = v;
        }
        if let Some(v) = number(AT_CONNECT_TIMEOUT) {
            c.connect_timeout_ms = v.max(100.0);
        }
        if let Some(v) = number(AT_HEARTBEAT_TIMEOUT) {
            c.heartbeat_timeout_ms = v.max(1000.0);
            c.ws_ping_interval_ms = (v / 2.5).max(500.0);
        }
        let d = Backoff::default();
        c.backoff = Backoff {
            initial_ms: number(AT_BACKOFF_INITIAL).unwrap_or(d.initial_ms).max(1.0),
            max_ms: number(AT_BACKOFF_MAX).unwrap_or(d.max_ms).max(1.0),
            multiplier: number(AT_BACKOFF_MULTIPLIER)
                .unwrap_or(d.multiplier)
                .max(1.0),
        };
        c.spans = match number(AT_SPANS) {
            Some(rate) if rate >= 0.0 => Spans::Sampled(rate.min(1.0)),
            _ => Spans::Off,
        };
        Ok(Self {
            run_id,
            url,
            ws_url,
            snapshot_url,
            send_url,
            cancel_url,
            headers,
            with_credentials,
            resume,
            config: c,
        })
    }
}

/// The stream key tabs share one connection under ([`crate::core::tabs::stream_key`]).
fn share_key(t: Transport, credentials: bool, url: &str, ws_url: &str, run_id: &str) -> String {
    let resolved = match t {
        Transport::WebSocket => super::env::resolve(ws_url, true),
        Transport::Fetch | Transport::Sse => super::env::resolve(url, false),
    };
    crate::core::tabs::stream_key(t, credentials, &resolved, run_id)
}

/// `/api/chat/{session_id}/messages` → `session_id` (for WebSocket sends).
fn session_from_send_url(url: &str) -> Option<String> {
    let rest = url.split("/api/chat/").nth(1)?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

#[wasm_bindgen(module = "/js/net.js")]
extern "C" {
    fn until_abort(p: &Promise, signal: &AbortSignal) -> Promise;
}

/// Resolves the `headers` option (object, or a sync/async function) to pairs.
/// Called on every (re)connect and send, so an expired token is refreshed.
/// A promise is awaited until `signal` aborts (the connection or request it
/// is for ended: a connect timeout, `close()`): the wait then ends, so one
/// that never settles holds nothing after its connection is gone (the
/// result is not used then, so the error is never reported).
pub async fn resolve_headers(
    h: &JsValue,
    signal: &AbortSignal,
) -> Result<Vec<(String, String)>, WebError> {
    let mut v = h.clone();
    if let Some(f) = h.dyn_ref::<Function>() {
        v = f
            .call0(&JsValue::UNDEFINED)
            .map_err(|_| WebError::HeadersFailed)?;
    }
    if v.has_type::<Promise>() {
        v = JsFuture::from(until_abort(&Promise::from(v), signal))
            .await
            .map_err(|_| WebError::HeadersFailed)?;
    }
    if v.is_undefined() || v.is_null() {
        return Ok(Vec::new());
    }
    let obj: &Object = v.dyn_ref().ok_or(WebError::HeadersFailed)?;
    let mut out = Vec::new();
    for entry in Object::entries(obj).iter() {
        let k = Reflect::get_u32(&entry, 0).ok().and_then(|k| k.as_string());
        let val = Reflect::get_u32(&entry, 1).ok().and_then(|v| v.as_string());
        if let (Some(k), Some(val)) = (k, val) {
            out.push((k, val));
        }
    }
    Ok(out)
}
