//! The serde_json envelope decoder this crate used before `core::json`
//! (verbatim but for the snapshot state, which it returns as JSON text): the
//! oracle of the differential test of `decode_envelope` in `tests/json.rs`.
#![allow(dead_code, clippy::all)]

use runstream::core::envelope::{
    is_iso8601_datetime, Envelope, EventKind, Usage, MAX_EVENT_ID, MAX_RUN_ID_CHARS,
};
use runstream::core::error::DecodeError;
use runstream::core::vocab::{RunStatus, WorkerStatus};
use serde_json::{Map, Value};

pub fn decode_envelope(text: &str, expected_run: &str) -> Result<Envelope, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    decode_envelope_value(value, expected_run)
}

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
    let timestamp_valid = is_iso8601_datetime(&take_str(&mut obj, "timestamp")?);
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
    Ok(Envelope {
        event_id,
        kind,
        timestamp_valid,
    })
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
            use runstream::core::vocab::MessageRole;
            let role = match f.str("role")?.as_str() {
                "user" => MessageRole::User,
                "assistant" => MessageRole::Assistant,
                "system" => MessageRole::System,
                "tool" => MessageRole::Tool,
                other => return Err(format!("unknown role `{other}`")),
            };
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
        "run.cancel_requested" => EventKind::CancelRequested {
            client_request_id: f.opt_id("client_request_id")?,
            reason: f.opt_str("reason")?,
            reply_to: f.opt_id("reply_to")?,
        },
        "snapshot" => {
            let state = f.0.remove("state").ok_or("`state` is required")?;
            EventKind::Snapshot(state.to_string().into())
        }
        _ => EventKind::Unknown,
    };
    Ok(kind)
}
