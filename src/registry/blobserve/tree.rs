//! The file tree of an image for blobserve: each layer's entries applied in order (whiteouts
//! and opaque directories hide what lower layers hold, hard links become the file they name),
//! and paths looked up with symlinks followed inside the image only. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Symlinks followed in one lookup before it gives up (the kernel's ELOOP limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// A content digest (sha256) of a regular file, the name of its file in a unit.
pub type Sha = [u8; 32];

/// One entry of a layer, in archive order. Paths are relative to the image root, normalised
/// (no `.`, `..` or empty components, no leading `/`); the root itself is `""`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum LayerEntry {
    File { path: String, #[serde(with = "hex_sha")] sha: Sha, size: u64 },
    Dir { path: String },
    Symlink { path: String, target: String },
    /// A hard link to `target`, a path of this layer or a lower one.
    Link { path: String, target: String },
    /// `.wh.<name>`: `path` and everything under it in lower layers is gone.
    Whiteout { path: String },
    /// `.wh..wh..opq`: whatever lower layers hold under the directory `path` is gone.
    Opaque { path: String },
}

/// A node of the image's tree. `unit` indexes the image's list of units (its layers, then
/// the unit of its own replaced files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { unit: u16, sha: Sha, size: u64 },
    Dir,
    Symlink(String),
}

/// The merged tree of an image: every path (the root is implicit) and its node.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// What a path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'a> {
    File { path: String, node: &'a Node },
    Dir { path: String },
}

impl Tree {
    /// Applies one layer's entries on top of what is there (`unit`: the layer's index in the
    /// image's units). Returns the number of hard links whose target does not exist (skipped).
    pub fn apply_layer(&mut self, unit: u16, entries: &[LayerEntry]) -> usize {
        // Whiteouts hide lower layers only: apply them before this layer's own entries.
        for entry in entries {
            match entry {
                LayerEntry::Whiteout { path } => self.remove_with_descendants(path),
                LayerEntry::Opaque { path } => self.remove_descendants(path),
                _ => {}
            }
        }
        let mut dangling = 0;
        for entry in entries {
            match entry {
                LayerEntry::File { path, sha, size } => self.put(path, Node::File { unit, sha: *sha, size: *size }),
                LayerEntry::Dir { path } => self.put(path, Node::Dir),
                LayerEntry::Symlink { path, target } => self.put(path, Node::Symlink(target.clone())),
                LayerEntry::Link { path, target } => match self.nodes.get(target).cloned() {
                    // A hard link to a directory cannot exist in a valid archive.
                    Some(node @ (Node::File { .. } | Node::Symlink(_))) => self.put(path, node),
                    _ => dangling += 1,
                },
                LayerEntry::Whiteout { .. } | LayerEntry::Opaque { .. } => {}
            }
        }
        dangling
    }

    /// Replaces the node of the regular file at exactly `path`.
    pub fn replace_file(&mut self, path: &str, node: Node) {
        self.put(path, node);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Puts `node` at `path`. Its ancestors become directories (an upper layer's directory
    /// replaces a lower file or symlink of that name, as overlayfs does); a non-directory
    /// replacing a directory takes the directory's contents with it.
    fn put(&mut self, path: &str, node: Node) {
        if path.is_empty() {
            return;
        }
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            let ancestor = &path[..end + slash];
            if !matches!(self.nodes.get(ancestor), Some(Node::Dir)) {
                self.remove_descendants(ancestor);
                self.nodes.insert(ancestor.to_owned(), Node::Dir);
            }
            end += slash + 1;
        }
        if !matches!(node, Node::Dir) {
            self.remove_descendants(path);
        }
        self.nodes.insert(path.to_owned(), node);
    }

    fn remove_with_descendants(&mut self, path: &str) {
        self.remove_descendants(path);
        self.nodes.remove(path);
    }

    fn remove_descendants(&mut self, path: &str) {
        if path.is_empty() {
            self.nodes.clear();
            return;
        }
        // Descendants sort between "<path>/" and "<path>0" ('0' follows '/').
        let below: Vec<String> = self.nodes.range(format!("{path}/")..format!("{path}0")).map(|(k, _)| k.clone()).collect();
        for key in below {
            self.nodes.remove(&key);
        }
    }

    /// Resolves `components` (already free of `.`/`..`) under the directory `base`, following
    /// symlinks wherever they appear. A symlink's `..` stops at the image root and an absolute
    /// target starts there: nothing resolves outside the image. `None`: no such path, or too
    /// many symlinks.
    pub fn resolve<'a, S: AsRef<str>>(&'a self, base: &str, components: &[S]) -> Option<Resolved<'a>> {
        // A stack of what is left to walk (next on top) and the path so far, with where each
        // of its components starts: one string for the walk, no allocation per component.
        let mut pending: Vec<&str> = components.iter().rev().map(AsRef::as_ref).collect();
        pending.extend(base.split('/').rev());
        let mut path = String::with_capacity(128);
        let mut starts: Vec<usize> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            match component {
                "" | "." => continue,
                ".." => {
                    path.truncate(starts.pop().unwrap_or(0).saturating_sub(1));
                    continue;
                }
                _ => {}
            }
            let start = if path.is_empty() { 0 } else { path.len() + 1 };
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(component);
            match self.nodes.get(&path)? {
                Node::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return None;
                    }
                    path.truncate(start.saturating_sub(1));
                    if target.starts_with('/') {
                        path.clear();
                        starts.clear();
                    }
                    pending.extend(target.split('/').rev());
                }
                Node::File { .. } if pending.iter().any(|c| !matches!(*c, "" | ".")) => return None,
                _ => starts.push(start),
            }
        }
        match self.nodes.get(&path) {
            _ if path.is_empty() => Some(Resolved::Dir { path }),
            Some(Node::Dir) => Some(Resolved::Dir { path }),
            Some(node @ Node::File { .. }) => Some(Resolved::File { path, node }),
            _ => None,
        }
    }
}

