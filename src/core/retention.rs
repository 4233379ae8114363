//! Retention of the stored records (`runstream:{runId}` in session or local
//! storage): which records to remove, given a small index of them.
//!
//! The index (under [`INDEX_KEY`], one per storage area) holds, per run id, the
//! record's size, when it was last written (wall-clock ms) and whether the run
//! had finished. The policy ([`plan`], [`plan_for_quota`]) is pure: the shell
//! reads the index, asks which runs to evict, removes them, writes the record
//! and the updated index.
//!
//! - A finished run's record is kept for [`FINISHED_GRACE_MS`] (10 minutes) after
//!   its last write, so a refresh right after completion shows the finished run
//!   without a replay; then it is removed at the next write or page load.
//! - All of runstream's records together stay under [`MAX_TOTAL_BYTES`] (2 MiB
//!   per storage area, counted as the browser does: 2 bytes per UTF-16 unit of
//!   key and value); beyond it the least recently written are evicted first.
//! - At most [`MAX_RUNS`] records are kept (oldest first beyond).
//! - The record being written is never evicted to make room for itself.
//!
//! Tabs sharing `localStorage` update the index without a lock: the last writer
//! wins, so an entry can go missing or be stale. [`Index::reconcile`] repairs
//! that from the keys actually present (done at page load and on a quota error).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of every stored record's key: `runstream:{runId}`.
pub const RECORD_PREFIX: &str = "runstream:";
/// Key of the index. Not under [`RECORD_PREFIX`], so no run id can collide with it.
pub const INDEX_KEY: &str = "runstream-index";
/// How long a finished run's record is kept after its last write (10 minutes).
pub const FINISHED_GRACE_MS: f64 = 10.0 * 60.0 * 1000.0;
/// Cap on the total size of runstream's records in one storage area (2 MiB).
pub const MAX_TOTAL_BYTES: u64 = 2 * 1024 * 1024;
/// Cap on the number of records in one storage area.
pub const MAX_RUNS: usize = 512;
/// Version of the index format.
pub const INDEX_VERSION: u64 = 1;

/// The storage key of run `run_id`'s record.
pub fn record_key(run_id: &str) -> String {
    format!("{RECORD_PREFIX}{run_id}")
}

/// The run id of a record key, `None` for any other key.
pub fn run_id_of(key: &str) -> Option<&str> {
    key.strip_prefix(RECORD_PREFIX)
}

/// What an item costs in storage: 2 bytes per UTF-16 unit of key and value.
pub fn item_bytes(key: &str, value: &str) -> u64 {
    let units = key.encode_utf16().count() + value.encode_utf16().count();
    2 * units as u64
}

/// One record in the index.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Size of the record ([`item_bytes`]).
    #[serde(rename = "b")]
    pub bytes: u64,
    /// Wall-clock time of the last write (ms since the epoch); 0 = unknown (oldest).
    #[serde(rename = "t")]
    pub written_at: f64,
    /// The run had finished when the record was written.
    #[serde(rename = "f", default)]
    pub finished: bool,
}

/// The index of one storage area's records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    runs: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u64,
    runs: BTreeMap<String, Entry>,
}

/// The limits the policy applies (the constants above, smaller in tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// [`FINISHED_GRACE_MS`].
    pub grace_ms: f64,
    /// [`MAX_TOTAL_BYTES`].
    pub max_total_bytes: u64,
    /// [`MAX_RUNS`].
    pub max_runs: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            grace_ms: FINISHED_GRACE_MS,
            max_total_bytes: MAX_TOTAL_BYTES,
            max_runs: MAX_RUNS,
        }
    }
}

impl Index {
    /// Reads the stored index; a missing, unreadable or other-version index is empty.
    pub fn parse(text: Option<&str>) -> Self {
        let runs = text
            .and_then(|t| serde_json::from_str::<Wire>(t).ok())
            .filter(|w| w.v == INDEX_VERSION)
            .map(|w| w.runs)
            .unwrap_or_default();
        Self { runs }
    }

