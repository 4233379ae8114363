//! Event envelope decoding and validation (PROTOCOL.md §1, §3, §4).
//!
//! [`decode_envelope`] turns one JSON text into a typed [`Envelope`] or a typed
//! [`DecodeError`]. It never panics, whatever the input.
//!
//! It depends only on the status vocabulary ([`super::vocab`]) and the error
//! types ([`super::error`]), never on the run state: a `snapshot` event's state
//! is handed on as JSON ([`EventKind::Snapshot`]) and checked against the §6
//! shape where it is installed.

use std::borrow::Cow;

use super::error::DecodeError;
use super::json::{Field, JsonError, Number, Scanner, Token};
pub use super::vocab::Outcome;
use super::vocab::{MessageRole, RunStatus, WorkerStatus};

/// Largest valid `event_id` (2^53 − 1, the largest integer a JS number holds exactly).
pub const MAX_EVENT_ID: u64 = (1 << 53) - 1;
/// Longest valid `run_id`, in characters.
pub const MAX_RUN_ID_CHARS: usize = 128;

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Dense per-run id (1-based).
    pub event_id: u64,
    /// The typed payload.
    pub kind: EventKind,
    /// `false` when `timestamp` is a string but not an ISO 8601 date-time
    /// ([`is_iso8601_datetime`]). The event is still valid: the field is
    /// informational (PROTOCOL §1: ordering is by `event_id`, never by
    /// timestamp), so it is applied, and the engine counts a
    /// `bad_timestamp` protocol error. A timestamp that is not a string
    /// (or is missing) is still [`DecodeError::WrongType`] / `MissingField`.
    pub timestamp_valid: bool,
}

/// Typed payloads of PROTOCOL.md §4.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum EventKind {
    RunStarted {
        title: Option<String>,
    },
    RunCompleted {
        status: RunStatus,
        error: Option<String>,
    },
    SupervisorCompleted {
        summary: Option<String>,
    },
    WorkerStarted {
        worker_id: String,
        job_id: Option<String>,
        name: Option<String>,
    },
    WorkerJobAssigned {
        worker_id: String,
        job_id: String,
    },
    WorkerCompleted {
        worker_id: Option<String>,
        job_id: Option<String>,
        status: Outcome,
        error: Option<String>,
    },
    ToolStarted {
        worker_id: Option<String>,
        job_id: Option<String>,
        tool_call_id: String,
        name: String,
    },
    ToolCompleted {
        worker_id: Option<String>,
        job_id: Option<String>,
        tool_call_id: String,
        ok: bool,
        error: Option<String>,
        duration_ms: Option<f64>,
    },
    MessageCreated {
        message_id: String,
        role: MessageRole,
        client_request_id: Option<String>,
        reply_to: Option<String>,
        content: Option<String>,
    },
    MessageDelta {
        message_id: String,
        delta: String,
    },
    MessageCompleted {
        message_id: String,
        finish_reason: String,
        usage: Option<Usage>,
        fallback: Option<String>,
    },
    MessageFailed {
        message_id: String,
        error: String,
    },
    /// §8: someone asked to stop the run (or, with `reply_to`, one reply).
    CancelRequested {
        client_request_id: Option<String>,
        reason: Option<String>,
        reply_to: Option<String>,
    },
    /// §3: not a log entry; replaces the state up to and including `event_id`.
    ///
    /// The payload's `state` as JSON text, not yet checked against the §6
    /// shape: the engine turns it into a state with
    /// `RunState::from_wire_json` (runstream's `core::state`),
    /// and a state that fails there is an invalid payload that consumes no id.
    Snapshot(Box<str>),
    /// A type this client does not know: consumes its id, no effect.
    Unknown,
}

/// Token usage of a completed message.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(serde::Deserialize, serde::Serialize)
)]
#[allow(missing_docs)]
pub struct Usage {
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
}

impl EventKind {
    /// The `job_id` an event needs mapped before it can apply, if it carries only a job id.
    pub fn job_only(&self) -> Option<&str> {
        match self {
            Self::WorkerCompleted {
                worker_id: None,
                job_id: Some(j),
                ..
            }
            | Self::ToolStarted {
                worker_id: None,
                job_id: Some(j),
                ..
            }
            | Self::ToolCompleted {
                worker_id: None,
                job_id: Some(j),
                ..
            } => Some(j),
            _ => None,
        }
    }
}

