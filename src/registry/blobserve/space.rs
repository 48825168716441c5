//! The blob space on disk: `units/<id>/` are complete units (an unpacked layer, or an image's
//! replaced files), each renamed into place only once whole; work in progress is in this
//! process's own `tmp/<pid>-<random>/` (the store's locked instance directory), so that a
//! `prefetch` command and a server may share the space, and what a dead process left there
//! is removed at the next start. Counts the bytes units hold, and which images hold each unit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::unpack::read_index;
use crate::store::{remove_stale_instances, InstanceDir, StoreError};
use crate::table::SharedMap;

/// A failure of the blob space's own disk.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("blob space: {op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    /// This process's temp directory could not be made, or a dead one's removed.
    #[error("blob space: {0}")]
    TempDir(#[from] StoreError),
}

pub fn space_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpaceError + 'a {
    move |source| SpaceError::Io { op, path: path.to_owned(), source }
}

#[derive(Debug, Default)]
struct Holders {
    /// Prepared images (and preparations under way) that use the unit.
    count: usize,
    /// Being deleted: no one may take it any more.
    gone: bool,
}

/// A complete unit directory.
#[derive(Debug)]
pub struct Unit {
    pub id: Arc<str>,
    pub dir: PathBuf,
    /// Written by this process: its files are used as they are. A unit found at start is
    /// hashed file by file as each is first opened.
    pub fresh: bool,
    bytes: AtomicU64,
    last_used_ms: AtomicU64,
    holders: Mutex<Holders>,
}

impl Unit {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

pub struct Space {
    units_dir: PathBuf,
    /// This process's work in progress; removed when the space is dropped.
    instance: InstanceDir,
    units: SharedMap<Arc<str>, Arc<Unit>>,
    used_bytes: AtomicU64,
    next_temp: AtomicU64,
    /// Held while a unit's directory is renamed into or out of place and the table follows:
    /// without it, a unit published while another of the same id is being deleted could be
    /// renamed away with it, or dropped from the table in its place.
    membership: Mutex<()>,
}

impl Space {
    /// Opens (creating) the blob space at `root`: removes what dead processes left in `tmp/`
    /// (another process sharing the space, e.g. the `prefetch` command beside a server, keeps
    /// its work), takes a temp directory of its own there, and counts the units. Blocking:
    /// call before the executors start.
    ///
    /// # Errors
    /// The directories cannot be created, listed or cleaned.
    pub fn open(root: &Path) -> Result<Space, SpaceError> {
        let units_dir = root.join("units");
        let tmp_dir = root.join("tmp");
        for dir in [&units_dir, &tmp_dir] {
            std::fs::create_dir_all(dir).map_err(space_error("create directory", dir))?;
        }
        remove_stale_instances(&tmp_dir)?;
        let instance = InstanceDir::create(&tmp_dir)?;
        let space = Space { units_dir, instance, units: SharedMap::new(), used_bytes: AtomicU64::new(0), next_temp: AtomicU64::new(0), membership: Mutex::new(()) };
        for entry in std::fs::read_dir(&space.units_dir).map_err(space_error("list", &space.units_dir))?.flatten() {
            let Some(id) = entry.file_name().to_str().map(Arc::<str>::from) else { continue };
            let dir = entry.path();
            if id.starts_with("layer-") && read_index(&dir).is_err() {
                tracing::warn!(unit = %id, "blobserve: a unit whose index does not read is deleted (unpacked again when used)");
                remove_any(&dir).map_err(space_error("remove", &dir))?;
                continue;
            }
            let bytes = tree_bytes(&dir).map_err(space_error("measure", &dir))?;
            space.insert(Unit { id: Arc::clone(&id), dir, fresh: false, bytes: AtomicU64::new(bytes), last_used_ms: AtomicU64::new(0), holders: Mutex::default() });
        }
        Ok(space)
    }

