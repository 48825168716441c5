//! The client of upstream registries: endpoints and TLS, pooled HTTP/1.1 and h2 connections
//! per executor, the distribution auth flows, retries with backoff, redirects, and resumable
//! blob downloads. Knows nothing of the cache or of our clients.

mod auth;
mod blob;
mod connection;
mod endpoint;
mod error;
mod referrers;
mod retry;
mod tags;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

pub use auth::Secret;
pub use blob::{redact_url, BlobDownload, BlobLocation};
pub use endpoint::{repository_path, RegistryConfig};
pub use error::UpstreamError;
pub use referrers::{referrers_path, UpstreamReferrers};
pub use retry::RetryPolicy;
pub use tags::TagPage;

use crate::blocking::run_blocking;
use crate::clock::{within, Clock};
use crate::metrics::{self, RetryKind};
use crate::oci::route::encode_query;
use crate::oci::Digest;
use auth::{Challenge, Credential, CredentialStore, TokenCache};
use connection::{ConnectSettings, RequestBody, UpstreamBody};
use endpoint::{Endpoint, Endpoints};
use error::AttemptError;

/// Redirects followed before giving up (registries redirect blobs to object storage).
const MAX_REDIRECTS: usize = 5;
/// Error documents and token answers are read up to this size.
const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// A 401's or redirect's body is read (to keep its connection) only while it flows this well.
const DISCARD_STALL: Duration = Duration::from_secs(1);
const USER_AGENT: HeaderValue = HeaderValue::from_static(concat!("registry-facade/", env!("CARGO_PKG_VERSION")));

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// How each registry host is reached (by host as images name it).
    pub registries: BTreeMap<String, RegistryConfig>,
    /// A docker `config.json` with credentials; re-read when it changes.
    pub docker_config: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    /// Time from sending a request to its response head.
    pub response_timeout: Duration,
    /// Longest pause within a response body before it counts as broken.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
    /// Requests in flight per executor to one origin.
    pub max_connections_per_host: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            registries: BTreeMap::new(),
            docker_config: None,
            connect_timeout: Duration::from_secs(5),
            tls_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_connections_per_host: 16,
        }
    }
}

/// A repository at an upstream registry, e.g. host `docker.io`, path `library/ubuntu`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteRepository {
    pub host: String,
    pub path: String,
}

impl RemoteRepository {
    pub fn new(host: &str, repo: &str) -> RemoteRepository {
        RemoteRepository { host: host.to_owned(), path: repository_path(host, repo) }
    }

    fn pull_scope(&self) -> String {
        format!("repository:{}:pull", self.path)
    }
}

impl std::fmt::Display for RemoteRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// A manifest as an upstream sent it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    /// The `Docker-Content-Digest` the upstream claimed, to be checked against the bytes.
    pub claimed_digest: Option<String>,
}

/// The shared client; cheap to clone. Connections themselves are per executor.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    settings: UpstreamSettings,
    connect: ConnectSettings,
    endpoints: Endpoints,
    credentials: Arc<CredentialStore>,
    tokens: TokenCache,
    /// Hosts that answered a Basic challenge: later requests carry Basic at once instead of
    /// costing a 401 round trip each.
    basic_hosts: std::sync::RwLock<std::collections::HashSet<String>>,
    clock: Clock,
}

/// A response head and its (still unread) body.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: UpstreamBody,
}

impl Upstream {
    /// # Errors
    /// A bad endpoint, an unreadable CA file or docker config (naming the key).
    /// Token lifetimes and credential re-reads follow `clock`.
    ///
    /// # Errors
    /// A registry's settings or the docker credentials cannot be used.
    pub fn new(settings: UpstreamSettings, clock: Clock) -> Result<Upstream, UpstreamError> {
        let endpoints = Endpoints::new(&settings.registries)?;
        let credentials = Arc::new(CredentialStore::open(settings.docker_config.as_deref()).map_err(|e| UpstreamError::Config(format!("dockerConfig: {e}")))?);
        let connect = ConnectSettings {
            connect_timeout: settings.connect_timeout,
            tls_timeout: settings.tls_timeout,
            max_per_origin: settings.max_connections_per_host,
        };
        let shared = Shared { settings, connect, endpoints, credentials, tokens: TokenCache::default(), basic_hosts: Default::default(), clock };
        Ok(Upstream { shared: Arc::new(shared) })
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.shared.settings
    }

