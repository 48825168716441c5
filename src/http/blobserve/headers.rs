//! The headers blobserve reads and writes: `Content-Type` by file extension (and whether the
//! type is text worth compressing), `Accept-Encoding`, `If-None-Match`, and the inline
//! variables of `X-BlobServe-InlineVars` substituted into `index.html`.

use crate::registry::blobserve::{replace_all, InlineReplacement};

pub const INLINE_VARS: &str = "x-blobserve-inlinevars";
pub const READ_ONLY: &str = "x-blobserve-readonly";

/// The `Content-Type` of a file named `name`, and whether it is text (compressible).
pub fn content_type(name: &str) -> (&'static str, bool) {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => ("text/html; charset=utf-8", true),
        "js" | "mjs" | "cjs" => ("text/javascript; charset=utf-8", true),
        "css" => ("text/css; charset=utf-8", true),
        "json" | "map" => ("application/json", true),
        "webmanifest" => ("application/manifest+json", true),
        "svg" => ("image/svg+xml", true),
        "txt" | "md" => ("text/plain; charset=utf-8", true),
        "xml" => ("text/xml; charset=utf-8", true),
        "wasm" => ("application/wasm", true),
        "ttf" => ("font/ttf", true),
        "otf" => ("font/otf", true),
        "woff" => ("font/woff", false),
        "woff2" => ("font/woff2", false),
        "png" => ("image/png", false),
        "jpg" | "jpeg" => ("image/jpeg", false),
        "gif" => ("image/gif", false),
        "webp" => ("image/webp", false),
        "avif" => ("image/avif", false),
        "ico" => ("image/vnd.microsoft.icon", false),
        "mp4" => ("video/mp4", false),
        "webm" => ("video/webm", false),
        "pdf" => ("application/pdf", false),
        "zip" => ("application/zip", false),
        "gz" => ("application/gzip", false),
        _ => ("application/octet-stream", false),
    }
}

/// Whether `Accept-Encoding` values take gzip (`gzip` or `*`, not with `q=0`).
pub fn accepts_gzip<'a>(values: impl Iterator<Item = &'a str>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in values.flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(!refused),
            "*" => any = Some(!refused),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Whether `If-None-Match` values name `etag` (quoted, as sent): weak comparison, `*` matches.
pub fn none_match<'a>(values: impl Iterator<Item = &'a str>, etag: &str) -> bool {
    values.flat_map(|v| v.split(',')).map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The `X-BlobServe-InlineVars` document: `{"ide": …, "supervisor": …}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct InlineVars {
    #[serde(default)]
    pub ide: String,
    #[serde(default)]
    pub supervisor: String,
}

/// `body` with each inline replacement applied, `${ide}` and `${supervisor}` in its
/// replacement taken from `vars` (Gitpod's substitution).
pub fn inline(body: &[u8], replacements: &[InlineReplacement], vars: &InlineVars) -> Vec<u8> {
    let mut content = body.to_vec();
    for r in replacements {
        let replacement = r.replacement.replace("${ide}", &vars.ide).replace("${supervisor}", &vars.supervisor);
        content = replace_all(&content, r.search.as_bytes(), replacement.as_bytes());
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_by_extension() {
        assert_eq!(content_type("index.html"), ("text/html; charset=utf-8", true));
        assert_eq!(content_type("out/App.JS"), ("text/javascript; charset=utf-8", true));
        assert!(!content_type("logo.png").1);
        assert_eq!(content_type("LICENSE").0, "application/octet-stream");
    }

    #[test]
    fn accept_encoding_and_if_none_match() {
        assert!(accepts_gzip(["gzip, deflate, br"].into_iter()));
        assert!(accepts_gzip(["br;q=1.0, *;q=0.5"].into_iter()));
        assert!(!accepts_gzip(["gzip;q=0, br"].into_iter()));
        assert!(!accepts_gzip(["*;q=0"].into_iter()));
        assert!(!accepts_gzip(std::iter::empty()));
        assert!(none_match([r#""a", W/"b""#].into_iter(), r#""b""#));
        assert!(none_match(["*"].into_iter(), r#""x""#));
        assert!(!none_match([r#""a""#].into_iter(), r#""b""#));
    }

    #[test]
    fn inline_variables_are_substituted_into_each_replacement() {
        let replacements = [InlineReplacement { search: "{{IDE}}".into(), replacement: "${ide}/x?s=${supervisor}".into() }];
        let vars: InlineVars = serde_json::from_str(r#"{"ide": "https://ide", "supervisor": "sup"}"#).unwrap();
        assert_eq!(inline(b"<a href=\"{{IDE}}\">{{IDE}}", &replacements, &vars), b"<a href=\"https://ide/x?s=sup\">https://ide/x?s=sup");
    }
}
