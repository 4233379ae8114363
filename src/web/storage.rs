//! The stored record: the engine's cursor and state under `runstream:{runId}`
//! in `sessionStorage` or `localStorage` (the `resume` option), and its
//! retention. Which records to remove is decided by
//! [`crate::core::retention`]; this module only makes the storage calls.
//!
//! A write never loses the cursor: `setItem` replaces a value whole or not at
//! all, so when the quota refuses a write even after evicting other runs'
//! records, the previous record (an older but consistent resume point) stays.

use web_sys::Storage;

use super::driver::Inner;
use super::env;
use super::options::{Options, Resume};
use crate::core::retention::{
    item_bytes, plan, plan_for_quota, record_key, run_id_of, Entry, Index, Policy, INDEX_KEY,
};

fn storage_of(resume: Resume) -> Option<Storage> {
    match resume {
        Resume::None => None,
        Resume::Local => env::storage(true),
        Resume::Session => env::storage(false),
    }
}

fn read_index(storage: &Storage) -> Index {
    Index::parse(storage.get_item(INDEX_KEY).ok().flatten().as_deref())
}

fn write_index(storage: &Storage, index: &Index) {
    // Best effort: a lost index write is repaired by the next reconcile.
    let _ = if index.is_empty() {
        storage.remove_item(INDEX_KEY)
    } else {
        storage.set_item(INDEX_KEY, &index.to_json())
    };
}

/// Removes the records of `runs` and forgets them.
fn evict(storage: &Storage, index: &mut Index, runs: &[String]) {
    for id in runs {
        if storage.remove_item(&record_key(id)).is_ok() {
            index.remove(id);
        }
    }
}

/// Brings the index in line with the records actually present in `storage`.
fn reconcile(storage: &Storage, index: &mut Index) {
    let len = storage.length().unwrap_or(0);
    let present: Vec<String> = (0..len)
        .filter_map(|i| storage.key(i).ok().flatten())
        .filter_map(|k| run_id_of(&k).map(str::to_owned))
        .collect();
    index.reconcile(&present, |id| {
        let key = record_key(id);
        storage
            .get_item(&key)
            .ok()
            .flatten()
            .map_or(0, |v| item_bytes(&key, &v))
    });
}

/// Stores the engine's record (after [`crate::core::engine::Action::Persist`],
/// and on `close()`), evicting other runs' records as the retention policy
/// says. Returns `false` when the storage refused it (the engine tries again).
pub(super) fn persist(inner: &Inner) -> bool {
    let Some(storage) = storage_of(inner.opts.resume) else {
        return true;
    };
    let run_id = inner.opts.run_id.as_str();
    let key = record_key(run_id);
    let record = inner.engine.storage_record();
    let bytes = item_bytes(&key, &record);
    let now = js_sys::Date::now();
    let entry = Entry {
        bytes,
        written_at: now,
        finished: inner.engine.finished(),
    };
    let mut index = read_index(&storage);
    let stale = plan(&index, &Policy::default(), run_id, bytes, now);
    evict(&storage, &mut index, &stale);
    let mut written = true;
    if storage.set_item(&key, &record).is_ok() {
        index.upsert(run_id, entry);
    } else {
        // Quota exceeded: make room among the other runs' records and retry once.
        reconcile(&storage, &mut index);
        let room = plan_for_quota(&index, run_id, bytes);
        evict(&storage, &mut index, &room);
        if storage.set_item(&key, &record).is_ok() {
            index.upsert(run_id, entry);
        } else {
            // Still refused: the previous record stays. Its cursor and state
            // were stored together, so it is still a valid (older) resume point.
            written = false;
        }
    }
    write_index(&storage, &index);
    written
}

/// Reads the record an earlier page stored for this run, then tidies the
/// storage area (records of other runs that finished long ago, or beyond the cap).
pub(super) fn restore(opts: &Options) -> Option<String> {
    let storage = storage_of(opts.resume)?;
    let key = record_key(&opts.run_id);
    let record = storage.get_item(&key).ok().flatten();
    let mut index = read_index(&storage);
    reconcile(&storage, &mut index);
    let bytes = record.as_deref().map_or(0, |r| item_bytes(&key, r));
    let stale = plan(
        &index,
        &Policy::default(),
        &opts.run_id,
        bytes,
        js_sys::Date::now(),
    );
    evict(&storage, &mut index, &stale);
    write_index(&storage, &index);
    record
}
