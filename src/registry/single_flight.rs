//! One run of some work per key at a time, across all cores: the first asker runs it, the
//! others wait for its result. If the asker is cancelled (its client left), the work is
//! abandoned and one of the waiters runs it instead, so nobody waits forever.

use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use event_listener::Event;

use crate::table::SharedMap;

enum State<V> {
    Running,
    Done(V),
    Abandoned,
}

struct Flight<V> {
    state: Mutex<State<V>>,
    changed: Event,
}

impl<V: Clone> Flight<V> {
    fn finish(&self, state: State<V>) {
        if let Ok(mut current) = self.state.lock() {
            *current = state;
        }
        self.changed.notify(usize::MAX);
    }

    /// `Some(value)` once done, `None` if abandoned; waits while running.
    async fn wait(&self) -> Option<V> {
        loop {
            let listener = self.changed.listen();
            match self.state.lock().as_deref() {
                Ok(State::Done(value)) => return Some(value.clone()),
                Ok(State::Abandoned) | Err(_) => return None,
                Ok(State::Running) => {}
            }
            listener.await;
        }
    }
}

pub struct SingleFlight<K, V> {
    table: SharedMap<K, Arc<Flight<V>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { table: SharedMap::default() }
    }
}

/// Removes a flight from the table when its runner finishes or is dropped mid-way.
struct Runner<'a, K: Hash + Eq + Send + Sync, V: Clone + Send + Sync> {
    table: &'a SharedMap<K, Arc<Flight<V>>>,
    key: K,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<K: Hash + Eq + Send + Sync, V: Clone + Send + Sync> Drop for Runner<'_, K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.flight.finish(State::Abandoned);
        }
        self.table.remove(&self.key);
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send + Sync,
{
    /// The result of `work` for `key`: run here if no one runs it, else awaited.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let mut work = Some(work);
        loop {
            let mine = Arc::new(Flight { state: Mutex::new(State::Running), changed: Event::new() });
            let flight = self.table.get_or_insert_with(key.clone(), || Arc::clone(&mine));
            let runs_here = Arc::ptr_eq(&flight, &mine);
            if let Some(work) = runs_here.then(|| work.take()).flatten() {
                let mut runner = Runner { table: &self.table, key: key.clone(), flight, done: false };
                let value = work().await;
                runner.flight.finish(State::Done(value.clone()));
                runner.done = true;
                return value;
            }
            if let Some(value) = flight.wait().await {
                return value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_askers_share_one_run_and_a_cancelled_runner_is_replaced() {
        let flights: Arc<SingleFlight<&'static str, usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        glommio::LocalExecutorBuilder::default()
            .spawn({
                let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
                move || async move {
                    let work = |runs: Arc<AtomicUsize>| move || async move {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    };
                    let tasks: Vec<_> = (0..8)
                        .map(|_| {
                            let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
                            glommio::spawn_local(async move { flights.run("k", work(runs)).await })
                        })
                        .collect();
                    for task in tasks {
                        assert_eq!(task.await, 1, "every asker gets the one run's result");
                    }
                    // A runner cancelled mid-way: the waiter runs the work itself.
                    let cancelled = glommio::spawn_local({
                        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
                        async move { flights.run("k2", work(runs)).await }
                    });
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    let waiter = glommio::spawn_local({
                        let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
                        async move { flights.run("k2", work(runs)).await }
                    });
                    let _ = cancelled.cancel().await;
                    assert_eq!(waiter.await, 2);
                }
            })
            .expect("executor")
            .join()
            .expect("test body");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
