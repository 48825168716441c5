//! The local layer cache on disk: content-addressed blobs, verified ingest, mmapped reads and
//! the per-repository records. Synchronous by design: callers on an executor run these calls
//! on the blocking pool; only `map_blob` of a known-present blob is cheap enough to call inline.

mod error;
mod ingest;
mod instance;
mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use memmap2::{Advice, Mmap};

pub use error::StoreError;
pub use ingest::Ingest;
pub use instance::{remove_stale as remove_stale_instances, InstanceDir};
pub use record::RepositoryRecord;

use crate::oci::digest::Algorithm;
use crate::oci::{Digest, RepositoryName};

/// A blob file mapped for serving.
pub struct MappedFile {
    pub body: Bytes,
    pub file: std::fs::File,
    pub identity: FileIdentity,
}

/// What tells, without reading a file, that it is still the file that was verified: the same
/// inode, size, and modification and change times. Any write, truncation, replacement or
/// `chmod` behind our back changes at least one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The cache directory: `blobs/sha256/<hex>`, `repos/<name>/_repository.json`,
/// `tmp/<pid>-<random>/` for the ingests in progress of each open cache (see `instance`).
#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    blobs: PathBuf,
    repos: PathBuf,
    tmp: instance::InstanceDir,
    next_temp: AtomicU64,
}