    /// The JSON text to store under [`INDEX_KEY`].
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct WireRef<'a> {
            v: u64,
            runs: &'a BTreeMap<String, Entry>,
        }
        serde_json::to_string(&WireRef {
            v: INDEX_VERSION,
            runs: &self.runs,
        })
        .unwrap_or_default()
    }

    /// The entry of `run_id`.
    pub fn get(&self, run_id: &str) -> Option<&Entry> {
        self.runs.get(run_id)
    }

    /// Records that `run_id`'s record was (re)written.
    pub fn upsert(&mut self, run_id: &str, entry: Entry) {
        self.runs.insert(run_id.to_owned(), entry);
    }

    /// Forgets `run_id` (its record was removed).
    pub fn remove(&mut self, run_id: &str) -> Option<Entry> {
        self.runs.remove(run_id)
    }

    /// Number of records indexed.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Makes the index match the records actually present (`present`: run ids
    /// whose record exists): entries without a record are dropped; records
    /// without an entry (written by an older version, or by a tab whose index
    /// write was lost) are added as unfinished and oldest, sized by `size_of`.
    pub fn reconcile(&mut self, present: &[String], mut size_of: impl FnMut(&str) -> u64) {
        self.runs
            .retain(|id, _| present.iter().any(|p| p.as_str() == id));
        for id in present {
            if !self.runs.contains_key(id) {
                let entry = Entry {
                    bytes: size_of(id),
                    written_at: 0.0,
                    finished: false,
                };
                self.runs.insert(id.clone(), entry);
            }
        }
    }

    /// Other runs, least recently written first (ties by id).
    fn others_oldest_first<'a>(&'a self, current: &'a str) -> Vec<(&'a str, &'a Entry)> {
        let mut v: Vec<(&str, &Entry)> = self
            .runs
            .iter()
            .filter(|(id, _)| id.as_str() != current)
            .map(|(id, e)| (id.as_str(), e))
            .collect();
        v.sort_by(|a, b| a.1.written_at.total_cmp(&b.1.written_at).then(a.0.cmp(b.0)));
        v
    }
}

/// Runs whose records to remove before `current`'s record of `bytes` bytes is
/// written at `now` (wall-clock ms): finished runs past the grace period, then
/// the least recently written until the total fits `max_total_bytes` and the
/// count fits `max_runs`. Never `current`.
pub fn plan(index: &Index, policy: &Policy, current: &str, bytes: u64, now: f64) -> Vec<String> {
    let mut evict = Vec::new();
    let mut keep = Vec::new();
    for (id, e) in index.others_oldest_first(current) {
        if e.finished && now - e.written_at >= policy.grace_ms {
            evict.push(id.to_owned());
        } else {
            keep.push((id, e.bytes));
        }
    }
    let mut total: u64 = keep
        .iter()
        .fold(bytes, |sum, (_, b)| sum.saturating_add(*b));
    let mut count = keep.len() + 1;
    for (id, b) in keep {
        if total <= policy.max_total_bytes && count <= policy.max_runs {
            break;
        }
        evict.push(id.to_owned());
        total = total.saturating_sub(b);
        count -= 1;
    }
    evict
}

