//! The byte-stream adapter between glommio (futures-io) and hyper, and the per-connection
//! state that timeouts and zero-copy sends read.
//!
//! Reads go through glommio into a scratch buffer that all connections of an executor share
//! (zeroed once, when the thread first reads), and are copied into hyper's buffer (a request
//! head is a few hundred bytes). A read takes at most what hyper has room for, so no bytes
//! stay behind in the shared buffer and an idle connection holds none of it: at thousands of
//! connections a buffer each would be tens of MiB. glommio arms an io_uring readiness poll
//! after a short read, so waiting for the next request costs no failed `recv`; reading into
//! hyper's uninitialised buffer through futures-io would instead mean zeroing it on every read
//! (5% of a manifest profile). The bytes read to learn the protocol are kept here and given
//! to hyper at the start of its first read.
//!
//! Plain TCP writes are vectored `sendmsg` (glommio's stream has no `writev`, and without one
//! hyper copies every body chunk into its header buffer, notes/runtime.md §2a). Body chunks
//! that are slices of a blob file (cached, or being filled) go out with `sendfile(2)` instead
//! where the connection's `SendfileUse` says so: the kernel sends page-cache pages without
//! copying them. hyper never knows: it sees bytes written. On `EAGAIN`
//! glommio's own `poll_write` arms the writability poll and the waker. h2 frames are gathered
//! into batches (`frame_batch`), which the connection loop sends once hyper is done for a
//! wake-up (an `Outbox`: what a stream holds back until its task is about to sleep).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_io::{AsyncRead, AsyncWrite};

use super::frame_batch::FrameBatch;
pub use crate::hyper_glue::coarse_now_ms;

/// Bytes read from the socket per read call, at most.
const SCRATCH_BYTES: usize = 8 * 1024;

thread_local! {
    /// The executor's read buffer, shared by its connections (see the module comment).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// The HTTP/2 connection preface; a connection that starts with it is h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Which body bytes a plain connection sends with sendfile; the rest is copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendfileUse {
    /// None (TLS, `sendfile: never`, or no raw socket to send on).
    #[default]
    Never,
    /// Only the bytes a response takes close behind a running fill: they were written a
    /// moment ago and are still in the CPU cache, so a receiver on this host copies them out
    /// cheaply, and every reader of the fill saves the server a copy.
    JustWritten,
    /// Those and slices of cached blobs.
    Always,
}

/// The send buffer of a socket that copies to a client on this host (the kernel doubles it).
/// Unbounded, the kernel queues megabytes per connection, which leave later in softirq work
/// on the receiver's time (profiled for sendfile queues: docs/benchmarks.md, "What a local
/// receiver pays for sendfile"), and under load its queue overflows and segments wait for
/// 200 ms+ retransmission timeouts. wrk, 16 connections fetching a 16 MiB blob:
/// longest request 0.8-1.6 s unbounded, 0.17-0.24 s with this bound (sendfile: 0.3-0.4 s).
/// pullstorm, 100 workspaces on a warm cache: p99 3.48-3.65 s unbounded, 3.06-3.12 s bounded
/// (client CPU 5.9-6.1 s vs 4.8 s; facade 0.9-1.2 s vs 1.3 s).
const LOCAL_COPY_SEND_BUFFER_BYTES: libc::c_int = 256 * 1024;

/// The send buffer of a socket that sends just-written bytes to a client on this host with
/// sendfile: the most the kernel's autotuning would give it (tcp_wmem's default maximum,
/// 4 MiB, which is twice this). The queue holds page references, not copies, so the bound
/// above has nothing to keep in the cache: pullstorm, 100 workspaces on a cold facade,
/// facade CPU 1.45-2.0 s with the bound and 0.99-1.16 s with this (copying: 1.6-1.9 s).
const LOCAL_SENDFILE_SEND_BUFFER_BYTES: libc::c_int = 2 * 1024 * 1024;

/// What the send buffer of a socket to a client on this host is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalSendBuffer {
    Copies,
    Sendfile,
}

