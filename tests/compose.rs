//! Composed workspace images end to end: a base and addon images in the reference registry,
//! specs from the fixed file and the admin API, pulled with skopeo (layer order, every
//! diff_id checked against the decompressed layer, env) and with containerd (unpacked files
//! from each source), plus providers, the admin API, determinism, static-layer reloads, index
//! bases, content layers and single-flight resolution.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest as _;
use support::client::{get, request, send, Reply};
use support::containerd::Containerd;
use support::image::{self, ImageOptions, Layout};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::tools::{run, skopeo};

const SKIP_N: &str = "skip-n.registry-facade.gitpod.io";

struct Setup {
    dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    base: Layout,
    ide: Layout,
    supervisor: Layout,
    static_file: PathBuf,
    static_digest: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let push = |name: &str, options: ImageOptions| {
            let layout = image::write_layout(&dir.path().join(name), &options);
            registry.push(&layout, &format!("{name}/img"), &options.tag);
            layout
        };
        let base = push("base", ImageOptions { docker: true, layers: vec![200 << 10, 100 << 10], env: vec!["PATH=/usr/bin:/bin".into()], file_prefix: "base".into(), seed: 31, ..ImageOptions::default() });
        let ide = push("ide", ImageOptions {
            layers: vec![150 << 10],
            env: vec!["GITPOD_ENV_APPEND_PATH=/ide/bin:".into(), "GITPOD_ENV_SET_EDITOR=code".into()],
            file_prefix: "ide".into(),
            seed: 32,
            ..ImageOptions::default()
        });
        let supervisor = push("sup", ImageOptions { layers: vec![10 << 10, 20 << 10], labels: vec![(SKIP_N.into(), "1".into())], file_prefix: "sup".into(), seed: 33, ..ImageOptions::default() });
        let (static_file, static_digest) = write_static_layer(dir.path(), "static-1.tar.gz", "tool v1\n");
        Setup { dir, registry, base, ide, supervisor, static_file, static_digest }
    }

    fn host(&self) -> String {
        self.registry.host()
    }

    fn spec(&self) -> Value {
        let h = self.host();
        json!({"baseRef": format!("{h}/base/img:latest"), "ideRef": format!("{h}/ide/img:latest"), "supervisorRef": format!("{h}/sup/img:latest")})
    }

    /// Facade config keys: the registry, the fixed spec `ws1`, an admin listener, a static file layer.
    fn config(&self, static_file: &Path, extra: &str) -> String {
        let specs = self.dir.path().join("specs.json");
        std::fs::write(&specs, json!({"ws1": self.spec()}).to_string()).unwrap();
        let separator = if extra.is_empty() { "" } else { ", " };
        format!(
            r#""registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "specs": {{"fixedFile": {specs:?}}}, "adminListen": "127.0.0.1:0",
            "staticLayers": [{{"type": "file", "ref": {file:?}}}], "upstream": {{"retry": {{"attempts": 3, "initialDelayMs": 20, "maxDelayMs": 100}}}}{separator}{extra}"#,
            h = self.host(),
            specs = specs.display().to_string(),
            file = static_file.display().to_string()
        )
    }

    fn facade(&self) -> TestServer {
        TestServer::start(&self.config(&self.static_file, ""))
    }

    /// The layers a composition of `spec()` must have, in order, before content layers.
    fn expected_layers(&self) -> Vec<String> {
        let mut layers: Vec<String> = self.base.image().layers.iter().map(|l| l.digest.clone()).collect();
        layers.push(self.static_digest.clone());
        layers.extend(self.ide.image().layers.iter().map(|l| l.digest.clone()));
        layers.extend(self.supervisor.image().layers[1..].iter().map(|l| l.digest.clone()));
        layers
    }
}

/// A gzip tar holding `static/tool.txt`; returns its path and digest.
fn write_static_layer(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
    let bytes = image::gzip(&image::tar_with_file("static/tool.txt", text.as_bytes()));
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, sha256(&bytes))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn put_spec(facade: &TestServer, id: &str, spec: &Value) -> Reply {
    send(facade.admin.expect("admin listener"), "PUT", &format!("/admin/specs/{id}"), spec.to_string().as_bytes())
}

fn manifest_digest(facade: &TestServer, name: &str) -> String {
    let reply = get(facade.addr, &format!("/v2/{name}/manifests/latest"));
    assert_eq!(reply.status, 200, "{name}: {}", String::from_utf8_lossy(&reply.body));
    reply.header("docker-content-digest").unwrap().to_owned()
}

