//! runstream's byte-level codecs, re-exported by `runstream::core` under the
//! same names: [`sse`] (the SSE parser), [`json`] (a JSON scanner and writer
//! without serde), [`envelope`] (envelope validation, PROTOCOL.md §1–§4), with
//! the status vocabulary ([`vocab`]) and the error types ([`error`]) they use.
//!
//! Every byte a stream delivers goes through this code, so it is a crate of
//! its own: the release build optimizes it for speed (the workspace's
//! `[profile.release.package.runstream-codec]`), while the rest of the wasm
//! is optimized for size. It imports nothing from runstream.
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

pub mod batch;
pub mod envelope;
pub mod error;
pub mod json;
pub mod sse;
pub mod vocab;
