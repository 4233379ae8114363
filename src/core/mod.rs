//! The sans-IO core: parsing, validation, ordering, reduction, outbox,
//! connection/activity state machines, frame batching and metrics.
//!
//! Nothing here names a browser API, reads a clock or draws randomness of its
//! own: time and a seed are parameters, so all of it is tested natively with a
//! virtual clock.

pub mod engine;
pub mod envelope;
pub mod metrics;
pub mod retention;
pub mod rng;
pub mod sse;
pub mod state;
