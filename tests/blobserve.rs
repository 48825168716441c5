//! Blobserve over HTTP, black box: Gitpod's URL shape and answers, ETags, 304, ranges, gzip,
//! caching by reference kind, a moved tag; layers applied with whiteouts and links resolved
//! inside the image only; bad paths and bad archives refused; unpacked layers surviving a
//! crash and a restart; the blob space bounded by LRU eviction; pre-pull at start.

mod support;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::client::{get, request, send_raw, Reply};
use support::ide::{self, BUILD_ID, VENDOR_BYTES};
use support::image::{layer_tar, write_layout_of_layers, Entry, Layout};
use support::server::{import, TestServer};
use support::wait_until;

fn blobserve_server(repos: serde_json::Value, extra: serde_json::Value, more: &str) -> TestServer {
    let key = ide::blobserve_key(repos, extra);
    TestServer::start(&if more.is_empty() { key } else { format!("{more}, {key}") })
}

fn local_ide(facade: &TestServer, temp: &Path, name: &str, tag: &str, seed: &str) -> Layout {
    let layout = ide::ide_layout(&temp.join(format!("{name}-{tag}-{seed}").replace('/', "_")), tag, seed);
    import(&facade.cache_dir, &layout.dir, name, Some(tag));
    layout
}

fn units(facade: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(facade.cache_dir.join("blobserve/units")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gzip");
    out
}

fn app_js() -> String {
    let files = ide::frontend_files();
    let app = &files.iter().find(|(p, _)| p == "out/app.js").unwrap().1;
    String::from_utf8(app.clone()).unwrap().replace("__BUILD_ID__", BUILD_ID)
}

#[test]
fn answers_follow_gitpods_blobserve() {
    let temp = tempfile::tempdir().unwrap();
    let facade = blobserve_server(json!({"team/ide": ide::ide_repo()}), json!({}), "");
    local_ide(&facade, temp.path(), "team/ide", "1.0", "a");
    let bs = facade.blobserve.unwrap();

    // Read-only: an image no request prepared yet is not prepared for it.
    let read_only = |path| request(bs, "GET", path, &[("X-BlobServe-ReadOnly", "true")]);
    assert_eq!(read_only("/team/ide:1.0/out/app.js").status, 404);

    let index = get(bs, "/team/ide:1.0");
    assert_eq!(index.status, 200, "{}", String::from_utf8_lossy(&index.body));
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&index.body).contains("<title>Test IDE</title>"));
    for path in ["/team/ide:1.0/", "/team/ide:1.0/index.html"] {
        assert_eq!(get(bs, path).body, index.body, "{path} is the workdir's index.html");
    }
    assert_eq!(read_only("/team/ide:1.0/out/app.js").status, 200, "prepared now");

    let app = get(bs, "/team/ide:1.0/out/app.js");
    assert_eq!((app.status, app.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(String::from_utf8(app.body).unwrap(), app_js(), "replacements are applied once, at preparation");
    assert_eq!(get(bs, "/team/ide:1.0/img/logo.png").header("content-type"), Some("image/png"));
    let head = request(bs, "HEAD", "/team/ide:1.0/out/vendor.js", &[]);
    assert_eq!((head.status, head.header("content-length")), (200, Some(VENDOR_BYTES.to_string().as_str())));

    let forbidden = get(bs, "/other/img:1.0/index.html");
    assert_eq!(forbidden.status, 403);
    assert!(String::from_utf8_lossy(&forbidden.body).contains("forbidden repo: other/img"));
    assert_eq!(get(bs, "/team/ide/out/app.js").status, 404, "a tag is required");
    assert_eq!(get(bs, "/team/IDE:1.0/").status, 404, "an unparsable reference");
    assert_eq!(get(bs, "/team/ide:2.0/").status, 404, "an unknown tag");
    assert_eq!(get(bs, "/team/ide:1.0/out/missing.js").status, 404);
    let directory = get(bs, "/team/ide:1.0/out");
    assert_eq!((directory.status, directory.header("location")), (301, Some("/team/ide:1.0/out/")));
    assert_eq!(get(bs, "/team/ide:1.0/out/").status, 404, "a directory without index.html is no listing");
    assert_eq!(request(bs, "POST", "/team/ide:1.0/", &[]).status, 405);
    let upgrade = request(bs, "GET", "/team/ide:1.0/", &[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
    assert_eq!(upgrade.status, 404, "WebSocket upgrades are not served");
    // The registry's own listener is untouched.
    assert_eq!(get(facade.addr, "/v2/team/ide/tags/list").status, 200);
}

#[test]
fn etags_304_ranges_gzip_and_caching_by_reference_kind() {
    let temp = tempfile::tempdir().unwrap();
    let facade = blobserve_server(json!({"team/ide": ide::ide_repo()}), json!({}), "");
    let layout = local_ide(&facade, temp.path(), "team/ide", "1.0", "a");
    let bs = facade.blobserve.unwrap();
    let vendor = ide::vendor_bundle("a", VENDOR_BYTES);

    let plain = get(bs, "/team/ide:1.0/out/vendor.js");
    assert_eq!(plain.body, vendor, "sent from the unpacked file");
    assert_eq!((plain.header("cache-control"), plain.header("vary")), (Some("no-cache"), Some("Accept-Encoding")));
    let etag = plain.header("etag").unwrap().to_owned();
    assert_eq!(request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("If-None-Match", &etag)]).status, 304);
    assert_eq!(request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("If-None-Match", "\"other\"")]).status, 200);

    let gzipped = request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("Accept-Encoding", "br, gzip")]);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert!(gzipped.body.len() < vendor.len() / 2, "{} bytes", gzipped.body.len());
    assert_eq!(gunzip(&gzipped.body), vendor);
    assert_ne!(gzipped.header("etag"), Some(etag.as_str()), "another representation, another ETag");
    let variants: usize = units(&facade).iter().filter_map(|u| std::fs::read_dir(facade.cache_dir.join("blobserve/units").join(u).join("gz")).ok()).map(|d| d.count()).sum();
    assert!(variants >= 1, "the compressed variant is kept in the blob space");
    let png = request(bs, "GET", "/team/ide:1.0/img/logo.png", &[("Accept-Encoding", "gzip")]);
    assert_eq!(png.header("content-encoding"), None, "images are not compressed again");

    let resumed = request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("Range", "bytes=100-199"), ("If-Range", &etag)]);
    assert_eq!((resumed.status, resumed.body.as_slice()), (206, &vendor[100..200]), "If-Range names this file");
    let part = request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("Range", "bytes=100-199"), ("Accept-Encoding", "gzip")]);
    assert_eq!((part.status, part.header("content-range"), part.header("content-encoding")), (206, Some(&*format!("bytes 100-199/{VENDOR_BYTES}")), None));
    assert_eq!(part.body, &vendor[100..200]);
    let beyond = request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("Range", "bytes=99999999-")]);
    assert_eq!((beyond.status, beyond.header("content-range")), (416, Some(&*format!("bytes */{VENDOR_BYTES}"))));
    for range in ["bytes=100-199", "bytes=99999999-", "bytes=abc"] {
        // RFC 9110 §14.2: only a GET has ranges; a HEAD is answered as the whole file's.
        let head = request(bs, "HEAD", "/team/ide:1.0/out/vendor.js", &[("Range", range)]);
        assert_eq!((head.status, head.header("content-length"), head.header("content-range")), (200, Some(&*VENDOR_BYTES.to_string()), None), "{range}");
    }

    let by_digest = get(bs, &format!("/team/ide@{}/out/vendor.js", layout.image().manifest.digest));
    assert_eq!((by_digest.status, by_digest.header("cache-control")), (200, Some("public, max-age=31536000, immutable")));

    // The tag moves to an image with another bundle: new content, new ETag.
    local_ide(&facade, temp.path(), "team/ide", "1.0", "b");
    facade.advance(Duration::from_secs(2));
    let moved = ide::vendor_bundle("b", VENDOR_BYTES);
    let mut last = Reply { status: 0, headers: Vec::new(), body: Vec::new() };
    wait_until("the moved tag is served", Duration::from_secs(30), || {
        last = get(bs, "/team/ide:1.0/out/vendor.js");
        last.body == moved
    });
    assert_ne!(last.header("etag"), Some(etag.as_str()));
    assert_eq!(request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("If-None-Match", &etag)]).status, 200, "the old ETag no longer matches");
    // A download resumed across the move gets the new file whole, not its part after the old one.
    let resumed = request(bs, "GET", "/team/ide:1.0/out/vendor.js", &[("Range", "bytes=100-199"), ("If-Range", &etag)]);
    assert_eq!((resumed.status, resumed.header("content-range")), (200, None));
    assert!(resumed.body == moved);
}

