//! The cache's size budget (`cacheMaxBytes`): what is cached, how big, when last used. Room
//! for a new blob is made by evicting least-recently-used blobs; pinned blobs (those of local
//! repositories, which cannot be fetched again) and blobs being served are never evicted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::oci::Digest;
use crate::store::CacheDir;
use crate::table::SharedMap;

/// A blob's last use is recorded at most this often, so hot blobs served on every core do not
/// write a shared cache line per request.
const TOUCH_GRANULARITY_MS: u64 = 1_000;

pub struct Entry {
    size: u64,
    last_used_ms: AtomicU64,
    pinned: AtomicBool,
}

pub struct Budget {
    max_bytes: Option<u64>,
    used_bytes: AtomicU64,
    entries: SharedMap<Digest, Arc<Entry>>,
    evictions: AtomicU64,
}

/// What `reserve` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Room is made (after evicting these); the size is counted as used.
    Granted { evicted: Vec<Digest> },
    /// Not enough can be evicted: the blob must not be cached.
    Refused,
}

impl Budget {
    /// The budget over what `scan` found in the cache; `pinned` blobs are never evicted.
    pub fn new(max_bytes: Option<u64>, scan: Vec<(Digest, u64)>, now_ms: u64) -> Budget {
        let budget = Budget { max_bytes, used_bytes: AtomicU64::new(0), entries: SharedMap::new(), evictions: AtomicU64::new(0) };
        for (digest, size) in scan {
            budget.add(digest, size, now_ms);
        }
        budget
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The limit (`cacheMaxBytes`); `None`: unlimited.
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Records a blob now in the cache (its size was reserved, or it was there at start).
    pub fn add(&self, digest: Digest, size: u64, now_ms: u64) {
        let entry = Arc::new(Entry { size, last_used_ms: AtomicU64::new(now_ms), pinned: AtomicBool::new(false) });
        if self.entries.insert(digest, entry).is_none() {
            self.used_bytes.fetch_add(size, Ordering::AcqRel);
        }
    }

    /// Records a blob that was cached under a reservation of `reserved` bytes and turned out to
    /// be `size` bytes (they differ when upstream did not announce the size).
    pub fn commit(&self, digest: Digest, size: u64, reserved: u64, now_ms: u64) {
        let entry = Arc::new(Entry { size, last_used_ms: AtomicU64::new(now_ms), pinned: AtomicBool::new(false) });
        if self.entries.insert(digest, entry).is_some() {
            // Already counted (published twice): give the reservation back.
            self.release(reserved);
            return;
        }
        if size >= reserved {
            self.used_bytes.fetch_add(size - reserved, Ordering::AcqRel);
        } else {
            self.release(reserved - size);
        }
    }

    /// Gives back a reservation whose blob was not cached after all.
    pub fn release(&self, size: u64) {
        self.used_bytes.fetch_sub(size.min(self.used_bytes()), Ordering::AcqRel);
    }

    /// Forgets a blob whose file is gone (deleted or found corrupt behind our back).
    pub fn remove(&self, digest: &Digest) {
        if let Some(entry) = self.entries.remove(digest) {
            self.release(entry.size);
        }
    }

    pub fn pin(&self, digest: &Digest) {
        if let Some(entry) = self.entries.get(digest) {
            entry.pinned.store(true, Ordering::Release);
        }
    }

    pub fn touch(&self, digest: &Digest, now_ms: u64) {
        if let Some(entry) = self.entries.get(digest) {
            if now_ms.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) >= TOUCH_GRANULARITY_MS {
                entry.last_used_ms.store(now_ms, Ordering::Relaxed);
            }
        }
    }

    /// Makes room for `size` more bytes, choosing least-recently-used blobs that are neither
    /// pinned nor `in_use`, and deleting their files. Blocking (file deletion): run it on the
    /// blocking pool.
    pub fn reserve(&self, size: u64, cache: &CacheDir, in_use: impl Fn(&Digest) -> bool) -> Reservation {
        let Some(max) = self.max_bytes else {
            self.used_bytes.fetch_add(size, Ordering::AcqRel);
            return Reservation::Granted { evicted: Vec::new() };
        };
        let needed = (self.used_bytes() + size).saturating_sub(max);
        let Some(victims) = self.victims(needed, &in_use) else {
            return Reservation::Refused;
        };
        let mut evicted = Vec::new();
        for victim in victims {
            if let Some(entry) = self.entries.remove(&victim) {
                self.used_bytes.fetch_sub(entry.size.min(self.used_bytes()), Ordering::AcqRel);
                if let Ok(path) = cache.blob_path(&victim) {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete an evicted blob");
                    }
                }
                self.evictions.fetch_add(1, Ordering::Relaxed);
                evicted.push(victim);
            }
        }
        self.used_bytes.fetch_add(size, Ordering::AcqRel);
        Reservation::Granted { evicted }
    }

    /// The least-recently-used evictable blobs that free at least `needed` bytes; `None` if
    /// all of them together do not (then nothing is evicted for nothing).
    fn victims(&self, needed: u64, in_use: &impl Fn(&Digest) -> bool) -> Option<Vec<Digest>> {
        if needed == 0 {
            return Some(Vec::new());
        }
        let mut candidates: Vec<(Digest, Arc<Entry>)> = self
            .entries
            .entries()
            .into_iter()
            .filter(|(digest, entry)| !entry.pinned.load(Ordering::Acquire) && !in_use(digest))
            .collect();
        candidates.sort_by_key(|(_, entry)| entry.last_used_ms.load(Ordering::Relaxed));
        let mut freed = 0;
        let mut victims = Vec::new();
        for (digest, entry) in candidates {
            if freed >= needed {
                break;
            }
            freed += entry.size;
            victims.push(digest);
        }
        (freed >= needed).then_some(victims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn evicts_least_recently_used_but_never_pinned_or_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        for n in 1..=4 {
            cache.put_verified(&digest(n), &[n]).unwrap();
        }
        let scan = (1..=4).map(|n| (digest(n), 100)).collect();
        let budget = Budget::new(Some(450), scan, 0);
        budget.touch(&digest(1), 5_000);
        budget.touch(&digest(3), 6_000);
        budget.pin(&digest(2));
        assert_eq!(budget.used_bytes(), 400);
        let in_use = |d: &Digest| *d == digest(4);
        assert_eq!(budget.reserve(150, &cache, in_use), Reservation::Granted { evicted: vec![digest(1)] });
        assert!(!cache.contains(&digest(1)));
        assert_eq!(budget.used_bytes(), 450);
        assert_eq!(budget.reserve(400, &cache, in_use), Reservation::Refused, "only #3 is evictable");
        budget.release(150);
        assert_eq!(budget.reserve(200, &cache, |_| false), Reservation::Granted { evicted: vec![digest(4)] });
        assert_eq!(budget.evictions(), 2);
        assert!(cache.contains(&digest(2)) && cache.contains(&digest(3)));
    }

    #[test]
    fn no_limit_never_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let budget = Budget::new(None, vec![(digest(1), 10)], 0);
        assert_eq!(budget.reserve(u64::MAX / 2, &cache, |_| false), Reservation::Granted { evicted: vec![] });
    }
}
