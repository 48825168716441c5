//! What can go wrong while answering a registry request, classified by whose fault it is.

use std::sync::Arc;

use super::compose::ComposeError;
use super::fill::FillError;
use crate::oci::{Digest, RepositoryName};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Whose fault a failure is: decides 4xx vs 5xx, whether a retry can help and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Client,
    Upstream,
    Internal,
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
    SharedState(String),
    #[error("{0}")]
    InvalidStoredSpec(String),
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
    Store(#[from] StoreError),
    #[error("stored manifest {digest} cannot be used: {reason}")]
    CorruptManifest { digest: Digest, reason: String },
}

impl RegistryError {
    pub fn class(&self) -> FailureClass {
        match self {
            // Upstream answered fine; the client can have the list by paging with `n`.
            RegistryError::Upstream { error: UpstreamError::TooManyTagPages { .. }, .. } => FailureClass::Client,
            RegistryError::NameUnknown(_)
            | RegistryError::ManifestUnknown { .. }
            | RegistryError::NotAcceptable(_)
            | RegistryError::BlobUnknown { .. }
            | RegistryError::Denied(_)
            | RegistryError::UpstreamNameUnknown(_)
            | RegistryError::UpstreamManifestUnknown { .. } => FailureClass::Client,
            RegistryError::Upstream { .. }
            | RegistryError::Fill(_)
            | RegistryError::NotAnImage { .. }
            | RegistryError::Compose(_)
            | RegistryError::SharedState(_) => FailureClass::Upstream,
            RegistryError::Input { error, .. } | RegistryError::Composition(error) => error.class(),
            RegistryError::Store(_)
            | RegistryError::MissingContent(_)
            | RegistryError::CorruptManifest { .. }
            | RegistryError::InvalidStoredSpec(_) => FailureClass::Internal,
        }
    }

    /// The upstream failure behind this error, if there is one.
    pub fn upstream_error(&self) -> Option<&UpstreamError> {
        match self {
            RegistryError::Upstream { error, .. } | RegistryError::Fill(FillError::Upstream(error)) => Some(error),
            RegistryError::Input { error, .. } | RegistryError::Composition(error) => error.upstream_error(),
            _ => None,
        }
    }
}
