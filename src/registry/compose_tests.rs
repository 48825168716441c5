//! Composition tests: golden manifests and configs (exact bytes, checked in under
//! tests/golden: a change to them changes every composed digest clients have cached; set
//! UPDATE_GOLDEN=1 to rewrite them after a deliberate change, and review them with `jq .`),
//! and the rules one by one.

use super::*;
use crate::oci::media_type::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_ZSTD, OCI_MANIFEST};

fn digest(label: &str) -> Digest {
    Digest::sha256_of(label.as_bytes())
}

fn layer(label: &str, media_type: &str, size: u64) -> Descriptor {
    Descriptor::new(media_type, digest(label), size)
}

fn image(reference: &str, manifest_type: &str, layers: &[(&str, &str)], config: Value) -> ResolvedImage {
    let config_type = if manifest_type == DOCKER_MANIFEST { DOCKER_CONFIG } else { OCI_CONFIG };
    let mut config = config;
    let diff_ids: Vec<Value> = layers.iter().map(|(label, _)| Value::String(digest(&format!("{label}-diff")).to_string())).collect();
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let bytes = serde_json::to_vec(&config).unwrap();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_owned()),
        config: Descriptor::new(config_type, Digest::sha256_of(&bytes), bytes.len() as u64),
        layers: layers.iter().enumerate().map(|(i, (label, media))| layer(label, media, 1000 * (i as u64 + 1))).collect(),
        annotations: None,
        extra: Default::default(),
    };
    ResolvedImage {
        reference: reference.to_owned(),
        manifest_media_type: manifest_type.to_owned(),
        manifest,
        config,
        source: BlobSource::Upstream(RemoteRepository::new("registry.example", reference)),
    }
}

fn docker_base() -> ResolvedImage {
    image(
        "base",
        DOCKER_MANIFEST,
        &[("base-0", DOCKER_LAYER_GZIP), ("base-1", DOCKER_LAYER_GZIP)],
        json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin", "HOME=/root", "PATH=/usr/local/bin:/usr/bin"], "Cmd": ["bash"],
                       "Labels": {"maintainer": "someone"}, "Healthcheck": {"Test": ["CMD", "true"]}},
            "container_config": {"Hostname": "abc"},
            "history": [{"created_by": "ADD rootfs"}, {"created_by": "RUN apt-get install", "empty_layer": false}]
        }),
    )
}

fn ide() -> ResolvedImage {
    image(
        "ide",
        OCI_MANIFEST,
        &[("ide-0", OCI_LAYER_GZIP), ("ide-1", OCI_LAYER_TAR)],
        json!({"config": {"Env": ["GITPOD_ENV_APPEND_PATH=/ide/bin:", "GITPOD_ENV_SET_EDITOR=code", "UNRELATED=dropped"]}}),
    )
}

fn supervisor() -> ResolvedImage {
    image(
        "supervisor",
        OCI_MANIFEST,
        &[("sup-0", OCI_LAYER_GZIP), ("sup-1", OCI_LAYER_GZIP)],
        json!({"config": {"Labels": {SKIP_N_LABEL: "1"}, "Env": ["GITPOD_ENV_PREPEND_PATH=:/supervisor"]}}),
    )
}

fn static_file() -> LoneLayer {
    LoneLayer {
        descriptor: layer("static-file", OCI_LAYER_GZIP, 77),
        diff_id: digest("static-file-diff"),
        source: BlobSource::Cache,
        created_by: "registry-facade: static layer /etc/layers/tools.tar.gz".into(),
    }
}

fn content() -> LoneLayer {
    let bytes = Bytes::from_static(b"content tar");
    LoneLayer {
        descriptor: Descriptor::new(OCI_LAYER_TAR, Digest::sha256_of(&bytes), bytes.len() as u64),
        diff_id: Digest::sha256_of(&bytes),
        source: BlobSource::Inline(bytes),
        created_by: "registry-facade: content layer".into(),
    }
}

/// The composed config's bytes, found through the manifest's config descriptor.
fn config_of(composed: &Composition) -> Bytes {
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    match &composed.blobs[&manifest.config.digest] {
        BlobSource::Inline(bytes) => bytes.clone(),
        other => panic!("the config is carried inline, not {other:?}"),
    }
}

