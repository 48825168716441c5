//! The `registry-facade` binary: everything is in the library's `cli`.

fn main() -> std::process::ExitCode {
    registry_facade::cli::main()
}
