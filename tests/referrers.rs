//! The referrers API (distribution-spec v1.1, end-12) for every kind of name: an imported
//! repository (what import keeps), a list larger than a page (`Link`), a composed image (none),
//! a mirror of the reference registry, which has no referrers API (its referrers tag), and a
//! mirror of a registry that has one (another facade).

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::client::{get, request, Reply};
use support::image::{self, ImageOptions, Layout, OCI_INDEX, OCI_MANIFEST};
use support::referrers::{self, Referrer, BAGEL, CROISSANT};
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{import, TestServer};

const REPO: &str = "team/app";

fn index_of(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body[..reply.body.len().min(400)]));
    assert_eq!(reply.header("content-type"), Some(OCI_INDEX));
    reply.json()["manifests"].as_array().expect("manifests").clone()
}

fn digests(listed: &[Value]) -> BTreeSet<String> {
    listed.iter().map(|d| d["digest"].as_str().unwrap().to_owned()).collect()
}

fn expected(referrers: &[&Referrer]) -> BTreeSet<String> {
    referrers.iter().map(|r| r.desc.digest.clone()).collect()
}

/// The path and query of a `Link: <…>; rel="next"`.
fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(link.split_once('>').unwrap().0.trim_start_matches('<').to_owned())
}

#[test]
fn a_tag_import_keeps_the_image_s_referrers_and_its_referrers_tag() {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("l"), &ImageOptions { tag: "v1".into(), seed: 81, ..ImageOptions::default() });
    let other = image::write_layout(&dir.path().join("other"), &ImageOptions { tag: "other".into(), seed: 82, ..ImageOptions::default() });
    let refs = referrers::suite_referrers(&layout.dir, &layout.top);
    // A signature of an SBOM (a referrer of a referrer), a referrer of an image not imported,
    // the referrers tag of the image (listing one referrer) and cosign's `.sig` tag of it.
    let sig_of_sbom = referrers::manifest_artifact(&layout.dir, &refs.a_layer.desc, None, Some("application/vnd.dev.cosign.simplesigning.v1+json"), None, b"sig");
    copy_blobs(&other, &layout);
    let of_other = referrers::manifest_artifact(&layout.dir, &other.top, Some(BAGEL), None, None, b"other");
    let (tag_index, _) = referrers::fallback_index(&layout.dir, &[&refs.a_config]);
    let cosign_sig = image::write_blob(&layout.dir, OCI_MANIFEST, &image::to_json(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": referrers::empty_config(&layout.dir).digest, "size": 2}, "layers": []})));
    referrers::add_to_index(&layout.dir, &other.top, Some("other"));
    for entry in refs.of_image().into_iter().chain([&refs.c_missing, &sig_of_sbom, &of_other]) {
        referrers::add_to_index(&layout.dir, &entry.desc, None);
    }
    let schema = referrers::fallback_tag(&layout.top);
    referrers::add_to_index(&layout.dir, &tag_index, Some(&schema));
    referrers::add_to_index(&layout.dir, &cosign_sig, Some(&format!("{schema}.sig")));
    let cache = dir.path().join("cache");
    import(&cache, &layout.dir, REPO, Some("v1"));
    let server = TestServer::start_on(&cache, "");
    let referrers_of = |digest: &str| index_of(&get(server.addr, &format!("/v2/{REPO}/referrers/{digest}")));

    let listed = referrers_of(&layout.top.digest);
    assert_eq!(digests(&listed), expected(&refs.of_image()), "the image's five referrers, no more");
    assert_eq!(digests(&referrers_of(&refs.a_layer.desc.digest)), expected(&[&sig_of_sbom]), "a referrer's referrer came along");
    assert!(referrers_of(&refs.missing.digest).is_empty(), "a referrer of nothing imported stays behind with a tag import");
    assert!(referrers_of(&other.top.digest).is_empty());
    for (left_behind, why) in [(&refs.c_missing.desc.digest, "C"), (&of_other.desc.digest, "the other image's referrer"), (&other.top.digest, "the other image")] {
        assert_eq!(get(server.addr, &format!("/v2/{REPO}/manifests/{left_behind}")).status, 404, "{why}");
    }
    let tags = get(server.addr, &format!("/v2/{REPO}/tags/list")).json();
    assert_eq!(tags["tags"], json!([schema, format!("{schema}.sig"), "v1"]), "the referrers tags came with their image");
    let by_tag = request(server.addr, "GET", &format!("/v2/{REPO}/manifests/{schema}"), &[("Accept", OCI_INDEX)]);
    assert_eq!(by_tag.header("docker-content-digest"), Some(tag_index.digest.as_str()));
    // Their blobs are the repository's too.
    for blob in ["ref layer a", "sig"] {
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(blob.as_bytes())));
        assert_eq!(get(server.addr, &format!("/v2/{REPO}/blobs/{digest}")).body, blob.as_bytes());
    }
}

