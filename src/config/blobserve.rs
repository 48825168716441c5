//! The `blobserve` key: Gitpod's blobserve configuration key for key (`port` or our `listen`,
//! `timeout`, `repos`, `allowAnyRepo`, `blobSpace`), plus `maxUnpackedBytes`, validated into
//! the listener's address, the answer timeout and the registry's blobserve settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::registry::blobserve::{BlobserveRef, BlobserveSettings, InlineReplacement, Replacement, RepoSettings, DEFAULT_MAX_UNPACKED_BYTES};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct BlobserveFile {
    listen: Option<String>,
    port: Option<u16>,
    timeout: Option<String>,
    #[serde(default)]
    repos: BTreeMap<String, RepoFile>,
    #[serde(default)]
    allow_any_repo: bool,
    #[serde(default)]
    blob_space: BlobSpaceFile,
    max_unpacked_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RepoFile {
    #[serde(default)]
    pre_pull: Vec<String>,
    workdir: Option<String>,
    #[serde(default)]
    replacements: Vec<ReplacementFile>,
    #[serde(default)]
    inline_static: Vec<InlineFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReplacementFile {
    path: String,
    search: String,
    replacement: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InlineFile {
    search: String,
    replacement: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BlobSpaceFile {
    location: Option<PathBuf>,
    max_size_bytes: Option<u64>,
}

/// The validated key: where to listen, how long an answer may take, what to serve.
pub(super) struct Blobserve {
    pub listen: SocketAddr,
    pub timeout: Option<Duration>,
    pub settings: BlobserveSettings,
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

pub(super) fn blobserve_settings(file: BlobserveFile, cache_dir: &Path, invalid: Invalid) -> Result<Blobserve, ConfigError> {
    let listen = match (&file.listen, file.port) {
        (Some(_), Some(_)) => return Err(invalid("blobserve.port", "give `listen` or `port`, not both".into())),
        (None, None) => return Err(invalid("blobserve", "needs `listen` (an address, e.g. 127.0.0.1:32224) or Gitpod's `port`".into())),
        (Some(text), None) => super::parse_listen(text).map_err(|m| invalid("blobserve.listen", m))?,
        // Gitpod's `:<port>`: every interface.
        (None, Some(port)) => SocketAddr::from(([0, 0, 0, 0], port)),
    };
    let timeout = file.timeout.as_deref().map(|text| go_duration(text).map_err(|m| invalid("blobserve.timeout", m))).transpose()?.filter(|d| !d.is_zero());
    let mut repos = BTreeMap::new();
    for (repo, settings) in file.repos {
        let key = format!("blobserve.repos.{repo}");
        if format!("{repo}:x").parse::<BlobserveRef>().is_err() || repo.contains('@') {
            return Err(invalid(&key, format!("`{repo}` is not a repository (host/name, or a name of this facade)")));
        }
        for (index, tag) in settings.pre_pull.iter().enumerate() {
            if let Err(e) = format!("{repo}:{tag}").parse::<BlobserveRef>() {
                return Err(invalid(&format!("{key}.prePull[{index}]"), e.to_string()));
            }
        }
        for (index, r) in settings.replacements.iter().enumerate() {
            if r.path.trim_matches('/').is_empty() || r.search.is_empty() {
                return Err(invalid(&format!("{key}.replacements[{index}]"), "`path` and `search` must not be empty".into()));
            }
        }
        if let Some(index) = settings.inline_static.iter().position(|r| r.search.is_empty()) {
            return Err(invalid(&format!("{key}.inlineStatic[{index}].search"), "must not be empty".into()));
        }
        let settings = RepoSettings {
            pre_pull: settings.pre_pull,
            workdir: settings.workdir.filter(|w| !w.is_empty()),
            replacements: settings.replacements.into_iter().map(|r| Replacement { path: r.path, search: r.search, replacement: r.replacement }).collect(),
            inline_static: settings.inline_static.into_iter().map(|r| InlineReplacement { search: r.search, replacement: r.replacement }).collect(),
        };
        repos.insert(repo, settings);
    }
    let max_unpacked_bytes = match file.max_unpacked_bytes {
        Some(0) => return Err(invalid("blobserve.maxUnpackedBytes", "must be greater than 0".into())),
        Some(n) => n,
        None => DEFAULT_MAX_UNPACKED_BYTES,
    };
    let location = file.blob_space.location.filter(|l| !l.as_os_str().is_empty()).unwrap_or_else(|| cache_dir.join("blobserve"));
    // Gitpod collects garbage only with a size above 0.
    let max_size_bytes = file.blob_space.max_size_bytes.filter(|&n| n > 0);
    let settings = BlobserveSettings { repos, allow_any_repo: file.allow_any_repo, location, max_size_bytes, max_unpacked_bytes };
    Ok(Blobserve { listen, timeout, settings })
}

/// A Go duration (`time.ParseDuration`, what Gitpod's `util.Duration` reads): `1m30s`,
/// `500ms`, `1.5h`, `0`.
fn go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (e.g. 5s, 1m30s, 500ms)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-1s", "1s2"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{Config, Overrides};

    fn load(blobserve: &str) -> Result<Config, String> {
        let json = format!(r#"{{"cacheDir": "/var/cache/rf", "blobserve": {blobserve}}}"#);
        Config::from_json(json.as_bytes(), "test.json", &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_gitpod_blobserve_config_is_read_key_for_key() {
        let gitpod = r#"{
            "port": 32224, "timeout": "5s",
            "repos": {"eu.gcr.io/gitpod/ide/code": {
                "prePull": ["commit-1"], "workdir": "/ide/code",
                "replacements": [{"path": "/ide/code/index.html", "search": "a", "replacement": "b"}],
                "inlineStatic": [{"search": "{{IDE}}", "replacement": "${ide}"}]}},
            "allowAnyRepo": false,
            "blobSpace": {"location": "/mnt/cache/blobserve", "maxSizeBytes": 0}
        }"#;
        let config = load(gitpod).unwrap();
        assert_eq!(config.runtime.blobserve_listen, Some("0.0.0.0:32224".parse().unwrap()));
        assert_eq!(config.runtime.http.blobserve_timeout, Some(std::time::Duration::from_secs(5)));
        let settings = config.registry.blobserve.unwrap();
        assert_eq!(settings.location, std::path::PathBuf::from("/mnt/cache/blobserve"));
        assert_eq!(settings.max_size_bytes, None, "Gitpod's 0: no limit");
        let repo = &settings.repos["eu.gcr.io/gitpod/ide/code"];
        assert_eq!((repo.pre_pull.as_slice(), repo.workdir.as_deref()), (&["commit-1".to_owned()][..], Some("/ide/code")));
        assert_eq!((repo.replacements.len(), repo.inline_static.len()), (1, 1));
        let ours = load(r#"{"listen": "127.0.0.1:4000"}"#).unwrap();
        assert_eq!(ours.registry.blobserve.unwrap().location, std::path::PathBuf::from("/var/cache/rf/blobserve"), "defaults inside the cache");
    }

    #[test]
    fn errors_name_the_blobserve_key() {
        let error = |json: &str| load(json).unwrap_err();
        assert!(error("{}").contains("blobserve: needs `listen`"), "{}", error("{}"));
        assert!(error(r#"{"port": 1, "listen": "127.0.0.1:2"}"#).contains("blobserve.port: give `listen` or `port`"));
        assert!(error(r#"{"listen": "127.0.0.1:5000"}"#).contains("blobserve.listen: must differ"));
        assert!(error(r#"{"port": 1, "timeout": "5"}"#).contains("blobserve.timeout"));
        assert!(error(r#"{"port": 1, "repos": {"Bad Repo": {}}}"#).contains("blobserve.repos.Bad Repo"));
        assert!(error(r#"{"port": 1, "repos": {"team/ide": {"prePull": ["bad tag"]}}}"#).contains("blobserve.repos.team/ide.prePull[0]"));
        assert!(error(r#"{"port": 1, "repos": {"team/ide": {"replacements": [{"path": "", "search": "a", "replacement": "b"}]}}}"#).contains("replacements[0]"));
        assert!(error(r#"{"port": 1, "repos": {"team/ide": {"prepull": []}}}"#).contains("blobserve.repos.team/ide.prepull: unknown field"));
        assert!(error(r#"{"port": 1, "maxUnpackedBytes": 0}"#).contains("blobserve.maxUnpackedBytes"));
        assert!(error(r#"{"port": 1, "blobSpace": {"maxSize": 1}}"#).contains("blobserve.blobSpace.maxSize: unknown field"));
    }
}
