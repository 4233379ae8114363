//! Typed wire messages (PROTOCOL.md §1, §2b, §2c, §5), shared by the client and
//! the reference server, so that no frame is built by string formatting and no
//! `op` is compared as a string.
//!
//! - [`ClientOp`] / [`ServerOp`]: WebSocket text frames (§2b, §5), one JSON
//!   object each, tagged by `op`.
//! - [`SnapshotBody`]: the snapshot endpoint body (§2c); its `state` has the §6
//!   shape of [`RunState::to_wire`] / [`RunState::from_wire`].
//! - [`SendBody`] / [`Accepted`]: the chat send POST body and its 202 answer (§5).
//! - [`WireEnvelope`]: an event envelope (§1) as a server writes it. Readers
//!   validate envelopes with [`decode_envelope`](super::envelope::decode_envelope),
//!   never through this type.
//!
//! Decoding ignores unknown fields (forward compatibility), never panics, and
//! reports what was wrong as a [`WireError`] (a [`FrameError`] to the engine).
//! The envelope inside an `event` frame stays raw JSON ([`RawValue`]), so the
//! client validates it once, on its own fast path, and a server forwards its
//! log entries without re-parsing them.

use crate::core::vecmap::VecMap;
use std::fmt;

#[cfg(not(target_arch = "wasm32"))]
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};
#[cfg(not(target_arch = "wasm32"))]
use serde_json::{value::RawValue, Map, Value};

use super::error::{FrameError, SnapshotError};
use super::json::{Field, JsonError, Number, RawJson, Scanner, Token, Writer};
use super::state::RunState;

/// Request headers carried inside WebSocket frames (a browser WebSocket cannot set headers).
pub type Headers = VecMap<String, String>;

/// Why a frame or body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The text is not valid JSON.
    NotJson(String),
    /// The text is JSON but not an object.
    NotObject,
    /// The frame has no `op` field.
    MissingOp,
    /// The frame's `op` is not one this side understands (the name as sent).
    UnknownOp(String),
    /// A known frame or a body with a missing or mistyped field.
    Invalid(String),
}

impl WireError {
    /// The error's text, made without `core::fmt` (its `Display` is this text).
    pub fn message(&self) -> String {
        match self {
            Self::NotJson(e) => ["not JSON: ", e].concat(),
            Self::NotObject => "not a JSON object".to_owned(),
            Self::MissingOp => "frame has no `op`".to_owned(),
            Self::UnknownOp(op) => ["unknown op `", op, "`"].concat(),
            Self::Invalid(e) => ["invalid frame: ", e].concat(),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for WireError {}

/// A WebSocket frame the client could not decode is a framing error (§2b).
impl From<WireError> for FrameError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotJson(m) => Self::NotJson(m),
            WireError::NotObject => Self::NotObject,
            WireError::MissingOp | WireError::UnknownOp(_) => Self::UnknownOp,
            WireError::Invalid(m) => Self::Invalid(m),
        }
    }
}

/// A frame the client sends over WebSocket (PROTOCOL §2b, §5).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(tag = "op", rename_all = "snake_case")
)]
pub enum ClientOp {
    /// Follow a run, replaying every event after `last_event_id`.
    Subscribe {
        /// The run to follow.
        run_id: String,
        /// Resume after this id; `None` (omitted) or 0 = from the start.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        last_event_id: Option<u64>,
        /// The client's request headers (auth), if any.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        headers: Option<Headers>,
    },
    /// Stop following a run.
    Unsubscribe {
        /// The run to stop following.
        run_id: String,
    },
    /// Liveness probe; the server echoes `t` in a [`ServerOp::Pong`].
    Ping {
        /// Client time in ms, integer or not (a JSON number); echoed as sent.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(with = "crate::core::json::raw::number_serde")
        )]
        t: RawJson,
    },
    /// A chat send (§5), answered by [`ServerOp::Ack`] or a [`ServerOp::Error`]
    /// carrying the same `client_request_id`.
    Send {
        /// The chat session.
        session_id: String,
        /// Idempotency key of the send: a repeat is the same send.
        client_request_id: String,
        /// The message text.
        content: String,
        /// The client's request headers (auth), if any.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        headers: Option<Headers>,
    },
    /// A cancel (§8): stops run `run_id`, or with `reply_to` one reply of it;
    /// answered by [`ServerOp::CancelAck`] or a [`ServerOp::Error`] carrying
    /// the same `client_request_id`.
    Cancel {
        /// The run to stop (a chat run for a reply cancel).
        run_id: String,
        /// Idempotency key of the cancel: a repeat is the same request.
        client_request_id: String,
        /// The `client_request_id` of the send whose reply to stop.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        reply_to: Option<String>,
        /// Why (shown to producers, logged in the event).
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        reason: Option<String>,
        /// The client's request headers (auth), if any.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        headers: Option<Headers>,
    },
}

#[cfg(not(target_arch = "wasm32"))]
/// The `op` names of [`ClientOp`], to tell an unknown op from an invalid frame.
#[cfg_attr(not(target_arch = "wasm32"), derive(Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
enum ClientOpKind {
    Subscribe,
    Unsubscribe,
    Ping,
    Send,
    Cancel,
}

impl ClientOp {
    /// A ping at client time `t_ms`: a whole number of ms travels as an integer.
    pub fn ping(t_ms: f64) -> Self {
        let t = if t_ms.is_finite() {
            RawJson::number(t_ms)
        } else {
            RawJson::from(0)
        };
        Self::Ping { t }
    }