/// Runs whose records to remove after the browser refused to write `current`'s
/// record of `bytes` bytes (quota exceeded): the least recently written others
/// until at least `bytes` are freed (or none are left). Never `current`.
pub fn plan_for_quota(index: &Index, current: &str, bytes: u64) -> Vec<String> {
    let mut freed = 0u64;
    let mut evict = Vec::new();
    for (id, e) in index.others_oldest_first(current) {
        if freed >= bytes {
            break;
        }
        freed = freed.saturating_add(e.bytes);
        evict.push(id.to_owned());
    }
    evict
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: f64 = 60_000.0;

    fn entry(bytes: u64, written_at: f64, finished: bool) -> Entry {
        Entry {
            bytes,
            written_at,
            finished,
        }
    }

    fn index(entries: &[(&str, Entry)]) -> Index {
        let mut i = Index::default();
        for (id, e) in entries {
            i.upsert(id, *e);
        }
        i
    }

    #[test]
    fn finished_runs_are_kept_for_the_grace_period_then_evicted() {
        let now = 100.0 * MIN;
        let i = index(&[
            ("done_long_ago", entry(100, now - 11.0 * MIN, true)),
            ("done_just_now", entry(100, now - 1.0 * MIN, true)),
            ("live_long_ago", entry(100, now - 60.0 * MIN, false)),
        ]);
        assert_eq!(
            plan(&i, &Policy::default(), "current", 100, now),
            vec!["done_long_ago".to_owned()]
        );
        // Exactly at the grace period: gone.
        let i = index(&[("d", entry(1, now - FINISHED_GRACE_MS, true))]);
        assert_eq!(plan(&i, &Policy::default(), "c", 1, now), vec!["d"]);
    }

    #[test]
    fn the_record_being_written_is_never_evicted() {
        let now = 100.0 * MIN;
        let i = index(&[
            ("me", entry(10, 0.0, true)),
            ("other", entry(10, now, false)),
        ]);
        let p = Policy {
            max_total_bytes: 5,
            ..Policy::default()
        };
        // Over the cap even alone, and finished long ago: still kept; the other goes.
        assert_eq!(plan(&i, &p, "me", 10, now), vec!["other"]);
        assert!(plan_for_quota(&i, "me", 1_000).iter().all(|id| id != "me"));
    }

    #[test]
    fn over_the_size_cap_the_least_recently_written_go_first() {
        let now = 100.0 * MIN;
        let p = Policy {
            max_total_bytes: 1000,
            ..Policy::default()
        };
        let i = index(&[
            ("c", entry(300, now - 1.0 * MIN, false)),
            ("a", entry(300, now - 3.0 * MIN, false)),
            ("b", entry(300, now - 2.0 * MIN, false)),
        ]);
        // 900 + 100 fits exactly.
        assert!(plan(&i, &p, "new", 100, now).is_empty());
        // 900 + 200 does not: the oldest ("a") goes.
        assert_eq!(plan(&i, &p, "new", 200, now), vec!["a"]);
        // 900 + 500: two go, oldest first.
        assert_eq!(plan(&i, &p, "new", 500, now), vec!["a", "b"]);
        // Rewriting an indexed run does not count its old size twice.
        assert!(plan(&i, &p, "c", 400, now).is_empty());
    }

    #[test]
    fn unknown_ages_are_oldest_and_ties_break_by_id() {
        let p = Policy {
            max_total_bytes: 250,
            ..Policy::default()
        };
        let i = index(&[
            ("y", entry(100, 0.0, false)),
            ("x", entry(100, 0.0, false)),
            ("z", entry(100, 5.0, false)),
        ]);
        assert_eq!(plan(&i, &p, "new", 100, 10.0), vec!["x", "y"]);
    }

    #[test]
    fn the_count_is_capped() {
        let p = Policy {
            max_runs: 3,
            ..Policy::default()
        };
        let i = index(&[
            ("a", entry(1, 1.0, false)),
            ("b", entry(1, 2.0, false)),
            ("c", entry(1, 3.0, false)),
        ]);
        assert_eq!(plan(&i, &p, "new", 1, 10.0), vec!["a"]);
        assert!(plan(&i, &p, "c", 1, 10.0).is_empty());
    }

    #[test]
    fn a_quota_error_frees_at_least_the_records_size_oldest_first() {
        let i = index(&[
            ("me", entry(500, 0.0, false)),
            ("old", entry(100, 1.0, false)),
            ("mid", entry(100, 2.0, false)),
            ("new", entry(100, 3.0, false)),
        ]);
        assert_eq!(plan_for_quota(&i, "me", 150), vec!["old", "mid"]);
        assert_eq!(plan_for_quota(&i, "me", 100), vec!["old"]);
        assert_eq!(plan_for_quota(&i, "me", 10_000), vec!["old", "mid", "new"]);
        assert!(plan_for_quota(&index(&[]), "me", 10).is_empty());
    }

    #[test]
    fn the_index_round_trips_and_ignores_garbage() {
        let i = index(&[("r1", entry(12, 3.5, true)), ("r:2", entry(0, 0.0, false))]);
        let text = i.to_json();
        assert_eq!(Index::parse(Some(&text)), i);
        assert_eq!(
            text,
            r#"{"v":1,"runs":{"r1":{"b":12,"t":3.5,"f":true},"r:2":{"b":0,"t":0.0,"f":false}}}"#
        );
        assert!(Index::parse(None).is_empty());
        assert!(Index::parse(Some("{not json")).is_empty());
        assert!(Index::parse(Some(r#"{"v":2,"runs":{"a":{"b":1,"t":1}}}"#)).is_empty());
        // A missing finished flag reads as unfinished.
        let i = Index::parse(Some(r#"{"v":1,"runs":{"a":{"b":1,"t":1}}}"#));
        assert_eq!(i.get("a"), Some(&entry(1, 1.0, false)));
    }

    #[test]
    fn reconcile_drops_missing_records_and_adopts_unknown_ones_as_oldest() {
        let mut i = index(&[
            ("kept", entry(10, 5.0, true)),
            ("gone", entry(10, 5.0, false)),
        ]);
        i.reconcile(&["kept".to_owned(), "legacy".to_owned()], |id| {
            assert_eq!(id, "legacy");
            42
        });
        assert_eq!(i.get("kept"), Some(&entry(10, 5.0, true)));
        assert_eq!(i.get("gone"), None);
        assert_eq!(i.get("legacy"), Some(&entry(42, 0.0, false)));
    }

    #[test]
    fn keys_and_sizes() {
        assert_eq!(record_key("r1"), "runstream:r1");
        assert_eq!(run_id_of("runstream:r1"), Some("r1"));
        assert_eq!(run_id_of(INDEX_KEY), None);
        assert_eq!(run_id_of(&record_key("index")), Some("index"));
        assert_eq!(item_bytes("ab", "c"), 6);
        // UTF-16: one astral character is two units.
        assert_eq!(item_bytes("", "😀é"), 6);
    }
}
