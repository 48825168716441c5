//! One connection's state, shared by its stream adapter, its service and its watchdog: what
//! its first bytes say (HTTP/1.1 or h2), requests in flight, when bytes last moved, and so
//! which timeout is due; and its registered file regions. Times come from the connection's
//! `Clock`, so tests move them instead of waiting.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use super::outbox::Held;
use super::regions::{FileRegions, SendfileUse};
use crate::clock::Clock;

/// The HTTP/2 connection preface; a connection that starts with it is h2.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
}

/// What a connection's watchdog decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing is due for this many milliseconds.
    Wait(u64),
    /// A request head has been arriving for longer than the header-read timeout.
    HeadTooSlow,
    /// No request for longer than the idle timeout.
    Idle,
    /// Answers due (a response begun, or bytes waiting for the socket), but nothing written
    /// for longer than the idle timeout: a client that stopped reading, or an h2 client that
    /// keeps its flow-control window shut.
    Stalled,
}

/// One connection's state (see the module comment).
pub struct ConnectionState {
    clock: Clock,
    in_flight: Cell<usize>,
    /// Of those, requests whose response this server is still working out (an upstream may
    /// take its time): nothing is due from the client for them, and the caller bounds the
    /// wait with an answer of its own.
    preparing: Cell<usize>,
    /// When the last request ended, or the connection began.
    quiet_since_ms: Cell<u64>,
    /// When the first byte of a request head arrived (HTTP/1.1, no request in progress).
    head_started_ms: Cell<Option<u64>>,
    /// When bytes last went out, or the current busy period (requests in flight) began.
    wrote_at_ms: Cell<u64>,
    /// The last write found the socket full. hyper drops a response body (and its in-flight
    /// mark) once it has taken all of it, which may be long before the bytes are sent.
    write_blocked: Cell<bool>,
    /// How many bytes of the h2 preface the connection began with, up to its length (h2);
    /// `None` once a byte differed (HTTP/1.1). Reads may cut the preface anywhere.
    preface_matched: Cell<Option<usize>>,
    regions: FileRegions,
}

impl ConnectionState {
    /// `local_fd`: see `FileRegions::new`.
    pub fn new(sendfile: SendfileUse, local_fd: Option<RawFd>, clock: Clock) -> Rc<ConnectionState> {
        let now = clock.now_ms();
        Rc::new(ConnectionState {
            clock,
            in_flight: Cell::new(0),
            preparing: Cell::new(0),
            quiet_since_ms: Cell::new(now),
            head_started_ms: Cell::new(None),
            wrote_at_ms: Cell::new(0),
            write_blocked: Cell::new(false),
            preface_matched: Cell::new(Some(0)),
            regions: FileRegions::new(sendfile, local_fd),
        })
    }

