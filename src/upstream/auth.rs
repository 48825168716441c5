//! Credentials and the distribution auth flows: docker `config.json` (re-read when it
//! changes), `WWW-Authenticate` challenges, and bearer tokens cached until they expire.
//! Secrets live in `Secret`, whose `Debug` prints nothing, so they cannot reach a log line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use serde::Deserialize;

use crate::file_version::{file_version, FileVersion};

/// The config file is looked at (one `stat`) at most this often.
const RELOAD_CHECK_MS: u64 = 1_000;
/// A token without `expires_in` is good for 60 s (distribution token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so none expires in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// A token is kept at most this long, whatever its `expires_in` says: a token service's
/// number is not trusted to be sane (a huge one would overflow the clock arithmetic).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// A credential or token: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(Secret),
}

impl Credential {
    pub fn basic_header(&self) -> Option<HeaderValue> {
        let Credential::Basic { username, password } = self else { return None };
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
        let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The registry host a `config.json` key names: `https://index.docker.io/v1/` → `docker.io`,
/// `https://host:5000/path` → `host:5000`.
pub fn normalize_host(key: &str) -> String {
    let without_scheme = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

/// Parses a docker `config.json`; entries that carry no usable credential are skipped with a
/// warning naming the host (never the secret).
///
/// # Errors
/// The text is not a docker config document.
pub fn parse_docker_config(text: &[u8]) -> Result<HashMap<String, Credential>, String> {
    // serde would read a JSON array as a struct too; a config file is an object.
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not a docker config file: {e}"))?;
    if !value.is_object() {
        return Err("not a docker config file: expected a JSON object".into());
    }
    // serde's message would quote a wrongly typed value, which may be a secret: name the
    // field instead.
    let file: ConfigFile = serde_path_to_error::deserialize(value).map_err(|e| format!("not a docker config file: `{}` has the wrong type", e.path()))?;
    if let Some(store) = &file.creds_store {
        tracing::warn!(store, "credsStore is not supported; put credentials in `auths`");
    }
    for host in file.cred_helpers.keys() {
        tracing::warn!(host, "credHelpers are not supported; put credentials in `auths`");
    }
    let mut credentials = HashMap::new();
    for (key, entry) in file.auths {
        let host = normalize_host(&key);
        match credential_of(entry) {
            Some(credential) => {
                credentials.insert(host, credential);
            }
            None => tracing::warn!(host, "docker config entry has no usable credential"),
        }
    }
    Ok(credentials)
}

fn credential_of(entry: AuthEntry) -> Option<Credential> {
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Some(Credential::IdentityToken(Secret(token)));
    }
    if let (Some(username), Some(password)) = (entry.username.clone(), entry.password) {
        if !username.is_empty() {
            return Some(Credential::Basic { username, password: Secret(password) });
        }
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry.auth?.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credential::Basic { username: username.to_owned(), password: Secret(password.to_owned()) })
}

struct Loaded {
    /// `None` until the first load, so that it happens even for a missing file.
    stamp: Option<FileVersion>,
    credentials: Arc<HashMap<String, Credential>>,
}

/// The credentials of a docker config file, re-read when its modification time or size
/// changes (pull secrets that rotate, e.g. for ECR).
pub struct CredentialStore {
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
    checked_ms: AtomicU64,
}

impl CredentialStore {
    /// A missing file is no credentials, with a warning naming it: the file is re-read when
    /// it changes, so one that appears later (written by a credential helper after start)
    /// is picked up then.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed, naming its path and the cause.
    pub fn open(path: Option<&Path>) -> Result<CredentialStore, String> {
        let store = CredentialStore {
            path: path.map(Path::to_owned),
            loaded: RwLock::new(Loaded { stamp: None, credentials: Arc::default() }),
            checked_ms: AtomicU64::new(0),
        };
        store.reload()?;
        Ok(store)
    }

    /// Whether the file is due a look at `now_ms` (at most once a second); the caller that
    /// is told so then calls `refresh`, off the executor.
    pub fn check_due(&self, now_ms: u64) -> bool {
        let last = self.checked_ms.load(Ordering::Relaxed);
        self.path.is_some() && now_ms.saturating_sub(last) >= RELOAD_CHECK_MS && self.checked_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Re-reads the file if it changed; a file that cannot be read or parsed keeps the
    /// previous credentials, with a warning. Blocking.
    pub fn refresh(&self) {
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "keeping the previous credentials");
        }
    }

    /// The credential for `host`, as last read.
    pub fn get(&self, host: &str) -> Option<Credential> {
        let loaded = self.loaded.read().ok()?;
        loaded.credentials.get(host).cloned()
    }

    fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let stamp = Some(file_version(path));
        if self.loaded.read().map(|l| l.stamp == stamp).unwrap_or(false) {
            return Ok(());
        }
        let credentials = match std::fs::read(path) {
            Ok(text) => parse_docker_config(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "the docker config file is missing: pulls carry no credentials until it appears");
                HashMap::new()
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        tracing::info!(path = %path.display(), hosts = credentials.len(), "loaded registry credentials");
        if let Ok(mut loaded) = self.loaded.write() {
            *loaded = Loaded { stamp, credentials: Arc::new(credentials) };
        }
        Ok(())
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Reads the first Basic or Bearer challenge of a `WWW-Authenticate` value.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// `key=value, key="quoted \" value"` → map (keys lowercased).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            return params;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    other => value.push(other),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_owned();
        }
        params.insert(key, value);
    }
}

