//! Faults injected between the facade and real peers: an upstream that stalls forever or
//! rate-limits, bytes that do not match their digest, cache files changed or deleted behind
//! the server's back, a low open-file limit with many blobs, and SIGTERM under load. Each
//! asserts what the client sees and that nothing wrong is left in the cache.
//! (Cuts, resets, short stalls, disk full and `kill -9` are in `pull_through.rs`.)

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use support::client::{connect, get, Reply};
use support::image::{self, ImageOptions, Layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::wait_until;

const REPO: &str = "team/app";

/// Facade config keys mirroring `host` (alias `up`) reached at `endpoint`, with `upstream`
/// settings and `extra` keys.
fn mirror_config(host: &str, endpoint: &str, upstream: &str, extra: &str) -> String {
    let separator = if extra.is_empty() { "" } else { ", " };
    format!(
        r#""registries": {{"{host}": {{"endpoint": "http://{endpoint}"}}}}, "mirrors": {{"up": "{host}"}},
        "upstream": {{{upstream}}}, "demoImage": false{separator}{extra}"#
    )
}

const QUICK_RETRIES: &str = r#""retry": {"attempts": 3, "initialDelayMs": 20, "maxDelayMs": 100}"#;

fn blob_path(digest: &str) -> String {
    format!("/v2/mirror/up/{REPO}/blobs/{digest}")
}

fn push(registry: &ReferenceRegistry, dir: &Path, options: ImageOptions) -> Layout {
    let layout = image::write_layout(&dir.join(format!("image-{}", options.seed)), &options);
    registry.push(&layout, REPO, &options.tag);
    layout
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn assert_blob(reply: &Reply, digest: &str) {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]));
    assert_eq!(sha256(&reply.body), digest);
}

/// Ingest files under the cache's temp directories (fills in progress or left behind); each
/// directory's `lock` file is the live instance's, not a fill's.
fn temp_files(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name() != "lock")
        .count()
}

fn published(cache: &Path, digest: &str) -> bool {
    cache.join("blobs/sha256").join(digest.trim_start_matches("sha256:")).exists()
}

/// Sends a GET and reads until the server closes: the status, the announced length and the
/// body bytes that actually came (fewer than announced when the response was cut).
fn get_raw(addr: SocketAddr, path: &str) -> (u16, Option<usize>, Vec<u8>) {
    let mut stream = connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(all.len());
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    (status, length, all[end..].to_vec())
}

#[test]
fn an_upstream_that_stalls_forever_is_504_in_time_and_frees_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push(&registry, dir.path(), ImageOptions { layers: vec![4 << 20], gzip: false, seed: 31, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let forever = Duration::from_secs(600);
    // Every attempt stalls before the response head; the fourth connection passes.
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(0, forever); 3]);
    let upstream = format!(r#""responseTimeoutMs": 300, "readTimeoutMs": 300, {QUICK_RETRIES}"#);
    let facade = TestServer::start(&mirror_config(&registry.host(), &proxy.addr().to_string(), &upstream, ""));
    let started = Instant::now();
    let reply = get(facade.addr, &blob_path(&layer.digest));
    let took = started.elapsed();
    assert_eq!((reply.status, reply.error_code().as_str()), (504, "UNAVAILABLE"), "{:?}", String::from_utf8_lossy(&reply.body));
    assert!(reply.json()["errors"][0]["message"].as_str().unwrap().contains("timed out"), "{:?}", reply.json());
    // 3 attempts × 300 ms plus two pauses of at most 100 ms, and slack for a loaded machine.
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(temp_files(&facade.cache_dir), 0, "no temp file is left");
    assert!(!published(&facade.cache_dir, &layer.digest));
    // The failed fill left the table: the next pull starts a new one (over the passing
    // connection) instead of joining the dead one.
    assert_blob(&get(facade.addr, &blob_path(&layer.digest)), &layer.digest);
    assert_eq!(proxy.connections(), 4);
}

