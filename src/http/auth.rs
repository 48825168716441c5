//! Client authentication on the registry listener: Basic against bcrypt hashes (`htpasswd -B`)
//! and static bearer tokens, checked on every request; a failure is a 401 with a challenge per
//! scheme. bcrypt runs on the blocking pool, one check per executor at a time, and verdicts are
//! remembered per executor, so a client guessing passwords cannot take the pool from fills.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use super::reload::{LocalView, Reloadable};
use crate::blocking::run_blocking;
use crate::clock::Clock;

/// How long the verdict on an `Authorization` value stands without checking it again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Verdicts remembered per executor; past it the memory starts over.
const VERIFIED_ENTRIES: usize = 10_000;
/// bcrypt checks that may wait for an executor's one turn (each some tens of ms).
const MAX_BCRYPT_WAITING: usize = 16;

/// From the configuration (`auth.realm`, `auth.basic.htpasswd`, `auth.bearer.tokensFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub realm: String,
    pub htpasswd: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
}

/// Who may pull: user names with their bcrypt hashes, and the sha256 of every bearer token
/// (the tokens themselves are not kept in memory).
pub struct Credentials {
    users: HashMap<String, String>,
    tokens: HashSet<[u8; 32]>,
}

pub type CredentialStore = Reloadable<Credentials>;

impl AuthSettings {
    /// Reads the files and builds the first credential set.
    ///
    /// # Errors
    /// A file cannot be read or has a line that is not a credential; the message names the
    /// config key, the file and the line.
    pub fn load(&self) -> Result<Arc<CredentialStore>, String> {
        let settings = self.clone();
        let files = self.htpasswd.iter().chain(&self.tokens_file).cloned().collect();
        Reloadable::load("client credentials", files, move || settings.read_credentials())
    }

    fn read_credentials(&self) -> Result<Credentials, String> {
        let users = match &self.htpasswd {
            Some(path) => read_htpasswd(path)?,
            None => HashMap::new(),
        };
        let tokens = match &self.tokens_file {
            Some(path) => read_tokens(path)?,
            None => HashSet::new(),
        };
        Ok(Credentials { users, tokens })
    }
}

/// The meaningful lines of a credentials file, numbered from 1.
fn lines_of(key: &str, path: &Path) -> Result<Vec<(usize, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim().to_owned()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect())
}

