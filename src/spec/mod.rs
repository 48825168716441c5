//! Image specs and where they come from: the in-memory store behind `remote/<id>` (written
//! through the admin API) and the JSON file behind `fixed/<id>` (re-read when it changes).
//! Specs are parsed and validated once, when stored or loaded.

mod image_spec;
mod remote;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use bytes::Bytes;

use crate::file_version::{file_version, FileVersion};
use crate::oci::Digest;

pub use remote::{ContentKeeper, RemoteSpecs, SpecChange, SpecListener};
pub use image_spec::{ContentLayer, ContentLayerSpec, DirectLayerSpec, ImageSpec, RemoteLayerSpec, SourceRef, ValidSpec, LOCAL_PREFIX};


/// The fixed-spec file is looked at (one `stat`) at most this often.
const RELOAD_CHECK_MS: u64 = 1_000;

/// A spec as stored: its validated form, and the document it came from without the direct
/// layers' base64 text. Holding that text too would double what a spec with inline content
/// costs in memory; `to_json` puts it back from the decoded bytes when the document is asked
/// for.
#[derive(Debug)]
pub struct StoredSpec {
    pub spec: ValidSpec,
    document: ImageSpec,
}

impl StoredSpec {
    fn new(mut document: ImageSpec, spec: ValidSpec) -> StoredSpec {
        for direct in document.content_layer.iter_mut().filter_map(|layer| layer.direct.as_mut()) {
            direct.content = String::new();
        }
        StoredSpec { spec, document }
    }

    /// The spec in its canonical JSON form, the one its key is the sha256 of.
    pub fn to_json(&self) -> Vec<u8> {
        let mut document = self.document.clone();
        for (layer, valid) in document.content_layer.iter_mut().zip(&self.spec.content) {
            if let (Some(direct), ContentLayer::Direct { content, .. }) = (layer.direct.as_mut(), valid) {
                direct.content = base64::engine::general_purpose::STANDARD.encode(content);
            }
        }
        // Plain structs of strings and numbers: serializing them cannot fail.
        serde_json::to_vec(&document).unwrap_or_default()
    }

    /// The same spec with each direct layer's content replaced by what `keep` returns for it
    /// (the same bytes, held elsewhere).
    pub async fn keep_content<F, Fut>(self, keep: F) -> StoredSpec
    where
        F: Fn(Digest, Bytes) -> Fut,
        Fut: std::future::Future<Output = Bytes>,
    {
        let StoredSpec { mut spec, document } = self;
        for layer in &mut spec.content {
            if let ContentLayer::Direct { content, digest } = layer {
                *content = keep(digest.clone(), std::mem::take(content)).await;
            }
        }
        StoredSpec { spec, document }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid spec: {0}")]
    Invalid(String),
    #[error("{0}")]
    File(String),
    #[error("spec store: {0}")]
    Unavailable(String),
}

/// Parses and validates a spec document.
///
/// # Errors
/// Not JSON, unknown fields, or a field that does not validate (named).
pub fn parse_spec(json: &[u8]) -> Result<StoredSpec, SpecError> {
    let spec: ImageSpec = serde_json::from_slice(json).map_err(|e| SpecError::Invalid(e.to_string()))?;
    let valid = spec.validate().map_err(SpecError::Invalid)?;
    Ok(StoredSpec::new(spec, valid))
}

struct FixedFile {
    stamp: FileVersion,
    specs: Arc<HashMap<String, Arc<StoredSpec>>>,
}

/// The `fixed/<id>` specs: a JSON object `{ "<id>": <spec>, … }` re-read when the file's
/// modification time or size changes. A file that stops parsing keeps the previous specs
/// (with an error in the log), so a bad edit does not take workspaces down. Specs an edit
/// replaced or removed are told to the listener, as `RemoteSpecs` tells its own.
pub struct FixedSpecFile {
    path: PathBuf,
    loaded: RwLock<FixedFile>,
    checked_ms: AtomicU64,
    listener: Option<SpecListener>,
}

impl FixedSpecFile {
    /// # Errors
    /// The file cannot be read or has an invalid spec (naming the id).
    pub fn open(path: &Path, listener: Option<SpecListener>) -> Result<FixedSpecFile, SpecError> {
        let loaded = RwLock::new(FixedFile { stamp: None, specs: Arc::default() });
        let file = FixedSpecFile { path: path.to_owned(), loaded, checked_ms: AtomicU64::new(0), listener };
        file.reload()?;
        Ok(file)
    }

