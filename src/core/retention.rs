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

use super::json::{Field, Number, Scanner, Token, Writer};

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
    [RECORD_PREFIX, run_id].concat()
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

/// One record in the index (stored as `{"b": bytes, "t": written_at, "f": finished}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    /// Size of the record ([`item_bytes`]).
    pub bytes: u64,
    /// Wall-clock time of the last write (ms since the epoch); 0 = unknown (oldest).
    pub written_at: f64,
    /// The run had finished when the record was written.
    pub finished: bool,
}

impl Entry {
    /// An entry from its object text: `b` a `u64`, `t` a number, `f` a
    /// boolean (anything else or absent: false); the last of a repeated key.
    fn from_json(text: &str) -> Option<Self> {
        let mut s = Scanner::new(text);
        let (mut b, mut t, mut f) = (None, None, false);
        s.object().ok()?;
        while let Some(k) = s.key().ok()? {
            let v = Field::read(&mut s).ok()?;
            match (&*k, v) {
                ("b", Field::Num(n)) => b = n.as_u64(),
                ("b", _) => b = None,
                ("t", Field::Num(n)) => t = Some(n.as_f64()),
                ("t", _) => t = None,
                ("f", v) => f = v == Field::Bool(true),
                _ => {}
            }
        }
        Some(Self {
            bytes: b?,
            written_at: t?,
            finished: f,
        })
    }

    fn write(self, w: &mut Writer) {
        w.begin_object();
        w.key("b").u64(self.bytes);
        w.key("f").bool(self.finished);
        w.key("t").f64(self.written_at);
        w.end_object();
    }
}

/// The index of one storage area's records (at most a few hundred: a Vec,
/// which costs far less wasm than a map).
#[derive(Debug, Clone, Default)]
pub struct Index {
    runs: Vec<(String, Entry)>,
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
    /// Reads the stored index (`{"v": 1, "runs": {runId: entry}}`); a missing,
    /// unreadable or other-version index is empty, an unreadable entry is skipped.
    pub fn parse(text: Option<&str>) -> Self {
        text.and_then(Self::read).unwrap_or_default()
    }

    /// The index of a JSON text; `None` if it is not JSON or not version 1.
    /// Entries come out sorted by run id, the last of a repeated id kept.
    fn read(text: &str) -> Option<Self> {
        let mut s = Scanner::new(text);
        let (mut version, mut runs) = (None, None);
        s.object().ok()?;
        while let Some(k) = s.key().ok()? {
            match &*k {
                "v" => {
                    version = match Field::read(&mut s).ok()? {
                        Field::Num(Number::U64(v)) => Some(v),
                        _ => None,
                    }
                }
                "runs" => {
                    runs = match s.peek().ok()? {
                        Token::Object => Some(s.raw().ok()?),
                        _ => {
                            s.skip().ok()?;
                            None
                        }
                    }
                }
                _ => s.skip().ok()?,
            }
        }
        s.end().ok()?;
        if version != Some(INDEX_VERSION) {
            return None;
        }
        let mut out: Vec<(String, Entry)> = Vec::new();
        if let Some(runs) = runs {
            let mut s = Scanner::new(runs);
            s.object().ok()?;
            while let Some(id) = s.key().ok()? {
                let entry = s.raw().ok().and_then(Entry::from_json);
                // Kept sorted by id as it goes (no sort code in the wasm).
                match (out.binary_search_by(|(i, _)| i.as_str().cmp(&id)), entry) {
                    (Ok(at), Some(e)) => {
                        if let Some(slot) = out.get_mut(at) {
                            slot.1 = e;
                        }
                    }
                    (Ok(at), None) => {
                        out.remove(at);
                    }
                    (Err(at), Some(e)) => out.insert(at, (id.into_owned(), e)),
                    (Err(_), None) => {}
                }
            }
        }
        Some(Self { runs: out })
    }

    /// The JSON text to store under [`INDEX_KEY`].
    pub fn to_json(&self) -> String {
        let mut w = Writer::new();
        w.begin_object().key("runs").begin_object();
        for (id, e) in &self.runs {
            w.key(id);
            e.write(&mut w);
        }
        w.end_object().key("v").u64(INDEX_VERSION).end_object();
        w.finish()
    }

    fn position(&self, run_id: &str) -> Option<usize> {
        self.runs.iter().position(|(id, _)| id == run_id)
    }

    /// The entry of `run_id`.
    pub fn get(&self, run_id: &str) -> Option<&Entry> {
        self.runs
            .iter()
            .find(|(id, _)| id == run_id)
            .map(|(_, e)| e)
    }

    /// Records that `run_id`'s record was (re)written.
    pub fn upsert(&mut self, run_id: &str, entry: Entry) {
        match self.position(run_id) {
            Some(at) => {
                if let Some(slot) = self.runs.get_mut(at) {
                    slot.1 = entry;
                }
            }
            None => self.runs.push((run_id.to_owned(), entry)),
        }
    }

