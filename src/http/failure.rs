//! Everything a request can fail with, and the one place where a failure becomes a wire
//! error (code, status, message) and where its cause is logged, once, at the level its class
//! deserves.

use super::auth::Refused;
use super::connection::Refusal;
use crate::oci::route::RouteError;
use crate::oci::ErrorCode;
use crate::registry::{FailureClass, RegistryError, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("method {0} is not supported: this registry is read-only")]
    MethodNotAllowed(http::Method),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("range not satisfiable for {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("transfer-encoding other than a single chunked: the request's end is ambiguous")]
    AmbiguousFraming,
    #[error("{}", match .refused { Refused::NoCredentials | Refused::Busy => "authentication required", Refused::Invalid => "invalid credentials" })]
    Unauthenticated { refused: Refused, challenges: Vec<http::HeaderValue> },
    #[error("{}", match .0 { Refusal::ServerFull => "the server is at its connection limit; retry shortly", Refusal::ClientFull => "this client holds too many connections; retry shortly" })]
    Overloaded(Refusal),
    #[error("no answer within {} ms (idleTimeoutMs): an upstream or a shared-state source is too slow", .0.as_millis())]
    AnswerTooSlow(std::time::Duration),
    #[error("too many password checks are waiting on this server; retry shortly")]
    CredentialChecksBusy,
}

/// The error as it goes on the wire.
pub struct WireError {
    pub code: ErrorCode,
    /// `None`: the table's default text (used for internal errors, whose cause stays in logs).
    pub message: Option<String>,
}

impl Failure {
    /// Class and code of this failure: the registry's own verdict for its failures, and the
    /// HTTP layer's for the rest (all of them the client's doing but a slow answer).
    fn verdict(&self) -> Verdict {
        let client = |code| Verdict { class: FailureClass::Client, code };
        match self {
            Failure::Registry(e) => e.verdict(),
            Failure::AnswerTooSlow(_) => Verdict { class: FailureClass::Upstream, code: ErrorCode::UpstreamTimeout },
            Failure::Route(RouteError::NotFound) => client(ErrorCode::EndpointUnknown),
            Failure::Route(RouteError::UploadUnknown) => client(ErrorCode::UploadUnknown),
            Failure::Route(RouteError::NameInvalid(_)) => client(ErrorCode::NameInvalid),
            Failure::Route(RouteError::DigestInvalid(_)) => client(ErrorCode::DigestInvalid),
            // A reference that is neither a digest nor a tag names no manifest: the spec's
            // end-3 fails only with 404 ("If the manifest is not found in the repository, the
            // response code MUST be `404 Not Found`"), and the conformance suite asks for
            // `.INVALID_MANIFEST_NAME` expecting exactly that.
            Failure::Route(RouteError::TagInvalid(_)) => client(ErrorCode::ManifestUnknown),
            Failure::Route(RouteError::PaginationNumberInvalid) => client(ErrorCode::ParameterInvalid),
            Failure::MethodNotAllowed(_) => client(ErrorCode::Unsupported),
            Failure::RangeNotSatisfiable { .. } => client(ErrorCode::RangeNotSatisfiable),
            Failure::AmbiguousFraming => client(ErrorCode::FramingInvalid),
            Failure::Unauthenticated { .. } => client(ErrorCode::Unauthorized),
            Failure::Overloaded(Refusal::ServerFull) => client(ErrorCode::Unavailable),
            Failure::Overloaded(Refusal::ClientFull) | Failure::CredentialChecksBusy => client(ErrorCode::TooManyRequests),
        }
    }

    /// Logs the cause and returns what the client is told.
    pub fn to_wire(&self, method: &http::Method, path: &str) -> WireError {
        let Verdict { class, code } = self.verdict();
        match class {
            FailureClass::Client => {
                tracing::debug!(%method, path, error = %self, "request refused");
                WireError { code, message: Some(self.to_string()) }
            }
            FailureClass::Upstream => {
                tracing::warn!(%method, path, error = %self, "upstream failure");
                WireError { code, message: Some(self.to_string()) }
            }
            FailureClass::Internal => {
                tracing::error!(%method, path, error = %self, "internal error");
                WireError { code, message: None }
            }
        }
    }
}
