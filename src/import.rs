//! `import`: copies an OCI image layout into the cache as a local repository, with the
//! referrers of what it imports (manifests whose `subject` names it: signatures, SBOMs, lazy-pull
//! indexes). Every blob is checked (size and sha256) on the way in; the repository record is
//! written last and atomically, so a failed import leaves nothing visible.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::oci::digest::Algorithm;
use crate::oci::manifest::{Descriptor, ImageIndex, Manifest, MAX_MANIFEST_BYTES};
use crate::oci::media_type;
use crate::oci::referrers::referrer_of;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::store::{CacheDir, RepositoryRecord, StoreError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    #[error("cache: {0}")]
    Store(#[from] StoreError),
}

/// What an import added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub tags: Vec<(Tag, Digest)>,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Imports the layout at `layout` as repository `name`. With `tag`: the entry tagged so, or
/// the only entry of a one-image layout (re-tagged). Without: every tagged entry, or the
/// only entry as `latest`. Then the referrers (`import_referrers`).
///
/// # Errors
/// A missing or malformed layout file, a blob whose size or digest is wrong (naming the file),
/// or a cache write failure.
pub fn import_layout(cache: &CacheDir, layout: &Path, name: &RepositoryName, tag: Option<&Tag>) -> Result<ImportSummary, ImportError> {
    check_layout_marker(layout)?;
    let index_path = layout.join("index.json");
    let index_bytes = read_limited(&index_path, MAX_MANIFEST_BYTES)?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes).map_err(|e| bad(&index_path, format!("not an image index: {e}")))?;
    let selected = select_entries(&index, tag).map_err(|reason| bad(&index_path, reason))?;

    let mut walk = Walk { cache, layout, record: RepositoryRecord::default(), seen: BTreeSet::new(), bytes: 0 };
    for (tag, entry) in &selected {
        walk.import(entry)?;
        walk.record.tags.insert(tag.clone(), entry.digest.clone());
    }
    walk.import_referrers(&index, tag.is_none())?;
    let Walk { record, bytes, .. } = walk;
    let summary = ImportSummary {
        tags: record.tags.iter().map(|(t, d)| (t.clone(), d.clone())).collect(),
        manifests: record.manifests.len(),
        blobs: record.blobs.len(),
        bytes,
    };
    cache.update_record(name, |existing| existing.merge(record))?;
    Ok(summary)
}

fn bad(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Layout { path: path.to_owned(), reason: reason.into() }
}

fn check_layout_marker(layout: &Path) -> Result<(), ImportError> {
    let path = layout.join("oci-layout");
    let bytes = read_limited(&path, 4096)?;
    let marker: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&path, format!("not JSON: {e}")))?;
    match marker.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(v) if v.starts_with("1.") => Ok(()),
        Some(v) => Err(bad(&path, format!("unsupported imageLayoutVersion {v}"))),
        None => Err(bad(&path, "has no imageLayoutVersion (not an OCI image layout)")),
    }
}

/// The tag a layout entry carries: `ref.name` is a tag, or a full reference ending in one.
fn entry_tag(entry: &Descriptor) -> Option<Tag> {
    let ref_name = entry.annotations.as_ref()?.get(REF_NAME)?;
    ref_name.parse().ok().or_else(|| {
        let (_, after_slash) = ref_name.rsplit_once('/').unwrap_or(("", ref_name));
        after_slash.rsplit_once(':').and_then(|(_, tag)| tag.parse().ok())
    })
}

fn select_entries<'a>(index: &'a ImageIndex, tag: Option<&Tag>) -> Result<Vec<(Tag, &'a Descriptor)>, String> {
    let tagged: Vec<(Tag, &Descriptor)> = index.manifests.iter().filter_map(|e| entry_tag(e).map(|t| (t, e))).collect();
    let single = match index.manifests.as_slice() {
        [only] => Some(only),
        _ => None,
    };
    let known = || tagged.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", ");
    match tag {
        Some(tag) => match tagged.iter().find(|(t, _)| t == tag) {
            Some((_, entry)) => Ok(vec![(tag.clone(), *entry)]),
            // A layout holding one image is imported under whatever tag the user names.
            None => single
                .map(|entry| vec![(tag.clone(), entry)])
                .ok_or_else(|| format!("no manifest is tagged `{tag}` (tags here: {})", known())),
        },
        None if !tagged.is_empty() => Ok(tagged),
        None => match single {
            Some(entry) => Ok(vec![(Tag::latest(), entry)]),
            None => Err("index has no tagged manifest; name a tag".to_owned()),
        },
    }
}

struct Walk<'a> {
    cache: &'a CacheDir,
    layout: &'a Path,
    record: RepositoryRecord,
    seen: BTreeSet<Digest>,
    bytes: u64,
}