#[test]
fn layers_are_applied_with_whiteouts_and_links_resolved_inside_the_image_only() {
    let temp = tempfile::tempdir().unwrap();
    let lower = layer_tar(&[
        Entry::File("etc/passwd", b"the image's own passwd\n"),
        Entry::File("ide/code/index.html", b"v0"),
        Entry::File("ide/code/gone.txt", b"gone"),
        Entry::File("ide/code/dir/a.txt", b"a"),
        Entry::File("ide/code/opq/old.txt", b"old"),
        Entry::File("ide/code/dup.txt", b"first"),
        Entry::File("ide/code/dup.txt", b"second"),
    ]);
    let middle = layer_tar(&[
        Entry::Whiteout("ide/code/gone.txt"),
        Entry::Opaque("ide/code/opq"),
        Entry::File("ide/code/opq/new.txt", b"new"),
        Entry::Symlink("ide/code/link.txt", "dir/a.txt"),
        Entry::Symlink("ide/code/abs.txt", "/ide/code/dir/a.txt"),
        Entry::Symlink("ide/code/linkdir", "dir"),
        Entry::Symlink("ide/code/escape.txt", "../../../../../../../etc/passwd"),
        Entry::Symlink("ide/code/hostfile", "/proc/self/environ"),
        Entry::Symlink("ide/code/loop", "loop"),
        Entry::HardLink("ide/code/hard.txt", "ide/code/dir/a.txt"),
        Entry::CharDevice("ide/code/null"),
        Entry::Fifo("ide/code/fifo"),
    ]);
    let upper = layer_tar(&[Entry::File("ide/code/index.html", b"v2")]);
    let layout = write_layout_of_layers(&temp.path().join("layers"), "1", &[lower, middle, upper], &[ide::IDE_LABEL]);
    let facade = blobserve_server(json!({}), json!({"allowAnyRepo": true}), "");
    import(&facade.cache_dir, &layout.dir, "team/layers", Some("1"));
    let bs = facade.blobserve.unwrap();
    let file = |path: &str| {
        let reply = get(bs, &format!("/team/layers:1/{path}"));
        (reply.status, String::from_utf8_lossy(&reply.body).trim_end().to_owned())
    };
    let ok = |body: &str| (200, body.to_owned());
    assert_eq!(file(""), ok("v2"), "the upper layer wins");
    assert_eq!(file("gone.txt").0, 404, "whiteout");
    assert_eq!(file("opq/old.txt").0, 404, "opaque directory");
    assert_eq!(file("opq/new.txt"), ok("new"));
    assert_eq!(file("dup.txt"), ok("second"), "a later duplicate entry wins");
    assert_eq!(file("link.txt"), ok("a"));
    assert_eq!(file("abs.txt"), ok("a"), "an absolute target starts at the image root");
    assert_eq!(file("linkdir/a.txt"), ok("a"));
    assert_eq!(file("hard.txt"), ok("a"));
    assert_eq!(file("escape.txt"), ok("the image's own passwd"), "`..` stops at the image root: never the host's file");
    for missing in ["hostfile", "loop", "null", "fifo"] {
        assert_eq!(file(missing).0, 404, "{missing}");
    }
}

