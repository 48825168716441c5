//! Pull-through against the real reference registry: mirrors for skopeo and containerd,
//! single-flight fills, resumption behind a fault-injecting proxy, Basic and token auth,
//! crash safety, eviction, denial, tag TTLs, ranges during a fill, disk-full pass-through and
//! upstream outages.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use support::client::{get, request, Reply};
use support::containerd::Containerd;
use support::docker_config::write_docker_config;
use support::image::{self, ImageOptions, Layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{wait_published, TestServer};
use support::token::TokenServer;
use support::tools::{run, skopeo};

const REPO: &str = "team/app";

/// Short retry pauses, so failing tests fail fast.
const QUICK_RETRIES: &str = r#""retry": {"attempts": 4, "initialDelayMs": 20, "maxDelayMs": 200}"#;

/// Facade config keys that mirror `upstream_host` (alias `up`), reached at `endpoint`.
fn mirror_config(upstream_host: &str, endpoint: &str, extra: &str) -> String {
    mirror_config_with(upstream_host, endpoint, QUICK_RETRIES, extra)
}

/// As `mirror_config`, with the body of the `upstream` object given.
fn mirror_config_with(upstream_host: &str, endpoint: &str, upstream: &str, extra: &str) -> String {
    let separator = if extra.is_empty() { "" } else { ", " };
    format!(
        r#""registries": {{"{upstream_host}": {{"endpoint": "http://{endpoint}"}}}}, "mirrors": {{"up": "{upstream_host}"}},
        "upstream": {{{upstream}}}{separator}{extra}"#
    )
}

fn push_image(registry: &ReferenceRegistry, dir: &std::path::Path, options: ImageOptions) -> Layout {
    let layout = image::write_layout(&dir.join(format!("image-{}", options.seed)), &options);
    registry.push(&layout, REPO, &options.tag);
    layout
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn mirror_path(kind: &str, reference: &str) -> String {
    format!("/v2/mirror/up/{REPO}/{kind}/{reference}")
}

fn assert_blob(reply: &Reply, digest: &str, size: u64) {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]));
    assert_eq!(reply.body.len() as u64, size);
    assert_eq!(sha256_hex(&reply.body), digest);
}

#[test]
fn skopeo_pulls_through_a_mirror_alias_and_the_blobs_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![3 << 20, 1 << 10], ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), ""));
    let source = format!("docker://{}/mirror/up/{REPO}:latest", facade.addr);
    for round in 0..2 {
        let out = dir.path().join(format!("copy-{round}"));
        run(skopeo().args(["copy", "--src-tls-verify=false", &source, &format!("dir:{}", out.display())]));
        image::assert_dir_copy(&out, layout.image());
    }
    for layer in &layout.image().layers {
        assert_eq!(registry.blob_gets(&layer.digest), 1, "{} fetched upstream once, then from the cache", layer.digest);
    }
}

#[test]
fn containerd_pulls_through_the_facade_as_a_mirror_with_ns() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let options = ImageOptions { layers: vec![1 << 20, 300 << 10], file_prefix: "mirrored".into(), seed: 4, ..ImageOptions::default() };
    let layout = push_image(&registry, dir.path(), options);
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), ""));
    let containerd = Containerd::start();
    let hosts_dir = containerd.dir().join("certs.d");
    let host_dir = hosts_dir.join(registry.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registry.host(), facade.addr),
    )
    .unwrap();
    let reference = format!("{}/{REPO}:latest", registry.host());
    containerd.ctr_ok(&["image", "pull", "--hosts-dir", hosts_dir.to_str().unwrap(), &reference]);
    containerd.with_mounted(&reference, |root| {
        for (path, payload) in &layout.image().files {
            assert!(std::fs::read(root.join(path)).unwrap() == *payload, "{path} unpacked with the layer's bytes");
        }
    });
    let direct: Vec<String> = registry.access_log().into_iter().filter(|l| !l.contains("registry-facade/")).collect();
    assert!(direct.iter().all(|l| l.contains("skopeo")), "containerd went through the facade, not around it: {direct:#?}");
}

