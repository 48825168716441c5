//! Many nodes: Redis (a real `redis-server`) for specs, compositions and tag answers; Redis
//! going away and coming back; IPFS gateways (nginx serving files under /ipfs/<cid>, CIDs made
//! by Debian's `ipfs_cid`) that deliver, lie, or are down.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest as _;
use support::client::{get, send, Reply};
use support::image::{self, ImageOptions, Layout};
use support::nginx::Nginx;
use support::redis::{RedisCluster, RedisServer};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{spawn_binary_with_admin, TestServer};
use support::tools::ipfs_cid;
use support::wait_until;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A registry holding a base and an IDE image, and the spec that composes them.
struct Images {
    dir: tempfile::TempDir,
    registry: ReferenceRegistry,
    layout: Layout,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let registry = ReferenceRegistry::start(RegistryAuth::None);
        let layout = image::write_layout(&dir.path().join("base"), &ImageOptions { layers: vec![300 << 10, 200 << 10], seed: 51, ..ImageOptions::default() });
        registry.push(&layout, "base/img", "latest");
        let ide = image::write_layout(&dir.path().join("ide"), &ImageOptions { layers: vec![100 << 10], env: vec!["GITPOD_ENV_SET_EDITOR=code".into()], seed: 52, ..ImageOptions::default() });
        registry.push(&ide, "ide/img", "latest");
        Images { dir, registry, layout }
    }

    fn spec(&self) -> Value {
        json!({"baseRef": format!("{}/base/img:latest", self.registry.host()), "ideRef": format!("{}/ide/img:latest", self.registry.host())})
    }

    fn config(&self, redis: Option<&RedisServer>, extra: &str) -> String {
        let redis = redis.map(|r| format!(r#", "redis": {{"url": "{}", "timeoutMs": 300}}"#, r.url())).unwrap_or_default();
        let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
        format!(
            r#""adminListen": "127.0.0.1:0", "registries": {{"{h}": {{"endpoint": "http://{h}"}}}}, "mirrors": {{"up": "{h}"}},
            "upstream": {{"retry": {{"attempts": 3, "initialDelayMs": 20, "maxDelayMs": 100}}}}{redis}{extra}"#,
            h = self.registry.host()
        )
    }
}

fn put(admin: std::net::SocketAddr, id: &str, spec: &Value) -> Reply {
    send(admin, "PUT", &format!("/admin/specs/{id}"), spec.to_string().as_bytes())
}

fn digest_of(addr: std::net::SocketAddr, name: &str) -> Reply {
    get(addr, &format!("/v2/{name}/manifests/latest"))
}

/// The same spec-store behaviour, whatever stores the specs.
fn spec_store_conformance(facade: &TestServer, images: &Images) {
    let admin = facade.admin.unwrap();
    assert_eq!(get(admin, "/admin/specs/ws-c").status, 404);
    assert_eq!(put(admin, "ws-c", &images.spec()).status, 201);
    assert_eq!(serde_json::from_slice::<Value>(&get(admin, "/admin/specs/ws-c").body).unwrap(), images.spec());
    assert_eq!(put(admin, "ws-c", &images.spec()).status, 200);
    let served = digest_of(facade.addr, "remote/ws-c");
    assert_eq!(served.status, 200);
    assert_eq!(send(admin, "DELETE", "/admin/specs/ws-c", b"").status, 204);
    assert_eq!(get(admin, "/admin/specs/ws-c").status, 404);
    assert_eq!(digest_of(facade.addr, "remote/ws-c").error_code(), "NAME_UNKNOWN");
    assert_eq!(send(admin, "DELETE", "/admin/specs/ws-c", b"").status, 404);
}

#[test]
fn the_spec_store_behaves_the_same_in_memory_and_in_redis() {
    let images = Images::new();
    spec_store_conformance(&TestServer::start(&images.config(None, "")), &images);
    let redis = RedisServer::start();
    let facade = TestServer::start(&images.config(Some(&redis), ""));
    spec_store_conformance(&facade, &images);
    // An orchestrator writing straight to Redis is served too.
    assert_eq!(redis.cli(&["SET", "rf:spec:from-orchestrator", &images.spec().to_string()]), "OK");
    assert_eq!(digest_of(facade.addr, "remote/from-orchestrator").status, 200);
    // A spec that does not validate is the writer's bug: a 500, and the others keep working.
    assert_eq!(redis.cli(&["SET", "rf:spec:broken", r#"{"baseRef": 7}"#]), "OK");
    let broken = digest_of(facade.addr, "remote/broken");
    assert_eq!((broken.status, broken.error_code().as_str()), (500, "UNKNOWN"));
    assert_eq!(digest_of(facade.addr, "remote/from-orchestrator").status, 200);
}

#[test]
fn two_facade_processes_share_specs_and_compositions_through_redis() {
    let images = Images::new();
    let redis = RedisServer::start();
    let start = |n: usize| {
        let config = images.dir.path().join(format!("node-{n}.json"));
        let cache = images.dir.path().join(format!("cache-{n}"));
        std::fs::write(&config, format!(r#"{{"listen": "127.0.0.1:0", "cores": 1, "cacheDir": {:?}, {}}}"#, cache.display().to_string(), images.config(Some(&redis), ""))).unwrap();
        spawn_binary_with_admin(&[std::ffi::OsStr::new("--config"), config.as_os_str()])
    };
    let (_a, a, a_admin) = start(1);
    let (_b, b, _) = start(2);
    assert_eq!(put(a_admin.unwrap(), "ws-shared", &images.spec()).status, 201);
    let on_a = digest_of(a, "remote/ws-shared");
    let on_b = digest_of(b, "remote/ws-shared");
    assert_eq!(on_a.status, 200);
    assert_eq!(on_b.body, on_a.body, "node B serves what node A composed");
    for repo in ["base/img", "ide/img"] {
        let gets = images.registry.access_entries().iter().filter(|e| e.method == "GET" && e.uri == format!("/v2/{repo}/manifests/latest")).count();
        assert_eq!(gets, 1, "{repo}: node B resolved nothing itself");
    }
    let manifest: Value = serde_json::from_slice(&on_b.body).unwrap();
    let config = get(b, &format!("/v2/remote/ws-shared/blobs/{}", manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!((config.status, sha256(&config.body)), (200, manifest["config"]["digest"].as_str().unwrap().to_owned()));
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(sha256(&get(b, &format!("/v2/remote/ws-shared/blobs/{layer}")).body), layer, "and its blobs");
}

#[test]
fn a_redis_cluster_holds_the_shared_state_across_its_nodes() {
    let images = Images::new();
    let cluster = RedisCluster::start();
    let redis = format!(r#""redis": {{"url": "{}", "cluster": true, "timeoutMs": 1000}}"#, cluster.url());
    let facade = TestServer::start(&images.config(None, &redis));
    let admin = facade.admin.unwrap();
    wait_until("ready", Duration::from_secs(20), || get(admin, "/ready").status == 200);
    spec_store_conformance(&facade, &images);
    let mut digests = Vec::new();
    for n in 0..6 {
        assert_eq!(put(admin, &format!("ws-{n}"), &images.spec()).status, 201);
        digests.push(digest_of(facade.addr, &format!("remote/ws-{n}")).body);
    }
    let holding = cluster.keys_per_node().into_iter().filter(|&keys| keys > 0).count();
    assert!(holding >= 2, "keys are spread over the cluster's nodes: {:?}", cluster.keys_per_node());
    assert_eq!(cluster.cli(&["SET", "rf:spec:from-orchestrator", &images.spec().to_string()]), "OK");
    assert_eq!(digest_of(facade.addr, "remote/from-orchestrator").body, digests[0]);

    let resolved_before = images.registry.access_entries().len();
    let second = TestServer::start(&images.config(None, &redis));
    // Until it has reached the cluster a node answers 503, as it should; this asks once it has.
    wait_until("the second node ready", Duration::from_secs(20), || get(second.admin.unwrap(), "/ready").status == 200);
    for (n, digest) in digests.iter().enumerate() {
        assert_eq!(&digest_of(second.addr, &format!("remote/ws-{n}")).body, digest, "a second node serves ws-{n} from the cluster");
    }
    assert_eq!(images.registry.access_entries().len(), resolved_before, "without asking upstream for manifests");
}

#[test]
fn with_redis_down_the_facade_serves_what_it_can_and_recovers() {
    let images = Images::new();
    let mut redis = RedisServer::start();
    let facade = TestServer::start(&images.config(Some(&redis), ""));
    let admin = facade.admin.unwrap();
    wait_until("ready", Duration::from_secs(20), || get(admin, "/ready").status == 200);
    assert_eq!(put(admin, "ws-hot", &images.spec()).status, 201);
    let hot = digest_of(facade.addr, "remote/ws-hot");
    assert_eq!(hot.status, 200);

    redis.kill();
    wait_until("not ready", Duration::from_secs(20), || get(admin, "/ready").status == 503);
    let ready = get(admin, "/ready");
    assert!(ready.json()["reason"].as_str().unwrap().contains("Redis"), "{:?}", ready.json());
    assert_eq!(get(admin, "/live").status, 200, "alive all the same");
    let started = Instant::now();
    assert_eq!(digest_of(facade.addr, "remote/ws-hot").body, hot.body, "what is local keeps working");
    let unknown = digest_of(facade.addr, "remote/ws-new");
    assert_eq!((unknown.status, unknown.error_code().as_str()), (503, "UNAVAILABLE"), "an unknown id cannot be looked up: 503, not 404");
    assert_eq!(put(admin, "ws-new", &images.spec()).status, 503, "a spec is not stored on one node only");
    assert_eq!(get(facade.addr, "/v2/mirror/up/base/img/manifests/latest").status, 200, "mirrors work from upstream");
    assert!(started.elapsed() < Duration::from_secs(5), "nothing hung: {:?}", started.elapsed());

    redis.restart();
    wait_until("ready again", Duration::from_secs(20), || get(admin, "/ready").status == 200);
    assert_eq!(put(admin, "ws-new", &images.spec()).status, 201);
    assert_eq!(digest_of(facade.addr, "remote/ws-new").body, hot.body);
}

#[test]
fn ipfs_gateways_are_used_first_and_verified() {
    let mut images = Images::new();
    let redis = RedisServer::start();
    let layers = images.layout.image().layers.clone();
    let gateway_dir = images.dir.path().join("gateway");
    std::fs::create_dir_all(gateway_dir.join("ipfs")).unwrap();
    // Layer 0's CID serves its bytes; layer 1's CID serves layer 0's bytes (a lying gateway).
    let good = images.layout.blob_path(&layers[0].digest);
    let good_cid = ipfs_cid(&good);
    std::fs::copy(&good, gateway_dir.join("ipfs").join(&good_cid)).unwrap();
    let lying_cid = ipfs_cid(&images.layout.blob_path(&layers[1].digest));
    std::fs::copy(&good, gateway_dir.join("ipfs").join(&lying_cid)).unwrap();
    redis.cli(&["SET", &format!("rf:cid:{}", layers[0].digest), &good_cid]);
    redis.cli(&["SET", &format!("rf:cid:{}", layers[1].digest), &lying_cid]);
    let root = gateway_dir.display().to_string();
    let gateway = Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nroot {root};"));
    let facade = TestServer::start(&images.config(Some(&redis), &format!(r#""ipfs": {{"gateway": "http://{}"}}"#, gateway.host())));
    let blob = |digest: &str| get(facade.addr, &format!("/v2/mirror/up/base/img/blobs/{digest}"));

    let lied_to = blob(&layers[1].digest);
    assert_eq!(sha256(&lied_to.body), layers[1].digest, "wrong bytes from the gateway are rejected, upstream used");
    assert_eq!(images.registry.blob_gets(&layers[1].digest), 1);

    images.registry.kill();
    let from_ipfs = blob(&layers[0].digest);
    assert_eq!((from_ipfs.status, sha256(&from_ipfs.body)), (200, layers[0].digest.clone()), "served from IPFS with upstream down");
    assert!(gateway.access_log().iter().any(|l| l.contains(&format!("/ipfs/{good_cid}")) && l.contains(" 200 ")));

    images.registry.restart();
    let down = TestServer::start(&images.config(Some(&redis), r#""ipfs": {"gateway": "http://127.0.0.1:1"}"#));
    let fallback = get(down.addr, &format!("/v2/mirror/up/base/img/blobs/{}", layers[0].digest));
    assert_eq!(sha256(&fallback.body), layers[0].digest, "a gateway that is down: upstream");
}
