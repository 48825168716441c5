//! The requests the OCI distribution-spec v1.1 conformance suite sends for its Pull and
//! Content Discovery workflows (`conformance/01_pull_test.go`, `03_discovery_test.go`), sent
//! the same way against an imported image with three tags and the suite's referrers, and
//! checked as the suite checks them, plus the spec's own words the suite does not check. The
//! suite itself cannot be built here (its Go sources and client are in no reachable registry);
//! this is its read-only shape, one test per `Specify`, in its order. Its push-only setup and
//! teardown have nothing to check against a read-only registry.

mod support;

use serde_json::Value;
use support::client::{request, send_raw, Reply};
use support::image::{self, ImageOptions, Layout, OCI_INDEX, OCI_MANIFEST};
use support::referrers::{self, SuiteReferrers, ANNOTATION, BAGEL};
use support::server::{import, TestServer};

/// `OCI_NAMESPACE`.
const NAME: &str = "conformance/repo";
/// `OCI_TAG_NAME`, and the rest of `OCI_TAG_LIST`.
const TAGS: [&str; 3] = ["tagtest0", "tagtest1", "tagtest2"];
/// The suite's `dummyDigest`: sha256 of "hello world", in no repository.
const DUMMY_DIGEST: &str = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
/// The suite's `nonexistentManifest`.
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
/// The suite's `errorCodes`: what a 400's `errors[0].code` may be.
const SUITE_ERROR_CODES: [&str; 15] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

struct Suite {
    server: TestServer,
    layout: Layout,
    refs: SuiteReferrers,
    _dir: tempfile::TempDir,
}

impl Suite {
    /// The image tagged three times, its five referrers and C (whose subject is missing), in
    /// one layout imported whole; the facade serves the cache.
    fn start() -> Suite {
        let dir = tempfile::tempdir().unwrap();
        let layout = image::write_layout(&dir.path().join("layout"), &ImageOptions { tag: TAGS[0].into(), seed: 77, ..ImageOptions::default() });
        let refs = referrers::suite_referrers(&layout.dir, &layout.top);
        referrers::retag(&layout.dir, &layout.top, &TAGS);
        for referrer in refs.of_image().into_iter().chain([&refs.c_missing]) {
            referrers::add_to_index(&layout.dir, &referrer.desc, None);
        }
        let cache = dir.path().join("cache");
        import(&cache, &layout.dir, NAME, None);
        let server = TestServer::start_on(&cache, "");
        Suite { server, layout, refs, _dir: dir }
    }

    /// `OCI_MANIFEST_DIGEST`.
    fn manifest_digest(&self) -> &str {
        &self.layout.top.digest
    }

    /// `OCI_BLOB_DIGEST`.
    fn blob_digest(&self) -> &str {
        &self.layout.image().config.digest
    }

    fn send(&self, method: &str, path: &str) -> Reply {
        request(self.server.addr, method, &format!("/v2/{NAME}/{path}"), &[])
    }

    /// Every manifest request of the suite says `Accept: application/vnd.oci.image.manifest.v1+json`.
    fn manifest(&self, method: &str, reference: &str) -> Reply {
        request(self.server.addr, method, &format!("/v2/{NAME}/manifests/{reference}"), &[("Accept", OCI_MANIFEST)])
    }

    fn digest_header_is(&self, reply: &Reply, digest: &str) {
        // The suite: "if Docker-Content-Digest is present it must equal the digest".
        if let Some(header) = reply.header("docker-content-digest") {
            assert_eq!(header, digest);
        }
    }
}

/// A referrers answer as the suite reads it: 200, the index media type, the descriptors.
fn referrers_index(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    // Spec: "The `Content-Type` header MUST be set to `application/vnd.oci.image.index.v1+json`."
    assert_eq!(reply.header("content-type"), Some(OCI_INDEX));
    let index = reply.json();
    assert_eq!(index["schemaVersion"], 2);
    index["manifests"].as_array().expect("an image index lists manifests").clone()
}

// ---- Pull (01_pull_test.go), read-only: setup and teardown skipped ----

#[test]
fn pull_head_request_to_nonexistent_blob_should_result_in_404_response() {
    let suite = Suite::start();
    assert_eq!(suite.send("HEAD", &format!("blobs/{DUMMY_DIGEST}")).status, 404);
}