fn full_composition(base: &ResolvedImage) -> Composition {
    let (ide, supervisor, file, content) = (ide(), supervisor(), static_file(), content());
    let addons = [
        Addon::Layer(&file),
        Addon::Image { image: &ide, role: "ide" },
        Addon::Image { image: &supervisor, role: "supervisor" },
        Addon::Layer(&content),
    ];
    compose(base, "registry.example/base:1", &addons).unwrap()
}

fn check_golden(name: &str, actual: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 once)", path.display()));
    assert!(actual == expected.as_slice(), "{name} differs from the golden file:\n{}", String::from_utf8_lossy(actual));
}

#[test]
fn golden_docker_base_with_every_kind_of_addon() {
    let composed = full_composition(&docker_base());
    check_golden("compose-docker-manifest.json", &composed.manifest);
    check_golden("compose-docker-config.json", &config_of(&composed));
}

#[test]
fn golden_oci_base() {
    let base = image("oci-base", OCI_MANIFEST, &[("oci-0", DOCKER_LAYER_GZIP)], json!({"os": "linux", "architecture": "arm64"}));
    let composed = full_composition(&base);
    check_golden("compose-oci-manifest.json", &composed.manifest);
    check_golden("compose-oci-config.json", &config_of(&composed));
}

#[test]
fn layer_order_media_types_and_diff_ids() {
    let composed = full_composition(&docker_base());
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    let labels: Vec<Digest> = ["base-0", "base-1", "static-file", "ide-0", "ide-1", "sup-1"].iter().map(|l| digest(l)).collect();
    let got: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(&got[..6], &labels[..], "base, static, ide, supervisor (first layer skipped)");
    assert_eq!(got[6], Digest::sha256_of(b"content tar"), "content last");
    let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(
        types,
        [DOCKER_LAYER_GZIP, DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_TAR],
        "image layers keep their own types; the static and content layers are written in the manifest's family"
    );
    assert_eq!(manifest.media_type.as_deref(), Some(OCI_MANIFEST), "schema2 cannot list the IDE's OCI layers");
    assert_eq!(manifest.config.media_type, OCI_CONFIG);
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), manifest.layers.len());
    assert_eq!(diff_ids[5], Value::String(digest("sup-1-diff").to_string()));
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 2 + 5, "one history entry per added layer");
    assert_eq!(manifest.config.digest, Digest::sha256_of(&config_of(&composed)));
    assert_eq!(manifest.config.size, config_of(&composed).len() as u64);
    assert_eq!(composed.blobs[&digest("static-file")], BlobSource::Cache);
    assert_eq!(composed.blobs.len(), 8, "seven layers and the config");
}

#[test]
fn env_directives_have_gitpods_semantics() {
    let composed = full_composition(&docker_base());
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    let env: Vec<&str> = config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // PATH appears twice in the base: first position, last value; APPEND puts /ide/bin: in front,
    // PREPEND puts :/supervisor after; SET adds EDITOR; other addon env is not copied.
    assert_eq!(env, ["PATH=/ide/bin:/usr/local/bin:/usr/bin:/supervisor", "HOME=/root", "EDITOR=code"]);
}

#[test]
fn without_directives_env_is_untouched() {
    let base = docker_base();
    let plain = image("plain", OCI_MANIFEST, &[("p-0", OCI_LAYER_GZIP)], json!({"config": {"Env": ["FOO=bar"]}}));
    let composed = compose(&base, "b", &[Addon::Image { image: &plain, role: "ide" }]).unwrap();
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    assert_eq!(config["config"]["Env"], base.config["config"]["Env"], "duplicates and order as they were");
}

#[test]
fn directives_without_a_previous_value_and_empty_values() {
    let base = image("b", OCI_MANIFEST, &[("b-0", OCI_LAYER_GZIP)], json!({}));
    let addon = image("a", OCI_MANIFEST, &[], json!({"config": {"Env": [
        "GITPOD_ENV_APPEND_A=front", "GITPOD_ENV_PREPEND_B=back", "GITPOD_ENV_SET_C=", "GITPOD_ENV_APPEND_D=", "GITPOD_ENV_SET_=x"]}}));
    let composed = compose(&base, "b", &[Addon::Image { image: &addon, role: "ide" }]).unwrap();
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    assert_eq!(config["config"]["Env"], json!(["A=front", "B=back", "C="]));
}

