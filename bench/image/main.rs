//! `rf-bench-image OUT [--layers 16M,1K] [--seed N] [--tag T] [--plain] [--files N]
//! [--file-prefix P]`: writes a deterministic OCI image layout for benchmarks (the same builder
//! the tests use) and prints its digests (and the paths of its files) as JSON.

#[path = "../../tests/support/image.rs"]
#[allow(dead_code)]
mod image;

use clap::Parser;

#[derive(Parser)]
struct Args {
    out: std::path::PathBuf,
    /// Payload sizes of the layers (K, M, G suffixes: powers of 1024).
    #[arg(long, default_value = "16M,1K")]
    layers: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Uncompressed tar layers (the blob is then the payload plus 1.5 KiB of tar framing).
    #[arg(long)]
    plain: bool,
    /// Files each layer's payload is split into (`<prefix><layer>/data-<k>.bin`; one file is
    /// `<prefix><layer>/data.bin`): a lazy pull reads one without the others.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// The first part of every file's path; images meant to be stacked need different ones.
    #[arg(long, default_value = "layer")]
    file_prefix: String,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: usize = digits.parse().map_err(|_| format!("bad size `{text}`"))?;
    let multiplier = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => return Err(format!("bad size unit `{other}`")),
    };
    Ok(number * multiplier)
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let layers = args.layers.split(',').map(parse_size).collect::<Result<Vec<_>, _>>()?;
    let options = image::ImageOptions { layers, seed: args.seed, tag: args.tag, gzip: !args.plain, files_per_layer: args.files.max(1), file_prefix: args.file_prefix, ..Default::default() };
    let layout = image::write_layout(&args.out, &options);
    let built = layout.image();
    let largest = built.layers.iter().max_by_key(|l| l.size).ok_or("no layers")?;
    let summary = serde_json::json!({
        "layout": args.out,
        "manifest": {"digest": built.manifest.digest, "size": built.manifest.size},
        "largest_layer": {"digest": largest.digest, "size": largest.size},
        "config": {"digest": built.config.digest, "size": built.config.size},
        "layers": built.layers.iter().zip(&built.layer_files).map(|(l, files)| serde_json::json!({
            "digest": l.digest, "size": l.size, "files": files.iter().map(|(path, _)| path).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    });
    println!("{summary}");
    Ok(())
}
