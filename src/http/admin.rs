//! The admin API, served only on the admin listener (never the public port): the `remote/<id>`
//! specs under `/admin/specs/<id>`, prefetches under `/admin/prefetch`, `/live`, `/ready` and
//! `/metrics`. Readiness depends only on this node's own state (Redis), never on an upstream.

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
use crate::registry::{FailureClass, PrefetchJob, PrefetchRef, RegistryError, SpecWritten, DEFAULT_PREFETCH_CONCURRENCY};

/// A prefetch request is a list of image references.
const MAX_PREFETCH_REQUEST_BYTES: usize = 1 << 20;
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
        _ if path == "/admin/prefetch" || path.starts_with("/admin/prefetch/") => metrics::Route::Prefetch,
        _ => metrics::Route::Unknown,
    }
}

async fn answer(request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/live" => return json(StatusCode::OK, Bytes::from_static(br#"{"status":"live"}"#)),
        "/ready" => return ready(ctx),
        "/metrics" => return render_metrics(ctx),
        "/admin/prefetch" => return prefetch(request, ctx).await,
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/admin/prefetch/") {
        return prefetch_job(id, request.method(), ctx);
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
        _ => method_not_allowed("GET, PUT, DELETE"),
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

/// What `POST /admin/prefetch` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefetchRequest {
    refs: Vec<String>,
    concurrency: Option<usize>,
}

/// `POST`: starts a prefetch of the refs in the body (202, the job); `GET`: the last runs.
async fn prefetch(request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    match *request.method() {
        Method::GET => {
            let jobs: Vec<_> = ctx.registry.prefetch_jobs().iter().map(|job| job_json(job)).collect();
            json(StatusCode::OK, Bytes::from(serde_json::json!({ "jobs": jobs }).to_string()))
        }
        Method::POST => {
            let body = match http_body_util::Limited::new(request.into_body(), MAX_PREFETCH_REQUEST_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read the body (at most {MAX_PREFETCH_REQUEST_BYTES} bytes): {e}")),
            };
            let asked: PrefetchRequest = match serde_json::from_slice(&body) {
                Ok(asked) => asked,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("expected {{\"refs\": [\"<image>\", …]}}: {e}")),
            };
            let refs = match asked.refs.iter().map(|r| r.parse::<PrefetchRef>()).collect::<Result<Vec<_>, _>>() {
                Ok(refs) if !refs.is_empty() => refs,
                Ok(_) => return error(StatusCode::BAD_REQUEST, "`refs` names no image"),
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let job = ctx.registry.start_prefetch(refs, asked.concurrency.unwrap_or(DEFAULT_PREFETCH_CONCURRENCY));
            json(StatusCode::ACCEPTED, Bytes::from(job_json(&job).to_string()))
        }
        _ => method_not_allowed("GET, POST"),
    }
}

fn prefetch_job(id: &str, method: &Method, ctx: &HttpContext) -> Response<ResponseBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let found = id.parse::<u64>().ok().and_then(|id| ctx.registry.prefetch_jobs().into_iter().find(|job| job.id == id));
    match found {
        Some(job) => json(StatusCode::OK, Bytes::from(job_json(&job).to_string())),
        None => error(StatusCode::NOT_FOUND, "no prefetch with this id (the last 16 are kept)"),
    }
}

fn job_json(job: &PrefetchJob) -> serde_json::Value {
    serde_json::json!({ "id": job.id, "finished": job.finished(), "images": job.statuses() })
}

fn method_not_allowed(allowed: &'static str) -> Response<ResponseBody> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allowed}"));
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
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
    if let Some(stats) = ctx.registry.blobserve_stats() {
        metrics.set_blobserve(stats.space_bytes, [stats.prepull_pending, stats.prepull_ready, stats.prepull_failed]);
    }
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
