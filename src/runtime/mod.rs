//! The executors: one glommio executor per core, pinned, each accepting on its own
//! SO_REUSEPORT socket and owning its connections; start, graceful drain and stop.

mod limits;
mod listener;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::sync::Gate;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};

pub use limits::LimitSettings;
pub use listener::TcpCongestion;
pub use shutdown::ShutdownKind;

use crate::http::{self, HttpContext, HttpSecurity, HttpSettings, Role, Served};
use crate::registry::DEFAULT_PREFETCH_CONCURRENCY;
use limits::ConnectionLimits;
use shutdown::{Drain, ShutdownSignal};

/// glommio's DMA buffer pool per executor. We do no O_DIRECT file I/O, and the default
/// (10 MiB) would not fit an 8 MiB memlock limit once there are two executors.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// Threads in each executor's blocking pool (file I/O, hashing, DNS).
const BLOCKING_THREADS: usize = 2;
/// Back-off after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
/// Refusals being answered at once per executor; past it a connection over a limit is
/// closed without an answer, so a flood costs no more than this.
const MAX_REFUSALS_IN_PROGRESS: usize = 256;

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub listen: SocketAddr,
    /// The admin API's address, served by the first executor; `None`: no admin API.
    pub admin_listen: Option<SocketAddr>,
    /// Blobserve's address, served by every executor; `None`: off.
    pub blobserve_listen: Option<SocketAddr>,
    /// Executors to run; `None`: one per CPU this process may use.
    pub cores: Option<usize>,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    pub http: HttpSettings,
    pub limits: LimitSettings,
    /// The TCP congestion control of the registry listener's connections.
    pub tcp_congestion: TcpCongestion,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cores: {requested} requested, but this process may only use {available} CPUs")]
    TooManyCores { requested: usize, available: usize },
    #[error("executor {core} failed: {reason}")]
    Executor { core: usize, reason: String },
    #[error("tcpCongestion: the kernel refused `{name}` ({source}); available: {available}; allowed without CAP_NET_ADMIN: {allowed}; \"system\" keeps the kernel's default")]
    Congestion { name: String, source: std::io::Error, available: String, allowed: String },
}

/// A running server; dropping it does not stop it (use `stopper` and `join`).
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    blobserve_addr: Option<SocketAddr>,
    executors: Vec<ExecutorJoinHandle<()>>,
    signal: Arc<ShutdownSignal>,
}

/// Stops a server from any thread.
#[derive(Clone)]
pub struct Stopper(Arc<ShutdownSignal>);

impl Stopper {
    pub fn stop(&self, kind: ShutdownKind) {
        self.0.trigger(kind);
    }
}

impl Server {
    /// Binds the listen address and starts one pinned executor per core; returns once every
    /// executor is accepting.
    ///
    /// # Errors
    /// The address cannot be bound, more cores are asked for than exist, or an executor cannot
    /// start (e.g. RLIMIT_MEMLOCK below glommio's 512 KiB minimum).
    pub fn start(settings: RuntimeSettings, served: Served, security: HttpSecurity) -> Result<Server, RuntimeError> {
        let cpus = usable_cpus();
        let count = settings.cores.unwrap_or(cpus.len()).max(1);
        if count > cpus.len() {
            return Err(RuntimeError::TooManyCores { requested: count, available: cpus.len() });
        }
        raise_open_file_limit();
        let (sockets, local_addr) = listener::bind_all(settings.listen, count, &settings.tcp_congestion)?;
        let admin = settings.admin_listen.map(|addr| listener::bind_all(addr, 1, &TcpCongestion::System)).transpose()?;
        let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
        let mut admin_socket = admin.and_then(|(mut sockets, _)| sockets.pop());
        // Browsers' connections, like clients', are spread over every executor, with the same
        // congestion control (`tcpCongestion`: a pacing one costs local receivers CPU).
        let blobserve = settings.blobserve_listen.map(|addr| listener::bind_all(addr, count, &settings.tcp_congestion)).transpose()?;
        let blobserve_addr = blobserve.as_ref().map(|(_, addr)| *addr);
        let mut blobserve_sockets = blobserve.map(|(sockets, _)| sockets).unwrap_or_default().into_iter();
        // One waker slot per accept loop: one per executor, the admin loop's, and one per
        // executor for blobserve.
        let admin_slot = count;
        let signal = ShutdownSignal::new(2 * count + 1);
        let limits = ConnectionLimits::new(settings.limits);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut executors = Vec::with_capacity(count);
        for (core, (socket, cpu)) in sockets.into_iter().zip(cpus).enumerate() {
            let shard = Shard {
                core,
                socket,
                admin_socket: if core == 0 { admin_socket.take() } else { None },
                admin_slot,
                blobserve_socket: blobserve_sockets.next(),
                blobserve_slot: count + 1 + core,
                served: served.clone(),
                settings: settings.clone(),
                security: security.clone(),
                limits: Arc::clone(&limits),
                signal: Arc::clone(&signal),
                ready: ready_tx.clone(),
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("rf-core-{core}"))
                .io_memory(IO_MEMORY_BYTES)
                // Hashing and writing fills runs on the blocking pool; pinned to the executor's
                // CPU (glommio's default) it would compete with the executor for one core.
                .blocking_thread_pool_placement(PoolPlacement::Unbound(BLOCKING_THREADS))
                .spawn(move || shard.run())
                .map_err(|e| executor_failed(core, &e.to_string()))?;
            executors.push(handle);
        }
        drop(ready_tx);
        let server = Server { local_addr, admin_addr, blobserve_addr, executors, signal };
        server.wait_ready(&ready_rx, count)
    }

