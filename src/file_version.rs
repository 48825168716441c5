//! What tells a polled file's versions apart: its modification time and size. Every file
//! the facade re-reads when it changes (config, TLS and credential files, the fixed specs,
//! the docker credentials) is compared by this, so they all notice the same edits.

use std::path::Path;
use std::time::SystemTime;

/// `None`: the file cannot be looked at (missing, unreadable).
pub type FileVersion = Option<(SystemTime, u64)>;

pub fn file_version(path: &Path) -> FileVersion {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}
