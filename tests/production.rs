//! The production face, with real clients: containerd pulling over TLS through the hosts.toml
//! that `registry-facade setup` writes, curl negotiating h2 (ALPN and h2c), mTLS, Basic and
//! bearer credentials that are really checked (and reloaded), connection limits answered
//! with OCI errors, and slow or idle clients that cannot keep a new client out.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::client::{connect, get, read_reply, request};
use support::containerd::Containerd;
use support::image::{self, ImageOptions};
use support::server::{import, TestServer};
use support::tls::TestCa;
use support::tools::{facade_binary, require, run};
use support::wait_until;

const DEMO: &str = "/v2/demo/manifests/latest";

fn tls_config(ca: &TestCa, extra: &str) -> String {
    format!(r#""tls": {{"cert": {:?}, "key": {:?}{extra}}}"#, ca.server_cert.display().to_string(), ca.server_key.display().to_string())
}

fn curl(args: &[&str]) -> Output {
    require("curl");
    Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("run curl")
}

/// `curl -w '%{http_code} %{http_version}'` against `url`.
fn curl_status(args: &[&str], url: &str) -> String {
    let mut all = args.to_vec();
    all.extend(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", url]);
    let output = curl(&all);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn containerd_pulls_over_tls_with_the_hosts_file_that_setup_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let facade = TestServer::start(&tls_config(&ca, ""));
    let host = format!("127.0.0.1:{}", facade.addr.port());
    let hosts_dir = dir.path().join("certs.d");
    let setup = |expected: &str| {
        let output = run(facade_binary().args(["setup", "--host", &host, "--ca"]).arg(&ca.ca_cert).arg("--hosts-dir").arg(&hosts_dir));
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(printed.lines().count(), 2, "{printed}");
        assert!(printed.lines().all(|line| line.starts_with(expected)), "{printed}");
    };
    setup("wrote ");
    setup("unchanged ");
    let hosts = std::fs::read_to_string(hosts_dir.join(&host).join("hosts.toml")).unwrap();
    assert!(hosts.contains(&format!("server = \"https://{host}\"")), "{hosts}");

    let containerd = Containerd::start();
    let image = format!("{host}/demo:latest");
    containerd.ctr_ok(&["image", "pull", "--hosts-dir", hosts_dir.to_str().unwrap(), &image]);
    let listed = String::from_utf8_lossy(&containerd.ctr_ok(&["image", "check"]).stdout).into_owned();
    assert!(listed.lines().any(|l| l.starts_with(&image) && l.contains("complete")), "{listed}");
    let unpacked = containerd.with_mounted(&image, |root| root.read_dir().map(|d| d.count()).unwrap_or(0));
    assert!(unpacked > 0, "the image unpacks to a non-empty root");

    let without_ca = containerd.ctr().args(["image", "pull", &format!("{host}/demo:latest")]).output().unwrap();
    assert!(!without_ca.status.success(), "without the hosts file the private CA is not trusted");
}

#[test]
fn curl_negotiates_h2_over_tls_and_h2c_on_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let secure = TestServer::start(&tls_config(&ca, ""));
    let url = format!("https://127.0.0.1:{}{DEMO}", secure.addr.port());
    let cacert = ca.ca_cert.to_str().unwrap();
    assert_eq!(curl_status(&["--cacert", cacert], &url), "200 2", "ALPN picks h2");
    assert_eq!(curl_status(&["--cacert", cacert, "--http1.1"], &url), "200 1.1");
    assert_eq!(curl_status(&["--cacert", cacert, "--tls-max", "1.2"], &url), "200 2", "TLS 1.2 is accepted");
    let old = curl(&["--cacert", cacert, "--tlsv1.1", "--tls-max", "1.1", "-o", "/dev/null", &url]);
    assert!(!old.status.success(), "TLS 1.1 is refused");
    assert_eq!(curl_status(&[], &url.replace("https://", "http://")), "000 0", "no plain HTTP on a TLS port");

    let plain = TestServer::start("");
    let url = format!("http://{}{DEMO}", plain.addr);
    assert_eq!(curl_status(&["--http2-prior-knowledge"], &url), "200 2", "h2c with prior knowledge");
    assert_eq!(curl_status(&[], &url), "200 1.1");
}

/// h2 frames (16 KiB) and TLS records (16 KiB) are cut and batched by the facade's own
/// stream code: a blob that is a multiple of neither must arrive byte for byte, whole and as
/// a range, over every protocol curl speaks to it.
#[test]
fn a_multi_megabyte_blob_arrives_whole_over_h2_and_http1_with_and_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let options = ImageOptions { tag: "v1".into(), layers: vec![5 * 1024 * 1024 + 12_345], ..ImageOptions::default() };
    let app = image::write_layout(&dir.path().join("app"), &options);
    let cache = dir.path().join("cache");
    import(&cache, &app.dir, "library/app", None);
    let digest = &app.image().layers[0].digest;
    let expected = std::fs::read(app.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
    let secure = TestServer::start_on(&cache, &tls_config(&ca, ""));
    let plain = TestServer::start_on(&cache, "");
    let path = format!("/v2/library/app/blobs/{digest}");
    let secure_url = format!("https://127.0.0.1:{}{path}", secure.addr.port());
    let plain_url = format!("http://{}{path}", plain.addr);
    let cacert = ca.ca_cert.to_str().unwrap();
    let out = dir.path().join("out");
    let out_path = out.to_str().unwrap();
    for (url, args, version) in [
        (&secure_url, vec!["--cacert", cacert], "2"),
        (&secure_url, vec!["--cacert", cacert, "--http1.1"], "1.1"),
        (&plain_url, vec!["--http2-prior-knowledge"], "2"),
        (&plain_url, vec![], "1.1"),
    ] {
        for (range, want) in [(None, &expected[..]), (Some("100-3000000"), &expected[100..=3_000_000])] {
            let mut all = args.clone();
            all.extend(["-o", out_path, "-w", "%{http_version}"]);
            if let Some(range) = range {
                all.extend(["-r", range]);
            }
            all.push(url.as_str());
            let output = curl(&all);
            assert!(output.status.success(), "{url} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            assert_eq!(String::from_utf8_lossy(&output.stdout), version, "{args:?}");
            let got = std::fs::read(&out).unwrap();
            assert!(got == want, "{url} {args:?} range {range:?}: {} bytes, {} expected, or different bytes", got.len(), want.len());
        }
    }
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let (cert, key) = ca.client_certificate(dir.path(), "node-17");
    let client_ca = format!(r#", "clientCa": {:?}"#, ca.ca_cert.display().to_string());
    let facade = TestServer::start(&tls_config(&ca, &client_ca));
    let url = format!("https://127.0.0.1:{}{DEMO}", facade.addr.port());
    let cacert = ca.ca_cert.to_str().unwrap();
    let refused = curl(&["--cacert", cacert, "-o", "/dev/null", &url]);
    assert!(!refused.status.success(), "no client certificate: the handshake fails");
    let stranger_ca = TestCa::create(&tempdir_in(dir.path(), "stranger"));
    let (other_cert, other_key) = stranger_ca.client_certificate(dir.path(), "stranger");
    let foreign = curl(&["--cacert", cacert, "--cert", other_cert.to_str().unwrap(), "--key", other_key.to_str().unwrap(), "-o", "/dev/null", &url]);
    assert!(!foreign.status.success(), "a certificate from another CA is refused");
    assert_eq!(curl_status(&["--cacert", cacert, "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()], &url), "200 2");
}

fn tempdir_in(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn credentials_are_checked_challenged_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let tokens = dir.path().join("tokens");
    std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("s3cret", 5).unwrap())).unwrap();
    std::fs::write(&tokens, "# node tokens\ntoken-one\n").unwrap();
    let auth = format!(
        r#""auth": {{"realm": "nodes", "basic": {{"htpasswd": {:?}}}, "bearer": {{"tokensFile": {:?}}}}}"#,
        htpasswd.display().to_string(),
        tokens.display().to_string()
    );
    let facade = TestServer::start(&format!(r#"{auth}, "adminListen": "127.0.0.1:0""#));
    let basic = |user_password: &str| format!("Basic {}", base64_encode(user_password));

    let anonymous = request(facade.addr, "GET", "/v2/", &[]);
    assert_eq!((anonymous.status, anonymous.error_code().as_str()), (401, "UNAUTHORIZED"));
    let challenges: Vec<&str> = anonymous.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("www-authenticate")).map(|(_, v)| v.as_str()).collect();
    assert_eq!(challenges, ["Basic realm=\"nodes\"", "Bearer realm=\"nodes\""]);
    assert_eq!(request(facade.addr, "GET", DEMO, &[]).status, 401, "names are not revealed either");

    let wrong = request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:guess"))]);
    assert_eq!((wrong.status, wrong.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("mallory:s3cret"))]).status, 401);
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", "Basic !!not-base64")]).status, 401);
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:s3cret"))]).status, 200);
    assert_eq!(request(facade.addr, "HEAD", DEMO, &[("Authorization", "Bearer token-one")]).status, 200);
    let bad_token = request(facade.addr, "GET", DEMO, &[("Authorization", "Bearer token-two")]);
    assert_eq!(bad_token.status, 401);
    assert!(bad_token.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("www-authenticate") && v == "Bearer realm=\"nodes\", error=\"invalid_token\""));

    // skopeo answers the Basic challenge like containerd does.
    let reference = format!("docker://{}/demo:latest", facade.addr);
    let inspected = support::tools::skopeo().args(["inspect", "--tls-verify=false", "--creds", "alice:s3cret", &reference]).output().unwrap();
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    let refused = support::tools::skopeo().args(["inspect", "--tls-verify=false", "--creds", "alice:nope", &reference]).output().unwrap();
    assert!(!refused.status.success());

    // A changed password applies without a restart, and the remembered verdict goes with it.
    std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("n3w", 5).unwrap())).unwrap();
    std::fs::write(&tokens, "token-two\n").unwrap();
    wait_until("the new password", Duration::from_secs(15), || {
        request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:n3w"))]).status == 200
    });
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:s3cret"))]).status, 401);
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", "Bearer token-two")]).status, 200);
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", "Bearer token-one")]).status, 401);
    // A broken file keeps the credentials in force.
    std::fs::write(&htpasswd, "alice:plaintext\n").unwrap();
    wait_until("the broken file read", Duration::from_secs(15), || facade.file_reloads("credentials", "refused") >= 1.0);
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:n3w"))]).status, 200);
}

