//! A map and a set kept as sorted vectors.
//!
//! Most maps of the core are small (header names, termination reasons,
//! error kinds, per-send metrics up to their bound, the runs of one
//! socket) and read far more often than they change. A sorted
//! `Vec` answers lookups by binary search and iterates in key order like a
//! `BTreeMap`, and its code is a binary search and a `Vec` insert or remove
//! per key/value type, where each `BTreeMap` instantiation brings its node
//! balancing code into the wasm (4–5 KB each; there were eight).
//!
//! Inserting or removing is O(n) (a move of the tail), and so collecting
//! unsorted pairs is O(n²) (sorted ones: O(n log n)): it is for the small,
//! bounded maps (headers, metric counters and attributes, a socket's runs,
//! the tabs' watchers). Tables that grow with a run's history (the
//! reducer's index, persistence, the snapshot caches) are [`StrMap`](super::strmap::StrMap)s. No
//! bound of its own: each user states its bound.

use std::borrow::Borrow;

/// A map ordered by key, stored as a sorted `Vec` of pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct VecMap<K, V> {
    items: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map.
    pub const fn new() -> Self {
        Self { items: Vec::new() }
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.items.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        self.items.get(i).map(|(_, v)| v)
    }

    /// The value of `key`, mutably.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        self.items.get_mut(i).map(|(_, v)| v)
    }

    /// True when `key` has a value.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets the value of `key`; the previous one, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => self
                .items
                .get_mut(i)
                .map(|slot| std::mem::replace(&mut slot.1, value)),
            Err(i) => {
                self.items.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; its value, if it had one.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(self.items.remove(i).1)
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The keys in order, consuming the map.
    pub fn into_keys(self) -> impl DoubleEndedIterator<Item = K> + ExactSizeIterator {
        self.items.into_iter().map(|(k, _)| k)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.items.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.items.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.items.iter().map(|(_, v)| v)
    }
}

impl<K: Ord> VecMap<K, u64> {
    /// Adds one to the count of `key` (from 0); `to_key` makes the owned
    /// key only when the key is new.
    pub fn increment<Q: Ord + ?Sized>(&mut self, key: &Q, to_key: impl FnOnce(&Q) -> K)
    where
        K: Borrow<Q>,
    {
        match self.find(key) {
            Ok(i) => {
                if let Some((_, n)) = self.items.get_mut(i) {
                    *n = n.saturating_add(1);
                }
            }
            Err(i) => self.items.insert(i, (to_key(key), 1)),
        }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// Later pairs with an equal key replace earlier ones (as `BTreeMap` collects).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Self::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord, V, const N: usize> From<[(K, V); N]> for VecMap<K, V> {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter().map(|(k, v)| (k, v))
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for VecMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.items.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<'de, K, V> serde::Deserialize<'de> for VecMap<K, V>
where
    K: serde::Deserialize<'de> + Ord,
    V: serde::Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: std::collections::BTreeMap<K, V> = serde::Deserialize::deserialize(d)?;
        Ok(m.into_iter().collect())
    }
}

/// A set ordered by value, stored as a sorted `Vec`.
#[derive(Debug, Clone, PartialEq)]
pub struct VecSet<T> {
    map: VecMap<T, ()>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        Self {
            map: VecMap::default(),
        }
    }
}

impl<T: Ord> VecSet<T> {
    /// An empty set.
    pub const fn new() -> Self {
        Self { map: VecMap::new() }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `v`; true if it was not there.
    pub fn insert(&mut self, v: T) -> bool {
        self.map.insert(v, ()).is_none()
    }

    /// Removes `v`; true if it was there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.map.remove(v).is_some()
    }

    /// True when `v` is in the set.
    pub fn contains<Q: Ord + ?Sized>(&self, v: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.map.contains_key(v)
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random operations applied to a `VecMap` and a `BTreeMap` agree,
    /// entry for entry, after every step.
    #[test]
    fn behaves_like_a_btreemap() {
        let mut rng = crate::core::rng::Rng::new([7, 9]);
        let mut a: VecMap<u64, u64> = VecMap::new();
        let mut b: BTreeMap<u64, u64> = BTreeMap::new();
        for step in 0..20_000u64 {
            let k = rng.next_u64() % 64;
            match rng.next_u64() % 5 {
                0 | 1 => assert_eq!(a.insert(k, step), b.insert(k, step)),
                2 => assert_eq!(a.remove(&k), b.remove(&k)),
                3 => {
                    a.increment(&k, |k| *k);
                    *b.entry(k).or_insert(0) += 1;
                }
                _ => {
                    assert_eq!(a.get(&k), b.get(&k));
                    assert_eq!(a.contains_key(&k), b.contains_key(&k));
                    if let (Some(x), Some(y)) = (a.get_mut(&k), b.get_mut(&k)) {
                        *x += 7;
                        *y += 7;
                    }
                }
            }
            assert_eq!(a.len(), b.len());
            assert!(a.iter().eq(b.iter()), "step {step}");
            assert!(a.keys().eq(b.keys()) && a.values().eq(b.values()));
        }
        let collected: VecMap<u64, u64> = [(3, 1), (1, 2), (3, 4)].into_iter().collect();
        assert_eq!(
            collected.iter().collect::<Vec<_>>(),
            vec![(&1, &2), (&3, &4)]
        );
    }

    /// Collecting keeps the last pair of a key, as `BTreeMap` does, for
    /// sorted, reversed and shuffled inputs with repeats.
    #[test]
    fn collects_like_a_btreemap() {
        let mut rng = crate::core::rng::Rng::new([3, 5]);
        for n in [0usize, 1, 2, 3, 10, 100, 1_000] {
            for shape in 0..3 {
                let pairs: Vec<(u64, usize)> = (0..n)
                    .map(|i| {
                        let k = match shape {
                            0 => i as u64,
                            1 => (n - i) as u64,
                            _ => rng.next_u64() % (n as u64 / 2 + 1),
                        };
                        (k, i)
                    })
                    .collect();
                let a: VecMap<u64, usize> = pairs.iter().copied().collect();
                let b: BTreeMap<u64, usize> = pairs.iter().copied().collect();
                assert!(a.iter().eq(b.iter()), "n {n} shape {shape}");
            }
        }
    }

    #[test]
    fn set_keeps_one_of_each() {
        let mut s = VecSet::new();
        assert!(s.insert("b".to_owned()));
        assert!(s.insert("a".to_owned()));
        assert!(!s.insert("b".to_owned()));
        assert_eq!(s.len(), 2);
        assert!(s.remove("a"));
        assert!(!s.remove("a"));
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
    }
}
