//! Warming a node's cache before workspaces arrive: the `prefetch` command (mirrored, composed
//! and plain upstream images; resumable; a per-image reason and a non-zero exit when one cannot
//! be had), the same from the config at start (readiness unaffected) and from the admin API
//! (progress readable while it runs, and counted in the metrics). Each time the image is then
//! served with the upstream registry stopped: every blob really is in the cache.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{get, send};
use support::exposition;
use support::image::{self, ImageOptions, Layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::tools::{facade_binary, run, skopeo};

const REPO: &str = "team/app";

struct Setup {
    dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    app: Layout,
    ide: Layout,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let app = image::write_layout(&dir.path().join("app"), &ImageOptions { layers: vec![700 << 10, 3 << 20], seed: 71, tag: "v1".into(), ..ImageOptions::default() });
        registry.push(&app, REPO, "v1");
        let ide = image::write_layout(&dir.path().join("ide"), &ImageOptions { layers: vec![200 << 10], seed: 72, file_prefix: "ide".into(), ..ImageOptions::default() });
        registry.push(&ide, "team/ide", "latest");
        Setup { dir, registry, app, ide }
    }

    /// Config keys mirroring the registry as `up`, plus `extra`.
    fn config_keys(&self, extra: &str) -> String {
        let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
        format!(
            r#""adminListen": "127.0.0.1:0", "registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "mirrors": {{"up": "{h}"}},
            "upstream": {{"retry": {{"attempts": 2, "initialDelayMs": 20, "maxDelayMs": 50}}}}{extra}"#,
            h = self.registry.host()
        )
    }

    fn config_file(&self, cache: &Path) -> std::path::PathBuf {
        let path = self.dir.path().join("config.json");
        std::fs::write(&path, format!(r#"{{"listen": "127.0.0.1:0", "cacheDir": {:?}, {}}}"#, cache.display().to_string(), self.config_keys(""))).unwrap();
        path
    }

    fn prefetch(&self, cache: &Path, refs: &[&str]) -> std::process::Output {
        facade_binary().arg("prefetch").arg("--config").arg(self.config_file(cache)).args(refs).output().expect("run prefetch")
    }

    /// Skopeo copies `name:tag` from `facade` and checks every digest against `layout`.
    fn assert_served(&self, facade: &TestServer, reference: &str, layout: &Layout) {
        let out = self.dir.path().join(format!("copy-{}", reference.replace(['/', ':'], "-")));
        run(skopeo().args(["copy", "--src-tls-verify=false", &format!("docker://{}/{reference}", facade.addr), &format!("dir:{}", out.display())]));
        image::assert_dir_copy(&out, layout.image());
    }

    fn blob_gets(&self, layout: &Layout) -> Vec<usize> {
        layout.image().layers.iter().map(|l| self.registry.blob_gets(&l.digest)).collect()
    }
}

fn wait_for_job(admin: std::net::SocketAddr, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = get(admin, &format!("/admin/prefetch/{id}")).json();
        if job["finished"] == true {
            return job;
        }
        assert!(Instant::now() < deadline, "prefetch {id} never finished: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_command_fills_the_cache_resumes_and_names_what_failed() {
    let mut setup = Setup::new();
    let cache = setup.dir.path().join("cache");
    let upstream_image = format!("{}/{REPO}:v1", setup.registry.host());
    let output = setup.prefetch(&cache, &[&format!("mirror/up/{REPO}:v1"), &upstream_image]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("prefetch: mirror/up/{REPO}:v1: done, 3/3 blobs")), "plain lines when not on a terminal:\n{stderr}");
    assert_eq!(setup.blob_gets(&setup.app), vec![1, 1], "each layer fetched once for both refs");

    // Again: nothing fetched twice.
    let again = setup.prefetch(&cache, &[&format!("mirror/up/{REPO}:v1")]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(setup.blob_gets(&setup.app), vec![1, 1], "a second run refetches nothing verified");

    // A missing image and a mirror the config does not name: each named with its reason.
    let failed = setup.prefetch(&cache, &[&format!("mirror/up/{REPO}:nope"), "mirror/evil/x:1", &format!("mirror/up/{REPO}:v1")]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("mirror/up/{REPO}:nope: manifest")) && stderr.contains("mirror/evil/x:1: mirror alias `evil` is not configured"), "{stderr}");
    assert!(stderr.contains("2 of 3 images could not be prefetched"), "{stderr}");

    // With upstream gone, a facade on that cache serves the whole image.
    setup.registry.kill();
    let facade = TestServer::start_on(&cache, &setup.config_keys(""));
    let digest = setup.app.image().manifest.digest.clone();
    setup.assert_served(&facade, &format!("mirror/up/{REPO}@{digest}"), &setup.app);
}

#[test]
fn the_config_prefetches_at_start_without_holding_up_readiness() {
    let mut setup = Setup::new();
    // An upstream that never answers: the prefetch cannot finish, and the server is up and
    // ready all the same.
    let stalled = FaultProxy::start(setup.registry.addr(), vec![Fault::StallAfter(0, Duration::from_secs(120)); 8]);
    let stuck = TestServer::start(&format!(
        r#""adminListen": "127.0.0.1:0", "registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "mirrors": {{"up": "{h}"}}, "prefetch": ["mirror/up/{REPO}:v1"]"#,
        h = stalled.addr()
    ));
    let admin = stuck.admin.unwrap();
    assert_eq!(get(admin, "/ready").status, 200, "ready while the prefetch waits on upstream");
    let job = get(admin, "/admin/prefetch/1").json();
    assert_eq!((job["finished"].as_bool(), job["images"][0]["state"].as_str()), (Some(false), Some("resolving")), "{job}");
    assert_eq!(get(stuck.addr, "/v2/").status, 200, "and it serves");
    drop(stuck);

    let facade = TestServer::start(&setup.config_keys(&format!(r#""prefetch": ["mirror/up/{REPO}:v1"]"#)));
    let admin = facade.admin.unwrap();
    let job = wait_for_job(admin, 1);
    assert_eq!(job["images"][0]["state"], "done", "{job}");
    assert_eq!(job["images"][0]["blobsDone"], 3);

    setup.registry.kill();
    let digest = setup.app.image().manifest.digest.clone();
    setup.assert_served(&facade, &format!("mirror/up/{REPO}@{digest}"), &setup.app);
}

#[test]
fn the_admin_api_prefetches_composed_images_and_reports_progress() {
    let mut setup = Setup::new();
    let facade = TestServer::start(&setup.config_keys(""));
    let admin = facade.admin.unwrap();
    let spec = json!({"baseRef": format!("{}/{REPO}:v1", setup.registry.host()), "ideRef": format!("{}/team/ide:latest", setup.registry.host())});
    assert_eq!(send(admin, "PUT", "/admin/specs/ws-1", spec.to_string().as_bytes()).status, 201);

    let refused = send(admin, "POST", "/admin/prefetch", br#"{"refs": ["Not A Ref"]}"#);
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"].as_str().unwrap().contains("Not A Ref"), "{:?}", refused.json());

    let started = send(admin, "POST", "/admin/prefetch", br#"{"refs": ["remote/ws-1"], "concurrency": 2}"#);
    assert_eq!(started.status, 202, "{}", String::from_utf8_lossy(&started.body));
    let id = started.json()["id"].as_u64().unwrap();
    let job = wait_for_job(admin, id);
    assert_eq!(job["images"][0]["state"], "done", "{job}");
    assert_eq!(job["images"][0]["blobsTotal"], 4, "the config and the base's and the IDE's layers: {job}");
    assert!(get(admin, "/admin/prefetch").json()["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id));
    let text = String::from_utf8(get(admin, "/metrics").body).unwrap();
    let metrics = exposition::parse(&text).unwrap();
    assert_eq!(metrics.sum("registry_facade_prefetch_blobs_total", &[("outcome", "fetched")]), 3.0, "three layers fetched");

    // Upstream gone: the composed image is whole from the cache.
    setup.registry.kill();
    let manifest = get(facade.addr, "/v2/remote/ws-1/manifests/latest");
    assert_eq!(manifest.status, 200);
    let manifest: Value = serde_json::from_slice(&manifest.body).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = get(facade.addr, &format!("/v2/remote/ws-1/blobs/{digest}"));
        assert_eq!(blob.status, 200, "{digest}");
    }
    assert!(setup.ide.image().layers.iter().all(|l| setup.registry.blob_gets(&l.digest) == 1));
}
