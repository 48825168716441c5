//! A served TLS connection that cuts its stream into full records and sends them in batches: a
//! write is encrypted up to the last record boundary and the bytes past it wait in a carry, so
//! records straddle h2 frames; records go out once `SEND_BATCH_BYTES` wait, and all of them (the
//! carry too) when the connection's task is done for a wake-up (`Outbox::poll_send_held`).

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use super::outbox::{Held, Outbox};

/// The largest plaintext of a TLS record (RFC 8446 §5.1), which is how rustls fragments.
const RECORD_BYTES: usize = 16 * 1024;

/// Bytes past a record boundary that may wait for the next write.
const MAX_CARRY_BYTES: usize = 1024;

/// Encrypted bytes that may wait in rustls before they go to the socket; also the most
/// plaintext taken from one write.
const SEND_BATCH_BYTES: usize = 64 * 1024;

/// Slices of one write looked at, at most (h2 writes 2, hyper's HTTP/1.1 a few).
const MAX_SLICES: usize = 16;

/// A server-side TLS stream whose handshake is done (see the module comment); hyper gets
/// one handle to it and the connection loop another, as its `Outbox`.
pub struct AlignedTls<S>(Rc<RefCell<Records<S>>>);

struct Records<S> {
    inner: futures_rustls::server::TlsStream<S>,
    carry: Vec<u8>,
    /// Plaintext encrypted since rustls's buffer was last emptied onto the socket.
    unsent: usize,
    /// A write was refused (`Pending`) for a full socket. Its waker hangs on the socket's
    /// writability, which glommio forgets once a later send succeeds: if the outbox is the
    /// one that sends, it must wake the writer itself.
    writer_waiting: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> AlignedTls<S> {
    /// The stream for hyper, and the outbox for the connection loop.
    pub fn new(mut inner: futures_rustls::server::TlsStream<S>) -> (AlignedTls<S>, Rc<dyn Outbox>) {
        // This stream bounds what waits in rustls (`SEND_BATCH_BYTES`, plus one write);
        // rustls's own bound would take part of a write and undo the alignment.
        inner.get_mut().1.set_buffer_limit(None);
        let records = Rc::new(RefCell::new(Records { inner, carry: Vec::new(), unsent: 0, writer_waiting: false }));
        let outbox: Rc<dyn Outbox> = Rc::clone(&records) as Rc<dyn Outbox>;
        (AlignedTls(records), outbox)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Outbox for RefCell<Records<S>> {
    fn poll_send_held(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Held>> {
        let mut records = self.borrow_mut();
        if !records.carry.is_empty() {
            records.encrypt(&[])?;
        }
        if records.unsent == 0 {
            return Poll::Ready(Ok(Held::Nothing));
        }
        ready!(records.poll_send(cx))?;
        if std::mem::take(&mut records.writer_waiting) {
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(Held::Sent))
    }
}

impl<S> Records<S> {
    /// Encrypts the carry, then `bufs` (at most `MAX_SLICES`: a `Prefix`'s), into records.
    fn encrypt(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
        let mut all = [IoSlice::new(&[]); MAX_SLICES + 1];
        all[0] = IoSlice::new(&self.carry);
        all[1..=bufs.len()].copy_from_slice(bufs);
        let all = &all[..=bufs.len()];
        let wanted: usize = all.iter().map(|b| b.len()).sum();
        let taken = std::io::Write::write_vectored(&mut self.inner.get_mut().1.writer(), all)?;
        if taken != wanted {
            // Without a buffer limit rustls takes everything; anything else is a closed session.
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "TLS session took only part of a write"));
        }
        self.unsent += wanted;
        self.carry.clear();
        Ok(())
    }

    /// Sends what rustls holds; `Ready(Ok)` once all of it is on the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unsent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes (encrypts, or keeps in the carry) a prefix of `bufs`; see the module comment.
    fn poll_take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.unsent >= SEND_BATCH_BYTES {
            let sent = self.poll_send(cx);
            self.writer_waiting = sent.is_pending();
            ready!(sent)?;
        }
        let offered = Prefix::of(bufs, SEND_BATCH_BYTES);
        if offered.bytes == 0 {
            return Poll::Ready(Ok(0));
        }
        let kept = held_back(self.carry.len(), offered.bytes);
        let sealed = Prefix::of(offered.slices(), offered.bytes - kept);
        self.encrypt(sealed.slices())?;
        // The kept bytes are the offered ones past what was sealed.
        let mut skip = sealed.bytes;
        for slice in offered.slices() {
            let from = skip.min(slice.len());
            skip -= from;
            self.carry.extend_from_slice(&slice[from..]);
        }
        Poll::Ready(Ok(offered.bytes))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AlignedTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0.borrow_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AlignedTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.borrow_mut().poll_take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        self.0.borrow_mut().poll_take(cx, bufs)
    }

    /// The end of a batch: the connection loop sends it (`Outbox`) before its task sleeps.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.0.poll_send_held(cx))?;
        Pin::new(&mut self.0.borrow_mut().inner).poll_close(cx)
    }
}

/// How many of `offered` bytes (after `carried` ones) to keep back so that what is encrypted
/// ends on a record boundary; 0 when that would keep too much, or when there is not even
/// one whole record (a short write is a short record, at once).
fn held_back(carried: usize, offered: usize) -> usize {
    let total = carried + offered;
    let tail = total % RECORD_BYTES;
    if total < RECORD_BYTES || tail > MAX_CARRY_BYTES || tail > offered {
        0
    } else {
        tail
    }
}

/// The first `limit` bytes of a write (of its first `MAX_SLICES` slices, the last one cut
/// short), as slices.
struct Prefix<'b> {
    slices: [IoSlice<'b>; MAX_SLICES],
    count: usize,
    bytes: usize,
}

impl<'b> Prefix<'b> {
    fn of(bufs: &'b [IoSlice<'_>], limit: usize) -> Prefix<'b> {
        let mut prefix = Prefix { slices: [IoSlice::new(&[]); MAX_SLICES], count: 0, bytes: 0 };
        for buf in bufs.iter().take(MAX_SLICES) {
            if prefix.bytes == limit {
                break;
            }
            let take = buf.len().min(limit - prefix.bytes);
            prefix.slices[prefix.count] = IoSlice::new(&buf[..take]);
            prefix.count += 1;
            prefix.bytes += take;
        }
        prefix
    }

    fn slices(&self) -> &[IoSlice<'b>] {
        &self.slices[..self.count]
    }
}

#[cfg(test)]
#[path = "tls_stream_tests.rs"]
mod tests;
