//! Single-flight fills: however many requests and cores ask for a blob the cache lacks, one
//! download runs (detached, on the first asker's executor) into a temp file every reader follows.
//! The blob is published, and its last byte sent, only once size and sha256 match; otherwise every
//! reader fails and nothing is kept. Without room, each reader streams from upstream itself.

use std::fs::File;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use event_listener::Event;
use futures_lite::Stream;
use sha2::{Digest as _, Sha256};

use super::blocking::run_blocking;
use super::budget::Reservation;
use super::content::Content;
use crate::metrics::{self, ByteSource, FillOutcome, FillSource};
use crate::oci::Digest;
use crate::store::{CacheDir, Ingest, StoreError};
use crate::ipfs::IpfsGateway;
use crate::table::SharedMap;
use crate::upstream::{BlobDownload, BlobLocation, Upstream, UpstreamError};

/// Bytes gathered before they are written to the temp file (and shown to readers).
const WRITE_BATCH: usize = 1 << 20;
/// Largest chunk a reader sends at a time (one mapping of the file each).
const READ_CHUNK: u64 = 4 << 20;
/// How far behind a running fill's written end a chunk may start and still count as just
/// written. A cold pullstorm's readers keep this close and gain from sending such bytes by
/// sendfile (docs/architecture.md, "Zero-copy paths"); 64 curls of a 256 MiB blob fall
/// hundreds of MiB behind a fast fill, and sendfile of those long-written pages cost them more.
const JUST_WRITTEN_BYTES: u64 = 8 << 20;

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
    /// A reader found the fill's state poisoned (a panic while it was held).
    #[error("the fill was abandoned")]
    Abandoned,
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
}

