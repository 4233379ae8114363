//! The three transports, as thin as possible: each browser callback becomes
//! one engine input, tagged with its connection number, then `drive()` runs.
//! Every handle closes its connection and removes its callbacks on drop.
//! WebSocket and EventSource are driven from plain JS (`js/net.js`, a
//! wasm-bindgen snippet): each connection reports through one closure.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    AbortController, AbortSignal, Headers, ReadableStreamDefaultReader, RequestCredentials,
    RequestInit, Response,
};

use super::driver::{headers_arrived, take_request, with_engine, Weak};
use super::env;
use super::options::resolve_headers;
use crate::core::engine::{CloseCause, SendResult};
use crate::core::envelope::KNOWN_TYPES;

#[wasm_bindgen(module = "/js/net.js")]
extern "C" {
    fn ws_open(url: &str, on: &Reports) -> JsValue;
    fn ws_send(ws: &JsValue, text: &str);
    fn ws_close(ws: &JsValue);
    fn es_open(url: &str, with_credentials: bool, types: &str, on: &Reports) -> JsValue;
    fn es_close(es: &JsValue);
}

/// What a connection of `js/net.js` reports with: `on(kind, arg)` (its header lists the kinds).
pub type Reports = Closure<dyn FnMut(u32, JsValue)>;

/// The kinds `js/net.js` reports.
pub mod report {
    /// WebSocket: open.
    pub const WS_OPEN: u32 = 0;
    /// WebSocket: a text frame (arg: the text).
    pub const WS_TEXT: u32 = 1;
    /// WebSocket: a frame that is not text.
    pub const WS_BINARY: u32 = 2;
    /// WebSocket: closed (arg: the close code, or -1).
    pub const WS_CLOSE: u32 = 3;
    /// EventSource: open.
    pub const ES_OPEN: u32 = 0;
    /// EventSource: the data of an event (arg: the data).
    pub const ES_DATA: u32 = 1;
    /// EventSource: an error, the source is closed (arg: true if the browser gave up).
    pub const ES_ERROR: u32 = 2;
}

/// A live transport connection; dropping it closes the connection.
pub enum Handle {
    /// fetch + ReadableStream.
    Fetch(AbortController),
    /// Native EventSource (`js/net.js`) and the closure it reports to.
    Sse {
        /// The snippet's connection.
        es: JsValue,
        /// Dropped after `es_close`.
        _on: Reports,
    },
    /// A WebSocket (the page's socket for one `wsUrl`, owned by `socket.rs`;
    /// `js/net.js`) and the closure it reports to.
    Ws {
        /// The browser socket.
        ws: JsValue,
        /// Dropped after `ws_close`.
        _on: Reports,
    },
    /// This run's share of the page's WebSocket for its `wsUrl` (detached on drop).
    Shared(super::socket::Attachment),
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The snippet stops reporting before the closure is dropped.
        match self {
            Handle::Fetch(a) => a.abort(),
            Handle::Sse { es, .. } => es_close(es),
            Handle::Ws { ws, .. } => ws_close(ws),
            // The attachment's own `Drop` detaches the run.
            Handle::Shared(_) => {}
        }
    }
}

impl Handle {
    /// Opens a WebSocket to `url` reporting to `on`; `None` if the browser refused it.
    pub fn open_ws(url: &str, on: Reports) -> Option<Self> {
        let ws = ws_open(url, &on);
        (!ws.is_null()).then(|| Handle::Ws { ws, _on: on })
    }

    /// Sends a text frame (WebSocket only).
    pub fn ws_send(&self, text: &str) {
        match self {
            Handle::Ws { ws, .. } => ws_send(ws, text),
            Handle::Shared(a) => a.send(text),
            Handle::Fetch(_) | Handle::Sse { .. } => {}
        }
    }
}

fn with_query(url: &str, resume_from: u64) -> String {
    if resume_from == 0 {
        return url.to_owned();
    }
    let sep = if url.contains('?') { "&" } else { "?" };
    crate::core::json::write::concat_u64(&[url, sep, "last_event_id="].concat(), resume_from, "")
}