/// A sha256 as hex text in the index file.
mod hex_sha {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sha: &super::Sha, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(sha))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<super::Sha, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut sha = [0u8; 32];
        hex::decode_to_slice(&text, &mut sha).map_err(serde::de::Error::custom)?;
        Ok(sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, byte: u8) -> LayerEntry {
        LayerEntry::File { path: path.into(), sha: [byte; 32], size: 1 }
    }

    fn sha_at(tree: &Tree, path: &str) -> Option<u8> {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        match tree.resolve("", &components)? {
            Resolved::File { node: Node::File { sha, .. }, .. } => Some(sha[0]),
            _ => None,
        }
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide_lower_ones() {
        let mut tree = Tree::default();
        tree.apply_layer(0, &[LayerEntry::Dir { path: "a".into() }, file("a/x", 1), file("a/y", 1), file("b/z", 1), file("c/keep", 1)]);
        tree.apply_layer(1, &[
            file("a/x", 2),
            LayerEntry::Whiteout { path: "a/y".into() },
            LayerEntry::Opaque { path: "b".into() },
            file("b/new", 2),
            // A whiteout of this very layer's file does not hide it (lower layers only).
            file("c/mine", 2),
            LayerEntry::Whiteout { path: "c/mine".into() },
        ]);
        assert_eq!(sha_at(&tree, "a/x"), Some(2));
        assert_eq!(sha_at(&tree, "a/y"), None);
        assert_eq!(sha_at(&tree, "b/z"), None, "opaque directory");
        assert_eq!(sha_at(&tree, "b/new"), Some(2));
        assert_eq!(sha_at(&tree, "c/keep"), Some(1));
        assert_eq!(sha_at(&tree, "c/mine"), Some(2));
        tree.apply_layer(2, &[LayerEntry::Whiteout { path: "a".into() }]);
        assert_eq!(sha_at(&tree, "a/x"), None, "a whiteout of a directory takes its contents");
    }

    #[test]
    fn a_later_duplicate_wins_and_a_file_replaces_a_directory_with_its_contents() {
        let mut tree = Tree::default();
        tree.apply_layer(0, &[file("d/f", 1), file("dup", 1), file("dup", 3)]);
        assert_eq!(sha_at(&tree, "dup"), Some(3));
        tree.apply_layer(1, &[file("d", 4)]);
        assert_eq!(sha_at(&tree, "d"), Some(4));
        assert_eq!(sha_at(&tree, "d/f"), None);
    }

    #[test]
    fn hard_links_become_their_target_and_dangling_ones_are_skipped() {
        let mut tree = Tree::default();
        tree.apply_layer(0, &[file("bin/a", 7)]);
        let dangling = tree.apply_layer(1, &[
            LayerEntry::Link { path: "bin/b".into(), target: "bin/a".into() },
            LayerEntry::Link { path: "bin/c".into(), target: "nowhere".into() },
        ]);
        assert_eq!(sha_at(&tree, "bin/b"), Some(7));
        assert_eq!(sha_at(&tree, "bin/c"), None);
        assert_eq!(dangling, 1);
    }

    #[test]
    fn symlinks_resolve_inside_the_image_only() {
        let mut tree = Tree::default();
        tree.apply_layer(0, &[
            file("etc/passwd", 9),
            file("ide/out/app.js", 5),
            LayerEntry::Symlink { path: "ide/current".into(), target: "out".into() },
            LayerEntry::Symlink { path: "ide/abs".into(), target: "/ide/out/app.js".into() },
            LayerEntry::Symlink { path: "ide/climb".into(), target: "../../../../../etc/passwd".into() },
            LayerEntry::Symlink { path: "loop1".into(), target: "loop2".into() },
            LayerEntry::Symlink { path: "loop2".into(), target: "loop1".into() },
        ]);
        assert_eq!(sha_at(&tree, "ide/current/app.js"), Some(5));
        assert_eq!(sha_at(&tree, "ide/abs"), Some(5));
        assert_eq!(sha_at(&tree, "ide/climb"), Some(9), "`..` stops at the image root: the image's own /etc/passwd");
        assert_eq!(sha_at(&tree, "loop1"), None);
        assert_eq!(sha_at(&tree, "ide/out/app.js/x"), None);
        assert!(matches!(tree.resolve("ide", &["current"]), Some(Resolved::Dir { path }) if path == "ide/out"));
        assert!(matches!(tree.resolve("", &[] as &[&str]), Some(Resolved::Dir { .. })));
    }

    #[test]
    fn the_index_format_round_trips() {
        let entries = vec![file("a", 0xab), LayerEntry::Opaque { path: "d".into() }];
        let text = serde_json::to_string(&entries).unwrap();
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert_eq!(serde_json::from_str::<Vec<LayerEntry>>(&text).unwrap(), entries);
    }
}
