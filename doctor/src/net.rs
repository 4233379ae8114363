//! The doctor's connections: a base URL, an HTTP client (reqwest on rustls),
//! an SSE reader over the codec crate's parser that decompresses what a
//! browser would (gzip, deflate), and a WebSocket client (tokio-tungstenite).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::{GzDecoder, ZlibDecoder};
use reqwest::header::HeaderMap;
use runstream_codec::sse::{SseItem, SseParser};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest SSE event the doctor reads (bytes); a larger one is reported by the parser and skipped.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most events one read keeps ([`Sse::events`]): a longer log is not judged (its read fails).
pub const MAX_READ_EVENTS: usize = 100_000;
/// What the doctor asks for, as a browser does (SERVER.md §3).
pub const ACCEPT_ENCODING: &str = "gzip, deflate, br";

/// A server's base URL: `https://host[:port][/prefix]`, the routes are `<base>/api/...`.
#[derive(Debug, Clone)]
pub struct Base {
    pub url: reqwest::Url,
    prefix: String,
}

impl Base {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(s).map_err(|e| format!("{s}: not a URL ({e})"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("{s}: the base URL must be http:// or https://"));
        }
        if url.host_str().is_none() {
            return Err(format!("{s}: no host"));
        }
        let prefix = url.path().trim_end_matches('/').to_owned();
        Ok(Self { url, prefix })
    }
    /// `<scheme>://<host>[:port]<prefix><path>` (`path` starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!(
            "{}{}{}",
            self.url.origin().ascii_serialization(),
            self.prefix,
            path
        )
    }
    pub fn stream(&self, run: &str) -> String {
        self.at(&format!("/api/stream/runs/{}", enc(run)))
    }
    pub fn https(&self) -> bool {
        self.url.scheme() == "https"
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The HTTP client: no automatic decompression (the doctor asks for it and
/// decodes itself, so it sees `Content-Encoding`), HTTP/2 by ALPN on HTTPS.
/// `ca_pem`: extra trusted roots (`--ca-file`, PEM), besides the webpki roots.
pub fn client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder();
    if let Some(pem) = ca_pem {
        for c in
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("--ca-file: {e}"))?
        {
            b = b.add_root_certificate(c);
        }
    }
    b.connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(8)
        .user_agent(concat!("runstream-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// One text of what an HTTP request failed with (connect, TLS, timeout).
pub fn why(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A resume position and how it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// From the start: neither header nor query.
    Start,
    /// `Last-Event-ID: n`.
    Header(u64),
    /// `?last_event_id=n`.
    Query(u64),
}

/// One SSE event as read, with its arrival time.
#[derive(Debug, Clone)]
pub struct Ev {
    pub at: Instant,
    pub event_type: String,
    pub data: String,
    /// The last event ID in force when it was dispatched (the codec parser's rule).
    pub id: String,
}

/// What [`Sse::next`] got.
#[derive(Debug)]
pub enum Next {
    Event(Ev),
    /// A comment line (heartbeat) or a `retry:` field.
    Comment(Instant),
    /// The server ended the response.
    End,
    /// Nothing before the deadline.
    Timeout,
    /// The connection failed (reset, cut by a proxy, undecodable body).
    Failed(String),
}

/// A streaming decoder for what a browser's `Accept-Encoding` allows: each
/// chunk is decoded as it arrives, so a compressed stream that still streams
/// is read live.
enum Decode {
    Identity,
    Gzip(Box<GzDecoder<Vec<u8>>>),
    Zlib(Box<ZlibDecoder<Vec<u8>>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    /// An encoding the doctor cannot decode (zstd, …): the body is not read as SSE.
    Unknown(String),
}

impl Decode {
    fn for_encoding(content_encoding: Option<&str>) -> Self {
        match content_encoding
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("identity") => Decode::Identity,
            Some("gzip") | Some("x-gzip") => Decode::Gzip(Box::new(GzDecoder::new(Vec::new()))),
            Some("deflate") => Decode::Zlib(Box::new(ZlibDecoder::new(Vec::new()))),
            Some("br") => Decode::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Vec::new(),
                4096,
            ))),
            Some(other) => Decode::Unknown(other.to_owned()),
        }
    }

    /// The plain bytes of `chunk` (all that can be decoded so far).
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        fn drain<W: std::io::Write>(
            w: &mut W,
            chunk: &[u8],
            out: impl FnOnce(&mut W) -> &mut Vec<u8>,
            name: &str,
        ) -> Result<Vec<u8>, String> {
            w.write_all(chunk)
                .and_then(|()| w.flush())
                .map_err(|e| format!("{name} body: {e}"))?;
            Ok(std::mem::take(out(w)))
        }
        match self {
            Decode::Identity => Ok(chunk.to_vec()),
            Decode::Gzip(d) => drain(d.as_mut(), chunk, |d| d.get_mut(), "gzip"),
            Decode::Zlib(d) => drain(d.as_mut(), chunk, |d| d.get_mut(), "deflate"),
            Decode::Brotli(d) => drain(d.as_mut(), chunk, |d| d.get_mut(), "br"),
            Decode::Unknown(enc) => Err(format!(
                "the body is encoded with `{enc}`, which the doctor does not decode"
            )),
        }
    }
}

