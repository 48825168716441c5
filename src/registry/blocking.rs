//! Runs synchronous work (file system calls) on the executor's blocking pool, so that an
//! executor thread never waits on the disk.

/// Runs `work` on the current executor's blocking thread pool and awaits its result.
/// `work` must not panic: glommio would re-raise the panic on the executor.
pub async fn run_blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(work).await
}
