//! One layer (tar, gzip or plain) unpacked into a unit directory: every regular file stored
//! under its sha256, the entries listed in `index.json`. Refuses names and hard links that
//! leave the image, archives past the size, entry or name caps, sparse files, and anything it
//! cannot read; keeps no device node, FIFO or socket. Synchronous: runs on the blocking pool,
//! never panics.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::scan::{refusal, refusal_in, HeaderScan};
use super::space::{space_error, SpaceError};
use super::tree::{LayerEntry, Sha};

/// The index of a unpacked layer, inside its unit directory.
pub const INDEX_FILE: &str = "index.json";
/// Where a unit keeps its files, by sha256.
pub const FILES_DIR: &str = "files";
/// Entries one layer may have: a tar bomb of empty files costs index memory, not bytes.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Bytes of all entry names and link targets of one layer: the index is held in memory while
/// it is written and again while layers are merged (a million PATH_MAX names would be 4 GiB).
pub const MAX_PATH_BYTES: u64 = 64 << 20;
/// Bytes of one name or link target: PATH_MAX.
const MAX_NAME_BYTES: usize = 4096;

/// What one layer may hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Uncompressed archive bytes, and bytes of files written (duplicates included).
    bytes: u64,
    entries: usize,
    path_bytes: u64,
}

/// What a layer has used of its limits so far.
#[derive(Debug, Default)]
struct Used {
    /// Bytes of files written to disk, a duplicate's too (it is written before it is known).
    written: u64,
    path_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer cannot be served as it is: the image is refused.
    #[error("{0}")]
    Refused(String),
    /// Our own disk failed us.
    #[error("{0}")]
    Io(#[from] SpaceError),
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io(space_error(op, path)(source))
}

/// What `index.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerIndex {
    /// Bytes of the uncompressed archive (what the image's cap counts).
    pub archive_bytes: u64,
    pub entries: Vec<LayerEntry>,
}

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: Vec<LayerEntry>,
    /// Bytes of the uncompressed archive (what the image's cap counts).
    pub archive_bytes: u64,
    /// Bytes of the unit's files on disk.
    pub stored_bytes: u64,
    /// Device nodes, FIFOs, sockets and names that are not UTF-8: never served.
    pub skipped: usize,
}

/// Reads the index of the unit in `dir`.
///
/// # Errors
/// It cannot be read or parsed (the unit is damaged).
pub fn read_index(dir: &Path) -> Result<LayerIndex, SpaceError> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read(&path).map_err(space_error("read", &path))?;
    serde_json::from_slice(&text).map_err(|e| space_error("parse", &path)(io::Error::other(e)))
}

/// Unpacks `layer` (gzip or plain tar; `limit`: most uncompressed bytes allowed) into `dir`,
/// which must exist and be empty, and writes its index. A failure leaves `dir` half-written:
/// the caller unpacks into a temporary directory and renames it only on success.
///
/// # Errors
/// `Refused` for content that cannot be served; `Io` for our own disk.
pub fn unpack_layer(layer: &[u8], dir: &Path, limit: u64) -> Result<Unpacked, UnpackError> {
    unpack_within(layer, dir, Limits { bytes: limit, entries: MAX_ENTRIES, path_bytes: MAX_PATH_BYTES })
}

fn unpack_within(layer: &[u8], dir: &Path, limits: Limits) -> Result<Unpacked, UnpackError> {
    // The tar reader is third-party code fed by whoever built the image: a panic in it must
    // become a refusal, not a panic on the executor that awaits this.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unpack_inner(layer, dir, limits))) {
        Ok(result) => result,
        Err(_) => Err(UnpackError::Refused("the archive could not be read (the reader failed)".into())),
    }
}

