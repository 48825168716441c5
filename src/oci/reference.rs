//! The `<reference>` of a manifest route: a tag or a digest.
//! Anything with a `:` is read as a digest, because a tag can never contain one.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, ParseDigestError};
use super::name::{ParseTagError, Tag};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseReferenceError {
    #[error("invalid digest: {0}")]
    Digest(#[from] ParseDigestError),
    #[error("invalid tag: {0}")]
    Tag(#[from] ParseTagError),
}

impl FromStr for Reference {
    type Err = ParseReferenceError;

    fn from_str(s: &str) -> Result<Reference, ParseReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(f),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_or_digest() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(d.parse::<Reference>().unwrap().to_string(), d);
        assert!(matches!(
            "sha256:totallywrong".parse::<Reference>(),
            Err(ParseReferenceError::Digest(_))
        ));
        assert!(matches!("a/b".parse::<Reference>(), Err(ParseReferenceError::Tag(_))));
    }
}
