//! From a request to a response: method check, route parsing, the registry call, and the
//! response or error document (`Range` honoured for GET only, and only under a matching
//! `If-Range`); each request in its own span (route, repository, reference, digest) and
//! counted in the request metrics.

use http::{HeaderMap, Method, Request, Response};
use tracing::{Instrument, Span};

use super::auth::Refused;
use super::body::ResponseBody;
use super::failure::Failure;
use super::response;
use super::HttpContext;
use crate::oci::accept::AcceptList;
use crate::oci::range::{if_range_matches, parse_range, RangeRequest};
use crate::oci::route::{self, Route};
use crate::oci::Reference;
use crate::metrics;
use crate::clock::within;
use crate::registry::BlobReply;

pub async fn handle<B>(request: Request<B>, ctx: &HttpContext) -> Response<ResponseBody> {
    let path = request.uri().path();
    // `None`: not under /v2 at all (404 whatever the method); a parse error is only reported
    // once the method is known to be a read.
    let route = route::is_api_path(path).then(|| route::parse_path(path));
    let parsed = route.as_ref().and_then(|r| r.as_ref().ok());
    let span = request_span(request.method(), parsed);
    let label = parsed.map_or(metrics::Route::Unknown, metrics_route);
    let response = async {
        // However long upstreams take through their retries, the client gets an answer: the
        // connection's stall clock does not run while this one is being made.
        let deadline = ctx.settings.idle_timeout;
        // Pinned here and lent: a registry call's future is kilobytes, and `within` taking it
        // by value would copy it on every request.
        let answering = std::pin::pin!(answer(&request, ctx, route));
        let answered = within(deadline, answering).await.unwrap_or(Err(Failure::AnswerTooSlow(deadline)));
        match answered {
            Ok(response) => response,
            Err(failure) => response::error(&failure, request.method(), request.uri().path()),
        }
    }
    .instrument(span.clone())
    .await;
    let status = response.status().as_u16();
    tracing::debug!(parent: &span, status, "answered");
    metrics::request(label, request.method(), status);
    response
}

/// The request's span, with every field given when it is made: recording fields later makes
/// the log layer format them again each time, a cost every request would pay.
fn request_span(method: &Method, route: Option<&Route>) -> Span {
    match route {
        None => tracing::info_span!("request", %method, route = %"unknown"),
        Some(Route::Base) => tracing::info_span!("request", %method, route = %"base"),
        Some(Route::Manifest { name, reference: Reference::Digest(digest) }) => {
            tracing::info_span!("request", %method, route = %"manifest", repo = %name, reference = %digest, digest = %digest)
        }
        Some(Route::Manifest { name, reference }) => tracing::info_span!("request", %method, route = %"manifest", repo = %name, reference = %reference),
        Some(Route::Blob { name, digest }) => tracing::info_span!("request", %method, route = %"blob", repo = %name, digest = %digest),
        Some(Route::TagsList { name }) => tracing::info_span!("request", %method, route = %"tags", repo = %name),
        Some(Route::Referrers { name, digest }) => tracing::info_span!("request", %method, route = %"referrers", repo = %name, digest = %digest),
    }
}

fn metrics_route(route: &Route) -> metrics::Route {
    match route {
        Route::Base => metrics::Route::Base,
        Route::Manifest { .. } => metrics::Route::Manifest,
        Route::Blob { .. } => metrics::Route::Blob,
        Route::TagsList { .. } => metrics::Route::Tags,
        Route::Referrers { .. } => metrics::Route::Referrers,
    }
}

