//! Runs synchronous work (file system calls, DNS lookups, bcrypt) on the executor's blocking
//! pool, so that an executor thread never waits on the disk or a resolver.

/// Runs `work` on the current executor's blocking thread pool and awaits its result.
/// `work` must not panic: glommio would re-raise the panic on the executor.
///
/// The wait is a detached task of its own, so the result is always received, and dropped if
/// no one awaits it any more. glommio's `spawn_blocking` keeps the result in a `MaybeUninit`
/// that only its own future reads: a caller cancelled while the work runs (a request past its
/// deadline, a client gone, a `select`) would leak it, and a leaked open file is a descriptor
/// and a mapping for the life of the process.
pub async fn run_blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    let waiting = glommio::spawn_local(async move { glommio::executor().spawn_blocking(work).await }).detach();
    match waiting.await {
        Some(result) => result,
        // Only a task cancelled from outside ends without its output, and nothing cancels this
        // one; the executor dropping it at shutdown drops this caller too.
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_result_no_one_waits_for_any_more_is_dropped() {
        let dropped = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&dropped);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (go, wait) = std::sync::mpsc::channel::<()>();
                let flag = Arc::clone(&seen);
                let mut waiting = Box::pin(run_blocking(move || {
                    let _ = wait.recv();
                    Dropped(flag)
                }));
                // Started, then given up (what a deadline or a client leaving does).
                assert!(futures_lite::future::poll_once(&mut waiting).await.is_none());
                drop(waiting);
                go.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(dropped.load(Ordering::SeqCst), "the result of the abandoned work was leaked");
    }
}
