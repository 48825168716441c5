//! The referrers API (end-12) for every kind of name: a local repository answers from its
//! record, a mirror from upstream's API or, where upstream has none, its referrers tag, and a
//! composed image has none. Never a 404 for a known name; pages bounded in size.

use std::ops::Bound;

use bytes::Bytes;

use super::error::RegistryError;
use super::mirror::ACCEPT_ALL_MANIFESTS;
use super::{Registry, Source};
use crate::oci::manifest::{Descriptor, ImageIndex};
use crate::oci::media_type::{self, ManifestKind};
use crate::oci::referrers::{fallback_tag, passes, IndexPage, REFERRERS_PAGE_MAX_BYTES};
use crate::oci::{Digest, RepositoryName};
use crate::upstream::{referrers_path, RemoteRepository, UpstreamError, UpstreamReferrers};

/// One page of a subject's referrers, as the client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrersPage {
    /// The image index to send.
    pub index: Bytes,
    /// The `artifactType` filter was applied (`OCI-Filters-Applied: artifactType`).
    pub filtered: bool,
    /// The token of the next page (our `Link`'s `last`), when more follow. Opaque to clients:
    /// a digest for lists we page ourselves, upstream's path for upstream's pages.
    pub next: Option<String>,
}

impl Registry {
    /// The referrers of `digest` in `name`: the manifests there whose `subject` is `digest`,
    /// those of `artifact_type` only when it is given, from the page after `last` (a token of
    /// an earlier page's `next`). A digest nothing refers to, whether or not it exists, has an
    /// empty list ("If a query results in no matching referrers, an empty manifest list MUST be
    /// returned").
    ///
    /// A composed image's referrers are always none: its manifest is made here and signed or
    /// described by nobody, and the base image's referrers name the base's digest, not the
    /// composed one (which `subject` they would have to carry).
    ///
    /// # Errors
    /// Unknown name, a denied mirror, a page token that is not ours, or an upstream failure.
    pub async fn referrers(&self, name: &RepositoryName, digest: &Digest, artifact_type: Option<&str>, last: Option<&str>, ns: Option<&str>) -> Result<ReferrersPage, RegistryError> {
        let filtered = artifact_type.is_some();
        match self.source(name, ns).await? {
            Source::Local(repo) => {
                let repo = self.refresh_unless(name, repo, |r| r.record.referrers.contains_key(digest)).await?;
                let after = last.map(page_token_digest).transpose()?;
                let listed = repo.record.referrers.get(digest);
                let descriptors = listed.into_iter().flat_map(|by_digest| by_digest.range::<Digest, _>((after.as_ref().map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded)).map(|(_, d)| d));
                let (index, next) = page(descriptors, artifact_type, REFERRERS_PAGE_MAX_BYTES);
                Ok(ReferrersPage { index, filtered, next })
            }
            Source::Composed(_) => Ok(ReferrersPage { index: Bytes::from(IndexPage::empty()), filtered, next: None }),
            Source::Mirror(remote) => self.mirrored_referrers(&remote, digest, artifact_type, last).await,
        }
    }

    /// A mirror's referrers: upstream's API page by page; where upstream has no API, the index
    /// its referrers tag holds, as clients fall back ("If the referrers API returns a 404, the
    /// client MUST fallback to pulling the referrers tag schema"). The tag's descriptors are
    /// listed as upstream keeps them: checking each one's `subject` would cost a manifest fetch
    /// per referrer, and the clients that maintain the tag are the ones that read it.
    async fn mirrored_referrers(&self, remote: &RemoteRepository, digest: &Digest, artifact_type: Option<&str>, last: Option<&str>) -> Result<ReferrersPage, RegistryError> {
        let upstream = self.remote.upstream();
        let first_page = referrers_path(remote, &digest.to_string(), None);
        let page_path = match last {
            // A later page of the tag's index, which we page by digest.
            Some(token) if !token.starts_with('/') => return self.fallback_referrers(remote, digest, artifact_type, Some(page_token_digest(token)?)).await,
            Some(path) if same_endpoint(path, &first_page) => Some(path),
            Some(other) => return Err(RegistryError::PageTokenInvalid(format!("`{other}` is no page of these referrers"))),
            None => None,
        };
        let answer = upstream.referrers(remote, &digest.to_string(), artifact_type, page_path).await.map_err(|e| upstream_error(remote, e))?;
        let (body, upstream_filtered, next) = match answer {
            UpstreamReferrers::Listed { body, filtered, next } => (body, filtered, next),
            UpstreamReferrers::Unsupported if page_path.is_none() => return self.fallback_referrers(remote, digest, artifact_type, None).await,
            UpstreamReferrers::Unsupported => return Err(invalid(remote, "the referrers API went away between two pages".into())),
        };
        let index: ImageIndex = serde_json::from_slice(&body).map_err(|e| invalid(remote, format!("referrers of {digest} are not an image index: {e}")))?;
        // Upstream's page is at most a manifest's size (the read limit), and ours no larger.
        let wanted = if upstream_filtered { None } else { artifact_type };
        let (index, _) = page(index.manifests.iter(), wanted, usize::MAX);
        let next = next.filter(|path| {
            let ours = same_endpoint(path, &first_page);
            if !ours {
                tracing::warn!(%remote, link = %path, "upstream links a next page of referrers elsewhere; not followed");
            }
            ours
        });
        Ok(ReferrersPage { index, filtered: artifact_type.is_some(), next })
    }

