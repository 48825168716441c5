//! One client connection: plain or TLS (handshake bounded by the header-read timeout), then
//! HTTP/1.1 or h2 served by hyper, with the idle timeout and a graceful end on drain; and the
//! short answer given to a connection over a limit.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::body::Incoming;

use super::failure::Failure;
use super::protocol::{Connection, Ended};
use super::{admin, blobserve, dispatch, response, HttpContext, Role, Sendfile};
use crate::clock::{within, within_on, Clock};
use crate::metrics;
use crate::transport::{
    set_nonblocking, AlignedTls, BatchOutbox, ConnectionState, HyperIo, Outbox, Protocol, SendfileUse, SharedSocket, Timeout, VectoredSocket,
};

/// The whole life of a refused connection (TLS handshake included): a client that does not
/// read its refusal in this time is simply closed.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

enum Event {
    Closed(Ended),
    Drain,
    TimeoutCheck,
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `limits.maxConnections` connections.
    ServerFull,
    /// This client address holds `limits.maxConnectionsPerClient` connections.
    ClientFull,
}

/// Serves a connection until the client leaves, a timeout hits (a handshake or request head
/// that takes too long, no request for too long, or answers that stop moving for as long),
/// or `drain` resolves (then in-flight requests finish and the connection closes).
pub async fn serve_connection(stream: TcpStream, ctx: Rc<HttpContext>, drain: impl Future<Output = ()>) {
    let _open = count_open(ctx.role);
    // Small responses must not wait for Nagle; a failure only costs latency.
    let _ = stream.set_nodelay(true);
    match ctx.tls_acceptor() {
        None => {
            let fd = stream.as_raw_fd();
            // sendfile has no MSG_DONTWAIT: without O_NONBLOCK it could block the executor.
            let raw_fd = set_nonblocking(fd).ok().map(|()| fd);
            let local = peer_is_local(&stream);
            let sendfile = if raw_fd.is_some() { sendfile_use(ctx.settings.sendfile, local) } else { SendfileUse::Never };
            // Remote clients and TLS keep the kernel's autotuning: with the bound, bench/tls.sh's
            // 16 TLS connections moved the same GiB/s for 20-50% more facade CPU.
            let sized_locally = (local && sendfile != SendfileUse::Always).then_some(fd);
            let state = ConnectionState::new(sendfile, sized_locally, ctx.clock.clone());
            let socket = SharedSocket::new(stream);
            let io = HyperIo::new(socket.clone(), raw_fd, Rc::clone(&state));
            let outbox = io.frames().map(|frames| Rc::new(BatchOutbox::new(frames, socket)) as Rc<dyn Outbox>);
            serve_http(io, None, outbox, state, ctx, drain).await;
        }
        Some(acceptor) => {
            let Some(tls) = handshake(&acceptor, stream, ctx.settings.header_read_timeout, &ctx.clock).await else { return };
            let protocol = negotiated(&tls);
            // TLS bytes must pass through rustls: no raw socket writes, no sendfile.
            let state = ConnectionState::new(SendfileUse::Never, None, ctx.clock.clone());
            let (tls, outbox) = AlignedTls::new(tls);
            serve_http(HyperIo::new(tls, None, Rc::clone(&state)), protocol, Some(outbox), state, ctx, drain).await;
        }
    }
}

/// Which bytes go with sendfile to a client that is `local` or not (see `Sendfile`).
fn sendfile_use(mode: Sendfile, local: bool) -> SendfileUse {
    match mode {
        Sendfile::Always => SendfileUse::Always,
        Sendfile::Never => SendfileUse::Never,
        Sendfile::Remote if local => SendfileUse::JustWritten,
        Sendfile::Remote => SendfileUse::Always,
    }
}

/// A client on this host: loopback, or connected from the address it reached us on.
fn peer_is_local(stream: &TcpStream) -> bool {
    match (stream.peer_addr(), stream.local_addr()) {
        (Ok(peer), Ok(local)) => {
            let peer = peer.ip().to_canonical();
            peer.is_loopback() || peer == local.ip().to_canonical()
        }
        // Unknown: taken as remote (sendfile is never wrong, only sometimes slower).
        _ => false,
    }
}

type TlsStream = futures_rustls::server::TlsStream<VectoredSocket<TcpStream>>;

/// The TLS handshake, bounded by `limit` on `clock`.
async fn handshake(acceptor: &futures_rustls::TlsAcceptor, stream: TcpStream, limit: Duration, clock: &Clock) -> Option<TlsStream> {
    match within_on(clock, limit, acceptor.accept(VectoredSocket::new(stream))).await {
        Some(Ok(tls)) => Some(tls),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        None => {
            tracing::debug!("closing a connection whose TLS handshake is too slow");
            None
        }
    }
}

/// The protocol the client chose with ALPN; `None`: it named none (its first bytes will say).
fn negotiated(tls: &TlsStream) -> Option<Protocol> {
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Protocol::H2),
        Some(b"http/1.1") => Some(Protocol::Http1),
        _ => None,
    }
}

