//! The blobserve listener's answers, Gitpod's blobserve compatible: `GET|HEAD /<ref>/<path>`
//! served from the image's files (sendfile for large ones), with `ETag`/304, `Range` (and
//! `If-Range`), gzip
//! for text, inline variables in `index.html`, and plain-text errors. Reaches images only
//! through `Registry::blobserve_file`.

mod headers;
mod route;

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tracing::Instrument;

use super::body::ResponseBody;
use super::failure::{Failure, WireError};
use super::HttpContext;
use crate::clock::within;
use crate::metrics::{self, ByteSource, Route};
use crate::oci::range::{if_range_matches, parse_range, RangeRequest, Selection};
use crate::registry::blobserve::{Blobserved, FileBytes, FileOptions, FilePath, InlineReplacement, ServedFile};
use crate::registry::RegistryError;
use headers::{accepts_gzip, content_type, inline, none_match, InlineVars, INLINE_VARS, READ_ONLY};
use route::RouteError;

/// Below this size a file is copied by `sendmsg`; from it on, sendfile pays for its call.
const SENDFILE_MIN_BYTES: usize = 64 * 1024;
const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

pub async fn handle<B>(request: Request<B>, ctx: &HttpContext) -> Response<ResponseBody> {
    let span = tracing::info_span!("blobserve", method = %request.method(), path = %request.uri().path());
    let mut response = answer(&request, ctx).instrument(span).await;
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    metrics::request(Route::Blobserve, request.method(), response.status().as_u16());
    response
}

async fn answer<B>(request: &Request<B>, ctx: &HttpContext) -> Response<ResponseBody> {
    let head = match head_or_refusal(request) {
        Ok(head) => head,
        Err(refused) => return refused.response(),
    };
    let path = request.uri().path();
    let (image, file) = match route::parse(path) {
        Ok(parsed) => parsed,
        Err(error @ RouteError::BadImage(_)) => return text(StatusCode::NOT_FOUND, error.to_string()),
        Err(error @ RouteError::BadPath(_)) => return text(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let (answer, options, range) = Answer::new(request.headers(), &file, image.is_digest(), head);
    let deadline = ctx.settings.blobserve_timeout.unwrap_or(ctx.settings.idle_timeout);
    let answering = std::pin::pin!(ctx.registry.blobserve_file(&image, &file, options));
    match within(deadline, answering).await {
        // What Go's http.TimeoutHandler answers; the preparation goes on in the background.
        None => text(StatusCode::SERVICE_UNAVAILABLE, "timeout".into()),
        Some(Err(error)) => failure(error, request.method(), path),
        Some(Ok(Blobserved::Directory)) => redirect(&format!("{path}/")),
        Some(Ok(Blobserved::File(served))) => file_response(served, &answer, range),
    }
}

/// A request refused before its path is looked at.
enum Refused {
    /// A WebSocket upgrade, which Gitpod's blobserve does not route either.
    Upgrade,
    /// A method other than GET and HEAD.
    Method,
}

impl Refused {
    fn response(self) -> Response<ResponseBody> {
        match self {
            Refused::Upgrade => text(StatusCode::NOT_FOUND, "Not Found".into()),
            Refused::Method => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD".into());
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
        }
    }
}

/// Whether the request is a `HEAD` (else a `GET`).
fn head_or_refusal<B>(request: &Request<B>) -> Result<bool, Refused> {
    if is_upgrade(request.headers()) {
        return Err(Refused::Upgrade);
    }
    match *request.method() {
        Method::GET => Ok(false),
        Method::HEAD => Ok(true),
        _ => Err(Refused::Method),
    }
}

/// What a file's response depends on besides the file.
struct Answer<'a> {
    mime: &'static str,
    compressible: bool,
    /// Named by digest: its content never changes.
    immutable: bool,
    head: bool,
    headers: &'a HeaderMap,
    vars: Option<(InlineVars, String)>,
}

impl<'a> Answer<'a> {
    /// What the request's headers ask of the file `file`, what the registry is asked for,
    /// and the range.
    fn new(headers: &'a HeaderMap, file: &FilePath, immutable: bool, head: bool) -> (Answer<'a>, FileOptions, RangeRequest) {
        let name = match file {
            FilePath::Path { components, directory: false } => components.last().map_or("index.html", String::as_str),
            _ => "index.html",
        };
        let (mime, compressible) = content_type(name);
        // RFC 9110 §14.2: range handling is defined for GET only; a HEAD ignores `Range`.
        let range = match head {
            true => RangeRequest::Whole,
            false => parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok())),
        };
        let vars = inline_vars(headers);
        let options = FileOptions {
            read_only: headers.get(READ_ONLY).is_some_and(|v| v.as_bytes() == b"true"),
            // A range is served from the file as it is; `index.html` with variables is rewritten.
            gzip: compressible && range == RangeRequest::Whole && accepts_gzip(values(headers, header::ACCEPT_ENCODING)) && !(*file == FilePath::Index && vars.is_some()),
        };
        (Answer { mime, compressible, immutable, head, headers, vars }, options, range)
    }
}

/// The representation of a file a response sends: as stored, its gzip variant, or
/// `index.html` with inline variables substituted.
struct Representation {
    bytes: FileBytes,
    etag: HeaderValue,
    gzipped: bool,
    /// May be cached for good (a digest reference, the same bytes for everyone).
    immutable: bool,
}

