//! The files of units as they are served: mapped whole with their open file (for sendfile),
//! kept open in a bounded table shared by every core; and their gzip variants, made once per
//! file on the blocking pool and kept beside it in the unit (`gz/<sha>`; `gz/<sha>.none`
//! when compression does not pay).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;
use sha2::{Digest as _, Sha256};

use super::space::{space_error, Space, SpaceError, Unit};
use super::tree::Sha;
use super::unpack::FILES_DIR;
use crate::blocking::run_blocking;
use crate::registry::single_flight::SingleFlight;
use crate::table::SharedMap;

/// Where a unit keeps compressed variants.
const GZIP_DIR: &str = "gz";
/// Smaller files are sent as they are: a few hundred bytes gain nothing from compression.
const MIN_GZIP_BYTES: usize = 256;
/// Larger files are sent as they are: a variant is compressed in memory on the blocking pool,
/// and a browser's large downloads (archives, images, wasm) are mostly compressed already.
const MAX_GZIP_BYTES: usize = 8 << 20;
/// A variant is kept only if it saves at least a tenth.
const MIN_GZIP_SAVING_PERCENT: usize = 10;
/// A file's last use is recorded at most this often.
const LAST_USED_GRANULARITY_MS: u64 = 1_000;

/// A file's bytes, mapped, and the open file they are in (`None` when empty).
#[derive(Debug, Clone)]
pub struct FileBytes {
    pub body: Bytes,
    pub file: Option<Arc<File>>,
}

#[derive(Debug)]
struct OpenFile {
    bytes: FileBytes,
    last_used_ms: AtomicU64,
}

/// A unit's file: which unit, which content, and which representation.
type FileKey = (Arc<str>, Sha, bool);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Space(#[from] SpaceError),
    /// The unit is damaged (a crash before its files reached the disk, or a change behind
    /// our back): it is discarded and unpacked again.
    #[error("blob space: {} does not hold the bytes of its name; unit {unit} is damaged", path.display())]
    Corrupt { unit: Arc<str>, path: PathBuf },
    /// Evicted meanwhile, or damaged: the image is prepared again.
    #[error("blob space: {} is gone from unit {unit}", path.display())]
    Missing { unit: Arc<str>, path: PathBuf },
    /// The task compressing a file ended without an answer (the executor is stopping).
    #[error("blob space: the compression of a file was abandoned")]
    Abandoned,
}

impl FileError {
    /// The unit that lacks the file or holds it damaged.
    pub fn unit(&self) -> Option<&Arc<str>> {
        match self {
            FileError::Missing { unit, .. } | FileError::Corrupt { unit, .. } => Some(unit),
            FileError::Space(_) | FileError::Abandoned => None,
        }
    }
}

pub struct Files {
    open: SharedMap<FileKey, Arc<OpenFile>>,
    /// Files whose compression does not pay.
    incompressible: SharedMap<(Arc<str>, Sha), ()>,
    compressing: Arc<Compressions>,
    max_open: usize,
}

impl Files {
    pub fn new(max_open: usize) -> Files {
        Files { open: SharedMap::new(), incompressible: SharedMap::new(), compressing: Arc::default(), max_open: max_open.max(16) }
    }

    /// The file `sha` of `unit`, mapped. A table lookup when it is open; else opened on the
    /// blocking pool (and hashed first if the unit was found on disk at start).
    ///
    /// # Errors
    /// The file cannot be opened or mapped, or is not what its name says.
    pub async fn open(&self, unit: &Arc<Unit>, sha: &Sha, now_ms: u64) -> Result<FileBytes, Arc<FileError>> {
        let key = (Arc::clone(&unit.id), *sha, false);
        if let Some(found) = self.hit(&key, now_ms) {
            return Ok(found);
        }
        let path = unit.dir.join(FILES_DIR).join(hex::encode(sha));
        let (verify, wanted, id) = (!unit.fresh, *sha, Arc::clone(&unit.id));
        let opened = run_blocking(move || map_file(&id, &path, verify.then_some(wanted))).await.map_err(Arc::new)?;
        Ok(self.keep(key, opened, now_ms))
    }

