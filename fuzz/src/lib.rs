//! The fuzz targets' bodies: each feeds bytes to the facade's real parsers and asserts the
//! properties they promise (round trips, bounds, determinism). Shared by the libFuzzer targets
//! in `fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the checked-in corpus on
//! stable Rust, so a property broken by a later change fails the normal test suite.

use registry_facade::oci::accept::AcceptList;
use registry_facade::oci::manifest::{sniff_media_type, Descriptor, ImageManifest, Manifest, Platform};
use registry_facade::oci::media_type::{self, manifest_kind, ManifestKind};
use registry_facade::oci::range::{parse_range, ByteRange, RangeRequest, Selection, COALESCE_GAP_BYTES, MAX_RANGES};
use registry_facade::oci::route::{self, Route};
use registry_facade::oci::{Digest, ImageRef, Reference, RepositoryName, Tag};
use registry_facade::registry::compose::{self, Addon, BlobSource, LoneLayer, ResolvedImage, SKIP_N_LABEL};
use registry_facade::spec::{parse_spec, ImageSpec, SourceRef};
use serde_json::{json, Value};

/// A target's body: panics when the input breaks a property.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and `fuzz/corpus/<name>/` know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("route", route),
    ("reference", reference),
    ("range_accept", range_accept),
    ("manifest", manifest),
    ("spec", spec),
    ("compose", compose),
];

/// A request target as hyper hands it over (`path?query`): routing must never panic, and a
/// route must render back to exactly the path it came from (no normalisation, so no `..`,
/// `%` or empty segment can hide in a name).
pub fn route(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else { return };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let _ = route::parse_query(query);
    let Ok(parsed) = route::parse_path(path) else { return };
    assert!(route::is_api_path(path), "{path:?} routed but is not an API path");
    let rendered = match &parsed {
        Route::Base => return,
        Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
        Route::TagsList { name } => format!("/v2/{name}/tags/list"),
        Route::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
    };
    assert_eq!(rendered, path, "route does not render back to its path");
    assert_eq!(route::parse_path(&rendered).as_ref(), Ok(&parsed));
    if let Some(name) = parsed.name() {
        assert_safe_name(name);
    }
}

/// A valid name maps onto directories: no traversal, escapes, controls or empty segments.
fn assert_safe_name(name: &RepositoryName) {
    let text = name.as_str();
    assert!(name.components().count() > 0);
    assert!(text.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{text:?}");
    assert!(!text.contains("..") && !text.contains('%'), "{text:?}");
    assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text:?}");
}

/// Digests, names, tags, references, image refs, source refs and platforms: whatever parses
/// must print back to itself (or, for forms with defaults, to a text that parses the same).
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text);
        assert!(digest.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
    if let Ok(name) = text.parse::<RepositoryName>() {
        assert_eq!(name.to_string(), text);
        assert_safe_name(&name);
    }
    if let Ok(tag) = text.parse::<Tag>() {
        assert_eq!(tag.to_string(), text);
    }
    if let Ok(reference) = text.parse::<Reference>() {
        assert_eq!(reference.to_string(), text);
    }
    reparses_to_itself::<ImageRef>(text);
    reparses_to_itself::<SourceRef>(text);
    reparses_to_itself::<Platform>(text);
}

fn reparses_to_itself<T>(text: &str)
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
    T::Err: std::fmt::Debug,
{
    if let Ok(parsed) = text.parse::<T>() {
        let printed = parsed.to_string();
        let again = printed.parse::<T>();
        assert_eq!(again.as_ref().ok(), Some(&parsed), "{text:?} printed as {printed:?} parses as {again:?}");
    }
}

