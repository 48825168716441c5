//! The image spec, compatible with Gitpod's `ImageSpec` in protobuf-JSON (camelCase), and its
//! validated form. A spec's key is the sha256 of its canonical JSON: the same spec always has
//! the same key, a changed spec a new one.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::media_type;
use crate::oci::{Digest, ImageRef, RepositoryName, Tag};

/// Refs in this form name an image in the local cache (an imported layout).
pub const LOCAL_PREFIX: &str = "local:";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    pub base_ref: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ide_ref: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub supervisor_ref: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ide_layer_ref: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_layer: Vec<ContentLayerSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentLayerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteLayerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectLayerSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteLayerSpec {
    pub url: String,
    pub digest: String,
    #[serde(default)]
    pub diff_id: String,
    #[serde(default)]
    pub media_type: String,
    /// protobuf-JSON writes int64 as a string; both forms are read.
    #[serde(deserialize_with = "number_or_string")]
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectLayerSpec {
    /// The uncompressed tar, base64 (protobuf-JSON `bytes`).
    pub content: String,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match Either::deserialize(deserializer)? {
        Either::Number(n) => Ok(n),
        Either::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceRef {
    Upstream(ImageRef),
    /// `local:<name>:<tag>`, an image in the cache.
    Local(RepositoryName, Tag),
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceRef::Upstream(image) => image.fmt(f),
            SourceRef::Local(name, tag) => write!(f, "{LOCAL_PREFIX}{name}:{tag}"),
        }
    }
}

impl std::str::FromStr for SourceRef {
    type Err = String;

    fn from_str(text: &str) -> Result<SourceRef, String> {
        match text.strip_prefix(LOCAL_PREFIX) {
            Some(local) => {
                let (name, tag) = local.rsplit_once(':').unwrap_or((local, "latest"));
                let name = name.parse().map_err(|e| format!("`{text}`: {e}"))?;
                let tag = tag.parse().map_err(|e| format!("`{text}`: {e}"))?;
                Ok(SourceRef::Local(name, tag))
            }
            None => text.parse().map(SourceRef::Upstream).map_err(|e| e.to_string()),
        }
    }
}

/// A workspace content layer, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentLayer {
    /// Fetched by the runtime (or the facade) from `url`.
    Remote { url: String, digest: Digest, diff_id: Digest, media_type: String, size: u64 },
    /// An uncompressed tar carried in the spec itself.
    Direct { content: Bytes, digest: Digest },
}

/// A spec whose every ref and layer parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub base: SourceRef,
    pub ide: Option<SourceRef>,
    pub supervisor: Option<SourceRef>,
    pub ide_layers: Vec<SourceRef>,
    pub content: Vec<ContentLayer>,
    /// sha256 of the canonical JSON.
    pub key: Digest,
}

impl ImageSpec {
    /// Checks every ref and content layer; errors name the field.
    ///
    /// # Errors
    /// A field that does not parse, with its name.
    pub fn validate(&self) -> Result<ValidSpec, String> {
        let source = |field: &str, text: &str| text.parse::<SourceRef>().map_err(|e| format!("{field}: {e}"));
        let optional = |field: &str, text: &str| (!text.is_empty()).then(|| source(field, text)).transpose();
        if self.base_ref.is_empty() {
            return Err("baseRef: required".into());
        }
        let ide_layers = self.ide_layer_ref.iter().enumerate().map(|(i, r)| source(&format!("ideLayerRef[{i}]"), r)).collect::<Result<_, _>>()?;
        let content = self.content_layer.iter().enumerate().map(|(i, layer)| layer.validate(i)).collect::<Result<_, _>>()?;
        let canonical = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        Ok(ValidSpec {
            base: source("baseRef", &self.base_ref)?,
            ide: optional("ideRef", &self.ide_ref)?,
            supervisor: optional("supervisorRef", &self.supervisor_ref)?,
            ide_layers,
            content,
            key: Digest::sha256_of(&canonical),
        })
    }
}

