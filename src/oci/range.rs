//! The `Range` request header (RFC 9110 §14): one byte range or several, resolved against the
//! content's length into what the answer holds (sorted, overlaps coalesced, capped in number).
//! Another unit, or more ranges than the cap, is not an error: the header is ignored and the
//! whole content sent, as RFC 9110 §14.2 allows; so is a range under an `If-Range` that does
//! not name the current content (§13.1.5).

use std::ops::Range;

/// Ranges one request may ask for; past this the header is ignored and the whole blob sent.
/// RFC 9110 §14.2: "A server that supports range requests MAY ignore or reject a Range header
/// field that contains … a set of many small ranges that are not listed in ascending order,
/// since these are indications of either a broken client or a deliberate denial-of-service
/// attack". 200 is Apache httpd's `MaxRanges` default; a snapshotter's prefetch asks for
/// dozens, and each part costs the server a part header and a reader.
pub const MAX_RANGES: usize = 200;

/// Parts closer than this are sent as one: RFC 9110 §15.3.7.2 allows coalescing ranges
/// "separated by a gap that is smaller than the overhead of sending multiple parts", which it
/// puts at "around 80 bytes".
pub const COALESCE_GAP_BYTES: u64 = 80;

/// One `bytes=` range as written by the client, before the blob length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (both inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`: from `a` to the end.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// What the client's `Range` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer 200 with the whole content.
    Whole,
    /// One or more ranges (at most `MAX_RANGES`), in the client's order.
    Parts(Vec<ByteRange>),
    /// The header is a malformed byte range: answer 416.
    Malformed,
}

/// What an answer holds once the content's length is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// 200, the whole content.
    Whole,
    /// 206 with `Content-Range`.
    Single(Range<u64>),
    /// 206 `multipart/byteranges`: at least two parts, ascending, apart by more than
    /// `COALESCE_GAP_BYTES`.
    Multiple(Vec<Range<u64>>),
    /// 416: no range selects any byte.
    Unsatisfiable,
}

/// Whether an `If-Range` value lets a `Range` be honoured for content whose `ETag` is `etag`
/// (quoted, as sent). RFC 9110 §13.1.5: the range applies only if the validator matches with
/// the strong comparison; otherwise "the recipient MUST ignore the Range header field" and
/// sends the whole content. A weak tag never matches strongly, and a date never matches here:
/// our answers carry no `Last-Modified`.
pub fn if_range_matches(if_range: &str, etag: &str) -> bool {
    if_range.trim() == etag && !etag.starts_with("W/")
}

/// Reads a `Range` header value.
pub fn parse_range(header: Option<&str>) -> RangeRequest {
    let Some(value) = header else { return RangeRequest::Whole };
    // The unit is case-insensitive (RFC 9110 §14.1); an unknown unit is ignored.
    let value = value.trim();
    let Some(set) = value.get(..6).filter(|unit| unit.eq_ignore_ascii_case("bytes=")).map(|_| &value[6..]) else {
        return RangeRequest::Whole;
    };
    // A list may hold empty elements, which a recipient ignores (RFC 9110 §5.6.1). Counting
    // stops past the cap, so a header of thousands of ranges is not parsed further.
    let specs: Vec<&str> = set.split(',').map(str::trim).filter(|s| !s.is_empty()).take(MAX_RANGES + 1).collect();
    if specs.len() > MAX_RANGES {
        return RangeRequest::Whole;
    }
    let parts: Option<Vec<ByteRange>> = specs.iter().map(|spec| parse_spec(spec)).collect();
    match parts {
        Some(parts) if !parts.is_empty() => RangeRequest::Parts(parts),
        _ => RangeRequest::Malformed,
    }
}

fn parse_spec(spec: &str) -> Option<ByteRange> {
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match spec.split_once('-')? {
        ("", last) => number(last).map(ByteRange::Suffix),
        (first, "") => number(first).map(ByteRange::From),
        (first, last) => number(first).zip(number(last)).map(|(a, b)| ByteRange::FromTo(a, b)),
    }
}

impl ByteRange {
    /// The half-open byte interval this range selects in content of `len` bytes, or `None` if
    /// it selects nothing (416). An end past the content is clipped, as RFC 9110 says.
    pub fn resolve(self, len: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::FromTo(first, last) if first <= last && first < len => {
                Some(first..last.saturating_add(1).min(len))
            }
            ByteRange::From(first) if first < len => Some(first..len),
            ByteRange::Suffix(n) if n > 0 && len > 0 => Some(len.saturating_sub(n)..len),
            _ => None,
        }
    }
}