/// The first line is a `Range` header value, the others `Accept` header values. A resolved
/// range must lie inside the content, and what a set of ranges selects must be ascending,
/// apart and within the cap; Accept matching must not depend on ASCII case.
pub fn range_accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let range = lines.next().unwrap_or("");
    let accept: Vec<&str> = lines.collect();
    let request = parse_range(Some(range));
    if let RangeRequest::Parts(parts) = &request {
        assert!(!parts.is_empty() && parts.len() <= MAX_RANGES, "{} parts", parts.len());
        for part in parts {
            check_range(*part, data.len() as u64);
        }
    }
    for len in [0, 1, data.len() as u64, 2048, u64::MAX] {
        check_selection(&request, len);
    }
    let list = AcceptList::parse(accept.iter().copied());
    let upper: Vec<String> = accept.iter().map(|v| v.to_ascii_uppercase()).collect();
    assert_eq!(AcceptList::parse(upper.iter().map(String::as_str)), list);
    let any = accept.iter().flat_map(|v| v.split(',')).any(|t| t.split(';').next().unwrap_or("").trim() == "*/*");
    for media_type in [media_type::OCI_MANIFEST, media_type::OCI_INDEX, media_type::DOCKER_MANIFEST, media_type::DOCKER_MANIFEST_LIST] {
        let accepted = list.accepts(media_type);
        assert!(accepted || !any, "*/* listed but {media_type} refused");
    }
}

fn check_range(part: ByteRange, data_len: u64) {
    for len in [0, 1, 2, data_len, 2048, u64::MAX - 1, u64::MAX] {
        let Some(selected) = part.resolve(len) else { continue };
        assert!(selected.start < selected.end && selected.end <= len, "{part:?} in {len}: {selected:?}");
        match part {
            ByteRange::FromTo(first, last) => assert!(selected.start == first && selected.end - 1 <= last),
            ByteRange::From(first) => assert!(selected.start == first && selected.end == len),
            ByteRange::Suffix(n) => assert!(selected.end == len && selected.end - selected.start <= n),
        }
    }
}

fn check_selection(request: &RangeRequest, len: u64) {
    match request.select(len) {
        Selection::Whole | Selection::Unsatisfiable => {}
        Selection::Single(part) => assert!(part.start < part.end && part.end <= len, "{part:?} of {len}"),
        Selection::Multiple(parts) => {
            assert!(parts.len() >= 2 && parts.len() <= MAX_RANGES);
            for pair in parts.windows(2) {
                assert!(pair[0].end.saturating_add(COALESCE_GAP_BYTES) < pair[1].start, "{pair:?} should be one part");
            }
            assert!(parts.iter().all(|p| p.start < p.end && p.end <= len), "{parts:?} of {len}");
        }
    }
}

/// The bytes as a manifest of every manifest media type (and one that is not): a parsed
/// document serialises to JSON that parses again to the same document, and sniffing only ever
/// names a manifest type.
pub fn manifest(data: &[u8]) {
    if let Some(sniffed) = sniff_media_type(data) {
        assert!(manifest_kind(&sniffed).is_some(), "sniffed {sniffed:?}");
    }
    assert!(Manifest::parse(media_type::OCI_CONFIG, data).is_err());
    let host = Platform::host();
    let arm = Platform::new("linux", "arm64", Some("v8"));
    for media_type in [media_type::OCI_MANIFEST, media_type::OCI_INDEX, media_type::DOCKER_MANIFEST, media_type::DOCKER_MANIFEST_LIST] {
        let Ok(parsed) = Manifest::parse(media_type, data) else { continue };
        let kind = manifest_kind(media_type);
        match &parsed {
            Manifest::Image(m) => {
                assert_eq!(kind, Some(ManifestKind::Image));
                assert_eq!(parsed.children().len(), m.layers.len() + 1);
                reserialises(media_type, m, &parsed);
            }
            Manifest::Index(index) => {
                assert_eq!(kind, Some(ManifestKind::Index));
                for platform in [&host, &arm] {
                    if let Some(entry) = index.select(platform) {
                        assert!(entry.platform.as_ref().is_some_and(|p| platform.matches(p)));
                    }
                }
                reserialises(media_type, index, &parsed);
            }
        }
    }
}

