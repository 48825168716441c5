//! Preparing an image for blobserve through the registry's own paths: its manifest for our
//! platform and its config as any pull gets them, each layer fetched (local, mirrored,
//! composed, IPFS: verified wherever it came from) and unpacked once into a unit (single
//! flight across cores, on the blocking pool), then the layers merged and the repository's
//! replacements written into a unit of the image's own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::files::FileError;
use super::reference::BlobserveRef;
use super::space::{space_error, Space, SpaceError, Unit};
use super::tree::{Node, Resolved, Tree};
use super::unpack::{read_index, unpack_layer, UnpackError, FILES_DIR};
use super::{Blobserve, RepoConfig};
use crate::metrics;
use crate::oci::manifest::{Descriptor, ImageIndex, ImageManifest, MAX_MANIFEST_BYTES};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::{Digest, Reference};
use crate::oci::accept::AcceptList;
use crate::blocking::run_blocking;
use crate::registry::{BlobReply, Registry, RegistryError, StoredManifest};
use crate::upstream::BlobLocation;

/// The label of Gitpod's IDE images that names their front end's directory.
const IDE_MANIFEST_LABEL: &str = "io.gitpod.ide.manifest";
/// Image manifest types a blobserve image may have; an index is resolved to our platform.
const IMAGE_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Times a layer is taken again when its unit was deleted between its unpack and its use.
const ACQUIRE_ROUNDS: usize = 3;

/// An image ready to serve: its units (layers, then its own replaced files), its merged tree
/// and the directory files are served from. While a response holds it, it is not evicted.
pub struct PreparedImage {
    pub key: Arc<str>,
    pub units: Vec<Arc<Unit>>,
    pub tree: Tree,
    /// Relative to the image root, without leading or trailing `/`.
    pub workdir: String,
    /// The manifest digest's start: part of every ETag, so a moved tag changes them all.
    pub etag_prefix: String,
    last_used_ms: AtomicU64,
    released: AtomicBool,
}

impl PreparedImage {
    pub fn touch(&self, now_ms: u64) {
        self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Gives its units back to the space (once): it is no longer served.
    pub fn release(&self, space: &Space, now_ms: u64) {
        if !self.released.swap(true, Ordering::AcqRel) {
            for unit in &self.units {
                space.release(unit, now_ms.max(self.last_used_ms()));
            }
        }
    }
}

/// Units taken for a preparation, given back if it does not finish.
struct Taken<'a> {
    space: &'a Space,
    units: Vec<Arc<Unit>>,
    now_ms: u64,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for unit in self.units.drain(..) {
            self.space.release(&unit, self.now_ms);
        }
    }
}

fn unservable(image: &BlobserveRef, reason: String) -> RegistryError {
    RegistryError::Unservable { image: image.to_string(), reason }
}

fn disk(error: SpaceError) -> RegistryError {
    RegistryError::BlobSpace(Arc::new(FileError::Space(error)))
}

impl Registry {
    /// The manifest for our platform that `image` names now (a tag is resolved as a pull
    /// would: a moved tag gives the new manifest).
    ///
    /// # Errors
    /// As `manifest`, or the reference names no image.
    pub(super) async fn blobserve_manifest(&self, image: &BlobserveRef) -> Result<Arc<StoredManifest>, RegistryError> {
        // Parsed once: this runs on every request (a tag is resolved each time).
        static ACCEPT: std::sync::LazyLock<AcceptList> = std::sync::LazyLock::new(|| AcceptList::parse([IMAGE_MANIFESTS]));
        let accept = &*ACCEPT;
        let ns = image.host.as_deref();
        let mut manifest = self.manifest(&image.name, &image.reference, accept, ns).await?;
        if media_type::manifest_kind(manifest.media_type_str()) == Some(ManifestKind::Index) {
            // By digest the exact document comes back, an index too.
            let index: ImageIndex = serde_json::from_slice(&manifest.body).map_err(|e| unservable(image, format!("index: {e}")))?;
            let entry = index.select(&self.settings.platform).ok_or_else(|| unservable(image, format!("its index has no manifest for {}", self.settings.platform)))?;
            manifest = self.manifest(&image.name, &Reference::Digest(entry.digest.clone()), accept, ns).await?;
        }
        if media_type::manifest_kind(manifest.media_type_str()) != Some(ManifestKind::Image) {
            return Err(unservable(image, format!("{} is not an image manifest", manifest.media_type_str())));
        }
        Ok(manifest)
    }

