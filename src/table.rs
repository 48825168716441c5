//! The lock-free maps every executor reads: one type, over `papaya`, whose reads take no lock and
//! write nothing shared. Values are cloned out (`Arc`s or `Bytes`), so no guard outlives a call.
//! Why not crossbeam-skiplist or dashmap: docs/architecture.md.

use std::borrow::Borrow;
use std::hash::Hash;

pub struct SharedMap<K, V> {
    inner: papaya::HashMap<K, V>,
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap { inner: papaya::HashMap::new() }
    }
}

impl<K, V> SharedMap<K, V>
where
    K: Hash + Eq + Send + Sync,
    V: Clone + Send + Sync,
{
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.pin().get(key).cloned()
    }

    /// Inserts or replaces; returns the value that was there.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.inner.pin().insert(key, value).cloned()
    }

    /// Returns the present value, or inserts the one `make` builds. `make` may run and its
    /// value be dropped if another core inserts first; it must be cheap and side-effect free.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.inner.pin().get_or_insert_with(key, make).clone()
    }

    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.pin().remove(key).cloned()
    }

    /// Removes the entry if `should_remove` says so for its current value; true if removed.
    /// The test and the removal are one atomic step, so a value replaced meanwhile stays.
    pub fn remove_if<Q>(&self, key: &Q, should_remove: impl FnMut(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut should_remove = should_remove;
        matches!(self.inner.pin().remove_if(key, |_, value| should_remove(value)), Ok(Some(_)))
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// A copy of every entry, for occasional whole-table work (eviction); not a consistent
    /// snapshot under concurrent writes.
    pub fn entries(&self) -> Vec<(K, V)>
    where
        K: Clone,
    {
        self.inner.pin().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
