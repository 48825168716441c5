//! Unpacking crafted and ordinary layers: what is stored and listed, and what is refused.

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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn refusal(result: &Result<Unpacked, UnpackError>) -> &str {
    match result {
        Err(UnpackError::Refused(message)) => message,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn archives_past_the_cap_are_refused_however_they_claim_it() {
    let big = archive(|b| raw_entry(b, "big", tar::EntryType::Regular, None, &vec![0u8; 64 * 1024]));
    let (_dir, result) = unpack(&big, 32 * 1024);
    assert!(refusal(&result).contains("32768"), "{result:?}");
    // A header claiming an absurd size.
    let mut absurd = archive(|b| raw_entry(b, "huge", tar::EntryType::Regular, None, b""));
    let mut h = header(tar::EntryType::Regular, 1 << 50);
    h.as_old_mut().name[..4].copy_from_slice(b"huge");
    h.set_cksum();
    absurd[..512].copy_from_slice(h.as_bytes());
    let (_dir, result) = unpack(&absurd, 1 << 20);
    refusal(&result);
}

#[test]
fn a_gzip_bomb_stops_at_the_stream_cap() {
    // Two files of half the cap each: no entry, nor their sum, is over it; their headers
    // and the archive's end blocks are. Only the cap on the decompressed stream sees that.
    let half = vec![0u8; 16 * 1024];
    let bomb = gzip(&archive(|b| {
        raw_entry(b, "a", tar::EntryType::Regular, None, &half);
        raw_entry(b, "b", tar::EntryType::Regular, None, &half);
    }));
    assert!(bomb.len() < 1024);
    let (dir, result) = unpack(&bomb, 32 * 1024);
    assert!(refusal(&result).contains("more than 32768 bytes"), "{result:?}");
    // The same archive fits a cap that counts its headers too.
    drop(dir);
    let (_dir, result) = unpack(&bomb, 34 * 1024 + 1024);
    assert_eq!(result.unwrap().entries.len(), 2);
    // Headers alone: entries with no data, past the cap by their number.
    let headers = gzip(&archive(|b| (0..100).for_each(|i| raw_entry(b, &format!("d{i}/"), tar::EntryType::Directory, None, b""))));
    let (_dir, result) = unpack(&headers, 32 * 1024);
    assert!(refusal(&result).contains("more than 32768 bytes"), "{result:?}");
}

/// A GNU sparse entry of `real` bytes whose only data is its last 512: the rest a hole.
fn sparse_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, real: u64) {
    let mut h = header(tar::EntryType::GNUSparse, 512);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(real - 512);
    gnu.sparse[0].set_length(512);
    gnu.set_real_size(real);
    h.set_cksum();
    builder.append(&h, &[1u8; 512][..]).unwrap();
}

#[test]
fn sparse_files_are_refused_before_their_holes_are_written() {
    // Each claims a quarter of the cap and stores 512 bytes: the tar reader would write
    // 2.5 MiB of zeros for a 12 KiB archive, past any cap on the stream.
    let layer = gzip(&archive(|b| (0..10).for_each(|i| sparse_entry(b, &format!("s{i}"), 256 * 1024))));
    let (dir, result) = unpack(&layer, 1 << 20);
    assert!(refusal(&result).contains("sparse"), "{result:?}");
    let written: u64 = std::fs::read_dir(dir.path().join(FILES_DIR)).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    assert_eq!(written, 0);
}

#[test]
fn whatever_the_reader_yields_no_more_than_the_cap_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut used = Used { written: 1000, path_bytes: 0 };
    let result = store_file(&mut io::repeat(0).take(1 << 30), dir.path(), &mut Default::default(), &mut used, 64 * 1024);
    assert!(matches!(&result, Err(UnpackError::Refused(m)) if m.contains("65536")), "{result:?}");
    assert!(used.written <= 64 * 1024 + 64 * 1024, "stopped within one buffer of the cap: {}", used.written);
}

/// A GNU long-name (or PAX) entry of `size` bytes, then a file it would name.
fn extension_then_file(kind: tar::EntryType, size: usize) -> Vec<u8> {
    let mut h = header(kind, size as u64);
    h.set_cksum();
    let mut stream = h.as_bytes().to_vec();
    let mut name = match kind {
        tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => format!("{size} path="),
        _ => String::new(),
    }
    .into_bytes();
    name.resize(size.next_multiple_of(512), b'a');
    stream.extend_from_slice(&name);
    stream.extend_from_slice(&archive(|b| raw_entry(b, "f", tar::EntryType::Regular, None, b"x")));
    stream
}

#[test]
fn long_names_and_pax_records_are_refused_before_they_are_read_into_memory() {
    for kind in [tar::EntryType::GNULongName, tar::EntryType::GNULongLink, tar::EntryType::XHeader, tar::EntryType::XGlobalHeader] {
        // 8 MiB of name in a few KiB of gzip (the tar reader would allocate all of it).
        let layer = gzip(&extension_then_file(kind, 8 << 20));
        assert!(layer.len() < 64 * 1024, "{}", layer.len());
        let (_dir, result) = unpack(&layer, 1 << 30);
        assert!(refusal(&result).contains("extension entry"), "{kind:?}: {result:?}");
    }
}

#[test]
fn names_and_entries_are_capped_per_layer() {
    let limits = Limits { bytes: 1 << 20, entries: 10, path_bytes: 4096 };
    let run = |layer: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        unpack_within(layer, dir.path(), limits)
    };
    let names = archive(|b| (0..9).for_each(|i| raw_entry(b, &format!("{i}{}", "n".repeat(90)), tar::EntryType::Regular, None, b"")));
    assert_eq!(run(&names).unwrap().entries.len(), 9, "819 bytes of names");
    let mut long = tar::Builder::new(Vec::new());
    for i in 0..3 {
        // 3 × 2,000 bytes of names, each through a GNU long-name entry.
        let mut h = header(tar::EntryType::Regular, 0);
        long.append_data(&mut h, format!("{i}{}", "n".repeat(1999)), &b""[..]).unwrap();
    }
    let result = run(&long.into_inner().unwrap());
    assert!(refusal(&result).contains("exceed 4096 bytes"), "{result:?}");
    let links = archive(|b| (0..3).for_each(|i| raw_entry(b, &format!("l{i}"), tar::EntryType::Symlink, Some(&"t".repeat(99)), b"")));
    let result = unpack_within(&links, tempfile::tempdir().unwrap().path(), Limits { path_bytes: 250, ..limits });
    assert!(refusal(&result).contains("exceed 250 bytes"), "link targets count: {result:?}");
    let many = archive(|b| (0..11).for_each(|i| raw_entry(b, &format!("{i}"), tar::EntryType::Directory, None, b"")));
    let result = run(&many);
    assert!(refusal(&result).contains("more than 10 entries"), "{result:?}");
}

#[test]
fn garbage_is_refused_not_a_panic() {
    for garbage in [&b"not a tar at all, just some text that is long enough"[..], &[0x1f, 0x8b, 0, 0, 0], &[0x28, 0xb5, 0x2f, 0xfd, 1]] {
        let (_dir, result) = unpack(garbage, 1 << 20);
        assert!(matches!(result, Err(UnpackError::Refused(_))), "{result:?}");
    }
}