fn read_htpasswd(path: &Path) -> Result<HashMap<String, String>, String> {
    let key = "auth.basic.htpasswd";
    let mut users = HashMap::new();
    for (number, line) in lines_of(key, path)? {
        let bad = |why: &str| format!("{key}: {} line {number}: {why}", path.display());
        let (user, hash) = line.split_once(':').ok_or_else(|| bad("expected `user:bcrypt-hash`"))?;
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|prefix| hash.starts_with(prefix)) {
            return Err(bad("only bcrypt hashes are accepted (make them with `htpasswd -B`)"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

fn read_tokens(path: &Path) -> Result<HashSet<[u8; 32]>, String> {
    let key = "auth.bearer.tokensFile";
    let mut tokens = HashSet::new();
    for (number, token) in lines_of(key, path)? {
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{key}: {} line {number}: a token is one word per line", path.display()));
        }
        tokens.insert(Sha256::digest(token.as_bytes()).into());
    }
    Ok(tokens)
}

/// Why a request was not let in; decides the challenge's `error` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header, or a scheme that is not configured.
    NoCredentials,
    /// Credentials were given and are wrong.
    Invalid,
    /// Too many password checks are waiting on this executor to queue one more.
    Busy,
}

/// One executor's authenticator.
pub struct Authenticator {
    credentials: LocalView<Credentials>,
    basic_challenge: Option<HeaderValue>,
    bearer_realm: Option<String>,
    /// sha256 of a checked `Authorization` value → its verdict.
    verified: RefCell<HashMap<[u8; 32], Verdict>>,
    bcrypt_turn: glommio::sync::Semaphore,
    /// bcrypt checks waiting for or holding `bcrypt_turn`.
    bcrypt_queued: Cell<usize>,
    clock: Clock,
}

#[derive(Debug, Clone, Copy)]
struct Verdict {
    /// Of the credentials it was made against; a reload makes it void.
    generation: u64,
    at_ms: u64,
    accepted: bool,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings, store: Arc<CredentialStore>, clock: Clock) -> Authenticator {
        let realm = settings.realm.replace(['"', '\\'], "");
        let basic_challenge = settings.htpasswd.is_some().then(|| header(format!("Basic realm=\"{realm}\"")));
        let bearer_realm = settings.tokens_file.is_some().then_some(realm);
        Authenticator {
            credentials: LocalView::new(store),
            basic_challenge,
            bearer_realm,
            verified: RefCell::default(),
            bcrypt_turn: glommio::sync::Semaphore::new(1),
            bcrypt_queued: Cell::new(0),
            clock,
        }
    }

    /// Lets the request in, or says why not.
    ///
    /// # Errors
    /// No usable credentials, or wrong ones.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Err(Refused::NoCredentials) };
        let fingerprint: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let generation = self.credentials.generation();
        if let Some(accepted) = self.remembered(&fingerprint, generation) {
            return if accepted { Ok(()) } else { Err(Refused::Invalid) };
        }
        let text = value.to_str().map_err(|_| Refused::Invalid)?;
        let (scheme, credential) = text.split_once(' ').ok_or(Refused::Invalid)?;
        let accepted = if scheme.eq_ignore_ascii_case("basic") && self.basic_challenge.is_some() {
            self.check_basic(credential.trim()).await?
        } else if scheme.eq_ignore_ascii_case("bearer") && self.bearer_realm.is_some() {
            let token: [u8; 32] = Sha256::digest(credential.trim().as_bytes()).into();
            self.credentials.with(|c| c.tokens.contains(&token))
        } else {
            return Err(Refused::NoCredentials);
        };
        self.remember(fingerprint, Verdict { generation, at_ms: self.clock.now_ms(), accepted });
        if accepted {
            Ok(())
        } else {
            Err(Refused::Invalid)
        }
    }

    /// Whether the user's password is right; `Busy` if the executor's queue of checks is full.
    async fn check_basic(&self, encoded: &str) -> Result<bool, Refused> {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return Ok(false) };
        let Ok(pair) = String::from_utf8(decoded) else { return Ok(false) };
        let Some((user, password)) = pair.split_once(':') else { return Ok(false) };
        let Some(hash) = self.credentials.with(|c| c.users.get(user).cloned()) else { return Ok(false) };
        let password = password.to_owned();
        let _queued = BcryptQueued::enter(&self.bcrypt_queued)?;
        let Ok(_turn) = self.bcrypt_turn.acquire_permit(1).await else { return Ok(false) };
        Ok(run_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await)
    }

    /// The standing verdict on a value, if any: made against these credentials, lately.
    fn remembered(&self, fingerprint: &[u8; 32], generation: u64) -> Option<bool> {
        let verified = self.verified.borrow();
        let verdict = verified.get(fingerprint)?;
        let fresh = self.clock.now_ms().saturating_sub(verdict.at_ms) < VERIFIED_FOR.as_millis() as u64;
        (verdict.generation == generation && fresh).then_some(verdict.accepted)
    }

    fn remember(&self, fingerprint: [u8; 32], verdict: Verdict) {
        let mut verified = self.verified.borrow_mut();
        if verified.len() >= VERIFIED_ENTRIES {
            verified.clear();
        }
        verified.insert(fingerprint, verdict);
    }

    /// The `WWW-Authenticate` values for a refusal: one per configured scheme.
    pub fn challenges(&self, refused: Refused) -> Vec<HeaderValue> {
        let mut challenges: Vec<HeaderValue> = self.basic_challenge.iter().cloned().collect();
        if let Some(realm) = &self.bearer_realm {
            challenges.push(header(match refused {
                Refused::NoCredentials | Refused::Busy => format!("Bearer realm=\"{realm}\""),
                Refused::Invalid => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
            }));
        }
        challenges
    }
}

/// A place in an executor's queue of bcrypt checks, left when dropped (the check done, or the
/// request gone).
struct BcryptQueued<'a>(&'a Cell<usize>);

impl<'a> BcryptQueued<'a> {
    fn enter(queued: &'a Cell<usize>) -> Result<BcryptQueued<'a>, Refused> {
        if queued.get() >= MAX_BCRYPT_WAITING {
            return Err(Refused::Busy);
        }
        queued.set(queued.get() + 1);
        Ok(BcryptQueued(queued))
    }
}

impl Drop for BcryptQueued<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Built from a realm stripped of quotes; a realm with other bytes a header cannot carry
/// falls back to the product name.
fn header(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("Basic realm=\"registry-facade\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_lines_must_be_bcrypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "# users\nalice:$2y$05$abcdefghijklmnopqrstuv\n\n").unwrap();
        assert_eq!(read_htpasswd(&path).unwrap().len(), 1);
        std::fs::write(&path, "alice:$2y$05$x\nbob:{SHA}abc\n").unwrap();
        let error = read_htpasswd(&path).unwrap_err();
        assert!(error.contains("line 2") && error.contains("bcrypt"), "{error}");
        std::fs::write(&path, "no-colon\n").unwrap();
        assert!(read_htpasswd(&path).unwrap_err().contains("line 1"));
    }

    #[test]
    fn tokens_are_kept_as_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "secret-one\n# comment\nsecret-two\n").unwrap();
        let tokens = read_tokens(&path).unwrap();
        assert!(tokens.contains(&<[u8; 32]>::from(Sha256::digest(b"secret-two"))));
        std::fs::write(&path, "two words\n").unwrap();
        assert!(read_tokens(&path).unwrap_err().contains("line 1"));
    }
}
