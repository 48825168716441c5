//! Request paths of the pull and content-discovery APIs, parsed once into a typed `Route`.
//! Paths are split from the right (the reference never contains `/`), so names of any depth
//! work; the path is not percent-decoded, so `%2e%2e` simply fails the name grammar.

use super::digest::{Digest, ParseDigestError};
use super::name::{ParseNameError, ParseTagError, RepositoryName};
use super::reference::{ParseReferenceError, Reference};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest { name: RepositoryName, reference: Reference },
    Blob { name: RepositoryName, digest: Digest },
    TagsList { name: RepositoryName },
    /// `/v2/<name>/referrers/<digest>` (end-12): the manifests whose `subject` is `digest`.
    Referrers { name: RepositoryName, digest: Digest },
}

impl Route {
    /// A short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::TagsList { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }

    pub fn name(&self) -> Option<&RepositoryName> {
        match self {
            Route::Base => None,
            Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::TagsList { name } | Route::Referrers { name, .. } => Some(name),
        }
    }
}

/// The query parameters the pull API knows; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `tags/list` page size.
    pub n: Option<usize>,
    /// `tags/list`: return tags lexically after this one. `referrers`: the page token of our
    /// own `Link` (opaque to clients).
    pub last: Option<String>,
    /// `referrers`: list only referrers of this `artifactType` (end-12b). Empty is no filter.
    pub artifact_type: Option<String>,
    /// containerd's mirror convention: the registry host the client really wants.
    pub ns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    /// `/v2/<name>/blobs/uploads/…`: an upload session, which a read-only registry never has.
    #[error("no such upload: this registry is read-only")]
    UploadUnknown,
    #[error("{0}")]
    NameInvalid(#[from] ParseNameError),
    #[error("{0}")]
    DigestInvalid(#[from] ParseDigestError),
    #[error("{0}")]
    TagInvalid(#[from] ParseTagError),
    #[error("query parameter `n` must be a non-negative integer")]
    PaginationNumberInvalid,
}

impl From<ParseReferenceError> for RouteError {
    fn from(e: ParseReferenceError) -> RouteError {
        match e {
            ParseReferenceError::Digest(d) => RouteError::DigestInvalid(d),
            ParseReferenceError::Tag(t) => RouteError::TagInvalid(t),
        }
    }
}

/// Whether a path belongs to the registry API at all (`/v2` and below).
pub fn is_api_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Parses a request path (without the query) into a route.
///
/// # Errors
/// `NotFound` for paths that are no endpoint, `UploadUnknown` for upload sessions; the grammar
/// errors of the name, digest or tag otherwise.
pub fn parse_path(path: &str) -> Result<Route, RouteError> {
    let rest = match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        _ => path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagsList { name: name.parse()? });
    }
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    let (name, endpoint) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    match endpoint {
        "manifests" => {
            let name = name.parse()?;
            Ok(Route::Manifest { name, reference: last.parse()? })
        }
        "blobs" => {
            let name = name.parse()?;
            Ok(Route::Blob { name, digest: last.parse()? })
        }
        "referrers" => {
            let name = name.parse()?;
            Ok(Route::Referrers { name, digest: last.parse()? })
        }
        // `<name>/blobs/uploads/<reference>` (and `…/uploads/` itself): end-13 and the push
        // endpoints; the name itself is not checked, as nothing is looked up.
        "uploads" if name.ends_with("/blobs") => Err(RouteError::UploadUnknown),
        _ => Err(RouteError::NotFound),
    }
}

/// A query string (`a=b&c=d`) of `pairs`, every byte outside RFC 3986's unreserved set
/// percent-encoded: `parse_query` reads it back, and so does any registry or token service.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// Parses the query string of a request (`a=b&c=d`, percent-encoded).
///
/// # Errors
/// `PaginationNumberInvalid` when `n` is not a number.
pub fn parse_query(query: Option<&str>) -> Result<Query, RouteError> {
    let mut parsed = Query::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "n" => parsed.n = Some(value.parse().map_err(|_| RouteError::PaginationNumberInvalid)?),
            "last" => parsed.last = Some(value),
            "artifactType" => parsed.artifact_type = Some(value).filter(|v| !v.is_empty()),
            "ns" => parsed.ns = Some(value),
            _ => {}
        }
    }
    Ok(parsed)
}

