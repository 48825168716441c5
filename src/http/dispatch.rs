//! From a request to a response: method check, route parsing, the registry call, and the
//! response or error document; each request in its own span (route, repository, reference,
//! digest) and counted in the request metrics.

use http::{Method, Request, Response};
use tracing::field::{display, Empty};
use tracing::{Instrument, Span};

use super::body::ResponseBody;
use super::failure::Failure;
use super::response;
use super::HttpContext;
use crate::oci::accept::AcceptList;
use crate::oci::range::parse_range;
use crate::oci::route::{self, Route};
use crate::oci::Reference;
use crate::metrics;
use crate::registry::BlobReply;

pub async fn handle<B>(request: Request<B>, ctx: &HttpContext) -> Response<ResponseBody> {
    let span = tracing::info_span!("request", method = %request.method(), route = Empty, repo = Empty, reference = Empty, digest = Empty);
    let mut label = metrics::Route::Unknown;
    let response = async {
        match answer(&request, ctx, &mut label).await {
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

/// Names the request in the current span and returns its metrics label.
fn describe(route: &Route) -> metrics::Route {
    let span = Span::current();
    span.record("route", display(route.kind()));
    if let Some(name) = route.name() {
        span.record("repo", display(name));
    }
    match route {
        Route::Base => metrics::Route::Base,
        Route::Manifest { reference, .. } => {
            span.record("reference", display(reference));
            if let Reference::Digest(digest) = reference {
                span.record("digest", display(digest));
            }
            metrics::Route::Manifest
        }
        Route::Blob { digest, .. } => {
            span.record("digest", display(digest));
            metrics::Route::Blob
        }
        Route::TagsList { .. } => metrics::Route::Tags,
    }
}

async fn answer<B>(request: &Request<B>, ctx: &HttpContext, label: &mut metrics::Route) -> Result<Response<ResponseBody>, Failure> {
    if let Some(auth) = &ctx.auth {
        // Before routing: an unauthenticated client learns nothing, not even which names exist.
        auth.check(request.headers()).await.map_err(|refused| Failure::Unauthenticated { refused, challenges: auth.challenges(refused) })?;
    }
    let path = request.uri().path();
    if !route::is_api_path(path) {
        return Err(route::RouteError::NotFound.into());
    }
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref other => return Err(Failure::MethodNotAllowed(other.clone())),
    };
    let route = route::parse_path(path)?;
    *label = describe(&route);
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
            let range = parse_range(request.headers().get(http::header::RANGE).and_then(|v| v.to_str().ok()));
            match registry.blob(&name, &digest, query.ns.as_deref(), head).await? {
                BlobReply::Cached(blob) => response::blob(&blob, range, head),
                BlobReply::Remote { size, digest_header, etag } => Ok(response::remote_blob_head(size, &digest_header, &etag)),
                BlobReply::Filling(filling) => {
                    let size = filling.size().await?;
                    response::filling_blob(&filling, size, range, head)
                }
                BlobReply::Inline { bytes, digest_header, etag } => response::inline_blob(bytes, &digest_header, &etag, range, head),
                BlobReply::Redirect(url) => Ok(response::redirect(&url)),
            }
        }
        Route::TagsList { name } => {
            let page = registry.tags(&name, query.n, query.last.as_deref(), query.ns.as_deref()).await?;
            Ok(response::tags(&page, query.n, head))
        }
    }
}
