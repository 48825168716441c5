//! What the composition tables hold as specs come and go: a real registry on a real cache
//! (the built-in demo image as every spec's base), specs written and deleted through the same
//! `RemoteSpecs` the admin API uses, images composed as `precompose` composes them.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;

use super::*;
use crate::oci::manifest::Platform;
use crate::registry::static_layers::StaticLayerConfig;
use crate::registry::{demo, MirrorSettings, RegistrySettings, Shared};
use crate::spec::parse_spec;
use crate::store::CacheDir;
use crate::upstream::{Upstream, UpstreamSettings};

const CYCLES: usize = 24;

fn open_registry(dir: &std::path::Path) -> (Arc<CacheDir>, Registry) {
    let cache = Arc::new(CacheDir::open(dir).unwrap());
    demo::install(&cache, &Platform::host()).unwrap();
    let settings = RegistrySettings {
        platform: Platform::host(),
        cache_max_bytes: None,
        cache_max_open_blobs: Some(64),
        mirrors: MirrorSettings { aliases: Default::default(), tag_ttl: Duration::from_secs(60) },
        fixed_specs: None,
        static_layers: Vec::new(),
        redirect_content_layers: false,
    };
    let upstream = Upstream::new(UpstreamSettings::default()).unwrap();
    let registry = Registry::open(Arc::clone(&cache), settings, upstream, Shared::default()).unwrap();
    (cache, registry)
}

/// A spec on the demo image with one direct content layer of `content`.
fn spec(content: &str) -> StoredSpec {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let json = format!(r#"{{"baseRef": "local:demo:latest", "contentLayer": [{{"direct": {{"content": "{encoded}"}}}}]}}"#);
    parse_spec(json.as_bytes()).unwrap()
}

fn name(id: &str) -> RepositoryName {
    format!("remote/{id}").parse().unwrap()
}

/// Current compositions, and images kept as recent ones (over all names).
fn held(registry: &Registry) -> (usize, usize) {
    let recent = registry.compositions.recent.entries().iter().map(|(_, images)| images.len()).sum();
    (registry.compositions.current.len(), recent)
}

/// Writes `id`'s spec and composes it; panics unless it was composed.
async fn write_and_compose(registry: &Registry, id: &str, content: &str) {
    registry.specs().put(id, spec(content)).await.unwrap();
    registry.precompose(&name(id)).await;
    assert!(!registry.compositions.recent(&name(id)).is_empty(), "{id} was composed");
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
            assert!(registry.specs().delete(&id).await.unwrap());
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
        assert!(registry.specs().delete("ws").await.unwrap());
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
