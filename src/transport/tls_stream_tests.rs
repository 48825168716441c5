//! Tests of the record-aligned TLS stream: real rustls sessions over an in-memory socket.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::task::Waker;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::*;

#[test]
fn only_a_small_tail_past_a_record_boundary_is_held() {
    assert_eq!(held_back(0, 16_393), 9, "an h2 frame: its 9 bytes past the record wait");
    assert_eq!(held_back(9, 16_393), 18);
    assert_eq!(held_back(0, 1_300), 0, "a manifest is one short record at once");
    assert_eq!(held_back(0, 3 * RECORD_BYTES), 0, "nothing past the boundary");
    assert_eq!(held_back(0, RECORD_BYTES + MAX_CARRY_BYTES + 1), 0, "too much to hold: one short record");
    assert_eq!(held_back(1_000, 100), 0, "not a record's worth yet");
}

#[test]
fn a_prefix_cuts_the_last_slice_and_stops_at_the_limit() {
    let (a, b, c) = ([1u8; 10], [2u8; 10], [3u8; 10]);
    let bufs = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
    let prefix = Prefix::of(&bufs, 15);
    assert_eq!((prefix.count, prefix.bytes), (2, 15));
    assert_eq!(&*prefix.slices()[1], &[2u8; 5]);
    assert_eq!(Prefix::of(&bufs, 100).bytes, 30);
}

/// One direction of an in-memory socket. Like glommio's, a writer refused for a full
/// buffer has its waker kept only until a later write gets through.
#[derive(Default)]
struct Direction {
    bytes: VecDeque<u8>,
    capacity: usize,
    writer: Option<Waker>,
}

struct ServerEnd {
    out: Rc<RefCell<Direction>>,
    incoming: Rc<RefCell<Direction>>,
}

