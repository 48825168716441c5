//! The configuration file (JSON, camelCase keys) and command-line overrides, validated into
//! the settings of each layer. Every error names the key (or flag) it is about.

mod blobserve;
mod host;
mod ipfs;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use std::collections::BTreeMap;

use crate::http::{AuthSettings, HttpSettings, Sendfile, TlsSettings};
use crate::ipfs::IpfsSettings;
use crate::oci::manifest::Platform;
use crate::registry::static_layers::StaticLayerConfig;
use crate::registry::{MirrorSettings, PrefetchRef, RegistrySettings};
use crate::runtime::{RuntimeSettings, TcpCongestion};
use crate::redis_client::RedisSettings;
use crate::upstream::{RegistryConfig, RetryPolicy, UpstreamSettings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_CACHE_DIR: &str = "./data";
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 90_000;
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_MIRROR_TAG_TTL_MS: u64 = 30_000;
const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
const DEFAULT_REDIS_PREFIX: &str = "rf:";
/// hyper refuses a read buffer below 8 KiB.
const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;

/// The file as written; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    listen: Option<String>,
    cores: Option<usize>,
    cache_dir: Option<PathBuf>,
    platform: Option<String>,
    demo_image: Option<bool>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    sendfile: Option<Sendfile>,
    tcp_congestion: Option<String>,
    log: Option<LogFile>,
    cache_max_bytes: Option<u64>,
    cache_max_open_blobs: Option<usize>,
    registries: Option<BTreeMap<String, RegistryFile>>,
    mirrors: Option<BTreeMap<String, String>>,
    mirror_tag_ttl_ms: Option<u64>,
    docker_config: Option<PathBuf>,
    upstream: Option<UpstreamFile>,
    admin_listen: Option<String>,
    specs: Option<SpecsFile>,
    static_layers: Option<Vec<StaticLayerFile>>,
    content_layers: Option<ContentLayersFile>,
    redis: Option<RedisFile>,
    ipfs: Option<ipfs::IpfsFile>,
    prefetch: Option<Vec<String>>,
    tls: Option<server::TlsFile>,
    auth: Option<server::AuthFile>,
    limits: Option<server::LimitsFile>,
    blobserve: Option<blobserve::BlobserveFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RedisFile {
    url: String,
    key_prefix: Option<String>,
    cluster: Option<bool>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecsFile {
    fixed_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StaticLayerFile {
    #[serde(rename = "type")]
    kind: StaticLayerKind,
    #[serde(rename = "ref")]
    reference: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StaticLayerKind {
    File,
    Image,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContentLayersFile {
    redirect: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegistryFile {
    endpoint: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpstreamFile {
    connect_timeout_ms: Option<u64>,
    tls_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    max_connections_per_host: Option<usize>,
    retry: Option<RetryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RetryFile {
    attempts: Option<u32>,
    initial_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LogFile {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter (`info`, `registry_facade=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cores: Option<usize>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub cache_dir: PathBuf,
    pub demo_image: bool,
    pub runtime: RuntimeSettings,
    pub registry: RegistrySettings,
    pub upstream: UpstreamSettings,
    pub redis: Option<RedisSettings>,
    /// IPFS: a gateway read before upstream, an API blobs from upstream are published to
    /// (needs `redis`, where the CID records are).
    pub ipfs: Option<IpfsSettings>,
    /// Images whose blobs are fetched into the cache in the background at start.
    pub prefetch: Vec<PrefetchRef>,
    pub log: LogSettings,
    /// TLS on the registry listener; `None`: plain HTTP (h2c and HTTP/1.1).
    pub tls: Option<TlsSettings>,
    /// Client credentials the registry listener demands; `None`: every client may pull.
    pub auth: Option<AuthSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {key}: {message}")]
    Invalid { origin: String, key: String, message: String },
}

impl Config {
    /// Reads `path` (if any), applies `overrides` and validates.
    ///
    /// # Errors
    /// The file cannot be read, is not valid JSON, has an unknown key or a bad value.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Config::from_json(&text, &path.display().to_string(), overrides)
            }
            None => Config::from_json(b"{}", "defaults", overrides),
        }
    }

    /// Parses and validates a config document; `origin` names it in errors.
    ///
    /// # Errors
    /// As `load`, minus reading.
    pub fn from_json(text: &[u8], origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let file: ConfigFile = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let key = e.path().to_string();
            // A syntax error has no key to name (serde_path_to_error says `.` or `?`).
            let key = if key == "." || key == "?" { "(document)".to_owned() } else { key };
            ConfigError::Invalid { origin: origin.to_owned(), key, message: e.into_inner().to_string() }
        })?;
        validate(file, origin, overrides)
    }
}

fn validate(file: ConfigFile, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid { origin: origin.to_owned(), key: key.to_owned(), message };
    let flag = |key: &str, message: String| ConfigError::Invalid { origin: "command line".into(), key: key.to_owned(), message };

    let listen = match (&overrides.listen, &file.listen) {
        (Some(text), _) => parse_listen(text).map_err(|m| flag("--listen", m))?,
        (None, Some(text)) => parse_listen(text).map_err(|m| invalid("listen", m))?,
        (None, None) => parse_listen(DEFAULT_LISTEN).map_err(|m| invalid("listen", m))?,
    };
    let cores = match (overrides.cores, file.cores) {
        (Some(0), _) => return Err(flag("--cores", "must be at least 1".into())),
        (None, Some(0)) => return Err(invalid("cores", "must be at least 1".into())),
        (flag_cores, file_cores) => flag_cores.or(file_cores),
    };
    let platform = match &file.platform {
        Some(text) => text.parse().map_err(|e| invalid("platform", format!("{e}")))?,
        None => Platform::host(),
    };
    let positive_ms = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(invalid(key, "must be greater than 0".into())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    };
    let max_header_bytes = file.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if max_header_bytes < MIN_MAX_HEADER_BYTES {
        return Err(invalid("maxHeaderBytes", format!("must be at least {MIN_MAX_HEADER_BYTES}")));
    }
    let (limits, max_streams_per_connection) = server::limit_settings(file.limits.unwrap_or_default(), &invalid)?;
    let http = HttpSettings {
        max_streams_per_connection,
        header_read_timeout: positive_ms("headerReadTimeoutMs", file.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS)?,
        idle_timeout: positive_ms("idleTimeoutMs", file.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS)?,
        max_header_bytes,
        sendfile: file.sendfile.unwrap_or_default(),
        blobserve_timeout: None,
    };
    let tcp_congestion = file.tcp_congestion.map(|name| tcp_congestion(name).map_err(|m| invalid("tcpCongestion", m))).transpose()?.unwrap_or_default();
    let shutdown_grace = match file.shutdown_grace_ms {
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
    };
    let log_file = file.log.unwrap_or_default();
    let level = log_file.level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(invalid("log.level", format!("`{level}` is not a tracing filter (e.g. info, debug, registry_facade=trace)")));
    }
    let cache_dir = overrides.cache_dir.clone().or(file.cache_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
    if cache_dir.as_os_str().is_empty() {
        return Err(invalid("cacheDir", "must not be empty".into()));
    }
    if file.cache_max_bytes == Some(0) {
        return Err(invalid("cacheMaxBytes", "must be greater than 0 (leave it out for no limit)".into()));
    }
    let mirrors = validate_mirrors(file.mirrors.unwrap_or_default()).map_err(|(key, m)| invalid(&key, m))?;
    let admin_listen = file.admin_listen.as_deref().map(|text| parse_listen(text).map_err(|m| invalid("adminListen", m))).transpose()?;
    if admin_listen.is_some_and(|admin| admin == listen && admin.port() != 0) {
        return Err(invalid("adminListen", "must differ from listen: the admin API is never on the public port".into()));
    }
    let blobserve = file.blobserve.map(|b| blobserve::blobserve_settings(b, &cache_dir, &invalid)).transpose()?;
    if let Some(b) = &blobserve {
        let taken = [Some(listen), admin_listen].into_iter().flatten().any(|addr| addr == b.listen && addr.port() != 0);
        if taken {
            return Err(invalid("blobserve.listen", "must differ from listen and adminListen".into()));
        }
    }
    let mut http = http;
    http.blobserve_timeout = blobserve.as_ref().and_then(|b| b.timeout);
    let blobserve_listen = blobserve.as_ref().map(|b| b.listen);
    let static_layers = file
        .static_layers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, layer)| match layer.kind {
            StaticLayerKind::File if layer.reference.is_empty() => Err(invalid(&format!("staticLayers[{index}].ref"), "must name a .tar.gz file".into())),
            StaticLayerKind::File => Ok(StaticLayerConfig::File(PathBuf::from(layer.reference))),
            StaticLayerKind::Image => match layer.reference.parse::<crate::spec::SourceRef>() {
                Ok(_) => Ok(StaticLayerConfig::Image(layer.reference)),
                Err(e) => Err(invalid(&format!("staticLayers[{index}].ref"), e)),
            },
        })
        .collect::<Result<Vec<_>, _>>()?;
    let registry = RegistrySettings {
        platform,
        cache_max_bytes: file.cache_max_bytes,
        cache_max_open_blobs: match file.cache_max_open_blobs {
            Some(0) => return Err(invalid("cacheMaxOpenBlobs", "must be greater than 0 (leave it out for the default)".into())),
            other => other,
        },
        mirrors: MirrorSettings { aliases: mirrors, tag_ttl: positive_ms("mirrorTagTtlMs", file.mirror_tag_ttl_ms, DEFAULT_MIRROR_TAG_TTL_MS)? },
        fixed_specs: file.specs.and_then(|s| s.fixed_file),
        static_layers,
        redirect_content_layers: file.content_layers.and_then(|c| c.redirect).unwrap_or(true),
        blobserve: blobserve.map(|b| b.settings),
    };
    let upstream = upstream_settings(file.registries.unwrap_or_default(), file.docker_config, file.upstream.unwrap_or_default(), &invalid)?;
    let redis = file.redis.map(|r| redis_settings(r, &invalid)).transpose()?;
    let ipfs = file.ipfs.map(|ipfs| ipfs::ipfs_settings(ipfs, redis.is_some(), &invalid)).transpose()?;
    Ok(Config {
        cache_dir,
        demo_image: file.demo_image.unwrap_or(true),
        runtime: RuntimeSettings { listen, admin_listen, blobserve_listen, cores, shutdown_grace, http, limits, tcp_congestion },
        registry,
        upstream,
        redis,
        ipfs,
        prefetch: file
            .prefetch
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| text.parse().map_err(|e| invalid(&format!("prefetch[{i}]"), format!("{e}"))))
            .collect::<Result<_, _>>()?,
        log: LogSettings { format: log_file.format.unwrap_or_default(), level },
        tls: file.tls.map(|t| server::tls_settings(t, &invalid)).transpose()?,
        auth: file.auth.map(|a| server::auth_settings(a, &invalid)).transpose()?,
    })
}

fn redis_settings(file: RedisFile, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<RedisSettings, ConfigError> {
    use redis::IntoConnectionInfo;
    if let Err(e) = file.url.as_str().into_connection_info() {
        return Err(invalid("redis.url", format!("{e} (redis://host:port[/db] or rediss://…)")));
    }
    let timeout = match file.timeout_ms {
        Some(0) => return Err(invalid("redis.timeoutMs", "must be greater than 0".into())),
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_millis(DEFAULT_REDIS_TIMEOUT_MS),
    };
    Ok(RedisSettings {
        url: file.url,
        // Secrets stay out of config files: the password may come from the environment.
        password: std::env::var("REDIS_PASSWORD").ok().filter(|p| !p.is_empty()),
        key_prefix: file.key_prefix.unwrap_or_else(|| DEFAULT_REDIS_PREFIX.into()),
        cluster: file.cluster.unwrap_or(false),
        timeout,
    })
}

/// Mirror aliases become a path segment (`mirror/<alias>/…`) and values are registry hosts.
fn validate_mirrors(mirrors: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, (String, String)> {
    for (alias, host) in &mirrors {
        let key = format!("mirrors.{alias}");
        if format!("mirror/{alias}/x").parse::<crate::oci::RepositoryName>().is_err() || alias.contains('/') {
            return Err((key, "an alias must be one lowercase name component, e.g. `hub`".into()));
        }
        let bad_host = host.is_empty() || host.contains('/') || host.contains("://") || host.chars().any(char::is_whitespace);
        if bad_host {
            return Err((key, format!("`{host}` is not a registry host (host or host:port, no scheme)")));
        }
    }
    Ok(mirrors)
}

fn upstream_settings(
    registries: BTreeMap<String, RegistryFile>,
    docker_config: Option<PathBuf>,
    file: UpstreamFile,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamSettings, ConfigError> {
    // A key that is no registry host (`https://ghcr.io`, `ghcr.io/org`) would never match an
    // image's host and be ignored without a word.
    for host in registries.keys() {
        host::check_registry_host(host).map_err(|m| invalid(&format!("registries.{host}"), m))?;
    }
    let defaults = UpstreamSettings::default();
    let ms = |key: &str, value: Option<u64>, default: Duration| match value {
        Some(0) => Err(invalid(key, "must be greater than 0".into())),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let retry_file = file.retry.unwrap_or_default();
    let retry = RetryPolicy {
        attempts: match retry_file.attempts {
            Some(0) => return Err(invalid("upstream.retry.attempts", "must be at least 1".into())),
            Some(n) => n,
            None => defaults.retry.attempts,
        },
        initial_delay: ms("upstream.retry.initialDelayMs", retry_file.initial_delay_ms, defaults.retry.initial_delay)?,
        max_delay: ms("upstream.retry.maxDelayMs", retry_file.max_delay_ms, defaults.retry.max_delay)?,
    };
    if retry.max_delay < retry.initial_delay {
        return Err(invalid("upstream.retry.maxDelayMs", "must not be below initialDelayMs".into()));
    }
    let max_connections_per_host = match file.max_connections_per_host {
        Some(0) => return Err(invalid("upstream.maxConnectionsPerHost", "must be at least 1".into())),
        Some(n) => n,
        None => defaults.max_connections_per_host,
    };
    Ok(UpstreamSettings {
        registries: registries.into_iter().map(|(host, r)| (host, RegistryConfig { endpoint: r.endpoint, ca_file: r.ca_file })).collect(),
        docker_config,
        connect_timeout: ms("upstream.connectTimeoutMs", file.connect_timeout_ms, defaults.connect_timeout)?,
        tls_timeout: ms("upstream.tlsTimeoutMs", file.tls_timeout_ms, defaults.tls_timeout)?,
        response_timeout: ms("upstream.responseTimeoutMs", file.response_timeout_ms, defaults.response_timeout)?,
        read_timeout: ms("upstream.readTimeoutMs", file.read_timeout_ms, defaults.read_timeout)?,
        retry,
        max_connections_per_host,
    })
}

/// `"system"`, or the name of a congestion control as the kernel spells it (at most 15
/// bytes: letters, digits, `_`). Whether the kernel has it is only known when the listener is
/// set up.
fn tcp_congestion(name: String) -> Result<TcpCongestion, String> {
    if name == "system" {
        return Ok(TcpCongestion::System);
    }
    let well_formed = (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return Err(format!("`{name}` is not a congestion control name (e.g. cubic, reno, bbr) or \"system\""));
    }
    Ok(TcpCongestion::Named(name))
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("`{text}` is not an IP address with a port, e.g. 127.0.0.1:5000 or [::]:5000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(json.as_bytes(), "test.json", &Overrides::default())
    }

    fn error(json: &str) -> String {
        load(json).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let config = load("{}").unwrap();
        assert_eq!(config.runtime.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.cache_dir, PathBuf::from("./data"));
        assert!(config.demo_image);
        assert_eq!(config.runtime.cores, None);
        assert_eq!(config.registry.platform, Platform::host());
        assert_eq!(config.runtime.http.sendfile, Sendfile::Always);
        assert_eq!(load(r#"{"sendfile": "never"}"#).unwrap().runtime.http.sendfile, Sendfile::Never);
        assert_eq!(config.runtime.tcp_congestion, TcpCongestion::Default);
    }

    #[test]
    fn tcp_congestion_is_system_or_a_kernel_name() {
        let congestion = |json: &str| load(json).unwrap().runtime.tcp_congestion;
        assert_eq!(congestion(r#"{"tcpCongestion": "system"}"#), TcpCongestion::System);
        assert_eq!(congestion(r#"{"tcpCongestion": "reno"}"#), TcpCongestion::Named("reno".into()));
        for bad in ["", "cubic ", "a/b", "sixteen_letters_"] {
            let message = error(&format!(r#"{{"tcpCongestion": "{bad}"}}"#));
            assert!(message.contains(&format!("tcpCongestion: `{bad}` is not a congestion control name")), "{message}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error(r#"{"listne": "x"}"#).starts_with("test.json: listne: unknown field `listne`"), "{}", error(r#"{"listne": "x"}"#));
        assert!(error(r#"{"cores": "two"}"#).starts_with("test.json: cores: invalid type"));
        assert!(error(r#"{"cores": 0}"#).contains("cores: must be at least 1"));
        assert!(error(r#"{"listen": "localhost"}"#).contains("listen: `localhost` is not an IP address"));
        assert!(error(r#"{"log": {"format": "xml"}}"#).starts_with("test.json: log.format: unknown variant `xml`"));
        assert!(error(r#"{"log": {"level": "[["}}"#).contains("log.level"));
        assert!(error(r#"{"sendfile": "local"}"#).starts_with("test.json: sendfile: unknown variant `local`, expected one of `remote`, `always`, `never`"));
        assert!(error(r#"{"maxHeaderBytes": 100}"#).contains("maxHeaderBytes: must be at least 8192"));
        assert!(error(r#"{"idleTimeoutMs": 0}"#).contains("idleTimeoutMs: must be greater than 0"));
        assert!(error(r#"{"platform": "linux"}"#).contains("platform:"));
        assert!(error("[1]").contains("test.json"));
        assert!(error(r#"{"mirrors": {"Hub": "docker.io"}}"#).contains("mirrors.Hub: an alias must be"));
        assert!(error(r#"{"mirrors": {"hub": "https://docker.io"}}"#).contains("mirrors.hub: `https://docker.io` is not a registry host"));
        assert!(error(r#"{"upstream": {"retry": {"attempts": 0}}}"#).contains("upstream.retry.attempts: must be at least 1"));
        assert!(error(r#"{"upstream": {"retry": {"initialDelayMs": 500, "maxDelayMs": 100}}}"#).contains("upstream.retry.maxDelayMs"));
        assert!(error(r#"{"upstream": {"readTimeoutMs": 0}}"#).contains("upstream.readTimeoutMs: must be greater than 0"));
        assert!(error(r#"{"registries": {"r": {"endpiont": "x"}}}"#).contains("registries.r.endpiont: unknown field"));
        assert!(error(r#"{"registries": {"https://ghcr.io": {}}}"#).contains("registries.https://ghcr.io: `https://ghcr.io` is not a registry host"));
        assert!(error(r#"{"registries": {"ghcr.io/foo": {"endpoint": "https://ghcr.io"}}}"#).contains("registries.ghcr.io/foo: `ghcr.io/foo` is not a registry host"));
        assert!(error(r#"{"registries": {"ghcr.io:0": {}}}"#).contains("registries.ghcr.io:0: `ghcr.io:0`: the port must be"));
        assert!(error(r#"{"cacheMaxBytes": 0}"#).contains("cacheMaxBytes"));
        assert!(error(r#"{"staticLayers": [{"type": "tarball", "ref": "x"}]}"#).contains("staticLayers[0].type: unknown variant"));
        assert!(error(r#"{"staticLayers": [{"type": "image", "ref": "B@D"}]}"#).contains("staticLayers[0].ref:"));
        assert!(error(r#"{"adminListen": "127.0.0.1:5000"}"#).contains("adminListen: must differ from listen"));
        assert!(error(r#"{"specs": {"fixedfile": "x"}}"#).contains("specs.fixedfile: unknown field"));
        assert!(error(r#"{"redis": {"url": "http://x"}}"#).contains("redis.url:"));
        assert!(error(r#"{"ipfs": {"gateway": "http://127.0.0.1:8080"}}"#).contains("ipfs: needs `redis`"));
        assert!(error(r#"{"redis": {"url": "redis://127.0.0.1:1"}, "ipfs": {"gateway": "/ipfs"}}"#).contains("ipfs.gateway:"));
        assert!(error(r#"{"redis": {"url": "redis://127.0.0.1:1", "timeoutMs": 0}}"#).contains("redis.timeoutMs"));
        assert!(error(r#"{"tls": {"cert": "c.pem"}}"#).contains("tls: missing field `key`"));
        assert!(error(r#"{"tls": {"cert": "", "key": "k"}}"#).contains("tls.cert: must name a PEM file"));
        assert!(error(r#"{"auth": {}}"#).contains("auth: needs `basic`"));
        assert!(error(r#"{"auth": {"realm": "a\"b", "basic": {"htpasswd": "h"}}}"#).contains("auth.realm"));
        assert!(error(r#"{"auth": {"basic": {"file": "h"}}}"#).contains("auth.basic.file: unknown field"));
        assert!(error(r#"{"limits": {"maxConnections": 0}}"#).contains("limits.maxConnections: must be at least 1"));
        assert!(error(r#"{"limits": {"maxConnections": 10, "maxConnectionsPerClient": 20}}"#).contains("limits.maxConnectionsPerClient: must not exceed"));
        assert!(error(r#"{"limits": {"maxStreamsPerConnection": 0}}"#).contains("limits.maxStreamsPerConnection"));
    }

    #[test]
    fn registries_are_keyed_by_the_host_images_name() {
        let json = r#"{"registries": {"ghcr.io": {}, "127.0.0.1:5001": {"endpoint": "http://127.0.0.1:5001"}, "[::1]:5000": {}}}"#;
        let hosts: Vec<String> = load(json).unwrap().upstream.registries.into_keys().collect();
        assert_eq!(hosts, ["127.0.0.1:5001", "[::1]:5000", "ghcr.io"]);
    }

    #[test]
    fn flags_override_the_file() {
        let overrides = Overrides { listen: Some("127.0.0.1:0".into()), cache_dir: Some("/x".into()), cores: Some(1) };
        let json = br#"{"listen": "0.0.0.0:80", "cacheDir": "/y", "cores": 2}"#;
        let config = Config::from_json(json, "f", &overrides).unwrap();
        assert_eq!(config.runtime.listen.port(), 0);
        assert_eq!(config.cache_dir, PathBuf::from("/x"));
        assert_eq!(config.runtime.cores, Some(1));
        let bad = Overrides { cores: Some(0), ..Overrides::default() };
        assert!(Config::from_json(b"{}", "f", &bad).unwrap_err().to_string().contains("command line: --cores"));
    }
}
