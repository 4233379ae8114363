//! The runstream reducer and the publish API's batch validation, for the
//! TypeScript kit (`@runstream/server`), as a small wasm module loaded in Node.
//!
//! SERVER.md §2: snapshots come from the same reducer as the client's and the
//! gateway's. This crate adds no rule of its own: it exports the `runstream`
//! core's [`Reduced`] (the driver of the reducer the gateway's stores use too:
//! job-only events parked, the same stored form `{event_id, parked, state}`
//! so a pruned base written by one server is read by the other) and its
//! window rule [`prune_point`], and validates publish batches with the
//! gateway's `publish.rs` rules on the codec's [`decode_envelope`].
//!
//! [`check_batch`] is plain Rust (tested natively); the
//! `abi` module (wasm32 only) exports it and [`Reduced`] with raw C-ABI functions over
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

use runstream::core::envelope::{decode_envelope, KNOWN_TYPES};
pub use runstream::core::reduced::{prune_point, Reduced, PARK_CAP};
use serde::Deserialize;
use serde_json::Value;

/// Most events in one publish batch (the gateway's `publish::MAX_BATCH`).
pub const MAX_BATCH: usize = 1000;

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
