//! The listening sockets: one per executor on the same address (SO_REUSEPORT), created up
//! front so that bind errors reach the caller and port 0 resolves to one port for all.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::RuntimeError;

/// Pending connections the kernel queues per socket before refusing.
const BACKLOG: i32 = 1024;

/// Binds `count` sockets to `addr`; returns them and the address actually bound.
///
/// # Errors
/// The address is in use (also by another SO_REUSEPORT server, which would otherwise silently
/// share our port) or cannot be bound.
pub fn bind_all(addr: SocketAddr, count: usize) -> Result<(Vec<OwnedFd>, SocketAddr), RuntimeError> {
    let error = |source| RuntimeError::Listen { addr, source };
    // The probe has no SO_REUSEPORT: its bind fails if anyone listens on the port, where our
    // SO_REUSEPORT sockets would join a stranger's group and take half of its connections.
    let probe = new_socket(addr, false).map_err(error)?;
    probe.bind(&addr.into()).map_err(error)?;
    let bound = probe.local_addr().map_err(error)?.as_socket().ok_or_else(|| {
        error(std::io::Error::other("bound address is not an IP socket address"))
    })?;
    drop(probe);
    let sockets = (0..count)
        .map(|_| {
            let socket = new_socket(bound, true)?;
            socket.bind(&bound.into())?;
            socket.listen(BACKLOG)?;
            Ok(OwnedFd::from(socket))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| RuntimeError::Listen { addr: bound, source })?;
    Ok((sockets, bound))
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets us bind over connections in TIME_WAIT from a previous run.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    Ok(socket)
}
