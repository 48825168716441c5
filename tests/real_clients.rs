//! Real pulling clients against the facade: skopeo copies imported images (every digest
//! checked) and containerd pulls and unpacks them (the unpacked files checked).

mod support;

use support::containerd::Containerd;
use support::image::{self, ImageOptions};
use support::server::{import, TestServer};
use support::tools::{run, sha256_file, skopeo};

#[test]
fn skopeo_copies_oci_and_docker_images_with_every_digest_matching() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let oci = image::write_layout(&dir.path().join("oci"), &ImageOptions { layers: vec![4 << 20, 1 << 10, 300 << 10], ..ImageOptions::default() });
    let docker = image::write_layout(&dir.path().join("docker"), &ImageOptions { docker: true, seed: 3, ..ImageOptions::default() });
    import(&cache, &oci.dir, "skopeo/oci", Some("v1"));
    import(&cache, &docker.dir, "skopeo/docker", Some("v1"));
    let server = TestServer::start_on(&cache, "");
    for (name, layout) in [("skopeo/oci", &oci), ("skopeo/docker", &docker)] {
        let source = format!("docker://{}/{name}:v1", server.addr);
        let out = dir.path().join(format!("out-{}", name.replace('/', "-")));
        run(skopeo().args(["copy", "--src-tls-verify=false", &source, &format!("dir:{}", out.display())]));
        support::image::assert_dir_copy(&out, layout.image());
        let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false", &source]));
        assert_eq!(raw.stdout, std::fs::read(layout.blob_path(&layout.image().manifest.digest)).unwrap());
    }
}

#[test]
fn skopeo_copies_a_multi_platform_index_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let options = ImageOptions { platforms: vec!["linux/amd64".into(), "linux/arm64".into()], ..ImageOptions::default() };
    let layout = image::write_layout(&dir.path().join("multi"), &options);
    import(&cache, &layout.dir, "multi", None);
    let server = TestServer::start_on(&cache, "");
    let out = dir.path().join("copy");
    run(skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/multi:latest", server.addr),
        &format!("oci:{}:latest", out.display()),
    ]));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], layout.top.digest.as_str(), "the index keeps its digest");
    for built in &layout.images {
        for blob in built.layers.iter().chain([&built.config, &built.manifest]) {
            assert_eq!(sha256_file(&out.join("blobs/sha256").join(blob.hex())), blob.hex());
        }
    }
}

#[test]
fn containerd_pulls_and_unpacks_an_imported_image_and_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let options = ImageOptions { layers: vec![2 << 20, 10, 700 << 10], file_prefix: "app".into(), seed: 21, ..ImageOptions::default() };
    let layout = image::write_layout(&dir.path().join("app"), &options);
    import(&cache, &layout.dir, "team/app", Some("1.0"));
    let server = TestServer::start_on(&cache, "");
    let containerd = Containerd::start();

    let reference = format!("{}/team/app:1.0", server.addr);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &reference]);
    let check = containerd.ctr_ok(&["image", "check"]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("complete"), "{}", String::from_utf8_lossy(&check.stdout));
    containerd.with_mounted(&reference, |root| {
        for (path, payload) in &layout.image().files {
            let unpacked = std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path} in the unpacked image: {e}"));
            assert!(unpacked == *payload, "{path} has the layer's bytes");
        }
    });

    let demo = format!("{}/demo:latest", server.addr);
    containerd.ctr_ok(&["image", "pull", "--plain-http", &demo]);
    let greeting = containerd.with_mounted(&demo, |root| std::fs::read_to_string(root.join("hello.txt")).unwrap());
    assert!(greeting.starts_with("Hello from the registry-facade demo image"));
}
