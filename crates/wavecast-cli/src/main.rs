//! The `wavecast` binary: everything lives in the `wavecast_cli` library.

fn main() -> std::process::ExitCode {
    wavecast_cli::main()
}