/// A socket to a client on this host whose send buffer follows what the connection sends.
#[derive(Debug)]
struct LocalSocket {
    fd: RawFd,
    sized_for: Cell<Option<LocalSendBuffer>>,
}

impl LocalSocket {
    fn size_for(&self, sending: LocalSendBuffer) {
        if self.sized_for.get() == Some(sending) {
            return;
        }
        let bytes = match sending {
            LocalSendBuffer::Copies => LOCAL_COPY_SEND_BUFFER_BYTES,
            LocalSendBuffer::Sendfile => LOCAL_SENDFILE_SEND_BUFFER_BYTES,
        };
        match set_send_buffer(self.fd, bytes) {
            Ok(()) => self.sized_for.set(Some(sending)),
            Err(e) => tracing::debug!(error = %e, ?sending, "could not size a local client's send buffer"),
        }
    }
}

/// A part of a response body that is a slice of a cached blob file, sendable with sendfile.
/// It holds the slice, so the mapping (and the address range) stays alive while registered.
struct FileRegion {
    data: Bytes,
    file: Arc<File>,
    file_offset: u64,
}

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

/// One connection's state shared by its stream adapter, its service and its watchdog.
#[derive(Default)]
pub struct ConnectionState {
    in_flight: Cell<usize>,
    /// Of those, requests whose response this server is still working out (an upstream may
    /// take its time): nothing is due from the client for them, and `dispatch` bounds the
    /// wait with an error answer of its own.
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
    /// Which body chunks may go out with sendfile (a plain socket only); others are never
    /// registered, since only the raw write path would ever release them.
    sendfile: SendfileUse,
    /// A plain socket to a client on this host that sends copies at all (not `Always`).
    local: Option<LocalSocket>,
    regions: RefCell<Vec<FileRegion>>,
}

impl ConnectionState {
    /// `local_fd`: the socket of a plain connection to a client on this host that sends
    /// copies at all, whose send buffer is then sized for what it sends (bounded from the start).
    pub fn new(sendfile: SendfileUse, local_fd: Option<RawFd>) -> Rc<ConnectionState> {
        let local = local_fd.map(|fd| LocalSocket { fd, sized_for: Cell::new(None) });
        if let Some(local) = &local {
            local.size_for(LocalSendBuffer::Copies);
        }
        let state = ConnectionState { sendfile, local, preface_matched: Cell::new(Some(0)), ..ConnectionState::default() };
        state.quiet_since_ms.set(coarse_now_ms());
        Rc::new(state)
    }

    /// Marks a request as in progress until the returned guard is dropped (with its body).
    pub fn begin_request(self: &Rc<Self>) -> InFlight {
        if self.in_flight.get() == 0 {
            self.wrote_at_ms.set(coarse_now_ms());
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

    fn received(&self, bytes: &[u8]) {
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
            self.head_started_ms.set(Some(coarse_now_ms()));
        }
    }

    fn is_h2(&self) -> bool {
        self.protocol() == Some(Protocol::H2)
    }

    /// What the bytes received so far say; `None` while they are the start of the h2 preface.
    fn protocol(&self) -> Option<Protocol> {
        match self.preface_matched.get() {
            None => Some(Protocol::Http1),
            Some(matched) if matched == H2_PREFACE.len() => Some(Protocol::H2),
            Some(_) => None,
        }
    }

    fn wrote(&self, written: &Poll<std::io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) if *n > 0 => self.bytes_moved(),
            Poll::Pending => self.write_blocked.set(true),
            _ => {}
        }
    }

    fn bytes_moved(&self) {
        self.wrote_at_ms.set(coarse_now_ms());
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

    /// What is due at `now_ms` given the two timeouts. A slow head is cut off at most
    /// `header_ms` late (the watchdog looks again at least that often).
    pub fn check(&self, idle_ms: u64, header_ms: u64, now_ms: u64) -> Timeout {
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
        let wanted = match self.sendfile {
            SendfileUse::Never => false,
            SendfileUse::JustWritten => just_written,
            SendfileUse::Always => true,
        };
        // h2 cuts bodies into frames of 16 KiB (the client's frame size); a sendfile per frame
        // costs more than copying the frame with its header in one sendmsg.
        let by_sendfile = wanted && !self.is_h2();
        if let Some(local) = &self.local {
            local.size_for(if by_sendfile { LocalSendBuffer::Sendfile } else { LocalSendBuffer::Copies });
        }
        if !by_sendfile {
            return;
        }
        self.regions.borrow_mut().push(FileRegion { data, file, file_offset });
    }

    /// The file descriptor and file offset behind `slice`, if it lies in a registered region.
    fn file_behind(&self, slice: &[u8]) -> Option<(RawFd, u64)> {
        let start = slice.as_ptr() as usize;
        self.regions.borrow().iter().find_map(|region| {
            let region_start = region.data.as_ptr() as usize;
            let inside = start >= region_start && start + slice.len() <= region_start + region.data.len();
            inside.then(|| (region.file.as_raw_fd(), region.file_offset + (start - region_start) as u64))
        })
    }

    /// Forgets regions whose last byte has been sent (`end` is one past the last byte sent).
    fn sent_up_to(&self, end: usize) {
        self.regions.borrow_mut().retain(|r| r.data.as_ptr() as usize + r.data.len() != end);
    }
}

