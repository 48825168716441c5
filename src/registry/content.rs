//! `Content`, what is cached and ready to serve: verified manifests, and blobs as mmapped `Bytes`
//! with their open file, in tables every executor shares, under the cache's budget. A blob a
//! response holds is never evicted; at most `max_open_blobs` idle blobs stay open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::blocking::run_blocking;
use super::budget::{Budget, Reservation};
use super::error::RegistryError;
use super::single_flight::SingleFlight;
use crate::clock::Clock;
use crate::metrics::{self, CacheKind};
use crate::oci::manifest::{sniff_media_type, MAX_MANIFEST_BYTES};
use crate::oci::Digest;
use crate::store::{CacheDir, FileIdentity, StoreError};
use crate::table::SharedMap;

/// A content digest as text, made once per piece of content: as it is (`sha256:…`, the
/// `Docker-Content-Digest`) and quoted (the `ETag`).
#[derive(Debug, Clone)]
pub struct DigestText {
    pub plain: Bytes,
    pub quoted: Bytes,
}

impl DigestText {
    pub fn of(digest: &Digest) -> DigestText {
        DigestText { plain: Bytes::from(digest.to_string()), quoted: Bytes::from(format!("\"{digest}\"")) }
    }
}

/// A manifest as it goes on the wire.
#[derive(Debug)]
pub struct StoredManifest {
    pub body: Bytes,
    /// Visible ASCII only, so it can always be a header value.
    media_type: Bytes,
    pub digest: Digest,
    pub digest_text: DigestText,
}

impl StoredManifest {
    /// # Errors
    /// `media_type` is not visible ASCII (it could not be a `Content-Type`).
    pub fn new(body: Bytes, media_type: &str, digest: Digest) -> Result<StoredManifest, RegistryError> {
        if media_type.is_empty() || !media_type.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(RegistryError::CorruptManifest { digest, reason: format!("media type {media_type:?} is not a valid header value") });
        }
        let digest_text = DigestText::of(&digest);
        Ok(StoredManifest { body, media_type: Bytes::copy_from_slice(media_type.as_bytes()), digest, digest_text })
    }

    pub fn media_type_str(&self) -> &str {
        std::str::from_utf8(&self.media_type).unwrap_or("")
    }

    /// The media type's bytes, shared.
    pub fn media_type_bytes(&self) -> Bytes {
        self.media_type.clone()
    }
}

/// A cached blob: the whole file mapped, shared zero-copy by every response, and the open
/// file, from which the same bytes can be sent with sendfile.
#[derive(Debug)]
pub struct MappedBlob {
    pub body: Bytes,
    pub file: Arc<std::fs::File>,
    pub digest_text: DigestText,
    /// When a request last asked for it (coarse), to close the least recently used first.
    last_used_ms: AtomicU64,
}

/// Times a request joins an open of its blob before it opens the blob on its own.
const OPEN_ROUNDS: usize = 3;
/// A blob's last use is recorded at most this often (one shared write per second, not per
/// request).
const LAST_USED_GRANULARITY_MS: u64 = 1_000;
/// Open blobs kept when the open-file limit cannot be read.
const FALLBACK_MAX_OPEN_BLOBS: usize = 1024;
/// Never more open blobs than this by default, however high the limit: a few thousand hot
/// layers cover any node, and each mapping counts against vm.max_map_count (65530 by default).
const DEFAULT_MAX_OPEN_BLOBS_CEILING: usize = 4096;

/// The default cap on open blobs: a quarter of the hard open-file limit (the runtime raises the
/// soft limit to it), leaving the rest to connections, fills and the blocking pool; at most
/// `DEFAULT_MAX_OPEN_BLOBS_CEILING`, at least 16.
pub fn default_max_open_blobs() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we own.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_max } else { 0 };
    if hard == 0 {
        return FALLBACK_MAX_OPEN_BLOBS;
    }
    usize::try_from(hard / 4).unwrap_or(usize::MAX).clamp(16, DEFAULT_MAX_OPEN_BLOBS_CEILING)
}

/// What the cache holds under a digest asked for as a manifest of no recorded type.
pub enum SniffedManifest {
    Found(Arc<StoredManifest>),
    /// Nothing cached under the digest.
    Missing,
    /// Cached, verified and no manifest (a layer or a config): content is named by its
    /// digest, so no manifest anywhere has this one.
    NotAManifest,
}

/// Bytes at the start of a cached file looked at to tell a manifest from other content.
const MANIFEST_PEEK_BYTES: usize = 64;

