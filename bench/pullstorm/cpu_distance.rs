//! How far apart, in cache terms, two CPUs are while a storm runs (`--cpu-probe`): two threads,
//! pinned one to each of the first two CPUs pullstorm may use and at real-time priority where
//! allowed, wake together every 200 ms and time a cache line's round trip between them. On a
//! VM the host may run the two vCPUs on cores that share a last-level cache or on cores that do
//! not, and move them from one to the other while the guest runs (a 2-vCPU EPYC here: 50-100 ns
//! against 275-375 ns, changing from one storm to the next). A server that copies into socket
//! buffers its client reads on the other CPU pays for that distance on every byte; one that
//! sends with sendfile hardly does. So each target's report says what the storm ran under.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

const PERIOD: Duration = Duration::from_millis(200);
/// Round trips per sample: about 0.3 ms near, 1.7 ms far, so the probe takes under 1% of a CPU.
const ROUND_TRIPS: u64 = 5_000;
/// How long one thread waits for the other to turn up for a sample before giving it up.
const RENDEZVOUS_WAIT: Duration = Duration::from_millis(2);
/// A sample that takes longer was interrupted (an interrupt storm, a thread without real-time
/// priority preempted): it is counted as missed, not as a distance.
const SAMPLE_LIMIT: Duration = Duration::from_millis(20);
/// Spins between clock reads while waiting, so the wait adds no clock read to a round trip.
const SPINS_PER_CLOCK_READ: u32 = 1024;
/// The lowest real-time priority: enough to run as soon as the sample is due.
const REALTIME_PRIORITY: libc::c_int = 1;

/// What the probe saw during one target's storm.
#[derive(Debug, Clone, Serialize)]
pub struct CpuDistance {
    pub cpus: [usize; 2],
    /// Both threads ran at real-time priority (else a busy CPU may delay or stretch samples).
    pub realtime: bool,
    /// The median of `samples_ns`.
    pub median_ns: Option<f64>,
    /// One round trip of a cache line between the two CPUs, per sample.
    pub samples_ns: Vec<f64>,
    /// Samples not taken: one thread did not turn up in time, or a sample overran its limit.
    pub missed: usize,
    /// CPU seconds the probe's threads used (left out of the client's CPU seconds).
    pub cpu_s: f64,
}

/// A cache line of its own, so the two values the threads spin on do not share one.
#[repr(align(128))]
struct Line(AtomicU64);

struct Shared {
    /// The round trip's line: the initiator writes odd values, the responder the next even one.
    ball: Line,
    /// The number of the sample the responder is ready for.
    ready: Line,
    stop: Mutex<bool>,
    stopped: Condvar,
    origin: Instant,
}

impl Shared {
    /// Sleeps until the `sample`th period starts; false if the probe was stopped first.
    fn sleep_until_sample(&self, sample: u64) -> bool {
        let due = self.origin + PERIOD.saturating_mul(u32::try_from(sample).unwrap_or(u32::MAX));
        let mut stop = lock(&self.stop);
        loop {
            let now = Instant::now();
            if *stop {
                return false;
            }
            if now >= due {
                return true;
            }
            stop = self.stopped.wait_timeout(stop, due - now).map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
    }
}

/// The first value of `sample`'s round trips: values never repeat between samples, so a
/// thread that gave a sample up cannot take a late value from it for the next one.
fn first_value(sample: u64) -> u64 {
    sample * 4 * ROUND_TRIPS
}

fn lock(mutex: &Mutex<bool>) -> MutexGuard<'_, bool> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spins until `line` holds `value`; false if `limit` passes first.
fn spin_until(line: &Line, value: u64, limit: Instant) -> bool {
    let mut spins = 0u32;
    while line.0.load(Ordering::Acquire) != value {
        spins = spins.wrapping_add(1);
        if spins % SPINS_PER_CLOCK_READ == 0 && Instant::now() > limit {
            return false;
        }
        std::hint::spin_loop();
    }
    true
}

/// What one probe thread hands back when it stops: how it ran, and what its side measured.
struct ThreadEnd<T> {
    realtime: bool,
    cpu_s: f64,
    measured: T,
}

/// The initiator's measurements.
struct Samples {
    samples_ns: Vec<f64>,
    missed: usize,
}

pub struct Probe {
    cpus: [usize; 2],
    shared: Arc<Shared>,
    initiator: JoinHandle<ThreadEnd<Samples>>,
    responder: JoinHandle<ThreadEnd<()>>,
}

impl Probe {
    /// Starts the probe on the first two CPUs this process may use; `None` with fewer than two.
    pub fn start() -> Option<Probe> {
        let cpus = first_two_allowed_cpus()?;
        let shared = Arc::new(Shared {
            ball: Line(AtomicU64::new(0)),
            ready: Line(AtomicU64::new(0)),
            stop: Mutex::new(false),
            stopped: Condvar::new(),
            origin: Instant::now(),
        });
        let responder = spawn_pinned(&shared, cpus[1], respond).ok()?;
        let initiator = match spawn_pinned(&shared, cpus[0], initiate) {
            Ok(thread) => thread,
            Err(_) => {
                stop(&shared);
                let _ = responder.join();
                return None;
            }
        };
        Some(Probe { cpus, shared, initiator, responder })
    }

