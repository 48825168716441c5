//! The listening sockets: one per executor on the same address (SO_REUSEPORT), created up
//! front so that bind errors reach the caller and port 0 resolves to one port for all, with
//! the TCP congestion control their connections inherit.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::RuntimeError;

/// Pending connections the kernel queues per socket before refusing.
const BACKLOG: i32 = 1024;

/// The congestion control picked when the configuration names none: it does not pace.
const DEFAULT_TCP_CONGESTION: &str = "cubic";

/// The TCP congestion control a listener's connections start with. It is set on the
/// listening socket because accepted sockets inherit it: switching an accepted socket away
/// from BBR later does not stop the pacing BBR turned on. BBR, a common system default,
/// paces every socket with a timer of its own. Towards a receiver on this host, the timer and
/// the sends it defers run as softirq work on the receiver's time. In a warm 100-workspace
/// pullstorm that cost the client more than sendfile saved the facade. Without pacing,
/// sendfile took 6-20% less CPU for the whole storm than copies had under BBR (A/B, 4 rounds
/// each; docs/benchmarks.md, "What a local receiver pays for sendfile").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TcpCongestion {
    /// `DEFAULT_TCP_CONGESTION`; if the kernel refuses it, a warning and the kernel's default.
    #[default]
    Default,
    /// The kernel's default (`net.ipv4.tcp_congestion_control`).
    System,
    /// This one, or the server does not start.
    Named(String),
}

/// Binds `count` sockets to `addr` with `congestion`; returns them and the address actually
/// bound.
///
/// # Errors
/// The address is in use (also by another SO_REUSEPORT server, which would otherwise silently
/// share our port) or cannot be bound, or the kernel refuses a congestion control named in
/// the configuration.
pub fn bind_all(addr: SocketAddr, count: usize, congestion: &TcpCongestion) -> Result<(Vec<OwnedFd>, SocketAddr), RuntimeError> {
    let error = |source| RuntimeError::Listen { addr, source };
    // The probe has no SO_REUSEPORT: its bind fails if anyone listens on the port, where our
    // SO_REUSEPORT sockets would join a stranger's group and take half of its connections.
    let probe = new_socket(addr, false).map_err(error)?;
    probe.bind(&addr.into()).map_err(error)?;
    let bound = probe.local_addr().map_err(error)?.as_socket().ok_or_else(|| {
        error(std::io::Error::other("bound address is not an IP socket address"))
    })?;
    let congestion = congestion_for(&probe, congestion)?;
    drop(probe);
    let sockets = (0..count)
        .map(|_| {
            let socket = new_socket(bound, true)?;
            if let Some(name) = congestion {
                socket.set_tcp_congestion(name.as_bytes())?;
            }
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

/// The congestion control to set on the listening sockets, tried on `probe` first so that a
/// refusal is reported once; `None`: leave the kernel's default.
fn congestion_for<'a>(probe: &Socket, congestion: &'a TcpCongestion) -> Result<Option<&'a str>, RuntimeError> {
    let (name, required) = match congestion {
        TcpCongestion::System => return Ok(None),
        TcpCongestion::Default => (DEFAULT_TCP_CONGESTION, false),
        TcpCongestion::Named(name) => (name.as_str(), true),
    };
    match probe.set_tcp_congestion(name.as_bytes()) {
        Ok(()) => Ok(Some(name)),
        Err(source) if required => Err(RuntimeError::Congestion {
            name: name.to_owned(),
            source,
            available: kernel_list("tcp_available_congestion_control"),
            allowed: kernel_list("tcp_allowed_congestion_control"),
        }),
        Err(e) => {
            tracing::warn!(error = %e, congestion = name, "the kernel refused the default congestion control; connections keep the kernel's default");
            Ok(None)
        }
    }
}

/// A space-separated list the kernel publishes under /proc/sys/net/ipv4, for messages.
fn kernel_list(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).map_or_else(|e| format!("unknown ({e})"), |text| text.trim().to_owned())
}
