//! Response bodies: whole `Bytes` (manifests, errors, mmapped blobs, sent zero-copy) and
//! nothing (HEAD). A body keeps its request counted as in flight until it is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::io::InFlight;

#[derive(Debug, Default)]
pub struct ResponseBody {
    data: Option<Bytes>,
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::default()
    }

    pub fn bytes(data: Bytes) -> ResponseBody {
        ResponseBody { data: (!data.is_empty()).then_some(data), in_flight: None }
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
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
