//! One client connection: HTTP/1.1 or h2c (detected from the preface) served by hyper, with
//! the idle timeout and graceful shutdown on drain.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::body::Incoming;

use super::{admin, dispatch, Role};
use super::io::{coarse_now_ms, set_nonblocking, ConnectionState, HyperIo, Timeout};
use super::HttpContext;

enum Event {
    Closed(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    Drain,
    TimeoutCheck,
}

/// Serves a plain TCP connection until the client leaves, a timeout hits (a request head that
/// takes too long, or no request for too long), or `drain` resolves (then in-flight requests
/// finish and the connection closes).
pub async fn serve_tcp(stream: glommio::net::TcpStream, ctx: Rc<HttpContext>, drain: impl Future<Output = ()>) {
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
        let step = Duration::from_millis(wait.max(10));
        let deadline = Instant::now() + step;
        let mut timer = pin!(glommio::timer::Timer::new(step));
        let mut timer_armed = false;
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Closed(result));
            }
            if !closing && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            // Every poll of a glommio timer re-inserts it into the reactor's BTreeMap, and this
            // task wakes on every socket event; once armed with this task's waker (which never
            // changes) it wakes us when due, so it is polled again only from then on. Its own
            // deadline is taken after ours, so it never fires before `deadline`.
            if !closing && (!timer_armed || Instant::now() >= deadline) {
                timer_armed = true;
                if timer.as_mut().poll(cx).is_ready() {
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
