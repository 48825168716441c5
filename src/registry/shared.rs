//! Compositions shared through Redis: the node that composes a spec writes the result, the
//! others read it and serve the same digest without resolving or composing anything. What is
//! read is checked (the manifest and inline blobs against their digests) before it is used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::compose::BlobSource;
use super::composed::ComposedImage;
use super::StoredManifest;
use crate::oci::Digest;
use crate::upstream::RemoteRepository;

#[derive(Serialize, Deserialize)]
struct SharedComposition {
    manifest: String,
    media_type: String,
    /// Unix milliseconds after which it must be composed again; `None`: digests only.
    valid_until_ms: Option<u64>,
    blobs: Vec<SharedBlob>,
}

#[derive(Serialize, Deserialize)]
struct SharedBlob {
    digest: Digest,
    #[serde(flatten)]
    source: SharedSource,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
enum SharedSource {
    Upstream { host: String, path: String },
    Cache,
    Inline { data: String },
    Url { url: String, size: u64 },
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The document written to Redis for `image`, valid for `valid_for` (`None`: for good).
/// Nodes share it, so its end is written as wall-clock time.
pub fn encode(image: &ComposedImage, valid_for: Option<Duration>) -> Vec<u8> {
    let valid_until_ms = valid_for.map(|left| (SystemTime::now() + left).duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
    let mut blobs: Vec<SharedBlob> = image
        .blobs
        .iter()
        .map(|(digest, source)| SharedBlob {
            digest: digest.clone(),
            source: match source {
                BlobSource::Upstream(remote) => SharedSource::Upstream { host: remote.host.clone(), path: remote.path.clone() },
                BlobSource::Cache => SharedSource::Cache,
                BlobSource::Inline(bytes) => SharedSource::Inline { data: b64().encode(bytes) },
                BlobSource::Url { url, size } => SharedSource::Url { url: url.clone(), size: *size },
            },
        })
        .collect();
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    let shared = SharedComposition {
        manifest: b64().encode(&image.manifest.body),
        media_type: image.manifest.media_type_str().to_owned(),
        valid_until_ms,
        blobs,
    };
    serde_json::to_vec(&shared).unwrap_or_default()
}

/// A composition read from Redis, and how much longer it holds; `None` if it is malformed,
/// tampered with, or expired (the caller composes instead).
pub fn decode(bytes: &[u8]) -> Option<(Arc<ComposedImage>, Option<Duration>)> {
    let shared: SharedComposition = serde_json::from_slice(bytes).ok()?;
    let valid_for = match shared.valid_until_ms {
        None => None,
        Some(ms) => Some((UNIX_EPOCH + Duration::from_millis(ms)).duration_since(SystemTime::now()).ok()?),
    };
    let body = Bytes::from(b64().decode(&shared.manifest).ok()?);
    let digest = Digest::sha256_of(&body);
    let manifest = StoredManifest::new(body, &shared.media_type, digest).ok()?;
    let mut blobs = HashMap::new();
    for blob in shared.blobs {
        let source = match blob.source {
            SharedSource::Upstream { host, path } => BlobSource::Upstream(RemoteRepository { host, path }),
            SharedSource::Cache => BlobSource::Cache,
            SharedSource::Url { url, size } => BlobSource::Url { url, size },
            SharedSource::Inline { data } => {
                let bytes = Bytes::from(b64().decode(data).ok()?);
                if Digest::sha256_of(&bytes) != blob.digest {
                    return None;
                }
                BlobSource::Inline(bytes)
            }
        };
        blobs.insert(blob.digest, source);
    }
    Some((Arc::new(ComposedImage { manifest: Arc::new(manifest), blobs }), valid_for))
}
