//! Protocol abuse against the real server, black box over raw sockets: request smuggling
//! shapes, oversized and numerous headers, bytes no client sends, traversal, pipelining, and
//! h2 floods. The rule for every case: a 4xx or a clean close, never a 5xx or a panic, and a
//! normal client still gets a blob afterwards.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::client::{self, read_reply};
use support::image::{self, ImageOptions, Layout};
use support::server::{import, TestServer};

struct Fixture {
    server: TestServer,
    app: Layout,
    _dir: tempfile::TempDir,
}

/// A server holding `library/app:v1` with a 1 KiB and a 2 MiB layer (big enough that a
/// client which stops reading leaves the server with unsent bytes).
fn fixture(extra_config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = ImageOptions { tag: "v1".into(), layers: vec![1024, 2 * 1024 * 1024], ..ImageOptions::default() };
    let app = image::write_layout(&dir.path().join("app"), &options);
    let cache = dir.path().join("cache");
    import(&cache, &app.dir, "library/app", None);
    let server = TestServer::start_on(&cache, extra_config);
    Fixture { server, app, _dir: dir }
}

impl Fixture {
    fn blob_path(&self, layer: usize) -> String {
        format!("/v2/library/app/blobs/{}", self.app.image().layers[layer].digest)
    }

    /// A well-behaved client on a new connection gets the big blob, byte-exact.
    fn assert_still_serves(&self) {
        let layer = &self.app.image().layers[1];
        let reply = client::get(self.server.addr, &self.blob_path(1));
        assert_eq!(reply.status, 200, "a normal client is refused after the abuse");
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&reply.body)));
        assert_eq!(digest, layer.digest, "a normal client gets wrong bytes after the abuse");
    }
}

/// Sends `bytes` (a failed write means the server already closed, which is allowed) and reads
/// until the server closes; returns every status line's code. Fails if the server neither
/// answers nor closes within 10 s.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u16> {
    let mut stream = client::connect(addr);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(bytes);
    statuses(&read_to_close(&mut stream))
}

fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("the server neither answered nor closed: {e}; got {:?}", String::from_utf8_lossy(&received)),
        }
    }
}

/// The status codes of the responses in a byte stream (bodies here are JSON or blob bytes
/// that never contain a status line of their own, and blobs are not requested).
fn statuses(received: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(received);
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text.get(at + 9..at + 12))
        .map(|code| code.parse().unwrap_or_else(|_| panic!("bad status {code:?} in {text:?}")))
        .collect()
}

/// At most one response, a 4xx, then the connection is closed.
fn assert_refused(addr: SocketAddr, what: &str, bytes: &[u8]) {
    let codes = exchange(addr, bytes);
    assert!(codes.len() <= 1, "{what}: more than one response: {codes:?}");
    assert!(codes.iter().all(|c| (400..500).contains(c)), "{what}: {codes:?}");
}

/// The request a smuggler hides behind an ambiguous body; its answer carries a digest header
/// that no answer to `/v2/` has.
const FOLLOW_UP: &str = "GET /v2/library/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n";

/// RFC 9112 §6.3: a request with both Content-Length and Transfer-Encoding (or another
/// ambiguous framing) is refused, or answered by Transfer-Encoding alone and the connection
/// closed: either way at most one answer, never 5xx, and the hidden request never served.
fn assert_not_smuggled(addr: SocketAddr, what: &str, bytes: &[u8]) {
    let mut stream = client::connect(addr);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(bytes);
    let received = read_to_close(&mut stream);
    let codes = statuses(&received);
    assert!(codes.len() <= 1, "{what}: more than one response: {codes:?}");
    assert!(codes.iter().all(|c| (200..500).contains(c)), "{what}: {codes:?}");
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(!text.contains("docker-content-digest"), "{what}: the hidden request was served");
}

