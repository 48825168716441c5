//! Writing content into the cache: temp file, sha256 while writing, fsync, rename.
//! A file under a digest name is therefore always complete and verified, even after
//! `kill -9` or power loss; a dropped `Ingest` leaves nothing behind.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::StoreError;
use super::sync_dir;
use crate::oci::Digest;

/// An in-progress write of one blob. Dropping it without `commit` deletes the temp file.
pub struct Ingest {
    file: Option<File>,
    temp_path: PathBuf,
    blobs_dir: PathBuf,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    pub(super) fn create(temp_path: PathBuf, blobs_dir: PathBuf) -> Result<Ingest, StoreError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(StoreError::io("create", &temp_path))?;
        Ok(Ingest { file: Some(file), temp_path, blobs_dir, hasher: Sha256::new(), written: 0 })
    }

    /// The temp file being written; readers may follow it while it grows.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends a chunk, hashing it on the way.
    ///
    /// # Errors
    /// The write failed (disk full shows as `is_disk_full`).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().ok_or_else(|| closed(&self.temp_path))?;
        file.write_all(chunk).map_err(StoreError::io("write", &self.temp_path))?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks digest and size, makes the bytes durable and publishes them under the digest.
    /// Publishing a digest that is already present is harmless: the bytes are the same.
    ///
    /// # Errors
    /// Mismatching digest or size (nothing is kept), or the fsync/rename failed.
    pub fn commit(mut self, expected: &Digest, expected_size: Option<u64>) -> Result<PathBuf, StoreError> {
        let actual = Digest::sha256_from_bytes(&std::mem::take(&mut self.hasher).finalize().into());
        if let Some(size) = expected_size.filter(|&s| s != self.written) {
            return Err(StoreError::SizeMismatch { expected: size, actual: self.written });
        }
        if &actual != expected {
            return Err(StoreError::DigestMismatch { expected: expected.clone(), actual });
        }
        let file = self.file.take().ok_or_else(|| closed(&self.temp_path))?;
        file.sync_all().map_err(StoreError::io("fsync", &self.temp_path))?;
        drop(file);
        let final_path = self.blobs_dir.join(actual.hex());
        std::fs::rename(&self.temp_path, &final_path).map_err(StoreError::io("rename into place", &final_path))?;
        sync_dir(&self.blobs_dir)?;
        self.temp_path = PathBuf::new();
        Ok(final_path)
    }
}

fn closed(path: &Path) -> StoreError {
    StoreError::Io {
        op: "write",
        path: path.to_owned(),
        source: std::io::Error::other("ingest already finished"),
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.temp_path.as_os_str().is_empty() {
            // Best effort: a leftover temp file is also removed at the next start.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}
