//! The referrers API's documents (distribution-spec v1.1, "Listing Referrers"): the descriptor
//! a manifest with a `subject` is listed by, the `artifactType` filter, the referrers tag
//! schema, and the image index a page of them is sent as. Pure: no I/O.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::manifest::{Descriptor, MAX_MANIFEST_BYTES};
use super::media_type::{self, ManifestKind};
use super::name::Tag;

/// The largest page of referrers sent as one index: "A `Link` header MUST be included in the
/// response when the descriptor list cannot be returned in a single manifest", and a manifest
/// is at most `MAX_MANIFEST_BYTES` here (as for clients and other registries).
pub const REFERRERS_PAGE_MAX_BYTES: usize = MAX_MANIFEST_BYTES;

/// The response header that says the `artifactType` filter was applied.
pub const FILTERS_APPLIED_HEADER: &str = "oci-filters-applied";

const ARTIFACT_TYPE: &str = "artifactType";
/// What an index page starts and ends with: the media type the spec requires as its
/// `Content-Type`, written into the document too.
const INDEX_HEAD: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#;
const INDEX_TAIL: &str = "]}";

/// The fields of a manifest or index that the referrers API reads; everything else is ignored.
#[derive(Deserialize)]
struct Probe {
    subject: Option<SubjectProbe>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<ConfigProbe>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct SubjectProbe {
    digest: String,
}

#[derive(Deserialize)]
struct ConfigProbe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

/// The subject of the manifest `bytes` (of `media_type`, named `digest`), and the descriptor
/// the referrers API lists it by. `None` when it has no valid `subject`: such a manifest
/// refers to nothing. Per the spec: `artifactType` is the manifest's own, else (an image
/// manifest) its config's `mediaType`, else (an index) omitted; annotations are the manifest's.
pub fn referrer_of(media_type: &str, digest: &Digest, bytes: &[u8]) -> Option<(Digest, Descriptor)> {
    let kind = media_type::manifest_kind(media_type)?;
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    let subject: Digest = probe.subject?.digest.parse().ok()?;
    let artifact_type = probe.artifact_type.filter(|t| !t.is_empty()).or_else(|| match kind {
        ManifestKind::Image => probe.config.and_then(|c| c.media_type).filter(|t| !t.is_empty()),
        ManifestKind::Index => None,
    });
    let mut descriptor = Descriptor::new(media_type, digest.clone(), bytes.len() as u64);
    descriptor.annotations = probe.annotations.filter(|a| !a.is_empty());
    if let Some(artifact_type) = artifact_type {
        descriptor.extra.insert(ARTIFACT_TYPE.to_owned(), serde_json::Value::String(artifact_type));
    }
    Some((subject, descriptor))
}

/// The `artifactType` a referrer descriptor carries.
pub fn artifact_type(descriptor: &Descriptor) -> Option<&str> {
    descriptor.extra.get(ARTIFACT_TYPE).and_then(serde_json::Value::as_str)
}

/// Whether `descriptor` passes the client's filter (none: every descriptor does).
pub fn passes(descriptor: &Descriptor, wanted: Option<&str>) -> bool {
    wanted.is_none_or(|wanted| artifact_type(descriptor) == Some(wanted))
}

/// The referrers tag schema: `<alg>-<ref>`, the digest's hex cut to 64 characters ("Referrers
/// Tag Schema"), where clients keep an index of referrers for registries without the API.
pub fn fallback_tag(digest: &Digest) -> Tag {
    let hex = digest.hex();
    let text = format!("{}-{}", digest.algorithm().as_str(), &hex[..hex.len().min(64)]);
    // An algorithm name, a dash and up to 64 hex digits always match the tag grammar.
    text.parse().unwrap_or_else(|_| Tag::latest())
}

/// An image index of referrer descriptors, built up to a size: the body of one page.
pub struct IndexPage {
    body: Vec<u8>,
    max_bytes: usize,
    entries: usize,
}

impl IndexPage {
    /// A page of at most `max_bytes` (but always room for one descriptor, however large).
    pub fn new(max_bytes: usize) -> IndexPage {
        IndexPage { body: INDEX_HEAD.as_bytes().to_vec(), max_bytes, entries: 0 }
    }

    /// An empty index: "If a query results in no matching referrers, an empty manifest list
    /// MUST be returned."
    pub fn empty() -> Vec<u8> {
        IndexPage::new(0).finish()
    }

    /// Adds `descriptor` if the page has room for it; `false` (nothing added) when it is full.
    pub fn push(&mut self, descriptor: &Descriptor) -> bool {
        let Ok(json) = serde_json::to_vec(descriptor) else { return true };
        let separator = usize::from(self.entries > 0);
        let size = self.body.len() + separator + json.len() + INDEX_TAIL.len();
        if self.entries > 0 && size > self.max_bytes {
            return false;
        }
        if separator == 1 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&json);
        self.entries += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(INDEX_TAIL.as_bytes());
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::ImageIndex;