/// Copies the blobs of `from` into `to`'s layout (one layout holding two images).
fn copy_blobs(from: &Layout, to: &Layout) {
    for entry in std::fs::read_dir(from.dir.join("blobs/sha256")).unwrap().flatten() {
        std::fs::copy(entry.path(), to.dir.join("blobs/sha256").join(entry.file_name())).unwrap();
    }
}

/// A layout whose image has `count` referrers of about `annotation_bytes` each (half `BAGEL`,
/// half `CROISSANT`), imported whole as `REPO` into `cache`.
fn big_referrers(dir: &std::path::Path, cache: &std::path::Path, count: usize, annotation_bytes: usize) -> (Layout, Vec<Referrer>) {
    let layout = image::write_layout(&dir.join("big"), &ImageOptions { seed: 83, ..ImageOptions::default() });
    let referrers: Vec<Referrer> = (0..count)
        .map(|i| {
            let note = json!({"org.example.blob": format!("{i}-{}", "x".repeat(annotation_bytes))});
            let artifact_type = if i % 2 == 0 { BAGEL } else { CROISSANT };
            referrers::manifest_artifact(&layout.dir, &layout.top, None, Some(artifact_type), Some(note), format!("payload {i}").as_bytes())
        })
        .collect();
    for referrer in &referrers {
        referrers::add_to_index(&layout.dir, &referrer.desc, None);
    }
    import(cache, &layout.dir, REPO, None);
    (layout, referrers)
}

/// Follows `Link`s from `first` (a path) to the end; returns every page's descriptors.
fn all_pages(addr: std::net::SocketAddr, first: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut path = Some(first.to_owned());
    while let Some(current) = path {
        assert!(pages.len() < 50, "the pages never end");
        let reply = get(addr, &current);
        // Spec: "A `Link` header MUST be included in the response when the descriptor list
        // cannot be returned in a single manifest" (at most 4 MiB here, as for manifests).
        assert!(reply.body.len() <= 4 << 20, "a page of {} bytes", reply.body.len());
        pages.push(index_of(&reply));
        path = next_link(&reply);
    }
    pages
}

#[test]
fn a_list_larger_than_a_page_is_paged_with_link_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (layout, referrers) = big_referrers(dir.path(), &cache, 10, 1 << 20);
    let server = TestServer::start_on(&cache, "");
    let pages = all_pages(server.addr, &format!("/v2/{REPO}/referrers/{}", layout.top.digest));
    assert!(pages.len() >= 3, "10 MiB of descriptors take three pages");
    let listed: Vec<Value> = pages.concat();
    assert_eq!(listed.len(), 10, "each referrer once");
    assert_eq!(digests(&listed), expected(&referrers.iter().collect::<Vec<_>>()));
    for descriptor in &listed {
        let referrer = referrers.iter().find(|r| descriptor["digest"] == r.desc.digest.as_str()).unwrap();
        assert_eq!(*descriptor, referrer.listed());
    }
    // The filter is applied before paging and kept in the links.
    let filtered = all_pages(server.addr, &format!("/v2/{REPO}/referrers/{}?artifactType={}", layout.top.digest, BAGEL.replace('/', "%2F")));
    let bagels: Vec<&Referrer> = referrers.iter().filter(|r| r.artifact_type.as_deref() == Some(BAGEL)).collect();
    assert_eq!(digests(&filtered.concat()), expected(&bagels));
    assert!(filtered.len() >= 2, "5 MiB of bagels take two pages");
    // A page token that is not ours: 400, not a 5xx, not a silent first page.
    let reply = get(server.addr, &format!("/v2/{REPO}/referrers/{}?last=bogus", layout.top.digest));
    assert_eq!((reply.status, reply.error_code().as_str()), (400, "UNSUPPORTED"));
}