fn reserialises<T: serde::Serialize>(media_type: &str, document: &T, parsed: &Manifest) {
    let bytes = serde_json::to_vec(document).expect("a parsed manifest serialises");
    let again = Manifest::parse(media_type, &bytes).expect("a serialised manifest parses");
    let bytes_again = match &again {
        Manifest::Image(m) => serde_json::to_vec(m),
        Manifest::Index(i) => serde_json::to_vec(i),
    };
    assert_eq!(bytes_again.ok(), Some(bytes), "serialising is not stable");
    assert_eq!(again.children().len(), parsed.children().len());
}

/// An image spec document: parsing is deterministic, and a valid spec's canonical JSON is a
/// valid spec with the same key.
pub fn spec(data: &[u8]) {
    let Ok(stored) = parse_spec(data) else { return };
    let again = parse_spec(data).expect("a spec that parsed once parses again");
    assert_eq!(again.spec, stored.spec);
    let document: ImageSpec = serde_json::from_slice(data).expect("the spec is JSON");
    let canonical = serde_json::to_vec(&document).expect("a spec serialises");
    let reparsed = parse_spec(&canonical).expect("a canonical spec parses");
    assert_eq!(reparsed.spec, stored.spec, "canonical JSON changes the spec");
    assert_eq!(Digest::sha256_of(&canonical), stored.spec.key);
}

/// Composition of a base image whose config is the first NUL-separated part (any bytes; not
/// JSON is a config error, not a panic) with addons described by the other parts. Composing
/// twice must give the same bytes; a composed manifest must parse and name a config blob with
/// exactly its bytes, and the layers of base and kept addon layers.
pub fn compose(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let base_part = parts.next().unwrap_or_default();
    let base = base_image(base_part);
    let addon_images: Vec<ResolvedImage> = parts.enumerate().map(|(i, part)| addon_image(i, part)).collect();
    let lone = lone_layer();
    let mut addons: Vec<Addon<'_>> = addon_images.iter().map(|image| Addon::Image { image, role: "ide" }).collect();
    addons.insert(addons.len() / 2, Addon::Layer(&lone));
    let first = compose::compose(&base, "base:latest", &addons);
    let second = compose::compose(&base, "base:latest", &addons);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.manifest, b.manifest, "composition is not deterministic");
            assert_eq!(a.manifest_digest, b.manifest_digest);
            assert_eq!(a.blobs, b.blobs);
            check_composition(a, &base, &addon_images);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("composing twice gave {first:?} and {second:?}"),
    }
}

fn check_composition(composed: &compose::Composition, base: &ResolvedImage, addons: &[ResolvedImage]) {
    assert_eq!(Digest::sha256_of(&composed.manifest), composed.manifest_digest);
    let Ok(Manifest::Image(manifest)) = Manifest::parse(&composed.manifest_media_type, &composed.manifest) else {
        panic!("composed manifest does not parse: {:?}", String::from_utf8_lossy(&composed.manifest));
    };
    let Some(BlobSource::Inline(config)) = composed.blobs.get(&manifest.config.digest) else {
        panic!("the composed config is not an inline blob");
    };
    assert_eq!(Digest::sha256_of(config), manifest.config.digest);
    assert_eq!(config.len() as u64, manifest.config.size);
    let config: Value = serde_json::from_slice(config).expect("composed config is JSON");
    let added = manifest.layers.len() - base.manifest.layers.len();
    assert_eq!(&manifest.layers[..base.manifest.layers.len()], &base.manifest.layers[..], "the base's layer descriptors are kept as they are");
    for layer in manifest.layers.iter().skip(base.manifest.layers.len()) {
        let from_addon = addons.iter().flat_map(|a| &a.manifest.layers).any(|l| l.digest == layer.digest);
        assert!(!from_addon || addons.iter().flat_map(|a| &a.manifest.layers).any(|l| l == layer), "an addon's layer {} keeps its descriptor", layer.digest);
    }
    assert!(added <= 1 + addons.iter().map(|a| a.manifest.layers.len()).sum::<usize>());
    for layer in &manifest.layers {
        assert!(composed.blobs.contains_key(&layer.digest), "layer {} has no source", layer.digest);
    }
    if let Some(base_ids) = base.config.pointer("/rootfs/diff_ids").and_then(Value::as_array) {
        let ids = config.pointer("/rootfs/diff_ids").and_then(Value::as_array).map_or(0, Vec::len);
        assert_eq!(ids, base_ids.len() + added, "diff_ids and layers disagree");
    }
}

