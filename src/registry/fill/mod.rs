//! Single-flight fills: however many requests and cores ask for a blob the cache lacks, one
//! download runs (detached, on the first asker's executor) into a temp file every reader follows.
//! The blob is published, and its last byte sent, only once size and sha256 match; otherwise every
//! reader fails and nothing is kept. Without room, each reader streams from upstream itself.

mod reader;
mod writer;

use std::fs::File;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use event_listener::Event;
use futures_lite::Stream;

use crate::blocking::run_blocking;
use super::budget::Reservation;
use super::content::Content;
use super::publish::Publisher;
use crate::ipfs::{Ipfs, Located};
use crate::metrics::{self, ByteSource, FillOutcome, FillSource};
use crate::oci::Digest;
use crate::store::{CacheDir, StoreError};
use crate::table::SharedMap;
use crate::upstream::{BlobDownload, BlobLocation, Upstream, UpstreamError};
use reader::FillReader;
use writer::{BatchWriter, WriteFailure};

/// Bytes gathered before they are written to the temp file (and shown to readers).
const WRITE_BATCH: usize = 1 << 20;
/// A piece of a blob for a response: bytes, and where they lie in a file that never changes
/// (so the stream adapter may send them with sendfile) when they come from one.
pub struct BlobChunk {
    pub data: Bytes,
    pub file: Option<(Arc<File>, u64)>,
    /// Written moments ago: the reader is close behind a running fill, so the bytes are
    /// likely still in the CPU cache (`JUST_WRITTEN_BYTES`).
    pub just_written: bool,
    /// Where the bytes came from, for the served-bytes metric.
    pub source: ByteSource,
}

/// Why a fill failed; every reader's response is aborted with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("content from upstream does not match its digest: {0}")]
    Corrupt(Arc<StoreError>),
    #[error("cache: {0}")]
    Cache(Arc<StoreError>),
    /// A reader found the fill's state poisoned (a panic while it was held), or its write
    /// task ended without an answer (the executor is stopping).
    #[error("the fill was abandoned")]
    Abandoned,
    /// Served without caching (no room): what waits for the blob in the cache waits in vain.
    #[error("not cached: {0}")]
    Uncached(String),
}

#[derive(Debug, Clone)]
enum Outcome {
    Running,
    Published,
    /// Not cached (no room); readers stream from upstream themselves.
    Uncached(String),
    Failed(FillError),
}

/// A fill's file, and where its bytes come from (for the served-bytes metric).
type SourcedFile = (Arc<File>, ByteSource);

#[derive(Debug)]
struct FillState {
    /// Set once upstream answered: the blob's size, if it said.
    total: Option<Option<u64>>,
    /// The file being written, opened once for all readers: the descriptor stays valid when
    /// the file is renamed into place (or unlinked on failure), so no reader ever races a
    /// rename by opening a path.
    file: Option<SourcedFile>,
    outcome: Outcome,
}

/// One blob being fetched into the cache.
pub struct Fill {
    digest: Digest,
    location: BlobLocation,
    written: AtomicU64,
    state: Mutex<FillState>,
    changed: Event,
    /// Ranges far ahead of this fill being fetched on their own now (`far_range.rs`).
    direct_ranges: AtomicUsize,
}

impl Fill {
    fn new(digest: Digest, location: BlobLocation) -> Fill {
        Fill {
            digest,
            location,
            written: AtomicU64::new(0),
            state: Mutex::new(FillState { total: None, file: None, outcome: Outcome::Running }),
            changed: Event::new(),
            direct_ranges: AtomicUsize::new(0),
        }
    }