/// An open SSE response.
pub struct Sse {
    resp: reqwest::Response,
    parser: SseParser,
    decode: Decode,
    queue: VecDeque<Next>,
    done: bool,
    pub status: u16,
    pub headers: HeaderMap,
    pub version: reqwest::Version,
    pub opened: Instant,
    /// When the response headers arrived.
    pub headers_at: Instant,
}

/// Request options of [`open`].
#[derive(Default, Clone)]
pub struct Ask<'a> {
    pub auth: Option<&'a str>,
    pub origin: Option<&'a str>,
}

/// Why [`open`] got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No response headers within the wait: the server or a hop holds the response.
    #[error("no response headers within {0} s")]
    NoHeaders(u64),
    /// Connect, TLS or protocol error.
    #[error("{0}")]
    Failed(String),
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> Self {
        e.to_string()
    }
}

/// Opens `GET <url>` as a browser's fetch transport would; resolves with the
/// response headers, or `Err` on a connection error or no headers within `wait`.
pub async fn open(
    http: &reqwest::Client,
    url: &str,
    resume: Resume,
    ask: Ask<'_>,
    wait: Duration,
) -> Result<Sse, OpenError> {
    let url = match resume {
        Resume::Query(n) => format!("{url}?last_event_id={n}"),
        _ => url.to_owned(),
    };
    let mut rq = http
        .get(&url)
        .header("Accept", "text/event-stream")
        .header("Accept-Encoding", ACCEPT_ENCODING)
        .header("Cache-Control", "no-cache");
    if let Resume::Header(n) = resume {
        rq = rq.header("Last-Event-ID", n.to_string());
    }
    if let Some(a) = ask.auth {
        rq = rq.header("Authorization", format!("Bearer {a}"));
    }
    if let Some(o) = ask.origin {
        rq = rq.header("Origin", o);
    }
    let opened = Instant::now();
    let resp = match tokio::time::timeout(wait, rq.send()).await {
        Err(_) => return Err(OpenError::NoHeaders(wait.as_secs())),
        Ok(Err(e)) => return Err(OpenError::Failed(why(&e))),
        Ok(Ok(r)) => r,
    };
    let headers_at = Instant::now();
    let headers = resp.headers().clone();
    let decode = Decode::for_encoding(header(&headers, "content-encoding"));
    Ok(Sse {
        status: resp.status().as_u16(),
        version: resp.version(),
        headers,
        resp,
        parser: SseParser::new(MAX_EVENT_BYTES),
        decode,
        queue: VecDeque::new(),
        done: false,
        opened,
        headers_at,
    })
}

/// A header's value as text (`None` if absent or not visible ASCII).
pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Sse {
    /// The time from the request to the response headers.
    pub fn headers_after(&self) -> Duration {
        self.headers_at.duration_since(self.opened)
    }

    /// The next event, comment, end or failure, waiting until `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(n) = self.queue.pop_front() {
                return n;
            }
            if self.done {
                return Next::End;
            }
            if let Decode::Unknown(_) = &self.decode {
                self.done = true;
                if let Err(e) = self.decode.feed(&[]) {
                    return Next::Failed(e);
                }
            }
            let chunk = match tokio::time::timeout_at(deadline.into(), self.resp.chunk()).await {
                Err(_) => return Next::Timeout,
                Ok(Err(e)) => {
                    self.done = true;
                    return Next::Failed(why(&e));
                }
                Ok(Ok(None)) => {
                    self.done = true;
                    return Next::End;
                }
                Ok(Ok(Some(c))) => c,
            };
            let at = Instant::now();
            let plain = match self.decode.feed(&chunk) {
                Ok(p) => p,
                Err(e) => {
                    self.done = true;
                    return Next::Failed(e);
                }
            };
            let queue = &mut self.queue;
            self.parser.feed(&plain, &mut |item| match item {
                SseItem::Event(e) => queue.push_back(Next::Event(Ev {
                    at,
                    event_type: e.event_type,
                    data: e.data,
                    id: e.last_event_id,
                })),
                SseItem::Comment | SseItem::Retry(_) => queue.push_back(Next::Comment(at)),
                SseItem::TooLarge(n) => queue.push_back(Next::Failed(format!(
                    "an event larger than {MAX_EVENT_BYTES} bytes ({n} bytes seen)"
                ))),
            });
        }
    }

    /// Events until the response ends, `idle` passes without an event, or `deadline`.
    pub async fn events(&mut self, idle: Option<Duration>, deadline: Instant) -> Read {
        let mut r = Read::default();
        loop {
            let until = match idle {
                Some(i) => deadline.min(Instant::now() + i),
                None => deadline,
            };
            match self.next(until).await {
                Next::Event(e) => {
                    if r.events.len() >= MAX_READ_EVENTS {
                        r.failed = Some(format!(
                            "more than {MAX_READ_EVENTS} events: the doctor reads no further"
                        ));
                        return r;
                    }
                    r.events.push(e);
                }
                Next::Comment(_) => {}
                Next::End => {
                    r.ended = true;
                    return r;
                }
                Next::Timeout => return r,
                Next::Failed(f) => {
                    r.failed = Some(f);
                    return r;
                }
            }
        }
    }
}

