//! A fill's writes: chunks gathered into batches written (and hashed) on the blocking pool,
//! one batch in flight while the next is gathered, its bytes shown to readers once in the file.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{Exposure, Fill, WRITE_BATCH};
use crate::blocking::run_blocking;
use crate::store::{Ingest, StoreError};

/// Why a fill's writes stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task writing a batch ended without an answer (the executor is stopping).
    #[error("the cache write was lost")]
    Lost,
}

/// A batch being written: `None` if its task was lost (the executor is stopping).
type PendingWrite = Pin<Box<dyn Future<Output = Option<(Ingest, Result<u64, StoreError>)>>>>;

/// Writes chunks to the ingest in batches on the blocking pool (which also hashes them), one
/// batch in flight while the next is gathered; each batch's bytes become visible to readers as
/// soon as they are in the file. Chunks are kept as received, never copied into a batch buffer.
pub(super) struct BatchWriter {
    ingest: Option<Ingest>,
    in_flight: Option<PendingWrite>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    exposure: Exposure,
}

impl BatchWriter {
    pub(super) fn new(ingest: Ingest, exposure: Exposure) -> BatchWriter {
        BatchWriter { ingest: Some(ingest), in_flight: None, batch: Vec::new(), batch_bytes: 0, exposure }
    }

    pub(super) async fn push(&mut self, chunk: Bytes, fill: &Arc<Fill>) -> Result<(), WriteFailure> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= WRITE_BATCH {
            self.flush(fill).await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, then starts writing the gathered batch. The write is a
    /// task of its own, so it runs while the next batch is gathered (a future kept unpolled
    /// would not start), and it advances the fill's visible length itself when its bytes are
    /// in the file: readers of a range in it are answered then, not a batch later. The task is
    /// detached, so a fill that fails meanwhile does not cancel it: it ends, and the ingest it
    /// returns is dropped, deleting the temp file (a cancelled wait would leak both).
    async fn flush(&mut self, fill: &Arc<Fill>) -> Result<(), WriteFailure> {
        self.settle().await?;
        let Some(mut ingest) = self.ingest.take() else { return Ok(()) };
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes) as u64;
        let (fill, exposure) = (Arc::clone(fill), self.exposure);
        let write = run_blocking(move || {
            let written = batch.iter().try_for_each(|chunk| ingest.write(chunk)).map(|()| bytes);
            if let (Ok(bytes), Exposure::AsItArrives) = (&written, exposure) {
                fill.written.fetch_add(*bytes, Ordering::AcqRel);
                fill.changed.notify(usize::MAX);
            }
            (ingest, written)
        });
        self.in_flight = Some(Box::pin(glommio::spawn_local(write).detach()));
        Ok(())
    }

    async fn settle(&mut self) -> Result<(), WriteFailure> {
        if let Some(write) = self.in_flight.take() {
            let (ingest, written) = write.await.ok_or(WriteFailure::Lost)?;
            self.ingest = Some(ingest);
            written?;
        }
        Ok(())
    }

    pub(super) async fn finish(mut self, fill: &Arc<Fill>) -> Result<Ingest, WriteFailure> {
        self.flush(fill).await?;
        self.settle().await?;
        self.ingest.take().ok_or(WriteFailure::Lost)
    }
}
