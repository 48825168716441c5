//! The admin API, served only on the admin listener (never the public port):
//! `PUT|GET|DELETE /admin/specs/<id>` for the `remote/<id>` specs, `/live` and `/ready`.
//! Answers are JSON; errors are `{"error": "<what>"}` with the status that fits. Readiness
//! never depends on an upstream registry, only on this node's own shared state (Redis).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::HttpContext;
use crate::oci::RepositoryName;
use crate::spec::parse_spec;

/// A spec with direct content layers carries them base64; 64 MiB is plenty.
const MAX_SPEC_BYTES: usize = 64 << 20;
const JSON: HeaderValue = HeaderValue::from_static("application/json");

pub async fn handle(request: Request<Incoming>, ctx: &HttpContext) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/live" => return json(StatusCode::OK, Bytes::from_static(br#"{"status":"live"}"#)),
        "/ready" => return ready(ctx),
        _ => {}
    }
    let Some(id) = path.strip_prefix("/admin/specs/") else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    // A spec id becomes part of a repository name (`remote/<id>`): it follows that grammar.
    if format!("remote/{id}").parse::<RepositoryName>().is_err() {
        return error(StatusCode::BAD_REQUEST, "spec id must be lowercase name components, e.g. ws-1234 or team/ws-1");
    }
    let specs = ctx.registry.specs();
    match *request.method() {
        Method::GET => match specs.get(id).await {
            Ok(Some(stored)) => json(StatusCode::OK, stored.json.clone()),
            Ok(None) => error(StatusCode::NOT_FOUND, "no spec with this id"),
            Err(e) => store_error(&e),
        },
        Method::DELETE => match specs.delete(id).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => error(StatusCode::NOT_FOUND, "no spec with this id"),
            Err(e) => store_error(&e),
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
    let stored = match parse_spec(&body) {
        Ok(stored) => stored,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let key = stored.spec.key.to_string();
    let replaced = match ctx.registry.specs().put(id, stored).await {
        Ok(replaced) => replaced,
        Err(e) => return store_error(&e),
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

/// The shared store could not do it: the orchestrator should retry, nothing was half-done.
fn store_error(cause: &crate::spec::SpecError) -> Response<ResponseBody> {
    tracing::warn!(error = %cause, "spec store");
    error(StatusCode::SERVICE_UNAVAILABLE, &cause.to_string())
}

fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let len = body.len();
    let mut response = Response::new(ResponseBody::bytes(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
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