    /// The referrers upstream keeps under the referrers tag of `digest`, after `after`.
    async fn fallback_referrers(&self, remote: &RemoteRepository, digest: &Digest, artifact_type: Option<&str>, after: Option<Digest>) -> Result<ReferrersPage, RegistryError> {
        let tag = fallback_tag(digest);
        let fetched = match self.remote.upstream().manifest(remote, tag.as_str(), ACCEPT_ALL_MANIFESTS).await {
            Ok(fetched) => Some(fetched),
            Err(UpstreamError::NotFound { code: Some(code), .. }) if code == "NAME_UNKNOWN" => return Err(RegistryError::UpstreamNameUnknown(remote.to_string())),
            Err(UpstreamError::NotFound { .. }) => None,
            Err(other) => return Err(upstream_error(remote, other)),
        };
        let mut descriptors: Vec<Descriptor> = match fetched {
            Some(fetched) if media_type::manifest_kind(&fetched.media_type) == Some(ManifestKind::Index) || crate::oci::manifest::sniff_media_type(&fetched.bytes).as_deref() == Some(media_type::OCI_INDEX) => {
                let index: ImageIndex = serde_json::from_slice(&fetched.bytes).map_err(|e| invalid(remote, format!("tag {tag} is not an image index: {e}")))?;
                index.manifests
            }
            Some(other) => {
                // Someone else's use of the tag name: it holds no referrers list.
                tracing::debug!(%remote, %tag, media_type = %other.media_type, "the referrers tag holds no index");
                Vec::new()
            }
            None => Vec::new(),
        };
        descriptors.sort_by(|a, b| a.digest.cmp(&b.digest));
        descriptors.dedup_by(|a, b| a.digest == b.digest);
        let start = after.map_or(0, |after| descriptors.partition_point(|d| d.digest <= after));
        let (index, next) = page(descriptors[start..].iter(), artifact_type, REFERRERS_PAGE_MAX_BYTES);
        Ok(ReferrersPage { index, filtered: artifact_type.is_some(), next })
    }
}

/// An index of the descriptors that pass `wanted`, up to `max_bytes`; and the token of the next
/// page (the last digest sent) when the rest did not fit.
fn page<'a>(descriptors: impl IntoIterator<Item = &'a Descriptor>, wanted: Option<&str>, max_bytes: usize) -> (Bytes, Option<String>) {
    let mut index = IndexPage::new(max_bytes);
    let mut last_sent: Option<&Digest> = None;
    for descriptor in descriptors.into_iter().filter(|d| passes(d, wanted)) {
        if !index.push(descriptor) {
            return (Bytes::from(index.finish()), last_sent.map(Digest::to_string));
        }
        last_sent = Some(&descriptor.digest);
    }
    (Bytes::from(index.finish()), None)
}

fn page_token_digest(token: &str) -> Result<Digest, RegistryError> {
    token.parse().map_err(|_| RegistryError::PageTokenInvalid(format!("`{token}` is no page of these referrers")))
}

/// Whether `path` is a page of the endpoint whose first page is `first` (same path, any query):
/// a token can only ever make us ask upstream for the referrers it was made for.
fn same_endpoint(path: &str, first: &str) -> bool {
    path.split_once('?').map_or(path, |(path, _)| path) == first
}

fn upstream_error(remote: &RemoteRepository, error: UpstreamError) -> RegistryError {
    match error {
        UpstreamError::NotFound { .. } => RegistryError::UpstreamNameUnknown(remote.to_string()),
        other => RegistryError::Upstream { remote: remote.to_string(), error: other },
    }
}

fn invalid(remote: &RemoteRepository, reason: String) -> RegistryError {
    RegistryError::Upstream { remote: remote.to_string(), error: UpstreamError::Invalid { host: remote.host.clone(), reason } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(n: usize, annotation_bytes: usize) -> Vec<Descriptor> {
        let mut list: Vec<Descriptor> = (0..n)
            .map(|i| {
                let mut d = Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256_of(i.to_string().as_bytes()), 100);
                d.annotations = Some([("a".to_owned(), "x".repeat(annotation_bytes))].into());
                d.extra.insert("artifactType".into(), if i % 2 == 0 { "even" } else { "odd" }.into());
                d
            })
            .collect();
        list.sort_by(|a, b| a.digest.cmp(&b.digest));
        list
    }

    #[test]
    fn a_list_larger_than_a_page_is_paged_by_digest_and_each_page_fits() {
        let all = descriptors(7, 1 << 20);
        let mut sent = Vec::new();
        let mut start = 0;
        loop {
            let (body, next) = page(all[start..].iter(), None, REFERRERS_PAGE_MAX_BYTES);
            assert!(body.len() <= REFERRERS_PAGE_MAX_BYTES);
            let index: ImageIndex = serde_json::from_slice(&body).unwrap();
            assert!(!index.manifests.is_empty());
            sent.extend(index.manifests);
            let Some(token) = next else { break };
            let after = page_token_digest(&token).unwrap();
            start = all.partition_point(|d| d.digest <= after);
        }
        assert_eq!(sent, all, "every referrer once, in order");
    }

    #[test]
    fn the_filter_applies_before_paging() {
        let all = descriptors(6, 0);
        let (body, next) = page(all.iter(), Some("odd"), REFERRERS_PAGE_MAX_BYTES);
        let index: ImageIndex = serde_json::from_slice(&body).unwrap();
        assert_eq!(index.manifests.len(), 3);
        assert!(next.is_none());
    }

    #[test]
    fn page_tokens_only_reach_the_same_endpoint() {
        let first = "/v2/team/app/referrers/sha256:ab";
        assert!(same_endpoint(first, first));
        assert!(same_endpoint("/v2/team/app/referrers/sha256:ab?last=x&n=3", first));
        assert!(!same_endpoint("/v2/team/app/manifests/latest?x=/v2/team/app/referrers/sha256:ab", first));
        assert!(!same_endpoint("/v2/other/referrers/sha256:ab", first));
        assert!(page_token_digest("not-a-digest").is_err());
    }
}
