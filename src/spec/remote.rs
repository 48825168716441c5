//! The `remote/<id>` spec store: memory on a single node; with Redis, Redis is the truth and
//! memory a cache every core reads (re-read after `REVALIDATE_MS`, dropped after `IDLE_MS`
//! unused). A write counts once it is in Redis. Direct layer content goes to the
//! `ContentKeeper`; a replaced or dropped spec is told to the `SpecListener`.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{parse_spec, SpecError, StoredSpec};
use crate::clock::Clock;
use crate::oci::Digest;
use crate::redis_client::{keys::SPEC_TTL, RedisClient};
use crate::table::SharedMap;

/// A spec read from Redis is looked up there again (in the background) after this long.
const REVALIDATE_MS: u64 = 5_000;
/// With Redis, a spec no lookup asked for in this long is dropped from memory; the next
/// lookup reads it again.
const IDLE_MS: u64 = 10 * 60 * 1000;
/// Memory is searched for idle specs at most this often, by whichever lookup comes first.
const SWEEP_EVERY_MS: u64 = 60 * 1000;
/// A lookup records its time only when the last record is older than this, so that the
/// cores serving one hot spec do not all write its entry on every request.
const TOUCH_EVERY_MS: u64 = 1000;

/// Local writes are counted per stripe of ids (by a hash of the id), and a read from Redis
/// that a write of its stripe overlapped is not cached: it may be older than the write. Per
/// stripe rather than one count for all, so that a busy admin API writing other specs does not
/// keep discarding re-reads; not per id, so that the counts take fixed memory however many
/// ids come and go. Two ids sharing a stripe only cost a re-read.
const WRITE_STRIPES: usize = 64;

struct Cached {
    spec: Arc<StoredSpec>,
    read_at_ms: u64,
    /// When a lookup last asked for it (to within `TOUCH_EVERY_MS`).
    used_at_ms: AtomicU64,
    /// A background re-read of this entry is under way (at most one).
    refreshing: AtomicBool,
}

impl Cached {
    fn new(spec: Arc<StoredSpec>, now: u64) -> Arc<Cached> {
        Arc::new(Cached { spec, read_at_ms: now, used_at_ms: AtomicU64::new(now), refreshing: AtomicBool::new(false) })
    }