#[test]
fn smuggling_shapes_are_refused_and_nothing_after_them_is_served() {
    let f = fixture("");
    let cases = [
        ("content-length with chunked", "POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("chunked with content-length", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"),
        ("duplicate content-length", "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"),
        ("content-length list", "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 5\r\n\r\n"),
        ("signed content-length", "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n"),
        ("overflowing content-length", "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
        ("space before colon", "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n"),
        ("transfer-encoding not chunked", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("chunked twice", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("two chunked headers", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("gzip then chunked", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("obsolete line folding", "GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", "POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n"),
        ("bare LF in chunk", "POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
    ];
    for (what, head) in cases {
        assert_not_smuggled(f.server.addr, what, format!("{head}{FOLLOW_UP}").as_bytes());
    }
    f.assert_still_serves();
}

/// Regression: hyper takes `chunked, chunked` as one chunked body and kept the connection
/// open, so a proxy that reads the framing differently could smuggle the next request.
#[test]
fn doubly_chunked_requests_are_refused_and_the_connection_closed() {
    let f = fixture("");
    for coding in ["chunked, chunked", "gzip, chunked"] {
        let head = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n{FOLLOW_UP}");
        let mut stream = client::connect(f.server.addr);
        stream.write_all(head.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let reply = read_reply(&mut reader, false).expect("an answer");
        assert_eq!(reply.status, 400, "{coding}");
        assert_eq!(reply.error_code(), "UNSUPPORTED", "{coding}");
        assert_eq!(reply.header("connection"), Some("close"), "{coding}");
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{coding}: something followed the refusal: {:?}", String::from_utf8_lossy(&rest));
    }
    f.assert_still_serves();
}

#[test]
fn bodies_on_read_only_requests_do_not_desynchronise_the_connection() {
    let f = fixture("");
    // A GET with a declared body: the body is consumed (not read as the next request).
    let smuggled = "GET /v2/library/app/manifests/nope HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    let codes = exchange(f.server.addr, format!("{head}GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(codes, [200, 200], "the body was read as a request");
    // A write with a chunked body is refused, and its body is not a request either.
    let head = format!("POST /v2/library/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let codes = exchange(f.server.addr, format!("{head}GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(codes, [405, 200]);
    f.assert_still_serves();
}

#[test]
fn oversized_request_lines_and_headers_are_refused() {
    let f = fixture(r#""maxHeaderBytes": 16384"#);
    let addr = f.server.addr;
    let long_path = format!("/v2/{}/manifests/v1", "a/".repeat(20_000));
    assert_refused(addr, "100 KB request line", format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let one_big = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nAccept: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_refused(addr, "64 KB header", one_big.as_bytes());
    let many: String = (0..5000).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_refused(addr, "5000 headers", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    let long_name = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{}: v\r\n\r\n", "X".repeat(20_000));
    assert_refused(addr, "20 KB header name", long_name.as_bytes());
    // A megabyte of header bytes without an end: refused or cut off, not buffered forever.
    let endless = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{}", "X-A: b\r\n".repeat(128 * 1024));
    assert_refused(addr, "endless head", endless.as_bytes());
    f.assert_still_serves();
}

#[test]
fn odd_but_harmless_requests_get_ordinary_answers() {
    let f = fixture("");
    let addr = f.server.addr;
    let blob = f.blob_path(0).into_bytes();
    let close = &b"Connection: close\r\n\r\n"[..];
    let get = |path: &[u8], headers: &[u8]| [&b"GET "[..], path, b" HTTP/1.1\r\nHost: x\r\n", headers, close].concat();
    let huge_range = format!("Range: bytes={}-\r\n", "9".repeat(4000));
    let many_accepts = "Accept: text/html\r\n".repeat(90);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // A header value that is not text is ignored, as if it were absent.
        ("Range not UTF-8", get(&blob, b"Range: bytes=\xff\xfe-1\r\n"), 200),
        ("two Range headers: the first counts", get(&blob, b"Range: bytes=0-0\r\nRange: bytes=5-6\r\n"), 206),
        ("Range past u64", get(&blob, huge_range.as_bytes()), 416),
        ("Accept not UTF-8", get(b"/v2/library/app/manifests/v1", b"Accept: \xff\xff\r\n"), 200),
        ("90 Accept headers none of which fits", get(b"/v2/library/app/manifests/v1", many_accepts.as_bytes()), 404),
        ("absolute form", get(b"http://elsewhere.example/v2/", b""), 200),
        ("Expect: 100-continue without a body", get(b"/v2/", b"Expect: 100-continue\r\n"), 200),
        ("HTTP/1.0 without Host", b"GET /v2/ HTTP/1.0\r\n\r\n".to_vec(), 200),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 404),
        ("unknown method", b"BREW /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 405),
    ];
    for (what, raw, want) in &cases {
        assert_eq!(exchange(addr, raw), [*want], "{what}");
    }
    assert_refused(addr, "CONNECT", b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\nConnection: close\r\n\r\n");
    f.assert_still_serves();
}

#[test]
fn bytes_no_client_sends_in_paths_are_refused() {
    let f = fixture("");
    let mut raws: Vec<Vec<u8>> = Vec::new();
    for bad in [&b"\x00"[..], b"\x7f", b"\x1b[2J", b"\t", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\r", b"\\..\\"] {
        let mut path = b"/v2/library/app".to_vec();
        path.extend_from_slice(bad);
        path.extend_from_slice(b"/manifests/v1");
        raws.push([&b"GET "[..], &path, b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"].concat());
    }
    raws.push(b"GET /v2/\x00/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    raws.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec());
    raws.push(b"\r\n\r\n\r\n".to_vec());
    raws.push(vec![0xff; 4096]);
    for raw in &raws {
        assert_refused(f.server.addr, &String::from_utf8_lossy(raw), raw);
    }
    f.assert_still_serves();
}

#[test]
fn percent_encoded_traversal_never_leaves_the_repository_grammar() {
    let f = fixture("");
    let hex = &f.app.image().layers[0].digest[7..];
    let paths = [
        "/v2/%2e%2e/%2e%2e/%2e%2e/etc/passwd/manifests/latest".to_owned(),
        "/v2/library/app/%2e%2e/%2e%2e/manifests/v1".to_owned(),
        "/v2/%252e%252e/library/app/manifests/v1".to_owned(),
        "/v2/library/app/manifests/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned(),
        "/v2/library/app/manifests/..%2f..%2fv1".to_owned(),
        "/v2/library/app/manifests/..;/v1".to_owned(),
        format!("/v2/library/app/blobs/sha256:%2e%2e%2f{hex}"),
        format!("/v2/library/app/blobs/sha256%3a{hex}"),
        format!("/v2/library/app/blobs/sha256:{}", hex.to_uppercase()),
        "/v2/library%2Fapp/manifests/v1".to_owned(),
        "/v2/library/./app/manifests/v1".to_owned(),
        "/v2/library/app/manifests/v1/".to_owned(),
        "/v2/library/app/tags/list/..".to_owned(),
    ];
    for path in &paths {
        let reply = client::get(f.server.addr, path);
        assert!((400..500).contains(&reply.status), "{path}: {}", reply.status);
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
    }
    f.assert_still_serves();
}

#[test]
fn pipelined_requests_are_answered_in_order_even_with_bad_ones_between() {
    let f = fixture("");
    let small = f.blob_path(0);
    let mut batch = String::new();
    let mut want = Vec::new();
    for i in 0..60 {
        let (path, status) = match i % 4 {
            0 => ("/v2/".to_owned(), 200),
            1 => (small.clone(), 200),
            2 => ("/v2/library/app/manifests/nope".to_owned(), 404),
            _ => ("/v2/library//app/manifests/v1".to_owned(), 400),
        };
        batch.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        want.push(status);
    }
    batch.push_str("GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    want.push(200);
    let mut stream = client::connect(f.server.addr);
    stream.write_all(batch.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let expected_small = std::fs::read(f.app.blob_path(&f.app.image().layers[0].digest)).unwrap();
    for (i, status) in want.iter().enumerate() {
        let reply = read_reply(&mut reader, false).unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(reply.status, *status, "response {i}");
        if i % 4 == 1 && i < 60 {
            assert_eq!(reply.body, expected_small, "response {i}: blob bytes");
        }
    }
    f.assert_still_serves();
}

#[test]
fn a_pipelining_client_that_never_reads_does_not_hurt_others() {
    let f = fixture("");
    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", f.blob_path(1));
    let mut greedy = client::connect(f.server.addr);
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // The server stops reading once its replies back up; the write then times out.
    for _ in 0..2000 {
        if greedy.write_all(request.as_bytes()).is_err() {
            break;
        }
    }
    f.assert_still_serves();
    drop(greedy);
    f.assert_still_serves();
}

// ---- h2 (prior knowledge on the plain port) ----

/// Runs `body` on a single-threaded tokio runtime (the h2 client's home), in the test thread.
fn with_tokio<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(body)
}

/// An h2 connection driven in the background; `window` is the initial stream window the
/// client announces (0: the server may send headers but no body bytes).
async fn h2_connect(addr: SocketAddr, window: u32) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(window);
    let (client, connection) = builder.handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_get(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}{path}")).body(()).expect("request")
}

#[test]
fn h2_rapid_reset_is_cut_off_or_absorbed() {
    let f = fixture("");
    let addr = f.server.addr;
    let path = f.blob_path(1);
    let (sent, status_after) = with_tokio(async {
        let mut client = Some(h2_connect(addr, 65_535).await);
        let mut sent = 0;
        // Open a stream and drop it at once (RST_STREAM CANCEL), as fast as the socket takes.
        while let Some(open) = client.take() {
            let Ok(mut ready) = open.ready().await else { break };
            let Ok((response, _)) = ready.send_request(h2_get(addr, &path), true) else { break };
            drop(response);
            sent += 1;
            client = Some(ready);
            if sent == 10_000 {
                break;
            }
        }
        // The connection was either refused (GOAWAY) or still answers properly.
        let status = match client {
            Some(open) => match open.ready().await {
                Ok(mut ready) => match ready.send_request(h2_get(addr, "/v2/"), true) {
                    Ok((response, _)) => response.await.ok().map(|r| r.status().as_u16()),
                    Err(_) => None,
                },
                Err(_) => None,
            },
            None => None,
        };
        (sent, status)
    });
    assert!(sent > 0, "not a single stream was opened");
    assert!(status_after.is_none_or(|s| s == 200), "after {sent} resets: {status_after:?}");
    f.assert_still_serves();
}

#[test]
fn h2_oversized_header_lists_get_431_or_a_reset() {
    let f = fixture(r#""maxHeaderBytes": 16384"#);
    let addr = f.server.addr;
    let outcomes = with_tokio(async {
        let mut outcomes = Vec::new();
        for (count, size) in [(1, 64 * 1024), (2000, 16), (4, 1024 * 1024)] {
            let client = h2_connect(addr, 65_535).await;
            let mut request = h2_get(addr, "/v2/");
            for i in 0..count {
                let name = http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name");
                request.headers_mut().append(name, http::HeaderValue::from_str(&"v".repeat(size)).expect("value"));
            }
            let outcome = match client.ready().await {
                Ok(mut ready) => match ready.send_request(request, true) {
                    Ok((response, _)) => response.await.map(|r| r.status().as_u16()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            outcomes.push(((count, size), outcome));
        }
        outcomes
    });
    for (shape, outcome) in outcomes {
        assert!(matches!(outcome, Ok(431) | Err(_)), "{shape:?} headers: {outcome:?}");
    }
    f.assert_still_serves();
}

#[test]
fn h2_zero_window_streams_hold_nothing_others_need() {
    let f = fixture("");
    let addr = f.server.addr;
    let path = f.blob_path(1);
    let statuses = with_tokio(async {
        let client = h2_connect(addr, 0).await;
        let mut pending = Vec::new();
        // 200 streams (under the server's limit of 256, which the h2 client respects).
        for _ in 0..200 {
            let mut ready = client.clone().ready().await.expect("connection usable");
            let (response, _) = ready.send_request(h2_get(addr, &path), true).expect("send");
            pending.push(response);
        }
        let mut statuses = Vec::new();
        for response in pending {
            let response = tokio::time::timeout(Duration::from_secs(20), response).await.expect("headers arrive despite the zero window");
            statuses.push(response.map(|r| r.status().as_u16()).ok());
        }
        // While this connection holds 200 streams it cannot send, others are served.
        tokio::task::spawn_blocking({
            let addr = f.server.addr;
            let path = path.clone();
            move || client::get(addr, &path).status
        })
        .await
        .map(|status| assert_eq!(status, 200, "a normal client during the stall"))
        .expect("probe");
        statuses
    });
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    f.assert_still_serves();
}

/// One raw h2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK integer with an `prefix`-bit prefix and the given high bits (RFC 7541 §5.1).
fn hpack_int(high: u8, prefix: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, name from the static table (RFC 7541 §6.2.2).
fn hpack_literal(name_index: usize, value: &[u8], out: &mut Vec<u8>) {
    hpack_int(0x00, 4, name_index, out);
    hpack_int(0x00, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// The header block of `GET path` (static table: 2 = GET, 6 = http, 4 = :path, 1 = :authority).
fn hpack_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    hpack_literal(4, path.as_bytes(), &mut block);
    hpack_literal(1, b"x", &mut block);
    block
}

/// The client preface and an empty SETTINGS, optionally with an initial window of 0.
fn raw_h2(addr: SocketAddr, zero_window: bool) -> TcpStream {
    let mut stream = client::connect(addr);
    let settings: &[u8] = if zero_window { &[0, 4, 0, 0, 0, 0] } else { &[] };
    h2_hello(&mut stream, settings);
    stream
}

/// Sends the client preface and SETTINGS with `settings`, and acknowledges the server's.
fn h2_hello(stream: &mut TcpStream, settings: &[u8]) {
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, settings));
    stream.write_all(&hello).unwrap();
    // Acknowledge the server's SETTINGS, so its limits are in force, as with a real client.
    let mut header = [0u8; 9];
    loop {
        stream.read_exact(&mut header).expect("the server's SETTINGS");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).expect("a frame payload");
        if header[3] == SETTINGS && header[4] & ACK == 0 {
            stream.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
            return;
        }
    }
}

/// The (kind, stream, error code) of every RST_STREAM and GOAWAY the server sends until it
/// closes or stays silent for `quiet`.
fn control_frames(stream: &mut TcpStream, quiet: Duration) -> Vec<(u8, u32, u32)> {
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut seen = Vec::new();
    let mut header = [0u8; 9];
    loop {
        if stream.read_exact(&mut header).is_err() {
            return seen;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            return seen;
        }
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        match header[3] {
            RST_STREAM if len == 4 => seen.push((RST_STREAM, stream_id, u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]))),
            GOAWAY if len >= 8 => {
                seen.push((GOAWAY, stream_id, u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])));
                return seen;
            }
            _ => {}
        }
    }
}

#[test]
fn h2_continuation_flood_is_cut_off() {
    let f = fixture(r#""maxHeaderBytes": 16384"#);
    let mut stream = raw_h2(f.server.addr, false);
    let mut first = hpack_get("/v2/");
    hpack_literal(1, &vec![b'a'; 8000], &mut first);
    let _ = stream.write_all(&frame(HEADERS, END_STREAM, 1, &first));
    // 64 MiB of CONTINUATION frames, never ending the header block.
    let mut junk = Vec::new();
    hpack_literal(1, &vec![b'b'; 16_000], &mut junk);
    let continuation = frame(CONTINUATION, 0, 1, &junk);
    let mut written = 0usize;
    for _ in 0..4096 {
        if stream.write_all(&continuation).is_err() {
            break;
        }
        written += continuation.len();
    }
    let frames = control_frames(&mut stream, Duration::from_secs(10));
    assert!(written < 64 * 1024 * 1024 || frames.iter().any(|(kind, _, _)| *kind == GOAWAY), "the server read 64 MiB of one header block: {frames:?}");
    f.assert_still_serves();
}

#[test]
fn h2_streams_beyond_the_limit_are_refused() {
    let f = fixture("");
    let mut stream = raw_h2(f.server.addr, true);
    let block = hpack_get(&f.blob_path(1));
    let mut burst = Vec::new();
    // 1000 streams at once, each waiting on a zero window: far past max_concurrent_streams.
    for i in 0..1000u32 {
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    let _ = stream.write_all(&burst);
    let frames = control_frames(&mut stream, Duration::from_secs(3));
    let refused = frames.iter().filter(|(kind, _, code)| *kind == RST_STREAM && *code == 0x7).count();
    let goaway = frames.iter().any(|(kind, _, _)| *kind == GOAWAY);
    assert!(refused >= 1000 - 256 || goaway, "no stream beyond the limit was refused: {} frames", frames.len());
    f.assert_still_serves();
    drop(stream);
    f.assert_still_serves();
}

#[test]
fn h2_raw_rapid_reset_flood_is_cut_off() {
    let f = fixture("");
    let mut stream = raw_h2(f.server.addr, false);
    let block = hpack_get(&f.blob_path(1));
    let mut burst = Vec::new();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&burst);
    let frames = control_frames(&mut stream, Duration::from_secs(10));
    assert!(frames.iter().any(|(kind, _, _)| *kind == GOAWAY), "20000 opened-and-reset streams were absorbed without a GOAWAY");
    f.assert_still_serves();
}

#[test]
fn a_client_that_stops_reading_is_closed_once_nothing_moves_for_the_idle_timeout() {
    let fixture = stalling_fixture();
    let mut stream = stalled_reader(&fixture);
    let request = format!("GET {} HTTP/1.1\r\nHost: facade\r\n\r\n", fixture.blob_path(1));
    stream.write_all(request.as_bytes()).unwrap();
    assert_closed_while_stalled(&fixture, stream);
}

/// The same over h2c, whose frames wait in a batch the connection loop sends: a batch that
/// cannot go out counts as answers due.
#[test]
fn an_h2_client_that_stops_reading_is_closed_once_nothing_moves_for_the_idle_timeout() {
    let fixture = stalling_fixture();
    let mut stream = stalled_reader(&fixture);
    // Windows wide open (stream: 2^31-1 from SETTINGS; connection: a WINDOW_UPDATE to the
    // same), so only the socket holds the server back.
    h2_hello(&mut stream, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
    let mut request = frame(WINDOW_UPDATE, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes());
    request.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &hpack_get(&fixture.blob_path(1))));
    stream.write_all(&request).unwrap();
    assert_closed_while_stalled(&fixture, stream);
}

/// The blob a stalled reader asks for.
const STALLED_BLOB_BYTES: usize = 32 * 1024 * 1024;

/// The idle timeout of the stalling fixture: passed by moving the facade's clock.
const STALL_IDLE_MS: u64 = 60_000;

/// A `STALLED_BLOB_BYTES` blob on a server whose idle timeout is `STALL_IDLE_MS`.
fn stalling_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = ImageOptions { tag: "v1".into(), layers: vec![1024, STALLED_BLOB_BYTES], ..ImageOptions::default() };
    let app = image::write_layout(&dir.path().join("app"), &options);
    let cache = dir.path().join("cache");
    import(&cache, &app.dir, "library/app", None);
    let server = TestServer::start_on(&cache, &format!(r#""idleTimeoutMs": {STALL_IDLE_MS}, "adminListen": "127.0.0.1:0""#));
    Fixture { server, app, _dir: dir }
}

/// A connection with a small, fixed receive buffer (no autotuning, which on loopback may
/// take the whole blob).
fn stalled_reader(fixture: &Fixture) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&fixture.server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

/// Reads nothing while the facade's clock is moved by its idle timeout until it closes the
/// connection (a move once the socket buffers are full is a stall to the connection's
/// watchdog; one before only restarts its stall clock, as bytes still moved), then expects
/// the answer cut short of the blob.
fn assert_closed_while_stalled(fixture: &Fixture, mut stream: TcpStream) {
    // The answer has begun (its first bytes wait in our socket): the connection is the
    // server's to judge from now on, and its gauge counts it.
    let mut first = [0u8; 1];
    assert_eq!(stream.peek(&mut first).expect("the answer begins"), 1);
    let closed = (0..50).any(|_| {
        fixture.server.advance(Duration::from_millis(STALL_IDLE_MS));
        let looked_until = std::time::Instant::now() + Duration::from_millis(200);
        loop {
            if fixture.server.open_connections("registry") == 0.0 {
                break true;
            }
            if std::time::Instant::now() > looked_until {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert!(closed, "the stalled connection is still open after the idle timeout passed 50 times");
    let mut received = Vec::new();
    let ended = stream.read_to_end(&mut received);
    assert!(ended.is_ok() || ended.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "closed by the server");
    // The socket buffers' worth (a kernel-sized share of the blob) arrived first: the answer
    // was under way, not refused.
    assert!(received.len() > 128 * 1024, "the answer began ({} bytes arrived)", received.len());
    assert!(received.len() < STALLED_BLOB_BYTES, "the server gave up on the stalled answer ({} bytes arrived)", received.len());
    fixture.assert_still_serves();
}
