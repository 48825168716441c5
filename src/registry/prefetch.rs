//! Warming a node before workspaces arrive: every blob of the images named (names this facade
//! serves — local, `mirror/…`, `remote/<id>`, `fixed/<id>` — and plain upstream images) is
//! brought into the cache through the same fills a pull uses (from IPFS when Redis names a CID,
//! else upstream), a few at a time. Blobs already verified in the cache are skipped, so an
//! interrupted run refetches nothing it finished. Progress is readable while it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::compose::BlobSource;
use super::error::RegistryError;
use super::{BlobReply, Registry};
use crate::metrics;
use crate::oci::accept::AcceptList;
use crate::oci::image_ref::{has_explicit_host, ImageRef, ParseImageRefError};
use crate::oci::manifest::ImageManifest;
use crate::oci::{Digest, Reference, RepositoryName};
use crate::spec::SourceRef;
use crate::upstream::RemoteRepository;

/// Blobs fetched at once, over all the images of a run, unless asked otherwise.
pub const DEFAULT_PREFETCH_CONCURRENCY: usize = 4;

/// What the manifests of a prefetch are asked for with: image manifests of any kind; an index
/// is resolved to this node's platform, as for a client that takes no index.
const IMAGE_MANIFESTS: [&str; 2] = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// An image to prefetch, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchRef {
    /// A name this facade serves (`demo:latest`, `mirror/hub/library/ubuntu:22.04`,
    /// `remote/ws-1`): no registry host in front.
    Served { name: RepositoryName, reference: Reference },
    /// An image of an upstream registry, as a spec names one (`registry.example/team/app:1`).
    Upstream(ImageRef),
}

impl std::str::FromStr for PrefetchRef {
    type Err = ParseImageRefError;

    fn from_str(text: &str) -> Result<PrefetchRef, ParseImageRefError> {
        let image: ImageRef = text.parse()?;
        Ok(if has_explicit_host(text) { PrefetchRef::Upstream(image) } else { PrefetchRef::Served { name: image.repository, reference: image.reference } })
    }
}

impl std::fmt::Display for PrefetchRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefetchRef::Served { name, reference: Reference::Digest(digest) } => write!(f, "{name}@{digest}"),
            PrefetchRef::Served { name, reference } => write!(f, "{name}:{reference}"),
            PrefetchRef::Upstream(image) => image.fmt(f),
        }
    }
}

/// Where one image of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchState {
    Waiting,
    Resolving,
    Fetching,
    Done,
    Failed,
}

/// One image of a run, updated as it goes (read from any thread).
#[derive(Debug)]
pub struct ImageProgress {
    pub reference: String,
    state: Mutex<(PrefetchState, Option<String>)>,
    blobs_total: AtomicU64,
    blobs_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
}

/// A snapshot of one image's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub reference: String,
    pub state: PrefetchState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub blobs_total: u64,
    pub blobs_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

impl ImageProgress {
    fn new(reference: String) -> ImageProgress {
        ImageProgress {
            reference,
            state: Mutex::new((PrefetchState::Waiting, None)),
            blobs_total: AtomicU64::new(0),
            blobs_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
        }
    }

    fn set(&self, state: PrefetchState, reason: Option<String>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (state, reason);
    }

    pub fn status(&self) -> ImageStatus {
        let (state, reason) = self.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        ImageStatus {
            reference: self.reference.clone(),
            state,
            reason,
            blobs_total: self.blobs_total.load(Ordering::Relaxed),
            blobs_done: self.blobs_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }
}

/// One prefetch run: its images, in the order given.
#[derive(Debug)]
pub struct PrefetchJob {
    pub id: u64,
    pub images: Vec<ImageProgress>,
}

impl PrefetchJob {
    pub fn new(id: u64, refs: &[PrefetchRef]) -> Arc<PrefetchJob> {
        Arc::new(PrefetchJob { id, images: refs.iter().map(|r| ImageProgress::new(r.to_string())).collect() })
    }

    pub fn statuses(&self) -> Vec<ImageStatus> {
        self.images.iter().map(ImageProgress::status).collect()
    }

    /// Whether every image is done or failed.
    pub fn finished(&self) -> bool {
        self.statuses().iter().all(|s| matches!(s.state, PrefetchState::Done | PrefetchState::Failed))
    }
}

/// Prefetch runs kept for the admin API to report on.
const KEPT_JOBS: usize = 16;

/// A server's prefetch runs: the last `KEPT_JOBS`, by id.
#[derive(Default)]
pub struct PrefetchJobs {
    next_id: AtomicU64,
    jobs: Mutex<std::collections::VecDeque<Arc<PrefetchJob>>>,
}

impl PrefetchJobs {
    fn add(&self, refs: &[PrefetchRef]) -> Arc<PrefetchJob> {
        let job = PrefetchJob::new(self.next_id.fetch_add(1, Ordering::Relaxed) + 1, refs);
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.len() >= KEPT_JOBS {
            jobs.pop_front();
        }
        jobs.push_back(Arc::clone(&job));
        job
    }

