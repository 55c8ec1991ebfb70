//! A global allocator for the fuzz targets that refuses any single allocation above a limit.
//!
//! Why: "never allocates what the input's bytes do not justify" is one of the promises the
//! targets check (a length field read from a file must not turn into a 4 GiB `Vec`). libFuzzer's
//! own `-malloc_limit_mb` sees allocations only through a sanitizer's malloc hooks, and the
//! targets run without a sanitizer: the code under test is safe Rust, so AddressSanitizer finds
//! nothing there that debug assertions and the borrow checker do not, and it costs a third of
//! the fuzz build's time. Refusing the allocation (a null pointer) sends Rust to its
//! allocation-failure handler, which names the size and aborts: libFuzzer records the input as a
//! crash.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, refusing allocations of more than `limit` bytes.
pub struct LimitedAllocator {
    limit: usize,
}

impl LimitedAllocator {
    /// An allocator that refuses allocations of more than `limit` bytes.
    pub const fn new(limit: usize) -> LimitedAllocator {
        LimitedAllocator { limit }
    }

    fn refuses(&self, size: usize) -> bool {
        size > self.limit
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with a null pointer, which
// `GlobalAlloc` allows for any request.
unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.refuses(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_up_to_the_limit_pass_and_larger_ones_are_refused() {
        let allocator = LimitedAllocator::new(1024);
        let fits = Layout::from_size_align(1024, 8).unwrap();
        let too_large = Layout::from_size_align(1025, 8).unwrap();
        // SAFETY: each pointer is checked before use and freed with the layout it was made with.
        unsafe {
            assert!(allocator.alloc(too_large).is_null());
            assert!(allocator.alloc_zeroed(too_large).is_null());
            let ptr = allocator.alloc_zeroed(fits);
            assert!(!ptr.is_null());
            assert_eq!(*ptr.add(1023), 0);
            assert!(
                allocator.realloc(ptr, fits, 1025).is_null(),
                "a refused growth"
            );
            // A refused realloc leaves the block as it was.
            let smaller = allocator.realloc(ptr, fits, 512);
            assert!(!smaller.is_null());
            allocator.dealloc(smaller, Layout::from_size_align(512, 8).unwrap());
        }
    }
}
