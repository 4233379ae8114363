//! Reads the JS options object (API.md) into typed options.

use js_sys::{Function, Object, Promise, Reflect};
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

fn get(o: &JsValue, k: &str) -> JsValue {
    Reflect::get(o, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
}

fn opt_string(o: &JsValue, k: &'static str) -> Result<Option<String>, WebError> {
    let v = get(o, k);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or(WebError::InvalidOption(k, "a string"))
}

fn opt_ms(o: &JsValue, k: &'static str) -> Result<Option<f64>, WebError> {
    let v = get(o, k);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        _ => Err(WebError::InvalidOption(k, "a non-negative number")),
    }
}

impl Options {
    /// Parses and validates `opts`.
    pub fn parse(opts: &JsValue) -> Result<Self, WebError> {
        if !opts.is_object() {
            return Err(WebError::InvalidOption("options", "an object"));
        }
        let run_id = opt_string(opts, "runId")?
            .ok_or(WebError::InvalidOption("runId", "a non-empty string"))?;
        if run_id.is_empty() || run_id.chars().count() > 128 {
            return Err(WebError::InvalidOption("runId", "1 to 128 characters"));
        }
        let enc = String::from(js_sys::encode_uri_component(&run_id));
        let transport = match opt_string(opts, "transport")?.as_deref() {
            None | Some("fetch") => Transport::Fetch,
            Some("sse") => Transport::Sse,
            Some("websocket") => Transport::WebSocket,
            Some(_) => {
                return Err(WebError::InvalidOption(
                    "transport",
                    "\"fetch\", \"sse\" or \"websocket\"",
                ))
            }
        };
        let url = opt_string(opts, "url")?.unwrap_or_else(|| ["/api/stream/runs/", &enc].concat());
        let ws_url = opt_string(opts, "wsUrl")?.unwrap_or_else(|| "/api/ws".to_owned());
        let snapshot_url = match get(opts, "snapshotUrl") {
            v if v.is_null() => None,
            v if v.is_undefined() => Some(["/api/runs/", &enc, "/snapshot"].concat()),
            v => Some(
                v.as_string()
                    .ok_or(WebError::InvalidOption("snapshotUrl", "a string or null"))?,
            ),
        };
        let send_url = opt_string(opts, "sendUrl")?;
        let cancel_url = opt_string(opts, "cancelUrl")?;
        let session_id = send_url
            .as_deref()
            .and_then(session_from_send_url)
            .unwrap_or_else(|| run_id.clone());
        let headers = get(opts, "headers");
        if !(headers.is_undefined()
            || headers.is_null()
            || headers.is_object()
            || headers.is_function())
        {
            return Err(WebError::InvalidOption(
                "headers",
                "an object or a function",
            ));
        }
        let with_credentials = get(opts, "withCredentials").as_bool().unwrap_or(false);
        let resume = match opt_string(opts, "resume")?.as_deref() {
            None | Some("session") => Resume::Session,
            Some("local") => Resume::Local,
            Some("none") => Resume::None,
            Some(_) => {
                return Err(WebError::InvalidOption(
                    "resume",
                    "\"session\", \"local\" or \"none\"",
                ))
            }
        };
        let share_tabs = match opt_string(opts, "share")?.as_deref() {
            None | Some("none") => false,
            Some("tabs") => true,
            Some(_) => return Err(WebError::InvalidOption("share", "\"none\" or \"tabs\"")),
        };
        let mut c = Config::new(&run_id);
        // Where Web Locks or BroadcastChannel are missing, each tab connects on its own.
        if share_tabs && super::tabs::supported() {
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
        if let Some(v) = opt_ms(opts, "stallAfterMs")? {
            c.stall_after_ms = v;
        }
        if let Some(v) = opt_ms(opts, "connectTimeoutMs")? {
            c.connect_timeout_ms = v.max(100.0);
        }
        if let Some(v) = opt_ms(opts, "heartbeatTimeoutMs")? {
            c.heartbeat_timeout_ms = v.max(1000.0);
            c.ws_ping_interval_ms = (v / 2.5).max(500.0);
        }
        let b = get(opts, "backoff");
        if b.is_object() {
            let d = Backoff::default();
            c.backoff = Backoff {
                initial_ms: opt_ms(&b, "initialMs")?.unwrap_or(d.initial_ms).max(1.0),
                max_ms: opt_ms(&b, "maxMs")?.unwrap_or(d.max_ms).max(1.0),
                multiplier: opt_ms(&b, "multiplier")?.unwrap_or(d.multiplier).max(1.0),
            };
        }
        let spans = get(opts, "spans");
        c.spans = if spans.as_bool() == Some(true) {
            Spans::Sampled(1.0)
        } else if spans.is_object() {
            let rate = opt_ms(&spans, "sampleRate")?.unwrap_or(1.0);
            Spans::Sampled(rate.clamp(0.0, 1.0))
        } else if spans.is_undefined() || spans.as_string().as_deref() == Some("auto") {
            if super::env::dev_host() {
                Spans::Sampled(1.0)
            } else {
                Spans::Off
            }
        } else {
            Spans::Off
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
