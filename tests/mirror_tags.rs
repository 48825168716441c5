//! Mirrored tags and digests against the real reference registry: a tag whose TTL ran out is
//! revalidated with a HEAD (a GET only when its digest changed), served from its last known
//! digest only while upstream is unavailable (not once upstream says it is gone or refuses
//! it), a cached blob asked for as a manifest is no manifest, and `tags/list` is paged by
//! upstream as the client asks.

mod support;

use std::time::Duration;

use support::client::{get, request, Reply};
use support::image::{self, ImageOptions, Layout};
use support::nginx::Nginx;
use support::registry::{ReferenceRegistry, RegistryAuth};
use support::server::{wait_published, TestServer};

const REPO: &str = "team/app";
/// Outlived by moving the facade's clock, never by waiting.
const TAG_TTL_MS: u64 = 30_000;

/// Facade config keys that mirror `registry` (alias `up`) with a short tag TTL and quick retries.
fn mirror_config(registry: &ReferenceRegistry) -> String {
    mirror_config_for(&registry.host())
}

/// `mirror_config` for the registry at `host` (`127.0.0.1:PORT`, plain HTTP).
fn mirror_config_for(host: &str) -> String {
    format!(
        r#""registries": {{"{host}": {{"endpoint": "http://{host}"}}}}, "mirrors": {{"up": "{host}"}},
        "upstream": {{"retry": {{"attempts": 2, "initialDelayMs": 20, "maxDelayMs": 50}}}}, "mirrorTagTtlMs": {TAG_TTL_MS}"#
    )
}

fn push_image(registry: &ReferenceRegistry, dir: &std::path::Path, options: ImageOptions) -> Layout {
    let layout = image::write_layout(&dir.join(format!("image-{}", options.seed)), &options);
    registry.push(&layout, REPO, &options.tag);
    layout
}

fn mirror_path(kind: &str, reference: &str) -> String {
    format!("/v2/mirror/up/{REPO}/{kind}/{reference}")
}

fn digest_of(reply: &Reply) -> Option<&str> {
    reply.header("docker-content-digest")
}

fn status_and_code(reply: &Reply) -> (u16, String) {
    let code = if reply.status == 200 { String::new() } else { reply.error_code() };
    (reply.status, code)
}

/// How many requests for `REPO:tag`'s manifest upstream has answered, as (HEADs, GETs).
fn tag_requests(registry: &ReferenceRegistry, tag: &str) -> (usize, usize) {
    let path = format!("/v2/{REPO}/manifests/{tag}");
    let entries = registry.access_entries();
    let count = |method: &str| entries.iter().filter(|e| e.method == method && e.uri == path).count();
    (count("HEAD"), count("GET"))
}

/// The (HEADs, GETs) of `REPO:tag` upstream answered while `pull` ran.
fn tag_requests_during<T>(registry: &ReferenceRegistry, tag: &str, pull: impl FnOnce() -> T) -> ((usize, usize), T) {
    let (heads, gets) = tag_requests(registry, tag);
    let pulled = pull();
    let (heads_after, gets_after) = tag_requests(registry, tag);
    ((heads_after - heads, gets_after - gets), pulled)
}

/// Moves the facade's clock past the tag TTL.
fn outlive_the_tag_ttl(facade: &TestServer) {
    facade.advance(Duration::from_millis(TAG_TTL_MS));
}

#[test]
fn an_unchanged_tag_is_revalidated_with_a_head_and_no_get() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { seed: 35, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry));
    let pull = || get(facade.addr, &mirror_path("manifests", "latest"));

    let (asked, first) = tag_requests_during(&registry, "latest", pull);
    assert_eq!(digest_of(&first), Some(layout.top.digest.as_str()));
    assert_eq!(asked, (0, 1), "(HEADs, GETs) for a tag never resolved: one GET, not a HEAD before it");
    // Twice: a revalidated tag keeps its digest for the next revalidation to compare with.
    for round in 0..2 {
        outlive_the_tag_ttl(&facade);
        let (asked, again) = tag_requests_during(&registry, "latest", pull);
        assert_eq!((again.status, digest_of(&again)), (200, Some(layout.top.digest.as_str())), "round {round}");
        assert_eq!(again.body, first.body, "the cached manifest, round {round}");
        assert_eq!(asked, (1, 0), "(HEADs, GETs) for an unchanged tag after its TTL, round {round}");
    }
}