#[test]
fn pull_head_request_to_existing_blob_should_yield_200() {
    let suite = Suite::start();
    let reply = suite.send("HEAD", &format!("blobs/{}", suite.blob_digest()));
    assert_eq!(reply.status, 200);
    suite.digest_header_is(&reply, suite.blob_digest());
    // Spec: "A HEAD request … SHOULD include `Content-Length` and `Docker-Content-Digest`."
    assert_eq!(reply.header("content-length"), Some(suite.layout.image().config.size.to_string().as_str()));
    assert!(reply.body.is_empty());
}

#[test]
fn pull_get_nonexistent_blob_should_result_in_404_response() {
    let suite = Suite::start();
    let reply = suite.send("GET", &format!("blobs/{DUMMY_DIGEST}"));
    // Spec: "If the blob is not found in the repository, the response code MUST be `404 Not Found`."
    assert_eq!((reply.status, reply.error_code().as_str()), (404, "BLOB_UNKNOWN"));
}

#[test]
fn pull_get_request_to_existing_blob_url_should_yield_200() {
    let suite = Suite::start();
    let reply = suite.send("GET", &format!("blobs/{}", suite.blob_digest()));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, std::fs::read(suite.layout.blob_path(suite.blob_digest())).unwrap());
}

#[test]
fn pull_head_request_to_nonexistent_manifest_should_return_404() {
    let suite = Suite::start();
    // Spec: "If the manifest is not found in the repository, the response code MUST be `404 Not
    // Found`." (`.INVALID_MANIFEST_NAME` fails the tag grammar; it names no manifest.)
    assert_eq!(suite.manifest("HEAD", NONEXISTENT_MANIFEST).status, 404);
}

#[test]
fn pull_head_request_to_manifest_path_digest_should_yield_200_response() {
    let suite = Suite::start();
    let reply = suite.manifest("HEAD", suite.manifest_digest());
    assert_eq!(reply.status, 200);
    suite.digest_header_is(&reply, suite.manifest_digest());
}

#[test]
fn pull_head_request_to_manifest_path_tag_should_yield_200_response() {
    let suite = Suite::start();
    let reply = suite.manifest("HEAD", TAGS[0]);
    assert_eq!(reply.status, 200);
    suite.digest_header_is(&reply, suite.manifest_digest());
}

