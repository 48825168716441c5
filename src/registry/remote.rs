//! Content of upstream repositories (mirrored names, and the images specs name): manifests
//! fetched from upstream and verified against their digest before they are cached (tags for
//! a short TTL, then revalidated with a HEAD and served stale only while upstream is
//! unavailable; digests for good), blobs through single-flight fills, and tag lists.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::content::{Content, DigestText, SniffedManifest};
use super::error::RegistryError;
use super::fill::{FillContext, FillError};
use super::mirror::{CachedTag, TagCache, ACCEPT_ALL_MANIFESTS};
use super::{BlobReply, FillingBlob, StoredManifest};
use crate::clock::{within, Clock};
use crate::oci::manifest::{sniff_media_type, MAX_MANIFEST_BYTES};
use crate::oci::media_type;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::redis_client::RedisClient;
use crate::upstream::{BlobLocation, FetchedManifest, RemoteRepository, TagPage, Upstream, UpstreamError};

/// Upstream content, verified and cached.
pub struct Remote {
    content: Arc<Content>,
    fills: FillContext,
    tags: TagCache,
    /// Where nodes share tag answers, when configured.
    redis: Option<RedisClient>,
    tag_ttl: Duration,
    clock: Clock,
}

impl Remote {
    pub fn new(fills: FillContext, redis: Option<RedisClient>, tag_ttl: Duration, clock: Clock) -> Remote {
        Remote { content: Arc::clone(&fills.content), fills, tags: TagCache::new(tag_ttl), redis, tag_ttl, clock }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.fills.upstream
    }

    /// The manifest `tag` of `remote` names (see the module comment).
    ///
    /// # Errors
    /// Upstream does not have it, refuses, fails, or sends a manifest that is not what it claims.
    pub async fn tag(&self, remote: &RemoteRepository, tag: &Tag) -> Result<Arc<StoredManifest>, RegistryError> {
        let cached = self.tags.cached_tag(remote, tag.as_str(), self.clock.now_ms());
        if let Some(CachedTag::Fresh(digest)) = &cached {
            return self.digest(remote, digest).await;
        }
        if let Some(digest) = self.shared_tag(remote, tag).await {
            self.tags.remember_tag(remote, tag.as_str(), digest.clone(), self.clock.now_ms());
            return self.digest(remote, &digest).await;
        }
        if let Some(CachedTag::Stale(known)) = &cached {
            if let Some(stored) = self.revalidate_tag(remote, tag, known).await? {
                return Ok(stored);
            }
        }
        self.fetch_tag(remote, tag, cached).await
    }

    /// Asks upstream with a HEAD whether a stale tag still names `known`: if it does and the
    /// cache holds that manifest, that manifest (and the tag's TTL starts again). `None` when
    /// only a GET can tell: the digest changed, upstream did not say (some registries leave
    /// `Docker-Content-Digest` off a HEAD), or the manifest is no longer cached. Upstream's
    /// failure is handled as a GET's would be (`tag_unresolved`).
    ///
    /// A HEAD rather than a GET because registries that limit pulls (Docker Hub) count manifest
    /// GETs and not HEADs; distribution's own pull-through cache revalidates the same way. A
    /// tag never resolved skips it: a GET answers that in one round trip instead of two.
    async fn revalidate_tag(&self, remote: &RemoteRepository, tag: &Tag, known: &Digest) -> Result<Option<Arc<StoredManifest>>, RegistryError> {
        let current = match self.fills.upstream.manifest_digest(remote, tag.as_str(), ACCEPT_ALL_MANIFESTS).await {
            Ok(current) => current,
            Err(error) => return self.tag_unresolved(remote, tag, Some(CachedTag::Stale(known.clone())), error).await.map(Some),
        };
        if current.as_ref() != Some(known) {
            return Ok(None);
        }
        let SniffedManifest::Found(stored) = self.content.manifest_sniffed(known).await? else { return Ok(None) };
        self.share_tag(remote, tag, known).await;
        self.tags.remember_tag(remote, tag.as_str(), known.clone(), self.clock.now_ms());
        Ok(Some(stored))
    }

