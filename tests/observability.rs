//! Observability against the running server: `/metrics` on the admin listener parses strictly
//! as OpenMetrics and its counters move with real traffic (pull-through from the reference
//! registry: requests, bytes by source, cache hits and misses, fills, upstream latency,
//! retries, evictions, open and refused connections); `/live` and `/ready` answer while the upstream is
//! down; the request span (route, repository, digest) shows in JSON and in pretty logs.

mod support;

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::client::{get, request};
use support::exposition::{self, Exposition};
use support::image::{self, ImageOptions, Layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{wait_published, TestServer};
use support::tools::{facade_binary, ChildGuard};

const REPO: &str = "team/app";

/// Facade config keys: `upstream_host` mirrored as alias `up`, reached at `endpoint`, an admin
/// listener, short retry pauses and `extra`.
fn config(upstream_host: &str, endpoint: &str, retry: &str, extra: &str) -> String {
    format!(
        r#""registries": {{"{upstream_host}": {{"endpoint": "http://{endpoint}"}}}}, "mirrors": {{"up": "{upstream_host}"}},
        "upstream": {{"readTimeoutMs": 500, "retry": {retry}}}, "adminListen": "127.0.0.1:0", "demoImage": false{extra}"#
    )
}

const QUICK_RETRIES: &str = r#"{"attempts": 4, "initialDelayMs": 20, "maxDelayMs": 200}"#;

fn mirror_path(kind: &str, reference: &str) -> String {
    format!("/v2/mirror/up/{REPO}/{kind}/{reference}")
}

fn push_image(registry: &ReferenceRegistry, dir: &std::path::Path, options: ImageOptions) -> Layout {
    let layout = image::write_layout(&dir.join(format!("image-{}", options.seed)), &options);
    registry.push(&layout, REPO, &options.tag);
    layout
}

/// Scrapes `/metrics` and parses it strictly; panics with the text if it does not parse.
fn scrape(admin: SocketAddr) -> Exposition {
    let reply = get(admin, "/metrics");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let text = String::from_utf8(reply.body).expect("UTF-8 exposition");
    exposition::parse(&text).unwrap_or_else(|why| panic!("{why}\n{text}"))
}

/// Scrapes until `done` holds (a fill counts its end just after it publishes the blob).
fn scrape_until(admin: SocketAddr, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(admin);
        if done(&metrics) || Instant::now() > deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The change of the sum of `name{labels}` from `before` to `after`.
fn delta(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

#[test]
fn a_pull_through_moves_requests_bytes_cache_and_fill_counters() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![300 << 10], gzip: false, seed: 21, ..ImageOptions::default() });
    let layer = &layout.image().layers[0];
    let facade = TestServer::start(&config(&registry.host(), &registry.host(), QUICK_RETRIES, ""));
    let admin = facade.admin.expect("admin listener");
    let before = scrape(admin);
    assert!(before.has("registry_facade_build_info", &[("version", env!("CARGO_PKG_VERSION"))]));

    let manifest = request(facade.addr, "GET", &mirror_path("manifests", "latest"), &[("Accept", image::OCI_MANIFEST)]);
    assert_eq!(manifest.status, 200);
    let by_digest = get(facade.addr, &mirror_path("manifests", &layout.image().manifest.digest));
    assert_eq!(by_digest.status, 200, "a tag is asked upstream, a digest comes from the cache");
    let blob = mirror_path("blobs", &layer.digest);
    assert_eq!(get(facade.addr, &blob).body.len() as u64, layer.size, "the first pull fills");
    wait_published(&facade.cache_dir, layer.hex());
    assert_eq!(get(facade.addr, &blob).body.len() as u64, layer.size, "the second comes from the cache");
    assert_eq!(request(facade.addr, "HEAD", &blob, &[]).status, 200);
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_eq!(get(facade.addr, &format!("/v2/nobody/here/blobs/{unknown}")).status, 404);
    assert_eq!(registry.blob_gets(&layer.digest), 1);
    let after = scrape_until(admin, |m| m.sum("registry_facade_fills_finished_total", &[]) >= 1.0);
    assert_eq!(after.types.get("registry_facade_requests").map(String::as_str), Some("counter"));
    assert_eq!(after.types.get("registry_facade_upstream_response_seconds").map(String::as_str), Some("histogram"));

    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("registry_facade_requests_total", &[("route", "blob"), ("method", "GET"), ("code", "200")]), 2.0);
    assert_eq!(d("registry_facade_requests_total", &[("route", "blob"), ("method", "HEAD"), ("code", "200")]), 1.0);
    assert_eq!(d("registry_facade_requests_total", &[("route", "blob"), ("code", "404")]), 1.0);
    assert_eq!(d("registry_facade_requests_total", &[("route", "manifest"), ("code", "200")]), 2.0);
    assert!(d("registry_facade_requests_total", &[("route", "metrics"), ("code", "200")]) >= 1.0, "scrapes are counted");
    assert!(after.samples.iter().filter(|s| s.name == "registry_facade_requests_total").all(|s| s.labels.contains_key("core")));

    let size = layer.size as f64;
    assert_eq!(d("registry_facade_served_bytes_total", &[("source", "upstream")]), size, "the first pull streamed the fill");
    assert_eq!(d("registry_facade_served_bytes_total", &[("source", "cache")]), size, "the second was a cache hit");
    assert_eq!(d("registry_facade_served_bytes_total", &[("source", "manifest")]), (manifest.body.len() + by_digest.body.len()) as f64);
    assert!(d("registry_facade_cache_misses_total", &[("kind", "blob")]) >= 1.0);
    assert!(d("registry_facade_cache_hits_total", &[("kind", "blob")]) >= 2.0, "the second GET and the HEAD");
    assert!(d("registry_facade_cache_hits_total", &[("kind", "manifest")]) >= 1.0);

    assert_eq!(d("registry_facade_fills_started_total", &[("source", "upstream")]), 1.0);
    assert_eq!(d("registry_facade_fills_finished_total", &[("source", "upstream"), ("outcome", "completed")]), 1.0);
    assert_eq!(d("registry_facade_fill_bytes_total", &[("source", "upstream")]), size);
    let host = registry.host();
    assert!(d("registry_facade_upstream_response_seconds_count", &[("host", &host)]) >= 2.0, "manifest and blob from {host}");
    assert!(after.sum("registry_facade_cache_bytes", &[]) >= size);
    assert!(after.sum("registry_facade_open_connections", &[("listener", "admin")]) >= 1.0, "the scrape sees its own connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(admin).sum("registry_facade_open_connections", &[("listener", "registry")]) != 0.0 {
        assert!(Instant::now() < deadline, "closed client connections still count as open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resumed_bodies_failed_attempts_and_evictions_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { layers: vec![2 << 20, 2 << 20], gzip: false, seed: 22, ..ImageOptions::default() });
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::CutAfter(1 << 20)]);
    let budget = 3 << 20;
    let extra = format!(r#", "cacheMaxBytes": {budget}"#);
    let facade = TestServer::start(&config(&registry.host(), &proxy.addr().to_string(), QUICK_RETRIES, &extra));
    let admin = facade.admin.expect("admin listener");
    for layer in &layout.image().layers {
        assert_eq!(get(facade.addr, &mirror_path("blobs", &layer.digest)).body.len() as u64, layer.size);
        wait_published(&facade.cache_dir, layer.hex());
    }
    let metrics = scrape_until(admin, |m| m.sum("registry_facade_fills_finished_total", &[]) >= 2.0);
    let host = registry.host();
    assert_eq!(metrics.sum("registry_facade_upstream_retries_total", &[("host", &host), ("kind", "resume")]), 1.0, "one cut body");
    assert_eq!(metrics.sum("registry_facade_cache_evictions_total", &[]), 1.0, "the second blob pushed the first out");
    assert_eq!(metrics.sum("registry_facade_fills_finished_total", &[("outcome", "completed")]), 2.0);
    assert!(metrics.sum("registry_facade_cache_bytes", &[]) <= budget as f64);
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

#[test]
fn live_and_ready_answer_while_the_upstream_is_down() {
    let down = closed_port().to_string();
    let slow_retries = r#"{"attempts": 4, "initialDelayMs": 400, "maxDelayMs": 2000}"#;
    let facade = TestServer::start(&config(&down, &down, slow_retries, ""));
    let admin = facade.admin.expect("admin listener");
    let addr = facade.addr;
    let digest = format!("sha256:{}", "1".repeat(64));
    let pull = std::thread::spawn(move || get(addr, &mirror_path("blobs", &digest)));
    // While that pull waits out its retries against the dead upstream, health answers at once.
    let retrying = scrape_until(admin, |m| m.sum("registry_facade_upstream_retries_total", &[]) >= 1.0);
    assert!(retrying.sum("registry_facade_upstream_retries_total", &[]) >= 1.0, "the pull is retrying");
    assert!(!pull.is_finished(), "the pull is still retrying");
    for path in ["/live", "/ready", "/metrics"] {
        let started = Instant::now();
        let reply = get(admin, path);
        assert_eq!(reply.status, 200, "{path}: {}", String::from_utf8_lossy(&reply.body));
        assert!(started.elapsed() < Duration::from_millis(500), "{path} took {:?}", started.elapsed());
    }
    assert_eq!(get(admin, "/ready").json()["status"], "ready");
    let failed = pull.join().unwrap();
    assert_eq!(failed.status, 503, "{}", String::from_utf8_lossy(&failed.body));
    let metrics = scrape(admin);
    assert_eq!(metrics.sum("registry_facade_upstream_retries_total", &[("host", &down), ("kind", "request")]), 3.0, "four attempts");
    assert_eq!(metrics.sum("registry_facade_requests_total", &[("route", "blob"), ("code", "503")]), 1.0);
    assert_eq!(metrics.sum("registry_facade_requests_total", &[("route", "live"), ("code", "200")]), 1.0);
    assert_eq!(metrics.sum("registry_facade_requests_total", &[("route", "ready"), ("code", "200")]), 2.0);
}

/// Runs the binary with `config` (a JSON file body) and returns the process, its address and
/// a channel of its log lines.
fn spawn_logging(dir: &std::path::Path, config: &str) -> (ChildGuard, SocketAddr, mpsc::Receiver<String>) {
    let path = dir.join("config.json");
    std::fs::write(&path, config).unwrap();
    let mut child = ChildGuard(facade_binary().arg("--config").arg(&path).stderr(std::process::Stdio::piped()).spawn().expect("start the facade"));
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let serving = lines.iter().find(|l| l.contains("registry-facade serving")).expect("the facade starts");
    let listen = serving.split("127.0.0.1:").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()).expect(&serving);
    (child, format!("127.0.0.1:{listen}").parse().unwrap(), lines)
}

