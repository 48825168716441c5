//! Referrers for test layouts and registries: artifacts whose `subject` is an image (shaped as
//! the OCI conformance suite's: two config artifacts, two layer artifacts with `artifactType`,
//! an index artifact, and one whose subject does not exist), entries added to a layout's
//! `index.json`, the referrers tag index, and a plain HTTP push to the reference registry,
//! which takes manifests with a `subject` as it takes any other (it keeps their bytes).

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

use super::client::{request, send_raw, Reply};
use super::image::{to_json, write_blob, Desc, OCI_INDEX, OCI_MANIFEST};

/// The annotation every suite artifact carries (and the only one: the suite checks that).
pub const ANNOTATION: &str = "org.opencontainers.conformance.test";
pub const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The artifact types of the suite's referrers (`03_discovery_test.go`).
pub const BAGEL: &str = "application/vnd.nhl.peanut.butter.bagel";
pub const CROISSANT: &str = "application/vnd.nba.strawberry.jam.croissant";
pub const FOOD_STAND: &str = "application/vnd.food.stand";

/// A referrer as written: its descriptor, what the referrers API must say of it, and its bytes.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub desc: Desc,
    /// The `artifactType` the API lists (its own, the config's media type, or none for an index
    /// without one).
    pub artifact_type: Option<String>,
    pub annotations: Option<Value>,
    pub bytes: Vec<u8>,
}

impl Referrer {
    /// The descriptor the referrers API must list for it (spec, "Listing Referrers").
    pub fn listed(&self) -> Value {
        let mut value = json!({"mediaType": self.desc.media_type, "digest": self.desc.digest, "size": self.desc.size});
        if let Some(annotations) = &self.annotations {
            value["annotations"] = annotations.clone();
        }
        if let Some(artifact_type) = &self.artifact_type {
            value["artifactType"] = json!(artifact_type);
        }
        value
    }
}

fn descriptor(desc: &Desc) -> Value {
    json!({"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size})
}

/// The empty JSON config (`{}`, sha256:44136fa3…), which artifacts without a config use.
pub fn empty_config(dir: &Path) -> Desc {
    write_blob(dir, EMPTY_CONFIG_TYPE, b"{}")
}

/// An image manifest with `subject`: a config of `config_type` (`{}`, or the empty config when
/// `None`), one small layer with `payload`, and `artifact_type` and `annotations` when given.
pub fn manifest_artifact(dir: &Path, subject: &Desc, config_type: Option<&str>, artifact_type: Option<&str>, annotations: Option<Value>, payload: &[u8]) -> Referrer {
    let config = match config_type {
        Some(config_type) => write_blob(dir, config_type, b"{}"),
        None => empty_config(dir),
    };
    let layer = write_blob(dir, "application/octet-stream", payload);
    let mut manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(&config), "layers": [descriptor(&layer)], "subject": descriptor(subject),
    });
    if let Some(artifact_type) = artifact_type {
        manifest["artifactType"] = json!(artifact_type);
    }
    if let Some(annotations) = &annotations {
        manifest["annotations"] = annotations.clone();
    }
    let bytes = to_json(&manifest);
    let desc = write_blob(dir, OCI_MANIFEST, &bytes);
    Referrer { desc, artifact_type: Some(artifact_type.unwrap_or(&config.media_type).to_owned()), annotations, bytes }
}

/// An image index with `subject` listing `manifests`, with `artifact_type` and `annotations`.
pub fn index_artifact(dir: &Path, subject: &Desc, manifests: &[&Desc], artifact_type: Option<&str>, annotations: Option<Value>) -> Referrer {
    let mut index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": manifests.iter().map(|d| descriptor(d)).collect::<Vec<_>>(), "subject": descriptor(subject),
    });
    if let Some(artifact_type) = artifact_type {
        index["artifactType"] = json!(artifact_type);
    }
    if let Some(annotations) = &annotations {
        index["annotations"] = annotations.clone();
    }
    let bytes = to_json(&index);
    let desc = write_blob(dir, OCI_INDEX, &bytes);
    Referrer { desc, artifact_type: artifact_type.map(str::to_owned), annotations, bytes }
}

/// The suite's referrers of `subject` (A and B as config and as layer artifacts, the index
/// artifact), each with its one annotation, and C, whose subject `missing` is in no layout.
pub struct SuiteReferrers {
    pub a_config: Referrer,
    pub b_config: Referrer,
    pub a_layer: Referrer,
    pub b_layer: Referrer,
    pub index: Referrer,
    pub c_missing: Referrer,
    /// The subject of `c_missing`: a manifest digest nothing holds.
    pub missing: Desc,
}

impl SuiteReferrers {
    /// The five referrers of the image.
    pub fn of_image(&self) -> Vec<&Referrer> {
        vec![&self.a_config, &self.b_config, &self.a_layer, &self.b_layer, &self.index]
    }
}

