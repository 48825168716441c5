//! Headless Chromium (Debian's `chromium`) as a real browser: a page's DOM after its scripts
//! ran (`--dump-dom`) and a screenshot. Run as root without the sandbox, with a fresh profile
//! and nothing that reaches outside (this network refuses it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::require;

/// Longest a page may take to load and render.
const PAGE_TIME: Duration = Duration::from_secs(60);

fn chromium(profile: &Path) -> Command {
    require("chromium");
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Waits until the page's network and timers are idle (or 10 s of its virtual time),
        // so scripts that run on `load` have run.
        "--virtual-time-budget=10000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Runs `command` to its end within `PAGE_TIME`; its stdout.
fn run(mut command: Command) -> String {
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let mut child = command
        .stdout(out.reopen().expect("stdout"))
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + PAGE_TIME;
    loop {
        if let Some(status) = child.try_wait().expect("chromium status") {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {PAGE_TIME:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out.path()).expect("chromium's output")
}

/// The DOM of `url` after its scripts ran, as Chromium serialises it.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let mut command = chromium(profile.path());
    command.arg("--dump-dom").arg(url);
    run(command)
}

/// Saves a 1280×800 screenshot of `url` to `file`.
pub fn screenshot(url: &str, file: &Path) {
    let profile = tempfile::tempdir().expect("profile");
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).expect("screenshot directory");
    }
    let mut command = chromium(profile.path());
    command.arg(format!("--screenshot={}", file.display())).arg("--window-size=1280,800").arg(url);
    run(command);
    let png = std::fs::read(file).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}
