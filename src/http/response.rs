//! Building responses: the exact headers of each pull and discovery endpoint, ranges (one part,
//! or `multipart/byteranges`), and error documents.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::{ChunkStream, ResponseBody};
use super::failure::{Failure, WireError};
use super::multipart::{multipart, PartOpener};
use crate::metrics::ByteSource;
use crate::oci::error_code::error_body;
use crate::oci::media_type::OCI_INDEX;
use crate::oci::range::{RangeRequest, Selection};
use crate::oci::referrers::FILTERS_APPLIED_HEADER;
use crate::oci::route::encode_query;
use crate::oci::{Digest, RepositoryName};
use crate::registry::{BlobChunk, DigestText, FillingBlob, MappedBlob, ReferrersPage, StoredManifest, TagsPage};

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const API_VERSION_VALUE: HeaderValue = HeaderValue::from_static("registry/2.0");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const READ_ONLY_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");
const INDEX: HeaderValue = HeaderValue::from_static(OCI_INDEX);
const ARTIFACT_TYPE_FILTER: HeaderValue = HeaderValue::from_static("artifactType");

/// A response with the API version header every registry answer carries.
fn respond(status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(API_VERSION, API_VERSION_VALUE);
    response
}

/// Sends `data` (or, for HEAD, only its length).
fn with_body(status: StatusCode, data: Bytes, head: bool) -> Response<ResponseBody> {
    sized(status, data.len() as u64, if head { ResponseBody::empty() } else { ResponseBody::bytes(data) })
}

