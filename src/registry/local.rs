//! Local repositories (imported OCI layouts, the demo image): their records, cached in a shared
//! table and re-read from disk so that a separate `import` process is seen by a running server:
//! at once for a new name, tag or digest, within `REVALIDATE_MS` for a moved tag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::blocking::run_blocking;
use super::content::{Content, StoredManifest};
use super::error::RegistryError;
use crate::clock::Clock;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::store::{CacheDir, RepositoryRecord};
use crate::table::SharedMap;

/// A cached record older than this is re-read in the background when used.
const REVALIDATE_MS: u64 = 1_000;

pub struct LocalRepository {
    pub record: RepositoryRecord,
    loaded_at_ms: u64,
    refreshing: AtomicBool,
}

impl LocalRepository {
    fn new(record: RepositoryRecord, now_ms: u64) -> LocalRepository {
        LocalRepository { record, loaded_at_ms: now_ms, refreshing: AtomicBool::new(false) }
    }

    pub fn tag(&self, tag: &Tag) -> Option<&Digest> {
        self.record.tags.get(tag)
    }

    pub fn manifest_media_type(&self, digest: &Digest) -> Option<&str> {
        self.record.manifests.get(digest).map(String::as_str)
    }

    /// Whether `digest` may be fetched from this repository's blob endpoint.
    pub fn serves_blob(&self, digest: &Digest) -> bool {
        self.record.blobs.contains(digest) || self.record.manifests.contains_key(digest)
    }

    fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.loaded_at_ms) >= REVALIDATE_MS
    }
}

pub struct LocalRepositories {
    cache: Arc<CacheDir>,
    content: Arc<Content>,
    table: SharedMap<RepositoryName, Arc<LocalRepository>>,
    clock: Clock,
}

impl LocalRepositories {
    pub fn new(cache: Arc<CacheDir>, content: Arc<Content>, clock: Clock) -> LocalRepositories {
        LocalRepositories { cache, content, table: SharedMap::new(), clock }
    }

    /// The repository `name`, from the table or from disk; `None` if it does not exist.
    /// A stale entry is served as is and refreshed in the background.
    ///
    /// # Errors
    /// The record on disk cannot be read.
    pub async fn get(self: &Arc<Self>, name: &RepositoryName) -> Result<Option<Arc<LocalRepository>>, RegistryError> {
        let now = self.clock.now_ms();
        match self.table.get(name) {
            Some(repo) => {
                if repo.is_stale(now) && !repo.refreshing.swap(true, Ordering::AcqRel) {
                    let this = Arc::clone(self);
                    let name = name.clone();
                    glommio::spawn_local(async move {
                        if let Err(e) = this.reload(&name).await {
                            tracing::warn!(repository = %name, error = %e, "cannot refresh repository record");
                        }
                    })
                    .detach();
                }
                Ok(Some(repo))
            }
            None => self.reload(name).await,
        }
    }

    /// Reads `name` from disk again, e.g. after a miss inside a known repository (an absent
    /// tag or digest), in case an import added it since the record was read. Misses are
    /// answered 404 anyway, so the small read is not on the hot path.
    ///
    /// # Errors
    /// The record on disk cannot be read.
    pub async fn reload(&self, name: &RepositoryName) -> Result<Option<Arc<LocalRepository>>, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let owned = name.clone();
        let record = run_blocking(move || cache.read_record(&owned)).await?;
        let Some(record) = record else {
            self.table.remove(name);
            return Ok(None);
        };
        // A local image cannot be fetched again: its content is never evicted.
        self.content.pin(record.blobs.iter().chain(record.manifests.keys()));
        let repo = Arc::new(LocalRepository::new(record, self.clock.now_ms()));
        self.table.insert(name.clone(), Arc::clone(&repo));
        Ok(Some(repo))
    }

    /// The manifest `digest` of `repo`, if the repository has it.
    ///
    /// # Errors
    /// The record names it but the cache lost it, or cannot read it.
    pub async fn manifest(&self, repo: &LocalRepository, digest: &Digest) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        let Some(media_type) = repo.manifest_media_type(digest) else { return Ok(None) };
        let manifest = self.content.manifest(digest, media_type).await?;
        manifest.map(Some).ok_or_else(|| RegistryError::MissingContent(digest.clone()))
    }
}
