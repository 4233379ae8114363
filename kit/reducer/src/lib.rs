//! The runstream reducer and the publish API's batch validation, for the
//! TypeScript kit (`@runstream/server`), as a small wasm module loaded in Node.
//!
//! SERVER.md §2: snapshots come from the same reducer as the client's and the
//! gateway's. This crate adds no rule of its own: it exports the `runstream`
//! core's [`Reduced`] (the driver of the reducer the gateway's stores use too:
//! job-only events parked, the same stored form `{event_id, parked, state}`
//! so a pruned base written by one server is read by the other) and its
//! window rule [`prune_point`], and validates publish batches with the
//! check the gateway calls too (`runstream::core::batch`, the codec's).
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

pub use runstream::core::batch::{BatchError, MAX_BATCH};
pub use runstream::core::reduced::{prune_point, Reduced, PARK_CAP};

/// Validates a publish body `{"events":[{type, payload}, …]}` for run
/// `run_id` with the one batch check both servers call
/// ([`runstream::core::batch::check_batch`], on the codec's JSON scanner).
/// Ok: the body's canonical JSON text (keys sorted, compact: what the
/// idempotency digest is taken of, so a key repeated on either server
/// compares equal). `cancel_allowed` lets an in-process producer append
/// `run.cancel_requested` (the publish API never does).
pub fn check_batch(run_id: &str, body: &str, cancel_allowed: bool) -> Result<String, BatchError> {
    runstream::core::batch::check_batch(run_id, body, cancel_allowed).map(|b| b.canonical)
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