/// Bytes a connection's writes left waiting, sent when its task is about to sleep.
pub trait Outbox {
    /// Sends everything held; `Pending` (with the waker registered) while the socket is full.
    fn poll_send_held(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Held>>;
}

/// What an outbox had to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Nothing,
    Sent,
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
        self.0.quiet_since_ms.set(coarse_now_ms());
    }
}

/// A request whose response is being worked out; see `ConnectionState::preparing`.
pub struct Preparing(Rc<ConnectionState>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.preparing.set(self.0.preparing.get().saturating_sub(1));
        // The client's part begins now: it has the idle timeout to take the answer, however
        // long the server took to make it.
        self.0.wrote_at_ms.set(coarse_now_ms());
    }
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
    let mut written = 0;
    let mut index = 0;
    while index < bufs.len() {
        let run_end = (index..bufs.len()).find(|&i| state.file_behind(&bufs[i]).is_some()).unwrap_or(bufs.len());
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
        let Some((file_fd, offset)) = state.file_behind(slice) else { break };
        let sent = match sendfile_nonblocking(fd, file_fd, offset, slice.len()) {
            Ok(sent) => sent,
            Err(e) if would_block(&e) => return Ok(written),
            Err(e) => return if written > 0 { Ok(written) } else { Err(e) },
        };
        written += sent;
        if sent == slice.len() {
            state.sent_up_to(slice.as_ptr() as usize + slice.len());
        }
        if sent < slice.len() {
            return Ok(written);
        }
        index += 1;
    }
    Ok(written)
}

pub(super) fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
}