fn unpack_inner(layer: &[u8], dir: &Path, limits: Limits) -> Result<Unpacked, UnpackError> {
    let files = dir.join(FILES_DIR);
    std::fs::create_dir_all(&files).map_err(io_error("create directory", &files))?;
    let decompressed: Box<dyn Read + '_> = match layer {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(layer)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(UnpackError::Refused("zstd layers are not supported by blobserve".into())),
        _ => Box::new(layer),
    };
    // The stream is capped (a gzip bomb stops there) and its headers are checked before the
    // tar reader reads what they describe (it reads long names and PAX records whole).
    let mut scanned = HeaderScan::new(Capped { inner: decompressed, read: 0, limit: limits.bytes });
    let mut unpacked = Unpacked { entries: Vec::new(), archive_bytes: 0, stored_bytes: 0, skipped: 0 };
    let mut stored = std::collections::HashSet::new();
    let mut used = Used::default();
    {
        let mut archive = tar::Archive::new(&mut scanned);
        let entries = archive.entries().map_err(|e| refused_read(&e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| refused_read(&e))?;
            if unpacked.entries.len() >= limits.entries {
                return Err(UnpackError::Refused(format!("more than {} entries", limits.entries)));
            }
            if let Some(item) = read_entry(&mut entry, &files, limits, &mut used, &mut stored, &mut unpacked)? {
                unpacked.entries.push(item);
            } else {
                unpacked.skipped += 1;
            }
        }
    }
    // The rest of the stream (tar's end blocks) counts too, and a cap hit there is a bomb.
    let mut counted = scanned.into_inner();
    let _ = io::copy(&mut counted, &mut io::sink());
    if counted.read > limits.bytes {
        return Err(too_large(limits.bytes));
    }
    unpacked.archive_bytes = counted.read;
    let index = LayerIndex { archive_bytes: unpacked.archive_bytes, entries: std::mem::take(&mut unpacked.entries) };
    unpacked.stored_bytes += write_index(dir, &index)?;
    unpacked.entries = index.entries;
    Ok(unpacked)
}

/// Writes `index` into `dir` as it is encoded (not built whole in memory first); its bytes.
fn write_index(dir: &Path, index: &LayerIndex) -> Result<u64, UnpackError> {
    let path = dir.join(INDEX_FILE);
    let file = File::create(&path).map_err(io_error("create", &path))?;
    let mut out = CountingWriter { inner: BufWriter::new(file), written: 0 };
    serde_json::to_writer(&mut out, index).map_err(|e| io_error("write", &path)(io::Error::other(e)))?;
    out.inner.flush().map_err(io_error("write", &path))?;
    Ok(out.written)
}

struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn too_large(limit: u64) -> UnpackError {
    UnpackError::Refused(too_large_text(limit))
}

fn too_large_text(limit: u64) -> String {
    format!("the image unpacks to more than {limit} bytes (blobserve.maxUnpackedBytes)")
}

fn refused_read(error: &io::Error) -> UnpackError {
    if let Some(refusal) = refusal_in(error) {
        return UnpackError::Refused(refusal.to_string());
    }
    UnpackError::Refused(format!("the archive cannot be read: {error}"))
}

/// One archive entry as a layer entry; `None` for what is never served.
fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    files: &Path,
    limits: Limits,
    used: &mut Used,
    stored: &mut std::collections::HashSet<Sha>,
    unpacked: &mut Unpacked,
) -> Result<Option<LayerEntry>, UnpackError> {
    let raw = entry.path_bytes().into_owned();
    count_path_bytes(used, raw.len(), limits)?;
    let Some(path) = entry_path(&raw)? else { return Ok(None) };
    let kind = entry.header().entry_type();
    if let Some(item) = whiteout(&path)? {
        return Ok(Some(item));
    }
    if path.is_empty() {
        return Ok(None);
    }
    let item = match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let size = entry.size();
            // Refused before a byte is written when the sizes alone say so; `store_file`
            // counts what is actually written.
            if used.written.saturating_add(size) > limits.bytes {
                return Err(UnpackError::Refused(format!("`{path}` claims {size} bytes, more than the image may unpack to ({})", limits.bytes)));
            }
            let (sha, written) = store_file(entry, files, stored, used, limits.bytes)?;
            unpacked.stored_bytes += written;
            LayerEntry::File { path, sha, size }
        }
        // The header scan refuses these first; the tar reader would fill their holes with
        // zeros that no stream cap counts.
        tar::EntryType::GNUSparse => return Err(UnpackError::Refused(format!("`{path}` is a sparse file (not supported)"))),
        tar::EntryType::Directory => LayerEntry::Dir { path },
        tar::EntryType::Symlink => {
            let Some(target) = link_text(entry, used, limits)? else { return Ok(None) };
            if target.is_empty() {
                return Err(UnpackError::Refused(format!("symlink `{path}` has an empty target")));
            }
            LayerEntry::Symlink { path, target }
        }
        tar::EntryType::Link => {
            let Some(target) = link_text(entry, used, limits)? else { return Ok(None) };
            // A hard link names an archive path, relative to the root like any entry name.
            match entry_path(target.as_bytes())? {
                Some(target) if !target.is_empty() => LayerEntry::Link { path, target },
                _ => return Err(UnpackError::Refused(format!("hard link `{path}` names no file: `{target}`"))),
            }
        }
        // Device nodes, FIFOs and anything else have nothing to serve.
        _ => return Ok(None),
    };
    Ok(Some(item))
}

