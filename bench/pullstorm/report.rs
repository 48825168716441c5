//! What a storm comes to: per-target time-to-image percentiles (nearest rank), throughput,
//! errors, server cost and the bytes servers sent, the JSON report (whose top-level summary is
//! the first target's), and the table printed at the end.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::cpu_distance::CpuDistance;
use crate::ctr::Snapshotter;
use crate::procstat::ServerStats;
use crate::storm::{Outcome, Run};

const ERROR_SAMPLES: usize = 5;

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    pub workspaces: usize,
    pub ok: usize,
    pub errors: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub wall_s: f64,
    /// When this target's storm started: seconds since the Unix epoch.
    pub started_unix_s: f64,
    pub throughput_workspaces_per_s: f64,
    pub throughput_bytes_per_s: f64,
    /// Verified bytes of every successful workspace (manifests, configs, layers).
    pub bytes: u64,
    /// Most connections the client had open at once (HTTP client only).
    pub peak_client_connections: Option<usize>,
    /// CPU seconds pullstorm itself used (receiving and hashing; for containerd, starting ctr).
    pub client_cpu_s: f64,
    /// Of the bytes pullstorm hashed, how many it hashed two messages at a time.
    pub client_paired_hash_bytes: u64,
    pub server: Option<ServerStats>,
    /// `--cpu-probe`: how far apart the first two CPUs were while the storm ran.
    pub cpu_distance: Option<CpuDistance>,
    /// containerd's snapshotter for this target (--client containerd).
    pub snapshotter: Option<Snapshotter>,
    /// With --read-file: percentiles of the pull alone (the rest is mount and reads).
    pub pull_p50_ms: Option<f64>,
    pub pull_p99_ms: Option<f64>,
    /// Bytes the target's server said it sent during the storm (--served-bytes).
    pub served_bytes: Option<u64>,
    /// Bytes the target fetched upstream during the storm (--upstream-bytes).
    pub upstream_bytes: Option<u64>,
    /// Distinct error messages, first few, with how many workspaces failed so.
    pub error_samples: Vec<ErrorSample>,
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub struct ErrorSample {
    pub error: String,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cores: usize,
    pub arch: &'static str,
}

impl Machine {
    pub fn here() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()).unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { kernel, cores, arch: std::env::consts::ARCH }
    }
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub schema: u32,
    pub image: String,
    pub workspaces: usize,
    pub rate_per_s: Option<f64>,
    pub concurrent_layers: usize,
    pub client: String,
    pub machine: Machine,
    /// The first target's figures, for a quick look.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub errors: usize,
    pub bytes: u64,
    pub targets: Vec<TargetReport>,
}

/// The `p`th percentile (nearest rank) of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorted times-to-image of the successful runs.
pub fn sorted_times(runs: &[Run]) -> Vec<f64> {
    let mut times: Vec<f64> = runs.iter().filter_map(|r| r.ms).collect();
    times.sort_by(f64::total_cmp);
    times
}

/// What was measured of a target besides the runs and the cost.
pub struct Measured {
    pub snapshotter: Option<Snapshotter>,
    pub served_bytes: Option<u64>,
    pub upstream_bytes: Option<u64>,
}

/// What the client measured besides the runs.
pub struct ClientCost {
    pub peak_connections: Option<usize>,
    pub cpu_s: f64,
    pub paired_hash_bytes: u64,
    pub cpu_distance: Option<CpuDistance>,
}

pub fn summarize(name: &str, url: &str, outcome: Outcome, client: ClientCost, server: Option<ServerStats>, measured: Measured) -> TargetReport {
    let times = sorted_times(&outcome.runs);
    let mut pulls: Vec<f64> = outcome.runs.iter().filter(|r| r.ms.is_some()).filter_map(|r| r.pull_ms).collect();
    pulls.sort_by(f64::total_cmp);
    let ok = times.len();
    let bytes: u64 = outcome.runs.iter().filter(|r| r.ms.is_some()).map(|r| r.bytes).sum();
    let wall_s = outcome.wall.as_secs_f64();
    let per_second = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
    TargetReport {
        name: name.to_owned(),
        url: url.to_owned(),
        workspaces: outcome.runs.len(),
        ok,
        errors: outcome.runs.len() - ok,
        p50_ms: percentile(&times, 50.0),
        p90_ms: percentile(&times, 90.0),
        p99_ms: percentile(&times, 99.0),
        max_ms: times.last().copied(),
        min_ms: times.first().copied(),
        mean_ms: (ok > 0).then(|| times.iter().sum::<f64>() / ok as f64),
        wall_s,
        started_unix_s: outcome.started.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        throughput_workspaces_per_s: per_second(ok as f64),
        throughput_bytes_per_s: per_second(bytes as f64),
        bytes,
        peak_client_connections: client.peak_connections,
        client_cpu_s: client.cpu_s,
        client_paired_hash_bytes: client.paired_hash_bytes,
        server,
        cpu_distance: client.cpu_distance,
        snapshotter: measured.snapshotter,
        pull_p50_ms: percentile(&pulls, 50.0),
        pull_p99_ms: percentile(&pulls, 99.0),
        served_bytes: measured.served_bytes,
        upstream_bytes: measured.upstream_bytes,
        error_samples: error_samples(&outcome.runs),
        runs: outcome.runs,
    }
}