    /// Bytes written so far (readers may have up to this many).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn location(&self) -> &BlobLocation {
        &self.location
    }

    /// The count of this blob's ranges fetched on their own right now.
    pub fn direct_ranges(&self) -> &AtomicUsize {
        &self.direct_ranges
    }

    fn update(&self, change: impl FnOnce(&mut FillState)) {
        if let Ok(mut state) = self.state.lock() {
            change(&mut state);
        }
        self.changed.notify(usize::MAX);
    }

    fn snapshot(&self) -> (Option<Option<u64>>, Option<SourcedFile>, Outcome) {
        match self.state.lock() {
            Ok(state) => (state.total, state.file.clone(), state.outcome.clone()),
            Err(_) => (None, None, Outcome::Failed(FillError::Abandoned)),
        }
    }

    /// Waits until upstream answered (or the fill failed first): the blob's size, if known.
    ///
    /// # Errors
    /// The fill failed before it started streaming.
    pub async fn size(&self) -> Result<Option<u64>, FillError> {
        loop {
            let listener = self.changed.listen();
            match self.snapshot() {
                (Some(total), _, _) => return Ok(total),
                (None, _, Outcome::Failed(error)) => return Err(error),
                _ => listener.await,
            }
        }
    }

    /// Waits until the fill ended: `Ok` once the blob is verified and in the cache.
    ///
    /// # Errors
    /// The fill failed, or could not cache the blob (no room).
    pub async fn finished(&self) -> Result<(), FillError> {
        loop {
            let listener = self.changed.listen();
            match self.snapshot().2 {
                Outcome::Running => listener.await,
                Outcome::Published => return Ok(()),
                Outcome::Failed(error) => return Err(error),
                Outcome::Uncached(reason) => return Err(FillError::Uncached(reason)),
            }
        }
    }

    /// A stream of `range` of the blob, following the fill (`..u64::MAX`: to the end, whatever
    /// the size turns out to be).
    pub fn reader(self: &Arc<Self>, range: Range<u64>, upstream: Upstream) -> Pin<Box<dyn Stream<Item = io::Result<BlobChunk>>>> {
        let reader = FillReader::new(Arc::clone(self), upstream, range);
        Box::pin(futures_lite::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        }))
    }
}

/// The fills in progress, shared by every executor.
#[derive(Default)]
pub struct Fills {
    table: SharedMap<Digest, Arc<Fill>>,
}

impl Fills {
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.table.get(digest)
    }

    /// The fill of `digest`, and whether this call created it (then the caller starts it).
    fn join(&self, digest: &Digest, location: &BlobLocation) -> (Arc<Fill>, bool) {
        let mine = Arc::new(Fill::new(digest.clone(), location.clone()));
        let fill = self.table.get_or_insert_with(digest.clone(), || Arc::clone(&mine));
        let created = Arc::ptr_eq(&fill, &mine);
        (fill, created)
    }
}

/// What a fill needs from the registry.
#[derive(Clone)]
pub struct FillContext {
    pub cache: Arc<CacheDir>,
    pub upstream: Upstream,
    pub content: Arc<Content>,
    pub fills: Arc<Fills>,
    pub ipfs: Option<Ipfs>,
    /// Where blobs that came from upstream are offered for publication to IPFS.
    pub publisher: Option<Arc<Publisher>>,
}

/// Where one download of a fill reads from, and what it may take.
struct Attempt {
    location: BlobLocation,
    source: FillSource,
    /// A read that must end by then (an IPFS gateway: upstream is asked after).
    deadline: Option<Instant>,
    /// The size the source should send, when known beforehand (an IPFS record's).
    expected_size: Option<u64>,
}

/// When readers see a fill's bytes: as they land (a registry, whose bytes are verified at the
/// end and a mismatch aborts everyone), or only once verified (an IPFS gateway, which may be
/// wrong; then the fill quietly falls back to upstream and no reader saw a bad byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exposure {
    AsItArrives,
    AfterVerification,
}

impl FillContext {
    /// Joins the fill of `digest` from `location`, starting it on this executor if none runs.
    pub fn join_or_start(&self, digest: &Digest, location: &BlobLocation) -> Arc<Fill> {
        let (fill, created) = self.fills.join(digest, location);
        if created {
            let context = self.clone();
            let running = Arc::clone(&fill);
            glommio::spawn_local(async move { context.run(running).await }).detach();
        }
        fill
    }

    async fn run(self, fill: Arc<Fill>) {
        let outcome = match self.already_cached(&fill).await {
            Some(outcome) => outcome,
            None => self.fetch(&fill).await,
        };
        match &outcome {
            Outcome::Failed(error) => tracing::warn!(digest = %fill.digest, location = %fill.location, %error, "fill failed"),
            Outcome::Uncached(reason) => tracing::warn!(digest = %fill.digest, reason, "blob served without caching"),
            _ => tracing::debug!(digest = %fill.digest, "fill published"),
        }
        // Readers learn the outcome before the fill leaves the table, and new requests find
        // the published blob in the cache before that, so none starts a second download.
        fill.update(|state| {
            // A failed fill's temp file is already unlinked, but its space is only freed when
            // the last descriptor closes, and the table frees removed entries lazily: let go
            // of it now, or a full disk stays full. (Readers that still need it hold their own.)
            if !matches!(outcome, Outcome::Published) {
                state.file = None;
            }
            state.outcome = outcome;
        });
        self.fills.table.remove(&fill.digest);
    }

