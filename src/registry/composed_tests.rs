//! What the composition tables hold as specs come and go: a real registry on a real cache
//! (a one-layer local image as every spec's base), specs written and deleted through the
//! registry's own spec methods, images composed as `precompose` composes them.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;

use super::*;
use crate::clock::Clock;
use crate::oci::manifest::Platform;
use crate::oci::media_type;
use crate::oci::Tag;
use crate::registry::static_layers::StaticLayerConfig;
use crate::registry::{MirrorSettings, Registry, RegistrySettings, Shared};
use crate::store::CacheDir;
use crate::upstream::{Upstream, UpstreamSettings};

const CYCLES: usize = 24;

/// Puts `base:latest` in the cache: one empty tar layer, a config for this host's platform.
fn install_base(cache: &CacheDir) {
    let layer = vec![0u8; 1024];
    let layer_digest = Digest::sha256_of(&layer);
    let platform = Platform::host();
    let config = format!(
        r#"{{"architecture":"{}","os":"{}","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#,
        platform.architecture, platform.os
    );
    let config_digest = Digest::sha256_of(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{layer_digest}","size":1024}}]}}"#,
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        config.len(),
        media_type::OCI_LAYER_TAR
    );
    let manifest_digest = Digest::sha256_of(manifest.as_bytes());
    cache.put_verified(&layer_digest, &layer).unwrap();
    cache.put_verified(&config_digest, config.as_bytes()).unwrap();
    cache.put_verified(&manifest_digest, manifest.as_bytes()).unwrap();
    cache
        .update_record(&"base".parse().unwrap(), |record| {
            record.tags.insert(Tag::latest(), manifest_digest.clone());
            record.manifests.insert(manifest_digest.clone(), media_type::OCI_MANIFEST.to_owned());
            record.blobs.extend([config_digest, layer_digest]);
        })
        .unwrap();
}

fn open_registry(dir: &std::path::Path) -> (Arc<CacheDir>, Arc<Registry>) {
    let cache = Arc::new(CacheDir::open(dir).unwrap());
    install_base(&cache);
    let settings = RegistrySettings {
        platform: Platform::host(),
        cache_max_bytes: None,
        cache_max_open_blobs: Some(64),
        mirrors: MirrorSettings { aliases: Default::default(), tag_ttl: Duration::from_secs(60) },
        fixed_specs: None,
        static_layers: Vec::new(),
        redirect_content_layers: false,
        blobserve: None,
    };
    let clock = Clock::adjustable();
    let upstream = Upstream::new(UpstreamSettings::default(), clock.clone()).unwrap();
    let registry = Registry::open(Arc::clone(&cache), settings, upstream, Shared::default(), clock).unwrap();
    (cache, Arc::new(registry))
}

/// A spec on the base image with one direct content layer of `content`.
fn spec(content: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    format!(r#"{{"baseRef": "local:base:latest", "contentLayer": [{{"direct": {{"content": "{encoded}"}}}}]}}"#).into_bytes()
}

fn name(id: &str) -> RepositoryName {
    format!("remote/{id}").parse().unwrap()
}

/// Current compositions, and images kept as recent ones (over all names).
fn held(registry: &Registry) -> (usize, usize) {
    let compositions = &registry.composer.compositions;
    let recent = compositions.recent.entries().iter().map(|(_, images)| images.len()).sum();
    (compositions.current.len(), recent)
}

/// Writes `id`'s spec and composes it; panics unless it was composed.
async fn write_and_compose(registry: &Arc<Registry>, id: &str, content: &str) {
    registry.put_spec(id, &spec(content)).await.unwrap();
    registry.precompose(&name(id)).await;
    assert!(!registry.composer.compositions.recent(&name(id)).is_empty(), "{id} was composed");
}

fn on_executor<Fut: std::future::Future<Output = ()> + 'static>(test: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default().spawn(test).unwrap().join().unwrap();
}

#[test]
fn deleted_specs_leave_no_compositions_behind() {
    on_executor(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (_cache, registry) = open_registry(dir.path());
        for cycle in 0..CYCLES {
            let id = format!("ws-{cycle}");
            write_and_compose(&registry, &id, &format!("workspace {cycle}")).await;
            assert!(registry.delete_spec(&id).await.unwrap());
            assert_eq!(held(&registry), (0, 0), "after deleting {id}");
        }
    });
}

#[test]
fn a_replaced_spec_keeps_one_current_composition_and_a_few_recent_ones() {
    on_executor(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (_cache, registry) = open_registry(dir.path());
        for cycle in 0..CYCLES {
            write_and_compose(&registry, "ws", &format!("version {cycle}")).await;
            let (current, recent) = held(&registry);
            assert_eq!(current, 1, "only the spec's present version is current (cycle {cycle})");
            assert_eq!(recent, (cycle + 1).min(RECENT_PER_NAME), "the last few stay reachable for pulls in progress (cycle {cycle})");
        }
        // Two ids with the same spec share a composition; deleting one leaves the other's.
        write_and_compose(&registry, "twin", &format!("version {}", CYCLES - 1)).await;
        assert!(registry.delete_spec("ws").await.unwrap());
        registry.precompose(&name("twin")).await;
        assert_eq!(held(&registry), (1, 1), "the twin composes again; nothing of `ws` is left");
    });
}

#[test]
fn compositions_of_old_static_layers_are_dropped_on_reload() {
    on_executor(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (cache, registry) = open_registry(&dir.path().join("cache"));
        let layer = dir.path().join("tools.tar.gz");
        for revision in 0..4 {
            write_and_compose(&registry, "ws", "workspace").await;
            assert_eq!(held(&registry).0, 1, "one current composition (static revision {revision})");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(format!("static revision {revision}\n").as_bytes()).unwrap();
            std::fs::write(&layer, gz.finish().unwrap()).unwrap();
            registry.reload_static_layers(&cache, &[StaticLayerConfig::File(layer.clone())]).unwrap();
            let (current, recent) = held(&registry);
            assert_eq!(current, 0, "the composition with the previous static layers is no longer current");
            assert!(recent >= 1, "but stays reachable for pulls in progress");
        }
    });
}