    /// The clock this connection's timeouts read.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Marks a request as in progress until the returned guard is dropped (with its body).
    pub fn begin_request(self: &Rc<Self>) -> InFlight {
        if self.in_flight.get() == 0 {
            self.wrote_at_ms.set(self.clock.now_ms());
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.head_started_ms.set(None);
        InFlight(Rc::clone(self))
    }

    /// Marks a request's response as being worked out until the returned guard is dropped:
    /// until then the stall clock does not run for it (see `Timeout::Stalled`).
    pub fn preparing(self: &Rc<Self>) -> Preparing {
        self.preparing.set(self.preparing.get() + 1);
        Preparing(Rc::clone(self))
    }

    pub(super) fn received(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(matched) = self.preface_matched.get().filter(|&m| m < H2_PREFACE.len()) {
            let rest = &H2_PREFACE[matched..];
            let take = rest.len().min(bytes.len());
            let still = bytes[..take] == rest[..take];
            self.preface_matched.set(still.then_some(matched + take));
        }
        // h2 streams bring their own framing and limits; only HTTP/1.1 heads are timed here
        // (and a connection still sending its first bytes, which may be either).
        if self.is_h2() {
            self.head_started_ms.set(None);
        } else if self.in_flight.get() == 0 && self.head_started_ms.get().is_none() {
            self.head_started_ms.set(Some(self.clock.now_ms()));
        }
    }

    pub(super) fn is_h2(&self) -> bool {
        self.protocol() == Some(Protocol::H2)
    }

    /// What the bytes received so far say; `None` while they are the start of the h2 preface.
    pub(super) fn protocol(&self) -> Option<Protocol> {
        match self.preface_matched.get() {
            None => Some(Protocol::Http1),
            Some(matched) if matched == H2_PREFACE.len() => Some(Protocol::H2),
            Some(_) => None,
        }
    }

    pub(super) fn wrote(&self, written: &Poll<std::io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) if *n > 0 => self.bytes_moved(),
            Poll::Pending => self.write_blocked.set(true),
            _ => {}
        }
    }

    fn bytes_moved(&self) {
        self.wrote_at_ms.set(self.clock.now_ms());
        self.write_blocked.set(false);
    }

    /// What became of the bytes a stream held back for the end of a wake-up (see
    /// `Outbox`): waiting for a full socket counts as a refused write, so a
    /// client that stops reading is closed as stalled even once hyper is done with it.
    pub fn held_bytes_sent(&self, sent: &Poll<std::io::Result<Held>>) {
        match sent {
            Poll::Pending => self.write_blocked.set(true),
            Poll::Ready(Ok(Held::Sent)) => self.bytes_moved(),
            Poll::Ready(_) => {}
        }
    }

    /// What is due now given the two timeouts. A slow head is cut off at most `header_ms`
    /// late (the watchdog looks again at least that often).
    pub fn check(&self, idle_ms: u64, header_ms: u64) -> Timeout {
        let now_ms = self.clock.now_ms();
        if let Some(started) = self.head_started_ms.get() {
            let due = started.saturating_add(header_ms);
            return if now_ms >= due { Timeout::HeadTooSlow } else { Timeout::Wait(due - now_ms) };
        }
        if self.in_flight.get() > self.preparing.get() || self.write_blocked.get() {
            let due = self.wrote_at_ms.get().saturating_add(idle_ms);
            return if now_ms >= due { Timeout::Stalled } else { Timeout::Wait((due - now_ms).min(header_ms)) };
        }
        if self.in_flight.get() > 0 {
            // Every answer is still being worked out here; the client owes nothing yet.
            return Timeout::Wait(header_ms);
        }
        let due = self.quiet_since_ms.get().saturating_add(idle_ms);
        if now_ms >= due {
            Timeout::Idle
        } else {
            // A head may start while we wait; looking again within `header_ms` catches it in
            // time without waking the watchdog on every read.
            Timeout::Wait((due - now_ms).min(header_ms))
        }
    }

    /// Lets `data` (a slice of `file` starting at `file_offset`) be sent with sendfile, if
    /// this connection sends such bytes so (`just_written`: taken close behind a running
    /// fill; else a slice of a cached blob, or of a fill written a while ago).
    pub fn register_file_region(&self, data: Bytes, file: Arc<File>, file_offset: u64, just_written: bool) {
        self.regions.register(data, file, file_offset, just_written, self.is_h2());
    }

    pub(super) fn regions(&self) -> &FileRegions {
        &self.regions
    }
}

/// A request in progress on a connection; see `ConnectionState::begin_request`.
pub struct InFlight(Rc<ConnectionState>);

impl InFlight {
    pub fn connection(&self) -> &Rc<ConnectionState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get().saturating_sub(1));
        self.0.quiet_since_ms.set(self.0.clock.now_ms());
    }
}