fn decompressed(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    } else {
        bytes.to_vec()
    }
}

#[test]
fn skopeo_copies_fixed_and_remote_composed_images_with_true_diff_ids() {
    let setup = Setup::new();
    let facade = setup.facade();
    let content = image::tar_with_file("workspace/README", b"hello workspace\n");
    let mut remote_spec = setup.spec();
    remote_spec["contentLayer"] = json!([{"direct": {"content": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &content)}}]);
    assert_eq!(put_spec(&facade, "ws2", &remote_spec).status, 201);

    for (name, content_layers) in [("fixed/ws1", vec![]), ("remote/ws2", vec![sha256(&content)])] {
        let out = setup.dir.path().join(name.replace('/', "-"));
        run(skopeo().args(["copy", "--src-tls-verify=false", &format!("docker://{}/{name}:latest", facade.addr), &format!("dir:{}", out.display())]));
        let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let layers: Vec<String> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect();
        let mut expected = setup.expected_layers();
        expected.extend(content_layers);
        assert_eq!(layers, expected, "{name}: base, static, ide, supervisor minus skip-n, content");
        let config_hex = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let config: Value = serde_json::from_slice(&std::fs::read(out.join(config_hex)).unwrap()).unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(diff_ids.len(), layers.len());
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let bytes = std::fs::read(out.join(layer.trim_start_matches("sha256:"))).unwrap();
            assert_eq!(sha256(&bytes), *layer);
            assert_eq!(sha256(&decompressed(&bytes)), diff_id.as_str().unwrap(), "{name}: the diff_id of {layer} is its decompressed sha256");
        }
        let env: Vec<&str> = config["config"]["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(env.contains(&"PATH=/ide/bin:/usr/bin:/bin") && env.contains(&"EDITOR=code"), "{name}: {env:?}");
        assert_eq!(manifest["mediaType"], image::OCI_MANIFEST, "a Docker base with OCI addon layers: schema2 cannot list them");
        let types: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
        assert_eq!(&types[..3], [image::DOCKER_LAYER_GZIP, image::DOCKER_LAYER_GZIP, image::OCI_LAYER_GZIP], "{name}: the base's layers keep their Docker type; the static layer is OCI like the manifest");
        assert_eq!(types[3], image::OCI_LAYER_GZIP, "{name}: the IDE's layer keeps its own type");
        assert_eq!(manifest["annotations"]["io.gitpod.workspace-image.ref"], format!("{}/base/img:latest", setup.host()));
    }
}

#[test]
fn manifest_by_digest_is_manifest_by_tag_and_head_and_config_agree() {
    let setup = Setup::new();
    let facade = setup.facade();
    let by_tag = get(facade.addr, "/v2/fixed/ws1/manifests/latest");
    let digest = by_tag.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(sha256(&by_tag.body), digest);
    let by_digest = get(facade.addr, &format!("/v2/fixed/ws1/manifests/{digest}"));
    assert_eq!(by_digest.body, by_tag.body);
    assert_eq!(get(facade.addr, "/v2/fixed/ws1/manifests/any-other-tag").body, by_tag.body, "any tag names the composed image");
    let head = request(facade.addr, "HEAD", "/v2/fixed/ws1/manifests/latest", &[]);
    assert_eq!((head.status, head.header("docker-content-digest")), (200, Some(digest.as_str())));
    assert_eq!(head.header("content-length"), Some(by_tag.body.len().to_string().as_str()));
    let manifest: Value = serde_json::from_slice(&by_tag.body).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = get(facade.addr, &format!("/v2/fixed/ws1/blobs/{config_digest}"));
    assert_eq!((config.status, sha256(&config.body)), (200, config_digest.to_owned()));
    let docker_only = request(facade.addr, "GET", "/v2/fixed/ws1/manifests/latest", &[("Accept", image::DOCKER_MANIFEST)]);
    assert_eq!((docker_only.status, docker_only.error_code().as_str()), (404, "MANIFEST_UNKNOWN"), "an OCI composition for a schema2-only client");
}