#[test]
fn password_guesses_queue_boundedly_and_a_repeated_wrong_password_costs_no_check() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // Cost 10: ~50-100 ms a check, so 96 guesses at once are far past the queue of 16. One
    // executor: verdicts are remembered per executor.
    std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("s3cret", 10).unwrap())).unwrap();
    let auth = format!(r#""cores": 1, "auth": {{"realm": "nodes", "basic": {{"htpasswd": {:?}}}}}"#, htpasswd.display().to_string());
    let facade = TestServer::start(&auth);
    let basic = |user_password: &str| format!("Basic {}", base64_encode(user_password));
    let at_once = |headers: Vec<String>| -> Vec<support::client::Reply> {
        let threads: Vec<_> = headers.into_iter().map(|h| std::thread::spawn(move || request(facade.addr, "GET", DEMO, &[("Authorization", &h)]))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };

    let guesses = at_once((0..96).map(|n| basic(&format!("alice:guess-{n}"))).collect());
    let busy: Vec<_> = guesses.iter().filter(|r| r.status == 429).collect();
    assert!(guesses.iter().all(|r| r.status == 401 || r.status == 429), "{:?}", guesses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(!busy.is_empty(), "past the queue's bound a guess is told to retry, not queued");
    assert!(busy.iter().all(|r| r.error_code() == "TOOMANYREQUESTS" && r.header("retry-after") == Some("1")));

    // A node with a wrong password repeats the same header: refused from memory, it never
    // waits for a check, so a burst of it finds no queue to fill.
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:stale"))]).status, 401);
    let repeats = at_once(vec![basic("alice:stale"); 96]);
    assert!(repeats.iter().all(|r| r.status == 401), "{:?}", repeats.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(request(facade.addr, "GET", DEMO, &[("Authorization", &basic("alice:s3cret"))]).status, 200);
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::create(&tempdir_in(dir.path(), "first"));
    let live = tempdir_in(dir.path(), "live");
    let (cert, key) = (live.join("server.crt"), live.join("server.key"));
    std::fs::copy(&first.server_cert, &cert).unwrap();
    std::fs::copy(&first.server_key, &key).unwrap();
    let config = format!(r#""tls": {{"cert": {:?}, "key": {:?}}}, "adminListen": "127.0.0.1:0""#, cert.display().to_string(), key.display().to_string());
    let facade = TestServer::start(&config);
    let url = format!("https://127.0.0.1:{}/v2/", facade.addr.port());
    assert_eq!(curl_status(&["--cacert", first.ca_cert.to_str().unwrap()], &url), "200 2");

    let second = TestCa::create(&tempdir_in(dir.path(), "second"));
    // The key first: a moment where key and certificate disagree must keep the old pair.
    std::fs::copy(&second.server_key, &key).unwrap();
    wait_until("the mismatched pair read", Duration::from_secs(15), || facade.file_reloads("tls", "refused") >= 1.0);
    assert_eq!(curl_status(&["--cacert", first.ca_cert.to_str().unwrap()], &url), "200 2", "a mismatched pair is not used");
    std::fs::copy(&second.server_cert, &cert).unwrap();
    wait_until("the renewed certificate", Duration::from_secs(15), || {
        curl_status(&["--cacert", second.ca_cert.to_str().unwrap()], &url) == "200 2"
    });
    assert!(!curl(&["--cacert", first.ca_cert.to_str().unwrap(), "-o", "/dev/null", &url]).status.success());
}

#[test]
fn a_bad_certificate_at_start_is_an_error_that_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let config = format!(r#"{{"listen": "127.0.0.1:0", "demoImage": false, "cacheDir": {:?}, "tls": {{"cert": {:?}, "key": {:?}}}}}"#,
        dir.path().join("cache").display().to_string(), missing.display().to_string(), missing.display().to_string());
    let path = dir.path().join("config.json");
    std::fs::write(&path, config).unwrap();
    let output = facade_binary().arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.cert:") && stderr.contains("nope.pem"), "{stderr}");
}

/// Opens a connection from `source` (an address on the loopback network).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn get_on(stream: &mut TcpStream, path: &str) -> std::io::Result<support::client::Reply> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: facade\r\n\r\n").as_bytes())?;
    read_reply(&mut std::io::BufReader::new(stream), false)
}

#[test]
fn connections_over_the_limits_get_an_oci_error_and_are_closed() {
    let facade = TestServer::start(r#""limits": {"maxConnections": 6, "maxConnectionsPerClient": 3}"#);
    // One client takes its three places; its fourth connection is refused with 429.
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", facade.addr)).collect();
    for stream in &mut held {
        assert_eq!(get_on(stream, "/v2/").unwrap().status, 200);
    }
    let mut fourth = connect_from("127.0.0.2", facade.addr);
    let refused = get_on(&mut fourth, "/v2/").unwrap();
    assert_eq!((refused.status, refused.error_code().as_str()), (429, "TOOMANYREQUESTS"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(fourth.read(&mut [0u8; 16]).unwrap_or(0), 0, "then the connection is closed");

    // Other clients are still served, up to the server's total.
    held.extend((0..3).map(|_| connect_from("127.0.0.3", facade.addr)));
    for stream in &mut held[3..] {
        assert_eq!(get_on(stream, "/v2/").unwrap().status, 200);
    }
    let full = get(facade.addr, "/v2/");
    assert_eq!((full.status, full.error_code().as_str()), (503, "UNAVAILABLE"));

    // Places are given back when connections close.
    held.truncate(5);
    wait_until("a free place", Duration::from_secs(10), || get(facade.addr, "/v2/").status == 200);
    drop(held);
    wait_until("the client's places back", Duration::from_secs(10), || {
        get_on(&mut connect_from("127.0.0.2", facade.addr), "/v2/").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn idle_slow_and_stalled_clients_do_not_keep_a_new_client_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let plain = TestServer::start(r#""headerReadTimeoutMs": 2000"#);
    let secure = TestServer::start(&format!(r#""headerReadTimeoutMs": 2000, {}"#, tls_config(&ca, "")));

    let idle: Vec<TcpStream> = (0..2000).map(|_| connect(plain.addr)).collect();
    // slowloris: a request head that never ends. It is cut off once the header-read timeout
    // has passed on the facade's clock, which the test moves instead of waiting.
    let mut slow = connect(plain.addr);
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nX-Slow: aaaa").unwrap();
    assert_eq!(get(plain.addr, DEMO).status, 200, "a new client is served meanwhile");
    let _ = slow.write_all(b"aaaa");
    plain.advance(Duration::from_millis(2000));
    assert!(closed_by_server(&mut slow), "the slow head is cut off after the header-read timeout");
    assert_eq!(get(plain.addr, DEMO).status, 200, "and new clients are still served");

    // A TLS client that connects and never says hello is closed too, and does not stall others.
    let mut stalled = connect(secure.addr);
    let url = format!("https://127.0.0.1:{}/v2/", secure.addr.port());
    assert_eq!(curl_status(&["--cacert", ca.ca_cert.to_str().unwrap()], &url), "200 2");
    secure.advance(Duration::from_millis(2000));
    assert!(closed_by_server(&mut stalled), "closed by the handshake timeout, without a byte");
    drop(idle);
}

/// Whether the server closes `stream` (an end or a reset, with nothing more than buffered
/// bytes) within a generous read timeout, which only a server that never closes runs into.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
