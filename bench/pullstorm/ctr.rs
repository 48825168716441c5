//! The containerd client mode: each workspace runs a real `ctr image pull` (resolve, fetch,
//! verify, unpack) against the target, in a containerd namespace of its own for this target's
//! run, so nothing an earlier run fetched or unpacked is reused; afterwards the images are
//! removed (containerd's GC then drops their content and snapshots) and the namespace with them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::progress::Counters;
use crate::pull::Pulled;
use crate::storm::Puller;

#[derive(Debug, Clone)]
pub struct CtrSettings {
    pub ctr: PathBuf,
    pub socket: PathBuf,
    /// containerd's `certs.d` directory (`hosts.toml` per registry); without it, plain HTTP.
    pub hosts_dir: Option<PathBuf>,
    pub concurrent_layers: usize,
    /// Leave the images and the namespace in place after the run.
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("target URL `{0}` has no host")]
    NoHost(String),
    #[error("cannot run {ctr}: {source}")]
    Spawn { ctr: String, source: std::io::Error },
}

pub struct CtrPuller {
    settings: CtrSettings,
    namespace: String,
    /// `host:port` of the target, the registry part of every reference.
    host: String,
}

impl CtrPuller {
    /// A puller for the target at `url` with a fresh namespace named after `target`.
    ///
    /// # Errors
    /// The URL names no host.
    pub fn new(settings: CtrSettings, target: &str, url: &str) -> Result<CtrPuller, CtrError> {
        let host = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().filter(|h| !h.is_empty()).ok_or_else(|| CtrError::NoHost(url.to_owned()))?;
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let label: String = target.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let namespace = format!("pullstorm-{label}-{}-{millis}", std::process::id());
        Ok(CtrPuller { settings, namespace, host: host.to_owned() })
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new(&self.settings.ctr);
        command.arg("-a").arg(&self.settings.socket).arg("-n").arg(&self.namespace);
        command.stdin(Stdio::null());
        command
    }

    fn reference(&self, image: &str) -> String {
        format!("{}/{image}", self.host)
    }

    /// Removes the images of `images` and the namespace, unless asked to keep them. Failures
    /// are reported on stderr: they do not change the measurements.
    pub fn clean_up(&self, images: &[String]) {
        if self.settings.keep {
            return;
        }
        let mut references: Vec<String> = images.iter().map(|i| self.reference(i)).collect();
        references.sort();
        references.dedup();
        let mut steps: Vec<Command> = references
            .chunks(200)
            .map(|chunk| {
                let mut rm = self.ctr();
                rm.args(["images", "rm", "--sync"]).args(chunk);
                rm
            })
            .collect();
        let mut namespace = Command::new(&self.settings.ctr);
        namespace.arg("-a").arg(&self.settings.socket).args(["namespaces", "rm", &self.namespace]);
        steps.push(namespace);
        for mut step in steps {
            match step.stdout(Stdio::null()).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!("pullstorm: cleaning namespace {}: {}", self.namespace, last_line(&output.stderr)),
                Err(e) => eprintln!("pullstorm: cleaning namespace {}: {e}", self.namespace),
            }
        }
    }
}

impl Puller for CtrPuller {
    fn pull(&self, image: &str, _counters: &Counters) -> Result<Pulled, String> {
        let mut command = self.ctr();
        command.args(["images", "pull", "--max-concurrent-downloads", &self.settings.concurrent_layers.to_string()]);
        match &self.settings.hosts_dir {
            Some(dir) => command.arg("--hosts-dir").arg(dir),
            None => command.arg("--plain-http"),
        };
        let output = command.arg(self.reference(image)).stdout(Stdio::null()).output().map_err(|source| CtrError::Spawn { ctr: self.settings.ctr.display().to_string(), source }.to_string())?;
        if !output.status.success() {
            return Err(format!("ctr images pull {}: {} ({})", self.reference(image), last_line(&output.stderr), output.status));
        }
        // The sizes come from the manifests afterwards (main fills them in): containerd's
        // output does not say them reliably.
        Ok(Pulled::default())
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_namespaces() {
        let settings = CtrSettings { ctr: "ctr".into(), socket: "/s".into(), hosts_dir: None, concurrent_layers: 3, keep: true };
        let puller = CtrPuller::new(settings.clone(), "Facade Warm", "http://127.0.0.1:5000/").unwrap();
        assert_eq!(puller.reference("remote/ws-1:latest"), "127.0.0.1:5000/remote/ws-1:latest");
        assert!(puller.namespace.starts_with("pullstorm-facade-warm-"));
        assert_eq!(CtrPuller::new(settings.clone(), "x", "https://reg.example:443").unwrap().host, "reg.example:443");
        assert!(CtrPuller::new(settings, "x", "http://").is_err());
        assert_eq!(last_line(b"a\nctr: failed to resolve\n\n"), "ctr: failed to resolve");
    }
}
