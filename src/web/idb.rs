//! The body store: completed messages' bodies in IndexedDB (see
//! [`crate::core::engine::persist`] for what is stored and why).
//!
//! One database per origin, [`DB_NAME`], with two object stores:
//! - `bodies`: key `[area, run_id, batch_key]` → one batch of bodies, one
//!   string ([`crate::core::engine::persist::encode_batch`]). One record per
//!   batch: reading one record of 1,500 bodies takes ~20–40 ms in Chromium,
//!   1,500 records ~120–500 ms; one string crosses into the wasm in one copy. A key is written once with one content (content-addressed),
//!   so tabs writing the same run never corrupt each other's record; a merged
//!   batch replaces its two parts in the same transaction.
//! - `heads`: key `[area, run_id]` → a head the storage area refused (quota);
//!   the storage area then holds [`crate::core::engine::persist::HEAD_IN_BODY_STORE`];
//! - `runs`: key `[area, run_id]` → when its bodies were last written or read
//!   (wall-clock ms). Bodies of runs not touched for [`IDLE_TTL_MS`] are
//!   removed at page load ([`sweep`], once per page): `sessionStorage` dies
//!   with its tab, and with it the only head that references them.
//!
//! Every request is turned into a promise whose `resolve`/`reject` are the
//! request's own `onsuccess`/`onerror` handlers: no closure outlives it.
//! Failures are reported to the engine (`false` / `None`), never thrown.

use std::cell::{Cell, RefCell};

use js_sys::{Array, Promise};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    IdbDatabase, IdbKeyRange, IdbObjectStore, IdbOpenDbRequest, IdbRequest, IdbTransaction,
    IdbTransactionMode,
};

use crate::core::engine::persist::{BodyBatch, StoredBatch};

/// The database's name (one per origin).
pub const DB_NAME: &str = "runstream";
const DB_VERSION: u32 = 1;
const BODIES: &str = "bodies";
const RUNS: &str = "runs";
const HEADS: &str = "heads";
/// Bodies of a run neither written nor read for this long (7 days) are removed at page load.
pub const IDLE_TTL_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;

thread_local! {
    /// The open database (opened on first use, then shared by every stream of the page).
    static DB: RefCell<Option<IdbDatabase>> = const { RefCell::new(None) };
    /// The sweep ran on this page.
    static SWEPT: Cell<bool> = const { Cell::new(false) };
}

/// True when the page has IndexedDB (not in every private mode or sandbox).
pub fn available() -> bool {
    web_sys::window()
        .and_then(|w| w.indexed_db().ok().flatten())
        .is_some()
}

/// Settles with `req`: its handlers are set now, before any of its events can fire.
fn settle(req: &IdbRequest) -> JsFuture {
    JsFuture::from(Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    }))
}

/// The result of `req`, whose [`settle`] future is `f`.
async fn result(req: &IdbRequest, f: JsFuture) -> Result<JsValue, JsValue> {
    f.await?;
    req.result()
}

/// Settles when `tx` commits (or fails): its handlers are set now.
fn committed(tx: &IdbTransaction) -> impl std::future::Future<Output = Result<(), JsValue>> {
    let f = JsFuture::from(Promise::new(&mut |resolve, reject| {
        tx.set_oncomplete(Some(&resolve));
        tx.set_onerror(Some(&reject));
        tx.set_onabort(Some(&reject));
    }));
    async move { f.await.map(|_| ()) }
}

async fn open() -> Result<IdbDatabase, JsValue> {
    if let Some(db) = DB.with(|d| d.borrow().clone()) {
        return Ok(db);
    }
    let factory = web_sys::window()
        .and_then(|w| w.indexed_db().ok().flatten())
        .ok_or(JsValue::NULL)?;
    let req: IdbOpenDbRequest = factory.open_with_u32(DB_NAME, DB_VERSION)?;
    let r = req.clone();
    let upgrade = Closure::once(move |_: JsValue| {
        if let Ok(db) = r.result().and_then(|v| v.dyn_into::<IdbDatabase>()) {
            let names = db.object_store_names();
            for name in [BODIES, RUNS, HEADS] {
                if !names.contains(name) {
                    let _ = db.create_object_store(name);
                }
            }
        }
    });
    req.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let f = settle(&req);
    let db = result(&req, f).await;
    req.set_onupgradeneeded(None);
    drop(upgrade);
    let db: IdbDatabase = db?.dyn_into()?;
    DB.with(|d| *d.borrow_mut() = Some(db.clone()));
    Ok(db)
}

/// A transaction over every store: (transaction, bodies, runs, heads).
type Tx = (
    IdbTransaction,
    IdbObjectStore,
    IdbObjectStore,
    IdbObjectStore,
);

fn tx(db: &IdbDatabase, write: bool) -> Result<Tx, JsValue> {
    let mode = if write {
        IdbTransactionMode::Readwrite
    } else {
        IdbTransactionMode::Readonly
    };
    let names = Array::of3(&BODIES.into(), &RUNS.into(), &HEADS.into());
    let t = db.transaction_with_str_sequence_and_mode(&names, mode)?;
    let bodies = t.object_store(BODIES)?;
    let runs = t.object_store(RUNS)?;
    let heads = t.object_store(HEADS)?;
    Ok((t, bodies, runs, heads))
}

fn run_key(area: &str, run_id: &str) -> Array {
    Array::of2(&area.into(), &run_id.into())
}

/// Every key of run `run_id`'s bodies: `[area, run_id]` ≤ key < `[area, run_id, []]`
/// (an array sorts after every string).
fn run_range(area: &str, run_id: &str) -> Result<IdbKeyRange, JsValue> {
    let upper = Array::of3(&area.into(), &run_id.into(), &Array::new());
    IdbKeyRange::bound(&run_key(area, run_id), &upper)
}

