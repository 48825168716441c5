//! The `Composer`: images of `remote/<id>` and `fixed/<id>`, inputs resolved and composed once per
//! (spec, static layers), kept in a table every core reads; trusted for the tag TTL if inputs
//! named tags, else for good. Bounded by the specs held: a spec that goes takes its compositions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::compose::{compose, Addon, BlobSource, LoneLayer};
use super::error::RegistryError;
use super::images::Images;
use super::join::join_all;
use super::single_flight::SingleFlight;
use super::static_layers::{StaticEntry, StaticLayers};
use super::{shared, SpecSources, StoredManifest};
use crate::clock::Clock;
use crate::oci::manifest::Descriptor;
use crate::oci::media_type::OCI_LAYER_TAR;
use crate::oci::{Digest, Reference, RepositoryName};
use crate::redis_client::keys::COMPOSED_TTL;
use crate::redis_client::RedisClient;
use crate::spec::{ContentLayer, SourceRef, SpecChange, SpecListener, StoredSpec};
use crate::table::SharedMap;

/// Compositions kept reachable per name besides the current one.
const RECENT_PER_NAME: usize = 4;

/// A composed image, ready to serve.
#[derive(Debug)]
pub struct ComposedImage {
    pub manifest: Arc<StoredManifest>,
    pub blobs: HashMap<Digest, BlobSource>,
}

struct Current {
    image: Arc<ComposedImage>,
    /// The static layers it was composed with.
    revision: Digest,
    /// `None`: made only of digests, good forever.
    valid_until_ms: Option<u64>,
}

/// A spec's key and the static-layer revision: what a composition is made of.
type CompositionKey = (Digest, Digest);

/// What one composition flight ends with: the image and how long it stays current.
type FlightResult = Result<(Arc<ComposedImage>, Option<Duration>), Arc<RegistryError>>;

#[derive(Default)]
pub struct Compositions {
    /// By spec key: one composition per spec at a time, that of the current static layers (an
    /// entry of another revision is composed again on its next use).
    current: SharedMap<Digest, Arc<Current>>,
    recent: SharedMap<RepositoryName, Arc<Vec<Arc<ComposedImage>>>>,
    flights: SingleFlight<CompositionKey, FlightResult>,
}

impl Compositions {
    /// Adds `image` to `name`'s recent compositions; returns whether it was not there yet.
    fn remember(&self, name: &RepositoryName, image: &Arc<ComposedImage>) -> bool {
        let mut recent = self.recent.get(name).map(|r| r.as_ref().clone()).unwrap_or_default();
        if recent.iter().any(|r| Arc::ptr_eq(r, image)) {
            return false;
        }
        // The same manifest composed again (after its spec's twin was deleted, say) is one image.
        recent.retain(|r| r.manifest.digest != image.manifest.digest);
        recent.push(Arc::clone(image));
        if recent.len() > RECENT_PER_NAME {
            recent.remove(0);
        }
        self.recent.insert(name.clone(), Arc::new(recent));
        true
    }