    /// GETs a manifest (by tag or digest) with retries.
    ///
    /// # Errors
    /// The final error once retries are exhausted or a permanent error is met.
    pub async fn manifest(&self, repo: &RemoteRepository, reference: &str, accept: &str) -> Result<FetchedManifest, UpstreamError> {
        let path = format!("/v2/{}/manifests/{reference}", repo.path);
        let headers = accept_headers(accept)?;
        let limit = crate::oci::manifest::MAX_MANIFEST_BYTES;
        let stall = self.shared.settings.read_timeout;
        self.with_retries(&repo.host, || async {
            let exchange = self.registry_exchange(repo, &Method::GET, &path, headers.clone()).await?;
            let media_type = header_str(&exchange.headers, header::CONTENT_TYPE).unwrap_or_default();
            let claimed_digest = header_str(&exchange.headers, "docker-content-digest");
            let bytes = exchange.body.collect(limit, stall).await?;
            Ok(FetchedManifest { bytes, media_type, claimed_digest })
        })
        .await
    }

    /// The digest of the manifest `reference` names (HEAD, with retries): what a GET with the
    /// same `accept` would serve, without counting as a pull where registries (Docker Hub)
    /// limit pulls. `None` if the upstream does not say, or says something that is no digest:
    /// some registries leave `Docker-Content-Digest` off a HEAD.
    ///
    /// # Errors
    /// As `manifest`; a 404 is `NotFound` without a code (a HEAD has no error body to carry one).
    pub async fn manifest_digest(&self, repo: &RemoteRepository, reference: &str, accept: &str) -> Result<Option<Digest>, UpstreamError> {
        let path = format!("/v2/{}/manifests/{reference}", repo.path);
        let headers = accept_headers(accept)?;
        self.with_retries(&repo.host, || async {
            let exchange = self.registry_exchange(repo, &Method::HEAD, &path, headers.clone()).await?;
            // Read to its (empty) end, so that the connection goes back to the pool.
            let headers = exchange.discard().await;
            Ok(header_str(&headers, "docker-content-digest").and_then(|d| d.parse().ok()))
        })
        .await
    }