/// Decodes and validates one envelope for the run `expected_run`.
///
/// One pass of [`Scanner`] over the text collects the five §1 fields (the
/// last occurrence of a duplicated key wins, unknown fields are skipped
/// without allocating, strings are borrowed unless escaped), a second pass
/// over the payload alone reads the fields its type names. A text that is
/// not JSON is [`DecodeError::NotJson`] whatever else is wrong with it.
pub fn decode_envelope(text: &str, expected_run: &str) -> Result<Envelope, DecodeError> {
    let mut s = Scanner::new(text);
    let top = s.peek().map_err(not_json)?;
    if top != Token::Object {
        s.skip().and_then(|()| s.end()).map_err(not_json)?;
        return Err(DecodeError::NotObject);
    }
    let (mut id, mut run, mut ty, mut ts, mut payload) = (
        Field::Absent,
        Field::Absent,
        Field::Absent,
        Field::Absent,
        Field::Absent,
    );
    // The payload's fields, read in the same pass when `type` came before it
    // (what servers write), with the type they were read for.
    let mut early = Fields::new();
    let mut early_type: Option<Cow<'_, str>> = None;
    s.object().map_err(not_json)?;
    while let Some(key) = s.key_inline().map_err(not_json)? {
        if key == "payload" {
            if let (Field::Str(t), Ok(Token::Object)) = (&ty, s.peek()) {
                if let Some(names) = names_of(t) {
                    let start = s.pos();
                    if early_type.replace(t.clone()).is_some() {
                        // A second `payload`: start from empty fields again.
                        early = Fields::new();
                    }
                    early.read(&mut s, names).map_err(not_json)?;
                    payload = Field::Raw(Token::Object, text.get(start..s.pos()).unwrap_or("{}"));
                    continue;
                }
            }
            early_type = None;
        }
        // The five names differ in length: at most one comparison per key.
        let slot = match key.len() {
            8 if key == "event_id" => &mut id,
            6 if key == "run_id" => &mut run,
            4 if key == "type" => &mut ty,
            9 if key == "timestamp" => &mut ts,
            7 if key == "payload" => &mut payload,
            _ => {
                s.skip().map_err(not_json)?;
                continue;
            }
        };
        *slot = Field::read_inline(&mut s).map_err(not_json)?;
    }
    s.end().map_err(not_json)?;

    let event_id = match id {
        Field::Absent | Field::Null => return Err(DecodeError::MissingField("event_id")),
        Field::Num(Number::U64(id)) if (1..=MAX_EVENT_ID).contains(&id) => id,
        Field::Num(Number::U64(_) | Number::I64(_)) => return Err(DecodeError::IdOutOfRange),
        // A float: integral values are out of range, others are not integers.
        Field::Num(Number::F64(f)) if f.fract() == 0.0 => return Err(DecodeError::IdOutOfRange),
        _ => return Err(DecodeError::WrongType("event_id")),
    };
    let run_id = run.required_str("run_id")?;
    let chars = run_id.chars().count();
    if chars == 0 || chars > MAX_RUN_ID_CHARS {
        return Err(DecodeError::BadRunId);
    }
    if run_id != expected_run {
        return Err(DecodeError::ForeignRun);
    }
    let event_type = ty.required_str("type")?;
    let timestamp_valid = is_iso8601_datetime(&ts.required_str("timestamp")?);
    let payload = match payload {
        Field::Absent | Field::Null => return Err(DecodeError::MissingField("payload")),
        Field::Raw(Token::Object, raw) => raw,
        _ => return Err(DecodeError::WrongType("payload")),
    };
    let decoded = match early_type {
        // Read for the type that stands (a later duplicate `type` may have replaced it).
        Some(t) if t == event_type => decode_fields(&event_type, &mut early),
        _ => decode_payload(&event_type, payload),
    };
    let kind = decoded.map_err(|reason| DecodeError::InvalidPayload {
        event_id,
        event_type: event_type.into_owned(),
        reason,
    })?;
    Ok(Envelope {
        event_id,
        kind,
        timestamp_valid,
    })
}

fn not_json(e: JsonError) -> DecodeError {
    DecodeError::NotJson(e.describe())
}

/// [`decode_envelope`] for an already parsed serde_json value.
#[cfg(not(target_arch = "wasm32"))]
pub fn decode_envelope_value(
    value: serde_json::Value,
    expected_run: &str,
) -> Result<Envelope, DecodeError> {
    decode_envelope(&value.to_string(), expected_run)
}

