//! Shared test support: the server started in-process, a raw HTTP/1.1 client, deterministic
//! OCI image layouts, and harnesses for the real tools and peers (containerd and its stargz
//! snapshotter, skopeo, the reference registry, its token service, a fault-injecting proxy).
//! Nothing here needs `../shared`.
#![allow(dead_code)]

pub mod chromium;
pub mod client;
pub mod containerd;
pub mod docker_config;
pub mod exposition;
pub mod ide;
pub mod image;
pub mod kubo;
pub mod multipart;
pub mod nginx;
pub mod proxy;
pub mod redis;
pub mod referrers;
pub mod registry;
pub mod server;
pub mod stargz;
pub mod token;
pub mod tls;
pub mod tools;

/// Polls `done` until it holds, failing the test with `what` once `limit` has passed: a wait
/// for something to happen (a server ready, a background job done), never for time to pass.
pub fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
