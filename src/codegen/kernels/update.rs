//! Adam's update of one param as one runtime kernel at the widest vector width.
//!
//! The update is ordinary graph nodes, and fusion makes it one multi-result body per param
//! (`ir/passes/fuse_adam.ir`). Its square root and division are bound by the divider, which
//! takes as long per 128-bit vector as per 256-bit one: the JIT's `f32x4` loop runs at half the
//! speed the same loop reaches at AVX2 or AVX-512 width when memory keeps up (`cargo bench
//! --bench codegen -- adam_update`). So the lowering recognizes that body ([`crate::codegen::lower`]'s
//! `AdamBody`) and calls [`gl_adam_update`], which performs the same f32 operations in the
//! same order: its results are bit-identical to the loop's and to the interpreter's.

use super::{widest, LANES};

/// Number of `i64` words before the gradient pointers in [`gl_adam_update`]'s table.
pub const ADAM_WORDS: usize = 16;

/// Where [`gl_adam_update`] reads and writes, decoded from its table of words:
/// `[n, w_out, m_out, v_out, w, m, v, one_minus_beta1, one_minus_beta2, alpha, epsilon,
/// scale, weight_decay, lr, grads, 0, g_0, ..., g_{grads-1}]` (pointers as words; `scale`,
/// `weight_decay` and `lr` may be null; an output may be null, then it is not stored).
struct AdamArgs<'t> {
    n: usize,
    outs: [*mut f32; 3],
    w: *const f32,
    m: *const f32,
    v: *const f32,
    c1: f32,
    c2: f32,
    alpha: f32,
    eps: f32,
    scale: Option<f32>,
    decay: Option<(f32, f32)>,
    grads: &'t [*const f32],
}

/// Reads a scalar operand through a table word (a pointer to one f32), or `None` for null.
///
/// # Safety
/// A non-null word points to a readable f32.
unsafe fn scalar(word: i64) -> Option<f32> {
    // SAFETY: by this function's contract.
    (word != 0).then(|| unsafe { *(word as *const f32) })
}

impl AdamArgs<'_> {
    /// # Safety
    /// `t` points to a table laid out as in the type's documentation, which outlives the
    /// result.
    unsafe fn read<'t>(t: *const i64) -> AdamArgs<'t> {
        // SAFETY: `t` holds ADAM_WORDS words and then `t[14]` gradient pointers; the scalar
        // words point to one f32 each or are null (this function's contract).
        unsafe {
            let w = |i: usize| *t.add(i);
            let k = w(14).max(0) as usize;
            AdamArgs {
                n: w(0).max(0) as usize,
                outs: [w(1) as *mut f32, w(2) as *mut f32, w(3) as *mut f32],
                w: w(4) as *const f32,
                m: w(5) as *const f32,
                v: w(6) as *const f32,
                c1: scalar(w(7)).unwrap_or(0.0),
                c2: scalar(w(8)).unwrap_or(0.0),
                alpha: scalar(w(9)).unwrap_or(0.0),
                eps: scalar(w(10)).unwrap_or(0.0),
                scale: scalar(w(11)),
                decay: scalar(w(12)).zip(scalar(w(13))),
                // pointers and i64 words have the same size and alignment on x86-64
                grads: std::slice::from_raw_parts(t.add(ADAM_WORDS) as *const *const f32, k),
            }
        }
    }
}

/// `N` values from `p + i` (a vector register once inlined).
///
/// # Safety
/// `p + i .. p + i + N` is readable.
#[inline(always)]
unsafe fn load<const N: usize>(p: *const f32, i: usize) -> [f32; N] {
    let mut v = [0.0f32; N];
    // SAFETY: by this function's contract; `v` is a distinct local.
    unsafe { std::ptr::copy_nonoverlapping(p.add(i), v.as_mut_ptr(), N) };
    v
}

/// Stores `v` at `p + i` unless `p` is null.
///
/// # Safety
/// A non-null `p + i .. p + i + N` is writable.
#[inline(always)]
unsafe fn store<const N: usize>(p: *mut f32, i: usize, v: &[f32; N]) {
    if !p.is_null() {
        // SAFETY: by this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p.add(i), N) };
    }
}

/// Adam's update of elements `i..i + N`, every operation lanewise and in the body's order:
/// `g = ((g_0 + g_1) + ...) * scale`, `m' = m + (g - m) * c1`, `v' = v + (g * g - v) * c2`,
/// `w0 = w - (w * wd) * lr` (AdamW) or `w`, `w' = w0 - (m' * alpha) / (sqrt(v') + eps)`.
/// Every input is read before any output is stored, so outputs may alias their inputs.
///
/// # Safety
/// Every pointer of `a` covers `i..i + N`.
#[inline(always)]
unsafe fn block<const N: usize>(a: &AdamArgs<'_>, i: usize) {
    // SAFETY: by this function's contract.
    unsafe {
        let mut g = load::<N>(a.grads[0], i);
        for &p in &a.grads[1..] {
            let h = load::<N>(p, i);
            for l in 0..N {
                g[l] += h[l];
            }
        }
        if let Some(s) = a.scale {
            for x in &mut g {
                *x *= s;
            }
        }
        let (mut m, mut v, mut w) = (load::<N>(a.m, i), load::<N>(a.v, i), load::<N>(a.w, i));
        for l in 0..N {
            m[l] += (g[l] - m[l]) * a.c1;
            v[l] += (g[l] * g[l] - v[l]) * a.c2;
            if let Some((wd, lr)) = a.decay {
                w[l] -= (w[l] * wd) * lr;
            }
            w[l] -= (m[l] * a.alpha) / (v[l].sqrt() + a.eps);
        }
        store(a.outs[0], i, &w);
        store(a.outs[1], i, &m);
        store(a.outs[2], i, &v);
    }
}

