//! Publication to IPFS of the blobs that came from an upstream registry, so that the other
//! nodes of the fleet fetch them from each other. Never in the way of a pull: a blob is offered
//! after it is verified and cached, waits in its core's bounded queue (full: skipped), is
//! published by one core at a time, and is skipped when Redis already names its CID.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use crate::blocking::run_blocking;
use crate::ipfs::{BlobStream, Claim, Ipfs};
use crate::metrics::{self, Publication};
use crate::oci::Digest;
use crate::store::CacheDir;
use crate::table::SharedMap;

/// How often `settled` looks at the queue.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Bytes read from the cache file per read on the blocking pool.
const READ_BYTES: usize = 1 << 20;

/// A blob waiting for publication: its digest, size, and this node's claim on it for the
/// fleet, if it holds one (given back when dropped: once published, or given up).
type Offered = (Digest, u64, Option<Claim>);

/// Blobs waiting on one executor for a publisher.
#[derive(Default)]
struct CoreQueue {
    waiting: VecDeque<Offered>,
    draining: bool,
}

thread_local! {
    /// Each executor's queue, by publisher (a process may hold several servers in tests).
    static QUEUES: RefCell<HashMap<usize, CoreQueue>> = RefCell::new(HashMap::new());
}

pub struct Publisher {
    ipfs: Ipfs,
    cache: Arc<CacheDir>,
    /// Digests being published now, on any core.
    publishing: SharedMap<Digest, Arc<()>>,
}

impl Publisher {
    pub fn new(ipfs: Ipfs, cache: Arc<CacheDir>) -> Arc<Publisher> {
        Arc::new(Publisher { ipfs, cache, publishing: SharedMap::new() })
    }

    /// Queues `digest` (`size` bytes, verified and in the cache) for publication on this
    /// executor; never waits. A full queue skips it. `claim`: this node's claim on it for the
    /// fleet, given back when the publication ends.
    pub fn offer(self: &Arc<Self>, digest: &Digest, size: u64, claim: Option<Claim>) {
        let key = Arc::as_ptr(self) as usize;
        let start = QUEUES.with(|queues| {
            let mut queues = queues.borrow_mut();
            let queue = queues.entry(key).or_default();
            if queue.waiting.len() >= self.ipfs.settings().publish_queue {
                return None;
            }
            queue.waiting.push_back((digest.clone(), size, claim));
            Some(!std::mem::replace(&mut queue.draining, true))
        });
        match start {
            None => {
                tracing::debug!(%digest, "not published: this core's publication queue is full");
                metrics::ipfs_publication(Publication::QueueFull, 0);
            }
            Some(true) => {
                let publisher = Arc::clone(self);
                glommio::spawn_local(async move { publisher.drain(key).await }).detach();
            }
            Some(false) => {}
        }
    }

    /// Waits until this executor has published (or given up on) everything offered on it:
    /// for a process that is about to end (the `prefetch` command), whose publications would
    /// otherwise be dropped with their claims. Each publication is bounded by
    /// `ipfs.publishTimeoutMs`.
    pub async fn settled(self: &Arc<Self>) {
        let key = Arc::as_ptr(self) as usize;
        while QUEUES.with(|queues| queues.borrow().get(&key).is_some_and(|queue| queue.draining)) {
            glommio::timer::sleep(SETTLE_POLL).await;
        }
    }

    /// Publishes this executor's queue, one blob at a time, until it is empty.
    async fn drain(self: Arc<Self>, key: usize) {
        loop {
            let next = QUEUES.with(|queues| {
                let mut queues = queues.borrow_mut();
                let queue = queues.entry(key).or_default();
                let next = queue.waiting.pop_front();
                queue.draining = next.is_some();
                next
            });
            let Some((digest, size, claim)) = next else { return };
            let (outcome, bytes) = self.publish(&digest, size).await;
            metrics::ipfs_publication(outcome, bytes);
            drop(claim);
        }
    }

    async fn publish(&self, digest: &Digest, size: u64) -> (Publication, u64) {
        let mine = Arc::new(());
        if !Arc::ptr_eq(&self.publishing.get_or_insert_with(digest.clone(), || Arc::clone(&mine)), &mine) {
            return (Publication::InProgress, 0);
        }
        let outcome = self.publish_once(digest, size).await;
        self.publishing.remove(digest);
        outcome
    }

    async fn publish_once(&self, digest: &Digest, size: u64) -> (Publication, u64) {
        match self.ipfs.has_record(digest).await {
            Ok(true) => return (Publication::Known, 0),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%digest, %error, "not published: Redis cannot say whether it is");
                return (Publication::Failed, 0);
            }
        }
        let Ok(path) = self.cache.blob_path(digest) else { return (Publication::Gone, 0) };
        let file = match run_blocking(move || File::open(path)).await {
            Ok(file) => Arc::new(file),
            Err(_) => return (Publication::Gone, 0),
        };
        match self.ipfs.publish(digest, size, read_in_chunks(file, size)).await {
            Ok(cid) => {
                tracing::info!(%digest, cid, size, "published to IPFS");
                (Publication::Published, size)
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "not published to IPFS");
                (Publication::Failed, 0)
            }
        }
    }
}

/// `size` bytes of `file`, read `READ_BYTES` at a time on the blocking pool: never a whole
/// blob in memory, never a read on the executor.
fn read_in_chunks(file: Arc<File>, size: u64) -> BlobStream {
    let chunks = futures_lite::stream::unfold(0u64, move |offset| {
        let file = Arc::clone(&file);
        async move {
            if offset >= size {
                return None;
            }
            let len = (size - offset).min(READ_BYTES as u64) as usize;
            let read = run_blocking(move || {
                let mut buffer = vec![0u8; len];
                file.read_exact_at(&mut buffer, offset).map(|()| Bytes::from(buffer))
            })
            .await;
            // A failed read ends the stream (and so the request body, and the add).
            let next = if read.is_ok() { offset + len as u64 } else { size };
            Some((read, next))
        }
    });
    Box::pin(chunks)
}
