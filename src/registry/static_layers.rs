//! Static layers from the configuration, appended to every composed image: `.tar.gz` files (copied
//! into the cache and pinned) and images (resolved like a spec's addons). Each set has a revision;
//! compositions made with an earlier one keep serving their blobs.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::compose::{BlobSource, LoneLayer};
use crate::oci::manifest::Descriptor;
use crate::oci::media_type::OCI_LAYER_GZIP;
use crate::oci::Digest;
use crate::spec::SourceRef;
use crate::store::{CacheDir, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticLayerConfig {
    /// A gzip-compressed tar file.
    File(PathBuf),
    /// The layers of an image.
    Image(String),
}

#[derive(Debug, Clone)]
// A handful per configuration, loaded once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StaticEntry {
    File(LoneLayer),
    Image(SourceRef),
}

#[derive(Debug, Clone)]
pub struct StaticLayers {
    /// Changes whenever the entries (or a file's content) change.
    pub revision: Digest,
    pub entries: Vec<StaticEntry>,
}

impl StaticLayers {
    pub fn none() -> StaticLayers {
        StaticLayers { revision: Digest::sha256_of(b""), entries: Vec::new() }
    }

    /// Digests of the file layers, which the cache must never evict.
    pub fn pinned(&self) -> impl Iterator<Item = &Digest> {
        self.entries.iter().filter_map(|entry| match entry {
            StaticEntry::File(layer) => Some(&layer.descriptor.digest),
            StaticEntry::Image(_) => None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StaticLayerError {
    #[error("staticLayers[{index}]: {path}: {reason}", path = path.display())]
    File { index: usize, path: PathBuf, reason: String },
    #[error("staticLayers[{index}]: {reason}")]
    Image { index: usize, reason: String },
    #[error("staticLayers: cache: {0}")]
    Cache(#[from] StoreError),
}

/// Reads and checks every static layer, copying file layers into the cache. Blocking: run it
/// at start or on a reload thread, never on an executor.
///
/// # Errors
/// A file that cannot be read or is not gzip, or an image ref that does not parse; the
/// error names the entry.
pub fn load(cache: &CacheDir, configs: &[StaticLayerConfig]) -> Result<StaticLayers, StaticLayerError> {
    let mut revision = Sha256::new();
    let mut entries = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        match config {
            StaticLayerConfig::File(path) => {
                let layer = load_file(cache, index, path)?;
                revision.update(format!("file {} {}\n", path.display(), layer.descriptor.digest));
                entries.push(StaticEntry::File(layer));
            }
            StaticLayerConfig::Image(reference) => {
                let source = reference.parse::<SourceRef>().map_err(|reason| StaticLayerError::Image { index, reason })?;
                revision.update(format!("image {source}\n"));
                entries.push(StaticEntry::Image(source));
            }
        }
    }
    Ok(StaticLayers { revision: Digest::sha256_from_bytes(&revision.finalize().into()), entries })
}

/// Hashes the file (its digest) and its decompressed stream (its diff_id) in one pass, and
/// puts it in the cache.
fn load_file(cache: &CacheDir, index: usize, path: &Path) -> Result<LoneLayer, StaticLayerError> {
    let fail = |reason: String| StaticLayerError::File { index, path: path.to_owned(), reason };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let digest = Digest::sha256_of(&bytes);
    let mut decompressed = Sha256::new();
    let mut decoder = flate2::read::GzDecoder::new(bytes.as_slice());
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut chunk).map_err(|e| fail(format!("not a gzip-compressed tar: {e}")))?;
        if n == 0 {
            break;
        }
        decompressed.update(&chunk[..n]);
    }
    cache.put_verified(&digest, &bytes)?;
    Ok(LoneLayer {
        descriptor: Descriptor::new(OCI_LAYER_GZIP, digest, bytes.len() as u64),
        diff_id: Digest::sha256_from_bytes(&decompressed.finalize().into()),
        source: BlobSource::Cache,
        created_by: format!("registry-facade: static layer {}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_layers_get_digest_and_diff_id_and_revisions_change_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(&dir.path().join("cache")).unwrap();
        let tar = b"pretend this is a tar".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let path = dir.path().join("tools.tar.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let configs = [StaticLayerConfig::File(path.clone()), StaticLayerConfig::Image("ghcr.io/tools:1".into())];
        let first = load(&cache, &configs).unwrap();
        let StaticEntry::File(layer) = &first.entries[0] else { panic!("a file layer") };
        assert_eq!(layer.diff_id, Digest::sha256_of(&tar));
        assert!(cache.contains(&layer.descriptor.digest));
        assert_eq!(first.pinned().count(), 1);
        assert_eq!(load(&cache, &configs).unwrap().revision, first.revision, "same config, same revision");
        std::fs::write(&path, b"not gzip").unwrap();
        assert!(load(&cache, &configs).unwrap_err().to_string().starts_with("staticLayers[0]:"));
        let fewer = load(&cache, &configs[1..]).unwrap();
        assert_ne!(fewer.revision, first.revision);
        assert!(load(&cache, &[StaticLayerConfig::Image("NOT VALID".into())]).unwrap_err().to_string().starts_with("staticLayers[0]:"));
    }
}
