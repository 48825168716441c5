//! What can go wrong while answering a registry request, and, decided here once for every
//! failure, whose fault it is and which OCI error code the client is told (`verdict`).

use std::sync::Arc;

use super::blobserve::FileError;
use super::compose::ComposeError;
use super::fill::FillError;
use crate::oci::{Digest, ErrorCode, RepositoryName};
use crate::spec::SpecError;
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Whose fault a failure is: decides 4xx vs 5xx, whether a retry can help and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The request asks for something that is not there or not allowed; its message is shown.
    Client,
    /// An upstream registry, IPFS or the shared state failed us; its message is shown.
    Upstream,
    /// A fault of this server; the cause is logged, not shown.
    Internal,
}

/// What a failure means for the client: its class and its wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub class: FailureClass,
    pub code: ErrorCode,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("repository `{0}` is not known")]
    NameUnknown(RepositoryName),
    #[error("manifest `{reference}` is not known in `{name}`")]
    ManifestUnknown { name: RepositoryName, reference: String },
    #[error("{0}")]
    NotAcceptable(String),
    #[error("blob {digest} is not known in `{name}`")]
    BlobUnknown { name: RepositoryName, digest: Digest },
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    SharedState(SpecError),
    #[error("{0}")]
    InvalidSpec(SpecError),
    #[error("{0}")]
    InvalidStoredSpec(SpecError),
    #[error("repository {0} does not exist upstream")]
    UpstreamNameUnknown(String),
    #[error("manifest `{reference}` does not exist in {remote}")]
    UpstreamManifestUnknown { remote: String, reference: String },
    #[error("{remote}: {error}")]
    Upstream { remote: String, error: UpstreamError },
    #[error("fetching from upstream: {0}")]
    Fill(FillError),
    #[error("{reference}: {error}")]
    Input { reference: String, error: Arc<RegistryError> },
    #[error("{reference} cannot be used: {reason}")]
    NotAnImage { reference: String, reason: String },
    #[error("{0}")]
    Composition(Arc<RegistryError>),
    #[error("cannot compose: {0}")]
    Compose(#[from] ComposeError),
    #[error("the cache lost {0}, which a repository record refers to")]
    MissingContent(Digest),
    #[error("cache: {0}")]
    Store(Arc<StoreError>),
    #[error("stored manifest {digest} cannot be used: {reason}")]
    CorruptManifest { digest: Digest, reason: String },
    /// A `last` the client sent that no page of ours named.
    #[error("{0}")]
    PageTokenInvalid(String),
    #[error("blobserve is not configured")]
    BlobserveOff,
    #[error("no file `{path}` in the image")]
    FileUnknown { path: String },
    #[error("image {0} is not prepared yet (X-BlobServe-ReadOnly)")]
    NotPrepared(String),
    /// What an image holds (or its size) keeps blobserve from serving it.
    #[error("image {image} cannot be served: {reason}")]
    Unservable { image: String, reason: String },
    #[error("{0}")]
    BlobSpace(Arc<FileError>),
    #[error("{image}: {error}")]
    Prepare { image: String, error: Arc<RegistryError> },
    #[error("the preparation of the image was abandoned")]
    PrepareAbandoned,
    #[error("blob {0} could not be kept in the cache (no room) to unpack it")]
    BlobNotKept(Digest),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> RegistryError {
        RegistryError::Store(Arc::new(error))
    }
}

