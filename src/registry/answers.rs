//! What the registry hands out: a blob's reply (cached, filling, inline, a redirect), a page
//! of tags, what writing a spec did. Plain values: no HTTP types, the answer's shape only.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use futures_lite::Stream;

use super::content::{DigestText, MappedBlob};
use super::error::RegistryError;
use super::fill::{BlobChunk, Fill};
use crate::oci::RepositoryName;
use crate::upstream::{TagPage, Upstream};

/// One page of `tags/list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsPage {
    pub name: RepositoryName,
    pub tags: Vec<String>,
    /// Set when more tags follow: the `last` of the next page.
    pub next_last: Option<String>,
}

/// Where a blob comes from for one request.
pub enum BlobReply {
    /// In the cache: mapped, zero-copy.
    Cached(Arc<MappedBlob>),
    /// Being fetched from upstream; readers follow the fill.
    Filling(FillingBlob),
    /// HEAD of a blob not cached: its size as upstream says.
    Remote { size: Option<u64>, digest_text: DigestText },
    /// Bytes a composition carries (its config, direct content layers).
    Inline { bytes: bytes::Bytes, digest_text: DigestText },
    /// A remote content layer: the client fetches it from this URL.
    Redirect(String),
}

/// A blob that a fill is bringing in.
pub struct FillingBlob {
    pub(super) fill: Arc<Fill>,
    pub(super) upstream: Upstream,
    pub digest_text: DigestText,
}

impl FillingBlob {
    /// The blob's size once upstream answered (`None`: upstream does not say).
    ///
    /// # Errors
    /// The fill failed before upstream answered.
    pub async fn size(&self) -> Result<Option<u64>, RegistryError> {
        self.fill.size().await.map_err(RegistryError::Fill)
    }

    /// Waits until the blob is verified and in the cache.
    ///
    /// # Errors
    /// The fill failed, or served the blob without caching it.
    pub async fn finished(&self) -> Result<(), RegistryError> {
        self.fill.finished().await.map_err(RegistryError::Fill)
    }

    /// `range` of the blob as it arrives (or, far ahead of the fill, on its own: see
    /// `far_range`); an error ends the stream (and the response).
    pub fn stream(&self, range: Range<u64>) -> Pin<Box<dyn Stream<Item = std::io::Result<BlobChunk>>>> {
        super::far_range::stream(&self.fill, &self.upstream, range)
    }
}

/// A spec as the admin API hands it out, and what writing one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecWritten {
    /// The spec's identity (its key), which names its compositions.
    pub key: String,
    /// An earlier spec of this id was replaced.
    pub replaced: bool,
}

/// The page of `listed` after `last`, sorted, at most `n`. Trimmed here for every source: an
/// upstream may ignore `n` or `last` and send more than was asked for.
pub(super) fn tags_page(name: &RepositoryName, listed: TagPage, n: Option<usize>, last: Option<&str>) -> TagsPage {
    let mut tags: Vec<String> = listed.tags.into_iter().filter(|t| last.is_none_or(|last| t.as_str() > last)).collect();
    tags.sort();
    let limit = n.unwrap_or(usize::MAX);
    let more = listed.more || tags.len() > limit;
    tags.truncate(limit);
    let next_last = if more { tags.last().cloned() } else { None };
    TagsPage { name: name.clone(), tags, next_last }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(tags: &[&str], more: bool, n: Option<usize>, last: Option<&str>) -> (Vec<String>, Option<String>) {
        let listed = TagPage { tags: tags.iter().map(|t| t.to_string()).collect(), more };
        let page = tags_page(&"up/app".parse().unwrap(), listed, n, last);
        (page.tags, page.next_last)
    }

    #[test]
    fn tag_pages_are_trimmed_to_n_and_say_whether_more_follow() {
        let strings = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(page(&["b", "a"], false, None, None), (strings(&["a", "b"]), None));
        assert_eq!(page(&["a", "b"], true, Some(2), None), (strings(&["a", "b"]), Some("b".into())), "upstream links a next page");
        assert_eq!(page(&["c", "a", "b"], false, Some(2), None), (strings(&["a", "b"]), Some("b".into())), "upstream ignored n");
        assert_eq!(page(&["a", "b", "c"], false, Some(2), Some("a")), (strings(&["b", "c"]), None), "upstream ignored last");
    }
}