#[test]
fn thirty_two_concurrent_cold_pulls_cause_one_upstream_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![64 << 20], gzip: false, seed: 5, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), ""));
    let layer = layout.image().layers[0].clone();
    let path = Arc::new(mirror_path("blobs", &layer.digest));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (path, addr) = (Arc::clone(&path), facade.addr);
            std::thread::spawn(move || get(addr, &path))
        })
        .collect();
    for client in clients {
        assert_blob(&client.join().unwrap(), &layer.digest, layer.size);
    }
    assert_eq!(registry.blob_gets(&layer.digest), 1, "one upstream GET for 32 clients");
    assert_blob(&get(facade.addr, &path), &layer.digest, layer.size);
    assert_eq!(registry.blob_gets(&layer.digest), 1, "later pulls come from the cache");
}

#[test]
fn broken_upstream_bodies_are_resumed_and_the_bytes_are_right() {
    let plans = [
        ("cut", vec![Fault::CutAfter(1 << 20), Fault::CutAfter(3 << 20)]),
        ("reset", vec![Fault::ResetAfter(2 << 20)]),
        ("stall", vec![Fault::StallAfter(2 << 20, Duration::from_secs(30))]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![8 << 20], gzip: false, seed: 6, ..ImageOptions::default() });
    let layer = &layout.image().layers[0];
    for (name, plan) in plans {
        let faults = plan.len();
        let proxy = FaultProxy::start(registry.addr(), plan);
        let upstream = format!(r#""readTimeoutMs": 500, {QUICK_RETRIES}"#);
        let facade = TestServer::start(&mirror_config_with(&registry.host(), &proxy.addr().to_string(), &upstream, ""));
        assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
        assert!(proxy.connections() > faults, "{name}: the download went on over a new connection");
    }
}

#[test]
fn basic_and_token_auth_use_docker_config_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("alice", "s3cret", 300);
    let cases = [("htpasswd", RegistryAuth::Htpasswd { user: "alice", password: "s3cret" }), ("token", RegistryAuth::Token(&tokens))];
    for (name, auth) in cases {
        let registry = ReferenceRegistry::start(auth);
        let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![1 << 20], seed: 7, ..ImageOptions::default() });
        let manifest = layout.image().manifest.digest.clone();
        let layer = layout.image().layers[0].clone();

        let anonymous = TestServer::start(&mirror_config(&registry.host(), &registry.host(), ""));
        let refused = get(anonymous.addr, &mirror_path("manifests", "latest"));
        assert_eq!((refused.status, refused.error_code().as_str()), (401, "UNAUTHORIZED"), "{name} without credentials");
        assert!(refused.header("www-authenticate").is_some(), "{name}: a 401 carries a challenge");

        let config_dir = dir.path().join(name);
        std::fs::create_dir_all(&config_dir).unwrap();
        let wrong = write_docker_config(&config_dir, &registry.host(), "alice", "wrong");
        let extra = format!(r#""dockerConfig": {:?}"#, wrong.display().to_string());
        let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), &extra));
        assert_eq!(get(facade.addr, &mirror_path("manifests", "latest")).status, 401, "{name} with a wrong password");
        assert!(!String::from_utf8_lossy(&get(facade.addr, &mirror_path("manifests", "latest")).body).contains("wrong"), "no secret in errors");

        // The file is re-read when it changes (looked at once a second of the facade's clock):
        // fixing it fixes the pulls without a restart.
        write_docker_config(&config_dir, &registry.host(), "alice", "s3cret");
        facade.advance(Duration::from_secs(1));
        let ok = get(facade.addr, &mirror_path("manifests", "latest"));
        assert_eq!((ok.status, ok.header("docker-content-digest")), (200, Some(manifest.as_str())), "{name} with credentials");
        assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
    }
    assert!(tokens.tokens_issued() >= 1);
}

