//! Recording, from the executor the code runs on: each executor's meter (a thread-local) holds
//! its series resolved once, so a record is an index and an uncontended atomic add, on a cache
//! line no other core writes. Where no meter is installed (blocking pool, `import`, unit tests)
//! nothing is served and nothing is recorded.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use super::labels::{CacheLabels, ConnectionLabels, FillLabels, FillOutcomeLabels, HostLabels, PrefetchLabels, PrepareLabels, PublicationLabels, RefusalLabels, RequestLabels, RetryLabels, ServedLabels};
use super::{ByteSource, CacheKind, FillOutcome, FillSource, HotCounter, Listener, Method, Metrics, PrefetchOutcome, PrepareOutcome, Publication, Refusal, RetryKind, Route};

/// The status codes the facade answers with, sorted: each has a per-core slot. Any other
/// code (none expected) is still counted, through the family's lookup.
const STATUSES: [u16; 19] = [200, 201, 204, 206, 301, 304, 307, 400, 401, 403, 404, 405, 413, 416, 429, 500, 502, 503, 504];

thread_local! {
    static METER: OnceCell<CoreMeter> = const { OnceCell::new() };
}

/// One executor's handles into the shared families.
struct CoreMeter {
    metrics: Arc<Metrics>,
    core: u16,
    /// By route, method and status slot; created on first use, so only combinations that
    /// happen become series.
    requests: Box<[OnceCell<HotCounter>]>,
    served: Vec<HotCounter>,
    hits: Vec<HotCounter>,
    misses: Vec<HotCounter>,
    connections: Vec<Gauge>,
    refused: Vec<HotCounter>,
}

impl CoreMeter {
    fn new(metrics: Arc<Metrics>, core: u16) -> CoreMeter {
        let slots = Route::COUNT * Method::COUNT * STATUSES.len();
        let served = ByteSource::ALL.iter().map(|&source| metrics.served.get_or_create_owned(&ServedLabels { source, core })).collect();
        let cache = |family: &prometheus_client::metrics::family::Family<CacheLabels, HotCounter>| {
            CacheKind::ALL.iter().map(|&kind| family.get_or_create_owned(&CacheLabels { kind, core })).collect()
        };
        let (hits, misses) = (cache(&metrics.cache_hits), cache(&metrics.cache_misses));
        let connections = Listener::ALL.iter().map(|&listener| metrics.open_connections.get_or_create_owned(&ConnectionLabels { listener, core })).collect();
        let refused = Refusal::ALL.iter().map(|&reason| metrics.refused_connections.get_or_create_owned(&RefusalLabels { reason, core })).collect();
        CoreMeter { requests: (0..slots).map(|_| OnceCell::new()).collect(), served, hits, misses, connections, refused, metrics, core }
    }

    fn request(&self, route: Route, method: Method, code: u16) {
        let labels = || RequestLabels { route, method, code, core: self.core };
        let Ok(status) = STATUSES.binary_search(&code) else {
            self.metrics.requests.get_or_create(&labels()).inc();
            return;
        };
        let slot = (route.index() * Method::COUNT + method.index()) * STATUSES.len() + status;
        if let Some(cell) = self.requests.get(slot) {
            cell.get_or_init(|| self.metrics.requests.get_or_create_owned(&labels())).inc();
        }
    }
}

impl Metrics {
    /// Makes this thread record into `self` as executor `core`. Call once, first thing on
    /// each executor thread; a second call on the same thread is ignored.
    pub fn enter_core(self: &Arc<Self>, core: usize) {
        let core = u16::try_from(core).unwrap_or(u16::MAX);
        let _ = METER.try_with(|meter| {
            meter.get_or_init(|| CoreMeter::new(Arc::clone(self), core));
        });
    }
}

fn with_meter<T>(record: impl FnOnce(&CoreMeter) -> T) -> Option<T> {
    METER.try_with(|meter| meter.get().map(record)).ok().flatten()
}

/// A request answered with `code` (counted when its response head is ready).
pub fn request(route: Route, method: &http::Method, code: u16) {
    with_meter(|m| m.request(route, Method::of(method), code));
}

/// `bytes` of a response body handed to the connection.
pub fn served(source: ByteSource, bytes: u64) {
    with_meter(|m| m.served[source.index()].inc_by(bytes));
}

/// A lookup by digest in the local cache.
pub fn cache_lookup(kind: CacheKind, hit: bool) {
    with_meter(|m| if hit { &m.hits } else { &m.misses }[kind.index()].inc());
}

pub fn cache_evicted(blobs: u64) {
    with_meter(|m| m.metrics.cache_evictions.inc_by(blobs));
}

pub fn fill_started(source: FillSource) {
    with_meter(|m| m.metrics.fills_started.get_or_create(&FillLabels { source }).inc());
}

