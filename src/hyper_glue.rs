//! hyper on glommio, for the server and the upstream client alike: an executor that spawns
//! on the current core, a timer built on glommio timers, and a plain stream adapter for
//! client connections. Everything stays on the executor thread. (The server's own adapter,
//! with sendfile and scratch reads, lives in `http::io`.)

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Spawns hyper's background tasks (h2 streams) on the current executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        glommio::spawn_local(future).detach();
    }
}

/// hyper's timer (header-read timeout, h2 keep-alive) on glommio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(GlommioSleep(glommio::timer::Timer::new(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

struct GlommioSleep(glommio::timer::Timer);

// SAFETY: hyper requires `Sleep: Send + Sync`, but a glommio timer is tied to its executor.
// Every hyper connection, and so every sleep it creates, is spawned with `spawn_local` and is
// polled and dropped only on the executor thread that created it; it never crosses threads.
unsafe impl Send for GlommioSleep {}
// SAFETY: as above; no shared reference to a sleep ever leaves its executor thread.
unsafe impl Sync for GlommioSleep {}

impl Future for GlommioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for GlommioSleep {}

pin_project_lite::pin_project! {
    /// A futures-io stream (a glommio TCP or TLS stream) as a hyper stream, for client
    /// connections: reads zero at most one TLS record's worth of hyper's buffer.
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

/// Runs `future` for at most `limit`; `None` if the time ran out first (the future is dropped).
/// The limit counts from the future's first wait: one that is ready at once (a cached answer)
/// costs no timer.
pub async fn within<T>(limit: std::time::Duration, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut timer: Option<glommio::timer::Timer> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        let timer = timer.get_or_insert_with(|| glommio::timer::Timer::new(limit));
        Pin::new(timer).poll(cx).map(|_| None)
    })
    .await
}

/// Milliseconds on the kernel's coarse monotonic clock (a few ns to read, ~4 ms resolution):
/// enough for timeouts and reload checks measured in seconds.
pub fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC_COARSE exists on
    // every Linux glommio runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
