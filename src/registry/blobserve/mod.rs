//! Blobserve: the files inside images, for browsers. Images are prepared through the
//! registry's own paths (so every byte was verified), unpacked once per layer into the blob
//! space, merged, and their files served mapped from there; the space is bounded with least
//! recently used eviction of images no response holds. Knows nothing of HTTP.

mod files;
mod prepare;
mod reference;
mod scan;
mod space;
mod tree;
mod unpack;

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

pub use files::{FileBytes, FileError};
pub use prepare::replace_all;
pub use reference::{BlobserveRef, ParseBlobserveRefError};
pub use space::SpaceError;

use crate::blocking::run_blocking;
use super::single_flight::SingleFlight;
use super::{PrefetchRef, Registry, RegistryError, StoredManifest};
use crate::metrics;
use crate::table::SharedMap;
use files::Files;
use prepare::PreparedImage;
use space::Space;
use tree::{Node, Resolved};

/// Times a request looks for its image again after a preparation (another core's eviction
/// may take it between the preparation and the look).
const PREPARE_ROUNDS: usize = 3;

/// Default of `blobserve.maxUnpackedBytes`: far above any IDE front end, far below a disk.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 8 << 30;

/// `{path, search, replacement}`: rewrites a file of the image once, when it is prepared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replacement {
    pub path: String,
    pub search: String,
    pub replacement: String,
}

/// `{search, replacement}` applied to `index.html` for a request that sends inline variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineReplacement {
    pub search: String,
    pub replacement: String,
}

/// One entry of `blobserve.repos`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoSettings {
    /// Tags prepared at start.
    pub pre_pull: Vec<String>,
    /// The directory files are served from; `None`: the IDE manifest label's, else the root.
    pub workdir: Option<String>,
    pub replacements: Vec<Replacement>,
    pub inline_static: Vec<InlineReplacement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobserveSettings {
    /// By repository as URLs name it: `host/name` or a name of this facade.
    pub repos: BTreeMap<String, RepoSettings>,
    pub allow_any_repo: bool,
    /// The blob space directory.
    pub location: PathBuf,
    /// `None`: unbounded.
    pub max_size_bytes: Option<u64>,
    /// Most uncompressed archive bytes one image may unpack to.
    pub max_unpacked_bytes: u64,
}

/// A repository's settings as served, with the identity of what changes its files.
pub struct RepoConfig {
    workdir: Option<String>,
    replacements: Vec<Replacement>,
    inline_static: Arc<[InlineReplacement]>,
    /// Part of a prepared image's key: the same manifest with other replacements or another
    /// workdir is another prepared image.
    id: String,
}

impl RepoConfig {
    fn new(settings: &RepoSettings) -> RepoConfig {
        let identity = serde_json::json!({"workdir": settings.workdir, "replacements": settings.replacements});
        let id = hex::encode(&Sha256::digest(identity.to_string().as_bytes())[..8]);
        RepoConfig { workdir: settings.workdir.clone(), replacements: settings.replacements.clone(), inline_static: settings.inline_static.clone().into(), id }
    }
}

/// A file path inside the served directory, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePath {
    /// `/<ref>`, `/<ref>/`, `/<ref>/index.html`: the workdir's `index.html`, with the
    /// repository's inline replacements offered.
    Index,
    /// Decoded components, none empty, `.` or `..`; `directory`: the path ended with `/`.
    Path { components: Vec<String>, directory: bool },
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilePath::Index => f.write_str("index.html"),
            FilePath::Path { components, directory } => write!(f, "{}{}", components.join("/"), if *directory { "/" } else { "" }),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FileOptions {
    /// Do not prepare an image no request has prepared yet (`X-BlobServe-ReadOnly`).
    pub read_only: bool,
    /// Also find (or make) the gzip variant.
    pub gzip: bool,
}

/// A file to send.
pub struct ServedFile {
    pub identity: FileBytes,
    pub gzip: Option<FileBytes>,
    /// Changes with the image's manifest and the file's content (unquoted).
    pub etag: String,
    /// The repository's inline replacements, for `FilePath::Index` only.
    pub inline_static: Option<Arc<[InlineReplacement]>>,
    /// Keeps the image from eviction while the response lives.
    pub lease: Arc<dyn Any + Send + Sync>,
}

pub enum Blobserved {
    File(ServedFile),
    /// A directory asked for without the trailing `/` its relative links need.
    Directory,
}

/// Pre-pull progress, for logs and metrics.
#[derive(Debug, Default)]
pub struct PrepullProgress {
    pub pending: AtomicUsize,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
}

/// What the metrics read at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct BlobserveStats {
    pub space_bytes: u64,
    pub prepull_pending: usize,
    pub prepull_ready: usize,
    pub prepull_failed: usize,
}

