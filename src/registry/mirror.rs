//! Mirror mode's tables: which names reach which upstream registry (`mirror/<alias>/<repo>`,
//! or containerd's `?ns=<host>` for a host the configuration mirrors; anything else is denied
//! before any connection is made), and the tag → digest answers cached for a short time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::error::RegistryError;
use crate::oci::{Digest, RepositoryName};
use crate::table::SharedMap;
use crate::upstream::RemoteRepository;

/// What every mirrored manifest is fetched with: all manifest types, so the answer can be
/// cached once and negotiated locally for each client.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Default)]
pub struct MirrorSettings {
    /// Alias → registry host (`{"hub": "docker.io"}`).
    pub aliases: BTreeMap<String, String>,
    /// How long a tag's digest is trusted before asking upstream again.
    pub tag_ttl: Duration,
}

struct TagAnswer {
    digest: Digest,
    fetched_at_ms: u64,
}

/// A tag's digest as cached: fresh (use it) or stale (use it only if upstream fails).
pub enum CachedTag {
    Fresh(Digest),
    Stale(Digest),
}

/// Which names are mirrored, and from where.
pub struct MirrorRoutes {
    aliases: BTreeMap<String, String>,
    hosts: BTreeSet<String>,
}

impl MirrorRoutes {
    pub fn new(settings: &MirrorSettings) -> MirrorRoutes {
        MirrorRoutes { hosts: settings.aliases.values().cloned().collect(), aliases: settings.aliases.clone() }
    }

    /// The upstream repository a request means, `None` for a local name.
    ///
    /// # Errors
    /// `Denied` for an alias or `ns` host that is not configured: the facade is no open proxy.
    pub fn route(&self, name: &RepositoryName, ns: Option<&str>) -> Result<Option<RemoteRepository>, RegistryError> {
        if let Some(host) = ns {
            if !self.hosts.contains(host) {
                return Err(RegistryError::Denied(format!("registry `{host}` is not mirrored here")));
            }
            return Ok(Some(RemoteRepository::new(host, name.as_str())));
        }
        let Some(rest) = name.as_str().strip_prefix("mirror/") else { return Ok(None) };
        let (alias, repo) = rest.split_once('/').ok_or_else(|| RegistryError::Denied(format!("`{name}` names no repository after the mirror alias")))?;
        let host = self.aliases.get(alias).ok_or_else(|| RegistryError::Denied(format!("mirror alias `{alias}` is not configured")))?;
        Ok(Some(RemoteRepository::new(host, repo)))
    }
}

/// Upstream's answers for tags, each trusted for the tag TTL.
pub struct TagCache {
    ttl_ms: u64,
    tags: SharedMap<(RemoteRepository, String), Arc<TagAnswer>>,
}

impl TagCache {
    pub fn new(ttl: Duration) -> TagCache {
        TagCache { ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX), tags: SharedMap::new() }
    }

    pub fn cached_tag(&self, remote: &RemoteRepository, tag: &str, now_ms: u64) -> Option<CachedTag> {
        let answer = self.tags.get(&(remote.clone(), tag.to_owned()))?;
        let fresh = now_ms.saturating_sub(answer.fetched_at_ms) < self.ttl_ms;
        Some(if fresh { CachedTag::Fresh(answer.digest.clone()) } else { CachedTag::Stale(answer.digest.clone()) })
    }

    /// Drops a tag's cached digest: upstream said the tag is gone or no longer ours to see.
    pub fn forget_tag(&self, remote: &RemoteRepository, tag: &str) {
        self.tags.remove(&(remote.clone(), tag.to_owned()));
    }

    pub fn remember_tag(&self, remote: &RemoteRepository, tag: &str, digest: Digest, now_ms: u64) {
        self.tags.insert((remote.clone(), tag.to_owned()), Arc::new(TagAnswer { digest, fetched_at_ms: now_ms }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors() -> MirrorRoutes {
        let mut aliases = BTreeMap::new();
        aliases.insert("hub".to_owned(), "docker.io".to_owned());
        aliases.insert("local".to_owned(), "127.0.0.1:5001".to_owned());
        MirrorRoutes::new(&MirrorSettings { aliases, tag_ttl: Duration::from_secs(30) })
    }

    fn name(text: &str) -> RepositoryName {
        text.parse().unwrap()
    }

    #[test]
    fn routes_aliases_and_ns_and_denies_the_rest() {
        let m = mirrors();
        assert_eq!(m.route(&name("mirror/hub/ubuntu"), None).unwrap(), Some(RemoteRepository::new("docker.io", "library/ubuntu")));
        assert_eq!(m.route(&name("mirror/local/a/b"), None).unwrap().unwrap().to_string(), "127.0.0.1:5001/a/b");
        assert_eq!(m.route(&name("team/app"), Some("127.0.0.1:5001")).unwrap().unwrap().path, "team/app");
        assert!(m.route(&name("team/app"), None).unwrap().is_none(), "local names stay local");
        for (n, ns) in [("mirror/evil/x", None), ("mirror/hub", None), ("team/app", Some("evil.example"))] {
            assert!(matches!(m.route(&name(n), ns), Err(RegistryError::Denied(_))), "{n} {ns:?}");
        }
    }

    #[test]
    fn tags_go_stale() {
        let m = TagCache::new(Duration::from_secs(30));
        let remote = RemoteRepository::new("docker.io", "x");
        let now = 1_000;
        m.remember_tag(&remote, "latest", Digest::sha256_of(b"m"), now);
        assert!(matches!(m.cached_tag(&remote, "latest", now + 29_999), Some(CachedTag::Fresh(_))));
        assert!(matches!(m.cached_tag(&remote, "latest", now + 30_000), Some(CachedTag::Stale(_))));
        assert!(m.cached_tag(&remote, "other", now).is_none());
        m.forget_tag(&remote, "latest");
        assert!(m.cached_tag(&remote, "latest", now).is_none());
    }
}
