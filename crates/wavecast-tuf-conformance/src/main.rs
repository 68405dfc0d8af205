//! The `wavecast-tuf-client` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    wavecast_tuf_conformance::main(std::env::args_os().skip(1).collect())
}