    pub fn get(&self, id: &str, now_ms: u64) -> Option<Arc<StoredSpec>> {
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= RELOAD_CHECK_MS && self.checked_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            if let Err(e) = self.reload() {
                tracing::error!(path = %self.path.display(), error = %e, "keeping the previous fixed specs");
            }
        }
        self.loaded.read().ok()?.specs.get(id).cloned()
    }

    fn reload(&self) -> Result<(), SpecError> {
        let stamp = file_version(&self.path);
        if stamp.is_some() && self.loaded.read().is_ok_and(|l| l.stamp == stamp) {
            return Ok(());
        }
        let text = std::fs::read(&self.path).map_err(|e| SpecError::File(format!("{}: {e}", self.path.display())))?;
        let documents: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| SpecError::File(format!("{}: not a JSON object of specs: {e}", self.path.display())))?;
        let mut specs = HashMap::new();
        for (id, document) in documents {
            let json = serde_json::to_vec(&document).map_err(|e| SpecError::File(e.to_string()))?;
            let stored = parse_spec(&json).map_err(|e| SpecError::File(format!("{}: spec `{id}`: {e}", self.path.display())))?;
            specs.insert(id, Arc::new(stored));
        }
        tracing::info!(path = %self.path.display(), specs = specs.len(), "loaded fixed specs");
        let specs = Arc::new(specs);
        let previous = match self.loaded.write() {
            Ok(mut loaded) => std::mem::replace(&mut *loaded, FixedFile { stamp, specs: Arc::clone(&specs) }).specs,
            Err(_) => return Ok(()),
        };
        self.tell_changes(&previous, &specs);
        Ok(())
    }

    fn tell_changes(&self, previous: &HashMap<String, Arc<StoredSpec>>, now: &HashMap<String, Arc<StoredSpec>>) {
        let Some(listener) = &self.listener else { return };
        for (id, old) in previous {
            match now.get(id) {
                None => listener(id, old, SpecChange::Removed),
                Some(new) if new.spec.key != old.spec.key => listener(id, old, SpecChange::Replaced),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_file_reloads_and_survives_bad_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("specs.json");
        std::fs::write(&path, br#"{"one": {"baseRef": "a:1"}}"#).unwrap();
        let heard: Arc<std::sync::Mutex<Vec<(String, SpecChange)>>> = Arc::default();
        let record = Arc::clone(&heard);
        let listener: SpecListener = Arc::new(move |id, _, change| record.lock().unwrap().push((id.to_owned(), change)));
        let file = FixedSpecFile::open(&path, Some(listener)).unwrap();
        assert!(file.get("one", 0).is_some());
        std::fs::write(&path, br#"{"two": {"baseRef": "b:1"}, "three": {"baseRef": "c:1"}}"#).unwrap();
        assert!(file.get("two", 500).is_none(), "looked at again only after a second");
        assert!(file.get("two", 1_500).is_some());
        assert_eq!(heard.lock().unwrap().as_slice(), &[("one".to_owned(), SpecChange::Removed)], "what was built from `one` can go");
        std::fs::write(&path, br#"{"four": {"baseRef": "NOT VALID"}}"#).unwrap();
        assert!(file.get("three", 3_000).is_some(), "a bad edit keeps the previous specs");
        std::fs::write(&path, b"{").unwrap();
        assert!(FixedSpecFile::open(&path, None).is_err());
    }

    #[test]
    fn a_stored_spec_gives_back_its_document_from_kept_content() {
        let json = br#"{"baseRef": "a:1", "contentLayer": [{"direct": {"content": "aGVsbG8="}}, {"remote": {"url": "https://b/l", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 5}}]}"#;
        let stored = parse_spec(json).unwrap();
        let key = stored.spec.key.clone();
        assert!(stored.document.content_layer[0].direct.as_ref().is_some_and(|d| d.content.is_empty()), "the base64 text is not held twice");
        let kept = futures_lite::future::block_on(stored.keep_content(|_, bytes| async move { Bytes::from(bytes.to_vec()) }));
        let again = parse_spec(&kept.to_json()).unwrap();
        assert_eq!((again.spec.key, &again.spec.content), (key, &kept.spec.content), "canonical JSON: the same key, the same layers");
    }
}
