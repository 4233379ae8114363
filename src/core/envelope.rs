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

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::DecodeError;
pub use super::vocab::Outcome;
use super::vocab::{RunStatus, WorkerStatus};

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
        role: String,
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
    /// §3: not a log entry; replaces the state up to and including `event_id`.
    ///
    /// The payload's `state` as parsed JSON, not yet checked against the §6
    /// shape: the engine turns it into a state with
    /// [`RunState::from_wire`](crate::core::state::RunState::from_wire), and a
    /// state that fails there is an invalid payload that consumes no id.
    Snapshot(Box<Value>),
    /// A type this client does not know: consumes its id, no effect.
    Unknown,
}

/// Token usage of a completed message.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
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
pub fn decode_envelope(text: &str, expected_run: &str) -> Result<Envelope, DecodeError> {
    if let Some(env) = decode_fast(text, expected_run) {
        return Ok(env);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    decode_envelope_value(value, expected_run)
}

/// The envelope with borrowed strings and the payload left unparsed.
#[derive(Deserialize)]
struct FastEnvelope<'a> {
    event_id: u64,
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct FastDelta<'a> {
    #[serde(borrow)]
    message_id: Cow<'a, str>,
    #[serde(borrow)]
    delta: Cow<'a, str>,
}

/// The hot path: valid envelopes of the high-frequency types (`message.delta`,
/// unknown types) decoded without building a JSON tree. `None` sends the
/// frame down the full path, which also produces the precise error.
fn decode_fast(text: &str, expected_run: &str) -> Option<Envelope> {
    let f: FastEnvelope<'_> = serde_json::from_str(text).ok()?;
    let run_ok = f.run_id == expected_run
        && !f.run_id.is_empty()
        && f.run_id.chars().count() <= MAX_RUN_ID_CHARS;
    if !(1..=MAX_EVENT_ID).contains(&f.event_id) || !run_ok || !is_rfc3339(&f.timestamp) {
        return None;
    }
    let raw = f.payload.get();
    if !raw.starts_with('{') {
        return None;
    }
    let kind = match &*f.event_type {
        "message.delta" => {
            let d: FastDelta<'_> = serde_json::from_str(raw).ok()?;
            if d.message_id.is_empty() {
                return None;
            }
            EventKind::MessageDelta {
                message_id: d.message_id.into_owned(),
                delta: d.delta.into_owned(),
            }
        }
        t if !KNOWN_TYPES.contains(&t) => EventKind::Unknown,
        _ => return None,
    };
    Some(Envelope {
        event_id: f.event_id,
        kind,
    })
}

/// The event types of PROTOCOL §3–§4.
pub const KNOWN_TYPES: [&str; 13] = [
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
    "snapshot",
];

/// [`decode_envelope`] for an already parsed JSON value (WebSocket frames).
pub fn decode_envelope_value(value: Value, expected_run: &str) -> Result<Envelope, DecodeError> {
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotObject);
    };
    let event_id = match obj.get("event_id") {
        None | Some(Value::Null) => return Err(DecodeError::MissingField("event_id")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if (1..=MAX_EVENT_ID).contains(&id) => id,
            Some(_) => return Err(DecodeError::IdOutOfRange),
            None if n.as_i64().is_some() => return Err(DecodeError::IdOutOfRange),
            None => {
                // A float: integral values beyond u64 are out of range, others are not integers.
                return Err(match n.as_f64() {
                    Some(f) if f.fract() == 0.0 => DecodeError::IdOutOfRange,
                    _ => DecodeError::WrongType("event_id"),
                });
            }
        },
        Some(_) => return Err(DecodeError::WrongType("event_id")),
    };
    let run_id = take_str(&mut obj, "run_id")?;
    let chars = run_id.chars().count();
    if chars == 0 || chars > MAX_RUN_ID_CHARS {
        return Err(DecodeError::BadRunId);
    }
    if run_id != expected_run {
        return Err(DecodeError::ForeignRun);
    }
    let event_type = take_str(&mut obj, "type")?;
    let timestamp = take_str(&mut obj, "timestamp")?;
    if !is_rfc3339(&timestamp) {
        return Err(DecodeError::BadTimestamp);
    }
    let payload = match obj.remove("payload") {
        None | Some(Value::Null) => return Err(DecodeError::MissingField("payload")),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(DecodeError::WrongType("payload")),
    };
    let kind =
        decode_payload(&event_type, payload).map_err(|reason| DecodeError::InvalidPayload {
            event_id,
            event_type,
            reason,
        })?;
    Ok(Envelope { event_id, kind })
}

fn take_str(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, DecodeError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Err(DecodeError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::WrongType(field)),
    }
}

/// Reads typed payload fields with precise error messages.
struct Fields(Map<String, Value>);

