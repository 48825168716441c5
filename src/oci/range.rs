//! The `Range` request header (RFC 9110 §14) for a single byte range.
//! Several ranges or another unit are not errors: the header is ignored and the whole blob sent,
//! as RFC 9110 allows.

use std::ops::Range;

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

/// What the server does with a `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer 200 with the whole content.
    Whole,
    /// Answer 206 with this part.
    Part(ByteRange),
    /// The header is a malformed byte range: answer 416.
    Malformed,
}

/// Reads a `Range` header value.
pub fn parse_range(header: Option<&str>) -> RangeRequest {
    let Some(value) = header else { return RangeRequest::Whole };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let parsed = match spec.split_once('-') {
        Some(("", last)) => number(last).map(ByteRange::Suffix),
        Some((first, "")) => number(first).map(ByteRange::From),
        Some((first, last)) => number(first).zip(number(last)).map(|(a, b)| ByteRange::FromTo(a, b)),
        None => None,
    };
    parsed.map_or(RangeRequest::Malformed, RangeRequest::Part)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(header: &str, len: u64) -> Option<Range<u64>> {
        match parse_range(Some(header)) {
            RangeRequest::Part(r) => r.resolve(len),
            other => panic!("{header}: {other:?}"),
        }
    }

    #[test]
    fn conformance_cases() {
        assert_eq!(resolve("bytes=500-1499", 2048), Some(500..1500));
        assert_eq!(resolve("bytes=500-", 2048), Some(500..2048));
        assert_eq!(resolve("bytes=-500", 2048), Some(1548..2048));
        assert_eq!(resolve("bytes=2000-5000", 2048), Some(2000..2048));
        assert_eq!(resolve("bytes=500-0", 2048), None);
        assert_eq!(resolve("bytes=5000-10000", 2048), None);
        assert_eq!(resolve("bytes=-5000", 2048), Some(0..2048));
        assert_eq!(resolve("bytes=-0", 2048), None);
        assert_eq!(resolve("bytes=0-0", 0), None);
        assert_eq!(resolve("bytes=0-18446744073709551615", 10), Some(0..10));
    }

    #[test]
    fn ignored_and_malformed() {
        assert_eq!(parse_range(None), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1")), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6")), RangeRequest::Whole);
        for bad in ["bytes=", "bytes=-", "bytes=a-b", "bytes=1", "bytes=+1-2", "bytes=99999999999999999999-"] {
            assert_eq!(parse_range(Some(bad)), RangeRequest::Malformed, "{bad}");
        }
    }
}
