//! `Images`: the images a spec names (base, IDE, supervisor, static image layers) resolved to one
//! platform, manifest and config, through the verified mirror paths or a local repository; kept
//! by manifest digest, each resolved once however many specs and cores ask.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::compose::{BlobSource, ResolvedImage};
use super::content::Content;
use super::error::RegistryError;
use super::local::LocalRepositories;
use super::remote::Remote;
use super::single_flight::SingleFlight;
use super::StoredManifest;
use crate::oci::manifest::{ImageIndex, ImageManifest, Platform, MAX_MANIFEST_BYTES};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::{Digest, Reference};
use crate::spec::SourceRef;
use crate::table::SharedMap;
use crate::upstream::RemoteRepository;

/// The images specs name, resolved once each.
pub struct Images {
    remote: Arc<Remote>,
    local: Arc<LocalRepositories>,
    content: Arc<Content>,
    platform: Platform,
    resolving: SingleFlight<String, Result<Arc<ResolvedImage>, Arc<RegistryError>>>,
    /// By platform manifest digest.
    resolved: SharedMap<Digest, Arc<ResolvedImage>>,
}

impl Images {
    pub fn new(remote: Arc<Remote>, local: Arc<LocalRepositories>, content: Arc<Content>, platform: Platform) -> Images {
        Images { remote, local, content, platform, resolving: SingleFlight::default(), resolved: SharedMap::new() }
    }

    /// The image `source` names, resolved to our platform.
    ///
    /// # Errors
    /// The image (or its platform manifest, or config) cannot be found or fetched, or is not
    /// an image.
    pub async fn resolve(&self, source: &SourceRef) -> Result<Arc<ResolvedImage>, RegistryError> {
        let key = source.to_string();
        let result = self.resolving.run(key, || async { self.resolve_uncached(source).await.map_err(Arc::new) }).await;
        result.map_err(|error| RegistryError::Input { reference: source.to_string(), error })
    }

    async fn resolve_uncached(&self, source: &SourceRef) -> Result<Arc<ResolvedImage>, RegistryError> {
        let (top, blob_source) = match source {
            SourceRef::Upstream(image) => {
                let remote = RemoteRepository::new(&image.host, image.repository.as_str());
                let manifest = match &image.reference {
                    Reference::Tag(tag) => self.remote.tag(&remote, tag).await?,
                    Reference::Digest(digest) => self.remote.digest(&remote, digest).await?,
                };
                (manifest, BlobSource::Upstream(remote))
            }
            SourceRef::Local(name, tag) => {
                let repo = self.local.get(name).await?.ok_or_else(|| RegistryError::NameUnknown(name.clone()))?;
                let digest = repo.tag(tag).cloned().ok_or_else(|| RegistryError::ManifestUnknown { name: name.clone(), reference: tag.to_string() })?;
                let manifest = self.local.manifest(&repo, &digest).await?.ok_or_else(|| RegistryError::MissingContent(digest.clone()))?;
                (manifest, BlobSource::Cache)
            }
        };
        let manifest = self.platform_manifest(source, top, &blob_source).await?;
        if let Some(resolved) = self.resolved.get(&manifest.digest) {
            return Ok(resolved);
        }
        let parsed: ImageManifest = serde_json::from_slice(&manifest.body).map_err(|e| not_an_image(source, e.to_string()))?;
        let config_bytes = self.config_blob(&blob_source, &parsed.config.digest).await?;
        let config: Value = serde_json::from_slice(&config_bytes).map_err(|e| not_an_image(source, format!("config: {e}")))?;
        let resolved = Arc::new(ResolvedImage {
            reference: source.to_string(),
            manifest_media_type: manifest.media_type_str().to_owned(),
            manifest: parsed,
            config,
            source: blob_source,
        });
        self.resolved.insert(manifest.digest.clone(), Arc::clone(&resolved));
        Ok(resolved)
    }

    /// An index becomes its manifest for our platform (never blindly its first entry).
    async fn platform_manifest(&self, source: &SourceRef, top: Arc<StoredManifest>, blob_source: &BlobSource) -> Result<Arc<StoredManifest>, RegistryError> {
        match media_type::manifest_kind(top.media_type_str()) {
            Some(ManifestKind::Image) => Ok(top),
            Some(ManifestKind::Index) => {
                let index: ImageIndex = serde_json::from_slice(&top.body).map_err(|e| not_an_image(source, e.to_string()))?;
                let platform = &self.platform;
                let entry = index.select(platform).ok_or_else(|| not_an_image(source, format!("its index has no manifest for platform {platform}")))?;
                let child = match blob_source {
                    BlobSource::Upstream(remote) => self.remote.digest(remote, &entry.digest).await?,
                    _ => self.content.manifest(&entry.digest, &entry.media_type).await?.ok_or_else(|| RegistryError::MissingContent(entry.digest.clone()))?,
                };
                if media_type::manifest_kind(child.media_type_str()) != Some(ManifestKind::Image) {
                    return Err(not_an_image(source, "its platform entry is not an image manifest".into()));
                }
                Ok(child)
            }
            None => Err(not_an_image(source, format!("{} is not a manifest type", top.media_type_str()))),
        }
    }

    /// An image config: from the cache, else fetched whole from upstream, verified and cached.
    async fn config_blob(&self, source: &BlobSource, digest: &Digest) -> Result<Bytes, RegistryError> {
        if let Some(bytes) = self.content.small_blob(digest, MAX_MANIFEST_BYTES).await? {
            return Ok(bytes);
        }
        let BlobSource::Upstream(remote) = source else {
            return Err(RegistryError::MissingContent(digest.clone()));
        };
        if let Some(bytes) = self.remote.small_from_ipfs(digest, MAX_MANIFEST_BYTES).await {
            self.content.store_small_blob(digest, bytes.clone()).await;
            return Ok(bytes);
        }
        let upstream_error = |error| RegistryError::Upstream { remote: remote.to_string(), error };
        let mut download = self.remote.upstream().blob(remote, &digest.to_string(), 0).await.map_err(upstream_error)?;
        let mut bytes = Vec::new();
        while let Some(chunk) = download.next_chunk().await.map_err(upstream_error)? {
            if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::CorruptManifest { digest: digest.clone(), reason: "config larger than 4 MiB".into() });
            }
            bytes.extend_from_slice(&chunk);
        }
        if &Digest::sha256_of(&bytes) != digest {
            return Err(upstream_error(crate::upstream::UpstreamError::Invalid { host: remote.host.clone(), reason: format!("config {digest} has other bytes") }));
        }
        let bytes = Bytes::from(bytes);
        self.content.store_small_blob(digest, bytes.clone()).await;
        self.remote.offer(digest, bytes.len() as u64);
        Ok(bytes)
    }
}

fn not_an_image(source: &SourceRef, reason: String) -> RegistryError {
    RegistryError::NotAnImage { reference: source.to_string(), reason }
}