#[test]
fn an_upstream_slower_than_the_idle_timeout_gets_the_client_a_504_not_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    push(&registry, dir.path(), ImageOptions { layers: vec![1 << 10], gzip: false, seed: 36, ..ImageOptions::default() });
    let forever = Duration::from_secs(600);
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(0, forever); 4]);
    // Upstream's budget (3 attempts of 2 s) outlasts the idle timeout (1 s): the client must
    // still get an answer, on a connection that stays usable.
    let upstream = format!(r#""responseTimeoutMs": 2000, "readTimeoutMs": 2000, {QUICK_RETRIES}"#);
    let facade = TestServer::start(&mirror_config(&registry.host(), &proxy.addr().to_string(), &upstream, r#""idleTimeoutMs": 1000"#));
    let mut stream = connect(facade.addr);
    let started = Instant::now();
    write!(stream, "GET /v2/mirror/up/{REPO}/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let reply = support::client::read_reply(&mut reader, false).expect("an answer, not a cut connection");
    let took = started.elapsed();
    assert_eq!((reply.status, reply.error_code().as_str()), (504, "UNAVAILABLE"), "{:?}", String::from_utf8_lossy(&reply.body));
    assert!(reply.json()["errors"][0]["message"].as_str().unwrap().contains("idleTimeoutMs"), "{:?}", reply.json());
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "answered after {took:?}");
    write!(stream, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").expect("send again");
    assert_eq!(support::client::read_reply(&mut reader, false).expect("the connection is still served").status, 200);
}

#[test]
fn a_body_that_stalls_forever_is_cut_and_its_temp_file_removed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push(&registry, dir.path(), ImageOptions { layers: vec![4 << 20], gzip: false, seed: 32, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    let forever = Duration::from_secs(600);
    // The body stops after 1 MiB; every resumption stalls before its head, so no attempt
    // makes progress again (progress would reset the attempt count).
    let mut plan = vec![Fault::StallAfter(1 << 20, forever)];
    plan.extend([Fault::StallAfter(0, forever); 3]);
    let proxy = FaultProxy::start(registry.addr(), plan);
    let upstream = format!(r#""responseTimeoutMs": 300, "readTimeoutMs": 300, {QUICK_RETRIES}"#);
    let facade = TestServer::start(&mirror_config(&registry.host(), &proxy.addr().to_string(), &upstream, ""));
    let started = Instant::now();
    let (status, length, body) = get_raw(facade.addr, &blob_path(&layer.digest));
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    assert_eq!((status, length), (200, Some(layer.size as usize)), "the head went out before the stall");
    assert!(body.len() < layer.size as usize, "the response is cut, never completed ({} bytes)", body.len());
    wait_until("the temp file is removed", Duration::from_secs(5), || temp_files(&facade.cache_dir) == 0);
    assert!(!published(&facade.cache_dir, &layer.digest));
    assert_blob(&get(facade.addr, &blob_path(&layer.digest)), &layer.digest);
}

#[test]
fn retry_after_of_a_rate_limited_upstream_is_honoured_or_passed_on_as_429() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push(&registry, dir.path(), ImageOptions { layers: vec![64 << 10], seed: 33, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    const SLOW_DOWN: &str = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    const GO_AWAY: &str = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    let proxy = FaultProxy::start(registry.addr(), vec![Fault::Respond(SLOW_DOWN)]);
    let facade = TestServer::start(&mirror_config(&registry.host(), &proxy.addr().to_string(), QUICK_RETRIES, ""));
    let started = Instant::now();
    assert_blob(&get(facade.addr, &blob_path(&layer.digest)), &layer.digest);
    // Backoff alone would retry within 100 ms.
    assert!(started.elapsed() >= Duration::from_secs(2), "retried after {:?}, before Retry-After", started.elapsed());
    assert_eq!(proxy.connections(), 2);

    // A wait longer than we are willing to hold a client is not slept through: the client
    // gets 429 at once and may come back later.
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::Respond(GO_AWAY)]);
    let facade = TestServer::start(&mirror_config(&registry.host(), &proxy.addr().to_string(), QUICK_RETRIES, ""));
    let started = Instant::now();
    let reply = get(facade.addr, &blob_path(&layer.digest));
    assert_eq!((reply.status, reply.error_code().as_str()), (429, "TOOMANYREQUESTS"));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(proxy.connections(), 1, "no retry against an explicit long Retry-After");
}

#[test]
fn bytes_that_do_not_match_the_digest_are_never_served_whole_nor_cached() {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("image"), &ImageOptions { layers: vec![3 << 20; 3], gzip: false, seed: 34, ..ImageOptions::default() });
    let layers = layout.image().layers.clone();
    // nginx plays an upstream registry whose storage is damaged: a flipped byte, a short
    // file, a long file. It announces each file's true length, so only the digest can tell.
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    for (n, layer) in layers.iter().enumerate() {
        let mut bytes = std::fs::read(layout.blob_path(&layer.digest)).unwrap();
        match n {
            0 => bytes[1 << 20] ^= 0x55,
            1 => bytes.truncate(bytes.len() - 1000),
            _ => bytes.extend_from_slice(&[7; 1000]),
        }
        std::fs::write(storage.join(&layer.digest), bytes).unwrap();
    }
    let store = storage.display().to_string();
    let upstream = support::nginx::Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nlocation /v2/{REPO}/blobs/ {{ alias {store}/; }}"));
    let facade = TestServer::start(&mirror_config(&upstream.host(), &upstream.host(), QUICK_RETRIES, ""));
    for (layer, what) in layers.iter().zip(["a flipped byte", "1000 bytes short", "1000 bytes long"]) {
        for attempt in 0..2 {
            let (status, length, body) = get_raw(facade.addr, &blob_path(&layer.digest));
            let complete = status == 200 && length == Some(body.len());
            assert!(!complete, "{what}, attempt {attempt}: a complete 200 of wrong bytes ({} bytes)", body.len());
            assert_ne!(sha256(&body), layer.digest);
            wait_until("the temp file is removed", Duration::from_secs(5), || temp_files(&facade.cache_dir) == 0);
            assert!(!published(&facade.cache_dir, &layer.digest), "{what}: nothing cached");
        }
    }
    let fetched = upstream.access_log().iter().filter(|l| l.contains("/blobs/sha256:")).count();
    assert_eq!(fetched, 6, "every attempt went upstream again: nothing wrong was kept");

    // With no room on the disk the facade streams straight from upstream: still verified.
    let small = dir.path().join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let mount = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", small.to_str().unwrap()]).output().unwrap();
    if !mount.status.success() {
        eprintln!("SKIPPED: cannot mount a small tmpfs ({}); pass-through verification not tested", String::from_utf8_lossy(&mount.stderr).trim());
        return;
    }
    let _unmount = Unmount(small.clone());
    let facade = TestServer::start_on(&small.join("cache"), &mirror_config(&upstream.host(), &upstream.host(), QUICK_RETRIES, ""));
    for (layer, what) in layers.iter().zip(["a flipped byte", "1000 bytes short", "1000 bytes long"]) {
        let (status, length, body) = get_raw(facade.addr, &blob_path(&layer.digest));
        assert!(!(status == 200 && length == Some(body.len())), "{what}, disk full: a complete 200 of wrong bytes");
    }
    // And a right blob still goes through whole.
    std::fs::copy(layout.blob_path(&layers[0].digest), storage.join(&layers[0].digest)).unwrap();
    assert_blob(&get(facade.addr, &blob_path(&layers[0].digest)), &layers[0].digest);
    assert!(!published(&small.join("cache"), &layers[0].digest), "it did not fit");
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn cache_files_changed_or_deleted_behind_the_servers_back_are_refetched_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push(&registry, dir.path(), ImageOptions { layers: vec![1 << 20, 1 << 20], gzip: false, seed: 35, ..ImageOptions::default() });
    let [a, b] = [layout.image().layers[0].clone(), layout.image().layers[1].clone()];
    let cache = dir.path().join("cache");
    // One open blob at most: serving one closes the other, so each pull reopens its file.
    let config = mirror_config(&registry.host(), &registry.host(), QUICK_RETRIES, r#""cacheMaxOpenBlobs": 1"#);
    let facade = TestServer::start_on(&cache, &config);
    let file = |digest: &str| cache.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let pull = |digest: &str| assert_blob(&get(facade.addr, &blob_path(digest)), digest);
    for layer in [&a, &b] {
        pull(&layer.digest);
        wait_until("the blob is published", Duration::from_secs(10), || published(&cache, &layer.digest));
        pull(&layer.digest);
    }
    assert_eq!((registry.blob_gets(&a.digest), registry.blob_gets(&b.digest)), (1, 1));

    // Same size, one byte changed in place while its handle is closed.
    let mut bytes = std::fs::read(file(&a.digest)).unwrap();
    bytes[1000] ^= 1;
    std::fs::OpenOptions::new().write(true).open(file(&a.digest)).unwrap().write_all(&bytes).unwrap();
    pull(&a.digest);
    assert_eq!(registry.blob_gets(&a.digest), 2, "the changed file was detected and the blob fetched again");
    wait_until("`a` is cached again", Duration::from_secs(10), || published(&cache, &a.digest));
    pull(&a.digest); // opens `a` again, which closes `b`
    // Deleted while the server runs and its handle is closed. (An open handle keeps serving
    // the deleted file's bytes, which are still right.)
    std::fs::remove_file(file(&b.digest)).unwrap();
    pull(&b.digest);
    assert_eq!(registry.blob_gets(&b.digest), 2);
    wait_until("both are cached again", Duration::from_secs(10), || published(&cache, &a.digest) && published(&cache, &b.digest));
    assert_eq!(support::tools::sha256_file(&file(&a.digest)), a.hex());
    facade.stop(registry_facade::runtime::ShutdownKind::Immediate);

    // While the server was down: one file truncated, one rewritten with other bytes of the
    // same length. A new server hashes what it did not write itself before serving it.
    let truncated = std::fs::read(file(&a.digest)).unwrap();
    std::fs::write(file(&a.digest), &truncated[..truncated.len() / 2]).unwrap();
    std::fs::write(file(&b.digest), vec![0u8; b.size as usize]).unwrap();
    let facade = TestServer::start_on(&cache, &config);
    for (layer, gets) in [(&a, 3), (&b, 3)] {
        let reply = get(facade.addr, &blob_path(&layer.digest));
        assert_blob(&reply, &layer.digest);
        assert_eq!(registry.blob_gets(&layer.digest), gets, "{} refetched after a restart on a damaged cache", layer.digest);
    }
    drop(facade);
}

#[test]
fn open_blobs_are_capped_so_a_low_open_file_limit_never_wedges_the_server() {
    const BLOBS: usize = 300;
    const NOFILE: u64 = 192;
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("image"), &ImageOptions { layers: vec![16; BLOBS], gzip: false, seed: 36, ..ImageOptions::default() });
    let cache = dir.path().join("cache");
    support::server::import(&cache, &layout.dir, "many/blobs", Some("v1"));
    let config = dir.path().join("facade.json");
    let json = format!(r#"{{"listen": "127.0.0.1:0", "cores": 1, "cacheDir": {:?}, "demoImage": false}}"#, cache.display().to_string());
    std::fs::write(&config, json).unwrap();
    // The hard limit binds: the facade raises its soft limit to the hard one, no further.
    let mut command = std::process::Command::new("prlimit");
    command.arg(format!("--nofile={NOFILE}:{NOFILE}")).arg(env!("CARGO_BIN_EXE_registry-facade")).arg("--config").arg(&config);
    let (child, addr) = support::server::spawn_command(command);
    let layers = &layout.image().layers;
    for round in 0..2 {
        for layer in layers {
            let reply = get(addr, &format!("/v2/many/blobs/blobs/{}", layer.digest));
            assert_eq!(reply.status, 200, "round {round}, {}: {:?}", layer.digest, String::from_utf8_lossy(&reply.body));
            assert_eq!(sha256(&reply.body), layer.digest);
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.0.id())).unwrap().count();
    assert!(fds < NOFILE as usize / 2, "{fds} descriptors open after serving {BLOBS} blobs twice");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.0.id())).unwrap();
    let mapped_blobs = maps.lines().filter(|l| l.contains("/blobs/sha256/")).count();
    // The default cap is a quarter of the limit; closed handles are released in batches of
    // up to 32 (the shared table's deferred reclamation), so a few more may still be open.
    assert!(mapped_blobs <= NOFILE as usize / 4 + 32, "{mapped_blobs} blob mappings stay open");
    assert_eq!(get(addr, "/v2/").status, 200, "still accepting");
}

#[test]
fn sigterm_under_load_completes_in_flight_pulls_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push(&registry, dir.path(), ImageOptions { layers: vec![8 << 20], gzip: false, seed: 37, ..ImageOptions::default() });
    let layer = layout.image().layers[0].clone();
    // The upstream pauses mid-blob, so the pulls are still running when the signal comes.
    let pause = Duration::from_millis(1500);
    let proxy = FaultProxy::start(registry.addr(), vec![Fault::StallAfter(2 << 20, pause)]);
    let config = dir.path().join("facade.json");
    let json = format!(
        r#"{{"listen": "127.0.0.1:0", "cores": 2, "cacheDir": {:?}, "shutdownGraceMs": 20000, {}}}"#,
        dir.path().join("cache").display().to_string(),
        mirror_config(&registry.host(), &proxy.addr().to_string(), r#""readTimeoutMs": 10000"#, "")
    );
    std::fs::write(&config, json).unwrap();
    let (mut child, addr) = support::server::spawn_binary(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    let (heads_tx, heads_rx) = std::sync::mpsc::channel();
    let pullers: Vec<_> = (0..6)
        .map(|_| {
            let (path, heads) = (blob_path(&layer.digest), heads_tx.clone());
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut reader = std::io::BufReader::new(stream);
                let mut first = [0u8; 1];
                reader.read_exact(&mut first).unwrap();
                heads.send(()).unwrap();
                let mut whole = (&first[..]).chain(reader);
                support::client::read_reply(&mut whole, false).map(|reply| reply.body).map_err(|e| e.to_string())
            })
        })
        .collect();
    for _ in 0..pullers.len() {
        heads_rx.recv_timeout(Duration::from_secs(20)).expect("every pull is under way");
    }
    let signalled = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    wait_until("new connections are refused", Duration::from_secs(2), || std::net::TcpStream::connect(addr).is_err());
    assert!(pullers.iter().all(|p| !p.is_finished()), "refusing new connections did not wait for the pulls");
    for puller in pullers {
        let body = puller.join().unwrap().expect("the in-flight pull completes");
        assert_eq!(sha256(&body), layer.digest);
    }
    let mut status = None;
    wait_until("the facade exits", Duration::from_secs(15), || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "a drained shutdown exits 0: {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(15), "within the grace period");
}
