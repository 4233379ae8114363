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

use serde::Serialize;
use serde_json::Value;

use super::config::Ms;
use super::timers::{Timer, TimerTable};
use crate::core::envelope::{decode_envelope_value, EventKind};
use crate::core::state::{Parked, RunState, WorkerStatus};
use crate::core::wire::{StoredRecord, WireEnvelope};

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

/// The stored record of `state` and `parked`.
pub fn encode(state: &RunState, parked: &Parked) -> String {
    StoredRecord {
        v: STORAGE_VERSION,
        cursor: state.cursor,
        state: state.to_wire(),
        parked: parked
            .iter()
            .filter_map(|(id, kind)| parked_envelope(&state.run_id, id, kind))
            .collect(),
    }
    .encode()
}

/// Reads a record of `run_id` back; `None` for anything unreadable, foreign or
/// of another version (the run then starts from the beginning).
pub fn decode(text: &str, run_id: &str) -> Option<Stored> {
    let r = StoredRecord::decode(text).ok()?;
    if r.v != 1 && r.v != STORAGE_VERSION {
        return None;
    }
    let mut state = RunState::from_wire(r.state).ok()?;
    if state.run_id != run_id {
        return None;
    }
    state.cursor = r.cursor;
    let parked = r
        .parked
        .into_iter()
        .filter_map(|e| decode_envelope_value(e, run_id).ok())
        .filter(|e| e.event_id <= r.cursor)
        .map(|e| (e.event_id, e.kind))
        .collect();
    Some(Stored { state, parked })
}

/// Payload of a parked `worker.completed` (§4).
#[derive(Serialize)]
struct WorkerCompletedPayload<'a> {
    job_id: &'a Option<String>,
    status: WorkerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: &'a Option<String>,
}

/// Payload of a parked `tool.started` (§4).
#[derive(Serialize)]
struct ToolStartedPayload<'a> {
    job_id: &'a Option<String>,
    tool_call_id: &'a str,
    name: &'a str,
}

/// Payload of a parked `tool.completed` (§4).
#[derive(Serialize)]
struct ToolCompletedPayload<'a> {
    job_id: &'a Option<String>,
    tool_call_id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
}

/// A parked job-only event as the envelope it came in (PROTOCOL §1, §4).
fn parked_envelope(run_id: &str, id: u64, kind: &EventKind) -> Option<Value> {
    let (ty, payload) = match kind {
        EventKind::WorkerCompleted {
            job_id,
            status,
            error,
            ..
        } => (
            "worker.completed",
            serde_json::to_value(WorkerCompletedPayload {
                job_id,
                status: *status,
                error,
            }),
        ),
        EventKind::ToolStarted {
            job_id,
            tool_call_id,
            name,
            ..
        } => (
            "tool.started",
            serde_json::to_value(ToolStartedPayload {
                job_id,
                tool_call_id,
                name,
            }),
        ),
        EventKind::ToolCompleted {
            job_id,
            tool_call_id,
            ok,
            error,
            duration_ms,
            ..
        } => (
            "tool.completed",
            serde_json::to_value(ToolCompletedPayload {
                job_id,
                tool_call_id,
                status: if *ok { "ok" } else { "error" },
                error,
                duration_ms: *duration_ms,
            }),
        ),
        _ => return None,
    };
    let envelope = WireEnvelope {
        event_id: id,
        run_id: run_id.to_owned(),
        event_type: ty.to_owned(),
        timestamp: "1970-01-01T00:00:00Z".to_owned(),
        payload: payload.ok()?,
    };
    serde_json::to_value(envelope).ok()
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
