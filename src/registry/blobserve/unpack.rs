//! One layer (tar, gzip or plain) unpacked into a unit directory: every regular file stored
//! under its sha256, the entries listed in `index.json`. Refuses names and hard links that
//! leave the image, archives past the size or entry cap, and anything it cannot read; keeps
//! no device node, FIFO or socket. Synchronous: runs on the blocking pool, never panics.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::space::{space_error, SpaceError};
use super::tree::{LayerEntry, Sha};

/// The index of a unpacked layer, inside its unit directory.
pub const INDEX_FILE: &str = "index.json";
/// Where a unit keeps its files, by sha256.
pub const FILES_DIR: &str = "files";
/// Entries one layer may have: a tar bomb of empty files costs index memory, not bytes.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Bytes of one name or link target: PATH_MAX.
const MAX_NAME_BYTES: usize = 4096;

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
    // The tar reader is third-party code fed by whoever built the image: a panic in it must
    // become a refusal, not a panic on the executor that awaits this.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unpack_inner(layer, dir, limit))) {
        Ok(result) => result,
        Err(_) => Err(UnpackError::Refused("the archive could not be read (the reader failed)".into())),
    }
}

fn unpack_inner(layer: &[u8], dir: &Path, limit: u64) -> Result<Unpacked, UnpackError> {
    let files = dir.join(FILES_DIR);
    std::fs::create_dir_all(&files).map_err(io_error("create directory", &files))?;
    let decompressed: Box<dyn Read + '_> = match layer {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(layer)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(UnpackError::Refused("zstd layers are not supported by blobserve".into())),
        _ => Box::new(layer),
    };
    let mut counted = Capped { inner: decompressed, read: 0, limit };
    let mut unpacked = Unpacked { entries: Vec::new(), archive_bytes: 0, stored_bytes: 0, skipped: 0 };
    let mut stored = std::collections::HashSet::new();
    {
        let mut archive = tar::Archive::new(&mut counted);
        let entries = archive.entries().map_err(|e| refused_read(&e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| refused_read(&e))?;
            if unpacked.entries.len() >= MAX_ENTRIES {
                return Err(UnpackError::Refused(format!("more than {MAX_ENTRIES} entries")));
            }
            if let Some(item) = read_entry(&mut entry, &files, limit, &mut stored, &mut unpacked)? {
                unpacked.entries.push(item);
            } else {
                unpacked.skipped += 1;
            }
        }
    }
    // The rest of the stream (tar's end blocks) counts too, and a cap hit there is a bomb.
    let _ = io::copy(&mut counted, &mut io::sink());
    if counted.read > limit {
        return Err(too_large(limit));
    }
    unpacked.archive_bytes = counted.read;
    let index_path = dir.join(INDEX_FILE);
    let index = LayerIndex { archive_bytes: unpacked.archive_bytes, entries: std::mem::take(&mut unpacked.entries) };
    let text = serde_json::to_vec(&index).map_err(|e| io_error("encode", &index_path)(io::Error::other(e)))?;
    std::fs::write(&index_path, &text).map_err(io_error("write", &index_path))?;
    unpacked.stored_bytes += text.len() as u64;
    unpacked.entries = index.entries;
    Ok(unpacked)
}

fn too_large(limit: u64) -> UnpackError {
    UnpackError::Refused(format!("the image unpacks to more than {limit} bytes (blobserve.maxUnpackedBytes)"))
}

fn refused_read(error: &io::Error) -> UnpackError {
    if error.kind() == io::ErrorKind::FileTooLarge {
        return UnpackError::Refused(error.to_string());
    }
    UnpackError::Refused(format!("the archive cannot be read: {error}"))
}