impl Walk<'_> {
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf, ImportError> {
        match digest.algorithm() {
            Algorithm::Sha256 => Ok(self.layout.join("blobs").join("sha256").join(digest.hex())),
            Algorithm::Sha512 => Err(bad(&self.layout.join("index.json"), format!("{digest}: only sha256 content is supported"))),
        }
    }

    fn import(&mut self, descriptor: &Descriptor) -> Result<(), ImportError> {
        if !self.seen.insert(descriptor.digest.clone()) {
            return Ok(());
        }
        let path = self.blob_path(&descriptor.digest)?;
        if media_type::manifest_kind(&descriptor.media_type).is_none() {
            self.copy_blob(&path, descriptor)?;
            self.record.blobs.insert(descriptor.digest.clone());
            return Ok(());
        }
        let bytes = read_limited(&path, MAX_MANIFEST_BYTES)?;
        check_content(&path, descriptor, bytes.len() as u64, &Digest::sha256_of(&bytes))?;
        let manifest = Manifest::parse(&descriptor.media_type, &bytes).map_err(|e| bad(&path, e.to_string()))?;
        for child in manifest.children() {
            self.import(child)?;
        }
        // The stored bytes are the layout's, `subject` and all; the record keeps the relation.
        self.cache.put_verified(&descriptor.digest, &bytes)?;
        self.record.manifests.insert(descriptor.digest.clone(), descriptor.media_type.clone());
        if let Some((subject, listed)) = referrer_of(&descriptor.media_type, &descriptor.digest, &bytes) {
            self.record.referrers.entry(subject).or_default().insert(descriptor.digest.clone(), listed);
        }
        Ok(())
    }

    /// Imports the entries of the layout's `index.json` that were not selected but belong with
    /// what was: manifests whose `subject` is an imported manifest (and so on, for a signature
    /// of an SBOM), and entries tagged with the referrers tag schema of an imported manifest
    /// (`sha256-<hex>`, and cosign's `sha256-<hex>.sig`/`.att`/`.sbom`), with their tags. A whole
    /// layout (`every_subject`) brings every manifest with a `subject`, also one whose subject
    /// is not in the layout: the spec lists a referrer whether or not its subject exists.
    /// Entries that cannot be read are left out here (they are extras); one that is chosen is
    /// verified like any other.
    fn import_referrers(&mut self, index: &ImageIndex, every_subject: bool) -> Result<(), ImportError> {
        let mut pending: Vec<(&Descriptor, Option<Digest>, Option<Tag>)> = index
            .manifests
            .iter()
            .filter(|entry| media_type::manifest_kind(&entry.media_type).is_some())
            .map(|entry| (entry, self.peek_subject(entry), entry_tag(entry)))
            .collect();
        loop {
            let before = pending.len();
            let mut left = Vec::with_capacity(pending.len());
            for (entry, subject, tag) in pending {
                let companion = tag.as_ref().filter(|t| self.names_an_imported_manifest(t));
                let referrer = subject.as_ref().is_some_and(|s| every_subject || self.record.manifests.contains_key(s));
                if self.seen.contains(&entry.digest) && companion.is_none() {
                    continue;
                }
                if !(referrer || companion.is_some()) {
                    left.push((entry, subject, tag));
                    continue;
                }
                self.import(entry)?;
                if let Some(tag) = companion {
                    self.record.tags.insert(tag.clone(), entry.digest.clone());
                }
            }
            if left.len() == before {
                return Ok(());
            }
            pending = left;
        }
    }

    /// The `subject` of the manifest an index entry names, if it can be read and has one.
    fn peek_subject(&self, entry: &Descriptor) -> Option<Digest> {
        let path = self.blob_path(&entry.digest).ok()?;
        let bytes = read_limited(&path, MAX_MANIFEST_BYTES).ok()?;
        referrer_of(&entry.media_type, &entry.digest, &bytes).map(|(subject, _)| subject)
    }

    /// Whether `tag` is the referrers tag schema of an imported manifest (or cosign's suffixed
    /// form of it). Imported content is sha256 (`blob_path`), whose hex the schema keeps whole.
    fn names_an_imported_manifest(&self, tag: &Tag) -> bool {
        let Some(hex) = tag.as_str().strip_prefix("sha256-") else { return false };
        let hex = hex.split_once('.').map_or(hex, |(hex, _)| hex);
        format!("sha256:{hex}").parse::<Digest>().is_ok_and(|digest| self.record.manifests.contains_key(&digest))
    }

    /// Streams a layer or config into the cache, verifying size and digest; when the cache
    /// already holds it the source is still verified, so a broken layout never imports.
    fn copy_blob(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), ImportError> {
        let mut file = File::open(path).map_err(|e| bad(path, format!("cannot open blob: {e}")))?;
        let size = file.metadata().map_err(|e| bad(path, e.to_string()))?.len();
        if size != descriptor.size {
            return Err(bad(path, format!("has {size} bytes, but its descriptor says {}", descriptor.size)));
        }
        let mut ingest = if self.cache.contains(&descriptor.digest) { None } else { Some(self.cache.begin_ingest()?) };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut chunk = vec![0u8; COPY_CHUNK];
        loop {
            let n = file.read(&mut chunk).map_err(|e| bad(path, format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut hasher, &chunk[..n]);
            if let Some(ingest) = ingest.as_mut() {
                ingest.write(&chunk[..n])?;
            }
        }
        let actual = Digest::sha256_from_bytes(&sha2::Digest::finalize(hasher).into());
        check_content(path, descriptor, size, &actual)?;
        if let Some(ingest) = ingest {
            ingest.commit(&descriptor.digest, Some(size))?;
            self.bytes += size;
        }
        Ok(())
    }
}

fn check_content(path: &Path, descriptor: &Descriptor, size: u64, actual: &Digest) -> Result<(), ImportError> {
    if size != descriptor.size {
        return Err(bad(path, format!("has {size} bytes, but its descriptor says {}", descriptor.size)));
    }
    if actual != &descriptor.digest {
        return Err(bad(path, format!("content has digest {actual}, but its descriptor says {}", descriptor.digest)));
    }
    Ok(())
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, ImportError> {
    let file = File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    if bytes.len() > limit {
        return Err(bad(path, format!("is larger than {limit} bytes")));
    }
    Ok(bytes)
}
