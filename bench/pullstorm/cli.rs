//! The command line: targets (`--registry URL`, or `--target NAME=URL` repeated), the image
//! template whose `{i}` becomes the workspace number, arrival, what is measured for each target
//! (server pids, bytes the servers sent), outputs, and the client pulls are made with
//! (containerd: with which snapshotter, and which files of the rootfs are read).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::bytes::{ByteSource, BytesError, FILLED_COUNTER, SERVED_COUNTER};
use crate::ctr::{ParseSnapshotterError, Snapshotter};
use crate::manifest::host_platform;
use crate::storm::Plan;

/// N simulated workspaces start at once (or at --rate), each pulling its image the way
/// containerd does (HEAD the tag, GET the manifest by digest, the config, the layers 3 at a
/// time, every digest verified), against each target in turn. Prints a table; writes JSON and
/// an SVG with the CDF of time-to-image per target. Exit status 1 if any workspace failed.
#[derive(Debug, Parser)]
#[command(name = "pullstorm", version)]
pub struct Args {
    /// Registry to pull from, e.g. http://127.0.0.1:5000 (the single-target form).
    #[arg(long, conflicts_with = "targets")]
    pub registry: Option<String>,
    /// A named registry; repeat to run the same storm against several, one after another.
    #[arg(long = "target", value_name = "NAME=URL")]
    pub targets: Vec<String>,
    /// The image each workspace pulls: `repo:tag` or `repo@sha256:…`; `{i}` becomes the
    /// workspace number (without it every workspace pulls the same image).
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value_t = 100)]
    pub workspaces: usize,
    /// Number of the first workspace (`{i}` runs from here).
    #[arg(long, default_value_t = 1)]
    pub first: usize,
    /// Workspaces started per second; without it, all start at once.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Layers each workspace fetches at once (containerd's default is 3).
    #[arg(long, default_value_t = 3)]
    pub concurrent_layers: usize,
    /// Server processes to measure (CPU, RSS; their children included). `PID,PID` applies to
    /// every target, `NAME=PID,PID` to one. Repeatable.
    #[arg(long = "server-pid", value_name = "[NAME=]PID[,PID...]")]
    pub server_pids: Vec<String>,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The plot's title.
    #[arg(long)]
    pub title: Option<String>,
    /// Draw the progress bar even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Seconds a connect, a read or a write may take.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// `os/arch` an image index is resolved to (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Pull with pullstorm's own HTTP client, or run `ctr image pull` (with unpack) per workspace.
    #[arg(long, value_enum, default_value_t = ClientKind::Http)]
    pub client: ClientKind,
    /// containerd's socket (--client containerd).
    #[arg(long)]
    pub containerd_socket: Option<PathBuf>,
    /// containerd `certs.d` directory passed to `ctr --hosts-dir` (else `--plain-http`).
    #[arg(long)]
    pub hosts_dir: Option<PathBuf>,
    #[arg(long, default_value = "ctr")]
    pub ctr: PathBuf,
    /// Keep the pulled images and each run's containerd namespace.
    #[arg(long)]
    pub keep_images: bool,
    /// Time a cache line's round trip between the first two CPUs every 200 ms during each
    /// storm and report it per target: on a VM it shows where the host ran the vCPUs.
    #[arg(long)]
    pub cpu_probe: bool,
    /// The snapshotter a target's workspaces pull into (--client containerd): `overlayfs`
    /// (`ctr images pull`: every layer downloaded and unpacked) or `stargz` (`ctr-remote images
    /// rpull` through containerd's proxy snapshotter named stargz: layers mounted lazily).
    /// `NAME=` for one target. Repeatable.
    #[arg(long = "snapshotter", value_name = "[NAME=]overlayfs|stargz")]
    pub snapshotters: Vec<String>,
    #[arg(long, default_value = "ctr-remote")]
    pub ctr_remote: PathBuf,
    /// A file of the image's rootfs each workspace reads whole after its pull (--client
    /// containerd; a view of the image's snapshot is mounted for it): a workspace's time then
    /// ends when its files are read. Repeatable.
    #[arg(long = "read-file", value_name = "PATH")]
    pub read_files: Vec<PathBuf>,
    /// Bytes a target's server sent during its storm: `metrics:URL` (the facade's served-bytes
    /// counter) or `log:PATH` (an access log in combined format). Repeatable.
    #[arg(long = "served-bytes", value_name = "NAME=metrics:URL|log:PATH")]
    pub served_bytes: Vec<String>,
    /// Bytes a target fetched upstream during its storm: `metrics:URL` (the facade's fill
    /// counter) or `log:PATH` (its upstream's access log). Repeatable.
    #[arg(long = "upstream-bytes", value_name = "NAME=metrics:URL|log:PATH")]
    pub upstream_bytes: Vec<String>,
    /// A shell command run before each target's storm, untimed, with PULLSTORM_TARGET set to
    /// the target's name (e.g. to restart containerd and its snapshotter with empty state).
    #[arg(long, value_name = "COMMAND")]
    pub before_each: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    Http,
    Containerd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub url: String,
    pub pids: Vec<i32>,
    pub snapshotter: Option<Snapshotter>,
    pub served: Option<ByteSource>,
    pub upstream: Option<ByteSource>,
}

