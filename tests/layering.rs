//! The layering of the crate doc (`src/lib.rs`) as a test: every `crate::<module>` path in
//! `src/**/*.rs` must point down the rows and never to a sibling of its own row (the top row
//! assembles the rest and may use itself), and the never-list holds whatever the rows say.
//! A file whose top module is in no row fails, and so does a circle between the files of
//! `transport`. Each offence is printed with its file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its row; higher rows sit higher.
const ROWS: &[(&str, u8)] = &[
    ("main", 9),
    ("lib", 9),
    ("cli", 8),
    ("config", 8),
    ("app", 8),
    ("setup", 8),
    ("import", 8),
    ("demo", 8),
    ("prefetch", 8),
    ("runtime", 7),
    ("http", 6),
    ("registry", 5),
    ("store", 4),
    ("spec", 4),
    ("upstream", 4),
    ("ipfs", 4),
    ("redis_client", 3),
    ("transport", 2),
    ("oci", 1),
    ("table", 1),
    ("metrics", 1),
    ("clock", 1),
    ("blocking", 1),
    ("file_version", 1),
];

/// Modules of the top row assemble the rest and may use each other.
const TOP_ROW: u8 = 8;

/// Edges forbidden whatever the rows allow (DESIGN's never-list): `http` reaches everything
/// below through `registry` only, and `registry` stays free of HTTP and of the runtime.
const NEVER: &[(&str, &[&str])] = &[
    ("http", &["store", "upstream", "spec", "ipfs", "redis_client"]),
    ("registry", &["http", "transport", "runtime"]),
];

/// Modules that import nothing of ours.
const LEAVES: &[&str] = &["oci"];

fn row(module: &str) -> Option<u8> {
    ROWS.iter().find(|(name, _)| *name == module).map(|(_, row)| *row)
}

/// Why `from` may not use `to`; `None` if it may.
fn forbidden(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    if LEAVES.contains(&from) {
        return Some(format!("{from} imports nothing of ours"));
    }
    if NEVER.iter().any(|(never_from, targets)| *never_from == from && targets.contains(&to)) {
        return Some(format!("{from} never imports {to}"));
    }
    match (row(from), row(to)) {
        (Some(a), Some(b)) if b < a || (a == TOP_ROW && b == TOP_ROW) => None,
        (Some(a), Some(b)) if a == b => Some(format!("{to} is a sibling of {from} in row {a}")),
        (Some(_), Some(_)) => Some(format!("{to} sits above {from}")),
        _ => Some(format!("{to} is in no row")),
    }
}

/// The `<root>::<name>` paths a source text refers to (`crate::` for modules, `super::` for
/// sibling files), with their 1-based line numbers; comments are skipped, and a `use` group
/// may span lines and nest (`crate::{a::{X, Y}, b}` names `a` and `b`).
fn references(source: &str, root: &str) -> Vec<(usize, String)> {
    let prefix = format!("{root}::");
    let code: String = source.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices(&prefix) {
        // `crate::` inside `$crate::` or a longer name is not ours.
        if code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + prefix.len()..];
        let names: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => top_level_items(group).into_iter().filter_map(|item| first_ident(item.trim())).collect(),
            None => first_ident(rest).into_iter().collect(),
        };
        found.extend(names.into_iter().map(|name| (line, name)));
    }
    found
}

/// The comma-separated items of a `{…}` group (given without its opening brace), up to the
/// brace that closes it; nested groups stay inside their item.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn first_ident(text: &str) -> Option<String> {
    let ident: String = text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// The offences of one file of module `module` (its path as printed: `file`).
fn offences(file: &str, module: &str, source: &str) -> Vec<String> {
    references(source, "crate")
        .into_iter()
        .filter_map(|(line, target)| forbidden(module, &target).map(|why| format!("{file}:{line}: uses crate::{target} ({why})")))
        .collect()
}

