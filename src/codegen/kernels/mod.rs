//! Runtime kernels that compiled code calls through symbols registered with the JIT
//! (`JITBuilder::symbol`), as XLA:CPU calls its runtime: `pow` per element (exp, sigmoid,
//! tanh and log are inline vector code, see [`super::lower`]), GEMM ([`super::gemm`]: AVX-512
//! or AVX2 kernels that Cranelift's 128-bit vectors cannot match, packing into a workspace
//! planned in the arena), convolution by im2col + GEMM, max pooling, the softmax family and
//! Adam's update ([`gl_adam_update`], for the divider-bound loop of a recognized body).
//!
//! Every kernel is `#[no_mangle] extern "C"`: its symbol is its name ([`Kernel::symbol`]), so
//! an object file from [`super::compile_object`] links against this crate's static library
//! (`runtime-c/`) from C. Every kernel takes raw pointers and sizes computed by the lowering from
//! the graph's static shapes; the safe entry point ([`crate::runtime::Executable::run`]) has
//! checked every buffer before native code runs. Geometry that needs more than a few numbers
//! is passed as a pointer to an array of `i64` the compiled code stores on its stack.
//! Kernels never panic: a panic cannot unwind through compiled code.

mod collective;
mod conv;
mod gather;
mod pool;
mod update;

pub use collective::*;
pub use conv::*;
pub use gather::*;
pub use pool::*;
pub use update::*;

use std::slice;

/// `a ^ b` (called per element by broadcasting `pow` loops).
#[no_mangle]
pub extern "C" fn gl_powf(a: f32, b: f32) -> f32 {
    a.powf(b)
}

/// `sin(a)`, called per element by the code of `sin`.
#[no_mangle]
pub extern "C" fn gl_sinf(a: f32) -> f32 {
    a.sin()
}

/// `cos(a)`, called per element by the code of `cos`.
#[no_mangle]
pub extern "C" fn gl_cosf(a: f32) -> f32 {
    a.cos()
}

/// Products of at least this many FLOPs are split across threads. Measured (best of 200 on
/// the shared 2-core machine): 512^3 gains 1.5x from 2 threads, 64x5408x128 1.16x, the
/// MLP/CNN training steps nothing, and threads hurt when other processes compete for the
/// cores; so only products of 512^3 class are split.
pub const PARALLEL_FLOPS: usize = 128_000_000;

/// A pointer that may be shared with the pool's workers (each worker writes a disjoint part).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the workers of `gl_gemm` read shared inputs and write disjoint parts of `c`.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// The number of parts [`gl_gemm`] splits an `m x k x n` product into for `threads` threads.
fn gemm_parts(m: usize, k: usize, n: usize, threads: usize) -> usize {
    let parts = threads.max(1).min(m.max(n));
    if parts < 2 || 2 * m * n * k < PARALLEL_FLOPS {
        1
    } else {
        parts
    }
}

/// f32 elements of scratch [`gl_gemm`] needs for an `m x k x n` product compiled for
/// `threads` threads: one GEMM workspace per part.
pub fn gemm_scratch_len(m: usize, k: usize, n: usize, threads: usize) -> usize {
    gemm_parts(m, k, n, threads) * super::gemm::workspace_len(m, k, n)
}

