//! registry-facade: an OCI registry that composes workspace images on the fly and serves
//! blobs zero-copy from an mmapped local layer cache, one glommio executor per core.
//!
//! Layers (DESIGN.md §8); a module imports only from rows below its own, never from a
//! sibling in the same row (`tests/layering.rs` enforces this):
//!
//! ```text
//! cli, config, app,       command line, configuration file, assembly of the parts; node
//!   setup                 set-up (containerd's hosts.toml)
//! runtime                 executors, listeners, shutdown and drain
//! http                    hyper glue: stream adapter, timer, connections, dispatch, responses
//! registry                the facade's rules: repositories, manifests, blobs, import, demo
//! store, spec, upstream,  the cache on disk; image specs and their stores; the upstream
//!   ipfs                  client; the IPFS gateway source
//! redis_client            the cluster's shared state (Redis on its own thread)
//! oci, table, hyper_glue, protocol types (no I/O); the lock-free shared map; hyper on glommio;
//!   metrics, file_version every exported metric, recorded per core, rendered for /metrics;
//!                         how polled files are told apart
//! ```

pub mod app;
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
pub mod redis_client;
pub mod registry;
pub mod runtime;
pub mod setup;
pub mod spec;
pub mod store;
pub mod table;
pub mod transport;
pub mod upstream;
