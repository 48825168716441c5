//! Response bodies: whole `Bytes`, a slice of a cached blob file (sendfile where the stream can),
//! a stream that follows a fill, or nothing (HEAD). Until it is dropped a body keeps its request
//! in flight and its blob leased, and it counts its bytes by where they came from.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::Stream;
use hyper::body::{Frame, SizeHint};

use crate::metrics::{self, ByteSource};
use crate::registry::{BlobChunk, MappedBlob};
use crate::transport::InFlight;

pub type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<BlobChunk>>>>;

enum Content {
    Done,
    Bytes(Bytes),
    /// Bytes that are `file` at `offset` (which never changes): they may go out by sendfile.
    FileSlice(Bytes, Arc<File>, u64),
    /// A stream of `remaining` bytes (`None`: unknown).
    Stream(ChunkStream, Option<u64>),
}

pub struct ResponseBody {
    content: Content,
    /// What whole bytes and file slices count as; a stream's chunks say it themselves.
    source: ByteSource,
    in_flight: Option<InFlight>,
    /// While a response holds its blob (or blobserve image), it counts as in use and is never
    /// evicted.
    _lease: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl ResponseBody {
    fn with(content: Content) -> ResponseBody {
        ResponseBody { content, source: ByteSource::Api, in_flight: None, _lease: None }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::with(Content::Done)
    }

    pub fn bytes(data: Bytes) -> ResponseBody {
        ResponseBody::with(if data.is_empty() { Content::Done } else { Content::Bytes(data) })
    }

    /// `data` is `blob`'s bytes at `offset`.
    pub fn blob_slice(data: Bytes, blob: &Arc<MappedBlob>, offset: u64) -> ResponseBody {
        ResponseBody::file_slice(data, Arc::clone(&blob.file), offset).leasing(blob)
    }

    /// `data` is `file`'s bytes at `offset`, which never change: sendable by sendfile.
    pub fn file_slice(data: Bytes, file: Arc<File>, offset: u64) -> ResponseBody {
        ResponseBody::with(Content::FileSlice(data, file, offset))
    }

    /// Leases `blob` for this body's lifetime.
    pub fn leasing(self, blob: &Arc<MappedBlob>) -> ResponseBody {
        self.holding(Arc::clone(blob) as Arc<dyn std::any::Any + Send + Sync>)
    }

    /// Holds `lease` (whatever must not be evicted while this body is sent) for its lifetime.
    pub fn holding(mut self, lease: Arc<dyn std::any::Any + Send + Sync>) -> ResponseBody {
        self._lease = Some(lease);
        self
    }

    pub fn stream(stream: ChunkStream, len: Option<u64>) -> ResponseBody {
        ResponseBody::with(Content::Stream(stream, len))
    }

    /// Counts this body's bytes as coming from `source` (the default: `Api`).
    pub fn count_as(&mut self, source: ByteSource) {
        self.source = source;
    }

    /// Ties the request's in-flight mark to this body's lifetime.
    pub fn track(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match std::mem::replace(&mut this.content, Content::Done) {
            Content::Done => Poll::Ready(None),
            Content::Bytes(data) => {
                metrics::served(this.source, data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Content::FileSlice(data, file, offset) => {
                if let Some(in_flight) = &this.in_flight {
                    in_flight.connection().register_file_region(data.clone(), file, offset, false);
                }
                metrics::served(this.source, data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Content::Stream(mut stream, remaining) => match stream.as_mut().poll_next(cx) {
                Poll::Pending => {
                    this.content = Content::Stream(stream, remaining);
                    Poll::Pending
                }
                Poll::Ready(None) if remaining.is_some_and(|r| r > 0) => {
                    Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob stream ended early"))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => {
                    // The response is cut short here; hyper only reports that the body failed.
                    tracing::warn!(%error, "aborting a response whose blob stream failed");
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Ready(Some(Ok(BlobChunk { data, file, just_written, source }))) => {
                    metrics::served(source, data.len() as u64);
                    let left = remaining.map(|r| r.saturating_sub(data.len() as u64));
                    this.content = Content::Stream(stream, left);
                    if let (Some((file, offset)), Some(in_flight)) = (file, &this.in_flight) {
                        in_flight.connection().register_file_region(data.clone(), file, offset, just_written);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.content, Content::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Done => SizeHint::with_exact(0),
            Content::Bytes(data) | Content::FileSlice(data, ..) => SizeHint::with_exact(data.len() as u64),
            Content::Stream(_, Some(len)) => SizeHint::with_exact(*len),
            Content::Stream(_, None) => SizeHint::default(),
        }
    }
}
