//! The HTTP face of the facade: connections served by hyper over `transport`, the pull API
//! dispatched to the registry, bodies and responses, client credentials, TLS settings and the
//! admin API. Reaches the cache, specs and upstreams only through `registry`.

mod admin;
mod auth;
mod blobserve;
mod body;
mod connection;
mod dispatch;
mod failure;
mod multipart;
mod protocol;
mod reload;
mod response;
mod tls;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};

pub use auth::{AuthSettings, CredentialStore};
pub use connection::{refuse, serve_connection, Refusal};
pub use tls::{TlsConfig, TlsSettings};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::{PrefetchRef, Registry};
use crate::transport::{GlommioTimer, LocalExec};

/// Connection behaviour, from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Time allowed for a complete HTTP/1.1 request head, from its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no I/O for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, h2 header list) accepted.
    pub max_header_bytes: usize,
    /// Concurrent h2 streams one connection may open (`limits.maxStreamsPerConnection`).
    pub max_streams_per_connection: u32,
    /// To which plain HTTP/1.1 clients cached blobs go out with sendfile.
    pub sendfile: Sendfile,
    /// How long a blobserve answer may take (`blobserve.timeout`); `None`: `idle_timeout`.
    pub blobserve_timeout: Option<std::time::Duration>,
}

/// To which clients cached blobs go out with `sendfile(2)` (plain HTTP/1.1 only; TLS and h2
/// always copy). sendfile saves the server its copy. Towards a receiver on this host under a
/// pacing congestion control (BBR), the socket's long sendfile queue leaves in softirq work
/// on the receiver's time, which cost it more than the server saved. Under the listener's
/// default congestion control (`tcpCongestion`: `cubic`), sendfile to every client is the
/// cheaper choice: a warm 100-workspace pullstorm took 4.5-4.9 s of CPU in all, against
/// 5.2-5.9 s with copies to local clients under BBR. `Remote` remains for hosts that keep a
/// pacing congestion control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sendfile {
    /// Clients on other hosts; a client on this host (loopback, or our own address) gets
    /// copies, except of bytes read close behind a running fill (sent by sendfile).
    Remote,
    #[default]
    Always,
    Never,
}

/// TLS and client authentication for the registry listener, built and reloaded by the
/// caller; shared by every executor. The admin listener never uses them.
#[derive(Clone, Default)]
pub struct HttpSecurity {
    pub tls: Option<Arc<TlsConfig>>,
    pub auth: Option<(AuthSettings, Arc<CredentialStore>)>,
}

/// Which API a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The OCI pull API, for clients.
    Registry,
    /// The admin API (specs), for orchestrators; never on the public port.
    Admin,
    /// The files inside images, for browsers (`blobserve.listen`).
    Blobserve,
}

/// What every listener of every executor serves from, built once by the caller.
#[derive(Clone)]
pub struct Served {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// What connection timeouts and credential caches read.
    pub clock: Clock,
    /// Images prefetched in the background once the server is up (`prefetch`).
    pub prefetch_at_start: Vec<PrefetchRef>,
}

/// What every connection of one listener on one executor shares: what it serves, the role
/// and the configured hyper builders. `!Send`: it lives on its executor.
pub struct HttpContext {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Clock,
    settings: HttpSettings,
    role: Role,
    builders: protocol::Builders,
    tls: Option<reload::LocalView<Arc<rustls::ServerConfig>>>,
    auth: Option<auth::Authenticator>,
}

/// The largest number of request headers accepted on HTTP/1.1.
const MAX_HEADERS: usize = 100;

impl HttpContext {
    pub fn new(served: &Served, settings: HttpSettings, role: Role, security: &HttpSecurity) -> Rc<HttpContext> {
        let mut http1 = http1::Builder::new();
        http1
            .timer(GlommioTimer)
            .keep_alive(true)
            // Our connection watchdog times request heads; hyper's own timer would cost a
            // timer per request.
            .header_read_timeout(None)
            .max_buf_size(settings.max_header_bytes)
            .max_headers(MAX_HEADERS);
        let mut http2 = http2::Builder::new(LocalExec);
        http2
            .timer(GlommioTimer)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.max_streams_per_connection)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builders = protocol::Builders { http1, http2 };
        let (tls, auth) = match role {
            Role::Registry => (
                security.tls.as_ref().map(|config| reload::LocalView::new(Arc::clone(config))),
                security.auth.as_ref().map(|(settings, store)| auth::Authenticator::new(settings, Arc::clone(store), served.clock.clone())),
            ),
            Role::Admin | Role::Blobserve => (None, None),
        };
        Rc::new(HttpContext {
            registry: Arc::clone(&served.registry),
            metrics: Arc::clone(&served.metrics),
            clock: served.clock.clone(),
            settings,
            role,
            builders,
            tls,
            auth,
        })
    }

    /// The acceptor for a new connection with the current certificate; `None`: plain TCP.
    fn tls_acceptor(&self) -> Option<futures_rustls::TlsAcceptor> {
        self.tls.as_ref().map(|view| view.with(|config| futures_rustls::TlsAcceptor::from(Arc::clone(&**config))))
    }
}