/// Row-major `c[m,n] = a[m,k] x b[k,n]` (or `c += a x b` when `acc != 0`), with element
/// strides `(rs, cs)` for `a` and `b` so that transposed operands need no copy. Products of
/// [`PARALLEL_FLOPS`] or more are split over up to `threads` threads of the persistent pool
/// along the larger of `m` and `n` (the GEMM's order over `k` does not depend on the split).
/// `ws` is the planned workspace: [`gemm_scratch_len`] floats.
///
/// # Safety
/// The pointers must cover the matrices described by the sizes and strides.
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub unsafe extern "C" fn gl_gemm(
    m: i64,
    k: i64,
    n: i64,
    a: *const f32,
    a_rs: i64,
    a_cs: i64,
    b: *const f32,
    b_rs: i64,
    b_cs: i64,
    c: *mut f32,
    acc: i64,
    threads: i64,
    ws: *mut f32,
) {
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let sa = (a_rs as isize, a_cs as isize);
    let sb = (b_rs as isize, b_cs as isize);
    let parts = gemm_parts(m, k, n, threads.max(1) as usize);
    if parts == 1 {
        // SAFETY: by this function's contract the pointers cover the `m x k`, `k x n` and
        // `m x n` matrices with these strides and `ws` holds `gemm_scratch_len` floats.
        unsafe { gemm_strided(m, k, n, a, sa, b, sb, c, n as isize, acc != 0, ws) };
        return;
    }
    let wlen = super::gemm::workspace_len(m, k, n);
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let (a, b, c, ws) = (
        SendPtr(a as *mut f32),
        SendPtr(b as *mut f32),
        SendPtr(c),
        SendPtr(ws),
    );
    let part = move |t: usize| {
        let (lo, hi) = (len * t / parts, len * (t + 1) / parts);
        let (a, b, c, ws) = (a, b, c, ws);
        // SAFETY: part `t` reads rows (or columns) lo..hi of the inputs it needs, writes
        // only rows (or columns) lo..hi of `c`, and uses workspace `t` of `parts`.
        unsafe {
            let w = ws.0.add(t * wlen);
            if by_rows {
                let a = a.0.offset(lo as isize * sa.0);
                let c = c.0.add(lo * n);
                gemm_strided(hi - lo, k, n, a, sa, b.0, sb, c, n as isize, acc != 0, w);
            } else {
                let b = b.0.offset(lo as isize * sb.1);
                let c = c.0.add(lo);
                gemm_strided(m, k, hi - lo, a.0, sa, b, sb, c, n as isize, acc != 0, w);
            }
        }
    };
    // the process-wide pool: no thread is spawned per call
    crate::runtime::pool::Pool::shared(parts).run(parts, &|t| {
        let _fp = crate::runtime::fpenv::FlushDenormals::enter();
        part(t)
    });
}

/// [`super::gemm::sgemm`] with strides as pairs; `ws` holds `workspace_len(m, k, n)` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    (a_rs, a_cs): (isize, isize),
    b: *const f32,
    (b_rs, b_cs): (isize, isize),
    c: *mut f32,
    c_rs: isize,
    acc: bool,
    ws: *mut f32,
) {
    // SAFETY: the caller's contract is sgemm's.
    unsafe { super::gemm::sgemm(m, k, n, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, acc, ws) }
}

/// Runs `f` in code compiled for the widest vector ISA this CPU has (AVX-512, AVX2 or the
/// baseline), detected once ([`super::gemm::detected`]). The crate is built for baseline
/// x86-64 (SSE2, 128-bit), so a plain loop in a kernel runs at a quarter of AVX-512's width;
/// `f` and what it calls must be `#[inline(always)]` so that they are compiled inside the
/// wrapper with its target features.
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    widest_with(super::gemm::detected(), f)
}

/// As [`widest`] at ISA level `isa`, which the CPU must have (tests compare the levels).
#[inline(always)]
pub(crate) fn widest_with<R>(isa: super::gemm::Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use super::gemm::Isa;
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match isa {
            // SAFETY: the CPU has the features (run-time detection by the caller).
            Isa::Avx512 => unsafe { avx512(f) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2(f) },
            Isa::Portable => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        f()
    }
}

/// Values the vectorized kernels handle at once: one AVX-512 register of f32.
pub(crate) const LANES: usize = 16;

/// `x[at..at + LANES]` as an array (a vector register once inlined).
#[inline(always)]
pub(crate) fn lanes(x: &[f32], at: usize) -> [f32; LANES] {
    let mut v = [0.0f32; LANES];
    v.copy_from_slice(&x[at..at + LANES]);
    v
}

/// Kinds of [`gl_softmax`].
pub const SOFTMAX: i64 = 0;
/// `log(softmax(x))`.
pub const LOG_SOFTMAX: i64 = 1;