#[test]
fn unknown_fields_survive_and_subject_is_dropped() {
    let mut base = docker_base();
    base.manifest.annotations = Some([("org.example/kept".to_owned(), "yes".to_owned())].into());
    base.manifest.extra.insert("subject".into(), json!({"digest": "x"}));
    let composed = full_composition(&base);
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    assert_eq!(config["container_config"]["Hostname"], "abc");
    assert_eq!(config["config"]["Healthcheck"]["Test"][0], "CMD");
    let manifest: Value = serde_json::from_slice(&composed.manifest).unwrap();
    assert_eq!(manifest["annotations"]["org.example/kept"], "yes");
    assert_eq!(manifest["annotations"][SIZE_ANNOTATION], "3000");
    assert_eq!(manifest["annotations"][REF_ANNOTATION], "registry.example/base:1");
    assert!(manifest.get("subject").is_none());
}

#[test]
fn skip_n_values() {
    let base = image("b", OCI_MANIFEST, &[("b-0", OCI_LAYER_GZIP)], json!({}));
    let layers_after = |label: &str| {
        let addon = image("a", OCI_MANIFEST, &[("a-0", OCI_LAYER_GZIP), ("a-1", OCI_LAYER_GZIP)], json!({"config": {"Labels": {SKIP_N_LABEL: label}}}));
        compose(&base, "b", &[Addon::Image { image: &addon, role: "ide" }])
            .map(|c| serde_json::from_slice::<ImageManifest>(&c.manifest).unwrap().layers.len() - 1)
    };
    assert_eq!(layers_after("0"), Ok(2));
    assert_eq!(layers_after("1"), Ok(1));
    assert_eq!(layers_after("10"), Ok(0), "skipping more than there is leaves none");
    for bad in ["-1", "abc", "70000", ""] {
        assert!(matches!(layers_after(bad), Err(ComposeError::BadSkipN { .. })), "{bad:?}");
    }
}

#[test]
fn a_config_whose_diff_ids_disagree_is_refused() {
    let base = image("b", OCI_MANIFEST, &[("b-0", OCI_LAYER_GZIP)], json!({}));
    let mut addon = image("a", OCI_MANIFEST, &[("a-0", OCI_LAYER_GZIP)], json!({}));
    addon.config["rootfs"]["diff_ids"] = json!([]);
    assert!(matches!(compose(&base, "b", &[Addon::Image { image: &addon, role: "ide" }]), Err(ComposeError::DiffIdCount { .. })));
}

#[test]
fn deterministic_over_a_hundred_runs_on_two_threads() {
    let first = full_composition(&docker_base());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| (0..100).map(|_| full_composition(&docker_base())).map(|c| (c.manifest.clone(), config_of(&c))).collect::<Vec<_>>())
        })
        .collect();
    for thread in threads {
        for (manifest, config) in thread.join().unwrap() {
            assert_eq!((&manifest, &config), (&first.manifest, &config_of(&first)));
        }
    }
}

/// The annotations `ctr-remote image convert --estargz` puts on each layer it converts.
fn estargz(mut descriptor: Descriptor, label: &str) -> Descriptor {
    descriptor.annotations = Some(
        [
            ("containerd.io/snapshot/stargz/toc.digest".to_owned(), digest(&format!("{label}-toc")).to_string()),
            ("io.containers.estargz.uncompressed-size".to_owned(), "123456".to_owned()),
        ]
        .into(),
    );
    // A field no spec knows yet rides along too.
    descriptor.extra.insert("x-future".to_owned(), json!({"kept": [1, 2]}));
    descriptor
}

/// `image` with every layer's descriptor made eStargz-like.
fn lazy(mut image: ResolvedImage) -> ResolvedImage {
    let labels: Vec<String> = image.manifest.layers.iter().map(|l| l.digest.to_string()).collect();
    image.manifest.layers = image.manifest.layers.into_iter().zip(labels).map(|(l, label)| estargz(l, &label)).collect();
    image
}

fn manifest_of(composed: &Composition) -> Value {
    serde_json::from_slice(&composed.manifest).unwrap()
}

