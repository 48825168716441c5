//! The built-in demo image `demo:latest`, made on first start without network: one small
//! uncompressed layer, a config for the host platform and an OCI manifest. Every byte is
//! fixed (zero timestamps, sorted JSON keys), so the digests are the same on every start.

use serde_json::json;

use crate::oci::manifest::{Descriptor, ImageManifest, Platform};
use crate::oci::media_type;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::store::{CacheDir, StoreError};

pub const DEMO_REPOSITORY: &str = "demo";
const GREETING: &[u8] = b"Hello from the registry-facade demo image.\n";

/// The demo image's documents, in memory.
pub struct DemoImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl DemoImage {
    pub fn build(platform: &Platform) -> DemoImage {
        let layer = demo_layer();
        let layer_digest = Digest::sha256_of(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.opencontainers.image.description": "registry-facade demo image"},
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "registry-facade demo"}],
        }))
        .unwrap_or_default();
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            config: Descriptor::new(media_type::OCI_CONFIG, Digest::sha256_of(&config), config.len() as u64),
            layers: vec![Descriptor::new(media_type::OCI_LAYER_TAR, layer_digest, layer.len() as u64)],
            annotations: None,
            extra: Default::default(),
        };
        let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        DemoImage { layer, config, manifest }
    }
}

/// A tar holding `hello.txt`, with every header field fixed.
fn demo_layer() -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    let mut builder = tar::Builder::new(Vec::new());
    header.set_size(GREETING.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    // Writing into a Vec cannot fail, and the path is a short constant.
    let _ = builder.append_data(&mut header, "hello.txt", GREETING);
    builder.into_inner().unwrap_or_default()
}

/// Makes sure `demo:latest` is in the cache; returns its manifest digest.
///
/// # Errors
/// The cache cannot be written.
pub fn install(cache: &CacheDir, platform: &Platform) -> Result<Digest, StoreError> {
    let image = DemoImage::build(platform);
    let manifest_digest = Digest::sha256_of(&image.manifest);
    let name: RepositoryName = DEMO_REPOSITORY.parse().map_err(|_| StoreError::BadRecord {
        path: cache.root().to_owned(),
        reason: "demo repository name".into(),
    })?;
    let present = cache
        .read_record(&name)?
        .is_some_and(|r| r.tags.get(&Tag::latest()) == Some(&manifest_digest) && cache.contains(&manifest_digest));
    if present {
        return Ok(manifest_digest);
    }
    let config_digest = Digest::sha256_of(&image.config);
    let layer_digest = Digest::sha256_of(&image.layer);
    cache.put_verified(&layer_digest, &image.layer)?;
    cache.put_verified(&config_digest, &image.config)?;
    cache.put_verified(&manifest_digest, &image.manifest)?;
    cache.update_record(&name, |record| {
        record.tags.insert(Tag::latest(), manifest_digest.clone());
        record.manifests.insert(manifest_digest.clone(), media_type::OCI_MANIFEST.to_owned());
        record.blobs.extend([config_digest, layer_digest]);
    })?;
    Ok(manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_deterministic_and_installs_once() {
        let platform: Platform = "linux/amd64".parse().unwrap();
        let a = DemoImage::build(&platform);
        let b = DemoImage::build(&platform);
        assert_eq!((a.layer.len() % 512, &a.manifest), (0, &b.manifest));
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let first = install(&cache, &platform).unwrap();
        assert_eq!(install(&cache, &platform).unwrap(), first);
        let mut archive = tar::Archive::new(a.layer.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["hello.txt"]);
    }
}
