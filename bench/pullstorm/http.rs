//! A small blocking HTTP/1.1 client over `std::net::TcpStream`: keep-alive connections kept
//! for reuse per server, bodies framed by `Content-Length`, chunked or connection close and
//! streamed to a callback, redirects followed. Plain HTTP only; knows nothing of registries.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::url::{ParseUrlError, Url};

pub const MAX_REDIRECTS: usize = 5;
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_CHUNK_LINE_BYTES: usize = 4 << 10;
/// Bodies are read straight into this buffer (BufReader bypasses its own for big reads). Each
/// read is hashed at once, in a pair across threads where it can be: 128 KiB rather than 64
/// meets a partner half as often for the same bytes (warm storm, 100 workspaces: client CPU
/// 3.9-4.1 s against 4.2-4.5 s in the same run).
const READ_BUFFER_BYTES: usize = 128 << 10;
const HEAD_BUFFER_BYTES: usize = 8 << 10;
/// How much of an error response is kept for the message (and read to keep the connection).
const ERROR_BODY_BYTES: usize = 16 << 10;
const ERROR_MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {authority}: {source}")]
    Connect { authority: String, source: io::Error },
    #[error("{method} {url}: {source}")]
    Io { method: Method, url: Url, source: io::Error },
    /// A blocking read with SO_RCVTIMEO reports `WouldBlock` ("Resource temporarily
    /// unavailable") when the timeout passes; said plainly here.
    #[error("{method} {url}: nothing received for {timeout_s} s (read timeout)")]
    TimedOut { method: Method, url: Url, timeout_s: u64 },
    #[error("{method} {url}: malformed response: {what}")]
    Malformed { method: Method, url: Url, what: String },
    #[error("{method} {url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { method: Method, url: Url, status: u16, body: String },
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: Url },
    #[error("redirect: {0}")]
    Location(#[from] ParseUrlError),
    #[error("{method} {url}: body refused after {received} bytes")]
    Refused { method: Method, url: Url, received: u64 },
}

/// A final (non-redirect) 2xx response whose body has been handed over.
#[derive(Debug)]
pub struct Response {
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The client's open connections now and the most at once, across every client sharing it.
#[derive(Debug, Default)]
pub struct Gauge {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Connection {
    authority: String,
    reader: BufReader<TcpStream>,
    /// Served a response before: a failure before the next response's first byte may just
    /// mean the server closed it while idle, and is retried once on a new connection.
    reused: bool,
    gauge: Arc<Gauge>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gauge.closed();
    }
}

/// One workspace's client: its idle keep-alive connections, shared by its layer threads.
pub struct Client {
    idle: Mutex<Vec<Connection>>,
    timeout: Duration,
    gauge: Arc<Gauge>,
}

struct Head {
    status: u16,
    http_1_0: bool,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What went wrong reading a response, before it is given its request's context.
enum ReadError {
    Io(io::Error),
    Malformed(String),
    /// The connection closed before the first byte of a response.
    ClosedEarly,
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> ReadError {
        ReadError::Io(error)
    }
}

enum Hop {
    Done(Response),
    Redirect(Url),
}

impl Client {
    /// `timeout` bounds each connect, read and write.
    pub fn new(timeout: Duration, gauge: Arc<Gauge>) -> Client {
        Client { idle: Mutex::new(Vec::new()), timeout, gauge }
    }

    /// Sends `method url` with `headers`, following redirects. A 2xx body is handed to
    /// `on_body` piece by piece (returning `false` refuses the rest); any other final status
    /// is an error carrying the start of its body.
    ///
    /// # Errors
    /// Connection and I/O failures, malformed responses, non-2xx statuses, redirect loops.
    pub fn fetch(&self, method: Method, url: &Url, headers: &[(&str, &str)], on_body: &mut dyn FnMut(&[u8]) -> bool) -> Result<Response, HttpError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            match self.hop(method, &url, headers, on_body)? {
                Hop::Done(response) => return Ok(response),
                Hop::Redirect(next) => url = next,
            }
        }
        Err(HttpError::TooManyRedirects { url })
    }