/// Whether content of `size` bytes starting with `start` can be a manifest: a JSON object of at
/// most `MAX_MANIFEST_BYTES`. Layers (gzip, zstd, tar) fail on their first byte. A start that
/// is all whitespace cannot tell, so it may be.
fn may_be_manifest(size: u64, start: &[u8]) -> bool {
    let start = &start[..start.len().min(MANIFEST_PEEK_BYTES)];
    size <= MAX_MANIFEST_BYTES as u64 && start.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')).is_none_or(|&b| b == b'{')
}

/// `may_be_manifest` for the cached file of `digest`, from a stat and a short read; `None`
/// when nothing is cached under it. The bytes are not verified: a `false` is a reason to look
/// closer, not an answer.
///
/// # Errors
/// The file exists but cannot be opened, examined or read.
fn peek_may_be_manifest(cache: &CacheDir, digest: &Digest) -> Result<Option<bool>, StoreError> {
    use std::io::Read;
    let Ok(path) = cache.blob_path(digest) else { return Ok(None) };
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", &path)(e)),
    };
    let size = file.metadata().map_err(StoreError::io("stat", &path))?.len();
    let mut start = [0u8; MANIFEST_PEEK_BYTES];
    let n = file.read(&mut start).map_err(StoreError::io("read", &path))?;
    Ok(Some(may_be_manifest(size, &start[..n])))
}

pub struct Content {
    cache: Arc<CacheDir>,
    manifests: SharedMap<Digest, Arc<StoredManifest>>,
    blobs: SharedMap<Digest, Arc<MappedBlob>>,
    /// Blob files as they were when this process wrote or verified them: opening one of these
    /// again costs an fstat, anything else is hashed first (see `CacheDir::map_blob`).
    trusted: SharedMap<Digest, FileIdentity>,
    /// One open (and, for an untrusted file, one full hash) per blob at a time: a pull storm
    /// right after a restart must not hash the same large layer once per request. The flight
    /// only says whether the blob is now open; waiters take it from `blobs`. (Holding the
    /// `MappedBlob` in the flight would keep it counted as in use while the finished flight
    /// awaits reclamation, so it could never be closed as idle.)
    opening: SingleFlight<Digest, Result<bool, Arc<StoreError>>>,
    max_open_blobs: usize,
    budget: Budget,
    clock: Clock,
}

impl Content {
    /// Indexes what the cache holds. Blocking (a directory scan): call before serving.
    ///
    /// # Errors
    /// The cache directory cannot be listed.
    pub fn open(cache: Arc<CacheDir>, max_bytes: Option<u64>, max_open_blobs: usize, clock: Clock) -> Result<Content, StoreError> {
        let budget = Budget::new(max_bytes, cache.scan_blobs()?, clock.now_ms());
        let max_open_blobs = max_open_blobs.max(1);
        Ok(Content {
            cache,
            manifests: SharedMap::new(),
            blobs: SharedMap::new(),
            trusted: SharedMap::new(),
            opening: SingleFlight::default(),
            max_open_blobs,
            budget,
            clock,
        })
    }

    /// Blobs mapped right now (idle ones are closed beyond `max_open_blobs`).
    pub fn open_blobs(&self) -> usize {
        self.blobs.len()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Marks content that cannot be fetched again (local repositories) as never evictable.
    pub fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        for digest in digests {
            self.budget.pin(digest);
        }
    }