    /// A blob published by a fill that ended just before this one was created: this fill
    /// ends at once, with the published file's size as what was written.
    async fn already_cached(&self, fill: &Arc<Fill>) -> Option<Outcome> {
        let path = self.cache.blob_path(&fill.digest).ok()?;
        let file = run_blocking(move || File::open(&path)).await.ok()?;
        let size = file.metadata().ok()?.len();
        fill.written.store(size, Ordering::Release);
        fill.update(|state| {
            state.total = Some(Some(size));
            state.file = Some((Arc::new(file), ByteSource::Cache));
        });
        Some(Outcome::Published)
    }

    /// IPFS first when Redis names a CID (a blob from there is not published again), then
    /// upstream (a blob from there is offered for publication). A node that publishes claims
    /// the upstream fetch for the fleet; the others wait for its publication (bounded) rather
    /// than fetch the same blob from upstream at the same time.
    async fn fetch(&self, fill: &Arc<Fill>) -> Outcome {
        let mut claim = None;
        if let Some(ipfs) = &self.ipfs {
            match ipfs.locate(&fill.digest).await {
                // Read once; a record whose gateway failed us is not waited on again.
                Some(located) => {
                    if let Some(outcome) = self.read_from_ipfs(fill, ipfs, Some(located)).await {
                        return outcome;
                    }
                }
                None => {
                    if self.publisher.is_some() {
                        claim = ipfs.claim(&fill.digest).await;
                    }
                    if claim.is_none() {
                        if let Some(outcome) = self.read_from_ipfs(fill, ipfs, ipfs.wait_for_peer(&fill.digest).await).await {
                            return outcome;
                        }
                    }
                }
            }
        }
        let attempt = Attempt { location: fill.location.clone(), source: FillSource::Upstream, deadline: None, expected_size: None };
        let outcome = self.fetch_from(fill, attempt).await;
        // The claim goes with the publication (given back when it ends), or now.
        if let (Outcome::Published, Some(publisher)) = (&outcome, &self.publisher) {
            publisher.offer(&fill.digest, fill.written.load(Ordering::Acquire), claim);
        }
        outcome
    }

    /// The blob read from IPFS at `located`: `Some(Published)`, or `None` when it was not
    /// there in time or was other bytes (whose record is then deleted).
    async fn read_from_ipfs(&self, fill: &Arc<Fill>, ipfs: &Ipfs, located: Option<Located>) -> Option<Outcome> {
        let located = located?;
        let attempt = Attempt {
            location: BlobLocation::Url(located.url.clone()),
            source: FillSource::Ipfs,
            deadline: Some(Instant::now() + ipfs.settings().gateway_timeout),
            expected_size: located.record.size,
        };
        match self.fetch_from(fill, attempt).await {
            Outcome::Published => return Some(Outcome::Published),
            Outcome::Failed(FillError::Corrupt(lie)) => ipfs.forget(&fill.digest, &format!("{} sent other bytes: {lie}", located.record.cid)).await,
            other => tracing::warn!(digest = %fill.digest, cid = located.record.cid, outcome = ?other, "the IPFS gateway did not deliver; fetching from upstream"),
        }
        None
    }

    /// One download into the cache, counted in the fill metrics.
    async fn fetch_from(&self, fill: &Arc<Fill>, attempt: Attempt) -> Outcome {
        let source = attempt.source;
        metrics::fill_started(source);
        let (outcome, received) = self.download_into_cache(fill, &attempt).await;
        metrics::fill_bytes(source, received);
        metrics::fill_finished(source, match outcome {
            Outcome::Published => FillOutcome::Completed,
            Outcome::Uncached(_) => FillOutcome::Uncached,
            Outcome::Running | Outcome::Failed(_) => FillOutcome::Failed,
        });
        outcome
    }