impl AsyncRead for ServerEnd {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let mut incoming = self.incoming.borrow_mut();
        if incoming.bytes.is_empty() {
            return Poll::Pending;
        }
        let n = incoming.bytes.len().min(buf.len());
        for (slot, byte) in buf.iter_mut().zip(incoming.bytes.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for ServerEnd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut out = self.out.borrow_mut();
        let room = out.capacity.saturating_sub(out.bytes.len());
        if room == 0 {
            out.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        out.writer = None;
        let n = room.min(buf.len());
        out.bytes.extend(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn openssl(args: &[&str]) {
    let status = std::process::Command::new("openssl").args(args).stderr(std::process::Stdio::null()).status().expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a certificate for `localhost` that it signed, made with the openssl CLI.
fn certificates(dir: &Path) -> (CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_owned();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(&[&["req", "-x509"], &ec[..], &["-keyout", &path("ca.key"), "-out", &path("ca.crt"), "-days", "1", "-subj", "/CN=test-ca"]].concat());
    openssl(&[&["req"], &ec[..], &["-keyout", &path("leaf.key"), "-out", &path("leaf.csr"), "-subj", "/CN=localhost"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").expect("ext.cnf");
    openssl(&["x509", "-req", "-in", &path("leaf.csr"), "-CA", &path("ca.crt"), "-CAkey", &path("ca.key"), "-CAcreateserial", "-out", &path("leaf.crt"), "-days", "1", "-extfile", &path("ext.cnf")]);
    let ca = CertificateDer::from_pem_file(dir.join("ca.crt")).expect("ca pem");
    let leaf = CertificateDer::from_pem_file(dir.join("leaf.crt")).expect("leaf pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).expect("key pem");
    (ca, leaf, key)
}

/// A TLS 1.3 session over the in-memory socket: the client end, driven by hand, and the
/// server stream that the facade would serve.
struct Session {
    client: rustls::ClientConnection,
    to_client: Rc<RefCell<Direction>>,
    server: AlignedTls<ServerEnd>,
    outbox: Rc<dyn Outbox>,
}

fn session(socket_capacity: usize) -> Session {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, leaf, key) = certificates(dir.path());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost").expect("name")).expect("client");
    let to_client = Rc::new(RefCell::new(Direction { capacity: usize::MAX, ..Direction::default() }));
    let to_server = Rc::new(RefCell::new(Direction { capacity: usize::MAX, ..Direction::default() }));
    let end = ServerEnd { out: Rc::clone(&to_client), incoming: Rc::clone(&to_server) };
    let mut accept = futures_rustls::TlsAcceptor::from(Arc::new(server_config)).accept(end);
    let mut cx = Context::from_waker(Waker::noop());
    let stream = loop {
        client.write_tls(&mut Writer(&to_server)).expect("client writes");
        if let Poll::Ready(stream) = Pin::new(&mut accept).poll(&mut cx) {
            break stream.expect("handshake");
        }
        pump_to_client(&mut client, &to_client);
    };
    let (server, outbox) = AlignedTls::new(stream);
    let mut session = Session { client, to_client, server, outbox };
    // The session tickets the server sent after the handshake.
    pump_to_client(&mut session.client, &session.to_client);
    session.to_client.borrow_mut().capacity = socket_capacity;
    session
}

struct Writer<'a>(&'a Rc<RefCell<Direction>>);

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().bytes.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pump_to_client(client: &mut rustls::ClientConnection, to_client: &Rc<RefCell<Direction>>) {
    let bytes: Vec<u8> = to_client.borrow_mut().bytes.drain(..).collect();
    let mut reader = &bytes[..];
    while !reader.is_empty() {
        client.read_tls(&mut reader).expect("client reads");
        client.process_new_packets().expect("client processes");
    }
}

/// The plaintext of whatever bytes have reached the client.
fn receive(session: &mut Session) -> Vec<u8> {
    let bytes: Vec<u8> = session.to_client.borrow_mut().bytes.drain(..).collect();
    let mut reader = &bytes[..];
    let mut plaintext = Vec::new();
    while !reader.is_empty() {
        session.client.read_tls(&mut reader).expect("client reads");
        session.client.process_new_packets().expect("client processes");
        let _ = session.client.reader().read_to_end(&mut plaintext);
    }
    plaintext
}

/// The lengths (ciphertext) of the whole records waiting for the client.
fn record_lengths(session: &Session) -> Vec<usize> {
    let to_client = session.to_client.borrow();
    let bytes: Vec<u8> = to_client.bytes.iter().copied().collect();
    let mut lengths = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let length = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        lengths.push(length);
        at += 5 + length;
    }
    assert_eq!(at, bytes.len(), "whole records");
    lengths
}

/// What hyper's h2 does for a DATA frame: one write of head and payload, then a flush.
fn write_frame(server: &mut AlignedTls<ServerEnd>, cx: &mut Context<'_>, frame: &[u8]) -> Poll<()> {
    let (head, payload) = frame.split_at(9);
    let mut written = 0;
    while written < frame.len() {
        let bufs = if written < 9 { vec![IoSlice::new(&head[written..]), IoSlice::new(payload)] } else { vec![IoSlice::new(&frame[written..])] };
        match Pin::new(&mut *server).poll_write_vectored(cx, &bufs) {
            Poll::Ready(n) => written += n.expect("write"),
            Poll::Pending => {
                assert_eq!(written, 0, "refused only before any of the frame is taken");
                return Poll::Pending;
            }
        }
    }
    let Poll::Ready(Ok(())) = Pin::new(&mut *server).poll_flush(cx) else { panic!("flush") };
    Poll::Ready(())
}

fn frames(count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| (0..9 + RECORD_BYTES).map(|j| (i * 7 + j) as u8).collect()).collect()
}

/// TLS 1.3 with AES-GCM: a record's ciphertext is its plaintext, the content type byte and
/// the 16-byte tag.
const FULL_RECORD: usize = RECORD_BYTES + 17;

#[test]
fn h2_frames_go_out_as_full_records_and_arrive_whole() {
    let mut session = session(usize::MAX);
    let mut cx = Context::from_waker(Waker::noop());
    let frames = frames(40);
    for frame in &frames {
        assert!(write_frame(&mut session.server, &mut cx, frame).is_ready());
    }
    assert!(session.outbox.poll_send_held(&mut cx).is_ready());
    let lengths = record_lengths(&session);
    let plaintext = receive(&mut session);
    let sent: Vec<u8> = frames.concat();
    assert_eq!(plaintext, sent, "the client reads exactly the frames, in order");
    let (last, full) = lengths.split_last().expect("records");
    assert!(full.iter().all(|&l| l == FULL_RECORD), "every record but the last is full: {lengths:?}");
    assert_eq!(*last, sent.len() % RECORD_BYTES + 17, "the last holds the 9 bytes per frame that the others did not");
}

#[test]
fn a_small_response_is_one_record_sent_by_the_outbox() {
    let mut session = session(usize::MAX);
    let mut cx = Context::from_waker(Waker::noop());
    let (head, body) = (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".as_slice(), b"hello".as_slice());
    let Poll::Ready(Ok(n)) = Pin::new(&mut session.server).poll_write_vectored(&mut cx, &[IoSlice::new(head), IoSlice::new(body)]) else { panic!("write") };
    assert_eq!(n, head.len() + body.len());
    assert!(session.to_client.borrow().bytes.is_empty(), "held until the connection's task is done");
    assert!(session.outbox.poll_send_held(&mut cx).is_ready());
    assert_eq!(record_lengths(&session), vec![n + 17]);
    let plaintext = receive(&mut session);
    assert_eq!(plaintext, [head, body].concat());
}

/// Counts wake-ups.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_writer_refused_for_a_full_socket_is_woken_when_the_outbox_sends() {
    let mut session = session(64 * 1024);
    let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    let mut cx = Context::from_waker(&waker);
    let frames = frames(12);
    let refused = frames.iter().position(|frame| write_frame(&mut session.server, &mut cx, frame).is_pending()).expect("the socket fills");
    assert!(session.outbox.poll_send_held(&mut cx).is_pending(), "still full");
    // The client reads; the socket would now take more. glommio wakes nobody here: the
    // outbox's send is what succeeds, and it must wake the refused writer.
    let mut plaintext = receive(&mut session);
    let woken = count.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(session.outbox.poll_send_held(&mut cx).is_ready());
    assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), woken + 1, "the writer is woken");
    for frame in &frames[refused..] {
        while write_frame(&mut session.server, &mut cx, frame).is_pending() {
            plaintext.extend(receive(&mut session));
        }
    }
    while session.outbox.poll_send_held(&mut cx).is_pending() {
        plaintext.extend(receive(&mut session));
    }
    plaintext.extend(receive(&mut session));
    assert_eq!(plaintext, frames.concat(), "nothing lost or repeated across the refusals");
}
