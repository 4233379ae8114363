//! The runstream reducer and the publish API's batch validation, for the
//! TypeScript kit (`@runstream/server`), as a small wasm module loaded in Node.
//!
//! SERVER.md §2: snapshots come from the same reducer as the client's and the
//! gateway's. This crate adds no rule of its own: it drives
//! [`runstream::core::state::RunState::apply`] exactly as the gateway's
//! `server/src/store::Reduced` does (job-only events parked, their raw texts
//! kept while parked, the same stored form `{event_id, state, parked}` so a
//! pruned base written by one server is read by the other), and validates
//! publish batches with the gateway's `publish.rs` rules on the codec's
//! [`decode_envelope`].
//!
//! [`Reduced`] and [`check_batch`] are plain Rust (tested natively); the
//! `abi` module (wasm32 only) exports them with raw C-ABI functions over
//! linear memory (no wasm-bindgen: the module is loaded by Node's own
//! `WebAssembly` with no glue but `kit/src/reducer.ts`).
#![deny(missing_docs)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::BTreeMap;

use runstream::core::envelope::{decode_envelope, KNOWN_TYPES};
use runstream::core::state::{Parked, RunState};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Most job-only events parked while reducing a run's state (the gateway's `PARK_CAP`).
pub const PARK_CAP: usize = 4096;
/// Most events in one publish batch (the gateway's `publish::MAX_BATCH`).
pub const MAX_BATCH: usize = 1000;

/// A run's state reduced from its log, with the raw job-only events still
/// parked (so a pruned base can be stored and restored without losing them).
#[derive(Debug, Clone)]
pub struct Reduced {
    /// The state (its `cursor` is the last applied id).
    pub state: RunState,
    parked: Parked,
    /// Raw texts of job-only events, by id, while they may still be parked.
    parked_raw: BTreeMap<u64, String>,
    run_id: String,
}

impl Reduced {
    /// The empty state of run `run_id`.
    pub fn new(run_id: &str) -> Self {
        Self {
            state: RunState::new(run_id),
            parked: Parked::default(),
            parked_raw: BTreeMap::new(),
            run_id: run_id.to_owned(),
        }
    }

    /// The last applied id.
    pub fn cursor(&self) -> u64 {
        self.state.cursor
    }

    /// Applies one logged envelope (invalid ones are skipped: the log was written by a server).
    pub fn apply(&mut self, id: u64, text: &str) {
        if let Ok(env) = decode_envelope(text, &self.run_id) {
            if env.kind.job_only().is_some() {
                self.parked_raw.insert(id, text.to_owned());
            }
            let mut out = Vec::new();
            let _ = self
                .state
                .apply(id, env.kind, &mut self.parked, PARK_CAP, &mut out);
        }
        self.state.cursor = self.state.cursor.max(id);
        if self.parked_raw.len() > PARK_CAP {
            self.compact();
        }
    }

    /// Marks everything before `id + 1` as covered (a pruned base).
    pub fn set_cursor(&mut self, id: u64) {
        self.state.cursor = id;
    }

    fn compact(&mut self) {
        let live: std::collections::HashSet<u64> = self.parked.iter().map(|(i, _)| i).collect();
        self.parked_raw.retain(|i, _| live.contains(i));
    }

    /// The §6 state as JSON text (the snapshot body's `state`).
    pub fn state_json(&self) -> String {
        self.state.to_wire_json()
    }

    /// The stored form of this state: `{event_id, state, parked: [raw events]}`
    /// (the gateway's `Reduced::to_stored`).
    pub fn to_stored(&mut self) -> String {
        self.compact();
        let parked: Vec<&str> = self.parked_raw.values().map(String::as_str).collect();
        format!(
            "{{\"event_id\":{},\"parked\":[{}],\"state\":{}}}",
            self.state.cursor,
            parked.join(","),
            self.state.to_wire_json()
        )
    }

    /// Reads [`Reduced::to_stored`] (either server's) back.
    pub fn from_stored(run_id: &str, text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Stored<'a> {
            event_id: u64,
            #[serde(borrow)]
            state: &'a RawValue,
            #[serde(default, borrow)]
            parked: Vec<&'a RawValue>,
        }
        let s: Stored<'_> = serde_json::from_str(text).map_err(|e| format!("base: {e}"))?;
        let mut state =
            RunState::from_wire_json(s.state.get()).map_err(|e| format!("base: {e}"))?;
        state.cursor = s.event_id;
        let mut me = Self {
            state,
            parked: Parked::default(),
            parked_raw: BTreeMap::new(),
            run_id: run_id.to_owned(),
        };
        for raw in s.parked {
            if let Ok(env) = decode_envelope(raw.get(), run_id) {
                me.parked_raw.insert(env.event_id, raw.get().to_owned());
                me.parked.restore(env.event_id, env.kind, PARK_CAP);
            }
        }
        Ok(me)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    #[serde(rename = "type")]
    ty: String,
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    events: Vec<EventIn>,
}

