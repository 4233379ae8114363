//! Why a frame, an event or a snapshot was not applied: one error type per
//! layer, and the umbrella [`ProtocolError`] the engine counts.
//!
//! - [`DecodeError`]: envelope validation ([`decode_envelope`](super::envelope::decode_envelope), PROTOCOL §1, §4);
//! - [`FrameError`]: transport framing (size bound, WebSocket frames, §2);
//! - [`SnapshotError`]: a snapshot body or state that is not the §6 shape (§2c, §3, §6);
//! - [`ReducerError`]: what the reducer had to drop ([`RunState::apply`](super::state::RunState::apply)).
//!
//! Every function returns the narrowest of these; the engine converts with
//! `?` / `.into()` and counts each [`ProtocolError`] under its
//! [`kind`](ProtocolError::kind) (`metrics.protocolErrorsByKind`, the `kind`
//! attribute of `stream.protocol_error.total`). None closes the stream.

use super::json::write::concat_u64;

/// `event N (type): invalid payload: reason`, with `N` written without `core::fmt`.
fn invalid_payload_text(event_id: u64, event_type: &str, reason: &str) -> String {
    [
        &concat_u64("event ", event_id, " (")[..],
        event_type,
        "): invalid payload: ",
        reason,
    ]
    .concat()
}

/// An event envelope that failed validation (PROTOCOL §1, §4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not valid JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// The frame is JSON but not an object.
    #[error("frame is not a JSON object")]
    NotObject,
    /// A required envelope field is absent.
    #[error("envelope field `{0}` is missing")]
    MissingField(&'static str),
    /// An envelope field has the wrong JSON type.
    #[error("envelope field `{0}` has the wrong type")]
    WrongType(&'static str),
    /// `event_id` is not in 1..=2^53−1.
    #[error("event_id is out of range")]
    IdOutOfRange,
    /// `run_id` is empty or longer than 128 characters.
    #[error("run_id must be 1 to 128 characters")]
    BadRunId,
    /// `timestamp` is a string but not an ISO 8601 date-time: counted, and
    /// the event is applied all the same (the field is informational).
    #[error("timestamp is not an ISO 8601 date-time")]
    BadTimestamp,
    /// The event belongs to another run than the one this stream follows.
    #[error("event of another run")]
    ForeignRun,
    /// The envelope is valid but its payload does not match its type's schema.
    /// A log event's id is consumed (the log moves on) but the event has no
    /// effect; a `snapshot` is not a log entry (§3) and consumes nothing.
    #[error("{}", invalid_payload_text(*event_id, event_type, reason))]
    InvalidPayload {
        /// The id of the rejected event.
        event_id: u64,
        /// Its type.
        event_type: String,
        /// What was wrong.
        reason: String,
    },
}

impl DecodeError {
    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotObject => "not_object",
            Self::MissingField(_) => "missing_field",
            Self::WrongType(_) => "wrong_type",
            Self::IdOutOfRange => "id_out_of_range",
            Self::BadRunId => "bad_run_id",
            Self::BadTimestamp => "bad_timestamp",
            Self::ForeignRun => "foreign_run",
            Self::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

/// A transport frame that could not be used: over the size bound, or a
/// WebSocket frame that is not a known text op (PROTOCOL §2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The WebSocket frame is not valid JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// The WebSocket frame is JSON but not an object.
    #[error("frame is not a JSON object")]
    NotObject,
    /// An SSE event or WS frame exceeded the size bound and was discarded.
    #[error("{}", concat_u64("frame of ", *.0 as u64, " bytes exceeds the size bound"))]
    TooLarge(usize),
    /// A binary WebSocket frame (the protocol is text-only).
    #[error("binary WebSocket frame")]
    Binary,
    /// A WebSocket frame whose `op` is missing or unknown.
    #[error("unknown WebSocket op")]
    UnknownOp,
    /// A WebSocket frame of a known op with a missing or mistyped field.
    #[error("invalid WebSocket frame: {0}")]
    Invalid(String),
}

impl FrameError {
    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotObject => "not_object",
            Self::TooLarge(_) => "too_large",
            Self::Binary => "binary_frame",
            Self::UnknownOp => "unknown_op",
            Self::Invalid(_) => "invalid_frame",
        }
    }
}

/// A snapshot (endpoint body or WebSocket `snapshot` op) that cannot replace
/// the state (PROTOCOL §2c, §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The body or its state does not have the §6 shape.
    Invalid(String),
    /// The snapshot is of another run than the one this stream follows.
    ForeignRun,
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for SnapshotError {}

impl SnapshotError {
    /// The error's text, made without `core::fmt` (its `Display` is this text).
    pub fn message(&self) -> String {
        match self {
            Self::Invalid(reason) => ["invalid snapshot: ", reason].concat(),
            Self::ForeignRun => "event of another run".to_owned(),
        }
    }

    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "bad_snapshot",
            Self::ForeignRun => "foreign_run",
        }
    }
}

/// Something the reducer had to drop (PROTOCOL §4 reconciliation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReducerError {
    /// More job-only events were parked than the bound allows; the oldest was dropped.
    #[error("parked job-only event dropped: the parking bound was reached")]
    ParkOverflow,
}

impl ReducerError {
    /// A stable, short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ParkOverflow => "park_overflow",
        }
    }
}

/// Why a frame or an event was not applied: the error of any layer, as the
/// engine counts it. Every variant is counted and reported; none closes the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Envelope validation failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Transport framing failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A snapshot could not be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The reducer dropped something.
    #[error(transparent)]
    Reducer(#[from] ReducerError),
}

impl ProtocolError {
    /// A stable, short name for counters and logs (a public metric attribute:
    /// never renamed).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.kind(),
            Self::Frame(e) => e.kind(),
            Self::Snapshot(e) => e.kind(),
            Self::Reducer(e) => e.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_published_names() {
        let cases: [(ProtocolError, &str); 18] = [
            (DecodeError::NotJson(String::new()).into(), "not_json"),
            (DecodeError::NotObject.into(), "not_object"),
            (DecodeError::MissingField("x").into(), "missing_field"),
            (DecodeError::WrongType("x").into(), "wrong_type"),
            (DecodeError::IdOutOfRange.into(), "id_out_of_range"),
            (DecodeError::BadRunId.into(), "bad_run_id"),
            (DecodeError::BadTimestamp.into(), "bad_timestamp"),
            (DecodeError::ForeignRun.into(), "foreign_run"),
            (
                DecodeError::InvalidPayload {
                    event_id: 1,
                    event_type: "x".into(),
                    reason: String::new(),
                }
                .into(),
                "invalid_payload",
            ),
            (FrameError::NotJson(String::new()).into(), "not_json"),
            (FrameError::NotObject.into(), "not_object"),
            (FrameError::TooLarge(1).into(), "too_large"),
            (FrameError::Binary.into(), "binary_frame"),
            (FrameError::UnknownOp.into(), "unknown_op"),
            (FrameError::Invalid(String::new()).into(), "invalid_frame"),
            (SnapshotError::Invalid(String::new()).into(), "bad_snapshot"),
            (SnapshotError::ForeignRun.into(), "foreign_run"),
            (ReducerError::ParkOverflow.into(), "park_overflow"),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e:?}");
        }
    }

    #[test]
    fn the_umbrella_displays_the_layer_error() {
        let e = ProtocolError::from(FrameError::TooLarge(9));
        assert_eq!(e.to_string(), "frame of 9 bytes exceeds the size bound");
    }
}
