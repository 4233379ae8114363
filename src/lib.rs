//! runstream: durable chat and task streaming for web apps.
//!
//! - [`core`]: the sans-IO engine (native-testable).
//! - `web` (wasm32 only): the browser shell and the `#[wasm_bindgen]` JS API.
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

pub mod core;

#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;
