//! Lazy pulling end to end: a base and an IDE image converted to eStargz by `ctr-remote`, in
//! the reference registry; the facade composes them into `remote/<id>` with every layer's
//! descriptor intact; containerd's stargz snapshotter (a proxy plugin) pulls the composed image
//! lazily from the facade and a file of the base and one of the IDE are read from the mounted
//! rootfs, while the facade serves a small part of the image, all by `Range`.

mod support;

use serde_json::{json, Value};
use support::client::{request, send};
use support::containerd::Containerd;
use support::image::{self, ImageOptions, Layout};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::stargz::{self, Stargz};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

struct Images {
    _dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    base: Layout,
    ide: Layout,
}

impl Images {
    /// A base of two layers (4 MiB in 16 files, 512 KiB in 2) and an IDE image of one layer
    /// (2 MiB in 8 files), pushed as they are (`:latest`) and converted to eStargz (`:esgz`).
    fn estargz(containerd: &Containerd) -> Images {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let build = |name: &str, layers: Vec<usize>, files_per_layer: usize, seed: u64| {
            let options = ImageOptions { layers, files_per_layer, seed, file_prefix: name.into(), ..ImageOptions::default() };
            let layout = image::write_layout(&dir.path().join(name), &options);
            registry.push(&layout, &format!("{name}/img"), "latest");
            stargz::convert(containerd, &format!("{}/{name}/img:latest", registry.host()), &format!("{}/{name}/img:esgz", registry.host()));
            layout
        };
        // Nothing of these images stays in containerd: what the lazy pull reads comes from the facade.
        let base = build("base", vec![4 << 20, 512 << 10], 16, 71);
        let ide = build("ide", vec![2 << 20], 8, 72);
        Images { _dir: dir, registry, base, ide }
    }