impl Target {
    fn new(name: &str, url: &str) -> Target {
        Target { name: name.to_owned(), url: url.to_owned(), pids: Vec::new(), snapshotter: None, served: None, upstream: None }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("give --registry URL or at least one --target NAME=URL")]
    NoTarget,
    #[error("--target `{0}`: expected NAME=URL")]
    BadTarget(String),
    #[error("--target name `{0}` is used twice")]
    DuplicateTarget(String),
    #[error("--server-pid `{0}`: expected [NAME=]PID[,PID...]")]
    BadPid(String),
    #[error("--server-pid `{0}`: no target has that name")]
    UnknownTarget(String),
    #[error("--workspaces and --concurrent-layers must be at least 1")]
    Zero,
    #[error("--rate must be a positive number of workspaces per second")]
    BadRate,
    #[error("--platform `{0}`: expected os/arch")]
    BadPlatform(String),
    #[error("--client containerd needs --containerd-socket")]
    NoSocket,
    #[error(transparent)]
    Snapshotter(#[from] ParseSnapshotterError),
    /// A byte source that does not parse (`BytesError`'s message: that type holds I/O errors,
    /// which do not compare).
    #[error("{0}")]
    Bytes(String),
    #[error("--{0} needs --client containerd")]
    ContainerdOnly(&'static str),
}

impl Args {
    /// The targets in run order, each with the pids measured for it.
    ///
    /// # Errors
    /// No target, a malformed or duplicate one, a malformed pid list, snapshotter or byte
    /// source, or one for no target; containerd options without --client containerd.
    pub fn targets(&self) -> Result<Vec<Target>, CliError> {
        let mut targets = match &self.registry {
            Some(url) => vec![Target::new(authority(url), url)],
            None => self.targets.iter().map(|t| parse_target(t)).collect::<Result<Vec<_>, _>>()?,
        };
        if targets.is_empty() {
            return Err(CliError::NoTarget);
        }
        for (i, target) in targets.iter().enumerate() {
            if targets[..i].iter().any(|t| t.name == target.name) {
                return Err(CliError::DuplicateTarget(target.name.clone()));
            }
        }
        for text in &self.server_pids {
            let (name, list) = split_name(text);
            let pids = list.split(',').map(|p| p.trim().parse::<i32>().ok().filter(|p| *p > 0)).collect::<Option<Vec<_>>>().ok_or_else(|| CliError::BadPid(text.clone()))?;
            chosen(&mut targets, name)?.into_iter().for_each(|t| t.pids.extend(&pids));
        }
        if self.client != ClientKind::Containerd {
            if !self.snapshotters.is_empty() {
                return Err(CliError::ContainerdOnly("snapshotter"));
            }
            if !self.read_files.is_empty() {
                return Err(CliError::ContainerdOnly("read-file"));
            }
        }
        for text in &self.snapshotters {
            let (name, value) = split_name(text);
            let snapshotter: Snapshotter = value.parse()?;
            chosen(&mut targets, name)?.into_iter().for_each(|t| t.snapshotter = Some(snapshotter));
        }
        for (texts, counter, upstream) in [(&self.served_bytes, SERVED_COUNTER, false), (&self.upstream_bytes, FILLED_COUNTER, true)] {
            for text in texts {
                let (name, value) = text.split_once('=').ok_or_else(|| CliError::BadTarget(text.clone()))?;
                let source = ByteSource::parse(value, counter).map_err(|e: BytesError| CliError::Bytes(e.to_string()))?;
                for target in chosen(&mut targets, Some(name))? {
                    *(if upstream { &mut target.upstream } else { &mut target.served }) = Some(source.clone());
                }
            }
        }
        Ok(targets)
    }

    /// The workspaces, numbered from `--first`, with their images.
    ///
    /// # Errors
    /// No workspaces, or a rate that is not positive.
    pub fn plan(&self) -> Result<Plan, CliError> {
        if self.workspaces == 0 || self.concurrent_layers == 0 {
            return Err(CliError::Zero);
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(CliError::BadRate);
        }
        let workspaces = (self.first..self.first + self.workspaces).map(|i| (i, self.image.replace("{i}", &i.to_string()))).collect();
        Ok(Plan { workspaces, rate_per_s: self.rate })
    }

    /// # Errors
    /// `--platform` is not `os/arch`.
    pub fn platform(&self) -> Result<(String, String), CliError> {
        match &self.platform {
            None => Ok(host_platform()),
            Some(text) => match text.split_once('/') {
                Some((os, arch)) if !os.is_empty() && !arch.is_empty() => Ok((os.to_owned(), arch.to_owned())),
                _ => Err(CliError::BadPlatform(text.clone())),
            },
        }
    }
}

fn parse_target(text: &str) -> Result<Target, CliError> {
    match text.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => Ok(Target::new(name, url)),
        _ => Err(CliError::BadTarget(text.to_owned())),
    }
}

/// `NAME=VALUE`, or `VALUE` for every target.
fn split_name(text: &str) -> (Option<&str>, &str) {
    text.split_once('=').map_or((None, text), |(name, value)| (Some(name), value))
}

/// The targets `name` picks (`None`: all of them).
fn chosen<'a>(targets: &'a mut [Target], name: Option<&str>) -> Result<Vec<&'a mut Target>, CliError> {
    let picked: Vec<&mut Target> = targets.iter_mut().filter(|t| name.is_none_or(|n| n == t.name)).collect();
    if picked.is_empty() {
        return Err(CliError::UnknownTarget(name.unwrap_or_default().to_owned()));
    }
    Ok(picked)
}