impl CacheDir {
    /// Opens (creating if needed) a cache directory and removes temp files left by instances
    /// that are gone, e.g. after `kill -9`; those of live instances (another process, even one
    /// with the same pid in another container, or another open in this process) are kept.
    ///
    /// # Errors
    /// The directories cannot be created or read.
    pub fn open(root: &Path) -> Result<CacheDir, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let repos = root.join("repos");
        let tmp_root = root.join("tmp");
        for dir in [&blobs, &repos, &tmp_root] {
            std::fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        }
        instance::remove_stale(&tmp_root)?;
        // One temp directory per open cache, so that two users of one cache directory never
        // share or delete each other's ingests.
        let tmp = instance::InstanceDir::create(&tmp_root)?;
        Ok(CacheDir { root: root.to_owned(), blobs, repos, tmp, next_temp: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob of `digest` lives (whether or not it is there).
    ///
    /// # Errors
    /// `UnsupportedDigest` for anything but sha256.
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        match digest.algorithm() {
            Algorithm::Sha256 => Ok(self.blobs.join(digest.hex())),
            Algorithm::Sha512 => Err(StoreError::UnsupportedDigest(digest.clone())),
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Maps a blob read-only as zero-copy `Bytes`, asking the kernel to read ahead so that
    /// serving it does not stall on page faults; returns the open file and its identity too.
    /// `None` when the blob is not cached.
    ///
    /// The file is trusted only if its identity is `trusted` (what it was when this process
    /// last verified or wrote it); otherwise its bytes are hashed first, so a file changed,
    /// truncated or replaced behind our back is never served. A file that fails the check is
    /// deleted (it can only be wrong) and reported as `DigestMismatch`/`SizeMismatch`.
    ///
    /// # Errors
    /// The file exists but cannot be opened, mapped or hashed, or its bytes are not the blob.
    pub fn map_blob(&self, digest: &Digest, trusted: Option<FileIdentity>) -> Result<Option<MappedFile>, StoreError> {
        let Ok(path) = self.blob_path(digest) else { return Ok(None) };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let identity = file.metadata().map(|m| FileIdentity::of(&m)).map_err(StoreError::io("stat", &path))?;
        // SAFETY: blob files are immutable once renamed into place and are never truncated or
        // rewritten by us (an identical re-publish replaces the directory entry, not the
        // inode), so the mapping cannot change or shrink under us. A writer outside the
        // facade can break this; docs/security.md says why that is outside what we defend.
        let map = unsafe { Mmap::map(&file) }.map_err(StoreError::io("mmap", &path))?;
        if trusted != Some(identity) {
            let actual = Digest::sha256_of(&map);
            if &actual != digest {
                drop(map);
                let _ = std::fs::remove_file(&path);
                return Err(StoreError::DigestMismatch { expected: digest.clone(), actual });
            }
        }
        if !map.is_empty() {
            // Advisory only: a failure just means no readahead.
            let _ = map.advise(Advice::WillNeed);
        }
        Ok(Some(MappedFile { body: Bytes::from_owner(map), file, identity }))
    }

    /// The identity of a cached blob's file, `None` if it is not there.
    ///
    /// # Errors
    /// The file exists but cannot be examined.
    pub fn blob_identity(&self, digest: &Digest) -> Result<Option<FileIdentity>, StoreError> {
        let Ok(path) = self.blob_path(digest) else { return Ok(None) };
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(FileIdentity::of(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("stat", &path)(e)),
        }
    }

    /// Reads a small blob (a manifest or config) and verifies its digest. A corrupted file is
    /// never returned: it is deleted (it can only be wrong) and reported as a miss, so that the
    /// caller fetches the blob again instead of failing on it forever.
    ///
    /// # Errors
    /// I/O failure, or a blob larger than `max_len`.
    pub fn read_verified(&self, digest: &Digest, max_len: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(path) = self.blob_path(digest) else { return Ok(None) };
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("stat", &path)(e)),
        };
        if size > max_len {
            return Err(StoreError::SizeMismatch { expected: max_len, actual: size });
        }
        let bytes = std::fs::read(&path).map_err(StoreError::io("read", &path))?;
        let actual = Digest::sha256_of(&bytes);
        if &actual != digest {
            tracing::warn!(path = %path.display(), expected = %digest, %actual, "removing a cached blob whose bytes do not match its digest");
            remove_corrupt(&path)?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Starts writing a blob; see `Ingest`.
    ///
    /// # Errors
    /// The temp file cannot be created.
    pub fn begin_ingest(&self) -> Result<Ingest, StoreError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        Ingest::create(self.tmp.path().join(format!("ingest-{n}")), self.blobs.clone())
    }

    /// Stores a whole in-memory blob (small documents; streams use `begin_ingest`). Returns
    /// the identity of the file it wrote (so it can be opened later without hashing it again),
    /// `None` if the blob was already there. A file already there with other bytes is
    /// corrupt (`bytes` are verified against `digest` before they replace it) and is replaced.
    ///
    /// # Errors
    /// As `Ingest::commit`, or the written file cannot be examined.
    pub fn put_verified(&self, digest: &Digest, bytes: &[u8]) -> Result<Option<FileIdentity>, StoreError> {
        if self.holds_bytes(digest, bytes)? {
            return Ok(None);
        }
        let mut ingest = self.begin_ingest()?;
        ingest.write(bytes)?;
        let path = ingest.commit(digest, Some(bytes.len() as u64))?;
        let meta = std::fs::metadata(&path).map_err(StoreError::io("stat", &path))?;
        Ok(Some(FileIdentity::of(&meta)))
    }

    /// Whether the file of `digest` holds exactly `bytes`. Compared in chunks rather than
    /// read whole: static layers are put this way too and may be large.
    fn holds_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, StoreError> {
        use std::io::Read;
        let path = self.blob_path(digest)?;
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let mut chunk = vec![0; 64 * 1024];
        let mut expected = bytes;
        loop {
            let n = file.read(&mut chunk).map_err(StoreError::io("read", &path))?;
            if n == 0 {
                return Ok(expected.is_empty());
            }
            match expected.split_at_checked(n) {
                Some((head, rest)) if head == &chunk[..n] => expected = rest,
                _ => return Ok(false),
            }
        }
    }

    /// Lists every cached blob with its size; files whose names are not sha256 digests are junk
    /// from outside and are removed.
    ///
    /// # Errors
    /// The blob directory cannot be read.
    pub fn scan_blobs(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let entries = std::fs::read_dir(&self.blobs).map_err(StoreError::io("list", &self.blobs))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &self.blobs))?;
            let name = entry.file_name();
            let digest = name.to_str().and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
            match (digest, entry.metadata()) {
                (Some(digest), Ok(meta)) if meta.is_file() => found.push((digest, meta.len())),
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(found)
    }

    /// The record of a local repository, if one was ever written.
    ///
    /// # Errors
    /// The record exists but cannot be read or parsed.
    pub fn read_record(&self, name: &RepositoryName) -> Result<Option<RepositoryRecord>, StoreError> {
        record::read(&self.repos, name)
    }

    /// Every repository record in the cache (to pin their content at start).
    ///
    /// # Errors
    /// The repository tree cannot be listed, or a record cannot be read.
    pub fn list_records(&self) -> Result<Vec<(RepositoryName, RepositoryRecord)>, StoreError> {
        let mut found = Vec::new();
        let mut pending = vec![self.repos.clone()];
        while let Some(dir) = pending.pop() {
            let entries = std::fs::read_dir(&dir).map_err(StoreError::io("list", &dir))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let is_record = path.file_name().is_some_and(|n| n == "_repository.json");
                let name = path.parent().and_then(|p| p.strip_prefix(&self.repos).ok()).and_then(|p| p.to_str()).and_then(|p| p.parse().ok());
                if let (true, Some(name)) = (is_record, name) {
                    if let Some(record) = self.read_record(&name)? {
                        found.push((name, record));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Changes a repository record atomically (exclusive across processes) and returns it.
    ///
    /// # Errors
    /// The record cannot be locked, read or written.
    pub fn update_record(
        &self,
        name: &RepositoryName,
        change: impl FnOnce(&mut RepositoryRecord),
    ) -> Result<RepositoryRecord, StoreError> {
        record::update(&self.repos, name, change)
    }
}

/// Deletes a blob file found corrupt; already gone (a concurrent reader found it first) is fine.
fn remove_corrupt(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io("remove corrupt blob", path)(e)),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Replaces `dir/name` with `bytes` so that readers see the old or the new file, never a mix.
pub(crate) fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temp).map_err(StoreError::io("create", &temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("write", &temp))?;
    let target = dir.join(name);
    std::fs::rename(&temp, &target).map_err(StoreError::io("rename into place", &target))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, CacheDir) {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        (dir, cache)
    }

    #[test]
    fn ingest_verifies_and_publishes() {
        let (_dir, cache) = cache();
        let data = b"hello blob";
        let digest = Digest::sha256_of(data);
        let mut ingest = cache.begin_ingest().unwrap();
        let temp = ingest.temp_path().to_owned();
        ingest.write(&data[..5]).unwrap();
        ingest.write(&data[5..]).unwrap();
        ingest.commit(&digest, Some(data.len() as u64)).unwrap();
        assert!(!temp.exists());
        assert_eq!(cache.map_blob(&digest, None).unwrap().unwrap().body, &data[..]);
        assert_eq!(cache.read_verified(&digest, 100).unwrap().unwrap(), data);
        assert_eq!(cache.scan_blobs().unwrap(), vec![(digest, data.len() as u64)]);
    }

    #[test]
    fn ingest_rejects_wrong_content_and_keeps_nothing() {
        let (_dir, cache) = cache();
        let wanted = Digest::sha256_of(b"right");
        let mut ingest = cache.begin_ingest().unwrap();
        let temp = ingest.temp_path().to_owned();
        ingest.write(b"wrong").unwrap();
        assert!(matches!(ingest.commit(&wanted, None), Err(StoreError::DigestMismatch { .. })));
        assert!(!temp.exists());
        assert!(!cache.contains(&wanted));
        let mut short = cache.begin_ingest().unwrap();
        short.write(b"right").unwrap();
        assert!(matches!(short.commit(&wanted, Some(6)), Err(StoreError::SizeMismatch { .. })));
        assert!(cache.map_blob(&wanted, None).unwrap().is_none());
    }

    #[test]
    fn a_corrupted_small_blob_is_removed_and_reported_as_a_miss() {
        let (_dir, cache) = cache();
        let digest = Digest::sha256_of(b"{}");
        cache.put_verified(&digest, b"{}").unwrap();
        let path = cache.blob_path(&digest).unwrap();
        std::fs::write(&path, b"{ }").unwrap();
        assert_eq!(cache.read_verified(&digest, 10).unwrap(), None, "a miss, so the caller fetches it again");
        assert!(!path.exists(), "the corrupt file is gone");
        assert!(cache.put_verified(&digest, b"{}").unwrap().is_some(), "and storing it again writes it");
        assert_eq!(cache.read_verified(&digest, 10).unwrap().unwrap(), b"{}");
    }

    #[test]
    fn putting_a_blob_replaces_a_corrupt_file_and_keeps_a_good_one() {
        let (_dir, cache) = cache();
        let digest = Digest::sha256_of(b"config");
        let path = cache.blob_path(&digest).unwrap();
        for corrupt in [&b"CONFIG"[..], b"conf", b"config and more"] {
            std::fs::write(&path, corrupt).unwrap();
            assert!(cache.put_verified(&digest, b"config").unwrap().is_some(), "{corrupt:?} is replaced");
            assert_eq!(std::fs::read(&path).unwrap(), b"config");
        }
        assert_eq!(cache.put_verified(&digest, b"config").unwrap(), None, "the right bytes are kept as they are");
        assert!(matches!(cache.put_verified(&digest, b"other"), Err(StoreError::DigestMismatch { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"config", "wrong bytes never replace a good file");
    }

    #[test]
    fn blob_files_are_hashed_unless_their_identity_is_trusted() {
        let (_dir, cache) = cache();
        let digest = Digest::sha256_of(b"layer bytes");
        cache.put_verified(&digest, b"layer bytes").unwrap();
        let first = cache.map_blob(&digest, None).unwrap().unwrap();
        assert_eq!(first.body, &b"layer bytes"[..]);
        assert_eq!(cache.blob_identity(&digest).unwrap(), Some(first.identity));
        let path = cache.blob_path(&digest).unwrap();
        std::fs::write(&path, b"LAYER BYTES").unwrap();
        // The old identity no longer matches: the file is hashed, found wrong and deleted.
        assert!(matches!(cache.map_blob(&digest, Some(first.identity)), Err(StoreError::DigestMismatch { .. })));
        assert!(!path.exists());
        assert!(cache.map_blob(&digest, Some(first.identity)).unwrap().is_none());
    }

    #[test]
    fn stale_temp_files_and_junk_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp/999999999-0")).unwrap();
        std::fs::write(dir.path().join("tmp/999999999-0/ingest-0"), b"partial").unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        assert!(!dir.path().join("tmp/999999999-0").exists());
        assert!(cache.scan_blobs().unwrap().is_empty());
        assert!(!dir.path().join("blobs/sha256/not-a-digest").exists());
    }

    #[test]
    fn records_merge_and_survive_reopen() {
        let (dir, cache) = cache();
        let name: RepositoryName = "a/b".parse().unwrap();
        assert!(cache.read_record(&name).unwrap().is_none());
        let d = Digest::sha256_of(b"m");
        cache
            .update_record(&name, |r| {
                r.tags.insert("v1".parse().unwrap(), d.clone());
                r.manifests.insert(d.clone(), "x".into());
            })
            .unwrap();
        cache.update_record(&name, |r| { r.tags.insert("v2".parse().unwrap(), d.clone()); }).unwrap();
        drop(cache);
        let cache = CacheDir::open(dir.path()).unwrap();
        let record = cache.read_record(&name).unwrap().unwrap();
        assert_eq!(record.tags.len(), 2);
        assert!(cache.read_record(&"a".parse().unwrap()).unwrap().is_none());
    }
}