type Shared<T> = Result<T, Arc<RegistryError>>;

/// The blobserve state shared by every core.
pub struct Blobserve {
    repos: BTreeMap<String, Arc<RepoConfig>>,
    any_repo: Option<Arc<RepoConfig>>,
    pre_pull: Vec<String>,
    space: Arc<Space>,
    files: Files,
    max_size_bytes: Option<u64>,
    max_unpacked_bytes: u64,
    images: SharedMap<Arc<str>, Arc<PreparedImage>>,
    /// References prepared at least once (what `read_only` requests may use).
    seen: SharedMap<String, ()>,
    preparing: SingleFlight<Arc<str>, Shared<()>>,
    unpacking: SingleFlight<String, Shared<()>>,
    prepull: PrepullProgress,
}

impl Blobserve {
    /// Opens the blob space. Blocking: call before the executors start.
    ///
    /// # Errors
    /// The blob space cannot be created, cleaned or measured.
    pub fn open(settings: &BlobserveSettings, max_open_files: usize) -> Result<Blobserve, SpaceError> {
        let space = Arc::new(Space::open(&settings.location)?);
        let pre_pull = settings.repos.iter().flat_map(|(repo, s)| s.pre_pull.iter().map(move |tag| format!("{repo}:{tag}"))).collect();
        Ok(Blobserve {
            repos: settings.repos.iter().map(|(repo, s)| (repo.clone(), Arc::new(RepoConfig::new(s)))).collect(),
            any_repo: settings.allow_any_repo.then(|| Arc::new(RepoConfig::new(&RepoSettings::default()))),
            pre_pull,
            space,
            files: Files::new(max_open_files),
            max_size_bytes: settings.max_size_bytes,
            max_unpacked_bytes: settings.max_unpacked_bytes,
            images: SharedMap::new(),
            seen: SharedMap::new(),
            preparing: SingleFlight::default(),
            unpacking: SingleFlight::default(),
            prepull: PrepullProgress::default(),
        })
    }

    fn repo(&self, image: &BlobserveRef) -> Result<Arc<RepoConfig>, RegistryError> {
        let key = image.repo_key();
        self.repos.get(&key).or(self.any_repo.as_ref()).cloned().ok_or_else(|| RegistryError::Denied(format!("forbidden repo: {key}")))
    }

    /// The file `path` of `image`.
    async fn serve(&self, image: &Arc<PreparedImage>, repo: &RepoConfig, path: &FilePath, options: FileOptions, now_ms: u64) -> Result<Blobserved, RegistryError> {
        let unknown = || RegistryError::FileUnknown { path: path.to_string() };
        let index = ["index.html"];
        let resolved = match path {
            FilePath::Index => image.tree.resolve(&image.workdir, &index),
            FilePath::Path { components, .. } => image.tree.resolve(&image.workdir, components),
        };
        let node = match resolved.ok_or_else(unknown)? {
            Resolved::File { node, .. } => node,
            Resolved::Dir { .. } if matches!(path, FilePath::Path { directory: false, .. }) => return Ok(Blobserved::Directory),
            Resolved::Dir { path: dir } => match image.tree.resolve(&dir, &index) {
                Some(Resolved::File { node, .. }) => node,
                _ => return Err(unknown()),
            },
        };
        let Node::File { unit, sha, .. } = node else { return Err(unknown()) };
        let unit = image.units.get(usize::from(*unit)).ok_or_else(unknown)?;
        let identity = self.files.open(unit, sha, now_ms).await.map_err(RegistryError::BlobSpace)?;
        let gzip = match options.gzip {
            true => self.files.gzip(&self.space, unit, sha, &identity, now_ms).await.map_err(RegistryError::BlobSpace)?,
            false => None,
        };
        let mut etag = String::with_capacity(image.etag_prefix.len() + 26);
        etag.push_str(&image.etag_prefix);
        etag.push('-');
        let mut hex_sha = [0u8; 24];
        if hex::encode_to_slice(&sha[..12], &mut hex_sha).is_ok() {
            etag.push_str(std::str::from_utf8(&hex_sha).unwrap_or_default());
        }
        let inline_static = matches!(path, FilePath::Index).then(|| Arc::clone(&repo.inline_static));
        Ok(Blobserved::File(ServedFile { identity, gzip, etag, inline_static, lease: Arc::clone(image) as Arc<dyn Any + Send + Sync> }))
    }

