//! The binary's commands as a user runs them: `import` of good and bad layouts (errors name
//! the file), a `kill -9` in the middle of an import, and configuration errors of `serve`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::image::{self, ImageOptions};
use support::tools::{facade_binary, sha256_file};

fn import_command(layout: &Path, reference: &str, cache: &Path) -> Command {
    let mut command = facade_binary();
    command.arg("import").arg(layout).arg(reference).arg("--cache-dir").arg(cache);
    command
}

fn record_exists(cache: &Path, name: &str) -> bool {
    cache.join("repos").join(name).join("_repository.json").exists()
}

/// Every file under a digest name holds exactly the bytes of that digest.
fn assert_cache_is_consistent(cache: &Path) {
    for entry in std::fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256_file(&path), name, "{} is not what its name says", path.display());
    }
}

#[test]
fn import_prints_what_it_added() {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("l"), &ImageOptions { tag: "v3".into(), ..ImageOptions::default() });
    let cache = dir.path().join("cache");
    let output = import_command(&layout.dir, "team/tool", &cache).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("team/tool:v3 {}", layout.top.digest)), "{stdout}");
    assert!(stdout.contains("imported 1 manifests and 3 blobs"), "{stdout}");
    assert!(record_exists(&cache, "team/tool"));
    assert_cache_is_consistent(&cache);
}

#[test]
fn bad_layouts_are_refused_naming_the_file_and_leave_nothing_visible() {
    type Damage = fn(&image::Layout);
    let cases: Vec<(&str, Damage, &str)> = vec![
        ("no marker", |l| std::fs::remove_file(l.dir.join("oci-layout")).unwrap(), "oci-layout: cannot open"),
        ("bad marker", |l| std::fs::write(l.dir.join("oci-layout"), b"{}").unwrap(), "oci-layout: has no imageLayoutVersion"),
        ("bad index", |l| std::fs::write(l.dir.join("index.json"), b"{\"schemaVersion\":2}").unwrap(), "index.json: not an image index"),
        ("missing layer", |l| std::fs::remove_file(l.blob_path(&l.image().layers[1].digest)).unwrap(), "cannot open blob"),
        (
            "short layer",
            |l| {
                let path = l.blob_path(&l.image().layers[1].digest);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            },
            "but its descriptor says",
        ),
        (
            "corrupt layer",
            |l| {
                let path = l.blob_path(&l.image().layers[1].digest);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[100] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
            },
            "content has digest sha256:",
        ),
        (
            "corrupt manifest",
            |l| {
                let path = l.blob_path(&l.image().manifest.digest);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[0] = b'[';
                std::fs::write(&path, bytes).unwrap();
            },
            "content has digest",
        ),
    ];
    for (what, damage, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let layout = image::write_layout(&dir.path().join("l"), &ImageOptions::default());
        damage(&layout);
        let cache = dir.path().join("cache");
        let output = import_command(&layout.dir, "broken:v1", &cache).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(stderr.contains(&layout.dir.display().to_string()), "{what}: the error names the file: {stderr}");
        assert!(!record_exists(&cache, "broken"), "{what}: nothing half-imported is visible");
        if cache.join("blobs/sha256").exists() {
            assert_cache_is_consistent(&cache);
        }
    }
}

#[test]
fn a_tag_that_is_not_in_a_multi_image_layout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let layout = image::write_layout(&dir.path().join("l"), &ImageOptions::default());
    let second = image::write_layout(&dir.path().join("m"), &ImageOptions { seed: 5, tag: "other".into(), ..ImageOptions::default() });
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let other: serde_json::Value = serde_json::from_slice(&std::fs::read(second.dir.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(other["manifests"][0].clone());
    std::fs::write(layout.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let output = import_command(&layout.dir, "x:nope", &dir.path().join("cache")).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no manifest is tagged `nope` (tags here: latest, other)"), "{stderr}");
}

#[test]
fn kill_9_during_an_import_leaves_only_complete_verified_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let options = ImageOptions { layers: vec![48 << 20, 48 << 20, 48 << 20], gzip: false, seed: 11, ..ImageOptions::default() };
    let layout = image::write_layout(&dir.path().join("l"), &options);
    let cache = dir.path().join("cache");
    let mut child = import_command(&layout.dir, "crash:v1", &cache).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it while an ingest temp file is being written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let writing = loop {
        let partial = std::fs::read_dir(cache.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .any(|f| f.metadata().is_ok_and(|m| m.len() > 0));
        if partial || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break partial;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(writing, "the import was caught while writing");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_cache_is_consistent(&cache);
    assert!(!record_exists(&cache, "crash"), "the interrupted import is not visible");
    let output = import_command(&layout.dir, "crash:v1", &cache).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_cache_is_consistent(&cache);
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "temp files of the killed import are removed: {leftovers:?}");
}

#[test]
fn serve_refuses_bad_configuration_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let cases = [
        (r#"{"cores": "many"}"#, "cores: invalid type"),
        (r#"{"cachedir": "/x"}"#, "cachedir: unknown field `cachedir`"),
        (r#"{"listen": "nowhere"}"#, "listen: `nowhere` is not an IP address"),
        (r#"{"log": {"format": "xml"}}"#, "log.format: unknown variant"),
        ("{not json", "(document)"),
    ];
    for (json, expected) in cases {
        std::fs::write(&config, json).unwrap();
        let output = facade_binary().arg("--config").arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{json}: {stderr}");
        assert!(stderr.contains(expected) && stderr.contains("config.json"), "{json}: {stderr}");
    }
    let output = facade_binary().args(["serve", "--cores", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("command line: --cores: must be at least 1"));
    let output = facade_binary().args(["--config", "/nonexistent/rf.json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file /nonexistent/rf.json"));
}

#[test]
fn sigterm_stops_the_server_and_it_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--cores", "1", "--cache-dir"].map(std::ffi::OsStr::new);
    let (mut child, addr) = support::server::spawn_binary(&[&args[..], &[dir.path().as_os_str()]].concat());
    assert_eq!(support::client::get(addr, "/v2/demo/manifests/latest").status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The README's first command is `cargo run --release` with no `--bin` or `-p`: at the root it
/// must run the server, and `cargo build --release` must build the server alone. The bench
/// tools are workspace members of their own, so the default members are the server's package,
/// and it has one binary.
#[test]
fn cargo_run_and_build_at_the_root_take_the_server_alone() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names = |key: &str| -> Vec<&str> {
        let ids = metadata[key].as_array().unwrap_or_else(|| panic!("{key} in cargo metadata"));
        ids.iter().map(|id| packages.iter().find(|p| p["id"] == *id).and_then(|p| p["name"].as_str()).expect("member package")).collect()
    };
    let members = names("workspace_members");
    assert!(members.contains(&"pullstorm") && members.contains(&"rf-bench-image"), "the bench tools are members: {members:?}");
    assert_eq!(names("workspace_default_members"), ["registry-facade"]);
    let server = packages.iter().find(|p| p["name"] == "registry-facade").expect("the server's package");
    let binaries: Vec<&str> = server["targets"].as_array().expect("targets").iter().filter(|t| t["kind"][0] == "bin").filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(binaries, ["registry-facade"]);
}