#[test]
fn kill_9_during_a_fill_leaves_no_partial_blob_and_the_pull_succeeds_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![32 << 20], gzip: false, seed: 8, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let cache = dir.path().join("cache");
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(8 << 20, Duration::from_secs(60))]);
    let config_path = dir.path().join("facade.json");
    let write_config = |endpoint: std::net::SocketAddr| {
        let json = format!(
            r#"{{"listen": "127.0.0.1:0", "cores": 1, "cacheDir": {:?}, {}}}"#,
            cache.display().to_string(),
            mirror_config(&registry.host(), &endpoint.to_string(), r#""log": {"level": "info"}"#)
        );
        std::fs::write(&config_path, json).unwrap();
    };
    write_config(proxy.addr());
    let (mut facade, addr) = start_facade_process(&config_path);
    let path = mirror_path("blobs", &layer.digest);
    let puller = std::thread::spawn(move || {
        let mut stream = support::client::connect(addr);
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while temp_bytes(&cache) < (4 << 20) {
        assert!(Instant::now() < deadline, "the fill never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    facade.0.kill().unwrap();
    facade.0.wait().unwrap();
    puller.join().unwrap();
    let blob_file = cache.join("blobs/sha256").join(layer.hex());
    assert!(!blob_file.exists(), "no blob published under its digest from a killed fill");

    write_config(registry.addr());
    let (_facade, addr) = start_facade_process(&config_path);
    assert_blob(&get(addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
    wait_published(&cache, layer.hex());
    assert_eq!(support::tools::sha256_file(&blob_file), layer.hex());
    assert_eq!(temp_bytes(&cache), 0, "the killed fill's temp file is gone");
}

fn temp_bytes(cache: &std::path::Path) -> u64 {
    std::fs::read_dir(cache.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .sum()
}

fn start_facade_process(config: &std::path::Path) -> (support::tools::ChildGuard, std::net::SocketAddr) {
    support::server::spawn_binary(&[std::ffi::OsStr::new("--config"), config.as_os_str()])
}

#[test]
fn a_small_budget_evicts_least_recently_used_blobs_and_refetches_them() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![1 << 20; 5], gzip: false, seed: 9, ..ImageOptions::default() });
    let budget = 3 * (1 << 20) + (1 << 20) / 2;
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), &format!(r#""cacheMaxBytes": {budget}, "demoImage": false"#)));
    let layers = layout.image().layers.clone();
    for layer in &layers {
        assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
        wait_published(&facade.cache_dir, layer.hex());
        assert!(cache_bytes(&facade.cache_dir) <= budget, "the cache stays within its budget");
    }
    assert!(!facade.cache_dir.join("blobs/sha256").join(layers[0].hex()).exists(), "the least recently used blob was evicted");
    assert_blob(&get(facade.addr, &mirror_path("blobs", &layers[0].digest)), &layers[0].digest, layers[0].size);
    assert_eq!(registry.blob_gets(&layers[0].digest), 2, "an evicted blob is fetched again");
}

fn cache_bytes(cache: &std::path::Path) -> u64 {
    std::fs::read_dir(cache.join("blobs/sha256")).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum()
}

#[test]
fn unknown_mirrors_are_denied_without_contacting_anyone() {
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), ""));
    let before = registry.access_log().len();
    for path in ["/v2/mirror/nope/x/manifests/latest".to_owned(), format!("/v2/{REPO}/manifests/latest?ns=evil.example"), "/v2/mirror/up/manifests/latest".into()] {
        let reply = get(facade.addr, &path);
        assert_eq!((reply.status, reply.error_code().as_str()), (403, "DENIED"), "{path}");
    }
    assert_eq!(get(facade.addr, &format!("/v2/{REPO}/tags/list?ns=other.example:5000")).status, 403);
    assert_eq!(registry.access_log().len(), before, "no upstream request was made");
}

#[test]
fn tags_are_re_resolved_after_their_ttl_and_unknown_ones_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let first = push_image(&registry, dir.path(), ImageOptions { seed: 10, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry.host(), &registry.host(), r#""mirrorTagTtlMs": 60000"#));
    let digest_of = |reply: Reply| reply.header("docker-content-digest").map(str::to_owned);
    assert_eq!(digest_of(get(facade.addr, &mirror_path("manifests", "latest"))), Some(first.top.digest.clone()));
    let second = push_image(&registry, dir.path(), ImageOptions { seed: 11, ..ImageOptions::default() });
    facade.advance(Duration::from_millis(59_000));
    assert_eq!(digest_of(get(facade.addr, &mirror_path("manifests", "latest"))), Some(first.top.digest.clone()), "within the TTL");
    facade.advance(Duration::from_millis(1_000));
    assert_eq!(digest_of(get(facade.addr, &mirror_path("manifests", "latest"))), Some(second.top.digest.clone()), "the moved tag is seen after its TTL");
    let by_digest = get(facade.addr, &mirror_path("manifests", &first.top.digest));
    assert_eq!(digest_of(by_digest), Some(first.top.digest.clone()), "digests stay served");
    let missing = get(facade.addr, &mirror_path("manifests", "nope"));
    assert_eq!((missing.status, missing.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    // distribution itself answers MANIFEST_UNKNOWN for a manifest of an unknown repository and
    // NAME_UNKNOWN for its tag list; the facade passes each through.
    let missing_repo = get(facade.addr, "/v2/mirror/up/no/such/tags/list");
    assert_eq!((missing_repo.status, missing_repo.error_code().as_str()), (404, "NAME_UNKNOWN"));
    let tags = get(facade.addr, &format!("/v2/mirror/up/{REPO}/tags/list"));
    assert_eq!(tags.json(), serde_json::json!({"name": format!("mirror/up/{REPO}"), "tags": ["latest"]}));
}

/// An 8 MiB uncompressed layer in the reference registry, reached through a proxy that stalls
/// the first upstream response after `stall_after` bytes for `stall`, and a facade mirroring
/// it whose read timeout outlasts the stall: a fill that waits part-written. Bind every field:
/// the proxy and the directory must live as long as the test.
struct StalledFill {
    registry: ReferenceRegistry,
    layer: image::Desc,
    bytes: Vec<u8>,
    facade: TestServer,
    _proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

impl StalledFill {
    /// `extra`: more top-level configuration for the facade.
    fn start(seed: u64, stall_after: u64, stall: Duration, extra: &str) -> StalledFill {
        let dir = tempfile::tempdir().unwrap();
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![8 << 20], gzip: false, seed, ..ImageOptions::default() });
        let layer = layout.image().layers[0].clone();
        let bytes = std::fs::read(layout.blob_path(&layer.digest)).unwrap();
        let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(stall_after, stall)]);
        let upstream = format!(r#""readTimeoutMs": 60000, {QUICK_RETRIES}"#);
        let facade = TestServer::start(&mirror_config_with(&registry.host(), &proxy.addr().to_string(), &upstream, extra));
        StalledFill { registry, layer, bytes, facade, _proxy: proxy, _dir: dir }
    }
}

#[test]
fn a_local_client_close_behind_a_fill_gets_it_by_sendfile_and_the_cached_blob_by_copy() {
    // "remote": a client on this host close behind a running fill gets those bytes
    // by sendfile, with the send buffer opened for it (2 MiB asked, 4 MiB after the kernel
    // doubles it); a cached blob goes by copy with the buffer bounded (256 KiB, 512 KiB).
    // Upstream stalls after 2 MiB: the client's first bytes are the last the fill wrote.
    let StalledFill { registry, layer, bytes, facade, _proxy, _dir } = StalledFill::start(13, 2 << 20, Duration::from_secs(2), r#""sendfile": "remote""#);
    let path = mirror_path("blobs", &layer.digest);
    let mut reader = std::io::BufReader::new(support::client::connect(facade.addr));

    write!(reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    support::client::read_reply(&mut reader, true).unwrap();
    let mut body = vec![0; bytes.len()];
    reader.read_exact(&mut body[..1 << 20]).unwrap();
    assert_eq!(support::tools::server_send_buffer(facade.addr), Some(4 << 20), "sized for sendfile while the fill waits");
    reader.read_exact(&mut body[1 << 20..]).unwrap();
    assert!(body == bytes, "the bytes sent while following the fill");

    wait_published(&facade.cache_dir, layer.hex());
    write!(reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_blob(&support::client::read_reply(&mut reader, false).unwrap(), &layer.digest, layer.size);
    assert_eq!(support::tools::server_send_buffer(facade.addr), Some(512 << 10), "bounded again for copies of the cached blob");
    assert_eq!(registry.blob_gets(&layer.digest), 1);
}

#[test]
fn ranges_inside_the_written_part_are_served_while_the_fill_waits() {
    let stall = Duration::from_secs(8);
    let StalledFill { registry, layer, bytes, facade, _proxy, _dir } = StalledFill::start(12, 3 << 20, stall, "");
    let path = mirror_path("blobs", &layer.digest);
    let (addr, whole_path) = (facade.addr, path.clone());
    let whole = std::thread::spawn(move || get(addr, &whole_path));
    let started = Instant::now();
    let range = loop {
        let reply = request(facade.addr, "GET", &path, &[("Range", "bytes=1000-1999")]);
        if reply.status == 206 {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{}", reply.status);
    };
    assert!(started.elapsed() < stall / 2, "the range came back while upstream was stalled");
    assert_eq!(range.body, bytes[1000..2000]);
    assert_eq!(range.header("content-range"), Some(format!("bytes 1000-1999/{}", bytes.len()).as_str()));
    assert_blob(&whole.join().unwrap(), &layer.digest, layer.size);
    assert_eq!(registry.blob_gets(&layer.digest), 1);
}

#[test]
fn with_the_disk_full_blobs_are_streamed_through_uncached() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![6 << 20], gzip: false, seed: 13, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let small = dir.path().join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let mount = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs", small.to_str().unwrap()]).output().unwrap();
    if !mount.status.success() {
        // Only root (or CAP_SYS_ADMIN) can mount; CI runs as root. Say so loudly rather than
        // pretend a full disk was tested.
        eprintln!("SKIPPED: cannot mount a small tmpfs ({}); the disk-full fill was not tested", String::from_utf8_lossy(&mount.stderr).trim());
        return;
    }
    let _unmount = Unmount(small.clone());
    let facade = TestServer::start_on(&small.join("cache"), &mirror_config(&registry.host(), &registry.host(), r#""demoImage": false"#));
    for _ in 0..2 {
        assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
        // The temp file of the fill that ran out of space is gone, so the space is free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while temp_bytes(&small.join("cache")) > 0 {
            assert!(Instant::now() < deadline, "the failed fill's temp file is left behind");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(!small.join("cache/blobs/sha256").join(layer.hex()).exists());
    assert_eq!(get(facade.addr, "/v2/").status, 200, "the server keeps serving");
    // A blob that fits is still cached once the space is free again.
    let config = get(facade.addr, &mirror_path("blobs", &layout.image().config.digest));
    assert_eq!(config.status, 200);
    wait_published(&small.join("cache"), layout.image().config.hex());
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_unreachable_upstream_is_503_after_retries() {
    let mut registry = ReferenceRegistry::start(RegistryAuth::None);
    let host = registry.host();
    registry.kill();
    let facade = TestServer::start(&mirror_config(&host, &host, ""));
    let reply = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!((reply.status, reply.error_code().as_str()), (503, "UNAVAILABLE"));
    let message = reply.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("unreachable after 4 attempts"), "{message}");
    let blob = get(facade.addr, &mirror_path("blobs", &format!("sha256:{}", "ab".repeat(32))));
    assert_eq!(blob.status, 503);
}

#[test]
fn an_https_upstream_with_a_private_ca_is_reached_over_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::create(dir.path());
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![2 << 20], seed: 14, ..ImageOptions::default() });
    let front = support::nginx::Nginx::start(|port, _| {
        format!(
            "listen 127.0.0.1:{port} ssl http2;\nssl_certificate {};\nssl_certificate_key {};\n\
             location / {{ proxy_pass http://{}; proxy_set_header Host $http_host; proxy_buffering off; }}",
            ca.server_cert.display(),
            ca.server_key.display(),
            registry.host()
        )
    });
    let https = |ca_file: Option<&std::path::Path>| {
        let ca_key = ca_file.map(|p| format!(r#", "caFile": {:?}"#, p.display().to_string())).unwrap_or_default();
        format!(
            r#""registries": {{"{h}": {{"endpoint": "https://{h}"{ca_key}}}}}, "mirrors": {{"up": "{h}"}}, "upstream": {{{QUICK_RETRIES}}}"#,
            h = front.host()
        )
    };
    let facade = TestServer::start(&https(Some(&ca.ca_cert)));
    let layer = &layout.image().layers[0];
    let manifest = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!(manifest.header("docker-content-digest"), Some(layout.top.digest.as_str()));
    assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
    let log = front.access_log();
    assert!(!log.is_empty() && log.iter().all(|l| l.starts_with("HTTP/2.0")), "TLS with ALPN h2: {log:#?}");

    let untrusted = TestServer::start(&https(None));
    let refused = get(untrusted.addr, &mirror_path("manifests", "latest"));
    assert_eq!(refused.status, 503, "a certificate from an unknown CA is refused");
    assert!(refused.json()["errors"][0]["message"].as_str().unwrap().contains("TLS"), "{:?}", refused.json());
}

#[test]
fn blob_redirects_are_followed_without_sending_credentials_along() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::Htpasswd { user: "alice", password: "s3cret" });
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![1 << 20], seed: 15, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let blob_dir = layout.dir.join("blobs/sha256").display().to_string();
    let storage = support::nginx::Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nlocation /objects/ {{ alias {blob_dir}/; }}"));
    let front = support::nginx::Nginx::start(|port, _| {
        format!(
            "listen 127.0.0.1:{port};\nlocation ~ ^/v2/.*/blobs/sha256:([0-9a-f]+)$ {{\n\
               if ($http_authorization = \"\") {{ add_header WWW-Authenticate 'Basic realm=\"r\"' always; return 401; }}\n\
               return 307 http://{s}/objects/$1; }}\n\
             location / {{ proxy_pass http://{r}; proxy_set_header Host $http_host; }}",
            s = storage.host(),
            r = registry.host()
        )
    });
    let config = write_docker_config(dir.path(), &front.host(), "alice", "s3cret");
    let extra = format!(r#""dockerConfig": {:?}"#, config.display().to_string());
    let facade = TestServer::start(&mirror_config(&front.host(), &front.host(), &extra));
    assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
    let redirects: Vec<String> = front.access_log().into_iter().filter(|l| l.contains(" 307 ")).collect();
    assert_eq!(redirects.len(), 1, "{:#?}", front.access_log());
    assert!(redirects[0].contains("auth=\"Basic"), "the registry itself got our credentials: {redirects:?}");
    let fetched = storage.access_log();
    assert_eq!(fetched.len(), 1, "{fetched:#?}");
    assert!(fetched[0].contains(" 200 ") && fetched[0].ends_with("auth=\"-\""), "no credentials to the other host (nginx logs an absent header as -): {fetched:?}");
}

#[test]
fn a_client_that_disconnects_does_not_cancel_the_fill_others_wait_on() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![16 << 20], gzip: false, seed: 16, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(4 << 20, Duration::from_secs(2))]);
    let facade = TestServer::start(&mirror_config_with(&registry.host(), &proxy.addr().to_string(), &format!(r#""readTimeoutMs": 60000, {QUICK_RETRIES}"#), ""));
    let path = mirror_path("blobs", &layer.digest);
    {
        let mut quitter = support::client::connect(facade.addr);
        write!(quitter, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut some = [0u8; 64 * 1024];
        quitter.read_exact(&mut some).unwrap();
    }
    assert_blob(&get(facade.addr, &path), &layer.digest, layer.size);
    assert_eq!(registry.blob_gets(&layer.digest), 1, "the fill went on after its first client left, and was shared");
}

/// ghcr.io serves its token endpoint on the registry's own origin. With one connection per
/// host, the 401 that asks for a token must not keep the only connection while the token is
/// fetched (it did, and the first pull hung forever).
#[test]
fn a_token_endpoint_on_the_registry_origin_works_with_one_connection_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("alice", "s3cret", 300);
    let registry = ReferenceRegistry::start(RegistryAuth::Token(&tokens));
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![1 << 20], seed: 17, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    // One origin for both: /token goes to the token service, the rest to the registry, whose
    // challenge is rewritten to name this origin's realm.
    let front = support::nginx::Nginx::start(|port, _| {
        format!(
            "listen 127.0.0.1:{port};\nlocation = /token {{ proxy_pass http://{t}; }}\n\
             location / {{ proxy_pass http://{r}; proxy_set_header Host $http_host; proxy_hide_header WWW-Authenticate;\n\
               add_header WWW-Authenticate 'Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"{s}\"' always; }}",
            t = tokens.addr(),
            r = registry.host(),
            s = tokens.service()
        )
    });
    let config = write_docker_config(dir.path(), &front.host(), "alice", "s3cret");
    let extra = format!(r#""dockerConfig": {:?}"#, config.display().to_string());
    let upstream = format!(r#""maxConnectionsPerHost": 1, "responseTimeoutMs": 10000, {QUICK_RETRIES}"#);
    let facade = TestServer::start(&mirror_config_with(&front.host(), &front.host(), &upstream, &extra));
    let started = Instant::now();
    let manifest = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!((manifest.status, manifest.header("docker-content-digest")), (200, Some(layout.top.digest.as_str())), "{:?}", String::from_utf8_lossy(&manifest.body));
    assert_blob(&get(facade.addr, &mirror_path("blobs", &layer.digest)), &layer.digest, layer.size);
    assert!(started.elapsed() < Duration::from_secs(10), "no request waited for a connection: {:?}", started.elapsed());
    assert!(tokens.tokens_issued() >= 1, "the token came from the registry's origin");
    let log = front.access_log();
    assert!(log.iter().any(|l| l.contains("GET /token?") && l.contains(" 200 ")), "{log:#?}");
}

/// An upstream whose blob GETs answer 200 with a chunked body that goes on and on (up to
/// `cap` bytes, so that a facade without a bound does not fill the disk), counting the bytes
/// it got out before the facade hung up.
struct EndlessUpstream {
    addr: std::net::SocketAddr,
    sent: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl EndlessUpstream {
    fn start(cap: u64) -> EndlessUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_sent, thread_stop) = (Arc::clone(&sent), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = EndlessUpstream::serve(stream, cap, &thread_sent);
                }
            }
        });
        EndlessUpstream { addr, sent, stop, acceptor: Some(acceptor) }
    }

    fn serve(mut stream: std::net::TcpStream, cap: u64, sent: &std::sync::atomic::AtomicU64) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        let chunk = vec![b'x'; 64 << 10];
        while sent.load(std::sync::atomic::Ordering::SeqCst) < cap {
            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            stream.write_all(&chunk)?;
            stream.write_all(b"\r\n")?;
            sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
        }
        stream.write_all(b"0\r\n\r\n")
    }
}

impl Drop for EndlessUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // A connection wakes the blocking accept so the thread sees the flag and ends.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

#[test]
fn a_blob_of_unannounced_length_is_cut_off_at_the_cache_budget() {
    const BUDGET: u64 = 8 << 20;
    const CAP: u64 = 96 << 20;
    let upstream = EndlessUpstream::start(CAP);
    let host = upstream.addr.to_string();
    let facade = TestServer::start(&mirror_config(&host, &host, &format!(r#""cacheMaxBytes": {BUDGET}, "demoImage": false"#)));
    let mut client = support::client::connect(facade.addr);
    write!(client, "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", mirror_path("blobs", &format!("sha256:{}", "ab".repeat(32)))).unwrap();
    let mut received = Vec::new();
    let ended = client.read_to_end(&mut received);
    assert!(received.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&received[..received.len().min(300)]));
    assert!(ended.is_err() || !received.ends_with(b"0\r\n\r\n"), "the response is cut, never complete");
    let sent = upstream.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < CAP / 2, "the download stopped soon after the budget ({sent} bytes sent)");
    assert!((received.len() as u64) <= BUDGET + (1 << 20), "{} bytes reached the client", received.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    while temp_bytes(&facade.cache_dir) > 0 {
        assert!(Instant::now() < deadline, "the failed fill's temp file is removed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
