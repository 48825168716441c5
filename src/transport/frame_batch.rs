//! h2 frames on a plain socket, copied into a batch that leaves in one `sendmsg` once `BATCH_BYTES`
//! wait, and with whatever it holds once the connection's task is done for a wake-up
//! (`Outbox::poll_send_held`), so a manifest still leaves at once. hyper's writes and the outbox
//! share the socket (`SharedSocket`) in the connection's one task, never at the same time.

use std::cell::{Cell, RefCell};
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};

use super::outbox::{Held, Outbox};
use super::syscall::{sendmsg_nonblocking, would_block};

/// Bytes gathered before they are sent without waiting for the end of the wake-up: one
/// segment of loopback's 64 KiB MTU, four frames.
const BATCH_BYTES: usize = 64 * 1024;

/// A socket used by a connection's stream and by its outbox (see the module comment).
pub struct SharedSocket<S>(Rc<RefCell<S>>);

impl<S> SharedSocket<S> {
    pub fn new(socket: S) -> SharedSocket<S> {
        SharedSocket(Rc::new(RefCell::new(socket)))
    }
}

impl<S> Clone for SharedSocket<S> {
    fn clone(&self) -> Self {
        SharedSocket(Rc::clone(&self.0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedSocket<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedSocket<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// The frames written to a plain non-blocking socket `fd` and not yet sent.
pub struct FrameBatch {
    fd: RawFd,
    bytes: RefCell<Vec<u8>>,
    /// How many of `bytes` are on the socket already.
    sent: Cell<usize>,
    /// A write was refused (`Pending`) for a full socket. Its waker hangs on the socket's
    /// writability, which glommio forgets once a later send succeeds: if the outbox is the
    /// one that sends, it must wake the writer itself.
    writer_waiting: Cell<bool>,
}

impl FrameBatch {
    pub fn new(fd: RawFd) -> FrameBatch {
        FrameBatch { fd, bytes: RefCell::new(Vec::new()), sent: Cell::new(0), writer_waiting: Cell::new(false) }
    }

    fn unsent(&self) -> usize {
        self.bytes.borrow().len() - self.sent.get()
    }

    /// Takes a prefix of `bufs` into the batch, first sending a full batch; `socket` (the
    /// stream behind `fd`) is where a refused write waits for writability.
    pub fn poll_take<S: AsyncWrite>(&self, socket: Pin<&mut S>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        if self.unsent() == 0 && bufs.iter().map(|b| b.len()).sum::<usize>() >= BATCH_BYTES {
            // A batch's worth in one write (a client that allows frames over 64 KiB) gains
            // nothing from gathering: it goes as it is, without the copy.
            return poll_send_now(self.fd, socket, cx, bufs);
        }
        if self.unsent() >= BATCH_BYTES {
            let sent = self.poll_send(socket, cx);
            self.writer_waiting.set(sent.is_pending());
            ready!(sent)?;
        }
        let mut room = BATCH_BYTES - self.unsent();
        let mut bytes = self.bytes.borrow_mut();
        let mut taken = 0;
        for buf in bufs {
            let take = buf.len().min(room);
            bytes.extend_from_slice(&buf[..take]);
            taken += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    /// Sends the whole batch; `Ready(Ok)` once all of it is on the socket.
    pub fn poll_send<S: AsyncWrite>(&self, mut socket: Pin<&mut S>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let bytes = self.bytes.borrow();
            let rest = &bytes[self.sent.get()..];
            if rest.is_empty() {
                drop(bytes);
                self.bytes.borrow_mut().clear();
                self.sent.set(0);
                return Poll::Ready(Ok(()));
            }
            let sent = match sendmsg_nonblocking(self.fd, &[IoSlice::new(rest)], false) {
                Err(e) if would_block(&e) => ready!(socket.as_mut().poll_write(cx, rest))?,
                other => other?,
            };
            if sent == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent.set(self.sent.get() + sent);
        }
    }
}

/// One `sendmsg` of `bufs`, or, if the socket is full, glommio's write of the first slice,
/// which waits for writability.
fn poll_send_now<S: AsyncWrite>(fd: RawFd, socket: Pin<&mut S>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
    match sendmsg_nonblocking(fd, bufs, false) {
        Err(e) if would_block(&e) => {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            socket.poll_write(cx, first)
        }
        sent => Poll::Ready(sent),
    }
}

/// The connection loop's handle on a plain connection's batch.
pub struct BatchOutbox<S> {
    frames: Rc<FrameBatch>,
    socket: SharedSocket<S>,
}

impl<S> BatchOutbox<S> {
    pub fn new(frames: Rc<FrameBatch>, socket: SharedSocket<S>) -> BatchOutbox<S> {
        BatchOutbox { frames, socket }
    }
}

impl<S: AsyncWrite + Unpin> Outbox for BatchOutbox<S> {
    fn poll_send_held(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Held>> {
        if self.frames.unsent() == 0 {
            return Poll::Ready(Ok(Held::Nothing));
        }
        ready!(self.frames.poll_send(Pin::new(&mut *self.socket.0.borrow_mut()), cx))?;
        // Sent at the end of a wake-up: an idle connection keeps no batch.
        *self.frames.bytes.borrow_mut() = Vec::new();
        if self.frames.writer_waiting.take() {
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(Held::Sent))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Waker;

    use super::*;

    use crate::transport::test_socket::Socket;

    struct Connection {
        frames: Rc<FrameBatch>,
        socket: SharedSocket<Socket>,
        outbox: BatchOutbox<Socket>,
        client: TcpStream,
    }

    /// The server end (non-blocking, its send buffer bounded by `send_buffer` if given) with
    /// its batch and outbox, and the client end (non-blocking, small receive buffer).
    fn connection(send_buffer: Option<usize>) -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        client.set_recv_buffer_size(64 * 1024).expect("receive buffer");
        client.connect(&listener.local_addr().expect("address").into()).expect("connect");
        let client: TcpStream = client.into();
        let (server, _) = listener.accept().expect("accept");
        if let Some(bytes) = send_buffer {
            socket2::SockRef::from(&server).set_send_buffer_size(bytes).expect("send buffer");
        }
        server.set_nonblocking(true).expect("non-blocking");
        client.set_nonblocking(true).expect("non-blocking");
        let frames = Rc::new(FrameBatch::new(server.as_raw_fd()));
        let socket = SharedSocket::new(Socket(server));
        let outbox = BatchOutbox::new(Rc::clone(&frames), socket.clone());
        Connection { frames, socket, outbox, client }
    }

    impl Connection {
        /// hyper's write of one h2 frame (head and payload), as far as it is taken.
        fn write(&self, cx: &mut Context<'_>, frame: &[u8]) -> Poll<std::io::Result<usize>> {
            let (head, payload) = frame.split_at(9);
            let mut socket = self.socket.clone();
            self.frames.poll_take(Pin::new(&mut socket), cx, &[IoSlice::new(head), IoSlice::new(payload)])
        }

        /// What the client reads until it has `total` bytes in `received` (or the test fails).
        fn receive_until(&mut self, received: &mut Vec<u8>, total: usize) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while received.len() < total {
                assert!(std::time::Instant::now() < deadline, "{} of {total} bytes arrived", received.len());
                received.extend(self.receive());
            }
        }

        /// Everything the client can read now.
        fn receive(&mut self) -> Vec<u8> {
            let mut received = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match self.client.read(&mut buf) {
                    Ok(0) => return received,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if would_block(&e) => return received,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }

    /// `count` distinct 16 KiB DATA frames with their 9-byte heads.
    fn frames(count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|i| (0..9 + 16 * 1024).map(|b| (b * 7 + i * 13) as u8).collect()).collect()
    }

    /// Counts wake-ups.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn frames_wait_for_the_end_of_the_wake_up_and_then_leave_in_order() {
        let mut connection = connection(None);
        let mut cx = Context::from_waker(Waker::noop());
        let frames = frames(3);
        for frame in &frames {
            assert!(matches!(connection.write(&mut cx, frame), Poll::Ready(Ok(n)) if n == frame.len()), "taken whole");
        }
        // Loopback delivers within `sendmsg`: sent bytes would be readable now.
        assert!(connection.receive().is_empty(), "nothing is sent while the batch has room");
        assert!(matches!(connection.outbox.poll_send_held(&mut cx), Poll::Ready(Ok(Held::Sent))));
        assert_eq!(connection.frames.bytes.borrow().capacity(), 0, "an idle connection keeps no batch");
        assert!(matches!(connection.outbox.poll_send_held(&mut cx), Poll::Ready(Ok(Held::Nothing))));
        let mut received = Vec::new();
        connection.receive_until(&mut received, 3 * frames[0].len());
        assert_eq!(received, frames.concat());
    }

    #[test]
    fn a_full_batch_goes_out_before_more_is_taken() {
        let mut connection = connection(None);
        let mut cx = Context::from_waker(Waker::noop());
        let frames = frames(5);
        let mut taken = 0;
        for frame in &frames {
            let mut offset = 0;
            while offset < frame.len() {
                let Poll::Ready(Ok(n)) = connection.write(&mut cx, &frame[offset..]) else { panic!("a socket with room refused a write") };
                assert!(n > 0, "a write took nothing");
                offset += n;
                taken += n;
            }
        }
        assert_eq!(taken, 5 * frames[0].len());
        let mut received = Vec::new();
        connection.receive_until(&mut received, BATCH_BYTES);
        assert_eq!(received.len(), BATCH_BYTES, "one batch, exactly, before the end of the wake-up");
        assert!(connection.outbox.poll_send_held(&mut cx).is_ready());
        connection.receive_until(&mut received, taken);
        assert_eq!(received, frames.concat());
    }

    #[test]
    fn a_write_of_a_batch_or_more_goes_out_at_once_without_a_copy() {
        let mut connection = connection(None);
        let mut cx = Context::from_waker(Waker::noop());
        // One 128 KiB DATA frame, as for a client whose SETTINGS allow frames that big.
        let frame: Vec<u8> = (0..9 + 128 * 1024).map(|b| (b * 7) as u8).collect();
        let Poll::Ready(Ok(sent)) = connection.write(&mut cx, &frame) else { panic!("a socket with room refused a write") };
        assert!(sent > BATCH_BYTES, "more than a batch left at once ({sent} bytes)");
        assert_eq!(connection.frames.bytes.borrow().capacity(), 0, "nothing was copied into the batch");
        let mut received = Vec::new();
        connection.receive_until(&mut received, sent);
        assert_eq!(received, frame[..sent]);
    }

    #[test]
    fn a_writer_refused_for_a_full_socket_is_woken_when_the_outbox_sends() {
        let mut connection = connection(Some(16 * 1024));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let frames = frames(64);
        let mut received = Vec::new();
        // Write until a write is refused: the batch is full and the socket takes no more.
        let mut written = Vec::new();
        'fill: for frame in &frames {
            let mut offset = 0;
            while offset < frame.len() {
                match connection.write(&mut cx, &frame[offset..]) {
                    Poll::Ready(Ok(n)) => {
                        assert!(n > 0, "a write took nothing");
                        written.extend_from_slice(&frame[offset..offset + n]);
                        offset += n;
                    }
                    Poll::Pending => break 'fill,
                    Poll::Ready(Err(e)) => panic!("write: {e}"),
                }
            }
        }
        assert!(written.len() < frames.concat().len(), "the socket filled");
        // The client reads; the outbox's send then goes through and must wake the writer.
        let woken = count.0.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            received.extend(connection.receive());
            if connection.outbox.poll_send_held(&mut cx).is_ready() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the outbox never got its batch out");
        }
        assert!(count.0.load(Ordering::SeqCst) > woken, "the refused writer is woken");
        connection.receive_until(&mut received, written.len());
        assert_eq!(received, written, "nothing lost or repeated across the refusal");
    }
}