    /// An image manifest and config as the reference registry has them.
    fn manifest_and_config(&self, repo: &str, tag: &str) -> (Value, Value) {
        let manifest = request(self.registry.addr(), "GET", &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", OCI_MANIFEST)]);
        assert_eq!(manifest.status, 200, "{repo}:{tag}");
        let manifest = manifest.json();
        let config = request(self.registry.addr(), "GET", &format!("/v2/{repo}/blobs/{}", manifest["config"]["digest"].as_str().expect("config digest")), &[]);
        (manifest, config.json())
    }
}

/// The facade with the reference registry as upstream and an admin listener.
fn facade(registry: &ReferenceRegistry) -> TestServer {
    TestServer::start(&format!(r#""registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "adminListen": "127.0.0.1:0""#, h = registry.host()))
}

fn put_spec(facade: &TestServer, id: &str, spec: &Value) {
    let reply = send(facade.admin.expect("admin listener"), "PUT", &format!("/admin/specs/{id}"), spec.to_string().as_bytes());
    assert_eq!(reply.status, 201, "PUT {id}: {}", String::from_utf8_lossy(&reply.body));
}

fn strings(values: &Value) -> Vec<String> {
    values.as_array().expect("an array").iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
}

#[test]
fn containerd_pulls_a_composed_estargz_image_lazily_through_the_facade() {
    // Drop order is the reverse: containerd, then the snapshotter (unmounting its FUSE mounts).
    let snapshotter = Stargz::start();
    let containerd = Containerd::start_with_stargz(&snapshotter);
    let images = Images::estargz(&containerd);
    let host = images.registry.host();
    let (base_manifest, base_config) = images.manifest_and_config("base/img", "esgz");
    let (ide_manifest, ide_config) = images.manifest_and_config("ide/img", "esgz");
    let facade = facade(&images.registry);
    put_spec(&facade, "lazy", &json!({"baseRef": format!("{host}/base/img:esgz"), "ideRef": format!("{host}/ide/img:esgz")}));

    // The composed image: the base's layers and the IDE's, each descriptor as it was.
    let composed = request(facade.addr, "GET", "/v2/remote/lazy/manifests/latest", &[("Accept", OCI_MANIFEST)]);
    assert_eq!(composed.status, 200);
    let manifest = composed.json();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "an OCI base stays OCI");
    let originals: Vec<&Value> = base_manifest["layers"].as_array().expect("layers").iter().chain(ide_manifest["layers"].as_array().expect("layers")).collect();
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3);
    for (layer, original) in layers.iter().zip(&originals) {
        assert_eq!(layer, *original, "field for field");
        assert!(layer["annotations"][TOC_DIGEST].is_string() && layer["annotations"][UNCOMPRESSED_SIZE].is_string(), "eStargz annotations: {layer}");
    }
    let config_digest = manifest["config"]["digest"].as_str().expect("config digest");
    let config = request(facade.addr, "GET", &format!("/v2/remote/lazy/blobs/{config_digest}"), &[]).json();
    let diff_ids = strings(&config["rootfs"]["diff_ids"]);
    assert_eq!(diff_ids, [strings(&base_config["rootfs"]["diff_ids"]), strings(&ide_config["rootfs"]["diff_ids"])].concat(), "each eStargz layer's uncompressed digest");
    let image_bytes: u64 = layers.iter().map(|l| l["size"].as_u64().expect("size")).sum();

    // The lazy pull: manifest and config only; the layers stay in the registry.
    let reference = format!("{}/remote/lazy:latest", facade.addr);
    let served_before = facade.metrics().sum("registry_facade_served_bytes_total", &[]);
    containerd.ctr_remote_ok(&["image", "rpull", "--plain-http", &reference]);
    let content = String::from_utf8_lossy(&containerd.ctr_ok(&["content", "ls", "-q"]).stdout).into_owned();
    for layer in layers {
        let digest = layer["digest"].as_str().expect("digest");
        assert!(!content.lines().any(|l| l == digest), "layer {digest} is not in containerd's content store after rpull:\n{content}");
    }
    assert!(!snapshotter.log().contains("failed to prepare remote snapshot"), "the snapshotter mounted every layer remotely:\n{}", snapshotter.log());

    // A file of the base and one of the IDE, read from the lazily mounted rootfs.
    let (base_file, ide_file) = (&images.base.image().layer_files[0][3], &images.ide.image().layer_files[0][5]);
    stargz::with_view(&containerd, &stargz::chain_id(&diff_ids), |root| {
        assert!(std::fs::read(root.join(&base_file.0)).expect("the base's file") == base_file.1, "{} has the base layer's bytes", base_file.0);
        assert!(std::fs::read(root.join(&ide_file.0)).expect("the IDE's file") == ide_file.1, "{} has the IDE layer's bytes", ide_file.0);
        assert!(root.join(&images.base.image().layer_files[1][1].0).exists(), "the base's second layer is listed too");
    });

    // From the facade's side: a small part of the image, and layer bytes only by Range.
    let metrics = facade.metrics();
    let served = metrics.sum("registry_facade_served_bytes_total", &[]) - served_before;
    let ranged = metrics.sum("registry_facade_requests_total", &[("route", "blob"), ("method", "GET"), ("code", "206")]);
    let whole = metrics.sum("registry_facade_requests_total", &[("route", "blob"), ("method", "GET"), ("code", "200")]);
    eprintln!("lazy pull: the facade served {served} bytes of a {image_bytes}-byte image in {ranged} ranged GETs and {whole} whole ones");
    assert!(served * 3.0 < image_bytes as f64, "{served} bytes served of {image_bytes}: the pull was not lazy");
    assert!(ranged >= layers.len() as f64, "at least one ranged GET per layer (its TOC), {ranged} seen");
    assert_eq!(whole, 2.0, "whole blobs: only the config, to the test above and to containerd");
    let traced = snapshotter.registry_requests();
    let layer_gets: Vec<_> = traced.iter().filter(|r| r.method == "GET").collect();
    assert!(!layer_gets.is_empty() && layer_gets.iter().all(|r| r.range.starts_with("bytes=") && r.status == 206), "the snapshotter's GETs: {traced:#?}");
    assert!(traced.iter().all(|r| r.url.contains(&format!("{}/v2/remote/lazy/blobs/", facade.addr))), "every layer read went to the facade: {traced:#?}");

    // The stargz tooling's own check of the composed layers: each layer's TOC, computed from
    // its bytes as the facade serves them, has the digest the composed manifest announces.
    containerd.ctr_ok(&["content", "fetch", "--plain-http", &reference]);
    for layer in layers {
        let digest = layer["digest"].as_str().expect("digest");
        let toc = containerd.ctr_remote_ok(&["image", "get-toc-digest", digest]);
        assert_eq!(String::from_utf8_lossy(&toc.stdout).trim(), layer["annotations"][TOC_DIGEST], "the TOC of {digest}");
    }
}
