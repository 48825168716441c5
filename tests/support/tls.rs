//! A private certificate authority made with the `openssl` CLI at test time: a CA and a
//! server certificate for 127.0.0.1/localhost, as an operator would make them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools::{require, run};

pub struct TestCa {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    /// Writes `ca.crt`, `ca.key`, `server.crt` and `server.key` into `dir`.
    pub fn create(dir: &Path) -> TestCa {
        require("openssl");
        let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_owned();
        run(Command::new("openssl").args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &path("ca.key"), "-out", &path("ca.crt"),
            "-days", "2", "-subj", "/CN=registry-facade-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new("openssl").args([
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &path("server.key"), "-out", &path("server.csr"), "-subj", "/CN=127.0.0.1",
        ]));
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext.cnf");
        run(Command::new("openssl").args([
            "x509", "-req", "-in", &path("server.csr"), "-CA", &path("ca.crt"), "-CAkey", &path("ca.key"), "-CAcreateserial",
            "-out", &path("server.crt"), "-days", "2", "-extfile", &path("ext.cnf"),
        ]));
        TestCa { ca_cert: dir.join("ca.crt"), ca_key: dir.join("ca.key"), server_cert: dir.join("server.crt"), server_key: dir.join("server.key") }
    }

    /// Writes `<name>.crt` and `<name>.key` into `dir`: a client certificate this CA issued.
    pub fn client_certificate(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let path = |file: &str| dir.join(file).to_str().expect("utf-8 path").to_owned();
        let (key, csr, cert) = (path(&format!("{name}.key")), path(&format!("{name}.csr")), path(&format!("{name}.crt")));
        run(Command::new("openssl").args(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]));
        let ext = path(&format!("{name}.cnf"));
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").expect("client ext");
        let (ca_cert, ca_key) = (self.ca_cert.to_str().expect("utf-8"), self.ca_key.to_str().expect("utf-8"));
        run(Command::new("openssl").args(["x509", "-req", "-in", &csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", &cert, "-days", "2", "-extfile", &ext]));
        (PathBuf::from(cert), PathBuf::from(key))
    }
}
