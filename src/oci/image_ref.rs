//! Image references as users write them: `[host[:port]/]path[:tag][@digest]`. The first
//! component is a registry host if it has a `.` or `:` or is `localhost` (docker's rule);
//! otherwise the image is on `docker.io`. Without tag or digest the tag is `latest`.

use std::fmt;
use std::str::FromStr;

use super::name::RepositoryName;
use super::reference::Reference;
use super::Tag;

pub const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub host: String,
    pub repository: RepositoryName,
    /// The digest if one was given (it wins over a tag), else the tag.
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an image reference: {reason}")]
pub struct ParseImageRefError {
    text: String,
    reason: String,
}

fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// Whether `text` starts with a registry host (`host[:port]/…`), by docker's rule.
pub fn has_explicit_host(text: &str) -> bool {
    text.split_once('/').is_some_and(|(first, _)| is_host(first))
}

impl FromStr for ImageRef {
    type Err = ParseImageRefError;

    fn from_str(text: &str) -> Result<ImageRef, ParseImageRefError> {
        let error = |reason: String| ParseImageRefError { text: text.to_owned(), reason };
        let (named, digest) = match text.split_once('@') {
            Some((named, digest)) => (named, Some(digest.parse().map_err(|e| error(format!("{e}")))?)),
            None => (text, None),
        };
        let (named, tag) = match named.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag.parse::<Tag>().map_err(|e| error(format!("{e}")))?)),
            _ => (named, None),
        };
        let (host, path) = match named.split_once('/') {
            Some((first, rest)) if is_host(first) => (first.to_owned(), rest),
            _ => (DEFAULT_REGISTRY.to_owned(), named),
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(error("bad registry host".into()));
        }
        let repository = path.parse::<RepositoryName>().map_err(|e| error(format!("{e}")))?;
        let reference = match (digest, tag) {
            (Some(digest), _) => Reference::Digest(digest),
            (None, Some(tag)) => Reference::Tag(tag),
            (None, None) => Reference::Tag(Tag::latest()),
        };
        Ok(ImageRef { host, repository, reference })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}/{}:{tag}", self.host, self.repository),
            Reference::Digest(digest) => write!(f, "{}/{}@{digest}", self.host, self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_reference_forms() {
        let cases = [
            ("ubuntu", "docker.io/ubuntu:latest"),
            ("library/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
            ("ghcr.io/org/img:v1", "ghcr.io/org/img:v1"),
            ("localhost/img", "localhost/img:latest"),
            ("127.0.0.1:5000/team/app:1.0", "127.0.0.1:5000/team/app:1.0"),
            ("registry.example:5000/a/b/c", "registry.example:5000/a/b/c:latest"),
        ];
        for (text, canonical) in cases {
            assert_eq!(text.parse::<ImageRef>().unwrap().to_string(), canonical, "{text}");
        }
        let pinned: ImageRef = format!("127.0.0.1:5000/app:v1@{D}").parse().unwrap();
        assert_eq!(pinned.reference.to_string(), D, "a digest wins over a tag");
        assert_eq!(pinned.host, "127.0.0.1:5000");
    }

    #[test]
    fn bad_references() {
        for bad in ["", "UPPER/case", "img:", "img@sha256:zz", "img:bad tag", "ghcr.io/", "a//b"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }
}
