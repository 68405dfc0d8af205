//! Writes the seed inputs of every fuzz target: `gen_seeds DIR` (the script's is `fuzz/seeds`).
//!
//! Built like the targets (see README.md), so it reuses their build; the dummy target below
//! satisfies the instrumentation's libFuzzer symbols, and this `main` runs instead of libFuzzer's.

libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).unwrap_or_else(|| "seeds".into());
    wavecast_fuzz::write_seeds(std::path::Path::new(&dir))
}
