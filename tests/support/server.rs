//! The facade started in-process on 127.0.0.1:0 with its own cache directory, on a clock the
//! test may move forward instead of sleeping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use registry_facade::clock::Clock;
use registry_facade::config::{Config, Overrides};
use registry_facade::runtime::{Server, ShutdownKind, Stopper};

pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when the config asked for one.
    pub admin: Option<SocketAddr>,
    /// The blobserve listener, when the config asked for one.
    pub blobserve: Option<SocketAddr>,
    pub cache_dir: PathBuf,
    clock: Clock,
    stopper: Stopper,
    server: Option<Server>,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with a fresh cache and the given extra config keys (a JSON object body,
    /// e.g. `"cores": 1`).
    pub fn start(extra_config: &str) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let cache = temp.path().join("cache");
        let mut server = TestServer::start_on(&cache, extra_config);
        server._temp = Some(temp);
        server
    }

    /// A server on an existing cache directory (which outlives the server).
    pub fn start_on(cache_dir: &Path, extra_config: &str) -> TestServer {
        let config = TestServer::config(cache_dir, extra_config);
        let clock = Clock::adjustable();
        let server = registry_facade::app::start(&config, clock.clone()).expect("server starts");
        TestServer {
            addr: server.local_addr(),
            admin: server.admin_addr(),
            blobserve: server.blobserve_addr(),
            cache_dir: cache_dir.to_owned(),
            clock,
            stopper: server.stopper(),
            server: Some(server),
            _temp: None,
        }
    }

    pub fn config(cache_dir: &Path, extra_config: &str) -> Config {
        let separator = if extra_config.trim().is_empty() { "" } else { "," };
        // Two executors unless the test asks for its own number (a key may appear only once).
        let cores = if extra_config.contains("\"cores\"") { "" } else { r#""cores": 2, "# };
        let json = format!(
            r#"{{"listen": "127.0.0.1:0", {cores}"cacheDir": {:?}{separator}{extra_config}}}"#,
            cache_dir.display().to_string()
        );
        Config::from_json(json.as_bytes(), "test config", &Overrides::default()).expect("valid test config")
    }

    /// How many changes of `file` (`tls`, `credentials`, `config`) the server read with
    /// `outcome` (`applied`, `refused`), from its metrics (the config must name an admin
    /// listener).
    pub fn file_reloads(&self, file: &str, outcome: &str) -> f64 {
        self.metrics().sum("registry_facade_file_reloads_total", &[("file", file), ("outcome", outcome)])
    }

    /// Connections open on `listener` (`registry`, `admin`), from the server's metrics.
    pub fn open_connections(&self, listener: &str) -> f64 {
        self.metrics().sum("registry_facade_open_connections", &[("listener", listener)])
    }

    /// The server's metrics, parsed (the config must name an admin listener).
    pub fn metrics(&self) -> super::exposition::Exposition {
        let admin = self.admin.expect("the config names an admin listener");
        let text = String::from_utf8(super::client::get(admin, "/metrics").body).expect("UTF-8 exposition");
        super::exposition::parse(&text).unwrap_or_else(|why| panic!("{why}\n{text}"))
    }

    /// Moves the server's clock forward: TTLs and timeouts see `by` pass at once.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops the server (graceful or not) and waits for its executors.
    pub fn stop(mut self, kind: ShutdownKind) {
        self.stopper.stop(kind);
        if let Some(server) = self.server.take() {
            server.join().expect("executors stop cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.stopper.stop(ShutdownKind::Immediate);
            let _ = server.join();
        }
    }
}

/// Imports a layout into a cache directory through the library (the same code as the
/// `import` command), as a separate user of the directory would.
pub fn import(cache_dir: &Path, layout: &Path, name: &str, tag: Option<&str>) {
    use registry_facade::import::import_layout;
    let cache = registry_facade::store::CacheDir::open(cache_dir).expect("open cache");
    let name = name.parse().expect("valid name");
    let tag = tag.map(|t| t.parse().expect("valid tag"));
    import_layout(&cache, layout, &name, tag.as_ref()).expect("import succeeds");
}

/// Runs the facade binary with `args` until it logs that it is serving; returns the process
/// (killed when dropped) and the address it listens on. Its later log lines are drained.
pub fn spawn_binary(args: &[&std::ffi::OsStr]) -> (super::tools::ChildGuard, SocketAddr) {
    let (child, addr, _) = spawn_binary_with_admin(args);
    (child, addr)
}

/// As `spawn_binary`, also returning the admin listener's address when there is one.
pub fn spawn_binary_with_admin(args: &[&std::ffi::OsStr]) -> (super::tools::ChildGuard, SocketAddr, Option<SocketAddr>) {
    let mut command = super::tools::facade_binary();
    command.args(args);
    spawn_command_with_admin(command)
}

/// As `spawn_binary`, for a command that runs the facade binary some other way (e.g. under
/// `prlimit`).
pub fn spawn_command(command: std::process::Command) -> (super::tools::ChildGuard, SocketAddr) {
    let (child, addr, _) = spawn_command_with_admin(command);
    (child, addr)
}

fn spawn_command_with_admin(mut command: std::process::Command) -> (super::tools::ChildGuard, SocketAddr, Option<SocketAddr>) {
    let child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the facade binary");
    let mut child = super::tools::ChildGuard(child);
    let stderr = child.0.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let serving = lines.by_ref().map_while(Result::ok).find(|l| l.contains("registry-facade serving")).expect("the facade starts");
    std::thread::spawn(move || lines.for_each(drop));
    let field = |name: &str| serving.split(&format!("{name}=")).nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_owned);
    let addr = field("listen").expect(&serving).parse().expect(&serving);
    let admin = field("admin").and_then(|a| a.parse().ok());
    (child, addr, admin)
}

/// Waits until the cache at `cache` has published the blob `hex` (just after a client read
/// its last byte: a fill publishes after it hands the bytes out).
pub fn wait_published(cache: &Path, hex: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cache.join("blobs/sha256").join(hex).exists() {
        assert!(std::time::Instant::now() < deadline, "blob {hex} was never published");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
