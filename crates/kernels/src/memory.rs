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
/// system only beyond 2 GiB (`M_TRIM_THRESHOLD`). (Threads other than the main one have heaps of
/// at most 64 MiB, so glibc still maps their larger blocks.) The peak resident memory stays what the
/// program needs; memory freed after the peak is kept for the next step. Process-wide: call it
/// once, first thing in `main` (the `diffusion` CLI and the experiments do). Returns whether the
/// setting took: always false on other C libraries, where it does nothing.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets allocator parameters; glibc takes its own lock for it, and
        // both parameters are documented and valid for these values.
        #[allow(unsafe_code)]
        let took = unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        };
        took
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    /// Minor page faults of this thread so far (`/proc/thread-self/stat`, field 10).
    fn minor_faults() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(7)?.parse().ok()
    }

    #[test]
    fn freed_blocks_come_back_without_page_faults() {
        let took = super::keep_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        let round = || drop(std::hint::black_box(vec![1u8; 48 << 20]));
        round();
        let (Some(before), true) = (minor_faults(), took) else {
            return;
        };
        for _ in 0..3 {
            round();
        }
        // Unmapped and mapped again, 48 MiB (above the 32 MiB that glibc's threshold adapts to,
        // below the 64 MiB of a thread's heap) would fault at least 24 times (2 MiB pages), 12288
        // times with 4 KiB pages; kept, it faults not at all.
        let faults = minor_faults().unwrap() - before;
        assert!(
            faults < 8,
            "48 MiB freed and allocated again 3 times: {faults} page faults"
        );
    }
}
