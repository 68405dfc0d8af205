//! The `wavecast-agent` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    wavecast_agent::cli::main()
}
