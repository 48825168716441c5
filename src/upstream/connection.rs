//! Connections to upstream origins: DNS on the blocking pool (cached), TCP and TLS with
//! timeouts, HTTP/1.1 or h2 by ALPN, and a keep-alive pool per executor and origin that also
//! bounds how many requests one executor has in flight to one origin.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::{Semaphore, StaticPermit};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use super::endpoint::{Endpoint, Scheme};
use super::error::AttemptError;
use crate::clock::within;
use crate::blocking::run_blocking;
use crate::transport::{ClientIo, GlommioTimer, LocalExec};

/// Resolved addresses are reused for this long.
const DNS_TTL: Duration = Duration::from_secs(30);
/// h2 receive windows sized for blob downloads (the 64 KiB defaults throttle them).
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

#[derive(Debug, Clone, Copy)]
pub struct ConnectSettings {
    pub connect_timeout: Duration,
    pub tls_timeout: Duration,
    pub max_per_origin: usize,
}

pub type RequestBody = Full<Bytes>;

#[derive(Clone)]
pub enum Sender {
    H1(Rc<RefCell<Option<http1::SendRequest<RequestBody>>>>),
    H2(http2::SendRequest<RequestBody>),
}

impl Sender {
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    pub async fn send(&self, request: http::Request<RequestBody>) -> Result<http::Response<Incoming>, AttemptError> {
        let broken = |e: hyper::Error| AttemptError::Broken(e.to_string());
        match self {
            Sender::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await.map_err(broken)?;
                sender.send_request(request).await.map_err(broken)
            }
            Sender::H1(slot) => {
                let taken = slot.borrow_mut().take();
                let mut sender = taken.ok_or_else(|| AttemptError::Broken("connection already in use".into()))?;
                sender.ready().await.map_err(broken)?;
                let response = sender.send_request(request).await;
                *slot.borrow_mut() = Some(sender);
                response.map_err(broken)
            }
        }
    }

    fn reusable(&self) -> bool {
        match self {
            Sender::H2(sender) => !sender.is_closed(),
            // Readiness is awaited in `send`: right after a body ends the connection task may
            // not have run yet, and such a connection is still a good one.
            Sender::H1(slot) => slot.borrow().as_ref().is_some_and(|s| !s.is_closed()),
        }
    }
}

struct OriginPool {
    h2: Option<Sender>,
    idle_h1: Vec<Sender>,
    limit: Rc<Semaphore>,
}

/// Resolved addresses of `(host, port)` and when they were looked up.
type DnsCache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

thread_local! {
    static POOLS: RefCell<HashMap<String, OriginPool>> = RefCell::new(HashMap::new());
    static DNS: RefCell<DnsCache> = RefCell::new(HashMap::new());
}

fn with_pool<T>(endpoint: &Endpoint, settings: &ConnectSettings, f: impl FnOnce(&mut OriginPool) -> T) -> T {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let pool = pools.entry(endpoint.key()).or_insert_with(|| OriginPool {
            h2: None,
            idle_h1: Vec::new(),
            limit: Rc::new(Semaphore::new(settings.max_per_origin.max(1) as u64)),
        });
        f(pool)
    })
}

/// A connection (pooled or new) and the permit that counts it against the origin's limit.
/// Waiting for a permit is not bounded here: under load it is a fair queue behind downloads
/// whose bodies have their own read timeouts, and every permit is let go once its response
/// is (the 401s and redirects included: see `Exchange::discard`).
pub async fn checkout(endpoint: &Endpoint, settings: &ConnectSettings) -> Result<(Sender, StaticPermit), AttemptError> {
    let limit = with_pool(endpoint, settings, |pool| Rc::clone(&pool.limit));
    let permit = limit.acquire_static_permit(1).await.map_err(|e| AttemptError::Connect(e.to_string()))?;
    let pooled = with_pool(endpoint, settings, |pool| {
        if let Some(h2) = pool.h2.as_ref().filter(|s| s.reusable()) {
            return Some(h2.clone());
        }
        pool.h2 = None;
        while let Some(sender) = pool.idle_h1.pop() {
            if sender.reusable() {
                return Some(sender);
            }
        }
        None
    });
    if let Some(sender) = pooled {
        return Ok((sender, permit));
    }
    let sender = open(endpoint, settings).await?;
    if sender.is_h2() {
        with_pool(endpoint, settings, |pool| pool.h2 = Some(sender.clone()));
    }
    Ok((sender, permit))
}

/// Returns an HTTP/1.1 connection whose last response was read to the end.
pub fn checkin(endpoint: &Endpoint, settings: &ConnectSettings, sender: Sender) {
    if sender.is_h2() || !sender.reusable() {
        return;
    }
    with_pool(endpoint, settings, |pool| {
        if pool.idle_h1.len() < settings.max_per_origin {
            pool.idle_h1.push(sender);
        }
    });
}

async fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>, AttemptError> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port)]);
    }
    let key = (endpoint.host.clone(), endpoint.port);
    let cached = DNS.with(|dns| dns.borrow().get(&key).filter(|(_, at)| at.elapsed() < DNS_TTL).map(|(a, _)| a.clone()));
    if let Some(addrs) = cached {
        return Ok(addrs);
    }
    // getaddrinfo blocks: it runs on the blocking pool, never on the executor thread.
    let lookup = key.clone();
    let addrs = run_blocking(move || lookup.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
        .await
        .map_err(|e| AttemptError::Connect(format!("cannot resolve {}: {e}", endpoint.host)))?;
    if addrs.is_empty() {
        return Err(AttemptError::Connect(format!("{} has no address", endpoint.host)));
    }
    DNS.with(|dns| dns.borrow_mut().insert(key, (addrs.clone(), Instant::now())));
    Ok(addrs)
}

async fn open(endpoint: &Endpoint, settings: &ConnectSettings) -> Result<Sender, AttemptError> {
    let mut last_error = AttemptError::Connect(format!("no address for {}", endpoint.host));
    for addr in resolve(endpoint).await? {
        let stream = match glommio::net::TcpStream::connect_timeout(addr, settings.connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                last_error = AttemptError::Connect(format!("connect to {addr}: {e}"));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        return match (endpoint.scheme, &endpoint.tls) {
            (Scheme::Https, Some(tls)) => handshake_tls(endpoint, tls, stream, settings).await,
            _ => handshake_h1(ClientIo::new(stream)).await,
        };
    }
    Err(last_error)
}

async fn handshake_tls(
    endpoint: &Endpoint,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    stream: glommio::net::TcpStream,
    settings: &ConnectSettings,
) -> Result<Sender, AttemptError> {
    let name = endpoint.server_name().map_err(AttemptError::Connect)?;
    let connector = futures_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
    let tls_stream = within(settings.tls_timeout, connector.connect(name, stream))
        .await
        .ok_or(AttemptError::Timeout("TLS handshake"))?
        .map_err(|e| AttemptError::Connect(format!("TLS with {}: {e}", endpoint.authority())))?;
    if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        handshake_h2(ClientIo::new(tls_stream)).await
    } else {
        handshake_h1(ClientIo::new(tls_stream)).await
    }
}

async fn handshake_h1<S>(io: ClientIo<S>) -> Result<Sender, AttemptError>
where
    ClientIo<S>: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(|e| AttemptError::Connect(e.to_string()))?;
    glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    })
    .detach();
    Ok(Sender::H1(Rc::new(RefCell::new(Some(sender)))))
}

async fn handshake_h2<S>(io: ClientIo<S>) -> Result<Sender, AttemptError>
where
    ClientIo<S>: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(LocalExec)
        .timer(GlommioTimer)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(io)
        .await
        .map_err(|e| AttemptError::Connect(e.to_string()))?;
    glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
    })
    .detach();
    Ok(Sender::H2(sender))
}

/// A response body from upstream. It holds its origin's permit, and gives an HTTP/1.1
/// connection back to the pool once read to the end.
pub struct UpstreamBody {
    incoming: Incoming,
    release: Option<(Endpoint, ConnectSettings, Sender)>,
    _permit: StaticPermit,
}

impl UpstreamBody {
    pub fn new(incoming: Incoming, endpoint: Endpoint, settings: ConnectSettings, sender: Sender, permit: StaticPermit) -> UpstreamBody {
        UpstreamBody { incoming, release: Some((endpoint, settings, sender)), _permit: permit }
    }

    /// The next data chunk; `Ok(None)` at the end. Waits at most `stall` for it.
    pub async fn chunk(&mut self, stall: Duration) -> Result<Option<Bytes>, AttemptError> {
        loop {
            let frame = within(stall, self.incoming.frame()).await.ok_or(AttemptError::Timeout("body stalled"))?;
            match frame {
                None => {
                    if let Some((endpoint, settings, sender)) = self.release.take() {
                        checkin(&endpoint, &settings, sender);
                    }
                    return Ok(None);
                }
                Some(Err(e)) => return Err(AttemptError::Broken(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, at most `limit` bytes.
    pub async fn collect(mut self, limit: usize, stall: Duration) -> Result<Bytes, AttemptError> {
        let mut collected = Vec::new();
        while let Some(chunk) = self.chunk(stall).await? {
            if collected.len() + chunk.len() > limit {
                return Err(AttemptError::Invalid(format!("response larger than {limit} bytes")));
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(collected))
    }
}