#[test]
fn pull_get_nonexistent_manifest_should_return_404() {
    let suite = Suite::start();
    let reply = suite.manifest("GET", NONEXISTENT_MANIFEST);
    assert_eq!((reply.status, reply.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
}

#[test]
fn pull_get_request_to_manifest_path_digest_should_yield_200_response() {
    let suite = Suite::start();
    let reply = suite.manifest("GET", suite.manifest_digest());
    assert_eq!(reply.status, 200);
    // Spec: the `Content-Type` is the manifest's media type, without parameters.
    assert_eq!(reply.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(reply.body, std::fs::read(suite.layout.blob_path(suite.manifest_digest())).unwrap());
}

#[test]
fn pull_get_request_to_manifest_path_tag_should_yield_200_response() {
    let suite = Suite::start();
    for tag in TAGS {
        let reply = suite.manifest("GET", tag);
        assert_eq!(reply.status, 200, "{tag}");
        suite.digest_header_is(&reply, suite.manifest_digest());
    }
}

#[test]
fn pull_400_response_body_should_contain_oci_conforming_json_message() {
    let suite = Suite::start();
    // The suite's exact request: a GET with a Content-Type and a body.
    let body = b"blablabla";
    let head = format!(
        "GET /v2/{NAME}/manifests/sha256:totallywrong HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: {OCI_MANIFEST}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let reply = send_raw(suite.server.addr, &[head.as_bytes(), body].concat(), false);
    assert!([400, 404].contains(&reply.status), "{}", reply.status);
    if reply.status == 400 {
        let errors = reply.json()["errors"].as_array().cloned().unwrap_or_default();
        assert!(!errors.is_empty());
        let code = errors[0]["code"].as_str().unwrap_or_default().to_owned();
        assert!(SUITE_ERROR_CODES.contains(&code.as_str()), "{code}");
    }
}

// ---- Content Discovery (03_discovery_test.go), with OCI_TAG_LIST set: no push ----

fn tag_list(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["tags"].as_array().expect("tags").iter().map(|t| t.as_str().unwrap().to_owned()).collect()
}

#[test]
fn discovery_get_request_to_list_tags_should_yield_200_response() {
    let suite = Suite::start();
    let tags = tag_list(&suite.send("GET", "tags/list"));
    // Spec: "If the list is not empty, the tags MUST be in lexical order".
    assert_eq!(tags, TAGS);
}

#[test]
fn discovery_get_number_of_tags_should_be_limitable_by_n_query_parameter() {
    let suite = Suite::start();
    let num_tags = tag_list(&suite.send("GET", "tags/list")).len();
    let n = num_tags / 2;
    let reply = suite.send("GET", &format!("tags/list?n={n}"));
    assert_eq!(tag_list(&reply).len(), n);
    // Spec: "the response MUST include `<int>` results" unless a `Link` header is provided.
    assert!(reply.header("link").is_some(), "more tags follow");
}

#[test]
fn discovery_get_start_of_tag_is_set_by_last_query_parameter() {
    let suite = Suite::start();
    let num_tags = tag_list(&suite.send("GET", "tags/list")).len();
    let n = num_tags / 2;
    let first = tag_list(&suite.send("GET", &format!("tags/list?n={n}")));
    let last = first[n - 1].clone();
    let next = tag_list(&suite.send("GET", &format!("tags/list?n={n}&last={last}")));
    assert!(next.len() <= n);
    // Spec: `last` is not inclusive. (The suite checks `first` contains `last`, which always holds.)
    assert!(first.contains(&last) && !next.contains(&last), "{next:?}");
    assert_eq!(next, TAGS[n..n + next.len()]);
}

#[test]
fn discovery_get_request_to_nonexistent_blob_should_result_in_empty_200_response() {
    let suite = Suite::start();
    // Spec: "If a query results in no matching referrers, an empty manifest list MUST be
    // returned", and "the registry MUST NOT return a `404 Not Found` to a referrers API request".
    let listed = referrers_index(&suite.send("GET", &format!("referrers/{DUMMY_DIGEST}")));
    assert!(listed.is_empty());
}

#[test]
fn discovery_get_request_to_existing_blob_should_yield_200() {
    let suite = Suite::start();
    let listed = referrers_index(&suite.send("GET", &format!("referrers/{}", suite.manifest_digest())));
    assert_eq!(listed.len(), 5);
    assert_ne!(listed[0]["digest"], listed[1]["digest"]);
    let expected = suite.refs.of_image();
    for descriptor in &listed {
        let referrer = expected.iter().find(|r| descriptor["digest"] == r.desc.digest.as_str()).expect("one of the image's referrers");
        // The suite: exactly one annotation each, with the value written for that digest.
        let annotations = descriptor["annotations"].as_object().expect("annotations");
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations[ANNOTATION], referrer.annotations.as_ref().unwrap()[ANNOTATION]);
        // Spec: mediaType, digest, size; `artifactType` the manifest's own, else its config's
        // `mediaType`, and for an index without one omitted; annotations the manifest's.
        assert_eq!(*descriptor, referrer.listed());
    }
    assert!(listed.iter().any(|d| d["artifactType"] == BAGEL && d["mediaType"] == OCI_MANIFEST));
}

#[test]
fn discovery_get_request_to_existing_blob_with_filter_should_yield_200() {
    let suite = Suite::start();
    let reply = suite.send("GET", &format!("referrers/{}?artifactType={}", suite.manifest_digest(), BAGEL.replace('/', "%2F")));
    let listed = referrers_index(&reply);
    // Spec: "If filtering is requested and applied, the response MUST include a header
    // `OCI-Filters-Applied: artifactType`". The suite then wants exactly the two bagels.
    assert_eq!(reply.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(listed.len(), 2);
    let digests: Vec<&str> = listed.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    assert!(digests.contains(&suite.refs.a_config.desc.digest.as_str()) && digests.contains(&suite.refs.a_layer.desc.digest.as_str()), "{digests:?}");
}

#[test]
fn discovery_get_request_to_missing_manifest_should_yield_200() {
    let suite = Suite::start();
    // C's subject was never stored; "A registry MUST initially accept … a `subject` field that
    // references a manifest that does not exist", and lists it as a referrer all the same.
    assert_eq!(suite.manifest("GET", &suite.refs.missing.digest).status, 404, "the subject itself is missing");
    let listed = referrers_index(&suite.send("GET", &format!("referrers/{}", suite.refs.missing.digest)));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], suite.refs.c_missing.desc.digest.as_str());
}

// ---- The spec's words around these endpoints that the suite does not send ----

#[test]
fn referrers_of_an_invalid_digest_are_400_and_of_an_unknown_repository_404() {
    let suite = Suite::start();
    // Spec: "If the request is invalid, such as a `<digest>` with an invalid syntax, a `400 Bad
    // Request` MUST be returned." 404 only where no repository is found.
    let reply = suite.send("GET", "referrers/sha256:totallywrong");
    assert_eq!((reply.status, reply.error_code().as_str()), (400, "DIGEST_INVALID"));
    let reply = request(suite.server.addr, "GET", &format!("/v2/no/such/referrers/{DUMMY_DIGEST}"), &[]);
    assert_eq!((reply.status, reply.error_code().as_str()), (404, "NAME_UNKNOWN"));
}

#[test]
fn referrer_manifests_are_served_with_their_subject_byte_for_byte() {
    let suite = Suite::start();
    // Spec: "The registry MUST store the manifest in the exact byte representation provided".
    for referrer in suite.refs.of_image().into_iter().chain([&suite.refs.c_missing]) {
        let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}");
        let reply = request(suite.server.addr, "GET", &format!("/v2/{NAME}/manifests/{}", referrer.desc.digest), &[("Accept", &accept)]);
        assert_eq!(reply.status, 200);
        assert!(reply.body == referrer.bytes, "{} is served as written", referrer.desc.digest);
        assert!(reply.json()["subject"]["digest"].is_string());
        assert_eq!(reply.header("content-type"), Some(referrer.desc.media_type.as_str()));
        let head = request(suite.server.addr, "HEAD", &format!("/v2/{NAME}/manifests/{}", referrer.desc.digest), &[("Accept", &accept)]);
        assert_eq!((head.status, head.header("content-length")), (200, Some(referrer.desc.size.to_string().as_str())));
        assert_eq!(head.header("docker-content-digest"), Some(referrer.desc.digest.as_str()));
    }
}

#[test]
fn a_head_of_referrers_says_what_a_get_would() {
    let suite = Suite::start();
    let path = format!("referrers/{}", suite.manifest_digest());
    let (get, head) = (suite.send("GET", &path), suite.send("HEAD", &path));
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()));
    assert_eq!(head.header("content-type"), Some(OCI_INDEX));
}

