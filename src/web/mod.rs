//! The browser shell and the `#[wasm_bindgen]` JS API (API.md).
//!
//! All decisions live in [`crate::core`]. This module turns browser events into
//! engine inputs, executes the engine's actions, and re-arms one timer at the
//! engine's next deadline ([`driver`]).
//!
//! - [`api`]: the `RunStream` class and the TypeScript declarations.
//! - [`driver`]: the stream's shared state, `drive()`, the timer, the frame loop.
//! - [`storage`]: the stored record's head (cursor + state) in session/local storage;
//! - [`idb`]: the stored record's completed-message bodies in IndexedDB.
//! - `socket`: the page's WebSocket shared by every stream on one `wsUrl`.
//! - `tabs`: `share: "tabs"`: the Web Locks election and the BroadcastChannel.
//! - `transport`, `env`, `options`, `error`: transports, browser plumbing, options, errors.

mod api;
mod driver;
mod env;
mod error;
mod idb;
mod options;
mod snapshot;
mod socket;
mod storage;
mod tabs;
mod transport;

pub use api::RunStream;

/// The wasm's global allocator: Talc instead of std's dlmalloc (smaller code,
/// faster), growing the wasm memory on demand like dlmalloc does.
#[cfg(not(target_feature = "atomics"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
pub use error::WebError;