    /// The size of a blob (HEAD), `None` if the upstream does not say.
    ///
    /// # Errors
    /// As `manifest`.
    pub async fn blob_size(&self, repo: &RemoteRepository, digest: &str) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{}/blobs/{digest}", repo.path);
        self.with_retries(&repo.host, || async {
            let exchange = self.registry_exchange(repo, &Method::HEAD, &path, HeaderMap::new()).await?;
            Ok(content_length(&exchange.headers))
        })
        .await
    }

    /// Starts downloading a blob of a registry repository from byte `offset` on.
    ///
    /// # Errors
    /// As `manifest`, for the first response head.
    pub async fn blob(&self, repo: &RemoteRepository, digest: &str, offset: u64) -> Result<BlobDownload, UpstreamError> {
        self.download(BlobLocation::Registry { repo: repo.clone(), digest: digest.to_owned() }, offset).await
    }

    /// Starts downloading a blob from `location`, from byte `offset` on; see `BlobDownload`.
    ///
    /// # Errors
    /// As `manifest`, for the first response head.
    pub async fn download(&self, location: BlobLocation, offset: u64) -> Result<BlobDownload, UpstreamError> {
        BlobDownload::start(self.clone(), location, offset).await
    }

    /// Starts downloading bytes `range` of a blob from `location` (asked for with exactly that
    /// `Range`); see `BlobDownload`.
    ///
    /// # Errors
    /// As `manifest`, for the first response head.
    pub async fn download_range(&self, location: BlobLocation, range: std::ops::Range<u64>) -> Result<BlobDownload, UpstreamError> {
        BlobDownload::start_range(self.clone(), location, range.start, Some(range.end)).await
    }

    /// One exchange with a plain URL (no registry credentials), redirects followed.
    async fn url_exchange(&self, url: &str, method: &Method, headers: HeaderMap) -> Result<Exchange, AttemptError> {
        let uri: http::Uri = url.parse().map_err(|_| AttemptError::Invalid(format!("`{}` is not a URL", redact_url(url))))?;
        let endpoint = self.shared.endpoints.for_url(&uri).map_err(AttemptError::Invalid)?;
        let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let exchange = self.exchange(&endpoint, method, &path, headers.clone(), Bytes::new()).await?;
        if exchange.status.is_redirection() {
            return self.follow_redirects(&endpoint, method, exchange, headers).await;
        }
        check_status(exchange).await
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the policy's attempts are spent,
    /// pausing with backoff between attempts.
    async fn with_retries<T, F, Fut>(&self, host: &str, mut attempt: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let policy = self.shared.settings.retry;
        let mut number = 1;
        loop {
            // On the heap: an exchange's state is ~11 KB, and without the box it would be part
            // of every registry call's future (a manifest served from the cache included),
            // which each request moves and copies whole.
            let error = match Box::pin(attempt()).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let retry_after = error.retry_after();
            let waits_too_long = retry_after.is_some_and(|d| d > retry::MAX_RETRY_AFTER);
            if !error.is_transient() || number >= policy.attempts || waits_too_long {
                return Err(error.into_final(host, number));
            }
            let pause = policy.delay(number, retry_after, fastrand::f64());
            tracing::debug!(host, attempt = number, error = ?error, pause_ms = pause.as_millis() as u64, "upstream attempt failed; retrying");
            metrics::upstream_retry(host, RetryKind::Request);
            glommio::timer::sleep(pause).await;
            number += 1;
        }
    }

    /// One exchange with a registry: cached authorization, one answer to a 401 challenge,
    /// redirects followed (without credentials across hosts), and non-2xx statuses as errors.
    async fn registry_exchange(&self, repo: &RemoteRepository, method: &Method, path: &str, headers: HeaderMap) -> Result<Exchange, AttemptError> {
        let endpoint = self.shared.endpoints.for_registry(&repo.host);
        let scope = repo.pull_scope();
        let mut authorization = self.cached_authorization(&repo.host, &scope).await;
        let mut challenged = false;
        loop {
            let mut request_headers = headers.clone();
            if let Some(value) = &authorization {
                request_headers.insert(header::AUTHORIZATION, value.clone());
            }
            let exchange = self.exchange(&endpoint, method, path, request_headers, Bytes::new()).await?;
            match exchange.status {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    // The 401 lets go of its connection before the token is fetched: the realm
                    // is often this very origin (ghcr.io/token), and with its slots all held by
                    // such 401s the token request would wait for itself.
                    let challenge = exchange.discard().await;
                    authorization = Some(self.answer_challenge(repo, &scope, &challenge).await?);
                }
                StatusCode::UNAUTHORIZED => {
                    self.shared.tokens.forget(&repo.host, &scope);
                    return Err(AttemptError::Unauthorized);
                }
                status if status.is_redirection() => return self.follow_redirects(&endpoint, method, exchange, headers).await,
                _ => return check_status(exchange).await,
            }
        }
    }

    async fn cached_authorization(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = self.shared.tokens.get(host, scope, self.shared.clock.now_ms()) {
            return auth::bearer_header(&token);
        }
        let wants_basic = self.shared.basic_hosts.read().is_ok_and(|hosts| hosts.contains(host));
        if wants_basic {
            return self.credential(host).await.and_then(|c| c.basic_header());
        }
        None
    }

    /// The credential for `host`, the docker config file re-read first (on the blocking pool)
    /// if it is due a look.
    async fn credential(&self, host: &str) -> Option<Credential> {
        let store = &self.shared.credentials;
        if store.check_due(self.shared.clock.now_ms()) {
            let refreshing = Arc::clone(store);
            run_blocking(move || refreshing.refresh()).await;
        }
        store.get(host)
    }

    /// Turns a 401's challenge into an `Authorization` value: a bearer token fetched from the
    /// realm (and cached), or our Basic credentials.
    async fn answer_challenge(&self, repo: &RemoteRepository, scope: &str, headers: &HeaderMap) -> Result<HeaderValue, AttemptError> {
        let challenge = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge)
            .ok_or(AttemptError::Unauthorized)?;
        let credential = self.credential(&repo.host).await;
        match challenge {
            Challenge::Basic => {
                let header = credential.and_then(|c| c.basic_header()).ok_or(AttemptError::Unauthorized)?;
                if let Ok(mut hosts) = self.shared.basic_hosts.write() {
                    hosts.insert(repo.host.clone());
                }
                Ok(header)
            }
            Challenge::Bearer { realm, service, scope: challenged_scope } => {
                let scope = challenged_scope.unwrap_or_else(|| scope.to_owned());
                let (token, expires) = self.fetch_token(&realm, service.as_deref(), &scope, credential.as_ref()).await?;
                let value = auth::bearer_header(&token).ok_or_else(|| AttemptError::Invalid("unusable token".into()))?;
                self.shared.tokens.put(&repo.host, &repo.pull_scope(), token, expires, self.shared.clock.now_ms());
                Ok(value)
            }
        }
    }

    /// The distribution token flow: GET the realm with service and scope (Basic credentials if
    /// we have them), or POST an OAuth2 refresh-token grant for an identity token.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str, credential: Option<&auth::Credential>) -> Result<(Secret, u64), AttemptError> {
        let uri: http::Uri = realm.parse().map_err(|_| AttemptError::Invalid("token realm is not a URL".into()))?;
        let endpoint = self.shared.endpoints.for_url(&uri).map_err(AttemptError::Invalid)?;
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut headers = HeaderMap::new();
        let (method, path, body) = match credential {
            Some(auth::Credential::IdentityToken(token)) => {
                let mut form = query.clone();
                form.extend([("grant_type", "refresh_token"), ("refresh_token", token.expose()), ("client_id", "registry-facade")]);
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
                (Method::POST, uri.path().to_owned(), Bytes::from(encode_query(&form)))
            }
            other => {
                if let Some(basic) = other.and_then(|c| c.basic_header()) {
                    headers.insert(header::AUTHORIZATION, basic);
                }
                let separator = if uri.query().is_some() { '&' } else { '?' };
                let existing = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                (Method::GET, format!("{}{existing}{separator}{}", uri.path(), encode_query(&query)), Bytes::new())
            }
        };
        let exchange = self.exchange(&endpoint, &method, &path, headers, body).await?;
        let status = exchange.status;
        let bytes = exchange.body.collect(SMALL_BODY_LIMIT, self.shared.settings.read_timeout).await?;
        match status {
            s if s.is_success() => auth::parse_token_response(&bytes, self.shared.clock.now_ms()).map_err(AttemptError::Invalid),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(AttemptError::Unauthorized),
            s => Err(AttemptError::Status { status: s.as_u16(), retry_after: None, code: None }),
        }
    }

    async fn follow_redirects(&self, origin: &Endpoint, method: &Method, mut redirect: Exchange, headers: HeaderMap) -> Result<Exchange, AttemptError> {
        let mut current = origin.clone();
        for _ in 0..MAX_REDIRECTS {
            // Each redirect lets go of its connection before the next request takes one (a
            // redirect within the origin would otherwise wait for its own slot).
            let redirect_headers = redirect.discard().await;
            let location = header_str(&redirect_headers, header::LOCATION).ok_or_else(|| AttemptError::Invalid("redirect without Location".into()))?;
            let uri: http::Uri = location.parse().map_err(|_| AttemptError::Invalid("redirect to a bad URL".into()))?;
            if uri.scheme().is_some() {
                current = self.shared.endpoints.for_url(&uri).map_err(AttemptError::Invalid)?;
            }
            let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
            // Credentials never follow a redirect to another host (distribution spec).
            let mut next_headers = headers.clone();
            next_headers.remove(header::AUTHORIZATION);
            let exchange = self.exchange(&current, method, &path, next_headers, Bytes::new()).await?;
            if !exchange.status.is_redirection() {
                return check_status(exchange).await;
            }
            redirect = exchange;
        }
        Err(AttemptError::Invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// One request on a pooled connection, waiting at most the response timeout for its head.
    async fn exchange(&self, endpoint: &Endpoint, method: &Method, path: &str, headers: HeaderMap, body: Bytes) -> Result<Exchange, AttemptError> {
        let shared = &self.shared;
        let (sender, permit) = connection::checkout(endpoint, &shared.connect).await?;
        let request = build_request(endpoint, sender.is_h2(), method, path, headers, body)?;
        let sent = Instant::now();
        let response = within(shared.settings.response_timeout, sender.send(request))
            .await
            .ok_or(AttemptError::Timeout("response head"))??;
        metrics::upstream_response(&endpoint.authority(), sent.elapsed());
        let (parts, incoming) = response.into_parts();
        let body = UpstreamBody::new(incoming, endpoint.clone(), shared.connect, sender, permit);
        Ok(Exchange { status: parts.status, headers: parts.headers, body })
    }
}

impl Exchange {
    /// Reads what little body there is (so an HTTP/1.1 connection can be used again), lets
    /// go of the connection and its slot, and returns the headers. A body that is large or
    /// slow is dropped unread instead: that connection is closed.
    async fn discard(self) -> HeaderMap {
        let _ = self.body.collect(SMALL_BODY_LIMIT, DISCARD_STALL).await;
        self.headers
    }
}

/// The request for `path` at `endpoint`: over h2 the URI carries the origin (its
/// `:authority`), over HTTP/1.1 the `Host` header does; neither names the scheme's default
/// port.
fn build_request(endpoint: &Endpoint, h2: bool, method: &Method, path: &str, mut headers: HeaderMap, body: Bytes) -> Result<http::Request<RequestBody>, AttemptError> {
    let uri = if h2 { format!("{}{path}", endpoint.origin()) } else { path.to_owned() };
    if !h2 {
        let host = HeaderValue::try_from(endpoint.host_header()).map_err(|_| AttemptError::Invalid("bad host".into()))?;
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, USER_AGENT);
    let mut request = http::Request::new(RequestBody::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.parse().map_err(|_| AttemptError::Invalid(format!("bad request path {path}")))?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Passes 2xx through; turns anything else into the attempt error it is (with the upstream's
/// OCI error code for a 404, and `Retry-After` for 429/503).
async fn check_status(exchange: Exchange) -> Result<Exchange, AttemptError> {
    let status = exchange.status;
    if status.is_success() {
        return Ok(exchange);
    }
    if status == StatusCode::FORBIDDEN {
        return Err(AttemptError::Denied);
    }
    let retry_after = header_str(&exchange.headers, header::RETRY_AFTER)
        .and_then(|v| retry::parse_retry_after(&v, std::time::SystemTime::now()));
    let code = if status == StatusCode::NOT_FOUND {
        let body = exchange.body.collect(SMALL_BODY_LIMIT, Duration::from_secs(5)).await.unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
    } else {
        None
    };
    Err(AttemptError::Status { status: status.as_u16(), retry_after, code })
}

/// Request headers that ask for the manifest types in `accept`.
fn accept_headers(accept: &str) -> Result<HeaderMap, UpstreamError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::try_from(accept).map_err(|_| UpstreamError::Config("bad Accept".into()))?);
    Ok(headers)
}

fn header_str(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_host_without_the_default_port() {
        let endpoints = Endpoints::new(&BTreeMap::new()).unwrap();
        let request = |url: &str, h2: bool| {
            let endpoint = endpoints.for_url(&url.parse().unwrap()).unwrap();
            build_request(&endpoint, h2, &Method::GET, "/bucket/layer?X-Amz-Signature=s", HeaderMap::new(), Bytes::new()).unwrap()
        };
        let h1 = request("https://s3.example/", false);
        assert_eq!((h1.headers()[header::HOST].to_str().unwrap(), h1.uri().to_string().as_str()), ("s3.example", "/bucket/layer?X-Amz-Signature=s"));
        let h2 = request("https://s3.example:443/", true);
        assert_eq!((h2.uri().authority().map(|a| a.as_str()), h2.headers().get(header::HOST)), (Some("s3.example"), None));
        assert_eq!(h2.uri().to_string(), "https://s3.example/bucket/layer?X-Amz-Signature=s");
        let other_port = request("http://minio.example:9000/", false);
        assert_eq!(other_port.headers()[header::HOST], "minio.example:9000");
        let plain = request("http://gw.example/", false);
        assert_eq!(plain.headers()[header::HOST], "gw.example");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(encode_query(&[("scope", "repository:a/b:pull"), ("service", "x y")]), "scope=repository%3Aa%2Fb%3Apull&service=x%20y");
    }
}
