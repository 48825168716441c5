//! `HyperIo`, the byte stream hyper reads and writes: a glommio stream with its connection's
//! state. Reads go through one scratch buffer per executor, the protocol-sniffing bytes first;
//! writes are one vectored `sendmsg`, with registered blob slices by `sendfile`, h2 frames in
//! batches (`frame_batch`), and TLS through rustls (`tls_stream`).

use std::cell::RefCell;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use super::frame_batch::FrameBatch;
use super::state::{ConnectionState, Protocol, H2_PREFACE};
use super::syscall::{sendfile_nonblocking, sendmsg_nonblocking, would_block};

/// Bytes read from the socket per read call, at most.
const SCRATCH_BYTES: usize = 8 * 1024;

thread_local! {
    /// The executor's read buffer, shared by its connections. A read takes at most what
    /// hyper has room for, so no bytes stay behind in it and an idle connection holds none:
    /// at thousands of connections a buffer each would be tens of MiB, and reading into
    /// hyper's uninitialised buffer through futures-io would mean zeroing it on every read.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

pin_project_lite::pin_project! {
    /// A futures-io stream as a hyper stream.
    pub struct HyperIo<S> {
        #[pin]
        inner: S,
        raw: Option<RawSocket>,
        state: Rc<ConnectionState>,
        // The first bytes, read to learn the protocol; hyper's first read gets them.
        replay: Vec<u8>,
    }
}

impl<S> HyperIo<S> {
    /// `raw_fd` enables raw `sendmsg`/`sendfile` on the socket, and batches of h2 frames;
    /// pass it only for a plain, non-blocking TCP socket (never for TLS, whose bytes must go
    /// through rustls).
    pub fn new(inner: S, raw_fd: Option<RawFd>, state: Rc<ConnectionState>) -> HyperIo<S> {
        let raw = raw_fd.map(|fd| RawSocket { fd, frames: Rc::new(FrameBatch::new(fd)) });
        HyperIo { inner, raw, state, replay: Vec::new() }
    }

    /// The batch of h2 frames, which the connection loop must send (`BatchOutbox`).
    pub fn frames(&self) -> Option<Rc<FrameBatch>> {
        self.raw.as_ref().map(|raw| Rc::clone(&raw.frames))
    }
}

/// A plain, non-blocking TCP socket written to directly, and where its h2 frames wait for the
/// end of a wake-up.
struct RawSocket {
    fd: RawFd,
    frames: Rc<FrameBatch>,
}

impl<S: AsyncRead> HyperIo<S> {
    /// Reads the first bytes until they tell HTTP/1.1 from h2: the h2 preface, or a byte that
    /// differs from it. A client that closes first is HTTP/1.1 (whose parser then sees the
    /// end). The bytes are kept for hyper.
    pub fn poll_protocol(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<Protocol>> {
        let mut this = self.project();
        loop {
            if let Some(protocol) = this.state.protocol() {
                return Poll::Ready(Ok(protocol));
            }
            let mut first = [0u8; H2_PREFACE.len()];
            let missing = H2_PREFACE.len().saturating_sub(this.replay.len()).max(1);
            let n = ready!(this.inner.as_mut().poll_read(cx, &mut first[..missing]))?;
            if n == 0 {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            this.state.received(&first[..n]);
            this.replay.extend_from_slice(&first[..n]);
        }
    }
}

impl<S: AsyncRead> hyper::rt::Read for HyperIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if this.replay.is_empty() {
            return read_into(this.inner, this.state, cx, &mut buf);
        }
        let take = this.replay.len().min(buf.remaining());
        buf.put_slice(&this.replay[..take]);
        this.replay.drain(..take);
        if this.replay.is_empty() {
            *this.replay = Vec::new();
            // The rest of the request head is most likely here already: hyper gets it in the
            // same read. Not ready yet, or an error: the replayed bytes are this read's answer
            // (an error shows again, or as the end of the stream, on the next read).
            if buf.remaining() > 0 {
                let _ = read_into(this.inner, this.state, cx, &mut buf);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// One read from `inner` into hyper's buffer, through the executor's scratch buffer.
fn read_into<S: AsyncRead>(inner: Pin<&mut S>, state: &ConnectionState, cx: &mut Context<'_>, buf: &mut hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
    let want = buf.remaining().min(SCRATCH_BYTES);
    with_scratch(want, |scratch| {
        let n = ready!(inner.poll_read(cx, scratch))?;
        state.received(&scratch[..n]);
        buf.put_slice(&scratch[..n]);
        Poll::Ready(Ok(()))
    })
}

/// Runs `read` on `len` bytes of the executor's scratch buffer. A read never re-enters
/// another (it is one non-blocking call), but if one ever did it gets a buffer of its own
/// rather than a panic.
fn with_scratch<T>(len: usize, read: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with(|shared| match shared.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch[..len]),
        Err(_) => read(&mut vec![0u8; len]),
    })
}

impl<S: AsyncWrite> hyper::rt::Write for HyperIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = match this.raw {
            Some(raw) if this.state.is_h2() => raw.frames.poll_take(this.inner, cx, bufs),
            None => this.inner.poll_write_vectored(cx, bufs),
            Some(raw) => {
                let written = write_raw(raw.fd, this.state, bufs);
                ready_or_wait_writable(written, this.inner, cx, bufs)
            }
        };
        this.state.wrote(&polled);
        polled
    }

    /// Without vectored writes hyper copies every body chunk into its header buffer, and a
    /// file slice would never reach `poll_write_vectored` as itself (the zero-copy contract).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if let Some(raw) = this.raw {
            ready!(raw.frames.poll_send(this.inner.as_mut(), cx))?;
        }
        this.inner.poll_close(cx)
    }
}

