//! Proves the upstream harnesses against the real peers: the reference registry (no auth,
//! htpasswd, tokens from our token service), the fault proxy in front of it, kill/restart,
//! and the docker credential file.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use support::client::{self, Reply};
use support::docker_config::write_docker_config;
use support::image::{self, ImageOptions, Layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::token::TokenServer;

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rf-harness").tempdir_in("/tmp").expect("temp dir")
}

fn layout(dir: &Path, seed: u64, docker: bool, platforms: &[&str]) -> Layout {
    let options = ImageOptions { seed, docker, platforms: platforms.iter().map(|p| p.to_string()).collect(), ..Default::default() };
    image::write_layout(dir, &options)
}

fn blob(layout: &Layout, digest: &str) -> Vec<u8> {
    std::fs::read(layout.blob_path(digest)).expect("layout blob")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// GETs `/v2/<repo>/manifests/<reference>` asking for `media_type` (distribution answers an
/// OCI manifest only to an Accept that names its type).
fn get_manifest(addr: SocketAddr, repo: &str, reference: &str, media_type: &str, auth: Option<&str>) -> Reply {
    let mut headers = vec![("Accept", media_type)];
    headers.extend(auth.map(|a| ("Authorization", a)));
    client::request(addr, "GET", &format!("/v2/{repo}/manifests/{reference}"), &headers)
}

/// The manifest (or index) under `tag` is the layout's, byte for byte.
fn assert_top_manifest(addr: SocketAddr, repo: &str, tag: &str, layout: &Layout, auth: Option<&str>) {
    let reply = get_manifest(addr, repo, tag, &layout.top.media_type, auth);
    assert_eq!(reply.status, 200, "GET {repo}:{tag}: {:?}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.body, blob(layout, &layout.top.digest), "manifest bytes of {repo}:{tag}");
    assert_eq!(reply.header("docker-content-digest"), Some(layout.top.digest.as_str()));
    assert_eq!(reply.header("content-type"), Some(layout.top.media_type.as_str()));
}

#[test]
fn pushed_oci_and_docker_layouts_are_served_byte_for_byte_and_blob_gets_are_counted() {
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let work = work_dir();
    for (repo, seed, docker) in [("test/oci", 11, false), ("test/docker", 12, true)] {
        let layout = layout(&work.path().join(seed.to_string()), seed, docker, &[]);
        registry.push(&layout, repo, "v1");
        assert_top_manifest(registry.addr(), repo, "v1", &layout, None);
        assert_blob_gets_counted(&registry, repo, &layout);
    }
}

/// Two GETs (one ranged) are counted; the HEAD, a 404 and the other layer are not.
fn assert_blob_gets_counted(registry: &ReferenceRegistry, repo: &str, layout: &Layout) {
    let [other, layer] = &layout.image().layers[..] else { panic!("two layers") };
    let bytes = blob(layout, &layer.digest);
    assert_eq!(registry.blob_gets(&layer.digest), 0, "pushing made no blob GETs");
    let path = format!("/v2/{repo}/blobs/{}", layer.digest);
    assert_eq!(client::request(registry.addr(), "HEAD", &path, &[]).status, 200);
    let full = client::get(registry.addr(), &path);
    assert_eq!((full.status, &full.body), (200, &bytes), "full GET of {path}");
    let ranged = client::request(registry.addr(), "GET", &path, &[("Range", "bytes=0-99")]);
    assert_eq!((ranged.status, &ranged.body[..]), (206, &bytes[..100]), "ranged GET of {path}");
    let missing = format!("/v2/{repo}/blobs/sha256:{}", "0".repeat(64));
    assert_eq!(client::get(registry.addr(), &missing).status, 404);

    assert_eq!(registry.blob_gets(&layer.digest), 2);
    assert_eq!(registry.blob_gets(layer.hex()), 2, "a bare hex digest counts the same");
    assert_eq!(registry.blob_gets(&other.digest), 0);
    let head_line = format!("\"HEAD {path} HTTP/1.1\" 200 ");
    let log = registry.access_log();
    assert!(log.iter().any(|l| l.contains(&head_line)), "the HEAD is in the access log, uncounted");
    assert!(log.iter().all(|l| !l.contains("rf-harness-probe")), "the harness's own requests are left out");
}

#[test]
fn multi_platform_layouts_push_every_platform() {
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let work = work_dir();
    for (repo, seed, docker) in [("multi/oci", 21, false), ("multi/docker", 22, true)] {
        let layout = layout(&work.path().join(seed.to_string()), seed, docker, &["linux/amd64", "linux/arm64"]);
        registry.push(&layout, repo, "v1");
        assert_top_manifest(registry.addr(), repo, "v1", &layout, None);
        for image in &layout.images {
            let reply = get_manifest(registry.addr(), repo, &image.manifest.digest, &image.manifest.media_type, None);
            assert_eq!((reply.status, reply.body), (200, blob(&layout, &image.manifest.digest)), "{repo} {:?}", image.platform);
            let config = client::get(registry.addr(), &format!("/v2/{repo}/blobs/{}", image.config.digest));
            assert_eq!((config.status, config.body), (200, blob(&layout, &image.config.digest)));
        }
    }
}

#[test]
fn htpasswd_registry_wants_basic_credentials_and_push_uses_them() {
    let registry = ReferenceRegistry::start(RegistryAuth::Htpasswd { user: "alice", password: "wonderland" });
    let good = basic("alice", "wonderland");
    let anonymous = client::get(registry.addr(), "/v2/");
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some_and(|c| c.starts_with("Basic realm=")), "{:?}", anonymous.headers);
    let wrong = client::request(registry.addr(), "GET", "/v2/", &[("Authorization", &basic("alice", "queen"))]);
    assert_eq!(wrong.status, 401);
    assert_eq!(client::request(registry.addr(), "GET", "/v2/", &[("Authorization", &good)]).status, 200);

    let work = work_dir();
    let layout = layout(work.path(), 31, false, &[]);
    registry.push(&layout, "private/img", "v1");
    assert_top_manifest(registry.addr(), "private/img", "v1", &layout, Some(&good));
    assert_eq!(get_manifest(registry.addr(), "private/img", "v1", image::OCI_MANIFEST, None).status, 401);

    let layer = &layout.image().layers[0];
    let path = format!("/v2/private/img/blobs/{}", layer.digest);
    assert_eq!(client::get(registry.addr(), &path).status, 401);
    let reply = client::request(registry.addr(), "GET", &path, &[("Authorization", &good)]);
    assert_eq!((reply.status, reply.body), (200, blob(&layout, &layer.digest)));
    assert_eq!(registry.blob_gets(&layer.digest), 1, "the 401 is not counted, the 200 is");
}

/// Asks the token service for `scope` as a client would after a Bearer challenge.
fn fetch_token(tokens: &TokenServer, scope: &str, auth: Option<&str>) -> Reply {
    let scope = scope.replace(':', "%3A").replace('/', "%2F");
    let path = format!("/token?service={}&scope={scope}", tokens.service());
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    client::request(tokens.addr(), "GET", &path, &headers)
}

#[test]
fn token_registry_accepts_our_tokens_for_their_scope_only() {
    let tokens = TokenServer::start("bob", "builder", 300);
    let registry = ReferenceRegistry::start(RegistryAuth::Token(&tokens));
    let anonymous = client::get(registry.addr(), "/v2/");
    assert_eq!(anonymous.status, 401);
    let challenge = format!("Bearer realm=\"{}\",service=\"{}\"", tokens.realm(), tokens.service());
    assert!(anonymous.header("www-authenticate").is_some_and(|c| c.starts_with(&challenge)), "{:?}", anonymous.headers);

    let work = work_dir();
    let layout = layout(work.path(), 41, false, &[]);
    registry.push(&layout, "tok/img", "v1");
    assert!(tokens.tokens_issued() >= 1, "skopeo pushed with a token from us");
    assert!(tokens.scopes_requested().iter().any(|s| s.starts_with("repository:tok/img:")), "{:?}", tokens.scopes_requested());

    let issued_before = tokens.tokens_issued();
    let reply = fetch_token(&tokens, "repository:tok/img:pull", Some(&basic("bob", "builder")));
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    assert_eq!(tokens.tokens_issued(), issued_before + 1);
    let token = assert_token_document(&reply.json());
    let bearer = format!("Bearer {token}");
    assert_top_manifest(registry.addr(), "tok/img", "v1", &layout, Some(&bearer));

    assert_refused(&registry, "tok/img", None);
    assert_refused(&registry, "tok/other", Some(&bearer));
    assert_refused(&registry, "tok/img", Some(&format!("Bearer {}", tamper(&token))));
    assert_eq!(fetch_token(&tokens, "repository:tok/img:pull", Some(&basic("bob", "wrong"))).status, 401);
    assert_eq!(fetch_token(&tokens, "repository:tok/img:pull", None).status, 401);
}

/// Checks the token response fields and the JWT header; returns the token.
fn assert_token_document(document: &serde_json::Value) -> String {
    let token = document["token"].as_str().expect("token").to_owned();
    assert_eq!(document["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(document["expires_in"].as_u64(), Some(300));
    let issued_at = document["issued_at"].as_str().expect("issued_at");
    assert!(issued_at.len() == 20 && issued_at.ends_with('Z') && issued_at.as_bytes()[10] == b'T', "{issued_at}");
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("base64url");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON header");
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("ES256"), Some("JWT")));
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(1));
    token
}