impl ContentLayerSpec {
    fn validate(&self, index: usize) -> Result<ContentLayer, String> {
        let field = format!("contentLayer[{index}]");
        match (&self.remote, &self.direct) {
            (Some(remote), None) => {
                if !(remote.url.starts_with("https://") || remote.url.starts_with("http://")) {
                    return Err(format!("{field}.remote.url: must be an http(s) URL"));
                }
                let digest: Digest = remote.digest.parse().map_err(|e| format!("{field}.remote.digest: {e}"))?;
                // Gitpod's rule: no diff_id, or one equal to the digest, means uncompressed.
                let uncompressed = remote.diff_id.is_empty() || remote.diff_id == remote.digest;
                let diff_id = if uncompressed { digest.clone() } else { remote.diff_id.parse().map_err(|e| format!("{field}.remote.diffId: {e}"))? };
                let media_type = match remote.media_type.as_str() {
                    "" if uncompressed => media_type::OCI_LAYER_TAR.to_owned(),
                    "" => media_type::OCI_LAYER_GZIP.to_owned(),
                    given => given.to_owned(),
                };
                Ok(ContentLayer::Remote { url: remote.url.clone(), digest, diff_id, media_type, size: remote.size })
            }
            (None, Some(direct)) => {
                let content = base64::engine::general_purpose::STANDARD
                    .decode(direct.content.trim())
                    .map_err(|e| format!("{field}.direct.content: not base64: {e}"))?;
                let digest = Digest::sha256_of(&content);
                Ok(ContentLayer::Direct { content: Bytes::from(content), digest })
            }
            _ => Err(format!("{field}: exactly one of remote or direct")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<ValidSpec, String> {
        serde_json::from_str::<ImageSpec>(json).map_err(|e| e.to_string())?.validate()
    }

    #[test]
    fn gitpod_specs_parse() {
        let valid = spec(
            r#"{"baseRef": "docker.io/library/ubuntu:22.04", "ideRef": "ghcr.io/ide:1", "supervisorRef": "local:tools/supervisor:v2",
                "ideLayerRef": ["ghcr.io/extra:1"],
                "contentLayer": [{"direct": {"content": "aGVsbG8="}},
                                 {"remote": {"url": "https://blobs.example/l", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": "12"}}]}"#,
        )
        .unwrap();
        assert_eq!(valid.base.to_string(), "docker.io/library/ubuntu:22.04");
        assert_eq!(valid.supervisor, Some(SourceRef::Local("tools/supervisor".parse().unwrap(), "v2".parse().unwrap())));
        assert_eq!(valid.ide_layers.len(), 1);
        assert!(matches!(&valid.content[0], ContentLayer::Direct { content, .. } if content.as_ref() == b"hello"));
        assert!(matches!(&valid.content[1], ContentLayer::Remote { size: 12, media_type, .. } if media_type == media_type::OCI_LAYER_TAR));
    }

    #[test]
    fn keys_follow_content() {
        let a = spec(r#"{"baseRef": "a:1"}"#).unwrap();
        let same = spec(r#"{ "baseRef" : "a:1" , "ideLayerRef": [] }"#).unwrap();
        let other = spec(r#"{"baseRef": "a:2"}"#).unwrap();
        assert_eq!(a.key, same.key);
        assert_ne!(a.key, other.key);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(spec(r#"{"ideRef": "x"}"#).unwrap_err().contains("baseRef"));
        assert!(spec(r#"{"baseRef": "UP"}"#).unwrap_err().starts_with("baseRef:"));
        assert!(spec(r#"{"baseRef": "a", "ideLayerRef": ["ok", "B@d"]}"#).unwrap_err().starts_with("ideLayerRef[1]:"));
        assert!(spec(r#"{"baseRef": "a", "contentLayer": [{}]}"#).unwrap_err().contains("contentLayer[0]: exactly one"));
        assert!(spec(r#"{"baseRef": "a", "contentLayer": [{"direct": {"content": "!!"}}]}"#).unwrap_err().contains("not base64"));
        assert!(spec(r#"{"baseRef": "a", "contentLayer": [{"remote": {"url": "ftp://x", "digest": "sha256:x", "size": 1}}]}"#).unwrap_err().contains("url"));
        assert!(spec(r#"{"baseRef": "a", "unknown": 1}"#).is_err());
    }
}
