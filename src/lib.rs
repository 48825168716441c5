//! registry-facade: an OCI registry that composes workspace images on the fly and serves
//! blobs zero-copy from an mmapped local layer cache, one glommio executor per core.
//!
//! Rows of modules; a module imports only from rows below its own, never from a sibling in
//! its row (the top row assembles the rest and may use itself), and never what the
//! never-list forbids (`tests/layering.rs` enforces all of it):
//!
//! ```text
//! cli, config, app, setup,  command line, configuration, assembly of the parts, node set-up,
//!   import, demo, prefetch  the import and prefetch commands, the built-in demo image
//! runtime                   executors, listeners, connection limits, shutdown and drain
//! http                      routes and answers: dispatch, responses, bodies, auth, admin,
//!                           blobserve's routes, multipart ranges
//! registry                  the facade's rules and the only door below http: names → sources,
//!                           composition, fills, referrers, specs, IPFS publication, prefetch,
//!                           blobserve images; failures as its own verdicts
//! store, spec, upstream,    the cache on disk; image specs and their stores; the upstream
//!   ipfs                    client; IPFS both ways (gateway reads, kubo API adds, CID records)
//! redis_client              the cluster's shared state (Redis on its own thread)
//! transport                 hyper on glommio: streams, sendfile, TLS and h2 batching,
//!                           connection timeouts, runtime hooks (server and client alike)
//! oci, table, metrics,      protocol types; the lock-free shared map; the metrics; the
//!   clock, file_version,    injectable clock; how polled files are told apart; blocking
//!   blocking                work on the executor's pool, its result never leaked
//! ```
//!
//! Never: `http` → `store`, `upstream`, `spec`, `ipfs`, `redis_client`; `registry` → `http`,
//! `transport`, `runtime`; `oci` → anything of ours. `transport` sits low because the upstream
//! and Redis clients also run hyper and timers on glommio through it.

pub mod app;
pub mod blocking;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod file_version;
pub mod http;
pub mod import;
pub mod ipfs;
pub mod metrics;
pub mod oci;
pub mod prefetch;
pub mod redis_client;
pub mod registry;
pub mod runtime;
pub mod setup;
pub mod spec;
pub mod store;
pub mod table;
pub mod transport;
pub mod upstream;
