//! The `wavecast-model-check` binary: everything lives in the library. It installs the counting
//! allocator that peak memory is read from.

use wavecast_model_check::memory::{CountingAllocator, MemoryMeter, counting_allocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = counting_allocator();

fn main() -> std::process::ExitCode {
    wavecast_model_check::cli::main(MemoryMeter::Heap(&ALLOCATOR))
}
