//! IPFS both ways: a blob whose digest has a CID record in Redis is fetched from an IPFS path
//! gateway before the upstream registry (and verified like any source by the caller), and a
//! blob that came from upstream is added to a kubo-compatible node and its CID recorded, so
//! that other nodes fetch it from each other. Knows Redis and HTTP, not the cache.

mod api;
mod record;

use std::time::Duration;

pub use api::{BlobStream, IpfsApi, ADD_OPTIONS};
pub use record::{CidRecord, ParseCidRecordError};


use crate::oci::Digest;
use crate::redis_client::{RedisClient, RedisError};

/// What the configuration says of IPFS (`ipfs.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfsSettings {
    /// A path gateway (`http://127.0.0.1:8080`) read before upstream; `None`: never read.
    pub gateway: Option<String>,
    /// A kubo RPC API (`http://127.0.0.1:5001`) blobs from upstream are added to; `None`:
    /// nothing is published.
    pub api: Option<String>,
    /// How long a CID record lives in Redis.
    pub cid_ttl: Duration,
    /// How long a read from the gateway may take, start to end, before upstream is asked.
    pub gateway_timeout: Duration,
    /// How long one publication may take.
    pub publish_timeout: Duration,
    /// Blobs waiting for publication on one core, at most; more are skipped and counted.
    pub publish_queue: usize,
    /// How long a node waits for a blob another node is bringing in from upstream to appear
    /// in IPFS before it asks upstream itself; zero: never waits.
    pub peer_wait: Duration,
    /// How long a node's claim on bringing a blob in from upstream lasts at most (it is given
    /// back once the blob is published, or the fetch failed).
    pub claim_ttl: Duration,
}

/// How often a node waiting for a peer's publication looks at Redis.
const PEER_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum IpfsError {
    #[error("ipfs: {0}")]
    Config(String),
    #[error("IPFS API unreachable: {0}")]
    Connect(String),
    #[error("IPFS API connection broke: {0}")]
    Broken(String),
    #[error("IPFS API refused (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("IPFS API answered something unusable: {0}")]
    Invalid(String),
    #[error("IPFS API timed out ({0})")]
    TimedOut(&'static str),
    #[error("recording the CID in Redis: {0}")]
    Redis(#[from] RedisError),
}

/// This node's claim on bringing a blob in from upstream for the fleet; given back (only if
/// still this node's) when dropped: after the publication, a failed fetch, or a shutdown.
pub struct Claim {
    key: String,
    node: String,
    redis: RedisClient,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.redis.delete_if_equals_detached(&self.key, std::mem::take(&mut self.node).into_bytes());
    }
}

/// Where a blob can be read from IPFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub url: String,
    pub record: CidRecord,
}

/// This node's IPFS: the gateway it reads from, the API it publishes to, and the CID records
/// in Redis that connect digests to both.
#[derive(Clone)]
pub struct Ipfs {
    settings: IpfsSettings,
    gateway: Option<String>,
    api: Option<IpfsApi>,
    redis: RedisClient,
    /// This node's name in the claims it holds.
    node: String,
}

impl Ipfs {
    /// # Errors
    /// The API URL cannot be used.
    pub fn new(settings: IpfsSettings, redis: RedisClient) -> Result<Ipfs, IpfsError> {
        let api = settings.api.as_deref().map(|url| IpfsApi::new(url, Duration::from_secs(5))).transpose()?;
        let gateway = settings.gateway.as_deref().map(|url| url.trim_end_matches('/').to_owned());
        let node = format!("{:016x}", fastrand::u64(..));
        Ok(Ipfs { settings, gateway, api, redis, node })
    }

    pub fn settings(&self) -> &IpfsSettings {
        &self.settings
    }

    /// Whether blobs are published (an API is configured).
    pub fn publishes(&self) -> bool {
        self.api.is_some()
    }

