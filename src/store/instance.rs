//! The temp directory of one open cache (or blob space), `tmp/<pid>-<random>/`, owned by
//! whoever holds the `flock` on its `lock` file. Liveness is that lock, never the pid: pids
//! repeat across restarts and across containers sharing a volume.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// Inside each instance directory; ingests are `ingest-<n>`, so the names cannot clash.
const LOCK_FILE: &str = "lock";
/// Names drawn before giving up. Only a concurrent open that takes a half-made directory for
/// a dead one's makes us draw again, so more than a couple means something else is wrong.
const CREATE_ATTEMPTS: usize = 8;

/// A temp directory held for the life of this value and removed when it is dropped.
#[derive(Debug)]
pub struct InstanceDir {
    path: PathBuf,
    /// Holds the exclusive lock; closing it (on drop, or when the process dies) frees it.
    _lock: File,
}

impl InstanceDir {
    /// Creates and locks a directory of a name no other instance uses.
    ///
    /// # Errors
    /// The directory or its lock file cannot be created or locked.
    pub fn create(tmp_root: &Path) -> Result<InstanceDir, StoreError> {
        for _ in 0..CREATE_ATTEMPTS {
            // The random part keeps names apart when pids repeat; `create_dir` (not `_all`)
            // makes the name ours alone even if two draws ever met.
            let path = tmp_root.join(format!("{}-{:016x}", std::process::id(), fastrand::u64(..)));
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create directory", &path)(e)),
            }
            if let Some(lock) = lock_new_dir(&path)? {
                return Ok(InstanceDir { path, _lock: lock });
            }
        }
        Err(StoreError::io("create a temp directory in", tmp_root)(std::io::Error::other(
            "each new directory was removed as stale by a concurrent open before it could be locked",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        // Removed while the lock is still held (fields drop after this), so no other open
        // takes a directory with files still in it for its own. Best effort: what is left is
        // removed by the next open, as after a crash.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Locks the lock file of a directory just made; `None` if a concurrent open removed the
/// directory first (see `claim`), and the caller draws another name.
fn lock_new_dir(dir: &Path) -> Result<Option<File>, StoreError> {
    let lock_path = dir.join(LOCK_FILE);
    match File::options().read(true).write(true).create_new(true).open(&lock_path) {
        Ok(lock) => claim(lock, &lock_path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("create", &lock_path)(e)),
    }
}

/// Takes the exclusive lock on a lock file just created. Between `mkdir` and this lock, a
/// concurrent `remove_stale` may see the directory unlocked and remove it, holding a shared
/// lock meanwhile; so the lock counts only if it is granted and its file is still the one at
/// the path.
fn claim(lock: File, lock_path: &Path) -> Result<Option<File>, StoreError> {
    if !try_flock(&lock, libc::LOCK_EX).map_err(StoreError::io("lock", lock_path))? {
        return Ok(None);
    }
    let ours = lock.metadata().map_err(StoreError::io("stat", lock_path))?;
    match std::fs::metadata(lock_path) {
        Ok(at_path) if same_file(&ours, &at_path) => Ok(Some(lock)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("stat", lock_path)(e)),
    }
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Removes every entry of `tmp/` that no live instance holds: directories whose lock can be
/// taken or that have no lock file (a crash between `mkdir` and the lock, or a layout older
/// than the locks), and stray files.
///
/// # Errors
/// `tmp/` cannot be listed, or a stale entry cannot be examined or removed.
pub fn remove_stale(tmp_root: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(tmp_root).map_err(StoreError::io("list", tmp_root))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", tmp_root))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(StoreError::io("stat", &path))?.is_dir();
        if !is_dir {
            ignore_gone(std::fs::remove_file(&path)).map_err(StoreError::io("remove stray temp file", &path))?;
            continue;
        }
        // Held across the removal, so that an instance still between `mkdir` and its lock
        // cannot take the directory while it is being emptied (see `lock_new_dir`).
        let Probe::Stale(_held_while_removing) = probe(&path.join(LOCK_FILE))? else { continue };
        tracing::debug!(path = %path.display(), "removing the temp directory of an instance that is gone");
        ignore_gone(std::fs::remove_dir_all(&path)).map_err(StoreError::io("remove stale temp files", &path))?;
    }
    Ok(())
}

enum Probe {
    /// Some process holds the lock, or we cannot tell: keep the directory.
    Live,
    /// Nobody holds it; the file (if any) is locked shared by us until dropped.
    Stale(Option<File>),
}

fn probe(lock_path: &Path) -> Result<Probe, StoreError> {
    // Read-only: enough for `flock`, and works on a lock file another user (a root `import`)
    // created.
    let lock = match File::open(lock_path) {
        Ok(lock) => lock,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Probe::Stale(None)),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            tracing::warn!(path = %lock_path.display(), error = %e, "cannot tell whether a temp directory is in use; keeping it");
            return Ok(Probe::Live);
        }
        Err(e) => return Err(StoreError::io("open", lock_path)(e)),
    };
    // Shared, not exclusive: a shared lock needs no write access, and two opens probing the
    // same dead directory at once may both remove it.
    match try_flock(&lock, libc::LOCK_SH).map_err(StoreError::io("lock", lock_path))? {
        true => Ok(Probe::Stale(Some(lock))),
        false => Ok(Probe::Live),
    }
}

/// `flock` without waiting; `false` if another open file holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own; the lock is released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            ErrorKind::WouldBlock => return Ok(false),
            ErrorKind::Interrupted => continue,
            _ => return Err(error),
        }
    }
}

