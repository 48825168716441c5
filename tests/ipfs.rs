//! IPFS both ways, on real kubo nodes (tests/support/kubo): a facade publishes what it pulls
//! from upstream (the CID record in Redis with its size), other facades read it through their
//! own nodes with the upstream registry stopped, a fleet fetches each blob from upstream once,
//! and what goes wrong on the way (a malformed or lying record, a gateway that stalls or cuts,
//! an API that is down or answers garbage) never reaches the cache, Redis, or a client.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::get;
use support::containerd::Containerd;
use support::exposition;
use support::image::{self, ImageOptions, Layout};
use support::kubo::KuboNode;
use support::nginx::Nginx;
use support::proxy::{Fault, FaultProxy};
use support::redis::RedisServer;
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::TestServer;
use support::tools::{run, skopeo};
use support::wait_until;

const REPO: &str = "team/app";

/// Layers of one block (under kubo's 256 KiB chunks), of several, and a larger one.
fn image_options() -> ImageOptions {
    ImageOptions { layers: vec![100 << 10, 600 << 10, 2 << 20], seed: 91, tag: "v1".into(), file_prefix: "app".into(), ..ImageOptions::default() }
}

/// The upstream registry holding the image, and Redis.
struct Upstream {
    dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    redis: RedisServer,
    layout: Layout,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let layout = image::write_layout(&dir.path().join("app"), &image_options());
        registry.push(&layout, REPO, "v1");
        Upstream { dir, registry, redis: RedisServer::start(), layout }
    }

    /// A facade mirroring the registry as `up`, sharing Redis, with the given `ipfs` object.
    fn facade(&self, ipfs: &str) -> TestServer {
        TestServer::start(&format!(
            r#""adminListen": "127.0.0.1:0", "registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "mirrors": {{"up": "{h}"}},
            "upstream": {{"retry": {{"attempts": 3, "initialDelayMs": 20, "maxDelayMs": 100}}}},
            "redis": {{"url": "{redis}", "timeoutMs": 500}}, "mirrorTagTtlMs": 600000, "ipfs": {ipfs}"#,
            h = self.registry.host(),
            redis = self.redis.url()
        ))
    }

    /// Every digest of the image: manifest, config, layers.
    fn digests(&self) -> Vec<(String, u64)> {
        let image = self.layout.image();
        std::iter::once(&image.manifest).chain([&image.config]).chain(&image.layers).map(|d| (d.digest.clone(), d.size)).collect()
    }

    /// The CID record Redis holds for `digest`, if any.
    fn record(&self, digest: &str) -> Option<Value> {
        let text = self.redis.cli(&["GET", &format!("rf:cid:{digest}")]);
        (!text.is_empty()).then(|| serde_json::from_str(&text).unwrap_or_else(|e| panic!("record of {digest}: {e}: {text}")))
    }
}

fn blob_path(digest: &str) -> String {
    format!("/v2/mirror/up/{REPO}/blobs/{digest}")
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `registry_facade_ipfs_publications_total{outcome}` of a facade.
fn publications(facade: &TestServer, outcome: &str) -> f64 {
    let text = String::from_utf8(get(facade.admin.expect("admin"), "/metrics").body).unwrap();
    exposition::parse(&text).unwrap().sum("registry_facade_ipfs_publications_total", &[("outcome", outcome)])
}

/// The CIDv1 of a one-block file added with raw leaves, computed here from the CID spec: the
/// multibase base32 (`b`) of version 1, the `raw` codec (0x55) and the sha2-256 multihash.
fn raw_leaf_cid(bytes: &[u8]) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut binary = vec![0x01, 0x55, 0x12, 0x20];
    binary.extend_from_slice(&sha2::Sha256::digest(bytes));
    let mut text = String::from("b");
    for chunk in binary.chunks(5) {
        let mut group = [0u8; 5];
        group[..chunk.len()].copy_from_slice(chunk);
        let bits = group.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        text.extend((0..chars).map(|i| ALPHABET[(bits >> (35 - 5 * i) & 31) as usize] as char));
    }
    text
}

