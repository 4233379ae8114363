//! The stored record: the engine's cursor and state under `runstream:{runId}`
//! in `sessionStorage` or `localStorage` (the `resume` option).

use super::driver::Inner;
use super::env;
use super::options::{Options, Resume};

fn storage_key(run_id: &str) -> String {
    format!("runstream:{run_id}")
}

fn storage_of(resume: Resume) -> Option<web_sys::Storage> {
    match resume {
        Resume::None => None,
        Resume::Local => env::storage(true),
        Resume::Session => env::storage(false),
    }
}

pub(super) fn persist(inner: &Inner) {
    let Some(storage) = storage_of(inner.opts.resume) else {
        return;
    };
    let key = storage_key(&inner.opts.run_id);
    if storage
        .set_item(&key, &inner.engine.storage_record())
        .is_err()
    {
        // Quota exceeded: drop the stale record rather than resume from a wrong place.
        let _ = storage.remove_item(&key);
    }
}

pub(super) fn restore(opts: &Options) -> Option<String> {
    storage_of(opts.resume)?
        .get_item(&storage_key(&opts.run_id))
        .ok()?
}