fn base_image(config_bytes: &[u8]) -> ResolvedImage {
    // Not JSON still reaches compose (as a string config) so its error path is exercised.
    let config = serde_json::from_slice(config_bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(config_bytes).into_owned()));
    let docker = config_bytes.len() % 2 == 1;
    let (manifest_type, layer_type) =
        if docker { (media_type::DOCKER_MANIFEST, media_type::DOCKER_LAYER_GZIP) } else { (media_type::OCI_MANIFEST, media_type::OCI_LAYER_GZIP) };
    let layers = (0..2).map(|i| Descriptor::new(layer_type, label_digest(&format!("base-{i}")), 100 + i)).collect();
    resolved("base:latest", manifest_type, layers, config)
}

/// An addon image from one part: its first byte chooses the number of layers, the skip-n
/// label and whether its diff_ids match its layers; the rest are `\n`-separated Env entries.
fn addon_image(index: usize, part: &[u8]) -> ResolvedImage {
    let (shape, env) = part.split_first().map_or((0, &[][..]), |(b, rest)| (*b, rest));
    let layer_count = usize::from(shape & 3);
    let env: Vec<String> = String::from_utf8_lossy(env).split('\n').filter(|e| !e.is_empty()).map(str::to_owned).collect();
    let mut config = json!({"config": {"Env": env}});
    match (shape >> 2) & 3 {
        0 => {}
        1 => config["config"]["Labels"] = json!({SKIP_N_LABEL: "1"}),
        2 => config["config"]["Labels"] = json!({SKIP_N_LABEL: layer_count.to_string()}),
        _ => config["config"]["Labels"] = json!({SKIP_N_LABEL: "not a number"}),
    }
    let diff_count = if shape & 0x10 == 0 { layer_count } else { layer_count + 1 };
    let diff_ids: Vec<String> = (0..diff_count).map(|i| label_digest(&format!("addon-{index}-{i}-diff")).to_string()).collect();
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let layer_type = if shape & 0x20 == 0 { media_type::OCI_LAYER_GZIP } else { media_type::DOCKER_LAYER_TAR };
    let layers = (0..layer_count).map(|i| Descriptor::new(layer_type, label_digest(&format!("addon-{index}-{i}")), 10 + i as u64)).collect();
    resolved(&format!("addon-{index}:1"), media_type::OCI_MANIFEST, layers, config)
}

fn resolved(reference: &str, manifest_type: &str, layers: Vec<Descriptor>, config: Value) -> ResolvedImage {
    let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_owned()),
        config: Descriptor::new(media_type::OCI_CONFIG, Digest::sha256_of(&config_bytes), config_bytes.len() as u64),
        layers,
        annotations: None,
        extra: Default::default(),
    };
    ResolvedImage { reference: reference.to_owned(), manifest_media_type: manifest_type.to_owned(), manifest, config, source: BlobSource::Cache }
}

fn lone_layer() -> LoneLayer {
    LoneLayer {
        descriptor: Descriptor::new(media_type::OCI_LAYER_TAR, label_digest("content"), 5),
        diff_id: label_digest("content"),
        source: BlobSource::Cache,
        created_by: "content layer".into(),
    }
}

fn label_digest(label: &str) -> Digest {
    Digest::sha256_of(label.as_bytes())
}