    /// Evicts until the space fits `maxSizeBytes`: first units no image holds (least recently
    /// used first), then the least recently used image no response holds. Blocking.
    fn make_room(&self, now_ms: u64) -> usize {
        let Some(max) = self.max_size_bytes else { return 0 };
        let mut deleted = 0;
        while self.space.used_bytes() > max {
            if let Some(unit) = self.space.delete_one_unheld() {
                self.files.forget_unit(&unit.id);
                tracing::info!(unit = %unit.id, bytes = unit.bytes(), "blobserve: evicted");
                deleted += 1;
                continue;
            }
            // The table's reference and ours from `entries`: no response holds it.
            let idle = self.images.entries().into_iter().filter(|(_, image)| Arc::strong_count(image) <= 2).min_by_key(|(_, image)| image.last_used_ms());
            let Some((key, image)) = idle else {
                tracing::warn!(used = self.space.used_bytes(), max, "blobserve: over blobSpace.maxSizeBytes, but every image is in use");
                break;
            };
            if self.images.remove_if(&key, |current| Arc::ptr_eq(current, &image)) {
                image.release(&self.space, now_ms);
            }
        }
        deleted
    }
}

impl Registry {
    fn blobserve(&self) -> Result<&Arc<Blobserve>, RegistryError> {
        self.blobserve.as_ref().ok_or(RegistryError::BlobserveOff)
    }

    /// The file `path` of `image` for a blobserve request: the image prepared first if it
    /// is not (unless `read_only`), a tag resolved as a pull would. Call on an executor.
    ///
    /// # Errors
    /// A repository not configured (`Denied`), an unknown image or file, an image that
    /// cannot be served, or a failure fetching it or of the blob space.
    pub async fn blobserve_file(self: &Arc<Self>, image: &BlobserveRef, path: &FilePath, options: FileOptions) -> Result<Blobserved, RegistryError> {
        let blobserve = self.blobserve()?;
        let repo = blobserve.repo(image)?;
        if options.read_only && blobserve.seen.get(&image.to_string()).is_none() {
            return Err(RegistryError::NotPrepared(image.to_string()));
        }
        let prepared = self.blobserve_prepared(image, &repo).await?;
        match blobserve.serve(&prepared, &repo, path, options, self.clock.now_ms()).await {
            // Evicted between its lookup and the open, or damaged on disk (a crash before its
            // files were written out): the unit goes and the image is prepared again, once.
            Err(RegistryError::BlobSpace(error)) if error.unit().is_some() => {
                let (space, unit) = (Arc::clone(&blobserve.space), error.unit().map(Arc::clone).unwrap_or_default());
                run_blocking(move || space.discard(&unit)).await;
                if blobserve.images.remove_if(&prepared.key, |current| Arc::ptr_eq(current, &prepared)) {
                    prepared.release(&blobserve.space, self.clock.now_ms());
                }
                let prepared = self.blobserve_prepared(image, &repo).await?;
                blobserve.serve(&prepared, &repo, path, options, self.clock.now_ms()).await
            }
            other => other,
        }
    }

    /// Prepares `image` now, without serving anything: what pre-pull runs, and the hook for
    /// node warming (a prefetch of the images a node will need also prepares their
    /// blobserve images through this).
    ///
    /// # Errors
    /// As `blobserve_file`.
    pub async fn blobserve_prepare(self: &Arc<Self>, image: &BlobserveRef) -> Result<(), RegistryError> {
        let repo = self.blobserve()?.repo(image)?;
        self.blobserve_prepared(image, &repo).await.map(drop)
    }

    async fn blobserve_prepared(self: &Arc<Self>, image: &BlobserveRef, repo: &Arc<RepoConfig>) -> Result<Arc<PreparedImage>, RegistryError> {
        let blobserve = self.blobserve()?;
        let manifest = self.blobserve_manifest(image).await?;
        let key: Arc<str> = Arc::from(format!("{}-{}", manifest.digest.hex(), repo.id));
        let prepared = || {
            let found = blobserve.images.get(&key)?;
            found.touch(self.clock.now_ms());
            Some(found)
        };
        let mut damaged = None;
        for _ in 0..PREPARE_ROUNDS {
            if let Some(found) = prepared() {
                return Ok(found);
            }
            // Detached: a client that gives up (or times out) does not abandon the
            // preparation, which the next request then finds done.
            let task = glommio::spawn_local(Arc::clone(self).blobserve_prepare_once(image.clone(), Arc::clone(&manifest), Arc::clone(repo), Arc::clone(&key))).detach();
            match task.await {
                Some(Ok(())) => damaged = None,
                // A unit found damaged was discarded: the next round unpacks its layer again.
                Some(Err(error)) if matches!(&*error, RegistryError::BlobSpace(e) if e.unit().is_some()) => damaged = Some(error),
                Some(Err(error)) => return Err(RegistryError::Prepare { image: image.to_string(), error }),
                None => return Err(RegistryError::PrepareAbandoned),
            }
        }
        if let Some(found) = prepared() {
            return Ok(found);
        }
        // No round left the image in the table: its units kept being found damaged (the disk
        // under the blob space), or it was evicted as soon as it was made.
        match damaged {
            Some(error) => Err(RegistryError::Prepare { image: image.to_string(), error }),
            None => Err(RegistryError::Unservable { image: image.to_string(), reason: "it was evicted as soon as it was prepared; blobSpace.maxSizeBytes is too small for it".into() }),
        }
    }

