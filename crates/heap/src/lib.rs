//! The Rust heap of Ferry's binaries (`#[global_allocator]`): the many
//! short-lived small blocks of a request from mimalloc, blocks of 4 KiB and
//! more (model bytes, weights, batches) from the C allocator.
//!
//! **Why the split.** On a tiny model's REST requests glibc's malloc and free
//! were ~15 % of the process's CPU; mimalloc for small blocks gave +10 %
//! requests per second on one core. mimalloc for everything kept load-time
//! buffers (a 21 MB model's process at 104-130 MiB, not 83); with the line at
//! 64 KiB still +2-5 MiB; at 4 KiB 82.4-83.5 MiB over 20 swaps, as with glibc
//! alone (BENCHMARKS.md). The inference service returns the C allocator's
//! free pages after a swap (`ferry_inference::memory::trim`).
//!
//! **Why not the `mimalloc` crate's allocator.** It passes every block to
//! `mi_malloc_aligned`, whose fast path takes a block only when the size
//! class's next free block happens to be aligned and the size is at most
//! 1 KiB; otherwise it goes the generic way (and may over-allocate). A
//! request here makes ~50 small allocations, and the aligned entry cost
//! ~57 instructions each where plain `mi_malloc` costs about a third
//! (callgrind, BENCHMARKS.md). mimalloc's size classes are multiples of
//! 8 bytes, of 16 above 16, and a page's first block is 16-aligned, so a
//! block whose size is a multiple of its alignment, at most 16, is aligned
//! in whichever class it lands: those take `mi_malloc`, the rest (the
//! cache-line-aligned blocks of the async runtime, mostly) the aligned entry.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Allocations from this size up go to the C allocator, below it to mimalloc.
pub const LARGE: usize = 4 << 10;

/// Largest alignment every mimalloc block of a matching size has (its `MI_MAX_ALIGN_SIZE`).
const NATURAL_ALIGN: usize = 16;

/// Whether a block of `size` bytes from mimalloc's plain entry points is
/// aligned to `align` (module docs).
#[inline]
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && size.is_multiple_of(align)
}

/// A new block for `layout` from the entry point its size and alignment
/// call for: the C allocator's (`system`) from [`LARGE`] up, mimalloc's
/// plain one (`plain`) where [`natural`] holds, its aligned one otherwise.
///
/// # Safety
/// `layout`'s size is non-zero, as `GlobalAlloc::alloc` requires.
#[inline(always)]
unsafe fn route(
    layout: Layout,
    system: impl FnOnce(Layout) -> *mut u8,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if size >= LARGE {
        system(layout)
    } else if natural(size, align) {
        // SAFETY: a non-zero size (the caller's guarantee).
        unsafe { plain(size).cast() }
    } else {
        // SAFETY: as above; `align` is a power of two (a `Layout`'s).
        unsafe { aligned(size, align).cast() }
    }
}

/// The heap (module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Heap;

// SAFETY: every block is freed (or resized) by the allocator that made it:
// Rust passes `dealloc` and `realloc` the layout the block was allocated with,
// and the size decides the allocator; a resize across the line moves the
// block. mimalloc's plain entry points are used only where `natural` holds,
// so every block has the alignment its layout asks for; `mi_free` frees
// blocks of either entry point.
unsafe impl GlobalAlloc for Heap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees (`size` non-zero).
        unsafe { route(layout, |l| System.alloc(l), mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        unsafe { route(layout, |l| System.alloc_zeroed(l), mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so it names its allocator.
        unsafe { if layout.size() >= LARGE { System.dealloc(ptr, layout) } else { mi::mi_free(ptr.cast::<c_void>()) } }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: same allocator on both sides, or a move between them with the
        // caller's guarantees (`new_size` valid for `align`).
        unsafe {
            match (layout.size() >= LARGE, new_size >= LARGE) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) if natural(new_size, align) => mi::mi_realloc(ptr.cast(), new_size).cast(),
                (false, false) => mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast(),
                _ => {
                    let new = self.alloc(Layout::from_size_align_unchecked(new_size, align));
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

    /// Every block has its layout's alignment, whichever entry point made it:
    /// each size up to the line, with every alignment up to 128, many times
    /// over (a size class's blocks lie at different offsets in its pages).
    #[test]
    fn every_small_block_is_aligned_as_its_layout_asks() {
        let mut held = Vec::new();
        for round in 0..4 {
            for size in 1..LARGE {
                for align in [1, 2, 4, 8, 16, 32, 64, 128] {
                    let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                    // SAFETY: a non-zero size; each block is freed below with its layout.
                    let (p, z) = unsafe { (Heap.alloc(layout), Heap.alloc_zeroed(layout)) };
                    assert!(!p.is_null() && !z.is_null());
                    assert!((p as usize).is_multiple_of(align), "{size} bytes at {align}: {p:p}");
                    assert!((z as usize).is_multiple_of(align), "{size} bytes zeroed at {align}: {z:p}");
                    // SAFETY: `z` holds `size` bytes.
                    assert!(unsafe { std::slice::from_raw_parts(z, size) }.iter().all(|&b| b == 0));
                    // Keep some, so that later blocks come from further into the pages.
                    if (size + round) % 7 == 0 {
                        held.push((p, layout));
                    } else {
                        // SAFETY: allocated above with this layout.
                        unsafe { Heap.dealloc(p, layout) };
                    }
                    // SAFETY: allocated above with this layout.
                    unsafe { Heap.dealloc(z, layout) };
                }
            }
        }
        for (p, layout) in held {
            // SAFETY: allocated above with this layout.
            unsafe { Heap.dealloc(p, layout) };
        }
    }

    /// A small block resized within mimalloc keeps its bytes and its alignment.
    #[test]
    fn small_resizes_keep_bytes_and_alignment() {
        for align in [1, 8, 16, 32, 64] {
            let layout = Layout::from_size_align(align.max(8), align).unwrap();
            // SAFETY: every pointer is checked, written within its size and freed with its layout.
            unsafe {
                let mut p = Heap.alloc(layout);
                let mut size = layout.size();
                std::ptr::write_bytes(p, 0xab, size);
                for new_size in [24, 48, 100, 1000, 3000, 16, 8] {
                    let new_size = new_size.max(align);
                    let q = Heap.realloc(p, Layout::from_size_align(size, align).unwrap(), new_size);
                    assert!(!q.is_null() && (q as usize).is_multiple_of(align), "{new_size} at {align}");
                    assert!((0..size.min(new_size)).all(|i| *q.add(i) == 0xab));
                    std::ptr::write_bytes(q, 0xab, new_size);
                    (p, size) = (q, new_size);
                }
                Heap.dealloc(p, Layout::from_size_align(size, align).unwrap());
            }
        }
    }
}
