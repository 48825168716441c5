//! What a stream holds back from a wake-up's writes (h2 frames, TLS records) and the
//! connection loop sends once hyper is done for that wake-up.

use std::task::{Context, Poll};

/// Bytes a connection's writes left waiting, sent when its task is about to sleep.
pub trait Outbox {
    /// Sends everything held; `Pending` (with the waker registered) while the socket is full.
    fn poll_send_held(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Held>>;
}

/// What an outbox had to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Nothing,
    Sent,
}
