//! `codegen::gemm::sgemm` makes no heap allocation (a counting global allocator in this test
//! binary), whatever the shape, layout or ISA.

use gradlift::codegen::gemm::{detected, sgemm_with, workspace_len, Isa};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sgemm_does_not_allocate() {
    // (m, k, n, a transposed, b transposed)
    let shapes = [
        (64, 784, 128, false, false),
        (8, 784, 128, false, false),
        (5408, 64, 128, true, false),
        (64, 128, 5408, false, true),
        (676, 9, 32, false, false),
        (9, 676, 32, true, false),
        (37, 600, 1100, false, false),
    ];
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        for &(m, k, n, at, bt) in &shapes {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0.0f32; m * n];
            let mut ws = vec![0.0f32; workspace_len(m, k, n)];
            let (a_rs, a_cs) = if at { (1, m as isize) } else { (k as isize, 1) };
            let (b_rs, b_cs) = if bt { (1, k as isize) } else { (n as isize, 1) };
            let before = ALLOCS.with(|a| a.get());
            // SAFETY: the buffers cover the matrices.
            unsafe {
                sgemm_with(
                    isa,
                    m,
                    k,
                    n,
                    a.as_ptr(),
                    a_rs,
                    a_cs,
                    b.as_ptr(),
                    b_rs,
                    b_cs,
                    c.as_mut_ptr(),
                    n as isize,
                    true,
                    ws.as_mut_ptr(),
                )
            };
            let _ = detected();
            let after = ALLOCS.with(|a| a.get());
            assert_eq!(after, before, "{isa:?} {m}x{k}x{n}: allocated");
            assert!(
                c.iter().all(|&x| x == 0.125 * k as f32),
                "{isa:?} {m}x{k}x{n}"
            );
        }
    }
}