#[test]
fn only_files_of_a_useful_size_are_compressed() {
    let temp = tempfile::tempdir().unwrap();
    let text = |bytes: usize| "const answer = 42; // the same line again and again\n".bytes().cycle().take(bytes).collect::<Vec<u8>>();
    let (tiny, mid, huge) = (text(100), text(1 << 20), text((8 << 20) + 1));
    let layer = layer_tar(&[Entry::File("ide/code/tiny.js", &tiny), Entry::File("ide/code/mid.js", &mid), Entry::File("ide/code/huge.js", &huge)]);
    let layout = write_layout_of_layers(&temp.path().join("sizes"), "1", &[layer], &[ide::IDE_LABEL]);
    let facade = blobserve_server(json!({}), json!({"allowAnyRepo": true}), "");
    import(&facade.cache_dir, &layout.dir, "team/sizes", Some("1"));
    let bs = facade.blobserve.unwrap();
    for (name, body, compressed) in [("tiny.js", &tiny, false), ("mid.js", &mid, true), ("huge.js", &huge, false)] {
        let reply = request(bs, "GET", &format!("/team/sizes:1/{name}"), &[("Accept-Encoding", "gzip")]);
        assert_eq!((reply.status, reply.header("content-encoding").is_some()), (200, compressed), "{name}");
        let sent = if compressed { gunzip(&reply.body) } else { reply.body };
        assert!(&sent == body, "{name}: the file's bytes");
    }
}