    /// Waits for every executor's readiness; if one exits first, stops the others and returns
    /// its error.
    fn wait_ready(mut self, ready: &mpsc::Receiver<usize>, count: usize) -> Result<Server, RuntimeError> {
        // Each executor sends once and then drops its sender, so `recv` fails only when an
        // executor exited without becoming ready.
        if (0..count).all(|_| ready.recv().is_ok()) {
            return Ok(self);
        }
        self.signal.trigger(ShutdownKind::Immediate);
        let failure = self.executors.drain(..).enumerate().find_map(|(core, handle)| {
            handle.join().err().map(|e| executor_failed(core, &e.to_string()))
        });
        Err(failure.unwrap_or(RuntimeError::Executor { core: 0, reason: "exited during start".into() }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn blobserve_addr(&self) -> Option<SocketAddr> {
        self.blobserve_addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.signal))
    }

    /// Waits until every executor has stopped.
    ///
    /// # Errors
    /// An executor thread failed.
    pub fn join(self) -> Result<(), RuntimeError> {
        for (core, handle) in self.executors.into_iter().enumerate() {
            handle.join().map_err(|e| RuntimeError::Executor { core, reason: e.to_string() })?;
        }
        Ok(())
    }
}

/// An executor that could not start or run. glommio's io_uring set-up fails with a message
/// about kernel versions when the kernel is fine but a seccomp profile (Docker's default)
/// blocks io_uring: say so, and where the fix is.
fn executor_failed(core: usize, reason: &str) -> RuntimeError {
    let io_uring = ["io_uring", "kernel should be", "Operation not permitted", "Function not implemented"].iter().any(|s| reason.contains(s));
    let reason = if io_uring {
        format!("{reason} (io_uring is unavailable: the kernel is older than 5.8, or a seccomp profile such as Docker's default blocks io_uring_setup; see docs/seccomp-io_uring.md)")
    } else {
        reason.to_owned()
    };
    RuntimeError::Executor { core, reason }
}

/// Everything one executor needs, moved onto its thread.
struct Shard {
    core: usize,
    socket: OwnedFd,
    admin_socket: Option<OwnedFd>,
    admin_slot: usize,
    blobserve_socket: Option<OwnedFd>,
    blobserve_slot: usize,
    served: Served,
    settings: RuntimeSettings,
    security: HttpSecurity,
    limits: Arc<ConnectionLimits>,
    signal: Arc<ShutdownSignal>,
    ready: mpsc::Sender<usize>,
}

/// What an accept loop hands each connection.
struct Acceptor {
    ctx: Rc<HttpContext>,
    connections: Gate,
    drain: Rc<Drain>,
    /// `None` for the admin listener: an orchestrator is never refused for the public
    /// port's load.
    limits: Option<Arc<ConnectionLimits>>,
    refusing: Rc<std::cell::Cell<usize>>,
}

impl Shard {
    async fn run(self) {
        let Shard { core, socket, admin_socket, admin_slot, blobserve_socket, blobserve_slot, served, settings, security, limits, signal, ready } = self;
        // Before anything is served here, so every record on this thread lands in this core's series.
        served.metrics.enter_core(core);
        let listener = listener_from(socket);
        let connections = Gate::new();
        let drain = Drain::new();
        let public = Acceptor {
            ctx: HttpContext::new(&served, settings.http.clone(), Role::Registry, &security),
            connections: connections.clone(),
            drain: Rc::clone(&drain),
            limits: Some(Arc::clone(&limits)),
            refusing: Rc::default(),
        };
        let admin = admin_socket.map(|socket| {
            let acceptor = Acceptor {
                ctx: HttpContext::new(&served, settings.http.clone(), Role::Admin, &HttpSecurity::default()),
                connections: connections.clone(),
                drain: Rc::clone(&drain),
                limits: None,
                refusing: Rc::default(),
            };
            let signal = Arc::clone(&signal);
            glommio::spawn_local(async move {
                let listener = listener_from(socket);
                accept_until_stopped(&listener, &acceptor, &signal, admin_slot).await
            })
        });
        let blobserve = blobserve_socket.map(|socket| {
            let acceptor = Acceptor {
                ctx: HttpContext::new(&served, settings.http.clone(), Role::Blobserve, &HttpSecurity::default()),
                connections: connections.clone(),
                drain: Rc::clone(&drain),
                limits: Some(Arc::clone(&limits)),
                refusing: Rc::default(),
            };
            let signal = Arc::clone(&signal);
            glommio::spawn_local(async move {
                let listener = listener_from(socket);
                accept_until_stopped(&listener, &acceptor, &signal, blobserve_slot).await
            })
        });
        if core == 0 {
            // Blobserve's pre-pull lists, prepared in the background once this core serves.
            if let Some(prepull) = served.registry.blobserve_prepull() {
                glommio::spawn_local(prepull).detach();
            }
        }
        // Sending and dropping the sender is what `Server::wait_ready` counts on.
        let _ = ready.send(core);
        drop(ready);
        // Warming the cache never holds up readiness: it runs beside the accept loop.
        if core == 0 && !served.prefetch_at_start.is_empty() {
            served.registry.start_prefetch(served.prefetch_at_start.clone(), DEFAULT_PREFETCH_CONCURRENCY);
        }
        let kind = accept_until_stopped(&listener, &public, &signal, core).await;
        // Closing our sockets refuses new connections; in-flight ones are told to finish.
        drop(listener);
        if let Some(admin) = admin {
            admin.await;
        }
        if let Some(blobserve) = blobserve {
            blobserve.await;
        }
        drain.start();
        if kind == ShutdownKind::Graceful {
            drain_within_grace(&connections, settings.shutdown_grace, &signal, core).await;
        }
    }
}

fn listener_from(socket: OwnedFd) -> TcpListener {
    // SAFETY: the descriptor is a bound, listening TCP socket we own, handed over once.
    unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) }
}

