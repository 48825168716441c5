//! The image references blobserve URLs and pre-pull lists name: `[host[:port]/]name:tag` or
//! `[host[:port]/]name@digest`. A tag or digest is required (no implied `latest`); a first
//! component with a `.` or `:` or that is `localhost` is a registry host (docker's rule),
//! reached through the mirror configured for it; without one the name is the facade's own.

use std::fmt;
use std::str::FromStr;

use crate::oci::{Reference, RepositoryName, Tag};
use crate::registry::PrefetchRef;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobserveRef {
    pub host: Option<String>,
    pub name: RepositoryName,
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse image `{text}`: {reason}")]
pub struct ParseBlobserveRefError {
    text: String,
    reason: String,
}

fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

impl BlobserveRef {
    /// The repository as the `repos` configuration names it: `host/name`, or the name.
    pub fn repo_key(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}/{}", self.name),
            None => self.name.to_string(),
        }
    }

    pub fn is_digest(&self) -> bool {
        matches!(self.reference, Reference::Digest(_))
    }
}

/// A prefetched image as blobserve names it: a served name as it is, an upstream image by
/// its host (reached through the mirror of that host).
impl From<&PrefetchRef> for BlobserveRef {
    fn from(reference: &PrefetchRef) -> BlobserveRef {
        match reference {
            PrefetchRef::Served { name, reference } => BlobserveRef { host: None, name: name.clone(), reference: reference.clone() },
            PrefetchRef::Upstream(image) => BlobserveRef { host: Some(image.host.clone()), name: image.repository.clone(), reference: image.reference.clone() },
        }
    }
}

impl FromStr for BlobserveRef {
    type Err = ParseBlobserveRefError;

    fn from_str(text: &str) -> Result<BlobserveRef, ParseBlobserveRefError> {
        let error = |reason: String| ParseBlobserveRefError { text: text.to_owned(), reason };
        let (named, reference) = match text.split_once('@') {
            Some((named, digest)) => (named, Reference::Digest(digest.parse().map_err(|e| error(format!("{e}")))?)),
            None => match text.rsplit_once(':') {
                Some((named, tag)) if !tag.contains('/') => (named, Reference::Tag(tag.parse::<Tag>().map_err(|e| error(format!("{e}")))?)),
                _ => return Err(error("tag is missing".into())),
            },
        };
        let (host, path) = match named.split_once('/') {
            Some((first, rest)) if is_host(first) => (Some(first.to_owned()), rest),
            _ => (None, named),
        };
        if host.as_deref().is_some_and(|h| !h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))) {
            return Err(error("bad registry host".into()));
        }
        let name = path.parse::<RepositoryName>().map_err(|e| error(format!("{e}")))?;
        Ok(BlobserveRef { host, name, reference })
    }
}

impl fmt::Display for BlobserveRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.is_digest() { "@" } else { ":" };
        write!(f, "{}{separator}{}", self.repo_key(), self.reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_round_trip_and_name_their_repository() {
        for (text, repo) in [
            ("team/ide:1.2.3", "team/ide"),
            ("127.0.0.1:5001/team/ide:v1", "127.0.0.1:5001/team/ide"),
            ("eu.gcr.io/gitpod/build/ide/code:commit-abc", "eu.gcr.io/gitpod/build/ide/code"),
            ("remote/ws-1:latest", "remote/ws-1"),
        ] {
            let parsed: BlobserveRef = text.parse().unwrap();
            assert_eq!((parsed.to_string().as_str(), parsed.repo_key().as_str()), (text, repo));
        }
        let pinned: BlobserveRef = format!("localhost:5000/ide@{D}").parse().unwrap();
        assert!(pinned.is_digest());
        assert_eq!(pinned.host.as_deref(), Some("localhost:5000"));
    }

    #[test]
    fn a_tag_or_digest_is_required_and_names_are_validated() {
        for bad in ["team/ide", "127.0.0.1:5001/ide", "Team/ide:1", "ide:", "ide@sha256:zz", "ho st.io/ide:1", "a//b:1"] {
            assert!(bad.parse::<BlobserveRef>().is_err(), "{bad}");
        }
    }
}
