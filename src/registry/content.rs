//! Cached content ready to serve, and its budget: manifests as verified bytes, blobs as
//! mmapped `Bytes` with their open file, each with header values computed once. The tables
//! are shared by every executor; a blob whose `MappedBlob` is held by a response is in use
//! and is never evicted.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use super::blocking::run_blocking;
use super::budget::{Budget, Reservation};
use super::error::RegistryError;
use crate::hyper_glue::coarse_now_ms;
use crate::metrics::{self, CacheKind};
use crate::oci::manifest::{sniff_media_type, MAX_MANIFEST_BYTES};
use crate::oci::Digest;
use crate::store::{CacheDir, StoreError};
use crate::table::SharedMap;

/// A manifest as it goes on the wire.
#[derive(Debug)]
pub struct StoredManifest {
    pub body: Bytes,
    pub media_type: HeaderValue,
    pub digest: Digest,
    pub digest_header: HeaderValue,
    pub etag: HeaderValue,
}

impl StoredManifest {
    /// # Errors
    /// `media_type` cannot be a header value.
    pub fn new(body: Bytes, media_type: &str, digest: Digest) -> Result<StoredManifest, RegistryError> {
        let media_type = HeaderValue::from_str(media_type).map_err(|_| RegistryError::CorruptManifest {
            digest: digest.clone(),
            reason: format!("media type {media_type:?} is not a valid header value"),
        })?;
        let (digest_header, etag) = digest_headers(&digest);
        Ok(StoredManifest { body, media_type, digest, digest_header, etag })
    }

    pub fn media_type_str(&self) -> &str {
        self.media_type.to_str().unwrap_or("")
    }
}

/// A cached blob: the whole file mapped, shared zero-copy by every response, and the open
/// file, from which the same bytes can be sent with sendfile.
#[derive(Debug)]
pub struct MappedBlob {
    pub body: Bytes,
    pub file: Arc<std::fs::File>,
    pub digest_header: HeaderValue,
    pub etag: HeaderValue,
}

/// `Docker-Content-Digest` and `ETag` (the quoted digest) for content of `digest`.
pub fn digest_headers(digest: &Digest) -> (HeaderValue, HeaderValue) {
    // A digest is `algorithm:hex`: always a valid header value, quoted or not.
    let plain = HeaderValue::from_str(&digest.to_string()).unwrap_or(HeaderValue::from_static(""));
    let quoted = HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static(""));
    (plain, quoted)
}

pub struct Content {
    cache: Arc<CacheDir>,
    manifests: SharedMap<Digest, Arc<StoredManifest>>,
    blobs: SharedMap<Digest, Arc<MappedBlob>>,
    budget: Budget,
}

impl Content {
    /// Indexes what the cache holds. Blocking (a directory scan): call before serving.
    ///
    /// # Errors
    /// The cache directory cannot be listed.
    pub fn open(cache: Arc<CacheDir>, max_bytes: Option<u64>) -> Result<Content, StoreError> {
        let budget = Budget::new(max_bytes, cache.scan_blobs()?, coarse_now_ms());
        Ok(Content { cache, manifests: SharedMap::new(), blobs: SharedMap::new(), budget })
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
    /// The cached file cannot be read or does not match its digest.
    pub async fn manifest(&self, digest: &Digest, media_type: &str) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        self.load_manifest(digest, Some(media_type)).await
    }

    /// Like `manifest`, for content whose media type is not recorded (mirrored manifests): it
    /// is read from the document itself.
    ///
    /// # Errors
    /// As `manifest`, or a document that is no manifest.
    pub async fn manifest_sniffed(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        self.load_manifest(digest, None).await
    }

