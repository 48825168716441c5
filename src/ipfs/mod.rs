//! IPFS as a blob source: a blob whose digest has a CID in Redis is fetched from an IPFS HTTP
//! gateway before the upstream registry. The gateway is not trusted: its bytes are verified like
//! any source's before they are cached or shown to a client.

use crate::redis_client::RedisClient;

#[derive(Clone)]
pub struct IpfsGateway {
    /// e.g. `http://127.0.0.1:8080` (a path gateway; use an IP, not `localhost`, which kubo
    /// redirects to subdomain gateways).
    base: String,
    redis: RedisClient,
}

impl IpfsGateway {
    pub fn new(base: &str, redis: RedisClient) -> IpfsGateway {
        IpfsGateway { base: base.trim_end_matches('/').to_owned(), redis }
    }

    /// The gateway URL of `digest`, if Redis knows its CID. Any Redis trouble is "not known"
    /// (the blob then comes from upstream), logged at debug.
    pub async fn locate(&self, digest: &str) -> Option<String> {
        match self.redis.get(&self.redis.keys().cid(digest)).await {
            Ok(Some(cid)) => {
                let cid = String::from_utf8(cid).ok()?;
                let valid = !cid.is_empty() && cid.bytes().all(|b| b.is_ascii_alphanumeric());
                if !valid {
                    tracing::warn!(digest, "ignoring a malformed CID in Redis");
                    return None;
                }
                Some(format!("{}/ipfs/{cid}", self.base))
            }
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(digest, %error, "no CID lookup");
                None
            }
        }
    }
}
