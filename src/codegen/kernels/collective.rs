//! `all_reduce`: the compiled step's call into the communication library
//! ([`crate::dist::all_reduce`]: a gather of every rank's buffer, added in rank order; a copy
//! in a world of one rank).

/// `out = sum (or, with mean != 0, mean) over the ranks of x`, `n` f32 elements.
///
/// # Safety
/// `x` and `out` must each hold `n` floats and not overlap (the output of a standalone op
/// never aliases its operand).
#[no_mangle]
pub unsafe extern "C" fn gl_all_reduce(x: *const f32, out: *mut f32, n: i64, mean: i64) {
    let n = n.max(0) as usize;
    if n == 0 {
        return;
    }
    // SAFETY: the contract: `x` holds `n` floats, `out` `n` floats, distinct buffers.
    let (x, out) = unsafe {
        (
            std::slice::from_raw_parts(x, n),
            std::slice::from_raw_parts_mut(out, n),
        )
    };
    crate::dist::all_reduce(x, out, mean != 0);
}