/// Softmax (`kind = SOFTMAX`) or log-softmax along the middle axis of `x` viewed as
/// `[outer, len, inner]`, computed stably (max subtracted first).
///
/// # Safety
/// `x` and `y` must hold `outer * len * inner` floats.
#[no_mangle]
pub unsafe extern "C" fn gl_softmax(
    kind: i64,
    x: *const f32,
    y: *mut f32,
    outer: i64,
    len: i64,
    inner: i64,
) {
    // SAFETY: `x` and `y` hold `outer * len * inner` floats (this function's contract) and
    // `at(j)` is below that for `o < outer`, `j < len`, `i < inner`.
    unsafe {
        let (outer, len, inner) = (outer as usize, len as usize, inner as usize);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let mut m = f32::NEG_INFINITY;
                for j in 0..len {
                    m = m.max(*x.add(at(j)));
                }
                let mut s = 0.0f32;
                for j in 0..len {
                    s += (*x.add(at(j)) - m).exp();
                }
                if kind == SOFTMAX {
                    for j in 0..len {
                        *y.add(at(j)) = (*x.add(at(j)) - m).exp() / s;
                    }
                } else {
                    let ls = s.ln();
                    for j in 0..len {
                        *y.add(at(j)) = *x.add(at(j)) - m - ls;
                    }
                }
            }
        }
    }
}

/// `m + ln(sum exp(row - m))` of a row, with `m` its maximum.
fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

/// `loss[i] = -sum_j labels[i,j] * log_softmax(logits)[i,j]` for `[n,c]` operands.
///
/// # Safety
/// `logits` and `labels` must hold `n * c` floats, `loss` `n`.
#[no_mangle]
pub unsafe extern "C" fn gl_softmax_xent(
    logits: *const f32,
    labels: *const f32,
    loss: *mut f32,
    n: i64,
    c: i64,
) {
    // SAFETY: `logits` and `labels` hold `n * c` floats and `loss` `n` (this function's
    // contract): row `i` is `c` floats at `i * c`, `loss.add(i)` is in bounds.
    unsafe {
        let (n, c) = (n as usize, c as usize);
        for i in 0..n {
            let row = slice::from_raw_parts(logits.add(i * c), c);
            let lab = slice::from_raw_parts(labels.add(i * c), c);
            let lse = log_sum_exp(row);
            *loss.add(i) = -row.iter().zip(lab).map(|(x, y)| y * (x - lse)).sum::<f32>();
        }
    }
}

/// `loss[i] = -log_softmax(logits)[i, labels[i]]`; NaN when a label is outside `0..c`.
///
/// # Safety
/// `logits` must hold `n * c` floats, `labels` and `loss` `n` values.
#[no_mangle]
pub unsafe extern "C" fn gl_sparse_softmax_xent(
    logits: *const f32,
    labels: *const i32,
    loss: *mut f32,
    n: i64,
    c: i64,
) {
    // SAFETY: `logits` holds `n * c` floats, `labels` and `loss` `n` values (this function's
    // contract): row `i` is `c` floats at `i * c`, element `i` of the others is in bounds.
    unsafe {
        let (n, c) = (n as usize, c as usize);
        for i in 0..n {
            let row = slice::from_raw_parts(logits.add(i * c), c);
            let l = *labels.add(i);
            *loss.add(i) = if l >= 0 && (l as usize) < c {
                log_sum_exp(row) - row[l as usize]
            } else {
                f32::NAN
            };
        }
    }
}

/// Every runtime kernel compiled code calls. Each fact about a kernel (its symbol, its
/// signature, its address) is one exhaustive match, so a kernel added without one of them
/// does not compile; the code generator names kernels by this enum, never by string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`gl_powf`].
    Powf,
    /// [`gl_sinf`].
    Sinf,
    /// [`gl_cosf`].
    Cosf,
    /// [`gl_gemm`].
    Gemm,
    /// [`gl_conv2d`].
    Conv2d,
    /// [`gl_conv2d_bias_relu`].
    Conv2dBiasRelu,
    /// [`gl_conv2d_input_grad`].
    Conv2dInputGrad,
    /// [`gl_conv2d_filter_grad`].
    Conv2dFilterGrad,
    /// [`gl_max_pool2d`].
    MaxPool2d,
    /// [`gl_max_pool2d_grad`].
    MaxPool2dGrad,
    /// [`gl_softmax`].
    Softmax,
    /// [`gl_softmax_xent`].
    SoftmaxXent,
    /// [`gl_sparse_softmax_xent`].
    SparseSoftmaxXent,
    /// [`gl_gather`].
    Gather,
    /// [`gl_scatter_add`].
    ScatterAdd,
    /// [`gl_all_reduce`].
    AllReduce,
    /// [`gl_adam_update`].
    AdamUpdate,
}

