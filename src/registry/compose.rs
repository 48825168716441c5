//! Composition, the heart of the facade: a base image plus addon layers becomes one image. Pure
//! (no I/O), so the same inputs give byte-identical manifest and config on any core, node or
//! restart. Layer order, `skip-n` and `GITPOD_ENV_*` follow Gitpod (docs/architecture.md).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::oci::manifest::{Descriptor, ImageManifest};
use crate::oci::media_type::{self, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR};
use crate::oci::Digest;
use crate::upstream::RemoteRepository;

pub const SKIP_N_LABEL: &str = "skip-n.registry-facade.gitpod.io";
pub const SIZE_ANNOTATION: &str = "io.gitpod.workspace-image.size";
pub const REF_ANNOTATION: &str = "io.gitpod.workspace-image.ref";
const ENV_SET: &str = "GITPOD_ENV_SET_";
const ENV_APPEND: &str = "GITPOD_ENV_APPEND_";
const ENV_PREPEND: &str = "GITPOD_ENV_PREPEND_";

/// Where the bytes of one blob of a composed image come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// An upstream repository (fetched through the cache).
    Upstream(RemoteRepository),
    /// Already in the cache and pinned (local images, static file layers).
    Cache,
    /// Bytes carried by the composition itself (the config, direct content layers).
    Inline(Bytes),
    /// A remote content layer: redirected to, or fetched from, this URL; `size` is what the
    /// spec declares (the fill checks it).
    Url { url: String, size: u64 },
}

/// An image an addon or the base comes from, resolved to one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// How the spec named it (for history and annotations).
    pub reference: String,
    pub manifest_media_type: String,
    pub manifest: ImageManifest,
    pub config: Value,
    pub source: BlobSource,
}

/// One layer that is not part of an image (a static file layer, a content layer).
#[derive(Debug, Clone)]
pub struct LoneLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub source: BlobSource,
    pub created_by: String,
}

/// What is added on top of the base, in order.
#[derive(Debug, Clone)]
pub enum Addon<'a> {
    Image { image: &'a ResolvedImage, role: &'static str },
    Layer(&'a LoneLayer),
}

/// A composed image, ready to serve.
#[derive(Debug, Clone)]
pub struct Composition {
    pub manifest: Bytes,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// Every blob the manifest names (config and layers) and where it comes from.
    pub blobs: HashMap<Digest, BlobSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{image}: label {SKIP_N_LABEL}={value:?} is not a number from 0 to 65535")]
    BadSkipN { image: String, value: String },
    #[error("{image}: its config lists {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount { image: String, diff_ids: usize, layers: usize },
    #[error("{image}: {reason}")]
    BadConfig { image: String, reason: String },
}

