//! The module's allocator: size-class free lists in front of the system allocator (dlmalloc).
//!
//! Why: a request allocates and frees a handful of small buffers (header values and shared-data
//! values the host copies in, storage keys). dlmalloc spends hundreds of instructions on each;
//! popping and pushing a free list costs a few. Measured with bench/hostcalls.
//!
//! Invariants: a block of class `c` is always `CLASS_BYTES[c]` bytes, 16-aligned, taken from the
//! system allocator once and then only moved between its class's free list and its user; Rust
//! frees every allocation with the layout it was made with, so `dealloc` finds the same class.
//! Blocks are never returned to the system: memory is bounded by the peak of small live
//! allocations. A wasm VM runs one thread, so the lists need no lock.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

const CLASS_BYTES: [usize; 7] = [16, 32, 64, 128, 256, 512, 1024];
const ALIGN: usize = 16;

pub struct Pool {
    free: UnsafeCell<[*mut u8; CLASS_BYTES.len()]>,
}

// SAFETY: wasm32 modules run single-threaded; nothing shares the pool across threads.
unsafe impl Sync for Pool {}

impl Pool {
    pub const fn new() -> Pool {
        Pool { free: UnsafeCell::new([std::ptr::null_mut(); CLASS_BYTES.len()]) }
    }
}

fn class_of(layout: &Layout) -> Option<usize> {
    if layout.align() > ALIGN {
        return None;
    }
    CLASS_BYTES.iter().position(|&c| layout.size() <= c)
}

unsafe impl GlobalAlloc for Pool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class_of(&layout) else { return System.alloc(layout) };
        let free = &mut *self.free.get();
        let head = free[c];
        if head.is_null() {
            return System.alloc(Layout::from_size_align_unchecked(CLASS_BYTES[c], ALIGN));
        }
        // A free block's first word links to the next free block.
        free[c] = *(head as *mut *mut u8);
        head
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class_of(&layout) else { return System.dealloc(ptr, layout) };
        let free = &mut *self.free.get();
        *(ptr as *mut *mut u8) = free[c];
        free[c] = ptr;
    }
}

#[global_allocator]
static POOL: Pool = Pool::new();