    fn insert(&self, unit: Unit) -> Arc<Unit> {
        self.used_bytes.fetch_add(unit.bytes(), Ordering::Relaxed);
        let unit = Arc::new(unit);
        self.units.insert(Arc::clone(&unit.id), Arc::clone(&unit));
        unit
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Takes the unit `id` for an image: it is not deleted until released. `None` if there is
    /// none (or it is being deleted).
    pub fn acquire(&self, id: &str) -> Option<Arc<Unit>> {
        let unit = self.units.get(id)?;
        let mut holders = unit.holders.lock().ok()?;
        if holders.gone {
            return None;
        }
        holders.count += 1;
        drop(holders);
        Some(unit)
    }

    /// Gives back a unit taken with `acquire` (or `publish`) at `now_ms`.
    pub fn release(&self, unit: &Unit, now_ms: u64) {
        unit.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        if let Ok(mut holders) = unit.holders.lock() {
            holders.count = holders.count.saturating_sub(1);
        }
    }

    /// A new, empty directory in this process's temp directory to build a unit in.
    ///
    /// # Errors
    /// It cannot be created.
    pub fn temp_dir(&self) -> Result<PathBuf, SpaceError> {
        let dir = self.temp_path("unit");
        std::fs::create_dir(&dir).map_err(space_error("create directory", &dir))?;
        Ok(dir)
    }

    /// A path no one uses yet in this process's temp directory (on the space's file system,
    /// so that what is written there can be renamed into a unit).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        self.instance.path().join(format!("{kind}-{}", self.next_temp.fetch_add(1, Ordering::Relaxed)))
    }

    /// Makes the unit built in `built` (`bytes` on disk) the unit `id`: synced to disk, then
    /// renamed into place, so that a crash leaves either nothing or the whole unit. If the
    /// unit exists already (made meanwhile, here or by another process sharing the space),
    /// `built` is dropped and that one kept. Take it with `acquire`. Blocking.
    ///
    /// # Errors
    /// The sync or the rename fails (`built` is removed).
    pub fn publish(&self, id: &str, built: &Path, bytes: u64) -> Result<(), SpaceError> {
        let _membership = self.membership.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.units.get(id).is_some_and(|unit| unit.holders.lock().is_ok_and(|h| !h.gone)) {
            let _ = remove_any(built);
            return Ok(());
        }
        let target = self.units_dir.join(id);
        // Not synced: a sync here waits for every dirty page of the file system (seconds on a
        // busy node) before a first byte. A crash may leave a unit whose files never reached
        // the disk; a unit found at start is therefore checked (its index parsed here, each
        // file hashed against its name when first opened) and a damaged one unpacked again.
        match std::fs::rename(built, &target) {
            Ok(()) => {
                self.insert(Unit { id: Arc::from(id), dir: target, fresh: true, bytes: AtomicU64::new(bytes), last_used_ms: AtomicU64::new(0), holders: Mutex::default() });
                Ok(())
            }
            // A directory is only ever renamed into place whole: the one there is complete.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                let _ = remove_any(built);
                self.adopt_locked(id).map(drop)
            }
            Err(source) => {
                let _ = remove_any(built);
                Err(SpaceError::Io { op: "publish", path: target, source })
            }
        }
    }

    /// Takes in the unit `id` if its directory exists but the table does not know it (another
    /// process sharing the space, e.g. the `prefetch` command, made it): its files are hashed
    /// as they are first opened. Whether the unit is known now. Blocking.
    ///
    /// # Errors
    /// The directory exists but cannot be measured.
    pub fn adopt(&self, id: &str) -> Result<bool, SpaceError> {
        let _membership = self.membership.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.adopt_locked(id)
    }

    fn adopt_locked(&self, id: &str) -> Result<bool, SpaceError> {
        if self.units.get(id).is_some_and(|unit| unit.holders.lock().is_ok_and(|h| !h.gone)) {
            return Ok(true);
        }
        let dir = self.units_dir.join(id);
        if !dir.is_dir() {
            return Ok(false);
        }
        let bytes = tree_bytes(&dir).map_err(space_error("measure", &dir))?;
        self.insert(Unit { id: Arc::from(id), dir, fresh: false, bytes: AtomicU64::new(bytes), last_used_ms: AtomicU64::new(0), holders: Mutex::default() });
        Ok(true)
    }

