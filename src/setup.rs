//! `registry-facade setup`: points the node's containerd at the facade by writing
//! `<hosts-dir>/<host>/hosts.toml` and the facade's CA beside it. Each file is written to a temp
//! name and renamed, and one that already says the same is left alone, so a rerun changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// The CA's name inside the host's directory.
const CA_FILE_NAME: &str = "ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--host: `{0}` is not host:port (e.g. registry-facade.local:5000 or 10.0.0.5:443)")]
    Host(String),
    #[error("--ca: {}: {source}", path.display())]
    ReadCa { path: PathBuf, source: std::io::Error },
    #[error("--ca: {}: not a PEM certificate", .0.display())]
    NotPem(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// What `setup` is asked to do.
#[derive(Debug, Clone)]
pub struct SetupRequest {
    /// The facade's address as containerd will name it in image references: `name:port`.
    pub host: String,
    /// The CA that signed the facade's certificate; `None`: the system's roots are trusted.
    pub ca: Option<PathBuf>,
    pub hosts_dir: PathBuf,
}

/// One file `setup` is responsible for, and whether this run changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub changed: bool,
}

/// Writes the host file (and the CA); returns each file with whether it changed.
///
/// # Errors
/// The host is not `name:port`, the CA is not a readable PEM certificate, or a file cannot
/// be written.
pub fn write_hosts_config(request: &SetupRequest) -> Result<Vec<FileOutcome>, SetupError> {
    check_host(&request.host)?;
    let dir = request.hosts_dir.join(&request.host);
    let mut outcomes = Vec::new();
    let ca_path = match &request.ca {
        None => None,
        Some(source) => {
            let pem = std::fs::read(source).map_err(|e| SetupError::ReadCa { path: source.clone(), source: e })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(SetupError::NotPem(source.clone()));
            }
            // Absolute, so the host file means the same wherever containerd resolves it from.
            let path = std::path::absolute(dir.join(CA_FILE_NAME)).map_err(|e| SetupError::Write { path: dir.clone(), source: e })?;
            outcomes.push(write_if_different(&path, &pem)?);
            Some(path)
        }
    };
    let hosts = hosts_toml(&request.host, ca_path.as_deref());
    outcomes.push(write_if_different(&dir.join("hosts.toml"), hosts.as_bytes())?);
    Ok(outcomes)
}

/// containerd's host file: the facade is the server for images named `<host>/…`, trusted for
/// pull and resolve only (it accepts no pushes).
fn hosts_toml(host: &str, ca: Option<&Path>) -> String {
    let mut text = format!(
        "# Written by `registry-facade setup`; running it again rewrites this file.\n\
         server = \"https://{host}\"\n\n\
         [host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    if let Some(ca) = ca {
        text.push_str(&format!("  ca = {:?}\n", ca.display().to_string()));
    }
    text
}

/// `name:port` with a name that is a DNS name or an IP address (IPv6 in brackets).
fn check_host(host: &str) -> Result<(), SetupError> {
    let bad = || SetupError::Host(host.to_owned());
    let (name, port) = host.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?;
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !name.is_empty()
                && name.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        }
    };
    name_ok.then_some(()).ok_or_else(bad)
}

fn write_if_different(path: &Path, content: &[u8]) -> Result<FileOutcome, SetupError> {
    if std::fs::read(path).is_ok_and(|existing| existing == content) {
        return Ok(FileOutcome { path: path.to_owned(), changed: false });
    }
    write_atomically(path, content).map_err(|source| SetupError::Write { path: path.to_owned(), source })?;
    Ok(FileOutcome { path: path.to_owned(), changed: true })
}

fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("file"), std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in ["facade.local:5000", "10.0.0.5:443", "[::1]:5000", "localhost:1"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in ["facade.local", "facade:0", "https://x:1", "a b:1", ":5000", "[zz]:1", "x:65536"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_once_then_leaves_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my-ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let request = SetupRequest { host: "facade.local:5000".into(), ca: Some(ca), hosts_dir: dir.path().join("certs.d") };
        let first = write_hosts_config(&request).unwrap();
        assert!(first.iter().all(|o| o.changed));
        let hosts = std::fs::read_to_string(dir.path().join("certs.d/facade.local:5000/hosts.toml")).unwrap();
        assert!(hosts.contains("server = \"https://facade.local:5000\""));
        assert!(hosts.contains("capabilities = [\"pull\", \"resolve\"]"));
        assert!(hosts.contains("facade.local:5000/ca.crt\""));
        assert!(write_hosts_config(&request).unwrap().iter().all(|o| !o.changed), "idempotent");
        let not_pem = SetupRequest { ca: Some(dir.path().join("certs.d/facade.local:5000/hosts.toml")), ..request };
        assert!(matches!(write_hosts_config(&not_pem), Err(SetupError::NotPem(_))));
    }
}