pub fn fill_finished(source: FillSource, outcome: FillOutcome) {
    with_meter(|m| m.metrics.fills_finished.get_or_create(&FillOutcomeLabels { source, outcome }).inc());
}

/// `bytes` a fill downloaded from `source` (whatever its outcome).
pub fn fill_bytes(source: FillSource, bytes: u64) {
    with_meter(|m| m.metrics.fill_bytes.get_or_create(&FillLabels { source }).inc_by(bytes));
}

/// Blobserve finished preparing an image (`ready`: it can be served).
pub fn blobserve_prepared(ready: bool) {
    let outcome = if ready { PrepareOutcome::Ready } else { PrepareOutcome::Failed };
    with_meter(|m| m.metrics.blobserve_prepared.get_or_create(&PrepareLabels { outcome }).inc());
}

/// Blobserve unpacked a layer of `archive_bytes` uncompressed bytes.
pub fn blobserve_layer_unpacked(archive_bytes: u64) {
    with_meter(|m| {
        m.metrics.blobserve_unpacked_layers.inc();
        m.metrics.blobserve_unpacked_bytes.inc_by(archive_bytes);
    });
}

/// Blobserve deleted `units` from its blob space to make room.
pub fn blobserve_evicted(units: u64) {
    with_meter(|m| m.metrics.blobserve_evictions.inc_by(units));
}

/// A blob offered for publication to IPFS came to `outcome`; `bytes` were added if published.
pub fn ipfs_publication(outcome: Publication, bytes: u64) {
    with_meter(|m| {
        m.metrics.ipfs_publications.get_or_create(&PublicationLabels { outcome }).inc();
        m.metrics.ipfs_published_bytes.inc_by(bytes);
    });
}

/// A blob of a prefetched image came to `outcome`; `bytes` were brought in if fetched.
pub fn prefetched(outcome: PrefetchOutcome, bytes: u64) {
    with_meter(|m| {
        m.metrics.prefetched_blobs.get_or_create(&PrefetchLabels { outcome }).inc();
        m.metrics.prefetched_bytes.inc_by(bytes);
    });
}

pub fn upstream_retry(host: &str, kind: RetryKind) {
    with_meter(|m| m.metrics.upstream_retries.get_or_create(&RetryLabels { host: m.metrics.hosts.label(host), kind }).inc());
}

/// An upstream response head arrived `elapsed` after its request was sent.
pub fn upstream_response(host: &str, elapsed: Duration) {
    with_meter(|m| m.metrics.upstream_response.get_or_create(&HostLabels { host: m.metrics.hosts.label(host) }).observe(elapsed.as_secs_f64()));
}

/// Counts a connection as open until the returned guard is dropped.
#[must_use = "the connection counts as open while the guard lives"]
pub fn connection_opened(listener: Listener) -> OpenConnection {
    OpenConnection(with_meter(|m| {
        let gauge = m.connections[listener.index()].clone();
        gauge.inc();
        gauge
    }))
}

/// A connection refused at accept because of a connection limit (an overload storm is many).
pub fn connection_refused(reason: Refusal) {
    with_meter(|m| m.refused[reason.index()].inc());
}

/// See `connection_opened`.
pub struct OpenConnection(Option<Gauge>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0 {
            gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn records_per_core_and_only_on_a_thread_with_a_meter() {
        let metrics = Metrics::new();
        let other = Arc::clone(&metrics);
        std::thread::spawn(move || {
            other.enter_core(3);
            request(Route::Manifest, &http::Method::GET, 200);
            request(Route::Manifest, &http::Method::GET, 200);
            request(Route::Blob, &http::Method::HEAD, 418);
            served(ByteSource::Cache, 10);
            cache_lookup(CacheKind::Blob, false);
            let open = connection_opened(Listener::Registry);
            drop(connection_opened(Listener::Registry));
            std::mem::forget(open);
        })
        .join()
        .unwrap();
        request(Route::Manifest, &http::Method::GET, 200);
        let text = metrics.render().unwrap();
        let requests = r#"registry_facade_requests_total{route="manifest",method="GET",code="200",core="3"}"#;
        assert_eq!(sample(&text, requests), Some(2.0), "{text}");
        assert_eq!(sample(&text, r#"registry_facade_requests_total{route="blob",method="HEAD",code="418",core="3"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"registry_facade_served_bytes_total{source="cache",core="3"}"#), Some(10.0));
        assert_eq!(sample(&text, r#"registry_facade_cache_misses_total{kind="blob",core="3"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"registry_facade_open_connections{listener="registry",core="3"}"#), Some(1.0));
        assert!(text.ends_with("# EOF\n"));
    }
}