impl Fields {
    fn opt_str(&mut self, k: &str) -> Result<Option<String>, String> {
        match self.0.remove(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    }
    fn str(&mut self, k: &str) -> Result<String, String> {
        self.opt_str(k)?.ok_or_else(|| format!("`{k}` is required"))
    }
    fn id(&mut self, k: &str) -> Result<String, String> {
        let s = self.str(k)?;
        if s.is_empty() {
            return Err(format!("`{k}` must not be empty"));
        }
        Ok(s)
    }
    fn opt_id(&mut self, k: &str) -> Result<Option<String>, String> {
        match self.opt_str(k)? {
            Some(s) if s.is_empty() => Err(format!("`{k}` must not be empty")),
            other => Ok(other),
        }
    }
    fn opt_num(&mut self, k: &str) -> Result<Option<f64>, String> {
        match self.0.remove(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(format!("`{k}` must be a number")),
        }
    }
}

fn decode_payload(event_type: &str, payload: Map<String, Value>) -> Result<EventKind, String> {
    let mut f = Fields(payload);
    let kind = match event_type {
        "run.started" => EventKind::RunStarted {
            title: f.opt_str("title")?,
        },
        "run.completed" => {
            let status = match f.str("status")?.as_str() {
                "succeeded" => RunStatus::Succeeded,
                "failed" => RunStatus::Failed,
                "cancelled" => RunStatus::Cancelled,
                other => return Err(format!("unknown run status `{other}`")),
            };
            EventKind::RunCompleted {
                status,
                error: f.opt_str("error")?,
            }
        }
        "supervisor.completed" => EventKind::SupervisorCompleted {
            summary: f.opt_str("summary")?,
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
                other => return Err(format!("unknown worker status `{other}`")),
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
                    other => return Err(format!("unknown tool status `{other}`")),
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
            let role = f.str("role")?;
            if !matches!(role.as_str(), "user" | "assistant" | "system" | "tool") {
                return Err(format!("unknown role `{role}`"));
            }
            EventKind::MessageCreated {
                message_id,
                role,
                client_request_id: f.opt_id("client_request_id")?,
                reply_to: f.opt_id("reply_to")?,
                content: f.opt_str("content")?,
            }
        }
        "message.delta" => EventKind::MessageDelta {
            message_id: f.id("message_id")?,
            delta: f.str("delta")?,
        },
        "message.completed" => {
            let usage = match f.0.remove("usage") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    Some(serde_json::from_value::<Usage>(v).map_err(|e| format!("`usage`: {e}"))?)
                }
            };
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
        "snapshot" => {
            let state = f.0.remove("state").ok_or("`state` is required")?;
            EventKind::Snapshot(Box::new(state))
        }
        _ => EventKind::Unknown,
    };
    Ok(kind)
}

/// True when `s` is an RFC 3339 date-time (`2026-11-22T12:00:00.123Z`, `…+01:00`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|x| !x.is_empty() && x.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| -> u32 {
        b.get(r)
            .map(|x| x.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0')))
            .unwrap_or(0)
    };
    if b.len() < 20
        || !digits(0..4)
        || b.get(4) != Some(&b'-')
        || !digits(5..7)
        || b.get(7) != Some(&b'-')
        || !digits(8..10)
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || !digits(11..13)
        || b.get(13) != Some(&b':')
        || !digits(14..16)
        || b.get(16) != Some(&b':')
        || !digits(17..19)
    {
        return false;
    }
    let (month, day, hour, min, sec) =
        (num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i..) {
        Some([b'Z' | b'z']) => true,
        Some([b'+' | b'-', h1, h2, b':', m1, m2]) => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
                && num(i + 1..i + 3) <= 23
                && num(i + 4..i + 6) <= 59
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
            (r#"{"event_id":1,"run_id":"run_1","type":"x","timestamp":"yesterday","payload":{}}"#.to_string(), BadTimestamp),
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
    fn fast_path_agrees_with_the_full_path() {
        let cases = [
            env(
                "7",
                "message.delta",
                r#"{"message_id":"m1","delta":"Hi \"there\" \u00e9"}"#,
            ),
            env("8", "future.thing", r#"{"x":[1,{"y":null}]}"#),
            env(
                "9",
                "message.delta",
                r#"{"delta":"x","message_id":"m2","extra":true}"#,
            ),
        ];
        for text in &cases {
            let fast = decode_fast(text, RUN).expect("fast path taken");
            let full = decode_envelope_value(serde_json::from_str(text).unwrap(), RUN).unwrap();
            assert_eq!(fast, full, "{text}");
        }
        // Anything the fast path cannot vouch for goes down the full path.
        for text in [
            env("1", "message.delta", r#"{"message_id":"","delta":"x"}"#),
            env("1", "message.delta", r#"{"message_id":"m"}"#),
            env(
                "1",
                "tool.started",
                r#"{"worker_id":"w","tool_call_id":"t","name":"n"}"#,
            ),
            env("0", "message.delta", r#"{"message_id":"m","delta":"x"}"#),
            env("1", "future.thing", "[1]"),
        ] {
            assert!(decode_fast(&text, RUN).is_none(), "{text}");
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
        let want = serde_json::json!({"cursor": "x"});
        assert_eq!(e.map(|e| e.kind), Ok(EventKind::Snapshot(Box::new(want))));
    }

    #[test]
    fn rfc3339() {
        for ok in [
            "2026-11-22T12:00:00Z",
            "2026-11-22T12:00:00.123456Z",
            "2026-11-22t12:00:00+05:30",
            "2026-11-22T23:59:60-00:00",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2026-11-22",
            "2026-13-22T12:00:00Z",
            "2026-11-22T12:00:00",
            "2026-11-22T12:00:00.Z",
            "2026-11-22T12:00:00+0530",
            "2026-11-22T25:00:00Z",
            "２０２６-11-22T12:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
