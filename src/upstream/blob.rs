//! A blob download that survives broken connections: a body that stalls, is cut or reset goes on
//! after a backoff with `Range: bytes=<received>-` on a new connection (skipping what it has if
//! the range is ignored). The reader only sees a pause.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::connection::UpstreamBody;
use super::endpoint::url_host;
use super::error::{AttemptError, UpstreamError};
use super::{content_length, header_str, RemoteRepository, Upstream};
use crate::metrics::{self, RetryKind};

/// Where a blob is downloaded from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlobLocation {
    /// The blob endpoint of a registry repository (with its auth flows).
    Registry { repo: RemoteRepository, digest: String },
    /// A plain URL (a content layer in object storage): no registry credentials are sent.
    Url(String),
}

impl BlobLocation {
    /// The host (and non-default port) for error messages and the retry metric's label.
    fn host(&self) -> String {
        match self {
            BlobLocation::Registry { repo, .. } => repo.host.clone(),
            BlobLocation::Url(url) => url.parse::<http::Uri>().ok().and_then(|u| url_host(&u)).unwrap_or_default(),
        }
    }
}

/// A URL fit for logs and error messages: without user info and query, which is where
/// object-storage URLs carry their credentials (presigned signatures, tokens).
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else { return "<unparsable URL>".to_owned() };
    let origin = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => match authority.port() {
            Some(port) => format!("{scheme}://{}:{port}", authority.host()),
            None => format!("{scheme}://{}", authority.host()),
        },
        _ => String::new(),
    };
    let query = if uri.query().is_some() { "?…" } else { "" };
    format!("{origin}{}{query}", uri.path())
}

impl std::fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobLocation::Registry { repo, digest } => write!(f, "{repo}@{digest}"),
            BlobLocation::Url(url) => f.write_str(&redact_url(url)),
        }
    }
}

pub struct BlobDownload {
    upstream: Upstream,
    location: BlobLocation,
    received: u64,
    total: Option<u64>,
    /// The most bytes the blob may have (`limit_to`).
    max_bytes: Option<u64>,
    body: Option<UpstreamBody>,
    /// Bytes of the current body to drop: a server that ignored our `Range` resends them.
    skip: u64,
    /// Where a download of part of the blob stops (exclusive); `None`: at the blob's end.
    end: Option<u64>,
    /// Breaks in a row without a byte of progress.
    failures: u32,
}

impl BlobDownload {
    pub(super) async fn start(upstream: Upstream, location: BlobLocation, offset: u64) -> Result<BlobDownload, UpstreamError> {
        BlobDownload::start_range(upstream, location, offset, None).await
    }

    /// A download of the blob's bytes from `offset` up to `end` (exclusive; `None`: its end),
    /// asked for as exactly that range and resumed the same way.
    pub(super) async fn start_range(upstream: Upstream, location: BlobLocation, offset: u64, end: Option<u64>) -> Result<BlobDownload, UpstreamError> {
        let mut download = BlobDownload { upstream, location, received: offset, total: None, max_bytes: None, body: None, skip: 0, end, failures: 0 };
        download.open().await?;
        Ok(download)
    }

    /// The blob's whole size (not only from the offset), if the upstream said it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Accepts at most `max_bytes` in all: the first byte beyond (or a resumed response that
    /// announces more) fails the download. Without it, a body whose length the upstream does
    /// not announce is bounded by nothing, and an endless one is only caught by the digest
    /// check after the last byte, which never comes.
    pub fn limit_to(&mut self, max_bytes: u64) {
        self.max_bytes = Some(max_bytes);
    }