/// `Retry-After` as milliseconds (delta-seconds or an HTTP date).
fn retry_after(resp: &Response) -> Option<f64> {
    let v = resp.headers().get("retry-after").ok().flatten()?;
    let v = v.trim();
    // delay-seconds (RFC 9110: digits; a decimal number is tolerated), read
    // without `str::parse::<f64>` and its tables.
    let mut sc = crate::core::json::Scanner::new(v);
    if let Ok(n) = sc.number() {
        if sc.end().is_ok() {
            let s = n.as_f64();
            return (s.is_finite() && s >= 0.0).then_some(s * 1000.0);
        }
    }
    let t = js_sys::Date::parse(v);
    (!t.is_nan()).then(|| (t - js_sys::Date::now()).max(0.0))
}

fn is_event_stream(resp: &Response) -> bool {
    resp.headers()
        .get("content-type")
        .ok()
        .flatten()
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"))
}

fn request_init(method: &str, headers: &[(String, String)], credentials: bool) -> RequestInit {
    let init = RequestInit::new();
    init.set_method(method);
    if let Ok(h) = Headers::new() {
        for (k, v) in headers {
            let _ = h.set(k, v);
        }
        init.set_headers(&h);
    }
    init.set_credentials(if credentials {
        RequestCredentials::Include
    } else {
        RequestCredentials::SameOrigin
    });
    init
}

async fn fetch(url: &str, init: &RequestInit) -> Result<Response, JsValue> {
    let w = web_sys::window().ok_or(JsValue::NULL)?;
    let r = JsFuture::from(w.fetch_with_str_and_init(url, init)).await?;
    r.dyn_into::<Response>()
}

/// How long a failed EventSource waits before its status probe (see `open_sse`).
const PROBE_DELAY_MS: f64 = 150.0;

/// Opens a fetch-streamed SSE connection.
pub fn open_fetch(
    weak: Weak,
    conn: u64,
    url: String,
    resume_from: u64,
    headers: JsValue,
    credentials: bool,
) -> Option<Handle> {
    let abort = AbortController::new().ok()?;
    let signal = abort.signal();
    spawn_local(async move {
        let mut hs = match resolve_headers(&headers, &signal).await {
            Ok(h) => h,
            Err(err) => {
                let cause = CloseCause::HeadersFailed(err.message());
                with_engine(&weak, |e| e.handle_closed(env::now(), conn, cause));
                return;
            }
        };
        hs.push(("Accept".into(), "text/event-stream".into()));
        if resume_from > 0 {
            hs.push((
                "Last-Event-ID".into(),
                crate::core::json::write::concat_u64("", resume_from, ""),
            ));
        }
        let init = request_init("GET", &hs, credentials);
        init.set_signal(Some(&signal));
        init.set_cache(web_sys::RequestCache::NoStore);
        let resp = match fetch(&url, &init).await {
            Ok(r) => r,
            Err(_) => {
                with_engine(&weak, |e| {
                    e.handle_closed(env::now(), conn, CloseCause::Network)
                });
                return;
            }
        };
        let status = resp.status();
        let ra = retry_after(&resp);
        let es = is_event_stream(&resp);
        with_engine(&weak, |e| {
            e.handle_response(env::now(), conn, status, ra, es)
        });
        if !(200..300).contains(&status) || status == 204 || !es {
            return;
        }
        let Some(body) = resp.body() else {
            with_engine(&weak, |e| {
                e.handle_closed(env::now(), conn, CloseCause::Eof)
            });
            return;
        };
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        loop {
            let chunk = match JsFuture::from(reader.read()).await {
                Ok(c) => c,
                Err(_) => {
                    with_engine(&weak, |e| {
                        e.handle_closed(env::now(), conn, CloseCause::Network)
                    });
                    return;
                }
            };
            let done = Reflect::get(&chunk, &"done".into())
                .ok()
                .and_then(|d| d.as_bool())
                .unwrap_or(true);
            if done {
                with_engine(&weak, |e| {
                    e.handle_closed(env::now(), conn, CloseCause::Eof)
                });
                return;
            }
            let Ok(value) = Reflect::get(&chunk, &"value".into()) else {
                continue;
            };
            let Ok(bytes) = value.dyn_into::<Uint8Array>() else {
                continue;
            };
            let bytes = bytes.to_vec();
            let alive = with_engine(&weak, |e| e.handle_bytes(env::now(), conn, &bytes));
            if alive.is_none() {
                let _ = reader.cancel();
                return;
            }
        }
    });
    Some(Handle::Fetch(abort))
}