    fn touch(&self, now: u64) {
        if now.saturating_sub(self.used_at_ms.load(Ordering::Relaxed)) >= TOUCH_EVERY_MS {
            self.used_at_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// Takes a direct layer's verified content (its digest and bytes) and returns the same bytes
/// held somewhere cheaper than the heap (the registry writes them to the blob cache and
/// returns the file's mapping), or the bytes it was given if it cannot.
pub type ContentKeeper = Arc<dyn Fn(Digest, Bytes) -> Pin<Box<dyn Future<Output = Bytes>>> + Send + Sync>;

/// How a spec this node held changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecChange {
    /// Another spec (another key) took its place, or its place is empty until the next read.
    Replaced,
    /// Deleted, here or in Redis.
    Removed,
}

/// Told the id, the spec as it was and how it changed, after the change took effect.
pub type SpecListener = Arc<dyn Fn(&str, &StoredSpec, SpecChange) + Send + Sync>;

pub struct RemoteSpecs {
    memory: SharedMap<String, Arc<Cached>>,
    redis: Option<RedisClient>,
    keeper: Option<ContentKeeper>,
    listener: Option<SpecListener>,
    /// Local writes so far, by stripe of ids; see `WRITE_STRIPES`.
    writes: [AtomicU64; WRITE_STRIPES],
    /// When memory was last searched for idle specs.
    swept_at_ms: AtomicU64,
    clock: Clock,
}

/// A read of one id from Redis under way: the count of its stripe's local writes when it
/// began, and the cached entry it re-reads, if any, whose `refreshing` flag it clears however
/// it ends (cached, discarded, failed or dropped), so that a later lookup re-reads again.
struct Read {
    writes_seen: u64,
    revalidating: Option<Arc<Cached>>,
}

impl Drop for Read {
    fn drop(&mut self) {
        if let Some(cached) = &self.revalidating {
            cached.refreshing.store(false, Ordering::Release);
        }
    }
}

impl RemoteSpecs {
    pub fn new(redis: Option<RedisClient>, keeper: Option<ContentKeeper>, listener: Option<SpecListener>, clock: Clock) -> Arc<RemoteSpecs> {
        let writes = std::array::from_fn(|_| AtomicU64::new(0));
        let swept_at_ms = AtomicU64::new(clock.now_ms());
        Arc::new(RemoteSpecs { memory: SharedMap::new(), redis, keeper, listener, writes, swept_at_ms, clock })
    }

    async fn kept(&self, spec: StoredSpec) -> StoredSpec {
        match &self.keeper {
            Some(keeper) => spec.keep_content(|digest, bytes| keeper(digest, bytes)).await,
            None => spec,
        }
    }

    /// The spec of `id`, if any.
    ///
    /// # Errors
    /// Redis is needed (the spec is not cached) and unavailable, or holds an invalid spec.
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<Option<Arc<StoredSpec>>, SpecError> {
        let now = self.clock.now_ms();
        // Only while Redis answers: with Redis down, memory is all this node can serve from.
        if self.redis.as_ref().is_some_and(|redis| redis.health().is_up()) {
            self.sweep_if_due(now);
        }
        if let Some(cached) = self.memory.get(id) {
            cached.touch(now);
            let stale = self.redis.is_some() && now.saturating_sub(cached.read_at_ms) >= REVALIDATE_MS;
            if stale && !cached.refreshing.swap(true, Ordering::AcqRel) {
                self.refresh_in_background(id, Arc::clone(&cached));
            }
            return Ok(Some(Arc::clone(&cached.spec)));
        }
        if self.redis.is_none() {
            return Ok(None);
        }
        self.read_through(id, self.begin_read(id, None)).await
    }

    /// The spec of `id` as this node holds it now, without asking Redis.
    pub fn held(&self, id: &str) -> Option<Arc<StoredSpec>> {
        self.memory.get(id).map(|cached| Arc::clone(&cached.spec))
    }

    fn sweep_if_due(&self, now: u64) {
        let last = self.swept_at_ms.load(Ordering::Relaxed);
        // One lookup among all cores wins the sweep; the others go on.
        if now.saturating_sub(last) >= SWEEP_EVERY_MS && self.swept_at_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.forget_idle(now);
        }
    }

    /// Drops every spec that no lookup asked for in `IDLE_MS` before `now` and that is not
    /// being re-read; what was built from it is told to go (`Replaced`: its place is empty
    /// until the next read, and pulls under way keep what they hold).
    fn forget_idle(&self, now: u64) {
        for (id, cached) in self.memory.entries() {
            let idle = now.saturating_sub(cached.used_at_ms.load(Ordering::Relaxed)) >= IDLE_MS;
            if idle && !cached.refreshing.load(Ordering::Acquire) && self.memory.remove_if(&id, |current| Arc::ptr_eq(current, &cached)) {
                self.tell(&id, &cached.spec, SpecChange::Replaced);
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, id: &str, cached: Arc<Cached>) {
        // Begun before the task is spawned: a task dropped unpolled still clears the flag.
        let read = self.begin_read(id, Some(cached));
        let (this, id) = (Arc::clone(self), id.to_owned());
        glommio::spawn_local(async move {
            if let Err(e) = this.read_through(&id, read).await {
                tracing::debug!(id, error = %e, "cannot revalidate a spec; keeping the cached one");
            }
        })
        .detach();
    }

    fn stripe(&self, id: &str) -> &AtomicU64 {
        &self.writes[stripe_of(id)]
    }

    fn begin_read(&self, id: &str, revalidating: Option<Arc<Cached>>) -> Read {
        Read { writes_seen: self.stripe(id).load(Ordering::Acquire), revalidating }
    }

    async fn read_through(&self, id: &str, read: Read) -> Result<Option<Arc<StoredSpec>>, SpecError> {
        let Some(redis) = &self.redis else { return Ok(None) };
        let found = redis.get(&redis.keys().spec(id)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
        let spec = match found {
            Some(json) => {
                let parsed = parse_spec(&json).map_err(|e| SpecError::Invalid(format!("spec `{id}` in Redis: {e}")))?;
                drop(json);
                Some(Arc::new(self.kept(parsed).await))
            }
            None => None,
        };
        self.settle(id, read, spec.clone());
        Ok(spec)
    }

    /// Caches what a read from Redis found for `id` (or forgets the entry it re-read, if Redis
    /// no longer has the spec), unless a local write of the id's stripe overlapped the read:
    /// the write is newer, and the next lookup reads again.
    fn settle(&self, id: &str, read: Read, found: Option<Arc<StoredSpec>>) {
        let writes = self.stripe(id);
        if writes.load(Ordering::Acquire) != read.writes_seen {
            return;
        }
        let Some(spec) = found else {
            if let Some(old) = &read.revalidating {
                // Only the entry that was re-read: a spec written meanwhile stays.
                if self.memory.remove_if(id, |current| Arc::ptr_eq(current, old)) {
                    self.tell(id, &old.spec, SpecChange::Removed);
                }
            }
            return;
        };
        let fresh = Cached::new(spec, self.clock.now_ms());
        let replaced = match read.revalidating {
            Some(_) => self.memory.insert(id.to_owned(), Arc::clone(&fresh)),
            None => {
                // A first read never replaces what another core cached or a write stored.
                let held = self.memory.get_or_insert_with(id.to_owned(), || Arc::clone(&fresh));
                if !Arc::ptr_eq(&held, &fresh) {
                    return;
                }
                None
            }
        };
        if let Some(old) = replaced.filter(|old| old.spec.spec.key != fresh.spec.spec.key) {
            self.tell(id, &old.spec, SpecChange::Replaced);
        }
        // A write may have come between the check above and the insert, and been overwritten by
        // this older read. Writes count before they change memory, so a changed count shows it:
        // take this read back out, and the next lookup reads Redis, which the write reached first.
        if writes.load(Ordering::Acquire) != read.writes_seen && self.memory.remove_if(id, |current| Arc::ptr_eq(current, &fresh)) {
            self.tell(id, &fresh.spec, SpecChange::Replaced);
        }
    }

    fn tell(&self, id: &str, spec: &StoredSpec, change: SpecChange) {
        if let Some(listener) = &self.listener {
            listener(id, spec, change);
        }
    }

    /// Stores (or replaces) a spec; returns whether one was there before.
    ///
    /// # Errors
    /// Redis is configured and did not take the write.
    pub async fn put(&self, id: &str, spec: StoredSpec) -> Result<bool, SpecError> {
        let mut existed = self.memory.get(id).is_some();
        // Kept before anything counts, so no await sits between counting a write and caching it.
        let spec = self.kept(spec).await;
        if let Some(redis) = &self.redis {
            let key = redis.keys().spec(id);
            existed |= redis.get(&key).await.map_err(|e| SpecError::Unavailable(e.to_string()))?.is_some();
            redis.set(&key, spec.to_json(), Some(SPEC_TTL)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
        }
        self.stripe(id).fetch_add(1, Ordering::AcqRel);
        let fresh = Cached::new(Arc::new(spec), self.clock.now_ms());
        if let Some(old) = self.memory.insert(id.to_owned(), Arc::clone(&fresh)).filter(|old| old.spec.spec.key != fresh.spec.spec.key) {
            self.tell(id, &old.spec, SpecChange::Replaced);
        }
        Ok(existed)
    }

    /// Removes a spec; returns whether one was there.
    ///
    /// # Errors
    /// Redis is configured and did not take the deletion (the spec is then still held).
    pub async fn delete(&self, id: &str) -> Result<bool, SpecError> {
        let mut existed = false;
        if let Some(redis) = &self.redis {
            existed = redis.delete(&redis.keys().spec(id)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
        }
        self.stripe(id).fetch_add(1, Ordering::AcqRel);
        if let Some(old) = self.memory.remove(id) {
            self.tell(id, &old.spec, SpecChange::Removed);
            existed = true;
        }
        Ok(existed)
    }
}

/// The write stripe of `id`.
fn stripe_of(id: &str) -> usize {
    // SipHash with fixed keys: the same stripe for an id on every core and every start.
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    (hasher.finish() % WRITE_STRIPES as u64) as usize
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
