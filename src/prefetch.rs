//! The `prefetch` command: warms this node's cache with every blob of the images named, through
//! the registry the server would use (same config, same cache), showing progress as bars on a
//! terminal and as plain lines otherwise; fails, naming each image and why, if any could not be
//! fetched.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::registry::{ImageStatus, PrefetchJob, PrefetchRef, PrefetchState, Registry};

/// How often progress is redrawn or reported.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Prefetches `refs` with `registry`, `concurrency` blobs at a time.
///
/// # Errors
/// The executor could not start or stopped early, or an image failed (each named with its
/// reason).
pub fn run(registry: Arc<Registry>, refs: Vec<PrefetchRef>, concurrency: usize) -> Result<(), String> {
    let job = PrefetchJob::new(1, &refs);
    let running = Arc::clone(&job);
    // The executor says when it is done by dropping this sender (also if it panics).
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("rf-prefetch")
        .spawn(move || async move {
            registry.prefetch(&refs, &running, concurrency).await;
            // What this node fetched from upstream, it publishes for the fleet before it exits.
            registry.publications_settled().await;
            drop(done);
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    let mut report = Report::new(&job, std::io::stderr().is_terminal());
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(REPORT_EVERY) {
        report.show(&job.statuses());
    }
    executor.join().map_err(|e| format!("the prefetch stopped: {e}"))?;
    let statuses = job.statuses();
    report.finish(&statuses);
    let failed: Vec<String> = statuses
        .iter()
        .filter(|s| s.state != PrefetchState::Done)
        .map(|s| format!("{}: {}", s.reference, s.reason.as_deref().unwrap_or("not finished")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} images could not be prefetched:\n  {}", failed.len(), statuses.len(), failed.join("\n  ")))
    }
}

/// Progress as bars (a terminal) or as a line per change.
enum Report {
    /// The bars, and the group that draws them (kept for as long as they are).
    Bars { bars: Vec<ProgressBar>, _group: MultiProgress },
    Lines(Vec<Option<ImageStatus>>),
}

impl Report {
    fn new(job: &PrefetchJob, terminal: bool) -> Report {
        if !terminal {
            return Report::Lines(vec![None; job.images.len()]);
        }
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let lines = job
            .images
            .iter()
            .map(|image| {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone().progress_chars("=> "));
                bar.set_prefix(image.reference.clone());
                bar
            })
            .collect();
        Report::Bars { bars: lines, _group: bars }
    }

    fn show(&mut self, statuses: &[ImageStatus]) {
        match self {
            Report::Bars { bars, .. } => {
                for (bar, status) in bars.iter().zip(statuses) {
                    bar.set_length(status.bytes_total);
                    bar.set_position(status.bytes_done);
                    bar.set_message(format!("{}/{} blobs {}", status.blobs_done, status.blobs_total, state_word(status)));
                }
            }
            Report::Lines(seen) => {
                for (last, status) in seen.iter_mut().zip(statuses) {
                    if last.as_ref() != Some(status) {
                        eprintln!("prefetch: {}", line(status));
                        *last = Some(status.clone());
                    }
                }
            }
        }
    }

    fn finish(&mut self, statuses: &[ImageStatus]) {
        self.show(statuses);
        if let Report::Bars { bars, .. } = self {
            for (bar, status) in bars.iter().zip(statuses) {
                bar.finish_with_message(format!("{}/{} blobs {}", status.blobs_done, status.blobs_total, state_word(status)));
            }
        }
    }
}

fn state_word(status: &ImageStatus) -> String {
    match (&status.state, &status.reason) {
        (PrefetchState::Failed, Some(reason)) => format!("failed: {reason}"),
        (state, _) => format!("{state:?}").to_lowercase(),
    }
}

fn line(status: &ImageStatus) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    format!(
        "{}: {}, {}/{} blobs, {:.1}/{:.1} MiB",
        status.reference,
        state_word(status),
        status.blobs_done,
        status.blobs_total,
        status.bytes_done as f64 / MIB,
        status.bytes_total as f64 / MIB
    )
}