#[test]
fn a_fleet_fetches_each_blob_from_upstream_once_and_from_each_other_after() {
    let mut upstream = Upstream::new();
    let node_a = KuboNode::start(&[]);
    let node_b = KuboNode::start(&[&node_a]);
    let node_c = KuboNode::start(&[&node_a]);
    let facade_a = upstream.facade(&format!(r#"{{"gateway": "{a}", "api": "{a}"}}"#, a = node_a.url()));
    // B may publish too: what it reads from IPFS must not be published again.
    let facade_b = upstream.facade(&format!(r#"{{"gateway": "{b}", "api": "{b}"}}"#, b = node_b.url()));
    let facade_c = upstream.facade(&format!(r#"{{"gateway": "{}"}}"#, node_c.url()));
    let image = upstream.layout.image().clone();

    // A pulls the image through from upstream, and publishes every piece of it.
    let from_a = upstream.dir.path().join("from-a");
    run(skopeo().args(["copy", "--src-tls-verify=false", &format!("docker://{}/mirror/up/{REPO}:v1", facade_a.addr), &format!("dir:{}", from_a.display())]));
    image::assert_dir_copy(&from_a, &image);
    for (digest, size) in upstream.digests() {
        wait_until(&format!("{digest} is published"), Duration::from_secs(60), || upstream.record(&digest).is_some());
        let record = upstream.record(&digest).unwrap();
        assert_eq!(record["size"].as_u64(), Some(size), "{digest}: the record carries the size");
        let cid = record["cid"].as_str().unwrap();
        assert!(cid.starts_with("baf"), "{digest}: a CIDv1 ({cid})");
        assert_eq!(sha256(&node_c.cat(cid)), digest, "{digest}: another node serves the published bytes");
    }
    let one_block = &image.layers[0];
    let one_block_bytes = std::fs::read(upstream.layout.blob_path(&one_block.digest)).unwrap();
    assert_eq!(upstream.record(&one_block.digest).unwrap()["cid"], raw_leaf_cid(&one_block_bytes), "the CID depends only on the bytes");
    wait_until("A counted its publications", Duration::from_secs(60), || publications(&facade_a, "published") == 5.0);

    // Upstream stops; B and C serve the same image from IPFS to skopeo and to containerd.
    upstream.registry.kill();
    let from_b = upstream.dir.path().join("from-b");
    run(skopeo().args(["copy", "--src-tls-verify=false", &format!("docker://{}/mirror/up/{REPO}:v1", facade_b.addr), &format!("dir:{}", from_b.display())]));
    image::assert_dir_copy(&from_b, &image);
    let containerd = Containerd::start();
    let reference = format!("{}/mirror/up/{REPO}:v1", facade_c.addr);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let check = containerd.ctr_ok(&["image", "check"]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("complete"), "{}", String::from_utf8_lossy(&check.stdout));
    containerd.with_mounted(&reference, |root| {
        for (path, payload) in &image.files {
            let unpacked = std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path} in the unpacked image: {e}"));
            assert!(unpacked == *payload, "{path} has the layer's bytes");
        }
    });

    // A new node warmed before its workspaces arrive: the prefetch (from the config) fills its
    // cache from IPFS, with upstream still stopped.
    let warmed = upstream.facade(&format!(
        r#"{{"gateway": "{}"}}, "prefetch": ["mirror/up/{REPO}@{}"]"#,
        node_b.url(),
        image.manifest.digest
    ));
    let admin = warmed.admin.unwrap();
    wait_until("the prefetch at start finished", Duration::from_secs(60), || get(admin, "/admin/prefetch/1").json()["finished"] == true);
    let job = get(admin, "/admin/prefetch/1").json();
    assert_eq!((job["images"][0]["state"].as_str(), job["images"][0]["blobsDone"].as_u64()), (Some("done"), Some(4)), "{job}");
    for (digest, _) in upstream.digests().iter().skip(1) {
        assert!(warmed.cache_dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:")).exists(), "{digest} prefetched");
    }

    // One upstream GET per blob for the whole fleet; nothing B read from IPFS was published again.
    for (digest, _) in upstream.digests().iter().skip(1) {
        assert_eq!(upstream.registry.blob_gets(digest), 1, "{digest}: one GET from upstream for three facades");
    }
    assert_eq!(publications(&facade_b, "published"), 0.0, "what came from IPFS is not published again");
}

#[test]
fn bad_records_and_bad_gateways_fall_back_to_upstream_and_are_cleaned_up() {
    let upstream = Upstream::new();
    let node = KuboNode::start(&[]);
    let image = upstream.layout.image().clone();
    let (small, other) = (&image.layers[0], &image.layers[2]);

    // A record that is no CID, and one whose CID names other bytes (published by a first facade).
    let publisher = upstream.facade(&format!(r#"{{"gateway": "{n}", "api": "{n}"}}"#, n = node.url()));
    assert_eq!(sha256(&get(publisher.addr, &blob_path(&other.digest)).body), other.digest);
    wait_until("the other layer is published", Duration::from_secs(60), || upstream.record(&other.digest).is_some());
    let other_cid = upstream.record(&other.digest).unwrap()["cid"].as_str().unwrap().to_owned();
    let reader = upstream.facade(&format!(r#"{{"gateway": "{}"}}"#, node.url()));
    upstream.redis.cli(&["SET", &format!("rf:cid:{}", small.digest), "../../etc/passwd"]);
    let served = get(reader.addr, &blob_path(&small.digest));
    assert_eq!((served.status, sha256(&served.body)), (200, small.digest.clone()), "a malformed record: upstream");
    assert!(upstream.record(&small.digest).is_none(), "the malformed record is deleted");

    let (lying_digest, lying_size) = (&image.layers[1].digest, image.layers[1].size);
    upstream.redis.cli(&["SET", &format!("rf:cid:{lying_digest}"), &format!(r#"{{"cid": "{other_cid}", "size": {lying_size}}}"#)]);
    let served = get(reader.addr, &blob_path(lying_digest));
    assert_eq!((served.status, sha256(&served.body)), (200, lying_digest.clone()), "a record naming other bytes: upstream");
    assert!(upstream.record(lying_digest).is_none(), "the lying record is deleted");
    assert!(!reader.cache_dir.join("blobs/sha256").join(other.digest.trim_start_matches("sha256:")).exists(), "the other bytes were not cached under any name");
}

#[test]
fn a_stalled_gateway_is_given_up_on_in_bounded_time_and_a_cut_one_is_resumed_with_range() {
    let mut upstream = Upstream::new();
    let node = KuboNode::start(&[]);
    let image = upstream.layout.image().clone();
    let publisher = upstream.facade(&format!(r#"{{"gateway": "{n}", "api": "{n}"}}"#, n = node.url()));
    for layer in &image.layers {
        assert_eq!(sha256(&get(publisher.addr, &blob_path(&layer.digest)).body), layer.digest);
    }
    for layer in &image.layers {
        wait_until("published", Duration::from_secs(60), || upstream.record(&layer.digest).is_some());
    }

    // A gateway that sends the head and then nothing: upstream after ipfs.gatewayTimeoutMs; the
    // record stays (a slow node is no lie).
    let stalling = FaultProxy::start(node.http, vec![Fault::StallAfter(200, Duration::from_secs(120)); 4]);
    let slow = upstream.facade(&format!(r#"{{"gateway": "http://{}", "gatewayTimeoutMs": 1000}}"#, stalling.addr()));
    let stalled_layer = &image.layers[2];
    let asked = Instant::now();
    let served = get(slow.addr, &blob_path(&stalled_layer.digest));
    assert_eq!((served.status, sha256(&served.body)), (200, stalled_layer.digest.clone()), "served from upstream");
    // The gateway stalls for 120 s per connection; only the 1 s bound gets the answer out sooner.
    assert!(asked.elapsed() < Duration::from_secs(60), "the stalled gateway was given up on after ipfs.gatewayTimeoutMs, not waited out ({:?})", asked.elapsed());
    assert_eq!(upstream.registry.blob_gets(&stalled_layer.digest), 2, "the publisher's GET and this fallback");
    assert!(upstream.record(&stalled_layer.digest).is_some(), "a stalled gateway does not cost the record");

    // A gateway that cuts the body: the rest is asked for with Range, from the same gateway.
    upstream.registry.kill();
    let cut_layer = &image.layers[1];
    let cid = upstream.record(&cut_layer.digest).unwrap()["cid"].as_str().unwrap().to_owned();
    let cutting = FaultProxy::start(node.http, vec![Fault::CutAfter(300 << 10), Fault::Pass, Fault::Pass]);
    let resuming = upstream.facade(&format!(r#"{{"gateway": "http://{}"}}"#, cutting.addr()));
    let served = get(resuming.addr, &blob_path(&cut_layer.digest));
    assert_eq!((served.status, sha256(&served.body)), (200, cut_layer.digest.clone()), "whole, from IPFS, with upstream down");
    assert!(node.requests("GET", &format!("/ipfs/{cid}")).contains(&206), "the rest was asked for with Range:\n{}", node.log());
}

#[test]
fn an_ipfs_api_that_is_down_or_answers_garbage_costs_a_pull_nothing() {
    let upstream = Upstream::new();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let garbage = Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nlocation / {{ return 200 'not kubo'; }}"));
    let image = upstream.layout.image().clone();
    for (api, layer) in [(format!("http://{closed}"), &image.layers[0]), (format!("http://{}", garbage.host()), &image.layers[1])] {
        let facade = upstream.facade(&format!(r#"{{"api": "{api}"}}"#));
        let served = get(facade.addr, &blob_path(&layer.digest));
        assert_eq!((served.status, sha256(&served.body)), (200, layer.digest.clone()), "{api}: the pull is served");
        wait_until(&format!("{api}: the failed publication is counted"), Duration::from_secs(60), || publications(&facade, "failed") >= 1.0);
        assert!(upstream.record(&layer.digest).is_none(), "{api}: nothing recorded");
    }
}

#[test]
fn a_fleet_starting_the_same_image_at_once_fetches_each_blob_from_upstream_once() {
    let upstream = Upstream::new();
    let node_a = KuboNode::start(&[]);
    let node_b = KuboNode::start(&[&node_a]);
    let node_c = KuboNode::start(&[&node_a, &node_b]);
    let facades: Vec<TestServer> = [&node_a, &node_b, &node_c].iter().map(|node| upstream.facade(&format!(r#"{{"gateway": "{n}", "api": "{n}"}}"#, n = node.url()))).collect();
    let image = upstream.layout.image().clone();
    // Three nodes start the same workspace image at the same moment.
    let pulls: Vec<_> = facades
        .iter()
        .enumerate()
        .map(|(i, facade)| {
            let (source, out) = (format!("docker://{}/mirror/up/{REPO}:v1", facade.addr), upstream.dir.path().join(format!("at-once-{i}")));
            std::thread::spawn(move || {
                run(skopeo().args(["copy", "--src-tls-verify=false", &source, &format!("dir:{}", out.display())]));
                out
            })
        })
        .collect();
    for pull in pulls {
        image::assert_dir_copy(&pull.join().unwrap(), &image);
    }
    for (digest, _) in upstream.digests().iter().skip(1) {
        assert_eq!(upstream.registry.blob_gets(digest), 1, "{digest}: one node claimed it, the others read its publication");
    }
}

#[test]
fn a_node_that_reads_no_gateway_never_waits_on_a_peer_s_claim() {
    let upstream = Upstream::new();
    let node = KuboNode::start(&[]);
    let layer = upstream.layout.image().layers[1].clone();
    // Another node claims the blob and never publishes it.
    upstream.redis.cli(&["SET", &format!("rf:fill:{}", layer.digest), "another-node", "PX", "600000"]);
    let publish_only = upstream.facade(&format!(r#"{{"api": "{}"}}"#, node.url()));
    let asked = Instant::now();
    let served = get(publish_only.addr, &blob_path(&layer.digest));
    assert_eq!((served.status, sha256(&served.body)), (200, layer.digest.clone()));
    // peerWaitMs is 60 s by default: a node that cannot read IPFS has nothing to wait for.
    assert!(asked.elapsed() < Duration::from_secs(30), "waited {:?} for a publication it could not read", asked.elapsed());
    assert_eq!(upstream.redis.cli(&["GET", &format!("rf:fill:{}", layer.digest)]), "another-node", "the other node's claim is its own");
}

#[test]
fn the_prefetch_command_publishes_what_it_fetched_before_it_exits() {
    let upstream = Upstream::new();
    let node = KuboNode::start(&[]);
    let cache = upstream.dir.path().join("prefetched");
    let config = upstream.dir.path().join("prefetch.json");
    let keys = format!(
        r#""registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "mirrors": {{"up": "{h}"}}, "redis": {{"url": "{r}"}}, "ipfs": {{"gateway": "{n}", "api": "{n}"}}"#,
        h = upstream.registry.host(),
        r = upstream.redis.url(),
        n = node.url()
    );
    std::fs::write(&config, format!(r#"{{"cacheDir": {:?}, {keys}}}"#, cache.display().to_string())).unwrap();
    let output = support::tools::facade_binary().arg("prefetch").arg("--config").arg(&config).arg(format!("mirror/up/{REPO}:v1")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for (digest, size) in upstream.digests() {
        assert_eq!(upstream.record(&digest).and_then(|r| r["size"].as_u64()), Some(size), "{digest} published before the command exited");
    }
    assert_eq!(upstream.redis.cli(&["KEYS", "rf:fill:*"]), "", "no claim is left behind");
}
