//! Assembles the facade from a validated configuration: opens the cache, installs the demo
//! image, builds the registry and starts the executors; and, when serving from a config
//! file, reloads the static layers when that file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{Config, Overrides};
use crate::ipfs::IpfsGateway;
use crate::redis_client::{RedisClient, RedisError};
use crate::registry::{demo, Registry, Shared};
use crate::runtime::{RuntimeError, Server};
use crate::store::{CacheDir, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// How often the config file is looked at for changes.
const CONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cache directory: {0}")]
    Cache(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Open(#[from] crate::registry::OpenError),
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// Starts a server for `config`; it runs until stopped through `Server::stopper`.
///
/// # Errors
/// The cache cannot be opened or written, the registry cannot load what the config names,
/// or the runtime cannot start.
pub fn start(config: &Config) -> Result<Server, AppError> {
    let (_, registry) = assemble(config)?;
    launch(config, registry)
}

/// Like `start`, and re-reads `path` when it changes to apply new static layers.
///
/// # Errors
/// As `start`.
pub fn start_watching(config: &Config, path: &Path, overrides: &Overrides) -> Result<Server, AppError> {
    let (cache, registry) = assemble(config)?;
    let server = launch(config, Arc::clone(&registry))?;
    let (path, overrides, layers) = (path.to_owned(), overrides.clone(), config.registry.static_layers.clone());
    let spawned = std::thread::Builder::new().name("rf-config".into()).spawn(move || watch(path, overrides, layers, cache, registry));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the config file; static layers will not reload");
    }
    Ok(server)
}

fn assemble(config: &Config) -> Result<(Arc<CacheDir>, Arc<Registry>), AppError> {
    let cache = Arc::new(CacheDir::open(&config.cache_dir)?);
    if config.demo_image {
        let digest = demo::install(&cache, &config.registry.platform)?;
        tracing::debug!(%digest, "demo image `{}:latest` ready", demo::DEMO_REPOSITORY);
    }
    let upstream = Upstream::new(config.upstream.clone())?;
    let redis = config.redis.as_ref().map(RedisClient::start).transpose()?;
    let ipfs = match (&config.ipfs_gateway, &redis) {
        (Some(gateway), Some(redis)) => Some(IpfsGateway::new(gateway, redis.clone())),
        _ => None,
    };
    let registry = Arc::new(Registry::open(Arc::clone(&cache), config.registry.clone(), upstream, Shared { redis, ipfs })?);
    Ok((cache, registry))
}

fn launch(config: &Config, registry: Arc<Registry>) -> Result<Server, AppError> {
    let server = Server::start(config.runtime.clone(), registry)?;
    tracing::info!(
        listen = %server.local_addr(),
        admin = %server.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        cache_dir = %config.cache_dir.display(),
        "registry-facade serving"
    );
    Ok(server)
}

/// Polls the config file; on a change, applies its static layers (the only key that reloads).
fn watch(path: PathBuf, overrides: Overrides, mut layers: Vec<crate::registry::static_layers::StaticLayerConfig>, cache: Arc<CacheDir>, registry: Arc<Registry>) {
    let stamp = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    let mut seen = stamp(&path);
    loop {
        std::thread::sleep(CONFIG_CHECK_INTERVAL);
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let config = match Config::load(Some(&path), &overrides) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "config file changed but is invalid; keeping the running configuration");
                continue;
            }
        };
        if config.registry.static_layers == layers {
            tracing::warn!("config file changed; only staticLayers reload, other keys apply at the next restart");
            continue;
        }
        match registry.reload_static_layers(&cache, &config.registry.static_layers) {
            Ok(()) => layers = config.registry.static_layers,
            Err(e) => tracing::error!(error = %e, "cannot load the new static layers; keeping the previous ones"),
        }
    }
}