/// One non-blocking `sendmsg` of up to `IOV_MAX` slices; `more` tells the kernel that more
/// data follows at once (MSG_MORE), so a response head and its file body share segments.
pub(super) fn sendmsg_nonblocking(fd: RawFd, bufs: &[IoSlice<'_>], more: bool) -> std::io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let count = bufs.len().min(IOV_MAX);
    if bufs[..count].iter().all(|b| b.is_empty()) {
        return Ok(0);
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: an all-zero msghdr is valid; we then point it at `count` IoSlices, which are
    // ABI-compatible with iovec and outlive the call.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = count as _;
        libc::sendmsg(fd, &msg, flags)
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// One `sendfile` of up to `len` bytes from `file_fd` at `offset`; the socket is non-blocking.
fn sendfile_nonblocking(socket: RawFd, file_fd: RawFd, offset: u64, len: usize) -> std::io::Result<usize> {
    let mut offset = offset as libc::off_t;
    // SAFETY: both descriptors are open for the duration of the call (the file is held by a
    // registered region); sendfile only reads the file and writes the socket.
    let sent = unsafe { libc::sendfile(socket, file_fd, &mut offset, len) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Switches a socket to non-blocking mode, which `sendfile` (it has no flags) relies on.
///
/// # Errors
/// `fcntl` failed.
pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, reading and then setting its status flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bounds the kernel's send buffer of `fd` to `bytes` (the kernel doubles the figure for its
/// bookkeeping), which also turns off its autotuning for the socket.
fn set_send_buffer(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt on a descriptor we own, with a pointer to an int and its size.
    let ok = unsafe {
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&bytes as *const libc::c_int).cast(), size) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(now: u64) -> Rc<ConnectionState> {
        let state = ConnectionState::new(SendfileUse::Always, None);
        state.quiet_since_ms.set(now);
        state
    }

    #[test]
    fn idle_after_the_idle_timeout_without_requests() {
        let state = state_at(1_000);
        assert_eq!(state.check(5_000, 2_000, 1_000), Timeout::Wait(2_000), "waits at most the header timeout");
        assert_eq!(state.check(5_000, 2_000, 5_500), Timeout::Wait(500));
        assert_eq!(state.check(5_000, 2_000, 6_000), Timeout::Idle);
    }

    #[test]
    fn a_request_in_flight_is_never_idle_but_may_stall() {
        let state = state_at(0);
        let request = state.begin_request();
        let began = state.wrote_at_ms.get();
        assert_eq!(state.check(5_000, 2_000, began + 1_000), Timeout::Wait(2_000));
        assert_eq!(state.check(5_000, 2_000, began + 4_000), Timeout::Wait(1_000));
        state.wrote(&Poll::Ready(Ok(10)));
        assert_eq!(state.check(5_000, 2_000, state.wrote_at_ms.get() + 4_999), Timeout::Wait(1));
        assert_eq!(state.check(5_000, 2_000, state.wrote_at_ms.get() + 5_000), Timeout::Stalled, "nothing written for the idle timeout");
        drop(request);
        state.wrote(&Poll::Pending);
        assert_eq!(state.check(5_000, 2_000, state.wrote_at_ms.get() + 5_000), Timeout::Stalled, "the answer is taken but not sent");
        state.wrote(&Poll::Ready(Ok(1)));
        let quiet = state.quiet_since_ms.get();
        assert_eq!(state.check(5_000, 2_000, quiet + 5_000), Timeout::Idle);
    }

    #[test]
    fn an_answer_being_worked_out_never_stalls_and_starts_the_clock_when_ready() {
        let state = state_at(0);
        let request = state.begin_request();
        let preparing = state.preparing();
        let began = state.wrote_at_ms.get();
        assert_eq!(state.check(5_000, 2_000, began + 60_000), Timeout::Wait(2_000), "the server's own wait is not the client's stall");
        let other = state.begin_request();
        assert_eq!(state.check(5_000, 2_000, began + 60_000), Timeout::Stalled, "another answer begun and not taken (h2) still stalls");
        drop(other);
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(preparing);
        let ready = state.wrote_at_ms.get();
        assert!(ready > began, "the clock starts when the answer is ready");
        assert_eq!(state.check(5_000, 2_000, ready + 4_000), Timeout::Wait(1_000));
        assert_eq!(state.check(5_000, 2_000, ready + 5_000), Timeout::Stalled, "then the client has the idle timeout to take it");
        drop(request);
    }

    #[test]
    fn bytes_held_for_a_full_socket_stall_a_connection_with_no_request_left() {
        let state = state_at(0);
        drop(state.begin_request());
        let written = state.wrote_at_ms.get();
        state.held_bytes_sent(&Poll::Pending);
        assert_eq!(state.check(5_000, 2_000, written + 5_000), Timeout::Stalled, "the answer is written but not sent");
        state.held_bytes_sent(&Poll::Ready(Ok(Held::Nothing)));
        assert_eq!(state.check(5_000, 2_000, written + 5_000), Timeout::Stalled, "nothing held is not progress");
        state.held_bytes_sent(&Poll::Ready(Ok(Held::Sent)));
        let sent = state.wrote_at_ms.get();
        assert!(sent >= written);
        assert_eq!(state.check(5_000, 2_000, state.quiet_since_ms.get().max(sent) + 5_000), Timeout::Idle, "once sent, only idle");
    }

    #[test]
    fn a_slow_http1_head_times_out_but_h2_frames_do_not() {
        let http1 = state_at(0);
        http1.received(b"GET / HTTP/1.1\r\n");
        let started = http1.head_started_ms.get().unwrap();
        assert_eq!(http1.check(60_000, 2_000, started + 1_500), Timeout::Wait(500));
        assert_eq!(http1.check(60_000, 2_000, started + 2_000), Timeout::HeadTooSlow);
        drop(http1.begin_request());
        assert_eq!(http1.head_started_ms.get(), None, "a complete head clears the clock");

        let h2 = state_at(0);
        h2.received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        h2.received(b"frames");
        assert_eq!(h2.head_started_ms.get(), None);
    }

    /// Bytes that arrive in the given pieces, at most one piece per read.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
            let Some(mut piece) = self.0.pop_front() else { return Poll::Ready(Ok(0)) };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                piece.drain(..n);
                self.0.push_front(piece);
            }
            Poll::Ready(Ok(n))
        }
    }

    fn adapter(pieces: &[&[u8]]) -> HyperIo<Pieces> {
        HyperIo::new(Pieces(pieces.iter().map(|p| p.to_vec()).collect()), None, state_at(0))
    }

    /// The protocol, then what one hyper read gets.
    fn protocol_then_first_read(io: &mut HyperIo<Pieces>) -> (Protocol, Vec<u8>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(protocol)) = Pin::new(&mut *io).poll_protocol(&mut cx) else { panic!("no protocol") };
        let mut storage = [0u8; 256];
        let mut buf = hyper::rt::ReadBuf::new(&mut storage);
        let Poll::Ready(Ok(())) = hyper::rt::Read::poll_read(Pin::new(&mut *io), &mut cx, buf.unfilled()) else { panic!("no read") };
        (protocol, buf.filled().to_vec())
    }

    #[test]
    fn hyper_gets_a_whole_request_head_in_its_first_read() {
        let head = b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut io = adapter(&[head]);
        assert_eq!(protocol_then_first_read(&mut io), (Protocol::Http1, head.to_vec()), "the bytes read to learn the protocol, and the rest");
        assert!(io.replay.capacity() == 0, "the replay buffer is released");
    }

    #[test]
    fn the_protocol_is_learnt_from_pieces_of_the_preface() {
        let mut io = adapter(&[b"PRI * HT", b"TP/2.0\r\n", b"\r\nSM\r\n\r\n"]);
        assert_eq!(protocol_then_first_read(&mut io), (Protocol::H2, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()));

        let mut io = adapter(&[b"PR", b"OPFIND / HTTP/1.1\r\n"]);
        assert_eq!(protocol_then_first_read(&mut io).0, Protocol::Http1);

        let mut io = adapter(&[b"PRI"]);
        assert_eq!(protocol_then_first_read(&mut io), (Protocol::Http1, b"PRI".to_vec()), "a client that closes early is HTTP/1.1's to refuse");
    }

    #[test]
    fn a_preface_cut_across_reads_is_still_h2() {
        let h2 = state_at(0);
        h2.received(b"PRI * HT");
        assert!(!h2.is_h2(), "not yet known");
        h2.received(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(h2.is_h2());
        assert_eq!(h2.head_started_ms.get(), None, "the clock started on the first part is cleared");

        let http1 = state_at(0);
        http1.received(b"P");
        http1.received(b"UT /v2/ HTTP/1.1\r\n");
        assert!(!http1.is_h2());
        assert!(http1.head_started_ms.get().is_some());
    }

    #[test]
    fn file_regions_are_found_by_address_and_forgotten_when_sent() {
        let state = state_at(0);
        let file = Arc::new(tempfile::tempfile().unwrap());
        let data = Bytes::from(vec![7u8; 100]);
        state.register_file_region(data.slice(10..90), Arc::clone(&file), 10, false);
        let inner = data.slice(20..30);
        assert_eq!(state.file_behind(&inner), Some((file.as_raw_fd(), 20)));
        assert_eq!(state.file_behind(&data.slice(0..30)), None, "not wholly inside");
        state.sent_up_to(data.as_ptr() as usize + 90);
        assert_eq!(state.file_behind(&inner), None);
    }
}
