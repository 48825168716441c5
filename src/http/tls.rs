//! TLS for the registry listener: the rustls server configuration from the operator's PEM files
//! (optionally a CA for client certificates) and one connection's handshake. TLS 1.2 and 1.3,
//! ALPN `h2` then `http/1.1`; a renewed certificate reaches new connections (`reload`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::reload::Reloadable;

/// Session tickets and the session cache let a returning client skip the full handshake;
/// containerd opens a few connections per pull, so most handshakes are resumptions.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The PEM files, from the configuration (`tls.cert`, `tls.key`, `tls.clientCa`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate issued by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The live server configuration, rebuilt when one of its files changes.
pub type TlsConfig = Reloadable<Arc<ServerConfig>>;

impl TlsSettings {
    /// Reads the files and builds the first configuration.
    ///
    /// # Errors
    /// A file is missing or unreadable, holds no certificate or key, or the key does not
    /// match the certificate; the message names the config key.
    pub fn load(&self) -> Result<Arc<TlsConfig>, String> {
        let settings = self.clone();
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.clone());
        Reloadable::load("TLS certificate", files, move || settings.server_config().map(Arc::new))
    }

    fn server_config(&self) -> Result<ServerConfig, String> {
        let chain = read_certificates("tls.cert", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("tls.key: {}: no usable private key: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates("tls.clientCa", path)? {
                    roots.add(certificate).map_err(|e| format!("tls.clientCa: {}: {e}", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("tls.clientCa: {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("tls.cert/tls.key: {} and {} do not form a usable pair: {e}", self.cert.display(), self.key.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        Ok(config)
    }
}

fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{key}: {}: no PEM certificate in the file", path.display()));
    }
    Ok(certificates)
}
