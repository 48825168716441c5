//! A watch on a tar stream's headers as they pass, before the tar reader sees them: refuses
//! the entries the tar reader would hold whole in memory (GNU long names and links, PAX
//! extensions) when they are large, and sparse files, whose holes the tar reader fills with
//! zeros no stream cap counts. Reads and parses nothing else.

use std::io::{self, Read};

/// Bytes of one GNU long-name or long-link entry or PAX extension (`L`, `K`, `x`, `g`). The
/// tar reader reads each whole into memory before any name is looked at; real ones hold a
/// path (at most PATH_MAX) and a few attributes.
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
const BLOCK: u64 = 512;

/// Why a layer is refused, carried through the tar reader inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

pub fn refusal(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refusal(message))
}

/// The refusal inside `error`, if one of our guards made it.
pub fn refusal_in(error: &io::Error) -> Option<&Refusal> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<Refusal>())
}

/// A PAX extension's data, kept as it passes (it is small: checked at its header) to learn the
/// `size` it gives the next entry, as the tar reader does.
struct Pax {
    start: u64,
    data: Vec<u8>,
    len: u64,
}

/// The tar stream of `inner`, its headers checked as they pass. Mirrors the tar crate's walk:
/// a header, then its data rounded up to 512 bytes (the size a PAX `size` record gives the
/// next entry that is not an extension), until an all-zero block ends the archive.
pub struct HeaderScan<R> {
    inner: R,
    /// Stream bytes passed so far.
    pos: u64,
    /// Where the next header starts; `None` once the archive's end was seen.
    next_header: Option<u64>,
    header: [u8; BLOCK as usize],
    filled: usize,
    pax: Option<Pax>,
    /// The `size` of the last PAX extension, for the next entry.
    pax_size: Option<u64>,
}

