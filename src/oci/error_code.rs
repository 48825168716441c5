//! The registry error codes, their HTTP statuses and default messages: the one table.
//! Every 4xx JSON body carries a code of the distribution spec's closed list (v1.1, "Error
//! Codes"); a 416 has no OCI code and answers in plain text, which the spec allows for any 4xx.

use serde::Serialize;

/// The codes a 4xx JSON body may carry: the spec's list ("The `code` field MUST be one of the
/// following"), code-1 to code-14.
pub const SPEC_CODES: [&str; 14] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A situation a request can end in. Several may share a wire code (the spec's list is short);
/// the variant keeps what happened for the status and the default text.
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
    /// `GET /v2/<name>/blobs/uploads/…`: this registry holds no upload sessions (end-13's 404).
    UploadUnknown,
    /// A path that is no endpoint of this registry: `UNSUPPORTED` ("the operation is
    /// unsupported") with 404, as the spec's list has no code for an unknown path.
    EndpointUnknown,
    /// A query parameter the endpoint cannot use (`n` not a number, a page token that is not
    /// ours, a tag list too long to send whole): `UNSUPPORTED` with 400, distribution's meaning
    /// of it ("invalid set of parameters").
    ParameterInvalid,
    /// RFC 9110 416; no OCI code fits, so the body is plain text.
    RangeNotSatisfiable,
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
    /// Every variant, for tests that check the table as a whole.
    pub const ALL: [ErrorCode; 19] = {
        use ErrorCode::*;
        [
            BlobUnknown, DigestInvalid, ManifestInvalid, ManifestUnknown, NameInvalid, NameUnknown, Unauthorized, Denied, Unsupported, TooManyRequests,
            UploadUnknown, EndpointUnknown, ParameterInvalid, RangeNotSatisfiable, FramingInvalid, UpstreamInvalid, Unavailable, UpstreamTimeout, Unknown,
        ]
    };

    /// `(HTTP status, wire code, default message)`: status, code and text live in this single
    /// match so they cannot drift apart. No wire code: the body is plain text. 5xx bodies keep
    /// distribution's `UNAVAILABLE` and `UNKNOWN`: the spec's list binds 4xx bodies only, and
    /// clients already know these two.
    pub fn describe(self) -> (u16, Option<&'static str>, &'static str) {
        use ErrorCode::*;
        let (status, code, message) = match self {
            BlobUnknown => (404, "BLOB_UNKNOWN", "blob unknown to registry"),
            DigestInvalid => (400, "DIGEST_INVALID", "provided digest is invalid"),
            ManifestInvalid => (400, "MANIFEST_INVALID", "manifest invalid"),
            ManifestUnknown => (404, "MANIFEST_UNKNOWN", "manifest unknown to registry"),
            NameInvalid => (400, "NAME_INVALID", "invalid repository name"),
            NameUnknown => (404, "NAME_UNKNOWN", "repository name not known to registry"),
            Unauthorized => (401, "UNAUTHORIZED", "authentication required"),
            Denied => (403, "DENIED", "requested access to the resource is denied"),
            Unsupported => (405, "UNSUPPORTED", "the operation is unsupported"),
            TooManyRequests => (429, "TOOMANYREQUESTS", "too many requests"),
            UploadUnknown => (404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"),
            EndpointUnknown => (404, "UNSUPPORTED", "no such endpoint"),
            ParameterInvalid => (400, "UNSUPPORTED", "invalid query parameter"),
            RangeNotSatisfiable => return (416, None, "requested range not satisfiable"),
            FramingInvalid => (400, "UNSUPPORTED", "request body framing is ambiguous"),
            UpstreamInvalid => (502, "UNAVAILABLE", "upstream registry answered with an error"),
            Unavailable => (503, "UNAVAILABLE", "service unavailable"),
            UpstreamTimeout => (504, "UNAVAILABLE", "upstream registry timed out"),
            Unknown => (500, "UNKNOWN", "unknown error"),
        };
        (status, Some(code), message)
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

/// An error answer's body and its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDocument {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The spec's error document `{"errors":[{"code","message","detail"}]}`, or for a situation
/// without a wire code the message as plain text. `message` defaults to the table's text.
pub fn error_body(code: ErrorCode, message: Option<&str>, detail: Option<&serde_json::Value>) -> ErrorDocument {
    let (_, wire, default_message) = code.describe();
    let message = message.unwrap_or(default_message);
    let Some(wire) = wire else {
        return ErrorDocument { content_type: "text/plain; charset=utf-8", body: format!("{message}\n").into_bytes() };
    };
    let body = ErrorBody { errors: [ErrorEntry { code: wire, message, detail }] };
    // Serialising plain strings and an existing Value into a Vec cannot fail.
    ErrorDocument { content_type: "application/json", body: serde_json::to_vec(&body).unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let detail = serde_json::json!({"digest": "sha256:x"});
        let document = error_body(ErrorCode::BlobUnknown, None, Some(&detail));
        assert_eq!(document.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&document.body).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown to registry");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
        let plain = error_body(ErrorCode::NameInvalid, Some("bad \"name\""), None);
        let v: serde_json::Value = serde_json::from_slice(&plain.body).unwrap();
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
        assert!(v["errors"][0].get("detail").is_none());
        assert_eq!(ErrorCode::Unsupported.status(), 405);
    }

    #[test]
    fn every_4xx_json_body_carries_a_code_of_the_spec_s_list() {
        // Spec, "Error Codes": "A `4XX` response code from the registry MAY return a body in
        // any format. If the response body is in JSON format … The `code` field MUST be one of
        // the following".
        for code in ErrorCode::ALL {
            let (status, wire, _) = code.describe();
            if (400..500).contains(&status) {
                assert!(wire.is_none_or(|wire| SPEC_CODES.contains(&wire)), "{code:?} sends {wire:?}");
            }
            assert!((400..600).contains(&status), "{code:?}");
        }
        let range = error_body(ErrorCode::RangeNotSatisfiable, Some("range not satisfiable for 10 bytes"), None);
        assert_eq!((range.content_type, range.body.as_slice()), ("text/plain; charset=utf-8", &b"range not satisfiable for 10 bytes\n"[..]));
    }
}