    /// Resolves a tag with a GET, verifying the bytes against the digest upstream claims.
    async fn fetch_tag(&self, remote: &RemoteRepository, tag: &Tag, cached: Option<CachedTag>) -> Result<Arc<StoredManifest>, RegistryError> {
        let fetched = match self.fills.upstream.manifest(remote, tag.as_str(), ACCEPT_ALL_MANIFESTS).await {
            Ok(fetched) => fetched,
            Err(error) => return self.tag_unresolved(remote, tag, cached, error).await,
        };
        let digest = Digest::sha256_of(&fetched.bytes);
        if let Some(claimed) = fetched.claimed_digest.as_deref().filter(|c| *c != digest.to_string()) {
            return Err(invalid(remote, format!("manifest {tag} claims digest {claimed} but its bytes are {digest}")));
        }
        let stored = self.store_fetched(remote, &digest, fetched).await?;
        self.share_tag(remote, tag, &digest).await;
        self.tags.remember_tag(remote, tag.as_str(), digest, self.clock.now_ms());
        Ok(stored)
    }

    /// The answer for a tag upstream did not resolve. While upstream is unavailable, the tag's
    /// last known digest: better an answer that was right a moment ago than none (logged, not
    /// silent). Any other failure is upstream's answer about the tag (gone, refused, garbage):
    /// the last known digest is forgotten, so that neither this request nor a later outage
    /// serves a tag that was deleted or whose access was revoked.
    ///
    /// There is no bound on how stale a digest may be served: an outage is when it is needed,
    /// and a bound would turn a long outage into failed pulls of images that still exist. A
    /// bound needs its own setting (`mirrorTagMaxStaleMs`) if an operator ever wants one.
    async fn tag_unresolved(&self, remote: &RemoteRepository, tag: &Tag, cached: Option<CachedTag>, error: UpstreamError) -> Result<Arc<StoredManifest>, RegistryError> {
        let Some(CachedTag::Stale(digest)) = cached else { return Err(manifest_error(remote, tag.as_str(), error)) };
        if error.is_unavailable() {
            tracing::warn!(remote = %remote, tag = %tag, %error, "upstream unavailable; serving the tag's last known digest");
            return self.digest(remote, &digest).await;
        }
        self.tags.forget_tag(remote, tag.as_str());
        Err(manifest_error(remote, tag.as_str(), error))
    }

    /// What another node resolved the tag to, within the tag TTL (any Redis trouble: nothing).
    async fn shared_tag(&self, remote: &RemoteRepository, tag: &Tag) -> Option<Digest> {
        let redis = self.redis.as_ref()?;
        let key = redis.keys().tag(&remote.host, &remote.path, tag.as_str());
        let value = redis.get(&key).await.ok()??;
        String::from_utf8(value).ok()?.parse().ok()
    }

    async fn share_tag(&self, remote: &RemoteRepository, tag: &Tag, digest: &Digest) {
        let Some(redis) = &self.redis else { return };
        let key = redis.keys().tag(&remote.host, &remote.path, tag.as_str());
        if let Err(error) = redis.set(&key, digest.to_string().into_bytes(), Some(self.tag_ttl)).await {
            tracing::debug!(%error, "tag answer not shared");
        }
    }

