//! The admin API, served only on the admin listener (never the public port): the `remote/<id>`
//! specs under `/admin/specs/<id>`, `/live`, `/ready` and `/metrics`. Readiness depends only on
//! this node's own state (Redis), never on an upstream registry.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use super::body::ResponseBody;
use super::HttpContext;
use crate::metrics::{self, ByteSource};
use crate::oci::RepositoryName;
use crate::registry::{FailureClass, RegistryError, SpecWritten};

/// A spec with direct content layers carries them base64; 64 MiB is plenty.
const MAX_SPEC_BYTES: usize = 64 << 20;
const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub async fn handle(request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let method = request.method().clone();
    let label = route_label(request.uri().path());
    let span = tracing::info_span!("admin", %method, route = label.as_str());
    let mut response = answer(request, ctx).instrument(span).await;
    response.body_mut().count_as(ByteSource::Admin);
    metrics::request(label, &method, response.status().as_u16());
    response
}

fn route_label(path: &str) -> metrics::Route {
    match path {
        "/live" => metrics::Route::Live,
        "/ready" => metrics::Route::Ready,
        "/metrics" => metrics::Route::Metrics,
        _ if path.starts_with("/admin/specs/") => metrics::Route::Specs,
        _ => metrics::Route::Unknown,
    }
}

async fn answer(request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/live" => return json(StatusCode::OK, Bytes::from_static(br#"{"status":"live"}"#)),
        "/ready" => return ready(ctx),
        "/metrics" => return render_metrics(ctx),
        _ => {}
    }
    let Some(id) = path.strip_prefix("/admin/specs/") else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    // A spec id becomes part of a repository name (`remote/<id>`): it follows that grammar.
    if format!("remote/{id}").parse::<RepositoryName>().is_err() {
        return error(StatusCode::BAD_REQUEST, "spec id must be lowercase name components, e.g. ws-1234 or team/ws-1");
    }
    match *request.method() {
        Method::GET => match ctx.registry.spec_json(id).await {
            Ok(Some(spec)) => json(StatusCode::OK, Bytes::from(spec)),
            Ok(None) => error(StatusCode::NOT_FOUND, "no spec with this id"),
            Err(e) => registry_error(&e),
        },
        Method::DELETE => match ctx.registry.delete_spec(id).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => error(StatusCode::NOT_FOUND, "no spec with this id"),
            Err(e) => registry_error(&e),
        },
        Method::PUT => put(id, request, ctx).await,
        _ => {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or DELETE");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
            response
        }
    }
}

async fn put(id: &str, request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let body = match http_body_util::Limited::new(request.into_body(), MAX_SPEC_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("a spec is at most {MAX_SPEC_BYTES} bytes"));
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")),
    };
    let SpecWritten { key, replaced } = match ctx.registry.put_spec(id, &body).await {
        Ok(written) => written,
        Err(e) => return registry_error(&e),
    };
    tracing::info!(id, %key, replaced, "spec stored");
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    json(status, Bytes::from(serde_json::json!({"id": id, "key": key}).to_string()))
}

fn ready(ctx: &HttpContext) -> Response<ResponseBody> {
    match ctx.registry.readiness() {
        Ok(()) => json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
        Err(reason) => json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(serde_json::json!({"status": "not ready", "reason": reason}).to_string())),
    }
}

/// The exposition, with what is read rather than counted brought up to date first.
fn render_metrics(ctx: &HttpContext) -> Response<ResponseBody> {
    let metrics = &ctx.metrics;
    let (cache_bytes, _) = ctx.registry.cache_stats();
    metrics.set_cache_bytes(cache_bytes);
    match metrics.render() {
        Ok(text) => typed(StatusCode::OK, Bytes::from(text), HeaderValue::from_static(metrics::CONTENT_TYPE)),
        Err(e) => {
            tracing::error!(error = %e, "metrics");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// A refused spec is the orchestrator's to fix (400); a spec store that could not do it is
/// for it to retry (503, nothing was half-done); anything else is ours (500).
fn registry_error(cause: &RegistryError) -> Response<ResponseBody> {
    match cause.class() {
        FailureClass::Client => error(StatusCode::BAD_REQUEST, &cause.to_string()),
        FailureClass::Upstream => {
            tracing::warn!(error = %cause, "spec store");
            error(StatusCode::SERVICE_UNAVAILABLE, &cause.to_string())
        }
        FailureClass::Internal => {
            tracing::error!(error = %cause, "spec store");
            error(StatusCode::INTERNAL_SERVER_ERROR, &cause.to_string())
        }
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    typed(status, body, JSON)
}

fn typed(status: StatusCode, body: Bytes, content_type: HeaderValue) -> Response<ResponseBody> {
    let len = body.len();
    let mut response = Response::new(ResponseBody::bytes(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    response
}

fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(status, Bytes::from(serde_json::json!({"error": message}).to_string()))
}
