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

use super::dispatch;
use super::io::{coarse_now_ms, ConnectionActivity, HyperIo};
use super::HttpContext;

enum Event {
    Closed(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    Drain,
    IdleCheck,
}

/// Serves a plain TCP connection until the client leaves, it idles out, or `drain` resolves
/// (then in-flight requests finish and the connection closes).
pub async fn serve_tcp(stream: glommio::net::TcpStream, ctx: Rc<HttpContext>, drain: impl Future<Output = ()>) {
    // Small responses must not wait for Nagle; a failure only costs latency.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let activity = ConnectionActivity::new();
    let io = HyperIo::new(stream, Some(fd), Rc::clone(&activity));
    let service_activity = Rc::clone(&activity);
    let service_ctx = Rc::clone(&ctx);
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let ctx = Rc::clone(&service_ctx);
        let in_flight = service_activity.begin_request();
        async move {
            let mut response = dispatch::handle(request, &ctx).await;
            response.body_mut().track(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let mut connection = pin!(ctx.builder.serve_connection(io, service));
    let mut drain = pin!(drain);
    let idle_ms = ctx.settings.idle_timeout.as_millis() as u64;
    let mut closing = false;
    loop {
        let mut idle_timer = pin!(glommio::timer::Timer::new(until_idle(&activity, idle_ms)));
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Closed(result));
            }
            if !closing {
                if drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if idle_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::IdleCheck);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Closed(Ok(())) => return,
            Event::Closed(Err(e)) => {
                tracing::debug!(error = %e, "connection ended with an error");
                return;
            }
            Event::Drain => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            Event::IdleCheck if activity.idle_for(idle_ms, coarse_now_ms()) => {
                tracing::trace!("closing idle connection");
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            Event::IdleCheck => {}
        }
    }
}

/// How long until the connection could first count as idle; at least a short step, so a
/// connection that is busy is not re-checked in a tight loop.
fn until_idle(activity: &ConnectionActivity, idle_ms: u64) -> Duration {
    Duration::from_millis(activity.ms_until_idle(idle_ms, coarse_now_ms()).max(10))
}
