//! The registry error codes, their HTTP statuses and default messages: the one table.
//! Codes come from the distribution spec; the few extensions are marked and are what
//! distribution itself sends in the same situation.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// distribution extension: a tag in a URL that does not match the tag grammar.
    TagInvalid,
    /// distribution extension: `n` of `tags/list` is not a number.
    PaginationNumberInvalid,
    /// RFC 9110 416; the spec names no code, so the body says what happened.
    RangeNotSatisfiable,
    /// A path outside the registry API.
    NotFound,
    /// A request whose body framing is ambiguous (RFC 9112 §6.1); the spec's UNSUPPORTED code
    /// ("invalid set of parameters") with status 400, as the request is malformed.
    FramingInvalid,
    /// The upstream registry answered with something unusable (HTTP 502).
    UpstreamInvalid,
    /// The upstream registry or another source cannot be reached or is overloaded (HTTP 503).
    Unavailable,
    /// The upstream registry did not answer in time (HTTP 504).
    UpstreamTimeout,
    /// A fault of this server (HTTP 500); the cause is logged, not sent.
    Unknown,
}

impl ErrorCode {
    /// `(HTTP status, wire code, default message)`: status, code and text live in this single
    /// match so they cannot drift apart.
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        use ErrorCode::*;
        match self {
            BlobUnknown => (404, "BLOB_UNKNOWN", "blob unknown to registry"),
            DigestInvalid => (400, "DIGEST_INVALID", "provided digest is invalid"),
            ManifestInvalid => (400, "MANIFEST_INVALID", "manifest invalid"),
            ManifestUnknown => (404, "MANIFEST_UNKNOWN", "manifest unknown"),
            NameInvalid => (400, "NAME_INVALID", "invalid repository name"),
            NameUnknown => (404, "NAME_UNKNOWN", "repository name not known to registry"),
            Unauthorized => (401, "UNAUTHORIZED", "authentication required"),
            Denied => (403, "DENIED", "requested access to the resource is denied"),
            Unsupported => (405, "UNSUPPORTED", "the operation is unsupported"),
            TooManyRequests => (429, "TOOMANYREQUESTS", "too many requests"),
            TagInvalid => (400, "TAG_INVALID", "manifest tag is invalid"),
            PaginationNumberInvalid => (400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested"),
            RangeNotSatisfiable => (416, "RANGE_NOT_SATISFIABLE", "requested range not satisfiable"),
            NotFound => (404, "NOT_FOUND", "no such endpoint"),
            FramingInvalid => (400, "UNSUPPORTED", "request body framing is ambiguous"),
            UpstreamInvalid => (502, "UNAVAILABLE", "upstream registry answered with an error"),
            Unavailable => (503, "UNAVAILABLE", "service unavailable"),
            UpstreamTimeout => (504, "UNAVAILABLE", "upstream registry timed out"),
            Unknown => (500, "UNKNOWN", "unknown error"),
        }
    }

    pub fn status(self) -> u16 {
        self.describe().0
    }
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

/// The spec's error document `{"errors":[{"code","message","detail"}]}`. `message` defaults to
/// the table's text.
pub fn error_body(code: ErrorCode, message: Option<&str>, detail: Option<&serde_json::Value>) -> Vec<u8> {
    let (_, wire, default_message) = code.describe();
    let body = ErrorBody {
        errors: [ErrorEntry { code: wire, message: message.unwrap_or(default_message), detail }],
    };
    // Serialising plain strings and an existing Value into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let detail = serde_json::json!({"digest": "sha256:x"});
        let body = error_body(ErrorCode::BlobUnknown, None, Some(&detail));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown to registry");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
        let plain = error_body(ErrorCode::NameInvalid, Some("bad \"name\""), None);
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
        assert!(v["errors"][0].get("detail").is_none());
        assert_eq!(ErrorCode::Unsupported.status(), 405);
    }
}
