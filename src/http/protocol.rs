//! Which HTTP a connection speaks (ALPN, or else whether its first bytes are the h2 preface), and
//! hyper's connection serving it. The bytes read to tell stay in the stream and reach hyper with
//! the rest of its first read, so hyper never grows its read buffer for them.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;

use super::body::ResponseBody;
use crate::transport::{HyperIo, LocalExec, Protocol};

/// How a connection ends: hyper's error, or the stream's while its first bytes are read.
pub type Ended = Result<(), Box<dyn StdError + Send + Sync>>;

/// The configured hyper builders, one per protocol.
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<LocalExec>,
}

pin_project_lite::pin_project! {
    /// One connection: its protocol being learnt, then served by hyper.
    #[project = ConnectionProj]
    pub enum Connection<'a, S, Svc>
    where
        Svc: HttpService<Incoming>,
    {
        Learning { builders: &'a Builders, io: Option<HyperIo<S>>, service: Option<Svc> },
        Http1 { #[pin] conn: http1::Connection<HyperIo<S>, Svc> },
        H2 { #[pin] conn: http2::Connection<HyperIo<S>, Svc, LocalExec> },
        // Asked to shut down before a protocol was known: nothing to finish.
        Closed,
    }
}

impl<'a, S, Svc> Connection<'a, S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    Svc: HttpService<Incoming, ResBody = ResponseBody>,
    Svc::Error: Into<Box<dyn StdError + Send + Sync>>,
    LocalExec: Http2ServerConnExec<Svc::Future, ResponseBody>,
{
    /// Serves `io` with `protocol`, or with the one its first bytes show (`None`).
    pub fn new(builders: &'a Builders, io: HyperIo<S>, service: Svc, protocol: Option<Protocol>) -> Connection<'a, S, Svc> {
        match protocol {
            None => Connection::Learning { builders, io: Some(io), service: Some(service) },
            Some(protocol) => Connection::serving(builders, protocol, io, service),
        }
    }

    fn serving(builders: &Builders, protocol: Protocol, io: HyperIo<S>, service: Svc) -> Connection<'a, S, Svc> {
        match protocol {
            Protocol::Http1 => Connection::Http1 { conn: builders.http1.serve_connection(io, service) },
            Protocol::H2 => Connection::H2 { conn: builders.http2.serve_connection(io, service) },
        }
    }

    /// Lets requests in progress finish, takes no new ones, then ends (HTTP/1.1: after the
    /// current response; h2: GOAWAY). A connection still being learnt just ends.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match self.as_mut().project() {
            ConnectionProj::Learning { .. } => self.set(Connection::Closed),
            ConnectionProj::Http1 { conn } => conn.graceful_shutdown(),
            ConnectionProj::H2 { conn } => conn.graceful_shutdown(),
            ConnectionProj::Closed => {}
        }
    }
}

impl<S, Svc> Future for Connection<'_, S, Svc>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    Svc: HttpService<Incoming, ResBody = ResponseBody>,
    Svc::Error: Into<Box<dyn StdError + Send + Sync>>,
    LocalExec: Http2ServerConnExec<Svc::Future, ResponseBody>,
{
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        loop {
            match self.as_mut().project() {
                ConnectionProj::Learning { builders, io, service } => {
                    let Some(stream) = io.as_mut() else { return Poll::Ready(Ok(())) };
                    let protocol = ready!(Pin::new(stream).poll_protocol(cx))?;
                    let (Some(stream), Some(svc)) = (io.take(), service.take()) else { return Poll::Ready(Ok(())) };
                    let next = Connection::serving(builders, protocol, stream, svc);
                    self.set(next);
                }
                ConnectionProj::Http1 { conn } => return conn.poll(cx).map_err(Into::into),
                ConnectionProj::H2 { conn } => return conn.poll(cx).map_err(Into::into),
                ConnectionProj::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}