    /// The manifest `digest` (of `media_type`) from memory or the cache, verified on load.
    ///
    /// # Errors
    /// The cached file cannot be read.
    pub async fn manifest(&self, digest: &Digest, media_type: &str) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        let found = self.read_manifest(digest, media_type).await;
        metrics::cache_lookup(CacheKind::Manifest, matches!(found, Ok(Some(_))));
        found
    }

    async fn read_manifest(&self, digest: &Digest, media_type: &str) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        if let Some(hit) = self.manifests.get(digest) {
            return Ok(Some(hit));
        }
        let Some(bytes) = self.read_small_file(digest).await? else { return Ok(None) };
        self.hold_manifest(digest, bytes, media_type).map(Some)
    }

    /// Like `manifest`, for content whose media type is not recorded (mirrored manifests): it
    /// is read from the document itself. Any cached digest may be asked for this way, and
    /// cached content that is no manifest (a layer, a config) is told apart without reading
    /// a layer whole; see `SniffedManifest`.
    ///
    /// # Errors
    /// The cached file cannot be read.
    pub async fn manifest_sniffed(&self, digest: &Digest) -> Result<SniffedManifest, RegistryError> {
        let found = self.sniff_manifest(digest).await;
        metrics::cache_lookup(CacheKind::Manifest, matches!(found, Ok(SniffedManifest::Found(_))));
        found
    }

    async fn sniff_manifest(&self, digest: &Digest) -> Result<SniffedManifest, RegistryError> {
        if let Some(hit) = self.manifests.get(digest) {
            return Ok(SniffedManifest::Found(hit));
        }
        if self.is_other_content(digest).await? {
            return Ok(SniffedManifest::NotAManifest);
        }
        let Some(bytes) = self.read_small_file(digest).await? else { return Ok(SniffedManifest::Missing) };
        match sniff_media_type(&bytes) {
            Some(media_type) => Ok(SniffedManifest::Found(self.hold_manifest(digest, bytes, &media_type)?)),
            // Verified bytes (a config, say): no manifest can have their digest.
            None => Ok(SniffedManifest::NotAManifest),
        }
    }

    /// Whether the cached content of `digest` is, verifiably, no manifest: larger than one
    /// may be, or no JSON object. A peek at the file says whether to look closer, so that a
    /// manifest is never mapped like a layer; content that looks like none is then opened as
    /// a blob, which hashes a file not verified yet (once: it is trusted after) and deletes a
    /// corrupt one, which is then simply not cached.
    async fn is_other_content(&self, digest: &Digest) -> Result<bool, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        if run_blocking(move || peek_may_be_manifest(&cache, &wanted)).await? != Some(false) {
            return Ok(false);
        }
        let blob = self.find_blob(digest).await?;
        Ok(blob.is_some_and(|blob| !may_be_manifest(blob.body.len() as u64, &blob.body)))
    }

    /// A small cached file (a manifest, a config) read whole and verified; `None` if it is not
    /// cached (or was corrupt, and is gone now).
    async fn read_small_file(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        Ok(run_blocking(move || cache.read_verified(&wanted, MAX_MANIFEST_BYTES as u64)).await?)
    }

    /// Keeps verified manifest bytes in memory, ready to serve.
    fn hold_manifest(&self, digest: &Digest, bytes: Vec<u8>, media_type: &str) -> Result<Arc<StoredManifest>, RegistryError> {
        let stored = Arc::new(StoredManifest::new(Bytes::from(bytes), media_type, digest.clone())?);
        self.manifests.insert(digest.clone(), Arc::clone(&stored));
        self.budget.touch(digest, self.clock.now_ms());
        Ok(stored)
    }

    /// Stores a manifest fetched from upstream (already verified against `digest`).
    ///
    /// # Errors
    /// The cache cannot be written.
    pub async fn store_manifest(&self, digest: &Digest, bytes: Bytes, media_type: &str) -> Result<Arc<StoredManifest>, RegistryError> {
        let stored = Arc::new(StoredManifest::new(bytes.clone(), media_type, digest.clone())?);
        // Serving what we fetched matters more than caching it.
        if let Err(e) = self.put_blob_bytes(digest, bytes).await {
            tracing::warn!(%digest, error = %e, "manifest served without caching");
        }
        self.manifests.insert(digest.clone(), Arc::clone(&stored));
        Ok(stored)
    }

    /// A small blob (an image config) read whole and verified; `None` if not cached (a file
    /// that no longer matches its digest is deleted and counts as not cached).
    ///
    /// # Errors
    /// The file cannot be read or is larger than `max_len`.
    pub async fn small_blob(&self, digest: &Digest, max_len: usize) -> Result<Option<Bytes>, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let read = run_blocking(move || cache.read_verified(&wanted, max_len as u64)).await?;
        metrics::cache_lookup(CacheKind::Blob, read.is_some());
        if read.is_some() {
            self.budget.touch(digest, self.clock.now_ms());
        }
        Ok(read.map(Bytes::from))
    }

    /// Caches a small blob fetched whole and already verified; a failure to cache is logged,
    /// the bytes are still used.
    pub async fn store_small_blob(&self, digest: &Digest, bytes: Bytes) {
        if let Err(e) = self.put_blob_bytes(digest, bytes).await {
            tracing::warn!(%digest, error = %e, "blob used without caching");
        }
    }

    /// Writes verified in-memory bytes to the cache and counts them in the budget; a file it
    /// wrote is recorded as trusted.
    async fn put_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), StoreError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let size = bytes.len() as u64;
        // A file we just wrote and verified is opened later with an fstat, not another hash.
        if let Some(identity) = run_blocking(move || cache.put_verified(&wanted, &bytes)).await? {
            self.trusted.insert(digest.clone(), identity);
        }
        self.budget.add(digest.clone(), size, self.clock.now_ms());
        Ok(())
    }

    /// The same bytes as `bytes` (whose digest is `digest`), mapped from their cache file,
    /// which is written first if it is not there: content held for long (a spec's direct
    /// layers) then sits in the page cache, which the kernel can reclaim and re-read, rather
    /// than in the heap. The mapping outlives an eviction of the file (the inode stays until
    /// it is unmapped). If the cache cannot take them, the bytes themselves, with a warning.
    pub async fn keep_mapped(&self, digest: Digest, bytes: Bytes) -> Bytes {
        if bytes.is_empty() {
            return bytes;
        }
        match self.mapped_into_cache(&digest, bytes.clone()).await {
            Ok(blob) => blob.body.clone(),
            Err(error) => {
                tracing::warn!(%digest, %error, "direct layer content kept in memory: the cache cannot take it");
                bytes
            }
        }
    }

    /// The blob `digest` mapped from the cache; `None` if it is not cached, or if its file
    /// turned out to be corrupt (it is then deleted, so a mirror refetches it).
    ///
    /// The hot path is a table lookup and nothing else: no syscall. Files are checked when
    /// they are opened (first use in this process, or after their handle was closed as idle):
    /// an fstat against the identity recorded when we wrote or last verified them, and a full
    /// sha256 when it differs (a file from before this start, or touched behind our back).
    ///
    /// # Errors
    /// The file exists but cannot be opened, mapped or read.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<Arc<MappedBlob>>, RegistryError> {
        let found = self.find_blob(digest).await;
        metrics::cache_lookup(CacheKind::Blob, matches!(found, Ok(Some(_))));
        found
    }

    async fn find_blob(&self, digest: &Digest) -> Result<Option<Arc<MappedBlob>>, RegistryError> {
        let now = self.clock.now_ms();
        self.budget.touch(digest, now);
        if let Some(hit) = self.blobs.get(digest) {
            if now.saturating_sub(hit.last_used_ms.load(Ordering::Relaxed)) >= LAST_USED_GRANULARITY_MS {
                hit.last_used_ms.store(now, Ordering::Relaxed);
            }
            return Ok(Some(hit));
        }
        // A waiter whose blob was closed again before it looked (a sweep on another core)
        // opens it again; past a few rounds it opens it itself.
        for _ in 0..OPEN_ROUNDS {
            let mut mine = None;
            let opened = self
                .opening
                .run(digest.clone(), || async {
                    let opened = self.open_blob(digest, now).await?;
                    let found = opened.is_some();
                    mine = opened;
                    Ok(found)
                })
                .await;
            match opened {
                Ok(true) => match mine.or_else(|| self.blobs.get(digest)) {
                    Some(blob) => return Ok(Some(blob)),
                    None => continue,
                },
                Ok(false) => return Ok(None),
                Err(error) => return Err(RegistryError::Store(error)),
            }
        }
        self.open_blob(digest, now).await.map_err(RegistryError::Store)
    }

    /// The miss path of `blob`, run once per digest at a time.
    async fn open_blob(&self, digest: &Digest, now: u64) -> Result<Option<Arc<MappedBlob>>, Arc<StoreError>> {
        // A flight that ended just before this one began may have opened it.
        if let Some(hit) = self.blobs.get(digest) {
            return Ok(Some(hit));
        }
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let trusted = self.trusted.get(digest);
        let mapped = match run_blocking(move || cache.map_blob(&wanted, trusted)).await {
            Ok(Some(mapped)) => mapped,
            Ok(None) => {
                // A file we opened before is gone: deleted behind our back. (A blob never
                // opened is simply not cached yet; its budget entry may be a fill's, just made.)
                if self.trusted.remove(digest).is_some() {
                    self.forget(digest);
                }
                return Ok(None);
            }
            Err(e @ (StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. })) => {
                tracing::error!(%digest, error = %e, "cached blob was corrupt and is deleted; it is never served");
                self.forget(digest);
                return Ok(None);
            }
            Err(e) => return Err(Arc::new(e)),
        };
        self.trusted.insert(digest.clone(), mapped.identity);
        let blob = Arc::new(MappedBlob { body: mapped.body, file: Arc::new(mapped.file), digest_text: DigestText::of(digest), last_used_ms: AtomicU64::new(now) });
        // Another core may have mapped it meanwhile: serve whichever is in the table, so that
        // one mapping per blob stays open.
        let blob = self.blobs.get_or_insert_with(digest.clone(), || Arc::clone(&blob));
        if self.blobs.len() > self.max_open_blobs {
            self.close_idle_blobs();
        }
        Ok(Some(blob))
    }

    /// Closes the least recently used blobs that no response holds, down to 7/8 of the cap
    /// (so that sweeps are rare). A blob in use stays open; its handle closes when the last
    /// response using it ends, since the table no longer holds it. The table frees removed
    /// entries in batches (papaya's deferred reclamation, 32 per thread), so up to that many
    /// closed blobs may keep their descriptor a little longer: bounded, not a leak.
    fn close_idle_blobs(&self) {
        let target = self.max_open_blobs - self.max_open_blobs / 8;
        let mut idle: Vec<(Digest, Arc<MappedBlob>)> = self
            .blobs
            .entries()
            .into_iter()
            // The table's reference and ours from `entries`: nobody else holds it.
            .filter(|(_, blob)| Arc::strong_count(blob) <= 2)
            .collect();
        idle.sort_by_key(|(_, blob)| blob.last_used_ms.load(Ordering::Relaxed));
        let excess = self.blobs.len().saturating_sub(target);
        for (digest, _) in idle.into_iter().take(excess) {
            self.blobs.remove(&digest);
        }
    }

    /// Drops what we know of a blob whose file is gone (deleted behind our back, or corrupt).
    fn forget(&self, digest: &Digest) {
        self.blobs.remove(digest);
        self.trusted.remove(digest);
        self.budget.remove(digest);
    }

    /// Makes room for `size` bytes (evicting on the blocking pool); see `Budget::reserve`.
    pub async fn reserve(self: &Arc<Self>, size: u64, cache: &Arc<CacheDir>) -> Reservation {
        let this = Arc::clone(self);
        let cache = Arc::clone(cache);
        let reservation = run_blocking(move || {
            this.budget.reserve(size, &cache, |digest| this.blobs.get(digest).is_some_and(|b| Arc::strong_count(&b) > 2))
        })
        .await;
        if let Reservation::Granted { evicted } = &reservation {
            metrics::cache_evicted(evicted.len() as u64);
            for digest in evicted {
                self.blobs.remove(digest);
                self.trusted.remove(digest);
                self.manifests.remove(digest);
                tracing::info!(%digest, "evicted from the cache");
            }
        }
        reservation
    }

    pub fn release(&self, size: u64) {
        self.budget.release(size);
    }

    /// The blob `digest` mapped from the cache, written from `bytes` first if it is not there.
    async fn mapped_into_cache(&self, digest: &Digest, bytes: Bytes) -> Result<Arc<MappedBlob>, RegistryError> {
        if let Some(blob) = self.blob(digest).await? {
            return Ok(blob);
        }
        self.put_blob_bytes(digest, bytes).await?;
        self.blob(digest).await?.ok_or_else(|| RegistryError::MissingContent(digest.clone()))
    }

    /// Records a blob a fill published (`size` bytes, of which `reserved` were reserved; its
    /// file as written and verified is `identity`).
    pub fn published(&self, digest: &Digest, size: u64, reserved: u64, identity: Option<FileIdentity>) {
        if let Some(identity) = identity {
            self.trusted.insert(digest.clone(), identity);
        }
        self.budget.commit(digest.clone(), size, reserved, self.clock.now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_object_small_enough_may_be_a_manifest() {
        assert!(may_be_manifest(2, b"{}"));
        assert!(may_be_manifest(20, b" \r\n\t{\"schemaVersion\": 2}"));
        assert!(may_be_manifest(0, b""), "empty: cannot tell from the start");
        assert!(!may_be_manifest(10, &[0x1f, 0x8b, 8, 0]), "gzip");
        assert!(!may_be_manifest(10, &[0x28, 0xb5, 0x2f, 0xfd]), "zstd");
        assert!(!may_be_manifest(1024, b"layer0/data.bin\0\0\0"), "tar");
        assert!(!may_be_manifest(4, b"[{}]"), "JSON, but no object");
        assert!(!may_be_manifest(MAX_MANIFEST_BYTES as u64 + 1, b"{}"), "over the manifest limit");
    }
}