/// `host:port` of a URL, the single target's name.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["pullstorm", "--image", "remote/ws-{i}:latest", "--workspaces", "3", "--first", "7"];
        argv.extend(extra);
        Args::try_parse_from(argv).expect("valid args")
    }

    #[test]
    fn targets_and_pids() {
        let single = args(&["--registry", "http://127.0.0.1:5000", "--server-pid", "10,11"]).targets().unwrap();
        assert_eq!(single, vec![Target { pids: vec![10, 11], ..Target::new("127.0.0.1:5000", "http://127.0.0.1:5000") }]);
        let many = args(&["--target", "facade=http://a:1", "--target", "nginx=http://b:2", "--server-pid", "nginx=20,21", "--server-pid", "facade=10"]).targets().unwrap();
        assert_eq!((many[0].pids.clone(), many[1].pids.clone()), (vec![10], vec![20, 21]));
        assert_eq!(args(&[]).targets(), Err(CliError::NoTarget));
        assert_eq!(args(&["--target", "nourl"]).targets(), Err(CliError::BadTarget("nourl".into())));
        assert_eq!(args(&["--target", "a=http://x", "--target", "a=http://y"]).targets(), Err(CliError::DuplicateTarget("a".into())));
        assert_eq!(args(&["--target", "a=http://x", "--server-pid", "b=1"]).targets(), Err(CliError::UnknownTarget("b".into())));
        assert_eq!(args(&["--target", "a=http://x", "--server-pid", "a=x"]).targets(), Err(CliError::BadPid("a=x".into())));
        assert!(Args::try_parse_from(["pullstorm", "--image", "i", "--registry", "http://x", "--target", "a=http://y"]).is_err());
    }

    #[test]
    fn snapshotters_and_byte_sources_per_target() {
        let ctr = ["--client", "containerd", "--target", "lazy=http://a:1", "--target", "full=http://b:2"];
        let parsed = args(&[&ctr[..], &["--snapshotter", "overlayfs", "--snapshotter", "lazy=stargz", "--served-bytes", "lazy=metrics:http://a:9/metrics", "--upstream-bytes", "lazy=metrics:http://a:9/metrics", "--served-bytes", "full=log:/tmp/reg.log"]].concat()).targets().unwrap();
        assert_eq!((parsed[0].snapshotter, parsed[1].snapshotter), (Some(Snapshotter::Stargz), Some(Snapshotter::Overlayfs)), "a named value after the one for all");
        assert_eq!(parsed[0].served, Some(ByteSource::Metrics { url: "http://a:9/metrics".into(), counter: SERVED_COUNTER }));
        assert_eq!(parsed[0].upstream, Some(ByteSource::Metrics { url: "http://a:9/metrics".into(), counter: FILLED_COUNTER }));
        assert_eq!((parsed[1].served.clone(), parsed[1].upstream.clone()), (Some(ByteSource::AccessLog("/tmp/reg.log".into())), None));
        assert!(matches!(args(&[&ctr[..], &["--snapshotter", "lazy=native"]].concat()).targets(), Err(CliError::Snapshotter(_))));
        assert!(matches!(args(&[&ctr[..], &["--served-bytes", "lazy=file:/x"]].concat()).targets(), Err(CliError::Bytes(_))));
        assert!(matches!(args(&[&ctr[..], &["--served-bytes", "other=log:/x"]].concat()).targets(), Err(CliError::UnknownTarget(_))));
        assert_eq!(args(&["--registry", "http://a:1", "--snapshotter", "stargz"]).targets(), Err(CliError::ContainerdOnly("snapshotter")));
        assert_eq!(args(&["--registry", "http://a:1", "--read-file", "x"]).targets(), Err(CliError::ContainerdOnly("read-file")));
    }

    #[test]
    fn plans_number_workspaces_from_first() {
        let plan = args(&[]).plan().unwrap();
        assert_eq!(plan.workspaces, vec![(7, "remote/ws-7:latest".into()), (8, "remote/ws-8:latest".into()), (9, "remote/ws-9:latest".into())]);
        assert_eq!(args(&["--rate", "0"]).plan().unwrap_err(), CliError::BadRate);
        let same = Args::try_parse_from(["pullstorm", "--image", "one/img:v1", "--workspaces", "2"]).unwrap().plan().unwrap();
        assert!(same.workspaces.iter().all(|(_, image)| image == "one/img:v1"));
        assert_eq!(args(&["--platform", "linux/arm64"]).platform().unwrap(), ("linux".into(), "arm64".into()));
        assert!(args(&["--platform", "linux"]).platform().is_err());
    }
}
