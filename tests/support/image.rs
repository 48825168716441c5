//! Deterministic OCI image layouts, built by the tests themselves (same options, same
//! digests): layers of pseudo-random bytes (incompressible, so sizes are close to what is
//! asked), a config, a manifest, optionally an index of several platforms, OCI or Docker
//! schema2 media types, gzip or plain tar.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::Digest as _;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Payload size of each layer's single file.
    pub layers: Vec<usize>,
    pub seed: u64,
    pub tag: String,
    pub gzip: bool,
    pub docker: bool,
    /// `os/arch` entries; more than none makes an index.
    pub platforms: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// Each layer holds `<prefix><index>/data.bin`, or with several files per layer
    /// `<prefix><index>/data-<k>.bin`.
    pub file_prefix: String,
    /// Files each layer's payload is split into (at least 1): a lazy puller reads one of them
    /// without the rest.
    pub files_per_layer: usize,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            layers: vec![1024, 64 * 1024],
            seed: 1,
            tag: "latest".into(),
            gzip: true,
            docker: false,
            platforms: Vec::new(),
            env: Vec::new(),
            labels: Vec::new(),
            file_prefix: "layer".into(),
            files_per_layer: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub platform: (String, String),
    pub manifest: Desc,
    pub config: Desc,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
    /// For each layer: the path of its (first) file and the file's bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// For each layer: every file, in the tar's order.
    pub layer_files: Vec<Vec<(String, Vec<u8>)>>,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub tag: String,
    /// What `index.json` points at: the manifest, or the index for several platforms.
    pub top: Desc,
    pub images: Vec<BuiltImage>,
}

impl Layout {
    pub fn image(&self) -> &BuiltImage {
        &self.images[0]
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }
}

/// Writes the layout into `dir` (created if needed).
pub fn write_layout(dir: &Path, options: &ImageOptions) -> Layout {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mt = |oci: &'static str, docker: &'static str| if options.docker { docker } else { oci };
    let (top, images) = if options.platforms.is_empty() {
        let image = build_image(dir, options, options.seed.to_string(), ("linux".into(), "amd64".into()));
        (image.manifest.clone(), vec![image])
    } else {
        let images: Vec<BuiltImage> = options
            .platforms
            .iter()
            .map(|p| {
                let (os, arch) = p.split_once('/').expect("os/arch");
                build_image(dir, options, format!("{}:{p}", options.seed), (os.into(), arch.into()))
            })
            .collect();
        let manifests: Vec<Value> = images
            .iter()
            .map(|i| {
                json!({"mediaType": i.manifest.media_type, "digest": i.manifest.digest, "size": i.manifest.size,
                       "platform": {"os": i.platform.0, "architecture": i.platform.1}})
            })
            .collect();
        let index_type = mt(OCI_INDEX, DOCKER_LIST);
        let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests});
        (write_blob(dir, index_type, &to_json(&index)), images)
    };
    let layout_index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": top.media_type, "digest": top.digest, "size": top.size,
        "annotations": {"org.opencontainers.image.ref.name": options.tag}}]});
    std::fs::write(dir.join("index.json"), to_json(&layout_index)).expect("index.json");
    Layout { dir: dir.to_owned(), tag: options.tag.clone(), top, images }
}