    /// The outcome, and the bytes received.
    async fn download_into_cache(&self, fill: &Arc<Fill>, attempt: &Attempt) -> (Outcome, u64) {
        let exposure = match attempt.source {
            FillSource::Upstream => Exposure::AsItArrives,
            FillSource::Ipfs => Exposure::AfterVerification,
        };
        let started = within_deadline(attempt.deadline, self.upstream.download(attempt.location.clone(), 0)).await;
        let mut download = match started {
            Some(Ok(download)) => download,
            Some(Err(error)) => return (Outcome::Failed(error.into()), 0),
            None => return (Outcome::Failed(source_too_slow(&attempt.location)), 0),
        };
        let total = download.total();
        if let (Some(expected), Some(announced)) = (attempt.expected_size, total) {
            if expected != announced {
                let lie = StoreError::SizeMismatch { expected, actual: announced };
                return (Outcome::Failed(FillError::Corrupt(Arc::new(lie))), 0);
            }
        }
        // A body of unannounced length is bounded by nothing else: an endless one would fill
        // the disk before the digest check could fail it. No blob outgrows the whole budget.
        if let (None, Some(max_bytes)) = (total, self.content.budget().max_bytes()) {
            download.limit_to(max_bytes);
        }
        if exposure == Exposure::AsItArrives {
            fill.update(|state| state.total = Some(total));
        }
        let reserved = total.unwrap_or(0);
        match self.content.reserve(reserved, &self.cache).await {
            Reservation::Granted { .. } => {}
            Reservation::Refused => return (Outcome::Uncached("the cache budget is full of blobs in use or pinned".into()), 0),
        }
        let outcome = self.stream_into_cache(fill, &mut download, attempt, total, reserved, exposure).await;
        if !matches!(outcome, Outcome::Published) {
            self.content.release(reserved);
        }
        (outcome, download.received())
    }

    async fn stream_into_cache(&self, fill: &Arc<Fill>, download: &mut BlobDownload, attempt: &Attempt, total: Option<u64>, reserved: u64, exposure: Exposure) -> Outcome {
        let cache = Arc::clone(&self.cache);
        let started = run_blocking(move || {
            let ingest = cache.begin_ingest()?;
            let file = File::open(ingest.temp_path()).map_err(StoreError::io("open", ingest.temp_path()))?;
            Ok::<_, StoreError>((ingest, file))
        });
        let (ingest, file) = match started.await {
            Ok(started) => started,
            Err(e) => return store_failure(e),
        };
        let file = Arc::new(file);
        if exposure == Exposure::AsItArrives {
            fill.update(|state| state.file = Some((Arc::clone(&file), ByteSource::Upstream)));
        }
        let mut writer = BatchWriter::new(ingest, exposure);
        loop {
            match within_deadline(attempt.deadline, download.next_chunk()).await {
                Some(Ok(Some(chunk))) => {
                    if let Err(e) = writer.push(chunk, fill).await {
                        return write_failure(e);
                    }
                }
                Some(Ok(None)) => break,
                Some(Err(error)) => return Outcome::Failed(error.into()),
                None => return Outcome::Failed(source_too_slow(&attempt.location)),
            }
        }
        let ingest = match writer.finish(fill).await {
            Ok(ingest) => ingest,
            Err(e) => return write_failure(e),
        };
        let digest = fill.digest.clone();
        let cache = Arc::clone(&self.cache);
        let committed = run_blocking(move || {
            ingest.commit(&digest, total)?;
            // What the file is now that it is verified; reopening it later costs an fstat.
            Ok::<_, StoreError>(cache.blob_identity(&digest).ok().flatten())
        })
        .await;
        match committed {
            Ok(identity) => {
                let size = download.received();
                self.content.published(&fill.digest, size, reserved, identity);
                if exposure == Exposure::AfterVerification {
                    fill.written.store(size, Ordering::Release);
                    fill.update(|state| {
                        state.total = Some(Some(size));
                        state.file = Some((file, ByteSource::Ipfs));
                    });
                }
                Outcome::Published
            }
            Err(e @ (StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. })) => Outcome::Failed(FillError::Corrupt(Arc::new(e))),
            Err(e) => store_failure(e),
        }
    }
}

/// `future`, or `None` once `deadline` (if any) has passed.
async fn within_deadline<T>(deadline: Option<Instant>, future: impl Future<Output = T>) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => crate::clock::within(deadline.saturating_duration_since(Instant::now()), future).await,
    }
}

/// A source that did not deliver by its deadline (only IPFS gateways have one).
fn source_too_slow(location: &BlobLocation) -> FillError {
    let host = match location {
        BlobLocation::Url(url) => crate::upstream::redact_url(url),
        BlobLocation::Registry { repo, .. } => repo.host.clone(),
    };
    FillError::Upstream(UpstreamError::TimedOut { host, attempts: 1, what: "ipfs.gatewayTimeoutMs" })
}

fn write_failure(failure: WriteFailure) -> Outcome {
    match failure {
        WriteFailure::Store(error) => store_failure(error),
        WriteFailure::Lost => Outcome::Failed(FillError::Abandoned),
    }
}

fn store_failure(error: StoreError) -> Outcome {
    if error.is_disk_full() {
        Outcome::Uncached(format!("disk full: {error}"))
    } else {
        Outcome::Failed(FillError::Cache(Arc::new(error)))
    }
}