fn count_path_bytes(used: &mut Used, len: usize, limits: Limits) -> Result<(), UnpackError> {
    used.path_bytes = used.path_bytes.saturating_add(len as u64);
    if used.path_bytes > limits.path_bytes {
        return Err(UnpackError::Refused(format!("its entry names and link targets exceed {} bytes", limits.path_bytes)));
    }
    Ok(())
}

/// An entry name normalised: relative to the image root, without `.` or empty components.
/// `None` for a name that is not UTF-8 (it could not be asked for). A name that climbs out of
/// the root is refused: only a crafted archive has one.
fn entry_path(raw: &[u8]) -> Result<Option<String>, UnpackError> {
    if raw.len() > MAX_NAME_BYTES || raw.contains(&0) {
        return Err(UnpackError::Refused(format!("an entry name is longer than {MAX_NAME_BYTES} bytes or holds a NUL")));
    }
    let Ok(text) = std::str::from_utf8(raw) else { return Ok(None) };
    let mut components = Vec::new();
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(UnpackError::Refused(format!("entry `{text}` points outside the image"))),
            other => components.push(other),
        }
    }
    Ok(Some(components.join("/")))
}

/// A whiteout (`.wh.<name>`) or opaque marker (`.wh..wh..opq`) as its layer entry.
fn whiteout(path: &str) -> Result<Option<LayerEntry>, UnpackError> {
    let (parent, name) = match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    };
    let Some(hidden) = name.strip_prefix(".wh.") else { return Ok(None) };
    if hidden == ".wh..opq" {
        return Ok(Some(LayerEntry::Opaque { path: parent.to_owned() }));
    }
    if hidden.is_empty() || hidden == "." || hidden == ".." {
        return Err(UnpackError::Refused(format!("whiteout `{path}` names nothing")));
    }
    let path = if parent.is_empty() { hidden.to_owned() } else { format!("{parent}/{hidden}") };
    Ok(Some(LayerEntry::Whiteout { path }))
}

fn link_text<R: Read>(entry: &tar::Entry<'_, R>, used: &mut Used, limits: Limits) -> Result<Option<String>, UnpackError> {
    let raw = entry.link_name_bytes().map(|name| name.into_owned()).unwrap_or_default();
    count_path_bytes(used, raw.len(), limits)?;
    if raw.len() > MAX_NAME_BYTES || raw.contains(&0) {
        return Err(UnpackError::Refused("a link target is longer than PATH_MAX or holds a NUL".into()));
    }
    Ok(String::from_utf8(raw).ok())
}

/// Writes an entry's bytes to `files/<sha256>` (once per content); returns the sha and the
/// bytes written to disk (0 when the content was already there). Every byte written counts in
/// `used.written`, refused past `limit` whatever the reader yields.
fn store_file(entry: &mut impl Read, files: &Path, stored: &mut std::collections::HashSet<Sha>, used: &mut Used, limit: u64) -> Result<(Sha, u64), UnpackError> {
    let partial = files.join(".partial");
    let mut out = File::create(&partial).map_err(io_error("create", &partial))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match entry.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(refused_read(&e)),
        };
        used.written += n as u64;
        if used.written > limit {
            return Err(too_large(limit));
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(io_error("write", &partial))?;
        written += n as u64;
    }
    drop(out);
    let sha: Sha = hasher.finalize().into();
    if !stored.insert(sha) {
        std::fs::remove_file(&partial).map_err(io_error("remove", &partial))?;
        return Ok((sha, 0));
    }
    let path = files.join(hex::encode(sha));
    std::fs::rename(&partial, &path).map_err(io_error("rename", &path))?;
    Ok((sha, written))
}

/// A reader that fails once more than `limit` bytes came through: a gzip bomb stops there.
struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(refusal(too_large_text(self.limit)));
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