fn build_image(dir: &Path, options: &ImageOptions, seed: String, platform: (String, String)) -> BuiltImage {
    let mt = |oci: &'static str, docker: &'static str| if options.docker { docker } else { oci };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut files = Vec::new();
    let mut layer_files = Vec::new();
    for (index, &size) in options.layers.iter().enumerate() {
        let entries = layer_entries(&options.file_prefix, &seed, index, size, options.files_per_layer);
        let tar = tar_with_files(&entries);
        diff_ids.push(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar))));
        let (bytes, media_type) = if options.gzip {
            (gzip(&tar), mt(OCI_LAYER_GZIP, DOCKER_LAYER_GZIP))
        } else {
            (tar, mt(OCI_LAYER_TAR, DOCKER_LAYER_TAR))
        };
        layers.push(write_blob(dir, media_type, &bytes));
        files.push(entries[0].clone());
        layer_files.push(entries);
    }
    let mut env: Vec<String> = Vec::new();
    if !options.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    env.extend(options.env.iter().cloned());
    let labels: serde_json::Map<String, Value> = options.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let config = json!({
        "architecture": platform.1, "os": platform.0, "created": "1970-01-01T00:00:00Z",
        "config": {"Env": env, "Labels": labels, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": options.layers.iter().enumerate().map(|(i, _)| json!({
            "created": "1970-01-01T00:00:00Z", "created_by": format!("test image seed={seed} layer={i}")})).collect::<Vec<_>>(),
    });
    let config = write_blob(dir, mt(OCI_CONFIG, DOCKER_CONFIG), &to_json(&config));
    let manifest_type = mt(OCI_MANIFEST, DOCKER_MANIFEST);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    });
    let manifest = write_blob(dir, manifest_type, &to_json(&manifest));
    BuiltImage { platform, manifest, config, layers, diff_ids, files, layer_files }
}

/// The files of layer `index`: one `data.bin` of `size` bytes, or `size` split over `count`
/// files `data-<k>.bin` (the first file's bytes are the single file's first bytes).
fn layer_entries(prefix: &str, seed: &str, index: usize, size: usize, count: usize) -> Vec<(String, Vec<u8>)> {
    if count <= 1 {
        return vec![(format!("{prefix}{index}/data.bin"), pseudo_random(&format!("{seed}:{index}"), size))];
    }
    let each = size / count;
    (0..count)
        .map(|k| {
            let len = if k + 1 == count { size - each * k } else { each };
            let stream = if k == 0 { format!("{seed}:{index}") } else { format!("{seed}:{index}:{k}") };
            (format!("{prefix}{index}/data-{k}.bin"), pseudo_random(&stream, len))
        })
        .collect()
}

pub fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}

pub fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Desc {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    Desc { media_type: media_type.to_owned(), digest: format!("sha256:{hex}"), size: bytes.len() as u64 }
}

/// Bytes from a splitmix64 stream seeded by `seed`.
pub fn pseudo_random(seed: &str, len: usize) -> Vec<u8> {
    let mut state = u64::from_le_bytes(sha2::Sha256::digest(seed.as_bytes())[..8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn tar_with_file(path: &str, payload: &[u8]) -> Vec<u8> {
    tar_with_files(&[(path.to_owned(), payload.to_vec())])
}

/// A tar of regular files (mode 0644, owner 0, mtime 0), in the order given.
pub fn tar_with_files(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, payload) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(payload.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, payload.as_slice()).expect("tar entry");
    }
    builder.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Writes `layout` as a skopeo `dir:` directory at `out` (created if needed), the transport
/// that pushes Docker schema2 media types as they are (an OCI layout is meant for OCI types).
/// `manifest.json` is the top manifest (or list); each instance of a list is
/// `<hex>.manifest.json`; every config and layer blob is a file named by its hex digest.
pub fn write_dir_layout(layout: &Layout, out: &Path) {
    std::fs::create_dir_all(out).expect("dir layout");
    std::fs::write(out.join("version"), "Directory Transport Version: 1.1\n").expect("version file");
    let copy = |digest: &str, name: String| {
        std::fs::copy(layout.blob_path(digest), out.join(name)).unwrap_or_else(|e| panic!("copy {digest}: {e}"));
    };
    copy(&layout.top.digest, "manifest.json".into());
    let is_list = layout.top.digest != layout.image().manifest.digest;
    for image in &layout.images {
        if is_list {
            copy(&image.manifest.digest, format!("{}.manifest.json", image.manifest.hex()));
        }
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            copy(&blob.digest, blob.hex().to_owned());
        }
    }
}

/// Checks a skopeo `dir:` copy of `image`: the manifest bytes, and every blob file named by
/// its digest holding exactly the bytes of that digest.
pub fn assert_dir_copy(out: &Path, image: &BuiltImage) {
    let manifest = std::fs::read(out.join("manifest.json")).expect("manifest.json");
    assert_eq!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest))), image.manifest.digest, "manifest bytes");
    let mut blobs: Vec<String> = std::fs::read_dir(out)
        .expect("copy dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json" && n != "version")
        .collect();
    blobs.sort();
    let mut expected: Vec<String> = image.layers.iter().chain([&image.config]).map(|d| d.hex().to_owned()).collect();
    expected.sort();
    assert_eq!(blobs, expected);
    for blob in blobs {
        let bytes = std::fs::read(out.join(&blob)).expect("blob file");
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), blob, "{blob} has the bytes of its digest");
    }
}

