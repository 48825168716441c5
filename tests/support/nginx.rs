//! nginx as a real peer: a TLS/h2 front for the reference registry, a redirecting front, a
//! static file server. Started on a free loopback port with the `server { … }` body a test
//! gives; its access log (with the protocol and Authorization presence) is read back.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::{require, ChildGuard};

pub struct Nginx {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    _child: ChildGuard,
}

impl Nginx {
    /// Starts nginx with one `server` whose body `server_body` writes, given the port it
    /// listens on and nginx's own directory (for files a test puts there).
    pub fn start(server_body: impl FnOnce(u16, &Path) -> String) -> Nginx {
        require("nginx");
        let dir = tempfile::Builder::new().prefix("rf-nginx").tempdir_in("/tmp").expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let body = server_body(port, dir.path());
        let d = dir.path().display();
        // One process, no master: the guard's SIGKILL at the end of a test then stops all of
        // nginx (killing a master leaves its workers serving, orphaned, after the test).
        let config = format!(
            "user root;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format rf '$server_protocol \"$request\" $status auth=\"$http_authorization\"';\n  access_log {d}/access.log rf;\n\
             client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             client_max_body_size 0;\n  server {{\n{body}\n  }}\n}}\n"
        );
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp dir");
        std::fs::write(dir.path().join("nginx.conf"), config).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { addr: SocketAddr::from(([127, 0, 0, 1], port)), _child: ChildGuard(child), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(nginx.addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start:\n{}", std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Access-log lines: `<protocol> "<request line>" <status> auth="<Authorization>"`.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}