    /// The next chunk; `Ok(None)` once all bytes arrived.
    ///
    /// # Errors
    /// The body kept breaking without progress for all the policy's attempts, the upstream
    /// sent more than it announced or than `limit_to` allows, or a resumed response does not
    /// fit the first one.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let stall = self.upstream.settings().read_timeout;
        loop {
            if self.total.is_some_and(|total| self.received >= total) || self.end.is_some_and(|end| self.received >= end) {
                return Ok(None);
            }
            let Some(body) = self.body.as_mut() else {
                self.open().await?;
                continue;
            };
            match body.chunk(stall).await {
                Ok(Some(chunk)) => {
                    let mut chunk = self.drop_skipped(chunk);
                    if chunk.is_empty() {
                        continue;
                    }
                    // A server that ignored the range's end sends more than was asked.
                    if let Some(end) = self.end {
                        chunk.truncate(usize::try_from(end.saturating_sub(self.received)).unwrap_or(usize::MAX));
                    }
                    self.received += chunk.len() as u64;
                    if self.total.is_some_and(|total| self.received > total) {
                        return Err(self.invalid("more bytes than the announced length"));
                    }
                    if let Some(max_bytes) = self.max_bytes.filter(|max| self.received > *max) {
                        return Err(self.invalid(&format!("more than the {max_bytes} bytes it may have")));
                    }
                    self.failures = 0;
                    return Ok(Some(chunk));
                }
                Ok(None) if self.total.is_none() => return Ok(None),
                Ok(None) => self.broken(AttemptError::Broken("body ended early".into())).await?,
                Err(error) => self.broken(error).await?,
            }
        }
    }

    fn drop_skipped(&mut self, mut chunk: Bytes) -> Bytes {
        let dropped = self.skip.min(chunk.len() as u64);
        self.skip -= dropped;
        chunk.split_off(dropped as usize)
    }

    fn invalid(&self, reason: &str) -> UpstreamError {
        UpstreamError::Invalid { host: self.location.host(), reason: format!("blob {}: {reason}", self.location) }
    }

    /// Forgets the broken body and pauses before the next `open`, or gives up.
    async fn broken(&mut self, error: AttemptError) -> Result<(), UpstreamError> {
        self.body = None;
        self.failures += 1;
        let policy = self.upstream.settings().retry;
        tracing::debug!(location = %self.location, received = self.received, error = ?error, "upstream blob body broke; resuming");
        if self.failures >= policy.attempts {
            return Err(error.into_final(&self.location.host(), self.failures));
        }
        metrics::upstream_retry(&self.location.host(), RetryKind::Resume);
        glommio::timer::sleep(policy.delay(self.failures, None, fastrand::f64())).await;
        Ok(())
    }

    /// Requests the blob from `received` on (with retries) and checks the answer fits.
    async fn open(&mut self) -> Result<(), UpstreamError> {
        let from = self.received;
        let mut headers = HeaderMap::new();
        let range = match self.end {
            Some(end) => Some(format!("bytes={from}-{}", end.saturating_sub(1))),
            None if from > 0 => Some(format!("bytes={from}-")),
            None => None,
        };
        if let Some(range) = range {
            headers.insert(header::RANGE, HeaderValue::try_from(range).map_err(|_| self.invalid("range"))?);
        }
        let (upstream, location) = (self.upstream.clone(), self.location.clone());
        let exchange = upstream
            .with_retries(&location.host(), || async {
                match &location {
                    BlobLocation::Registry { repo, digest } => {
                        let path = format!("/v2/{}/blobs/{digest}", repo.path);
                        upstream.registry_exchange(repo, &Method::GET, &path, headers.clone()).await
                    }
                    BlobLocation::Url(url) => upstream.url_exchange(url, &Method::GET, headers.clone()).await,
                }
            })
            .await?;
        let total = match exchange.status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = header_str(&exchange.headers, header::CONTENT_RANGE)
                    .as_deref()
                    .and_then(parse_content_range)
                    .ok_or_else(|| self.invalid("206 without a usable Content-Range"))?;
                if start != from {
                    return Err(self.invalid(&format!("asked for bytes from {from}, got from {start}")));
                }
                self.skip = 0;
                total
            }
            _ => {
                // The whole blob (first request, or a server that ignores Range): drop what we
                // already have.
                self.skip = from;
                content_length(&exchange.headers)
            }
        };
        if let (Some(max_bytes), Some(now)) = (self.max_bytes, total) {
            if now > max_bytes {
                return Err(self.invalid(&format!("announces {now} bytes, more than the {max_bytes} it may have")));
            }
        }
        match (self.total, total) {
            (Some(known), Some(now)) if known != now => return Err(self.invalid(&format!("size changed from {known} to {now}"))),
            (None, _) => self.total = total,
            _ => {}
        }
        self.body = Some(exchange.body);
        Ok(())
    }
}

/// `bytes <start>-<end>/<total>` → (start, total); total `*` → None.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        let signed = "https://user:pw@bucket.s3.example:8443/layers/abc?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA";
        assert_eq!(redact_url(signed), "https://bucket.s3.example:8443/layers/abc?…");
        let location = BlobLocation::Url(signed.into());
        assert!(!location.to_string().contains("deadbeef") && !location.to_string().contains("pw"), "{location}");
        assert_eq!(redact_url("http://gw.example/ipfs/bafy"), "http://gw.example/ipfs/bafy");
        assert_eq!(redact_url("not a url"), "<unparsable URL>");
    }

    #[test]
    fn blob_hosts_carry_no_user_info() {
        let signed = BlobLocation::Url("https://user:pw@bucket.s3.example:8443/layers/abc?X-Amz-Signature=deadbeef".into());
        assert_eq!(signed.host(), "bucket.s3.example:8443");
        let default_port = BlobLocation::Url("https://user:pw@bucket.s3.example:443/layers/abc".into());
        assert_eq!(default_port.host(), "bucket.s3.example");
        let repo = RemoteRepository::new("registry.example:5000", "team/app");
        assert_eq!(BlobLocation::Registry { repo, digest: "sha256:ab".into() }.host(), "registry.example:5000");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