    /// The JSON text of this frame (the bytes serde_json writes for it).
    pub fn encode(&self) -> String {
        let mut w = Writer::new();
        w.begin_object();
        match self {
            Self::Subscribe {
                run_id,
                last_event_id,
                headers,
            } => {
                w.key("op").str("subscribe").key("run_id").str(run_id);
                if let Some(id) = last_event_id {
                    w.key("last_event_id").u64(*id);
                }
                write_headers(&mut w, headers.as_ref());
            }
            Self::Unsubscribe { run_id } => {
                w.key("op").str("unsubscribe").key("run_id").str(run_id);
            }
            Self::Ping { t } => {
                w.key("op").str("ping").key("t").raw(t.get());
            }
            Self::Send {
                session_id,
                client_request_id,
                content,
                headers,
            } => {
                w.key("op").str("send").key("session_id").str(session_id);
                w.key("client_request_id").str(client_request_id);
                w.key("content").str(content);
                write_headers(&mut w, headers.as_ref());
            }
            Self::Cancel {
                run_id,
                client_request_id,
                reply_to,
                reason,
                headers,
            } => {
                w.key("op").str("cancel").key("run_id").str(run_id);
                w.key("client_request_id").str(client_request_id);
                if let Some(r) = reply_to {
                    w.key("reply_to").str(r);
                }
                if let Some(r) = reason {
                    w.key("reason").str(r);
                }
                write_headers(&mut w, headers.as_ref());
            }
        }
        w.end_object();
        w.finish()
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Parses one text frame (the server's side: serde).
    pub fn decode(text: &str) -> Result<Self, WireError> {
        serde_json::from_str(text).map_err(|e| classify::<ClientOpKind>(text, &e))
    }
}

fn write_headers(w: &mut Writer, headers: Option<&Headers>) {
    if let Some(h) = headers {
        w.key("headers").begin_object();
        for (k, v) in h {
            w.key(k).str(v);
        }
        w.end_object();
    }
}

/// The `code` of a [`ServerOp::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// `not_found`: the run is unknown (final, like an HTTP 404).
    NotFound,
    /// `bad_request`: the frame was not understood or not acceptable.
    BadRequest,
    /// `unauthorized`: no credentials, or invalid or expired ones (PROTOCOL
    /// §7): the client refreshes its headers once, then it is final.
    Unauthorized,
    /// `forbidden`: valid credentials without the right (final).
    Forbidden,
    /// `finished`: the run (or the reply) already ended (final, never retried).
    Finished,
    /// `unavailable`: the server cannot serve it now (retried with backoff, like a 5xx).
    Unavailable,
    /// Any other code (another server's), kept as sent.
    Other(String),
}

impl ErrorCode {
    /// The code as it travels.
    pub fn as_str(&self) -> &str {
        match self {
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Finished => "finished",
            Self::Unavailable => "unavailable",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> Self {
        match s {
            "not_found" => Self::NotFound,
            "bad_request" => Self::BadRequest,
            "unauthorized" => Self::Unauthorized,
            "forbidden" => Self::Forbidden,
            "finished" => Self::Finished,
            "unavailable" => Self::Unavailable,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Self::from(&*s))
    }
}

/// A frame the server sends over WebSocket (PROTOCOL §2b, §5).
///
/// Decode with [`ServerOp::decode`] (or `serde_json` from text): the raw
/// `event` needs a JSON text deserializer, not a `serde_json::Value`.
#[derive(Debug, Clone)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize))]
#[cfg_attr(
    not(target_arch = "wasm32"),
    serde(tag = "op", rename_all = "snake_case")
)]
pub enum ServerOp {
    /// One event of a subscribed run.
    Event {
        /// The envelope (§1), unvalidated raw JSON: validate with `decode_envelope(event.get(), run)`.
        event: RawJson,
    },
    /// The run's state as of `event_id` (the log was pruned past the resume point).
    Snapshot {
        /// The run.
        run_id: String,
        /// The last event the state includes.
        event_id: u64,
        /// The §6 state, unvalidated: see [`SnapshotBody::into_state`].
        state: RawJson,
    },
    /// A subscription is live; replay starts at `replay_from`.
    Subscribed {
        /// The run.
        run_id: String,
        /// The first id the replay sends.
        replay_from: u64,
    },
    /// A request failed.
    Error {
        /// The run concerned, if any.
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(skip_serializing_if = "Option::is_none")
        )]
        run_id: Option<String>,
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// The send that failed, for an answer to a [`ClientOp::Send`].
        #[cfg_attr(
            not(target_arch = "wasm32"),
            serde(skip_serializing_if = "Option::is_none")
        )]
        client_request_id: Option<String>,
    },
    /// Answer to a [`ClientOp::Ping`].
    Pong {
        /// The ping's `t`, echoed.
        t: RawJson,
    },
    /// A [`ClientOp::Send`] was accepted (same answer for a repeat).
    Ack {
        /// The send's idempotency key.
        client_request_id: String,
        /// The user message the send created.
        message_id: String,
        /// The run whose events carry the message and its reply.
        run_id: String,
    },
    /// A [`ClientOp::Cancel`] was accepted (§8): `op: "ack"` with the
    /// `event_id` of the run's `run.cancel_requested` (a repeat gets the first one's).
    #[cfg_attr(not(target_arch = "wasm32"), serde(rename = "ack"))]
    CancelAck {
        /// The cancel's idempotency key.
        client_request_id: String,
        /// The run asked to stop.
        run_id: String,
        /// Its `run.cancel_requested` event.
        event_id: u64,
    },
}

#[cfg(not(target_arch = "wasm32"))]
/// The `op` names of [`ServerOp`].
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Deserialize))]
#[cfg_attr(not(target_arch = "wasm32"), serde(rename_all = "snake_case"))]
enum ServerOpKind {
    Event,
    Snapshot,
    Subscribed,
    Error,
    Pong,
    Ack,
}

#[cfg(not(target_arch = "wasm32"))]
/// Every field any [`ServerOp`] has, decoded straight from the text (no
/// buffering, so `event` can stay a [`RawValue`] wherever `op` appears).
#[cfg_attr(not(target_arch = "wasm32"), derive(Deserialize))]
struct ServerFrame {
    op: ServerOpKind,
    run_id: Option<String>,
    event_id: Option<u64>,
    state: Option<RawJson>,
    event: Option<RawJson>,
    replay_from: Option<u64>,
    code: Option<ErrorCode>,
    message: Option<String>,
    client_request_id: Option<String>,
    t: Option<serde_json::Number>,
    message_id: Option<String>,
}