fn sized(status: StatusCode, len: u64, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = respond(status, body);
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Below this size a blob body is copied by `sendmsg`: a second syscall for sendfile costs
/// more than the copy it saves.
const SENDFILE_MIN_BYTES: usize = 64 * 1024;

/// Sends `blob.body[range]` (or, for HEAD, only its length), from the file where it pays.
fn blob_body(status: StatusCode, blob: &Arc<MappedBlob>, range: std::ops::Range<usize>, head: bool) -> Response<ResponseBody> {
    let len = range.len() as u64;
    let body = match head {
        true => ResponseBody::empty(),
        false if range.len() >= SENDFILE_MIN_BYTES => ResponseBody::blob_slice(blob.body.slice(range.clone()), blob, range.start as u64),
        false => ResponseBody::bytes(blob.body.slice(range)).leasing(blob),
    };
    sized(status, len, body)
}

pub fn base(head: bool) -> Response<ResponseBody> {
    let mut response = with_body(StatusCode::OK, Bytes::from_static(b"{}"), head);
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

pub fn manifest(manifest: &StoredManifest, head: bool) -> Response<ResponseBody> {
    let mut response = with_body(StatusCode::OK, manifest.body.clone(), head);
    response.body_mut().count_as(ByteSource::Manifest);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, shared_header(manifest.media_type_bytes()));
    insert_digest(headers, &manifest.digest_text);
    response
}

/// A cached blob, whole or the ranges asked for.
///
/// # Errors
/// `RangeNotSatisfiable` when the range selects nothing of the blob.
pub fn blob(blob: &Arc<MappedBlob>, range: RangeRequest, head: bool) -> Result<Response<ResponseBody>, Failure> {
    let len = blob.body.len() as u64;
    // Offsets are below `len`, which is a usize-sized mapping.
    let response = match range.select(len) {
        Selection::Whole => blob_body(StatusCode::OK, blob, 0..blob.body.len(), head),
        Selection::Single(part) => with_content_range(blob_body(StatusCode::PARTIAL_CONTENT, blob, part.start as usize..part.end as usize, head), &part, len),
        Selection::Multiple(parts) => {
            let blob = Arc::clone(blob);
            multipart_response(parts, len, Box::new(move |part| cached_part(&blob, part)))
        }
        Selection::Unsatisfiable => return Err(Failure::RangeNotSatisfiable { len }),
    };
    let mut response = blob_headers(response, &blob.digest_text);
    response.body_mut().count_as(ByteSource::Cache);
    Ok(response)
}

/// One part of a cached blob: a slice of its mapping, by sendfile where that pays. (The
/// opener that calls this holds the blob, so it stays leased while the body is sent.)
fn cached_part(blob: &MappedBlob, part: std::ops::Range<u64>) -> ChunkStream {
    let data = blob.body.slice(part.start as usize..part.end as usize);
    let file = (data.len() >= SENDFILE_MIN_BYTES).then(|| (Arc::clone(&blob.file), part.start));
    Box::pin(futures_lite::stream::once(Ok(BlobChunk { data, file, just_written: false, source: ByteSource::Cache })))
}

/// A blob arriving from upstream (`len`: its size, if upstream said it). Without a size, a
/// `Range` cannot be resolved and the whole blob is sent.
///
/// # Errors
/// `RangeNotSatisfiable` when the range selects nothing of the blob.
pub fn filling_blob(filling: FillingBlob, len: Option<u64>, range: RangeRequest, head: bool) -> Result<Response<ResponseBody>, Failure> {
    let body = |part: std::ops::Range<u64>| match head {
        true => ResponseBody::empty(),
        false => ResponseBody::stream(filling.stream(part.clone()), len.map(|_| part.end - part.start)),
    };
    let response = match len {
        None => respond(StatusCode::OK, body(0..u64::MAX)),
        Some(len) => match range.select(len) {
            Selection::Whole => sized(StatusCode::OK, len, body(0..len)),
            Selection::Single(part) => with_content_range(sized(StatusCode::PARTIAL_CONTENT, part.end - part.start, body(part.clone())), &part, len),
            Selection::Multiple(parts) => {
                let digest_text = filling.digest_text.clone();
                let response = multipart_response(parts, len, Box::new(move |part| filling.stream(part)));
                return Ok(blob_headers(response, &digest_text));
            }
            Selection::Unsatisfiable => return Err(Failure::RangeNotSatisfiable { len }),
        },
    };
    Ok(blob_headers(response, &filling.digest_text))
}

/// A blob held in memory (a composed config, a direct content layer), whole or the ranges.
///
/// # Errors
/// `RangeNotSatisfiable` when the range selects nothing of the blob.
pub fn inline_blob(bytes: Bytes, digest_text: &DigestText, range: RangeRequest, head: bool) -> Result<Response<ResponseBody>, Failure> {
    let len = bytes.len() as u64;
    let response = match range.select(len) {
        Selection::Whole => with_body(StatusCode::OK, bytes, head),
        Selection::Single(part) => with_content_range(with_body(StatusCode::PARTIAL_CONTENT, bytes.slice(part.start as usize..part.end as usize), head), &part, len),
        Selection::Multiple(parts) => multipart_response(
            parts,
            len,
            Box::new(move |part| {
                let data = bytes.slice(part.start as usize..part.end as usize);
                Box::pin(futures_lite::stream::once(Ok(BlobChunk { data, file: None, just_written: false, source: ByteSource::Composed })))
            }),
        ),
        Selection::Unsatisfiable => return Err(Failure::RangeNotSatisfiable { len }),
    };
    let mut response = blob_headers(response, digest_text);
    response.body_mut().count_as(ByteSource::Composed);
    Ok(response)
}

/// 206 `multipart/byteranges` of `parts` of a blob of `len` bytes. Only GET gets here: a HEAD
/// ignores `Range`.
fn multipart_response(parts: Vec<std::ops::Range<u64>>, len: u64, open: PartOpener) -> Response<ResponseBody> {
    let body = multipart(parts, len, open);
    let mut response = sized(StatusCode::PARTIAL_CONTENT, body.len, ResponseBody::stream(body.stream, Some(body.len)));
    response.headers_mut().insert(header::CONTENT_TYPE, header_value(body.content_type));
    response
}

/// A blob the client fetches elsewhere (a remote content layer): 307 to its URL.
pub fn redirect(url: &str) -> Response<ResponseBody> {
    let mut response = with_body(StatusCode::TEMPORARY_REDIRECT, Bytes::new(), false);
    response.headers_mut().insert(header::LOCATION, header_value(url.to_owned()));
    response
}

/// HEAD of a blob that is not cached: what upstream says of it.
pub fn remote_blob_head(size: Option<u64>, digest_text: &DigestText) -> Response<ResponseBody> {
    let response = match size {
        Some(size) => sized(StatusCode::OK, size, ResponseBody::empty()),
        None => respond(StatusCode::OK, ResponseBody::empty()),
    };
    blob_headers(response, digest_text)
}

fn with_content_range(mut response: Response<ResponseBody>, part: &std::ops::Range<u64>, len: u64) -> Response<ResponseBody> {
    let content_range = format!("bytes {}-{}/{len}", part.start, part.end - 1);
    response.headers_mut().insert(header::CONTENT_RANGE, header_value(content_range));
    response
}

fn blob_headers(mut response: Response<ResponseBody>, digest_text: &DigestText) -> Response<ResponseBody> {
    let headers = response.headers_mut();
    // A multipart answer has its own type; each part says the blob's.
    headers.entry(header::CONTENT_TYPE).or_insert(OCTET_STREAM);
    insert_digest(headers, digest_text);
    headers.insert(header::ACCEPT_RANGES, BYTES);
    response
}

/// `Docker-Content-Digest` and `ETag` (the quoted digest) of content.
fn insert_digest(headers: &mut http::HeaderMap, digest_text: &DigestText) {
    headers.insert(CONTENT_DIGEST, shared_header(digest_text.plain.clone()));
    headers.insert(header::ETAG, shared_header(digest_text.quoted.clone()));
}

/// A header value sharing text the registry made once (digests, media types: visible ASCII,
/// which it checks), without copying it.
fn shared_header(text: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(text).unwrap_or(HeaderValue::from_static(""))
}

/// A `tags/list` page; `n` and `ns` are the client's, carried into the `Link` to the next page
/// (without `ns`, a mirror's next page would be routed as a different repository).
pub fn tags(page: &TagsPage, n: Option<usize>, ns: Option<&str>, head: bool) -> Response<ResponseBody> {
    let document = serde_json::json!({ "name": page.name.as_str(), "tags": page.tags });
    let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    let mut response = with_body(StatusCode::OK, body, head);
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    if let Some(last) = &page.next_last {
        let n = n.unwrap_or(page.tags.len()).to_string();
        let mut query = vec![("n", n.as_str()), ("last", last.as_str())];
        query.extend(ns.map(|ns| ("ns", ns)));
        let link = format!("</v2/{}/tags/list?{}>; rel=\"next\"", page.name, encode_query(&query));
        response.headers_mut().insert(header::LINK, header_value(link));
    }
    response
}

/// A page of referrers: an image index (the spec: "The `Content-Type` header MUST be set to
/// `application/vnd.oci.image.index.v1+json`"), `OCI-Filters-Applied` when the filter was
/// applied, and a `Link` to the next page carrying the client's filter and `ns`.
pub fn referrers(page: ReferrersPage, name: &RepositoryName, digest: &Digest, artifact_type: Option<&str>, ns: Option<&str>, head: bool) -> Response<ResponseBody> {
    let mut response = with_body(StatusCode::OK, page.index, head);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, INDEX);
    if page.filtered {
        headers.insert(HeaderName::from_static(FILTERS_APPLIED_HEADER), ARTIFACT_TYPE_FILTER);
    }
    if let Some(next) = &page.next {
        let mut query: Vec<(&str, &str)> = artifact_type.map(|t| ("artifactType", t)).into_iter().collect();
        query.push(("last", next));
        query.extend(ns.map(|ns| ("ns", ns)));
        let link = format!("</v2/{name}/referrers/{digest}?{}>; rel=\"next\"", encode_query(&query));
        headers.insert(header::LINK, header_value(link));
    }
    response
}