/// Waits for open connections to finish, at most `grace`, and less if an immediate stop
/// follows.
async fn drain_within_grace(connections: &Gate, grace: Duration, signal: &Arc<ShutdownSignal>, core: usize) {
    let mut closed = pin!(connections.close());
    let mut deadline = pin!(glommio::timer::sleep(grace));
    let mut escalated = pin!(signal.reached(core, ShutdownKind::Immediate));
    let drained = std::future::poll_fn(|cx| {
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if deadline.as_mut().poll(cx).is_ready() || escalated.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await;
    if !drained {
        tracing::warn!(core, "connections still open at the end of the shutdown grace period are closed");
    }
}

/// Accepts until the stop signal; `slot` is this loop's own waker slot in the signal.
async fn accept_until_stopped(listener: &TcpListener, acceptor: &Acceptor, signal: &Arc<ShutdownSignal>, slot: usize) -> ShutdownKind {
    let mut stop = pin!(signal.reached(slot, ShutdownKind::Graceful));
    loop {
        let mut accept = pin!(listener.accept());
        let accepted = std::future::poll_fn(|cx| {
            if let Poll::Ready(kind) = stop.as_mut().poll(cx) {
                return Poll::Ready(Err(kind));
            }
            accept.as_mut().poll(cx).map(Ok)
        })
        .await;
        match accepted {
            Err(kind) => return kind,
            Ok(Ok(stream)) => acceptor.take(stream),
            Ok(Err(e)) => {
                tracing::warn!(slot, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

impl Acceptor {
    /// Serves an accepted connection, or refuses it if it is over a limit.
    fn take(&self, stream: glommio::net::TcpStream) {
        let admission = match &self.limits {
            None => None,
            Some(limits) => match limits.admit(|| stream.peer_addr().ok().map(|a| a.ip())) {
                Ok(admission) => Some(admission),
                Err(refusal) => return self.refuse(stream, refusal),
            },
        };
        // Boxed: each async wrapper around a future (ours, the gate's) stores it twice (as the
        // captured value and as the awaited one), so the 4.7 KB connection future would cost
        // ~19 KB per connection inline and costs its own size behind a pointer.
        let connection = Box::pin(http::serve_connection(stream, Rc::clone(&self.ctx), self.drain.notice()));
        // The gate is open until the accept loop ends, so spawning cannot fail here.
        if let Ok(task) = self.connections.spawn(async move {
            connection.await;
            drop(admission);
        }) {
            task.detach();
        }
    }

    fn refuse(&self, stream: glommio::net::TcpStream, refusal: http::Refusal) {
        crate::metrics::connection_refused(match refusal {
            http::Refusal::ServerFull => crate::metrics::Refusal::ServerFull,
            http::Refusal::ClientFull => crate::metrics::Refusal::ClientFull,
        });
        if self.refusing.get() >= MAX_REFUSALS_IN_PROGRESS {
            return tracing::debug!(?refusal, "closing a connection over a limit without an answer: too many refusals in progress");
        }
        tracing::debug!(?refusal, "refusing a connection over a limit");
        self.refusing.set(self.refusing.get() + 1);
        let (ctx, refusing) = (Rc::clone(&self.ctx), Rc::clone(&self.refusing));
        glommio::spawn_local(async move {
            http::refuse(stream, ctx, refusal).await;
            refusing.set(refusing.get() - 1);
        })
        .detach();
    }
}

/// Raises the soft limit on open files to the hard limit: every connection and every cached
/// blob (held open for sendfile) is a descriptor, and the usual soft limit of 1024 is far
/// below what a node daemon needs. Failing to raise it is not fatal.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = limit.rlim_cur, "cannot raise the open-file limit");
            }
        }
    }
}

/// The CPUs this process may run on (its affinity mask), lowest first.
fn usable_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for pid 0
    // (this thread) and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}
