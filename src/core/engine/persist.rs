//! What is stored for a refresh, and when (API.md `resume`, "Sends survive everything").
//!
//! The record is `{"v":2,"cursor":N,"state":{…§6…},"parked":[envelope…]}`:
//! - `state` holds the optimistic messages of sends not yet accepted, so a new
//!   page sends them again with the same `client_request_id`;
//! - `parked` holds the job-only events that are applied but waiting for their
//!   job's worker: the cursor is past them, so without them a refresh would
//!   lose them for good.
//!
//! When: a write is due whenever the cursor moved or anything else stored
//! changed (a send queued, accepted or failed; an event parked), at most once
//! per `persist_interval_ms`, and at once on `send()`, page hide, `close()`
//! and run completion.

use super::config::Ms;
use super::timers::{Timer, TimerTable};
use crate::core::envelope::{decode_envelope, EventKind};
use crate::core::json::{Field, Number, Scanner, Token, Writer};
use crate::core::state::{Parked, RunState};

/// Version of the stored record format.
pub const STORAGE_VERSION: u64 = 2;

/// A record read back.
#[derive(Debug)]
pub struct Stored {
    /// The state, its cursor set to the stored cursor.
    pub state: RunState,
    /// Parked job-only events (id, event).
    pub parked: Vec<(u64, EventKind)>,
}

/// The stored record of `state` and `parked`, written with `core::json`
/// (the field order of `wire::StoredRecord`; payload keys sorted, as
/// serde_json's map wrote them).
pub fn encode(state: &RunState, parked: &Parked) -> String {
    let mut w = Writer::new();
    w.begin_object();
    w.key("v").u64(STORAGE_VERSION);
    w.key("cursor").u64(state.cursor);
    w.key("state").raw(&state.to_wire_json());
    w.key("parked").begin_array();
    for (id, kind) in parked.iter() {
        parked_envelope(&mut w, &state.run_id, id, kind);
    }
    w.end_array();
    w.end_object();
    w.finish()
}

/// Reads a record of `run_id` back; `None` for anything unreadable, foreign or
/// of another version (the run then starts from the beginning).
pub fn decode(text: &str, run_id: &str) -> Option<Stored> {
    let mut s = Scanner::new(text);
    let (mut v, mut cursor, mut state, mut parked_text) = (None, None, None, None);
    s.object().ok()?;
    while let Some(k) = s.key().ok()? {
        match &*k {
            "v" | "cursor" => {
                let n = match Field::read(&mut s).ok()? {
                    Field::Num(Number::U64(n)) => n,
                    _ => return None,
                };
                if k == "v" {
                    v = Some(n);
                } else {
                    cursor = Some(n);
                }
            }
            "state" => state = Some(s.raw().ok()?),
            "parked" => {
                parked_text = match s.peek().ok()? {
                    Token::Array => Some(s.raw().ok()?),
                    Token::Null => return None,
                    _ => return None,
                }
            }
            _ => s.skip().ok()?,
        }
    }
    s.end().ok()?;
    let (v, cursor) = (v?, cursor?);
    if v != 1 && v != STORAGE_VERSION {
        return None;
    }
    let mut state = RunState::from_wire_json(state?).ok()?;
    if state.run_id != run_id {
        return None;
    }
    state.cursor = cursor;
    let mut parked = Vec::new();
    if let Some(list) = parked_text {
        let mut s = Scanner::new(list);
        s.array().ok()?;
        while s.item().ok()? {
            let env = s.raw().ok()?;
            if let Ok(e) = decode_envelope(env, run_id) {
                if e.event_id <= cursor {
                    parked.push((e.event_id, e.kind));
                }
            }
        }
    }
    Some(Stored { state, parked })
}

