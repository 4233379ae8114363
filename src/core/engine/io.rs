//! The engine's inputs and outputs that are not configuration: the actions the
//! shell executes, how a connection ended, a send's outcome, API errors and
//! the status the UI shows.

#[cfg(not(target_arch = "wasm32"))]
use serde::Serialize;

use super::config::Ms;
use crate::core::metrics::SpanFields;

/// What the shell must do. Drain with [`Engine::poll_action`] after every input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open transport connection `conn`, resuming after `resume_from` (0 = from the start).
    /// Inputs about this connection carry `conn`; inputs of older connections are ignored.
    Connect {
        /// Connection number.
        conn: u64,
        /// The cursor: send as `Last-Event-ID` / `?last_event_id=` / `last_event_id` (0 = omit).
        resume_from: u64,
    },
    /// Abort connection `conn` and drop every later input from it.
    Disconnect {
        /// Connection number.
        conn: u64,
    },
    /// Send this text frame on WebSocket connection `conn`.
    WsSend {
        /// Connection number.
        conn: u64,
        /// The frame.
        text: String,
    },
    /// Resolve the `headers` option for WebSocket send `client_request_id`
    /// on connection `conn`; report with [`Engine::handle_ws_send_headers`]
    /// (only with `Config::headers_per_send`).
    WsSendHeaders {
        /// Connection number.
        conn: u64,
        /// The send.
        client_request_id: String,
    },
    /// GET the snapshot endpoint and report with [`Engine::handle_snapshot`].
    FetchSnapshot,
    /// POST a chat send; report with [`Engine::handle_send_result`].
    Post {
        /// Idempotency key.
        client_request_id: String,
        /// Message text.
        content: String,
    },
    /// POST a cancel (PROTOCOL §8) to the cancel URL with this JSON body;
    /// report with [`Engine::handle_send_result`] (one path for both).
    PostCancel {
        /// Idempotency key.
        client_request_id: String,
        /// The request body.
        body: String,
    },
    /// Store the state and this cursor together (they are consistent right now).
    Persist {
        /// The cursor to store.
        cursor: u64,
    },
    /// Call [`Engine::flush`] at the next animation frame.
    RequestFrame,
    /// Write this finished span to the Performance timeline (spans are on and sampled).
    Measure(SpanFields),
    /// Post this message on the tabs' channel (`share: "tabs"`).
    Broadcast {
        /// The message ([`crate::core::tabs`]).
        text: String,
    },
}

/// How a transport connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The response body ended / the server closed the socket cleanly.
    Eof,
    /// A network error.
    Network,
    /// The WebSocket closed with this close code (1000–4999). Codes 4400–4599
    /// are read as the HTTP status they embed (4401 = 401, 4404 = 404, …);
    /// 1008 (policy violation) as 403; the rest as a server close.
    WsClose {
        /// The close code of the `close` event.
        code: u16,
    },
    /// No `open` within `connect_timeout_ms` (a shared socket's machine decided).
    ConnectTimeout,
    /// Nothing from the server for `heartbeat_timeout_ms` (a shared socket's machine decided).
    HeartbeatTimeout,
    /// The `headers` option (a function) threw, rejected or returned something
    /// that is not an object of strings. Retried with backoff like a network
    /// error: a token endpoint fails with the outage that dropped the stream.
    HeadersFailed(String),
}

/// Outcome of a chat send request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendResult {
    /// HTTP status (`None` = network error).
    pub status: Option<u16>,
    /// `Retry-After` in ms, if the response had one.
    pub retry_after_ms: Option<Ms>,
    /// Response body (JSON `{message_id, run_id}` on 202).
    pub body: Option<String>,
    /// The `headers` option threw or rejected before the request was made
    /// (retried after the send's backoff, like a network error).
    pub headers_error: Option<String>,
}