/// A request whose response is being worked out; see `ConnectionState::preparing`.
pub struct Preparing(Rc<ConnectionState>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.preparing.set(self.0.preparing.get().saturating_sub(1));
        // The client's part begins now: it has the idle timeout to take the answer, however
        // long the server took to make it.
        self.0.wrote_at_ms.set(self.0.clock.now_ms());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection whose clock the test moves, and that clock.
    fn connection() -> (Rc<ConnectionState>, Clock) {
        let clock = Clock::adjustable();
        (ConnectionState::new(SendfileUse::Always, None, clock.clone()), clock)
    }

    fn after(clock: &Clock, ms: u64) {
        clock.advance(Duration::from_millis(ms));
    }

    #[test]
    fn idle_after_the_idle_timeout_without_requests() {
        let (state, clock) = connection();
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(2_000), "waits at most the header timeout");
        after(&clock, 4_500);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(500));
        after(&clock, 500);
        assert_eq!(state.check(5_000, 2_000), Timeout::Idle);
    }

    #[test]
    fn a_request_in_flight_is_never_idle_but_may_stall() {
        let (state, clock) = connection();
        let request = state.begin_request();
        after(&clock, 1_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(2_000));
        after(&clock, 3_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(1_000));
        state.wrote(&Poll::Ready(Ok(10)));
        after(&clock, 4_999);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(1));
        after(&clock, 1);
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "nothing written for the idle timeout");
        drop(request);
        state.wrote(&Poll::Pending);
        after(&clock, 5_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "the answer is taken but not sent");
        state.wrote(&Poll::Ready(Ok(1)));
        assert_eq!(state.check(5_000, 2_000), Timeout::Idle, "quiet since the request ended");
    }

    #[test]
    fn an_answer_being_worked_out_never_stalls_and_starts_the_clock_when_ready() {
        let (state, clock) = connection();
        let request = state.begin_request();
        let preparing = state.preparing();
        after(&clock, 60_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(2_000), "the server's own wait is not the client's stall");
        let other = state.begin_request();
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "another answer begun and not taken (h2) still stalls");
        drop(other);
        drop(preparing);
        after(&clock, 4_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Wait(1_000), "the clock started when the answer was ready");
        after(&clock, 1_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "then the client has the idle timeout to take it");
        drop(request);
    }

    #[test]
    fn bytes_held_for_a_full_socket_stall_a_connection_with_no_request_left() {
        let (state, clock) = connection();
        drop(state.begin_request());
        state.held_bytes_sent(&Poll::Pending);
        after(&clock, 5_000);
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "the answer is written but not sent");
        state.held_bytes_sent(&Poll::Ready(Ok(Held::Nothing)));
        assert_eq!(state.check(5_000, 2_000), Timeout::Stalled, "nothing held is not progress");
        state.held_bytes_sent(&Poll::Ready(Ok(Held::Sent)));
        assert_eq!(state.check(5_000, 2_000), Timeout::Idle, "once sent, only idle: quiet since the request ended");
    }

    #[test]
    fn a_slow_http1_head_times_out_but_h2_frames_do_not() {
        let (http1, clock) = connection();
        http1.received(b"GET / HTTP/1.1\r\n");
        after(&clock, 1_500);
        assert_eq!(http1.check(60_000, 2_000), Timeout::Wait(500));
        after(&clock, 500);
        assert_eq!(http1.check(60_000, 2_000), Timeout::HeadTooSlow);
        drop(http1.begin_request());
        assert_eq!(http1.head_started_ms.get(), None, "a complete head clears the clock");

        let (h2, _) = connection();
        h2.received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        h2.received(b"frames");
        assert_eq!(h2.head_started_ms.get(), None);
    }

    #[test]
    fn a_preface_cut_across_reads_is_still_h2() {
        let (h2, _) = connection();
        h2.received(b"PRI * HT");
        assert!(!h2.is_h2(), "not yet known");
        h2.received(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(h2.is_h2());
        assert_eq!(h2.head_started_ms.get(), None, "the clock started on the first part is cleared");

        let (http1, _) = connection();
        http1.received(b"P");
        http1.received(b"UT /v2/ HTTP/1.1\r\n");
        assert!(!http1.is_h2());
        assert!(http1.head_started_ms.get().is_some());
    }
}