/// The result of a raw write, except that nothing written means: let glommio wait for
/// writability (its own write may also send a little, which is fine: it reports how much).
fn ready_or_wait_writable<S: AsyncWrite>(written: std::io::Result<usize>, inner: Pin<&mut S>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
    match written {
        Ok(0) if bufs.iter().any(|b| !b.is_empty()) => {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            inner.poll_write(cx, first)
        }
        other => Poll::Ready(other),
    }
}

pin_project_lite::pin_project! {
    /// A TCP stream whose vectored writes are one `sendmsg`: rustls hands over every TLS
    /// record it has ready at once (an h2 frame is two records: 16 KiB and the 9 bytes that
    /// did not fit), and glommio's stream would write only the first.
    pub struct VectoredSocket<S> {
        #[pin]
        inner: S,
        fd: RawFd,
    }
}

impl<S: AsRawFd> VectoredSocket<S> {
    pub fn new(inner: S) -> VectoredSocket<S> {
        let fd = inner.as_raw_fd();
        VectoredSocket { inner, fd }
    }
}

impl<S: AsyncRead> AsyncRead for VectoredSocket<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for VectoredSocket<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = match sendmsg_nonblocking(*this.fd, bufs, false) {
            Err(e) if would_block(&e) => Ok(0),
            other => other,
        };
        ready_or_wait_writable(written, this.inner, cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_close(cx)
    }
}

/// Writes as much of `bufs` as the socket takes now, in order: runs of ordinary slices with
/// one `sendmsg`, slices of registered blob files with `sendfile`. `Ok(0)`: would block.
fn write_raw(fd: RawFd, state: &ConnectionState, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
    let regions = state.regions();
    let mut written = 0;
    let mut index = 0;
    while index < bufs.len() {
        let run_end = (index..bufs.len()).find(|&i| regions.file_behind(&bufs[i]).is_some()).unwrap_or(bufs.len());
        if run_end > index {
            let wanted: usize = bufs[index..run_end].iter().map(|b| b.len()).sum();
            let more = run_end < bufs.len();
            let sent = match sendmsg_nonblocking(fd, &bufs[index..run_end], more) {
                Ok(sent) => sent,
                Err(e) if would_block(&e) => return Ok(written),
                Err(e) => return if written > 0 { Ok(written) } else { Err(e) },
            };
            written += sent;
            if sent < wanted {
                return Ok(written);
            }
            index = run_end;
            continue;
        }
        let slice = &bufs[index];
        let Some((file_fd, offset)) = regions.file_behind(slice) else { break };
        let sent = match sendfile_nonblocking(fd, file_fd, offset, slice.len()) {
            Ok(sent) => sent,
            Err(e) if would_block(&e) => return Ok(written),
            Err(e) => return if written > 0 { Ok(written) } else { Err(e) },
        };
        written += sent;
        if sent == slice.len() {
            regions.sent_up_to(slice.as_ptr() as usize + slice.len());
        }
        if sent < slice.len() {
            return Ok(written);
        }
        index += 1;
    }
    Ok(written)
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
