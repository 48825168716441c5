//! hyper's runtime hooks on glommio, for server and client connections alike: an executor
//! that spawns on the current core and a timer on glommio timers. Everything stays on the
//! executor thread.

use std::future::Future;
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
