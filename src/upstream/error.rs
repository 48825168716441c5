//! Failures talking to an upstream registry: per attempt (classified for the retry decision)
//! and final (classified for the client's status). Messages never carry credentials.

use std::time::Duration;

/// What went wrong in one attempt.
#[derive(Debug, Clone)]
pub(crate) enum AttemptError {
    Connect(String),
    Timeout(&'static str),
    Broken(String),
    Status { status: u16, retry_after: Option<Duration>, code: Option<String> },
    Invalid(String),
    Unauthorized,
    Denied,
}

impl AttemptError {
    /// Whether another attempt may succeed: network trouble, timeouts, 429 and 5xx (but 501).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            AttemptError::Connect(_) | AttemptError::Timeout(_) | AttemptError::Broken(_) => true,
            AttemptError::Status { status, .. } => *status == 429 || (*status >= 500 && *status != 501),
            AttemptError::Invalid(_) | AttemptError::Unauthorized | AttemptError::Denied => false,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The final error once attempts are over (or the error is permanent).
    pub(crate) fn into_final(self, host: &str, attempts: u32) -> UpstreamError {
        let host = host.to_owned();
        match self {
            AttemptError::Connect(cause) | AttemptError::Broken(cause) => UpstreamError::Unreachable { host, attempts, cause },
            AttemptError::Timeout(what) => UpstreamError::TimedOut { host, attempts, what },
            AttemptError::Status { status: 404, code, .. } => UpstreamError::NotFound { host, code },
            AttemptError::Status { status: 429, .. } => UpstreamError::TooManyRequests { host, attempts },
            AttemptError::Status { status, .. } => UpstreamError::BadStatus { host, status, attempts },
            AttemptError::Invalid(reason) => UpstreamError::Invalid { host, reason },
            AttemptError::Unauthorized => UpstreamError::Unauthorized { host },
            AttemptError::Denied => UpstreamError::Denied { host },
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{host} does not have it{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    NotFound { host: String, code: Option<String> },
    #[error("{host} refused our credentials (or we have none for it)")]
    Unauthorized { host: String },
    #[error("{host} denied access")]
    Denied { host: String },
    #[error("{host} is unreachable after {attempts} attempts: {cause}")]
    Unreachable { host: String, attempts: u32, cause: String },
    #[error("{host} timed out ({what}) after {attempts} attempts")]
    TimedOut { host: String, attempts: u32, what: &'static str },
    #[error("{host} answered HTTP {status} after {attempts} attempts")]
    BadStatus { host: String, status: u16, attempts: u32 },
    #[error("{host} keeps answering 429 Too Many Requests after {attempts} attempts")]
    TooManyRequests { host: String, attempts: u32 },
    #[error("{host} sent an invalid response: {reason}")]
    Invalid { host: String, reason: String },
    /// A whole tag list was asked for (no `n`) and it takes more pages than we follow.
    #[error("{host} lists more than {pages} pages of tags: ask for them a page at a time with `n`")]
    TooManyTagPages { host: String, pages: usize },
    #[error("upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// Whether upstream could not be asked (unreachable, timed out, overloaded, failing) rather
    /// than answered: the line `AttemptError::is_transient` draws for retries, on the final
    /// error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::TimedOut { .. } | UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::BadStatus { status, .. } => *status >= 500 && *status != 501,
            UpstreamError::NotFound { .. }
            | UpstreamError::Unauthorized { .. }
            | UpstreamError::Denied { .. }
            | UpstreamError::Invalid { .. }
            | UpstreamError::TooManyTagPages { .. }
            | UpstreamError::Config(_) => false,
        }
    }

    /// The upstream's own OCI error code for a 404 (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, …).
    pub fn upstream_code(&self) -> Option<&str> {
        match self {
            UpstreamError::NotFound { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_upstream_that_could_not_answer_is_unavailable() {
        let host = || "r.example".to_owned();
        let unavailable = [
            UpstreamError::Unreachable { host: host(), attempts: 3, cause: "refused".into() },
            UpstreamError::TimedOut { host: host(), attempts: 3, what: "response" },
            UpstreamError::TooManyRequests { host: host(), attempts: 3 },
            UpstreamError::BadStatus { host: host(), status: 503, attempts: 3 },
        ];
        let answered = [
            UpstreamError::NotFound { host: host(), code: Some("MANIFEST_UNKNOWN".into()) },
            UpstreamError::Unauthorized { host: host() },
            UpstreamError::Denied { host: host() },
            UpstreamError::BadStatus { host: host(), status: 501, attempts: 1 },
            UpstreamError::BadStatus { host: host(), status: 400, attempts: 1 },
            UpstreamError::Invalid { host: host(), reason: "not JSON".into() },
        ];
        assert!(unavailable.iter().all(UpstreamError::is_unavailable));
        assert!(!answered.iter().any(UpstreamError::is_unavailable));
    }
}
