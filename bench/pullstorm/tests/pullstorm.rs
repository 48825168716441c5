//! The `pullstorm` benchmark binary against the facade started in-process: composed images
//! (a base and an IDE image in the reference registry, a distinct content layer per
//! workspace, specs through the admin API) pulled by 5 workspaces against two targets, the
//! JSON checked byte for byte against the facade's manifests, the SVG drawn; a blob the
//! registry lacks and bytes that do not hash to their digest must both count as errors; and
//! real containerd workspaces reading files of their rootfs after a lazy pull (the stargz
//! snapshotter) and a full one, with the bytes the facade served and fetched.

// The root package's test support, shared rather than copied: the in-process facade, the
// reference registry, nginx and the image builder.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use support::client::{get, send};
use support::containerd::Containerd;
use support::image::{self, ImageOptions};
use support::nginx::Nginx;
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::stargz::{self, Stargz};

const WORKSPACES: usize = 5;

struct Setup {
    dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    facade: TestServer,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        for (name, layers, seed) in [("base", vec![64 << 10, 32 << 10, 16 << 10], 51), ("ide", vec![8 << 10], 52)] {
            let layout = image::write_layout(&dir.path().join(name), &ImageOptions { layers, seed, file_prefix: name.into(), ..ImageOptions::default() });
            registry.push(&layout, &format!("{name}/img"), "latest");
        }
        let config = format!(r#""registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "adminListen": "127.0.0.1:0""#, h = registry.host());
        let facade = TestServer::start(&config);
        Setup { dir, registry, facade }
    }

    fn put_spec(&self, id: &str, spec: &Value) {
        let reply = send(self.facade.admin.expect("admin listener"), "PUT", &format!("/admin/specs/{id}"), spec.to_string().as_bytes());
        assert_eq!(reply.status, 201, "PUT {id}: {}", String::from_utf8_lossy(&reply.body));
    }

    fn spec(&self, base: &str) -> Value {
        json!({"baseRef": format!("{}/{base}:latest", self.registry.host()), "ideRef": format!("{}/ide/img:latest", self.registry.host())})
    }

    /// The composed image's digest and its whole size (manifest, config, layers), as the facade serves it.
    fn image_size(&self, name: &str) -> (String, u64, usize) {
        let reply = get(self.facade.addr, &format!("/v2/{name}/manifests/latest"));
        assert_eq!(reply.status, 200, "{name}");
        let manifest = reply.json();
        let layers = manifest["layers"].as_array().expect("layers");
        let size = reply.body.len() as u64 + manifest["config"]["size"].as_u64().expect("config size") + layers.iter().map(|l| l["size"].as_u64().expect("layer size")).sum::<u64>();
        (reply.header("docker-content-digest").expect("digest header").to_owned(), size, layers.len())
    }

