//! The storm's counters (workspaces done and failed, bytes received) and a hand-rolled
//! progress bar drawn from them on stderr with `\r` updates, five times a second.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 30;

/// Counters every workspace thread updates.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub bytes: AtomicU64,
}

impl Counters {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// A bar redrawn until `finish`; drawing nothing when not enabled.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    pub fn start(enabled: bool, label: String, total: usize, counters: Arc<Counters>) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled.then(|| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    draw(&label, total, &counters, started.elapsed());
                    std::thread::sleep(REDRAW);
                }
                draw(&label, total, &counters, started.elapsed());
                eprintln!();
            })
        });
        Bar { stop, thread }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn draw(label: &str, total: usize, counters: &Counters, elapsed: Duration) {
    let line = render(label, total, counters.done.load(Ordering::Relaxed), counters.failed.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed), elapsed);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r{line}\x1b[K");
    let _ = stderr.flush();
}

fn render(label: &str, total: usize, done: usize, failed: usize, bytes: u64, elapsed: Duration) -> String {
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(BAR_WIDTH).min(BAR_WIDTH);
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
    let gib = bytes as f64 / (1u64 << 30) as f64;
    format!("{label} [{bar}] {done}/{total} ({failed} failed) {gib:.2} GiB {:.1} s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_bar() {
        let line = render("facade", 100, 50, 2, 3 << 30, Duration::from_millis(1500));
        assert_eq!(line, format!("facade [{}{}] 50/100 (2 failed) 3.00 GiB 1.5 s", "#".repeat(15), "-".repeat(15)));
        assert!(render("x", 0, 0, 0, 0, Duration::ZERO).contains(&"#".repeat(BAR_WIDTH)));
    }
}