#[test]
fn bad_paths_and_bad_archives_are_refused_and_nothing_half_unpacked_is_left() {
    let temp = tempfile::tempdir().unwrap();
    let facade = blobserve_server(json!({"team/ide": ide::ide_repo()}), json!({"allowAnyRepo": true, "maxUnpackedBytes": 8 << 20}), "");
    local_ide(&facade, temp.path(), "team/ide", "1.0", "a");
    let bs = facade.blobserve.unwrap();
    assert_eq!(get(bs, "/team/ide:1.0/out/app.js").status, 200);
    for path in ["/team/ide:1.0/../../../etc/passwd", "/team/ide:1.0/out/%2e%2e/%2e%2e/x", "/team/ide:1.0/out//app.js", "/team/ide:1.0/out%2fapp.js", "/team/ide:1.0/out/app.js%00", "/team/ide:1.0/%zz"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = send_raw(bs, raw.as_bytes(), false);
        assert_eq!(reply.status, 400, "{path}: {}", String::from_utf8_lossy(&reply.body));
    }

    let refused = |name: &str, layer: Vec<u8>, why: &str| {
        let layout = write_layout_of_layers(&temp.path().join(name.replace('/', "_")), "1", &[layer], &[ide::IDE_LABEL]);
        import(&facade.cache_dir, &layout.dir, name, Some("1"));
        let reply = get(bs, &format!("/{name}:1/"));
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status, 502, "{name}: {body}");
        assert!(body.contains("cannot be served") && body.contains(why), "{name}: {body}");
        assert!(!units(&facade).iter().any(|u| u == &format!("layer-{}", layout.image().layers[0].hex())), "{name}: no unit kept");
    };
    let raw = |name: &'static str, kind, link: Option<&'static str>| Entry::Raw { name, kind, link, data: b"" };
    refused("bad/escape", layer_tar(&[Entry::File("ide/code/index.html", b"x"), raw("../../etc/cron.d/evil", tar::EntryType::Regular, None)]), "points outside the image");
    refused("bad/hardlink", layer_tar(&[raw("ide/code/index.html", tar::EntryType::Link, Some("../../etc/shadow"))]), "points outside the image");
    // A tar bomb: 8 MiB of zeros compress to a few KiB. Two files of half the 8 MiB cap: no
    // entry (nor their sum) is over it, the stream with its headers is.
    let zeros = vec![0u8; 4 << 20];
    refused("bad/bomb", layer_tar(&[Entry::File("ide/code/index.html", &zeros), Entry::File("ide/code/app.js", &zeros)]), "8388608");
    // What the tar reader would hold in memory whole (a long name), or fill with zeros no
    // stream cap counts (a sparse file): refused at their header.
    let name = vec![b'n'; 1 << 20];
    let long_name = Entry::Raw { name: "././@LongLink", kind: tar::EntryType::GNULongName, link: None, data: &name };
    refused("bad/longname", layer_tar(&[long_name, Entry::File("ide/code/index.html", b"x")]), "extension entry");
    refused("bad/sparse", layer_tar(&[Entry::Raw { name: "ide/code/index.html", kind: tar::EntryType::GNUSparse, link: None, data: &[0u8; 512] }]), "sparse");
    refused("bad/garbage", b"this is no tar archive, only some text long enough to look at".repeat(20), "cannot be read");
    // The server's own temp directory holds its lock file, and nothing else.
    let left: Vec<String> = std::fs::read_dir(facade.cache_dir.join("blobserve/tmp"))
        .unwrap()
        .flatten()
        .flat_map(|instance| std::fs::read_dir(instance.path()).unwrap().flatten())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["lock"], "refused unpacks leave nothing behind");
    assert_eq!(get(bs, "/team/ide:1.0/out/app.js").status, 200, "still serving");
}