    /// Recent compositions of `name`, newest first.
    pub fn recent(&self, name: &RepositoryName) -> Vec<Arc<ComposedImage>> {
        self.recent.get(name).map(|r| r.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Drops what was composed from `spec`, which `name` no longer has. Another name with the
    /// very same spec loses the shared composition too and composes it again: rare, and
    /// cheaper than counting who uses which composition.
    fn forget(&self, name: &RepositoryName, spec: &StoredSpec, change: SpecChange) {
        self.current.remove(&spec.spec.key);
        if change == SpecChange::Removed {
            self.recent.remove(name);
        }
    }

    /// Drops the compositions made with static layers other than `revision`'s. Their names'
    /// recent compositions keep them reachable for pulls under way.
    pub fn keep_revision(&self, revision: &Digest) {
        for (key, current) in self.current.entries() {
            if &current.revision != revision {
                self.current.remove_if(&key, |now| Arc::ptr_eq(now, &current));
            }
        }
    }

    /// A listener for a spec source whose specs are named `<provider>/<id>`.
    pub fn listener(self: &Arc<Self>, provider: &'static str) -> SpecListener {
        let compositions = Arc::clone(self);
        Arc::new(move |id, spec, change| {
            // An id that makes no valid name was never served, so nothing was composed for it.
            if let Ok(name) = format!("{provider}/{id}").parse::<RepositoryName>() {
                compositions.forget(&name, spec, change);
            }
        })
    }
}

/// Composes the images specs describe, and keeps what it composed while their specs live.
pub struct Composer {
    compositions: Arc<Compositions>,
    statics: RwLock<Arc<StaticLayers>>,
    images: Images,
    /// Where a spec's present version is asked for (see `drop_if_orphaned`).
    specs: Arc<SpecSources>,
    /// Where nodes share compositions, when configured.
    redis: Option<RedisClient>,
    /// How long a composition whose inputs named tags is trusted.
    tag_ttl: Duration,
    clock: Clock,
}

/// What a `Composer` is made of.
pub struct ComposerParts {
    pub compositions: Arc<Compositions>,
    pub statics: StaticLayers,
    pub images: Images,
    pub specs: Arc<SpecSources>,
    pub redis: Option<RedisClient>,
    pub tag_ttl: Duration,
    pub clock: Clock,
}

impl Composer {
    pub fn new(parts: ComposerParts) -> Composer {
        let ComposerParts { compositions, statics, images, specs, redis, tag_ttl, clock } = parts;
        Composer { compositions, statics: RwLock::new(Arc::new(statics)), images, specs, redis, tag_ttl, clock }
    }

    /// The image `source` names, resolved to our platform (see `Images::resolve`).
    ///
    /// # Errors
    /// As `Images::resolve`.
    pub async fn resolve(&self, source: &SourceRef) -> Result<Arc<super::compose::ResolvedImage>, RegistryError> {
        self.images.resolve(source).await
    }

    /// The static layers composed into every image now.
    pub fn static_layers(&self) -> Arc<StaticLayers> {
        self.statics.read().map(|s| Arc::clone(&s)).unwrap_or_else(|_| Arc::new(StaticLayers::none()))
    }

    /// Composes with `statics` from now on. Images composed with the previous set are no
    /// longer current but keep serving their blobs to pulls under way.
    pub fn replace_static_layers(&self, statics: StaticLayers) {
        if let Ok(mut current) = self.statics.write() {
            tracing::info!(revision = %statics.revision, layers = statics.entries.len(), "static layers loaded");
            let revision = statics.revision.clone();
            *current = Arc::new(statics);
            drop(current);
            self.compositions.keep_revision(&revision);
        }
    }

    /// The composed image `spec` describes for `name`, composing it if needed.
    ///
    /// # Errors
    /// An input image cannot be resolved, or composition refuses it.
    pub async fn composed(&self, name: &RepositoryName, spec: &Arc<StoredSpec>) -> Result<Arc<ComposedImage>, RegistryError> {
        let statics = self.static_layers();
        let key = (spec.spec.key.clone(), statics.revision.clone());
        let now = self.clock.now_ms();
        let usable = |c: &Arc<Current>| c.revision == statics.revision && c.valid_until_ms.is_none_or(|until| now < until);
        if let Some(current) = self.compositions.current.get(&key.0).filter(usable) {
            if self.compositions.remember(name, &current.image) {
                self.drop_if_orphaned(name, spec, None);
            }
            return Ok(Arc::clone(&current.image));
        }
        let result = self.compositions.flights.run(key.clone(), || async {
            if let Some(shared) = self.read_shared(&key).await {
                return Ok(shared);
            }
            let started = Instant::now();
            let image = self.compose_now(spec, &statics).await.map_err(Arc::new)?;
            tracing::info!(name = %name, digest = %image.manifest.digest, micros = started.elapsed().as_micros() as u64, "composed");
            let valid_for = uses_tags(spec, &statics).then_some(self.tag_ttl);
            self.write_shared(&key, &image, valid_for).await;
            Ok((image, valid_for))
        });
        let (image, valid_for) = result.await.map_err(RegistryError::Composition)?;
        let (spec_key, revision) = key;
        let valid_until_ms = valid_for.map(|left| self.clock.now_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)));
        let current = Arc::new(Current { image: Arc::clone(&image), revision, valid_until_ms });
        self.compositions.current.insert(spec_key, Arc::clone(&current));
        self.compositions.remember(name, &image);
        self.drop_if_orphaned(name, spec, Some(&current));
        Ok(image)
    }

