//! The whole Redis key schema in one place: every key the facade reads or writes is made here,
//! with its TTL. docs/redis.md lists the keys, their values and who writes them.

use std::time::Duration;

/// Specs written through the admin API expire after a week unless rewritten.
pub const SPEC_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Compositions made only of digests are shared for a week.
pub const COMPOSED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }

    pub fn spec(&self, id: &str) -> String {
        format!("{}spec:{id}", self.prefix)
    }

    pub fn composed(&self, spec_key: &str, static_revision: &str) -> String {
        format!("{}composed:{spec_key}:{static_revision}", self.prefix)
    }

    pub fn tag(&self, host: &str, repo: &str, tag: &str) -> String {
        format!("{}tag:{host}/{repo}:{tag}", self.prefix)
    }

    pub fn cid(&self, digest: &str) -> String {
        format!("{}cid:{digest}", self.prefix)
    }

    /// Held by the node bringing a blob in from upstream to publish it to IPFS.
    pub fn fill_lease(&self, digest: &str) -> String {
        format!("{}fill:{digest}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema() {
        let keys = Keys::new("rf:");
        assert_eq!(keys.spec("ws-1"), "rf:spec:ws-1");
        assert_eq!(keys.cid("sha256:ab"), "rf:cid:sha256:ab");
        assert_eq!(keys.tag("docker.io", "library/ubuntu", "22.04"), "rf:tag:docker.io/library/ubuntu:22.04");
        assert_eq!(keys.composed("sha256:a", "sha256:b"), "rf:composed:sha256:a:sha256:b");
    }
}