#[test]
fn a_composed_image_has_no_referrers_but_an_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("base"), &ImageOptions { tag: "v1".into(), seed: 84, ..ImageOptions::default() });
    let refs = referrers::suite_referrers(&layout.dir, &layout.top);
    for referrer in refs.of_image() {
        referrers::add_to_index(&layout.dir, &referrer.desc, None);
    }
    let cache = dir.path().join("cache");
    import(&cache, &layout.dir, "base/img", None);
    let specs = dir.path().join("specs.json");
    std::fs::write(&specs, r#"{"ws": {"baseRef": "local:base/img:v1"}}"#).unwrap();
    let server = TestServer::start_on(&cache, &format!(r#""specs": {{"fixedFile": {:?}}}"#, specs.display().to_string()));
    let composed = get(server.addr, "/v2/fixed/ws/manifests/latest");
    assert_eq!(composed.status, 200);
    assert!(composed.json().get("subject").is_none());
    let digest = composed.header("docker-content-digest").unwrap().to_owned();
    // The base's referrers name the base's digest, not the composed one: none of them is listed
    // under the composed name, whichever digest is asked for; never a 404.
    for asked in [digest.as_str(), layout.top.digest.as_str()] {
        assert!(index_of(&get(server.addr, &format!("/v2/fixed/ws/referrers/{asked}"))).is_empty());
    }
    let filtered = get(server.addr, &format!("/v2/fixed/ws/referrers/{digest}?artifactType=x"));
    assert!(index_of(&filtered).is_empty());
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(digests(&index_of(&get(server.addr, &format!("/v2/base/img/referrers/{}", layout.top.digest)))).len(), 5, "the base's own name lists them");
    let unknown = get(server.addr, &format!("/v2/fixed/nope/referrers/{digest}"));
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "NAME_UNKNOWN"));
}

