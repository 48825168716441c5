//! Ranges far ahead of a fill, fetched from upstream on their own: a lazy client's small read
//! near the end of a cold blob (an eStargz footer and TOC, a file a snapshotter needs) would
//! otherwise wait for the whole download to get there. Only bounded, small ranges, a few per
//! blob at a time; the rest follow the fill. Bytes so fetched are sent, not cached.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_lite::{Stream, StreamExt};

use super::fill::{BlobChunk, Fill};
use crate::metrics::ByteSource;
use crate::upstream::{BlobDownload, Upstream, UpstreamError};

/// How far past what the fill has written a range must start to be fetched on its own. At
/// 100 MB/s, a good pull over the internet, the fill covers this in about 85 ms, a round trip
/// or two to a registry: nearer ranges gain nothing from a request of their own.
pub const FAR_AHEAD_BYTES: u64 = 8 << 20;
/// The longest range fetched on its own. Lazy clients read files and TOCs of kilobytes to a
/// few MiB; containerd's parallel layer fetch asks for open-ended ranges (to the blob's end,
/// longer than this but near the end), which follow the fill, so that a cold pull does not
/// download the blob twice.
pub const DIRECT_RANGE_MAX_BYTES: u64 = 4 << 20;
/// Ranges of one blob fetched on their own at once; more follow the fill. Bounds what a
/// client asking for one far range over and over can make us ask upstream.
pub const DIRECT_RANGES_PER_BLOB: usize = 8;

type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<BlobChunk>>>>;

/// `range` of the blob `fill` brings in: fetched on its own when it lies far ahead of the fill
/// and is small (and a slot is free), else read from the fill as its bytes land. A range
/// fetched on its own that upstream fails goes on from the fill, where it left off.
pub fn stream(fill: &Arc<Fill>, upstream: &Upstream, range: Range<u64>) -> ChunkStream {
    let far = range.start >= fill.written().saturating_add(FAR_AHEAD_BYTES);
    let small = range.end != u64::MAX && range.end - range.start <= DIRECT_RANGE_MAX_BYTES;
    let permit = if far && small { DirectPermit::take(fill) } else { None };
    let Some(permit) = permit else { return fill.reader(range, upstream.clone()) };
    tracing::debug!(location = %fill.location(), start = range.start, end = range.end, written = fill.written(), "a range far ahead of the fill is fetched on its own");
    let direct = Direct { permit, upstream: upstream.clone(), download: None, pos: range.start, end: range.end };
    Box::pin(futures_lite::stream::unfold(State::Direct(Box::new(direct)), |state| async move {
        match state {
            State::Following(mut reader) => {
                let item = reader.next().await?;
                Some((item, State::Following(reader)))
            }
            State::Direct(mut direct) => match direct.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), State::Direct(direct))),
                Ok(None) => None,
                Err(error) => {
                    tracing::debug!(%error, "a range fetched on its own failed; the fill brings the rest");
                    let Direct { permit, upstream, pos, end, .. } = *direct;
                    let mut reader = permit.fill.reader(pos..end, upstream);
                    drop(permit);
                    let item = reader.next().await?;
                    Some((item, State::Following(reader)))
                }
            },
        }
    }))
}

enum State {
    Direct(Box<Direct>),
    Following(ChunkStream),
}

/// A slot among the blob's `DIRECT_RANGES_PER_BLOB`, given back when dropped.
struct DirectPermit {
    fill: Arc<Fill>,
}

impl DirectPermit {
    fn take(fill: &Arc<Fill>) -> Option<DirectPermit> {
        let count = fill.direct_ranges();
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < DIRECT_RANGES_PER_BLOB).then_some(n + 1)).ok()?;
        Some(DirectPermit { fill: Arc::clone(fill) })
    }
}

impl Drop for DirectPermit {
    fn drop(&mut self) {
        self.fill.direct_ranges().fetch_sub(1, Ordering::AcqRel);
    }
}

/// A range being fetched on its own: `pos..end` is still to come.
struct Direct {
    permit: DirectPermit,
    upstream: Upstream,
    download: Option<BlobDownload>,
    pos: u64,
    end: u64,
}

impl Direct {
    async fn next(&mut self) -> Result<Option<BlobChunk>, UpstreamError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let download = match self.download.as_mut() {
            Some(download) => download,
            None => self.download.insert(self.upstream.download_range(self.permit.fill.location().clone(), self.pos..self.end).await?),
        };
        let Some(data) = download.next_chunk().await? else { return Ok(None) };
        self.pos += data.len() as u64;
        Ok(Some(BlobChunk { data, file: None, just_written: false, source: ByteSource::Upstream }))
    }
}
