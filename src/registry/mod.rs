//! The facade's rules for answering pull requests: which repository a name is, which manifest
//! a tag or digest means for this client (Accept, platform), which blobs a repository may
//! serve. Knows nothing of HTTP beyond header values; reads storage through `store`.

mod blocking;
mod content;
pub mod demo;
mod error;
pub mod import;
mod local;

use std::sync::Arc;

pub use content::{MappedBlob, StoredManifest};
pub use error::{FailureClass, RegistryError};

use crate::oci::accept::AcceptList;
use crate::oci::manifest::{ImageIndex, Platform};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::store::CacheDir;
use content::Content;
use local::{LocalRepositories, LocalRepository};

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The platform an index is resolved to for clients that do not accept indexes.
    pub platform: Platform,
}

/// One page of `tags/list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsPage {
    pub name: RepositoryName,
    pub tags: Vec<Tag>,
    /// Set when more tags follow: the `last` of the next page.
    pub next_last: Option<Tag>,
}

pub struct Registry {
    local: Arc<LocalRepositories>,
    content: Content,
    settings: RegistrySettings,
}

impl Registry {
    pub fn new(cache: Arc<CacheDir>, settings: RegistrySettings) -> Registry {
        Registry {
            local: Arc::new(LocalRepositories::new(Arc::clone(&cache))),
            content: Content::new(cache),
            settings,
        }
    }

    /// The manifest `reference` of `name` as this client may receive it. By tag, an index
    /// the client does not accept is resolved to the configured platform; by digest, the
    /// exact document is returned.
    ///
    /// # Errors
    /// Unknown name or manifest, nothing acceptable, or unreadable cache content.
    pub async fn manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<Arc<StoredManifest>, RegistryError> {
        let repo = self.repository(name).await?;
        let unknown = || RegistryError::ManifestUnknown { name: name.clone(), reference: reference.to_string() };
        let (repo, digest) = match reference {
            Reference::Tag(tag) => {
                let repo = self.refresh_unless(name, repo, |r| r.tag(tag).is_some()).await?;
                let digest = repo.tag(tag).cloned().ok_or_else(unknown)?;
                (repo, digest)
            }
            Reference::Digest(digest) => {
                let repo = self.refresh_unless(name, repo, |r| r.manifest_media_type(digest).is_some()).await?;
                (repo, digest.clone())
            }
        };
        let manifest = self.stored_manifest(&repo, &digest).await?.ok_or_else(unknown)?;
        if matches!(reference, Reference::Digest(_)) || accept.accepts(media_type_of(&manifest)) {
            return Ok(manifest);
        }
        self.negotiate(name, &repo, &manifest, accept).await
    }

    /// The blob `digest` of `name`, mapped and ready to send.
    ///
    /// # Errors
    /// Unknown name, a digest that does not belong to the repository, or a lost cache file.
    pub async fn blob(&self, name: &RepositoryName, digest: &Digest) -> Result<Arc<MappedBlob>, RegistryError> {
        let repo = self.repository(name).await?;
        let repo = self.refresh_unless(name, repo, |r| r.serves_blob(digest)).await?;
        if !repo.serves_blob(digest) {
            return Err(RegistryError::BlobUnknown { name: name.clone(), digest: digest.clone() });
        }
        self.content.blob(digest).await?.ok_or_else(|| RegistryError::MissingContent(digest.clone()))
    }

    /// A page of the tags of `name`, in lexical order, after `last`, at most `n`.
    ///
    /// # Errors
    /// Unknown name.
    pub async fn tags(&self, name: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagsPage, RegistryError> {
        let repo = self.repository(name).await?;
        let after = repo.record.tags.keys().filter(|t| last.is_none_or(|last| t.as_str() > last));
        let limit = n.unwrap_or(usize::MAX);
        let tags: Vec<Tag> = after.clone().take(limit).cloned().collect();
        let more = after.count() > tags.len();
        let next_last = if more { tags.last().cloned() } else { None };
        Ok(TagsPage { name: name.clone(), tags, next_last })
    }

    async fn repository(&self, name: &RepositoryName) -> Result<Arc<LocalRepository>, RegistryError> {
        self.local.get(name).await?.ok_or_else(|| RegistryError::NameUnknown(name.clone()))
    }

    /// Returns `repo` if `has` holds for it, else the record re-read from disk (an import may
    /// have added what is missing).
    async fn refresh_unless(
        &self,
        name: &RepositoryName,
        repo: Arc<LocalRepository>,
        has: impl Fn(&LocalRepository) -> bool,
    ) -> Result<Arc<LocalRepository>, RegistryError> {
        if has(&repo) {
            return Ok(repo);
        }
        self.local.reload(name).await?.ok_or_else(|| RegistryError::NameUnknown(name.clone()))
    }

    async fn stored_manifest(&self, repo: &LocalRepository, digest: &Digest) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        let Some(media_type) = repo.manifest_media_type(digest) else { return Ok(None) };
        let manifest = self.content.manifest(digest, media_type).await?;
        manifest.map(Some).ok_or_else(|| RegistryError::MissingContent(digest.clone()))
    }

    /// For a client that does not accept `manifest`'s type: an index is replaced by its entry
    /// for our platform, if the client accepts that.
    async fn negotiate(
        &self,
        name: &RepositoryName,
        repo: &LocalRepository,
        manifest: &StoredManifest,
        accept: &AcceptList,
    ) -> Result<Arc<StoredManifest>, RegistryError> {
        let offered = media_type_of(manifest);
        let not_acceptable = |what: &str| {
            RegistryError::NotAcceptable(format!("{what} is of type {offered}, which the Accept header does not include"))
        };
        if media_type::manifest_kind(offered) != Some(ManifestKind::Index) {
            return Err(not_acceptable("manifest"));
        }
        let index: ImageIndex = serde_json::from_slice(&manifest.body).map_err(|e| RegistryError::CorruptManifest {
            digest: manifest.digest.clone(),
            reason: e.to_string(),
        })?;
        let platform = &self.settings.platform;
        let entry = index.select(platform).ok_or_else(|| {
            RegistryError::NotAcceptable(format!("index has no manifest for platform {platform} and the client does not accept indexes"))
        })?;
        let child = self.stored_manifest(repo, &entry.digest).await?.ok_or_else(|| RegistryError::ManifestUnknown {
            name: name.clone(),
            reference: entry.digest.to_string(),
        })?;
        if accept.accepts(media_type_of(&child)) {
            Ok(child)
        } else {
            Err(not_acceptable("the platform manifest"))
        }
    }
}

fn media_type_of(manifest: &StoredManifest) -> &str {
    manifest.media_type.to_str().unwrap_or("")
}