/// Facade config keys mirroring `host` (alias `up`).
fn mirror_config(host: &str) -> String {
    format!(r#""registries": {{"{host}": {{"endpoint": "http://{host}"}}}}, "mirrors": {{"up": "{host}"}}, "upstream": {{"retry": {{"attempts": 2, "initialDelayMs": 20, "maxDelayMs": 100}}}}"#)
}

#[test]
fn a_mirror_of_a_registry_without_the_api_answers_from_its_referrers_tag() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = image::write_layout(&dir.path().join("l"), &ImageOptions { seed: 85, ..ImageOptions::default() });
    registry.push(&layout, REPO, "latest");
    let refs = referrers::suite_referrers(&layout.dir, &layout.top);
    for referrer in [&refs.a_config, &refs.b_layer] {
        referrers::push_referrer(registry.addr(), REPO, &layout.dir, referrer);
    }
    // The referrers tag, as a client keeps it for a registry without the API.
    let (_, tag_bytes) = referrers::fallback_index(&layout.dir, &[&refs.a_config, &refs.b_layer]);
    let schema = referrers::fallback_tag(&layout.top);
    referrers::push_manifest(registry.addr(), REPO, &schema, OCI_INDEX, &tag_bytes);
    let facade = TestServer::start(&mirror_config(&registry.host()));
    let path = |digest: &str, query: &str| format!("/v2/mirror/up/{REPO}/referrers/{digest}{query}");

    let listed = index_of(&get(facade.addr, &path(&layout.top.digest, "")));
    assert_eq!(listed, by_digest(vec![refs.a_config.listed(), refs.b_layer.listed()]), "as the tag lists them, by digest");
    let filtered = get(facade.addr, &path(&layout.top.digest, &format!("?artifactType={}", CROISSANT.replace('/', "%2F"))));
    assert_eq!(index_of(&filtered), vec![refs.b_layer.listed()]);
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"), "we filter what upstream's tag holds");
    // The API is asked first (distribution 2.8 has none: 404), then the tag.
    let entries = registry.access_entries();
    let asked = |needle: &str| entries.iter().filter(|e| e.uri.contains(needle)).map(|e| (e.method.clone(), e.status)).collect::<Vec<_>>();
    assert_eq!(asked(&format!("/v2/{REPO}/referrers/{}", layout.top.digest))[0], ("GET".to_owned(), 404));
    assert!(asked(&format!("/v2/{REPO}/manifests/{schema}")).contains(&("GET".to_owned(), 200)));
    // No referrers tag: an empty list, never the upstream's 404.
    assert!(index_of(&get(facade.addr, &path(&refs.a_config.desc.digest, ""))).is_empty());
    // The referrers themselves come through the mirror with their subject, byte for byte.
    let manifest = request(facade.addr, "GET", &format!("/v2/mirror/up/{REPO}/manifests/{}", refs.a_config.desc.digest), &[("Accept", OCI_MANIFEST)]);
    assert!(manifest.status == 200 && manifest.body == refs.a_config.bytes);
    // distribution answers a manifest of a repository it does not know MANIFEST_UNKNOWN, so
    // without the API a missing repository looks like one without referrers: an empty list.
    assert!(index_of(&get(facade.addr, &format!("/v2/mirror/up/no/such/referrers/{}", layout.top.digest))).is_empty());
}

/// Sorted by digest, as the facade lists what a referrers tag holds.
fn by_digest(mut descriptors: Vec<Value>) -> Vec<Value> {
    descriptors.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    descriptors
}

#[test]
fn a_mirror_of_a_registry_with_the_api_passes_its_pages_on() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (layout, referrers) = big_referrers(dir.path(), &cache, 6, 1 << 20);
    // Another facade is the upstream: it has the referrers API, pages with `Link` and filters.
    let upstream = TestServer::start_on(&cache, "");
    let facade = TestServer::start(&mirror_config(&upstream.addr.to_string()));
    let first = format!("/v2/mirror/up/{REPO}/referrers/{}", layout.top.digest);
    let pages = all_pages(facade.addr, &first);
    assert!(pages.len() >= 2);
    let listed = pages.concat();
    assert_eq!(listed.len(), 6);
    assert_eq!(digests(&listed), expected(&referrers.iter().collect::<Vec<_>>()));
    let filtered = get(facade.addr, &format!("{first}?artifactType={}", CROISSANT.replace('/', "%2F")));
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    let croissants = by_digest(all_pages(facade.addr, &format!("{first}?artifactType={}", CROISSANT.replace('/', "%2F"))).concat());
    let wanted = by_digest(referrers.iter().filter(|r| r.artifact_type.as_deref() == Some(CROISSANT)).map(Referrer::listed).collect());
    assert_eq!(croissants, wanted);
    // A page token can only ever name a page of these referrers upstream.
    for bogus in ["%2Fv2%2Fteam%2Fapp%2Fmanifests%2Flatest", "%2Fv2%2Fother%2Freferrers%2Fsha256%3Aab"] {
        let reply = get(facade.addr, &format!("{first}?last={bogus}"));
        assert_eq!((reply.status, reply.error_code().as_str()), (400, "UNSUPPORTED"), "{bogus}");
    }
}