#[test]
fn a_head_without_a_digest_falls_back_to_a_get() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { seed: 38, ..ImageOptions::default() });
    // A front that drops the digest header, as some registries do on HEAD. nginx cannot drop
    // it for HEAD alone (`proxy_hide_header` is not allowed in `if`); a GET without it is
    // still verified, against its bytes' digest as the tag's.
    let front = Nginx::start(|port, _| {
        format!(
            "listen 127.0.0.1:{port};\nlocation / {{ proxy_pass http://{}; proxy_set_header Host $http_host; proxy_hide_header Docker-Content-Digest; }}",
            registry.host()
        )
    });
    let facade = TestServer::start(&mirror_config_for(&front.host()));
    let pull = || get(facade.addr, &mirror_path("manifests", "latest"));
    let first = pull();
    assert_eq!((first.status, digest_of(&first)), (200, Some(layout.top.digest.as_str())));

    outlive_the_tag_ttl(&facade);
    let (asked, again) = tag_requests_during(&registry, "latest", pull);
    assert_eq!((again.status, digest_of(&again)), (200, Some(layout.top.digest.as_str())));
    assert_eq!(asked, (1, 1), "(HEADs, GETs): a HEAD that names no digest cannot revalidate the tag");
}

#[test]
fn a_tag_pushed_again_upstream_is_fetched_after_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let first = push_image(&registry, dir.path(), ImageOptions { seed: 36, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry));
    let pull = || get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!(digest_of(&pull()), Some(first.top.digest.as_str()));

    let second = push_image(&registry, dir.path(), ImageOptions { seed: 37, ..ImageOptions::default() });
    assert_ne!(first.top.digest, second.top.digest);
    outlive_the_tag_ttl(&facade);
    let (asked, moved) = tag_requests_during(&registry, "latest", pull);
    assert_eq!((moved.status, digest_of(&moved)), (200, Some(second.top.digest.as_str())), "the tag's new manifest");
    assert_eq!(asked, (1, 1), "(HEADs, GETs): the HEAD saw a new digest, the GET fetched (and verified) it");
    let by_digest = get(facade.addr, &mirror_path("manifests", &second.top.digest));
    assert_eq!(by_digest.body, moved.body, "the new manifest is cached under its digest");
}

#[test]
fn a_tag_deleted_upstream_is_manifest_unknown_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    let first = push_image(&registry, dir.path(), ImageOptions { seed: 30, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry));
    assert_eq!(digest_of(&get(facade.addr, &mirror_path("manifests", "latest"))), Some(first.top.digest.as_str()));

    // distribution deletes the manifest and untags every tag that pointed at it.
    let deleted = request(registry.addr(), "DELETE", &format!("/v2/{REPO}/manifests/{}", first.top.digest), &[]);
    assert_eq!(deleted.status, 202, "upstream deletes the manifest");
    assert_eq!(get(registry.addr(), &format!("/v2/{REPO}/manifests/latest")).status, 404, "the tag is gone upstream");
    outlive_the_tag_ttl(&facade);
    let (asked, gone) = tag_requests_during(&registry, "latest", || get(facade.addr, &mirror_path("manifests", "latest")));
    assert_eq!(status_and_code(&gone), (404, "MANIFEST_UNKNOWN".into()), "not the stale digest");
    assert_eq!(asked, (1, 0), "(HEADs, GETs): the revalidating HEAD's 404 (no error body) is the answer");
    let again = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!(status_and_code(&again), (404, "MANIFEST_UNKNOWN".into()), "the stale digest was forgotten, not kept for a later outage");

    let second = push_image(&registry, dir.path(), ImageOptions { seed: 31, ..ImageOptions::default() });
    assert_eq!(digest_of(&get(facade.addr, &mirror_path("manifests", "latest"))), Some(second.top.digest.as_str()), "a tag pushed again is found");
}

