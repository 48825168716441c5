//! The facade's rules, and the only door below `http`: which source a name is, which manifest a
//! request means, which blobs may be served, fills, referrers, specs. Each part owns its file
//! (`Remote`, `Images`, `Composer`, `LocalRepositories`, `Content`, `referrers`); failures are
//! `RegistryError`, whose `verdict` gives their class and wire code. Knows nothing of HTTP.

pub mod blobserve;
mod answers;
mod budget;
pub mod compose;
mod composed;
mod content;
mod error;
mod far_range;
mod fill;
mod images;
mod join;
mod local;
mod mirror;
mod prefetch;
mod publish;
mod referrers;
mod remote;
mod shared;
mod single_flight;
pub mod static_layers;

use std::path::PathBuf;
use std::sync::Arc;

pub use answers::{BlobReply, FillingBlob, SpecWritten, TagsPage};
pub use content::{DigestText, MappedBlob, StoredManifest};
pub use error::{FailureClass, RegistryError, Verdict};
pub use fill::{BlobChunk, FillError};
pub use mirror::MirrorSettings;
pub use prefetch::{ImageStatus, PrefetchJob, PrefetchRef, PrefetchState, DEFAULT_PREFETCH_CONCURRENCY};
pub use referrers::ReferrersPage;
use prefetch::PrefetchJobs;

use crate::clock::Clock;
use crate::ipfs::Ipfs;
use crate::oci::accept::AcceptList;
use crate::oci::manifest::{ImageIndex, Platform};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::redis_client::RedisClient;
use crate::spec::{parse_spec, ContentKeeper, FixedSpecFile, RemoteSpecs, SpecError, StoredSpec};
use crate::store::{CacheDir, StoreError};
use crate::upstream::{BlobLocation, RemoteRepository, TagPage, Upstream};
use compose::BlobSource;
use composed::{Composer, ComposerParts, Compositions};
use content::Content;
use fill::{FillContext, Fills};
use images::Images;
use local::{LocalRepositories, LocalRepository};
use mirror::MirrorRoutes;
use publish::Publisher;
use remote::Remote;
use static_layers::{StaticLayerConfig, StaticLayerError};

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The platform an index is resolved to for clients that do not accept indexes.
    pub platform: Platform,
    /// The cache's size limit; `None`: unlimited.
    pub cache_max_bytes: Option<u64>,
    /// Idle cached blobs kept open (a descriptor and a mapping each); `None`: a default from
    /// the open-file limit.
    pub cache_max_open_blobs: Option<usize>,
    pub mirrors: MirrorSettings,
    /// The JSON file of `fixed/<id>` specs.
    pub fixed_specs: Option<PathBuf>,
    /// Layers appended to every composed image.
    pub static_layers: Vec<StaticLayerConfig>,
    /// Remote content layers: answer 307 to their URL (true) or fetch and serve them.
    pub redirect_content_layers: bool,
    /// The files inside images, for browsers; `None`: off.
    pub blobserve: Option<blobserve::BlobserveSettings>,
}

/// Where a name's content comes from.
enum Source {
    Local(Arc<LocalRepository>),
    Mirror(RemoteRepository),
    /// `remote/<id>` or `fixed/<id>`: an image composed from a spec.
    Composed(Arc<StoredSpec>),
}

/// Where specs come from, by provider.
struct SpecSources {
    remote: Arc<RemoteSpecs>,
    fixed: Option<FixedSpecFile>,
}

/// The cluster's shared state and the blob sources that come with it, when configured.
#[derive(Clone, Default)]
pub struct Shared {
    pub redis: Option<RedisClient>,
    pub ipfs: Option<Ipfs>,
}

