//! The keys that face clients: `tls`, `auth` and `limits`, as written and as validated.
//! Only their shape is checked here; the files they name are read when the server starts
//! (and again when they change), and those errors name the key too.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::http::{AuthSettings, TlsSettings};
use crate::runtime::LimitSettings;

const DEFAULT_REALM: &str = "registry-facade";
/// Far above what one node's containerd opens during a pull storm, and below the open-file
/// limit (the facade raises its soft limit to the hard one, commonly 524288).
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AuthFile {
    realm: Option<String>,
    basic: Option<BasicFile>,
    bearer: Option<BearerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BasicFile {
    htpasswd: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BearerFile {
    tokens_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LimitsFile {
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_streams_per_connection: Option<u32>,
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

pub(super) fn tls_settings(file: TlsFile, invalid: Invalid) -> Result<TlsSettings, ConfigError> {
    for (key, path) in [("tls.cert", &file.cert), ("tls.key", &file.key)] {
        if path.as_os_str().is_empty() {
            return Err(invalid(key, "must name a PEM file".into()));
        }
    }
    Ok(TlsSettings { cert: file.cert, key: file.key, client_ca: file.client_ca })
}

pub(super) fn auth_settings(file: AuthFile, invalid: Invalid) -> Result<AuthSettings, ConfigError> {
    if file.basic.is_none() && file.bearer.is_none() {
        return Err(invalid("auth", "needs `basic` (an htpasswd file) and/or `bearer` (a tokens file); leave `auth` out to let every client pull".into()));
    }
    let realm = file.realm.unwrap_or_else(|| DEFAULT_REALM.into());
    if realm.is_empty() || realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(invalid("auth.realm", "must be non-empty text without quotes, backslashes or control characters".into()));
    }
    Ok(AuthSettings { realm, htpasswd: file.basic.map(|b| b.htpasswd), tokens_file: file.bearer.map(|b| b.tokens_file) })
}

/// The connection limits, and the h2 stream limit that goes to the HTTP settings.
pub(super) fn limit_settings(file: LimitsFile, invalid: Invalid) -> Result<(LimitSettings, u32), ConfigError> {
    let at_least_one = |key: &str, value: Option<usize>| match value {
        Some(0) => Err(invalid(key, "must be at least 1".into())),
        other => Ok(other),
    };
    let max_connections = at_least_one("limits.maxConnections", file.max_connections)?.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_client = at_least_one("limits.maxConnectionsPerClient", file.max_connections_per_client)?;
    if max_connections_per_client.is_some_and(|per_client| per_client > max_connections) {
        return Err(invalid("limits.maxConnectionsPerClient", format!("must not exceed limits.maxConnections ({max_connections})")));
    }
    let streams = match file.max_streams_per_connection {
        Some(0) => return Err(invalid("limits.maxStreamsPerConnection", "must be at least 1".into())),
        Some(n) => n,
        None => DEFAULT_MAX_STREAMS_PER_CONNECTION,
    };
    Ok((LimitSettings { max_connections, max_connections_per_client }, streams))
}