/// What the planned scratch of one call of a [`Kernel`] depends on ([`Kernel::scratch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scratch {
    /// No scratch.
    None,
    /// The GEMM's packing workspace: [`gemm_scratch_len`] of the product's `m`, `k`, `n` and
    /// the threads.
    GemmPacking,
    /// A convolution's patch matrix and GEMM workspace, or none on the direct path:
    /// [`conv_scratch_len`] of the kernel and its geometry.
    Convolution,
}

/// The parameters and result of a [`Kernel`]'s C signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSignature {
    /// `(f32, f32) -> f32`.
    FloatBinary,
    /// `(f32) -> f32`.
    FloatUnary,
    /// That many `i64` (pointers, sizes, flags), no result.
    Words(usize),
}

impl Kernel {
    /// What one call's planned scratch depends on (an exhaustive match: a new kernel says
    /// whether it needs scratch, and the planner must size it).
    pub fn scratch(self) -> Scratch {
        match self {
            Kernel::Gemm => Scratch::GemmPacking,
            Kernel::Conv2d
            | Kernel::Conv2dBiasRelu
            | Kernel::Conv2dInputGrad
            | Kernel::Conv2dFilterGrad => Scratch::Convolution,
            Kernel::Powf
            | Kernel::Sinf
            | Kernel::Cosf
            | Kernel::MaxPool2d
            | Kernel::MaxPool2dGrad
            | Kernel::Softmax
            | Kernel::SoftmaxXent
            | Kernel::SparseSoftmaxXent
            | Kernel::Gather
            | Kernel::ScatterAdd
            | Kernel::AllReduce
            | Kernel::AdamUpdate => Scratch::None,
        }
    }

    /// Every kernel, in the order the JIT module declares them (`Kernel::index`).
    pub const ALL: [Kernel; 17] = [
        Kernel::Powf,
        Kernel::Gemm,
        Kernel::Conv2d,
        Kernel::Conv2dInputGrad,
        Kernel::Conv2dFilterGrad,
        Kernel::MaxPool2d,
        Kernel::MaxPool2dGrad,
        Kernel::Softmax,
        Kernel::SoftmaxXent,
        Kernel::SparseSoftmaxXent,
        Kernel::Sinf,
        Kernel::Cosf,
        Kernel::Gather,
        Kernel::ScatterAdd,
        Kernel::AllReduce,
        Kernel::AdamUpdate,
        Kernel::Conv2dBiasRelu,
    ];

    /// Its position in [`Kernel::ALL`].
    pub fn index(self) -> usize {
        match self {
            Kernel::Powf => 0,
            Kernel::Gemm => 1,
            Kernel::Conv2d => 2,
            Kernel::Conv2dInputGrad => 3,
            Kernel::Conv2dFilterGrad => 4,
            Kernel::MaxPool2d => 5,
            Kernel::MaxPool2dGrad => 6,
            Kernel::Softmax => 7,
            Kernel::SoftmaxXent => 8,
            Kernel::SparseSoftmaxXent => 9,
            Kernel::Sinf => 10,
            Kernel::Cosf => 11,
            Kernel::Gather => 12,
            Kernel::ScatterAdd => 13,
            Kernel::AllReduce => 14,
            Kernel::AdamUpdate => 15,
            Kernel::Conv2dBiasRelu => 16,
        }
    }

