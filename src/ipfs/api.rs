//! A client of a kubo-compatible RPC API for what publishing needs: `POST /api/v0/add` of one
//! blob, streamed from the caller's source, with the options that make the CID depend only on
//! the bytes (CIDv1, raw leaves, a fixed chunker, sha2-256), pinned.

use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::IpfsError;
use crate::clock::within;
use crate::blocking::run_blocking;
use crate::transport::ClientIo;

/// The add options (kubo's names): the same bytes give the same CID on every node and kubo
/// version, whatever the node's own defaults.
pub const ADD_OPTIONS: &str = "cid-version=1&raw-leaves=true&chunker=size-262144&hash=sha2-256&pin=true&progress=false";

/// Largest answer read from the API (one NDJSON line per added file, or an error).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A blob's bytes as the publisher reads them.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>>>>;

#[derive(Debug, Clone)]
pub struct IpfsApi {
    /// `host:port`, as in the URL.
    authority: String,
    connect_timeout: Duration,
}

#[derive(serde::Deserialize)]
struct AddAnswer {
    #[serde(rename = "Hash")]
    hash: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorAnswer {
    #[serde(rename = "Message")]
    message: String,
}

impl IpfsApi {
    /// # Errors
    /// `url` is not `http://host:port` (kubo's API speaks plain HTTP, on loopback or a node's
    /// own network).
    pub fn new(url: &str, connect_timeout: Duration) -> Result<IpfsApi, IpfsError> {
        let uri: http::Uri = url.parse().map_err(|_| IpfsError::Config(format!("`{url}` is not a URL")))?;
        if uri.scheme_str() != Some("http") {
            return Err(IpfsError::Config(format!("`{url}`: the IPFS API is reached over http://")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(IpfsError::Config(format!("`{url}`: give the API's origin only (e.g. http://127.0.0.1:5001)")));
        }
        let authority = uri.authority().ok_or_else(|| IpfsError::Config(format!("`{url}` names no host")))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        Ok(IpfsApi { authority, connect_timeout })
    }

    /// Adds `size` bytes from `blob` as a file called `name`; the CID kubo answers.
    ///
    /// # Errors
    /// The API cannot be reached, refuses the add, answers something unusable, or `blob`
    /// fails while it is read.
    pub async fn add(&self, name: &str, size: u64, blob: BlobStream) -> Result<String, IpfsError> {
        let boundary = format!("registry-facade-{:016x}", fastrand::u64(..));
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let length = head.len() as u64 + size + tail.len() as u64;
        let frames: FrameStream = Box::pin(futures_lite::stream::once(Ok(head)).chain(blob).chain(futures_lite::stream::once(Ok(tail))).map(|chunk| chunk.map(Frame::data)));
        let request = http::Request::post(format!("/api/v0/add?{ADD_OPTIONS}"))
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .header(http::header::CONTENT_LENGTH, length)
            .body(StreamBody::new(frames))
            .map_err(|e| IpfsError::Config(e.to_string()))?;
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await.map_err(|e| IpfsError::Broken(e.to_string()))?;
        let status = response.status();
        let (body, stream_error) = read_answer(response.into_body()).await?;
        if let Some(message) = stream_error {
            return Err(IpfsError::Refused { status: status.as_u16(), message });
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorAnswer>(&body).map(|e| e.message).unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(IpfsError::Refused { status: status.as_u16(), message });
        }
        // One line per added entry; with one file and no progress, the last is the file's.
        let last = body.split(|&b| b == b'\n').rev().find(|line| !line.trim_ascii().is_empty()).unwrap_or_default();
        let answer: AddAnswer = serde_json::from_slice(last).map_err(|_| IpfsError::Invalid(format!("add answered {:?}", String::from_utf8_lossy(last))))?;
        answer.hash.filter(|cid| !cid.is_empty()).ok_or_else(|| IpfsError::Invalid("add answered no Hash".into()))
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<StreamBody<FrameStream>>, IpfsError> {
        let authority = self.authority.clone();
        let addrs: Vec<SocketAddr> = run_blocking(move || authority.to_socket_addrs().map(Iterator::collect))
            .await
            .map_err(|e| IpfsError::Connect(format!("{}: {e}", self.authority)))?;
        let addr = addrs.first().ok_or_else(|| IpfsError::Connect(format!("{}: no address", self.authority)))?;
        let stream = glommio::net::TcpStream::connect_timeout(*addr, self.connect_timeout).await.map_err(|e| IpfsError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(ClientIo::new(stream)).await.map_err(|e| IpfsError::Connect(e.to_string()))?;
        glommio::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "IPFS API connection ended");
            }
        })
        .detach();
        Ok(sender)
    }
}

/// The request body's frames: the multipart head, the blob, the multipart tail.
type FrameStream = Pin<Box<dyn Stream<Item = std::io::Result<Frame<Bytes>>>>>;

/// The answer's body (at most `MAX_ANSWER_BYTES`) and kubo's `X-Stream-Error` trailer, which
/// reports a failure after a 200 was sent.
async fn read_answer(mut body: hyper::body::Incoming) -> Result<(Vec<u8>, Option<String>), IpfsError> {
    let mut collected = Vec::new();
    let mut stream_error = None;
    while let Some(frame) = within(Duration::from_secs(60), body.frame()).await.ok_or(IpfsError::TimedOut("the add's answer"))? {
        let frame = frame.map_err(|e| IpfsError::Broken(e.to_string()))?;
        if let Some(trailers) = frame.trailers_ref() {
            stream_error = trailers.get("x-stream-error").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_owned);
        }
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > MAX_ANSWER_BYTES {
                return Err(IpfsError::Invalid(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes")));
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok((collected, stream_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_an_http_origin() {
        let api = IpfsApi::new("http://127.0.0.1:5001", Duration::from_secs(1)).unwrap();
        assert_eq!(api.authority, "127.0.0.1:5001");
        assert_eq!(IpfsApi::new("http://ipfs.internal", Duration::from_secs(1)).unwrap().authority, "ipfs.internal:80");
        for bad in ["https://127.0.0.1:5001", "127.0.0.1:5001", "http://127.0.0.1:5001/api/v0", "/ip4/127.0.0.1/tcp/5001"] {
            assert!(IpfsApi::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }
}