    /// The gzip variant of the file `sha` of `unit` (whose bytes are `plain`): `None` when the
    /// file is too small or too large, compresses too little, or its unit was deleted meanwhile.
    /// Made once, on the blocking pool.
    ///
    /// # Errors
    /// The variant cannot be written or read back.
    pub async fn gzip(&self, space: &Arc<Space>, unit: &Arc<Unit>, sha: &Sha, plain: &FileBytes, now_ms: u64) -> Result<Option<FileBytes>, Arc<FileError>> {
        if !(MIN_GZIP_BYTES..=MAX_GZIP_BYTES).contains(&plain.body.len()) || self.incompressible.get(&(Arc::clone(&unit.id), *sha)).is_some() {
            return Ok(None);
        }
        let key = (Arc::clone(&unit.id), *sha, true);
        if let Some(found) = self.hit(&key, now_ms) {
            return Ok(Some(found));
        }
        // A task of its own: a leader whose client leaves does not abandon the flight, which
        // would make its waiters compress the same file again meanwhile.
        let (flights, space, unit_owned, sha_owned, body) = (Arc::clone(&self.compressing), Arc::clone(space), Arc::clone(unit), *sha, plain.body.clone());
        let flight = glommio::spawn_local(async move {
            let key = (Arc::clone(&unit_owned.id), sha_owned);
            flights.run(key, || async move { run_blocking(move || make_gzip(&space, &unit_owned, &sha_owned, &body)).await.map_err(Arc::new) }).await
        })
        .detach();
        let made = flight.await.ok_or_else(|| Arc::new(FileError::Abandoned))??;
        match made {
            Variant::Made => {}
            Variant::NotWorth => {
                self.incompressible.insert((Arc::clone(&unit.id), *sha), ());
                return Ok(None);
            }
            Variant::UnitGone => return Ok(None),
        }
        let (path, id) = (unit.dir.join(GZIP_DIR).join(hex::encode(sha)), Arc::clone(&unit.id));
        let opened = run_blocking(move || map_file(&id, &path, None)).await.map_err(Arc::new)?;
        Ok(Some(self.keep(key, opened, now_ms)))
    }

    /// Closes the files of `unit` (deleted: their mappings would keep its disk space).
    pub fn forget_unit(&self, unit: &str) {
        for (key, _) in self.open.entries() {
            if &*key.0 == unit {
                self.open.remove(&key);
            }
        }
        for (key, _) in self.incompressible.entries() {
            if &*key.0 == unit {
                self.incompressible.remove(&key);
            }
        }
    }

