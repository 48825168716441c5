//! Connection limits across all executors: the server's total and each client address's. A
//! connection is counted from accept until its `Admission` drops; one over a limit is refused.
//! Atomics every core updates, and a shared-map entry per client only while it holds one.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::http::Refusal;
use crate::table::SharedMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Connections the whole server holds at once (`limits.maxConnections`).
    pub max_connections: usize,
    /// Connections one client address holds at once (`limits.maxConnectionsPerClient`);
    /// `None`: no per-client limit (on a node, every pull comes from the local containerd).
    pub max_connections_per_client: Option<usize>,
}

pub struct ConnectionLimits {
    settings: LimitSettings,
    open: AtomicUsize,
    per_client: SharedMap<IpAddr, Arc<AtomicUsize>>,
}

/// A counted connection; dropping it releases its place.
pub struct Admission {
    limits: Arc<ConnectionLimits>,
    client: Option<(IpAddr, Arc<AtomicUsize>)>,
}

impl ConnectionLimits {
    pub fn new(settings: LimitSettings) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits { settings, open: AtomicUsize::new(0), per_client: SharedMap::new() })
    }

    /// Counts a new connection, or says which limit it is over. `client` names its address;
    /// it is asked (a `getpeername`) only when there is a per-client limit.
    ///
    /// # Errors
    /// The server or this client is at its limit.
    pub fn admit(self: &Arc<Self>, client: impl FnOnce() -> Option<IpAddr>) -> Result<Admission, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.settings.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ServerFull);
        }
        let mut admission = Admission { limits: Arc::clone(self), client: None };
        if let Some((max, address)) = self.settings.max_connections_per_client.and_then(|max| Some((max, client()?))) {
            let count = self.per_client.get_or_insert_with(address, Arc::default);
            // Recorded before the check, so dropping the admission undoes the increment.
            admission.client = Some((address, Arc::clone(&count)));
            if count.fetch_add(1, Ordering::AcqRel) >= max {
                return Err(Refusal::ClientFull);
            }
        }
        Ok(admission)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some((address, count)) = self.client.take() {
            if count.fetch_sub(1, Ordering::AcqRel) == 1 {
                // The client's last connection: forget it. A connection admitted on another
                // core in between keeps counting on the removed entry, and the next one starts
                // a new entry: the client briefly gets one more place, never fewer.
                self.limits.per_client.remove_if(&address, |current| Arc::ptr_eq(current, &count) && current.load(Ordering::Acquire) == 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_admit_up_to_the_maximum_and_release_on_drop() {
        let limits = ConnectionLimits::new(LimitSettings { max_connections: 3, max_connections_per_client: Some(2) });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let first = limits.admit(|| Some(a)).unwrap();
        let _second = limits.admit(|| Some(a)).unwrap();
        assert_eq!(limits.admit(|| Some(a)).err(), Some(Refusal::ClientFull));
        let _other = limits.admit(|| Some(b)).unwrap();
        assert_eq!(limits.admit(|| Some(b)).err(), Some(Refusal::ServerFull));
        assert_eq!(limits.open.load(Ordering::Acquire), 3, "refusals hold no place");
        drop(first);
        assert!(limits.admit(|| Some(a)).is_ok());
        drop(_other);
        assert!(limits.per_client.get(&b).is_none(), "a client without connections is forgotten");
    }
}