impl<R: Read> HeaderScan<R> {
    pub fn new(inner: R) -> HeaderScan<R> {
        HeaderScan { inner, pos: 0, next_header: Some(0), header: [0; BLOCK as usize], filled: 0, pax: None, pax_size: None }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Looks at `bytes`, which start at stream offset `self.pos`.
    fn watch(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let Some(next_header) = self.next_header else { return Ok(()) };
            if self.pos < next_header {
                // Entry data: passed by, except a PAX extension's.
                let n = usize::try_from((next_header - self.pos).min(bytes.len() as u64)).unwrap_or(bytes.len());
                self.keep_pax(&bytes[..n]);
                self.advance(n, &mut bytes);
                continue;
            }
            let n = (self.header.len() - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            self.advance(n, &mut bytes);
            if self.filled == self.header.len() {
                self.filled = 0;
                self.next_header = self.check_header(next_header)?;
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize, bytes: &mut &[u8]) {
        self.pos += n as u64;
        *bytes = &bytes[n..];
    }

    fn keep_pax(&mut self, bytes: &[u8]) {
        let Some(pax) = &mut self.pax else { return };
        if self.pos < pax.start + pax.len {
            let n = usize::try_from((pax.start + pax.len - self.pos).min(bytes.len() as u64)).unwrap_or(bytes.len());
            pax.data.extend_from_slice(&bytes[..n]);
        }
        if pax.data.len() as u64 == pax.len {
            self.pax_size = pax_size(&pax.data);
            self.pax = None;
        }
    }

    /// The header that starts at `at`, complete in `self.header`: where the next one starts
    /// (`None`: the archive ends here), or the refusal.
    fn check_header(&mut self, at: u64) -> io::Result<Option<u64>> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let kind = header.entry_type();
        let size = header.entry_size()?;
        let extension = kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() || kind.is_pax_global_extensions();
        if extension && size > MAX_EXTENSION_BYTES {
            return Err(refusal(format!("an extension entry (long name or PAX) of {size} bytes, more than {MAX_EXTENSION_BYTES}")));
        }
        if kind.is_gnu_sparse() {
            return Err(refusal("a sparse file (not supported: its holes would be written out whole)".into()));
        }
        let data = match extension {
            true => size,
            false => self.pax_size.unwrap_or(size),
        };
        // The tar reader gathers only recognised long names, long links and PAX extensions for
        // the entry that follows; any other header (a global `g`, an extension without the
        // ustar or GNU magic, a file) is an entry it returns, and a PAX `size` pending until
        // then is dropped with it.
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let gathered = recognised && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        if !gathered {
            self.pax_size = None;
        }
        let data_start = at + BLOCK;
        if kind.is_pax_local_extensions() && recognised {
            self.pax = Some(Pax { start: data_start, data: Vec::with_capacity(size as usize), len: size });
            if size == 0 {
                self.keep_pax(&[]);
            }
        }
        let padded = data.checked_add(BLOCK - 1).map(|d| d & !(BLOCK - 1));
        padded.and_then(|d| data_start.checked_add(d)).map(Some).ok_or_else(|| refusal(format!("an entry claims {data} bytes")))
    }
}

/// The `size` record of a PAX extension, read as the tar reader reads it: the first `size`
/// record, if every record before it parses and its value is a number.
fn pax_size(data: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(data) {
        let extension = extension.ok()?;
        if extension.key() != Ok("size") {
            continue;
        }
        return extension.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for HeaderScan<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.watch(&buf[..n])?;
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
        header.set_path("x").unwrap();
        header.set_cksum();
        header
    }

    /// Reads `stream` through a scan in reads of `chunk` bytes.
    fn scan(stream: &[u8], chunk: usize) -> io::Result<()> {
        let mut scan = HeaderScan::new(stream);
        let mut buffer = vec![0u8; chunk];
        while scan.read(&mut buffer)? > 0 {}
        Ok(())
    }

    #[test]
    fn headers_are_found_after_data_and_pax_sizes_however_the_stream_is_read() {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_data(&mut header(tar::EntryType::Regular, 700), "a", &[7u8; 700][..]).unwrap();
        // A PAX `size` record overrides the next header's size field: the data is 1000 bytes,
        // the header says 0, and a scan that believed it would take data for a header.
        let mut stream = builder.into_inner().unwrap();
        stream.truncate(stream.len() - 1024);
        let record = b"13 size=1000\n";
        stream.extend_from_slice(header(tar::EntryType::XHeader, record.len() as u64).as_bytes());
        let mut padded = record.to_vec();
        padded.resize(512, 0);
        stream.extend_from_slice(&padded);
        stream.extend_from_slice(header(tar::EntryType::Regular, 0).as_bytes());
        let mut data = vec![0u8; 1024];
        // What would be an oversized long name if it were read as a header.
        data[..512].copy_from_slice(header(tar::EntryType::GNULongName, 1 << 30).as_bytes());
        stream.extend_from_slice(&data);
        let mut tail = tar::Builder::new(Vec::new());
        tail.append_data(&mut header(tar::EntryType::Regular, 1), "b", &b"b"[..]).unwrap();
        stream.extend_from_slice(&tail.into_inner().unwrap());
        for chunk in [1, 511, 512, 4096, 1 << 20] {
            scan(&stream, chunk).unwrap_or_else(|e| panic!("read by {chunk}: {e}"));
        }
        // And the tar reader agrees on the entries.
        let names: Vec<String> = tar::Archive::new(&stream[..]).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["a", "x", "b"]);
        // The scan is still in step at the end: an oversized long name there is refused.
        stream.truncate(stream.len() - 1024);
        stream.extend_from_slice(&oversized_long_name());
        for chunk in [1, 511, 512, 4096, 1 << 20] {
            assert!(scan(&stream, chunk).is_err_and(|e| refusal_in(&e).is_some()), "read by {chunk}");
        }
    }

    /// A GNU long name larger than the cap, its data, and the archive's end.
    fn oversized_long_name() -> Vec<u8> {
        let mut bytes = header(tar::EntryType::GNULongName, 4 << 20).as_bytes().to_vec();
        bytes.resize(512 + (4 << 20) + 1024, b'n');
        bytes[512 + (4 << 20)..].fill(0);
        bytes
    }

    /// A PAX extension, then `header`, then a file whose header says 0 bytes, then an oversized
    /// long name: whether the scan refuses it.
    fn pax_size_then(next: tar::Header) -> bool {
        let record = b"13 size=2048\n";
        let mut stream = header(tar::EntryType::XHeader, record.len() as u64).as_bytes().to_vec();
        let mut padded = record.to_vec();
        padded.resize(512, 0);
        stream.extend_from_slice(&padded);
        stream.extend_from_slice(next.as_bytes());
        stream.extend_from_slice(header(tar::EntryType::Regular, 0).as_bytes());
        stream.extend_from_slice(&oversized_long_name());
        scan(&stream, 4096).is_err_and(|e| refusal_in(&e).is_some())
    }

    #[test]
    fn a_pax_size_is_dropped_where_the_tar_reader_drops_it() {
        // A global extension, or a long name without the ustar/GNU magic, is an entry the tar
        // reader returns: the pending `size` goes with it, and the file after it is 0 bytes.
        let global = header(tar::EntryType::XGlobalHeader, 0);
        assert!(pax_size_then(global), "after a global extension");
        let mut old_long_name = tar::Header::new_old();
        old_long_name.set_entry_type(tar::EntryType::GNULongName);
        old_long_name.set_size(0);
        old_long_name.set_cksum();
        assert!(pax_size_then(old_long_name), "after an unrecognised long name");
    }

    #[test]
    fn large_extensions_and_sparse_files_are_refused_at_their_header() {
        for kind in [tar::EntryType::GNULongName, tar::EntryType::GNULongLink, tar::EntryType::XHeader, tar::EntryType::XGlobalHeader] {
            let mut stream = header(kind, MAX_EXTENSION_BYTES + 1).as_bytes().to_vec();
            stream.extend_from_slice(&[b'a'; 1024]);
            let error = scan(&stream, 4096).unwrap_err();
            assert!(refusal_in(&error).is_some_and(|r| r.0.contains("extension")), "{kind:?}: {error}");
            let mut fine = header(kind, 100).as_bytes().to_vec();
            fine.extend_from_slice(&[b'a'; 512]);
            scan(&fine, 4096).unwrap();
        }
        let sparse = header(tar::EntryType::GNUSparse, 0);
        let error = scan(sparse.as_bytes(), 512).unwrap_err();
        assert!(refusal_in(&error).is_some_and(|r| r.0.contains("sparse")), "{error}");
        // Past the archive's end nothing is parsed.
        let mut ended = vec![0u8; 1024];
        ended.extend_from_slice(sparse.as_bytes());
        scan(&ended, 100).unwrap();
    }
}
