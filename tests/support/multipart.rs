//! Reads a `multipart/byteranges` answer (RFC 9110 §14.6) strictly: every part's
//! `Content-Range` and bytes, and nothing before the first boundary or after the last.

use super::client::Reply;

/// One part: `(first, last, complete length)` from its `Content-Range`, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub first: u64,
    pub last: u64,
    pub len: u64,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The parts of `reply`, which must be a 206 `multipart/byteranges`; panics on any malformation.
pub fn parts(reply: &Reply) -> Vec<Part> {
    assert_eq!(reply.status, 206, "{}", String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]));
    let content_type = reply.header("content-type").expect("a Content-Type");
    let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").unwrap_or_else(|| panic!("not multipart/byteranges: {content_type}"));
    assert!(reply.header("content-range").is_none(), "a multipart answer has no Content-Range of its own");
    let delimiter = format!("--{boundary}");
    let body = &reply.body;
    let mut at = 0;
    assert!(body.starts_with(delimiter.as_bytes()), "the body starts with the first boundary");
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        if body[at..] == *b"--\r\n" {
            return parts;
        }
        assert_eq!(&body[at..at + 2], b"\r\n", "a boundary line ends with CRLF");
        at += 2;
        let head_end = find(&body[at..], b"\r\n\r\n").expect("a part head ends") + at;
        let head = std::str::from_utf8(&body[at..head_end]).expect("a text part head");
        let field = |name: &str| head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()));
        let range = field("content-range").expect("each part has a Content-Range");
        let (span, len) = range.strip_prefix("bytes ").and_then(|r| r.split_once('/')).expect("bytes a-b/len");
        let (first, last) = span.split_once('-').expect("a-b");
        let (first, last, len): (u64, u64, u64) = (first.parse().unwrap(), last.parse().unwrap(), len.parse().unwrap());
        let start = head_end + 4;
        let end = start + (last - first + 1) as usize;
        parts.push(Part { first, last, len, content_type: field("content-type").unwrap_or_default(), bytes: body[start..end].to_vec() });
        assert_eq!(&body[end..end + 2], b"\r\n", "a part's bytes end where its Content-Range says");
        at = end + 2;
        assert!(body[at..].starts_with(delimiter.as_bytes()), "the next boundary follows");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
