//! The Redis value that names a blob's IPFS CID: `{"cid": "<cid>", "size": <bytes>}`, written
//! by the node that published the blob. A bare CID (written by hand or by an older publisher)
//! is read too, without a size.

use serde::{Deserialize, Serialize};

/// Longest CID accepted: a CIDv1 with a sha2-256 multihash is 59 characters in base32.
const MAX_CID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidRecord {
    pub cid: String,
    /// The blob's size in bytes, when the publisher said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Why a Redis value is no CID record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CID record in Redis: {0}")]
pub struct ParseCidRecordError(String);

impl CidRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// # Errors
    /// Neither a record nor a bare CID, or a CID that is not a multibase string of the usual
    /// alphabets (a path or a URL cannot sneak into a gateway request this way).
    pub fn decode(bytes: &[u8]) -> Result<CidRecord, ParseCidRecordError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ParseCidRecordError("not UTF-8".into()))?.trim();
        let record = if text.starts_with('{') {
            serde_json::from_str::<CidRecord>(text).map_err(|e| ParseCidRecordError(e.to_string()))?
        } else {
            CidRecord { cid: text.to_owned(), size: None }
        };
        let valid = (2..=MAX_CID_CHARS).contains(&record.cid.len()) && record.cid.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(ParseCidRecordError(format!("{:?} is not a CID", record.cid)));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bare_cids_are_read() {
        let record = CidRecord { cid: "bafkreigh2akiscaildc".into(), size: Some(42) };
        assert_eq!(CidRecord::decode(&record.encode()), Ok(record));
        assert_eq!(CidRecord::decode(b"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG\n").map(|r| (r.cid.len(), r.size)), Ok((46, None)));
    }

    #[test]
    fn anything_but_a_cid_is_refused() {
        for bad in [&b""[..], b"../../etc", b"{\"cid\": \"a/b\"}", b"{\"size\": 1}", b"http://x/ipfs/y", &[0xff, 0xfe]] {
            assert!(CidRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
