//! Keeping the process's memory flat across model swaps.
//!
//! ONNX Runtime allocates with the C allocator from whichever thread loads or
//! runs a session. With glibc, every new thread can get its own malloc arena,
//! and freed session memory stays mapped in them: measured here, RSS climbed
//! from 103 MiB to ~400 MiB over the first ten swaps of a 21 MB model before
//! levelling off. Capping the arenas and trimming after a version is dropped
//! keeps RSS close to one or two loaded versions (BENCHMARKS.md).

/// Caps glibc's malloc arenas; call before any threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed memory to the OS (after an old model version is dropped).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
