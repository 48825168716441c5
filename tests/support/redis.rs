//! A real `redis-server` on a free loopback port with no persistence, that a test can kill
//! and restart on the same port; `redis-cli` for looking inside.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::{require, ChildGuard};

pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<ChildGuard>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        require("redis-server");
        require("redis-cli");
        let dir = tempfile::Builder::new().prefix("rf-redis").tempdir_in("/tmp").expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut server = RedisServer { dir, port, child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.child = None;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "redis did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against this server; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}
