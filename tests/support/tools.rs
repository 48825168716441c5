//! Running the real tools the tests use. A missing tool fails the test with a message that
//! says how to install it: a real client that cannot run is a failure, not a skip.

use std::path::Path;
use std::process::{Command, Output};

pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    assert!(found, "`{tool}` is not installed; run tests/run.sh, which installs every tool the tests use");
}

/// Runs a command and returns its output, failing the test with stderr if it fails.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The CIDv1 of a file, as the `ipfs_cid` tool (Debian's `ipfs-cid`) computes it.
pub fn ipfs_cid(path: &Path) -> String {
    require("ipfs_cid");
    let output = run(Command::new("ipfs_cid").arg(path));
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("ipfs_cid printed {first:?}: {e}"));
    json["CIDv1"].as_str().unwrap_or_else(|| panic!("ipfs_cid printed no CIDv1: {first}")).to_owned()
}

pub fn skopeo() -> Command {
    require("skopeo");
    let mut command = Command::new("skopeo");
    // No policy.json may exist on a fresh machine; accept anything for these local copies.
    command.arg("--insecure-policy");
    command
}

/// The sha256 hex of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The facade's own binary, for tests of the command line.
///
/// # Panics
/// In a test of another package (bench/pullstorm's tests include this module too): Cargo names
/// only the package's own binaries, so there it has no path to run.
pub fn facade_binary() -> Command {
    // option_env!: with env! this module would not compile outside the root package.
    match option_env!("CARGO_BIN_EXE_registry-facade") {
        Some(binary) => Command::new(binary),
        None => panic!("the registry-facade binary: only the root package's tests have it"),
    }
}

/// Stops a daemon the way its init would: SIGTERM, up to 10 s to exit (unmounting, closing its
/// socket), then SIGKILL.
pub fn stop_gracefully(child: &mut std::process::Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process that is killed when the test ends, pass or fail.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `ss` says (with `detail`, e.g. `-i`) about the established sockets a server at
/// `server` holds, in its no-header form.
fn server_sockets(server: std::net::SocketAddr, detail: &str) -> String {
    require("ss");
    let port = format!("sport = :{}", server.port());
    let listing = run(Command::new("ss").args([&format!("-tn{detail}H"), "state", "established", &port]));
    String::from_utf8_lossy(&listing.stdout).into_owned()
}

/// The TCP congestion control of the one established socket a server at `server` holds:
/// the first word of `ss -i` that the kernel lists as available; `None` if `ss` shows none.
pub fn server_congestion(server: std::net::SocketAddr) -> Option<String> {
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
    let text = server_sockets(server, "i");
    text.split_whitespace().find(|word| available.split_whitespace().any(|name| name == *word)).map(str::to_owned)
}

/// The kernel's send buffer (`ss`'s `tb`, bytes) of the one established socket a server at
/// `server` holds; `None` if `ss` shows none.
pub fn server_send_buffer(server: std::net::SocketAddr) -> Option<u64> {
    let text = server_sockets(server, "m");
    text.split([',', '(', ')']).find_map(|field| field.strip_prefix("tb")).and_then(|n| n.parse::<u64>().ok())
}