    /// Takes back what was just added for `spec` (its composition `current`, `name`'s recent
    /// ones) if the spec was replaced or deleted, or the static layers reloaded, meanwhile:
    /// the listener or the reload may have run before the addition, and would leave it there
    /// for good. What they remove after this check is theirs to remove.
    fn drop_if_orphaned(&self, name: &RepositoryName, spec: &StoredSpec, current: Option<&Arc<Current>>) {
        let held = match name.split_provider() {
            Some(("remote", id)) => self.specs.remote.held(id),
            Some(("fixed", id)) => self.specs.fixed.as_ref().and_then(|fixed| fixed.get(id, self.clock.now_ms())),
            _ => return,
        };
        let replaced = held.as_ref().is_none_or(|held| held.spec.key != spec.spec.key);
        if let Some(current) = current.filter(|c| replaced || c.revision != self.static_layers().revision) {
            self.compositions.current.remove_if(&spec.spec.key, |now| Arc::ptr_eq(now, current));
        }
        if held.is_none() {
            self.compositions.recent.remove(name);
        }
    }

    /// A composition another node wrote to Redis, if there is one (and Redis answers).
    async fn read_shared(&self, key: &CompositionKey) -> Option<(Arc<ComposedImage>, Option<Duration>)> {
        let redis = self.redis.as_ref()?;
        let redis_key = redis.keys().composed(&key.0.to_string(), &key.1.to_string());
        match redis.get(&redis_key).await {
            Ok(Some(bytes)) => {
                let decoded = shared::decode(&bytes);
                if decoded.is_none() {
                    tracing::warn!(key = redis_key, "ignoring an unusable shared composition");
                }
                decoded
            }
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, "composing without the shared state");
                None
            }
        }
    }

    async fn write_shared(&self, key: &CompositionKey, image: &ComposedImage, valid_for: Option<Duration>) {
        let Some(redis) = &self.redis else { return };
        let redis_key = redis.keys().composed(&key.0.to_string(), &key.1.to_string());
        let ttl = valid_for.unwrap_or(COMPOSED_TTL);
        if let Err(error) = redis.set(&redis_key, shared::encode(image, valid_for), Some(ttl)).await {
            tracing::warn!(%error, "composition not shared: other nodes will compose it themselves");
        }
    }

    async fn compose_now(&self, stored: &StoredSpec, statics: &StaticLayers) -> Result<Arc<ComposedImage>, RegistryError> {
        let spec = &stored.spec;
        let static_images = statics.entries.iter().filter_map(|e| match e {
            StaticEntry::Image(source) => Some((source, "static")),
            StaticEntry::File(_) => None,
        });
        let addon_refs: Vec<(&SourceRef, &'static str)> = static_images
            .chain(spec.ide.iter().map(|r| (r, "ide")))
            .chain(spec.supervisor.iter().map(|r| (r, "supervisor")))
            .chain(spec.ide_layers.iter().map(|r| (r, "ide")))
            .collect();
        let mut wanted: Vec<&SourceRef> = vec![&spec.base];
        wanted.extend(addon_refs.iter().map(|(source, _)| *source));
        let mut resolved = join_all(wanted.iter().map(|source| self.images.resolve(source)).collect()).await.into_iter();
        let base = resolved.next().ok_or_else(|| RegistryError::NotAcceptable("no base".into()))??;
        let addon_images = resolved.collect::<Result<Vec<_>, _>>()?;
        let content: Vec<LoneLayer> = spec.content.iter().map(content_layer).collect();

        // Static layers first, in config order (files and images interleaved), then the spec's.
        let mut addons = Vec::new();
        let mut images = addon_images.iter().zip(addon_refs.iter().map(|(_, role)| *role));
        for entry in &statics.entries {
            match entry {
                StaticEntry::File(layer) => addons.push(Addon::Layer(layer)),
                StaticEntry::Image(_) => {
                    if let Some((image, role)) = images.next() {
                        addons.push(Addon::Image { image, role });
                    }
                }
            }
        }
        addons.extend(images.map(|(image, role)| Addon::Image { image, role }));
        addons.extend(content.iter().map(Addon::Layer));

        let composition = compose(&base, &spec.base.to_string(), &addons)?;
        let manifest = Arc::new(StoredManifest::new(composition.manifest, &composition.manifest_media_type, composition.manifest_digest)?);
        Ok(Arc::new(ComposedImage { manifest, blobs: composition.blobs }))
    }

    /// The composed manifest `reference` names: any tag is the current composition (Gitpod's
    /// rule), a digest must be the current or a recent one.
    pub fn composed_manifest(&self, name: &RepositoryName, current: &Arc<ComposedImage>, reference: &Reference) -> Option<Arc<StoredManifest>> {
        match reference {
            Reference::Tag(_) => Some(Arc::clone(&current.manifest)),
            Reference::Digest(digest) => std::iter::once(Arc::clone(current))
                .chain(self.compositions.recent(name))
                .find(|image| &image.manifest.digest == digest)
                .map(|image| Arc::clone(&image.manifest)),
        }
    }

    /// Where a blob of `name`'s current or a recent composition comes from.
    pub fn composed_blob(&self, name: &RepositoryName, current: &Arc<ComposedImage>, digest: &Digest) -> Option<BlobSource> {
        std::iter::once(Arc::clone(current)).chain(self.compositions.recent(name)).find_map(|image| image.blobs.get(digest).cloned())
    }
}

