//! A hash map keyed by strings whose hashing and probing code exists once.
//!
//! The tables that grow with a run's history (the reducer's indexes, the
//! persisted bodies' batches, the snapshot caches, the outbox's timings) are
//! keyed by ids. Each `std::collections::HashMap<String, V>` instantiation
//! brings hashbrown's probing, growth and drop code into the wasm again, with
//! SipHash and `RandomState` (~13 KB of wasm for seven of them). [`StrMap`]
//! keeps the keys and their hashes in one non-generic [`Index`]; only the
//! values are generic, a `Vec<V>` beside the keys (a `Vec` push, swap-remove
//! and index per value type).
//!
//! - Open addressing with linear probing over a power-of-two table of `u32`
//!   slots (0 = empty, else entry number + 1), grown ×2 when it would be
//!   more than half full; removal shifts the following run back (no
//!   tombstones), so lookups stay short after any mix of inserts and removes.
//! - Entries are dense (`keys[i]` ↔ `values[i]`); a removal moves the last
//!   entry into the hole. Iteration is in that order, which, like a
//!   `HashMap`'s, means nothing.
//! - The hash is a multiply–rotate over 8-byte words (FxHash's step) with a
//!   final mix. It is not keyed: a server that picks colliding ids makes its
//!   own run's lookups slower, and every table is bounded by retention. std
//!   on `wasm32-unknown-unknown` had no random keys either (it takes them
//!   from two addresses).
//! - No bound of its own: each user states its bound.

/// The non-generic part: keys, their hashes, and the slot table.
#[derive(Debug, Clone, Default)]
struct Index {
    keys: Vec<String>,
    hashes: Vec<u64>,
    /// Entry number + 1 per slot, 0 = empty; the length is 0 or a power of two.
    slots: Vec<u32>,
}

/// The map's 64-bit hash of `key` (also what the snapshot cache compares
/// JSON texts by). Two strings of one length that differ in one 8-byte word
/// never collide: each step is a bijection of the running hash.
pub fn hash(key: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = key.len() as u64;
    let mut chunks = key.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    for (d, s) in w.iter_mut().zip(chunks.remainder()) {
        *d = *s;
    }
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    // The low bits pick the slot: fold the high ones in.
    h ^ (h >> 29) ^ (h >> 47)
}

/// Where a probe for a key ended.
enum Probe {
    /// The key is entry `entry`, in slot `slot`.
    Found { slot: usize, entry: usize },
    /// The key is absent; `slot` is the empty slot it would take.
    Vacant { slot: usize },
}

impl Index {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn probe(&self, key: &str, h: u64) -> Probe {
        let mask = self.mask();
        let mut s = (h as usize) & mask;
        // At most half the slots are full: an empty one is always reached.
        for _ in 0..self.slots.len() {
            match self.slots.get(s).copied() {
                Some(0) | None => return Probe::Vacant { slot: s },
                Some(n) => {
                    let e = (n - 1) as usize;
                    if self.hashes.get(e) == Some(&h) && self.keys.get(e).is_some_and(|k| k == key)
                    {
                        return Probe::Found { slot: s, entry: e };
                    }
                }
            }
            s = (s + 1) & mask;
        }
        Probe::Vacant { slot: s }
    }

    fn find(&self, key: &str) -> Option<usize> {
        if self.keys.is_empty() {
            return None;
        }
        match self.probe(key, hash(key)) {
            Probe::Found { entry, .. } => Some(entry),
            Probe::Vacant { .. } => None,
        }
    }

    /// Room for `extra` more entries with the table at most half full.
    fn reserve(&mut self, extra: usize) {
        let want = (self.keys.len() + extra).saturating_mul(2);
        if want <= self.slots.len() {
            return;
        }
        let size = want.next_power_of_two().max(8);
        self.slots = vec![0; size];
        let mask = size - 1;
        for (e, h) in self.hashes.iter().enumerate() {
            let mut s = (*h as usize) & mask;
            while self.slots.get(s).is_some_and(|n| *n != 0) {
                s = (s + 1) & mask;
            }
            if let Some(slot) = self.slots.get_mut(s) {
                *slot = (e + 1) as u32;
            }
        }
    }