/// Reads a token endpoint's answer: the token and when it stops being usable.
///
/// # Errors
/// Not JSON, or no token in it.
pub fn parse_token_response(body: &[u8], now_ms: u64) -> Result<(Secret, u64), String> {
    #[derive(Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let response: TokenResponse = serde_json::from_slice(body).map_err(|_| "token endpoint answered something that is not a token document".to_owned())?;
    let token = response.token.or(response.access_token).filter(|t| !t.is_empty()).ok_or("token endpoint returned no token")?;
    let lifetime = response.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME).min(MAX_TOKEN_LIFETIME);
    let usable_ms = lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN).as_millis();
    Ok((Secret(token), now_ms.saturating_add(u64::try_from(usable_ms).unwrap_or(u64::MAX))))
}

/// Bearer tokens by (host, scope), shared by every executor.
#[derive(Default)]
pub struct TokenCache {
    /// Each token with when (clock milliseconds) it stops being usable.
    tokens: Mutex<HashMap<(String, String), (Secret, u64)>>,
}

impl TokenCache {
    pub fn get(&self, host: &str, scope: &str, now_ms: u64) -> Option<Secret> {
        let tokens = self.tokens.lock().ok()?;
        let (token, expires) = tokens.get(&(host.to_owned(), scope.to_owned()))?;
        (now_ms < *expires).then(|| token.clone())
    }

    pub fn put(&self, host: &str, scope: &str, token: Secret, expires_ms: u64, now_ms: u64) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, (_, e)| *e > now_ms);
            tokens.insert((host.to_owned(), scope.to_owned()), (token, expires_ms));
        }
    }

    pub fn forget(&self, host: &str, scope: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&(host.to_owned(), scope.to_owned()));
        }
    }
}

