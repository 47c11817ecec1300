//! Keeping the process's memory flat across model swaps.
//!
//! ONNX Runtime allocates with the C allocator from whichever thread loads or
//! runs a session. With glibc, every new thread can get its own malloc arena,
//! and freed session memory stays mapped in them: measured here, RSS climbed
//! from 103 MiB to ~400 MiB over the first ten swaps of a 21 MB model before
//! levelling off. Capping the arenas and trimming after a version is dropped
//! keeps RSS close to one or two loaded versions (BENCHMARKS.md).
//!
//! glibc also raises its mapping threshold after the first large free (up to
//! 32 MiB), and its trim threshold with it (to twice that), so load-time
//! buffers end up in an arena; freed at the top of a second arena they stayed
//! resident, since `malloc_trim` trims only the first arena's top. Measured on
//! a 21 MB model: RSS after load was 78 MiB in some starts and 95 MiB in
//! others. Fixing the mapping threshold at 1 MiB made every start 78 MiB, but
//! loads ~50 ms slower (ONNX Runtime's load buffers became fresh mappings,
//! faulted in each time). Fixing it at 32 MiB and the trim threshold at 1 MiB
//! keeps the buffers' reuse and gives a top above 1 MiB back in every arena:
//! 78-80 MiB in every start, loads as fast as before (BENCHMARKS.md).
//!
//! The Rust heap (small blocks from mimalloc, large ones from glibc, whose
//! free pages `trim` returns) is `ferry_heap::Heap`.

/// Caps glibc's malloc arenas and fixes its mapping threshold (module docs);
/// call before any threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
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