pub fn error(failure: &Failure, method: &http::Method, path: &str) -> Response<ResponseBody> {
    let WireError { code, message } = failure.to_wire(method, path);
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let document = error_body(code, message.as_deref(), None);
    let mut response = with_body(status, Bytes::from(document.body), *method == http::Method::HEAD);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(document.content_type));
    match failure {
        Failure::MethodNotAllowed(_) => {
            headers.insert(header::ALLOW, READ_ONLY_METHODS);
        }
        Failure::RangeNotSatisfiable { len } => {
            headers.insert(header::CONTENT_RANGE, header_value(format!("bytes */{len}")));
        }
        // Where this request ends is in doubt, so nothing after it on the connection is
        // trusted: hyper closes the connection after a response that says so.
        Failure::AmbiguousFraming => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Failure::Unauthenticated { challenges, .. } => {
            for challenge in challenges {
                headers.append(header::WWW_AUTHENTICATE, challenge.clone());
            }
        }
        Failure::Overloaded(_) | Failure::CredentialChecksBusy => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"registry-facade\""));
        }
        _ => {}
    }
    response
}

/// Header values we format ourselves from validated parts (numbers, names, tags).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tags_link_keeps_the_clients_ns_and_encodes_what_it_carries() {
        let page = TagsPage { name: "library/app".parse().unwrap(), tags: vec!["1.0".into(), "v+1".into()], next_last: Some("v+1".into()) };
        let link = |ns| tags(&page, Some(2), ns, false).headers().get(header::LINK).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(link(None).as_deref(), Some(r#"</v2/library/app/tags/list?n=2&last=v%2B1>; rel="next""#));
        assert_eq!(link(Some("docker.io")).as_deref(), Some(r#"</v2/library/app/tags/list?n=2&last=v%2B1&ns=docker.io>; rel="next""#));
        let without_more = TagsPage { next_last: None, ..page.clone() };
        assert!(tags(&without_more, Some(2), None, false).headers().get(header::LINK).is_none());
    }
}
