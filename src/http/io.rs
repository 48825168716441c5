//! The byte-stream adapter between glommio (futures-io) and hyper, and the per-connection
//! activity clock that the idle timeout reads.
//!
//! Plain TCP writes are vectored with a raw non-blocking `sendmsg`: glommio's stream has no
//! `writev`, and without one hyper copies every body chunk into its header buffer (a 16 MiB
//! memcpy per blob, notes/runtime.md §2a). On `EAGAIN` the write falls back to glommio's own
//! `poll_write`, which waits for writability through io_uring and registers the waker.

use std::cell::Cell;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

/// Milliseconds on the kernel's coarse monotonic clock (a few ns to read, ~4 ms resolution):
/// enough for timeouts measured in seconds, cheap enough to read on every read and write.
pub fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC_COARSE exists on
    // every Linux glommio runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// What the idle timeout needs to know about one connection.
#[derive(Debug)]
pub struct ConnectionActivity {
    last_io_ms: Cell<u64>,
    in_flight: Cell<usize>,
}

impl ConnectionActivity {
    pub fn new() -> Rc<ConnectionActivity> {
        Rc::new(ConnectionActivity { last_io_ms: Cell::new(coarse_now_ms()), in_flight: Cell::new(0) })
    }

    fn touch(&self) {
        self.last_io_ms.set(coarse_now_ms());
    }

    /// Milliseconds until the connection has had no request in progress and no I/O for
    /// `idle_ms` (0: it has).
    pub fn ms_until_idle(&self, idle_ms: u64, now_ms: u64) -> u64 {
        if self.in_flight.get() > 0 {
            return idle_ms;
        }
        self.last_io_ms.get().saturating_add(idle_ms).saturating_sub(now_ms)
    }

    pub fn idle_for(&self, idle_ms: u64, now_ms: u64) -> bool {
        self.ms_until_idle(idle_ms, now_ms) == 0
    }

    /// Marks a request as in progress until the returned guard is dropped (with its body).
    pub fn begin_request(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(Rc::clone(self))
    }
}

/// A request in progress on a connection; see `ConnectionActivity::begin_request`.
#[derive(Debug)]
pub struct InFlight(Rc<ConnectionActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get().saturating_sub(1));
        self.0.touch();
    }
}

pin_project_lite::pin_project! {
    /// A futures-io stream as a hyper stream.
    pub struct HyperIo<S> {
        #[pin]
        inner: S,
        raw_fd: Option<RawFd>,
        activity: Rc<ConnectionActivity>,
    }
}

impl<S> HyperIo<S> {
    /// `raw_fd` enables the raw vectored write; pass it only for a plain TCP socket whose
    /// bytes go to the kernel unchanged (never for TLS).
    pub fn new(inner: S, raw_fd: Option<RawFd>, activity: Rc<ConnectionActivity>) -> HyperIo<S> {
        HyperIo { inner, raw_fd, activity }
    }
}

impl<S: AsyncRead> hyper::rt::Read for HyperIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        // SAFETY: the uninitialised tail is zeroed before it is viewed as `[u8]`, and only the
        // `n` bytes the read reports are marked filled.
        let slice = unsafe {
            let uninit = buf.as_mut();
            std::ptr::write_bytes(uninit.as_mut_ptr(), 0, uninit.len());
            &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8])
        };
        match this.inner.poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.activity.touch();
                }
                // SAFETY: `n` bytes were written by the read above.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite> hyper::rt::Write for HyperIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = match *this.raw_fd {
            Some(fd) => match sendmsg_nonblocking(fd, bufs) {
                Ok(n) => Poll::Ready(Ok(n)),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                    let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
                    this.inner.poll_write(cx, first)
                }
                Err(e) => Poll::Ready(Err(e)),
            },
            None => this.inner.poll_write_vectored(cx, bufs),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_close(cx)
    }
}

/// One non-blocking `sendmsg` of up to `IOV_MAX` slices.
fn sendmsg_nonblocking(fd: RawFd, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let count = bufs.len().min(IOV_MAX);
    if bufs[..count].iter().all(|b| b.is_empty()) {
        return Ok(0);
    }
    // SAFETY: an all-zero msghdr is valid; we then point it at `count` IoSlices, which are
    // ABI-compatible with iovec and outlive the call.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = count as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}