/// Writes a parked job-only event as the envelope it came in (PROTOCOL §1, §4).
fn parked_envelope(w: &mut Writer, run_id: &str, id: u64, kind: &EventKind) {
    let ty = match kind {
        EventKind::WorkerCompleted { .. } => "worker.completed",
        EventKind::ToolStarted { .. } => "tool.started",
        EventKind::ToolCompleted { .. } => "tool.completed",
        _ => return,
    };
    w.begin_object();
    w.key("event_id").u64(id);
    w.key("run_id").str(run_id);
    w.key("type").str(ty);
    w.key("timestamp").str("1970-01-01T00:00:00Z");
    w.key("payload").begin_object();
    match kind {
        EventKind::WorkerCompleted {
            job_id,
            status,
            error,
            ..
        } => {
            if let Some(e) = error {
                w.key("error").str(e);
            }
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("status").str(status.as_str());
        }
        EventKind::ToolStarted {
            job_id,
            tool_call_id,
            name,
            ..
        } => {
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("name").str(name);
            w.key("tool_call_id").str(tool_call_id);
        }
        EventKind::ToolCompleted {
            job_id,
            tool_call_id,
            ok,
            error,
            duration_ms,
            ..
        } => {
            if let Some(d) = duration_ms {
                w.key("duration_ms").f64(*d);
            }
            if let Some(e) = error {
                w.key("error").str(e);
            }
            w.key("job_id").opt_str(job_id.as_deref());
            w.key("status").str(if *ok { "ok" } else { "error" });
            w.key("tool_call_id").str(tool_call_id);
        }
        _ => {}
    }
    w.end_object();
    w.end_object();
}

/// When the stored record is written.
#[derive(Debug)]
pub struct Persist {
    enabled: bool,
    interval: Ms,
    /// Something stored other than the cursor changed since the last write.
    dirty: bool,
    written_cursor: u64,
    next_at: Ms,
}

impl Persist {
    /// `enabled` = `resume` ≠ `"none"`; `cursor` = the restored cursor.
    pub fn new(enabled: bool, interval: Ms, cursor: u64) -> Self {
        Self {
            enabled,
            interval,
            dirty: false,
            written_cursor: cursor,
            next_at: 0.0,
        }
    }

    /// Something stored besides the cursor changed (outbox, parked events).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// The storage refused the last write (quota): it is due again at the next
    /// interval, even if nothing else changes.
    pub fn refused(&mut self, timers: &mut TimerTable) {
        self.dirty = true;
        timers.set(Timer::Persist, self.next_at);
    }

    /// Whether to write now. `force` skips the throttle (send, page hide,
    /// close, completion); otherwise a due write is timed by [`Timer::Persist`].
    pub fn due(&mut self, now: Ms, cursor: u64, force: bool, timers: &mut TimerTable) -> bool {
        if !self.enabled || (!self.dirty && cursor == self.written_cursor) {
            return false;
        }
        if force || now >= self.next_at {
            self.dirty = false;
            self.written_cursor = cursor;
            self.next_at = now + self.interval;
            timers.clear(Timer::Persist);
            return true;
        }
        if !timers.is_armed(Timer::Persist) {
            timers.set(Timer::Persist, self.next_at);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::{Message, MessageStatus};

    #[test]
    fn a_changed_outbox_is_written_even_when_the_cursor_did_not_move() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 7);
        assert!(!p.due(0.0, 7, true, &mut t));
        p.touch();
        assert!(p.due(0.0, 7, true, &mut t));
        assert!(!p.due(1.0, 7, true, &mut t));
    }

    #[test]
    fn a_refused_write_is_due_again_at_the_next_interval() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 0);
        assert!(p.due(0.0, 1, true, &mut t));
        p.refused(&mut t);
        assert_eq!(t.get(Timer::Persist), Some(1000.0));
        assert!(p.due(1000.0, 1, false, &mut t));
    }

    #[test]
    fn writes_are_throttled_by_the_timer() {
        let mut t = TimerTable::default();
        let mut p = Persist::new(true, 1000.0, 0);
        assert!(p.due(0.0, 1, false, &mut t));
        assert!(!p.due(10.0, 2, false, &mut t));
        assert_eq!(t.get(Timer::Persist), Some(1000.0));
        assert!(p.due(1000.0, 2, false, &mut t));
        assert!(!Persist::new(false, 1.0, 0).due(0.0, 5, true, &mut t));
    }

    #[test]
    fn record_round_trips_state_outbox_and_parked_events() {
        let mut s = RunState::new("r");
        s.cursor = 9;
        s.insert_message(Message {
            message_id: None,
            client_request_id: Some("c1".into()),
            reply_to: None,
            role: "user".into(),
            content: "hi".into(),
            status: MessageStatus::Sending,
        });
        let mut parked = Parked::default();
        parked.restore(
            8,
            EventKind::ToolCompleted {
                worker_id: None,
                job_id: Some("j1".into()),
                tool_call_id: "t1".into(),
                ok: false,
                error: Some("boom".into()),
                duration_ms: None,
            },
            16,
        );
        let text = encode(&s, &parked);
        let back = decode(&text, "r").expect("record");
        assert_eq!(back.state.cursor, 9);
        assert_eq!(back.state.messages.len(), 1);
        assert_eq!(back.parked.len(), 1);
        assert!(matches!(
            back.parked.first(),
            Some((8, EventKind::ToolCompleted { ok: false, .. }))
        ));
        assert!(decode(&text, "other").is_none());
        assert!(decode("{not json", "r").is_none());
    }
}

