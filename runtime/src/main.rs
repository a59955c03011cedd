//! The `pagedrt` command line.

fn main() -> std::process::ExitCode {
    runtime::cli::main()
}