    fn hop(&self, method: Method, url: &Url, headers: &[(&str, &str)], on_body: &mut dyn FnMut(&[u8]) -> bool) -> Result<Hop, HttpError> {
        let (mut connection, head) = self.send(method, url, headers)?;
        let malformed = |what| HttpError::Malformed { method, url: url.clone(), what };
        let framing = framing(method, &head).map_err(malformed)?;
        let reusable = keeps_alive(&head, framing);
        let location = header(&head.headers, "location").filter(|_| matches!(head.status, 301 | 302 | 303 | 307 | 308));
        let (complete, kept) = if let Some(location) = location {
            let next = url.join(location)?;
            let complete = read_body(&mut connection.reader, framing, &mut |_| true).map_err(|e| read_error(e, method, url, self.timeout))?;
            (complete, Hop::Redirect(next))
        } else if (200..300).contains(&head.status) {
            let complete = read_body(&mut connection.reader, framing, on_body).map_err(|e| read_error(e, method, url, self.timeout))?;
            if let BodyEnd::Refused(received) = complete {
                return Err(HttpError::Refused { method, url: url.clone(), received });
            }
            (complete, Hop::Done(Response { headers: head.headers }))
        } else {
            let mut start = Vec::new();
            let complete = read_body(&mut connection.reader, framing, &mut |piece| {
                start.extend_from_slice(piece);
                start.len() <= ERROR_BODY_BYTES
            });
            let body: String = String::from_utf8_lossy(&start).chars().take(ERROR_MESSAGE_CHARS).collect();
            let complete = complete.unwrap_or(BodyEnd::Refused(0));
            self.release(connection, reusable && complete == BodyEnd::Complete);
            return Err(HttpError::Status { method, url: url.clone(), status: head.status, body: body.trim().to_owned() });
        };
        self.release(connection, reusable && complete == BodyEnd::Complete);
        Ok(kept)
    }

    /// Writes the request on an idle or new connection and reads the response head; a reused
    /// connection that turns out closed is replaced once.
    fn send(&self, method: Method, url: &Url, headers: &[(&str, &str)]) -> Result<(Connection, Head), HttpError> {
        let mut request = format!("{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pullstorm\r\n", url.path(), url.authority());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        loop {
            let mut connection = self.connection(&url.authority())?;
            let attempt = connection.reader.get_mut().write_all(request.as_bytes()).map_err(ReadError::Io).and_then(|()| read_head(&mut connection.reader));
            match attempt {
                Ok(head) => return Ok((connection, head)),
                Err(e) if connection.reused && is_stale(&e) => continue,
                Err(e) => return Err(read_error(e, method, url, self.timeout)),
            }
        }
    }

    fn connection(&self, authority: &str) -> Result<Connection, HttpError> {
        let mut idle = self.idle.lock().expect("idle connections lock");
        if let Some(position) = idle.iter().position(|c| c.authority == authority) {
            return Ok(idle.swap_remove(position));
        }
        drop(idle);
        let connect_error = |source| HttpError::Connect { authority: authority.to_owned(), source };
        let stream = TcpStream::connect(authority).map_err(connect_error)?;
        self.gauge.opened();
        let connection = Connection { authority: authority.to_owned(), reader: BufReader::with_capacity(HEAD_BUFFER_BYTES, stream), reused: false, gauge: Arc::clone(&self.gauge) };
        let stream = connection.reader.get_ref();
        stream.set_nodelay(true).map_err(connect_error)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(connect_error)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(connect_error)?;
        Ok(connection)
    }

    fn release(&self, mut connection: Connection, reusable: bool) {
        if reusable {
            connection.reused = true;
            self.idle.lock().expect("idle connections lock").push(connection);
        }
    }
}

fn is_stale(error: &ReadError) -> bool {
    match error {
        ReadError::ClosedEarly => true,
        ReadError::Io(e) => matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted),
        ReadError::Malformed(_) => false,
    }
}

fn read_error(error: ReadError, method: Method, url: &Url, timeout: Duration) -> HttpError {
    let url = url.clone();
    match error {
        ReadError::Io(source) if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            HttpError::TimedOut { method, url, timeout_s: timeout.as_secs() }
        }
        ReadError::Io(source) => HttpError::Io { method, url, source },
        ReadError::Malformed(what) => HttpError::Malformed { method, url, what },
        ReadError::ClosedEarly => HttpError::Io { method, url, source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response") },
    }
}

