//! The stored record: the engine's head (cursor and state, completed messages
//! by reference) under `runstream:{runId}` in `sessionStorage` or
//! `localStorage` (the `resume` option), the completed messages' bodies in
//! IndexedDB ([`super::idb`], under the same area), and their retention.
//! Which records to remove is decided by [`crate::core::retention`]; this
//! module only makes the storage calls. An evicted head takes its bodies with it.
//!
//! A write never loses the cursor: `setItem` replaces a value whole or not at
//! all, and a head only references bodies whose transaction has committed, so
//! when the quota refuses a write even after evicting other runs' records, the
//! previous head (an older but consistent resume point) stays.

use web_sys::Storage;

use super::driver::{with_engine, Inner};
use super::options::{Options, Resume};
use super::{env, idb};
use crate::core::engine::persist::HEAD_IN_BODY_STORE;
use crate::core::engine::Engine;
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

/// The body store's name of a storage area.
fn area_of(resume: Resume) -> &'static str {
    match resume {
        Resume::Local => "local",
        Resume::Session | Resume::None => "session",
    }
}

/// Removes the records of `runs` (heads and bodies) and forgets them.
fn evict(storage: &Storage, resume: Resume, index: &mut Index, runs: &[String]) {
    let mut gone = Vec::new();
    for id in runs {
        if storage.remove_item(&record_key(id)).is_ok() {
            index.remove(id);
            gone.push(id.clone());
        }
    }
    idb::remove(area_of(resume), gone);
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
/// and on `close()`): new completed-message bodies go to IndexedDB (the engine
/// hears when they commit), the head replaces the previous one, evicting other
/// runs' records as the retention policy says. Returns `false` when the
/// storage refused the head (the engine tries again).
pub(super) fn persist(inner: &mut Inner) -> bool {
    let resume = inner.opts.resume;
    let Some(storage) = storage_of(resume) else {
        return true;
    };
    let write = inner.engine.storage_write();
    if let Some(batch) = write.batch {
        let weak = inner.weak.clone();
        let id = batch.id;
        idb::put(
            area_of(resume),
            inner.opts.run_id.clone(),
            batch,
            move |ok| {
                with_engine(&weak, |e| e.bodies_stored(env::now(), id, ok));
            },
        );
    }
    let Some(record) = write.head else {
        return true;
    };
    let run_id = inner.opts.run_id.as_str();
    let key = record_key(run_id);
    let bytes = item_bytes(&key, &record);
    let now = js_sys::Date::now();
    let entry = Entry {
        bytes,
        written_at: now,
        finished: inner.engine.finished(),
    };
    let mut index = read_index(&storage);
    let stale = plan(&index, &Policy::default(), run_id, bytes, now);
    evict(&storage, resume, &mut index, &stale);
    let mut written = true;
    if storage.set_item(&key, &record).is_ok() {
        index.upsert(run_id, entry);
    } else {
        // Quota exceeded: make room among the other runs' records and retry once.
        reconcile(&storage, &mut index);
        let room = plan_for_quota(&index, run_id, bytes);
        evict(&storage, resume, &mut index, &room);
        if storage.set_item(&key, &record).is_ok() {
            index.upsert(run_id, entry);
        } else if idb::available() && inner.engine.body_store() {
            // Still refused: the head goes to IndexedDB; once committed, the
            // storage area points there (the marker replaces the previous head
            // and is smaller, so it fits). Until then the previous head stays.
            let weak = inner.weak.clone();
            idb::put_head(area_of(resume), run_id.to_owned(), record, move |ok| {
                let pointed = ok
                    && storage_of(resume)
                        .is_some_and(|s| s.set_item(&key, HEAD_IN_BODY_STORE).is_ok());
                if !pointed {
                    with_engine(&weak, Engine::persist_refused);
                }
            });
        } else {
            // Still refused: the previous head stays. Its cursor and state were
            // stored together and its bodies are committed, so it is still a
            // valid (older) resume point.
            written = false;
        }
    }
    write_index(&storage, &index);
    written
}

/// Reads the head an earlier page stored for this run, then tidies the
/// storage area (records of other runs that finished long ago, or beyond the
/// cap) and the body store (runs idle for a week).
fn restore(opts: &Options) -> Option<String> {
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
    evict(&storage, opts.resume, &mut index, &stale);
    write_index(&storage, &index);
    idb::sweep();
    record
}

/// The engine of a new stream, from the stored head (if any); it uses the
/// body store when the page has one.
pub(super) fn engine(opts: &Options) -> Engine {
    let head = restore(opts);
    let mut engine = Engine::new(opts.config.clone(), env::seed(), head.as_deref());
    engine.set_body_store(opts.resume != Resume::None && idb::available());
    engine
}

/// When the head references bodies (or is itself in IndexedDB), reads them
/// (asynchronously) and hands them to the engine, which connects only then.
pub(super) fn load_bodies(inner: &Inner) {
    if !inner.engine.awaiting_bodies() {
        return;
    }
    let weak = inner.weak.clone();
    let done = move |stored: Option<idb::Stored>| {
        with_engine(&weak, |e| {
            let now = env::now();
            match &stored {
                Some((head, records)) => e.restore_stored(now, head.as_deref(), Some(records)),
                None => e.restore_stored(now, None, None),
            }
        });
    };
    if idb::available() {
        idb::read(area_of(inner.opts.resume), inner.opts.run_id.clone(), done);
    } else {
        done(None);
    }
}