async fn answer<B>(request: &Request<B>, ctx: &HttpContext, route: Option<Result<Route, route::RouteError>>) -> Result<Response<ResponseBody>, Failure> {
    if ambiguous_framing(request.headers()) {
        return Err(Failure::AmbiguousFraming);
    }
    if let Some(auth) = &ctx.auth {
        // Before routing: an unauthenticated client learns nothing, not even which names exist.
        auth.check(request.headers()).await.map_err(|refused| match refused {
            Refused::Busy => Failure::CredentialChecksBusy,
            refused => Failure::Unauthenticated { refused, challenges: auth.challenges(refused) },
        })?;
    }
    let Some(route) = route else { return Err(route::RouteError::NotFound.into()) };
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref other => return Err(Failure::MethodNotAllowed(other.clone())),
    };
    let route = route?;
    let query = route::parse_query(request.uri().query())?;
    let registry = &ctx.registry;
    match route {
        Route::Base => Ok(response::base(head)),
        Route::Manifest { name, reference } => {
            let accept = AcceptList::parse(request.headers().get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()));
            let manifest = registry.manifest(&name, &reference, &accept, query.ns.as_deref()).await?;
            Ok(response::manifest(&manifest, head))
        }
        Route::Blob { name, digest } => {
            // RFC 9110 §14.2: "A server MUST ignore a Range header field received with a request
            // method that is unrecognized or for which range handling is not defined. For this
            // specification, GET is the only method for which range handling is defined." The
            // spec agrees: "A HEAD request to an existing blob or manifest URL MUST return `200
            // OK`."
            let range = match head {
                true => RangeRequest::Whole,
                false => blob_range(request.headers(), &digest),
            };
            match registry.blob(&name, &digest, query.ns.as_deref(), head).await? {
                BlobReply::Cached(blob) => response::blob(&blob, range, head),
                BlobReply::Remote { size, digest_text } => Ok(response::remote_blob_head(size, &digest_text)),
                BlobReply::Filling(filling) => {
                    let size = filling.size().await?;
                    response::filling_blob(filling, size, range, head)
                }
                BlobReply::Inline { bytes, digest_text } => response::inline_blob(bytes, &digest_text, range, head),
                BlobReply::Redirect(url) => Ok(response::redirect(&url)),
            }
        }
        Route::TagsList { name } => {
            let page = registry.tags(&name, query.n, query.last.as_deref(), query.ns.as_deref()).await?;
            Ok(response::tags(&page, query.n, query.ns.as_deref(), head))
        }
        Route::Referrers { name, digest } => {
            let (artifact_type, ns) = (query.artifact_type.as_deref(), query.ns.as_deref());
            let page = registry.referrers(&name, &digest, artifact_type, query.last.as_deref(), ns).await?;
            Ok(response::referrers(page, &name, &digest, artifact_type, ns, head))
        }
    }
}

/// The `Range` of a blob GET, unless an `If-Range` names other content than the blob's (its
/// ETag is the quoted digest): then the whole blob (RFC 9110 §13.1.5).
fn blob_range(headers: &HeaderMap, digest: &crate::oci::Digest) -> RangeRequest {
    if let Some(if_range) = headers.get(http::header::IF_RANGE) {
        if !if_range_matches(if_range.to_str().unwrap_or_default(), &format!("\"{digest}\"")) {
            return RangeRequest::Whole;
        }
    }
    parse_range(headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()))
}

/// Whether the request's body framing is one that front proxies and hyper may read
/// differently (request smuggling): any `Transfer-Encoding` but exactly one `chunked`, such as
/// `chunked, chunked` (RFC 9112 §6.1 forbids chunking twice) or codings we never take. hyper
/// itself refuses a final coding other than chunked and closes after `Content-Length` with
/// `Transfer-Encoding`; a pull API never needs a request body, so refusing the rest costs nothing.
fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(only), None) => !only.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::TRANSFER_ENCODING, value.parse().unwrap());
        }
        ambiguous_framing(&headers)
    }

    #[test]
    fn only_a_single_chunked_coding_is_unambiguous() {
        assert!(!framing(&[]));
        assert!(!framing(&["chunked"]));
        assert!(!framing(&[" Chunked "]));
        assert!(framing(&["chunked, chunked"]));
        assert!(framing(&["chunked", "chunked"]));
        assert!(framing(&["gzip, chunked"]));
        assert!(framing(&["identity"]));
        assert!(framing(&[",chunked,,chunked"]));
    }
}