    /// The entry of `key`, and whether it was there; a new key is appended.
    fn insert(&mut self, key: String) -> (usize, bool) {
        self.reserve(1);
        let h = hash(&key);
        match self.probe(&key, h) {
            Probe::Found { entry, .. } => (entry, true),
            Probe::Vacant { slot } => {
                let e = self.keys.len();
                if let Some(s) = self.slots.get_mut(slot) {
                    *s = (e + 1) as u32;
                }
                self.keys.push(key);
                self.hashes.push(h);
                (e, false)
            }
        }
    }

    /// Removes `key`'s entry; returns its number, whose place the last entry
    /// now takes (the caller swap-removes its value likewise).
    fn remove(&mut self, key: &str) -> Option<usize> {
        if self.keys.is_empty() {
            return None;
        }
        let Probe::Found { slot, entry } = self.probe(key, hash(key)) else {
            return None;
        };
        self.vacate(slot);
        let last = self.keys.len() - 1;
        if entry != last {
            // The last entry moves to `entry`: repoint its slot.
            let moved = self
                .keys
                .get(last)
                .map(|k| (k.clone(), self.hashes.get(last).copied()));
            if let Some((k, Some(h))) = moved {
                if let Probe::Found { slot, .. } = self.probe(&k, h) {
                    if let Some(s) = self.slots.get_mut(slot) {
                        *s = (entry + 1) as u32;
                    }
                }
            }
        }
        self.keys.swap_remove(entry);
        self.hashes.swap_remove(entry);
        Some(entry)
    }

    /// Empties `slot` and shifts back the entries after it that probed past it.
    fn vacate(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut s = hole;
        loop {
            s = (s + 1) & mask;
            let n = match self.slots.get(s).copied() {
                Some(0) | None => break,
                Some(n) => n,
            };
            let home = self
                .hashes
                .get((n - 1) as usize)
                .map_or(s, |h| (*h as usize) & mask);
            // The entry at `s` may fill the hole if its home is not in (hole, s] cyclically.
            if (s.wrapping_sub(home) & mask) >= (s.wrapping_sub(hole) & mask) {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = n;
                }
                hole = s;
            }
        }
        if let Some(h) = self.slots.get_mut(hole) {
            *h = 0;
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.hashes.clear();
        self.slots.iter_mut().for_each(|s| *s = 0);
    }
}

/// A map from `String` keys to `V` (see the module docs).
#[derive(Debug, Clone)]
pub struct StrMap<V> {
    index: Index,
    values: Vec<V>,
}

impl<V> Default for StrMap<V> {
    fn default() -> Self {
        Self {
            index: Index::default(),
            values: Vec::new(),
        }
    }
}

impl<V: PartialEq> PartialEq for StrMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V> StrMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        let mut m = Self::default();
        m.index.reserve(n);
        m.index.keys.reserve(n);
        m.index.hashes.reserve(n);
        m.values.reserve(n);
        m
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.values.get(self.index.find(key)?)
    }

    /// The value of `key`, mutable.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let e = self.index.find(key)?;
        self.values.get_mut(e)
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.find(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let (e, existed) = self.index.insert(key);
        if existed {
            self.values.get_mut(e).map(|v| std::mem::replace(v, value))
        } else {
            self.values.push(value);
            None
        }
    }

    /// The value of `key`, inserted with `make()` first if absent.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> Option<&mut V> {
        let e = match self.index.find(key) {
            Some(e) => e,
            None => {
                let (e, _) = self.index.insert(key.to_owned());
                self.values.push(make());
                e
            }
        };
        self.values.get_mut(e)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let e = self.index.remove(key)?;
        (e < self.values.len()).then(|| self.values.swap_remove(e))
    }

    /// Removes everything (keeps the allocations).
    pub fn clear(&mut self) {
        self.index.clear();
        self.values.clear();
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        let gone: Vec<String> = self
            .index
            .keys
            .iter()
            .zip(self.values.iter_mut())
            .filter_map(|(k, v)| (!keep(k, v)).then(|| k.clone()))
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.index
            .keys
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }
}

