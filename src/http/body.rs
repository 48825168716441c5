//! Response bodies: whole `Bytes` (manifests, errors, blobs), optionally marked as a slice of
//! a cached blob file so the stream adapter can send it with sendfile; or nothing (HEAD).
//! A body keeps its request counted as in flight until it is dropped.

use std::convert::Infallible;
use std::fs::File;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::io::InFlight;

#[derive(Default)]
pub struct ResponseBody {
    data: Option<Bytes>,
    /// The file `data` was mapped from, and the offset of `data` in it.
    file: Option<(Arc<File>, u64)>,
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::default()
    }

    pub fn bytes(data: Bytes) -> ResponseBody {
        ResponseBody { data: (!data.is_empty()).then_some(data), ..ResponseBody::default() }
    }

    /// `data` is the bytes at `offset` of `file` (which never changes): it may go out by
    /// sendfile.
    pub fn file_slice(data: Bytes, file: Arc<File>, offset: u64) -> ResponseBody {
        ResponseBody { file: Some((file, offset)), ..ResponseBody::bytes(data) }
    }

    /// Ties the request's in-flight mark to this body's lifetime.
    pub fn track(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let Some(data) = this.data.take() else { return Poll::Ready(None) };
        if let (Some((file, offset)), Some(in_flight)) = (this.file.take(), &this.in_flight) {
            in_flight.connection().register_file_region(data.clone(), file, offset);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