/// The event types of PROTOCOL §3–§4.
pub const KNOWN_TYPES: [&str; 14] = [
    "run.started",
    "run.completed",
    "supervisor.completed",
    "worker.started",
    "worker.job_assigned",
    "worker.completed",
    "tool.started",
    "tool.completed",
    "message.created",
    "message.delta",
    "message.completed",
    "message.failed",
    "run.cancel_requested",
    "snapshot",
];

trait RequiredStr<'a> {
    fn required_str(self, field: &'static str) -> Result<Cow<'a, str>, DecodeError>;
}

impl<'a> RequiredStr<'a> for Field<'a> {
    fn required_str(self, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        match self {
            Self::Absent | Self::Null => Err(DecodeError::MissingField(field)),
            Self::Str(s) => Ok(s),
            _ => Err(DecodeError::WrongType(field)),
        }
    }
}

/// `` `k` `` followed by `rule`, without `format!`.
fn reason(k: &str, rule: &str) -> String {
    ["`", k, "` ", rule].concat()
}

/// Most payload fields a type reads (`tool.completed`'s six).
const MAX_FIELDS: usize = 6;

/// The payload fields a type reads (the last occurrence of a key wins).
struct Fields<'a> {
    names: &'static [&'static str],
    values: [Field<'a>; MAX_FIELDS],
}

impl<'a> Fields<'a> {
    #[inline]
    fn new() -> Self {
        Self {
            names: &[],
            values: [const { Field::Absent }; MAX_FIELDS],
        }
    }

    /// Reads the fields `names` of the object the scanner is at, skipping
    /// the others, into a fresh [`Fields::new`] (in place: the struct is too
    /// big to move on a hot path).
    fn read(
        &mut self,
        s: &mut Scanner<'a>,
        names: &'static [&'static str],
    ) -> Result<(), JsonError> {
        self.names = names;
        s.object()?;
        while let Some(key) = s.key_inline()? {
            match names.iter().position(|n| *n == key) {
                Some(i) => {
                    let v = Field::read_inline(s)?;
                    if let Some(slot) = self.values.get_mut(i) {
                        *slot = v;
                    }
                }
                None => s.skip()?,
            }
        }
        Ok(())
    }

    /// [`Self::read`] of an object's text (valid JSON: the envelope pass checked it).
    fn read_text(&mut self, raw: &'a str, names: &'static [&'static str]) -> Result<(), String> {
        self.read(&mut Scanner::new(raw), names)
            .map_err(|e| e.message().into())
    }

    #[inline]
    fn take(&mut self, k: &str) -> Field<'a> {
        match self.names.iter().position(|n| *n == k) {
            Some(i) => self
                .values
                .get_mut(i)
                .map_or(Field::Absent, |v| std::mem::replace(v, Field::Absent)),
            None => Field::Absent,
        }
    }

    #[inline]
    fn opt_str(&mut self, k: &str) -> Result<Option<String>, String> {
        match self.take(k) {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s.into_owned())),
            _ => Err(reason(k, "must be a string")),
        }
    }
    #[inline]
    fn str(&mut self, k: &str) -> Result<String, String> {
        self.opt_str(k)?.ok_or_else(|| reason(k, "is required"))
    }
    #[inline]
    fn id(&mut self, k: &str) -> Result<String, String> {
        let s = self.str(k)?;
        if s.is_empty() {
            return Err(reason(k, "must not be empty"));
        }
        Ok(s)
    }
    fn opt_id(&mut self, k: &str) -> Result<Option<String>, String> {
        match self.opt_str(k)? {
            Some(s) if s.is_empty() => Err(reason(k, "must not be empty")),
            other => Ok(other),
        }
    }
    fn opt_num(&mut self, k: &str) -> Result<Option<f64>, String> {
        match self.take(k) {
            Field::Absent | Field::Null => Ok(None),
            Field::Num(n) => Ok(Some(n.as_f64())),
            _ => Err(reason(k, "must be a number")),
        }
    }
}