#[test]
fn a_tag_is_served_from_its_last_known_digest_while_upstream_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { seed: 32, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry));
    assert_eq!(digest_of(&get(facade.addr, &mirror_path("manifests", "latest"))), Some(layout.top.digest.as_str()));

    registry.kill();
    outlive_the_tag_ttl(&facade);
    for _ in 0..2 {
        let stale = get(facade.addr, &mirror_path("manifests", "latest"));
        assert_eq!((stale.status, digest_of(&stale)), (200, Some(layout.top.digest.as_str())), "an outage serves the last known digest");
    }
    let unknown = get(facade.addr, &mirror_path("manifests", "never-resolved"));
    assert_eq!(status_and_code(&unknown), (503, "UNAVAILABLE".into()), "a tag never resolved has nothing to fall back on");

    registry.restart();
    let fresh = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!((fresh.status, digest_of(&fresh)), (200, Some(layout.top.digest.as_str())), "and upstream again once it is back");
}

#[test]
fn a_tag_upstream_now_refuses_is_not_served_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = ReferenceRegistry::start(RegistryAuth::None);
    let layout = push_image(&registry, dir.path(), ImageOptions { seed: 33, ..ImageOptions::default() });
    let facade = TestServer::start(&mirror_config(&registry));
    assert_eq!(digest_of(&get(facade.addr, &mirror_path("manifests", "latest"))), Some(layout.top.digest.as_str()));

    // Access revoked: the facade has no credentials for the registry any more.
    registry.restart_with_auth(RegistryAuth::Htpasswd { user: "owner", password: "s3cret" });
    outlive_the_tag_ttl(&facade);
    let refused = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!(status_and_code(&refused), (401, "UNAUTHORIZED".into()), "upstream's refusal, not the stale digest");
    registry.kill();
    let down = get(facade.addr, &mirror_path("manifests", "latest"));
    assert_eq!(status_and_code(&down), (503, "UNAVAILABLE".into()), "a refused tag is forgotten: a later outage does not bring it back");
}

#[test]
fn a_cached_blob_asked_for_as_a_manifest_is_manifest_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    // A layer over the 4 MiB manifest limit, one under it, and the config (JSON, but no manifest).
    let options = ImageOptions { layers: vec![5 << 20, 2 << 10], seed: 34, ..ImageOptions::default() };
    let layout = push_image(&registry, dir.path(), options);
    let facade = TestServer::start(&mirror_config(&registry));
    let image = layout.image();
    let blobs: Vec<&image::Desc> = image.layers.iter().chain([&image.config]).collect();
    for blob in &blobs {
        assert_eq!(get(facade.addr, &mirror_path("blobs", &blob.digest)).status, 200);
        wait_published(&facade.cache_dir, blob.hex());
    }
    let asked = |blob: &image::Desc| (blob.size, status_and_code(&get(facade.addr, &mirror_path("manifests", &blob.digest))));
    for round in 0..2 {
        let answers: Vec<_> = blobs.iter().map(|blob| asked(blob)).collect();
        let expected: Vec<_> = blobs.iter().map(|blob| (blob.size, (404, "MANIFEST_UNKNOWN".to_owned()))).collect();
        assert_eq!(answers, expected, "(size, answer) of each blob asked for as a manifest, round {round}");
    }
    let asked_upstream = registry.access_entries().into_iter().filter(|e| e.method == "GET" && e.uri.contains("/manifests/sha256:")).count();
    assert_eq!(asked_upstream, 0, "content the cache holds and verified is no manifest: upstream cannot know better");
    for blob in &blobs {
        let served = get(facade.addr, &mirror_path("blobs", &blob.digest));
        assert_eq!((served.status, served.body.len() as u64), (200, blob.size), "{} is still served as a blob", blob.digest);
    }
    let manifest = get(facade.addr, &mirror_path("manifests", &image.manifest.digest));
    assert_eq!(digest_of(&manifest), Some(image.manifest.digest.as_str()), "a real manifest by digest still is one");
}

/// Pushes one image under each of `tags`.
fn push_tags(registry: &ReferenceRegistry, dir: &std::path::Path, tags: &[&str]) {
    let layout = image::write_layout(&dir.join("tagged"), &ImageOptions { seed: 39, ..ImageOptions::default() });
    for tag in tags {
        registry.push(&layout, REPO, tag);
    }
}

/// The facade's `tags/list` of the mirrored `REPO`, with `query` (`""` or `?…`).
fn mirror_tags_list(facade: &TestServer, query: &str) -> Reply {
    get(facade.addr, &format!("/v2/mirror/up/{REPO}/tags/list{query}"))
}

