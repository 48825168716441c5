//! Cached content ready to serve: manifests as verified bytes, blobs as mmapped `Bytes`, each
//! with its header values computed once. Both tables are shared by every executor.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use super::blocking::run_blocking;
use super::error::RegistryError;
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::Digest;
use crate::store::CacheDir;
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
fn digest_headers(digest: &Digest) -> (HeaderValue, HeaderValue) {
    // A digest is `algorithm:hex`: always a valid header value, quoted or not.
    let plain = HeaderValue::from_str(&digest.to_string()).unwrap_or(HeaderValue::from_static(""));
    let quoted = HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static(""));
    (plain, quoted)
}

pub struct Content {
    cache: Arc<CacheDir>,
    manifests: SharedMap<Digest, Arc<StoredManifest>>,
    blobs: SharedMap<Digest, Arc<MappedBlob>>,
}

impl Content {
    pub fn new(cache: Arc<CacheDir>) -> Content {
        Content { cache, manifests: SharedMap::new(), blobs: SharedMap::new() }
    }

    /// The manifest `digest` (of `media_type`) from memory or the cache, verified on load.
    ///
    /// # Errors
    /// The cached file cannot be read or does not match its digest.
    pub async fn manifest(&self, digest: &Digest, media_type: &str) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        if let Some(hit) = self.manifests.get(digest) {
            return Ok(Some(hit));
        }
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let read = run_blocking(move || cache.read_verified(&wanted, MAX_MANIFEST_BYTES as u64)).await?;
        let Some(bytes) = read else { return Ok(None) };
        let stored = Arc::new(StoredManifest::new(Bytes::from(bytes), media_type, digest.clone())?);
        self.manifests.insert(digest.clone(), Arc::clone(&stored));
        Ok(Some(stored))
    }

    /// The blob `digest` mapped from the cache; `None` if it is not cached.
    ///
    /// # Errors
    /// The file exists but cannot be mapped.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<Arc<MappedBlob>>, RegistryError> {
        if let Some(hit) = self.blobs.get(digest) {
            return Ok(Some(hit));
        }
        let cache = Arc::clone(&self.cache);
        let wanted = digest.clone();
        let mapped = run_blocking(move || cache.map_blob(&wanted)).await?;
        let Some((body, file)) = mapped else { return Ok(None) };
        let (digest_header, etag) = digest_headers(digest);
        let blob = Arc::new(MappedBlob { body, file: Arc::new(file), digest_header, etag });
        self.blobs.insert(digest.clone(), Arc::clone(&blob));
        Ok(Some(blob))
    }
}