/// The whole update: vectors of [`LANES`], then the tail one element at a time.
#[inline(always)]
fn adam(a: &AdamArgs<'_>) {
    let whole = a.n / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        // SAFETY: `i + LANES <= n`, and every pointer covers `n` elements (`gl_adam_update`).
        unsafe { block::<LANES>(a, i) };
    }
    for i in whole..a.n {
        // SAFETY: `i < n`, as above.
        unsafe { block::<1>(a, i) };
    }
}

/// Adam's (or AdamW's) update of one param of `n` elements from the mean of its shards'
/// gradients (`g_0 + ... + g_{k-1}`, times `scale` when given), described by the table `t`
/// (see [`ADAM_WORDS`]): writes the new param, first and second moment.
///
/// # Safety
/// `t` holds [`ADAM_WORDS`] words and then as many gradient pointers as its word 14 says;
/// every array pointer covers `n` f32 (outputs may be null, or equal to their input, but not
/// overlap it otherwise), every scalar pointer one f32 (`scale`, `weight_decay`, `lr` may be
/// null), and there is at least one gradient.
#[no_mangle]
pub unsafe extern "C" fn gl_adam_update(t: *const i64) {
    // SAFETY: by this function's contract.
    let a = unsafe { AdamArgs::read(t) };
    if a.grads.is_empty() {
        return;
    }
    widest(
        #[inline(always)]
        || adam(&a),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::kernels::{isa_levels, widest_with};

    /// The update one element at a time in f32, as the interpreter evaluates the body's nodes.
    fn reference(a: &AdamArgs<'_>) -> [Vec<f32>; 3] {
        let one = |i: usize| {
            // SAFETY: every pointer of the test's args covers n elements.
            unsafe {
                let mut g = *a.grads[0].add(i);
                for p in &a.grads[1..] {
                    g += *p.add(i);
                }
                if let Some(s) = a.scale {
                    g *= s;
                }
                let (m, v, w) = (*a.m.add(i), *a.v.add(i), *a.w.add(i));
                let m = m + (g - m) * a.c1;
                let v = v + (g * g - v) * a.c2;
                let w = match a.decay {
                    Some((wd, lr)) => w - (w * wd) * lr,
                    None => w,
                };
                [w - (m * a.alpha) / (v.sqrt() + a.eps), m, v]
            }
        };
        let all: Vec<[f32; 3]> = (0..a.n).map(one).collect();
        [0, 1, 2].map(|k| all.iter().map(|r| r[k]).collect())
    }

    #[test]
    fn every_isa_matches_the_element_by_element_update() {
        let n = 16 * 5 + 7;
        let val = |k: usize, s: usize| ((k * 37 + s * 11) % 101) as f32 / 707.0 - 0.07;
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| (0..n).map(|k| val(k, s)).collect())
            .collect();
        let (w, m, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n).map(|k| val(k, 5)).collect(),
            (0..n).map(|k| val(k, 6)).collect(),
            (0..n).map(|k| val(k, 7).abs()).collect(),
        );
        let ptrs: Vec<*const f32> = grads.iter().map(|g| g.as_ptr()).collect();
        for shards in 1..=3 {
            for adamw in [false, true] {
                let mut outs = [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]];
                let args = |outs: &mut [Vec<f32>; 3]| AdamArgs {
                    n,
                    outs: [
                        outs[0].as_mut_ptr(),
                        outs[1].as_mut_ptr(),
                        outs[2].as_mut_ptr(),
                    ],
                    w: w.as_ptr(),
                    m: m.as_ptr(),
                    v: v.as_ptr(),
                    c1: 0.1,
                    c2: 0.001,
                    alpha: 0.00123,
                    eps: 1e-7,
                    scale: (shards > 1).then_some(1.0 / shards as f32),
                    decay: adamw.then_some((0.004, 0.001)),
                    grads: &ptrs[..shards],
                };
                let want = reference(&args(&mut outs));
                for isa in isa_levels() {
                    let a = args(&mut outs);
                    widest_with(
                        isa,
                        #[inline(always)]
                        || adam(&a),
                    );
                    assert_eq!(outs, want, "{isa:?}, {shards} shard(s), adamw {adamw}");
                }
            }
        }
    }

    #[test]
    fn outputs_may_alias_their_inputs_and_null_ones_are_skipped() {
        let n = 37;
        let g: Vec<f32> = (0..n).map(|k| k as f32 / 50.0 - 0.3).collect();
        let mut w: Vec<f32> = (0..n).map(|k| 1.0 - k as f32 / 40.0).collect();
        let mut m = vec![0.01f32; n];
        let mut v = vec![0.02f32; n];
        let gp = [g.as_ptr()];
        let args = |w: *mut f32, m: *mut f32, v: *mut f32, outs: [*mut f32; 3]| AdamArgs {
            n,
            outs,
            w,
            m,
            v,
            c1: 0.1,
            c2: 0.001,
            alpha: 0.001,
            eps: 1e-7,
            scale: None,
            decay: None,
            grads: &gp,
        };
        let (wp, mp, vp) = (w.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr());
        let want = reference(&args(wp, mp, vp, [wp, mp, vp]));
        adam(&args(wp, mp, vp, [wp, std::ptr::null_mut(), vp]));
        assert_eq!(w, want[0]);
        assert_eq!(m, vec![0.01f32; n], "a null output is not stored");
        assert_eq!(v, want[2]);
    }
}
