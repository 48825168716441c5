//! The reference registry (`docker-registry`, CNCF distribution 2.8) as a real upstream: fresh
//! storage, a free loopback port, optional htpasswd or token auth, pushes with skopeo, and
//! request counts read from its access log. Killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::image::{self, Layout};
use super::token::TokenServer;
use super::tools::{require, run, skopeo};

pub enum RegistryAuth<'a> {
    None,
    Htpasswd { user: &'a str, password: &'a str },
    Token(&'a TokenServer),
}

pub struct ReferenceRegistry {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: Option<Child>,
    /// The `auth:` block of the config, empty without auth.
    auth_yaml: String,
    /// What `push` passes as `--dest-creds`.
    creds: Option<(String, String)>,
    log_syncs: AtomicUsize,
}

/// One line of the access log (combined log format), the fields the tests count by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    pub uri: String,
    pub status: u16,
}

/// Why a start attempt failed: a port taken between choosing and binding is worth a retry.
enum StartError {
    PortTaken,
    Failed(String),
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
/// The User-Agent of the harness's own requests, so `access_log` can leave them out.
const PROBE_AGENT: &str = "rf-harness-probe";

impl ReferenceRegistry {
    /// Starts the registry; panics with its log if it does not answer `/v2/` in time.
    pub fn start(auth: RegistryAuth) -> ReferenceRegistry {
        require("docker-registry");
        let dir = tempfile::Builder::new().prefix("rf-refreg").tempdir_in("/tmp").expect("temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        let (auth_yaml, creds) = auth_config(dir.path(), &auth);
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
        let log_syncs = AtomicUsize::new(0);
        let mut registry = ReferenceRegistry { dir, addr: placeholder, child: None, auth_yaml, creds, log_syncs };
        for _ in 0..START_ATTEMPTS {
            registry.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            match registry.spawn_and_wait() {
                Ok(()) => return registry,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("docker-registry found no free port in {START_ATTEMPTS} attempts; log:\n{}", registry.log());
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote (its logrus lines and the access log), across restarts.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Pushes `layout` as `repo:tag` with skopeo, digests preserved; every platform of an index.
    pub fn push(&self, layout: &Layout, repo: &str, tag: &str) {
        let staging = tempfile::Builder::new().prefix("rf-push").tempdir_in("/tmp").expect("temp dir");
        let docker_types = [image::DOCKER_MANIFEST, image::DOCKER_LIST].contains(&layout.top.media_type.as_str());
        let source = if docker_types {
            image::write_dir_layout(layout, staging.path());
            format!("dir:{}", staging.path().display())
        } else {
            format!("oci:{}:{}", layout.dir.display(), layout.tag)
        };
        let mut command = skopeo();
        // --preserve-digests: a push that would alter the bytes must fail, not pass silently.
        command.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
        if [image::OCI_INDEX, image::DOCKER_LIST].contains(&layout.top.media_type.as_str()) {
            command.arg("--all");
        }
        if let Some((user, password)) = &self.creds {
            command.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        run(command.arg(source).arg(format!("docker://{}/{repo}:{tag}", self.host())));
    }

    /// The access-log lines written so far (complete lines only), in order, without the
    /// harness's own readiness probes and log markers.
    pub fn access_log(&self) -> Vec<String> {
        self.sync_log();
        let ours = format!("\"{PROBE_AGENT}\"");
        let keep = |l: &String| parse_access_line(l).is_some() && !l.ends_with(&ours);
        self.complete_lines().into_iter().filter(keep).collect()
    }

    /// The access log, parsed.
    pub fn access_entries(&self) -> Vec<AccessEntry> {
        self.access_log().iter().filter_map(|l| parse_access_line(l)).collect()
    }

    /// How many `GET /v2/<name>/blobs/<digest>` were answered 200 or 206 (HEADs not counted).
    /// `digest` may be `sha256:<hex>` or the bare hex.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let digest = if digest.contains(':') { digest.to_owned() } else { format!("sha256:{digest}") };
        let suffix = format!("/blobs/{digest}");
        let is_blob_get = |e: &AccessEntry| {
            let path = e.uri.split('?').next().unwrap_or_default();
            e.method == "GET" && matches!(e.status, 200 | 206) && path.starts_with("/v2/") && path.ends_with(&suffix)
        };
        self.access_entries().iter().filter(|e| is_blob_get(e)).count()
    }

    /// Stops the process (SIGKILL); storage and port are kept for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process if it runs and starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        // The old listener is gone once the process is reaped, but a client connection may
        // briefly hold the port as its ephemeral source port: retry until the deadline.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortTaken) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(StartError::PortTaken) => panic!("port {} stayed taken; log:\n{}", self.addr, self.log()),
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
    }

    /// Restarts it (same port, same storage) requiring `auth` from now on: an upstream that
    /// revokes access to what it served a moment ago.
    pub fn restart_with_auth(&mut self, auth: RegistryAuth) {
        let (auth_yaml, creds) = auth_config(self.dir.path(), &auth);
        self.auth_yaml = auth_yaml;
        self.creds = creds;
        self.restart();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        std::fs::write(self.config_path(), self.config_yaml()).expect("write registry config");
        // Append: the log of a restarted registry continues the first one, so counts span both.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("registry log");
        let log_start = log.metadata().map_or(0, |m| m.len());
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        self.wait_ready(log_start)
    }

    fn wait_ready(&mut self, log_start: u64) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                let log = self.log();
                let this_run = log.get(log_start as usize..).unwrap_or_default();
                if this_run.contains("address already in use") {
                    return Err(StartError::PortTaken);
                }
                return Err(StartError::Failed(format!("docker-registry exited ({status}); log:\n{this_run}")));
            }
            // Its own "listening" line first: with only the probe, another server that took the
            // port could answer for a registry that is about to exit.
            let listening = format!("listening on {}", self.addr);
            let bound = self.log().get(log_start as usize..).is_some_and(|run| run.contains(&listening));
            if bound && matches!(probe_status(self.addr, "/v2/"), Some(200 | 401)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(StartError::Failed(format!("docker-registry not ready after {READY_TIMEOUT:?}; log:\n{}", self.log())))
    }

    fn config_yaml(&self) -> String {
        let storage = self.dir.path().join("storage");
        // Upload purging off: its timer would delete a test's half-done uploads mid-run.
        format!(
            "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: rf-test-secret
{auth}",
            storage = storage.display(),
            addr = self.addr,
            auth = self.auth_yaml,
        )
    }

    fn complete_lines(&self) -> Vec<String> {
        let log = self.log();
        // The registry may be writing as we read: a trailing line without '\n' is not done yet.
        let done = log.rfind('\n').map_or("", |end| &log[..end]);
        done.lines().map(str::to_owned).collect()
    }

    /// Waits until the access log holds every request answered so far. The logging handler
    /// writes a request's line when the handler returns, which can be just after a client has
    /// read the last bytes; a marker request sent now is answered later, so once the marker's
    /// line is in the file the earlier lines are too.
    fn sync_log(&self) {
        if self.child.is_none() {
            return;
        }
        let marker = format!("/v2/?rf-log-sync={}", self.log_syncs.fetch_add(1, Ordering::SeqCst));
        if probe_status(self.addr, &marker).is_none() {
            return;
        }
        let needle = format!(" {marker} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.complete_lines().iter().any(|l| l.contains(&needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("access log never showed {marker}; is it enabled? log:\n{}", self.log());
    }
}

impl Drop for ReferenceRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config's `auth:` block (writing the htpasswd file if needed) and the push credentials.
fn auth_config(dir: &Path, auth: &RegistryAuth) -> (String, Option<(String, String)>) {
    match auth {
        RegistryAuth::None => (String::new(), None),
        RegistryAuth::Htpasswd { user, password } => {
            let path = dir.join("htpasswd");
            std::fs::write(&path, htpasswd_line(user, password)).expect("write htpasswd");
            let yaml = format!("auth:\n  htpasswd:\n    realm: rf-test-registry\n    path: {}\n", path.display());
            (yaml, Some((user.to_string(), password.to_string())))
        }
        RegistryAuth::Token(server) => {
            let yaml = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.realm(),
                server.service(),
                server.issuer(),
                server.cert_path().display()
            );
            (yaml, Some((server.user().to_owned(), server.password().to_owned())))
        }
    }
}

/// `user:<bcrypt>`: distribution's htpasswd accepts bcrypt only. The minimum cost keeps the
/// registry's per-request check cheap; these are throwaway test passwords.
fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_result(password, 4).expect("bcrypt hash").format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{hash}\n")
}

/// A port that was free a moment ago. The registry binds it itself, so it can be taken in
/// between; `start` retries when that happens.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The status of `GET path`, or `None` if nothing answers (not up yet, or gone).
fn probe_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {PROBE_AGENT}\r\nConnection: close\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Parses `host ident user [time] "METHOD URI PROTO" status size "referer" "agent"`.
pub fn parse_access_line(line: &str) -> Option<AccessEntry> {
    let (prefix, rest) = line.split_once(" \"")?;
    if !prefix.ends_with(']') || !prefix.contains(" [") {
        return None;
    }
    let (request, rest) = rest.split_once("\" ")?;
    let mut request = request.split(' ');
    let method = request.next()?.to_owned();
    let uri = request.next()?.to_owned();
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(AccessEntry { method, uri, status })
}