impl RangeRequest {
    /// What to send of content of `len` bytes. Unsatisfiable ranges of a set are left out
    /// (RFC 9110 §15.3.7: the 206 holds the satisfiable ones); the rest are sorted, and
    /// overlapping or nearly adjacent ones joined (§15.3.7.2), so the parts never repeat a byte
    /// and a set of overlapping ranges costs no more than their union.
    pub fn select(&self, len: u64) -> Selection {
        let parts = match self {
            RangeRequest::Whole => return Selection::Whole,
            RangeRequest::Malformed => return Selection::Unsatisfiable,
            RangeRequest::Parts(parts) => parts,
        };
        let mut resolved: Vec<Range<u64>> = parts.iter().filter_map(|part| part.resolve(len)).collect();
        resolved.sort_by_key(|r| (r.start, r.end));
        let mut joined: Vec<Range<u64>> = Vec::with_capacity(resolved.len());
        for range in resolved {
            match joined.last_mut() {
                Some(previous) if range.start <= previous.end.saturating_add(COALESCE_GAP_BYTES) => previous.end = previous.end.max(range.end),
                _ => joined.push(range),
            }
        }
        match joined.len() {
            0 => Selection::Unsatisfiable,
            1 => Selection::Single(joined.remove(0)),
            _ => Selection::Multiple(joined),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(header: &str, len: u64) -> Selection {
        parse_range(Some(header)).select(len)
    }

    fn single(header: &str, len: u64) -> Option<Range<u64>> {
        match select(header, len) {
            Selection::Single(r) => Some(r),
            Selection::Unsatisfiable => None,
            other => panic!("{header}: {other:?}"),
        }
    }

    #[test]
    fn conformance_cases() {
        assert_eq!(single("bytes=500-1499", 2048), Some(500..1500));
        assert_eq!(single("bytes=500-", 2048), Some(500..2048));
        assert_eq!(single("bytes=-500", 2048), Some(1548..2048));
        assert_eq!(single("bytes=2000-5000", 2048), Some(2000..2048));
        assert_eq!(single("bytes=500-0", 2048), None);
        assert_eq!(single("bytes=5000-10000", 2048), None);
        assert_eq!(single("bytes=-5000", 2048), Some(0..2048));
        assert_eq!(single("bytes=-0", 2048), None);
        assert_eq!(single("bytes=0-0", 0), None);
        assert_eq!(single("bytes=0-18446744073709551615", 10), Some(0..10));
        assert_eq!(single("Bytes=1-2", 10), Some(1..3), "the unit is case-insensitive");
    }

    #[test]
    fn several_ranges_are_sorted_coalesced_and_unsatisfiable_ones_left_out() {
        let len = 10_000;
        assert_eq!(select("bytes=5000-5099, 0-99", len), Selection::Multiple(vec![0..100, 5000..5100]));
        assert_eq!(select("bytes=0-99,50-199,150-", 1000), Selection::Single(0..1000), "overlaps are one part");
        assert_eq!(select("bytes=0-0,5-6", len), Selection::Single(0..7), "a gap smaller than a part header is sent");
        assert_eq!(select("bytes=0-9,200-209", len), Selection::Multiple(vec![0..10, 200..210]));
        assert_eq!(select("bytes=0-9,20000-20009", len), Selection::Single(0..10), "the satisfiable one alone");
        assert_eq!(select("bytes=20000-,30000-", len), Selection::Unsatisfiable);
        assert_eq!(select("bytes=0-9,,  ,-10", len), Selection::Multiple(vec![0..10, 9990..10_000]), "empty list elements are ignored");
        let overlapping = format!("bytes={}", vec!["0-"; MAX_RANGES].join(","));
        assert_eq!(select(&overlapping, len), Selection::Single(0..len), "the same range many times is one part");
    }

    #[test]
    fn if_range_needs_the_same_strong_tag() {
        assert!(if_range_matches("\"sha256:ab\"", "\"sha256:ab\""));
        assert!(if_range_matches(" \"x\" ", "\"x\""));
        assert!(!if_range_matches("\"sha256:cd\"", "\"sha256:ab\""), "another version");
        assert!(!if_range_matches("W/\"x\"", "\"x\""), "weak");
        assert!(!if_range_matches("W/\"x\"", "W/\"x\""), "weak on both sides");
        assert!(!if_range_matches("Sat, 01 Jan 2000 00:00:00 GMT", "\"x\""), "a date: there is no Last-Modified");
        assert!(!if_range_matches("", "\"x\""));
    }

    #[test]
    fn ignored_and_malformed() {
        assert_eq!(parse_range(None), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1")), RangeRequest::Whole);
        let too_many = format!("bytes={}", (0..=MAX_RANGES).map(|i| format!("{}-{}", i * 1000, i * 1000 + 1)).collect::<Vec<_>>().join(","));
        assert_eq!(parse_range(Some(&too_many)), RangeRequest::Whole, "more than MAX_RANGES ranges: the whole blob");
        let at_cap = format!("bytes={}", (0..MAX_RANGES).map(|i| format!("{}-{}", i * 1000, i * 1000 + 1)).collect::<Vec<_>>().join(","));
        assert!(matches!(parse_range(Some(&at_cap)), RangeRequest::Parts(p) if p.len() == MAX_RANGES));
        for bad in ["bytes=", "bytes=-", "bytes=a-b", "bytes=1", "bytes=+1-2", "bytes=99999999999999999999-", "bytes=0-1,x", "bytes=,"] {
            assert_eq!(parse_range(Some(bad)), RangeRequest::Malformed, "{bad}");
            assert_eq!(parse_range(Some(bad)).select(100), Selection::Unsatisfiable, "{bad}");
        }
    }
}
