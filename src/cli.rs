//! The command line: `serve` (the default), `import`, `prefetch` and `setup`; logging set-up
//! and signal handling.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app;
use crate::clock::Clock;
use crate::config::{Config, LogFormat, LogSettings, Overrides};
use crate::import::import_layout;
use crate::oci::{RepositoryName, Tag};
use crate::registry::PrefetchRef;
use crate::runtime::{ShutdownKind, Stopper};
use crate::setup::{write_hosts_config, SetupRequest, DEFAULT_HOSTS_DIR};
use crate::store::CacheDir;

#[derive(Debug, Parser)]
#[command(name = "registry-facade", version, about = "A container-image registry facade", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry (the default when no command is given).
    Serve(ServeArgs),
    /// Copy an OCI image layout into the cache, verifying every blob.
    Import(ImportArgs),
    /// Point this node's containerd at the facade: write its hosts.toml (pull, resolve, CA).
    Setup(SetupArgs),
    /// Warm the cache: fetch every blob of the images named (from IPFS or upstream).
    Prefetch(PrefetchArgs),
}

#[derive(Debug, Clone, Args)]
struct PrefetchArgs {
    /// Images: names this facade serves (`demo:latest`, `mirror/<alias>/<repo>:<tag>`,
    /// `remote/<id>`, `fixed/<id>`) or upstream images with their registry host
    /// (`registry.example/team/app:1.0`).
    #[arg(required = true, value_name = "REF")]
    refs: Vec<String>,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Blobs fetched at once.
    #[arg(long, value_name = "N", default_value_t = crate::registry::DEFAULT_PREFETCH_CONCURRENCY)]
    concurrency: usize,
}

#[derive(Debug, Clone, Args)]
struct SetupArgs {
    /// The facade as image references name it: NAME:PORT (e.g. registry-facade.local:5000).
    #[arg(long, value_name = "NAME:PORT")]
    host: String,
    /// The CA certificate (PEM) that signed the facade's TLS certificate; copied beside hosts.toml.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// containerd's registry host directory (its `config_path`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_HOSTS_DIR)]
    hosts_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// JSON configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:5000 (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Cache directory (overrides `cacheDir`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Number of executors, one per core (overrides `cores`).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
}

#[derive(Debug, Clone, Args)]
struct ImportArgs {
    /// Directory holding an OCI image layout (oci-layout, index.json, blobs/).
    layout: PathBuf,
    /// Repository name to serve it under, with an optional tag: NAME[:TAG].
    reference: String,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Import(args)) => import(args),
        Some(Command::Setup(args)) => setup(args),
        Some(Command::Prefetch(args)) => prefetch(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("registry-facade: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let overrides = Overrides { listen: args.listen, cache_dir: args.cache_dir, cores: args.cores };
    let config = Config::load(args.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    init_logging(&config.log);
    let server = match &args.config {
        Some(path) => app::start_watching(&config, path, &overrides, Clock::system()),
        None => app::start(&config, Clock::system()),
    }
    .map_err(|e| e.to_string())?;
    forward_signals(server.stopper())?;
    server.join().map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

fn prefetch(args: PrefetchArgs) -> Result<(), String> {
    let overrides = Overrides { cache_dir: args.cache_dir, ..Overrides::default() };
    let mut config = Config::load(args.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    // A server may share the blob space: it alone evicts, since only it knows which units
    // its images hold. Units made here count there once its images take them. It may evict
    // one this command is reading from; the preparation then unpacks that layer again.
    if let Some(blobserve) = config.registry.blobserve.as_mut() {
        blobserve.max_size_bytes = None;
    }
    init_logging(&config.log);
    let refs = args.refs.iter().map(|r| r.parse::<PrefetchRef>().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let (_, registry) = app::open_registry(&config, &Clock::system()).map_err(|e| e.to_string())?;
    crate::prefetch::run(registry, refs, args.concurrency)
}

fn import(args: ImportArgs) -> Result<(), String> {
    let overrides = Overrides { cache_dir: args.cache_dir, ..Overrides::default() };
    let config = Config::load(args.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
    init_logging(&config.log);
    let (name, tag) = parse_target(&args.reference)?;
    let cache = CacheDir::open(&config.cache_dir).map_err(|e| format!("cache directory: {e}"))?;
    let summary = import_layout(&cache, &args.layout, &name, tag.as_ref()).map_err(|e| e.to_string())?;
    for (tag, digest) in &summary.tags {
        println!("{name}:{tag} {digest}");
    }
    println!(
        "imported {} manifests and {} blobs ({} bytes copied) into {}",
        summary.manifests,
        summary.blobs,
        summary.bytes,
        config.cache_dir.display()
    );
    Ok(())
}

fn setup(args: SetupArgs) -> Result<(), String> {
    let request = SetupRequest { host: args.host, ca: args.ca, hosts_dir: args.hosts_dir };
    for outcome in write_hosts_config(&request).map_err(|e| e.to_string())? {
        println!("{} {}", if outcome.changed { "wrote" } else { "unchanged" }, outcome.path.display());
    }
    Ok(())
}

/// `NAME[:TAG]`; the tag is after the last `:` that follows the last `/`.
fn parse_target(reference: &str) -> Result<(RepositoryName, Option<Tag>), String> {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (reference, None),
    };
    let name = name.parse().map_err(|e| format!("`{name}`: {e}"))?;
    let tag = tag.map(|t| t.parse().map_err(|e| format!("`{t}`: {e}"))).transpose()?;
    Ok((name, tag))
}

fn init_logging(settings: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.level));
    // Colours only for a person at a terminal, never into a log file or journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// SIGTERM drains (bounded by the grace period); SIGINT, or any second signal, stops at once.
fn forward_signals(stopper: Stopper) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    std::thread::Builder::new()
        .name("rf-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                let kind = if signal == SIGTERM && seen == 1 { ShutdownKind::Graceful } else { ShutdownKind::Immediate };
                tracing::info!(signal, ?kind, "shutting down");
                stopper.stop(kind);
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let (name, tag) = parse_target("a/b:v1").unwrap();
        assert_eq!((name.as_str(), tag.unwrap().as_str()), ("a/b", "v1"));
        assert!(parse_target("a/b").unwrap().1.is_none());
        assert!(parse_target("A:v1").is_err());
        assert!(parse_target("a:.bad").is_err());
    }
}