    fn pullstorm(&self, args: &[&str]) -> (Output, Value) {
        let json_path = self.dir.path().join("out.json");
        let _ = std::fs::remove_file(&json_path);
        let output = Command::new(env!("CARGO_BIN_EXE_pullstorm")).args(args).arg("--json").arg(&json_path).output().expect("run pullstorm");
        let text = std::fs::read(&json_path).unwrap_or_else(|e| panic!("no JSON ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr)));
        (output, serde_json::from_slice(&text).expect("JSON report"))
    }
}

fn content_layer(text: &str) -> Value {
    let tar = image::tar_with_file("workspace/id", text.as_bytes());
    json!({"direct": {"content": base64::engine::general_purpose::STANDARD.encode(tar)}})
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn workspaces_pull_verified_composed_images_from_each_target() {
    let setup = Setup::new();
    let mut expected = Vec::new();
    for i in 1..=WORKSPACES {
        let mut spec = setup.spec("base/img");
        spec["contentLayer"] = json!([content_layer(&format!("workspace {i}\n"))]);
        setup.put_spec(&format!("ws-{i}"), &spec);
        expected.push(setup.image_size(&format!("remote/ws-{i}")));
    }
    let url = format!("http://{}", setup.facade.addr);
    let svg = setup.dir.path().join("out.svg");
    let pid = std::process::id().to_string();
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let mut args = vec![
        "--target".to_owned(), format!("first={url}"), "--target".to_owned(), format!("second={url}"),
        "--image".to_owned(), "remote/ws-{i}:latest".to_owned(), "--workspaces".to_owned(), WORKSPACES.to_string(),
        "--svg".to_owned(), svg.to_str().expect("utf-8 path").to_owned(), "--server-pid".to_owned(), pid,
    ];
    if two_cpus {
        args.push("--cpu-probe".to_owned());
    }
    let (output, report) = setup.pullstorm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    let total: u64 = expected.iter().map(|(_, size, _)| size).sum();
    assert_eq!((report["errors"].as_u64(), report["bytes"].as_u64()), (Some(0), Some(total)), "the summary is the first target's");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.iter().map(|t| t["name"].as_str().unwrap_or_default()).collect::<Vec<_>>(), ["first", "second"]);
    assert_eq!(report["p99_ms"], targets[0]["p99_ms"]);
    let started = |t: &Value| t["started_unix_s"].as_f64().unwrap_or_else(|| panic!("started_unix_s in {t}"));
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs_f64();
    let wall = targets[0]["wall_s"].as_f64().expect("wall_s");
    assert!(since_epoch - 600.0 < started(&targets[0]) && started(&targets[0]) + wall <= started(&targets[1]) && started(&targets[1]) < since_epoch, "targets run one after the other, just now");
    for target in targets {
        assert_eq!((target["ok"].as_u64(), target["errors"].as_u64(), target["bytes"].as_u64()), (Some(WORKSPACES as u64), Some(0), Some(total)));
        let p = |key: &str| target[key].as_f64().unwrap_or_else(|| panic!("{key} in {target}"));
        assert!(0.0 < p("p50_ms") && p("p50_ms") <= p("p90_ms") && p("p90_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"), "{target}");
        assert!(p("throughput_workspaces_per_s") > 0.0 && p("throughput_bytes_per_s") > 0.0);
        let connections = target["peak_client_connections"].as_u64().expect("connection gauge");
        assert!((1..=(WORKSPACES as u64) * 3).contains(&connections), "{connections} connections");
        assert!(target["server"]["rss_peak_bytes"].as_u64() > Some(0) && target["server"]["rss_anon_peak_bytes"].as_u64() > Some(0));
        assert!(target["server"]["cpu_s"].as_f64().is_some());
        if two_cpus {
            let probe = &target["cpu_distance"];
            assert!(probe["cpus"].as_array().is_some_and(|c| c.len() == 2) && probe["samples_ns"].is_array(), "{probe}");
        }
        for (run, (digest, size, layers)) in target["runs"].as_array().expect("runs").iter().zip(&expected) {
            assert_eq!(run["manifest_digest"].as_str(), Some(digest.as_str()), "{run}");
            assert_eq!(run["bytes"].as_u64(), Some(*size));
            assert_eq!(run["verified_blobs"].as_u64(), Some(*layers as u64 + 2), "manifest, config and every layer hashed");
        }
    }
    let distinct: std::collections::HashSet<&str> = expected.iter().map(|(d, _, _)| d.as_str()).collect();
    assert_eq!(distinct.len(), WORKSPACES, "each workspace pulled its own image");

    let svg = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(svg.starts_with("<svg") && svg.contains(">first<") && svg.contains(">second<"));
    assert_eq!(svg.matches("<polyline").count(), 2, "one CDF per target");
}

#[test]
fn a_missing_blob_and_bytes_that_miss_their_digest_are_errors() {
    let setup = Setup::new();
    // A base whose layer the registry no longer has: the composition works (it needs only the
    // manifest and config); the layer's GET cannot.
    let gone = image::write_layout(&setup.dir.path().join("gone"), &ImageOptions { layers: vec![16 << 10], seed: 53, ..ImageOptions::default() });
    setup.registry.push(&gone, "gone/img", "latest");
    let layer = &gone.image().layers[0].digest;
    assert_eq!(send(setup.registry.addr(), "DELETE", &format!("/v2/gone/img/blobs/{layer}"), b"").status, 202);
    setup.put_spec("bad-1", &setup.spec("gone/img"));

    // A remote content layer whose server sends other bytes of the same length.
    let promised = image::tar_with_file("workspace/data", b"the bytes the spec promises\n");
    let mut served = promised.clone();
    let last = served.len() - 600;
    served[last] ^= 0xff;
    let objects = setup.dir.path().join("objects");
    std::fs::create_dir_all(&objects).expect("objects dir");
    std::fs::write(objects.join("layer.tar"), &served).expect("object file");
    let root = objects.display().to_string();
    let storage = Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nlocation /objects/ {{ alias {root}/; }}"));
    let mut spec = setup.spec("base/img");
    spec["contentLayer"] = json!([{"remote": {"url": format!("http://{}/objects/layer.tar", storage.host()), "digest": sha256(&promised), "diffId": sha256(&promised),
        "mediaType": "application/vnd.oci.image.layer.v1.tar", "size": promised.len()}}]);
    setup.put_spec("bad-2", &spec);

    let url = format!("http://{}", setup.facade.addr);
    let (output, report) = setup.pullstorm(&["--registry", &url, "--image", "remote/bad-{i}:latest", "--workspaces", "2"]);
    assert_eq!(output.status.code(), Some(1), "failed workspaces make the exit status 1");
    assert_eq!((report["errors"].as_u64(), report["bytes"].as_u64()), (Some(2), Some(0)));
    let runs = report["targets"][0]["runs"].as_array().expect("runs");
    let error = |i: usize| runs[i]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error(0).contains(layer.as_str()) && error(0).contains("HTTP 404"), "{}", error(0));
    assert!(error(1).contains("digest mismatch") && error(1).contains(&sha256(&served)), "{}", error(1));
    assert!(runs.iter().all(|r| r["ms"].is_null()), "a failed workspace has no time-to-image");
    assert_eq!(report["targets"][0]["error_samples"].as_array().map(Vec::len), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("digest mismatch"), "the table lists the errors");
}

#[test]
fn containerd_workspaces_read_their_files_after_a_lazy_and_a_full_pull() {
    let snapshotter = Stargz::start();
    let containerd = Containerd::start_with_stargz(&snapshotter);
    let setup = Setup::new();
    let host = setup.registry.host();
    for (name, layers, files, seed) in [("lz-base", vec![1 << 20, 256 << 10], 8, 54), ("lz-ide", vec![512 << 10], 4, 55)] {
        let options = ImageOptions { layers, files_per_layer: files, seed, file_prefix: name.into(), ..ImageOptions::default() };
        let layout = image::write_layout(&setup.dir.path().join(name), &options);
        setup.registry.push(&layout, &format!("{name}/img"), "latest");
        stargz::convert(&containerd, &format!("{host}/{name}/img:latest"), &format!("{host}/{name}/img:esgz"));
    }
    let spec = json!({"baseRef": format!("{host}/lz-base/img:esgz"), "ideRef": format!("{host}/lz-ide/img:esgz")});
    setup.put_spec("lz-1", &spec);
    setup.put_spec("lz-2", &spec);
    let (_, image_bytes, _) = setup.image_size("remote/lz-1");

    let url = format!("http://{}", setup.facade.addr);
    let metrics = format!("metrics:http://{}/metrics", setup.facade.admin.expect("admin listener"));
    let svg = setup.dir.path().join("lazy.svg");
    let args = [
        "--client", "containerd", "--containerd-socket", containerd.socket().to_str().expect("utf-8 path"),
        "--image", "remote/lz-{i}:latest", "--workspaces", "2",
        "--target", &format!("lazy={url}"), "--snapshotter", "lazy=stargz", "--target", &format!("full={url}"),
        "--served-bytes", &format!("lazy={metrics}"), "--served-bytes", &format!("full={metrics}"),
        "--upstream-bytes", &format!("lazy={metrics}"), "--upstream-bytes", &format!("full={metrics}"),
        "--read-file", "lz-base0/data-5.bin", "--read-file", "/lz-ide0/data-2.bin",
        "--before-each", "test -n \"$PULLSTORM_TARGET\"", "--svg", svg.to_str().expect("utf-8 path"),
    ];
    let (output, report) = setup.pullstorm(&args);
    assert!(output.status.success(), "{}\n{}\nsnapshotter log:\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr), snapshotter.log());
    let targets = report["targets"].as_array().expect("targets");
    let (lazy, full) = (&targets[0], &targets[1]);
    assert_eq!((lazy["snapshotter"].as_str(), full["snapshotter"].as_str()), (Some("stargz"), Some("overlayfs")));
    for target in targets {
        assert_eq!((target["ok"].as_u64(), target["errors"].as_u64()), (Some(2), Some(0)), "{target}");
        let (pull, ready) = (target["pull_p50_ms"].as_f64().expect("pull time"), target["p50_ms"].as_f64().expect("time to the files"));
        assert!(0.0 < pull && pull <= ready, "the pull is part of the time until the files are read: {target}");
    }
    let bytes = |t: &Value, key: &str| t[key].as_u64().unwrap_or_else(|| panic!("{key} in {t}"));
    // Lazy first, on a cold facade: the snapshotter read a part of the image, while the facade
    // filled its cache with whole layers (a fill downloads a blob whole). Then the full pulls,
    // served from that cache.
    assert!(bytes(lazy, "served_bytes") < image_bytes, "lazy: {} bytes served of a {image_bytes}-byte image", bytes(lazy, "served_bytes"));
    assert!(bytes(lazy, "upstream_bytes") >= image_bytes - 4096, "the facade fetched the layers whole: {lazy}");
    assert!(bytes(full, "served_bytes") >= image_bytes - 4096, "full: every layer served: {full}");
    assert_eq!(bytes(full, "upstream_bytes"), 0, "full pulls came from the cache");
    assert!(std::fs::read_to_string(&svg).expect("SVG written").contains("time until the files are read"));
    assert_eq!(String::from_utf8_lossy(&containerd.ctr_ok(&["namespaces", "ls", "-q"]).stdout).trim(), "rf-test", "pullstorm removed its namespaces");
}
