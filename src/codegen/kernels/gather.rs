//! `gather` and `scatter_add`: copies (and sums) of contiguous slices picked by i32 indices,
//! each index clamped to its axis ([`crate::op::clamp_index`]) exactly as the interpreter
//! does, so a bad index reads (or adds to) the nearest slice and never leaves the buffers.

use crate::op::clamp_index;

/// `out[o, j, :] = table[o, clamp(indices[j]), :]` for a table viewed as `[outer, n, inner]`,
/// `m` indices and an output viewed as `[outer, m, inner]`.
///
/// # Safety
/// `table` must hold `outer * n * inner` floats, `indices` `m` values and `out`
/// `outer * m * inner` floats; `n >= 1`.
#[no_mangle]
pub unsafe extern "C" fn gl_gather(
    table: *const f32,
    indices: *const i32,
    out: *mut f32,
    outer: i64,
    n: i64,
    m: i64,
    inner: i64,
) {
    let (outer, n, m, inner) = (outer as usize, n as usize, m as usize, inner as usize);
    for o in 0..outer {
        for j in 0..m {
            // SAFETY: `j < m` (the contract: `indices` holds `m` values); the clamped row
            // is below `n`, so the source slice lies in `table`'s `outer * n * inner` floats
            // and the destination in `out`'s `outer * m * inner`, and the two buffers are
            // distinct (the output of a standalone op never aliases its operands).
            unsafe {
                let row = clamp_index(i64::from(*indices.add(j)), n);
                let src = table.add((o * n + row) * inner);
                let dst = out.add((o * m + j) * inner);
                std::ptr::copy_nonoverlapping(src, dst, inner);
            }
        }
    }
}

/// Zeros `out` (`[outer, n, inner]`), then `out[o, clamp(indices[j]), :] += updates[o, j, :]`
/// for `o` and then `j` in increasing order (the interpreter's order).
///
/// # Safety
/// `updates` must hold `outer * m * inner` floats, `indices` `m` values and `out`
/// `outer * n * inner` floats, not overlapping `updates`; `n >= 1`.
#[no_mangle]
pub unsafe extern "C" fn gl_scatter_add(
    updates: *const f32,
    indices: *const i32,
    out: *mut f32,
    outer: i64,
    n: i64,
    m: i64,
    inner: i64,
) {
    let (outer, n, m, inner) = (outer as usize, n as usize, m as usize, inner as usize);
    // SAFETY: `out` holds `outer * n * inner` floats (the contract).
    let dst = unsafe { std::slice::from_raw_parts_mut(out, outer * n * inner) };
    // SAFETY: `updates` holds `outer * m * inner` floats and does not overlap `out`.
    let src = unsafe { std::slice::from_raw_parts(updates, outer * m * inner) };
    // SAFETY: `indices` holds `m` values.
    let idx = unsafe { std::slice::from_raw_parts(indices, m) };
    dst.fill(0.0);
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            let to = (o * n + clamp_index(i64::from(i), n)) * inner;
            let from = (o * m + j) * inner;
            for (d, s) in dst[to..to + inner].iter_mut().zip(&src[from..from + inner]) {
                *d += s;
            }
        }
    }
}