fn uses_tags(spec: &StoredSpec, statics: &StaticLayers) -> bool {
    let spec = &spec.spec;
    let is_tag = |source: &SourceRef| match source {
        SourceRef::Upstream(image) => matches!(image.reference, Reference::Tag(_)),
        SourceRef::Local(..) => true,
    };
    let static_refs = statics.entries.iter().filter_map(|e| match e {
        StaticEntry::Image(source) => Some(source),
        StaticEntry::File(_) => None,
    });
    std::iter::once(&spec.base).chain(&spec.ide).chain(&spec.supervisor).chain(&spec.ide_layers).chain(static_refs).any(is_tag)
}

fn content_layer(layer: &ContentLayer) -> LoneLayer {
    match layer {
        ContentLayer::Remote { url, digest, diff_id, media_type, size } => {
            let mut descriptor = Descriptor::new(media_type, digest.clone(), *size);
            descriptor.urls = Some(vec![url.clone()]);
            LoneLayer { descriptor, diff_id: diff_id.clone(), source: BlobSource::Url { url: url.clone(), size: *size }, created_by: "registry-facade: content layer".into() }
        }
        ContentLayer::Direct { content, digest } => LoneLayer {
            descriptor: Descriptor::new(OCI_LAYER_TAR, digest.clone(), content.len() as u64),
            diff_id: digest.clone(),
            source: BlobSource::Inline(content.clone()),
            created_by: "registry-facade: content layer".into(),
        },
    }
}

#[cfg(test)]
#[path = "composed_tests.rs"]
mod tests;
