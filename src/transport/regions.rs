//! Which parts of a response body may leave by `sendfile`: slices of blob files registered
//! by the body before hyper writes them, found again by their address when hyper hands the
//! same bytes to the stream (the contract in `transport`'s module doc). Also sizes the send
//! buffer of a socket to a client on this host for what it sends.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;

use super::syscall::set_send_buffer;

/// Which body bytes a plain connection sends with sendfile; the rest is copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendfileUse {
    /// None (TLS, `sendfile: never`, or no raw socket to send on).
    #[default]
    Never,
    /// Only the bytes a response takes close behind a running fill: they were written a
    /// moment ago and are still in the CPU cache, so a receiver on this host copies them out
    /// cheaply, and every reader of the fill saves the server a copy.
    JustWritten,
    /// Those and slices of cached blobs.
    Always,
}

/// The send buffer of a socket that copies to a client on this host (the kernel doubles it).
/// Unbounded, the kernel queues megabytes per connection that leave later in softirq work on
/// the receiver's time, and under load segments wait for retransmission timeouts
/// (docs/benchmarks.md, "What a local receiver pays for sendfile").
const LOCAL_COPY_SEND_BUFFER_BYTES: libc::c_int = 256 * 1024;

/// The send buffer of a socket that sends just-written bytes to a client on this host with
/// sendfile: the most the kernel's autotuning would give it. Its queue holds page
/// references, not copies, so the bound above would only cost the fill's readers CPU.
const LOCAL_SENDFILE_SEND_BUFFER_BYTES: libc::c_int = 2 * 1024 * 1024;

/// What the send buffer of a socket to a client on this host is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalSendBuffer {
    Copies,
    Sendfile,
}

/// A socket to a client on this host whose send buffer follows what the connection sends.
#[derive(Debug)]
struct LocalSocket {
    fd: RawFd,
    sized_for: Cell<Option<LocalSendBuffer>>,
}

impl LocalSocket {
    fn size_for(&self, sending: LocalSendBuffer) {
        if self.sized_for.get() == Some(sending) {
            return;
        }
        let bytes = match sending {
            LocalSendBuffer::Copies => LOCAL_COPY_SEND_BUFFER_BYTES,
            LocalSendBuffer::Sendfile => LOCAL_SENDFILE_SEND_BUFFER_BYTES,
        };
        match set_send_buffer(self.fd, bytes) {
            Ok(()) => self.sized_for.set(Some(sending)),
            Err(e) => tracing::debug!(error = %e, ?sending, "could not size a local client's send buffer"),
        }
    }
}

/// A part of a response body that is a slice of a blob file, sendable with sendfile. It
/// holds the slice, so the mapping (and so the address range) stays alive while registered.
struct FileRegion {
    data: Bytes,
    file: Arc<File>,
    file_offset: u64,
}

/// One connection's registered file regions and its sendfile policy.
#[derive(Default)]
pub struct FileRegions {
    sendfile: SendfileUse,
    /// A plain socket to a client on this host that sends copies at all (not `Always`).
    local: Option<LocalSocket>,
    regions: RefCell<Vec<FileRegion>>,
}

impl FileRegions {
    /// `local_fd`: the socket of a plain connection to a client on this host that sends
    /// copies at all, whose send buffer is then sized for what it sends (bounded from the start).
    pub fn new(sendfile: SendfileUse, local_fd: Option<RawFd>) -> FileRegions {
        let local = local_fd.map(|fd| LocalSocket { fd, sized_for: Cell::new(None) });
        if let Some(local) = &local {
            local.size_for(LocalSendBuffer::Copies);
        }
        FileRegions { sendfile, local, regions: RefCell::new(Vec::new()) }
    }

    /// Lets `data` (a slice of `file` starting at `file_offset`) be sent with sendfile, if
    /// this connection sends such bytes so (`just_written`: taken close behind a running
    /// fill); `h2`: the connection speaks h2, which never uses sendfile.
    pub fn register(&self, data: Bytes, file: Arc<File>, file_offset: u64, just_written: bool, h2: bool) {
        let wanted = match self.sendfile {
            SendfileUse::Never => false,
            SendfileUse::JustWritten => just_written,
            SendfileUse::Always => true,
        };
        // h2 cuts bodies into frames of 16 KiB (the client's frame size); a sendfile per frame
        // costs more than copying the frame with its header in one sendmsg.
        let by_sendfile = wanted && !h2;
        if let Some(local) = &self.local {
            local.size_for(if by_sendfile { LocalSendBuffer::Sendfile } else { LocalSendBuffer::Copies });
        }
        if by_sendfile {
            self.regions.borrow_mut().push(FileRegion { data, file, file_offset });
        }
    }

    /// The file descriptor and file offset behind `slice`, if it lies in a registered region.
    pub fn file_behind(&self, slice: &[u8]) -> Option<(RawFd, u64)> {
        let start = slice.as_ptr() as usize;
        self.regions.borrow().iter().find_map(|region| {
            let region_start = region.data.as_ptr() as usize;
            let inside = start >= region_start && start + slice.len() <= region_start + region.data.len();
            inside.then(|| (region.file.as_raw_fd(), region.file_offset + (start - region_start) as u64))
        })
    }

    /// Forgets regions whose last byte has been sent (`end` is one past the last byte sent).
    pub fn sent_up_to(&self, end: usize) {
        self.regions.borrow_mut().retain(|r| r.data.as_ptr() as usize + r.data.len() != end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_regions_are_found_by_address_and_forgotten_when_sent() {
        let regions = FileRegions::new(SendfileUse::Always, None);
        let file = Arc::new(tempfile::tempfile().unwrap());
        let data = Bytes::from(vec![7u8; 100]);
        regions.register(data.slice(10..90), Arc::clone(&file), 10, false, false);
        let inner = data.slice(20..30);
        assert_eq!(regions.file_behind(&inner), Some((file.as_raw_fd(), 20)));
        assert_eq!(regions.file_behind(&data.slice(0..30)), None, "not wholly inside");
        regions.sent_up_to(data.as_ptr() as usize + 90);
        assert_eq!(regions.file_behind(&inner), None);
    }

    #[test]
    fn only_the_policy_s_bytes_are_registered_and_never_on_h2() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let data = Bytes::from(vec![1u8; 10]);
        let registered = |policy, just_written, h2| {
            let regions = FileRegions::new(policy, None);
            regions.register(data.clone(), Arc::clone(&file), 0, just_written, h2);
            regions.file_behind(&data).is_some()
        };
        assert!(registered(SendfileUse::Always, false, false));
        assert!(!registered(SendfileUse::Always, false, true), "h2");
        assert!(!registered(SendfileUse::JustWritten, false, false), "a cached blob under `remote`");
        assert!(registered(SendfileUse::JustWritten, true, false));
        assert!(!registered(SendfileUse::Never, true, false));
    }
}
