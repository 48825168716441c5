//! A raw HTTP/1.1 client over `std::net::TcpStream`: exact control of what is sent (for bad
//! input) and exact view of what comes back.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive); panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "header {name} appears more than once");
        first
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `code` of the first error in an OCI error document.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `GET`/`HEAD`/… `path` with extra `headers` on a new connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    send_raw(addr, head.as_bytes(), method == "HEAD")
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[])
}

/// Sends raw bytes and reads one response (the connection is expected to close after it).
pub fn send_raw(addr: SocketAddr, bytes: &[u8], head_only: bool) -> Reply {
    let mut stream = connect(addr);
    stream.write_all(bytes).expect("send request");
    read_reply(&mut BufReader::new(stream), head_only).expect("a complete response")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream
}

/// Reads one response; the body by `Content-Length` (none for HEAD or 304).
pub fn read_reply(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap_or_else(|| panic!("bad header line {trimmed:?}"));
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut reply = Reply { status, headers, body: Vec::new() };
    if !head_only && status != 304 {
        let len: usize = reply.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        reply.body = vec![0; len];
        reader.read_exact(&mut reply.body)?;
    }
    Ok(reply)
}

/// Sends `method path` with `body` (and a Content-Length) on a new connection.
pub fn send(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(addr, &bytes, method == "HEAD")
}