/// The record as the serde derives wrote it before `core::json` (native only):
/// `encode` must give the same JSON value, and `decode` must read both.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod serde_parity {
    use super::*;
    use crate::core::state::WorkerStatus;
    use crate::core::wire::{StoredRecord, WireEnvelope};
    use serde_json::{json, Value};

    fn serde_record(state: &RunState, parked: &Parked) -> String {
        let envelope = |id: u64, ty: &str, payload: Value| {
            serde_json::to_value(WireEnvelope {
                event_id: id,
                run_id: state.run_id.clone(),
                event_type: ty.into(),
                timestamp: "1970-01-01T00:00:00Z".into(),
                payload,
            })
            .unwrap()
        };
        let mut list = Vec::new();
        for (id, kind) in parked.iter() {
            let mut p = serde_json::Map::new();
            let ty = match kind {
                EventKind::WorkerCompleted {
                    job_id,
                    status,
                    error,
                    ..
                } => {
                    p.insert("job_id".into(), json!(job_id));
                    p.insert("status".into(), serde_json::to_value(status).unwrap());
                    if let Some(e) = error {
                        p.insert("error".into(), json!(e));
                    }
                    "worker.completed"
                }
                EventKind::ToolStarted {
                    job_id,
                    tool_call_id,
                    name,
                    ..
                } => {
                    p.insert("job_id".into(), json!(job_id));
                    p.insert("tool_call_id".into(), json!(tool_call_id));
                    p.insert("name".into(), json!(name));
                    "tool.started"
                }
                EventKind::ToolCompleted {
                    job_id,
                    tool_call_id,
                    ok,
                    error,
                    duration_ms,
                    ..
                } => {
                    p.insert("job_id".into(), json!(job_id));
                    p.insert("tool_call_id".into(), json!(tool_call_id));
                    p.insert("status".into(), json!(if *ok { "ok" } else { "error" }));
                    if let Some(e) = error {
                        p.insert("error".into(), json!(e));
                    }
                    if let Some(d) = duration_ms {
                        p.insert("duration_ms".into(), json!(d));
                    }
                    "tool.completed"
                }
                _ => continue,
            };
            list.push(envelope(id, ty, Value::Object(p)));
        }
        StoredRecord {
            v: STORAGE_VERSION,
            cursor: state.cursor,
            state: state.to_wire(),
            parked: list,
        }
        .encode()
    }

    #[test]
    fn encode_is_the_serde_record_and_decode_reads_both() {
        let mut state = RunState::new("run_1");
        state.cursor = 9;
        let mut parked = Parked::default();
        let kinds = [
            EventKind::WorkerCompleted {
                worker_id: None,
                job_id: Some("j\"1".into()),
                status: WorkerStatus::Failed,
                error: Some("boom\n".into()),
            },
            EventKind::ToolStarted {
                worker_id: None,
                job_id: Some("j1".into()),
                tool_call_id: "t1".into(),
                name: "fetch".into(),
            },
            EventKind::ToolCompleted {
                worker_id: None,
                job_id: Some("j1".into()),
                tool_call_id: "t1".into(),
                ok: false,
                error: None,
                duration_ms: Some(12.5),
            },
        ];
        for (i, k) in kinds.into_iter().enumerate() {
            parked.restore(3 + i as u64, k, 16);
        }
        let ours = encode(&state, &parked);
        let theirs = serde_record(&state, &parked);
        let (a, b): (Value, Value) = (
            serde_json::from_str(&ours).unwrap(),
            serde_json::from_str(&theirs).unwrap(),
        );
        assert_eq!(a, b, "{ours}\n{theirs}");
        for text in [&ours, &theirs] {
            let back = decode(text, "run_1").unwrap();
            assert_eq!(back.state.cursor, 9);
            let want: Vec<(u64, &EventKind)> = parked.iter().collect();
            let got: Vec<(u64, &EventKind)> = back.parked.iter().map(|(i, k)| (*i, k)).collect();
            assert_eq!(got, want);
        }
        assert!(decode(&ours, "other").is_none());
    }
}