#[test]
fn every_error_of_the_pull_and_discovery_endpoints_carries_a_spec_code() {
    let suite = Suite::start();
    // Spec: "The `code` field MUST be one of the following" (code-1 … code-14).
    const SPEC: [&str; 14] = [
        "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN",
        "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
    ];
    let paths = [
        format!("/v2/{NAME}/manifests/{NONEXISTENT_MANIFEST}"),
        format!("/v2/{NAME}/manifests/sha256:totallywrong"),
        format!("/v2/{NAME}/manifests/{DUMMY_DIGEST}"),
        format!("/v2/{NAME}/blobs/{DUMMY_DIGEST}"),
        format!("/v2/{NAME}/blobs/latest"),
        format!("/v2/{NAME}/tags/list?n=many"),
        format!("/v2/{NAME}/referrers/sha256:totallywrong"),
        format!("/v2/{NAME}/referrers/{}?last=not-a-page", suite.manifest_digest()),
        format!("/v2/{NAME}/blobs/uploads/0f3c"),
        format!("/v2/{NAME}/nothing/here"),
        format!("/v2/NO/manifests/{}", TAGS[0]),
        format!("/v2/no/such/manifests/{}", TAGS[0]),
        "/v2/_catalog".to_owned(),
        "/".to_owned(),
    ];
    for path in paths {
        let reply = request(suite.server.addr, "GET", &path, &[]);
        assert!((400..500).contains(&reply.status), "{path}: {}", reply.status);
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
        assert!(SPEC.contains(&reply.error_code().as_str()), "{path}: {}", reply.error_code());
    }
}