/// Errors of the engine's own API calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// `send()` without a send URL or WebSocket transport.
    NoSendTarget,
    /// `cancel()` without a cancel URL or WebSocket transport.
    NoCancelTarget,
    /// The outbox bound was reached.
    OutboxFull(usize),
    /// The stream was closed with `close()`.
    Closed,
    /// Empty message.
    EmptyMessage,
}

impl EngineError {
    /// The error's text, made without `core::fmt` (its `Display` is this text).
    pub fn message(&self) -> String {
        match self {
            Self::NoSendTarget => "sending needs `sendUrl` or the websocket transport".to_owned(),
            Self::NoCancelTarget => {
                "cancelling needs `cancelUrl` or the websocket transport".to_owned()
            }
            Self::OutboxFull(n) => crate::core::json::write::concat_u64(
                "too many unsent messages (",
                *n as u64,
                "); wait for some to be accepted",
            ),
            Self::Closed => "the stream is closed".to_owned(),
            Self::EmptyMessage => "message content is empty".to_owned(),
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for EngineError {}

/// Connection status (API.md `StreamStatus.connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
#[allow(missing_docs)]
pub enum Connection {
    Idle,
    Connecting,
    Open,
    Reconnecting,
    Offline,
    Closed,
    Failed,
}

impl Connection {
    /// Every state, each with its API.md name: the one table both directions use.
    const NAMES: [(Self, &'static str); 7] = [
        (Self::Idle, "idle"),
        (Self::Connecting, "connecting"),
        (Self::Open, "open"),
        (Self::Reconnecting, "reconnecting"),
        (Self::Offline, "offline"),
        (Self::Closed, "closed"),
        (Self::Failed, "failed"),
    ];

    /// The API.md name (`status.connection`).
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("idle", |(_, n)| n)
    }

    /// The state of an API.md name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }
}

/// Activity (API.md `StreamStatus.activity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
pub enum Activity {
    /// No reply pending.
    Idle,
    /// A reply is pending and tokens are flowing.
    Streaming,
    /// A reply is pending and no token arrived for `stall_after_ms`.
    Working,
}

/// What the UI shows about the connection (API.md `StreamStatus`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct StreamStatus {
    /// Connection state.
    pub connection: Connection,
    /// Activity state.
    pub activity: Activity,
    /// Reconnect attempt, 0 when open.
    pub attempt: u32,
    /// Time until the next attempt, while waiting to reconnect.
    pub retry_in_ms: Option<f64>,
    /// Human-readable, never a token or header value.
    pub last_error: Option<String>,
    /// Connection sharing between tabs (API.md): `solo` without `share:
    /// "tabs"` (or where Web Locks / BroadcastChannel are missing).
    pub sharing: Sharing,
    /// The latest `cancel()` and how far it got (API.md `status.cancel`).
    pub cancel: Option<CancelStatus>,
}

/// API.md `status.cancel`: the latest `cancel()`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "camelCase"))]
pub struct CancelStatus {
    /// Its idempotency key (what `cancel()` returned).
    pub client_request_id: String,
    /// The send whose reply it stops (`None`: the whole run).
    pub reply_to: Option<String>,
    /// How far it got.
    pub state: CancelState,
}

/// API.md `status.cancel.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
pub enum CancelState {
    /// Waiting to be written (offline, backing off, no socket yet).
    Queued,
    /// Written; no answer yet.
    Sent,
    /// The server accepted it (202, WebSocket `ack`).
    Accepted,
    /// Its effect shows in the log (the run ended, or the reply's message
    /// finished), or the target had finished already (409, `finished`).
    Done,
    /// Refused for good (403, 404, a second 401, another 4xx).
    Failed,
}

impl CancelState {
    /// The API.md name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Accepted => "accepted",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// API.md `StreamStatus.sharing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "lowercase"))]
pub enum Sharing {
    /// This tab holds its own connection.
    Solo,
    /// This tab holds the connection and relays it to others.
    Leader,
    /// Another tab holds the connection.
    Follower,
}
