//! hyper on glommio: the byte streams hyper reads and writes (plain sockets, TLS), each
//! connection's activity and timeouts, sendfile of blob files, batching of h2 frames and TLS
//! records, and hyper's runtime hooks, for server and client connections. Knows nothing of
//! HTTP semantics or of the registry.
//!
//! Zero-copy rests on a contract with hyper that its API does not promise: on HTTP/1.1 with
//! vectored writes, hyper hands a body chunk's `Bytes` to `poll_write_vectored` as a slice at
//! the chunk's own address, not a copy. A response body registers the file behind a blob
//! slice (`ConnectionState::register_file_region`) before hyper polls it; the stream finds
//! the slice again by its address and sends the file's pages with `sendfile` instead of the
//! mapped bytes. If hyper ever copied bodies first, nothing would break but every cached blob
//! would be copied through user space: `stream_tests` serves a body whose memory and file
//! differ and fails unless the client receives the file's bytes.

mod client;
mod frame_batch;
mod outbox;
mod regions;
mod rt;
mod state;
mod stream;
mod syscall;
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