/// One archive entry as a layer entry; `None` for what is never served.
fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    files: &Path,
    limit: u64,
    stored: &mut std::collections::HashSet<Sha>,
    unpacked: &mut Unpacked,
) -> Result<Option<LayerEntry>, UnpackError> {
    let raw = entry.path_bytes().into_owned();
    let Some(path) = entry_path(&raw)? else { return Ok(None) };
    let kind = entry.header().entry_type();
    if let Some(item) = whiteout(&path)? {
        return Ok(Some(item));
    }
    if path.is_empty() {
        return Ok(None);
    }
    let item = match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let size = entry.size();
            if size > limit {
                return Err(UnpackError::Refused(format!("`{path}` claims {size} bytes, more than the image may unpack to ({limit})")));
            }
            let (sha, written) = store_file(entry, files, stored)?;
            unpacked.stored_bytes += written;
            LayerEntry::File { path, sha, size }
        }
        tar::EntryType::Directory => LayerEntry::Dir { path },
        tar::EntryType::Symlink => {
            let Some(target) = link_text(entry)? else { return Ok(None) };
            if target.is_empty() {
                return Err(UnpackError::Refused(format!("symlink `{path}` has an empty target")));
            }
            LayerEntry::Symlink { path, target }
        }
        tar::EntryType::Link => {
            let Some(target) = link_text(entry)? else { return Ok(None) };
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

fn link_text<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<String>, UnpackError> {
    let raw = entry.link_name_bytes().map(|name| name.into_owned()).unwrap_or_default();
    if raw.len() > MAX_NAME_BYTES || raw.contains(&0) {
        return Err(UnpackError::Refused("a link target is longer than PATH_MAX or holds a NUL".into()));
    }
    Ok(String::from_utf8(raw).ok())
}

/// Writes an entry's bytes to `files/<sha256>` (once per content); returns the sha and the
/// bytes written to disk (0 when the content was already there).
fn store_file(entry: &mut impl Read, files: &Path, stored: &mut std::collections::HashSet<Sha>) -> Result<(Sha, u64), UnpackError> {
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
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, too_large(self.limit).to_string()));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header
    }

    /// Writes a raw name into the header, bypassing the tar builder's own checks (which refuse
    /// `..`), as a crafted archive would.
    fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
        let mut h = header(kind, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn unpack(layer: &[u8], limit: u64) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(layer, dir.path(), limit);
        (dir, result)
    }

    #[test]
    fn files_are_stored_by_content_and_listed_in_order() {
        let layer = archive(|b| {
            raw_entry(b, "./ide/", tar::EntryType::Directory, None, b"");
            raw_entry(b, "./ide/a.js", tar::EntryType::Regular, None, b"same");
            raw_entry(b, "ide/b.js", tar::EntryType::Regular, None, b"same");
            raw_entry(b, "ide/.wh.old", tar::EntryType::Regular, None, b"");
            raw_entry(b, "ide/sub/.wh..wh..opq", tar::EntryType::Regular, None, b"");
            raw_entry(b, "ide/l", tar::EntryType::Symlink, Some("a.js"), b"");
            raw_entry(b, "ide/h", tar::EntryType::Link, Some("./ide/a.js"), b"");
            raw_entry(b, "dev/null", tar::EntryType::Char, None, b"");
            raw_entry(b, "fifo", tar::EntryType::Fifo, None, b"");
        });
        let gz = {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&layer).unwrap();
            encoder.finish().unwrap()
        };
        let (dir, result) = unpack(&gz, 1 << 20);
        let unpacked = result.unwrap();
        let sha: Sha = Sha256::digest(b"same").into();
        assert_eq!(unpacked.entries, vec![
            LayerEntry::Dir { path: "ide".into() },
            LayerEntry::File { path: "ide/a.js".into(), sha, size: 4 },
            LayerEntry::File { path: "ide/b.js".into(), sha, size: 4 },
            LayerEntry::Whiteout { path: "ide/old".into() },
            LayerEntry::Opaque { path: "ide/sub".into() },
            LayerEntry::Symlink { path: "ide/l".into(), target: "a.js".into() },
            LayerEntry::Link { path: "ide/h".into(), target: "ide/a.js".into() },
        ]);
        assert_eq!(unpacked.skipped, 2, "devices and FIFOs skipped");
        let index_bytes = std::fs::metadata(dir.path().join(INDEX_FILE)).unwrap().len();
        assert_eq!(unpacked.stored_bytes, 4 + index_bytes, "one copy of the content, and the index");
        assert_eq!(std::fs::read(dir.path().join(FILES_DIR).join(hex::encode(sha))).unwrap(), b"same");
        let index = read_index(dir.path()).unwrap();
        assert_eq!((index.entries, index.archive_bytes), (unpacked.entries, unpacked.archive_bytes));
    }

    #[test]
    fn names_and_hard_links_that_leave_the_image_are_refused() {
        for (name, kind, link) in [
            ("../etc/passwd", tar::EntryType::Regular, None),
            ("a/../../x", tar::EntryType::Regular, None),
            ("h", tar::EntryType::Link, Some("../../etc/shadow")),
            ("w/.wh..", tar::EntryType::Regular, None),
        ] {
            let layer = archive(|b| raw_entry(b, name, kind, link, b""));
            let (_dir, result) = unpack(&layer, 1 << 20);
            assert!(matches!(result, Err(UnpackError::Refused(_))), "{name}: {result:?}");
        }
    }

    #[test]
    fn archives_past_the_cap_are_refused_however_they_claim_it() {
        let big = archive(|b| raw_entry(b, "big", tar::EntryType::Regular, None, &vec![0u8; 64 * 1024]));
        let (_dir, result) = unpack(&big, 32 * 1024);
        assert!(matches!(&result, Err(UnpackError::Refused(m)) if m.contains("32768")), "{result:?}");
        // A gzip bomb: a few KiB that inflate past the cap.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&big).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1024);
        let (_dir, result) = unpack(&bomb, 32 * 1024);
        assert!(matches!(result, Err(UnpackError::Refused(_))), "{result:?}");
        // A header claiming an absurd size.
        let mut absurd = archive(|b| raw_entry(b, "huge", tar::EntryType::Regular, None, b""));
        let mut h = header(tar::EntryType::Regular, 1 << 50);
        h.as_old_mut().name[..4].copy_from_slice(b"huge");
        h.set_cksum();
        absurd[..512].copy_from_slice(h.as_bytes());
        let (_dir, result) = unpack(&absurd, 1 << 20);
        assert!(matches!(result, Err(UnpackError::Refused(_))), "{result:?}");
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        for garbage in [&b"not a tar at all, just some text that is long enough"[..], &[0x1f, 0x8b, 0, 0, 0], &[0x28, 0xb5, 0x2f, 0xfd, 1]] {
            let (_dir, result) = unpack(garbage, 1 << 20);
            assert!(matches!(result, Err(UnpackError::Refused(_))), "{result:?}");
        }
    }
}