/// Composes `base` with `addons` (in order). `base_ref` is recorded in an annotation.
///
/// # Errors
/// An addon with a bad skip-n label, or a config whose diff_ids do not match its layers.
pub fn compose(base: &ResolvedImage, base_ref: &str, addons: &[Addon<'_>]) -> Result<Composition, ComposeError> {
    let mut layers: Vec<(Descriptor, Origin)> = base.manifest.layers.iter().map(|l| (l.clone(), Origin::Image)).collect();
    let mut blobs: HashMap<Digest, BlobSource> = layers.iter().map(|(l, _)| (l.digest.clone(), base.source.clone())).collect();
    let mut added = Vec::new();
    let mut env = EnvDirectives::default();
    for addon in addons {
        match addon {
            Addon::Image { image, role } => {
                env.collect(image)?;
                for (descriptor, diff_id) in kept_layers(image)? {
                    blobs.entry(descriptor.digest.clone()).or_insert_with(|| image.source.clone());
                    added.push((descriptor, diff_id, format!("registry-facade: {role} layer from {}", image.reference), Origin::Image));
                }
            }
            Addon::Layer(layer) => {
                blobs.entry(layer.descriptor.digest.clone()).or_insert_with(|| layer.source.clone());
                added.push((layer.descriptor.clone(), layer.diff_id.clone(), layer.created_by.clone(), Origin::Lone));
            }
        }
    }
    let mut config = base.config.clone();
    let config_object = config.as_object_mut().ok_or_else(|| ComposeError::BadConfig { image: base.reference.clone(), reason: "config is not a JSON object".into() })?;
    append_diff_ids_and_history(config_object, &added);
    env.apply(config_object);
    layers.extend(added.into_iter().map(|(descriptor, _, _, origin)| (descriptor, origin)));
    let family = Family::of(base, &layers);
    let layers = layers.into_iter().map(|(descriptor, origin)| family.layer(descriptor, origin)).collect();

    // Serialising a Value whose maps are sorted (BTreeMap) gives the same bytes every time.
    let config_bytes = Bytes::from(serde_json::to_vec(&config).unwrap_or_default());
    let config_digest = Digest::sha256_of(&config_bytes);
    blobs.insert(config_digest.clone(), BlobSource::Inline(config_bytes.clone()));
    let config_size = config_bytes.len() as u64;
    let manifest = composed_manifest(base, base_ref, family, layers, &config_digest, config_size);
    let manifest_bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
    Ok(Composition {
        manifest_digest: Digest::sha256_of(&manifest_bytes),
        manifest: manifest_bytes,
        manifest_media_type: family.manifest_media_type().to_owned(),
        blobs,
    })
}

fn composed_manifest(base: &ResolvedImage, base_ref: &str, family: Family, layers: Vec<Descriptor>, config_digest: &Digest, config_size: u64) -> ImageManifest {
    let mut config = base.manifest.config.clone();
    config.digest = config_digest.clone();
    config.size = config_size;
    config.urls = None;
    if family == Family::Oci && config.media_type == DOCKER_CONFIG {
        // The same JSON document; an OCI manifest names it with the OCI type.
        config.media_type = OCI_CONFIG.to_owned();
    }
    let mut annotations = base.manifest.annotations.clone().unwrap_or_default();
    let original_size: u64 = base.manifest.layers.iter().map(|l| l.size).sum();
    annotations.insert(SIZE_ANNOTATION.to_owned(), original_size.to_string());
    annotations.insert(REF_ANNOTATION.to_owned(), base_ref.to_owned());
    let mut extra = base.manifest.extra.clone();
    // The composed image is a new artifact: it is not a referrer of what the base referred to.
    extra.remove("subject");
    ImageManifest {
        schema_version: 2,
        // Always present: Docker clients reject a schema2 manifest without it.
        media_type: Some(family.manifest_media_type().to_owned()),
        config,
        layers,
        annotations: Some(annotations),
        extra,
    }
}

/// Where a layer's descriptor comes from, which decides whether its media type is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A layer of the base or of an addon image: its descriptor is kept byte for byte (media
    /// type, annotations such as eStargz's TOC digest, unknown fields), or lazy pulling and
    /// anything else that reads them would break.
    Image,
    /// A static or content layer: a descriptor the facade wrote, whose plain tar or tar+gzip
    /// type only states the format, so it is written in the manifest's family.
    Lone,
}

/// The composed manifest's family. Docker schema2 can carry only Docker layer types
/// (containers/image, i.e. skopeo, podman and CRI-O, refuses a schema2 manifest listing an OCI
/// layer type), while OCI manifests may list Docker layer types (the image spec calls them
/// compatible; containerd and containers/image read them). So: the base's family, unless the
/// base is Docker and a layer whose type is its own is not a Docker type; then OCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Docker,
    Oci,
}

impl Family {
    fn of(base: &ResolvedImage, layers: &[(Descriptor, Origin)]) -> Family {
        let own_type = |(descriptor, origin): &&(Descriptor, Origin)| *origin == Origin::Image || twin(&descriptor.media_type).is_none();
        let schema2_can_carry = |(descriptor, _): &(Descriptor, Origin)| descriptor.media_type.starts_with(DOCKER_PREFIX);
        if base.manifest_media_type == media_type::DOCKER_MANIFEST && layers.iter().filter(own_type).all(schema2_can_carry) {
            Family::Docker
        } else {
            Family::Oci
        }
    }

    fn manifest_media_type(self) -> &'static str {
        match self {
            Family::Docker => media_type::DOCKER_MANIFEST,
            Family::Oci => media_type::OCI_MANIFEST,
        }
    }

    /// The descriptor as the manifest lists it: an image layer's as it is, a lone layer's plain
    /// type in this family (the bytes are the same format either way).
    fn layer(self, mut descriptor: Descriptor, origin: Origin) -> Descriptor {
        if origin == Origin::Lone {
            if let Some((docker, oci)) = twin(&descriptor.media_type) {
                descriptor.media_type = match self {
                    Family::Docker => docker,
                    Family::Oci => oci,
                }
                .to_owned();
            }
        }
        descriptor
    }
}

/// Every Docker media type, layers (plain, gzip, foreign) included, starts so.
const DOCKER_PREFIX: &str = "application/vnd.docker.";

/// The (Docker, OCI) pair of a plain tar or tar+gzip layer type; `None` for types without a
/// twin (zstd, foreign, encrypted, anything unknown).
fn twin(media_type: &str) -> Option<(&'static str, &'static str)> {
    match media_type {
        DOCKER_LAYER_GZIP | OCI_LAYER_GZIP => Some((DOCKER_LAYER_GZIP, OCI_LAYER_GZIP)),
        DOCKER_LAYER_TAR | OCI_LAYER_TAR => Some((DOCKER_LAYER_TAR, OCI_LAYER_TAR)),
        _ => None,
    }
}