/// `usage`: an object with the numbers `prompt_tokens` and `completion_tokens`.
fn usage(field: Field<'_>) -> Result<Option<Usage>, String> {
    let raw = match field {
        Field::Absent | Field::Null => return Ok(None),
        Field::Raw(Token::Object, raw) => raw,
        _ => return Err(reason("usage", "must be an object")),
    };
    let mut f = Fields::new();
    f.read_text(raw, &["prompt_tokens", "completion_tokens"])?;
    let mut num = |k: &str| match f.opt_num(k) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(["`usage`: missing field `", k, "`"].concat()),
        Err(e) => Err(["`usage`: ", &e].concat()),
    };
    Ok(Some(Usage {
        prompt_tokens: num("prompt_tokens")?,
        completion_tokens: num("completion_tokens")?,
    }))
}

/// The payload of `event_type` from its object text.
fn decode_payload(event_type: &str, payload: &str) -> Result<EventKind, String> {
    if event_type == "snapshot" {
        return snapshot_state(payload);
    }
    match names_of(event_type) {
        Some(names) => {
            let mut f = Fields::new();
            f.read_text(payload, names)?;
            decode_fields(event_type, &mut f)
        }
        None => Ok(EventKind::Unknown),
    }
}

/// The payload fields a known type reads (`None` for `snapshot`, whose state
/// is kept as text, and for unknown types, which read nothing).
fn names_of(event_type: &str) -> Option<&'static [&'static str]> {
    // Arms are tried in order: the type of almost every event first.
    Some(match event_type {
        "message.delta" => &["message_id", "delta"],
        "run.started" => &["title"],
        "run.completed" => &["status", "error"],
        "supervisor.completed" => &["summary"],
        "worker.started" => &["worker_id", "job_id", "name"],
        "worker.job_assigned" => &["worker_id", "job_id"],
        "worker.completed" => &["worker_id", "job_id", "status", "error"],
        "tool.started" => &["worker_id", "job_id", "tool_call_id", "name"],
        "tool.completed" => &[
            "worker_id",
            "job_id",
            "tool_call_id",
            "status",
            "error",
            "duration_ms",
        ],
        "message.created" => &[
            "message_id",
            "role",
            "client_request_id",
            "reply_to",
            "content",
        ],
        "message.completed" => &["message_id", "finish_reason", "usage", "fallback"],
        "message.failed" => &["message_id", "error"],
        "run.cancel_requested" => &["client_request_id", "reason", "reply_to"],
        _ => return None,
    })
}

/// The typed payload of a known type from its fields.
fn decode_fields(event_type: &str, f: &mut Fields<'_>) -> Result<EventKind, String> {
    // Arms are tried in order: the type of almost every event first.
    let kind = match event_type {
        "message.delta" => EventKind::MessageDelta {
            message_id: f.id("message_id")?,
            delta: f.str("delta")?,
        },
        "run.started" => EventKind::RunStarted {
            title: f.opt_str("title")?,
        },
        "run.completed" => {
            let status = match f.str("status")?.as_str() {
                "succeeded" => RunStatus::Succeeded,
                "failed" => RunStatus::Failed,
                "cancelled" => RunStatus::Cancelled,
                other => return Err(["unknown run status `", other, "`"].concat()),
            };
            EventKind::RunCompleted {
                status,
                error: f.opt_str("error")?,
            }
        }
        "supervisor.completed" => EventKind::SupervisorCompleted {
            summary: f.opt_str("summary")?,
        },
        "run.cancel_requested" => EventKind::CancelRequested {
            client_request_id: f.opt_id("client_request_id")?,
            reason: f.opt_str("reason")?,
            reply_to: f.opt_id("reply_to")?,
        },
        "worker.started" => EventKind::WorkerStarted {
            worker_id: f.id("worker_id")?,
            job_id: f.opt_id("job_id")?,
            name: f.opt_str("name")?,
        },
        "worker.job_assigned" => EventKind::WorkerJobAssigned {
            worker_id: f.id("worker_id")?,
            job_id: f.id("job_id")?,
        },
        "worker.completed" => {
            let worker_id = f.opt_id("worker_id")?;
            let job_id = f.opt_id("job_id")?;
            if worker_id.is_none() && job_id.is_none() {
                return Err("needs `worker_id` or `job_id`".into());
            }
            let status = match f.str("status")?.as_str() {
                "succeeded" => WorkerStatus::Succeeded,
                "failed" => WorkerStatus::Failed,
                "cancelled" => WorkerStatus::Cancelled,
                other => return Err(["unknown worker status `", other, "`"].concat()),
            };
            EventKind::WorkerCompleted {
                worker_id,
                job_id,
                status,
                error: f.opt_str("error")?,
            }
        }
        "tool.started" | "tool.completed" => {
            let worker_id = f.opt_id("worker_id")?;
            let job_id = f.opt_id("job_id")?;
            if worker_id.is_none() && job_id.is_none() {
                return Err("needs `worker_id` or `job_id`".into());
            }
            let tool_call_id = f.id("tool_call_id")?;
            if event_type == "tool.started" {
                EventKind::ToolStarted {
                    worker_id,
                    job_id,
                    tool_call_id,
                    name: f.str("name")?,
                }
            } else {
                let ok = match f.str("status")?.as_str() {
                    "ok" => true,
                    "error" => false,
                    other => return Err(["unknown tool status `", other, "`"].concat()),
                };
                EventKind::ToolCompleted {
                    worker_id,
                    job_id,
                    tool_call_id,
                    ok,
                    error: f.opt_str("error")?,
                    duration_ms: f.opt_num("duration_ms")?,
                }
            }
        }
        "message.created" => {
            let message_id = f.id("message_id")?;
            let name = f.str("role")?;
            let role =
                MessageRole::parse(&name).ok_or_else(|| ["unknown role `", &name, "`"].concat())?;
            EventKind::MessageCreated {
                message_id,
                role,
                client_request_id: f.opt_id("client_request_id")?,
                reply_to: f.opt_id("reply_to")?,
                content: f.opt_str("content")?,
            }
        }
        "message.completed" => {
            let usage = usage(f.take("usage"))?;
            EventKind::MessageCompleted {
                message_id: f.id("message_id")?,
                finish_reason: f.str("finish_reason")?,
                usage,
                fallback: f.opt_str("fallback")?,
            }
        }
        "message.failed" => EventKind::MessageFailed {
            message_id: f.id("message_id")?,
            error: f.str("error")?,
        },
        _ => unreachable_type(),
    };
    Ok(kind)
}

