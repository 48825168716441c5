//! A fill's writes: chunks gathered into batches written (and hashed) on the blocking pool,
//! one batch in flight while the next is gathered.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{Exposure, Fill, WRITE_BATCH};
use crate::registry::blocking::run_blocking;
use crate::store::{Ingest, StoreError};

type PendingWrite = Pin<Box<dyn Future<Output = (Ingest, Result<u64, StoreError>)>>>;

/// Writes chunks to the ingest in batches on the blocking pool (which also hashes them), one
/// batch in flight while the next is gathered, and advances the fill's visible length after
/// each. Chunks are kept as received, never copied into a batch buffer.
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

    pub(super) async fn push(&mut self, chunk: Bytes, fill: &Fill) -> Result<(), StoreError> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= WRITE_BATCH {
            self.flush(fill).await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, then starts writing the gathered batch.
    async fn flush(&mut self, fill: &Fill) -> Result<(), StoreError> {
        self.settle(fill).await?;
        let Some(mut ingest) = self.ingest.take() else { return Ok(()) };
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes) as u64;
        self.in_flight = Some(Box::pin(run_blocking(move || {
            let written = batch.iter().try_for_each(|chunk| ingest.write(chunk)).map(|()| bytes);
            (ingest, written)
        })));
        Ok(())
    }

    async fn settle(&mut self, fill: &Fill) -> Result<(), StoreError> {
        if let Some(write) = self.in_flight.take() {
            let (ingest, written) = write.await;
            self.ingest = Some(ingest);
            let written = written?;
            if self.exposure == Exposure::AsItArrives {
                fill.written.fetch_add(written, Ordering::AcqRel);
                fill.changed.notify(usize::MAX);
            }
        }
        Ok(())
    }

    pub(super) async fn finish(mut self, fill: &Fill) -> Result<Ingest, StoreError> {
        self.flush(fill).await?;
        self.settle(fill).await?;
        self.ingest.take().ok_or_else(|| StoreError::Io {
            op: "finish",
            path: PathBuf::new(),
            source: io::Error::other("ingest lost"),
        })
    }
}