/// What [`Sse::events`] read.
#[derive(Debug, Default)]
pub struct Read {
    pub events: Vec<Ev>,
    /// The server ended the response.
    pub ended: bool,
    pub failed: Option<String>,
}

/// A byte stream a WebSocket runs on (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Connects to `<base>/api/ws` (wss on https; `ca_pem` as in [`client`]).
pub async fn websocket(
    base: &Base,
    origin: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<Ws, String> {
    let host = base.url.host_str().ok_or("no host")?.to_owned();
    let port = base.url.port_or_known_default().ok_or("no port")?;
    let host_for_tcp = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((host_for_tcp.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if base.https() {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = ca_pem {
            use tokio_rustls::rustls::pki_types::{pem::PemObject as _, CertificateDer};
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("--ca-file: {e}"))?;
                roots.add(c).map_err(|e| format!("--ca-file: {e}"))?;
            }
        }
        // ring, the provider reqwest's `rustls-tls` uses (aws-lc-rs would add a C/cmake build);
        // deprecated in rustls 0.23.48 only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host_for_tcp.clone())
            .map_err(|e| format!("TLS name {host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS {host}: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let ws_url = base
        .at("/api/ws")
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{ws_url}: {e}"))?;
    if let Some(o) = origin {
        if let Ok(v) = o.parse() {
            req.headers_mut().insert("Origin", v);
        }
    }
    let (ws, _resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, io),
    )
    .await
    .map_err(|_| format!("{ws_url}: no upgrade within 10 s"))?
    .map_err(|e| format!("{ws_url}: {e}"))?;
    Ok(ws)
}

/// Sends one text frame.
pub async fn ws_send(ws: &mut Ws, text: String) -> Result<(), String> {
    use futures_util::SinkExt as _;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("WebSocket send: {e}"))
}

/// The next text frame (as JSON) before `deadline`; `Err` on close, timeout or a non-JSON frame.
pub async fn ws_next(ws: &mut Ws, deadline: Instant) -> Result<serde_json::Value, String> {
    use futures_util::StreamExt as _;
    loop {
        let msg = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => return Err("no frame in time".into()),
            Ok(None) => return Err("the socket closed".into()),
            Ok(Some(Err(e))) => return Err(format!("the socket failed: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| format!("a text frame that is not JSON ({e}): {t}"))
            }
            Message::Binary(_) => return Err("a binary frame (PROTOCOL §2b: text only)".into()),
            Message::Close(c) => {
                return Err(format!(
                    "the socket closed ({})",
                    c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                        .unwrap_or_default()
                ))
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Frames as the codec parser reads them from decoded chunks, chunk by chunk.
    fn frames(decode: &mut Decode, chunks: &[Vec<u8>]) -> Vec<Vec<String>> {
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        chunks
            .iter()
            .map(|c| {
                let plain = decode.feed(c).unwrap();
                let mut got = Vec::new();
                parser.feed(&plain, &mut |item| {
                    if let SseItem::Event(e) = item {
                        got.push(format!("{} {}", e.last_event_id, e.event_type));
                    }
                });
                got
            })
            .collect()
    }

    #[test]
    fn a_gzip_stream_is_read_chunk_by_chunk_as_it_arrives() {
        use flate2::write::GzEncoder;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"id: 1\nevent: run.started\ndata: {}\n\n")
            .unwrap();
        enc.flush().unwrap(); // a sync flush, as nginx's gzip does per upstream buffer
        let first = std::mem::take(enc.get_mut());
        enc.write_all(b"id: 2\nevent: run.completed\ndata: {}\n\n")
            .unwrap();
        let second = enc.finish().unwrap();
        let mut d = Decode::for_encoding(Some("gzip"));
        assert_eq!(
            frames(&mut d, &[first, second]),
            vec![vec!["1 run.started"], vec!["2 run.completed"]]
        );
    }

    #[test]
    fn a_brotli_stream_is_read_chunk_by_chunk_as_it_arrives() {
        // Node's zlib.createBrotliCompress(): ": hb" and event 1, BROTLI_OPERATION_FLUSH, then event 2 and the end.
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        let first = hex("8b16803a2068620a0a69643a20310a6576656e743a2072756e2e737461727465640a646174613a207b2278223a317d0a0a");
        let second = hex("4102805f5241a60f36e09c530d1afc3ce086330cf57c00");
        let mut d = Decode::for_encoding(Some("br"));
        assert_eq!(
            frames(&mut d, &[first, second]),
            vec![vec!["1 run.started"], vec!["2 run.completed"]]
        );
    }

    #[test]
    fn an_unknown_encoding_is_an_error_not_garbage() {
        let mut d = Decode::for_encoding(Some("zstd"));
        assert!(d.feed(b"x").unwrap_err().contains("zstd"));
        assert!(matches!(
            Decode::for_encoding(Some(" Identity ")),
            Decode::Identity
        ));
    }
}