    fn all(&self) -> Vec<Arc<PrefetchJob>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

/// A blob of an image and where it is fetched from.
struct Wanted {
    image: usize,
    digest: Digest,
    size: u64,
    fetch: Fetch,
}

enum Fetch {
    /// Through a name this facade serves.
    Served(RepositoryName),
    /// From an upstream repository.
    Upstream(RemoteRepository),
    /// Nothing to fetch (bytes a composition carries, a layer clients fetch elsewhere).
    Nothing,
}

impl Registry {
    /// Starts prefetching `refs` in the background on this executor; the job reports its
    /// progress (and is listed by `prefetch_jobs`). Call on an executor.
    pub fn start_prefetch(self: &Arc<Self>, refs: Vec<PrefetchRef>, concurrency: usize) -> Arc<PrefetchJob> {
        let job = self.prefetches.add(&refs);
        tracing::info!(job = job.id, images = refs.len(), "prefetch started");
        let (registry, running) = (Arc::clone(self), Arc::clone(&job));
        glommio::spawn_local(async move { registry.prefetch(&refs, &running, concurrency).await }).detach();
        job
    }

    /// Waits until what this executor offered for publication to IPFS is published or given
    /// up (see `Publisher::settled`); at once when nothing is published.
    pub async fn publications_settled(&self) {
        if let Some(publisher) = self.remote.publisher() {
            publisher.settled().await;
        }
    }

    /// The last prefetch runs, oldest first.
    pub fn prefetch_jobs(&self) -> Vec<Arc<PrefetchJob>> {
        self.prefetches.all()
    }