impl Fill {
    fn new(digest: Digest, location: BlobLocation) -> Fill {
        Fill {
            digest,
            location,
            written: AtomicU64::new(0),
            state: Mutex::new(FillState { total: None, file: None, outcome: Outcome::Running }),
            changed: Event::new(),
        }
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

    /// A stream of `range` of the blob, following the fill (`..u64::MAX`: to the end, whatever
    /// the size turns out to be).
    pub fn reader(self: &Arc<Self>, range: Range<u64>, upstream: Upstream) -> Pin<Box<dyn Stream<Item = io::Result<BlobChunk>>>> {
        let total = self.snapshot().0.flatten();
        let whole = range.start == 0 && (range.end == u64::MAX || Some(range.end) == total);
        let reader = FillReader { fill: Arc::clone(self), upstream, file: None, pos: range.start, end: range.end, direct: None, whole, hasher: None };
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
    pub ipfs: Option<IpfsGateway>,
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

    async fn fetch(&self, fill: &Arc<Fill>) -> Outcome {
        if let Some(gateway) = &self.ipfs {
            if let Some(url) = gateway.locate(&fill.digest.to_string()).await {
                match self.fetch_from(fill, BlobLocation::Url(url.clone()), FillSource::Ipfs).await {
                    Outcome::Published => return Outcome::Published,
                    other => tracing::warn!(digest = %fill.digest, url = %crate::upstream::redact_url(&url), outcome = ?other, "the IPFS gateway did not deliver; fetching from upstream"),
                }
            }
        }
        self.fetch_from(fill, fill.location.clone(), FillSource::Upstream).await
    }

    /// One download into the cache from `source`, counted in the fill metrics.
    async fn fetch_from(&self, fill: &Arc<Fill>, location: BlobLocation, source: FillSource) -> Outcome {
        metrics::fill_started(source);
        let (outcome, received) = self.download_into_cache(fill, location, source).await;
        metrics::fill_bytes(source, received);
        metrics::fill_finished(source, match outcome {
            Outcome::Published => FillOutcome::Completed,
            Outcome::Uncached(_) => FillOutcome::Uncached,
            Outcome::Running | Outcome::Failed(_) => FillOutcome::Failed,
        });
        outcome
    }

    /// The outcome, and the bytes received from `location`.
    async fn download_into_cache(&self, fill: &Arc<Fill>, location: BlobLocation, source: FillSource) -> (Outcome, u64) {
        let exposure = match source {
            FillSource::Upstream => Exposure::AsItArrives,
            FillSource::Ipfs => Exposure::AfterVerification,
        };
        let mut download = match self.upstream.download(location, 0).await {
            Ok(download) => download,
            Err(error) => return (Outcome::Failed(error.into()), 0),
        };
        let total = download.total();
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
        let outcome = self.stream_into_cache(fill, &mut download, total, reserved, exposure).await;
        if !matches!(outcome, Outcome::Published) {
            self.content.release(reserved);
        }
        (outcome, download.received())
    }

    async fn stream_into_cache(&self, fill: &Arc<Fill>, download: &mut BlobDownload, total: Option<u64>, reserved: u64, exposure: Exposure) -> Outcome {
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
            match download.next_chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = writer.push(chunk, fill).await {
                        return store_failure(e);
                    }
                }
                Ok(None) => break,
                Err(error) => return Outcome::Failed(error.into()),
            }
        }
        let ingest = match writer.finish(fill).await {
            Ok(ingest) => ingest,
            Err(e) => return store_failure(e),
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

/// `len` bytes of `file` from `offset`, mapped read-only (from the page boundary below).
fn map_range(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    const PAGE: u64 = 4096;
    let start = offset - offset % PAGE;
    let skip = (offset - start) as usize;
    // SAFETY: the file is a fill's temp file or a published blob: only ever appended to, never
    // truncated or rewritten, so the mapped range keeps its bytes for the mapping's life.
    let map = unsafe { memmap2::MmapOptions::new().offset(start).len(skip + len as usize).map(file)? };
    Ok(Bytes::from_owner(map).slice(skip..))
}

fn store_failure(error: StoreError) -> Outcome {
    if error.is_disk_full() {
        Outcome::Uncached(format!("disk full: {error}"))
    } else {
        Outcome::Failed(FillError::Cache(Arc::new(error)))
    }
}

type PendingWrite = Pin<Box<dyn Future<Output = (Ingest, Result<u64, StoreError>)>>>;

/// Writes chunks to the ingest in batches on the blocking pool (which also hashes them), one
/// batch in flight while the next is gathered, and advances the fill's visible length after
/// each. Chunks are kept as received, never copied into a batch buffer.
struct BatchWriter {
    ingest: Option<Ingest>,
    in_flight: Option<PendingWrite>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    exposure: Exposure,
}

impl BatchWriter {
    fn new(ingest: Ingest, exposure: Exposure) -> BatchWriter {
        BatchWriter { ingest: Some(ingest), in_flight: None, batch: Vec::new(), batch_bytes: 0, exposure }
    }

    async fn push(&mut self, chunk: Bytes, fill: &Fill) -> Result<(), StoreError> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= WRITE_BATCH {
            self.flush(fill).await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, then starts writing the gathered batch.
    async fn flush(&mut self, fill: &Fill) -> Result<(), StoreError> {
        self.settle(fill).await?;
        let Some(mut ingest) = self.ingest.take() else { return Ok(()) };
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes) as u64;
        self.in_flight = Some(Box::pin(run_blocking(move || {
            let written = batch.iter().try_for_each(|chunk| ingest.write(chunk)).map(|()| bytes);
            (ingest, written)
        })));
        Ok(())
    }

    async fn settle(&mut self, fill: &Fill) -> Result<(), StoreError> {
        if let Some(write) = self.in_flight.take() {
            let (ingest, written) = write.await;
            self.ingest = Some(ingest);
            let written = written?;
            if self.exposure == Exposure::AsItArrives {
                fill.written.fetch_add(written, Ordering::AcqRel);
                fill.changed.notify(usize::MAX);
            }
        }
        Ok(())
    }

    async fn finish(mut self, fill: &Fill) -> Result<Ingest, StoreError> {
        self.flush(fill).await?;
        self.settle(fill).await?;
        self.ingest.take().ok_or_else(|| StoreError::Io {
            op: "finish",
            path: PathBuf::new(),
            source: io::Error::other("ingest lost"),
        })
    }
}

/// One reader of a fill: reads what the fill has written, waits for more, and switches to its
/// own upstream stream when the fill stops caching.
struct FillReader {
    fill: Arc<Fill>,
    upstream: Upstream,
    file: Option<SourcedFile>,
    pos: u64,
    end: u64,
    direct: Option<BlobDownload>,
    /// Whether this reader sends the whole blob (then a direct stream is verified).
    whole: bool,
    /// The hash of what this reader sent, while it streams directly from upstream.
    hasher: Option<Sha256>,
}

impl FillReader {
    async fn next(&mut self) -> Option<io::Result<BlobChunk>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            // The paths taken when a fill stops caching are boxed: every response that follows
            // a fill holds this future, 1 KB so and 12.7 KB with them inline (a cold storm of
            // 1,000 workspaces has 4,000 such responses at once).
            if self.direct.is_some() {
                return Box::pin(self.next_direct()).await;
            }
            let listener = self.fill.changed.listen();
            let written = self.fill.written.load(Ordering::Acquire);
            let (total, _, outcome) = self.fill.snapshot();
            // The blob's last byte goes out only once the whole blob is verified: a client
            // never receives a complete response of bytes that do not match the digest (a
            // mismatch cuts every response one byte short, which every client notices).
            let readable = match (total, &outcome) {
                (Some(Some(total)), outcome) if written >= total && !matches!(outcome, Outcome::Published) => total.saturating_sub(1),
                _ => written,
            };
            if self.pos < readable {
                let just_written = matches!(outcome, Outcome::Running) && written - self.pos <= JUST_WRITTEN_BYTES;
                return Some(self.read_file(readable, just_written));
            }
            match outcome {
                Outcome::Running => listener.await,
                // An open-ended read (size unknown at the start) ends where the blob ends.
                Outcome::Published if self.pos >= written && self.end == u64::MAX => return None,
                Outcome::Published if self.pos >= written => {
                    return Some(Err(io::Error::other("blob shorter than the range asked")));
                }
                Outcome::Published => {}
                Outcome::Failed(error) => return Some(Err(io::Error::other(error.to_string()))),
                Outcome::Uncached(_) => {
                    if self.whole {
                        match Box::pin(self.hash_prefix()).await {
                            Ok(hasher) => self.hasher = Some(hasher),
                            Err(error) => return Some(Err(error)),
                        }
                    }
                    match Box::pin(self.upstream.download(self.fill.location.clone(), self.pos)).await {
                        Ok(download) => self.direct = Some(download),
                        Err(error) => return Some(Err(io::Error::other(error.to_string()))),
                    }
                }
            }
        }
    }