#[test]
fn unpacked_layers_survive_a_crash_and_a_restart_and_damaged_units_are_unpacked_again() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let config = ide::blobserve_key(json!({"team/ide": ide::ide_repo()}), json!({}));
    let first = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {config}"#));
    let layout = ide::ide_layout(&temp.path().join("ide"), "1.0", "a");
    import(&cache, &layout.dir, "team/ide", Some("1.0"));
    assert_eq!(get(first.blobserve.unwrap(), "/team/ide:1.0/out/app.js").status, 200);
    drop(first);
    // What a crash in the middle of an unpack leaves: the dead process's temp directory, its
    // lock file held by no one, with a unit half written.
    let dead = cache.join("blobserve/tmp/999-00000000deadbeef");
    std::fs::create_dir_all(dead.join("unit-0/files")).unwrap();
    std::fs::write(dead.join("lock"), b"").unwrap();
    std::fs::write(dead.join("unit-0/files/.partial"), b"half a file").unwrap();

    let second = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {config}"#));
    assert!(!dead.exists(), "what a dead process left in tmp/ is removed at start");
    let app = get(second.blobserve.unwrap(), "/team/ide:1.0/out/app.js");
    assert_eq!(String::from_utf8(app.body).unwrap(), app_js());
    let metrics = String::from_utf8(get(second.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains("registry_facade_blobserve_unpacked_layers_total 0"), "the units on disk were used again:\n{metrics}");
    assert!(metrics.contains(r#"registry_facade_blobserve_prepared_total{outcome="ready"} 1"#), "{metrics}");
    drop(second);

    // What a crash before the page cache reached the disk can leave (units are not synced):
    // a file whose bytes are not those of its name, and a layer whose index is cut short.
    let vendor = ide::vendor_bundle("a", VENDOR_BYTES);
    let name = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&vendor));
    let damaged = std::fs::read_dir(cache.join("blobserve/units")).unwrap().flatten().map(|e| e.path().join("files").join(&name)).find(|p| p.exists()).expect("the bundle's unit file");
    std::fs::write(&damaged, vec![b'x'; VENDOR_BYTES]).unwrap();
    let base_unit = cache.join(format!("blobserve/units/layer-{}", layout.image().layers[0].hex()));
    std::fs::write(base_unit.join("index.json"), b"{\"archiveBy").unwrap();
    let third = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {config}"#));
    assert!(!base_unit.exists(), "a unit whose index does not read is deleted at start");
    let reply = get(third.blobserve.unwrap(), "/team/ide:1.0/out/vendor.js");
    assert_eq!(reply.status, 200);
    assert!(reply.body == vendor, "the damaged file is found by its hash and never served; its layer is unpacked again");
    let metrics = String::from_utf8(get(third.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains("registry_facade_blobserve_unpacked_layers_total 2"), "both layers unpacked again:\n{metrics}");
    drop(third);

    // The file a replacement rewrites, damaged: it is hashed before it is rewritten, and its
    // layer unpacked again, rather than its damage served under a new name.
    let files = ide::frontend_files();
    let original = &files.iter().find(|(p, _)| p == "out/app.js").unwrap().1;
    let name = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(original));
    let damaged = std::fs::read_dir(cache.join("blobserve/units")).unwrap().flatten().map(|e| e.path().join("files").join(&name)).find(|p| p.exists()).expect("app.js in its unit");
    std::fs::write(&damaged, original.iter().map(|_| b'x').collect::<Vec<u8>>()).unwrap();
    let fourth = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {config}"#));
    let app = get(fourth.blobserve.unwrap(), "/team/ide:1.0/out/app.js");
    assert_eq!((app.status, String::from_utf8(app.body).unwrap()), (200, app_js()));
    let metrics = String::from_utf8(get(fourth.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains("registry_facade_blobserve_unpacked_layers_total 1"), "its layer unpacked again:\n{metrics}");
}

#[test]
fn pre_pull_prepares_at_start_and_the_blob_space_evicts_the_least_recently_used_image() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let a = ide::ide_layout(&temp.path().join("a"), "1.0", "a");
    import(&cache, &a.dir, "team/a", Some("1.0"));
    let b = ide::ide_layout(&temp.path().join("b"), "1.0", "b");
    import(&cache, &b.dir, "team/b", Some("1.0"));
    // Room for one image (a 3 MiB bundle each), not two.
    let repos = json!({"team/a": {"prePull": ["1.0"]}, "team/b": {}});
    let key = ide::blobserve_key(repos, json!({"blobSpace": {"maxSizeBytes": 5 << 20}}));
    let facade = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {key}"#));
    let bs = facade.blobserve.unwrap();
    wait_until("team/a is pre-pulled", Duration::from_secs(30), || request(bs, "GET", "/team/a:1.0/", &[("X-BlobServe-ReadOnly", "true")]).status == 200);
    let metrics = String::from_utf8(get(facade.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains(r#"registry_facade_blobserve_prepull{state="ready"} 1"#), "{metrics}");
    let layer_of = |layout: &Layout| format!("layer-{}", layout.image().layers[1].hex());
    assert!(units(&facade).contains(&layer_of(&a)));

    facade.advance(Duration::from_secs(60));
    assert_eq!(get(bs, "/team/b:1.0/out/vendor.js").body, ide::vendor_bundle("b", VENDOR_BYTES));
    let held = units(&facade);
    assert!(held.contains(&layer_of(&b)) && !held.contains(&layer_of(&a)), "a, least recently used, was evicted: {held:?}");

    facade.advance(Duration::from_secs(60));
    assert_eq!(get(bs, "/team/a:1.0/out/vendor.js").body, ide::vendor_bundle("a", VENDOR_BYTES), "an evicted image is prepared again");
    let held = units(&facade);
    assert!(held.contains(&layer_of(&a)) && !held.contains(&layer_of(&b)), "{held:?}");
}

#[test]
fn concurrent_first_requests_on_every_core_prepare_the_image_and_unpack_each_layer_once() {
    let temp = tempfile::tempdir().unwrap();
    let facade = blobserve_server(json!({"team/ide": ide::ide_repo()}), json!({}), r#""adminListen": "127.0.0.1:0""#);
    local_ide(&facade, temp.path(), "team/ide", "1.0", "a");
    let bs = facade.blobserve.unwrap();
    let files = ["", "out/app.js", "out/vendor.js", "style.css", "img/logo.png", "from-base.txt"];
    let threads: Vec<_> = (0..24).map(|i| std::thread::spawn(move || get(bs, &format!("/team/ide:1.0/{}", files[i % files.len()])).status)).collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), 200);
    }
    let metrics = String::from_utf8(get(facade.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains("registry_facade_blobserve_unpacked_layers_total 2"), "two layers, each unpacked once:\n{metrics}");
    assert!(metrics.contains(r#"registry_facade_blobserve_prepared_total{outcome="ready"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"registry_facade_open_connections{listener="blobserve""#), "{metrics}");
}

#[test]
fn a_prefetch_also_prepares_the_images_blobserve_serves() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let layout = ide::ide_layout(&temp.path().join("ide"), "1.0", "a");
    import(&cache, &layout.dir, "team/ide", Some("1.0"));
    let key = ide::blobserve_key(json!({"team/ide": ide::ide_repo()}), json!({}));
    let facade = TestServer::start_on(&cache, &format!(r#""prefetch": ["team/ide:1.0"], {key}"#));
    let bs = facade.blobserve.unwrap();
    // Read-only requests never prepare: a 200 means the prefetch did.
    wait_until("the prefetched image is prepared for blobserve", Duration::from_secs(30), || request(bs, "GET", "/team/ide:1.0/out/app.js", &[("X-BlobServe-ReadOnly", "true")]).status == 200);
    assert!(units(&facade).contains(&format!("layer-{}", layout.image().layers[1].hex())));
}

#[test]
fn the_prefetch_command_beside_a_running_server_prepares_into_the_space_they_share() {
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let layout = ide::ide_layout(&temp.path().join("ide"), "1.0", "a");
    import(&cache, &layout.dir, "team/ide", Some("1.0"));
    let key = ide::blobserve_key(json!({"team/ide": ide::ide_repo()}), json!({}));
    let facade = TestServer::start_on(&cache, &format!(r#""adminListen": "127.0.0.1:0", {key}"#));
    let server_work = std::fs::read_dir(cache.join("blobserve/tmp")).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>();
    assert_eq!(server_work.len(), 1, "the server's own temp directory");

    let config = temp.path().join("config.json");
    std::fs::write(&config, format!(r#"{{"listen": "127.0.0.1:0", "cacheDir": {:?}, {key}}}"#, cache.display().to_string())).unwrap();
    let output = support::tools::facade_binary().arg("prefetch").arg("--config").arg(&config).arg("team/ide:1.0").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(server_work[0].join("lock").exists(), "the command left the server's work in progress alone");
    assert!(units(&facade).contains(&format!("layer-{}", layout.image().layers[1].hex())), "the command unpacked into the shared space");

    // The server takes the command's units as they are, hashing each file as it first opens it.
    let app = get(facade.blobserve.unwrap(), "/team/ide:1.0/out/app.js");
    assert_eq!(String::from_utf8(app.body).unwrap(), app_js());
    let metrics = String::from_utf8(get(facade.admin.unwrap(), "/metrics").body).unwrap();
    assert!(metrics.contains("registry_facade_blobserve_unpacked_layers_total 0"), "no layer unpacked twice:\n{metrics}");
}
