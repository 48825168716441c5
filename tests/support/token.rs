//! A token service for the reference registry's Bearer auth (distribution's token spec):
//! Basic credentials in, ES256 JWTs out, signed by a key and self-signed certificate made
//! with `openssl` at start. Blocking std::net on one thread; it does not speak OAuth2 (POST).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::tools::{require, run};

const SERVICE: &str = "rf-test-registry";
const ISSUER: &str = "rf-test-token-issuer";

pub struct TokenServer {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the serving thread needs; the counters are read by the test.
struct Shared {
    user: String,
    password: String,
    expires_in_secs: u64,
    key: EcdsaKeyPair,
    /// The certificate as base64 DER, the JWT header's `x5c` entry.
    cert_b64: String,
    rng: SystemRandom,
    issued: AtomicUsize,
    scopes: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// One token request, parsed from the query string and the Authorization header.
struct TokenRequest {
    path: String,
    service: Option<String>,
    scopes: Vec<String>,
    basic: Option<String>,
}

impl TokenServer {
    /// Starts the service; it issues tokens to `user`/`password`, valid `expires_in_secs`.
    pub fn start(user: &str, password: &str, expires_in_secs: u64) -> TokenServer {
        let dir = tempfile::Builder::new().prefix("rf-token").tempdir_in("/tmp").expect("temp dir");
        let (key, cert_b64) = make_key_and_cert(dir.path());
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            expires_in_secs,
            key,
            cert_b64,
            rng: SystemRandom::new(),
            issued: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("token server addr");
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || serve(&listener, &thread_shared));
        TokenServer { dir, addr, shared, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL the registry's Bearer challenge sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn service(&self) -> &str {
        SERVICE
    }

    pub fn issuer(&self) -> &str {
        ISSUER
    }

    pub fn user(&self) -> &str {
        &self.shared.user
    }

    pub fn password(&self) -> &str {
        &self.shared.password
    }

    /// The PEM certificate whose key signs the tokens: the registry's `rootcertbundle`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// How many tokens were handed out (answers 200).
    pub fn tokens_issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Every `scope` asked for so far, in order, including refused requests.
    pub fn scopes_requested(&self) -> Vec<String> {
        self.shared.scopes.lock().expect("scopes lock").clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A connection wakes the blocking accept so the thread sees the flag and ends.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A P-256 key (PKCS#8 DER for ring) and a self-signed certificate for it, via `openssl`.
fn make_key_and_cert(dir: &Path) -> (EcdsaKeyPair, String) {
    require("openssl");
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args)).stdout;
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &path("key.pem")]);
    let subject = format!("/CN={ISSUER}");
    openssl(&["req", "-x509", "-new", "-days", "2", "-subj", &subject, "-key", &path("key.pem"), "-out", &path("cert.pem")]);
    // ring reads PKCS#8 only; openssl's ecparam writes the SEC1 form.
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in", &path("key.pem"), "-out", &path("key.pk8")]);
    let cert_der = openssl(&["x509", "-outform", "DER", "-in", &path("cert.pem")]);
    let pkcs8 = std::fs::read(path("key.pk8")).expect("read key.pk8");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &SystemRandom::new()).expect("P-256 PKCS#8 key");
    (key, STANDARD.encode(cert_der))
}

fn serve(listener: &TcpListener, shared: &Shared) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // One connection at a time is enough for tests; a failed one must not stop the server.
        if let Ok(stream) = stream {
            let _ = handle(stream, shared);
        }
    }
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // A client that never finishes its request must not wedge the only serving thread.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request = read_request(&mut BufReader::new(&stream))?;
    let (status, body) = respond(&request, shared);
    let length = body.len();
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n");
    if status.starts_with("401") {
        head.push_str("WWW-Authenticate: Basic realm=\"rf-test-token\"\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)
}

fn read_request(reader: &mut impl BufRead) -> std::io::Result<TokenRequest> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut request = TokenRequest { path: path.to_owned(), service: None, scopes: Vec::new(), basic: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "service" => request.service = Some(percent_decode(value)),
            // The spec allows several scope parameters and several scopes in one, space-separated.
            "scope" => request.scopes.extend(percent_decode(value).split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => {}
        }
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            return Ok(request);
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                request.basic = value.trim().strip_prefix("Basic ").map(str::to_owned);
            }
        }
    }
}

/// The status line and JSON body for a request.
fn respond(request: &TokenRequest, shared: &Shared) -> (&'static str, String) {
    shared.scopes.lock().expect("scopes lock").extend(request.scopes.iter().cloned());
    if request.path != "/token" {
        return ("404 Not Found", json!({"details": "not found"}).to_string());
    }
    if request.service.as_deref().is_some_and(|s| s != SERVICE) {
        return ("400 Bad Request", json!({"details": "unknown service"}).to_string());
    }
    let expected = STANDARD.encode(format!("{}:{}", shared.user, shared.password));
    if request.basic.as_deref() != Some(expected.as_str()) {
        return ("401 Unauthorized", json!({"details": "invalid credentials"}).to_string());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    let token = sign_jwt(shared, &request.scopes, now);
    shared.issued.fetch_add(1, Ordering::SeqCst);
    let body = json!({"token": token, "access_token": token, "expires_in": shared.expires_in_secs,
                      "issued_at": rfc3339(now.as_secs())});
    ("200 OK", body.to_string())
}

/// An ES256 JWT granting each requested repository scope; the user may pull and push.
fn sign_jwt(shared: &Shared, scopes: &[String], now: Duration) -> String {
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [shared.cert_b64]});
    let iat = now.as_secs();
    let claims = json!({
        "iss": ISSUER, "sub": shared.user, "aud": SERVICE,
        "exp": iat + shared.expires_in_secs, "nbf": iat, "iat": iat,
        "jti": format!("{}-{}", now.as_nanos(), shared.issued.load(Ordering::SeqCst)),
        "access": scopes.iter().filter_map(|s| access_entry(s)).collect::<Vec<_>>(),
    });
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    // FIXED signing gives r||s (64 bytes), the JWS form distribution's libtrust verifies.
    let signature = shared.key.sign(&shared.rng, signing_input.as_bytes()).expect("sign token");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// `repository:<name>:<actions>` as an access claim; other resource types get nothing.
fn access_entry(scope: &str) -> Option<Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let granted: Vec<&str> = actions.split(',').filter(|a| matches!(*a, "pull" | "push")).collect();
    (kind == "repository").then(|| json!({"type": "repository", "name": name, "actions": granted}))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date: Howard Hinnant's algorithm).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3_600, secs / 60 % 60, secs % 60)
}
