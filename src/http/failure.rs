//! Everything a request can fail with, and the one place where a failure becomes a wire
//! error (code, status, message) and where its cause is logged, once, at the level its class
//! deserves.

use super::auth::Refused;
use super::connection::Refusal;
use crate::oci::route::RouteError;
use crate::oci::ErrorCode;
use crate::registry::{FailureClass, FillError, RegistryError};
use crate::upstream::UpstreamError;

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
    fn class(&self) -> FailureClass {
        match self {
            Failure::Registry(e) => e.class(),
            Failure::AnswerTooSlow(_) => FailureClass::Upstream,
            _ => FailureClass::Client,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            Failure::Route(RouteError::NotFound) => ErrorCode::NotFound,
            Failure::Route(RouteError::NameInvalid(_)) => ErrorCode::NameInvalid,
            Failure::Route(RouteError::DigestInvalid(_)) => ErrorCode::DigestInvalid,
            Failure::Route(RouteError::TagInvalid(_)) => ErrorCode::TagInvalid,
            Failure::Route(RouteError::PaginationNumberInvalid) => ErrorCode::PaginationNumberInvalid,
            Failure::MethodNotAllowed(_) => ErrorCode::Unsupported,
            Failure::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            Failure::AmbiguousFraming => ErrorCode::FramingInvalid,
            Failure::Unauthenticated { .. } => ErrorCode::Unauthorized,
            Failure::Overloaded(Refusal::ServerFull) => ErrorCode::Unavailable,
            Failure::Overloaded(Refusal::ClientFull) => ErrorCode::TooManyRequests,
            Failure::Registry(e) => registry_code(e),
            Failure::AnswerTooSlow(_) => ErrorCode::UpstreamTimeout,
            Failure::CredentialChecksBusy => ErrorCode::TooManyRequests,
        }
    }

    /// Logs the cause and returns what the client is told.
    pub fn to_wire(&self, method: &http::Method, path: &str) -> WireError {
        let code = self.code();
        match self.class() {
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

fn registry_code(error: &RegistryError) -> ErrorCode {
    match error {
        RegistryError::NameUnknown(_) | RegistryError::UpstreamNameUnknown(_) => ErrorCode::NameUnknown,
        RegistryError::ManifestUnknown { .. } | RegistryError::NotAcceptable(_) | RegistryError::UpstreamManifestUnknown { .. } => ErrorCode::ManifestUnknown,
        RegistryError::BlobUnknown { .. } => ErrorCode::BlobUnknown,
        RegistryError::Denied(_) => ErrorCode::Denied,
        RegistryError::SharedState(_) => ErrorCode::Unavailable,
        RegistryError::Upstream { error, .. } | RegistryError::Fill(FillError::Upstream(error)) => upstream_code(error),
        RegistryError::Fill(FillError::Corrupt(_)) | RegistryError::NotAnImage { .. } | RegistryError::Compose(_) => ErrorCode::UpstreamInvalid,
        // An image a spec names could not be had: the client cannot fix our credentials, so
        // upstream refusals of them become 502; everything else keeps its code.
        RegistryError::Input { error, .. } => match registry_code(error) {
            ErrorCode::Unauthorized | ErrorCode::Denied => ErrorCode::UpstreamInvalid,
            other => other,
        },
        RegistryError::Composition(error) => registry_code(error),
        RegistryError::Fill(FillError::Cache(_))
        | RegistryError::MissingContent(_)
        | RegistryError::Store(_)
        | RegistryError::CorruptManifest { .. }
        | RegistryError::InvalidStoredSpec(_) => {
            ErrorCode::Unknown
        }
    }
}

/// The client's status for an upstream failure: its refusals pass through (401, 403, 404,
/// 429); an outage is 503, a timeout 504, anything unusable 502.
fn upstream_code(error: &UpstreamError) -> ErrorCode {
    match error {
        UpstreamError::NotFound { .. } => ErrorCode::BlobUnknown,
        UpstreamError::Unauthorized { .. } => ErrorCode::Unauthorized,
        UpstreamError::Denied { .. } => ErrorCode::Denied,
        UpstreamError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
        UpstreamError::Unreachable { .. } => ErrorCode::Unavailable,
        UpstreamError::TimedOut { .. } => ErrorCode::UpstreamTimeout,
        UpstreamError::BadStatus { .. } | UpstreamError::Invalid { .. } => ErrorCode::UpstreamInvalid,
        // As distribution answers an `n` above its limit: the client asked for more than we list.
        UpstreamError::TooManyTagPages { .. } => ErrorCode::PaginationNumberInvalid,
        UpstreamError::Config(_) => ErrorCode::Unknown,
    }
}
