//! The image documents a pull reads: manifests and indexes (OCI and Docker schema2), told
//! apart by media type, an index resolved to one platform, and the digest check every fetched
//! body gets. Pure: no I/O.

use serde::Deserialize;
use sha2::Digest as _;

use crate::paired_sha256::PairedSha256;

/// containerd's resolver Accept list, in its order.
pub const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
/// The OCI image spec's limit on manifest size, which containerd enforces too.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

const INDEX_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    pub digest: String,
    pub size: u64,
    /// Where the blob may also be fetched (foreign and remote content layers).
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug)]
pub enum Parsed {
    Image { config: Descriptor, layers: Vec<Descriptor> },
    Index(Vec<Descriptor>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not a manifest: {0}")]
    NotJson(String),
    #[error("an image manifest without a config")]
    NoConfig,
    #[error("an image config without rootfs.diff_ids")]
    NoDiffIds,
    #[error("no {0} entry in the index")]
    NoPlatform(String),
    #[error("unsupported digest `{0}` (sha256 only)")]
    UnsupportedDigest(String),
}

/// Parses `body`; `content_type` decides when the document names no media type.
///
/// # Errors
/// Not JSON, or an image manifest without a config.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let document: Document = serde_json::from_slice(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let media_type = document.media_type.as_deref().or(content_type).unwrap_or_default();
    let is_index = INDEX_TYPES.iter().any(|t| media_type.starts_with(t)) || (document.config.is_none() && document.manifests.is_some());
    if is_index {
        return Ok(Parsed::Index(document.manifests.unwrap_or_default()));
    }
    let config = document.config.ok_or(ManifestError::NoConfig)?;
    Ok(Parsed::Image { config, layers: document.layers })
}

/// The index entry for `os/architecture`.
///
/// # Errors
/// No entry has that platform.
pub fn pick_platform<'a>(entries: &'a [Descriptor], os: &str, architecture: &str) -> Result<&'a Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == architecture))
        .ok_or_else(|| ManifestError::NoPlatform(format!("{os}/{architecture}")))
}

/// The host's platform in OCI terms (`linux/amd64` on x86_64), as the facade names it.
pub fn host_platform() -> (String, String) {
    let host = registry_facade::oci::manifest::Platform::host();
    (host.os, host.architecture)
}

/// A running sha256 for a body that must match `digest`.
pub struct Verifier {
    expected_hex: String,
    hasher: PairedSha256,
}

impl Verifier {
    /// # Errors
    /// `digest` is not `sha256:<64 hex>`.
    pub fn new(digest: &str) -> Result<Verifier, ManifestError> {
        let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).ok_or_else(|| ManifestError::UnsupportedDigest(digest.to_owned()))?;
        Ok(Verifier { expected_hex: hex.to_ascii_lowercase(), hasher: PairedSha256::new() })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// `Ok(())` when the bytes so far hash to the digest, else the digest they have.
    ///
    /// # Errors
    /// The actual digest, `sha256:<hex>`.
    pub fn finish(self) -> Result<(), String> {
        let actual = hex::encode(self.hasher.finalize());
        if actual == self.expected_hex {
            Ok(())
        } else {
            Err(format!("sha256:{actual}"))
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_index_documents() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"c","digest":"sha256:aa","size":2},"layers":[{"mediaType":"l","digest":"sha256:bb","size":3,"urls":["http://x/y"]}]}"#;
        let Ok(Parsed::Image { config, layers }) = parse(image, None) else { panic!("an image") };
        assert_eq!((config.size, layers[0].urls.len()), (2, 1));
        let index = br#"{"manifests":[{"digest":"sha256:11","size":1,"platform":{"os":"linux","architecture":"arm64"}},{"digest":"sha256:22","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Ok(Parsed::Index(entries)) = parse(index, Some("application/vnd.oci.image.index.v1+json")) else { panic!("an index") };
        assert_eq!(pick_platform(&entries, "linux", "amd64").map(|d| d.digest.as_str()), Ok("sha256:22"));
        assert!(pick_platform(&entries, "linux", "s390x").is_err());
        assert_eq!(parse(b"{}", None).unwrap_err(), ManifestError::NoConfig);
        assert!(matches!(parse(b"<html>", None), Err(ManifestError::NotJson(_))));
    }

    #[test]
    fn verifier_checks_sha256() {
        let digest = sha256_digest(b"abc");
        let mut good = Verifier::new(&digest).unwrap();
        good.update(b"a");
        good.update(b"bc");
        assert_eq!(good.finish(), Ok(()));
        let mut bad = Verifier::new(&digest).unwrap();
        bad.update(b"abd");
        assert_eq!(bad.finish(), Err(sha256_digest(b"abd")));
        assert!(Verifier::new("sha512:00").is_err());
    }
}
