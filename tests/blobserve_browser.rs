//! Blobserve in a real browser: headless Chromium loads the test IDE's front end
//! (`support/ide-frontend/`: index.html, a stylesheet, an image and a script, by relative
//! paths) from a Gitpod-shaped blobserve config, for every kind of image the facade serves
//! (local, mirrored, composed, IPFS), and the test reads the rendered DOM for the marker the
//! script writes once everything loaded. Screenshots of the rendered pages are kept under
//! `target/test-artifacts/` (`blobserve-<kind>.png`) for people to look at.

mod support;


use serde_json::json;
use support::chromium;
use support::client::{get, send};
use support::ide::{self, BUILD_ID};
use support::nginx::Nginx;
use support::redis::RedisServer;
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{import, TestServer};
use support::tools::ipfs_cid;

const MARKER: &str = "BLOBSERVE-MARKER css=true img=true";

/// Loads `url` in Chromium and checks the front end rendered: script ran, stylesheet and
/// image loaded, the build id replaced when the image was prepared.
fn assert_renders(url: &str) -> String {
    let dom = chromium::dump_dom(url);
    assert!(dom.contains(MARKER), "{url}: the front end did not render:\n{dom}");
    assert!(dom.contains(&format!("build={BUILD_ID}")), "{url}: the replacement is missing:\n{dom}");
    dom
}

fn screenshot(url: &str, kind: &str) {
    chromium::screenshot(url, &ide::artifacts_dir().join(format!("blobserve-{kind}.png")));
}

#[test]
fn chromium_renders_the_front_end_of_a_local_image_and_the_inline_vars_a_proxy_adds() {
    let temp = tempfile::tempdir().unwrap();
    let layout = ide::ide_layout(&temp.path().join("ide"), "1.0", "local");
    let facade = TestServer::start(&ide::blobserve_key(json!({"team/ide": ide::ide_repo()}), json!({})));
    import(&facade.cache_dir, &layout.dir, "team/ide", Some("1.0"));
    let blobserve = facade.blobserve.expect("a blobserve listener");
    let url = format!("http://{blobserve}/team/ide:1.0/");

    let dom = assert_renders(&url);
    assert!(dom.contains("ide={{IDE_URL}}"), "without the header index.html is served as it is:\n{dom}");

    // Gitpod's ws-proxy sends the inline variables; nginx plays it here.
    let vars = r#"{"ide":"https://ide.example/v7","supervisor":"sup-7"}"#;
    let proxy = Nginx::start(|port, _| {
        format!("listen 127.0.0.1:{port};\nlocation / {{ proxy_pass http://{blobserve}; proxy_set_header X-BlobServe-InlineVars '{vars}'; }}")
    });
    let proxied = format!("http://{}/team/ide:1.0/", proxy.addr());
    let dom = assert_renders(&proxied);
    assert!(dom.contains("ide=https://ide.example/v7 supervisor=sup-7"), "the substituted values reached the page:\n{dom}");
    screenshot(&proxied, "local");
}

#[test]
fn chromium_renders_the_front_end_of_a_mirrored_image_and_of_a_composed_one() {
    let temp = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let host = registry.host();
    registry.push(&ide::ide_layout(&temp.path().join("ide"), "1.0", "mirrored"), "team/ide", "1.0");
    let base = support::image::write_layout_of_layers(&temp.path().join("base"), "latest", &[support::image::layer_tar(&[support::image::Entry::File("etc/hostname", b"ws\n")])], &[]);
    registry.push(&base, "base/os", "latest");
    let repos = json!({format!("{host}/team/ide"): ide::ide_repo(), "remote/ws-1": {"workdir": "/ide/code", "replacements": ide::ide_repo()["replacements"]}});
    let config = format!(
        r#""adminListen": "127.0.0.1:0", "registries": {{"{host}": {{"endpoint": "http://{host}"}}}}, "mirrors": {{"up": "{host}"}}, {}"#,
        ide::blobserve_key(repos, json!({}))
    );
    let facade = TestServer::start(&config);
    let blobserve = facade.blobserve.unwrap();

    let mirrored = format!("http://{blobserve}/{host}/team/ide:1.0/");
    assert_renders(&mirrored);
    screenshot(&mirrored, "mirrored");

    // A workspace image composed from a spec: the base's layers, then the IDE's.
    let spec = json!({"baseRef": format!("{host}/base/os:latest"), "ideRef": format!("{host}/team/ide:1.0")});
    assert_eq!(send(facade.admin.unwrap(), "PUT", "/admin/specs/ws-1", spec.to_string().as_bytes()).status, 201);
    let composed = format!("http://{blobserve}/remote/ws-1:latest/");
    assert_renders(&composed);
    screenshot(&composed, "composed");
    let from_base = get(blobserve, "/remote/ws-1:latest/from-base.txt");
    assert_eq!((from_base.status, from_base.body.as_slice()), (200, &b"from the base layer\n"[..]), "every layer of the composed image is applied");
}

#[test]
fn chromium_renders_the_front_end_of_an_image_whose_layers_come_from_ipfs() {
    let temp = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let host = registry.host();
    let layout = ide::ide_layout(&temp.path().join("ide"), "1.0", "ipfs");
    registry.push(&layout, "team/ide", "1.0");
    let redis = RedisServer::start();
    let gateway_dir = temp.path().join("gateway");
    std::fs::create_dir_all(gateway_dir.join("ipfs")).unwrap();
    let layers = layout.image().layers.clone();
    let mut cids = Vec::new();
    for layer in &layers {
        let blob = layout.blob_path(&layer.digest);
        let cid = ipfs_cid(&blob);
        std::fs::copy(&blob, gateway_dir.join("ipfs").join(&cid)).unwrap();
        redis.cli(&["SET", &format!("rf:cid:{}", layer.digest), &cid]);
        cids.push(cid);
    }
    let root = gateway_dir.display().to_string();
    let gateway = Nginx::start(|port, _| format!("listen 127.0.0.1:{port};\nroot {root};"));
    let config = format!(
        r#""registries": {{"{host}": {{"endpoint": "http://{host}"}}}}, "mirrors": {{"up": "{host}"}}, "redis": {{"url": "{}"}}, "ipfs": {{"gateway": "http://{}"}}, {}"#,
        redis.url(),
        gateway.host(),
        ide::blobserve_key(json!({format!("{host}/team/ide"): ide::ide_repo()}), json!({}))
    );
    let facade = TestServer::start(&config);
    let url = format!("http://{}/{host}/team/ide:1.0/", facade.blobserve.unwrap());
    assert_renders(&url);
    screenshot(&url, "ipfs");
    for (layer, cid) in layers.iter().zip(&cids) {
        assert_eq!(registry.blob_gets(&layer.digest), 0, "layer {} came from IPFS, not the registry", layer.digest);
        assert!(gateway.access_log().iter().any(|l| l.contains(&format!("/ipfs/{cid}")) && l.contains(" 200 ")), "{:?}", gateway.access_log());
    }
}