    /// The symbol the JIT module links it by, and the kernel function's own (unmangled) name,
    /// which object files import.
    pub fn symbol(self) -> &'static str {
        match self {
            Kernel::Powf => "gl_powf",
            Kernel::Sinf => "gl_sinf",
            Kernel::Cosf => "gl_cosf",
            Kernel::Gemm => "gl_gemm",
            Kernel::Conv2d => "gl_conv2d",
            Kernel::Conv2dBiasRelu => "gl_conv2d_bias_relu",
            Kernel::Conv2dInputGrad => "gl_conv2d_input_grad",
            Kernel::Conv2dFilterGrad => "gl_conv2d_filter_grad",
            Kernel::MaxPool2d => "gl_max_pool2d",
            Kernel::MaxPool2dGrad => "gl_max_pool2d_grad",
            Kernel::Softmax => "gl_softmax",
            Kernel::SoftmaxXent => "gl_softmax_xent",
            Kernel::SparseSoftmaxXent => "gl_sparse_softmax_xent",
            Kernel::Gather => "gl_gather",
            Kernel::ScatterAdd => "gl_scatter_add",
            Kernel::AllReduce => "gl_all_reduce",
            Kernel::AdamUpdate => "gl_adam_update",
        }
    }

    /// Its C signature (as the function's Rust declaration has it).
    pub fn signature(self) -> KernelSignature {
        use KernelSignature::Words;
        match self {
            Kernel::Powf => KernelSignature::FloatBinary,
            Kernel::Sinf | Kernel::Cosf => KernelSignature::FloatUnary,
            Kernel::Gemm => Words(13),
            Kernel::Conv2d | Kernel::Conv2dInputGrad | Kernel::Conv2dFilterGrad => Words(5),
            Kernel::Conv2dBiasRelu => Words(6),
            Kernel::MaxPool2d => Words(3),
            Kernel::MaxPool2dGrad => Words(4),
            Kernel::Softmax => Words(6),
            Kernel::SoftmaxXent | Kernel::SparseSoftmaxXent => Words(5),
            Kernel::Gather | Kernel::ScatterAdd => Words(7),
            Kernel::AllReduce => Words(4),
            Kernel::AdamUpdate => Words(1),
        }
    }

    /// Its address, for `JITBuilder::symbol`.
    pub fn address(self) -> *const u8 {
        match self {
            Kernel::Powf => gl_powf as *const u8,
            Kernel::Sinf => gl_sinf as *const u8,
            Kernel::Cosf => gl_cosf as *const u8,
            Kernel::Gemm => gl_gemm as *const u8,
            Kernel::Conv2d => gl_conv2d as *const u8,
            Kernel::Conv2dBiasRelu => gl_conv2d_bias_relu as *const u8,
            Kernel::Conv2dInputGrad => gl_conv2d_input_grad as *const u8,
            Kernel::Conv2dFilterGrad => gl_conv2d_filter_grad as *const u8,
            Kernel::MaxPool2d => gl_max_pool2d as *const u8,
            Kernel::MaxPool2dGrad => gl_max_pool2d_grad as *const u8,
            Kernel::Softmax => gl_softmax as *const u8,
            Kernel::SoftmaxXent => gl_softmax_xent as *const u8,
            Kernel::SparseSoftmaxXent => gl_sparse_softmax_xent as *const u8,
            Kernel::Gather => gl_gather as *const u8,
            Kernel::ScatterAdd => gl_scatter_add as *const u8,
            Kernel::AllReduce => gl_all_reduce as *const u8,
            Kernel::AdamUpdate => gl_adam_update as *const u8,
        }
    }
}

/// The ISA levels this CPU can run, for tests that compare them.
#[cfg(test)]
pub(crate) fn isa_levels() -> Vec<super::gemm::Isa> {
    use super::gemm::{detected, Isa};
    let mut v = vec![Isa::Portable];
    if matches!(detected(), Isa::Avx2 | Isa::Avx512) {
        v.push(Isa::Avx2);
    }
    if detected() == Isa::Avx512 {
        v.push(Isa::Avx512);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::Kernel;

    #[test]
    fn kernel_table_is_consistent() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
            let dup = Kernel::ALL
                .iter()
                .filter(|o| o.symbol() == k.symbol())
                .count();
            assert_eq!(dup, 1, "{k:?}'s symbol is unique");
        }
    }
}