/// `outbox`: where the stream holds written bytes until the connection's task has done what
/// it can for a wake-up (see `tls_stream`); they are sent after every poll of hyper.
async fn serve_http<S>(
    io: HyperIo<S>,
    protocol: Option<Protocol>,
    outbox: Option<Rc<dyn Outbox>>,
    activity: Rc<ConnectionState>,
    ctx: Rc<HttpContext>,
    drain: impl Future<Output = ()>,
)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let service_activity = Rc::clone(&activity);
    let service_ctx = Rc::clone(&ctx);
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let ctx = Rc::clone(&service_ctx);
        let in_flight = service_activity.begin_request();
        async move {
            // hyper keeps room for this future in every connection, idle or not; boxed, the
            // ~13 KB of a registry call's state exist only while a request is being answered.
            let mut response = match ctx.role {
                Role::Registry => {
                    // A read has no body to wait for: until the answer is made, only this
                    // server is working (and `dispatch` bounds that), so no stall clock runs.
                    let _preparing = in_flight.connection().preparing();
                    Box::pin(dispatch::handle(request, &ctx)).await
                }
                // An admin PUT reads its body from the client: the stall clock keeps running.
                Role::Admin => Box::pin(admin::handle(request, &ctx)).await,
                Role::Blobserve => {
                    // A first request may wait for an image to be prepared (bounded there).
                    let _preparing = in_flight.connection().preparing();
                    Box::pin(blobserve::handle(request, &ctx)).await
                }
            };
            response.body_mut().track(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let mut connection = pin!(Connection::new(&ctx.builders, io, service, protocol));
    let mut drain = pin!(drain);
    let idle_ms = ctx.settings.idle_timeout.as_millis() as u64;
    let header_ms = ctx.settings.header_read_timeout.as_millis() as u64;
    let mut closing = false;
    loop {
        // A clock a test moves forward: its move is a reason to look again, as the timer is.
        // Listening before the check, so that a move in between is not missed.
        let mut clock_moved = activity.clock().moved();
        let wait = match activity.check(idle_ms, header_ms) {
            Timeout::Wait(ms) => ms,
            Timeout::HeadTooSlow => return tracing::debug!("closing a connection whose request head is too slow"),
            Timeout::Stalled => return tracing::debug!("closing a connection that took nothing for the idle timeout while answers were due"),
            Timeout::Idle => {
                if !closing {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                idle_ms
            }
        };
        // At least a short step, so a busy connection is not re-checked in a tight loop.
        let step = Duration::from_millis(wait.max(10));
        let deadline = Instant::now() + step;
        let mut timer = pin!(glommio::timer::Timer::new(step));
        let mut timer_armed = false;
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Closed(result));
            }
            if let Some(held) = &outbox {
                let sent = held.poll_send_held(cx);
                activity.held_bytes_sent(&sent);
                if let Poll::Ready(Err(e)) = sent {
                    return Poll::Ready(Event::Closed(Err(e.into())));
                }
            }
            if !closing && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            // Every poll of a glommio timer re-inserts it into the reactor's BTreeMap, and this
            // task wakes on every socket event; once armed with this task's waker (which never
            // changes) it wakes us when due, so it is polled again only from then on. Its own
            // deadline is taken after ours, so it never fires before `deadline`. It runs while
            // closing too: a graceful end still waits for the client to take the answers.
            if !timer_armed || Instant::now() >= deadline {
                timer_armed = true;
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::TimeoutCheck);
                }
            }
            if let Some(moved) = clock_moved.as_mut() {
                if Pin::new(moved).poll(cx).is_ready() {
                    return Poll::Ready(Event::TimeoutCheck);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Closed(Ok(())) => return,
            Event::Closed(Err(e)) => return tracing::debug!(error = %e, "connection ended with an error"),
            Event::Drain => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            Event::TimeoutCheck => {}
        }
    }
}

/// Answers every request of a connection that is over a limit with 503 (server full) or 429
/// (this client holds too many) and `Retry-After`, then closes it; all within
/// `REFUSAL_TIME`. A registry client reads the error document instead of seeing a reset.
pub async fn refuse(stream: TcpStream, ctx: Rc<HttpContext>, refusal: Refusal) {
    let _ = stream.set_nodelay(true);
    let answer = async {
        match ctx.tls_acceptor() {
            None => refuse_http(HyperIo::new(stream, None, ConnectionState::new(SendfileUse::Never, None, ctx.clock.clone())), None, &ctx, refusal).await,
            Some(acceptor) => {
                if let Some(tls) = handshake(&acceptor, stream, REFUSAL_TIME, &ctx.clock).await {
                    let protocol = negotiated(&tls);
                    refuse_http(HyperIo::new(tls, None, ConnectionState::new(SendfileUse::Never, None, ctx.clock.clone())), protocol, &ctx, refusal).await;
                }
            }
        }
    };
    if within(REFUSAL_TIME, answer).await.is_none() {
        tracing::debug!(?refusal, "a refused client did not read its answer in time");
    }
}

async fn refuse_http<S>(io: HyperIo<S>, protocol: Option<Protocol>, ctx: &HttpContext, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let asked = Rc::new(std::cell::Cell::new(false));
    let service_asked = Rc::clone(&asked);
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        service_asked.set(true);
        let mut answer = response::error(&Failure::Overloaded(refusal), request.method(), request.uri().path());
        answer.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        std::future::ready(Ok::<_, Infallible>(answer))
    });
    let mut connection = pin!(Connection::new(&ctx.builders, io, service, protocol));
    let mut shut = false;
    let ended = std::future::poll_fn(|cx| {
        let polled = connection.as_mut().poll(cx);
        // Once a request is in, no other: on HTTP/1.1 this ends keep-alive, on h2 it sends
        // GOAWAY so the streams already open are answered and the rest refused. (Before the
        // first request it would close an HTTP/1.1 connection without an answer.)
        if polled.is_pending() && asked.get() && !shut {
            shut = true;
            connection.as_mut().graceful_shutdown();
            return connection.as_mut().poll(cx);
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "refused connection ended with an error");
    }
}

/// Counts a connection of `role`'s listener as open while the returned guard lives.
fn count_open(role: Role) -> metrics::OpenConnection {
    metrics::connection_opened(match role {
        Role::Registry => metrics::Listener::Registry,
        Role::Admin => metrics::Listener::Admin,
        Role::Blobserve => metrics::Listener::Blobserve,
    })
}
