//! Image manifests, indexes, descriptors and platforms as JSON documents.
//! Unknown fields are kept (`extra`) so that a document read and written again loses nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::media_type::{self, ManifestKind};

/// The spec asks registries to accept manifests of at least 4 MB; larger ones are refused.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

type Extra = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            extra: Extra::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageIndex {
    /// The first entry for `platform`, skipping attestation manifests (BuildKit marks them
    /// with a `vnd.docker.reference.type` annotation and an `unknown/unknown` platform).
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests.iter().find(|entry| {
            let attestation = entry
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
            !attestation && entry.platform.as_ref().is_some_and(|p| platform.matches(p))
        })
    }
}

/// A manifest-like document, parsed according to its media type.
#[derive(Debug, Clone, PartialEq)]
// Parsed once per document and matched at once; boxing the image variant would cost an
// allocation per parse to save bytes on a value that never sits in a collection.
#[allow(clippy::large_enum_variant)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Debug, thiserror::Error)]
pub enum ParseManifestError {
    #[error("`{0}` is not a manifest media type")]
    NotAManifest(String),
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("invalid manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest says mediaType `{inside}` but was described as `{outside}`")]
    MediaTypeMismatch { inside: String, outside: String },
}

impl Manifest {
    /// Parses `bytes` as the kind `media_type` names, and checks that the document's own
    /// `mediaType` (when present) agrees, as clients do.
    ///
    /// # Errors
    /// Unknown media type, oversized or malformed JSON, or a disagreeing `mediaType` field.
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Manifest, ParseManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ParseManifestError::TooLarge);
        }
        let kind = media_type::manifest_kind(media_type)
            .ok_or_else(|| ParseManifestError::NotAManifest(media_type.to_owned()))?;
        let (parsed, inside) = match kind {
            ManifestKind::Image => {
                let m: ImageManifest = serde_json::from_slice(bytes)?;
                let inside = m.media_type.clone();
                (Manifest::Image(m), inside)
            }
            ManifestKind::Index => {
                let m: ImageIndex = serde_json::from_slice(bytes)?;
                let inside = m.media_type.clone();
                (Manifest::Index(m), inside)
            }
        };
        match inside {
            Some(inside) if inside != media_type => Err(ParseManifestError::MediaTypeMismatch {
                inside,
                outside: media_type.to_owned(),
            }),
            _ => Ok(parsed),
        }
    }

    /// Every descriptor this document points at (config and layers, or child manifests).
    pub fn children(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
            Manifest::Index(i) => i.manifests.iter().collect(),
        }
    }
}

/// The media type of a manifest document read from the document itself: its `mediaType`, or
/// for documents without one (allowed by the OCI spec) an OCI index or manifest by shape.
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    match probe.media_type {
        Some(media_type) => media_type::manifest_kind(&media_type).map(|_| media_type),
        None if probe.manifests.is_some() => Some(media_type::OCI_INDEX.to_owned()),
        None if probe.config.is_some() && probe.layers.is_some() => Some(media_type::OCI_MANIFEST.to_owned()),
        None => None,
    }
}

/// An OS/architecture pair (with optional variant), e.g. `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform must look like os/architecture[/variant], e.g. linux/amd64")]
pub struct ParsePlatformError;

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_owned),
            features: None,
        }
    }

    /// The platform this binary was built for, in Go's names (`amd64`, `arm64`, …).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new(std::env::consts::OS, architecture, None)
    }

    /// Whether an index entry's platform serves a node of platform `self`. A wanted variant
    /// must match; arm64 without a variant is v8, as containerd normalises it.
    pub fn matches(&self, candidate: &Platform) -> bool {
        fn normal_variant(p: &Platform) -> Option<&str> {
            match (p.architecture.as_str(), p.variant.as_deref()) {
                ("arm64", None) => Some("v8"),
                (_, v) => v,
            }
        }
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (self.variant.is_none() || normal_variant(self) == normal_variant(candidate))
    }
}

impl FromStr for Platform {
    type Err = ParsePlatformError;

    fn from_str(s: &str) -> Result<Platform, ParsePlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(ParsePlatformError),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_image_manifest_and_keeps_unknown_fields() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{D}","size":0}},
            "layers":[{{"mediaType":"{}","digest":"{D}","size":0,"x-extra":1}}],"future":true}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            media_type::OCI_LAYER_GZIP
        );
        let Manifest::Image(m) = Manifest::parse(media_type::OCI_MANIFEST, json.as_bytes()).unwrap()
        else {
            panic!("not an image manifest")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].extra["x-extra"], 1);
        assert_eq!(m.extra["future"], true);
        let again = serde_json::to_value(&m).unwrap();
        assert_eq!(again["layers"][0]["x-extra"], 1);
    }

    #[test]
    fn rejects_mismatch_and_garbage() {
        let json = format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#, media_type::OCI_INDEX);
        assert!(matches!(
            Manifest::parse(media_type::DOCKER_MANIFEST_LIST, json.as_bytes()),
            Err(ParseManifestError::MediaTypeMismatch { .. })
        ));
        assert!(Manifest::parse(media_type::OCI_INDEX, json.as_bytes()).is_ok());
        assert!(Manifest::parse(media_type::OCI_MANIFEST, b"{").is_err());
        assert!(Manifest::parse("text/plain", b"{}").is_err());
        let negative = format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{D}","size":-1}}]}}"#);
        assert!(Manifest::parse(media_type::OCI_INDEX, negative.as_bytes()).is_err());
    }

    #[test]
    fn index_selects_platform_not_first_entry() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{m}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"sha256:{a}","size":2,"platform":{{"os":"unknown","architecture":"unknown"}},
              "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}},
            {{"mediaType":"{m}","digest":"sha256:{b}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            m = media_type::OCI_MANIFEST,
            a = "a".repeat(64),
            b = "b".repeat(64)
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(index.select(&"linux/arm64".parse().unwrap()).unwrap().size, 3);
        assert_eq!(index.select(&"linux/amd64".parse().unwrap()).unwrap().size, 1);
        assert!(index.select(&"unknown/unknown".parse().unwrap()).is_none());
        assert!(index.select(&"linux/s390x".parse().unwrap()).is_none());
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff_media_type(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#).as_deref(), Some(media_type::DOCKER_MANIFEST));
        assert_eq!(sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(), Some(media_type::OCI_INDEX));
        assert_eq!(sniff_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(), Some(media_type::OCI_MANIFEST));
        assert_eq!(sniff_media_type(br#"{"mediaType":"text/plain"}"#), None);
        assert_eq!(sniff_media_type(b"[]"), None);
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches(&Platform::new("linux", "arm64", Some("v8"))));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!(!p.matches(&Platform::new("linux", "amd64", None)));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "a/b/c/d", "li nux/amd64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
