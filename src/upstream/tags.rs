//! `tags/list` of an upstream repository: the one page a client asked for, or every page when it
//! asked for no page size. Knows nothing of how our clients are answered.

use http::header::{self, HeaderMap};
use http::Method;

use super::{header_str, RemoteRepository, Upstream, UpstreamError};
use crate::oci::route::encode_query;

/// Page size asked for when a client wants every tag.
const ALL_TAGS_PAGE_SIZE: usize = 1000;
/// Pages followed at most for a client that wants every tag (at `ALL_TAGS_PAGE_SIZE` each).
const MAX_TAG_PAGES: usize = 100;

/// Tags as upstream listed them, and whether it said that more follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagPage {
    pub tags: Vec<String>,
    /// Upstream linked a next page (`Link: <…>; rel="next"`).
    pub more: bool,
}

impl Upstream {
    /// With `n`: one page of the tags after `last`, as upstream pages them (which may be fewer or
    /// more than `n`; the caller trims). Without: every tag after `last`, following `Link`s.
    ///
    /// # Errors
    /// As `manifest`. `TooManyTagPages` when the whole list takes more than `MAX_TAG_PAGES`
    /// pages: a client that asked without `n` takes the answer as the whole list, so a list cut
    /// at a limit would hide tags without a sign; the error tells it to page with `n` instead.
    pub async fn tags(&self, repo: &RemoteRepository, n: Option<usize>, last: Option<&str>) -> Result<TagPage, UpstreamError> {
        let first = tags_path(repo, n.unwrap_or(ALL_TAGS_PAGE_SIZE), last);
        if n.is_none() {
            return self.all_tags(repo, first).await;
        }
        let (tags, next) = self.tag_page(repo, &first).await?;
        Ok(TagPage { tags, more: next.is_some() })
    }

    async fn all_tags(&self, repo: &RemoteRepository, mut path: String) -> Result<TagPage, UpstreamError> {
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let (page, next) = self.tag_page(repo, &path).await?;
            tags.extend(page);
            match next {
                Some(next) => path = next,
                None => return Ok(TagPage { tags, more: false }),
            }
        }
        Err(UpstreamError::TooManyTagPages { host: repo.host.clone(), pages: MAX_TAG_PAGES })
    }

    /// The tags of the page at `path`, and the path of the next page if upstream links one.
    async fn tag_page(&self, repo: &RemoteRepository, path: &str) -> Result<(Vec<String>, Option<String>), UpstreamError> {
        let stall = self.shared.settings.read_timeout;
        let (next, body) = self
            .with_retries(&repo.host, || async {
                let exchange = self.registry_exchange(repo, &Method::GET, path, HeaderMap::new()).await?;
                let next = header_str(&exchange.headers, header::LINK).and_then(|link| next_link(&link));
                Ok((next, exchange.body.collect(crate::oci::manifest::MAX_MANIFEST_BYTES, stall).await?))
            })
            .await?;
        let invalid = || UpstreamError::Invalid { host: repo.host.clone(), reason: "tags/list is not JSON".into() };
        let page: serde_json::Value = serde_json::from_slice(&body).map_err(|_| invalid())?;
        let tags = page["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
        Ok((tags, next))
    }
}

/// The path of the `tags/list` page of at most `n` tags after `last`.
fn tags_path(repo: &RemoteRepository, n: usize, last: Option<&str>) -> String {
    let n = n.to_string();
    let mut query = vec![("n", n.as_str())];
    query.extend(last.map(|last| ("last", last)));
    format!("/v2/{}/tags/list?{}", repo.path, encode_query(&query))
}

/// The target of `Link: <…>; rel="next"`, as a path.
pub(super) fn next_link(link: &str) -> Option<String> {
    let target = link.split(';').next()?.trim().strip_prefix('<')?.strip_suffix('>')?;
    let uri: http::Uri = target.parse().ok()?;
    uri.path_and_query().map(|p| p.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        assert_eq!(next_link(r#"<https://r.example/v2/a/tags/list?last=b>; rel="next""#).as_deref(), Some("/v2/a/tags/list?last=b"));
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn page_paths_carry_n_and_an_encoded_last() {
        let repo = RemoteRepository { host: "r.example".into(), path: "team/app".into() };
        assert_eq!(tags_path(&repo, 1000, None), "/v2/team/app/tags/list?n=1000");
        assert_eq!(tags_path(&repo, 2, Some("v1.0-rc_1")), "/v2/team/app/tags/list?n=2&last=v1.0-rc_1");
        assert_eq!(tags_path(&repo, 2, Some("a&n=9 b/é")), "/v2/team/app/tags/list?n=2&last=a%26n%3D9%20b%2F%C3%A9");
    }
}
