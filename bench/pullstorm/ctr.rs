//! The containerd client mode: each workspace runs a real `ctr image pull` (resolve, fetch,
//! verify, unpack), or with the stargz snapshotter a lazy `ctr-remote image rpull`, against the
//! target, in a containerd namespace of its own for this target's run, so nothing an earlier run
//! fetched or unpacked is reused; then, if asked, reads files of the image's rootfs (a view of its
//! snapshot, mounted). Afterwards the views go, the images are removed (containerd's GC then drops
//! their content and snapshots) and the namespace with them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::{Client, Gauge};
use crate::progress::Counters;
use crate::pull::{ImageName, Pull, PullSettings, Pulled};
use crate::rootfs::{self, View};
use crate::storm::Puller;
use crate::url::Url;

/// Where a target's images are unpacked or mounted, which decides how they are pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Snapshotter {
    /// containerd's default: `ctr images pull` downloads every layer and unpacks it.
    Overlayfs,
    /// The stargz snapshotter, a proxy plugin named `stargz` in containerd's config:
    /// `ctr-remote images rpull` fetches manifest and config, and the snapshotter mounts each
    /// eStargz layer from the registry, fetching file contents by `Range` when they are read.
    Stargz,
}

impl Snapshotter {
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::Stargz => "stargz",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshotter `{0}`: expected overlayfs or stargz")]
pub struct ParseSnapshotterError(String);

impl FromStr for Snapshotter {
    type Err = ParseSnapshotterError;

