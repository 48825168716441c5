//! A futures-io stream (a glommio TCP or TLS stream) as a hyper stream, for connections this
//! server opens: to upstream registries, IPFS and the like.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A client connection's stream as hyper's: each read zeroes (and so reads into) at
    /// most `MAX_READ` of hyper's buffer.
    pub struct ClientIo<S> {
        #[pin]
        inner: S,
    }
}

impl<S> ClientIo<S> {
    pub fn new(inner: S) -> ClientIo<S> {
        ClientIo { inner }
    }
}

/// The most of hyper's read buffer zeroed (and so read) per call: large enough that a blob
/// download is not a syscall per 16 KiB, small enough that zeroing stays cheap (~10 µs).
const MAX_READ: usize = 256 * 1024;

impl<S: futures_io::AsyncRead> hyper::rt::Read for ClientIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        // SAFETY: the prefix is zeroed before it is viewed as `[u8]`, and only the `n` bytes
        // the read reports are marked filled.
        let slice = unsafe {
            let uninit = buf.as_mut();
            let len = uninit.len().min(MAX_READ);
            std::ptr::write_bytes(uninit.as_mut_ptr(), 0, len);
            &mut *(&mut uninit[..len] as *mut [MaybeUninit<u8>] as *mut [u8])
        };
        let n = std::task::ready!(self.project().inner.poll_read(cx, slice))?;
        // SAFETY: `n` bytes were written by the read above.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl<S: futures_io::AsyncWrite> hyper::rt::Write for ClientIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_close(cx)
    }
}
