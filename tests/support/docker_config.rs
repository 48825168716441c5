//! Docker-style client credential files (`config.json` with an `auths` map), the format the
//! facade and skopeo read upstream credentials from.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Writes `dir/config.json` holding Basic credentials for `host` (`127.0.0.1:PORT`) and
/// returns its path.
pub fn write_docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {host: {"auth": auth}}});
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write config.json");
    path
}
