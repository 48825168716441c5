//! A streaming SHA-256 whose whole blocks are hashed in pairs across threads. Every layer
//! download in a storm runs on its own thread and verifies its own body; on a machine the client
//! shares with the server under test, that hashing is most of the client's CPU. A thread with
//! blocks to hash first looks for another thread's blocks left waiting in the process-wide
//! `Rendezvous`: if there are some, it hashes both together (`sha_ni::compress_pair`) and hands
//! the other back its state; if not, it leaves its own for a partner and sleeps, for at most
//! `PARTNER_WAIT`, before hashing them alone. Each body's digest is exactly SHA-256's; only the
//! CPU it costs changes.

use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::sha_ni;

const BLOCK_BYTES: usize = 64;

/// How long blocks wait for a partner: about what hashing 128 KiB alone takes, so a thread
/// without one loses at most that much per read.
const PARTNER_WAIT: Duration = Duration::from_micros(70);

/// Below this a pair saves less than the rendezvous costs.
const MIN_PAIRED_BYTES: usize = 4 << 10;

static RENDEZVOUS: Rendezvous = Rendezvous { waiting: Mutex::new(None), hashers: AtomicUsize::new(0), paired_bytes: AtomicU64::new(0) };

/// Bytes this process has hashed two messages at a time so far (each pair counts both).
pub fn paired_bytes() -> u64 {
    RENDEZVOUS.paired_bytes.load(Ordering::Relaxed)
}

/// SHA-256 of everything passed to `update`, as `sha2::Sha256` computes it.
pub struct PairedSha256 {
    state: [u32; 8],
    /// Bytes of a block not yet complete.
    partial: [u8; BLOCK_BYTES],
    partial_len: usize,
    total_len: u64,
}