    fn from_str(text: &str) -> Result<Snapshotter, ParseSnapshotterError> {
        match text {
            "overlayfs" => Ok(Snapshotter::Overlayfs),
            "stargz" => Ok(Snapshotter::Stargz),
            _ => Err(ParseSnapshotterError(text.to_owned())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CtrSettings {
    pub ctr: PathBuf,
    pub socket: PathBuf,
    /// containerd's `certs.d` directory (`hosts.toml` per registry); without it, plain HTTP.
    pub hosts_dir: Option<PathBuf>,
    pub concurrent_layers: usize,
    /// Leave the images and the namespace in place after the run.
    pub keep: bool,
    pub ctr_remote: PathBuf,
    pub snapshotter: Snapshotter,
    /// Files of the rootfs each workspace reads whole after its pull; its time then ends there.
    pub read_files: Vec<PathBuf>,
    /// How the chain ID of a pulled image is read from the target (its manifest and config).
    pub pull_settings: PullSettings,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("target URL `{0}` has no host")]
    NoHost(String),
    #[error("cannot run {ctr}: {source}")]
    Spawn { ctr: String, source: std::io::Error },
    #[error("target URL `{0}`: reading files of the rootfs needs a plain http:// target (the chain ID is read over HTTP)")]
    NotPlainHttp(String),
}

pub struct CtrPuller {
    settings: CtrSettings,
    namespace: String,
    /// `host:port` of the target, the registry part of every reference.
    host: String,
    /// The target, when files are read (for the images' configs).
    registry: Option<Url>,
    /// Mounted views, removed in `clean_up` (a workspace keeps its rootfs while the storm runs).
    views: Mutex<Vec<View>>,
    next_view: AtomicUsize,
    /// Where this run's views are mounted.
    mounts: PathBuf,
}

impl CtrPuller {
    /// A puller for the target at `url` with a fresh namespace named after `target`.
    ///
    /// # Errors
    /// The URL names no host.
    pub fn new(settings: CtrSettings, target: &str, url: &str) -> Result<CtrPuller, CtrError> {
        let host = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().filter(|h| !h.is_empty()).ok_or_else(|| CtrError::NoHost(url.to_owned()))?;
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let label: String = target.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let namespace = format!("pullstorm-{label}-{}-{millis}", std::process::id());
        let registry = match settings.read_files.is_empty() {
            true => None,
            false => Some(url.parse::<Url>().ok().filter(|_| url.starts_with("http://")).ok_or_else(|| CtrError::NotPlainHttp(url.to_owned()))?),
        };
        let mounts = std::env::temp_dir().join(&namespace);
        Ok(CtrPuller { settings, namespace, host: host.to_owned(), registry, views: Mutex::new(Vec::new()), next_view: AtomicUsize::new(0), mounts })
    }

    fn ctr(&self) -> Command {
        self.client(&self.settings.ctr)
    }

    fn client(&self, binary: &PathBuf) -> Command {
        let mut command = Command::new(binary);
        command.arg("-a").arg(&self.settings.socket).arg("-n").arg(&self.namespace);
        command.stdin(Stdio::null());
        command
    }

    /// `ctr images pull`, or `ctr-remote images rpull` for the stargz snapshotter.
    fn pull_command(&self, image: &str) -> Result<(), String> {
        let mut command = match self.settings.snapshotter {
            Snapshotter::Overlayfs => {
                let mut command = self.ctr();
                command.args(["images", "pull", "--max-concurrent-downloads", &self.settings.concurrent_layers.to_string()]);
                command
            }
            Snapshotter::Stargz => {
                let mut command = self.client(&self.settings.ctr_remote);
                command.args(["images", "rpull", "--snapshotter", Snapshotter::Stargz.name()]);
                command
            }
        };
        match &self.settings.hosts_dir {
            Some(dir) => command.arg("--hosts-dir").arg(dir),
            None => command.arg("--plain-http"),
        };
        let binary = command.get_program().to_string_lossy().into_owned();
        let output = command.arg(self.reference(image)).stdout(Stdio::null()).output().map_err(|source| CtrError::Spawn { ctr: binary.clone(), source }.to_string())?;
        if !output.status.success() {
            return Err(format!("{binary} pull {}: {} ({})", self.reference(image), last_line(&output.stderr), output.status));
        }
        Ok(())
    }

    /// Mounts a view of the pulled image's rootfs and reads the files asked for.
    fn read_rootfs(&self, image: &str) -> Result<(), String> {
        let Some(registry) = &self.registry else { return Ok(()) };
        let client = Client::new(self.settings.timeout, Arc::new(Gauge::default()));
        let name = ImageName::parse(image);
        let pull = Pull { client: &client, registry, image: &name, settings: &self.settings.pull_settings, on_bytes: &|_| {} };
        let diff_ids = pull.diff_ids().map_err(|e| format!("the chain ID of {image}: {e}"))?;
        let chain_id = rootfs::chain_id(&diff_ids).map_err(|e| e.to_string())?;
        let key = format!("pullstorm-view-{}", self.next_view.fetch_add(1, Ordering::Relaxed));
        let view = View::open(|| self.ctr(), self.settings.snapshotter.name(), &chain_id, &key, &self.mounts.join(&key)).map_err(|e| e.to_string())?;
        let root = view.mount.clone();
        self.views.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(view);
        rootfs::read_files(&root, &self.settings.read_files).map(drop).map_err(|e| e.to_string())
    }

    fn reference(&self, image: &str) -> String {
        format!("{}/{image}", self.host)
    }

    /// Removes the images of `images` and the namespace, unless asked to keep them. Failures
    /// are reported on stderr: they do not change the measurements.
    pub fn clean_up(&self, images: &[String]) {
        let views = std::mem::take(&mut *self.views.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for view in views {
            view.close(self.ctr());
        }
        let _ = std::fs::remove_dir(&self.mounts);
        if self.settings.keep {
            return;
        }
        let mut references: Vec<String> = images.iter().map(|i| self.reference(i)).collect();
        references.sort();
        references.dedup();
        let mut steps: Vec<Command> = references
            .chunks(200)
            .map(|chunk| {
                let mut rm = self.ctr();
                rm.args(["images", "rm", "--sync"]).args(chunk);
                rm
            })
            .collect();
        let mut namespace = Command::new(&self.settings.ctr);
        namespace.arg("-a").arg(&self.settings.socket).args(["namespaces", "rm", &self.namespace]);
        steps.push(namespace);
        for mut step in steps {
            match step.stdout(Stdio::null()).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!("pullstorm: cleaning namespace {}: {}", self.namespace, last_line(&output.stderr)),
                Err(e) => eprintln!("pullstorm: cleaning namespace {}: {e}", self.namespace),
            }
        }
    }
}

impl Puller for CtrPuller {
    fn pull(&self, image: &str, _counters: &Counters) -> Result<Pulled, String> {
        let started = Instant::now();
        self.pull_command(image)?;
        // The sizes come from the manifests afterwards (main fills them in): containerd's
        // output does not say them reliably.
        if self.settings.read_files.is_empty() {
            return Ok(Pulled::default());
        }
        let pull_ms = started.elapsed().as_secs_f64() * 1e3;
        self.read_rootfs(image)?;
        Ok(Pulled { pull_ms: Some(pull_ms), ..Pulled::default() })
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_namespaces() {
        let settings = CtrSettings {
            ctr: "ctr".into(),
            socket: "/s".into(),
            hosts_dir: None,
            concurrent_layers: 3,
            keep: true,
            ctr_remote: "ctr-remote".into(),
            snapshotter: Snapshotter::Overlayfs,
            read_files: Vec::new(),
            pull_settings: PullSettings { concurrent_layers: 3, platform: ("linux".into(), "amd64".into()) },
            timeout: Duration::from_secs(1),
        };
        let puller = CtrPuller::new(settings.clone(), "Facade Warm", "http://127.0.0.1:5000/").unwrap();
        assert_eq!(puller.reference("remote/ws-1:latest"), "127.0.0.1:5000/remote/ws-1:latest");
        assert!(puller.namespace.starts_with("pullstorm-facade-warm-"));
        assert_eq!(CtrPuller::new(settings.clone(), "x", "https://reg.example:443").unwrap().host, "reg.example:443");
        assert!(CtrPuller::new(settings.clone(), "x", "http://").is_err());
        let reading = CtrSettings { read_files: vec!["base0/data.bin".into()], ..settings };
        assert!(CtrPuller::new(reading.clone(), "x", "http://127.0.0.1:5000").unwrap().registry.is_some());
        assert!(matches!(CtrPuller::new(reading, "x", "https://reg.example:443"), Err(CtrError::NotPlainHttp(_))), "configs are read over plain HTTP");
        assert_eq!(last_line(b"a\nctr: failed to resolve\n\n"), "ctr: failed to resolve");
        assert_eq!(("stargz".parse(), "overlayfs".parse()), (Ok(Snapshotter::Stargz), Ok(Snapshotter::Overlayfs)));
        assert!("native".parse::<Snapshotter>().is_err());
    }
}