fn batch_key(area: &str, run_id: &str, key: u64) -> Array {
    Array::of3(&area.into(), &run_id.into(), &(key as f64).into())
}

async fn put_all(area: &str, run_id: &str, batch: &BodyBatch) -> Result<(), JsValue> {
    let db = open().await?;
    let (t, store, runs, _) = tx(&db, true)?;
    if !batch.text.is_empty() {
        store.put_with_key(
            &batch.text.as_str().into(),
            &batch_key(area, run_id, batch.key),
        )?;
    }
    for old in &batch.replaces {
        store.delete(&batch_key(area, run_id, *old))?;
    }
    runs.put_with_key(&js_sys::Date::now().into(), &run_key(area, run_id))?;
    let done = committed(&t);
    #[allow(deprecated)]
    let _ = t.commit();
    done.await
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
    spawn_local(async move {
        let ok = put_all(area, &run_id, &batch).await.is_ok();
        done(ok);
    });
}

async fn put_head_in(area: &str, run_id: &str, head: &str) -> Result<(), JsValue> {
    let db = open().await?;
    let (t, _, runs, heads) = tx(&db, true)?;
    heads.put_with_key(&head.into(), &run_key(area, run_id))?;
    runs.put_with_key(&js_sys::Date::now().into(), &run_key(area, run_id))?;
    let done = committed(&t);
    // Commit now rather than at the end of the task: this write may come from
    // `pagehide`, and an uncommitted transaction is aborted with the page.
    #[allow(deprecated)]
    let _ = t.commit();
    done.await
}

/// Writes the head of `run_id` (the storage area refused it); `done(true)` once committed.
pub fn put_head(
    area: &'static str,
    run_id: String,
    head: String,
    done: impl FnOnce(bool) + 'static,
) {
    spawn_local(async move {
        let ok = put_head_in(area, &run_id, &head).await.is_ok();
        done(ok);
    });
}

/// What the store holds for a run: its head (if one was written there) and its records.
pub type Stored = (Option<String>, Vec<StoredBatch>);

async fn read_all(area: &str, run_id: &str) -> Result<Stored, JsValue> {
    let db = open().await?;
    let (_t, store, runs, heads) = tx(&db, true)?;
    let range = run_range(area, run_id)?;
    let keys = store.get_all_keys_with_key(&range)?;
    let values = store.get_all_with_key(&range)?;
    let head = heads.get(&run_key(area, run_id))?;
    let (fk, fv, fh) = (settle(&keys), settle(&values), settle(&head));
    runs.put_with_key(&js_sys::Date::now().into(), &run_key(area, run_id))?;
    let keys: Array = result(&keys, fk).await?.dyn_into()?;
    let values: Array = result(&values, fv).await?.dyn_into()?;
    let head = result(&head, fh).await?.as_string();
    let mut out = Vec::with_capacity(keys.length() as usize);
    for (k, v) in keys.iter().zip(values.iter()) {
        let k: Array = k.dyn_into()?;
        // A record that is not a batch of bodies is skipped (its bodies count as missing).
        let (Some(key), Some(text)) = (k.get(2).as_f64(), v.as_string()) else {
            continue;
        };
        out.push(StoredBatch {
            key: key as u64,
            text,
        });
    }
    Ok((head, out))
}

/// Reads what is stored for `run_id` (one `getAll` over its key range, and
/// its head if one is there); `done(None)` when IndexedDB is missing or fails.
pub fn read(area: &'static str, run_id: String, done: impl FnOnce(Option<Stored>) + 'static) {
    spawn_local(async move {
        let stored = read_all(area, &run_id).await.ok();
        done(stored);
    });
}

/// Deletes `runs` of `area` (`None`: every run idle for [`IDLE_TTL_MS`] at `now`):
/// their bodies, head and last-use time, in one transaction.
async fn remove_runs(area: &str, runs: Option<&[String]>, now: f64) -> Result<(), JsValue> {
    let db = open().await?;
    let (t, store, meta, heads) = tx(&db, true)?;
    let keys: Vec<Array> = match runs {
        Some(runs) => runs.iter().map(|r| run_key(area, r)).collect(),
        None => {
            let keys = meta.get_all_keys()?;
            let times = meta.get_all()?;
            let (fk, ft) = (settle(&keys), settle(&times));
            let keys: Array = result(&keys, fk).await?.dyn_into()?;
            let times: Array = result(&times, ft).await?.dyn_into()?;
            keys.iter()
                .zip(times.iter())
                .filter(|(_, at)| now - at.as_f64().unwrap_or(0.0) >= IDLE_TTL_MS)
                .filter_map(|(k, _)| k.dyn_into::<Array>().ok())
                .collect()
        }
    };
    for key in keys {
        let (Some(area), Some(run)) = (key.get(0).as_string(), key.get(1).as_string()) else {
            continue;
        };
        store.delete(run_range(&area, &run)?.as_ref())?;
        heads.delete(&key)?;
        meta.delete(&key)?;
    }
    committed(&t).await
}

/// Removes the bodies of `runs` (their heads were evicted). Best effort.
pub fn remove(area: &'static str, runs: Vec<String>) {
    if runs.is_empty() || !available() {
        return;
    }
    spawn_local(async move {
        let _ = remove_runs(area, Some(&runs), 0.0).await;
    });
}

/// Once per page: removes the bodies of runs idle for [`IDLE_TTL_MS`]. Best effort.
pub fn sweep() {
    if SWEPT.with(|s| s.replace(true)) || !available() {
        return;
    }
    spawn_local(async move {
        let _ = remove_runs("", None, js_sys::Date::now()).await;
    });
}