impl PairedSha256 {
    pub fn new() -> PairedSha256 {
        RENDEZVOUS.hashers.fetch_add(1, Ordering::Relaxed);
        PairedSha256 { state: sha_ni::INITIAL_STATE, partial: [0; BLOCK_BYTES], partial_len: 0, total_len: 0 }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total_len += bytes.len() as u64;
        if self.partial_len > 0 {
            let taken = (BLOCK_BYTES - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + taken].copy_from_slice(&bytes[..taken]);
            self.partial_len += taken;
            bytes = &bytes[taken..];
            if self.partial_len < BLOCK_BYTES {
                return;
            }
            sha_ni::compress(&mut self.state, &self.partial);
            self.partial_len = 0;
        }
        let whole = bytes.len() - bytes.len() % BLOCK_BYTES;
        RENDEZVOUS.compress(&mut self.state, &bytes[..whole]);
        let rest = &bytes[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    pub fn finalize(mut self) -> [u8; 32] {
        // The padding: 0x80, zeros, the length in bits; one block or two.
        let mut tail = [0u8; 2 * BLOCK_BYTES];
        tail[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
        tail[self.partial_len] = 0x80;
        let end = if self.partial_len + 1 + 8 <= BLOCK_BYTES { BLOCK_BYTES } else { 2 * BLOCK_BYTES };
        tail[end - 8..end].copy_from_slice(&self.total_len.wrapping_mul(8).to_be_bytes());
        sha_ni::compress(&mut self.state, &tail[..end]);
        let mut digest = [0u8; 32];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

impl Drop for PairedSha256 {
    fn drop(&mut self) {
        RENDEZVOUS.hashers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where blocks wait for a partner: at most one thread's at a time.
struct Rendezvous {
    waiting: Mutex<Option<Waiting>>,
    /// Hashers alive: with one, nobody can come.
    hashers: AtomicUsize,
    paired_bytes: AtomicU64,
}

/// One thread's blocks, lent while the thread sleeps in `Rendezvous::compress_some`.
struct Waiting {
    state: *mut [u32; 8],
    blocks: *const u8,
    len: usize,
    handback: Arc<Handback>,
}

// SAFETY: the pointers are only followed by the one thread that takes `Waiting` out of the
// rendezvous, before it calls `Handback::hand_back`; until then their owner neither reads nor
// writes them, nor returns.
unsafe impl Send for Waiting {}

impl Rendezvous {
    fn lock(&self) -> MutexGuard<'_, Option<Waiting>> {
        // Nothing panics while holding the lock; a poisoned one still holds a valid Option.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn compress(&self, state: &mut [u32; 8], mut blocks: &[u8]) {
        while !blocks.is_empty() {
            let hashed = self.compress_some(state, blocks);
            blocks = &blocks[hashed..];
        }
    }

    /// Folds a leading part of `blocks` into `state`; returns how many bytes.
    fn compress_some(&self, state: &mut [u32; 8], blocks: &[u8]) -> usize {
        if blocks.len() < MIN_PAIRED_BYTES || !sha_ni::pairs_help() || self.hashers.load(Ordering::Relaxed) < 2 {
            sha_ni::compress(state, blocks);
            return blocks.len();
        }
        let mut waiting = self.lock();
        if let Some(partner) = waiting.take() {
            drop(waiting);
            let hashed = Self::compress_with(partner, state, blocks);
            self.paired_bytes.fetch_add(2 * hashed as u64, Ordering::Relaxed);
            return hashed;
        }
        let handback = Arc::new(Handback { hashed: AtomicUsize::new(NOT_YET), owner: thread::current() });
        *waiting = Some(Waiting { state: ptr::from_mut(state), blocks: blocks.as_ptr(), len: blocks.len(), handback: Arc::clone(&handback) });
        drop(waiting);
        if let Some(hashed) = handback.wait_until(Instant::now() + PARTNER_WAIT) {
            return hashed;
        }
        let mut waiting = self.lock();
        if waiting.as_ref().is_some_and(|w| Arc::ptr_eq(&w.handback, &handback)) {
            *waiting = None;
            drop(waiting);
            sha_ni::compress(state, blocks);
            return blocks.len();
        }
        // A partner took them just now and is hashing.
        drop(waiting);
        handback.wait()
    }

    /// Hashes the common length of `partner`'s blocks and ours; returns ours hashed.
    fn compress_with(partner: Waiting, state: &mut [u32; 8], blocks: &[u8]) -> usize {
        let len = partner.len.min(blocks.len());
        // SAFETY: see `Waiting`: its owner sleeps until `hand_back`, its state and blocks alive
        // and untouched; `len` is within its blocks.
        let (partner_state, partner_blocks) = unsafe { (&mut *partner.state, std::slice::from_raw_parts(partner.blocks, len)) };
        sha_ni::compress_pair(partner_state, partner_blocks, state, &blocks[..len]);
        partner.handback.hand_back(len);
        len
    }
}

const NOT_YET: usize = usize::MAX;

/// How a partner tells a sleeping owner its blocks are hashed, and how many bytes of them.
struct Handback {
    hashed: AtomicUsize,
    owner: Thread,
}

impl Handback {
    fn hand_back(&self, hashed: usize) {
        self.hashed.store(hashed, Ordering::Release);
        self.owner.unpark();
    }

    fn wait_until(&self, deadline: Instant) -> Option<usize> {
        loop {
            let hashed = self.hashed.load(Ordering::Acquire);
            if hashed != NOT_YET {
                return Some(hashed);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            thread::park_timeout(deadline - now);
        }
    }

    fn wait(&self) -> usize {
        loop {
            let hashed = self.hashed.load(Ordering::Acquire);
            if hashed != NOT_YET {
                return hashed;
            }
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha_ni::tests::noise;
    use sha2::Digest as _;

    fn paired(pieces: impl IntoIterator<Item = impl AsRef<[u8]>>) -> [u8; 32] {
        let mut hasher = PairedSha256::new();
        for piece in pieces {
            hasher.update(piece.as_ref());
        }
        hasher.finalize()
    }

    #[test]
    fn every_length_around_the_padding_matches_sha2() {
        let data = noise(300, 1);
        for len in 0..data.len() {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(paired([&data[..len]]), want, "{len} bytes");
            assert_eq!(paired(data[..len].chunks(7)), want, "{len} bytes in 7-byte pieces");
        }
    }

    /// Many threads at once, pieces of uneven sizes, so blocks really meet partners of other
    /// lengths (and sometimes none).
    #[test]
    fn threads_hashing_together_each_get_their_own_digest() {
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| noise((3 << 20) + 1000 * i, 100 + i as u64)).collect();
        let paired_before = paired_bytes();
        std::thread::scope(|scope| {
            for (i, body) in bodies.iter().enumerate() {
                scope.spawn(move || {
                    let want: [u8; 32] = sha2::Sha256::digest(body).into();
                    let piece = 5_000 + 40_000 * i;
                    assert_eq!(paired(body.chunks(piece)), want, "body {i} in {piece}-byte pieces");
                });
            }
        });
        if sha_ni::pairs_help() {
            assert!(paired_bytes() > paired_before, "no blocks met a partner");
        }
    }
}
