//! A TCP proxy that injects faults into the server-to-client direction, one planned fault per
//! accepted connection (cut, stall, reset, a bandwidth limit, or a canned answer in place of
//! the server's), for testing how a client survives a bad or slow upstream.
//! Plain threads; dropping the proxy closes every connection and joins every thread.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward n bytes, then close both sides cleanly (FIN).
    CutAfter(u64),
    /// Forward n bytes, then nothing for the duration with the connection open, then the rest.
    StallAfter(u64, Duration),
    /// Forward n bytes, then close the client side with RST (SO_LINGER 0).
    ResetAfter(u64),
    /// Read the request head and answer these raw bytes instead of the server (which is not
    /// contacted), then close: e.g. a `429` with `Retry-After` from a rate limiter in front.
    Respond(&'static str),
    /// Forward everything, at most this many bytes a second (an upstream far away).
    Throttle(u64),
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    plan: Vec<Fault>,
    accepted: AtomicUsize,
    stopping: AtomicBool,
    /// Wakes stalls early when the proxy is dropped.
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    /// Every socket still open, so drop can shut them down and unblock their threads. Weak:
    /// a socket must close when its connection ends, not when the proxy does.
    sockets: Mutex<Vec<Weak<TcpStream>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How the server-to-client copy ended, which decides how the client socket is closed.
enum Ending {
    /// The server closed (or failed): pass the EOF on.
    UpstreamDone,
    Cut,
    Reset,
    /// The client went away or the proxy is stopping.
    Aborted,
}

const BUFFER_BYTES: usize = 16 * 1024;

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`; connection i gets `plan[i]`,
    /// later connections `Pass`.
    pub fn start(target: SocketAddr, plan: Vec<Fault>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            target,
            plan,
            accepted: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_signal: Condvar::new(),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept_loop(&listener, &accept_shared));
        FaultProxy { addr, shared, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.stop_lock.lock().expect("stop lock");
            self.shared.stop_signal.notify_all();
        }
        // A connection wakes the blocking accept so the acceptor sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Shutting a socket down wakes any thread blocked reading or writing it.
        for socket in self.shared.sockets.lock().expect("sockets lock").iter().filter_map(Weak::upgrade) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().expect("threads lock"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
        let fault = shared.plan.get(index).copied().unwrap_or(Fault::Pass);
        let connection_shared = Arc::clone(shared);
        let thread = std::thread::spawn(move || run_connection(client, fault, &connection_shared));
        let mut threads = shared.threads.lock().expect("threads lock");
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
    }
}

/// Copies client-to-server on a second thread and server-to-client (with the fault) on this one.
fn run_connection(client: TcpStream, fault: Fault, shared: &Arc<Shared>) {
    if let Fault::Respond(answer) = fault {
        respond(&client, answer);
        return;
    }
    let Ok(upstream) = TcpStream::connect(shared.target) else {
        return; // dropping the client closes it: the same thing the target would have done
    };
    let client = Arc::new(client);
    let upstream = Arc::new(upstream);
    {
        let mut sockets = shared.sockets.lock().expect("sockets lock");
        sockets.retain(|s| s.strong_count() > 0);
        sockets.extend([Arc::downgrade(&client), Arc::downgrade(&upstream)]);
    }
    // Checked again now the sockets are registered: a drop that began before would miss them.
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let faulted = Arc::new(AtomicBool::new(false));
    let requests = {
        let (client, upstream, faulted) = (Arc::clone(&client), Arc::clone(&upstream), Arc::clone(&faulted));
        std::thread::spawn(move || copy_requests(&client, &upstream, &faulted))
    };
    let ending = copy_responses(&upstream, &client, fault, shared);
    finish(&client, &upstream, &ending, &faulted);
    drop((client, upstream));
    let _ = requests.join();
}

/// Reads one request head, writes `answer`, closes the write side and reads until the client
/// closes (closing with unread input would send RST instead of the answer).
fn respond(client: &TcpStream, answer: &str) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buffer = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match (&*client).read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    if (&*client).write_all(answer.as_bytes()).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    while matches!((&*client).read(&mut buffer), Ok(n) if n > 0) {}
}

/// Client to server, untouched. After a fault it keeps reading (and discarding) until the
/// client closes: closing a socket with unread input sends RST, which would turn a clean cut
/// into a reset.
fn copy_requests(client: &TcpStream, upstream: &TcpStream, faulted: &AtomicBool) {
    let mut buffer = vec![0; BUFFER_BYTES];
    loop {
        let n = match (&*client).read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !faulted.load(Ordering::SeqCst) && (&*upstream).write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(Shutdown::Write);
}

/// Server to client, applying the fault once its byte count has gone through.
fn copy_responses(upstream: &TcpStream, client: &TcpStream, fault: Fault, shared: &Shared) -> Ending {
    let mut left = match fault {
        Fault::Pass => None,
        Fault::CutAfter(n) | Fault::StallAfter(n, _) | Fault::ResetAfter(n) => Some(n),
        Fault::Respond(_) | Fault::Throttle(_) => None,
    };
    let started = std::time::Instant::now();
    let mut sent: u64 = 0;
    let mut buffer = vec![0; BUFFER_BYTES];
    let mut chunk: &[u8] = &[];
    loop {
        if left == Some(0) {
            left = None;
            if let Some(ending) = apply(fault, shared) {
                return ending;
            }
        }
        if chunk.is_empty() {
            chunk = match (&*upstream).read(&mut buffer) {
                Ok(0) | Err(_) => return Ending::UpstreamDone,
                Ok(n) => &buffer[..n],
            };
        }
        // Never past the fault point in one write; the rest of the chunk waits for the loop.
        let take = left.map_or(chunk.len(), |left| chunk.len().min(left as usize));
        if (&*client).write_all(&chunk[..take]).is_err() {
            return Ending::Aborted;
        }
        sent += take as u64;
        if let Fault::Throttle(bytes_per_second) = fault {
            let due = Duration::from_secs_f64(sent as f64 / bytes_per_second.max(1) as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                if !stall_unless_stopped(early, shared) {
                    return Ending::Aborted;
                }
            }
        }
        chunk = &chunk[take..];
        left = left.map(|left| left - take as u64);
    }
}

/// Acts at the fault point: `Some` ends the copy, `None` carries on (after a stall).
fn apply(fault: Fault, shared: &Shared) -> Option<Ending> {
    match fault {
        Fault::Pass | Fault::Respond(_) | Fault::Throttle(_) => None,
        Fault::CutAfter(_) => Some(Ending::Cut),
        Fault::ResetAfter(_) => Some(Ending::Reset),
        Fault::StallAfter(_, stall) => (!stall_unless_stopped(stall, shared)).then_some(Ending::Aborted),
    }
}

/// Waits `stall`; false if the proxy is being dropped meanwhile.
fn stall_unless_stopped(stall: Duration, shared: &Shared) -> bool {
    let guard = shared.stop_lock.lock().expect("stop lock");
    let _ = shared.stop_signal.wait_timeout_while(guard, stall, |_| !shared.stopping.load(Ordering::SeqCst));
    !shared.stopping.load(Ordering::SeqCst)
}

fn finish(client: &TcpStream, upstream: &TcpStream, ending: &Ending, faulted: &AtomicBool) {
    match ending {
        Ending::UpstreamDone => {
            let _ = client.shutdown(Shutdown::Write);
        }
        Ending::Cut => {
            faulted.store(true, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Write);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        Ending::Reset => {
            faulted.store(true, Ordering::SeqCst);
            // Linger 0 makes the last close send RST. Shutting down the read side wakes the
            // request thread (its read returns 0) so it drops its handle and that close comes.
            let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
            let _ = client.shutdown(Shutdown::Read);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        Ending::Aborted => {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}
