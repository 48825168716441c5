//! Building responses: the exact headers of each pull endpoint, ranges, and error documents.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ResponseBody;
use super::failure::{Failure, WireError};
use crate::oci::error_code::error_body;
use crate::oci::range::RangeRequest;
use crate::registry::{MappedBlob, StoredManifest, TagsPage};

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const API_VERSION_VALUE: HeaderValue = HeaderValue::from_static("registry/2.0");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const READ_ONLY_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD");

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
fn blob_body(status: StatusCode, blob: &MappedBlob, range: std::ops::Range<usize>, head: bool) -> Response<ResponseBody> {
    let len = range.len() as u64;
    let body = match head {
        true => ResponseBody::empty(),
        false if range.len() >= SENDFILE_MIN_BYTES => {
            ResponseBody::file_slice(blob.body.slice(range.clone()), Arc::clone(&blob.file), range.start as u64)
        }
        false => ResponseBody::bytes(blob.body.slice(range)),
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
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, manifest.media_type.clone());
    headers.insert(CONTENT_DIGEST, manifest.digest_header.clone());
    headers.insert(header::ETAG, manifest.etag.clone());
    response
}

/// A blob, whole or the one range asked for.
///
/// # Errors
/// `RangeNotSatisfiable` when the range selects nothing of the blob.
pub fn blob(blob: &MappedBlob, range: RangeRequest, head: bool) -> Result<Response<ResponseBody>, Failure> {
    let len = blob.body.len() as u64;
    let mut response = match range {
        RangeRequest::Whole => blob_body(StatusCode::OK, blob, 0..blob.body.len(), head),
        RangeRequest::Malformed => return Err(Failure::RangeNotSatisfiable { len }),
        RangeRequest::Part(part) => {
            let part = part.resolve(len).ok_or(Failure::RangeNotSatisfiable { len })?;
            let content_range = format!("bytes {}-{}/{len}", part.start, part.end - 1);
            // Offsets are below `len`, which is a usize-sized mapping.
            let mut response = blob_body(StatusCode::PARTIAL_CONTENT, blob, part.start as usize..part.end as usize, head);
            response.headers_mut().insert(header::CONTENT_RANGE, header_value(content_range));
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, OCTET_STREAM);
    headers.insert(CONTENT_DIGEST, blob.digest_header.clone());
    headers.insert(header::ETAG, blob.etag.clone());
    headers.insert(header::ACCEPT_RANGES, BYTES);
    Ok(response)
}

pub fn tags(page: &TagsPage, n: Option<usize>, head: bool) -> Response<ResponseBody> {
    let document = serde_json::json!({ "name": page.name.as_str(), "tags": page.tags });
    let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    let mut response = with_body(StatusCode::OK, body, head);
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    if let Some(last) = &page.next_last {
        let n = n.unwrap_or(page.tags.len());
        let link = format!("</v2/{}/tags/list?n={n}&last={last}>; rel=\"next\"", page.name);
        response.headers_mut().insert(header::LINK, header_value(link));
    }
    response
}

pub fn error(failure: &Failure, method: &http::Method, path: &str) -> Response<ResponseBody> {
    let WireError { code, message } = failure.to_wire(method, path);
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Bytes::from(error_body(code, message.as_deref(), None));
    let mut response = with_body(status, body, *method == http::Method::HEAD);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON);
    match failure {
        Failure::MethodNotAllowed(_) => {
            headers.insert(header::ALLOW, READ_ONLY_METHODS);
        }
        Failure::RangeNotSatisfiable { len } => {
            headers.insert(header::CONTENT_RANGE, header_value(format!("bytes */{len}")));
        }
        _ => {}
    }
    response
}

/// Header values we format ourselves from validated parts (numbers, names, tags).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
}