    /// The manifest `digest` of `remote`, from the cache or fetched and verified.
    ///
    /// # Errors
    /// As `tag`; a cached layer or config asked for as a manifest is unknown.
    pub async fn digest(&self, remote: &RemoteRepository, digest: &Digest) -> Result<Arc<StoredManifest>, RegistryError> {
        match self.content.manifest_sniffed(digest).await? {
            SniffedManifest::Found(cached) => return Ok(cached),
            // A layer or config asked for as a manifest: upstream cannot know better (and
            // distribution answers such a request with a 500, which would be retried).
            SniffedManifest::NotAManifest => return Err(manifest_unknown(remote, &digest.to_string())),
            SniffedManifest::Missing => {}
        }
        if let Some(bytes) = self.small_from_ipfs(digest, MAX_MANIFEST_BYTES).await {
            if let Some(media_type) = sniff_media_type(&bytes) {
                return self.content.store_manifest(digest, bytes, &media_type).await;
            }
        }
        let fetched = self
            .fills
            .upstream
            .manifest(remote, &digest.to_string(), ACCEPT_ALL_MANIFESTS)
            .await
            .map_err(|e| manifest_error(remote, &digest.to_string(), e))?;
        let actual = Digest::sha256_of(&fetched.bytes);
        if &actual != digest {
            return Err(invalid(remote, format!("manifest {digest} has the bytes of {actual}")));
        }
        self.store_fetched(remote, digest, fetched).await
    }

    async fn store_fetched(&self, remote: &RemoteRepository, digest: &Digest, fetched: FetchedManifest) -> Result<Arc<StoredManifest>, RegistryError> {
        let declared = Some(fetched.media_type.as_str()).filter(|t| media_type::manifest_kind(t).is_some()).map(str::to_owned);
        let media_type = declared
            .or_else(|| sniff_media_type(&fetched.bytes))
            .ok_or_else(|| invalid(remote, format!("{digest} is not a manifest (Content-Type {:?})", fetched.media_type)))?;
        let size = fetched.bytes.len() as u64;
        let stored = self.content.store_manifest(digest, fetched.bytes, &media_type).await?;
        self.offer(digest, size);
        Ok(stored)
    }

    /// Where what came from upstream is offered for publication, if anywhere.
    pub fn publisher(&self) -> Option<&Arc<super::publish::Publisher>> {
        self.fills.publisher.as_ref()
    }

    /// Offers content that came from upstream, verified and cached, for publication to IPFS.
    pub fn offer(&self, digest: &Digest, size: u64) {
        if let Some(publisher) = &self.fills.publisher {
            publisher.offer(digest, size, None);
        }
    }

