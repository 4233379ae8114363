//! The body store: completed messages' bodies in IndexedDB (see
//! [`crate::core::engine::persist`] for what is stored and why).
//!
//! One database per origin, `runstream`, with three object stores:
//! - `bodies`: key `[area, run_id, batch_key]` → one batch of bodies, one
//!   string ([`crate::core::engine::persist::encode_batch`]). One record per
//!   batch: reading one record of 1,500 bodies takes ~20–40 ms in Chromium,
//!   1,500 records ~120–500 ms; one string crosses into the wasm in one copy.
//!   A key is written once with one content (content-addressed), so tabs
//!   writing the same run never corrupt each other's record; a merged batch
//!   replaces its two parts in the same transaction.
//! - `heads`: key `[area, run_id]` → a head the storage area refused (quota);
//!   the storage area then holds [`crate::core::engine::persist::HEAD_IN_BODY_STORE`];
//! - `runs`: key `[area, run_id]` → when its bodies were last written or read
//!   (wall-clock ms). Bodies of runs not touched for 7 days are
//!   removed at page load ([`sweep`], once per page): `sessionStorage` dies
//!   with its tab, and with it the only head that references them.
//!
//! The IndexedDB calls themselves are plain JS (`js/idb.js`, shipped beside
//! the glue as a wasm-bindgen snippet): through `web-sys` the same requests,
//! transactions and key ranges cost ~15 KB of wasm. This file declares them
//! and hands their results to the engine. Every JS function settles, never
//! rejects: failures are reported to the engine (`false` / `None`).

use js_sys::{Array, Float64Array, Promise};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};

use crate::core::engine::persist::{BodyBatch, StoredBatch};

#[wasm_bindgen(module = "/js/idb.js")]
extern "C" {
    fn idb_available() -> bool;
    fn idb_put(area: &str, run_id: &str, key: f64, text: &str, replaces: &[f64]) -> Promise;
    fn idb_put_head(area: &str, run_id: &str, head: &str) -> Promise;
    fn idb_read(area: &str, run_id: &str) -> Promise;
    fn idb_remove(area: &str, runs: &Array);
    fn idb_sweep();
}

/// True when the page has IndexedDB (not in every private mode or sandbox).
pub fn available() -> bool {
    idb_available()
}

/// Awaits a promise of `js/idb.js` that settles with `true` on success.
async fn ok(p: Promise) -> bool {
    JsFuture::from(p).await.ok().and_then(|v| v.as_bool()) == Some(true)
}

/// Writes `batch` of `run_id` in one transaction (and deletes the records it
/// replaces); `done(true)` once it has committed, `done(false)` if it failed
/// (quota, no IndexedDB, closed database).
pub fn put(
    area: &'static str,
    run_id: String,
    batch: BodyBatch,
    done: impl FnOnce(bool) + 'static,
) {
    let replaces: Vec<f64> = batch.replaces.iter().map(|k| *k as f64).collect();
    let p = idb_put(area, &run_id, batch.key as f64, &batch.text, &replaces);
    spawn_local(async move { done(ok(p).await) });
}

/// Writes the head of `run_id` (the storage area refused it); `done(true)` once committed.
pub fn put_head(
    area: &'static str,
    run_id: String,
    head: String,
    done: impl FnOnce(bool) + 'static,
) {
    let p = idb_put_head(area, &run_id, &head);
    spawn_local(async move { done(ok(p).await) });
}

/// What the store holds for a run: its head (if one was written there) and its records.
pub type Stored = (Option<String>, Vec<StoredBatch>);

/// `[head, keys, texts]` from `idb_read` (null when IndexedDB failed).
fn stored(v: JsValue) -> Option<Stored> {
    let v: Array = v.dyn_into().ok()?;
    let head = v.get(0).as_string();
    let keys: Float64Array = v.get(1).dyn_into().ok()?;
    let texts: Array = v.get(2).dyn_into().ok()?;
    let out = keys
        .to_vec()
        .into_iter()
        .zip(texts.iter())
        .filter_map(|(key, text)| {
            Some(StoredBatch {
                key: key as u64,
                text: text.as_string()?,
            })
        })
        .collect();
    Some((head, out))
}

/// Reads what is stored for `run_id` (one `getAll` over its key range, and
/// its head if one is there); `done(None)` when IndexedDB is missing or fails.
pub fn read(area: &'static str, run_id: String, done: impl FnOnce(Option<Stored>) + 'static) {
    let p = idb_read(area, &run_id);
    spawn_local(async move {
        done(JsFuture::from(p).await.ok().and_then(stored));
    });
}

/// Removes the bodies of `runs` (their heads were evicted). Best effort.
pub fn remove(area: &'static str, runs: Vec<String>) {
    if !runs.is_empty() {
        idb_remove(area, &runs.iter().map(|r| JsValue::from_str(r)).collect());
    }
}

/// Once per page: removes the bodies of runs idle for 7 days (`js/idb.js`). Best effort.
pub fn sweep() {
    idb_sweep();
}
