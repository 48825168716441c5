//! The layer rule of DESIGN.md §8 as a test: a module may use only modules of lower layers
//! (and the top layer's parts each other), never a sibling of its own layer, never upwards.
//! Reads every `src/**/*.rs` and checks each `crate::<module>` path against the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer; higher numbers sit higher.
const LAYERS: &[(&str, u8)] = &[
    ("main", 8),
    ("lib", 8),
    ("cli", 7),
    ("config", 7),
    ("app", 7),
    ("setup", 7),
    ("runtime", 6),
    ("http", 5),
    ("registry", 4),
    ("store", 3),
    ("spec", 3),
    ("upstream", 3),
    ("ipfs", 3),
    ("redis_client", 2),
    ("oci", 1),
    ("table", 1),
    ("hyper_glue", 1),
    ("file_version", 1),
    ("metrics", 1),
];

/// Modules of the top layer assemble the rest and may use each other.
const TOP_LAYER: u8 = 7;

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|(_, layer)| *layer)
}

fn allowed(from: &str, to: &str) -> bool {
    match (layer(from), layer(to)) {
        (Some(a), Some(b)) => from == to || b < a || (a == TOP_LAYER && b == TOP_LAYER),
        _ => false,
    }
}

/// The top-level modules a source text refers to with `crate::`.
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (index, _) in code.match_indices("crate::") {
            let rest = &code[index + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inside = group.split('}').next().unwrap_or("");
                found.extend(inside.split(',').filter_map(|item| first_ident(item.trim())));
            } else if let Some(name) = first_ident(rest) {
                found.insert(name);
            }
        }
    }
    found
}

fn first_ident(text: &str) -> Option<String> {
    let ident: String = text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!ident.is_empty()).then_some(ident)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_path_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        assert!(layer(&module).is_some(), "{} belongs to no layer: add it to LAYERS and to DESIGN.md", relative.display());
        for target in crate_references(&std::fs::read_to_string(&file).unwrap()) {
            if !allowed(&module, &target) {
                violations.push(format!("{} uses crate::{target}", relative.display()));
            }
        }
    }
    assert!(violations.is_empty(), "arrows that point up or sideways:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_upward_and_sideways_arrows() {
    let refs = crate_references("use crate::http::x;\nuse crate::{oci::Digest, table};\n// crate::runtime in a comment\nlet a = crate::store::f();");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["http", "oci", "store", "table"]);
    assert!(!allowed("registry", "http"), "upwards");
    assert!(!allowed("store", "upstream"), "siblings");
    assert!(!allowed("oci", "table"), "siblings at the bottom");
    assert!(!allowed("metrics", "oci"), "metrics is a bottom sibling too");
    assert!(allowed("upstream", "metrics") && allowed("http", "metrics"), "every layer above may record");
    assert!(allowed("http", "registry") && allowed("cli", "config") && allowed("registry", "table"));
}
