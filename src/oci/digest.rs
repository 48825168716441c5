//! Content digests (`algorithm:hex`) as the OCI image spec defines them.
//! Parsing validates the grammar and, for the algorithms we know, the exact hex length; it does
//! no hashing of content (that is `store`'s job).

use std::fmt;
use std::str::FromStr;

/// Longest digest string we accept: `sha512:` plus 128 hex characters, with room for an
/// unknown algorithm's name. Anything longer is rejected before any other work.
pub const MAX_DIGEST_LEN: usize = 256;

/// The digest algorithms the spec registers. Only sha256 is stored by this facade; sha512
/// parses so that a well-formed request gets "unknown" rather than "invalid".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest such as `sha256:9f86d0…`. The hex part is always lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    #[error("digest is longer than {MAX_DIGEST_LEN} characters")]
    TooLong,
    #[error("digest has no `algorithm:` prefix")]
    MissingAlgorithm,
    #[error("digest algorithm `{0}` is not supported")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters")]
    BadHex { algorithm: &'static str, expected: usize },
}

impl Digest {
    /// Builds a sha256 digest from the raw 32 bytes of a finished hash.
    pub fn sha256_from_bytes(bytes: &[u8; 32]) -> Digest {
        Digest { algorithm: Algorithm::Sha256, hex: hex::encode(bytes) }
    }

    /// Hashes `data` with sha256. Meant for small documents (manifests, configs), never for
    /// streaming blobs.
    pub fn sha256_of(data: &[u8]) -> Digest {
        use sha2::{Digest as _, Sha256};
        Digest::sha256_from_bytes(&Sha256::digest(data).into())
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part after the colon; safe to use as a file name (lowercase hex only).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Digest, ParseDigestError> {
        if s.len() > MAX_DIGEST_LEN {
            return Err(ParseDigestError::TooLong);
        }
        let (algorithm, hex) = s.split_once(':').ok_or(ParseDigestError::MissingAlgorithm)?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(ParseDigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(ParseDigestError::BadHex {
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

super::serde_via_str!(Digest);

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips_and_hashes() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::sha256_of(b""), d);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("sha256", ParseDigestError::MissingAlgorithm),
            ("md5:abcd", ParseDigestError::UnsupportedAlgorithm("md5".into())),
            ("sha256:abc", ParseDigestError::BadHex { algorithm: "sha256", expected: 64 }),
            ("sha256:totallywrong", ParseDigestError::BadHex { algorithm: "sha256", expected: 64 }),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Digest>().unwrap_err(), want, "{input}");
        }
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err(), "uppercase hex is not canonical");
        let traversal = format!("sha256:../../{}", &EMPTY[13..]);
        assert!(traversal.parse::<Digest>().is_err());
        assert_eq!("x".repeat(300).parse::<Digest>().unwrap_err(), ParseDigestError::TooLong);
    }

    #[test]
    fn sha512_is_well_formed() {
        let d: Digest = format!("sha512:{}", "a".repeat(128)).parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha512);
    }
}
