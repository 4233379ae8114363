//! The sans-IO core: parsing, validation, ordering, reduction, outbox,
//! connection/activity state machines, frame batching and metrics.
//!
//! Nothing here names a browser API, reads a clock or draws randomness of its
//! own: time and a seed are parameters, so all of it is tested natively with a
//! virtual clock.
//!
//! Modules depend on each other in one direction: [`vocab`] (status enums) and
//! [`error`] (one error type per layer) import nothing from the crate;
//! [`envelope`] decodes events with them; [`state`] reduces events into a run
//! state; [`wire`] types the frames and bodies around both; [`engine`]
//! coordinates everything; [`socket`] shares one WebSocket between engines;
//! [`tabs`] is the message format tabs share one connection over (`share: "tabs"`);
//! [`reduced`] is the servers' driver of the reducer (stored base, window rule).

pub mod engine;
pub mod json;
pub mod metrics;
pub mod reduced;
pub mod retention;
pub mod rng;
pub mod socket;
pub mod state;
pub mod strmap;
pub mod tabs;
pub mod vecmap;
pub mod wire;

// The byte-level codecs live in `runstream-codec` (optimized for speed).
pub use runstream_codec::{batch, envelope, error, sse, vocab};
