//! `multipart/byteranges` bodies (RFC 9110 §14.6): the parts a multi-range request selected,
//! each a small head (boundary, `Content-Type`, `Content-Range`) followed by the blob's own
//! bytes, streamed one part at a time from the blob's zero-copy source (a slice of the cached
//! mapping, a fill's reader, inline bytes). Never more than one part's reader is open.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::Stream;

use super::body::ChunkStream;
use crate::metrics::ByteSource;
use crate::registry::BlobChunk;

/// Opens a stream of exactly the bytes of one part.
pub type PartOpener = Box<dyn Fn(Range<u64>) -> ChunkStream>;

/// A multipart body about to be sent: its `Content-Type`, exact length and stream.
pub struct Multipart {
    pub content_type: String,
    pub len: u64,
    pub stream: ChunkStream,
}

/// The body of `parts` (ascending, non-overlapping, of content `len` bytes long), each part's
/// bytes from `open`. The boundary is random per response: blob bytes are arbitrary, and a
/// boundary they could be made to contain would let a blob forge parts.
pub fn multipart(parts: Vec<Range<u64>>, len: u64, open: PartOpener) -> Multipart {
    let boundary = format!("rf{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let heads: VecDeque<(Bytes, Range<u64>)> = parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            // The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1); the first
            // one has no part before it.
            let separator = if i == 0 { "" } else { "\r\n" };
            let head = format!(
                "{separator}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
                part.start,
                part.end - 1
            );
            (Bytes::from(head), part)
        })
        .collect();
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let total = heads.iter().map(|(head, part)| head.len() as u64 + (part.end - part.start)).sum::<u64>() + tail.len() as u64;
    let stream = Parts { heads, open, current: None, tail: Some(tail) };
    Multipart { content_type: format!("multipart/byteranges; boundary={boundary}"), len: total, stream: Box::pin(stream) }
}

struct Parts {
    heads: VecDeque<(Bytes, Range<u64>)>,
    open: PartOpener,
    /// The bytes of the part being sent.
    current: Option<ChunkStream>,
    tail: Option<Bytes>,
}

fn framing(data: Bytes) -> BlobChunk {
    BlobChunk { data, file: None, just_written: false, source: ByteSource::Api }
}

impl Stream for Parts {
    type Item = io::Result<BlobChunk>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(current) = this.current.as_mut() {
            match current.as_mut().poll_next(cx) {
                Poll::Ready(None) => this.current = None,
                other => return other,
            }
        }
        if let Some((head, part)) = this.heads.pop_front() {
            // Opened only now: a part that follows a fill or asks upstream costs nothing
            // until its turn comes.
            this.current = Some((this.open)(part));
            return Poll::Ready(Some(Ok(framing(head))));
        }
        Poll::Ready(this.tail.take().map(|tail| Ok(framing(tail))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut stream: ChunkStream) -> Vec<u8> {
        futures_lite::future::block_on(async {
            let mut out = Vec::new();
            while let Some(chunk) = futures_lite::StreamExt::next(&mut stream).await {
                out.extend_from_slice(&chunk.unwrap().data);
            }
            out
        })
    }

    #[test]
    fn parts_carry_their_ranges_and_the_length_is_exact() {
        let blob = Bytes::from((0..=255u8).cycle().take(1000).collect::<Vec<u8>>());
        let source = blob.clone();
        let open: PartOpener = Box::new(move |r: Range<u64>| {
            let data = source.slice(r.start as usize..r.end as usize);
            Box::pin(futures_lite::stream::once(Ok(BlobChunk { data, file: None, just_written: false, source: ByteSource::Cache }))) as ChunkStream
        });
        let body = multipart(vec![0..10, 500..1000], 1000, open);
        let boundary = body.content_type.strip_prefix("multipart/byteranges; boundary=").unwrap().to_owned();
        let bytes = collect(body.stream);
        assert_eq!(bytes.len() as u64, body.len);
        let expected = [
            format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/1000\r\n\r\n").into_bytes(),
            blob[0..10].to_vec(),
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 500-999/1000\r\n\r\n").into_bytes(),
            blob[500..1000].to_vec(),
            format!("\r\n--{boundary}--\r\n").into_bytes(),
        ]
        .concat();
        assert!(bytes == expected);
    }
}
