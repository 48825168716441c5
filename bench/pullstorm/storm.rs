//! A storm: N workspaces started all at once or at a given rate, one thread each, each
//! running its pull; every workspace's time-to-image is measured from its scheduled start to
//! its pull's end. Knows nothing of how a pull is done (HTTP or containerd).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::progress::Counters;
use crate::pull::Pulled;

/// Workspace threads run one layer fetch themselves: a little more stack than layer threads.
const WORKSPACE_THREAD_STACK_BYTES: usize = 512 << 10;

/// How one workspace's image gets pulled.
pub trait Puller: Sync {
    /// Pulls `image`, counting body bytes into `counters` as they arrive.
    ///
    /// # Errors
    /// Why the workspace did not get its image, in one line.
    fn pull(&self, image: &str, counters: &Counters) -> Result<Pulled, String>;
}

/// The workspaces of a storm and when each starts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (workspace number, image) pairs.
    pub workspaces: Vec<(usize, String)>,
    /// Workspaces started per second; `None`: all at once.
    pub rate_per_s: Option<f64>,
}

impl Plan {
    fn offset(&self, position: usize) -> Duration {
        match self.rate_per_s {
            Some(rate) if rate > 0.0 => Duration::from_secs_f64(position as f64 / rate),
            _ => Duration::ZERO,
        }
    }
}

/// One workspace's result.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub workspace: usize,
    pub image: String,
    /// Scheduled start, from the storm's start.
    pub start_ms: f64,
    /// Time-to-image; `None` if the pull failed.
    pub ms: Option<f64>,
    pub bytes: u64,
    pub manifest_digest: Option<String>,
    pub verified_blobs: usize,
    /// When the workspace also read files of its rootfs: how long its pull alone took.
    pub pull_ms: Option<f64>,
    pub error: Option<String>,
}

pub struct Outcome {
    pub runs: Vec<Run>,
    /// From the storm's start to the last workspace's end.
    pub wall: Duration,
    /// When the storm started, by the wall clock: to line a storm up with other records of
    /// the machine (a probe, a monitor) taken during the same run.
    pub started: SystemTime,
}

/// Holds every workspace thread until all are spawned, then hands them the start instant.
struct Gate {
    start: Mutex<Option<Instant>>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) -> Instant {
        let mut start = self.start.lock().expect("gate lock");
        loop {
            if let Some(instant) = *start {
                return instant;
            }
            start = self.opened.wait(start).expect("gate lock");
        }
    }

    fn open(&self) -> Instant {
        let now = Instant::now();
        *self.start.lock().expect("gate lock") = Some(now);
        self.opened.notify_all();
        now
    }
}

pub fn run(plan: &Plan, puller: &dyn Puller, counters: &Counters) -> Outcome {
    let gate = Gate { start: Mutex::new(None), opened: Condvar::new() };
    let (runs, wall, started) = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .workspaces
            .iter()
            .enumerate()
            .map(|(position, (workspace, image))| {
                let offset = plan.offset(position);
                let gate = &gate;
                let spawned = std::thread::Builder::new()
                    .name(format!("ws-{workspace}"))
                    .stack_size(WORKSPACE_THREAD_STACK_BYTES)
                    .spawn_scoped(scope, move || one(*workspace, image, gate.wait() + offset, offset, puller, counters));
                // Boxed: a `Run` is large beside a join handle, and a thread rarely fails to start.
                spawned.map_err(|e| Box::new(failed_to_start(*workspace, image, offset, &e, counters)))
            })
            .collect();
        let start = gate.open();
        let started = SystemTime::now();
        let runs: Vec<Run> = handles
            .into_iter()
            .map(|handle| match handle {
                Ok(thread) => thread.join().expect("a workspace thread panicked"),
                Err(not_started) => *not_started,
            })
            .collect();
        (runs, start.elapsed(), started)
    });
    Outcome { runs, wall, started }
}

fn one(workspace: usize, image: &str, scheduled: Instant, offset: Duration, puller: &dyn Puller, counters: &Counters) -> Run {
    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let result = puller.pull(image, counters);
    let elapsed = scheduled.elapsed();
    let mut run = Run { workspace, image: image.to_owned(), start_ms: offset.as_secs_f64() * 1e3, ms: None, bytes: 0, manifest_digest: None, verified_blobs: 0, pull_ms: None, error: None };
    match result {
        Ok(pulled) => {
            run.ms = Some(elapsed.as_secs_f64() * 1e3);
            run.bytes = pulled.bytes;
            run.manifest_digest = Some(pulled.manifest_digest).filter(|d| !d.is_empty());
            run.verified_blobs = pulled.verified_blobs;
            run.pull_ms = pulled.pull_ms;
            counters.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(error) => {
            run.error = Some(error);
            counters.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    run
}

fn failed_to_start(workspace: usize, image: &str, offset: Duration, error: &std::io::Error, counters: &Counters) -> Run {
    counters.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let error = Some(format!("cannot start the workspace thread: {error}"));
    Run { workspace, image: image.to_owned(), start_ms: offset.as_secs_f64() * 1e3, ms: None, bytes: 0, manifest_digest: None, verified_blobs: 0, pull_ms: None, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy;

    impl Puller for Sleepy {
        fn pull(&self, image: &str, counters: &Counters) -> Result<Pulled, String> {
            std::thread::sleep(Duration::from_millis(20));
            counters.add_bytes(10);
            if image == "bad" {
                return Err("no such image".into());
            }
            Ok(Pulled { manifest_digest: "sha256:00".into(), bytes: 10, verified_blobs: 2, pull_ms: None })
        }
    }

    #[test]
    fn all_at_once_and_at_a_rate() {
        let counters = Counters::default();
        let plan = Plan { workspaces: vec![(1, "a".into()), (2, "bad".into()), (3, "a".into())], rate_per_s: None };
        let outcome = run(&plan, &Sleepy, &counters);
        assert_eq!(outcome.runs.iter().map(|r| r.workspace).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(outcome.runs[1].error.as_deref(), Some("no such image"));
        assert!(outcome.runs.iter().all(|r| r.start_ms == 0.0));
        assert!(outcome.runs[0].ms.is_some_and(|ms| ms >= 20.0));
        assert_eq!(counters.done.load(std::sync::atomic::Ordering::Relaxed), 2);

        let paced = Plan { workspaces: vec![(1, "a".into()), (2, "a".into()), (3, "a".into())], rate_per_s: Some(20.0) };
        let outcome = run(&paced, &Sleepy, &Counters::default());
        assert_eq!(outcome.runs.iter().map(|r| r.start_ms.round() as u64).collect::<Vec<_>>(), vec![0, 50, 100]);
        assert!(outcome.wall >= Duration::from_millis(120), "{:?}", outcome.wall);
    }
}
