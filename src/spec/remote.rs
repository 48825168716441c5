//! The `remote/<id>` spec store: in memory on a single node; with Redis, Redis is the truth
//! (orchestrators write there, the admin API writes through) and memory is a cache every core
//! reads, so a hot lookup never touches Redis. A cached spec older than `REVALIDATE` is served
//! and re-read in the background; a write reaches Redis before it counts, so nothing is stored
//! on one node only while Redis is down. A spec's direct layer content is handed to the
//! `ContentKeeper` before it is held, so memory keeps the spec and not megabytes of layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{parse_spec, SpecError, StoredSpec};
use crate::hyper_glue::coarse_now_ms;
use crate::oci::Digest;
use crate::redis_client::{keys::SPEC_TTL, RedisClient};
use crate::table::SharedMap;

/// A spec read from Redis is looked up there again (in the background) after this long.
const REVALIDATE_MS: u64 = 5_000;

struct Cached {
    spec: Arc<StoredSpec>,
    read_at_ms: u64,
    refreshing: AtomicBool,
}

/// Takes a direct layer's verified content (its digest and bytes) and returns the same bytes
/// held somewhere cheaper than the heap (the registry writes them to the blob cache and
/// returns the file's mapping), or the bytes it was given if it cannot.
pub type ContentKeeper = Arc<dyn Fn(Digest, Bytes) -> Pin<Box<dyn Future<Output = Bytes>>> + Send + Sync>;

pub struct RemoteSpecs {
    memory: SharedMap<String, Arc<Cached>>,
    redis: Option<RedisClient>,
    keeper: Option<ContentKeeper>,
    /// Bumped by every local write, so a background refresh that read an older value does not
    /// overwrite a newer one.
    generation: AtomicU64,
}

impl RemoteSpecs {
    pub fn new(redis: Option<RedisClient>, keeper: Option<ContentKeeper>) -> Arc<RemoteSpecs> {
        Arc::new(RemoteSpecs { memory: SharedMap::new(), redis, keeper, generation: AtomicU64::new(0) })
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
        let now = coarse_now_ms();
        if let Some(cached) = self.memory.get(id) {
            let stale = self.redis.is_some() && now.saturating_sub(cached.read_at_ms) >= REVALIDATE_MS;
            if stale && !cached.refreshing.swap(true, Ordering::AcqRel) {
                let (this, id) = (Arc::clone(self), id.to_owned());
                glommio::spawn_local(async move {
                    if let Err(e) = this.read_through(&id).await {
                        tracing::debug!(id, error = %e, "cannot revalidate a spec; keeping the cached one");
                        if let Some(cached) = this.memory.get(&id) {
                            cached.refreshing.store(false, Ordering::Release);
                        }
                    }
                })
                .detach();
            }
            return Ok(Some(Arc::clone(&cached.spec)));
        }
        if self.redis.is_none() {
            return Ok(None);
        }
        self.read_through(id).await
    }

    async fn read_through(&self, id: &str) -> Result<Option<Arc<StoredSpec>>, SpecError> {
        let Some(redis) = &self.redis else { return Ok(None) };
        let generation = self.generation.load(Ordering::Acquire);
        let found = redis.get(&redis.keys().spec(id)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
        let Some(json) = found else {
            if self.generation.load(Ordering::Acquire) == generation {
                self.memory.remove(id);
            }
            return Ok(None);
        };
        let parsed = parse_spec(&json).map_err(|e| SpecError::Invalid(format!("spec `{id}` in Redis: {e}")))?;
        drop(json);
        let spec = Arc::new(self.kept(parsed).await);
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache(id, Arc::clone(&spec));
        }
        Ok(Some(spec))
    }

    fn cache(&self, id: &str, spec: Arc<StoredSpec>) {
        let cached = Cached { spec, read_at_ms: coarse_now_ms(), refreshing: AtomicBool::new(false) };
        self.memory.insert(id.to_owned(), Arc::new(cached));
    }

    /// Stores (or replaces) a spec; returns whether one was there before.
    ///
    /// # Errors
    /// Redis is configured and did not take the write.
    pub async fn put(&self, id: &str, spec: StoredSpec) -> Result<bool, SpecError> {
        let existed_locally = self.memory.get(id).is_some();
        // Kept before anything counts, so no await sits between counting a write and caching it.
        let spec = self.kept(spec).await;
        if let Some(redis) = &self.redis {
            let key = redis.keys().spec(id);
            let existed = redis.get(&key).await.map_err(|e| SpecError::Unavailable(e.to_string()))?.is_some();
            redis.set(&key, spec.to_json(), Some(SPEC_TTL)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.cache(id, Arc::new(spec));
            return Ok(existed || existed_locally);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache(id, Arc::new(spec));
        Ok(existed_locally)
    }

    /// Removes a spec; returns whether one was there.
    ///
    /// # Errors
    /// Redis is configured and did not take the deletion.
    pub async fn delete(&self, id: &str) -> Result<bool, SpecError> {
        let mut existed = self.memory.remove(id).is_some();
        if let Some(redis) = &self.redis {
            existed |= redis.delete(&redis.keys().spec(id)).await.map_err(|e| SpecError::Unavailable(e.to_string()))?;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(existed)
    }
}