fn read_line_limited(reader: &mut impl BufRead, line: &mut Vec<u8>, limit: usize) -> Result<usize, ReadError> {
    line.clear();
    let n = reader.by_ref().take(limit as u64).read_until(b'\n', line)?;
    if n > 0 && !line.ends_with(b"\n") {
        return Err(if n >= limit { ReadError::Malformed(format!("line longer than {limit} bytes")) } else { ReadError::Io(io::ErrorKind::UnexpectedEof.into()) });
    }
    Ok(n)
}

fn read_head(reader: &mut impl BufRead) -> Result<Head, ReadError> {
    let mut line = Vec::new();
    if read_line_limited(reader, &mut line, MAX_HEAD_BYTES)? == 0 {
        return Err(ReadError::ClosedEarly);
    }
    let status_line = String::from_utf8_lossy(&line).trim_end().to_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (Some(status), true) = (status, version.starts_with("HTTP/1.")) else {
        return Err(ReadError::Malformed(format!("status line {status_line:?}")));
    };
    let mut headers = Vec::new();
    let mut total = line.len();
    loop {
        total += read_line_limited(reader, &mut line, MAX_HEAD_BYTES)?;
        if total > MAX_HEAD_BYTES {
            return Err(ReadError::Malformed(format!("head larger than {MAX_HEAD_BYTES} bytes")));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':').ok_or_else(|| ReadError::Malformed(format!("header line {text:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    if (100..200).contains(&status) {
        // An interim response (100 Continue): the real one follows.
        return read_head(reader);
    }
    Ok(Head { status, http_1_0: version == "HTTP/1.0", headers })
}

fn framing(method: Method, head: &Head) -> Result<Framing, String> {
    if method == Method::Head || matches!(head.status, 204 | 304) {
        return Ok(Framing::Empty);
    }
    if let Some(encoding) = header(&head.headers, "transfer-encoding") {
        return match encoding.rsplit(',').next().map(str::trim) {
            Some(last) if last.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Ok(Framing::UntilClose),
        };
    }
    match header(&head.headers, "content-length") {
        Some(text) => text.parse().map(Framing::Length).map_err(|_| format!("Content-Length {text:?}")),
        None => Ok(Framing::UntilClose),
    }
}

fn keeps_alive(head: &Head, framing: Framing) -> bool {
    let connection = header(&head.headers, "connection").unwrap_or_default().to_ascii_lowercase();
    let asked_close = connection.split(',').any(|t| t.trim() == "close");
    let asked_keep = connection.split(',').any(|t| t.trim() == "keep-alive");
    framing != Framing::UntilClose && !asked_close && (!head.http_1_0 || asked_keep)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Complete,
    /// The callback refused more after this many bytes; the rest was not read.
    Refused(u64),
}

fn read_body(reader: &mut impl BufRead, framing: Framing, sink: &mut dyn FnMut(&[u8]) -> bool) -> Result<BodyEnd, ReadError> {
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut received = 0u64;
    match framing {
        Framing::Empty => return Ok(BodyEnd::Complete),
        Framing::Length(length) => {
            if !read_exact_to(reader, length, &mut buffer, &mut received, sink)? {
                return Ok(BodyEnd::Refused(received));
            }
        }
        Framing::UntilClose => loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            received += n as u64;
            if !sink(&buffer[..n]) {
                return Ok(BodyEnd::Refused(received));
            }
        },
        Framing::Chunked => {
            let mut line = Vec::new();
            loop {
                let size = chunk_size(reader, &mut line)?;
                if size == 0 {
                    // Trailers, until the empty line.
                    while read_line_limited(reader, &mut line, MAX_CHUNK_LINE_BYTES)? > 0 && line != b"\r\n" && line != b"\n" {}
                    break;
                }
                if !read_exact_to(reader, size, &mut buffer, &mut received, sink)? {
                    return Ok(BodyEnd::Refused(received));
                }
                read_line_limited(reader, &mut line, MAX_CHUNK_LINE_BYTES)?;
                if line != b"\r\n" && line != b"\n" {
                    return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
                }
            }
        }
    }
    Ok(BodyEnd::Complete)
}

fn chunk_size(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<u64, ReadError> {
    if read_line_limited(reader, line, MAX_CHUNK_LINE_BYTES)? == 0 {
        return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    let text = String::from_utf8_lossy(line);
    let digits = text.split(';').next().unwrap_or_default().trim();
    u64::from_str_radix(digits, 16).map_err(|_| ReadError::Malformed(format!("chunk size {digits:?}")))
}

/// Reads exactly `length` bytes into `sink`; `false` when the sink refused more.
fn read_exact_to(reader: &mut impl BufRead, length: u64, buffer: &mut [u8], received: &mut u64, sink: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, ReadError> {
    let mut remaining = length;
    while remaining > 0 {
        let want = buffer.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = reader.read(&mut buffer[..want])?;
        if n == 0 {
            return Err(ReadError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, format!("body ended {remaining} bytes early"))));
        }
        remaining -= n as u64;
        *received += n as u64;
        if !sink(&buffer[..n]) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(framing: Framing, wire: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut reader = io::BufReader::with_capacity(7, wire);
        match read_body(&mut reader, framing, &mut |piece| {
            out.extend_from_slice(piece);
            true
        }) {
            Ok(BodyEnd::Complete) => Ok(out),
            Ok(BodyEnd::Refused(_)) => Err("refused".into()),
            Err(ReadError::Malformed(m)) => Err(m),
            Err(ReadError::Io(e)) => Err(e.to_string()),
            Err(ReadError::ClosedEarly) => Err("closed".into()),
        }
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        assert_eq!(body(Framing::Length(5), b"hello world").unwrap(), b"hello");
        assert!(body(Framing::Length(20), b"short").unwrap_err().contains("early"));
        assert_eq!(body(Framing::Chunked, b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n").unwrap(), b"hello world");
        assert_eq!(body(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(), b"0123456789");
        assert!(body(Framing::Chunked, b"zz\r\n").unwrap_err().contains("chunk size"));
        assert!(body(Framing::Chunked, b"2\r\nabc\r\n").unwrap_err().contains("CRLF"));
        assert_eq!(body(Framing::UntilClose, b"all of it").unwrap(), b"all of it");
    }

    #[test]
    fn heads_and_framing() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let mut reader = io::BufReader::new(&wire[..]);
        let Ok(head) = read_head(&mut reader) else { panic!("a head") };
        assert_eq!(head.status, 200);
        assert_eq!(framing(Method::Get, &head).ok(), Some(Framing::Length(3)));
        assert_eq!(framing(Method::Head, &head).ok(), Some(Framing::Empty));
        assert!(!keeps_alive(&head, Framing::Length(3)));
        let old = Head { status: 200, http_1_0: true, headers: vec![] };
        assert!(!keeps_alive(&old, Framing::Length(1)));
        let chunked = Head { status: 200, http_1_0: false, headers: vec![("Transfer-Encoding".into(), "chunked".into())] };
        assert_eq!(framing(Method::Get, &chunked).ok(), Some(Framing::Chunked));
        assert!(keeps_alive(&chunked, Framing::Chunked));
        assert!(matches!(read_head(&mut io::BufReader::new(&b""[..])), Err(ReadError::ClosedEarly)));
        assert!(matches!(read_head(&mut io::BufReader::new(&b"SSH-2.0\r\n\r\n"[..])), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn a_read_timeout_is_named_as_one() {
        let url: Url = "http://127.0.0.1:1/v2/x/blobs/sha256:00".parse().unwrap();
        let timeout = Duration::from_secs(120);
        let timed_out = read_error(ReadError::Io(io::ErrorKind::WouldBlock.into()), Method::Get, &url, timeout);
        assert_eq!(timed_out.to_string(), "GET http://127.0.0.1:1/v2/x/blobs/sha256:00: nothing received for 120 s (read timeout)");
        let reset = read_error(ReadError::Io(io::ErrorKind::ConnectionReset.into()), Method::Get, &url, timeout);
        assert!(matches!(reset, HttpError::Io { .. }));
    }
}