/// Decodes `%XX` and `+` of a query value; malformed escapes are kept literally.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' if i + 2 < bytes.len() => std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn an_encoded_query_parses_back() {
        let query = encode_query(&[("n", "2"), ("last", "a&n=9 b/é+"), ("ns", "r.example:5000")]);
        assert_eq!(query, "n=2&last=a%26n%3D9%20b%2F%C3%A9%2B&ns=r.example%3A5000");
        let parsed = parse_query(Some(&query)).unwrap();
        assert_eq!((parsed.n, parsed.last.as_deref(), parsed.ns.as_deref()), (Some(2), Some("a&n=9 b/é+"), Some("r.example:5000")));
    }

    #[test]
    fn routes() {
        assert_eq!(parse_path("/v2/"), Ok(Route::Base));
        assert_eq!(parse_path("/v2"), Ok(Route::Base));
        let r = parse_path("/v2/a/manifests/b/manifests/latest").unwrap();
        assert_eq!(r.name().unwrap().as_str(), "a/manifests/b");
        assert_eq!(r.kind(), "manifest");
        let r = parse_path(&format!("/v2/x/y/z/blobs/{D}")).unwrap();
        assert!(matches!(r, Route::Blob { ref digest, .. } if digest.to_string() == D));
        let r = parse_path("/v2/a/b/tags/list").unwrap();
        assert_eq!(r, Route::TagsList { name: "a/b".parse().unwrap() });
        let r = parse_path(&format!("/v2/a/referrers/b/referrers/{D}")).unwrap();
        assert_eq!(r, Route::Referrers { name: "a/referrers/b".parse().unwrap(), digest: D.parse().unwrap() });
        assert_eq!(r.kind(), "referrers");
        let r = parse_path("/v2/a/blobs/uploads/manifests/v1").unwrap();
        assert_eq!(r.name().unwrap().as_str(), "a/blobs/uploads", "the rightmost endpoint wins");
    }

    #[test]
    fn bad_paths() {
        assert_eq!(parse_path("/"), Err(RouteError::NotFound));
        assert_eq!(parse_path("/v3/a/manifests/x"), Err(RouteError::NotFound));
        assert!(matches!(parse_path("/v2/a/referrers/x"), Err(RouteError::DigestInvalid(_))));
        assert_eq!(parse_path("/v2/a/referrers"), Err(RouteError::NotFound));
        assert_eq!(parse_path("/v2/a/b/blobs/uploads/"), Err(RouteError::UploadUnknown));
        assert_eq!(parse_path("/v2/a/blobs/uploads/1f2e-33"), Err(RouteError::UploadUnknown));
        assert_eq!(parse_path("/v2/a/uploads/x"), Err(RouteError::NotFound));
        assert_eq!(parse_path("/v2/_catalog"), Err(RouteError::NotFound));
        assert_eq!(parse_path("/v2/manifests/latest"), Err(RouteError::NotFound));
        assert!(matches!(parse_path("/v2/A/manifests/x"), Err(RouteError::NameInvalid(_))));
        assert!(matches!(parse_path("/v2/%2e%2e/manifests/x"), Err(RouteError::NameInvalid(_))));
        assert!(matches!(parse_path("/v2/../blobs/x"), Err(RouteError::NameInvalid(_))));
        assert!(matches!(parse_path("/v2/a//manifests/x"), Err(RouteError::NameInvalid(_))));
        assert!(matches!(parse_path("/v2/a/blobs/latest"), Err(RouteError::DigestInvalid(_))));
        assert!(matches!(
            parse_path("/v2/a/manifests/sha256:totallywrong"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(parse_path("/v2/a/manifests/.x"), Err(RouteError::TagInvalid(_))));
        assert!(matches!(parse_path("/v2/a/manifests/"), Err(RouteError::TagInvalid(_))));
    }

    #[test]
    fn queries() {
        let q = parse_query(Some("n=10&last=v1&ns=registry.example%3A5000&other")).unwrap();
        assert_eq!(q.n, Some(10));
        assert_eq!(q.last.as_deref(), Some("v1"));
        assert_eq!(q.ns.as_deref(), Some("registry.example:5000"));
        let q = parse_query(Some("artifactType=application%2Fvnd.example%2Bjson")).unwrap();
        assert_eq!(q.artifact_type.as_deref(), Some("application/vnd.example+json"));
        assert_eq!(parse_query(Some("artifactType=")).unwrap().artifact_type, None, "an empty filter is none");
        assert_eq!(parse_query(Some("n=-1")), Err(RouteError::PaginationNumberInvalid));
        assert_eq!(parse_query(Some("n=abc")), Err(RouteError::PaginationNumberInvalid));
        assert_eq!(parse_query(None).unwrap(), Query::default());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41+b"), "%zzA b");
        assert_eq!(percent_decode("%+1"), "% 1");
    }
}