    /// A whole blob of `image`'s repository, fetched through the same paths as a pull (a
    /// fill is followed to its end and the blob then taken from the cache).
    ///
    /// # Errors
    /// As `blob`; or the blob could not be kept in the cache (no room).
    async fn blobserve_blob(&self, image: &BlobserveRef, digest: &Digest) -> Result<Bytes, RegistryError> {
        let ns = image.host.as_deref();
        let mut reply = self.blob(&image.name, digest, ns, false).await?;
        if let BlobReply::Redirect(url) = reply {
            reply = self.remote.fill(digest, BlobLocation::Url(url), false).await?;
        }
        match reply {
            BlobReply::Cached(blob) => Ok(blob.body.clone()),
            BlobReply::Inline { bytes, .. } => Ok(bytes),
            BlobReply::Filling(filling) => {
                let mut stream = filling.stream(0..u64::MAX);
                while let Some(chunk) = futures_lite::StreamExt::next(&mut stream).await {
                    chunk.map_err(|e| unservable(image, format!("fetching {digest}: {e}")))?;
                }
                let blob = self.content.blob(digest).await?.ok_or_else(|| RegistryError::BlobNotKept(digest.clone()))?;
                Ok(blob.body.clone())
            }
            BlobReply::Remote { .. } | BlobReply::Redirect(_) => Err(RegistryError::BlobNotKept(digest.clone())),
        }
    }