    /// Brings every blob of `refs` into the cache, `concurrency` at a time, recording progress
    /// in `job` (one entry per ref, in order). An image that cannot be had is marked failed
    /// with the reason; the others go on. Call on an executor.
    pub async fn prefetch(self: &Arc<Self>, refs: &[PrefetchRef], job: &Arc<PrefetchJob>, concurrency: usize) {
        let mut wanted = Vec::new();
        for (image, reference) in refs.iter().enumerate() {
            let progress = &job.images[image];
            progress.set(PrefetchState::Resolving, None);
            match self.blobs_of(reference).await {
                Ok(blobs) => {
                    progress.blobs_total.store(blobs.len() as u64, Ordering::Relaxed);
                    // Sizes come from upstream's manifests: summed without overflowing.
                    progress.bytes_total.store(blobs.iter().fold(0u64, |sum, (_, size, _)| sum.saturating_add(*size)), Ordering::Relaxed);
                    progress.set(PrefetchState::Fetching, None);
                    wanted.extend(blobs.into_iter().map(|(digest, size, fetch)| Wanted { image, digest, size, fetch }));
                }
                Err(error) => {
                    tracing::warn!(image = %reference, %error, "prefetch: cannot resolve the image");
                    progress.set(PrefetchState::Failed, Some(error.to_string()));
                }
            }
        }
        let permits = std::rc::Rc::new(glommio::sync::Semaphore::new(concurrency.max(1) as u64));
        let tasks: Vec<_> = wanted
            .into_iter()
            .map(|blob| {
                let (registry, job, permits) = (Arc::clone(self), Arc::clone(job), std::rc::Rc::clone(&permits));
                glommio::spawn_local(async move {
                    let Ok(_permit) = permits.acquire_static_permit(1).await else { return };
                    registry.prefetch_blob(&job, blob).await;
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        for progress in &job.images {
            let status = progress.status();
            if status.state == PrefetchState::Fetching {
                progress.set(PrefetchState::Done, None);
                tracing::info!(image = status.reference, blobs = status.blobs_total, bytes = status.bytes_total, "prefetched");
            }
        }
        // The images blobserve serves are prepared for it too (unpacked), off the job's progress.
        let done = refs.iter().zip(&job.images).filter(|(_, p)| p.status().state == PrefetchState::Done).map(|(r, _)| r.clone()).collect();
        self.blobserve_after_prefetch(done).await;
    }

    async fn prefetch_blob(&self, job: &PrefetchJob, blob: Wanted) {
        let progress = &job.images[blob.image];
        let result = match &blob.fetch {
            Fetch::Nothing => Ok(metrics::PrefetchOutcome::Present),
            Fetch::Served(name) => self.bring_in(self.blob(name, &blob.digest, None, false).await).await,
            Fetch::Upstream(remote) => {
                let name = remote.path.parse::<RepositoryName>().map_err(|e| RegistryError::NotAcceptable(e.to_string()));
                match name {
                    Ok(name) => self.bring_in(self.remote.blob(&name, remote, &blob.digest, false).await).await,
                    Err(error) => Err(error),
                }
            }
        };
        match result {
            Ok(outcome) => {
                metrics::prefetched(outcome, if outcome == metrics::PrefetchOutcome::Fetched { blob.size } else { 0 });
                progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(blob.size, Ordering::Relaxed);
            }
            Err(error) => {
                metrics::prefetched(metrics::PrefetchOutcome::Failed, 0);
                tracing::warn!(image = progress.reference, digest = %blob.digest, %error, "prefetch: a blob could not be fetched");
                progress.set(PrefetchState::Failed, Some(format!("{}: {error}", blob.digest)));
            }
        }
    }

    /// Waits until a blob a pull would be answered with is in the cache.
    async fn bring_in(&self, reply: Result<BlobReply, RegistryError>) -> Result<metrics::PrefetchOutcome, RegistryError> {
        match reply? {
            BlobReply::Cached(_) => Ok(metrics::PrefetchOutcome::Present),
            BlobReply::Filling(filling) => filling.finished().await.map(|()| metrics::PrefetchOutcome::Fetched),
            BlobReply::Inline { .. } | BlobReply::Redirect(_) | BlobReply::Remote { .. } => Ok(metrics::PrefetchOutcome::Present),
        }
    }

    /// Every blob of the image `reference` names (config and layers), with its size and where
    /// it comes from.
    async fn blobs_of(&self, reference: &PrefetchRef) -> Result<Vec<(Digest, u64, Fetch)>, RegistryError> {
        match reference {
            PrefetchRef::Served { name, reference } => {
                let accept = AcceptList::parse(IMAGE_MANIFESTS);
                let manifest = self.manifest(name, reference, &accept, None).await?;
                let parsed: ImageManifest = serde_json::from_slice(&manifest.body)
                    .map_err(|e| RegistryError::CorruptManifest { digest: manifest.digest.clone(), reason: e.to_string() })?;
                let sources = self.composed_sources(name).await?;
                Ok(std::iter::once(&parsed.config)
                    .chain(&parsed.layers)
                    .map(|d| {
                        let fetch = match sources.as_ref().and_then(|s| s.get(&d.digest)) {
                            Some(BlobSource::Inline(_)) => Fetch::Nothing,
                            Some(BlobSource::Url { .. }) if self.settings.redirect_content_layers => Fetch::Nothing,
                            _ => Fetch::Served(name.clone()),
                        };
                        (d.digest.clone(), d.size, fetch)
                    })
                    .collect())
            }
            PrefetchRef::Upstream(image) => {
                let resolved = self.composer.resolve(&SourceRef::Upstream(image.clone())).await?;
                let remote = RemoteRepository::new(&image.host, image.repository.as_str());
                // The config was fetched (and cached) while resolving.
                let config = (resolved.manifest.config.digest.clone(), resolved.manifest.config.size, Fetch::Nothing);
                let layers = resolved.manifest.layers.iter().map(|d| (d.digest.clone(), d.size, Fetch::Upstream(remote.clone())));
                Ok(std::iter::once(config).chain(layers).collect())
            }
        }
    }

    /// The sources of `name`'s current composition, if it is a composed name.
    async fn composed_sources(&self, name: &RepositoryName) -> Result<Option<HashMap<Digest, BlobSource>>, RegistryError> {
        match self.source(name, None).await? {
            super::Source::Composed(spec) => Ok(Some(self.composer.composed(name, &spec).await?.blobs.clone())),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_with_a_host_are_upstream_images_the_rest_are_served_names() {
        let parse = |text: &str| text.parse::<PrefetchRef>().unwrap();
        assert!(matches!(parse("registry.example:5000/team/app:1"), PrefetchRef::Upstream(image) if image.host == "registry.example:5000"));
        assert!(matches!(parse("docker.io/library/ubuntu:22.04"), PrefetchRef::Upstream(_)));
        let PrefetchRef::Served { name, reference } = parse("mirror/hub/library/ubuntu:22.04") else { panic!("a served name") };
        assert_eq!((name.as_str(), reference.to_string().as_str()), ("mirror/hub/library/ubuntu", "22.04"));
        assert_eq!(parse("remote/ws-1").to_string(), "remote/ws-1:latest", "the tag defaults to latest");
        assert!("Not A Name".parse::<PrefetchRef>().is_err());
    }
}
