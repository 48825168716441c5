//! The `ipfs` section: a gateway to read from, an API to publish to, and their bounds.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::ipfs::IpfsSettings;

/// A CID record lives a week in Redis: content is immutable, and a record that expires only
/// costs one upstream fetch and one publication.
const DEFAULT_CID_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// A gateway gets this long for one blob before upstream is asked instead.
const DEFAULT_GATEWAY_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_PUBLISH_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_PUBLISH_QUEUE: usize = 64;
/// A node waits this long for a peer's publication before it asks upstream itself: below the
/// default `idleTimeoutMs` (90 s), so that its client is answered either way.
const DEFAULT_PEER_WAIT_MS: u64 = 60_000;
const DEFAULT_CLAIM_TTL_MS: u64 = 600_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpfsFile {
    gateway: Option<String>,
    api: Option<String>,
    cid_ttl_ms: Option<u64>,
    gateway_timeout_ms: Option<u64>,
    publish_timeout_ms: Option<u64>,
    publish_queue: Option<usize>,
    peer_wait_ms: Option<u64>,
    claim_ttl_ms: Option<u64>,
}

/// The settings of `file`; `has_redis`: whether `redis` is configured (the CID records live there).
///
/// # Errors
/// No Redis, neither a gateway nor an API, a URL that is not http(s), or a bound of 0.
pub fn ipfs_settings(file: IpfsFile, has_redis: bool, invalid: &dyn Fn(&str, String) -> ConfigError) -> Result<IpfsSettings, ConfigError> {
    if !has_redis {
        return Err(invalid("ipfs", "needs `redis`: the digest → CID map lives there".into()));
    }
    if file.gateway.is_none() && file.api.is_none() {
        return Err(invalid("ipfs", "give `gateway` (to read blobs from IPFS), `api` (to publish them), or both".into()));
    }
    for (key, url) in [("ipfs.gateway", &file.gateway), ("ipfs.api", &file.api)] {
        if let Some(url) = url {
            let uri: Result<http::Uri, _> = url.parse();
            if !uri.is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()) {
                return Err(invalid(key, format!("`{url}` is not an http(s) URL")));
            }
        }
    }
    let ms = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(invalid(key, "must be greater than 0".into())),
        other => Ok(Duration::from_millis(other.unwrap_or(default))),
    };
    let settings = IpfsSettings {
        gateway: file.gateway,
        api: file.api,
        cid_ttl: ms("ipfs.cidTtlMs", file.cid_ttl_ms, DEFAULT_CID_TTL_MS)?,
        gateway_timeout: ms("ipfs.gatewayTimeoutMs", file.gateway_timeout_ms, DEFAULT_GATEWAY_TIMEOUT_MS)?,
        publish_timeout: ms("ipfs.publishTimeoutMs", file.publish_timeout_ms, DEFAULT_PUBLISH_TIMEOUT_MS)?,
        peer_wait: Duration::from_millis(file.peer_wait_ms.unwrap_or(DEFAULT_PEER_WAIT_MS)),
        claim_ttl: ms("ipfs.claimTtlMs", file.claim_ttl_ms, DEFAULT_CLAIM_TTL_MS)?,
        publish_queue: match file.publish_queue {
            Some(0) => return Err(invalid("ipfs.publishQueue", "must be greater than 0".into())),
            other => other.unwrap_or(DEFAULT_PUBLISH_QUEUE),
        },
    };
    // The publish path reaches the API over plain HTTP only (kubo's RPC has no TLS).
    if let Some(api) = &settings.api {
        crate::ipfs::IpfsApi::new(api, Duration::from_secs(1)).map_err(|e| invalid("ipfs.api", e.to_string()))?;
    }
    Ok(settings)
}