    /// Where the gateway serves `digest`, if Redis names its CID. Redis trouble is "not
    /// known" (the blob then comes from upstream), logged at debug; a malformed record is
    /// deleted, so that it costs no node a lookup again.
    pub async fn locate(&self, digest: &Digest) -> Option<Located> {
        let gateway = self.gateway.as_ref()?;
        let key = self.redis.keys().cid(&digest.to_string());
        let value = match self.redis.get(&key).await {
            Ok(value) => value?,
            Err(error) => {
                tracing::debug!(%digest, %error, "no CID lookup");
                return None;
            }
        };
        match CidRecord::decode(&value) {
            Ok(record) => Some(Located { url: format!("{gateway}/ipfs/{}", record.cid), record }),
            Err(error) => {
                self.forget(digest, &error.to_string()).await;
                None
            }
        }
    }

    /// Deletes the CID record of `digest` because of `reason` (it names other bytes, or is
    /// malformed): no node should be sent to it again.
    pub async fn forget(&self, digest: &Digest, reason: &str) {
        let key = self.redis.keys().cid(&digest.to_string());
        match self.redis.delete(&key).await {
            Ok(_) => tracing::warn!(%digest, reason, key, "CID record deleted"),
            Err(error) => tracing::warn!(%digest, reason, %error, "a bad CID record could not be deleted"),
        }
    }

    /// Whether Redis already names a CID for `digest`.
    ///
    /// # Errors
    /// Redis cannot be asked.
    pub async fn has_record(&self, digest: &Digest) -> Result<bool, RedisError> {
        Ok(self.redis.get(&self.redis.keys().cid(&digest.to_string())).await?.is_some())
    }

    /// Claims, for every node, bringing `digest` in from upstream (this node then publishes
    /// it): the claim, given back when it is dropped; `None` if another node holds it, or
    /// Redis cannot say (then nobody waits for this node).
    pub async fn claim(&self, digest: &Digest) -> Option<Claim> {
        let key = self.redis.keys().fill_lease(&digest.to_string());
        let taken = self.redis.set_if_absent(&key, self.node.clone().into_bytes(), self.settings.claim_ttl).await.unwrap_or(false);
        taken.then(|| Claim { key, node: self.node.clone(), redis: self.redis.clone() })
    }

    /// While another node holds the claim on `digest` (it is bringing it in from upstream to
    /// publish it), waits for its record, at most `peer_wait`: where to read it once it
    /// appears; `None` when this node reads no gateway, no node holds a claim, the claim went
    /// without a record, or the wait ran out (the caller then asks upstream itself).
    pub async fn wait_for_peer(&self, digest: &Digest) -> Option<Located> {
        self.gateway.as_ref()?;
        let claim = self.redis.keys().fill_lease(&digest.to_string());
        let started = std::time::Instant::now();
        loop {
            if let Some(located) = self.locate(digest).await {
                return Some(located);
            }
            let held = matches!(self.redis.get(&claim).await, Ok(Some(holder)) if holder != self.node.as_bytes());
            if !held || started.elapsed() >= self.settings.peer_wait {
                if held {
                    tracing::info!(%digest, waited_ms = started.elapsed().as_millis() as u64, "a peer is still bringing the blob in; asking upstream too");
                }
                return None;
            }
            glommio::timer::sleep(PEER_POLL).await;
        }
    }

    /// Adds `size` bytes of `digest` from `blob` to the node behind the API and records the
    /// CID in Redis for `cid_ttl`; returns the CID.
    ///
    /// # Errors
    /// No API is configured, the add failed, or Redis did not take the record.
    pub async fn publish(&self, digest: &Digest, size: u64, blob: BlobStream) -> Result<String, IpfsError> {
        let api = self.api.as_ref().ok_or_else(|| IpfsError::Config("no `ipfs.api` to publish to".into()))?;
        let name = digest.to_string().replace(':', "-");
        let cid = within_or(self.settings.publish_timeout, api.add(&name, size, blob)).await?;
        let record = CidRecord { cid: cid.clone(), size: Some(size) };
        self.redis.set(&self.redis.keys().cid(&digest.to_string()), record.encode(), Some(self.settings.cid_ttl)).await?;
        Ok(cid)
    }
}

async fn within_or<T>(limit: Duration, future: impl std::future::Future<Output = Result<T, IpfsError>>) -> Result<T, IpfsError> {
    crate::clock::within(limit, future).await.unwrap_or(Err(IpfsError::TimedOut("the whole add")))
}
