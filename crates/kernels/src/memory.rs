//! Reuse of freed memory by the C allocator.
//!
//! Every flex operation allocates its output, so a training step allocates and frees its
//! activations, gradients and temporaries over and over: gigabytes per step for DiT-S/2 at
//! batch 32, whose attention scores alone are 50 MB a layer. glibc's malloc serves each block
//! above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh mapping and unmaps it
//! when it is freed, and trims its heaps when their free top exceeds 128 KiB; the kernel then
//! zeroes every page again when the next block touches it. On the development machine that
//! zeroing was 30 % of a DiT-S/2 training step (`clear_page_erms` in `perf`), and the step ran in
//! 25.2 s with the default settings against 12.3 s with the two below (docs/performance.md).

/// Makes glibc's malloc keep freed memory for reuse: every block comes from its heaps (no
/// mapping of its own, `M_MMAP_MAX` = 0) and free memory at the top of a heap is returned to the
/// system only beyond 2 GiB (`M_TRIM_THRESHOLD`). Threads other than the main one have heaps of
/// at most 64 MiB, so glibc still maps their larger blocks and unmaps their empty extra heaps.
/// Memory freed after the peak stays with the process for the next step; the resident size can
/// also grow beyond the program's live data where the heaps fragment (the DiT-S/2 step's peak
/// went from 6.83 to 6.93 GiB). Process-wide, and glibc's `mallopt` is not safe against other
/// threads allocating at the same time: call it once, first thing in `main`, before any thread
/// starts (the `diffusion` CLI and the image experiments do). Returns whether the setting took:
/// always false on other C libraries, where it does nothing. Tested in
/// `tests/keep_freed_memory.rs`, a test binary of its own that runs on the main thread.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets two documented allocator parameters to valid values; it
        // touches no memory of ours. (It is not synchronised with other threads' allocations,
        // hence the contract above: call it before threads start.)
        #[allow(unsafe_code)]
        let took = unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        };
        took
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}