/// One entry of a layer built by hand (`layer_tar`).
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// `.wh.<name>`: hides `path` of the layers below.
    Whiteout(&'a str),
    /// `.wh..wh..opq` in the directory `path`: hides what the layers below hold in it.
    Opaque(&'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
    /// Written into the header as it is (`..` and all), as a crafted archive would be; the tar
    /// builder itself refuses such names.
    Raw { name: &'a str, kind: tar::EntryType, link: Option<&'a str>, data: &'a [u8] },
}

fn entry_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// An uncompressed layer archive holding `entries` in order.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match *entry {
            Entry::File(path, data) => builder.append_data(&mut entry_header(tar::EntryType::Regular, data.len() as u64, 0o644), path, data).expect("file"),
            Entry::Dir(path) => builder.append_data(&mut entry_header(tar::EntryType::Directory, 0, 0o755), path, &[][..]).expect("dir"),
            Entry::Symlink(path, target) => builder.append_link(&mut entry_header(tar::EntryType::Symlink, 0, 0o777), path, target).expect("symlink"),
            Entry::HardLink(path, target) => builder.append_link(&mut entry_header(tar::EntryType::Link, 0, 0o644), path, target).expect("hard link"),
            Entry::Whiteout(path) => {
                let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
                let marker = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
                builder.append_data(&mut entry_header(tar::EntryType::Regular, 0, 0o644), marker, &[][..]).expect("whiteout");
            }
            Entry::Opaque(dir) => builder.append_data(&mut entry_header(tar::EntryType::Regular, 0, 0o644), format!("{dir}/.wh..wh..opq"), &[][..]).expect("opaque"),
            Entry::CharDevice(path) => builder.append_data(&mut entry_header(tar::EntryType::Char, 0, 0o666), path, &[][..]).expect("device"),
            Entry::Fifo(path) => builder.append_data(&mut entry_header(tar::EntryType::Fifo, 0, 0o644), path, &[][..]).expect("fifo"),
            Entry::Raw { name, kind, link, data } => {
                let mut header = entry_header(kind, data.len() as u64, 0o644);
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                if let Some(link) = link {
                    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
                }
                header.set_cksum();
                builder.append(&header, data).expect("raw entry");
            }
        }
    }
    builder.into_inner().expect("tar")
}

/// An OCI image layout of the given layer archives (gzipped here) with `labels`, tagged `tag`
/// (`files` and `layer_files` stay empty: the archives are given as they are).
pub fn write_layout_of_layers(dir: &Path, tag: &str, layers: &[Vec<u8>], labels: &[(&str, &str)]) -> Layout {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let diff_ids: Vec<String> = layers.iter().map(|tar| format!("sha256:{}", hex::encode(sha2::Sha256::digest(tar)))).collect();
    let descs: Vec<Desc> = layers.iter().map(|tar| write_blob(dir, OCI_LAYER_GZIP, &gzip(tar))).collect();
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let config = json!({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created": "1970-01-01T00:00:00Z", "created_by": "test layer"})).collect::<Vec<_>>(),
    });
    let config = write_blob(dir, OCI_CONFIG, &to_json(&config));
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": descs.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    });
    let manifest = write_blob(dir, OCI_MANIFEST, &to_json(&manifest));
    let layout_index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), to_json(&layout_index)).expect("index.json");
    let image = BuiltImage { platform: ("linux".into(), "amd64".into()), manifest: manifest.clone(), config, layers: descs, diff_ids, files: Vec::new(), layer_files: Vec::new() };
    Layout { dir: dir.to_owned(), tag: tag.to_owned(), top: manifest, images: vec![image] }
}