/// The tags of a `tags/list` answer, and its `Link` header.
fn tags_and_link(reply: &Reply) -> (Vec<String>, Option<String>) {
    assert_eq!(reply.status, 200, "tags/list: {:?}", String::from_utf8_lossy(&reply.body));
    let tags = reply.json()["tags"].as_array().expect("a tags array").iter().map(|t| t.as_str().expect("a string tag").to_owned()).collect();
    (tags, reply.header("link").map(str::to_owned))
}

/// The queries of the `tags/list` requests of `REPO` upstream answered, in order.
fn upstream_tags_queries(registry: &ReferenceRegistry) -> Vec<String> {
    let path = format!("/v2/{REPO}/tags/list");
    let query = |e: &support::registry::AccessEntry| e.uri.strip_prefix(&path).map(str::to_owned);
    registry.access_entries().iter().filter(|e| e.method == "GET").filter_map(query).collect()
}

#[test]
fn a_mirrors_tags_are_paged_by_upstream_as_the_client_pages() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    push_tags(&registry, dir.path(), &["v_3", "latest", "2.0-rc", "1.1", "1.0"]);
    let facade = TestServer::start(&mirror_config(&registry));

    let mut pages = Vec::new();
    let mut path = format!("/v2/mirror/up/{REPO}/tags/list?n=2");
    while pages.len() < 5 {
        let (tags, link) = tags_and_link(&get(facade.addr, &path));
        pages.push((tags, link.clone()));
        let Some(link) = link else { break };
        let target = link.strip_prefix('<').and_then(|l| l.split_once(">; rel=\"next\"")).map(|(target, _)| target);
        path = target.unwrap_or_else(|| panic!("a next link: {link}")).to_owned();
    }
    let link = |last: &str| Some(format!("</v2/mirror/up/{REPO}/tags/list?n=2&last={last}>; rel=\"next\""));
    let strings = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let expected = vec![(strings(&["1.0", "1.1"]), link("1.1")), (strings(&["2.0-rc", "latest"]), link("latest")), (strings(&["v_3"]), None)];
    assert_eq!(pages, expected, "(tags, Link) of each page");
    assert_eq!(upstream_tags_queries(&registry), ["?n=2", "?n=2&last=1.1", "?n=2&last=latest"], "one upstream page per page, as the client asked");
}

#[test]
fn a_mirrors_tags_without_n_are_the_whole_list() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    push_tags(&registry, dir.path(), &["b", "a", "c"]);
    let facade = TestServer::start(&mirror_config(&registry));

    let strings = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(tags_and_link(&mirror_tags_list(&facade, "")), (strings(&["a", "b", "c"]), None));
    assert_eq!(tags_and_link(&mirror_tags_list(&facade, "?last=a")), (strings(&["b", "c"]), None));
    assert_eq!(upstream_tags_queries(&registry), ["?n=1000", "?n=1000&last=a"], "upstream is asked for tags after `last`");
}

#[test]
fn an_upstream_link_means_more_tags_and_a_whole_list_is_not_cut_at_the_page_limit() {
    let dir = tempfile::tempdir().unwrap();
    let registry = ReferenceRegistry::start(RegistryAuth::None);
    push_tags(&registry, dir.path(), &["b", "a"]);
    // An upstream that always links a next page (distribution 2.8 lists every tag at once).
    let front = Nginx::start(|port, _| {
        let link = format!(r#"'</v2/{REPO}/tags/list?n=1000&last=a>; rel="next"'"#);
        format!("listen 127.0.0.1:{port};\nlocation / {{ proxy_pass http://{}; add_header Link {link} always; }}", registry.host())
    });
    let facade = TestServer::start(&mirror_config_for(&front.host()));

    let strings = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let next = format!(r#"</v2/mirror/up/{REPO}/tags/list?n=2&last=b>; rel="next""#);
    assert_eq!(tags_and_link(&mirror_tags_list(&facade, "?n=2")), (strings(&["a", "b"]), Some(next)), "a full page that upstream says more follow");
    assert_eq!(upstream_tags_queries(&registry), ["?n=2"], "one upstream page");

    let whole = mirror_tags_list(&facade, "");
    assert_eq!(status_and_code(&whole), (400, "UNSUPPORTED".into()), "not a list cut at the page limit (the spec has no PAGINATION_NUMBER_INVALID)");
    assert_eq!(upstream_tags_queries(&registry).len(), 1 + 100, "the page limit's pages were followed");
}