    /// Prepares the image `key` once across all cores (waiting for a run under way), then
    /// makes room in the blob space. The image is taken from the table afterwards: a flight
    /// that held it would keep it counted as in use until the finished flight is reclaimed.
    async fn blobserve_prepare_once(self: Arc<Self>, image: BlobserveRef, manifest: Arc<StoredManifest>, repo: Arc<RepoConfig>, key: Arc<str>) -> Result<(), Arc<RegistryError>> {
        let Some(blobserve) = self.blobserve.clone() else { return Err(Arc::new(RegistryError::BlobserveOff)) };
        let run = || async {
            let started = self.clock.now_ms();
            let built = self.blobserve_build(&blobserve, &image, &manifest, &repo, &key).await;
            match &built {
                Ok(prepared) => tracing::info!(%image, %key, paths = prepared.tree.len(), ms = self.clock.now_ms().saturating_sub(started), "blobserve: image prepared"),
                Err(error) => tracing::warn!(%image, %error, "blobserve: image not prepared"),
            }
            metrics::blobserve_prepared(built.is_ok());
            // The new image is held here, so room is made by evicting others.
            let (space_owner, now_ms) = (Arc::clone(&blobserve), self.clock.now_ms());
            let deleted = run_blocking(move || space_owner.make_room(now_ms)).await;
            metrics::blobserve_evicted(deleted as u64);
            built.map(drop).map_err(Arc::new)
        };
        blobserve.preparing.run(Arc::clone(&key), run).await?;
        blobserve.seen.insert(image.to_string(), ());
        Ok(())
    }

    /// Node warming's part for blobserve: of the images a prefetch brought in, those whose
    /// repository is in `blobserve.repos` are prepared (unpacked) too, so that a browser's
    /// first request finds them ready. One after the other; a failure is logged. Call on an
    /// executor.
    pub(super) async fn blobserve_after_prefetch(self: &Arc<Self>, images: Vec<PrefetchRef>) {
        let Some(blobserve) = self.blobserve.as_ref() else { return };
        for reference in images {
            let image = BlobserveRef::from(&reference);
            if !blobserve.repos.contains_key(&image.repo_key()) {
                continue;
            }
            match self.blobserve_prepare(&image).await {
                Ok(()) => tracing::info!(%image, "blobserve: prepared after its prefetch"),
                Err(error) => tracing::warn!(%image, %error, "blobserve: not prepared after its prefetch"),
            }
        }
    }

    /// Prepares every `prePull` image, one after the other, logging progress; a future to run
    /// in the background once the executors serve (`None` without blobserve).
    pub fn blobserve_prepull(self: &Arc<Self>) -> Option<impl std::future::Future<Output = ()>> {
        let blobserve = Arc::clone(self.blobserve.as_ref()?);
        let refs = blobserve.pre_pull.clone();
        blobserve.prepull.pending.store(refs.len(), Ordering::Relaxed);
        let this = Arc::clone(self);
        Some(async move {
            let total = refs.len();
            for (done, text) in refs.iter().enumerate() {
                let outcome = match text.parse::<BlobserveRef>() {
                    Ok(image) => this.blobserve_prepare(&image).await,
                    Err(e) => Err(RegistryError::Unservable { image: text.clone(), reason: e.to_string() }),
                };
                blobserve.prepull.pending.fetch_sub(1, Ordering::Relaxed);
                match outcome {
                    Ok(()) => {
                        blobserve.prepull.ready.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(image = %text, done = done + 1, total, "blobserve pre-pull: ready");
                    }
                    Err(error) => {
                        blobserve.prepull.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(image = %text, done = done + 1, total, %error, "blobserve pre-pull: failed");
                    }
                }
            }
        })
    }

    /// The blob space's size and the pre-pull progress; `None` without blobserve.
    pub fn blobserve_stats(&self) -> Option<BlobserveStats> {
        let blobserve = self.blobserve.as_ref()?;
        let progress = &blobserve.prepull;
        Some(BlobserveStats {
            space_bytes: blobserve.space.used_bytes(),
            prepull_pending: progress.pending.load(Ordering::Relaxed),
            prepull_ready: progress.ready.load(Ordering::Relaxed),
            prepull_failed: progress.failed.load(Ordering::Relaxed),
        })
    }
}
