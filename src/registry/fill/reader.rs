//! One reader of a fill: it follows the growing temp file (or the published blob), and
//! streams straight from upstream when the fill stops caching.

use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::{BlobChunk, Fill, Outcome, SourcedFile};
use crate::metrics::ByteSource;
use crate::oci::Digest;
use crate::blocking::run_blocking;
use crate::upstream::{BlobDownload, Upstream};

/// Largest chunk a reader sends at a time (one mapping of the file each).
const READ_CHUNK: u64 = 4 << 20;
/// How far behind a running fill's written end a chunk may start and still count as just
/// written. A cold pullstorm's readers keep this close and gain from sending such bytes by
/// sendfile (docs/architecture.md, "Zero-copy paths"); 64 curls of a 256 MiB blob fall
/// hundreds of MiB behind a fast fill, and sendfile of those long-written pages cost them more.
const JUST_WRITTEN_BYTES: u64 = 8 << 20;

/// One reader of a fill: reads what the fill has written, waits for more, and switches to its
/// own upstream stream when the fill stops caching.
pub(super) struct FillReader {
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
    pub(super) fn new(fill: Arc<Fill>, upstream: Upstream, range: std::ops::Range<u64>) -> FillReader {
        let total = fill.snapshot().0.flatten();
        let whole = range.start == 0 && (range.end == u64::MAX || Some(range.end) == total);
        FillReader { fill, upstream, file: None, pos: range.start, end: range.end, direct: None, whole, hasher: None }
    }

    pub(super) async fn next(&mut self) -> Option<io::Result<BlobChunk>> {
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
