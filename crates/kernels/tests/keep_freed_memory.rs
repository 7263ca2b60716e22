//! `keep_freed_memory` on the main thread of a process of its own (no test harness: glibc's
//! `mallopt` must run before other threads allocate, and the main thread allocates from the main
//! heap, which the setting governs).

/// Minor page faults of this thread so far (`/proc/thread-self/stat`, field 10).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(7)?.parse().ok()
}

fn main() {
    let took = diffusion_kernels::keep_freed_memory();
    assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
    let round = || drop(std::hint::black_box(vec![1u8; 48 << 20]));
    round();
    if let (Some(before), true) = (minor_faults(), took) {
        for _ in 0..3 {
            round();
        }
        // Unmapped and mapped again, 48 MiB (above the 32 MiB that glibc's threshold adapts to)
        // would fault at least 24 times (2 MiB pages), 12288 times with 4 KiB pages; kept, it
        // faults not at all.
        let faults = minor_faults().unwrap() - before;
        assert!(
            faults < 8,
            "48 MiB freed and allocated again 3 times: {faults} page faults"
        );
        println!("keep_freed_memory: 48 MiB freed and allocated again 3 times with {faults} page faults");
    } else {
        println!("keep_freed_memory: not glibc on Linux, nothing to check");
    }
}