/// Checks event `i` of a batch with the codec the client validates with: a
/// §4 type (not `snapshot`, not `run.cancel_requested`), a payload object of
/// its schema (the gateway's `publish::check_event`, word for word).
fn check_event(run_id: &str, i: usize, e: &EventIn, cancel_allowed: bool) -> Result<(), String> {
    if e.ty == "run.cancel_requested" && !cancel_allowed {
        // One request per target (PROTOCOL §8) is kept by the cancel route alone.
        return Err(format!(
            "events[{i}]: run.cancel_requested is appended by POST /api/runs/{{run_id}}/cancel"
        ));
    }
    if e.ty == "snapshot" || !KNOWN_TYPES.contains(&e.ty.as_str()) {
        return Err(format!(
            "events[{i}]: type {:?} is not an event type of PROTOCOL §4",
            e.ty
        ));
    }
    if !e.payload.is_object() {
        return Err(format!("events[{i}]: payload must be an object"));
    }
    let env = serde_json::json!({"event_id": 1, "run_id": run_id, "type": e.ty,
        "timestamp": "2026-01-01T00:00:00Z", "payload": e.payload});
    decode_envelope(&env.to_string(), run_id)
        .map(|_| ())
        .map_err(|err| format!("events[{i}] ({}): {err}", e.ty))
}

/// Why a publish body was refused (each is a `400`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Not JSON: the gateway's JSON extractor answers this text (plain text).
    Syntax(String),
    /// JSON, but not a valid batch: the `{"error": …}` message naming `events[i]`.
    Invalid(String),
}

/// Validates a publish body `{"events":[{type, payload}, …]}` for run
/// `run_id` as the gateway does (same checks, same order, same messages).
/// Ok: the body's canonical JSON text (keys sorted, compact: what the
/// idempotency digest is taken of, so a key repeated on either server
/// compares equal). `cancel_allowed` lets an in-process producer append
/// `run.cancel_requested` (the publish API never does).
pub fn check_batch(run_id: &str, body: &str, cancel_allowed: bool) -> Result<String, BatchError> {
    let raw: Value = serde_json::from_str(body).map_err(|e| {
        BatchError::Syntax(format!("Failed to parse the request body as JSON: {e}"))
    })?;
    let canonical = raw.to_string();
    let invalid = BatchError::Invalid;
    let batch: BatchBody = serde_json::from_value(raw).map_err(|e| {
        invalid(format!(
            "expected {{\"events\": [{{type, payload}}, ...]}}: {e}"
        ))
    })?;
    if batch.events.is_empty() {
        return Err(invalid("events must not be empty".to_owned()));
    }
    if batch.events.len() > MAX_BATCH {
        return Err(invalid(format!("at most {MAX_BATCH} events per batch")));
    }
    let n = batch.events.len();
    for (i, e) in batch.events.iter().enumerate() {
        check_event(run_id, i, e, cancel_allowed).map_err(invalid)?;
        if e.ty == "run.completed" && i + 1 < n {
            return Err(invalid(format!(
                "events[{}]: comes after run.completed in the same batch",
                i + 1
            )));
        }
    }
    Ok(canonical)
}

#[cfg(target_arch = "wasm32")]
mod abi;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: u64, ty: &str, payload: &str) -> String {
        format!(
            r#"{{"event_id":{id},"run_id":"r","type":"{ty}","timestamp":"2026-01-01T00:00:00Z","payload":{payload}}}"#
        )
    }

    #[test]
    fn parked_events_survive_a_stored_base() {
        let mut r = Reduced::new("r");
        r.apply(
            1,
            &env(
                1,
                "tool.started",
                r#"{"job_id":"j1","tool_call_id":"t","name":"x"}"#,
            ),
        );
        let stored = r.to_stored();
        let mut back = Reduced::from_stored("r", &stored).unwrap();
        assert_eq!(back.cursor(), 1);
        back.apply(
            2,
            &env(
                2,
                "worker.job_assigned",
                r#"{"worker_id":"w","job_id":"j1"}"#,
            ),
        );
        let state: Value = serde_json::from_str(&back.state_json()).unwrap();
        assert_eq!(state["workers"][0]["tools"][0]["tool_call_id"], "t");
    }

    #[test]
    fn batches_are_checked_like_the_gateway() {
        assert_eq!(
            check_batch(
                "r",
                r#"{"events":[{"type":"run.started","payload":{}}]}"#,
                false
            ),
            Ok(r#"{"events":[{"payload":{},"type":"run.started"}]}"#.to_owned())
        );
        let e = check_batch(
            "r",
            r#"{"events":[{"type":"run.started","payload":{}},{"type":"tool.started","payload":{}}]}"#,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&e, BatchError::Invalid(m) if m.starts_with("events[1] (tool.started)")),
            "{e:?}"
        );
        assert!(matches!(
            check_batch("r", "nope", false),
            Err(BatchError::Syntax(_))
        ));
        assert!(check_batch("r", r#"{"events":[]}"#, false).is_err());
        assert!(check_batch(
            "r",
            r#"{"events":[{"type":"run.cancel_requested","payload":{}}]}"#,
            false
        )
        .is_err());
        assert!(check_batch(
            "r",
            r#"{"events":[{"type":"run.cancel_requested","payload":{}}]}"#,
            true
        )
        .is_ok());
    }
}