/// The layers of an addon image after its skip-n label, each with its diff_id.
fn kept_layers(image: &ResolvedImage) -> Result<Vec<(Descriptor, Digest)>, ComposeError> {
    let skip = match image.config.pointer("/config/Labels").and_then(|labels| labels.get(SKIP_N_LABEL)) {
        None => 0,
        Some(value) => value.as_str().and_then(|v| v.parse::<u16>().ok()).ok_or_else(|| ComposeError::BadSkipN {
            image: image.reference.clone(),
            value: value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()),
        })? as usize,
    };
    let diff_ids: Vec<Digest> = image
        .config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(|id| id.as_str().and_then(|s| s.parse().ok())).collect())
        .unwrap_or_default();
    let layers = &image.manifest.layers;
    if diff_ids.len() != layers.len() {
        return Err(ComposeError::DiffIdCount { image: image.reference.clone(), diff_ids: diff_ids.len(), layers: layers.len() });
    }
    Ok(layers.iter().cloned().zip(diff_ids).skip(skip).collect())
}

fn append_diff_ids_and_history(config: &mut Map<String, Value>, added: &[(Descriptor, Digest, String, Origin)]) {
    let rootfs = config.entry("rootfs").or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(rootfs) = rootfs.as_object_mut() {
        let diff_ids = rootfs.entry("diff_ids").or_insert_with(|| json!([]));
        if let Some(ids) = diff_ids.as_array_mut() {
            ids.extend(added.iter().map(|(_, diff_id, _, _)| Value::String(diff_id.to_string())));
        }
    }
    let history = config.entry("history").or_insert_with(|| json!([]));
    if let Some(history) = history.as_array_mut() {
        history.extend(added.iter().map(|(_, _, created_by, _)| json!({"created_by": created_by, "comment": "added by registry-facade"})));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvChange {
    Set(String, String),
    /// Gitpod's APPEND: the value goes in front of the old one.
    InFront(String, String),
    /// Gitpod's PREPEND: the value goes after the old one.
    After(String, String),
}

#[derive(Default)]
struct EnvDirectives {
    changes: Vec<EnvChange>,
}

impl EnvDirectives {
    /// Reads the `GITPOD_ENV_*` entries of an addon image's config, in order; its other
    /// environment entries are not copied.
    fn collect(&mut self, image: &ResolvedImage) -> Result<(), ComposeError> {
        let Some(entries) = image.config.pointer("/config/Env").and_then(Value::as_array) else { return Ok(()) };
        for entry in entries.iter().filter_map(Value::as_str) {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            let change = if let Some(name) = key.strip_prefix(ENV_SET) {
                (!name.is_empty()).then(|| EnvChange::Set(name.into(), value.into()))
            } else if let Some(name) = key.strip_prefix(ENV_APPEND) {
                (!name.is_empty() && !value.is_empty()).then(|| EnvChange::InFront(name.into(), value.into()))
            } else if let Some(name) = key.strip_prefix(ENV_PREPEND) {
                (!name.is_empty() && !value.is_empty()).then(|| EnvChange::After(name.into(), value.into()))
            } else {
                None
            };
            self.changes.extend(change);
        }
        Ok(())
    }

    /// Applies the changes to `config.Env`; without changes the base's Env is left untouched.
    fn apply(self, config: &mut Map<String, Value>) {
        if self.changes.is_empty() {
            return;
        }
        let image_config = config.entry("config").or_insert_with(|| json!({}));
        let Some(image_config) = image_config.as_object_mut() else { return };
        let mut env = OrderedEnv::parse(image_config.get("Env"));
        for change in self.changes {
            match change {
                EnvChange::Set(name, value) => env.set(name, value),
                EnvChange::InFront(name, value) => {
                    let joined = env.get(&name).map_or(value.clone(), |old| format!("{value}{old}"));
                    env.set(name, joined);
                }
                EnvChange::After(name, value) => {
                    let joined = env.get(&name).map_or(value.clone(), |old| format!("{old}{value}"));
                    env.set(name, joined);
                }
            }
        }
        image_config.insert("Env".into(), env.to_json());
    }
}

/// `KEY=VALUE` entries keyed by name, in order of first appearance (a repeated key keeps its
/// first position and its last value, as Gitpod does).
struct OrderedEnv {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl OrderedEnv {
    fn parse(env: Option<&Value>) -> OrderedEnv {
        let mut parsed = OrderedEnv { order: Vec::new(), values: BTreeMap::new() };
        for entry in env.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            parsed.set(key.to_owned(), value.to_owned());
        }
        parsed
    }

    fn get(&self, name: &str) -> Option<&String> {
        self.values.get(name)
    }

    fn set(&mut self, name: String, value: String) {
        if !self.values.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.values.insert(name, value);
    }

    fn to_json(&self) -> Value {
        Value::Array(self.order.iter().map(|k| Value::String(format!("{k}={}", self.values[k]))).collect())
    }
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;