    /// Prepares `image` (whose manifest is `manifest`) for `repo` as the image `key`, and
    /// puts it in the table of prepared images.
    ///
    /// # Errors
    /// A blob cannot be had, a layer cannot be served (refused: what it holds or its size),
    /// or the blob space's disk fails.
    pub(super) async fn blobserve_build(&self, blobserve: &Blobserve, image: &BlobserveRef, manifest: &StoredManifest, repo: &Arc<RepoConfig>, key: &Arc<str>) -> Result<Arc<PreparedImage>, RegistryError> {
        let now_ms = self.clock.now_ms();
        let parsed: ImageManifest = serde_json::from_slice(&manifest.body).map_err(|e| unservable(image, format!("manifest: {e}")))?;
        let config = self.blobserve_blob(image, &parsed.config.digest).await?;
        if config.len() > MAX_MANIFEST_BYTES {
            return Err(unservable(image, "its config is larger than 4 MiB".into()));
        }
        let workdir = repo.workdir.clone().unwrap_or_else(|| label_workdir(&config));
        let layers = parsed.layers.iter().map(|layer| self.blobserve_layer(blobserve, image, layer));
        let results = crate::registry::join::join_all(layers.collect()).await;
        let mut taken = Taken { space: &blobserve.space, units: Vec::new(), now_ms };
        let mut failure = None;
        for result in results {
            match result {
                Ok(unit) => taken.units.push(unit),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let (space, units, repo_config, cap, label) = (Arc::clone(&blobserve.space), taken.units.clone(), Arc::clone(repo), blobserve.max_unpacked_bytes, image.to_string());
        let image_unit = format!("image-{key}");
        let (tree, own_unit) = run_blocking(move || merge(&space, &units, &repo_config, cap, &label, &image_unit)).await?;
        if let Some(own) = own_unit {
            taken.units.push(own);
        }
        let prepared = Arc::new(PreparedImage {
            key: Arc::clone(key),
            units: std::mem::take(&mut taken.units),
            tree,
            workdir: normalise_dir(&workdir),
            etag_prefix: manifest.digest.hex().chars().take(16).collect(),
            last_used_ms: AtomicU64::new(now_ms),
            released: AtomicBool::new(false),
        });
        if let Some(previous) = blobserve.images.insert(Arc::clone(key), Arc::clone(&prepared)) {
            previous.release(&blobserve.space, now_ms);
        }
        Ok(prepared)
    }

    /// The unit of `layer`, taken: unpacked once however many images and cores want it.
    async fn blobserve_layer(&self, blobserve: &Blobserve, image: &BlobserveRef, layer: &Descriptor) -> Result<Arc<Unit>, RegistryError> {
        let id = format!("layer-{}", layer.digest.hex());
        for _ in 0..ACQUIRE_ROUNDS {
            if let Some(unit) = blobserve.space.acquire(&id) {
                return Ok(unit);
            }
            let unpacked = blobserve.unpacking.run(id.clone(), || async { self.blobserve_unpack(blobserve, image, layer, &id).await.map_err(Arc::new) }).await;
            unpacked.map_err(|error| RegistryError::Prepare { image: image.to_string(), error })?;
        }
        Err(unservable(image, format!("layer {} was evicted as soon as it was unpacked; maxSizeBytes is too small for it", layer.digest)))
    }

    async fn blobserve_unpack(&self, blobserve: &Blobserve, image: &BlobserveRef, layer: &Descriptor, id: &str) -> Result<(), RegistryError> {
        let (space, id_owned) = (Arc::clone(&blobserve.space), id.to_owned());
        if run_blocking(move || space.adopt(&id_owned)).await.map_err(disk)? {
            return Ok(());
        }
        let bytes = self.blobserve_blob(image, &layer.digest).await?;
        let (space, cap, id_owned) = (Arc::clone(&blobserve.space), blobserve.max_unpacked_bytes, id.to_owned());
        let unpacked = run_blocking(move || {
            let dir = space.temp_dir()?;
            let unpacked = match unpack_layer(&bytes, &dir, cap) {
                Ok(unpacked) => unpacked,
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
            };
            space.publish(&id_owned, &dir, unpacked.stored_bytes)?;
            Ok(unpacked)
        })
        .await
        .map_err(|error| match error {
            UnpackError::Refused(reason) => unservable(image, format!("layer {}: {reason}", layer.digest)),
            UnpackError::Io(error) => disk(error),
        })?;
        metrics::blobserve_layer_unpacked(unpacked.archive_bytes);
        tracing::info!(image = %image, layer = %layer.digest, entries = unpacked.entries.len(), bytes = unpacked.archive_bytes, skipped = unpacked.skipped, "blobserve: layer unpacked");
        Ok(())
    }
}

/// The directory of Gitpod's IDE manifest label (`{"name": …, "kind": …}`): `/ide/<name>`,
/// `/ide-desktop/<name>` for desktop IDEs; the root when there is none.
fn label_workdir(config: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(config).unwrap_or_default();
    let Some(text) = value.pointer("/config/Labels").and_then(|labels| labels.get(IDE_MANIFEST_LABEL)).and_then(|v| v.as_str()) else {
        return String::new();
    };
    let manifest: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    match (manifest.get("name").and_then(|v| v.as_str()), manifest.get("kind").and_then(|v| v.as_str())) {
        (Some(name), Some("desktop")) if !name.is_empty() => format!("/ide-desktop/{name}"),
        (Some(name), _) if !name.is_empty() => format!("/ide/{name}"),
        _ => String::new(),
    }
}

fn normalise_dir(dir: &str) -> String {
    dir.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// Merges the layers' indexes into the image's tree and writes the repository's
/// replacements into the image's own unit (`image_unit`; `None` when there are none).
/// Blocking.
fn merge(space: &Space, units: &[Arc<Unit>], repo: &RepoConfig, cap: u64, label: &str, image_unit: &str) -> Result<(Tree, Option<Arc<Unit>>), RegistryError> {
    let mut tree = Tree::default();
    let mut archive_bytes = 0u64;
    for (index, unit) in units.iter().enumerate() {
        let layer = read_index(&unit.dir).map_err(disk)?;
        archive_bytes = archive_bytes.saturating_add(layer.archive_bytes);
        if archive_bytes > cap {
            let reason = format!("its layers unpack to more than {cap} bytes (blobserve.maxUnpackedBytes)");
            return Err(RegistryError::Unservable { image: label.to_owned(), reason });
        }
        let dangling = tree.apply_layer(u16::try_from(index).unwrap_or(u16::MAX), &layer.entries);
        if dangling > 0 {
            tracing::warn!(image = label, unit = %unit.id, dangling, "blobserve: hard links to nothing were skipped");
        }
    }
    if repo.replacements.is_empty() {
        return Ok((tree, None));
    }
    let own = u16::try_from(units.len()).unwrap_or(u16::MAX);
    let built = space.temp_dir().map_err(disk)?;
    let files = built.join(FILES_DIR);
    std::fs::create_dir_all(&files).map_err(|e| disk(space_error("create directory", &files)(e)))?;
    let mut stored = 0u64;
    for replacement in &repo.replacements {
        let components: Vec<&str> = replacement.path.split('/').collect();
        let Some(Resolved::File { path, node: Node::File { unit, sha, .. } }) = tree.resolve("", &components) else {
            tracing::error!(image = label, path = %replacement.path, "blobserve: a replacement names no file of the image");
            continue;
        };
        let (source, found) = match units.get(usize::from(*unit)) {
            Some(unit) => (unit.dir.join(FILES_DIR).join(hex::encode(sha)), (!unit.fresh).then_some(unit)),
            None => (files.join(hex::encode(sha)), None),
        };
        let content = std::fs::read(&source).map_err(|e| disk(space_error("read", &source)(e)))?;
        // A unit found on disk is not trusted blindly (see `Space::publish`): a file damaged by
        // a crash would be rewritten here under a new, valid-looking name and served.
        if let Some(unit) = found.filter(|_| <[u8; 32]>::from(Sha256::digest(&content)) != *sha) {
            space.discard(&unit.id);
            return Err(RegistryError::BlobSpace(Arc::new(FileError::Corrupt { unit: Arc::clone(&unit.id), path: source })));
        }
        let replaced = replace_all(&content, replacement.search.as_bytes(), replacement.replacement.as_bytes());
        let new_sha: [u8; 32] = Sha256::digest(&replaced).into();
        let target = files.join(hex::encode(new_sha));
        if !target.exists() {
            std::fs::write(&target, &replaced).map_err(|e| disk(space_error("write", &target)(e)))?;
            stored += replaced.len() as u64;
        }
        tree.replace_file(&path, Node::File { unit: own, sha: new_sha, size: replaced.len() as u64 });
    }
    space.publish(image_unit, &built, stored).map_err(disk)?;
    let unit = space.acquire(image_unit).ok_or_else(|| disk(space_error("take", &built)(std::io::Error::other("the image's unit was deleted at once"))))?;
    Ok((tree, Some(unit)))
}

/// `haystack` with every occurrence of `search` replaced (an empty `search` replaces nothing).
pub fn replace_all(haystack: &[u8], search: &[u8], replacement: &[u8]) -> Vec<u8> {
    if search.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(search.len()).position(|w| w == search) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement);
        rest = &rest[at + search.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_and_workdirs() {
        assert_eq!(replace_all(b"a-X-b-X", b"X", b"yy"), b"a-yy-b-yy");
        assert_eq!(replace_all(b"abc", b"", b"z"), b"abc");
        let config = |label: &str| serde_json::to_vec(&serde_json::json!({"config": {"Labels": {IDE_MANIFEST_LABEL: label}}})).unwrap();
        assert_eq!(label_workdir(&config(r#"{"name": "code", "kind": "browser"}"#)), "/ide/code");
        assert_eq!(label_workdir(&config(r#"{"name": "intellij", "kind": "desktop"}"#)), "/ide-desktop/intellij");
        assert_eq!(label_workdir(b"{}"), "");
        assert_eq!(normalise_dir("/ide//code/./"), "ide/code");
    }
}
