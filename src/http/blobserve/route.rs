//! A blobserve URL, parsed once: `/<image-ref>/<path>`. The reference ends at the first
//! segment with a tag (`:`) or digest (`@`); a first segment that is a `host:port` is the
//! registry host when a tag follows. The file path is percent-decoded segment by segment and
//! refused with `..`, `.`, empty (doubled `/`) or encoded-`/` segments and NUL bytes.

use crate::registry::blobserve::{BlobserveRef, FilePath};

/// Segments of a file path accepted: far beyond any front end's tree.
const MAX_SEGMENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The image reference does not parse or has no tag (Gitpod answers 404).
    #[error("{0}")]
    BadImage(String),
    /// The file path is malformed or tries to leave the served directory (400).
    #[error("bad path: {0}")]
    BadPath(&'static str),
}

/// The image and the file a request path names.
pub fn parse(path: &str) -> Result<(BlobserveRef, FilePath), RouteError> {
    let rest = path.strip_prefix('/').ok_or(RouteError::BadPath("not absolute"))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let end = reference_end(&segments).ok_or_else(|| RouteError::BadImage(format!("cannot parse image '{rest}': tag is missing")))?;
    // The reference is a prefix of the path: its segments and the slashes between them.
    let text = &rest[..segments[..=end].iter().map(|s| s.len() + 1).sum::<usize>() - 1];
    let image: BlobserveRef = text.parse().map_err(|e: crate::registry::blobserve::ParseBlobserveRefError| RouteError::BadImage(e.to_string()))?;
    let file = &segments[end + 1..];
    let file_path = match file {
        [] | [""] | ["index.html"] => FilePath::Index,
        _ => {
            if file.len() > MAX_SEGMENTS {
                return Err(RouteError::BadPath("too deep"));
            }
            let directory = file.last() == Some(&"");
            let named = if directory { &file[..file.len() - 1] } else { file };
            let components = named.iter().map(|segment| decode_segment(segment)).collect::<Result<Vec<_>, _>>()?;
            FilePath::Path { components, directory }
        }
    };
    Ok((image, file_path))
}

/// The index of the segment that ends the reference: the first one with `:` or `@`, except
/// a leading `host:port` when a later segment has a tag or digest.
fn reference_end(segments: &[&str]) -> Option<usize> {
    let tagged = |s: &&str| s.contains(':') || s.contains('@');
    let first = segments.iter().position(tagged)?;
    if first == 0 && is_host_port(segments[0]) {
        if let Some(later) = segments[1..].iter().position(tagged) {
            return Some(later + 1);
        }
    }
    Some(first)
}

fn is_host_port(segment: &str) -> bool {
    match segment.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// A path segment percent-decoded; refused if it is empty, `.` or `..` (before or after
/// decoding), holds `/` or NUL once decoded, or is not UTF-8.
fn decode_segment(segment: &str) -> Result<String, RouteError> {
    if segment.is_empty() {
        return Err(RouteError::BadPath("empty segment (doubled slash)"));
    }
    let raw = segment.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            bytes.push(hex.ok_or(RouteError::BadPath("malformed percent-encoding"))?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| RouteError::BadPath("not UTF-8"))?;
    if text.contains('/') || text.contains('\0') || text.contains('\\') {
        return Err(RouteError::BadPath("encoded slash, backslash or NUL"));
    }
    if text == "." || text == ".." {
        return Err(RouteError::BadPath("`.` or `..`"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Result<FilePath, RouteError> {
        parse(path).map(|(_, file)| file)
    }

    fn components(path: &str) -> Vec<String> {
        match file(path) {
            Ok(FilePath::Path { components, .. }) => components,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn references_end_at_their_tag_or_digest() {
        let (image, path) = parse("/my-reg.io:8080/team/ide:1.2.3/out/app.js").unwrap();
        assert_eq!((image.repo_key().as_str(), image.to_string().as_str()), ("my-reg.io:8080/team/ide", "my-reg.io:8080/team/ide:1.2.3"));
        assert_eq!(path, FilePath::Path { components: vec!["out".into(), "app.js".into()], directory: false });
        let (image, _) = parse("/team/ide:1.0/a:b.js").unwrap();
        assert_eq!(image.to_string(), "team/ide:1.0", "a colon in the file path does not move the reference's end");
        let (image, _) = parse("/ide:1234/index.html").unwrap();
        assert_eq!(image.to_string(), "ide:1234", "no later tag: the first segment is the reference");
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let (image, _) = parse(&format!("/127.0.0.1:5001/ide@{digest}/x")).unwrap();
        assert!(image.is_digest() && image.host.as_deref() == Some("127.0.0.1:5001"));
    }

    #[test]
    fn the_workdir_index_and_directories() {
        for path in ["/team/ide:1", "/team/ide:1/", "/team/ide:1/index.html"] {
            assert_eq!(file(path), Ok(FilePath::Index), "{path}");
        }
        assert_eq!(file("/team/ide:1/out/"), Ok(FilePath::Path { components: vec!["out".into()], directory: true }));
        assert_eq!(components("/team/ide:1/a%20b.js"), ["a b.js"]);
    }

    #[test]
    fn refs_without_tags_are_bad_images_and_bad_paths_are_refused() {
        for path in ["/team/ide/out/app.js", "/", "/Team/ide:1/x", "/ide:/x"] {
            assert!(matches!(parse(path), Err(RouteError::BadImage(_))), "{path}: {:?}", parse(path));
        }
        for path in ["/ide:1/../etc/passwd", "/ide:1/%2e%2e/x", "/ide:1/a/./b", "/ide:1/a//b", "/ide:1/a%2fb", "/ide:1/a%00", "/ide:1/%zz", "/ide:1/%ff", "/ide:1/a%5cb"] {
            assert!(matches!(parse(path), Err(RouteError::BadPath(_))), "{path}: {:?}", parse(path));
        }
    }
}