/// The same token with its signature altered.
fn tamper(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    format!("{signed}.{flipped}{}", &signature[1..])
}

fn assert_refused(registry: &ReferenceRegistry, repo: &str, auth: Option<&str>) {
    let reply = get_manifest(registry.addr(), repo, "v1", image::OCI_MANIFEST, auth);
    assert_eq!(reply.status, 401, "{repo} with {auth:?}");
    let scope = format!("scope=\"repository:{repo}:pull\"");
    assert!(reply.header("www-authenticate").is_some_and(|c| c.contains(&scope)), "{:?}", reply.headers);
}

/// Sends a GET for `path` and reads until EOF or an error: everything received, and the error.
fn read_all(addr: SocketAddr, path: &str) -> (Vec<u8>, Option<std::io::Error>) {
    let mut stream = send_get(addr, path);
    let mut received = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, None),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) => return (received, Some(e)),
        }
    }
}

fn send_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = client::connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    stream
}

/// Splits a raw response into (Content-Length, body so far).
fn body_of(response: &[u8]) -> (usize, &[u8]) {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("complete head") + 4;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).expect("content-length").trim().parse().expect("number");
    (length, &response[end..])
}

#[test]
fn fault_proxy_cuts_resets_stalls_and_passes_in_plan_order() {
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let work = work_dir();
    let layout = layout(work.path(), 51, false, &[]);
    registry.push(&layout, "faults/img", "v1");
    let layer = &layout.image().layers[1];
    let bytes = blob(&layout, &layer.digest);
    let path = format!("/v2/faults/img/blobs/{}", layer.digest);
    let stall = Duration::from_secs(1);
    let plan = vec![Fault::CutAfter(1000), Fault::ResetAfter(1000), Fault::StallAfter(1000, stall), Fault::Pass];
    let proxy = FaultProxy::start(registry.addr(), plan);

    let (cut, error) = read_all(proxy.addr(), &path);
    assert!(error.is_none(), "a cut is a clean EOF: {error:?}");
    assert_eq!(cut.len(), 1000);
    assert!(cut.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let (length, body) = body_of(&cut);
    assert!(body.len() < length && bytes.starts_with(body), "a true prefix of the blob");

    let (reset, error) = read_all(proxy.addr(), &path);
    assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::ConnectionReset), "after {} bytes", reset.len());
    assert!(reset.len() <= 1000);

    assert_stalled_then_complete(proxy.addr(), &path, stall, &bytes);
    for _ in 0..2 {
        let (passed, error) = read_all(proxy.addr(), &path);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(body_of(&passed), (bytes.len(), &bytes[..]), "Pass, then Pass once the plan is used up");
    }
    assert_eq!(proxy.connections(), 5);
}

