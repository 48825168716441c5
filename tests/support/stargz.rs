//! The stargz snapshotter beside the tests' containerd: `stargz-grpc` (tests/support/stargz,
//! built once from Debian's packaged library), started on a socket of its own as containerd's
//! proxy snapshotter, and read-only views of what it mounts lazily.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::containerd::Containerd;

/// The proxy plugin's name in containerd's config, and so the `--snapshotter` to name.
pub const SNAPSHOTTER: &str = "stargz";

/// The snapshotter daemon; stopped with SIGTERM on drop (it unmounts its FUSE mounts as it
/// exits), so drop it after the containerd that uses it.
pub struct Stargz {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

/// One request the snapshotter sent a registry (its `-trace-registry` log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedRequest {
    pub method: String,
    pub url: String,
    /// The `Range` header, empty without one.
    pub range: String,
    pub status: u16,
}

impl Stargz {
    /// Starts the daemon with nothing fetched unless a file is read: no prefetch at mount
    /// time, no background download of whole layers (which would hide whether a pull was lazy).
    pub fn start() -> Stargz {
        assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: the stargz snapshotter mounts layers with FUSE");
        let binary = binary();
        let dir = tempfile::Builder::new().prefix("rf-stargz").tempdir_in("/tmp").expect("temp dir");
        let socket = dir.path().join("stargz.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "noprefetch = true\nno_background_fetch = true\nno_prometheus = true\n").expect("snapshotter config");
        let log = std::fs::File::create(dir.path().join("stargz.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("-root")
            .arg(dir.path().join("root"))
            .arg("-address")
            .arg(&socket)
            .arg("-config")
            .arg(&config)
            .args(["-log-level", "info", "-trace-registry"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut stargz = Stargz { dir, socket, child };
        stargz.wait_ready();
        stargz
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stargz-grpc exited ({status}); log:\n{}", self.log());
            }
            if self.socket.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("stargz-grpc made no socket in 30 s; log:\n{}", self.log());
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stargz.log")).unwrap_or_default()
    }

    /// Every registry request the snapshotter sent so far, in order.
    pub fn registry_requests(&self) -> Vec<TracedRequest> {
        self.log()
            .lines()
            .filter(|line| line.contains("\"msg\":\"registry request\""))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|entry| TracedRequest {
                method: entry["method"].as_str().unwrap_or_default().to_owned(),
                url: entry["url"].as_str().unwrap_or_default().to_owned(),
                range: entry["range"].as_str().unwrap_or_default().to_owned(),
                status: entry["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
            })
            .collect()
    }
}

impl Drop for Stargz {
    fn drop(&mut self) {
        super::tools::stop_gracefully(&mut self.child);
    }
}

/// The daemon's binary: `$STARGZ_GRPC` if set, else `<target>/stargz-grpc/stargz-grpc` as
/// tests/support/stargz/ensure.sh leaves it (built when missing or older than its sources:
/// 35–90 s cold on 2 cores, a second with Go's build cache; under a lock, so concurrent
/// tests build it once).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STARGZ_GRPC") {
        return PathBuf::from(path);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // bench/pullstorm's tests include this module from two levels down.
    let root = manifest.ancestors().find(|dir| dir.join("tests/support/stargz/ensure.sh").is_file()).expect("tests/support/stargz above the package");
    let output = super::tools::run(&mut Command::new(root.join("tests/support/stargz/ensure.sh")));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Converts image `plain` (a reference on a plain-HTTP registry) to eStargz with the stargz
/// project's own `ctr-remote image convert --estargz --oci` and pushes it as `lazy`; neither
/// stays in containerd.
pub fn convert(containerd: &Containerd, plain: &str, lazy: &str) {
    containerd.ctr_ok(&["image", "pull", "--plain-http", plain]);
    containerd.ctr_remote_ok(&["image", "convert", "--estargz", "--oci", plain, lazy]);
    containerd.ctr_ok(&["image", "push", "--plain-http", lazy]);
    containerd.ctr_ok(&["image", "rm", "--sync", plain, lazy]);
}

/// The chain ID of the top layer of an image whose config lists `diff_ids`: the name
/// containerd gives the snapshot that holds the whole rootfs.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let first = ids.next().expect("at least one diff_id").clone();
    ids.fold(first, |chain, diff_id| format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{chain} {diff_id}")))))
}

/// Mounts a read-only view of snapshot `chain_id` of the stargz snapshotter at a new
/// directory, runs `inspect` on it, then unmounts and removes the view. containerd 1.6's
/// `ctr image mount` ignores `--snapshotter` (containerd PR #6713 fixed it later), so the view
/// is made with `ctr snapshot view`, which prints the mount command instead of running it.
pub fn with_view<T>(containerd: &Containerd, chain_id: &str, inspect: impl FnOnce(&Path) -> T) -> T {
    let key = format!("rf-view-{}", &chain_id[chain_id.len() - 12..]);
    let mount = containerd.dir().join(&key);
    std::fs::create_dir_all(&mount).expect("mount point");
    let target = mount.to_str().expect("utf-8 path");
    let printed = containerd.ctr_ok(&["snapshot", "--snapshotter", SNAPSHOTTER, "view", "--target", target, &key, chain_id]);
    let command = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"mount"), "ctr printed no mount command: {command:?}");
    super::tools::run(Command::new("mount").args(&words[1..]));
    let unmount = Unmount { mount: mount.clone(), containerd, key: key.clone() };
    let result = inspect(&mount);
    drop(unmount);
    result
}

/// Unmounts and removes a view, also when `inspect` panics.
struct Unmount<'a> {
    mount: PathBuf,
    containerd: &'a Containerd,
    key: String,
}

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = self.containerd.ctr().args(["snapshot", "--snapshotter", SNAPSHOTTER, "rm", &self.key]).output();
    }
}