    fn hit(&self, key: &FileKey, now_ms: u64) -> Option<FileBytes> {
        let found = self.open.get(key)?;
        if now_ms.saturating_sub(found.last_used_ms.load(Ordering::Relaxed)) >= LAST_USED_GRANULARITY_MS {
            found.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
        Some(found.bytes.clone())
    }

    fn keep(&self, key: FileKey, bytes: FileBytes, now_ms: u64) -> FileBytes {
        let open = Arc::new(OpenFile { bytes, last_used_ms: AtomicU64::new(now_ms) });
        // Another core may have opened it meanwhile: keep one mapping per file.
        let kept = self.open.get_or_insert_with(key, || Arc::clone(&open));
        if self.open.len() > self.max_open {
            self.close_least_recently_used();
        }
        kept.bytes.clone()
    }

    /// Closes the least recently used files down to 7/8 of the cap. A response that still
    /// sends one holds its mapping and file itself, so closing here never cuts it off.
    fn close_least_recently_used(&self) {
        let target = self.max_open - self.max_open / 8;
        let mut entries = self.open.entries();
        entries.sort_by_key(|(_, open)| open.last_used_ms.load(Ordering::Relaxed));
        let excess = entries.len().saturating_sub(target);
        for (key, _) in entries.into_iter().take(excess) {
            self.open.remove(&key);
        }
    }
}

/// Maps `path` (of `unit`) whole; with `verify`, checks that its bytes hash to it first.
fn map_file(unit: &Arc<str>, path: &Path, verify: Option<Sha>) -> Result<FileBytes, FileError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::Missing { unit: Arc::clone(unit), path: path.to_owned() }),
        Err(e) => return Err(space_error("open", path)(e).into()),
    };
    let len = file.metadata().map_err(space_error("stat", path))?.len();
    if len == 0 {
        return Ok(FileBytes { body: Bytes::new(), file: None });
    }
    // SAFETY: unit files are written once, before their unit is renamed into place, and are
    // never rewritten or truncated (variants are written aside and renamed), so the mapping
    // cannot change under us; eviction unlinks, which leaves the mapping intact.
    let map = unsafe { Mmap::map(&file) }.map_err(space_error("mmap", path))?;
    if let Some(sha) = verify {
        if <[u8; 32]>::from(Sha256::digest(&map[..])) != sha {
            return Err(FileError::Corrupt { unit: Arc::clone(unit), path: path.to_owned() });
        }
    }
    Ok(FileBytes { body: Bytes::from_owner(map), file: Some(Arc::new(file)) })
}

/// The gzip variants being made, by unit and file.
type Compressions = SingleFlight<(Arc<str>, Sha), Result<Variant, Arc<FileError>>>;

/// What `make_gzip` found or did.
#[derive(Clone, Copy)]
enum Variant {
    Made,
    /// Compressing saves too little (a marker says so on disk).
    NotWorth,
    /// The unit was deleted (evicted, or discarded) meanwhile: nothing is written, so that its
    /// directory is not made again as a unit without files.
    UnitGone,
}

/// Writes the gzip variant of `body` into `unit` (or the marker that it does not pay).
fn make_gzip(space: &Space, unit: &Unit, sha: &Sha, body: &[u8]) -> Result<Variant, FileError> {
    let dir = unit.dir.join(GZIP_DIR);
    let name = hex::encode(sha);
    let (target, marker) = (dir.join(&name), dir.join(format!("{name}.none")));
    if target.exists() {
        return Ok(Variant::Made);
    }
    if marker.exists() {
        return Ok(Variant::NotWorth);
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Variant::UnitGone),
        Err(e) => return Err(space_error("create directory", &dir)(e).into()),
    }
    // The default level: `best` costs several times the CPU to save a few percent more.
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3), flate2::Compression::default());
    let compressed = encoder.write_all(body).and_then(|()| encoder.finish()).map_err(space_error("compress", &target))?;
    if compressed.len() * 100 > body.len() * (100 - MIN_GZIP_SAVING_PERCENT) {
        return match std::fs::write(&marker, b"") {
            Ok(()) => Ok(Variant::NotWorth),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Variant::UnitGone),
            Err(e) => Err(space_error("write", &marker)(e).into()),
        };
    }
    // Written in this process's temp directory and synced before the rename: after a crash the
    // name holds the whole variant or nothing, and no half-written file is left in the unit.
    let partial = space.temp_path("gz");
    let written = File::create(&partial).and_then(|mut out| out.write_all(&compressed).and_then(|()| out.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(space_error("write", &partial)(e).into());
    }
    match space.install_variant(&unit.id, &partial, &target, compressed.len() as u64) {
        Ok(()) => Ok(Variant::Made),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            match e.kind() {
                // The unit's directory went (evicted or discarded) since the check above.
                std::io::ErrorKind::NotFound => Ok(Variant::UnitGone),
                _ => Err(space_error("rename", &target)(e).into()),
            }
        }
    }
}