    /// Maps the next chunk below `written` of the fill's file. The file is only ever appended
    /// to and never truncated, so the mapping stays valid; the bytes were just written, so
    /// they are in the page cache.
    fn read_file(&mut self, written: u64, just_written: bool) -> io::Result<BlobChunk> {
        if self.file.is_none() {
            self.file = self.fill.snapshot().1;
        }
        let (file, source) = self.file.as_ref().ok_or_else(|| io::Error::other("no file"))?;
        let len = READ_CHUNK.min(written - self.pos).min(self.end - self.pos);
        let data = map_range(file, self.pos, len)?;
        let chunk = BlobChunk { data, file: Some((Arc::clone(file), self.pos)), just_written, source: *source };
        self.pos += len;
        Ok(chunk)
    }

    /// The hash of the bytes this reader already sent from the fill's file (`0..pos`), so a
    /// direct stream that continues them can be verified as a whole.
    async fn hash_prefix(&mut self) -> io::Result<Sha256> {
        let mut hasher = Sha256::new();
        if self.pos == 0 {
            return Ok(hasher);
        }
        let file = match &self.file {
            Some((file, _)) => Arc::clone(file),
            None => return Err(io::Error::other("no file to verify the start of the blob from")),
        };
        let len = self.pos;
        run_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buffer = vec![0; READ_CHUNK as usize];
            let mut at = 0;
            while at < len {
                let want = (len - at).min(READ_CHUNK) as usize;
                let n = file.read_at(&mut buffer[..want], at)?;
                if n == 0 {
                    return Err(io::Error::other("the fill's file is shorter than what was sent"));
                }
                hasher.update(&buffer[..n]);
                at += n as u64;
            }
            Ok(hasher)
        })
        .await
    }

    /// Whether everything sent (and `last`, about to be) hashes to the blob's digest; `None`
    /// when this reader does not verify.
    fn verified_with(&mut self, last: &[u8]) -> Option<bool> {
        let mut hasher = self.hasher.take()?;
        hasher.update(last);
        let actual = Digest::sha256_from_bytes(&hasher.finalize().into());
        Some(actual == self.fill.digest)
    }

    /// Streams from upstream directly (the fill stopped caching). A whole-blob reader hashes
    /// what it sends and holds the final chunk until the hash matches, as fills do.
    async fn next_direct(&mut self) -> Option<io::Result<BlobChunk>> {
        let download = self.direct.as_mut()?;
        let total = download.total();
        match download.next_chunk().await {
            Ok(Some(chunk)) => {
                let take = (self.end - self.pos).min(chunk.len() as u64) as usize;
                let data = chunk.slice(..take);
                let last = total.is_some_and(|total| self.pos + take as u64 >= total);
                let verified = if last { self.verified_with(&data) } else { None };
                if let Some(hasher) = self.hasher.as_mut().filter(|_| !last) {
                    hasher.update(&data);
                }
                if verified == Some(false) {
                    return Some(Err(io::Error::other(format!("content from upstream does not match {}", self.fill.digest))));
                }
                self.pos += take as u64;
                Some(Ok(BlobChunk { data, file: None, just_written: false, source: ByteSource::Upstream }))
            }
            Ok(None) if self.end == u64::MAX => match self.verified_with(&[]) {
                Some(false) => Some(Err(io::Error::other(format!("content from upstream does not match {}", self.fill.digest)))),
                _ => None,
            },
            Ok(None) => Some(Err(io::Error::other("upstream ended before the range"))),
            Err(error) => Some(Err(io::Error::other(error.to_string()))),
        }
    }
}
