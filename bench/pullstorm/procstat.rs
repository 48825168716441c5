//! A server's CPU time and memory, read from /proc for some root pids and all their
//! descendants (nginx's workers, say): CPU seconds over a run, resident memory (all, and
//! anonymous only, which leaves out page cache and mapped files) before, after and at its
//! peak, sampled every 100 ms. Linux only; reads, never signals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    /// utime + stime of every live process, plus cutime + cstime (reaped children).
    cpu_ticks: u64,
    rss_bytes: u64,
    anon_bytes: u64,
    processes: usize,
}

/// What a run cost the server.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerStats {
    pub pids: Vec<i32>,
    /// Processes in the tree at the end (roots and descendants).
    pub processes: usize,
    pub cpu_s: f64,
    pub rss_before_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_anon_before_bytes: u64,
    pub rss_anon_peak_bytes: u64,
    pub rss_anon_after_bytes: u64,
}

/// Samples memory on its own thread from `start` until `finish`.
pub struct Sampler {
    roots: Vec<i32>,
    before: Snapshot,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl Sampler {
    pub fn start(roots: Vec<i32>) -> Sampler {
        let before = snapshot(&roots);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (roots, stop) = (roots.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut peaks = (before.rss_bytes, before.anon_bytes);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_INTERVAL);
                    let now = snapshot(&roots);
                    peaks = (peaks.0.max(now.rss_bytes), peaks.1.max(now.anon_bytes));
                }
                peaks
            })
        };
        Sampler { roots, before, stop, thread }
    }

    pub fn finish(self) -> ServerStats {
        self.stop.store(true, Ordering::Relaxed);
        let (rss_peak, anon_peak) = self.thread.join().expect("sampler thread");
        let after = snapshot(&self.roots);
        ServerStats {
            pids: self.roots,
            processes: after.processes,
            cpu_s: after.cpu_ticks.saturating_sub(self.before.cpu_ticks) as f64 / clock_ticks_per_second(),
            rss_before_bytes: self.before.rss_bytes,
            rss_peak_bytes: rss_peak.max(after.rss_bytes),
            rss_after_bytes: after.rss_bytes,
            rss_anon_before_bytes: self.before.anon_bytes,
            rss_anon_peak_bytes: anon_peak.max(after.anon_bytes),
            rss_anon_after_bytes: after.anon_bytes,
        }
    }
}

/// CPU seconds (user + system, all threads) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)).map_or(0, |(_, ticks)| ticks);
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn snapshot(roots: &[i32]) -> Snapshot {
    let mut total = Snapshot::default();
    for pid in tree(roots) {
        let Some((_, ticks)) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_stat(&s)) else { continue };
        let (rss, anon) = std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| parse_status(&s)).unwrap_or_default();
        total.cpu_ticks += ticks;
        total.rss_bytes += rss;
        total.anon_bytes += anon;
        total.processes += 1;
    }
    total
}

/// The live pids among `roots` and all their descendants.
fn tree(roots: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some((ppid, _)) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|s| parse_stat(&s)) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found: Vec<i32> = roots.iter().copied().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect();
    let mut next = 0;
    while let Some(&pid) = found.get(next) {
        for &child in children.get(&pid).into_iter().flatten() {
            if !found.contains(&child) {
                found.push(child);
            }
        }
        next += 1;
    }
    found
}

/// `(ppid, utime + stime + cutime + cstime)` from `/proc/<pid>/stat`. The command name may
/// hold spaces and parentheses: fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<(i32, u64)> {
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = (11..=14).map(|i| fields.get(i).and_then(|f| f.parse::<u64>().ok())).sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

/// `(VmRSS, RssAnon)` in bytes from `/proc/<pid>/status` (kernel threads have neither).
fn parse_status(text: &str) -> (u64, u64) {
    let kib = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (kib("VmRSS:"), kib("RssAnon:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "42 (my (odd) name) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 3 4 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some((7, 250 + 50 + 3 + 4)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tx\nVmRSS:\t   2048 kB\nRssAnon:\t    512 kB\nRssFile:\t 1536 kB\n";
        assert_eq!(parse_status(status), (2048 * 1024, 512 * 1024));
    }

    #[test]
    fn measures_this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep runs");
        let me = std::process::id() as i32;
        let pids = tree(&[me]);
        assert!(pids.contains(&me) && pids.contains(&(child.id() as i32)), "{pids:?}");
        let sampler = Sampler::start(vec![me]);
        // Spin until this process has used 0.15 s of CPU, however long that takes on a busy
        // machine: a wall-clock spin got less than that under load.
        let cpu_start = own_cpu_seconds();
        while own_cpu_seconds() - cpu_start < 0.15 {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        let stats = sampler.finish();
        child.kill().expect("kill our sleep");
        child.wait().expect("reap our sleep");
        assert!(stats.cpu_s > 0.1 && stats.rss_peak_bytes > 0 && stats.rss_anon_peak_bytes > 0, "{stats:?}");
        assert!(stats.processes >= 2);
    }
}
