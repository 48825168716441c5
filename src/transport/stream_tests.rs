//! Tests of the stream adapter: protocol detection and replay, and the zero-copy contract
//! with hyper (see `transport`'s module doc).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::clock::Clock;
use crate::transport::regions::SendfileUse;
use crate::transport::test_socket::Socket;

fn state() -> Rc<ConnectionState> {
    ConnectionState::new(SendfileUse::Always, None, Clock::adjustable())
}

/// Bytes that arrive in the given pieces, at most one piece per read.
struct Pieces(VecDeque<Vec<u8>>);

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
    HyperIo::new(Pieces(pieces.iter().map(|p| p.to_vec()).collect()), None, state())
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

/// The zero-copy contract: hyper's HTTP/1.1 writer hands a body's `Bytes` to
/// `poll_write_vectored` at the address it has in the body, so a registered file region is
/// found and sent with sendfile. The memory holds `M`s and the file `F`s: a client that reads
/// `F`s got the file by sendfile; `M`s mean hyper copied the body before writing it, and
/// every cached blob would then be copied through user space.
#[test]
fn hyper_writes_a_body_s_bytes_from_where_they_are_so_sendfile_finds_them() {
    const LEN: usize = 256 * 1024;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&vec![b'F'; LEN]).unwrap();
    let file = Arc::new(file);
    let body = Bytes::from(vec![b'M'; LEN]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /blob HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        answer
    });
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let fd = server.as_raw_fd();
    let state = state();
    let io = HyperIo::new(Socket(server), Some(fd), Rc::clone(&state));
    let service_state = Rc::clone(&state);
    let service = hyper::service::service_fn(move |_request| {
        service_state.register_file_region(body.clone(), Arc::clone(&file), 0, false);
        std::future::ready(Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(body.clone()))))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let mut connection = Box::pin(builder.serve_connection(io, service));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while connection.as_mut().poll(&mut cx).is_pending() {
        assert!(Instant::now() < deadline, "the connection never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The socket closes with the connection: the client reads to its end.
    drop(connection);
    let answer = client.join().unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let received = &answer[head_end..];
    assert_eq!(received.len(), LEN, "the whole body");
    assert!(received.iter().all(|&b| b == b'F'), "the body left by sendfile: hyper wrote the body's own bytes, not a copy");
}
