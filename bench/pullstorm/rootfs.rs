//! Reading files of a pulled image's rootfs, as a starting workspace does: a read-only view of
//! the image's top snapshot (named by the chain ID of its config's diff_ids) on the snapshotter
//! that unpacked it or mounts it lazily, mounted on the host; unmounted and removed afterwards.
//! (containerd 1.6's `ctr image mount` ignores `--snapshotter`, hence the view.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::Digest as _;

/// A mounted view: its snapshotter, its snapshot key and where it is mounted.
#[derive(Debug)]
pub struct View {
    pub snapshotter: String,
    pub key: String,
    pub mount: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("the image's config lists no diff_ids")]
    NoLayers,
    #[error("{what}: {reason}")]
    Command { what: String, reason: String },
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

/// The chain ID of the top layer: `d0`, then `sha256(chain + " " + d_i)` for each next one.
///
/// # Errors
/// No diff_ids.
pub fn chain_id(diff_ids: &[String]) -> Result<String, RootfsError> {
    let (first, rest) = diff_ids.split_first().ok_or(RootfsError::NoLayers)?;
    Ok(rest.iter().fold(first.clone(), |chain, diff_id| format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{chain} {diff_id}"))))))
}

impl View {
    /// Makes view `key` of snapshot `chain_id` on `snapshotter` with `ctr` (which makes a
    /// command with its socket and namespace set) and mounts it at `mount` (created). If the
    /// view cannot be mounted, it is closed (unmounted, its snapshot removed) before the error
    /// is returned: nothing else knows of it to clean it up.
    ///
    /// # Errors
    /// ctr or mount fail, or ctr prints no mount command.
    pub fn open(ctr: impl Fn() -> Command, snapshotter: &str, chain_id: &str, key: &str, mount: &Path) -> Result<View, RootfsError> {
        std::fs::create_dir_all(mount).map_err(|source| RootfsError::Read { path: mount.to_owned(), source })?;
        let target = mount.to_string_lossy().into_owned();
        let printed = output(ctr().args(["snapshots", "--snapshotter", snapshotter, "view", "--target", &target, key, chain_id]), "ctr snapshots view")?;
        let view = View { snapshotter: snapshotter.to_owned(), key: key.to_owned(), mount: mount.to_owned() };
        if let Err(error) = mount_all(&printed) {
            view.close(ctr());
            return Err(error);
        }
        Ok(view)
    }

    /// Unmounts the view and removes its snapshot; failures are reported, not returned.
    pub fn close(&self, ctr: Command) {
        let mut ctr = ctr;
        if let Err(e) = output(Command::new("umount").arg(&self.mount), "umount") {
            eprintln!("pullstorm: {e}");
        }
        let _ = std::fs::remove_dir(&self.mount);
        if let Err(e) = output(ctr.args(["snapshots", "--snapshotter", &self.snapshotter, "rm", &self.key]), "ctr snapshots rm") {
            eprintln!("pullstorm: {e}");
        }
    }
}

/// Runs the mount commands `ctr snapshots view` printed: one line per mount, `mount -t TYPE
/// SOURCE TARGET -o OPTIONS` (a view of several layers is one overlay mount).
fn mount_all(printed: &str) -> Result<(), RootfsError> {
    for line in printed.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"mount") {
            return Err(RootfsError::Command { what: "ctr snapshots view".into(), reason: format!("printed `{line}`, not a mount command") });
        }
        output(Command::new("mount").args(&words[1..]), "mount")?;
    }
    Ok(())
}

/// Reads `files` (relative to `root`) whole; their total size.
///
/// # Errors
/// A file cannot be opened or read.
pub fn read_files(root: &Path, files: &[PathBuf]) -> Result<u64, RootfsError> {
    let mut total = 0;
    let mut buffer = vec![0u8; 256 << 10];
    for file in files {
        let path = root.join(file.strip_prefix("/").unwrap_or(file));
        let failed = |source| RootfsError::Read { path: path.clone(), source };
        let mut opened = std::fs::File::open(&path).map_err(failed)?;
        loop {
            match opened.read(&mut buffer).map_err(failed)? {
                0 => break,
                n => total += n as u64,
            }
        }
    }
    Ok(total)
}

fn output(command: &mut Command, what: &str) -> Result<String, RootfsError> {
    let result = command.stdin(Stdio::null()).output().map_err(|e| RootfsError::Command { what: what.to_owned(), reason: e.to_string() })?;
    if !result.status.success() {
        let reason = String::from_utf8_lossy(&result.stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned();
        return Err(RootfsError::Command { what: what.to_owned(), reason: format!("{reason} ({})", result.status) });
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_fold_the_diff_ids() {
        let one = "sha256:aa".to_owned();
        assert_eq!(chain_id(std::slice::from_ref(&one)).unwrap(), one, "one layer: its diff_id");
        let two = chain_id(&[one.clone(), "sha256:bb".into()]).unwrap();
        assert_eq!(two, format!("sha256:{}", hex::encode(sha2::Sha256::digest("sha256:aa sha256:bb"))));
        let three = chain_id(&[one, "sha256:bb".into(), "sha256:cc".into()]).unwrap();
        assert_eq!(three, format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{two} sha256:cc")))));
        assert!(matches!(chain_id(&[]), Err(RootfsError::NoLayers)));
    }

    #[test]
    fn a_view_that_cannot_be_mounted_is_removed() {
        // A stand-in for ctr that logs its arguments and, asked for a view, prints a mount
        // command that fails (an unknown file system type mounts nothing).
        let dir = tempfile::tempdir().unwrap();
        let (script, log) = (dir.path().join("ctr"), dir.path().join("calls"));
        let body = format!("#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in *\" view \"*) echo 'mount -t rf-no-such-fs none {}' ;; esac\n", log.display(), dir.path().join("mnt").display());
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let opened = View::open(|| Command::new(&script), "overlayfs", "sha256:aa", "view-1", &dir.path().join("mnt"));
        assert!(matches!(opened, Err(RootfsError::Command { ref what, .. }) if what == "mount"), "{opened:?}");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.lines().any(|l| l == "snapshots --snapshotter overlayfs rm view-1"), "the view's snapshot is removed: {calls}");
        assert!(!dir.path().join("mnt").exists(), "and its mount point");
    }

    #[test]
    fn files_are_read_whole_and_a_missing_one_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("a")).expect("dir");
        std::fs::write(dir.path().join("a/one"), vec![7u8; 300 << 10]).expect("file");
        std::fs::write(dir.path().join("two"), b"xy").expect("file");
        assert_eq!(read_files(dir.path(), &["/a/one".into(), "two".into()]).unwrap(), (300 << 10) + 2);
        assert!(matches!(read_files(dir.path(), &["nope".into()]), Err(RootfsError::Read { .. })));
    }
}