pub fn suite_referrers(dir: &Path, subject: &Desc) -> SuiteReferrers {
    let note = |text: &str| Some(json!({ANNOTATION: text}));
    let a_config = manifest_artifact(dir, subject, Some(BAGEL), None, note("test config a"), b"ref blob a");
    let b_config = manifest_artifact(dir, subject, Some(CROISSANT), None, note("test config b"), b"ref blob b");
    let a_layer = manifest_artifact(dir, subject, None, Some(BAGEL), note("test layer a"), b"ref layer a");
    let b_layer = manifest_artifact(dir, subject, None, Some(CROISSANT), note("test layer b"), b"ref layer b");
    let index = index_artifact(dir, subject, &[&a_layer.desc, &b_layer.desc], Some(FOOD_STAND), note("test index"));
    // A manifest digest of content written nowhere: the subject C names.
    let missing_bytes = to_json(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(&empty_config(dir)), "layers": [], "annotations": {"never": "stored"}}));
    let missing = Desc { media_type: OCI_MANIFEST.into(), digest: format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&missing_bytes))), size: missing_bytes.len() as u64 };
    let c_missing = manifest_artifact(dir, &missing, None, Some(BAGEL), None, b"ref layer c");
    SuiteReferrers { a_config, b_config, a_layer, b_layer, index, c_missing, missing }
}

/// Appends an entry for `desc` to the layout's `index.json`, tagged `tag` when given.
pub fn add_to_index(dir: &Path, desc: &Desc, tag: Option<&str>) {
    let path = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("index.json is JSON");
    let mut entry = descriptor(desc);
    if let Some(tag) = tag {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    }
    index["manifests"].as_array_mut().expect("manifests").push(entry);
    std::fs::write(&path, to_json(&index)).expect("write index.json");
}

/// Sets the tags of the layout's entries for `desc` to `tags` (one entry per tag).
pub fn retag(dir: &Path, desc: &Desc, tags: &[&str]) {
    let path = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("index.json is JSON");
    let manifests = index["manifests"].as_array_mut().expect("manifests");
    manifests.retain(|entry| entry["digest"] != json!(desc.digest));
    std::fs::write(&path, to_json(&index)).expect("write index.json");
    for tag in tags {
        add_to_index(dir, desc, Some(tag));
    }
}

/// The referrers tag schema of `subject`: `sha256-<hex>`.
pub fn fallback_tag(subject: &Desc) -> String {
    format!("sha256-{}", subject.hex())
}

/// An index listing `referrers` as the referrers API would (what clients write under the
/// referrers tag for a registry without the API).
pub fn fallback_index(dir: &Path, referrers: &[&Referrer]) -> (Desc, Vec<u8>) {
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": referrers.iter().map(|r| r.listed()).collect::<Vec<_>>()});
    let bytes = to_json(&index);
    (write_blob(dir, OCI_INDEX, &bytes), bytes)
}

/// Pushes a blob to a registry by the spec's two-step upload (POST, then PUT with the digest).
pub fn push_blob(registry: SocketAddr, repo: &str, bytes: &[u8]) {
    let started = request(registry, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[("Content-Length", "0")]);
    assert_eq!(started.status, 202, "upload start: {}", String::from_utf8_lossy(&started.body));
    let location = started.header("location").expect("upload location").to_owned();
    let path = location.split_once("://").map_or(location.as_str(), |(_, rest)| &rest[rest.find('/').unwrap_or(rest.len())..]).to_owned();
    let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)));
    let separator = if path.contains('?') { '&' } else { '?' };
    let done = put(registry, &format!("{path}{separator}digest={digest}"), "application/octet-stream", bytes);
    assert_eq!(done.status, 201, "upload of {digest}: {}", String::from_utf8_lossy(&done.body));
}

/// Pushes manifest `bytes` of `media_type` as `repo:reference`.
pub fn push_manifest(registry: SocketAddr, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let reply = put(registry, &format!("/v2/{repo}/manifests/{reference}"), media_type, bytes);
    assert_eq!(reply.status, 201, "manifest {reference}: {}", String::from_utf8_lossy(&reply.body));
}

/// Pushes a referrer and its blobs (read from the layout `dir`) by its digest.
pub fn push_referrer(registry: SocketAddr, repo: &str, dir: &Path, referrer: &Referrer) {
    let document: Value = serde_json::from_slice(&referrer.bytes).expect("referrer JSON");
    let blobs = document["config"].as_object().into_iter().chain(document["layers"].as_array().into_iter().flatten().filter_map(Value::as_object));
    for blob in blobs {
        let hex = blob["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_owned();
        push_blob(registry, repo, &std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob file"));
    }
    push_manifest(registry, repo, &referrer.desc.digest, &referrer.desc.media_type, &referrer.bytes);
}

fn put(registry: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let head = format!("PUT {path} HTTP/1.1\r\nHost: {registry}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
    send_raw(registry, &[head.as_bytes(), body].concat(), false)
}
