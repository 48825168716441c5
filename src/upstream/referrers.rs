//! The referrers API of an upstream registry (`GET /v2/<name>/referrers/<digest>`): one page as
//! upstream sends it, or word that upstream has no such API (then the caller reads the
//! referrers tag schema instead). Knows nothing of how our clients are answered.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

use super::tags::next_link;
use super::{header_str, RemoteRepository, Upstream, UpstreamError};
use crate::oci::media_type;
use crate::oci::route::encode_query;

/// What upstream said about a subject's referrers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamReferrers {
    /// A page of the list: an image index as upstream sent it (not yet checked).
    Listed {
        body: Bytes,
        /// Upstream applied the `artifactType` filter (`OCI-Filters-Applied`).
        filtered: bool,
        /// The path (and query) of the next page, when upstream links one.
        next: Option<String>,
    },
    /// Upstream has no referrers API: it answered 404 without `NAME_UNKNOWN`, 405 or 501.
    Unsupported,
}

impl Upstream {
    /// One page of the referrers of `digest` in `repo`: the first (asking upstream to filter by
    /// `artifact_type`), or the one at `page`, a path upstream linked earlier.
    ///
    /// # Errors
    /// As `manifest`; a 404 whose error code is `NAME_UNKNOWN` stays `NotFound` (the repository
    /// does not exist, which a registry with the API says so).
    pub async fn referrers(&self, repo: &RemoteRepository, digest: &str, artifact_type: Option<&str>, page: Option<&str>) -> Result<UpstreamReferrers, UpstreamError> {
        let path = match page {
            Some(page) => page.to_owned(),
            None => referrers_path(repo, digest, artifact_type),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(media_type::OCI_INDEX));
        let stall = self.shared.settings.read_timeout;
        let answer = self
            .with_retries(&repo.host, || async {
                let exchange = self.registry_exchange(repo, &Method::GET, &path, headers.clone()).await?;
                let filtered = header_str(&exchange.headers, crate::oci::referrers::FILTERS_APPLIED_HEADER)
                    .is_some_and(|applied| applied.split(',').any(|filter| filter.trim() == "artifactType"));
                let next = header_str(&exchange.headers, header::LINK).and_then(|link| next_link(&link));
                let body = exchange.body.collect(crate::oci::manifest::MAX_MANIFEST_BYTES, stall).await?;
                Ok(UpstreamReferrers::Listed { body, filtered, next })
            })
            .await;
        match answer {
            Err(UpstreamError::NotFound { code, .. }) if code.as_deref() != Some("NAME_UNKNOWN") => Ok(UpstreamReferrers::Unsupported),
            Err(UpstreamError::BadStatus { status: 405 | 501, .. }) => Ok(UpstreamReferrers::Unsupported),
            other => other,
        }
    }
}

/// The path of the first page of `digest`'s referrers, filtered by `artifact_type`.
pub fn referrers_path(repo: &RemoteRepository, digest: &str, artifact_type: Option<&str>) -> String {
    let base = format!("/v2/{}/referrers/{digest}", repo.path);
    match artifact_type {
        Some(wanted) => format!("{base}?{}", encode_query(&[("artifactType", wanted)])),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pages_carry_the_filter_encoded() {
        let repo = RemoteRepository { host: "r.example".into(), path: "team/app".into() };
        assert_eq!(referrers_path(&repo, "sha256:ab", None), "/v2/team/app/referrers/sha256:ab");
        assert_eq!(referrers_path(&repo, "sha256:ab", Some("application/vnd.x+json")), "/v2/team/app/referrers/sha256:ab?artifactType=application%2Fvnd.x%2Bjson");
    }
}
