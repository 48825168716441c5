//! `pullstorm`: N simulated workspaces start at once (or at a rate), each pulling its image the
//! way containerd does (or with containerd itself, lazily or not), against one or more
//! registries in turn; reports time-to-image percentiles, throughput, errors, server cost and
//! bytes as a table, JSON and an SVG of the CDFs.

mod bytes;
mod cli;
mod cpu_distance;
mod ctr;
mod http;
mod manifest;
mod paired_sha256;
mod procstat;
mod progress;
mod pull;
mod report;
mod rootfs;
mod sha_ni;
mod storm;
mod svg;
mod url;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use bytes::{ByteSource, BytesError, Mark};
use cli::{Args, ClientKind, CliError, Target};
use cpu_distance::Probe;
use ctr::{CtrError, CtrPuller, CtrSettings, Snapshotter};
use http::{Client, Gauge};
use procstat::Sampler;
use progress::{Bar, Counters};
use pull::{HttpPuller, ImageName, Pull, PullSettings};
use report::{ClientCost, Machine, Measured, Report, TargetReport};
use storm::{Outcome, Plan};
use url::{ParseUrlError, Url};

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Ctr(#[from] CtrError),
    #[error("target {target}: {source}")]
    Url { target: String, source: ParseUrlError },
    #[error("--cpu-probe needs two CPUs this process may run on")]
    NoProbe,
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("target {target}: {source}")]
    Bytes { target: String, source: BytesError },
    #[error("--before-each for target {target}: {reason}")]
    Hook { target: String, reason: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    raise_open_file_limit();
    match run(&args) {
        Ok(report) if report.targets.iter().all(|t| t.errors == 0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("pullstorm: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<Report, MainError> {
    let targets = args.targets()?;
    let plan = args.plan()?;
    let settings = PullSettings { concurrent_layers: args.concurrent_layers, platform: args.platform()? };
    if args.client == ClientKind::Containerd && args.containerd_socket.is_none() {
        return Err(CliError::NoSocket.into());
    }
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(run_target(args, &plan, &settings, target)?);
    }
    print!("{}", report::table(&reports));
    let first = reports.first();
    let report = Report {
        tool: "pullstorm",
        schema: 1,
        image: args.image.clone(),
        workspaces: plan.workspaces.len(),
        rate_per_s: args.rate,
        concurrent_layers: args.concurrent_layers,
        client: format!("{:?}", args.client).to_lowercase(),
        machine: Machine::here(),
        p50_ms: first.and_then(|t| t.p50_ms),
        p99_ms: first.and_then(|t| t.p99_ms),
        max_ms: first.and_then(|t| t.max_ms),
        errors: first.map_or(0, |t| t.errors),
        bytes: first.map_or(0, |t| t.bytes),
        targets: reports,
    };
    write_outputs(args, &report)?;
    Ok(report)
}

fn run_target(args: &Args, plan: &Plan, settings: &PullSettings, target: &Target) -> Result<TargetReport, MainError> {
    if let Some(command) = &args.before_each {
        before_each(command, &target.name)?;
    }
    let bytes_error = |source| MainError::Bytes { target: target.name.clone(), source };
    let mark = |source: &Option<ByteSource>| source.as_ref().map(ByteSource::mark).transpose();
    let (served_mark, upstream_mark) = (mark(&target.served).map_err(bytes_error)?, mark(&target.upstream).map_err(bytes_error)?);
    let counters = Arc::new(Counters::default());
    let show_bar = args.progress || std::io::stderr().is_terminal();
    let bar = Bar::start(show_bar, target.name.clone(), plan.workspaces.len(), Arc::clone(&counters));
    let sampler = (!target.pids.is_empty()).then(|| Sampler::start(target.pids.clone()));
    let cpu_before = procstat::own_cpu_seconds();
    let probe = if args.cpu_probe { Some(Probe::start().ok_or(MainError::NoProbe)?) } else { None };
    let paired_before = paired_sha256::paired_bytes();
    let timeout = Duration::from_secs(args.timeout_s);
    let (mut outcome, peak_connections, ctr_puller) = match args.client {
        ClientKind::Http => {
            let registry: Url = target.url.parse().map_err(|source| MainError::Url { target: target.name.clone(), source })?;
            let gauge = Arc::new(Gauge::default());
            let puller = HttpPuller { registry, settings: settings.clone(), timeout, gauge: Arc::clone(&gauge) };
            (storm::run(plan, &puller, &counters), Some(gauge.peak()), None)
        }
        ClientKind::Containerd => {
            let ctr_settings = CtrSettings {
                ctr: args.ctr.clone(),
                socket: args.containerd_socket.clone().ok_or(CliError::NoSocket)?,
                hosts_dir: args.hosts_dir.clone(),
                concurrent_layers: args.concurrent_layers,
                keep: args.keep_images,
                ctr_remote: args.ctr_remote.clone(),
                snapshotter: target.snapshotter.unwrap_or(Snapshotter::Overlayfs),
                read_files: args.read_files.clone(),
                pull_settings: settings.clone(),
                timeout,
            };
            let puller = CtrPuller::new(ctr_settings, &target.name, &target.url)?;
            (storm::run(plan, &puller, &counters), None, Some(puller))
        }
    };
    let cpu_distance = probe.map(Probe::finish);
    let probe_cpu_s = cpu_distance.as_ref().map_or(0.0, |d| d.cpu_s);
    let client = ClientCost {
        peak_connections,
        cpu_s: procstat::own_cpu_seconds() - cpu_before - probe_cpu_s,
        paired_hash_bytes: paired_sha256::paired_bytes() - paired_before,
        cpu_distance,
    };
    let server = sampler.map(Sampler::finish);
    bar.finish();
    // Read before anything else talks to the servers (describing the images below does).
    let since = |source: &Option<ByteSource>, mark: Option<Mark>| match (source, mark) {
        (Some(source), Some(mark)) => source.since(mark).map(Some),
        _ => Ok(None),
    };
    let measured = Measured {
        snapshotter: (args.client == ClientKind::Containerd).then(|| target.snapshotter.unwrap_or(Snapshotter::Overlayfs)),
        served_bytes: since(&target.served, served_mark).map_err(bytes_error)?,
        upstream_bytes: since(&target.upstream, upstream_mark).map_err(bytes_error)?,
    };
    if let Some(puller) = ctr_puller {
        describe_pulled(&target.url, settings, timeout, &mut outcome);
        puller.clean_up(&outcome.runs.iter().filter(|r| r.ms.is_some()).map(|r| r.image.clone()).collect::<Vec<_>>());
    }
    Ok(report::summarize(&target.name, &target.url, outcome, client, server, measured))
}

/// Runs `command` with `sh -c`, PULLSTORM_TARGET set; its output goes to ours.
fn before_each(command: &str, target: &str) -> Result<(), MainError> {
    let hook_error = |reason: String| MainError::Hook { target: target.to_owned(), reason };
    let status = std::process::Command::new("sh").arg("-c").arg(command).env("PULLSTORM_TARGET", target).status().map_err(|e| hook_error(e.to_string()))?;
    if !status.success() {
        return Err(hook_error(format!("exited with {status}")));
    }
    Ok(())
}

/// For pulls another client made (containerd): the image's digest and size from its
/// manifests, read after the storm so the reading is not timed. An https target stays at 0.
fn describe_pulled(url: &str, settings: &PullSettings, timeout: Duration, outcome: &mut Outcome) {
    let Ok(registry) = url.parse::<Url>() else { return };
    let client = Client::new(timeout, Arc::new(Gauge::default()));
    for run in outcome.runs.iter_mut().filter(|r| r.ms.is_some()) {
        let image = ImageName::parse(&run.image);
        let pull = Pull { client: &client, registry: &registry, image: &image, settings, on_bytes: &|_| {} };
        match pull.describe() {
            Ok(described) => {
                run.bytes = described.bytes;
                run.manifest_digest = Some(described.manifest_digest);
                run.verified_blobs = described.verified_blobs;
            }
            Err(error) => eprintln!("pullstorm: cannot read the size of {}: {error}", run.image),
        }
    }
}

fn write_outputs(args: &Args, report: &Report) -> Result<(), MainError> {
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(report).expect("the report serializes");
        write(path, &json)?;
    }
    if let Some(path) = &args.svg {
        let times: Vec<Vec<f64>> = report.targets.iter().map(|t| report::sorted_times(&t.runs)).collect();
        let series: Vec<svg::Series> = report.targets.iter().zip(&times).map(|(t, sorted)| svg::Series { name: &t.name, sorted_ms: sorted, workspaces: t.workspaces }).collect();
        let title = args.title.clone().unwrap_or_else(|| format!("pullstorm: {} workspaces, {}", report.workspaces, report.image));
        let axes = match args.read_files.is_empty() {
            true => &svg::TIME_TO_IMAGE,
            false => &svg::TIME_TO_FILES,
        };
        write(path, svg::cdf(&title, axes, &series).as_bytes())?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), MainError> {
    std::fs::write(path, bytes).map_err(|source| MainError::Write { path: path.to_owned(), source })
}

/// A thousand workspaces hold up to three thousand sockets: the soft open-file limit (often
/// 1024) is raised to the hard one, as the facade does for itself.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                eprintln!("pullstorm: cannot raise the open-file limit above {}", limit.rlim_cur);
            }
        }
    }
}
