//! Assembles the facade from a validated configuration: opens the cache, installs the demo
//! image, builds the registry and starts the executors.

use std::sync::Arc;

use crate::config::Config;
use crate::registry::{demo, Registry};
use crate::runtime::{RuntimeError, Server};
use crate::store::{CacheDir, StoreError};
use crate::upstream::{Upstream, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cache directory: {0}")]
    Cache(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// Starts a server for `config`; it runs until stopped through `Server::stopper`.
///
/// # Errors
/// The cache cannot be opened or written, or the runtime cannot start.
pub fn start(config: &Config) -> Result<Server, AppError> {
    let cache = Arc::new(CacheDir::open(&config.cache_dir)?);
    if config.demo_image {
        let digest = demo::install(&cache, &config.registry.platform)?;
        tracing::debug!(%digest, "demo image `{}:latest` ready", demo::DEMO_REPOSITORY);
    }
    let upstream = Upstream::new(config.upstream.clone())?;
    let registry = Arc::new(Registry::open(cache, config.registry.clone(), upstream)?);
    let server = Server::start(config.runtime.clone(), registry)?;
    tracing::info!(
        listen = %server.local_addr(),
        cache_dir = %config.cache_dir.display(),
        "registry-facade serving"
    );
    Ok(server)
}
