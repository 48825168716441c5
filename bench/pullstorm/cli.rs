//! The command line: targets (`--registry URL`, or `--target NAME=URL` repeated), the image
//! template whose `{i}` becomes the workspace number, arrival, the server pids measured for
//! each target, outputs, and the client pulls are made with.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

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
}

impl Args {
    /// The targets in run order, each with the pids measured for it.
    ///
    /// # Errors
    /// No target, a malformed or duplicate one, a malformed pid list or one for no target.
    pub fn targets(&self) -> Result<Vec<Target>, CliError> {
        let mut targets = match &self.registry {
            Some(url) => vec![Target { name: authority(url).to_owned(), url: url.clone(), pids: Vec::new() }],
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
            let (name, list) = text.split_once('=').map_or((None, text.as_str()), |(n, l)| (Some(n), l));
            let pids = list.split(',').map(|p| p.trim().parse::<i32>().ok().filter(|p| *p > 0)).collect::<Option<Vec<_>>>().ok_or_else(|| CliError::BadPid(text.clone()))?;
            let chosen: Vec<&mut Target> = targets.iter_mut().filter(|t| name.is_none_or(|n| n == t.name)).collect();
            if chosen.is_empty() {
                return Err(CliError::UnknownTarget(name.unwrap_or_default().to_owned()));
            }
            chosen.into_iter().for_each(|t| t.pids.extend(&pids));
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
        Some((name, url)) if !name.is_empty() && !url.is_empty() => Ok(Target { name: name.to_owned(), url: url.to_owned(), pids: Vec::new() }),
        _ => Err(CliError::BadTarget(text.to_owned())),
    }
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
        assert_eq!(single, vec![Target { name: "127.0.0.1:5000".into(), url: "http://127.0.0.1:5000".into(), pids: vec![10, 11] }]);
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