/// The facade's rules, the one door below `http`: every answer of the pull and admin APIs
/// comes through here.
pub struct Registry {
    local: Arc<LocalRepositories>,
    content: Arc<Content>,
    routes: MirrorRoutes,
    remote: Arc<Remote>,
    composer: Composer,
    specs: Arc<SpecSources>,
    prefetches: PrefetchJobs,
    redis: Option<RedisClient>,
    settings: RegistrySettings,
    clock: Clock,
    blobserve: Option<Arc<blobserve::Blobserve>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Blobserve(#[from] blobserve::SpaceError),
    #[error("cache: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    StaticLayers(#[from] StaticLayerError),
    #[error("specs.fixedFile: {0}")]
    FixedSpecs(#[from] SpecError),
}

impl Registry {
    /// Indexes the cache (sizes for the budget; local repositories' content pinned), loads
    /// the static layers and the fixed specs. Blocking: call before the executors start.
    /// Every time-based rule (TTLs, sweeps) reads `clock`.
    ///
    /// # Errors
    /// The cache cannot be listed, a repository record read, a static layer loaded, or the
    /// fixed spec file read.
    pub fn open(cache: Arc<CacheDir>, settings: RegistrySettings, upstream: Upstream, shared: Shared, clock: Clock) -> Result<Registry, OpenError> {
        let max_open_blobs = settings.cache_max_open_blobs.unwrap_or_else(content::default_max_open_blobs);
        let content = Arc::new(Content::open(Arc::clone(&cache), settings.cache_max_bytes, max_open_blobs, clock.clone())?);
        for (_, record) in cache.list_records()? {
            content.pin(record.blobs.iter().chain(record.manifests.keys()));
        }
        let statics = static_layers::load(&cache, &settings.static_layers)?;
        content.pin(statics.pinned());
        // The spec stores tell the compositions which specs went, so that nothing composed
        // from a spec outlives it.
        let compositions = Arc::new(Compositions::default());
        let fixed = settings.fixed_specs.as_deref().map(|path| FixedSpecFile::open(path, Some(compositions.listener("fixed")))).transpose()?;
        let remote_specs = RemoteSpecs::new(shared.redis.clone(), Some(content_keeper(&content)), Some(compositions.listener("remote")), clock.clone());
        let specs = Arc::new(SpecSources { remote: remote_specs, fixed });
        let publisher = shared.ipfs.as_ref().filter(|ipfs| ipfs.publishes()).map(|ipfs| Publisher::new(ipfs.clone(), Arc::clone(&cache)));
        let fills = FillContext { cache: Arc::clone(&cache), upstream, content: Arc::clone(&content), fills: Arc::new(Fills::default()), ipfs: shared.ipfs, publisher };
        let remote = Arc::new(Remote::new(fills, shared.redis.clone(), settings.mirrors.tag_ttl, clock.clone()));
        let local = Arc::new(LocalRepositories::new(cache, Arc::clone(&content), clock.clone()));
        let images = Images::new(Arc::clone(&remote), Arc::clone(&local), Arc::clone(&content), settings.platform.clone());
        let composer = Composer::new(ComposerParts {
            compositions,
            statics,
            images,
            specs: Arc::clone(&specs),
            redis: shared.redis.clone(),
            tag_ttl: settings.mirrors.tag_ttl,
            clock: clock.clone(),
        });
        let blobserve = settings.blobserve.as_ref().map(|b| blobserve::Blobserve::open(b, max_open_blobs).map(Arc::new)).transpose()?;
        Ok(Registry {
            local,
            content,
            routes: MirrorRoutes::new(&settings.mirrors),
            remote,
            composer,
            specs,
            prefetches: PrefetchJobs::default(),
            redis: shared.redis,
            settings,
            clock,
            blobserve,
        })
    }

    /// Whether the shared state this node depends on is reachable: `Err` names what is not.
    /// Upstream registries are never part of readiness.
    pub fn readiness(&self) -> Result<(), String> {
        match &self.redis {
            Some(redis) if !redis.health().is_up() => Err(format!("Redis is unreachable: {}", redis.health().last_error())),
            _ => Ok(()),
        }
    }

    /// Loads a new set of static layers (the config file changed). Images composed with the
    /// previous set are no longer current but keep serving their blobs to pulls under way.
    /// Blocking: call from a reload thread.
    ///
    /// # Errors
    /// A layer cannot be loaded; the previous set stays.
    pub fn reload_static_layers(&self, cache: &CacheDir, configs: &[StaticLayerConfig]) -> Result<(), StaticLayerError> {
        let statics = static_layers::load(cache, configs)?;
        self.content.pin(statics.pinned());
        self.composer.replace_static_layers(statics);
        Ok(())
    }

    /// Cached blobs held open (mapped) right now.
    pub fn open_blobs(&self) -> usize {
        self.content.open_blobs()
    }

    /// Bytes the cache holds, and blobs evicted so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.content.budget().used_bytes(), self.content.budget().evictions())
    }

    /// The `remote/<id>` spec `id` as JSON; `None` if there is none.
    ///
    /// # Errors
    /// The spec store cannot be asked.
    pub async fn spec_json(&self, id: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let spec = self.specs.remote.get(id).await.map_err(spec_store_error)?;
        Ok(spec.map(|stored| stored.to_json()))
    }

    /// Validates and stores `json` as the `remote/<id>` spec, then composes it in the
    /// background: orchestrators write a spec just before the workspace pulls, so the first
    /// pull of the storm finds it composed. Call on an executor.
    ///
    /// # Errors
    /// The spec is invalid, or the spec store cannot take it (nothing was half-done).
    pub async fn put_spec(self: &Arc<Self>, id: &str, json: &[u8]) -> Result<SpecWritten, RegistryError> {
        let stored = parse_spec(json).map_err(RegistryError::InvalidSpec)?;
        let key = stored.spec.key.to_string();
        let replaced = self.specs.remote.put(id, stored).await.map_err(spec_store_error)?;
        if let Ok(name) = format!("remote/{id}").parse::<RepositoryName>() {
            let registry = Arc::clone(self);
            glommio::spawn_local(async move { registry.precompose(&name).await }).detach();
        }
        Ok(SpecWritten { key, replaced })
    }

    /// Deletes the `remote/<id>` spec; `false` if there was none.
    ///
    /// # Errors
    /// The spec store cannot be asked.
    pub async fn delete_spec(&self, id: &str) -> Result<bool, RegistryError> {
        self.specs.remote.delete(id).await.map_err(spec_store_error)
    }

    /// Composes `name` now, ahead of its first pull: the pull then finds the image ready. A
    /// failure is only logged; the pull composes again and reports it.
    pub async fn precompose(&self, name: &RepositoryName) {
        let spec = match self.source(name, None).await {
            Ok(Source::Composed(spec)) => spec,
            Ok(_) => return,
            Err(error) => return tracing::info!(%name, %error, "not composed ahead of its pull"),
        };
        match self.composer.composed(name, &spec).await {
            Ok(image) => tracing::debug!(%name, digest = %image.manifest.digest, "composed ahead of its pull"),
            Err(error) => tracing::info!(%name, %error, "not composed ahead of its pull"),
        }
    }

    /// The manifest `reference` of `name` as this client may receive it. By tag, an index the
    /// client does not accept is resolved to the configured platform; by digest, the exact
    /// document is returned.
    ///
    /// # Errors
    /// Unknown name or manifest, nothing acceptable, a denied mirror, or an upstream failure.
    pub async fn manifest(&self, name: &RepositoryName, reference: &Reference, accept: &AcceptList, ns: Option<&str>) -> Result<Arc<StoredManifest>, RegistryError> {
        let source = self.source(name, ns).await?;
        let manifest = match (&source, reference) {
            (Source::Composed(spec), reference) => {
                let image = self.composer.composed(name, spec).await?;
                let manifest = self.composer.composed_manifest(name, &image, reference).ok_or_else(|| manifest_unknown(name, reference))?;
                if !accept.accepts(manifest.media_type_str()) {
                    return Err(RegistryError::NotAcceptable(format!("the composed manifest is of type {}, which the Accept header does not include", manifest.media_type_str())));
                }
                return Ok(manifest);
            }
            (Source::Mirror(remote), Reference::Tag(tag)) => self.remote.tag(remote, tag).await?,
            (Source::Local(repo), Reference::Tag(tag)) => {
                let repo = self.refresh_unless(name, Arc::clone(repo), |r| r.tag(tag).is_some()).await?;
                let digest = repo.tag(tag).cloned().ok_or_else(|| manifest_unknown(name, reference))?;
                self.local.manifest(&repo, &digest).await?.ok_or_else(|| manifest_unknown(name, reference))?
            }
            (_, Reference::Digest(digest)) => self.manifest_by_digest(name, &source, digest).await?,
        };
        if matches!(reference, Reference::Digest(_)) || accept.accepts(manifest.media_type_str()) {
            return Ok(manifest);
        }
        self.negotiate(name, &source, &manifest, accept).await
    }

    /// The blob `digest` of `name`: cached, being filled, or (HEAD of an uncached mirrored
    /// blob) its upstream size.
    ///
    /// # Errors
    /// Unknown name, a digest the repository does not have, a denied mirror, or an upstream
    /// failure before any byte is sent.
    pub async fn blob(&self, name: &RepositoryName, digest: &Digest, ns: Option<&str>, head: bool) -> Result<BlobReply, RegistryError> {
        match self.source(name, ns).await? {
            Source::Local(repo) => {
                let repo = self.refresh_unless(name, repo, |r| r.serves_blob(digest)).await?;
                if !repo.serves_blob(digest) {
                    return Err(RegistryError::BlobUnknown { name: name.clone(), digest: digest.clone() });
                }
                let blob = self.content.blob(digest).await?.ok_or_else(|| RegistryError::MissingContent(digest.clone()))?;
                Ok(BlobReply::Cached(blob))
            }
            Source::Mirror(remote) => self.remote.blob(name, &remote, digest, head).await,
            Source::Composed(spec) => {
                let image = self.composer.composed(name, &spec).await?;
                let source = self.composer.composed_blob(name, &image, digest).ok_or_else(|| RegistryError::BlobUnknown { name: name.clone(), digest: digest.clone() })?;
                self.composed_blob_reply(name, digest, source, head).await
            }
        }
    }

    async fn composed_blob_reply(&self, name: &RepositoryName, digest: &Digest, source: BlobSource, head: bool) -> Result<BlobReply, RegistryError> {
        match source {
            BlobSource::Upstream(remote) => self.remote.blob(name, &remote, digest, head).await,
            BlobSource::Cache => {
                let blob = self.content.blob(digest).await?.ok_or_else(|| RegistryError::MissingContent(digest.clone()))?;
                Ok(BlobReply::Cached(blob))
            }
            BlobSource::Inline(bytes) => Ok(BlobReply::Inline { bytes, digest_text: DigestText::of(digest) }),
            BlobSource::Url { url, .. } if self.settings.redirect_content_layers => Ok(BlobReply::Redirect(url)),
            // The spec declares the size: a HEAD needs no download (the GET's fill verifies it).
            BlobSource::Url { size, .. } if head && !self.remote.filling(digest) => match self.content.blob(digest).await? {
                Some(blob) => Ok(BlobReply::Cached(blob)),
                None => Ok(BlobReply::Remote { size: Some(size), digest_text: DigestText::of(digest) }),
            },
            BlobSource::Url { url, .. } => self.remote.fill(digest, BlobLocation::Url(url), head).await,
        }
    }

    /// A page of the tags of `name`, in lexical order, after `last`, at most `n`.
    ///
    /// # Errors
    /// Unknown name, a denied mirror, or an upstream failure.
    pub async fn tags(&self, name: &RepositoryName, n: Option<usize>, last: Option<&str>, ns: Option<&str>) -> Result<TagsPage, RegistryError> {
        let listed = match self.source(name, ns).await? {
            Source::Local(repo) => TagPage { tags: repo.record.tags.keys().map(Tag::to_string).collect(), more: false },
            Source::Mirror(remote) => self.remote.tags(name, &remote, n, last).await?,
            // Any tag names a composed image's current manifest; `latest` is the one to list.
            Source::Composed(_) => TagPage { tags: vec![Tag::latest().to_string()], more: false },
        };
        Ok(answers::tags_page(name, listed, n, last))
    }

    async fn source(&self, name: &RepositoryName, ns: Option<&str>) -> Result<Source, RegistryError> {
        if let Some(remote) = self.routes.route(name, ns)? {
            return Ok(Source::Mirror(remote));
        }
        let unknown = || RegistryError::NameUnknown(name.clone());
        match name.split_provider() {
            Some(("remote", id)) => {
                let spec = self.specs.remote.get(id).await.map_err(spec_store_error)?;
                return spec.map(Source::Composed).ok_or_else(unknown);
            }
            Some(("fixed", id)) => {
                let fixed = self.specs.fixed.as_ref().ok_or_else(unknown)?;
                return fixed.get(id, self.clock.now_ms()).map(Source::Composed).ok_or_else(unknown);
            }
            _ => {}
        }
        let repo = self.local.get(name).await?.ok_or_else(|| RegistryError::NameUnknown(name.clone()))?;
        Ok(Source::Local(repo))
    }

    /// Returns `repo` if `has` holds for it, else the record re-read from disk (an import may
    /// have added what is missing).
    async fn refresh_unless(&self, name: &RepositoryName, repo: Arc<LocalRepository>, has: impl Fn(&LocalRepository) -> bool) -> Result<Arc<LocalRepository>, RegistryError> {
        if has(&repo) {
            return Ok(repo);
        }
        self.local.reload(name).await?.ok_or_else(|| RegistryError::NameUnknown(name.clone()))
    }

    async fn manifest_by_digest(&self, name: &RepositoryName, source: &Source, digest: &Digest) -> Result<Arc<StoredManifest>, RegistryError> {
        match source {
            Source::Mirror(remote) => self.remote.digest(remote, digest).await,
            Source::Composed(_) => Err(manifest_unknown(name, &Reference::Digest(digest.clone()))),
            Source::Local(repo) => {
                let repo = self.refresh_unless(name, Arc::clone(repo), |r| r.manifest_media_type(digest).is_some()).await?;
                let unknown = || manifest_unknown(name, &Reference::Digest(digest.clone()));
                self.local.manifest(&repo, digest).await?.ok_or_else(unknown)
            }
        }
    }

    /// For a client that does not accept `manifest`'s type: an index is replaced by its entry
    /// for our platform, if the client accepts that.
    async fn negotiate(&self, name: &RepositoryName, source: &Source, manifest: &StoredManifest, accept: &AcceptList) -> Result<Arc<StoredManifest>, RegistryError> {
        let offered = manifest.media_type_str();
        let not_acceptable = |what: &str| RegistryError::NotAcceptable(format!("{what} is of type {offered}, which the Accept header does not include"));
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
        let child = self.manifest_by_digest(name, source, &entry.digest).await?;
        if accept.accepts(child.media_type_str()) {
            Ok(child)
        } else {
            Err(not_acceptable("the platform manifest"))
        }
    }
}

/// Puts the direct layers of `remote/<id>` specs into the blob cache and keeps them mapped
/// (see `Content::keep_mapped`): a node holding a spec per workspace would otherwise hold
/// every workspace's content layer in its heap.
fn content_keeper(content: &Arc<Content>) -> ContentKeeper {
    let content = Arc::clone(content);
    Arc::new(move |digest, bytes| {
        let content = Arc::clone(&content);
        Box::pin(async move { content.keep_mapped(digest, bytes).await })
    })
}

/// A spec store's failure: a stored spec that does not validate is our problem (spec writers
/// are trusted), anything else the shared state's.
fn spec_store_error(error: SpecError) -> RegistryError {
    match error {
        SpecError::Invalid(_) => RegistryError::InvalidStoredSpec(error),
        _ => RegistryError::SharedState(error),
    }
}

fn manifest_unknown(name: &RepositoryName, reference: &Reference) -> RegistryError {
    RegistryError::ManifestUnknown { name: name.clone(), reference: reference.to_string() }
}