/// The first log line within a few seconds for which `wanted` holds.
fn wait_line(lines: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("no such log line within 10 s"),
        }
    }
}

#[test]
fn request_spans_carry_route_repository_and_digest_in_json_and_pretty_logs() {
    let digest = format!("sha256:{}", "2".repeat(64));
    let path = format!("/v2/team/img/blobs/{digest}");
    for format in ["json", "pretty"] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"listen": "127.0.0.1:0", "cores": 1, "cacheDir": {:?}, "log": {{"format": "{format}", "level": "registry_facade=debug"}}}}"#,
            dir.path().join("cache").display().to_string()
        );
        let (_child, addr, lines) = spawn_logging(dir.path(), &config);
        assert_eq!(get(addr, &path).status, 404);
        let line = wait_line(&lines, |l| l.contains("answered"));
        if format == "json" {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_eq!(event["fields"]["message"], "answered", "{line}");
            assert_eq!(event["fields"]["status"], 404, "{line}");
            let span = &event["span"];
            assert_eq!((span["name"].as_str(), span["route"].as_str()), (Some("request"), Some("blob")), "{line}");
            assert_eq!((span["repo"].as_str(), span["digest"].as_str()), (Some("team/img"), Some(digest.as_str())), "{line}");
            assert_eq!(span["method"], "GET", "{line}");
        } else {
            let span = format!("request{{method=GET route=blob repo=team/img digest={digest}}}");
            assert!(line.contains(&span) && line.contains("status=404"), "{line}");
            assert!(!line.contains('\u{1b}'), "no colours into a pipe: {line}");
        }
    }
}

