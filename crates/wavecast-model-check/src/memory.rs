//! Measuring a model's memory: the peak of heap bytes allocated while it is parsed, planned and
//! run, counted by a wrapper around the system allocator.
//!
//! This is the documented approximation of "peak memory": the process's peak RSS (VmHWM) would
//! also count the checker's own code and could not see growth that reuses pages the allocator
//! already holds, so it is both noisier and less about the model. The heap count covers the
//! weights, the engine's plan and every intermediate tensor; it leaves out the stack and
//! memory-mapped files (the checker maps none). Allocations by other threads land in the same
//! count, which only matters to a caller that runs checks in parallel (tests).

use std::alloc::System;

use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait as _};

/// The counting allocator. A binary that runs checks installs one:
///
/// ```text
/// #[global_allocator]
/// static ALLOCATOR: CountingAllocator = wavecast_model_check::memory::counting_allocator();
/// ```
pub type CountingAllocator = PeakMemAlloc<System>;

/// A counting allocator over the system's, for a `#[global_allocator]` static.
pub const fn counting_allocator() -> CountingAllocator {
    PeakMemAlloc::new(System)
}

/// Where the check reads peak memory from.
#[derive(Debug, Clone, Copy)]
pub enum MemoryMeter {
    /// The process's global allocator, a [`CountingAllocator`].
    Heap(&'static CountingAllocator),
    /// Not measured: a memory budget then makes the check "could not run".
    Unavailable,
}

impl MemoryMeter {
    /// Starts a measurement: the peak counts from here.
    pub fn start(&self) {
        if let MemoryMeter::Heap(a) = self {
            a.reset_peak_memory();
        }
    }

    /// The peak heap growth since [`start`](Self::start), bytes.
    pub fn peak(&self) -> Option<u64> {
        match self {
            MemoryMeter::Heap(a) => Some(a.get_peak_memory() as u64),
            MemoryMeter::Unavailable => None,
        }
    }
}