/// Exactly 1000 bytes come at once, nothing more until the stall ends, then all of it.
fn assert_stalled_then_complete(addr: SocketAddr, path: &str, stall: Duration, bytes: &[u8]) {
    let started = Instant::now();
    let mut stream = send_get(addr, path);
    let mut response = vec![0; 1000];
    stream.read_exact(&mut response).expect("the bytes before the stall");
    stream.set_read_timeout(Some(stall / 4)).expect("timeout");
    let mut probe = [0; 1];
    let during = stream.read(&mut probe);
    let timed_out = matches!(&during, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    assert!(timed_out, "nothing during the stall: {during:?}");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.read_to_end(&mut response).expect("the rest after the stall");
    assert!(started.elapsed() >= stall, "complete only after the stall ({:?})", started.elapsed());
    assert_eq!(body_of(&response), (bytes.len(), bytes));
}

#[test]
fn dropping_the_fault_proxy_ends_its_connections_at_once() {
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(10, Duration::from_secs(120))]);
    let addr = proxy.addr();
    let mut stream = send_get(addr, "/v2/");
    let mut first = [0; 10];
    stream.read_exact(&mut first).expect("the bytes before the stall");
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(10), "drop waited for the stall: {:?}", started.elapsed());
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.len() < 200, "the stalled connection was closed, not finished");
    // Whether the port is free is not asserted: tests running in parallel may reuse it.
}

#[test]
fn killed_registry_restarts_on_the_same_port_with_its_content() {
    let mut registry = ReferenceRegistry::start(RegistryAuth::None);
    let work = work_dir();
    let layout = layout(work.path(), 61, false, &[]);
    registry.push(&layout, "durable/img", "v1");
    let addr = registry.addr();
    registry.kill();
    assert!(TcpStream::connect(addr).is_err(), "killed registry still answers");
    registry.restart();
    assert_eq!(registry.addr(), addr);
    assert_top_manifest(addr, "durable/img", "v1", &layout, None);
    let layer = &layout.image().layers[0];
    let reply = client::get(addr, &format!("/v2/durable/img/blobs/{}", layer.digest));
    assert_eq!((reply.status, reply.body), (200, blob(&layout, &layer.digest)));
    assert_eq!(registry.blob_gets(&layer.digest), 1);
}

#[test]
fn docker_config_holds_base64_basic_credentials_for_the_host() {
    let work = work_dir();
    let path = write_docker_config(work.path(), "127.0.0.1:5999", "carol", "p@ss:word");
    assert_eq!(path, work.path().join("config.json"));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
    let auth = config["auths"]["127.0.0.1:5999"]["auth"].as_str().expect("auth entry");
    assert_eq!(STANDARD.decode(auth).expect("base64"), b"carol:p@ss:word");
}
