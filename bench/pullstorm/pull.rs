//! One workspace's pull, as containerd's resolver and fetcher do it: HEAD the tag for its
//! digest, GET the manifest by digest (an index resolved to one platform), the config, then
//! the layers a few at a time (a layer's `urls` first, then the registry, following
//! redirects), every body checked against its digest and size.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::{Client, Gauge, HttpError, Method};
use crate::manifest::{self, Descriptor, ManifestError, Parsed, Verifier, ACCEPT, MAX_MANIFEST_BYTES};
use crate::progress::Counters;
use crate::storm::Puller;
use crate::url::Url;

/// Layer threads need little stack: buffers live on the heap.
const LAYER_THREAD_STACK_BYTES: usize = 256 << 10;

/// `repository:tag` or `repository@sha256:…` on a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub repository: String,
    pub reference: String,
}

impl ImageName {
    pub fn parse(text: &str) -> ImageName {
        if let Some((repository, digest)) = text.split_once('@') {
            return ImageName { repository: repository.to_owned(), reference: digest.to_owned() };
        }
        let last_slash = text.rfind('/').map_or(0, |i| i + 1);
        match text[last_slash..].rfind(':') {
            Some(colon) => ImageName { repository: text[..last_slash + colon].to_owned(), reference: text[last_slash + colon + 1..].to_owned() },
            None => ImageName { repository: text.to_owned(), reference: "latest".to_owned() },
        }
    }

    fn is_digest(&self) -> bool {
        self.reference.contains(':')
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let separator = if self.is_digest() { '@' } else { ':' };
        write!(f, "{}{separator}{}", self.repository, self.reference)
    }
}

#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Layers fetched at once (containerd's default `max_concurrent_downloads` is 3).
    pub concurrent_layers: usize,
    /// `(os, architecture)` an index is resolved to.
    pub platform: (String, String),
}

