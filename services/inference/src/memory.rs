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

/// Allocations from this size up go to the C allocator, below it to mimalloc.
const LARGE: usize = 4 << 10;

/// The service's Rust heap: small blocks, the many short-lived ones of a
/// request, from mimalloc; blocks of 4 KiB and more (model bytes, weights,
/// batches) from the C allocator, whose free pages [`trim`] returns after a
/// swap. On a tiny model's REST requests glibc's malloc and free were ~15 %
/// of the process's CPU; this heap gave +10 % requests per second on one
/// core. mimalloc for everything kept load-time buffers (a 21 MB model's
/// process at 104-130 MiB, not 83); with the line at 64 KiB still +2-5 MiB;
/// at 4 KiB 82.4-83.5 MiB over 20 swaps, as with glibc alone (BENCHMARKS.md).
pub struct Heap;

// SAFETY: every block is freed (or resized) by the allocator that made it:
// Rust passes `dealloc` and `realloc` the layout the block was allocated with,
// and the size decides the allocator; a resize across the line moves the block.
unsafe impl std::alloc::GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if layout.size() >= LARGE { std::alloc::System.alloc(layout) } else { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        unsafe {
            if layout.size() >= LARGE {
                std::alloc::System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so it names its allocator.
        unsafe {
            if layout.size() >= LARGE {
                std::alloc::System.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use std::alloc::{Layout, System};
        let (was_large, large) = (layout.size() >= LARGE, new_size >= LARGE);
        // SAFETY: same allocator on both sides, or a move between them with the
        // caller's guarantees (`new_size` valid for `layout.align()`).
        unsafe {
            match (was_large, large) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::*;

    /// Blocks keep their bytes when a resize moves them between the two allocators.
    #[test]
    fn resizes_across_the_line_keep_the_bytes() {
        let small = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: every pointer is checked, written within its size and freed with its layout.
        unsafe {
            let p = Heap.alloc(small);
            assert!(!p.is_null());
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            let big = LARGE * 2;
            let q = Heap.realloc(p, small, big);
            assert!(!q.is_null());
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            *q.add(big - 1) = 7;
            let r = Heap.realloc(q, Layout::from_size_align(big, 8).unwrap(), 50);
            assert!(!r.is_null());
            assert!((0..50).all(|i| *r.add(i) == i as u8));
            Heap.dealloc(r, Layout::from_size_align(50, 8).unwrap());
            let z = Heap.alloc_zeroed(Layout::from_size_align(LARGE, 64).unwrap());
            assert!(!z.is_null() && (z as usize).is_multiple_of(64));
            assert!((0..LARGE).all(|i| *z.add(i) == 0));
            Heap.dealloc(z, Layout::from_size_align(LARGE, 64).unwrap());
        }
    }
}