    fn digest(label: &str) -> Digest {
        Digest::sha256_of(label.as_bytes())
    }

    #[test]
    fn a_manifest_with_a_subject_is_listed_with_its_artifact_type_and_annotations() {
        let subject = digest("image");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"application/vnd.example.sbom","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{}","digest":"{subject}","size":7}},"annotations":{{"k":"v"}}}}"#,
            media_type::OCI_MANIFEST,
            digest("{}"),
            media_type::OCI_MANIFEST
        );
        let own = Digest::sha256_of(manifest.as_bytes());
        let (of, descriptor) = referrer_of(media_type::OCI_MANIFEST, &own, manifest.as_bytes()).unwrap();
        assert_eq!(of, subject);
        assert_eq!((descriptor.media_type.as_str(), &descriptor.digest, descriptor.size), (media_type::OCI_MANIFEST, &own, manifest.len() as u64));
        assert_eq!(artifact_type(&descriptor), Some("application/vnd.example.sbom"));
        assert_eq!(descriptor.annotations.as_ref().unwrap()["k"], "v");
    }

    #[test]
    fn artifact_type_falls_back_to_the_config_media_type_and_is_omitted_for_an_index() {
        let subject = digest("image");
        let manifest = format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.example.sig","digest":"{subject}","size":1}},"layers":[],"subject":{{"mediaType":"x","digest":"{subject}","size":1}}}}"#);
        let (_, descriptor) = referrer_of(media_type::OCI_MANIFEST, &digest("m"), manifest.as_bytes()).unwrap();
        assert_eq!(artifact_type(&descriptor), Some("application/vnd.example.sig"));
        assert!(descriptor.annotations.is_none());
        let index = format!(r#"{{"schemaVersion":2,"manifests":[],"subject":{{"mediaType":"x","digest":"{subject}","size":1}}}}"#);
        let (_, descriptor) = referrer_of(media_type::OCI_INDEX, &digest("i"), index.as_bytes()).unwrap();
        assert_eq!(artifact_type(&descriptor), None);
        assert!(!serde_json::to_string(&descriptor).unwrap().contains("artifactType"));
    }

    #[test]
    fn no_valid_subject_no_referrer() {
        for body in [r#"{"schemaVersion":2,"manifests":[]}"#, r#"{"subject":{"digest":"sha256:nope"}}"#, r#"{"subject":"x"}"#, "not json"] {
            assert!(referrer_of(media_type::OCI_INDEX, &digest("i"), body.as_bytes()).is_none(), "{body}");
        }
        assert!(referrer_of("text/plain", &digest("i"), br#"{"subject":{"digest":"sha256:0"}}"#).is_none());
    }

    #[test]
    fn the_filter_compares_artifact_types_exactly() {
        let mut descriptor = Descriptor::new(media_type::OCI_MANIFEST, digest("a"), 1);
        assert!(passes(&descriptor, None));
        assert!(!passes(&descriptor, Some("application/x")));
        descriptor.extra.insert(ARTIFACT_TYPE.into(), "application/x".into());
        assert!(passes(&descriptor, Some("application/x")));
        assert!(!passes(&descriptor, Some("application/X")));
    }

    #[test]
    fn the_fallback_tag_is_algorithm_dash_hex() {
        let d = digest("x");
        assert_eq!(fallback_tag(&d).as_str(), format!("sha256-{}", d.hex()));
        let long: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        assert_eq!(fallback_tag(&long).as_str(), format!("sha512-{}", "ab".repeat(32)));
    }

    #[test]
    fn pages_are_indexes_that_stop_at_their_size() {
        let empty: ImageIndex = serde_json::from_slice(&IndexPage::empty()).unwrap();
        assert!(empty.manifests.is_empty());
        assert_eq!(empty.media_type.as_deref(), Some(media_type::OCI_INDEX));
        let descriptors: Vec<Descriptor> = (0..10).map(|i| Descriptor::new(media_type::OCI_MANIFEST, digest(&i.to_string()), i)).collect();
        let one = serde_json::to_vec(&descriptors[0]).unwrap().len();
        let mut page = IndexPage::new(INDEX_HEAD.len() + INDEX_TAIL.len() + 3 * one + 2);
        let taken = descriptors.iter().take_while(|d| page.push(d)).count();
        assert_eq!((taken, page.len()), (3, 3));
        let body = page.finish();
        let index: ImageIndex = serde_json::from_slice(&body).unwrap();
        assert_eq!(index.manifests, descriptors[..3]);
        let mut tiny = IndexPage::new(1);
        assert!(tiny.push(&descriptors[0]), "a page always takes one descriptor");
        assert!(!tiny.push(&descriptors[1]));
    }
}