#[cfg(not(target_arch = "wasm32"))]
fn need<T>(v: Option<T>, field: &str) -> Result<T, WireError> {
    v.ok_or_else(|| WireError::Invalid(format!("missing field `{field}`")))
}

#[cfg(not(target_arch = "wasm32"))]
impl ServerFrame {
    fn into_op(self) -> Result<ServerOp, WireError> {
        Ok(match self.op {
            ServerOpKind::Event => ServerOp::Event {
                event: need(self.event, "event")?,
            },
            ServerOpKind::Snapshot => ServerOp::Snapshot {
                run_id: need(self.run_id, "run_id")?,
                event_id: need(self.event_id, "event_id")?,
                state: need(self.state, "state")?,
            },
            ServerOpKind::Subscribed => ServerOp::Subscribed {
                run_id: need(self.run_id, "run_id")?,
                replay_from: need(self.replay_from, "replay_from")?,
            },
            ServerOpKind::Error => ServerOp::Error {
                run_id: self.run_id,
                code: need(self.code, "code")?,
                message: need(self.message, "message")?,
                client_request_id: self.client_request_id,
            },
            ServerOpKind::Pong => ServerOp::Pong {
                t: RawJson::from_value(&Value::Number(need(self.t, "t")?)),
            },
            ServerOpKind::Ack => match (self.message_id, self.event_id) {
                (None, Some(event_id)) => ServerOp::CancelAck {
                    client_request_id: need(self.client_request_id, "client_request_id")?,
                    run_id: need(self.run_id, "run_id")?,
                    event_id,
                },
                (message_id, _) => ServerOp::Ack {
                    client_request_id: need(self.client_request_id, "client_request_id")?,
                    message_id: need(message_id, "message_id")?,
                    run_id: need(self.run_id, "run_id")?,
                },
            },
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'de> Deserialize<'de> for ServerOp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ServerFrame::deserialize(d)?
            .into_op()
            .map_err(serde::de::Error::custom)
    }
}

impl ServerOp {
    #[cfg(not(target_arch = "wasm32"))]
    /// The JSON text of this frame.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Parses one text frame; an `event` keeps its envelope as raw JSON.
    /// One pass of the scanner; errors in the precedence serde had:
    /// `NotJson`, `NotObject`, `MissingOp`, `UnknownOp`, then `Invalid`.
    pub fn decode(text: &str) -> Result<Self, WireError> {
        decode_server_op(text)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// [`Self::decode`] through serde: the reference `tests/json.rs` checks the scanner against.
    #[doc(hidden)]
    pub fn decode_with_serde(text: &str) -> Result<Self, WireError> {
        serde_json::from_str::<ServerFrame>(text)
            .map_err(|e| classify::<ServerOpKind>(text, &e))?
            .into_op()
    }
}

/// The snapshot endpoint body (§2c), also the fields of a [`ServerOp::Snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct SnapshotBody {
    /// The run.
    pub run_id: String,
    /// The last event the state includes.
    pub event_id: u64,
    /// The §6 state ([`RunState::to_wire_json`]); left unparsed until [`Self::into_state`].
    pub state: RawJson,
}

impl SnapshotBody {
    /// The body for `state` as of `event_id`.
    pub fn new(run_id: &str, event_id: u64, state: &RunState) -> Self {
        Self {
            run_id: run_id.to_owned(),
            event_id,
            state: RawJson::from_checked(&state.to_wire_json()),
        }
    }

    /// The state, validated ([`RunState::from_wire_json`]).
    pub fn into_state(self) -> Result<RunState, SnapshotError> {
        RunState::from_wire_json(self.state.get())
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// The JSON text of this body.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Parses a body (the state is checked only by [`Self::into_state`]).
    pub fn decode(text: &str) -> Result<Self, WireError> {
        let mut f = BodyFields::read(text, &["run_id", "event_id", "state"])?;
        f.no_dup()?;
        Ok(Self {
            run_id: f.string("run_id")?,
            event_id: f.u64("event_id")?,
            state: f.raw("state")?,
        })
    }
}

/// The chat send body (§5): `POST /api/chat/{session_id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct SendBody {
    /// Idempotency key of the send.
    pub client_request_id: String,
    /// The message text.
    pub content: String,
}

impl SendBody {
    /// The JSON text of this body (the bytes serde_json writes for it).
    pub fn encode(&self) -> String {
        let mut w = Writer::new();
        w.begin_object();
        w.key("client_request_id").str(&self.client_request_id);
        w.key("content").str(&self.content);
        w.end_object();
        w.finish()
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Parses a body.
    pub fn decode(text: &str) -> Result<Self, WireError> {
        decode_body(text)
    }
}

/// The 202 answer to a chat send (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(Serialize, Deserialize))]
pub struct Accepted {
    /// The user message the send created.
    pub message_id: String,
    /// The run whose events carry the message and its reply.
    pub run_id: String,
}

impl Accepted {
    #[cfg(not(target_arch = "wasm32"))]
    /// The JSON text of this answer.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Parses an answer.
    pub fn decode(text: &str) -> Result<Self, WireError> {
        let mut f = BodyFields::read(text, &["message_id", "run_id"])?;
        f.no_dup()?;
        Ok(Self {
            message_id: f.string("message_id")?,
            run_id: f.string("run_id")?,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// The record a page stores for a refresh (under `runstream:{runId}`): the
/// cursor, the §6 state (with the optimistic messages of undelivered sends)
/// and the parked job-only events as their envelopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Format version.
    pub v: u64,
    /// The cursor the state is consistent with.
    pub cursor: u64,
    /// The state in the §6 shape.
    pub state: Value,
    /// Parked job-only events, as envelopes (§1).
    #[serde(default)]
    pub parked: Vec<Value>,
}

#[cfg(not(target_arch = "wasm32"))]
impl StoredRecord {
    /// The JSON text of this record.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Parses a stored record.
    pub fn decode(text: &str) -> Result<Self, WireError> {
        decode_body(text)
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// An event envelope (§1) as a server writes it.
///
/// Write-only on purpose: a reader validates with `decode_envelope`, which
/// checks what serde cannot (id range, run, timestamp, payload schema).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireEnvelope {
    /// Dense per-run id (1-based).
    pub event_id: u64,
    /// The run.
    pub run_id: String,
    /// The event type (§4).
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339 server time.
    pub timestamp: String,
    /// The payload object.
    pub payload: Value,
}

#[cfg(not(target_arch = "wasm32"))]
impl WireEnvelope {
    /// A `snapshot` event (§3): `payload` is `{"state": state}` with `state` in the §6 shape.
    pub fn snapshot(run_id: &str, event_id: u64, timestamp: String, state: Value) -> Self {
        let mut payload = Map::new();
        payload.insert("state".to_owned(), state);
        Self {
            event_id,
            run_id: run_id.to_owned(),
            event_type: "snapshot".to_owned(),
            timestamp,
            payload: Value::Object(payload),
        }
    }

    /// The JSON text of this envelope.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// The envelope as raw JSON, ready for [`ServerOp::Event`].
    pub fn to_raw(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(self).unwrap_or_else(|_| RawValue::NULL.to_owned())
    }

    /// The envelope as [`RawJson`], for [`ServerOp::Event`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_raw_json(&self) -> RawJson {
        RawJson::from(self.to_raw())
    }
}

/// Reads the top-level object of a body or frame: the fields `names` (the
/// last occurrence wins, unknown ones skipped). `NotJson` for any syntax
/// error, `NotObject` for valid JSON that is not an object.
struct BodyFields<'a> {
    names: &'static [&'static str],
    values: Vec<Field<'a>>,
    /// The text of each value, as sent.
    raws: Vec<&'a str>,
    /// A field that appeared twice (serde's derives reject that; checked by the caller).
    dup: Option<&'static str>,
}

fn not_json(e: JsonError) -> WireError {
    WireError::NotJson(e.describe())
}

fn missing(k: &str) -> WireError {
    WireError::Invalid(["missing field `", k, "`"].concat())
}

fn wrong(k: &str) -> WireError {
    WireError::Invalid(["invalid type for field `", k, "`"].concat())
}

impl<'a> BodyFields<'a> {
    fn read(text: &'a str, names: &'static [&'static str]) -> Result<Self, WireError> {
        let mut s = Scanner::new(text);
        if s.peek().map_err(not_json)? != Token::Object {
            s.skip().and_then(|()| s.end()).map_err(not_json)?;
            return Err(WireError::NotObject);
        }
        let mut values = vec![Field::Absent; names.len()];
        let mut raws = vec![""; names.len()];
        let (mut seen, mut dup) = (0u32, None);
        s.object().map_err(not_json)?;
        while let Some(k) = s.key().map_err(not_json)? {
            match names.iter().position(|n| *n == k) {
                Some(i) => {
                    let start = s.pos();
                    let v = Field::read(&mut s).map_err(not_json)?;
                    if let Some(r) = raws.get_mut(i) {
                        *r = text.get(start..s.pos()).unwrap_or("").trim_start();
                    }
                    if seen & (1 << i) != 0 {
                        dup = dup.or(names.get(i).copied());
                    }
                    seen |= 1 << i;
                    if let Some(slot) = values.get_mut(i) {
                        *slot = v;
                    }
                }
                None => s.skip().map_err(not_json)?,
            }
        }
        s.end().map_err(not_json)?;
        Ok(Self {
            names,
            values,
            raws,
            dup,
        })
    }

    /// `Invalid` if a field appeared twice.
    fn no_dup(&self) -> Result<(), WireError> {
        match self.dup {
            Some(k) => Err(WireError::Invalid(["duplicate field `", k, "`"].concat())),
            None => Ok(()),
        }
    }

    fn take(&mut self, k: &str) -> Field<'a> {
        self.names
            .iter()
            .position(|n| *n == k)
            .and_then(|i| self.values.get_mut(i))
            .map_or(Field::Absent, |v| std::mem::replace(v, Field::Absent))
    }

    /// A string; `null` or absent is `None`.
    fn opt_string(&mut self, k: &str) -> Result<Option<String>, WireError> {
        match self.take(k) {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s.into_owned())),
            _ => Err(wrong(k)),
        }
    }

    fn string(&mut self, k: &str) -> Result<String, WireError> {
        self.opt_string(k)?.ok_or_else(|| missing(k))
    }

    fn opt_u64(&mut self, k: &str) -> Result<Option<u64>, WireError> {
        match self.take(k) {
            Field::Absent | Field::Null => Ok(None),
            Field::Num(Number::U64(n)) => Ok(Some(n)),
            _ => Err(wrong(k)),
        }
    }

    fn u64(&mut self, k: &str) -> Result<u64, WireError> {
        self.opt_u64(k)?.ok_or_else(|| missing(k))
    }

    /// Any value but `null`, as its text as sent.
    fn opt_raw(&mut self, k: &str) -> Option<RawJson> {
        let i = self.names.iter().position(|n| *n == k)?;
        match self.take(k) {
            Field::Absent | Field::Null => None,
            _ => self.raws.get(i).map(|r| RawJson::from_checked(r)),
        }
    }

    /// A required value, `null` included (as serde reads a required raw
    /// value); only an absent field is missing.
    fn raw(&mut self, k: &str) -> Result<RawJson, WireError> {
        let i = self.names.iter().position(|n| *n == k);
        match self.take(k) {
            Field::Absent => Err(missing(k)),
            _ => i
                .and_then(|i| self.raws.get(i))
                .map(|r| RawJson::from_checked(r))
                .ok_or_else(|| missing(k)),
        }
    }
}

/// The fields any [`ServerOp`] has.
const SERVER_FIELDS: &[&str] = &[
    "op",
    "run_id",
    "event_id",
    "state",
    "event",
    "replay_from",
    "code",
    "message",
    "client_request_id",
    "t",
    "message_id",
];

/// Position of `t` in [`SERVER_FIELDS`].
const SERVER_T: usize = 9;

/// [`ServerOp::decode`]: the top-level fields in one pass of the scanner,
/// then the op's. Precedence of errors as serde's path had it: `NotJson`,
/// `NotObject`, `MissingOp` (absent or `null`), `UnknownOp` (the name, or
/// the JSON text of a non-string `op`), then `Invalid` for a missing or
/// mistyped field of a known op, or a field given twice. One difference: a number beyond `f64`
/// anywhere (`1e999`) is `NotJson`, where serde's struct path skipped it
/// unconverted inside an unknown field or a raw value.
fn decode_server_op(text: &str) -> Result<ServerOp, WireError> {
    let mut f = BodyFields::read(text, SERVER_FIELDS)?;
    let op = match f.take("op") {
        Field::Absent | Field::Null => return Err(WireError::MissingOp),
        Field::Str(s) => s,
        Field::Raw(_, raw) => return Err(WireError::UnknownOp(raw.to_owned())),
        Field::Bool(b) => {
            return Err(WireError::UnknownOp(
                if b { "true" } else { "false" }.into(),
            ))
        }
        Field::Num(n) => {
            let mut w = Writer::new();
            match n {
                Number::U64(n) => w.u64(n),
                Number::I64(n) => w.i64(n),
                Number::F64(x) => w.f64(x),
            };
            return Err(WireError::UnknownOp(w.finish()));
        }
    };
    // serde reads every field before the op's: a mistyped one is an error whatever the op.
    let run_id = f.opt_string("run_id");
    let event_id = f.opt_u64("event_id");
    let state = f.opt_raw("state");
    let event = f.opt_raw("event");
    let replay_from = f.opt_u64("replay_from");
    let code = f.opt_string("code");
    let message = f.opt_string("message");
    let client_request_id = f.opt_string("client_request_id");
    let t = match f.values.get(SERVER_T) {
        Some(Field::Absent | Field::Null) => Ok(None),
        Some(Field::Num(_)) => Ok(f.opt_raw("t")),
        _ => Err(wrong("t")),
    };
    let message_id = f.opt_string("message_id");
    let known = ["event", "snapshot", "subscribed", "error", "pong", "ack"];
    if !known.contains(&&*op) {
        return Err(WireError::UnknownOp(op.into_owned()));
    }
    f.no_dup()?;
    let (run_id, event_id, replay_from, code, message, client_request_id, t, message_id) = (
        run_id?,
        event_id?,
        replay_from?,
        code?,
        message?,
        client_request_id?,
        t?,
        message_id?,
    );
    let need = |v: Option<_>, k: &str| v.ok_or_else(|| missing(k));
    Ok(match &*op {
        "event" => ServerOp::Event {
            event: event.ok_or_else(|| missing("event"))?,
        },
        "snapshot" => ServerOp::Snapshot {
            run_id: run_id.ok_or_else(|| missing("run_id"))?,
            event_id: event_id.ok_or_else(|| missing("event_id"))?,
            state: state.ok_or_else(|| missing("state"))?,
        },
        "subscribed" => ServerOp::Subscribed {
            run_id: run_id.ok_or_else(|| missing("run_id"))?,
            replay_from: replay_from.ok_or_else(|| missing("replay_from"))?,
        },
        "error" => ServerOp::Error {
            run_id,
            code: ErrorCode::from(need(code, "code")?.as_str()),
            message: need(message, "message")?,
            client_request_id,
        },
        "pong" => ServerOp::Pong {
            t: t.ok_or_else(|| missing("t"))?,
        },
        _ => match (message_id, event_id) {
            (None, Some(event_id)) => ServerOp::CancelAck {
                client_request_id: need(client_request_id, "client_request_id")?,
                run_id: run_id.ok_or_else(|| missing("run_id"))?,
                event_id,
            },
            (message_id, _) => ServerOp::Ack {
                client_request_id: need(client_request_id, "client_request_id")?,
                message_id: need(message_id, "message_id")?,
                run_id: run_id.ok_or_else(|| missing("run_id"))?,
            },
        },
    })
}

#[cfg(not(target_arch = "wasm32"))]
/// Serializes a wire type. Cannot fail: every field is a string, a number, a
/// string-keyed map or a JSON value (the empty string would stand in).
fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(not(target_arch = "wasm32"))]
fn decode_body<T: DeserializeOwned>(text: &str) -> Result<T, WireError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(_) => WireError::Invalid(e.to_string()),
                Err(_) => WireError::NotObject,
            }
        } else {
            WireError::NotJson(e.to_string())
        }
    })
}

