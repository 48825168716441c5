//! The time every time-based rule reads (TTLs, sweeps, idle and header timeouts): the
//! kernel's coarse monotonic clock, in milliseconds, which tests move forward with `advance`
//! instead of sleeping; and bounds on how long a future may take, on glommio timers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use event_listener::{Event, EventListener};

/// A monotonic clock in milliseconds. `Clock::system()` is the kernel's; a clock made with
/// `Clock::adjustable()` reads the same plus whatever it was advanced by. Clones share one
/// time.
#[derive(Clone, Default)]
pub struct Clock {
    skew: Option<Arc<Skew>>,
}

/// How far an adjustable clock was moved, and who waits to hear of it.
#[derive(Default)]
struct Skew {
    ms: AtomicU64,
    moved: Event,
}

impl Clock {
    /// The kernel's coarse monotonic clock: a few ns to read, about 4 ms resolution, enough
    /// for timeouts and TTLs measured in seconds.
    pub fn system() -> Clock {
        Clock { skew: None }
    }

    /// A clock that `advance` moves forward, for tests.
    pub fn adjustable() -> Clock {
        Clock { skew: Some(Arc::default()) }
    }

    /// Milliseconds since an arbitrary start (the same start for every clone).
    pub fn now_ms(&self) -> u64 {
        let skew = self.skew.as_ref().map_or(0, |skew| skew.ms.load(Ordering::Acquire));
        coarse_monotonic_ms().saturating_add(skew)
    }

    /// Moves an adjustable clock forward by `by` and wakes everything waiting on it.
    ///
    /// # Panics
    /// On the system clock, which no one may move.
    pub fn advance(&self, by: Duration) {
        let skew = self.skew.as_ref().expect("only an adjustable clock can be advanced");
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        skew.ms.fetch_add(ms, Ordering::AcqRel);
        skew.moved.notify(usize::MAX);
    }

    /// A listener that fires when the clock is advanced; `None` for the system clock, which
    /// only real time moves. A waiter that holds one sees its deadline come early.
    pub fn moved(&self) -> Option<EventListener> {
        self.skew.as_ref().map(|skew| skew.moved.listen())
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.skew {
            None => f.write_str("Clock::system"),
            Some(skew) => write!(f, "Clock::adjustable(+{} ms)", skew.ms.load(Ordering::Relaxed)),
        }
    }
}

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
        // Listening before reading the time: a move in between wakes this wait, not the next.
        let mut moved = clock.moved();
        let left = Duration::from_millis(deadline_ms.saturating_sub(clock.now_ms()));
        if left.is_zero() {
            return None;
        }
        let mut timer = glommio::timer::Timer::new(left);
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

fn coarse_monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC_COARSE exists on
    // every Linux glommio runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use event_listener::Listener as _;

    use super::*;

    #[test]
    fn an_adjustable_clock_moves_forward_for_every_clone_and_says_so() {
        let clock = Clock::adjustable();
        let clone = clock.clone();
        let before = clone.now_ms();
        let listener = clone.moved().expect("an adjustable clock can be heard");
        clock.advance(Duration::from_secs(90));
        assert!(clone.now_ms() >= before + 90_000);
        assert!(listener.wait_timeout(Duration::ZERO).is_some(), "the waiter heard it move");
    }

    #[test]
    fn the_system_clock_is_monotonic_and_silent() {
        let clock = Clock::system();
        let first = clock.now_ms();
        assert!(clock.now_ms() >= first);
        assert!(clock.moved().is_none());
    }
}