    /// Forgets `run_id` (its record was removed).
    pub fn remove(&mut self, run_id: &str) -> Option<Entry> {
        let at = self.position(run_id)?;
        Some(self.runs.swap_remove(at).1)
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
        self.runs.retain(|(id, _)| present.contains(id));
        for id in present {
            if self.position(id).is_none() {
                let entry = Entry {
                    bytes: size_of(id),
                    written_at: 0.0,
                    finished: false,
                };
                self.runs.push((id.clone(), entry));
            }
        }
    }

    /// Other runs, least recently written first (ties by id).
    fn others_oldest_first<'a>(&'a self, current: &'a str) -> Vec<(&'a str, &'a Entry)> {
        let mut v: Vec<(&str, &Entry)> = self
            .runs
            .iter()
            .filter(|(id, _)| id != current)
            .map(|(id, e)| (id.as_str(), e))
            .collect();
        // Insertion sort: at most MAX_RUNS entries, and far less code in the wasm than `sort_by`.
        for i in 1..v.len() {
            let mut j = i;
            while j > 0 {
                let (Some(a), Some(b)) = (v.get(j - 1), v.get(j)) else {
                    break;
                };
                let later = a.1.written_at.total_cmp(&b.1.written_at).then(a.0.cmp(b.0));
                if later != std::cmp::Ordering::Greater {
                    break;
                }
                v.swap(j - 1, j);
                j -= 1;
            }
        }
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
        let back = Index::parse(Some(&text));
        assert_eq!(back.get("r1"), Some(&entry(12, 3.5, true)));
        assert_eq!(back.get("r:2"), Some(&entry(0, 0.0, false)));
        assert_eq!(back.to_json(), text);
        assert_eq!(
            text,
            r#"{"runs":{"r1":{"b":12,"f":true,"t":3.5},"r:2":{"b":0,"f":false,"t":0}},"v":1}"#
        );
        // An index written by serde_json (`0.0`) reads the same; a repeated id keeps the last.
        let old = r#"{"runs":{"r:2":{"b":0,"f":false,"t":0.0},"r1":{"b":1,"t":1},"r1":{"b":12,"f":true,"t":3.5}},"v":1}"#;
        assert_eq!(Index::parse(Some(old)).to_json(), text);
        assert!(Index::parse(None).is_empty());
        assert!(Index::parse(Some("{not json")).is_empty());
        assert!(Index::parse(Some(r#"{"v":2,"runs":{"a":{"b":1,"t":1}}}"#)).is_empty());
        // A missing finished flag reads as unfinished; an unreadable entry is skipped.
        let i = Index::parse(Some(r#"{"v":1,"runs":{"a":{"b":1,"t":1},"x":{"b":"?"}}}"#));
        assert_eq!(i.get("a"), Some(&entry(1, 1.0, false)));
        assert_eq!(i.len(), 1);
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

    // proptest is a native-only dev-dependency.
    #[cfg(not(target_arch = "wasm32"))]
    proptest::proptest! {
        /// Whatever the index: the current run is never evicted; what stays fits
        /// the caps (unless only the current run is left); no finished run past
        /// its grace period stays; and every record evicted for room is older
        /// than every other one kept.
        #[test]
        fn plan_invariants(
            entries in proptest::collection::vec((0u64..400, 0u32..100, proptest::bool::ANY), 0..40),
            bytes in 0u64..400,
            cap in 0u64..4000,
            max_runs in 1usize..20,
        ) {
            let now = 100.0 * MIN;
            let p = Policy { grace_ms: 10.0 * MIN, max_total_bytes: cap, max_runs };
            let mut i = Index::default();
            for (n, (b, age, f)) in entries.iter().enumerate() {
                i.upsert(&format!("r{n}"), entry(*b, now - f64::from(*age) * MIN / 4.0, *f));
            }
            let current = "r0";
            let evicted = plan(&i, &p, current, bytes, now);
            proptest::prop_assert!(!evicted.iter().any(|id| id == current));
            let kept: Vec<(&str, &Entry)> = i
                .others_oldest_first(current)
                .into_iter()
                .filter(|(id, _)| !evicted.iter().any(|e| e == id))
                .collect();
            let total = kept.iter().map(|(_, e)| e.bytes).sum::<u64>() + bytes;
            if !kept.is_empty() {
                proptest::prop_assert!(total <= cap && kept.len() < max_runs);
            }
            for (_, e) in &kept {
                proptest::prop_assert!(!(e.finished && now - e.written_at >= p.grace_ms));
            }
            for id in &evicted {
                let Some(e) = i.get(id) else { continue };
                let stale = e.finished && now - e.written_at >= p.grace_ms;
                if !stale {
                    proptest::prop_assert!(kept.iter().all(|(_, k)| k.written_at >= e.written_at));
                }
            }
        }
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