#[test]
fn open_and_refused_connections_are_gauged_and_counted() {
    let facade = TestServer::start(r#""adminListen": "127.0.0.1:0", "limits": {"maxConnections": 2}"#);
    let admin = facade.admin.expect("admin listener");
    let mut held: Vec<std::net::TcpStream> = (0..2).map(|_| support::client::connect(facade.addr)).collect();
    for stream in &mut held {
        std::io::Write::write_all(stream, b"GET /v2/ HTTP/1.1\r\nHost: facade\r\n\r\n").unwrap();
        let reply = support::client::read_reply(&mut std::io::BufReader::new(stream.try_clone().unwrap()), false).unwrap();
        assert_eq!(reply.status, 200);
    }
    assert_eq!(get(facade.addr, "/v2/").status, 503, "a third connection is over the limit");
    let metrics = scrape(admin);
    assert_eq!(metrics.sum("registry_facade_open_connections", &[("listener", "registry")]), 2.0, "the two held, not the refused one");
    assert_eq!(metrics.sum("registry_facade_refused_connections_total", &[("reason", "server_full")]), 1.0);
    assert_eq!(metrics.sum("registry_facade_refused_connections_total", &[("reason", "client_full")]), 0.0);
    drop(held);
    let closed = scrape_until(admin, |m| m.sum("registry_facade_open_connections", &[("listener", "registry")]) == 0.0);
    assert_eq!(closed.sum("registry_facade_open_connections", &[("listener", "registry")]), 0.0, "closed connections leave the gauge");
}