#[test]
fn estargz_layers_keep_their_descriptors_byte_for_byte_and_their_diff_ids() {
    let base = lazy(image("base", OCI_MANIFEST, &[("b-0", OCI_LAYER_GZIP), ("b-1", OCI_LAYER_GZIP)], json!({})));
    let ide = lazy(image("ide", OCI_MANIFEST, &[("i-0", OCI_LAYER_GZIP)], json!({})));
    let composed = compose(&base, "b", &[Addon::Image { image: &ide, role: "ide" }]).unwrap();
    let manifest = manifest_of(&composed);
    let expected: Vec<Value> = base.manifest.layers.iter().chain(&ide.manifest.layers).map(|l| serde_json::to_value(l).unwrap()).collect();
    assert_eq!(manifest["layers"].as_array().unwrap(), &expected, "every field of every layer, annotations and unknown fields too");
    assert_eq!(manifest["layers"][2]["annotations"]["containerd.io/snapshot/stargz/toc.digest"], digest(&format!("{}-toc", digest("i-0"))).to_string());
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "an OCI base stays OCI");
    assert_eq!(composed.manifest_media_type, OCI_MANIFEST);
    let config: Value = serde_json::from_slice(&config_of(&composed)).unwrap();
    let diff_ids: Vec<&Value> = base.config["rootfs"]["diff_ids"].as_array().unwrap().iter().chain(ide.config["rootfs"]["diff_ids"].as_array().unwrap()).collect();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().iter().collect::<Vec<_>>(), diff_ids, "each layer's uncompressed digest, from its own image's config");
}

#[test]
fn a_docker_base_with_docker_addons_stays_docker_and_its_own_layers_follow() {
    let base = lazy(docker_base());
    let ide = lazy(image("ide", DOCKER_MANIFEST, &[("i-0", DOCKER_LAYER_GZIP)], json!({})));
    let (file, content) = (static_file(), content());
    let addons = [Addon::Layer(&file), Addon::Image { image: &ide, role: "ide" }, Addon::Layer(&content)];
    let composed = compose(&base, "b", &addons).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    assert_eq!((manifest.media_type.as_deref(), composed.manifest_media_type.as_str()), (Some(DOCKER_MANIFEST), DOCKER_MANIFEST));
    assert_eq!(manifest.config.media_type, DOCKER_CONFIG);
    assert_eq!(&manifest.layers[..2], &base.manifest.layers[..], "eStargz converted without --oci: Docker types, annotations kept");
    assert_eq!(manifest.layers[3], ide.manifest.layers[0]);
    assert_eq!((manifest.layers[2].media_type.as_str(), manifest.layers[4].media_type.as_str()), (DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR), "the facade's own layers in Docker's names");
}

#[test]
fn a_docker_base_with_an_oci_addon_becomes_oci_and_every_layer_keeps_its_type() {
    let base = docker_base();
    let ide = lazy(image("ide", OCI_MANIFEST, &[("i-0", OCI_LAYER_GZIP)], json!({})));
    let composed = compose(&base, "b", &[Addon::Image { image: &ide, role: "ide" }]).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    assert_eq!((manifest.media_type.as_deref(), composed.manifest_media_type.as_str()), (Some(OCI_MANIFEST), OCI_MANIFEST));
    assert_eq!(manifest.config.media_type, OCI_CONFIG, "the same config JSON under its OCI name");
    assert_eq!(&manifest.layers[..2], &base.manifest.layers[..], "the base's Docker layer types, unchanged");
    assert_eq!(manifest.layers[2], ide.manifest.layers[0]);
}

#[test]
fn an_oci_base_with_docker_addons_stays_oci() {
    let base = image("base", OCI_MANIFEST, &[("b-0", OCI_LAYER_GZIP)], json!({}));
    let ide = image("ide", DOCKER_MANIFEST, &[("i-0", DOCKER_LAYER_GZIP), ("i-1", DOCKER_LAYER_TAR)], json!({}));
    let composed = compose(&base, "b", &[Addon::Image { image: &ide, role: "ide" }]).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    assert_eq!(manifest.media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(manifest.config.media_type, OCI_CONFIG);
    assert_eq!(&manifest.layers[1..], &ide.manifest.layers[..], "Docker layer types in an OCI manifest, as the image spec allows");
}

#[test]
fn a_lone_layer_without_a_docker_twin_makes_a_docker_base_oci() {
    let base = docker_base();
    let mut zstd = content();
    zstd.descriptor.media_type = OCI_LAYER_ZSTD.to_owned();
    let composed = compose(&base, "b", &[Addon::Layer(&zstd)]).unwrap();
    let manifest: ImageManifest = serde_json::from_slice(&composed.manifest).unwrap();
    assert_eq!((manifest.media_type.as_deref(), manifest.layers[2].media_type.as_str()), (Some(OCI_MANIFEST), OCI_LAYER_ZSTD));
    let plain = compose(&base, "b", &[Addon::Layer(&content())]).unwrap();
    assert_eq!(plain.manifest_media_type, DOCKER_MANIFEST, "a plain tar has a Docker name");
}
