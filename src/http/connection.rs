//! One client connection: HTTP/1.1 or h2c (detected from the preface) served by hyper, with
//! the idle timeout and graceful shutdown on drain.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;

use super::{admin, dispatch, Role};
use super::io::{coarse_now_ms, set_nonblocking, ConnectionState, HyperIo, Timeout};
use super::HttpContext;
use crate::metrics;

enum Event {
    Closed(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    Drain,
    TimeoutCheck,
}

/// Serves a plain TCP connection until the client leaves, a timeout hits (a request head that
/// takes too long, or no request for too long), or `drain` resolves (then in-flight requests
/// finish and the connection closes).
pub async fn serve_tcp(stream: glommio::net::TcpStream, ctx: Rc<HttpContext>, drain: impl Future<Output = ()>) {
    let _open = count_open(ctx.role);
    // Small responses must not wait for Nagle; a failure only costs latency.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    // sendfile has no MSG_DONTWAIT: without O_NONBLOCK it could block the executor.
    let raw_fd = set_nonblocking(fd).ok().map(|()| fd);
    let activity = ConnectionState::new();
    let io = HyperIo::new(stream, raw_fd, Rc::clone(&activity));
    let service_activity = Rc::clone(&activity);
    let service_ctx = Rc::clone(&ctx);
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let ctx = Rc::clone(&service_ctx);
        let in_flight = service_activity.begin_request();
        async move {
            let mut response = match ctx.role {
                Role::Registry => dispatch::handle(request, &ctx).await,
                Role::Admin => admin::handle(request, &ctx).await,
            };
            response.body_mut().track(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let mut connection = pin!(ctx.builder.serve_connection(io, service));
    let mut drain = pin!(drain);
    let idle_ms = ctx.settings.idle_timeout.as_millis() as u64;
    let header_ms = ctx.settings.header_read_timeout.as_millis() as u64;
    let mut closing = false;
    loop {
        let wait = match activity.check(idle_ms, header_ms, coarse_now_ms()) {
            Timeout::Wait(ms) => ms,
            Timeout::HeadTooSlow => return tracing::debug!("closing a connection whose request head is too slow"),
            Timeout::Idle => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                idle_ms
            }
        };
        // At least a short step, so a busy connection is not re-checked in a tight loop.
        let mut timer = pin!(glommio::timer::Timer::new(Duration::from_millis(wait.max(10))));
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Closed(result));
            }
            if !closing && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if !closing && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::TimeoutCheck);
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

/// Counts a connection of `role`'s listener as open while the returned guard lives.
fn count_open(role: Role) -> metrics::OpenConnection {
    metrics::connection_opened(match role {
        Role::Registry => metrics::Listener::Registry,
        Role::Admin => metrics::Listener::Admin,
    })
}