/// A concurrent open may remove the same stale entry first.
fn ignore_gone(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CacheDir;

    #[test]
    fn a_locked_directory_is_live_and_an_unlocked_one_stale() {
        let root = tempfile::tempdir().unwrap();
        let live = InstanceDir::create(root.path()).unwrap();
        assert!(matches!(probe(&live.path().join(LOCK_FILE)).unwrap(), Probe::Live));
        let dead = root.path().join("1-0");
        std::fs::create_dir(&dead).unwrap();
        File::create(dead.join(LOCK_FILE)).unwrap();
        assert!(matches!(probe(&dead.join(LOCK_FILE)).unwrap(), Probe::Stale(Some(_))));
        assert!(matches!(probe(&root.path().join("none").join(LOCK_FILE)).unwrap(), Probe::Stale(None)));
    }

    #[test]
    fn a_new_directory_taken_for_stale_by_a_concurrent_open_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        // Removed before its lock file could be made.
        assert!(lock_new_dir(&root.path().join("1-removed")).unwrap().is_none());
        // Being removed: the remover holds a shared lock on the lock file.
        let held = root.path().join("held");
        let lock = File::create(&held).unwrap();
        let remover = File::open(&held).unwrap();
        assert!(try_flock(&remover, libc::LOCK_SH).unwrap());
        assert!(claim(lock, &held).unwrap().is_none());
        drop(remover);
        // Removed after the lock file was made: a lock on an unlinked file guards nothing.
        let unlinked = root.path().join("unlinked");
        let lock = File::create(&unlinked).unwrap();
        std::fs::remove_file(&unlinked).unwrap();
        assert!(claim(lock, &unlinked).unwrap().is_none());
        // Neither: the lock is ours.
        let fine = root.path().join("fine");
        assert!(claim(File::create(&fine).unwrap(), &fine).unwrap().is_some());
    }

    #[test]
    fn dropping_removes_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let instance = InstanceDir::create(root.path()).unwrap();
        let path = instance.path().to_owned();
        std::fs::write(path.join("ingest-0"), b"partial").unwrap();
        drop(instance);
        assert!(!path.exists());
    }

    /// A temp directory as another instance leaves it: `lock` (held by `holder` if given)
    /// and a partial ingest.
    fn foreign_temp_dir(path: &Path, holder: bool) -> Option<File> {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("ingest-0"), b"partial").unwrap();
        let lock = File::create(path.join(LOCK_FILE)).unwrap();
        let held = holder && try_flock(&lock, libc::LOCK_EX).unwrap();
        assert_eq!(held, holder);
        held.then_some(lock)
    }

    #[test]
    fn a_dead_instances_temp_dir_is_removed_even_when_its_pid_is_alive() {
        // After `kill -9` and a restart as PID 1 again, the old directory's pid is alive; here
        // it is this process's own.
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let before_locks = dir.path().join(format!("tmp/{pid}-0"));
        std::fs::create_dir_all(&before_locks).unwrap();
        std::fs::write(before_locks.join("ingest-0"), b"partial").unwrap();
        let unlocked = dir.path().join(format!("tmp/{pid}-00000000deadbeef"));
        foreign_temp_dir(&unlocked, false);
        std::fs::write(dir.path().join("tmp/stray"), b"x").unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        assert!(!before_locks.exists() && !unlocked.exists(), "partial files of the dead are removed");
        assert!(!dir.path().join("tmp/stray").exists());
        cache.begin_ingest().unwrap().write(b"fresh").unwrap();
    }

    #[test]
    fn a_live_instance_with_the_same_pid_keeps_its_temp_dir() {
        // Another container's facade on the same volume, also this pid: it holds the lock of
        // each name a pid-based scheme could give this process.
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let foreign: Vec<_> = (0..128).map(|n| dir.path().join(format!("tmp/{pid}-{n}"))).collect();
        let _locks: Vec<_> = foreign.iter().map(|path| foreign_temp_dir(path, true)).collect();
        let cache = CacheDir::open(dir.path()).unwrap();
        assert!(!foreign.iter().any(|path| path == cache.tmp.path()), "not shared");
        let ingest = cache.begin_ingest().unwrap();
        assert!(ingest.temp_path().starts_with(cache.tmp.path()));
        drop(ingest);
        drop(cache);
        for path in &foreign {
            assert_eq!(std::fs::read(path.join("ingest-0")).unwrap(), b"partial", "{} is kept", path.display());
        }
    }

    #[test]
    fn two_stores_on_one_directory_keep_their_temp_dirs_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (CacheDir::open(dir.path()).unwrap(), CacheDir::open(dir.path()).unwrap());
        assert_ne!(a.tmp.path(), b.tmp.path());
        let mut in_a = a.begin_ingest().unwrap();
        let mut in_b = b.begin_ingest().unwrap();
        in_a.write(b"from a").unwrap();
        in_b.write(b"from b").unwrap();
        // A third open (a restart elsewhere, an `import`) keeps both; its drop removes its own.
        let c = CacheDir::open(dir.path()).unwrap();
        let c_tmp = c.tmp.path().to_owned();
        drop(c);
        assert!(!c_tmp.exists());
        drop(in_b);
        drop(b);
        assert!(a.tmp.path().exists() && in_a.temp_path().exists(), "b's drop leaves a's directory");
        in_a.commit(&crate::oci::Digest::sha256_of(b"from a"), Some(6)).unwrap();
        assert!(a.contains(&crate::oci::Digest::sha256_of(b"from a")));
    }
}