    pub fn finish(self) -> CpuDistance {
        stop(&self.shared);
        let initiator = self.initiator.join().ok();
        let responder = self.responder.join().ok();
        let realtime = initiator.as_ref().is_some_and(|t| t.realtime) && responder.as_ref().is_some_and(|t| t.realtime);
        let cpu_s = initiator.as_ref().map_or(0.0, |t| t.cpu_s) + responder.as_ref().map_or(0.0, |t| t.cpu_s);
        let (samples_ns, missed) = initiator.map_or((Vec::new(), 0), |t| (t.measured.samples_ns, t.measured.missed));
        CpuDistance { cpus: self.cpus, realtime, median_ns: median(&samples_ns), samples_ns, missed, cpu_s }
    }
}

/// Runs `body` on a thread pinned to `cpu`, at real-time priority where allowed.
fn spawn_pinned<T: Send + 'static>(shared: &Arc<Shared>, cpu: usize, body: fn(&Shared) -> T) -> std::io::Result<JoinHandle<ThreadEnd<T>>> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new().name(format!("cpu-probe-{cpu}")).spawn(move || {
        let realtime = pin_to(cpu) && raise_to_realtime();
        let measured = body(&shared);
        ThreadEnd { realtime, cpu_s: thread_cpu_seconds(), measured }
    })
}

fn stop(shared: &Shared) {
    *lock(&shared.stop) = true;
    shared.stopped.notify_all();
}

/// The timing side: waits for the responder, then sends the ball `ROUND_TRIPS` times.
fn initiate(shared: &Shared) -> Samples {
    let (mut samples_ns, mut missed) = (Vec::new(), 0);
    for sample in 1.. {
        if !shared.sleep_until_sample(sample) {
            break;
        }
        if !spin_until(&shared.ready, sample, Instant::now() + RENDEZVOUS_WAIT) {
            missed += 1;
            continue;
        }
        let base = first_value(sample);
        let started = Instant::now();
        let limit = started + SAMPLE_LIMIT;
        let completed = (0..ROUND_TRIPS).all(|i| {
            shared.ball.0.store(base + 2 * i + 1, Ordering::Release);
            spin_until(&shared.ball, base + 2 * i + 2, limit)
        });
        if completed {
            samples_ns.push(started.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64);
        } else {
            missed += 1;
        }
    }
    Samples { samples_ns, missed }
}

/// The answering side: says it is ready, then returns each ball it receives.
fn respond(shared: &Shared) {
    for sample in 1.. {
        if !shared.sleep_until_sample(sample) {
            break;
        }
        shared.ready.0.store(sample, Ordering::Release);
        let base = first_value(sample);
        if !spin_until(&shared.ball, base + 1, Instant::now() + RENDEZVOUS_WAIT) {
            continue;
        }
        let limit = Instant::now() + SAMPLE_LIMIT;
        for i in 0..ROUND_TRIPS {
            if !spin_until(&shared.ball, base + 2 * i + 1, limit) {
                break;
            }
            shared.ball.0.store(base + 2 * i + 2, Ordering::Release);
        }
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn first_two_allowed_cpus() -> Option<[usize; 2]> {
    // SAFETY: sched_getaffinity writes the cpu_set_t we own; CPU_ISSET reads it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).take(2).collect()
    };
    match allowed[..] {
        [a, b] => Some([a, b]),
        _ => None,
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: the cpu_set_t is ours; sched_setaffinity with pid 0 applies to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Moves the calling thread to SCHED_FIFO; false without the privilege (CAP_SYS_NICE).
fn raise_to_realtime() -> bool {
    let param = libc::sched_param { sched_priority: REALTIME_PRIORITY };
    // SAFETY: sched_setscheduler with pid 0 applies to this thread and only reads `param`.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// CPU seconds the calling thread has used.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_times_round_trips_between_two_cpus() {
        let Some(probe) = Probe::start() else {
            assert!(first_two_allowed_cpus().is_none(), "the probe starts wherever two CPUs are allowed");
            return;
        };
        std::thread::sleep(PERIOD * 3 + PERIOD / 2);
        let seen = probe.finish();
        assert_ne!(seen.cpus[0], seen.cpus[1]);
        // Without real-time priority a loaded machine may delay a thread past the last period.
        let expected = if seen.realtime { 3..=3 } else { 2..=3 };
        assert!(expected.contains(&(seen.samples_ns.len() + seen.missed)), "one sample per period: {seen:?}");
        // A round trip between two CPUs moves a cache line twice: tens of ns at the least,
        // and under the 20 ms limit of a sample spread over its round trips.
        assert!(seen.samples_ns.iter().all(|&ns| (10.0..4_100.0).contains(&ns)), "{seen:?}");
        assert!(seen.cpu_s > 0.0 && seen.cpu_s < 0.5, "{seen:?}");
    }

    #[test]
    fn a_stopped_probe_ends_at_once_and_keeps_what_it_saw() {
        let Some(probe) = Probe::start() else { return };
        let asked = Instant::now();
        let seen = probe.finish();
        assert!(asked.elapsed() < PERIOD, "finish waited {:?} for the next sample", asked.elapsed());
        assert_eq!((seen.samples_ns.len(), seen.missed, seen.median_ns), (0, 0, None));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