#[test]
fn containerd_pulls_and_unpacks_a_composed_image() {
    let setup = Setup::new();
    let facade = setup.facade();
    let mut spec = setup.spec();
    let content = image::tar_with_file("workspace/README", b"hello workspace\n");
    spec["contentLayer"] = json!([{"direct": {"content": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &content)}}]);
    assert_eq!(put_spec(&facade, "ws-ctr", &spec).status, 201);
    let containerd = Containerd::start();
    let reference = format!("{}/remote/ws-ctr:latest", facade.addr);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    containerd.with_mounted(&reference, |root| {
        let base_file = &setup.base.image().files[0];
        assert!(std::fs::read(root.join(&base_file.0)).unwrap() == base_file.1, "a file from the base layer");
        let ide_file = &setup.ide.image().files[0];
        assert!(std::fs::read(root.join(&ide_file.0)).unwrap() == ide_file.1, "a file from the IDE layer");
        assert_eq!(std::fs::read_to_string(root.join("static/tool.txt")).unwrap(), "tool v1\n", "the static layer");
        assert_eq!(std::fs::read_to_string(root.join("workspace/README")).unwrap(), "hello workspace\n", "the content layer");
        assert!(root.join(&setup.supervisor.image().files[1].0).exists(), "the supervisor's kept layer");
        assert!(!root.join(&setup.supervisor.image().files[0].0).exists(), "the layer skip-n dropped");
    });
}

