//! hyper's runtime hooks on glommio, for server and client connections alike: an executor
//! that spawns on the current core, a timer on glommio timers, and a bound on how long a
//! future may take. Everything stays on the executor thread.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::clock::Clock;

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

/// Runs `future` for at most `limit`; `None` if the time ran out first (the future is dropped).
/// The limit counts from the future's first wait: one that is ready at once (a cached answer)
/// costs no timer.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
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

/// `within`, with the limit counted on `clock`: a test that moves the clock past it sees the
/// future dropped at once.
pub async fn within_on<T>(clock: &Clock, limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let deadline_ms = clock.now_ms().saturating_add(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
    let mut future = std::pin::pin!(future);
    loop {
        let left = Duration::from_millis(deadline_ms.saturating_sub(clock.now_ms()));
        if left.is_zero() {
            return None;
        }
        let mut timer = glommio::timer::Timer::new(left);
        let mut moved = clock.moved();
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(value));
            }
            let timed_out = Pin::new(&mut timer).poll(cx).is_ready();
            let clock_moved = moved.as_mut().is_some_and(|listener| Pin::new(listener).poll(cx).is_ready());
            if timed_out || clock_moved {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if woke.is_some() {
            return woke;
        }
    }
}