fn error_samples(runs: &[Run]) -> Vec<ErrorSample> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (order, error) in runs.iter().filter_map(|r| r.error.as_deref()).enumerate() {
        counts.entry(error).or_insert((order, 0)).1 += 1;
    }
    let mut samples: Vec<(usize, ErrorSample)> = counts.into_iter().map(|(error, (order, count))| (order, ErrorSample { error: error.to_owned(), count })).collect();
    samples.sort_by_key(|(order, _)| *order);
    samples.into_iter().take(ERROR_SAMPLES).map(|(_, sample)| sample).collect()
}

/// The table printed to stdout: one row per target, p99 also as a ratio to the first's.
pub fn table(targets: &[TargetReport]) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let first_p99 = targets.first().and_then(|t| t.p99_ms);
    let mut out = format!(
        "{:<16} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9}\n",
        "target", "ok", "err", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99/1st", "ws/s", "MiB/s", "client s", "server s", "rss MiB", "anon MiB"
    );
    let probed = targets.iter().any(|t| t.cpu_distance.is_some());
    if probed {
        out.insert_str(out.len() - 1, &format!(" {:>9}", "cpu rt ns"));
    }
    let read = targets.iter().any(|t| t.pull_p50_ms.is_some());
    if read {
        out.insert_str(out.len() - 1, &format!(" {:>11}", "pull p50 ms"));
    }
    let counted = targets.iter().any(|t| t.served_bytes.is_some() || t.upstream_bytes.is_some());
    if counted {
        out.insert_str(out.len() - 1, &format!(" {:>10} {:>10}", "served MiB", "upstrm MiB"));
    }
    for t in targets {
        let ratio = match (t.p99_ms, first_p99) {
            (Some(p99), Some(first)) if first > 0.0 => format!("{:.2}", p99 / first),
            _ => "-".to_owned(),
        };
        let server = |f: fn(&ServerStats) -> String| t.server.as_ref().map_or("-".to_owned(), f);
        out.push_str(&format!(
            "{:<16} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.1} {:>7.0} {:>8.2} {:>8} {:>9} {:>9}\n",
            t.name,
            t.ok,
            t.errors,
            ms(t.p50_ms),
            ms(t.p90_ms),
            ms(t.p99_ms),
            ms(t.max_ms),
            ratio,
            t.throughput_workspaces_per_s,
            t.throughput_bytes_per_s / f64::from(1u32 << 20),
            t.client_cpu_s,
            server(|s| format!("{:.2}", s.cpu_s)),
            server(|s| format!("{:.1}", s.rss_peak_bytes as f64 / f64::from(1u32 << 20))),
            server(|s| format!("{:.1}", s.rss_anon_peak_bytes as f64 / f64::from(1u32 << 20))),
        ));
        if probed {
            let median = t.cpu_distance.as_ref().and_then(|d| d.median_ns);
            out.insert_str(out.len() - 1, &format!(" {:>9}", ms(median)));
        }
        if read {
            out.insert_str(out.len() - 1, &format!(" {:>11}", ms(t.pull_p50_ms)));
        }
        if counted {
            let mib = |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / f64::from(1u32 << 20)));
            out.insert_str(out.len() - 1, &format!(" {:>10} {:>10}", mib(t.served_bytes), mib(t.upstream_bytes)));
        }
    }
    for t in targets.iter().filter(|t| !t.error_samples.is_empty()) {
        for sample in &t.error_samples {
            out.push_str(&format!("{}: {} × {}\n", t.name, sample.count, sample.error));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50.0));
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&hundred, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 90.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