impl RegistryError {
    /// The one table from failures to what the client sees.
    pub fn verdict(&self) -> Verdict {
        use ErrorCode as Code;
        use FailureClass::{Client, Internal, Upstream};
        let (class, code) = match self {
            RegistryError::NameUnknown(_) | RegistryError::UpstreamNameUnknown(_) => (Client, Code::NameUnknown),
            RegistryError::ManifestUnknown { .. } | RegistryError::NotAcceptable(_) | RegistryError::UpstreamManifestUnknown { .. } => (Client, Code::ManifestUnknown),
            RegistryError::BlobUnknown { .. } => (Client, Code::BlobUnknown),
            RegistryError::Denied(_) => (Client, Code::Denied),
            RegistryError::PageTokenInvalid(_) => (Client, Code::ParameterInvalid),
            RegistryError::InvalidSpec(_) => (Client, Code::ManifestInvalid),
            RegistryError::SharedState(_) => (Upstream, Code::Unavailable),
            RegistryError::Upstream { error, .. } | RegistryError::Fill(FillError::Upstream(error)) => return upstream_verdict(error),
            RegistryError::Fill(FillError::Corrupt(_)) | RegistryError::NotAnImage { .. } | RegistryError::Compose(_) => (Upstream, Code::UpstreamInvalid),
            // An image a spec names could not be had: the client cannot fix our credentials, so
            // upstream refusals of them become 502; everything else keeps its code.
            RegistryError::Input { error, .. } => {
                let inner = error.verdict();
                let code = match inner.code {
                    Code::Unauthorized | Code::Denied => Code::UpstreamInvalid,
                    other => other,
                };
                (inner.class, code)
            }
            RegistryError::Composition(error) | RegistryError::Prepare { error, .. } => return error.verdict(),
            // Blobserve answers in plain text: the code gives the status (404) and our message the rest.
            RegistryError::BlobserveOff | RegistryError::FileUnknown { .. } | RegistryError::NotPrepared(_) => (Client, Code::EndpointUnknown),
            RegistryError::Unservable { .. } => (Upstream, Code::UpstreamInvalid),
            RegistryError::BlobNotKept(_) => (Internal, Code::Unavailable),
            // A spec writer is trusted: a stored spec that does not validate is our problem.
            RegistryError::InvalidStoredSpec(_)
            | RegistryError::Fill(FillError::Cache(_) | FillError::Abandoned | FillError::Uncached(_))
            | RegistryError::MissingContent(_)
            | RegistryError::Store(_)
            | RegistryError::CorruptManifest { .. }
            | RegistryError::BlobSpace(_)
            | RegistryError::PrepareAbandoned => (Internal, Code::Unknown),
        };
        Verdict { class, code }
    }

    pub fn class(&self) -> FailureClass {
        self.verdict().class
    }

    pub fn code(&self) -> ErrorCode {
        self.verdict().code
    }
}

/// An upstream's refusals pass through (401, 403, 404, 429); an outage is 503, a timeout 504,
/// anything unusable 502; our own upstream configuration is an internal fault.
fn upstream_verdict(error: &UpstreamError) -> Verdict {
    use ErrorCode as Code;
    use FailureClass::{Client, Internal, Upstream};
    let (class, code) = match error {
        UpstreamError::NotFound { .. } => (Upstream, Code::BlobUnknown),
        UpstreamError::Unauthorized { .. } => (Upstream, Code::Unauthorized),
        UpstreamError::Denied { .. } => (Upstream, Code::Denied),
        UpstreamError::TooManyRequests { .. } => (Upstream, Code::TooManyRequests),
        UpstreamError::Unreachable { .. } => (Upstream, Code::Unavailable),
        UpstreamError::TimedOut { .. } => (Upstream, Code::UpstreamTimeout),
        UpstreamError::BadStatus { .. } | UpstreamError::Invalid { .. } => (Upstream, Code::UpstreamInvalid),
        // Upstream answered fine; the client can have the list by paging with `n` (as
        // distribution answers an `n` above its limit).
        UpstreamError::TooManyTagPages { .. } => (Client, Code::ParameterInvalid),
        UpstreamError::Config(_) => (Internal, Code::Unknown),
    };
    Verdict { class, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> String {
        "registry.example".into()
    }

    #[test]
    fn class_and_code_come_from_one_table_and_agree() {
        let config = RegistryError::Upstream { remote: host(), error: UpstreamError::Config("no such CA file".into()) };
        assert_eq!(config.verdict(), Verdict { class: FailureClass::Internal, code: ErrorCode::Unknown }, "our own configuration is our fault");
        let pages = RegistryError::Upstream { remote: host(), error: UpstreamError::TooManyTagPages { host: host(), pages: 100 } };
        assert_eq!(pages.verdict(), Verdict { class: FailureClass::Client, code: ErrorCode::ParameterInvalid });
        let cache = RegistryError::Fill(FillError::Cache(Arc::new(StoreError::DigestMismatch { expected: Digest::sha256_of(b"a"), actual: Digest::sha256_of(b"b") })));
        assert_eq!(cache.class(), FailureClass::Internal, "a cache failure during a fill is ours, not upstream's");
    }

    #[test]
    fn an_input_image_refused_to_us_is_the_upstream_s_fault_for_the_client() {
        let refused = Arc::new(RegistryError::Upstream { remote: host(), error: UpstreamError::Unauthorized { host: host() } });
        let input = RegistryError::Input { reference: "registry.example/base:1".into(), error: refused };
        assert_eq!(input.verdict(), Verdict { class: FailureClass::Upstream, code: ErrorCode::UpstreamInvalid });
        let missing = Arc::new(RegistryError::UpstreamManifestUnknown { remote: host(), reference: "1".into() });
        let input = RegistryError::Input { reference: "registry.example/base:1".into(), error: missing };
        assert_eq!(input.verdict(), Verdict { class: FailureClass::Client, code: ErrorCode::ManifestUnknown });
    }
}
