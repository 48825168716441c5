//! The per-repository record on disk: tags, the manifests (with media types), the blobs a
//! repository may serve, and which of its manifests refer to which (`subject`). Replaced atomically under an exclusive `flock`, so concurrent imports
//! merge and a crash leaves either the old or the new record, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::write_file_atomically;
use crate::oci::manifest::Descriptor;
use crate::oci::{Digest, RepositoryName, Tag};

const RECORD_FILE: &str = "_repository.json";
const LOCK_FILE: &str = "_repository.lock";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryRecord {
    /// Tag → manifest digest.
    pub tags: BTreeMap<Tag, Digest>,
    /// Every manifest or index of the repository → its media type.
    pub manifests: BTreeMap<Digest, String>,
    /// Every config and layer the repository's manifests refer to.
    pub blobs: BTreeSet<Digest>,
    /// Subject digest → the manifests of this repository whose `subject` it is, by digest, each
    /// as the referrers API lists it. Kept when the manifests are imported, so answering reads
    /// no manifest. Left out of records without referrers, so that those stay readable by
    /// earlier versions (the record denies unknown fields).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub referrers: BTreeMap<Digest, BTreeMap<Digest, Descriptor>>,
}

impl RepositoryRecord {
    /// Adds `other` into `self`; tags of `other` win.
    pub fn merge(&mut self, other: RepositoryRecord) {
        self.tags.extend(other.tags);
        self.manifests.extend(other.manifests);
        self.blobs.extend(other.blobs);
        for (subject, referrers) in other.referrers {
            self.referrers.entry(subject).or_default().extend(referrers);
        }
    }
}

/// The directory of a repository's record. Name components are safe path segments by
/// construction (`RepositoryName` grammar), and `_` cannot start one, so records never clash.
pub(super) fn record_dir(repos_root: &Path, name: &RepositoryName) -> PathBuf {
    name.components().fold(repos_root.to_path_buf(), |dir, component| dir.join(component))
}

pub(super) fn read(repos_root: &Path, name: &RepositoryName) -> Result<Option<RepositoryRecord>, StoreError> {
    let path = record_dir(repos_root, name).join(RECORD_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::BadRecord { path, reason: e.to_string() })
}

/// Read-modify-write of a record under an exclusive lock held across processes.
pub(super) fn update(
    repos_root: &Path,
    name: &RepositoryName,
    change: impl FnOnce(&mut RepositoryRecord),
) -> Result<RepositoryRecord, StoreError> {
    let dir = record_dir(repos_root, name);
    std::fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(StoreError::io("create", &lock_path))?;
    // SAFETY: flock on a descriptor we own; the lock is released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(StoreError::io("lock", &lock_path)(std::io::Error::last_os_error()));
    }
    let mut record = read(repos_root, name)?.unwrap_or_default();
    change(&mut record);
    let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::BadRecord {
        path: dir.join(RECORD_FILE),
        reason: e.to_string(),
    })?;
    write_file_atomically(&dir, RECORD_FILE, &json)?;
    drop(lock);
    Ok(record)
}
