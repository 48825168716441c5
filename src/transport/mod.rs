//! hyper on glommio, for server and client connections: byte streams (plain, TLS), connection
//! state and timeouts, sendfile, h2 frame and TLS record batching, hyper's runtime hooks. Knows
//! nothing of HTTP semantics or of the registry. Zero-copy rests on hyper handing a body's `Bytes`
//! to `poll_write_vectored` at their own address, which its API does not promise: `stream_tests`
//! fails if that stops holding (docs/architecture.md, "Zero-copy paths").

mod client;
mod frame_batch;
mod outbox;
mod regions;
mod rt;
mod state;
mod stream;
mod syscall;
#[cfg(test)]
mod test_socket;
mod tls_stream;

pub use client::ClientIo;
pub use frame_batch::{BatchOutbox, SharedSocket};
pub use outbox::{Held, Outbox};
pub use regions::SendfileUse;
pub use rt::{GlommioTimer, LocalExec};
pub use state::{ConnectionState, InFlight, Preparing, Protocol, Timeout};
pub use stream::{HyperIo, VectoredSocket};
pub use syscall::set_nonblocking;
pub use tls_stream::AlignedTls;