pub fn bearer_header(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "registry.example:5000": {"username": "bob", "password": "secret"},
            "https://gcr.example/": {"identitytoken": "refresh"},
            "empty.example": {}
        }, "credHelpers": {"ecr.example": "ecr-login"}}"#;
        let creds = parse_docker_config(json).unwrap();
        assert_eq!(creds.len(), 3);
        assert_eq!(creds["docker.io"], Credential::Basic { username: "user".into(), password: Secret::new("pa:ss") });
        assert_eq!(creds["registry.example:5000"].basic_header().unwrap(), "Basic Ym9iOnNlY3JldA==");
        assert_eq!(creds["gcr.example"], Credential::IdentityToken(Secret::new("refresh")));
        assert!(parse_docker_config(b"[]").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let credential = Credential::Basic { username: "bob".into(), password: Secret::new("hunter2") };
        assert!(!format!("{credential:?}").contains("hunter2"));
        assert!(credential.basic_header().unwrap().is_sensitive());
        // A malformed file is reported by field, never by quoting the value.
        let wrong = parse_docker_config(br#"{"auths": {"r.example": {"password": ["hunter2"]}}}"#).unwrap_err();
        assert!(!wrong.contains("hunter2") && wrong.contains("auths"), "{wrong}");
    }

    /// What the upstream client does: a look at the file when one is due, then the lookup.
    fn get_at(store: &CredentialStore, host: &str, now_ms: u64) -> Option<Credential> {
        if store.check_due(now_ms) {
            store.refresh();
        }
        store.get(host)
    }

    #[test]
    fn credentials_are_reloaded_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let store = CredentialStore::open(Some(&path)).unwrap();
        assert_eq!(get_at(&store, "h", 0), None, "a missing file is no credentials");
        std::fs::write(&path, br#"{"auths":{"h":{"username":"a","password":"b"}}}"#).unwrap();
        assert_eq!(get_at(&store, "h", 500), None, "not looked at again within a second");
        assert!(get_at(&store, "h", 1_500).is_some());
        std::fs::write(&path, br#"{"auths":{"other":{"username":"a","password":"bb"}}}"#).unwrap();
        assert!(get_at(&store, "h", 3_000).is_none());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(get_at(&store, "other", 4_500).is_some(), "a broken file keeps the previous credentials");
    }

    #[test]
    fn a_missing_docker_config_is_no_credentials_with_a_warning_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (store, warnings) = logged(|| CredentialStore::open(Some(&path)));
        assert!(store.is_ok_and(|s| get_at(&s, "h", 0).is_none()));
        assert!(warnings.contains("WARN") && warnings.contains(&path.display().to_string()) && warnings.contains("No such file"), "{warnings}");
        // Once it is there the warning is not repeated at every check.
        std::fs::write(&path, br#"{"auths":{"h":{"username":"a","password":"b"}}}"#).unwrap();
        let (store, warnings) = logged(|| CredentialStore::open(Some(&path)).unwrap());
        assert!(get_at(&store, "h", 0).is_some() && !warnings.contains("WARN"), "{warnings}");
    }

    #[test]
    fn an_unreadable_or_broken_docker_config_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = CredentialStore::open(Some(dir.path())).err().unwrap();
        assert!(error.contains(&format!("cannot read {}", dir.path().display())) && error.contains("Is a directory"), "{error}");
        let path = dir.path().join("config.json");
        std::fs::write(&path, b"{not json").unwrap();
        let error = CredentialStore::open(Some(&path)).err().unwrap();
        assert!(error.starts_with(&format!("{}: not a docker config file", path.display())), "{error}");
    }

    /// What `f` logs at warn and above, as the fmt layer prints it, and its result.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_ansi(false).with_writer(move || writer.clone()).finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (result, text)
    }

    #[test]
    fn challenges() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"bearer realm=https://a/t , service = "s\"q""#).map(|c| match c {
            Challenge::Bearer { realm, service, .. } => (realm, service),
            Challenge::Basic => unreachable!(),
        }), Some(("https://a/t".into(), Some("s\"q".into()))));
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn tokens_expire() {
        let now = 1_000_000;
        let (token, expires) = parse_token_response(br#"{"access_token":"t","expires_in":300}"#, now).unwrap();
        assert_eq!(token.expose(), "t");
        assert_eq!(expires, now + 295_000);
        let (_, short) = parse_token_response(br#"{"token":"u"}"#, now).unwrap();
        assert_eq!(short, now + 55_000);
        assert!(parse_token_response(br#"{"token":""}"#, now).is_err());
        // An absurd lifetime is cut to a day rather than overflowing the clock.
        let huge = format!(r#"{{"token":"v","expires_in":{}}}"#, u64::MAX);
        let (_, capped) = parse_token_response(huge.as_bytes(), now).unwrap();
        assert_eq!(capped, now + (24 * 60 * 60 - 5) * 1000);
        let cache = TokenCache::default();
        cache.put("h", "s", token, expires, now);
        assert!(cache.get("h", "s", now).is_some());
        assert!(cache.get("h", "s", expires).is_none());
        cache.forget("h", "s");
        assert!(cache.get("h", "s", now).is_none());
    }
}
