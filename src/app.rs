//! Assembles the facade from a validated configuration: cache, demo image, registry, TLS,
//! credentials and metrics, handed with the clock to the executors (`Served`). A watcher thread
//! re-reads the TLS, credential and config files when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{Config, Overrides};
use crate::demo;
use crate::file_version::{file_version, FileVersion};
use crate::http::{CredentialStore, HttpSecurity, Served, TlsConfig};
use crate::ipfs::{Ipfs, IpfsError};
use crate::metrics::{Metrics, ReloadOutcome, ReloadedFile};
use crate::redis_client::{RedisClient, RedisError};
use crate::registry::{Registry, Shared};
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
    Ipfs(#[from] IpfsError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// A TLS or credentials file named by the config cannot be used (the message names the key).
    #[error("{0}")]
    Security(String),
}

/// Starts a server for `config`; it runs until stopped through `Server::stopper`. Every
/// time-based rule reads `clock` (`Clock::system()`, or a test's).
///
/// # Errors
/// The cache cannot be opened or written, the registry cannot load what the config names,
/// or the runtime cannot start.
pub fn start(config: &Config, clock: Clock) -> Result<Server, AppError> {
    let (_, registry) = open_registry(config, &clock)?;
    let security = load_security(config)?;
    let metrics = Metrics::new();
    let server = launch(config, registry, &security, Arc::clone(&metrics), clock)?;
    watch_files(security, None, metrics);
    Ok(server)
}

/// Like `start`, and re-reads `path` when it changes to apply new static layers.
///
/// # Errors
/// As `start`.
pub fn start_watching(config: &Config, path: &Path, overrides: &Overrides, clock: Clock) -> Result<Server, AppError> {
    let (cache, registry) = open_registry(config, &clock)?;
    let security = load_security(config)?;
    let metrics = Metrics::new();
    let server = launch(config, Arc::clone(&registry), &security, Arc::clone(&metrics), clock)?;
    let config_file = ConfigFile {
        seen: file_version(path),
        path: path.to_owned(),
        overrides: overrides.clone(),
        layers: config.registry.static_layers.clone(),
        cache,
        registry,
    };
    watch_files(security, Some(config_file), metrics);
    Ok(server)
}

/// The cache and the registry `config` describes, as a server would open them (also for
/// commands that work on the same cache: `prefetch`).
///
/// # Errors
/// As `start`, less the runtime.
pub fn open_registry(config: &Config, clock: &Clock) -> Result<(Arc<CacheDir>, Arc<Registry>), AppError> {
    let cache = Arc::new(CacheDir::open(&config.cache_dir)?);
    if config.demo_image {
        let digest = demo::install(&cache, &config.registry.platform)?;
        tracing::debug!(%digest, "demo image `{}:latest` ready", demo::DEMO_REPOSITORY);
    }
    let upstream = Upstream::new(config.upstream.clone(), clock.clone())?;
    let redis = config.redis.as_ref().map(RedisClient::start).transpose()?;
    // The configuration checked that IPFS comes with Redis.
    let ipfs = match (&config.ipfs, &redis) {
        (Some(settings), Some(redis)) => Some(Ipfs::new(settings.clone(), redis.clone())?),
        _ => None,
    };
    let registry = Arc::new(Registry::open(Arc::clone(&cache), config.registry.clone(), upstream, Shared { redis, ipfs }, clock.clone())?);
    Ok((cache, registry))
}

/// The files behind TLS and authentication, which may change while the server runs.
struct Security {
    tls: Option<Arc<TlsConfig>>,
    credentials: Option<Arc<CredentialStore>>,
    http: HttpSecurity,
}

fn load_security(config: &Config) -> Result<Security, AppError> {
    let tls = config.tls.as_ref().map(|t| t.load()).transpose().map_err(AppError::Security)?;
    let credentials = config.auth.as_ref().map(|a| a.load()).transpose().map_err(AppError::Security)?;
    let http = HttpSecurity { tls: tls.clone(), auth: config.auth.clone().zip(credentials.clone()) };
    Ok(Security { tls, credentials, http })
}

/// One thread looks at every file that reloads, every few seconds: the TLS certificate and
/// the client credentials (a change that cannot be used is logged and the previous files stay
/// in force), and the config file's static layers. Each change read is counted by outcome.
fn watch_files(security: Security, mut config_file: Option<ConfigFile>, metrics: Arc<Metrics>) {
    if security.tls.is_none() && security.credentials.is_none() && config_file.is_none() {
        return;
    }
    let count = move |file, applied: Option<bool>| {
        if let Some(applied) = applied {
            metrics.file_reloaded(file, if applied { ReloadOutcome::Applied } else { ReloadOutcome::Refused });
        }
    };
    let spawned = std::thread::Builder::new().name("rf-reload".into()).spawn(move || loop {
        std::thread::sleep(CONFIG_CHECK_INTERVAL);
        if let Some(tls) = &security.tls {
            count(ReloadedFile::Tls, tls.reload_if_changed());
        }
        if let Some(credentials) = &security.credentials {
            count(ReloadedFile::Credentials, credentials.reload_if_changed());
        }
        if let Some(config_file) = &mut config_file {
            count(ReloadedFile::Config, config_file.reload_if_changed());
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the TLS, credential and config files; they will not reload");
    }
}

fn launch(config: &Config, registry: Arc<Registry>, security: &Security, metrics: Arc<Metrics>, clock: Clock) -> Result<Server, AppError> {
    let served = Served { registry, metrics, clock, prefetch_at_start: config.prefetch.clone() };
    let server = Server::start(config.runtime.clone(), served, security.http.clone())?;
    tracing::info!(
        listen = %server.local_addr(),
        tls = config.tls.is_some(),
        auth = config.auth.is_some(),
        admin = %server.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        blobserve = %server.blobserve_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        cache_dir = %config.cache_dir.display(),
        "registry-facade serving"
    );
    Ok(server)
}

/// The config file the server was started from, and the part of it that reloads.
struct ConfigFile {
    path: PathBuf,
    seen: FileVersion,
    overrides: Overrides,
    layers: Vec<crate::registry::static_layers::StaticLayerConfig>,
    cache: Arc<CacheDir>,
    registry: Arc<Registry>,
}

impl ConfigFile {
    /// On a change, applies its static layers (the only key that reloads): `None` if it did
    /// not change, else whether the new file is in force.
    fn reload_if_changed(&mut self) -> Option<bool> {
        let now = file_version(&self.path);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        let config = match Config::load(Some(&self.path), &self.overrides) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "config file changed but is invalid; keeping the running configuration");
                return Some(false);
            }
        };
        if config.registry.static_layers == self.layers {
            tracing::warn!("config file changed; only staticLayers reload, other keys apply at the next restart");
            return Some(true);
        }
        match self.registry.reload_static_layers(&self.cache, &config.registry.static_layers) {
            Ok(()) => self.layers = config.registry.static_layers,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the new static layers; keeping the previous ones");
                return Some(false);
            }
        }
        Some(true)
    }
}