#[test]
fn unknown_providers_ids_and_digests_get_spec_errors() {
    let setup = Setup::new();
    let facade = setup.facade();
    let cases = [
        ("/v2/remote/nope/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/fixed/nope/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/remote/nope/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", 404, "NAME_UNKNOWN"),
        ("/v2/fixed/ws1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", 404, "BLOB_UNKNOWN"),
        ("/v2/fixed/ws1/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000", 404, "MANIFEST_UNKNOWN"),
        ("/v2/other/ws1/manifests/latest", 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        let reply = get(facade.addr, path);
        assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{path}");
    }
    let mut broken = setup.spec();
    broken["baseRef"] = json!(format!("{}/no/such:image", setup.host()));
    assert_eq!(put_spec(&facade, "broken", &broken).status, 201);
    let reply = get(facade.addr, "/v2/remote/broken/manifests/latest");
    assert_eq!((reply.status, reply.error_code().as_str()), (404, "MANIFEST_UNKNOWN"), "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.json()["errors"][0]["message"].as_str().unwrap().contains("no/such"), "the message names the missing image");
}

#[test]
fn the_admin_api_writes_specs_on_its_own_port_only() {
    let setup = Setup::new();
    let facade = setup.facade();
    let admin = facade.admin.unwrap();
    assert_ne!(admin, facade.addr);
    assert_eq!(send(admin, "PUT", "/admin/specs/ws-a", b"{not json").status, 400);
    let bad_ref = send(admin, "PUT", "/admin/specs/ws-a", br#"{"baseRef": "Not/Valid"}"#);
    assert_eq!(bad_ref.status, 400);
    assert!(bad_ref.json()["error"].as_str().unwrap().contains("baseRef"));
    assert_eq!(send(admin, "PUT", "/admin/specs/Bad_Id", b"{}").status, 400);
    assert_eq!(get(admin, "/admin/specs/ws-a").status, 404);
    assert_eq!(put_spec(&facade, "ws-a", &setup.spec()).status, 201);
    assert_eq!(put_spec(&facade, "ws-a", &setup.spec()).status, 200, "replaced");
    let read = get(admin, "/admin/specs/ws-a");
    assert_eq!(serde_json::from_slice::<Value>(&read.body).unwrap(), setup.spec());
    assert_eq!(manifest_digest(&facade, "remote/ws-a"), manifest_digest(&facade, "fixed/ws1"), "same spec, same image");
    assert_eq!(send(admin, "DELETE", "/admin/specs/ws-a", b"").status, 204);
    assert_eq!(send(admin, "DELETE", "/admin/specs/ws-a", b"").status, 404);
    assert_eq!(send(admin, "POST", "/admin/specs/ws-a", b"").status, 405);
    let public = send(facade.addr, "PUT", "/admin/specs/ws-b", setup.spec().to_string().as_bytes());
    assert_eq!(public.status, 404, "no admin API on the public port");
}

#[test]
fn compositions_are_identical_across_servers_and_restarts() {
    let setup = Setup::new();
    let first = setup.facade();
    let second = setup.facade();
    let digest = manifest_digest(&first, "fixed/ws1");
    assert_eq!(manifest_digest(&second, "fixed/ws1"), digest, "another node, another cache");
    let cache = first.cache_dir.clone();
    first.stop(registry_facade::runtime::ShutdownKind::Immediate);
    let again = TestServer::start_on(&cache, &setup.config(&setup.static_file, ""));
    assert_eq!(manifest_digest(&again, "fixed/ws1"), digest, "after a restart");
}

#[test]
fn a_changed_static_layer_makes_a_new_image_and_the_old_one_stays_pullable() {
    let setup = Setup::new();
    let config_path = setup.dir.path().join("facade.json");
    let cache = setup.dir.path().join("cache");
    let write_config = |file: &Path| {
        let json = format!(r#"{{"listen": "127.0.0.1:0", "cores": 1, "cacheDir": {:?}, {}}}"#, cache.display().to_string(), setup.config(file, ""));
        std::fs::write(&config_path, json).unwrap();
    };
    write_config(&setup.static_file);
    let (_facade, addr) = support::server::spawn_binary(&[std::ffi::OsStr::new("--config"), config_path.as_os_str()]);
    let old = get(addr, "/v2/fixed/ws1/manifests/latest");
    let old_digest = old.header("docker-content-digest").unwrap().to_owned();
    let (new_file, new_static) = write_static_layer(setup.dir.path(), "static-2.tar.gz", "tool v2\n");
    write_config(&new_file);
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_digest = loop {
        let digest = get(addr, "/v2/fixed/ws1/manifests/latest").header("docker-content-digest").unwrap().to_owned();
        if digest != old_digest {
            break digest;
        }
        assert!(Instant::now() < deadline, "the new static layer was never applied");
        std::thread::sleep(Duration::from_millis(200));
    };
    let new: Value = serde_json::from_slice(&get(addr, &format!("/v2/fixed/ws1/manifests/{new_digest}")).body).unwrap();
    assert!(new["layers"].as_array().unwrap().iter().any(|l| l["digest"] == new_static.as_str()));
    assert_eq!(get(addr, &format!("/v2/fixed/ws1/manifests/{old_digest}")).status, 200, "the old manifest is still served");
    let old_static = get(addr, &format!("/v2/fixed/ws1/blobs/{}", setup.static_digest));
    assert_eq!((old_static.status, sha256(&old_static.body)), (200, setup.static_digest.clone()), "and its static blob");
}

#[test]
fn an_index_base_is_resolved_to_the_configured_platform() {
    let setup = Setup::new();
    let multi = image::write_layout(&setup.dir.path().join("multi"), &ImageOptions { platforms: vec!["linux/amd64".into(), "linux/arm64".into()], seed: 34, ..ImageOptions::default() });
    setup.registry.push(&multi, "multi/img", "latest");
    let facade = TestServer::start(&setup.config(&setup.static_file, r#""platform": "linux/arm64""#));
    let spec = json!({"baseRef": format!("{}/multi/img:latest", setup.host())});
    assert_eq!(put_spec(&facade, "arm", &spec).status, 201);
    let manifest: Value = serde_json::from_slice(&get(facade.addr, "/v2/remote/arm/manifests/latest").body).unwrap();
    let arm64 = multi.images.iter().find(|i| i.platform.1 == "arm64").unwrap();
    assert_eq!(manifest["layers"][0]["digest"], arm64.layers[0].digest.as_str(), "the arm64 entry, not the first");
    let config = get(facade.addr, &format!("/v2/remote/arm/blobs/{}", manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config.json()["architecture"], "arm64");
    let elsewhere = TestServer::start(&setup.config(&setup.static_file, r#""platform": "linux/s390x""#));
    assert_eq!(put_spec(&elsewhere, "s390x", &spec).status, 201);
    let reply = get(elsewhere.addr, "/v2/remote/s390x/manifests/latest");
    assert!(reply.status == 502 && reply.json()["errors"][0]["message"].as_str().unwrap().contains("linux/s390x"), "{}", String::from_utf8_lossy(&reply.body));
}

#[test]
fn remote_content_layers_are_redirected_or_fetched() {
    let setup = Setup::new();
    let layer = image::gzip(&image::tar_with_file("remote/data.txt", b"from object storage\n"));
    let layer_digest = sha256(&layer);
    let storage_dir = setup.dir.path().join("objects");
    std::fs::create_dir_all(&storage_dir).unwrap();
    std::fs::write(storage_dir.join("layer.tar.gz"), &layer).unwrap();
    let root = storage_dir.display().to_string();
    let storage = support::nginx::Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nlocation /objects/ {{ alias {root}/; }}"));
    let url = format!("http://{}/objects/layer.tar.gz", storage.host());
    let mut spec = setup.spec();
    spec["contentLayer"] = json!([{"remote": {"url": url, "digest": layer_digest, "diffId": sha256(&decompressed(&layer)), "size": layer.len()}}]);
    let blob_path = format!("/v2/remote/ws-remote/blobs/{layer_digest}");

    let redirecting = setup.facade();
    assert_eq!(put_spec(&redirecting, "ws-remote", &spec).status, 201);
    let manifest: Value = serde_json::from_slice(&get(redirecting.addr, "/v2/remote/ws-remote/manifests/latest").body).unwrap();
    let last = manifest["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["digest"].as_str(), last["urls"][0].as_str()), (Some(layer_digest.as_str()), Some(url.as_str())));
    let redirect = get(redirecting.addr, &blob_path);
    assert_eq!((redirect.status, redirect.header("location")), (307, Some(url.as_str())));

    let fetching = TestServer::start(&setup.config(&setup.static_file, r#""contentLayers": {"redirect": false}"#));
    assert_eq!(put_spec(&fetching, "ws-remote", &spec).status, 201);
    let head = support::client::request(fetching.addr, "HEAD", &blob_path, &[]);
    assert_eq!((head.status, head.header("content-length")), (200, Some(layer.len().to_string().as_str())));
    assert!(storage.access_log().is_empty(), "a HEAD is answered from the spec, without a download: {:?}", storage.access_log());
    let fetched = get(fetching.addr, &blob_path);
    assert_eq!((fetched.status, sha256(&fetched.body)), (200, layer_digest.clone()), "fetched, verified and served");
}

#[test]
fn concurrent_first_pulls_resolve_each_input_once() {
    let setup = Setup::new();
    let facade = setup.facade();
    let ids: Vec<String> = (0..12).map(|i| format!("ws-{i}")).collect();
    for id in &ids {
        assert_eq!(put_spec(&facade, id, &setup.spec()).status, 201);
    }
    let pulls: Vec<_> = ids
        .iter()
        .map(|id| {
            let (addr, path) = (facade.addr, format!("/v2/remote/{id}/manifests/latest"));
            std::thread::spawn(move || get(addr, &path))
        })
        .collect();
    let digests: std::collections::HashSet<String> = pulls.into_iter().map(|p| p.join().unwrap().header("docker-content-digest").unwrap().to_owned()).collect();
    assert_eq!(digests.len(), 1, "twelve workspaces of one spec, one image");
    for repo in ["base/img", "ide/img", "sup/img"] {
        let gets = setup.registry.access_entries().iter().filter(|e| e.method == "GET" && e.uri == format!("/v2/{repo}/manifests/latest")).count();
        assert_eq!(gets, 1, "{repo}'s manifest fetched once");
    }
}

#[test]
fn a_written_spec_is_composed_before_its_pull_and_its_direct_content_lives_in_the_cache() {
    let setup = Setup::new();
    let facade = setup.facade();
    let content = image::tar_with_file("workspace/data.bin", &vec![7u8; 512 << 10]);
    let digest = sha256(&content);
    let mut spec = setup.spec();
    spec["contentLayer"] = json!([{"direct": {"content": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &content)}}]);
    assert_eq!(put_spec(&facade, "ws-early", &spec).status, 201);

    let cached = facade.cache_dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&cached).expect("the direct layer is in the blob cache once the PUT is answered"), content);

    // No pull yet: the inputs are resolved because the spec was written.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resolved = |registry: &ReferenceRegistry| registry.access_entries().iter().any(|e| e.method == "GET" && e.uri == "/v2/base/img/manifests/latest");
    while !resolved(&setup.registry) {
        assert!(Instant::now() < deadline, "the base image was never resolved ahead of the pull");
        std::thread::sleep(Duration::from_millis(20));
    }

    let read = get(facade.admin.unwrap(), "/admin/specs/ws-early");
    assert_eq!(serde_json::from_slice::<Value>(&read.body).unwrap(), spec, "the document comes back whole, content included");
    let manifest: Value = serde_json::from_slice(&get(facade.addr, "/v2/remote/ws-early/manifests/latest").body).unwrap();
    let layers: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(layers.last(), Some(&digest.as_str()));
    let blob = get(facade.addr, &format!("/v2/remote/ws-early/blobs/{digest}"));
    assert_eq!((blob.status, blob.body == content), (200, true));

    // Evicting the file behind the facade's back does not lose the layer: the spec holds its mapping.
    std::fs::remove_file(&cached).unwrap();
    let again = get(facade.addr, &format!("/v2/remote/ws-early/blobs/{digest}"));
    assert_eq!((again.status, again.body == content), (200, true));
    let gets = setup.registry.access_entries().iter().filter(|e| e.method == "GET" && e.uri == "/v2/base/img/manifests/latest").count();
    assert_eq!(gets, 1, "composed once: ahead of the pull, not again by it");
}
