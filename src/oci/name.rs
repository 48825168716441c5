//! Repository names and tags, validated against the distribution-spec grammar.
//! A valid value can never contain `..`, `%`, control bytes or an empty path segment, which is
//! what lets lower layers map names onto directories without further checks.

use std::fmt;
use std::str::FromStr;

/// distribution caps the whole name at 255 bytes (clients cap host + name at 255 too).
pub const MAX_NAME_LEN: usize = 255;
/// Tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`: at most 128 characters.
pub const MAX_TAG_LEN: usize = 128;

/// A repository name such as `library/ubuntu` or `remote/ws-1`; any number of components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseNameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("repository name component `{0}` does not match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*")]
    BadComponent(String),
}

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components, first to last (`remote/ws-1` → `remote`, `ws-1`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Splits at the first `/` into the provider and the rest, as the facade routes names.
    pub fn split_provider(&self) -> Option<(&str, &str)> {
        self.0.split_once('/')
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One name component: alphanumeric runs joined by `.`, `_`, `__` or a run of `-`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    let mut separators = bytes.split(|&b| is_alnum(b)).filter(|run| !run.is_empty());
    separators.all(|run| matches!(run, b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-'))
}

impl FromStr for RepositoryName {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<RepositoryName, ParseNameError> {
        if s.is_empty() {
            return Err(ParseNameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(ParseNameError::TooLong);
        }
        if let Some(bad) = s.split('/').find(|c| !valid_component(c)) {
            return Err(ParseNameError::BadComponent(bad.escape_debug().to_string()));
        }
        Ok(RepositoryName(s.to_owned()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag such as `latest` or `v1.2_rc-3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
pub struct ParseTagError;

impl Tag {
    /// `latest`, the tag clients assume when none is given.
    pub fn latest() -> Tag {
        Tag("latest".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ParseTagError;

    fn from_str(s: &str) -> Result<Tag, ParseTagError> {
        let bytes = s.as_bytes();
        let first_ok = bytes.first().is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && bytes.len() <= MAX_TAG_LEN {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ParseTagError)
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

super::serde_via_str!(RepositoryName);
super::serde_via_str!(Tag);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names_of_any_depth() {
        for ok in ["a", "library/ubuntu", "a/b/c/d/e/f/g", "a.b_c__d---e", "remote/ws-1", "x0/9y"] {
            let name: RepositoryName = ok.parse().unwrap();
            assert_eq!(name.to_string(), ok);
        }
        let name: RepositoryName = "remote/ws/1".parse().unwrap();
        assert_eq!(name.split_provider(), Some(("remote", "ws/1")));
        assert_eq!(name.components().count(), 3);
    }

    #[test]
    fn rejects_traversal_and_bad_grammar() {
        for bad in [
            "", "/a", "a/", "a//b", "..", "a/../b", ".a", "a.", "a..b", "a___b", "A", "a b",
            "a%2e%2e", "a\u{0}b", "é", "-a", "a_-b",
        ] {
            assert!(bad.parse::<RepositoryName>().is_err(), "{bad:?} should be invalid");
        }
        assert_eq!("a".repeat(256).parse::<RepositoryName>(), Err(ParseNameError::TooLong));
        assert!("a".repeat(255).parse::<RepositoryName>().is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2_rc-3", "_x", "A"] {
            assert_eq!(ok.parse::<Tag>().unwrap().as_str(), ok);
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", "a%20"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert!("a".repeat(129).parse::<Tag>().is_err());
    }
}