/// Opens a native `EventSource` connection (`?last_event_id=` on resume).
pub fn open_sse(
    weak: Weak,
    conn: u64,
    url: String,
    resume_from: u64,
    credentials: bool,
) -> Option<Handle> {
    let full = with_query(&url, resume_from);
    let probe_url = full.clone();
    let on = Reports::new(move |kind: u32, arg: JsValue| match kind {
        report::ES_OPEN => {
            with_engine(&weak, |e| {
                e.handle_response(env::now(), conn, 200, None, true)
            });
        }
        report::ES_DATA => {
            if let Some(data) = arg.as_string() {
                with_engine(&weak, |e| e.handle_sse_event(env::now(), conn, &data));
            }
        }
        // An error: the snippet has closed the source (ours reconnects under the engine's backoff).
        report::ES_ERROR if arg.as_bool() == Some(true) => {
            // EventSource hides the status: probe once so 404/401/… are final, 5xx backs off.
            let weak = weak.clone();
            let url = probe_url.clone();
            spawn_local(async move {
                // A page being navigated away aborts its EventSource first
                // (HTML "abort a document"): the pause lets it go before
                // the probe opens a stream connection of a dying page.
                env::sleep(PROBE_DELAY_MS).await;
                if weak.strong_count() == 0 {
                    return;
                }
                let init = request_init("GET", &[], credentials);
                let ctl = AbortController::new().ok();
                if let Some(c) = &ctl {
                    init.set_signal(Some(&c.signal()));
                }
                match fetch(&url, &init).await {
                    Ok(r) if r.status() != 200 || !is_event_stream(&r) => {
                        let (s, ra, es) = (r.status(), retry_after(&r), is_event_stream(&r));
                        with_engine(&weak, |e| e.handle_response(env::now(), conn, s, ra, es));
                    }
                    _ => {
                        with_engine(&weak, |e| {
                            e.handle_closed(env::now(), conn, CloseCause::Network)
                        });
                    }
                }
                if let Some(c) = ctl {
                    c.abort();
                }
            });
        }
        _ => {
            with_engine(&weak, |e| {
                e.handle_closed(env::now(), conn, CloseCause::Network)
            });
        }
    });
    // Native EventSource delivers named events only to listeners of that name:
    // every type of PROTOCOL §3–§4, plus the default "message".
    let mut types = String::from("message");
    for ty in KNOWN_TYPES {
        types.push(' ');
        types.push_str(ty);
    }
    let es = es_open(&full, credentials, &types, &on);
    (!es.is_null()).then(|| Handle::Sse { es, _on: on })
}

/// A send POST or snapshot GET the stream is waiting on. Aborted when
/// dropped: on `close()`, and when its deadline passes (no response headers
/// within `connectTimeoutMs`), so a closed stream has no request in flight.
#[must_use = "the request is aborted when this is dropped"]
pub struct Request {
    abort: AbortController,
    deadline: Option<env::Timeout>,
}

impl Request {
    /// A new request whose `signal` goes to `fetch`; `on_deadline` runs if no
    /// response headers arrived within `deadline_ms`.
    pub fn new(
        deadline_ms: f64,
        on_deadline: impl FnMut() + 'static,
    ) -> Option<(Self, AbortSignal)> {
        let abort = AbortController::new().ok()?;
        let signal = abort.signal();
        let deadline = env::Timeout::new(deadline_ms, on_deadline);
        Some((Self { abort, deadline }, signal))
    }