/// A circle among the sibling files of one directory, following their `super::<file>` uses
/// (`mod.rs` and `*_tests.rs` excluded): the files on it, if there is one.
fn circle(files: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, files: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            return Some(path[start..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in files.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, files, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    files.keys().find_map(|file| visit(file, files, &mut Vec::new(), &mut done))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_crate_path_respects_the_rows_and_the_never_list() {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative.components().next().expect("a path").as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        let shown = format!("src/{}", relative.display());
        if row(&module).is_none() {
            found.push(format!("{shown}: module `{module}` is in no row: place it in ROWS here and in the crate doc's picture"));
            continue;
        }
        found.extend(offences(&shown, &module, &std::fs::read_to_string(&file).expect("readable source")));
    }
    assert!(found.is_empty(), "imports the layering forbids:\n{}", found.join("\n"));
}

#[test]
fn the_files_of_transport_form_no_circle() {
    let dir = src().join("transport");
    let mut uses = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("transport").flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if name == "mod" || name.ends_with("_tests") {
            continue;
        }
        let source = std::fs::read_to_string(entry.path()).expect("readable source");
        let targets: BTreeSet<String> = references(&source, "super").into_iter().map(|(_, target)| target).filter(|t| *t != name).collect();
        uses.insert(name, targets);
    }
    assert!(uses.len() > 3, "found transport's files");
    assert_eq!(circle(&uses), None, "files of src/transport that use each other in a circle");
}

#[test]
fn the_checker_finds_each_kind_of_forbidden_import_with_its_line() {
    let http = "use super::body::ResponseBody;\nuse crate::registry::Registry;\nuse crate::store::CacheDir;\n";
    assert_eq!(offences("src/http/x.rs", "http", http), ["src/http/x.rs:3: uses crate::store (http never imports store)"]);
    let grouped = "use crate::{oci::Digest, upstream::Upstream};";
    assert_eq!(offences("src/http/y.rs", "http", grouped), ["src/http/y.rs:1: uses crate::upstream (http never imports upstream)"]);
    assert_eq!(offences("src/registry/z.rs", "registry", "let t = crate::transport::within;"), ["src/registry/z.rs:1: uses crate::transport (registry never imports transport)"], "below registry by row, but never");
    assert_eq!(offences("src/registry/z.rs", "registry", "use crate::http::Served;"), ["src/registry/z.rs:1: uses crate::http (registry never imports http)"]);
    assert_eq!(offences("src/oci/a.rs", "oci", "use crate::table::SharedMap;"), ["src/oci/a.rs:1: uses crate::table (oci imports nothing of ours)"]);
    assert_eq!(offences("src/store/a.rs", "store", "use crate::upstream::Upstream;"), ["src/store/a.rs:1: uses crate::upstream (upstream is a sibling of store in row 4)"]);
    assert_eq!(offences("src/upstream/a.rs", "upstream", "use crate::registry::Registry;"), ["src/upstream/a.rs:1: uses crate::registry (registry sits above upstream)"]);
    assert_eq!(offences("src/store/a.rs", "store", "use crate::brand_new::X;"), ["src/store/a.rs:1: uses crate::brand_new (brand_new is in no row)"]);
    assert!(offences("src/http/a.rs", "http", "// crate::store in a comment\nuse crate::transport::HyperIo;\nuse crate::registry::Registry;").is_empty());
    assert!(offences("src/cli.rs", "cli", "use crate::app;\nuse crate::config::Config;").is_empty(), "the top row uses itself");
    let spread = "use crate::{\n    oci::Digest,\n    registry::{Registry, RegistryError},\n    store::CacheDir,\n};";
    assert_eq!(offences("src/http/z.rs", "http", spread), ["src/http/z.rs:1: uses crate::store (http never imports store)"], "a group over several lines, nested");
}

#[test]
fn the_checker_finds_a_circle_between_files() {
    let graph = |edges: &[(&str, &[&str])]| edges.iter().map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect())).collect::<BTreeMap<String, BTreeSet<String>>>();
    assert_eq!(circle(&graph(&[("io", &["frame_batch"]), ("frame_batch", &["io"])])), Some(vec!["frame_batch".to_owned(), "io".to_owned()]));
    assert_eq!(circle(&graph(&[("stream", &["state", "syscall"]), ("state", &["regions"]), ("regions", &["syscall"]), ("syscall", &[])])), None);
}
