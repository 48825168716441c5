//! The few socket calls glommio's streams do not make for us: a vectored non-blocking
//! `sendmsg`, `sendfile`, and the socket options the send path sets.

use std::io::IoSlice;
use std::os::fd::RawFd;

/// Whether a socket call only says "not now".
pub fn would_block(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
}

/// One non-blocking `sendmsg` of up to `IOV_MAX` slices; `more` tells the kernel that more
/// data follows at once (MSG_MORE), so a response head and its file body share segments.
pub fn sendmsg_nonblocking(fd: RawFd, bufs: &[IoSlice<'_>], more: bool) -> std::io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let count = bufs.len().min(IOV_MAX);
    if bufs[..count].iter().all(|b| b.is_empty()) {
        return Ok(0);
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: an all-zero msghdr is valid; we then point it at `count` IoSlices, which are
    // ABI-compatible with iovec and outlive the call.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = count as _;
        libc::sendmsg(fd, &msg, flags)
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// One `sendfile` of up to `len` bytes from `file_fd` at `offset`; the socket is non-blocking.
pub fn sendfile_nonblocking(socket: RawFd, file_fd: RawFd, offset: u64, len: usize) -> std::io::Result<usize> {
    let mut offset = offset as libc::off_t;
    // SAFETY: both descriptors are open for the duration of the call (the file is held by a
    // registered region); sendfile only reads the file and writes the socket.
    let sent = unsafe { libc::sendfile(socket, file_fd, &mut offset, len) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Switches a socket to non-blocking mode, which `sendfile` (it has no flags) relies on.
///
/// # Errors
/// `fcntl` failed.
pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, reading and then setting its status flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bounds the kernel's send buffer of `fd` to `bytes` (the kernel doubles the figure for its
/// bookkeeping), which also turns off its autotuning for the socket.
pub fn set_send_buffer(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt on a descriptor we own, with a pointer to an int and its size.
    let ok = unsafe {
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&bytes as *const libc::c_int).cast(), size) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
