//! Where a registry host is reached: scheme, address and TLS roots. A host under `registries` uses
//! its endpoint (plain HTTP only if it says so) and may add a CA; any other is `https://<host>`
//! with the system roots. `docker.io` is `registry-1.docker.io`, one-component names in `library/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::pki_types::pem::PemObject;

use super::error::UpstreamError;

/// How to reach one registry host, from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `http://host:port` or `https://host:port`; default `https://<host>`.
    pub endpoint: Option<String>,
    /// PEM file of extra CA certificates trusted for this registry (besides the system's).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// `host[:port]` (IPv6 in brackets), the port only when given and not the scheme's default.
fn host_and_port(scheme: Scheme, host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    match port.filter(|p| *p != scheme.default_port()) {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The host (and a port that is not the scheme's default) of an absolute http(s) URL, for
/// error messages and metric labels: never its user info (`user:password@`), which
/// `Uri::authority` keeps.
pub fn url_host(uri: &http::Uri) -> Option<String> {
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    Some(host_and_port(scheme, host, authority.port_u16()))
}

/// A resolved origin: everything a connection needs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP address, without brackets or port.
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// `host:port` as it goes into `Host` and URIs.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The pool key: one pool per scheme and authority.
    pub fn key(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }

    /// `host[:port]` as it goes into `Host` and h2's `:authority`: without the scheme's
    /// default port, as browsers and curl send it. Presigned object-storage URLs sign the
    /// `host` header as the URL spells it, and `s3.example:443` is not `s3.example` to them.
    pub fn host_header(&self) -> String {
        host_and_port(self.scheme, &self.host, Some(self.port))
    }

    /// `scheme://host[:port]`, the origin an h2 request's URI names.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.host_header())
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone()).map_err(|_| format!("`{}` is not a valid TLS server name", self.host))
    }
}

/// All endpoints: the configured ones and the default for every other host.
pub struct Endpoints {
    configured: BTreeMap<String, Endpoint>,
    default_tls: Arc<rustls::ClientConfig>,
}

impl Endpoints {
    /// Builds the TLS configurations (system roots, plus each entry's CA file).
    ///
    /// # Errors
    /// A bad endpoint URL or an unreadable CA file, naming the registry.
    pub fn new(registries: &BTreeMap<String, RegistryConfig>) -> Result<Endpoints, UpstreamError> {
        let system_roots = system_roots();
        let default_tls = tls_config(&system_roots, &[])?;
        let mut configured = BTreeMap::new();
        for (host, config) in registries {
            let extra = match &config.ca_file {
                Some(path) => load_ca_file(path).map_err(|e| UpstreamError::Config(format!("registries.{host}.caFile: {e}")))?,
                None => Vec::new(),
            };
            let tls = if extra.is_empty() { Arc::clone(&default_tls) } else { tls_config(&system_roots, &extra)? };
            let url = config.endpoint.clone().unwrap_or_else(|| format!("https://{host}"));
            let endpoint = parse_endpoint(&url, tls).map_err(|e| UpstreamError::Config(format!("registries.{host}.endpoint: {e}")))?;
            configured.insert(host.clone(), endpoint);
        }
        Ok(Endpoints { configured, default_tls })
    }

    /// The endpoint of registry `host` (as images name it).
    pub fn for_registry(&self, host: &str) -> Endpoint {
        if let Some(endpoint) = self.configured.get(host) {
            return endpoint.clone();
        }
        let url = match host {
            "docker.io" => "https://registry-1.docker.io".to_owned(),
            other => format!("https://{other}"),
        };
        parse_endpoint(&url, Arc::clone(&self.default_tls)).unwrap_or_else(|_| Endpoint {
            scheme: Scheme::Https,
            host: host.to_owned(),
            port: 443,
            tls: Some(Arc::clone(&self.default_tls)),
        })
    }

    /// The endpoint of an absolute URL (a token realm, a redirect): a configured endpoint's
    /// TLS roots apply to its own origin, the system roots to any other.
    ///
    /// # Errors
    /// Not an absolute http(s) URL.
    pub fn for_url(&self, uri: &http::Uri) -> Result<Endpoint, String> {
        let origin = format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map(|a| a.as_str()).unwrap_or(""));
        let known = self.configured.values().find(|e| e.key() == origin || parse_endpoint(&origin, Arc::clone(&self.default_tls)).is_ok_and(|o| o.key() == e.key()));
        let tls = known.and_then(|e| e.tls.clone()).unwrap_or_else(|| Arc::clone(&self.default_tls));
        parse_endpoint(&origin, tls)
    }
}