/// Says why a frame failed to decode; `K` lists the op names this side knows.
#[cfg(not(target_arch = "wasm32"))]
/// Runs only on the error path.
fn classify<K: DeserializeOwned>(text: &str, e: &serde_json::Error) -> WireError {
    if !e.is_data() {
        return WireError::NotJson(e.to_string());
    }
    let Ok(mut obj) = serde_json::from_str::<Map<String, Value>>(text) else {
        return WireError::NotObject;
    };
    match obj.remove("op") {
        None | Some(Value::Null) => WireError::MissingOp,
        Some(op) => match serde_json::from_value::<K>(op.clone()) {
            Ok(_) => WireError::Invalid(e.to_string()),
            Err(_) => WireError::UnknownOp(match op {
                Value::String(s) => s,
                other => other.to_string(),
            }),
        },
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::core::envelope::{decode_envelope, EventKind};

    const ENVELOPE: &str = r#"{
  "event_id": 42,
  "run_id": "run_01JD3Q8Z8M4V6W",
  "type": "tool.completed",
  "timestamp": "2026-11-22T12:00:00.123Z",
  "payload": { "worker_id": "w1", "tool_call_id": "t7", "status": "ok" }
}"#;

    /// The §6 example with one value picked for each alternative.
    const STATE: &str = r#"{
  "run_id": "…", "cursor": 42, "status": "running",
  "workers": [{ "worker_id": "w1", "job_id": "j1", "job_ids": ["j0", "j1"], "name": "search",
                "status": "running",
                "tools": [{ "tool_call_id": "t7", "name": "fetch", "status": "ok" }] }],
  "messages": [{ "message_id": "m1", "client_request_id": "…", "reply_to": "…", "role": "assistant",
                 "content": "Hello", "status": "streaming" }],
  "supervisor": { "completed": false, "summary": null }
}"#;

    fn headers() -> Headers {
        [("authorization".to_owned(), "Bearer x".to_owned())].into()
    }

    fn client_ops() -> Vec<ClientOp> {
        vec![
            ClientOp::Subscribe {
                run_id: "r1".into(),
                last_event_id: None,
                headers: None,
            },
            ClientOp::Subscribe {
                run_id: "r1".into(),
                last_event_id: Some(41),
                headers: Some(headers()),
            },
            ClientOp::Unsubscribe {
                run_id: "r1".into(),
            },
            ClientOp::ping(1234.0),
            ClientOp::ping(12.5),
            ClientOp::Send {
                session_id: "s1".into(),
                client_request_id: "c1".into(),
                content: "hi \"there\"\n".into(),
                headers: None,
            },
            ClientOp::Send {
                session_id: "s1".into(),
                client_request_id: "c1".into(),
                content: "hi".into(),
                headers: Some(headers()),
            },
        ]
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn server_ops() -> Vec<ServerOp> {
        vec![
            ServerOp::Event {
                event: raw(ENVELOPE).into(),
            },
            ServerOp::Snapshot {
                run_id: "r1".into(),
                event_id: 9,
                state: RawJson::from_value(&json(STATE)),
            },
            ServerOp::Subscribed {
                run_id: "r1".into(),
                replay_from: 5,
            },
            ServerOp::Error {
                run_id: Some("r1".into()),
                code: ErrorCode::NotFound,
                message: "unknown run".into(),
                client_request_id: None,
            },
            ServerOp::Error {
                run_id: None,
                code: ErrorCode::Other("rate_limited".into()),
                message: "slow down".into(),
                client_request_id: Some("c1".into()),
            },
            ServerOp::Pong { t: 42.into() },
            ServerOp::Ack {
                client_request_id: "c1".into(),
                message_id: "m1".into(),
                run_id: "r1".into(),
            },
            ServerOp::CancelAck {
                client_request_id: "c2".into(),
                run_id: "r1".into(),
                event_id: 7,
            },
        ]
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn client_ops_round_trip() {
        for op in client_ops() {
            let text = op.encode();
            assert_eq!(ClientOp::decode(&text), Ok(op), "{text}");
        }
    }

    #[test]
    fn server_ops_round_trip() {
        for op in server_ops() {
            let text = op.encode();
            let back = ServerOp::decode(&text).unwrap();
            assert_eq!(back.encode(), text);
            // Also through serde's own entry point.
            let via_serde: ServerOp = serde_json::from_str(&text).unwrap();
            assert_eq!(via_serde.encode(), text);
        }
    }

    #[test]
    fn bodies_round_trip() {
        let st = RunState::from_wire(json(STATE)).unwrap();
        // PROTOCOL §6 `job_ids`: every job of the worker, in assignment order.
        assert_eq!(st.workers[0].job_ids, ["j0", "j1"]);
        let snap = SnapshotBody::new("r1", 42, &st);
        let back = SnapshotBody::decode(&snap.encode()).unwrap();
        assert_eq!(back, snap);
        assert_eq!(back.into_state().unwrap(), st);
        let send = SendBody {
            client_request_id: "c1".into(),
            content: "hi".into(),
        };
        assert_eq!(SendBody::decode(&send.encode()), Ok(send));
        let acc = Accepted {
            message_id: "m1".into(),
            run_id: "r1".into(),
        };
        assert_eq!(Accepted::decode(&acc.encode()), Ok(acc));
    }

    #[test]
    fn decodes_the_client_frames_of_the_protocol() {
        assert_eq!(
            ClientOp::decode(r#"{"op":"subscribe","run_id":"…","last_event_id":41}"#),
            Ok(ClientOp::Subscribe {
                run_id: "…".into(),
                last_event_id: Some(41),
                headers: None
            })
        );
        assert_eq!(
            ClientOp::decode(r#"{"op":"subscribe","run_id":"…"}"#),
            Ok(ClientOp::Subscribe {
                run_id: "…".into(),
                last_event_id: None,
                headers: None
            })
        );
        assert_eq!(
            ClientOp::decode(r#"{"op":"unsubscribe","run_id":"…"}"#),
            Ok(ClientOp::Unsubscribe {
                run_id: "…".into()
            })
        );
        assert_eq!(
            ClientOp::decode(r#"{"op":"ping","t":1732276800123}"#),
            Ok(ClientOp::Ping {
                t: 1_732_276_800_123u64.into()
            })
        );
        assert_eq!(
            ClientOp::decode(
                r#"{"op":"send","session_id":"…","client_request_id":"<uuid>","content":"…"}"#
            ),
            Ok(ClientOp::Send {
                session_id: "…".into(),
                client_request_id: "<uuid>".into(),
                content: "…".into(),
                headers: None
            })
        );
    }

    #[test]
    fn decodes_the_server_frames_of_the_protocol() {
        let frame = format!(r#"{{"op":"event","event":{ENVELOPE}}}"#);
        let Ok(ServerOp::Event { event }) = ServerOp::decode(&frame) else {
            panic!("event");
        };
        // The envelope stays exactly as sent, and validates on the client's path.
        assert_eq!(event.get(), ENVELOPE);
        let env = decode_envelope(event.get(), "run_01JD3Q8Z8M4V6W").unwrap();
        assert_eq!(env.event_id, 42);

        let frame = format!(r#"{{"op":"snapshot","run_id":"…","event_id":42,"state":{STATE}}}"#);
        let Ok(ServerOp::Snapshot {
            run_id,
            event_id,
            state,
        }) = ServerOp::decode(&frame)
        else {
            panic!("snapshot");
        };
        assert_eq!((run_id.as_str(), event_id), ("…", 42));
        let body = SnapshotBody {
            run_id,
            event_id,
            state,
        };
        let st = body.into_state().unwrap();
        assert_eq!(st.cursor, 42);
        assert_eq!(st.workers.len(), 1);

        assert!(matches!(
            ServerOp::decode(r#"{"op":"subscribed","run_id":"…","replay_from":42}"#),
            Ok(ServerOp::Subscribed { run_id, replay_from: 42 }) if run_id == "…"
        ));
        assert!(matches!(
            ServerOp::decode(r#"{"op":"error","run_id":"…","code":"not_found","message":"…"}"#),
            Ok(ServerOp::Error { run_id: Some(r), code: ErrorCode::NotFound, message, client_request_id: None })
                if r == "…" && message == "…"
        ));
        assert!(matches!(
            ServerOp::decode(r#"{"op":"error","code":"bad_request","message":"x"}"#),
            Ok(ServerOp::Error {
                run_id: None,
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let Ok(ServerOp::Pong { t }) = ServerOp::decode(r#"{"op":"pong","t":1732276800123}"#)
        else {
            panic!("pong");
        };
        assert_eq!(t.as_u64(), Some(1_732_276_800_123));
        assert!(matches!(
            ServerOp::decode(r#"{"op":"ack","client_request_id":"…","message_id":"…","run_id":"…"}"#),
            Ok(ServerOp::Ack { client_request_id, message_id, run_id })
                if client_request_id == "…" && message_id == "…" && run_id == "…"
        ));
    }

    #[test]
    fn decodes_the_bodies_of_the_protocol() {
        let snap = SnapshotBody::decode(&format!(
            r#"{{"run_id":"…","event_id":42,"state":{STATE}}}"#
        ))
        .unwrap();
        assert_eq!((snap.run_id.as_str(), snap.event_id), ("…", 42));
        assert_eq!(snap.into_state().unwrap().messages.len(), 1);
        assert_eq!(
            SendBody::decode(r#"{"client_request_id":"<uuid>","content":"…"}"#),
            Ok(SendBody {
                client_request_id: "<uuid>".into(),
                content: "…".into()
            })
        );
        assert_eq!(
            Accepted::decode(r#"{"message_id":"…","run_id":"…"}"#),
            Ok(Accepted {
                message_id: "…".into(),
                run_id: "…".into()
            })
        );
    }

    #[test]
    fn encodes_exactly_the_protocol_fields() {
        let sub = ClientOp::Subscribe {
            run_id: "r".into(),
            last_event_id: None,
            headers: None,
        };
        assert_eq!(sub.encode(), r#"{"op":"subscribe","run_id":"r"}"#);
        let sub = ClientOp::Subscribe {
            run_id: "r".into(),
            last_event_id: Some(41),
            headers: None,
        };
        assert_eq!(
            sub.encode(),
            r#"{"op":"subscribe","run_id":"r","last_event_id":41}"#
        );
        assert_eq!(ClientOp::ping(1234.0).encode(), r#"{"op":"ping","t":1234}"#);
        assert_eq!(ClientOp::ping(12.5).encode(), r#"{"op":"ping","t":12.5}"#);
        assert_eq!(ClientOp::ping(f64::NAN).encode(), r#"{"op":"ping","t":0}"#);
        let err = ServerOp::Error {
            run_id: None,
            code: ErrorCode::BadRequest,
            message: "not JSON".into(),
            client_request_id: None,
        };
        assert_eq!(
            err.encode(),
            r#"{"op":"error","code":"bad_request","message":"not JSON"}"#
        );
        let ev = ServerOp::Event {
            event: raw("{}").into(),
        };
        assert_eq!(ev.encode(), r#"{"op":"event","event":{}}"#);
        // The echo keeps the ping's number as sent (an integer stays an integer).
        let Ok(ClientOp::Ping { t }) = ClientOp::decode(r#"{"op":"ping","t":42}"#) else {
            panic!("ping");
        };
        assert_eq!(ServerOp::Pong { t }.encode(), r#"{"op":"pong","t":42}"#);
    }

    #[test]
    fn wire_envelope_is_what_the_client_accepts() {
        let env = WireEnvelope {
            event_id: 3,
            run_id: "r1".into(),
            event_type: "message.delta".into(),
            timestamp: "2026-11-22T12:00:00.123Z".into(),
            payload: json(r#"{"message_id":"m1","delta":"hi"}"#),
        };
        assert_eq!(
            env.encode(),
            r#"{"event_id":3,"run_id":"r1","type":"message.delta","timestamp":"2026-11-22T12:00:00.123Z","payload":{"delta":"hi","message_id":"m1"}}"#
        );
        assert_eq!(env.to_raw().get(), env.encode());
        assert_eq!(decode_envelope(&env.encode(), "r1").unwrap().event_id, 3);
        let st = RunState::from_wire(json(STATE)).unwrap();
        let snap = WireEnvelope::snapshot("…", 42, "2026-11-22T12:00:00.123Z".into(), st.to_wire());
        let d = decode_envelope(&snap.encode(), "…").unwrap();
        assert_eq!(d.event_id, 42);
        assert!(matches!(d.kind, EventKind::Snapshot(_)));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            ClientOp::decode(r#"{"op":"unsubscribe","run_id":"r","v":2,"extra":{"a":[1]}}"#),
            Ok(ClientOp::Unsubscribe { run_id: "r".into() })
        );
        assert!(matches!(
            ServerOp::decode(
                r#"{"trace":"x","op":"subscribed","run_id":"r","replay_from":1,"more":null}"#
            ),
            Ok(ServerOp::Subscribed { replay_from: 1, .. })
        ));
        assert!(matches!(
            ServerOp::decode(r#"{"op":"pong","t":1,"server_t":2}"#),
            Ok(ServerOp::Pong { .. })
        ));
        assert_eq!(
            SendBody::decode(r#"{"client_request_id":"c","content":"x","priority":1}"#)
                .map(|b| b.content),
            Ok("x".to_owned())
        );
        assert!(Accepted::decode(r#"{"message_id":"m","run_id":"r","queued":true}"#).is_ok());
        assert!(SnapshotBody::decode(
            r#"{"run_id":"r","event_id":0,"state":{"run_id":"r"},"v":1}"#
        )
        .is_ok());
    }

    #[test]
    fn an_unknown_error_code_still_parses_and_round_trips() {
        let text = r#"{"op":"error","code":"quota_exceeded","message":"m"}"#;
        let op = ServerOp::decode(text).unwrap();
        assert!(matches!(
            &op,
            ServerOp::Error { code: ErrorCode::Other(c), .. } if c == "quota_exceeded"
        ));
        assert_eq!(op.encode(), text);
        assert_eq!(ErrorCode::from("not_found"), ErrorCode::NotFound);
        assert_eq!(ErrorCode::from("bad_request").to_string(), "bad_request");
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        use WireError::*;
        type Check = fn(&WireError) -> bool;
        let client: [(&str, Check); 9] = [
            ("{not json", |e| matches!(e, NotJson(_))),
            ("", |e| matches!(e, NotJson(_))),
            ("[1,2]", |e| matches!(e, NotObject)),
            ("42", |e| matches!(e, NotObject)),
            (r#"{"run_id":"r"}"#, |e| matches!(e, MissingOp)),
            (r#"{"op":"fly","run_id":"r"}"#, |e| {
                *e == UnknownOp("fly".into())
            }),
            (r#"{"op":7}"#, |e| *e == UnknownOp("7".into())),
            (
                r#"{"op":"subscribe"}"#,
                |e| matches!(e, Invalid(m) if m.contains("run_id")),
            ),
            (
                r#"{"op":"subscribe","run_id":"r","last_event_id":"4"}"#,
                |e| matches!(e, Invalid(_)),
            ),
        ];
        for (text, want) in client {
            let got = ClientOp::decode(text).unwrap_err();
            assert!(want(&got), "{text}: {got:?}");
        }
        for text in [
            r#"{"op":"unsubscribe"}"#,
            r#"{"op":"ping"}"#,
            r#"{"op":"ping","t":"now"}"#,
            r#"{"op":"send","session_id":"s","client_request_id":"c"}"#,
            r#"{"op":"send","session_id":"s","content":"x"}"#,
        ] {
            assert!(matches!(ClientOp::decode(text), Err(Invalid(_))), "{text}");
        }
        let server: [(&str, &str); 10] = [
            (r#"{"op":"event"}"#, "event"),
            (r#"{"op":"event","event":null}"#, "event"),
            (r#"{"op":"snapshot","run_id":"r","event_id":1}"#, "state"),
            (r#"{"op":"snapshot","run_id":"r","state":{}}"#, "event_id"),
            (r#"{"op":"subscribed","run_id":"r"}"#, "replay_from"),
            (r#"{"op":"error","message":"m"}"#, "code"),
            (r#"{"op":"error","code":"not_found"}"#, "message"),
            (r#"{"op":"pong"}"#, "t"),
            (
                r#"{"op":"ack","client_request_id":"c","run_id":"r"}"#,
                "message_id",
            ),
            (
                r#"{"op":"ack","client_request_id":"c","message_id":"m"}"#,
                "run_id",
            ),
        ];
        for (text, field) in server {
            match ServerOp::decode(text) {
                Err(Invalid(m)) => assert!(m.contains(field), "{text}: {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            ServerOp::decode(r#"{"op":"welcome"}"#).unwrap_err(),
            UnknownOp("welcome".into())
        );
        assert_eq!(ServerOp::decode(r#"{"event":{}}"#).unwrap_err(), MissingOp);
        assert!(matches!(
            ServerOp::decode(r#"{"op":"subscribed","run_id":"r","replay_from":-1}"#),
            Err(Invalid(_))
        ));
        assert!(matches!(ServerOp::decode("{\"op\":"), Err(NotJson(_))));
        assert!(matches!(
            SendBody::decode(r#"{"content":"x"}"#),
            Err(Invalid(_))
        ));
        assert!(matches!(SendBody::decode("null"), Err(NotObject)));
        assert!(matches!(Accepted::decode("{"), Err(NotJson(_))));
        assert!(matches!(
            SnapshotBody::decode(r#"{"run_id":"r","event_id":1}"#),
            Err(Invalid(_))
        ));
        // A body that parses but whose state is not the §6 shape fails on use.
        let bad = SnapshotBody::decode(r#"{"run_id":"r","event_id":1,"state":[]}"#).unwrap();
        assert!(matches!(bad.into_state(), Err(SnapshotError::Invalid(_))));
    }

    #[test]
    fn every_op_name_is_known_to_the_error_path() {
        // A frame of each op with its fields removed is invalid, never "unknown op".
        for op in client_ops() {
            let Value::Object(o) = json(&op.encode()) else {
                panic!()
            };
            let bare = serde_json::json!({"op": o["op"]}).to_string();
            assert!(
                matches!(ClientOp::decode(&bare), Err(WireError::Invalid(_))),
                "{bare}"
            );
        }
        for op in server_ops() {
            let Value::Object(o) = json(&op.encode()) else {
                panic!()
            };
            let bare = serde_json::json!({"op": o["op"]}).to_string();
            assert!(
                matches!(ServerOp::decode(&bare), Err(WireError::Invalid(_))),
                "{bare}"
            );
        }
    }

    #[test]
    fn junk_never_panics() {
        let junk = [
            "",
            " ",
            "\u{0}",
            "{",
            "}",
            "[]",
            "null",
            "true",
            "\"op\"",
            "{\"op\":null}",
            "{\"op\":{}}",
            "{\"op\":[\"event\"]}",
            "{\"op\":\"event\",\"event\":",
            "{\"op\":\"event\",\"event\":1e999}",
            "{\"op\":\"pong\",\"t\":1e400}",
            "{\"op\":\"snapshot\",\"run_id\":1,\"event_id\":1,\"state\":1}",
            "{\"op\":\"error\",\"code\":5,\"message\":\"m\"}",
            "{\"op\":\"event\",\"op\":\"pong\",\"t\":1}",
        ];
        for j in junk {
            assert!(ClientOp::decode(j).is_err(), "{j}");
            let _ = ServerOp::decode(j);
            assert!(SendBody::decode(j).is_err(), "{j}");
        }
    }
}
