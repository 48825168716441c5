//! Stopping the server: a signal shared by all executors (set from any thread), and each
//! executor's local drain notice to its connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShutdownKind {
    /// Stop accepting, let in-flight requests finish within the grace period (SIGTERM).
    Graceful,
    /// Stop now; open connections are closed (SIGINT, or a second signal).
    Immediate,
}

const RUNNING: u8 = 0;
const GRACEFUL: u8 = 1;
const IMMEDIATE: u8 = 2;

/// The server-wide stop signal: one waker slot per executor, so each executor waits on it
/// without allocating per poll. Set from any thread; only ever escalates.
#[derive(Debug)]
pub struct ShutdownSignal {
    state: AtomicU8,
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl ShutdownSignal {
    pub fn new(executors: usize) -> Arc<ShutdownSignal> {
        Arc::new(ShutdownSignal { state: AtomicU8::new(RUNNING), wakers: Mutex::new(vec![None; executors]) })
    }

    pub fn trigger(&self, kind: ShutdownKind) {
        let value = match kind {
            ShutdownKind::Graceful => GRACEFUL,
            ShutdownKind::Immediate => IMMEDIATE,
        };
        self.state.fetch_max(value, Ordering::AcqRel);
        let wakers = self.wakers.lock().map(|mut w| w.iter_mut().filter_map(Option::take).collect::<Vec<_>>());
        for waker in wakers.unwrap_or_default() {
            waker.wake();
        }
    }

    fn current(&self) -> Option<ShutdownKind> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            GRACEFUL => Some(ShutdownKind::Graceful),
            _ => Some(ShutdownKind::Immediate),
        }
    }

    /// Resolves once the signal reaches at least `at_least`; `slot` is the executor's index.
    pub async fn reached(self: &Arc<Self>, slot: usize, at_least: ShutdownKind) -> ShutdownKind {
        std::future::poll_fn(|cx| {
            if let Some(kind) = self.current().filter(|k| *k >= at_least) {
                return Poll::Ready(kind);
            }
            if let Ok(mut wakers) = self.wakers.lock() {
                if let Some(entry) = wakers.get_mut(slot) {
                    *entry = Some(cx.waker().clone());
                }
            }
            // Checked again after registering, so a trigger between the two is not lost.
            match self.current().filter(|k| *k >= at_least) {
                Some(kind) => Poll::Ready(kind),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// An executor's notice to its connections that the server is draining. Each waiting
/// connection owns one slot, so repeated polls do not pile up wakers.
#[derive(Debug, Default)]
pub struct Drain {
    started: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    pub fn new() -> Rc<Drain> {
        Rc::new(Drain::default())
    }

    pub fn start(&self) {
        self.started.set(true);
        let wakers: Vec<Waker> = self.slots.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that resolves when the drain starts.
    pub fn notice(self: &Rc<Self>) -> DrainNotice {
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(None);
                slots.len() - 1
            }
        };
        DrainNotice { drain: Rc::clone(self), slot }
    }
}

pub struct DrainNotice {
    drain: Rc<Drain>,
    slot: usize,
}

impl Future for DrainNotice {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.started.get() {
            return Poll::Ready(());
        }
        if let Some(entry) = self.drain.slots.borrow_mut().get_mut(self.slot) {
            match entry {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *entry = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainNotice {
    fn drop(&mut self) {
        if let Some(entry) = self.drain.slots.borrow_mut().get_mut(self.slot) {
            *entry = None;
        }
        self.drain.free.borrow_mut().push(self.slot);
    }
}
