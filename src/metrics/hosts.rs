//! The `host` label of upstream metrics, bounded: the first `MAX_HOSTS` distinct hosts get their
//! own series and any later one counts as `other`, so a spec naming many registries cannot grow
//! the exposition without limit.

use std::collections::HashSet;
use std::sync::Mutex;

/// Distinct `host` label values before new hosts become `other`.
pub const MAX_HOSTS: usize = 64;
pub const OTHER_HOST: &str = "other";

#[derive(Default)]
pub struct BoundedHosts {
    /// Taken once per upstream request (milliseconds apart), never on the serving path.
    seen: Mutex<HashSet<String>>,
}

impl BoundedHosts {
    /// The label value for `host`: itself while there is room, else `other`.
    pub fn label(&self, host: &str) -> String {
        let Ok(mut seen) = self.seen.lock() else { return OTHER_HOST.to_owned() };
        if seen.contains(host) {
            return host.to_owned();
        }
        if seen.len() >= MAX_HOSTS || host.is_empty() {
            return OTHER_HOST.to_owned();
        }
        seen.insert(host.to_owned());
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_beyond_the_bound_are_other() {
        let labels = BoundedHosts::default();
        for n in 0..MAX_HOSTS {
            assert_eq!(labels.label(&format!("r{n}.example")), format!("r{n}.example"));
        }
        assert_eq!(labels.label("late.example"), OTHER_HOST);
        assert_eq!(labels.label("r3.example"), "r3.example", "known hosts keep their label");
        assert_eq!(labels.label(""), OTHER_HOST);
    }
}