    /// Small content (a manifest, a config) read whole from IPFS when Redis names its CID,
    /// verified against `digest`; `None` when it is not there in time, is larger than
    /// `max_bytes`, or is other bytes (whose record is then deleted).
    pub async fn small_from_ipfs(&self, digest: &Digest, max_bytes: usize) -> Option<Bytes> {
        let ipfs = self.fills.ipfs.as_ref()?;
        let located = ipfs.locate(digest).await?;
        let read = async {
            let mut download = self.fills.upstream.download(BlobLocation::Url(located.url.clone()), 0).await?;
            download.limit_to(max_bytes as u64 + 1);
            let mut bytes = Vec::new();
            while let Some(chunk) = download.next_chunk().await? {
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, UpstreamError>(bytes)
        };
        let bytes = match within(ipfs.settings().gateway_timeout, read).await {
            Some(Ok(bytes)) => bytes,
            Some(Err(error)) => {
                tracing::warn!(%digest, cid = located.record.cid, %error, "the IPFS gateway did not deliver; asking upstream");
                return None;
            }
            None => {
                tracing::warn!(%digest, cid = located.record.cid, "the IPFS gateway took longer than ipfs.gatewayTimeoutMs; asking upstream");
                return None;
            }
        };
        if bytes.len() > max_bytes || Digest::sha256_of(&bytes) != *digest {
            ipfs.forget(digest, &format!("{} sent other bytes", located.record.cid)).await;
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// The blob `digest` of `remote` (asked for as `name`): cached, being filled, or (HEAD of
    /// a blob not cached) its size as upstream says.
    ///
    /// # Errors
    /// Upstream does not have it, refuses or fails before any byte is sent.
    pub async fn blob(&self, name: &RepositoryName, remote: &RemoteRepository, digest: &Digest, head: bool) -> Result<BlobReply, RegistryError> {
        if let Some(blob) = self.content.blob(digest).await? {
            return Ok(BlobReply::Cached(blob));
        }
        if head {
            let size = match self.fills.fills.get(digest) {
                Some(fill) => fill.size().await.map_err(RegistryError::Fill)?,
                None => self.fills.upstream.blob_size(remote, &digest.to_string()).await.map_err(|e| blob_error(name, digest, remote, e))?,
            };
            return Ok(BlobReply::Remote { size, digest_text: DigestText::of(digest) });
        }
        let location = BlobLocation::Registry { repo: remote.clone(), digest: digest.to_string() };
        self.join_fill(digest, location, false).await.map_err(|error| match error {
            RegistryError::Fill(FillError::Upstream(error)) => blob_error(name, digest, remote, error),
            other => other,
        })
    }

    /// Joins (or starts) the fill of `digest` from `location` and waits until upstream
    /// answered, so that a refusal is a proper status before any response is sent.
    ///
    /// # Errors
    /// The fill failed before upstream answered.
    pub async fn fill(&self, digest: &Digest, location: BlobLocation, head: bool) -> Result<BlobReply, RegistryError> {
        if let Some(blob) = self.content.blob(digest).await? {
            return Ok(BlobReply::Cached(blob));
        }
        self.join_fill(digest, location, head).await
    }

    /// `fill_blob` for a blob the caller just found missing from the cache.
    async fn join_fill(&self, digest: &Digest, location: BlobLocation, head: bool) -> Result<BlobReply, RegistryError> {
        let fill = self.fills.join_or_start(digest, &location);
        let size = fill.size().await.map_err(RegistryError::Fill)?;
        let digest_text = DigestText::of(digest);
        if head {
            return Ok(BlobReply::Remote { size, digest_text });
        }
        Ok(BlobReply::Filling(FillingBlob { fill, upstream: self.fills.upstream.clone(), digest_text }))
    }

    /// Whether a fill of `digest` is running.
    pub fn filling(&self, digest: &Digest) -> bool {
        self.fills.fills.get(digest).is_some()
    }

    /// The mirror's tags after `last`: with `n` the one upstream page of that size (upstream
    /// pages its own list, so a client pages through it without us fetching all of it on every
    /// request), without it the whole list.
    ///
    /// # Errors
    /// Upstream does not know the repository, refuses or fails.
    pub async fn tags(&self, name: &RepositoryName, remote: &RemoteRepository, n: Option<usize>, last: Option<&str>) -> Result<TagPage, RegistryError> {
        self.fills.upstream.tags(remote, n, last).await.map_err(|error| match error {
            UpstreamError::NotFound { .. } => RegistryError::NameUnknown(name.clone()),
            other => upstream(remote, other),
        })
    }
}

fn upstream(remote: &RemoteRepository, error: UpstreamError) -> RegistryError {
    RegistryError::Upstream { remote: remote.to_string(), error }
}

fn invalid(remote: &RemoteRepository, reason: String) -> RegistryError {
    upstream(remote, UpstreamError::Invalid { host: remote.host.clone(), reason })
}

fn manifest_unknown(remote: &RemoteRepository, reference: &str) -> RegistryError {
    RegistryError::UpstreamManifestUnknown { remote: remote.to_string(), reference: reference.to_owned() }
}

/// An upstream 404 for a manifest is the client's `MANIFEST_UNKNOWN` (or `NAME_UNKNOWN` when the
/// upstream says the repository does not exist); anything else stays an upstream failure.
fn manifest_error(remote: &RemoteRepository, reference: &str, error: UpstreamError) -> RegistryError {
    match error {
        UpstreamError::NotFound { code: Some(code), .. } if code == "NAME_UNKNOWN" => RegistryError::UpstreamNameUnknown(remote.to_string()),
        UpstreamError::NotFound { .. } => manifest_unknown(remote, reference),
        other => upstream(remote, other),
    }
}

fn blob_error(name: &RepositoryName, digest: &Digest, remote: &RemoteRepository, error: UpstreamError) -> RegistryError {
    match error {
        UpstreamError::NotFound { .. } => RegistryError::BlobUnknown { name: name.clone(), digest: digest.clone() },
        other => upstream(remote, other),
    }
}