/// Normalises a repository path for a registry host (`docker.io/ubuntu` → `library/ubuntu`).
pub fn repository_path(host: &str, repo: &str) -> String {
    if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_owned()
    }
}

fn parse_endpoint(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Endpoint, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{url}` must not have a path"));
    }
    let tls = (scheme == Scheme::Https).then_some(tls);
    Ok(Endpoint { scheme, host, port, tls })
}

fn system_roots() -> Vec<CertificateDer<'static>> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(error = %error, "while loading the system's CA certificates");
    }
    loaded.certs
}

fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// TLS 1.2+ with the ring provider, ALPN h2 then http/1.1.
fn tls_config(system: &[CertificateDer<'static>], extra: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(system.iter().chain(extra).cloned());
    tracing::debug!(added, ignored, "TLS roots");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| UpstreamError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let mut registries = BTreeMap::new();
        registries.insert("local:5001".to_owned(), RegistryConfig { endpoint: Some("http://127.0.0.1:5001".into()), ca_file: None });
        let endpoints = Endpoints::new(&registries).unwrap();
        let local = endpoints.for_registry("local:5001");
        assert_eq!((local.scheme, local.key().as_str()), (Scheme::Http, "http://127.0.0.1:5001"));
        assert!(local.tls.is_none());
        let hub = endpoints.for_registry("docker.io");
        assert_eq!((hub.scheme, hub.key().as_str()), (Scheme::Https, "https://registry-1.docker.io:443"));
        assert_eq!(endpoints.for_registry("ghcr.io").key(), "https://ghcr.io:443");
        assert_eq!(repository_path("docker.io", "ubuntu"), "library/ubuntu");
        assert_eq!(repository_path("ghcr.io", "ubuntu"), "ubuntu");
        let realm: http::Uri = "http://127.0.0.1:5001/token?x=1".parse().unwrap();
        assert_eq!(endpoints.for_url(&realm).unwrap().key(), "http://127.0.0.1:5001");
    }

    #[test]
    fn host_headers_leave_out_the_default_port_only() {
        let endpoint = |url: &str| parse_endpoint(url, tls_config(&[], &[]).unwrap()).unwrap();
        let cases = [
            ("https://s3.example", "s3.example", "https://s3.example"),
            ("https://s3.example:443", "s3.example", "https://s3.example"),
            ("https://s3.example:8443", "s3.example:8443", "https://s3.example:8443"),
            ("http://gw.example:80", "gw.example", "http://gw.example"),
            ("http://gw.example:443", "gw.example:443", "http://gw.example:443"),
            ("https://[::1]:443", "[::1]", "https://[::1]"),
            ("http://[::1]:5000", "[::1]:5000", "http://[::1]:5000"),
        ];
        for (url, host, origin) in cases {
            let endpoint = endpoint(url);
            assert_eq!((endpoint.host_header().as_str(), endpoint.origin().as_str()), (host, origin), "{url}");
        }
        // The pool key still tells ports apart explicitly.
        assert_eq!(endpoint("https://s3.example").key(), "https://s3.example:443");
    }

    #[test]
    fn url_hosts_carry_no_user_info() {
        let host = |url: &str| url_host(&url.parse().unwrap());
        assert_eq!(host("https://user:pw@bucket.s3.example:8443/l?X-Amz-Signature=x").as_deref(), Some("bucket.s3.example:8443"));
        assert_eq!(host("https://user:pw@bucket.s3.example:443/l").as_deref(), Some("bucket.s3.example"));
        assert_eq!(host("http://token@[::1]:80/x").as_deref(), Some("[::1]"));
        assert_eq!(host("/relative/path"), None);
    }

    #[test]
    fn bad_configuration_names_the_registry() {
        let mut registries = BTreeMap::new();
        registries.insert("r".to_owned(), RegistryConfig { endpoint: Some("ftp://x".into()), ca_file: None });
        assert!(Endpoints::new(&registries).err().unwrap().to_string().contains("registries.r.endpoint"));
        registries.insert("r".to_owned(), RegistryConfig { endpoint: None, ca_file: Some("/nonexistent.pem".into()) });
        assert!(Endpoints::new(&registries).err().unwrap().to_string().contains("registries.r.caFile: cannot read /nonexistent.pem"));
    }
}