/// What a successful pull verified.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    pub manifest_digest: String,
    /// Bytes of every verified document: manifest(s), config, layers.
    pub bytes: u64,
    /// Bodies whose sha256 and size were checked.
    pub verified_blobs: usize,
    /// For a pull followed by reads of its rootfs (containerd): how long the pull itself took.
    pub pull_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{what} {digest}: {source}")]
    Document { what: &'static str, digest: String, source: ManifestError },
    #[error("{what} {expected}: digest mismatch: the bytes hash to {actual}")]
    DigestMismatch { what: &'static str, expected: String, actual: String },
    #[error("{what} {digest}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: &'static str, digest: String, expected: u64, actual: String },
}

/// One image pull on one registry with one workspace's client.
pub struct Pull<'a> {
    pub client: &'a Client,
    pub registry: &'a Url,
    pub image: &'a ImageName,
    pub settings: &'a PullSettings,
    /// Told of every body byte as it arrives (for the progress bar).
    pub on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl Pull<'_> {
    /// Resolves, fetches and verifies the whole image.
    ///
    /// # Errors
    /// Any request failing, any body not matching its digest or size, an unusable manifest.
    pub fn run(&self) -> Result<Pulled, PullError> {
        let (mut pulled, config, layers) = self.documents()?;
        pulled.bytes += self.blob("config", &config)?;
        pulled.bytes += self.layers(&layers)?;
        pulled.verified_blobs += 1 + layers.len();
        Ok(pulled)
    }

    /// What a whole pull would amount to, from the manifests alone (the blobs are counted by
    /// their descriptors, not fetched): for clients that fetched them their own way.
    ///
    /// # Errors
    /// As `run`, for the manifests.
    pub fn describe(&self) -> Result<Pulled, PullError> {
        let (mut pulled, config, layers) = self.documents()?;
        pulled.bytes += config.size + layers.iter().map(|l| l.size).sum::<u64>();
        pulled.verified_blobs += 1 + layers.len();
        Ok(pulled)
    }

    /// The image's `rootfs.diff_ids`, from its manifest and config (both verified): to name the
    /// snapshot containerd made of it.
    ///
    /// # Errors
    /// As `run`, for the manifests and the config; a config without diff_ids.
    pub fn diff_ids(&self) -> Result<Vec<String>, PullError> {
        let (_, config, _) = self.documents()?;
        let url = self.registry.with_path(&format!("/v2/{}/blobs/{}", self.image.repository, config.digest));
        let mut body = Vec::new();
        self.client.fetch(Method::Get, &url, &[], &mut collect_up_to(&mut body, MAX_MANIFEST_BYTES))?;
        let mut verifier = Verifier::new(&config.digest).map_err(|source| PullError::Document { what: "config", digest: config.digest.clone(), source })?;
        verifier.update(&body);
        verifier.finish().map_err(|actual| PullError::DigestMismatch { what: "config", expected: config.digest.clone(), actual })?;
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let diff_ids: Vec<String> = parsed.pointer("/rootfs/diff_ids").and_then(|v| v.as_array()).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        if diff_ids.is_empty() {
            return Err(PullError::Document { what: "config", digest: config.digest, source: ManifestError::NoDiffIds });
        }
        Ok(diff_ids)
    }

    /// Resolves the reference and fetches the manifest (through an index if one comes back):
    /// the pull so far, the config and the layers.
    fn documents(&self) -> Result<(Pulled, Descriptor, Vec<Descriptor>), PullError> {
        let digest = self.resolve()?;
        let mut pulled = Pulled { manifest_digest: digest.clone(), ..Pulled::default() };
        let (config, layers) = match self.manifest(&digest, &mut pulled)? {
            Parsed::Image { config, layers } => (config, layers),
            Parsed::Index(entries) => {
                let (os, architecture) = &self.settings.platform;
                let entry = manifest::pick_platform(&entries, os, architecture).map_err(|source| PullError::Document { what: "index", digest: digest.clone(), source })?;
                match self.manifest(&entry.digest, &mut pulled)? {
                    Parsed::Image { config, layers } => (config, layers),
                    Parsed::Index(_) => return Err(PullError::Document { what: "manifest", digest: entry.digest.clone(), source: ManifestError::NoConfig }),
                }
            }
        };
        Ok((pulled, config, layers))
    }

    fn manifest_url(&self, reference: &str) -> Url {
        self.registry.with_path(&format!("/v2/{}/manifests/{reference}", self.image.repository))
    }

    /// The manifest digest the reference names: a `HEAD` answer's `Docker-Content-Digest`, or,
    /// when a server sends none, the sha256 of a `GET` (containerd does the same).
    fn resolve(&self) -> Result<String, PullError> {
        if self.image.is_digest() {
            return Ok(self.image.reference.clone());
        }
        let url = self.manifest_url(&self.image.reference);
        let head = self.client.fetch(Method::Head, &url, &[("Accept", ACCEPT)], &mut |_| true)?;
        if let Some(digest) = head.header("docker-content-digest") {
            return Ok(digest.to_owned());
        }
        let mut body = Vec::new();
        self.client.fetch(Method::Get, &url, &[("Accept", ACCEPT)], &mut collect_up_to(&mut body, MAX_MANIFEST_BYTES))?;
        Ok(manifest::sha256_digest(&body))
    }

    /// GETs the manifest (or index) by digest, verifies and parses it.
    fn manifest(&self, digest: &str, pulled: &mut Pulled) -> Result<Parsed, PullError> {
        let what = "manifest";
        let mut verifier = Verifier::new(digest).map_err(|source| PullError::Document { what, digest: digest.to_owned(), source })?;
        let mut body = Vec::new();
        let response = self.client.fetch(Method::Get, &self.manifest_url(digest), &[("Accept", ACCEPT)], &mut collect_up_to(&mut body, MAX_MANIFEST_BYTES))?;
        verifier.update(&body);
        verifier.finish().map_err(|actual| PullError::DigestMismatch { what, expected: digest.to_owned(), actual })?;
        (self.on_bytes)(body.len() as u64);
        pulled.bytes += body.len() as u64;
        pulled.verified_blobs += 1;
        manifest::parse(&body, response.header("content-type")).map_err(|source| PullError::Document { what, digest: digest.to_owned(), source })
    }

    /// Fetches the layers, `concurrent_layers` at a time: this thread is one of the workers.
    fn layers(&self, layers: &[Descriptor]) -> Result<u64, PullError> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let bytes = AtomicU64::new(0);
        let work = || {
            while !failed.load(Ordering::Relaxed) {
                let Some(layer) = layers.get(next.fetch_add(1, Ordering::Relaxed)) else { return };
                match self.blob("layer", layer) {
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(error) => {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().expect("first error lock").get_or_insert(error);
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..self.settings.concurrent_layers.min(layers.len()) {
                let builder = std::thread::Builder::new().name("pullstorm-layer".into()).stack_size(LAYER_THREAD_STACK_BYTES);
                // Without a spare thread the others (and this one) still do every layer.
                let _ = builder.spawn_scoped(scope, work);
            }
            work();
        });
        match first_error.into_inner().expect("first error lock") {
            Some(error) => Err(error),
            None => Ok(bytes.into_inner()),
        }
    }

    /// One blob, verified: from each of its `urls` (http only) that has it, else the registry.
    fn blob(&self, what: &'static str, descriptor: &Descriptor) -> Result<u64, PullError> {
        for url in descriptor.urls.iter().filter_map(|u| u.parse::<Url>().ok()) {
            match self.verified_get(what, descriptor, &url) {
                Err(PullError::Http(HttpError::Status { status: 404, .. })) => continue,
                other => return other,
            }
        }
        let registry_url = self.registry.with_path(&format!("/v2/{}/blobs/{}", self.image.repository, descriptor.digest));
        self.verified_get(what, descriptor, &registry_url)
    }

    fn verified_get(&self, what: &'static str, descriptor: &Descriptor, url: &Url) -> Result<u64, PullError> {
        let digest = descriptor.digest.clone();
        let mut verifier = Verifier::new(&digest).map_err(|source| PullError::Document { what, digest: digest.clone(), source })?;
        let mut received = 0u64;
        let result = self.client.fetch(Method::Get, url, &[], &mut |piece| {
            received += piece.len() as u64;
            (self.on_bytes)(piece.len() as u64);
            verifier.update(piece);
            received <= descriptor.size
        });
        let size_mismatch = |actual: String| PullError::SizeMismatch { what, digest: digest.clone(), expected: descriptor.size, actual };
        match result {
            Err(HttpError::Refused { .. }) => return Err(size_mismatch(format!("more than {}", descriptor.size))),
            other => other?,
        };
        if received != descriptor.size {
            return Err(size_mismatch(received.to_string()));
        }
        verifier.finish().map_err(|actual| PullError::DigestMismatch { what, expected: digest, actual })?;
        Ok(received)
    }
}

fn collect_up_to(body: &mut Vec<u8>, limit: usize) -> impl FnMut(&[u8]) -> bool + '_ {
    move |piece| {
        body.extend_from_slice(piece);
        body.len() <= limit
    }
}

/// The storm's HTTP puller: each workspace gets a client of its own (its own connections).
pub struct HttpPuller {
    pub registry: Url,
    pub settings: PullSettings,
    pub timeout: Duration,
    pub gauge: Arc<Gauge>,
}

impl Puller for HttpPuller {
    fn pull(&self, image: &str, counters: &Counters) -> Result<Pulled, String> {
        let client = Client::new(self.timeout, Arc::clone(&self.gauge));
        let image = ImageName::parse(image);
        let on_bytes = |n| counters.add_bytes(n);
        Pull { client: &client, registry: &self.registry, image: &image, settings: &self.settings, on_bytes: &on_bytes }.run().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        let name = ImageName::parse("remote/ws-1:latest");
        assert_eq!((name.repository.as_str(), name.reference.as_str()), ("remote/ws-1", "latest"));
        assert_eq!(ImageName::parse("a/b").reference, "latest");
        let pinned = ImageName::parse("a/b@sha256:00");
        assert_eq!((pinned.repository.as_str(), pinned.reference.as_str()), ("a/b", "sha256:00"));
        assert_eq!(pinned.to_string(), "a/b@sha256:00");
        assert_eq!(ImageName::parse("ns/img:v1").to_string(), "ns/img:v1");
    }
}
