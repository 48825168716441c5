//! `Range` the way lazy clients send it, against cached and composed blobs: several ranges in
//! one request answered `multipart/byteranges` (a snapshotter's prefetch), overlapping ones
//! coalesced, too many of them answered with the whole blob, ranges past the end, HEAD, which
//! ignores `Range` (RFC 9110 §14.2), and `If-Range` (§13.1.5). Every byte checked.

mod support;

use support::client::{request, Reply};
use support::image::{self, ImageOptions, Layout};
use support::multipart;
use support::server::{import, TestServer};

struct Fixture {
    server: TestServer,
    layout: Layout,
    _dir: tempfile::TempDir,
}

/// `big/app:v1`, one uncompressed 1 MiB layer; `fixed/ws` composed on it (its config is a
/// blob held in memory).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("app"), &ImageOptions { layers: vec![1 << 20], gzip: false, tag: "v1".into(), seed: 41, ..ImageOptions::default() });
    let cache = dir.path().join("cache");
    import(&cache, &layout.dir, "big/app", None);
    let specs = dir.path().join("specs.json");
    std::fs::write(&specs, r#"{"ws": {"baseRef": "local:big/app:v1"}}"#).unwrap();
    let server = TestServer::start_on(&cache, &format!(r#""specs": {{"fixedFile": {:?}}}"#, specs.display().to_string()));
    Fixture { server, layout, _dir: dir }
}

impl Fixture {
    fn layer(&self) -> (String, Vec<u8>) {
        let layer = &self.layout.image().layers[0];
        (format!("/v2/big/app/blobs/{}", layer.digest), std::fs::read(self.layout.blob_path(&layer.digest)).unwrap())
    }

    fn ranged(&self, path: &str, range: &str) -> Reply {
        request(self.server.addr, "GET", path, &[("Range", range)])
    }
}

/// Checks a multipart answer: the parts are `expected` (first, last inclusive) of `bytes`.
fn assert_parts(reply: &Reply, bytes: &[u8], expected: &[(u64, u64)]) {
    let parts = multipart::parts(reply);
    let got: Vec<(u64, u64)> = parts.iter().map(|p| (p.first, p.last)).collect();
    assert_eq!(got, expected);
    for part in &parts {
        assert_eq!(part.len, bytes.len() as u64);
        assert_eq!(part.content_type, "application/octet-stream");
        assert!(part.bytes == bytes[part.first as usize..=part.last as usize], "part {}-{}", part.first, part.last);
    }
}

#[test]
fn several_ranges_of_a_cached_blob_are_one_multipart_answer() {
    let f = fixture();
    let (path, bytes) = f.layer();
    let len = bytes.len() as u64;
    // A small part and two large ones (these go out by sendfile), asked out of order, one past
    // the end: RFC 9110 §15.3.7 sends the satisfiable ones, and "a client cannot rely on
    // receiving the same ranges that it requested, nor the same order".
    let reply = f.ranged(&path, &format!("bytes=900000-999999, 0-99, 200000-299999, {}-", len + 10));
    assert_parts(&reply, &bytes, &[(0, 99), (200_000, 299_999), (900_000, 999_999)]);
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
    assert_eq!(reply.header("docker-content-digest"), Some(f.layout.image().layers[0].digest.as_str()));
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    let suffix = f.ranged(&path, "bytes=0-0,-10");
    assert_parts(&suffix, &bytes, &[(0, 0), (len - 10, len - 1)]);
}

#[test]
fn overlapping_and_adjacent_ranges_are_coalesced() {
    let f = fixture();
    let (path, bytes) = f.layer();
    // RFC 9110 §15.3.7.2: a server "MAY coalesce any of the ranges that overlap, or that are
    // separated by a gap that is smaller than the overhead of sending multiple parts".
    let one = f.ranged(&path, "bytes=100-199,150-299,300-399");
    assert_eq!(one.status, 206);
    assert_eq!(one.header("content-range"), Some(format!("bytes 100-399/{}", bytes.len()).as_str()), "one part, not multipart");
    assert!(one.body == bytes[100..400]);
    let near = f.ranged(&path, "bytes=0-9,50-59");
    assert_eq!((near.status, near.header("content-range")), (206, Some(format!("bytes 0-59/{}", bytes.len()).as_str())), "a 40-byte gap is sent");
    // The same open-ended range a hundred times is one part, not a hundred copies of the blob.
    let repeated = f.ranged(&path, &format!("bytes={}", vec!["0-"; 100].join(",")));
    assert_eq!((repeated.status, repeated.body.len()), (206, bytes.len()));
}

#[test]
fn more_ranges_than_the_cap_get_the_whole_blob_and_none_satisfiable_get_416() {
    let f = fixture();
    let (path, bytes) = f.layer();
    let len = bytes.len();
    // 200 ranges (the cap) are served; 201 are ignored, as RFC 9110 §14.2 allows for "a set of
    // many small ranges", and the whole blob sent with 200.
    let many = |count: usize| (0..count).map(|i| format!("{}-{}", i * 1000, i * 1000 + 9)).collect::<Vec<_>>().join(",");
    let at_cap = f.ranged(&path, &format!("bytes={}", many(200)));
    let expected: Vec<(u64, u64)> = (0..200).map(|i| (i * 1000, i * 1000 + 9)).collect();
    assert_parts(&at_cap, &bytes, &expected);
    let over = f.ranged(&path, &format!("bytes={}", many(201)));
    assert_eq!((over.status, over.body.len()), (200, len));
    assert!(over.body == bytes);
    for unsatisfiable in [format!("bytes={len}-,{}-{}", len + 1, len + 5), "bytes=-0,-0".into(), "bytes=0-1,garbage".into()] {
        let reply = f.ranged(&path, &unsatisfiable);
        assert_eq!((reply.status, reply.header("content-range")), (416, Some(format!("bytes */{len}").as_str())), "{unsatisfiable}");
    }
}

#[test]
fn a_head_with_range_is_answered_like_a_head() {
    let f = fixture();
    let (path, bytes) = f.layer();
    for range in ["bytes=0-9", "bytes=0-9,100-109", "bytes=99999999-", "bytes=abc"] {
        let head = request(f.server.addr, "HEAD", &path, &[("Range", range)]);
        // The spec: "A HEAD request to an existing blob or manifest URL MUST return `200 OK`".
        assert_eq!((head.status, head.header("content-length"), head.header("content-range")), (200, Some(bytes.len().to_string().as_str()), None), "{range}");
        assert!(head.header("content-type") == Some("application/octet-stream"), "{range}");
    }
}

#[test]
fn a_range_under_an_if_range_for_other_content_gets_the_whole_blob() {
    let f = fixture();
    let (path, bytes) = f.layer();
    let etag = request(f.server.addr, "HEAD", &path, &[]).header("etag").unwrap().to_owned();
    let resumed = request(f.server.addr, "GET", &path, &[("Range", "bytes=100-"), ("If-Range", &etag)]);
    assert_eq!((resumed.status, resumed.header("content-range")), (206, Some(format!("bytes 100-{}/{}", bytes.len() - 1, bytes.len()).as_str())));
    assert!(resumed.body == bytes[100..]);
    for other in ["\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"", &format!("W/{etag}"), "Sat, 01 Jan 2000 00:00:00 GMT"] {
        let whole = request(f.server.addr, "GET", &path, &[("Range", "bytes=100-"), ("If-Range", other)]);
        assert_eq!((whole.status, whole.header("content-range")), (200, None), "{other}");
        assert!(whole.body == bytes, "{other}: the whole blob");
    }
}

#[test]
fn ranges_of_a_composed_blob_held_in_memory() {
    let f = fixture();
    let manifest = request(f.server.addr, "GET", "/v2/fixed/ws/manifests/latest", &[]);
    assert_eq!(manifest.status, 200, "{}", String::from_utf8_lossy(&manifest.body));
    let config_digest = manifest.json()["config"]["digest"].as_str().unwrap().to_owned();
    let path = format!("/v2/fixed/ws/blobs/{config_digest}");
    let config = request(f.server.addr, "GET", &path, &[]).body;
    let last = config.len() as u64 - 1;
    let reply = f.ranged(&path, &format!("bytes=-5,0-4,{}-", last + 1));
    assert_parts(&reply, &config, &[(0, 4), (last - 4, last)]);
}