    /// The response headers arrived: the deadline no longer applies.
    pub fn headers_arrived(&mut self) {
        self.deadline = None;
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // Harmless once the response is read; cancels it otherwise.
        self.abort.abort();
    }
}

/// Resolves the `headers` option for WebSocket send `crid` on connection
/// `conn` as request `id` (bounded by `connectTimeoutMs`, aborted on
/// `close()`, like a POST's wait for them) and reports them to the engine,
/// which writes the send frame with them.
pub fn ws_send_headers(
    weak: Weak,
    id: u64,
    signal: AbortSignal,
    headers: JsValue,
    conn: u64,
    crid: String,
) {
    spawn_local(async move {
        let r = resolve_headers(&headers, &signal)
            .await
            .map_err(|e| e.message());
        if take_request(&weak, id) {
            with_engine(&weak, |e| {
                e.handle_ws_send_headers(env::now(), conn, &crid, r)
            });
        }
    });
}

/// POSTs a chat send or a cancel (`body`, JSON) as request `id`; reports the outcome to the engine unless
/// the request was ended first (timed out, which reports itself, or `close()`).
#[allow(clippy::too_many_arguments)]
pub fn post(
    weak: Weak,
    id: u64,
    signal: AbortSignal,
    url: String,
    headers: JsValue,
    credentials: bool,
    crid: String,
    body: String,
) {
    spawn_local(async move {
        let hs = match resolve_headers(&headers, &signal).await {
            Ok(hs) => hs,
            Err(err) => {
                if take_request(&weak, id) {
                    let result = SendResult {
                        headers_error: Some(err.message()),
                        ..SendResult::default()
                    };
                    with_engine(&weak, |e| e.handle_send_result(env::now(), &crid, result));
                }
                return;
            }
        };
        let result = async {
            let mut hs = hs;
            hs.push(("Content-Type".into(), "application/json".into()));
            let init = request_init("POST", &hs, credentials);
            init.set_signal(Some(&signal));
            init.set_body(&JsValue::from_str(&body));
            let r = fetch(&url, &init).await.map_err(|_| ())?;
            headers_arrived(&weak, id);
            let status = r.status();
            let ra = retry_after(&r);
            let text = match r.text() {
                Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()),
                Err(_) => None,
            };
            Ok::<_, ()>(SendResult {
                status: Some(status),
                retry_after_ms: ra,
                body: text,
                headers_error: None,
            })
        }
        .await
        // A network error (status None): the engine's retry and backoff apply.
        .unwrap_or_default();
        if take_request(&weak, id) {
            with_engine(&weak, |e| e.handle_send_result(env::now(), &crid, result));
        }
    });
}

/// GETs the snapshot endpoint as request `id`; reports to the engine unless
/// the request was ended first (timed out, which reports itself, or `close()`).
pub fn fetch_snapshot(
    weak: Weak,
    id: u64,
    signal: AbortSignal,
    url: String,
    headers: JsValue,
    credentials: bool,
) {
    spawn_local(async move {
        let result = async {
            let hs = resolve_headers(&headers, &signal)
                .await
                .map_err(|e| e.message())?;
            let init = request_init("GET", &hs, credentials);
            init.set_signal(Some(&signal));
            init.set_cache(web_sys::RequestCache::NoStore);
            let r = fetch(&url, &init)
                .await
                .map_err(|_| "network error".to_owned())?;
            headers_arrived(&weak, id);
            // The body may take longer than the connect timeout (its own bound starts now).
            with_engine(&weak, |e| e.handle_snapshot_headers(env::now()));
            if r.status() != 200 {
                return Err(crate::core::json::write::concat_u64(
                    "HTTP ",
                    u64::from(r.status()),
                    "",
                ));
            }
            let p = r.text().map_err(|_| "unreadable body".to_owned())?;
            JsFuture::from(p)
                .await
                .ok()
                .and_then(|t| t.as_string())
                .ok_or_else(|| "unreadable body".to_owned())
        }
        .await;
        if take_request(&weak, id) {
            with_engine(&weak, |e| {
                e.handle_snapshot(env::now(), result.as_deref().map_err(Clone::clone))
            });
        }
    });
}
