//! Every metric the facade exports, defined in this one place and rendered as OpenMetrics text
//! for `/metrics`. Label values are the fixed enums of `labels`, never names, references or
//! digests. `prometheus-client` is the registry and encoder only. Knows nothing else of ours.

mod hosts;
mod labels;
mod meter;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::{Atomic, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use labels::{ByteSource, CacheKind, FillOutcome, FillSource, Listener, Method, PrefetchOutcome, PrepareOutcome, PrepullState, Publication, Refusal, ReloadOutcome, ReloadedFile, RetryKind, Route};
pub use meter::{
    blobserve_evicted, blobserve_layer_unpacked, blobserve_prepared, cache_evicted, cache_lookup, connection_opened, connection_refused, fill_bytes, fill_finished, fill_started, ipfs_publication,
    prefetched, request, served, upstream_response, upstream_retry, OpenConnection,
};

use hosts::BoundedHosts;
use labels::{
    CacheLabels, ConnectionLabels, FillLabels, FillOutcomeLabels, HostLabels, PrefetchLabels, PrepareLabels, PrepullLabels, PublicationLabels, RefusalLabels, ReloadLabels, RequestLabels, RetryLabels,
    ServedLabels,
};

/// The `Content-Type` of what `Metrics::render` returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upstream response-head latency buckets: 5 ms doubling to ~41 s (upstream timeouts are
/// seconds to tens of seconds).
const RESPONSE_BUCKETS_START_S: f64 = 0.005;
const RESPONSE_BUCKETS: u16 = 14;

/// A counter value on a cache line of its own. Per-core counters are allocated one after
/// another; sharing a line, two cores adding to neighbours would bounce it between them.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PaddedU64(AtomicU64);

impl Atomic<u64> for PaddedU64 {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        self.0.fetch_add(v, Ordering::Relaxed)
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter on the serving path: one series per core, each on its own cache line.
type HotCounter = Counter<u64, PaddedU64>;
type LatencyFamily = Family<HostLabels, Histogram, fn() -> Histogram>;

#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics")]
pub struct RenderError;

/// The metrics of one server. Shared by its executors; each records through its own meter.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, HotCounter>,
    served: Family<ServedLabels, HotCounter>,
    cache_hits: Family<CacheLabels, HotCounter>,
    cache_misses: Family<CacheLabels, HotCounter>,
    open_connections: Family<ConnectionLabels, Gauge>,
    refused_connections: Family<RefusalLabels, HotCounter>,
    cache_evictions: Counter,
    cache_bytes: Gauge,
    fills_started: Family<FillLabels, Counter>,
    fills_finished: Family<FillOutcomeLabels, Counter>,
    fill_bytes: Family<FillLabels, Counter>,
    upstream_retries: Family<RetryLabels, Counter>,
    upstream_response: LatencyFamily,
    file_reloads: Family<ReloadLabels, Counter>,
    blobserve_prepared: Family<PrepareLabels, Counter>,
    blobserve_unpacked_layers: Counter,
    blobserve_unpacked_bytes: Counter,
    blobserve_evictions: Counter,
    blobserve_space_bytes: Gauge,
    blobserve_prepull: Family<PrepullLabels, Gauge>,
    ipfs_publications: Family<PublicationLabels, Counter>,
    ipfs_published_bytes: Counter,
    prefetched_blobs: Family<PrefetchLabels, Counter>,
    prefetched_bytes: Counter,
    hosts: BoundedHosts,
}

fn response_histogram() -> Histogram {
    Histogram::new(exponential_buckets(RESPONSE_BUCKETS_START_S, 2.0, RESPONSE_BUCKETS))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("registry_facade"),
            requests: Family::default(),
            served: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            open_connections: Family::default(),
            refused_connections: Family::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            fills_started: Family::default(),
            fills_finished: Family::default(),
            fill_bytes: Family::default(),
            upstream_retries: Family::default(),
            upstream_response: Family::new_with_constructor(response_histogram as fn() -> Histogram),
            file_reloads: Family::default(),
            blobserve_prepared: Family::default(),
            blobserve_unpacked_layers: Counter::default(),
            blobserve_unpacked_bytes: Counter::default(),
            blobserve_evictions: Counter::default(),
            blobserve_space_bytes: Gauge::default(),
            blobserve_prepull: Family::default(),
            ipfs_publications: Family::default(),
            ipfs_published_bytes: Counter::default(),
            prefetched_blobs: Family::default(),
            prefetched_bytes: Counter::default(),
            hosts: BoundedHosts::default(),
        };
        metrics.register();
        Arc::new(metrics)
    }

    /// Names and help texts; the Metrics section of docs/operations.md lists the same.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("build", "The facade's version", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
        r.register("requests", "Requests answered, by route, method, status code and core", self.requests.clone());
        r.register_with_unit("served", "Response body bytes handed to connections, by where they came from and core", Unit::Bytes, self.served.clone());
        r.register("cache_hits", "Lookups by digest answered from the local cache, by kind and core", self.cache_hits.clone());
        r.register("cache_misses", "Lookups by digest the local cache could not answer, by kind and core", self.cache_misses.clone());
        r.register("cache_evictions", "Blobs deleted from the cache to make room", self.cache_evictions.clone());
        r.register_with_unit("cache", "Bytes of content the cache holds, as of the scrape", Unit::Bytes, self.cache_bytes.clone());
        r.register("fills_started", "Downloads into the cache started, by source", self.fills_started.clone());
        r.register("fills_finished", "Downloads into the cache ended, by source and outcome", self.fills_finished.clone());
        r.register_with_unit("fill", "Bytes downloaded by fills, by source", Unit::Bytes, self.fill_bytes.clone());
        r.register("upstream_retries", "Upstream requests repeated after a failed attempt, and blob bodies resumed, by host", self.upstream_retries.clone());
        r.register_with_unit(
            "upstream_response",
            "Time from sending a request upstream to its response head, by host",
            Unit::Seconds,
            self.upstream_response.clone(),
        );
        r.register("open_connections", "Client connections open, by listener and core", self.open_connections.clone());
        r.register("refused_connections", "Connections refused at accept for a connection limit, by reason and core", self.refused_connections.clone());
        r.register("file_reloads", "Changed files read again while serving (TLS, credentials, config), by outcome", self.file_reloads.clone());
        r.register("blobserve_prepared", "Images blobserve prepared (fetched, unpacked, merged), by outcome", self.blobserve_prepared.clone());
        r.register("blobserve_unpacked_layers", "Layers blobserve unpacked into its blob space", self.blobserve_unpacked_layers.clone());
        r.register_with_unit("blobserve_unpacked", "Uncompressed archive bytes of the layers blobserve unpacked", Unit::Bytes, self.blobserve_unpacked_bytes.clone());
        r.register("blobserve_evictions", "Units (unpacked layers, replaced files) deleted from the blob space to make room", self.blobserve_evictions.clone());
        r.register_with_unit("blobserve_space", "Bytes the blob space holds, as of the scrape", Unit::Bytes, self.blobserve_space_bytes.clone());
        r.register("blobserve_prepull", "Images of the pre-pull lists, by state, as of the scrape", self.blobserve_prepull.clone());
        r.register("ipfs_publications", "Blobs from upstream offered for publication to IPFS, by outcome", self.ipfs_publications.clone());
        r.register_with_unit("ipfs_published", "Bytes of blobs added to IPFS", Unit::Bytes, self.ipfs_published_bytes.clone());
        r.register("prefetch_blobs", "Blobs of prefetched images, by outcome", self.prefetched_blobs.clone());
        r.register_with_unit("prefetched", "Bytes prefetches brought into the cache", Unit::Bytes, self.prefetched_bytes.clone());
    }

    /// A watched file changed and was read again (off the executors: counted directly).
    pub fn file_reloaded(&self, file: ReloadedFile, outcome: ReloadOutcome) {
        self.file_reloads.get_or_create(&ReloadLabels { file, outcome }).inc();
    }

    /// Records what is read at scrape time rather than counted: the bytes the cache holds.
    pub fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records blobserve's state at scrape time: the blob space's bytes and the pre-pull
    /// progress (pending, ready, failed).
    pub fn set_blobserve(&self, space_bytes: u64, prepull: [usize; 3]) {
        self.blobserve_space_bytes.set(i64::try_from(space_bytes).unwrap_or(i64::MAX));
        for (state, count) in PrepullState::ALL.iter().zip(prepull) {
            self.blobserve_prepull.get_or_create(&PrepullLabels { state: *state }).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The exposition, in the OpenMetrics text format (`CONTENT_TYPE`).
    ///
    /// # Errors
    /// A label value could not be encoded (none of ours can fail; the encoder's API can).
    pub fn render(&self) -> Result<String, RenderError> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).map_err(|_| RenderError)?;
        Ok(text)
    }
}
