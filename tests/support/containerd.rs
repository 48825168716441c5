//! A private containerd (root, state and socket in a temp dir) and its `ctr` client: the
//! runtime our users pull with, unpacking included; optionally with the stargz snapshotter as
//! a proxy plugin and `ctr-remote` for lazy pulls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::stargz::{Stargz, SNAPSHOTTER};
use super::tools::{require, run};

pub struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with_proxy(None)
    }

    /// containerd with `stargz` (tests/support/stargz.rs, already started) as its proxy
    /// snapshotter, for `ctr-remote image rpull`.
    pub fn start_with_stargz(stargz: &Stargz) -> Containerd {
        require("ctr-remote");
        Containerd::start_with_proxy(Some(stargz.socket()))
    }

    fn start_with_proxy(stargz_socket: Option<&Path>) -> Containerd {
        require("containerd");
        require("ctr");
        let dir = tempfile::Builder::new().prefix("ctrd").tempdir_in("/tmp").expect("temp dir");
        let socket = dir.path().join("containerd.sock");
        let mut config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = socket.display()
        );
        if let Some(proxy) = stargz_socket {
            config.push_str(&format!("[proxy_plugins.{SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = \"{}\"\n", proxy.display()));
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { dir, socket, child };
        containerd.wait_ready();
        containerd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new("ctr").arg("-a").arg(&self.socket).arg("version").output().is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("containerd did not start; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self) -> Command {
        self.client("ctr")
    }

    /// Runs `ctr <args>`, failing the test (with containerd's log) if it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> Output {
        self.client_ok("ctr", args)
    }

    /// `ctr-remote` on this containerd, in the tests' namespace.
    pub fn ctr_remote(&self) -> Command {
        self.client("ctr-remote")
    }

    /// Runs `ctr-remote <args>`, failing the test (with containerd's log) if it fails.
    pub fn ctr_remote_ok(&self, args: &[&str]) -> Output {
        self.client_ok("ctr-remote", args)
    }

    /// `tool` (`ctr` or `ctr-remote`) on this containerd, in the tests' namespace.
    fn client(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command.arg("-a").arg(&self.socket).arg("--namespace").arg("rf-test");
        command
    }

    fn client_ok(&self, tool: &str, args: &[&str]) -> Output {
        let output = self.client(tool).args(args).output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed:\n{}\n{}\ncontainerd log tail:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        output
    }

    /// Mounts the unpacked image at a new directory, runs `inspect` on it, unmounts.
    pub fn with_mounted<T>(&self, image: &str, inspect: impl FnOnce(&Path) -> T) -> T {
        let mount = self.dir.path().join(format!("mnt-{}", self.dir.path().read_dir().map_or(0, |d| d.count())));
        std::fs::create_dir_all(&mount).expect("mount point");
        let mount_arg = mount.to_str().expect("utf-8 path");
        self.ctr_ok(&["image", "mount", image, mount_arg]);
        let result = inspect(&mount);
        run(self.ctr().args(["image", "unmount", mount_arg]));
        result
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        super::tools::stop_gracefully(&mut self.child);
    }
}
