//! IDE images for the blobserve tests: the front end of `support/ide-frontend/` (plus a large
//! generated bundle) under `/ide/code/`, labelled as Gitpod labels its IDE images, and the
//! Gitpod-shaped `blobserve` config key that serves them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::image::{self, Entry, Layout};

pub const IDE_LABEL: (&str, &str) = ("io.gitpod.ide.manifest", r#"{"name":"code","kind":"browser","version":"1.0.0","title":"Test IDE"}"#);
/// What the pre-pull replacement writes into the bundle, and the page shows.
pub const BUILD_ID: &str = "build-42";
/// Size of the generated bundle, `out/vendor.js`: several MiB, as real IDE bundles are.
pub const VENDOR_BYTES: usize = 3 << 20;

fn frontend_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ide-frontend")
}

/// The front end's files, relative to its directory (the README excluded), sorted.
pub fn frontend_files() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("front end dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.file_name().is_some_and(|n| n != "README.md") {
                let relative = path.strip_prefix(base).expect("inside").to_string_lossy().into_owned();
                out.push((relative, std::fs::read(&path).expect("front end file")));
            }
        }
    }
    let mut files = Vec::new();
    let base = frontend_dir();
    walk(&base, &base, &mut files);
    files.sort();
    files
}

/// A JavaScript bundle of `len` bytes that varies with `seed` (compressible, like real ones).
pub fn vendor_bundle(seed: &str, len: usize) -> Vec<u8> {
    let noise = image::pseudo_random(seed, len / 16 + 64);
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(format!("function f{i}(a){{return a*{i}+\"{}\";}}\n", hex::encode(&noise[i % (noise.len() - 4)..][..4])).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// The front end as a layer under `/ide/code/`, with `vendor.js` from `seed`.
pub fn frontend_layer(seed: &str) -> Vec<u8> {
    let files = frontend_files();
    let vendor = vendor_bundle(seed, VENDOR_BYTES);
    let names: Vec<String> = files.iter().map(|(path, _)| format!("ide/code/{path}")).collect();
    let mut entries = vec![Entry::Dir("ide"), Entry::Dir("ide/code"), Entry::Dir("ide/code/out"), Entry::Dir("ide/code/img")];
    entries.extend(names.iter().zip(&files).map(|(name, (_, data))| Entry::File(name, data)));
    entries.push(Entry::File("ide/code/out/vendor.js", &vendor));
    image::layer_tar(&entries)
}

/// A base layer under the front end: an OS file, and a file in the IDE's directory that only
/// this layer has (served only if every layer is applied).
pub fn base_layer() -> Vec<u8> {
    image::layer_tar(&[Entry::File("etc/os-release", b"NAME=test\n"), Entry::File("ide/code/from-base.txt", b"from the base layer\n")])
}

/// An IDE image: the base layer and the front end, labelled like Gitpod's IDE images.
pub fn ide_layout(dir: &Path, tag: &str, seed: &str) -> Layout {
    image::write_layout_of_layers(dir, tag, &[base_layer(), frontend_layer(seed)], &[IDE_LABEL])
}

/// The repository settings of the test IDE: the build id replaced once, the inline variables
/// per request (Gitpod's keys).
pub fn ide_repo() -> Value {
    json!({
        "replacements": [{"path": "/ide/code/out/app.js", "search": "__BUILD_ID__", "replacement": BUILD_ID}],
        "inlineStatic": [
            {"search": "{{IDE_URL}}", "replacement": "${ide}"},
            {"search": "{{SUPERVISOR}}", "replacement": "${supervisor}"}
        ]
    })
}

/// The `blobserve` key of a test config: `repos` and any other keys of `extra` (an object).
pub fn blobserve_key(repos: Value, extra: Value) -> String {
    let mut key = json!({"listen": "127.0.0.1:0", "timeout": "60s", "repos": repos});
    if let (Some(key), Value::Object(extra)) = (key.as_object_mut(), extra) {
        key.extend(extra);
    }
    format!(r#""blobserve": {key}"#)
}

/// Where tests keep what they made for people to look at (screenshots).
pub fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}