fn representation(identity: FileBytes, gzip: Option<FileBytes>, etag: &str, inline_static: Option<&[InlineReplacement]>, answer: &Answer) -> Representation {
    let quoted = |suffix: &str| HeaderValue::try_from(format!("\"{etag}{suffix}\"")).unwrap_or(HeaderValue::from_static("\"\""));
    if let (Some(replacements), Some((vars, raw))) = (inline_static.filter(|r| !r.is_empty()), &answer.vars) {
        let body = Bytes::from(inline(&identity.body, replacements, vars));
        // Another text for other variables: the ETag says which ones it carries.
        let tag = quoted(&format!("-iv{}", hex::encode(&Sha256::digest(raw.as_bytes())[..6])));
        return Representation { bytes: FileBytes { body, file: None }, etag: tag, gzipped: false, immutable: false };
    }
    match gzip {
        Some(gzip) => Representation { bytes: gzip, etag: quoted("-gz"), gzipped: true, immutable: answer.immutable },
        None => Representation { bytes: identity, etag: quoted(""), gzipped: false, immutable: answer.immutable },
    }
}

fn file_response(served: ServedFile, answer: &Answer, range: RangeRequest) -> Response<ResponseBody> {
    let ServedFile { identity, gzip, etag, inline_static, lease } = served;
    let chosen = representation(identity, gzip, &etag, inline_static.as_deref(), answer);
    let mut response = Response::new(ResponseBody::empty());
    let out = response.headers_mut();
    out.insert(header::ETAG, chosen.etag.clone());
    out.insert(header::CACHE_CONTROL, if chosen.immutable { IMMUTABLE } else { NO_CACHE });
    if answer.compressible {
        out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if chosen.etag.to_str().is_ok_and(|tag| none_match(values(answer.headers, header::IF_NONE_MATCH), tag)) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    // RFC 9110 §13.1.5: a range is for the representation `If-Range` names; for any other
    // (a moved tag changes the ETag) the whole one, not a part of it spliced onto the old.
    let range = match answer.headers.get(header::IF_RANGE) {
        Some(if_range) if !chosen.etag.to_str().is_ok_and(|etag| if_range_matches(if_range.to_str().unwrap_or_default(), etag)) => RangeRequest::Whole,
        _ => range,
    };
    let len = chosen.bytes.body.len() as u64;
    let part = match range.select(len) {
        Selection::Single(part) => Some(part),
        // Several ranges: the whole file, which RFC 9110 §14.2 allows (browsers ask for one).
        Selection::Whole | Selection::Multiple(_) => None,
        Selection::Unsatisfiable => return unsatisfiable(response, len),
    };
    let selected = part.clone().unwrap_or(0..len);
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(answer.mime));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(selected.end - selected.start));
    if chosen.gzipped {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Some(part) = &part {
        let content_range = format!("bytes {}-{}/{len}", part.start, part.end - 1);
        out.insert(header::CONTENT_RANGE, HeaderValue::try_from(content_range).unwrap_or(HeaderValue::from_static("")));
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    if !answer.head {
        *response.body_mut() = body(chosen.bytes, selected, lease);
    }
    response
}

/// `selected` of `bytes`, from the file by sendfile where that pays; holding `lease` (the
/// image) until it is sent.
fn body(bytes: FileBytes, selected: std::ops::Range<u64>, lease: Arc<dyn Any + Send + Sync>) -> ResponseBody {
    // Offsets are below the length of a mapping, which fits a usize.
    let data = bytes.body.slice(selected.start as usize..selected.end as usize);
    let mut body = match bytes.file {
        Some(file) if data.len() >= SENDFILE_MIN_BYTES => ResponseBody::file_slice(data, file, selected.start),
        _ => ResponseBody::bytes(data),
    }
    .holding(lease);
    body.count_as(ByteSource::Blobserve);
    body
}

fn unsatisfiable(mut response: Response<ResponseBody>, len: u64) -> Response<ResponseBody> {
    let message = text(StatusCode::RANGE_NOT_SATISFIABLE, format!("range not satisfiable for {len} bytes"));
    *response.status_mut() = message.status();
    response.headers_mut().extend(message.headers().clone());
    response.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::try_from(format!("bytes */{len}")).unwrap_or(HeaderValue::from_static("")));
    *response.body_mut() = message.into_body();
    response
}

/// A registry failure as the client sees it: the one table's status, and its message (the
/// default text for our own faults, whose cause is logged).
fn failure(error: RegistryError, method: &Method, path: &str) -> Response<ResponseBody> {
    let WireError { code, message } = Failure::Registry(error).to_wire(method, path);
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, message.unwrap_or_else(|| code.describe().2.to_owned()))
}

fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let body = Bytes::from(message + "\n");
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, TEXT);
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.body_mut() = ResponseBody::bytes(body);
    response
}

fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "Moved Permanently".into());
    // The path came in as a valid request target, so it is a valid header value.
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn values(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok())
}

/// The inline variables a request sends, and their text (part of the ETag). A header that
/// does not parse is ignored, as Gitpod does (and logged).
fn inline_vars(headers: &HeaderMap) -> Option<(InlineVars, String)> {
    let raw = headers.get(INLINE_VARS)?.to_str().ok()?;
    match serde_json::from_str(raw) {
        Ok(vars) => Some((vars, raw.to_owned())),
        Err(error) => {
            tracing::info!(%error, "ignoring an X-BlobServe-InlineVars header that is not JSON");
            None
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| values(headers, name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)));
    has(header::CONNECTION, "upgrade") || has(header::UPGRADE, "websocket")
}