/// The payload of a `snapshot` event: its `state` as JSON text (the last
/// occurrence wins), checked where it is installed.
fn snapshot_state(payload: &str) -> Result<EventKind, String> {
    let mut s = Scanner::new(payload);
    let bad = |e: JsonError| String::from(e.message());
    let mut state = None;
    s.object().map_err(bad)?;
    while let Some(key) = s.key().map_err(bad)? {
        if key == "state" {
            state = Some(s.raw().map_err(bad)?);
        } else {
            s.skip().map_err(bad)?;
        }
    }
    state
        .map(|t| EventKind::Snapshot(t.into()))
        .ok_or_else(|| "`state` is required".into())
}

/// The match arms of [`decode_payload`] cover the types its name table lists.
fn unreachable_type() -> EventKind {
    EventKind::Unknown
}

/// True when `s` is an ISO 8601 date-time, RFC 3339's among them (PROTOCOL
/// §1: "ISO 8601 / RFC 3339 string", informational only).
///
/// A date in the extended (`YYYY-MM-DD`) or basic (`YYYYMMDD`) format, then
/// `T`, `t` or a space, then a time of day in the same format: `hh`,
/// optionally minutes, seconds and a fraction (`.` or `,`, at least one
/// digit) of the last unit given, then optionally an offset: `Z`/`z`,
/// `±hh`, `±hhmm` or `±hh:mm`. A missing offset (local time: Python's
/// `isoformat()` of a naive datetime, Java's `LocalDateTime`) is valid.
/// Ranges are checked per field (month 1–12, day 1–31, hour ≤ 24, minute ≤
/// 59, second ≤ 60 for a leap second); the calendar (30 February) is not.
pub fn is_iso8601_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    // Two digits at `i` (advancing past them), or `None`.
    let two = |i: &mut usize| -> Option<u32> {
        match (b.get(*i), b.get(*i + 1)) {
            (Some(&h), Some(&l)) if h.is_ascii_digit() && l.is_ascii_digit() => {
                *i += 2;
                Some(u32::from(h - b'0') * 10 + u32::from(l - b'0'))
            }
            _ => None,
        }
    };
    let eat = |i: &mut usize, c: u8| -> bool {
        let hit = b.get(*i) == Some(&c);
        *i += usize::from(hit);
        hit
    };
    // The date; `extended` fixes the separators of the time too.
    if !b.iter().take(4).all(u8::is_ascii_digit) || b.len() < 4 {
        return false;
    }
    i += 4;
    let extended = eat(&mut i, b'-');
    let Some(month) = two(&mut i) else {
        return false;
    };
    if extended && !eat(&mut i, b'-') {
        return false;
    }
    let Some(day) = two(&mut i) else {
        return false;
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    if !matches!(b.get(i), Some(b'T' | b't' | b' ')) {
        return false;
    }
    i += 1;
    // The time: hh[:mm[:ss]] (extended) or hh[mm[ss]] (basic), then a fraction.
    let limits = [24, 59, 60];
    let mut units = 0;
    for (n, limit) in limits.into_iter().enumerate() {
        let mut j = i;
        if n > 0 && extended && !eat(&mut j, b':') {
            break;
        }
        match two(&mut j) {
            Some(v) if v <= limit => {
                i = j;
                units += 1;
            }
            Some(_) => return false,
            None if n == 0 || (extended && j > i) => return false,
            None => break,
        }
    }
    if units == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'.' | b',')) {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let Some(rest) = b.get(i..) else {
        return false;
    };
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', ..] => {
            let mut j = i + 1;
            let h = two(&mut j);
            let colon = eat(&mut j, b':');
            let m = if j == b.len() && !colon {
                Some(0)
            } else {
                two(&mut j)
            };
            j == b.len() && matches!((h, m), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "run_1";

    fn env(id: &str, ty: &str, payload: &str) -> String {
        format!(
            r#"{{"event_id":{id},"run_id":"run_1","type":"{ty}","timestamp":"2026-11-22T12:00:00.123Z","payload":{payload}}}"#
        )
    }

    #[test]
    fn decodes_every_type() {
        let cases = [
            ("run.started", r#"{"title":"t"}"#),
            ("run.completed", r#"{"status":"succeeded"}"#),
            ("supervisor.completed", r#"{}"#),
            (
                "worker.started",
                r#"{"worker_id":"w1","job_id":"j1","name":"n"}"#,
            ),
            ("worker.job_assigned", r#"{"worker_id":"w1","job_id":"j1"}"#),
            (
                "worker.completed",
                r#"{"job_id":"j1","status":"failed","error":"x"}"#,
            ),
            (
                "tool.started",
                r#"{"worker_id":"w1","tool_call_id":"t1","name":"fetch"}"#,
            ),
            (
                "tool.completed",
                r#"{"job_id":"j1","tool_call_id":"t1","status":"error","duration_ms":12.5}"#,
            ),
            (
                "message.created",
                r#"{"message_id":"m1","role":"assistant","reply_to":"c1"}"#,
            ),
            ("message.delta", r#"{"message_id":"m1","delta":"Hel"}"#),
            (
                "message.completed",
                r#"{"message_id":"m1","finish_reason":"stop","usage":{"prompt_tokens":3,"completion_tokens":4},"fallback":"m2"}"#,
            ),
            ("message.failed", r#"{"message_id":"m1","error":"boom"}"#),
            (
                "snapshot",
                r#"{"state":{"run_id":"run_1","cursor":3,"status":"running","workers":[],"messages":[],"supervisor":{"completed":false,"summary":null}}}"#,
            ),
            ("future.thing", r#"{"x":1}"#),
        ];
        for (ty, p) in cases {
            let e = decode_envelope(&env("5", ty, p), RUN);
            assert!(e.is_ok(), "{ty}: {e:?}");
        }
        let e = decode_envelope(&env("5", "future.thing", "{}"), RUN).unwrap();
        assert_eq!(e.kind, EventKind::Unknown);
    }

    /// PROTOCOL §1: the timestamp is informational. One that is a string but
    /// not ISO 8601 does not drop the event; it is flagged (and counted by
    /// the engine). One that is not a string is a wrong type.
    #[test]
    fn a_timestamp_that_is_not_iso8601_is_flagged_not_fatal() {
        let text = r#"{"event_id":1,"run_id":"run_1","type":"run.started","timestamp":"yesterday","payload":{}}"#;
        let e = decode_envelope(text, RUN).unwrap();
        assert!(!e.timestamp_valid);
        assert_eq!(e.kind, EventKind::RunStarted { title: None });
        let ok = text.replace("yesterday", "2026-11-22T12:00:00Z");
        assert!(decode_envelope(&ok, RUN).unwrap().timestamp_valid);
        let num = text.replace(r#""yesterday""#, "1764000000");
        assert_eq!(
            decode_envelope(&num, RUN).unwrap_err(),
            DecodeError::WrongType("timestamp")
        );
    }

    #[test]
    fn envelope_failures_are_typed() {
        use DecodeError::*;
        let ts = "2026-11-22T12:00:00Z";
        let cases: Vec<(String, DecodeError)> = vec![
            ("not json".into(), NotJson(String::new())),
            ("[1,2]".into(), NotObject),
            (format!(r#"{{"run_id":"run_1","type":"x","timestamp":"{ts}","payload":{{}}}}"#), MissingField("event_id")),
            (env("\"5\"", "x", "{}"), WrongType("event_id")),
            (env("1.5", "x", "{}"), WrongType("event_id")),
            (env("0", "x", "{}"), IdOutOfRange),
            (env("-3", "x", "{}"), IdOutOfRange),
            (env("9007199254740992", "x", "{}"), IdOutOfRange),
            (env("1e300", "x", "{}"), IdOutOfRange),
            (format!(r#"{{"event_id":1,"run_id":"other","type":"x","timestamp":"{ts}","payload":{{}}}}"#), ForeignRun),
            (format!(r#"{{"event_id":1,"run_id":"","type":"x","timestamp":"{ts}","payload":{{}}}}"#), BadRunId),
            (format!(r#"{{"event_id":1,"run_id":"{}","type":"x","timestamp":"{ts}","payload":{{}}}}"#, "r".repeat(129)), BadRunId),
            (format!(r#"{{"event_id":1,"run_id":"run_1","timestamp":"{ts}","payload":{{}}}}"#), MissingField("type")),
            (format!(r#"{{"event_id":1,"run_id":"run_1","type":7,"timestamp":"{ts}","payload":{{}}}}"#), WrongType("type")),
            (r#"{"event_id":1,"run_id":"run_1","type":"x","timestamp":{"$date":1},"payload":{}}"#.to_string(), WrongType("timestamp")),
            (format!(r#"{{"event_id":1,"run_id":"run_1","type":"x","timestamp":"{ts}"}}"#), MissingField("payload")),
            (format!(r#"{{"event_id":1,"run_id":"run_1","type":"x","timestamp":"{ts}","payload":[1]}}"#), WrongType("payload")),
            (r#"{"event_id":1,"payload":NaN}"#.into(), NotJson(String::new())),
        ];
        for (text, want) in cases {
            let got = decode_envelope(&text, RUN).unwrap_err();
            assert_eq!(got.kind(), want.kind(), "{text}: {got:?}");
            if let MissingField(_) | WrongType(_) = want {
                assert_eq!(got, want, "{text}");
            }
        }
    }

    #[test]
    fn escapes_order_duplicates_and_unknown_fields() {
        let delta = |text: &str| match decode_envelope(text, RUN).map(|e| e.kind) {
            Ok(EventKind::MessageDelta { message_id, delta }) => (message_id, delta),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            delta(&env(
                "7",
                "message.delta",
                r#"{"message_id":"m1","delta":"Hi \"there\" \u00e9 \ud83d\ude00"}"#
            )),
            ("m1".into(), "Hi \"there\" é 😀".into())
        );
        // Any order, unknown fields (of any shape) skipped, in the envelope too.
        let text = r#"{"x":{"y":[1,"\n"]},"payload":{"delta":"x","z":[{}],"message_id":"m2"},"timestamp":"2026-11-22T12:00:00Z","type":"message.delta","run_id":"run_1","event_id":9,"v":2}"#;
        assert_eq!(delta(text), ("m2".into(), "x".into()));
        // A duplicated key: the last occurrence wins (as in a serde_json map).
        let text = r#"{"event_id":1,"event_id":4,"run_id":"run_1","type":"message.delta","timestamp":"2026-11-22T12:00:00Z","payload":{"message_id":"a","delta":"1","delta":"2"}}"#;
        assert_eq!(decode_envelope(text, RUN).map(|e| e.event_id), Ok(4));
        assert_eq!(delta(text), ("a".into(), "2".into()));
        // A repeated payload replaces the first one whole, fields and all.
        let text = r#"{"event_id":4,"run_id":"run_1","type":"message.delta","timestamp":"2026-11-22T12:00:00Z","payload":{"message_id":"a","delta":"1"},"payload":{"message_id":"b"}}"#;
        assert_eq!(
            decode_envelope(text, RUN).map_err(|e| e.kind()),
            Err("invalid_payload")
        );
        // A syntax error anywhere, even after a complete envelope, is `NotJson`.
        for bad in [
            env("1", "message.delta", r#"{"message_id":"m","delta":"\x"}"#),
            env(
                "1",
                "message.delta",
                r#"{"message_id":"m","delta":"\ud800"}"#,
            ),
            env("1", "message.delta", r#"{"message_id":"m","delta":"x"}"#) + "}",
            format!("\u{feff}{}", env("1", "x", "{}")),
            env("1", "x", r#"{"a":[1,]}"#),
        ] {
            let got = decode_envelope(&bad, RUN).unwrap_err();
            assert_eq!(got.kind(), "not_json", "{bad}");
        }
    }

    #[test]
    fn payload_failures_keep_the_id() {
        let cases = [
            ("tool.started", r#"{"tool_call_id":"t","name":"n"}"#),
            (
                "tool.completed",
                r#"{"worker_id":"w","tool_call_id":"t","status":"maybe"}"#,
            ),
            ("worker.completed", r#"{"worker_id":"w"}"#),
            ("worker.started", r#"{"worker_id":""}"#),
            ("message.delta", r#"{"message_id":"m","delta":5}"#),
            ("message.created", r#"{"message_id":"m","role":"robot"}"#),
            ("run.completed", r#"{"status":"done"}"#),
            ("snapshot", r#"{"status":"running"}"#),
        ];
        for (ty, p) in cases {
            match decode_envelope(&env("9", ty, p), RUN) {
                Err(DecodeError::InvalidPayload { event_id: 9, .. }) => {}
                other => panic!("{ty}: {other:?}"),
            }
        }
    }

    #[test]
    fn snapshot_state_is_handed_on_unchecked() {
        // The §6 shape is checked where the state is installed, not here.
        let e = decode_envelope(&env("9", "snapshot", r#"{"state":{"cursor":"x"}}"#), RUN);
        assert_eq!(
            e.map(|e| e.kind),
            Ok(EventKind::Snapshot(r#"{"cursor":"x"}"#.into()))
        );
    }

    #[test]
    fn iso8601_datetimes() {
        for ok in [
            "2026-11-22T12:00:00Z",
            "2026-11-22T12:00:00.123456Z",
            "2026-11-22t12:00:00+05:30",
            "2026-11-22T23:59:60-00:00",
            // ISO 8601 without an offset (local time): Python, Postgres, Java.
            "2026-11-22T12:00:00",
            "2026-11-22T12:00:00.123456",
            "2026-11-22 12:00:00.5",
            // Offsets without a colon or minutes, a comma fraction, reduced precision.
            "2026-11-22T12:00:00+0530",
            "2026-11-22T12:00:00-08",
            "2026-11-22T12:00:00,5Z",
            "2026-11-22T12:00Z",
            "2026-11-22T12:00.5",
            "2026-11-22T12",
            "2026-11-22T24:00:00Z",
            // The basic format.
            "20261122T120000Z",
            "20261122T120000.25+0100",
            "20261122T1200",
        ] {
            assert!(is_iso8601_datetime(ok), "{ok}");
        }
        for bad in [
            "",
            "yesterday",
            "2026",
            "2026-11-22",
            "2026-11-22T",
            "2026-11-22T1",
            "2026-13-22T12:00:00Z",
            "2026-11-00T12:00:00Z",
            "2026-11-22T25:00:00Z",
            "2026-11-22T12:60:00Z",
            "2026-11-22T12:00:61Z",
            "2026-11-22T12:0",
            "2026-11-22T12:00:00.Z",
            "2026-11-22T12:00:00+053",
            "2026-11-22T12:00:00+05:3",
            "2026-11-22T12:00:00+24:00",
            "2026-11-22T12:00:00+05:60",
            "2026-11-22T12:00:00+",
            "2026-11-22T12:00:00 Z",
            "2026-11-22T12:00:00Zjunk",
            "2026/11/22T12:00:00Z",
            "2026-1122T12:00:00Z",
            "２０２６-11-22T12:00:00Z",
        ] {
            assert!(!is_iso8601_datetime(bad), "{bad}");
        }
    }
}