    async fn load_manifest(&self, digest: &Digest, media_type: Option<&str>) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        let found = self.read_manifest(digest, media_type).await;
        metrics::cache_lookup(CacheKind::Manifest, matches!(found, Ok(Some(_))));
        found
    }

    async fn read_manifest(&self, digest: &Digest, media_type: Option<&str>) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        if let Some(hit) = self.manifests.get(digest) {
            return Ok(Some(hit));
        }
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let read = run_blocking(move || cache.read_verified(&wanted, MAX_MANIFEST_BYTES as u64)).await?;
        let Some(bytes) = read else { return Ok(None) };
        let media_type = match media_type {
            Some(media_type) => media_type.to_owned(),
            None => sniff_media_type(&bytes).ok_or_else(|| RegistryError::CorruptManifest {
                digest: digest.clone(),
                reason: "not a manifest document".into(),
            })?,
        };
        let stored = Arc::new(StoredManifest::new(Bytes::from(bytes), &media_type, digest.clone())?);
        self.manifests.insert(digest.clone(), Arc::clone(&stored));
        self.budget.touch(digest, coarse_now_ms());
        Ok(Some(stored))
    }

    /// Stores a manifest fetched from upstream (already verified against `digest`).
    ///
    /// # Errors
    /// The cache cannot be written.
    pub async fn store_manifest(&self, digest: &Digest, bytes: Bytes, media_type: &str) -> Result<Arc<StoredManifest>, RegistryError> {
        let stored = Arc::new(StoredManifest::new(bytes.clone(), media_type, digest.clone())?);
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let size = bytes.len() as u64;
        let written = run_blocking(move || cache.put_verified(&wanted, &bytes)).await;
        match written {
            Ok(()) => self.budget.add(digest.clone(), size, coarse_now_ms()),
            // Serving what we fetched matters more than caching it.
            Err(e) => tracing::warn!(%digest, error = %e, "manifest served without caching"),
        }
        self.manifests.insert(digest.clone(), Arc::clone(&stored));
        Ok(stored)
    }

    /// A small blob (an image config) read whole and verified; `None` if not cached.
    ///
    /// # Errors
    /// The file cannot be read, is larger than `max_len`, or does not match its digest.
    pub async fn small_blob(&self, digest: &Digest, max_len: usize) -> Result<Option<Bytes>, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let read = run_blocking(move || cache.read_verified(&wanted, max_len as u64)).await?;
        metrics::cache_lookup(CacheKind::Blob, read.is_some());
        if read.is_some() {
            self.budget.touch(digest, coarse_now_ms());
        }
        Ok(read.map(Bytes::from))
    }

    /// Caches a small blob fetched whole and already verified; a failure to cache is logged,
    /// the bytes are still used.
    pub async fn store_small_blob(&self, digest: &Digest, bytes: Bytes) {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let size = bytes.len() as u64;
        match run_blocking(move || cache.put_verified(&wanted, &bytes)).await {
            Ok(()) => self.budget.add(digest.clone(), size, coarse_now_ms()),
            Err(e) => tracing::warn!(%digest, error = %e, "blob used without caching"),
        }
    }

    /// The blob `digest` mapped from the cache; `None` if it is not cached.
    ///
    /// # Errors
    /// The file exists but cannot be mapped.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<Arc<MappedBlob>>, RegistryError> {
        self.budget.touch(digest, coarse_now_ms());
        if let Some(hit) = self.blobs.get(digest) {
            metrics::cache_lookup(CacheKind::Blob, true);
            return Ok(Some(hit));
        }
        let mapped = self.map_blob(digest).await;
        metrics::cache_lookup(CacheKind::Blob, matches!(mapped, Ok(Some(_))));
        mapped
    }

    async fn map_blob(&self, digest: &Digest) -> Result<Option<Arc<MappedBlob>>, RegistryError> {
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let mapped = run_blocking(move || cache.map_blob(&wanted)).await?;
        let Some((body, file)) = mapped else { return Ok(None) };
        let (digest_header, etag) = digest_headers(digest);
        let blob = Arc::new(MappedBlob { body, file: Arc::new(file), digest_header, etag });
        self.blobs.insert(digest.clone(), Arc::clone(&blob));
        Ok(Some(blob))
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
                self.manifests.remove(digest);
                tracing::info!(%digest, "evicted from the cache");
            }
        }
        reservation
    }

    pub fn release(&self, size: u64) {
        self.budget.release(size);
    }

    /// Records a blob a fill published (`size` bytes, of which `reserved` were reserved).
    pub async fn published(&self, digest: &Digest, size: u64, reserved: u64) {
        self.budget.commit(digest.clone(), size, reserved, coarse_now_ms());
    }
}