impl<V> FromIterator<(String, V)> for StrMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut m = Self::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A small deterministic generator (xorshift), so the test needs no crate.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn check(m: &StrMap<u64>, r: &HashMap<String, u64>) {
        assert_eq!(m.len(), r.len());
        for (k, v) in r {
            assert_eq!(m.get(k), Some(v), "{k}");
        }
        for (k, v) in m.iter() {
            assert_eq!(r.get(k), Some(v), "{k}");
        }
        // Every entry has exactly one slot, and the slots are at most half full.
        let used = m.index.slots.iter().filter(|s| **s != 0).count();
        assert_eq!(used, m.len());
        assert!(m.len() * 2 <= m.index.slots.len() || m.index.slots.is_empty());
    }

    #[test]
    fn agrees_with_hashmap_over_random_operations() {
        for seed in 1..=20u64 {
            let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut m = StrMap::new();
            let mut r = HashMap::new();
            // Few distinct keys, so inserts hit existing ones and removes find them.
            let keys = 1 + (g.next() % 300) as usize;
            for step in 0..4_000u64 {
                let k = format!("k{}", g.next() % keys as u64);
                match g.next() % 5 {
                    0 | 1 => assert_eq!(m.insert(k.clone(), step), r.insert(k, step)),
                    2 => assert_eq!(m.remove(&k), r.remove(&k)),
                    3 => {
                        *m.get_or_insert_with(&k, || step).unwrap() += 1;
                        *r.entry(k).or_insert(step) += 1;
                    }
                    _ => {
                        let odd = step % 2;
                        m.retain(|_, v| *v % 7 != odd);
                        r.retain(|_, v| *v % 7 != odd);
                    }
                }
                if step % 97 == 0 {
                    check(&m, &r);
                }
            }
            check(&m, &r);
            m.clear();
            r.clear();
            check(&m, &r);
            assert_eq!(m.get("k1"), None);
        }
    }

    #[test]
    fn colliding_keys_stay_findable_after_removals() {
        // Keys whose hashes share their low bits probe into one run: removing
        // from its middle must shift the rest back, not cut the run.
        let mut keys: Vec<String> = Vec::new();
        let mut i = 0u64;
        while keys.len() < 40 {
            let k = format!("id-{i}");
            if hash(&k) & 0xff == 7 {
                keys.push(k);
            }
            i += 1;
        }
        let mut m = StrMap::new();
        for (n, k) in keys.iter().enumerate() {
            m.insert(k.clone(), n);
        }
        for k in keys.iter().step_by(3) {
            assert!(m.remove(k).is_some());
        }
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k), (n % 3 != 0).then_some(&n), "{k}");
        }
    }

    #[test]
    fn empty_and_odd_keys() {
        let mut m = StrMap::with_capacity(4);
        assert_eq!(m.get(""), None);
        assert_eq!(m.remove("x"), None);
        m.insert(String::new(), 1);
        m.insert("\u{0}".into(), 2);
        m.insert("a".repeat(1000), 3);
        assert_eq!(m.get(""), Some(&1));
        assert_eq!(m.get("\u{0}"), Some(&2));
        assert_eq!(m.get(&"a".repeat(1000)), Some(&3));
        assert_eq!(m.get(&"a".repeat(999)), None);
        let c: StrMap<i32> = m.iter().map(|(k, v)| (k.to_owned(), *v)).collect();
        assert_eq!(c, m);
    }
}