    /// Renames `partial` (`bytes`, written in this process's temp directory) to `target` in the
    /// unit `id`, and counts it there: both under the membership lock, so that the bytes count
    /// on the unit whose directory received them. Not counted if no unit of that id is in the
    /// table (one found on disk later is measured whole by `adopt`). Blocking.
    ///
    /// # Errors
    /// The rename fails (`NotFound`: the unit's directory went).
    pub fn install_variant(&self, id: &str, partial: &Path, target: &Path, bytes: u64) -> std::io::Result<()> {
        let _membership = self.membership.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::fs::rename(partial, target)?;
        if let Some(unit) = self.units.get(id).filter(|unit| unit.holders.lock().is_ok_and(|h| !h.gone)) {
            unit.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes the unit `id` whether or not images hold it: it is damaged. Images that use it
    /// find its files missing and are prepared again. Blocking.
    pub fn discard(&self, id: &str) {
        let Some(unit) = self.units.get(id) else { return };
        if let Some(away) = self.take_out(&unit, |_| true) {
            tracing::warn!(unit = %id, "blobserve: a damaged unit is deleted, to be unpacked again");
            remove_moved(&unit, &away);
        }
    }

    /// Deletes the least recently used unit that no image holds; `None` if every unit is
    /// held. Blocking.
    pub fn delete_one_unheld(&self) -> Option<Arc<Unit>> {
        let mut unheld: Vec<Arc<Unit>> =
            self.units.entries().into_iter().map(|(_, unit)| unit).filter(|unit| unit.holders.lock().is_ok_and(|h| h.count == 0 && !h.gone)).collect();
        unheld.sort_by_key(|unit| unit.last_used_ms.load(Ordering::Relaxed));
        for unit in unheld {
            if let Some(away) = self.take_out(&unit, |holders| holders.count == 0) {
                remove_moved(&unit, &away);
                return Some(unit);
            }
        }
        None
    }

    /// Marks `unit` gone (if it is not yet, and `may_go` agrees), takes it out of the table
    /// and renames its directory out of place, all under the membership lock: a unit of the
    /// same id published meanwhile is neither renamed away nor dropped from the table. Where
    /// its directory went, to be removed outside the lock; `None` if it stays, or was already
    /// taken out.
    fn take_out(&self, unit: &Arc<Unit>, may_go: impl FnOnce(&Holders) -> bool) -> Option<PathBuf> {
        let _membership = self.membership.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut holders = unit.holders.lock().ok()?;
            if holders.gone || !may_go(&holders) {
                return None;
            }
            holders.gone = true;
        }
        if !self.units.remove_if(&unit.id, |current| Arc::ptr_eq(current, unit)) {
            return None;
        }
        self.used_bytes.fetch_sub(unit.bytes(), Ordering::Relaxed);
        let away = self.temp_path("gone");
        match std::fs::rename(&unit.dir, &away) {
            Ok(()) => Some(away),
            Err(error) => {
                tracing::warn!(unit = %unit.id, %error, "blobserve: cannot delete a unit");
                None
            }
        }
    }
}

/// Removes the directory of `unit`, moved to `away` by `take_out`.
fn remove_moved(unit: &Unit, away: &Path) {
    if let Err(error) = std::fs::remove_dir_all(away) {
        tracing::warn!(unit = %unit.id, %error, "blobserve: cannot remove a deleted unit's files");
    }
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            total += tree_bytes(&path)?;
        } else {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_published_whole_counted_and_deleted_only_when_unheld() {
        let root = tempfile::tempdir().unwrap();
        let space = Space::open(root.path()).unwrap();
        let built = space.temp_dir().unwrap();
        std::fs::create_dir(built.join("files")).unwrap();
        std::fs::write(built.join("files").join("x"), b"12345").unwrap();
        space.publish("layer-a", &built, 5).unwrap();
        let unit = space.acquire("layer-a").unwrap();
        assert!(!built.exists() && unit.dir.join("files/x").exists());
        assert_eq!(space.used_bytes(), 5);
        assert!(space.delete_one_unheld().is_none(), "held");
        space.release(&unit, 10);
        let again = space.acquire("layer-a").unwrap();
        assert!(space.delete_one_unheld().is_none());
        space.release(&again, 20);
        assert_eq!(space.delete_one_unheld().map(|u| u.id.to_string()), Some("layer-a".into()));
        assert!(!unit.dir.exists());
        assert!(space.acquire("layer-a").is_none());
        assert_eq!(space.used_bytes(), 0);
    }

    #[test]
    fn a_restart_removes_what_a_dead_process_left_and_finds_the_units_again() {
        let root = tempfile::tempdir().unwrap();
        {
            let space = Space::open(root.path()).unwrap();
            let built = space.temp_dir().unwrap();
            std::fs::write(built.join("f"), b"abc").unwrap();
            space.publish("image-b", &built, 3).unwrap();
            // A layer whose index never reached the disk.
            let unindexed = space.temp_dir().unwrap();
            std::fs::write(unindexed.join("f"), b"abcdef").unwrap();
            space.publish("layer-c", &unindexed, 6).unwrap();
        }
        // The temp directory of a process that died with a unit half built: its lock file is
        // there, but no one holds it.
        let dead = root.path().join("tmp/1-dead");
        std::fs::create_dir_all(dead.join("unit-0")).unwrap();
        std::fs::write(dead.join("lock"), b"").unwrap();
        std::fs::write(dead.join("unit-0/f"), b"partial").unwrap();
        let space = Space::open(root.path()).unwrap();
        assert!(!dead.exists());
        assert_eq!(std::fs::read_dir(root.path().join("tmp")).unwrap().count(), 1, "only the new process's own");
        assert!(!root.path().join("units/layer-c").exists() && space.acquire("layer-c").is_none());
        let unit = space.acquire("image-b").unwrap();
        assert!(!unit.fresh);
        assert_eq!(space.used_bytes(), 3);
    }

    #[test]
    fn another_process_opening_the_space_leaves_work_in_progress_alone() {
        let root = tempfile::tempdir().unwrap();
        let server = Space::open(root.path()).unwrap();
        let building = server.temp_dir().unwrap();
        std::fs::write(building.join("f"), b"half a unit").unwrap();
        // A `prefetch` command beside it: its own lock, its own temp directory.
        let prefetch = Space::open(root.path()).unwrap();
        assert!(building.join("f").exists(), "a live process's work is kept");
        let theirs = prefetch.temp_dir().unwrap();
        drop(prefetch);
        assert!(!theirs.exists(), "a space closed in order removes its temp directory");
        assert!(building.join("f").exists());
    }

    #[test]
    fn a_unit_published_again_after_a_discard_is_whole_and_known() {
        let root = tempfile::tempdir().unwrap();
        let space = Space::open(root.path()).unwrap();
        let publish = |content: &[u8]| {
            let built = space.temp_dir().unwrap();
            std::fs::write(built.join("f"), content).unwrap();
            space.publish("layer-a", &built, content.len() as u64).unwrap();
        };
        publish(b"old");
        let old = space.acquire("layer-a").unwrap();
        space.discard("layer-a");
        assert!(space.acquire("layer-a").is_none() && !old.dir.exists());
        publish(b"newer");
        let new = space.acquire("layer-a").unwrap();
        assert_eq!(std::fs::read(new.dir.join("f")).unwrap(), b"newer");
        // Taking the old unit out again (a late eviction of it) leaves the new one in place.
        assert!(space.take_out(&old, |_| true).is_none());
        old.holders.lock().unwrap().gone = false; // as if its eviction had only just begun
        assert!(space.take_out(&old, |_| true).is_none(), "not the unit in the table");
        assert!(space.acquire("layer-a").is_some() && new.dir.join("f").exists());
        let left: Vec<_> = std::fs::read_dir(space.instance.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["lock"], "the old unit's files are removed once moved away");
    }

    #[test]
    fn a_variant_counts_on_the_unit_that_received_it_and_not_after_its_unit_went() {
        let root = tempfile::tempdir().unwrap();
        let space = Space::open(root.path()).unwrap();
        let built = space.temp_dir().unwrap();
        std::fs::create_dir(built.join("gz")).unwrap();
        std::fs::write(built.join("f"), b"abcd").unwrap();
        space.publish("layer-a", &built, 4).unwrap();
        let unit = space.acquire("layer-a").unwrap();
        let variant = |name: &str| {
            let partial = space.temp_path("gz");
            std::fs::write(&partial, b"gz").unwrap();
            (partial, unit.dir.join("gz").join(name))
        };
        let (partial, target) = variant("x");
        space.install_variant("layer-a", &partial, &target, 2).unwrap();
        assert_eq!((space.used_bytes(), unit.bytes(), std::fs::read(&target).unwrap()), (6, 6, b"gz".to_vec()));
        space.discard("layer-a");
        let (partial, target) = variant("y");
        let error = space.install_variant("layer-a", &partial, &target, 2).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "the unit's directory went");
        assert!(!unit.dir.exists(), "and is not made again");
        assert_eq!(space.used_bytes(), 0);
    }

    #[test]
    fn a_unit_another_process_made_is_adopted_not_unpacked_again() {
        let root = tempfile::tempdir().unwrap();
        let ours = Space::open(root.path()).unwrap();
        let theirs = Space::open(root.path()).unwrap();
        let built = theirs.temp_dir().unwrap();
        std::fs::write(built.join("f"), b"abcd").unwrap();
        theirs.publish("layer-c", &built, 4).unwrap();
        assert!(ours.acquire("layer-c").is_none(), "not known yet");
        // Publishing over it (our own unpack finished too) keeps the one there.
        let again = ours.temp_dir().unwrap();
        std::fs::write(again.join("f"), b"abcd").unwrap();
        ours.publish("layer-c", &again, 4).unwrap();
        assert!(!again.exists());
        assert!(!ours.acquire("layer-c").unwrap().fresh, "hashed as its files are opened");
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(!Space::open(elsewhere.path()).unwrap().adopt("layer-c").unwrap());
    }
}
