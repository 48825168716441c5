//! What a server says it sent during one target's storm: the sum of a Prometheus counter on
//! its metrics page (`metrics:URL`) or the byte column of its access log in combined format
//! (`log:PATH`), read before and after the storm. The client cannot count a lazy pull's bytes
//! itself: the snapshotter, not pullstorm, fetches them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{Client, Gauge, Method};
use crate::url::Url;

/// The facade's counter of response body bytes.
pub const SERVED_COUNTER: &str = "registry_facade_served_bytes_total";
/// The facade's counter of bytes its fills downloaded (from upstream or IPFS).
pub const FILLED_COUNTER: &str = "registry_facade_fill_bytes_total";

/// How long an access log must stay the same size before its last lines count as written: a
/// registry logs a request when its handler returns, just after the client got the body.
const LOG_SETTLE: Duration = Duration::from_millis(200);

/// Where one figure is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteSource {
    Metrics { url: String, counter: &'static str },
    AccessLog(PathBuf),
}

/// A reading taken before the storm.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    Counter(f64),
    /// How long the log was: lines after this offset belong to the storm.
    Offset(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum BytesError {
    #[error("`{0}`: expected metrics:URL or log:PATH")]
    Syntax(String),
    #[error("{url}: {reason}")]
    Metrics { url: String, reason: String },
    #[error("{}: {source}", path.display())]
    Log { path: PathBuf, source: std::io::Error },
}

impl ByteSource {
    /// Parses `metrics:URL` (summing `counter`) or `log:PATH`.
    ///
    /// # Errors
    /// Neither form.
    pub fn parse(text: &str, counter: &'static str) -> Result<ByteSource, BytesError> {
        match text.split_once(':') {
            Some(("metrics", url)) if !url.is_empty() => Ok(ByteSource::Metrics { url: url.to_owned(), counter }),
            Some(("log", path)) if !path.is_empty() => Ok(ByteSource::AccessLog(PathBuf::from(path))),
            _ => Err(BytesError::Syntax(text.to_owned())),
        }
    }

    /// # Errors
    /// The metrics page or the log cannot be read.
    pub fn mark(&self) -> Result<Mark, BytesError> {
        match self {
            ByteSource::Metrics { url, counter } => Ok(Mark::Counter(scrape(url, counter)?)),
            ByteSource::AccessLog(path) => {
                let len = std::fs::metadata(path).map_err(|source| BytesError::Log { path: path.clone(), source })?.len();
                Ok(Mark::Offset(len))
            }
        }
    }

    /// Bytes sent since `mark`.
    ///
    /// # Errors
    /// The metrics page or the log cannot be read.
    pub fn since(&self, mark: Mark) -> Result<u64, BytesError> {
        match (self, mark) {
            (ByteSource::Metrics { url, counter }, Mark::Counter(before)) => Ok((scrape(url, counter)? - before).max(0.0) as u64),
            (ByteSource::AccessLog(path), Mark::Offset(offset)) => {
                let text = settled_log(path)?;
                Ok(access_log_bytes(text.get(offset as usize..).unwrap_or_default()))
            }
            (ByteSource::Metrics { url, .. }, Mark::Offset(_)) => Err(BytesError::Metrics { url: url.clone(), reason: "marked as a log".into() }),
            (ByteSource::AccessLog(path), Mark::Counter(_)) => {
                Err(BytesError::Log { path: path.clone(), source: std::io::Error::other("marked as a metrics page") })
            }
        }
    }
}

fn scrape(url: &str, counter: &str) -> Result<f64, BytesError> {
    let failed = |reason: String| BytesError::Metrics { url: url.to_owned(), reason };
    let parsed: Url = url.parse().map_err(|e| failed(format!("{e}")))?;
    let client = Client::new(Duration::from_secs(10), Arc::new(Gauge::default()));
    let mut body = Vec::new();
    client.fetch(Method::Get, &parsed, &[], &mut |piece| {
        body.extend_from_slice(piece);
        true
    })
    .map_err(|e| failed(e.to_string()))?;
    Ok(counter_sum(&String::from_utf8_lossy(&body), counter))
}

/// The sum of every sample of `counter` in a Prometheus text exposition.
pub fn counter_sum(exposition: &str, counter: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.strip_prefix(counter).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()))
        .sum()
}

/// The log once its size has held still for `LOG_SETTLE`.
fn settled_log(path: &PathBuf) -> Result<String, BytesError> {
    let read = || std::fs::read(path).map_err(|source| BytesError::Log { path: path.clone(), source });
    let mut last = read()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(LOG_SETTLE);
        let now = read()?;
        if now.len() == last.len() || Instant::now() > deadline {
            return Ok(String::from_utf8_lossy(&now).into_owned());
        }
        last = now;
    }
}

/// The sum of the byte column of combined-format lines (`… "GET /x HTTP/1.1" 206 48411 …`);
/// other lines (a registry's own log lines) count nothing.
pub fn access_log_bytes(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let (_, after_request) = line.split_once("\" ")?;
            let mut fields = after_request.split(' ');
            let status = fields.next()?;
            let bytes = fields.next()?;
            (status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
            bytes.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(ByteSource::parse("metrics:http://127.0.0.1:9/metrics", SERVED_COUNTER).unwrap(), ByteSource::Metrics { url: "http://127.0.0.1:9/metrics".into(), counter: SERVED_COUNTER });
        assert_eq!(ByteSource::parse("log:/tmp/reg.log", SERVED_COUNTER).unwrap(), ByteSource::AccessLog("/tmp/reg.log".into()));
        for bad in ["metrics:", "log:", "file:/x", "nothing"] {
            assert!(ByteSource::parse(bad, SERVED_COUNTER).is_err(), "{bad}");
        }
    }

    #[test]
    fn counters_are_summed_across_labels() {
        let text = "# TYPE registry_facade_served_bytes counter\nregistry_facade_served_bytes_total{source=\"cache\",core=\"0\"} 100\nregistry_facade_served_bytes_total{source=\"upstream\",core=\"1\"} 23.0\nregistry_facade_served_bytes_total_other 7\nregistry_facade_fill_bytes_total{source=\"upstream\"} 5\n";
        assert_eq!(counter_sum(text, SERVED_COUNTER), 123.0);
        assert_eq!(counter_sum(text, FILLED_COUNTER), 5.0);
        assert_eq!(counter_sum("", SERVED_COUNTER), 0.0);
    }

    #[test]
    fn access_log_bytes_count_requests_only() {
        let log = concat!(
            "127.0.0.1 - - [07/Dec/2026:01:00:00 +0000] \"GET /v2/a/blobs/sha256:00 HTTP/1.1\" 206 48411 \"\" \"containerd/1.6\"\n",
            "time=\"2026-12-07T01:00:00Z\" level=info msg=\"response completed\" http.request.method=GET\n",
            "127.0.0.1 - - [07/Dec/2026:01:00:00 +0000] \"HEAD /v2/a/blobs/sha256:00 HTTP/1.1\" 200 0 \"\" \"containerd/1.6\"\n",
            "127.0.0.1 - - [07/Dec/2026:01:00:01 +0000] \"GET /v2/a/manifests/latest HTTP/1.1\" 200 929 \"\" \"containerd/1.6\"\n",
        );
        assert_eq!(access_log_bytes(log), 48411 + 929);
    }
}
