//! Runtime kernels that compiled code calls through symbols registered with the JIT
//! (`JITBuilder::symbol`), as XLA:CPU calls its runtime: `pow` per element (exp, sigmoid,
//! tanh and log are inline vector code, see [`super::lower`]), GEMM ([`super::gemm`]: AVX-512
//! or AVX2 kernels that Cranelift's 128-bit vectors cannot match, packing into a workspace
//! planned in the arena), convolution by im2col + GEMM, max pooling and the softmax family.
//!
//! Every kernel is `extern "C"` and takes raw pointers and sizes computed by the lowering from
//! the graph's static shapes; the safe entry point ([`crate::runtime::Executable::run`]) has
//! checked every buffer before native code runs. Geometry that needs more than a few numbers
//! is passed as a pointer to an array of `i64` the compiled code stores on its stack.
//! Kernels never panic: a panic cannot unwind through compiled code.

use crate::op::ConvGeometry;
use std::slice;

/// `a ^ b` (called per element by broadcasting `pow` loops).
pub extern "C" fn gl_powf(a: f32, b: f32) -> f32 {
    a.powf(b)
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
        gemm_strided(m, k, n, a, sa, b, sb, c, n as isize, acc != 0, ws);
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
unsafe fn gemm_strided(
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

/// Number of `i64` in a convolution geometry array ([`ConvGeometry::to_array`]).
pub const CONV_GEOMETRY_LEN: usize = ConvGeometry::LEN;

/// The kernels' view of a convolution geometry.
impl ConvGeometry {
    unsafe fn read(g: *const i64) -> ConvGeometry {
        ConvGeometry::from_array(&*(g as *const [i64; CONV_GEOMETRY_LEN]))
    }

    /// The patch matrix `[oh*ow, kh*kw*c]` of one image: the image itself for a pointwise
    /// convolution, else written into `scratch` by [`ConvGeometry::im2col`].
    ///
    /// # Safety
    /// `img` holds `h*w*c` values; `scratch` has room for the patch matrix.
    unsafe fn patches(&self, img: *const f32, scratch: *mut f32) -> *const f32 {
        if self.is_pointwise() {
            return img;
        }
        let (rows, cols) = self.patch_dims();
        let s = slice::from_raw_parts_mut(scratch, rows * cols);
        self.im2col(slice::from_raw_parts(img, self.h * self.w * self.c), s);
        scratch
    }

    /// Rows and columns of one image's patch matrix.
    fn patch_dims(&self) -> (usize, usize) {
        (self.oh * self.ow, self.kh * self.kw * self.c)
    }

    /// GEMM workspace (f32) of the largest per-image product of the three conv kernels.
    fn gemm_workspace_len(&self) -> usize {
        let (rows, cols) = self.patch_dims();
        let ws = super::gemm::workspace_len;
        ws(rows, cols, self.o)
            .max(ws(rows, self.o, cols))
            .max(ws(cols, rows, self.o))
    }

    /// The GEMM workspace inside a conv kernel's scratch (after the patch matrix).
    ///
    /// # Safety
    /// `scratch` holds [`conv_scratch_len`] floats.
    unsafe fn workspace(&self, scratch: *mut f32) -> *mut f32 {
        let (rows, cols) = self.patch_dims();
        // SAFETY: the scratch holds the patches, then the workspace.
        unsafe { scratch.add(rows * cols) }
    }

    /// Whether the patch matrix is the image itself (1x1 kernel, stride 1, no padding).
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }

    /// The input pixel `(ih, iw)` read by output `(oy, ox)` at kernel tap `(ky, kx)`, if inside.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.sh + ky).checked_sub(self.ph)?;
        let ix = (ox * self.sw + kx).checked_sub(self.pw)?;
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }

    /// Writes the patch matrix `[oh*ow, kh*kw*c]` of image `img` (`[h,w,c]`) into `cols`.
    fn im2col(&self, img: &[f32], cols: &mut [f32]) {
        let c = self.c;
        let run = self.kw * c;
        let mut r = 0;
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let x0 = ox * self.sw;
                let inside = x0 >= self.pw && x0 - self.pw + self.kw <= self.w;
                for ky in 0..self.kh {
                    let dst = &mut cols[r..r + run];
                    match (oy * self.sh + ky).checked_sub(self.ph) {
                        Some(iy) if iy < self.h && inside => {
                            // the whole kernel row is inside the image: one contiguous run
                            let s = (iy * self.w + x0 - self.pw) * c;
                            copy_run(dst, &img[s..s + run]);
                        }
                        _ => {
                            for kx in 0..self.kw {
                                let d = &mut dst[kx * c..(kx + 1) * c];
                                match self.source(oy, ox, ky, kx) {
                                    Some((iy, ix)) => {
                                        let s = (iy * self.w + ix) * c;
                                        copy_run(d, &img[s..s + c]);
                                    }
                                    None => d.fill(0.0),
                                }
                            }
                        }
                    }
                    r += run;
                }
            }
        }
    }

    /// Adds the patch matrix `cols` back into image `img` (the adjoint of [`ConvGeometry::im2col`]).
    fn col2im(&self, cols: &[f32], img: &mut [f32]) {
        let c = self.c;
        let mut r = 0;
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        if let Some((iy, ix)) = self.source(oy, ox, ky, kx) {
                            let s = (iy * self.w + ix) * c;
                            for (d, v) in img[s..s + c].iter_mut().zip(&cols[r..r + c]) {
                                *d += v;
                            }
                        }
                        r += c;
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of im2col (a kernel row of few channels:
/// 3 floats for a 3x3 kernel over one channel), with fixed-size moves up to 8 floats instead
/// of a call to `memmove` per run, which cost 7% of the CNN step.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => dst[..$n].copy_from_slice(&src[..$n]),)*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8)
}

/// Number of f32 of scratch space [`gl_conv2d`] and its gradients need: one image's patches,
/// then the GEMM workspace of the largest per-image product.
pub fn conv_scratch_len(geometry: &[i64; CONV_GEOMETRY_LEN]) -> usize {
    let g = ConvGeometry::from_array(geometry);
    let (rows, cols) = g.patch_dims();
    rows * cols + g.gemm_workspace_len()
}

/// `y = conv2d(x, w)`: NHWC input, HWIO filter, per image im2col into `scratch` then GEMM.
///
/// # Safety
/// Buffers must match the geometry `g` (see [`CONV_GEOMETRY_LEN`]); `scratch` must hold
/// [`conv_scratch_len`] floats.
pub unsafe extern "C" fn gl_conv2d(
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    let g = ConvGeometry::read(g);
    let ws = g.workspace(scratch);
    let (rows, cols) = g.patch_dims();
    let img_len = g.h * g.w * g.c;
    for i in 0..g.n {
        let img = x.add(i * img_len);
        let out = y.add(i * rows * g.o);
        let a = g.patches(img, scratch);
        gemm_strided(
            rows,
            cols,
            g.o,
            a,
            (cols as isize, 1),
            w,
            (g.o as isize, 1),
            out,
            g.o as isize,
            false,
            ws,
        );
    }
}

/// `dx = conv2d_input_grad(dy, w)`: per image `dcols = dy x w^T`, then col2im into `dx`.
///
/// # Safety
/// As [`gl_conv2d`].
pub unsafe extern "C" fn gl_conv2d_input_grad(
    dy: *const f32,
    w: *const f32,
    dx: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    let g = ConvGeometry::read(g);
    let ws = g.workspace(scratch);
    let (rows, cols) = g.patch_dims();
    let img_len = g.h * g.w * g.c;
    for i in 0..g.n {
        let d = dy.add(i * rows * g.o);
        let out = slice::from_raw_parts_mut(dx.add(i * img_len), img_len);
        if g.is_pointwise() {
            gemm_strided(
                rows,
                g.o,
                cols,
                d,
                (g.o as isize, 1),
                w,
                (1, g.o as isize),
                out.as_mut_ptr(),
                cols as isize,
                false,
                ws,
            );
            continue;
        }
        gemm_strided(
            rows,
            g.o,
            cols,
            d,
            (g.o as isize, 1),
            w,
            (1, g.o as isize),
            scratch,
            cols as isize,
            false,
            ws,
        );
        out.fill(0.0);
        g.col2im(slice::from_raw_parts(scratch, rows * cols), out);
    }
}

/// `dw = conv2d_filter_grad(x, dy)`: `dw = sum over images of cols^T x dy`.
///
/// # Safety
/// As [`gl_conv2d`].
pub unsafe extern "C" fn gl_conv2d_filter_grad(
    x: *const f32,
    dy: *const f32,
    dw: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    let g = ConvGeometry::read(g);
    let ws = g.workspace(scratch);
    let (rows, cols) = g.patch_dims();
    let img_len = g.h * g.w * g.c;
    if g.n == 0 {
        slice::from_raw_parts_mut(dw, cols * g.o).fill(0.0);
    }
    for i in 0..g.n {
        let img = x.add(i * img_len);
        let a = g.patches(img, scratch);
        // dw[cols, o] (+)= a^T[cols, rows] x dy_i[rows, o]
        gemm_strided(
            cols,
            rows,
            g.o,
            a,
            (1, cols as isize),
            dy.add(i * rows * g.o),
            (g.o as isize, 1),
            dw,
            g.o as isize,
            i > 0,
            ws,
        );
    }
}

/// Geometry of a pooling: `[n, h, w, c, wh, ww, sh, sw, oh, ow]`.
pub const POOL_GEOMETRY_LEN: usize = 10;

struct Pool {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    wh: usize,
    ww: usize,
    sh: usize,
    sw: usize,
    oh: usize,
    ow: usize,
}

impl Pool {
    unsafe fn read(g: *const i64) -> Pool {
        let g = slice::from_raw_parts(g, POOL_GEOMETRY_LEN);
        let u = |i: usize| g[i] as usize;
        Pool {
            n: u(0),
            h: u(1),
            w: u(2),
            c: u(3),
            wh: u(4),
            ww: u(5),
            sh: u(6),
            sw: u(7),
            oh: u(8),
            ow: u(9),
        }
    }

    /// Offset in `x` of channel 0 of tap `(ky, kx)` of output pixel `(b, oy, ox)`'s window.
    fn pixel(&self, b: usize, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
        ((b * self.h + oy * self.sh + ky) * self.w + ox * self.sw + kx) * self.c
    }

    /// The first maximum (row-major order, a NaN counting as the greatest) of channels
    /// `ch..ch + best.len()` of output pixel `(b, oy, ox)`'s window: its value in `best` and its
    /// tap `ky * ww + kx` in `tap` (both of length at most [`CHANNEL_BLOCK`]). Branchless, so
    /// the channel loop vectorizes.
    fn window_max(
        &self,
        x: &[f32],
        (b, oy, ox, ch): (usize, usize, usize, usize),
        best: &mut [f32],
        tap: &mut [u32],
    ) {
        let cb = best.len();
        let p0 = self.pixel(b, oy, ox, 0, 0) + ch;
        best.copy_from_slice(&x[p0..p0 + cb]);
        tap.fill(0);
        let mut t = 0u32;
        for ky in 0..self.wh {
            for kx in 0..self.ww {
                let s = self.pixel(b, oy, ox, ky, kx) + ch;
                for ((b, a), &v) in best.iter_mut().zip(tap.iter_mut()).zip(&x[s..s + cb]) {
                    let gt = greater(v, *b);
                    *b = if gt { v } else { *b };
                    *a = if gt { t } else { *a };
                }
                t += 1;
            }
        }
    }

    /// Calls `f(out_index, argmax_input_index, max)` for every output element, where the
    /// argmax is the first maximum of the window in row-major order ([`Pool::window_max`]).
    fn for_each_max(&self, x: &[f32], mut f: impl FnMut(usize, usize, f32)) {
        let c = self.c;
        let (mut best, mut tap) = ([0.0f32; CHANNEL_BLOCK], [0u32; CHANNEL_BLOCK]);
        let mut o = 0;
        for b in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    for ch in (0..c).step_by(CHANNEL_BLOCK) {
                        let cb = CHANNEL_BLOCK.min(c - ch);
                        let (best, tap) = (&mut best[..cb], &mut tap[..cb]);
                        self.window_max(x, (b, oy, ox, ch), best, tap);
                        for j in 0..cb {
                            let t = tap[j] as usize;
                            let p = self.pixel(b, oy, ox, t / self.ww, t % self.ww);
                            f(o + ch + j, p + ch + j, best[j]);
                        }
                    }
                    o += c;
                }
            }
        }
    }

    /// Max-pool gradient when windows do not overlap (stride = window, the usual case): every
    /// input pixel is written exactly once, in order, with no zero fill and no scatter.
    fn grad_disjoint(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let c = self.c;
        let (mut best, mut tap) = ([0.0f32; CHANNEL_BLOCK], [0u32; CHANNEL_BLOCK]);
        // pixels no window covers (the right and bottom edges) get zero
        for b in 0..self.n {
            for iy in 0..self.h {
                for ix in 0..self.w {
                    if iy >= self.oh * self.sh || ix >= self.ow * self.sw {
                        let s = ((b * self.h + iy) * self.w + ix) * c;
                        dx[s..s + c].fill(0.0);
                    }
                }
            }
        }
        let mut o = 0;
        for b in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    for ch in (0..c).step_by(CHANNEL_BLOCK) {
                        let cb = CHANNEL_BLOCK.min(c - ch);
                        let (best, tap) = (&mut best[..cb], &mut tap[..cb]);
                        self.window_max(x, (b, oy, ox, ch), best, tap);
                        let g = &dy[o + ch..o + ch + cb];
                        let mut t = 0u32;
                        for ky in 0..self.wh {
                            for kx in 0..self.ww {
                                let s = self.pixel(b, oy, ox, ky, kx) + ch;
                                for ((d, &a), &v) in dx[s..s + cb].iter_mut().zip(&*tap).zip(g) {
                                    *d = if a == t { v } else { 0.0 };
                                }
                                t += 1;
                            }
                        }
                    }
                    o += c;
                }
            }
        }
    }
}

/// Channels a pooling kernel keeps in its stack buffers at a time (no heap allocation).
const CHANNEL_BLOCK: usize = 64;

/// `v > m`, where a NaN counts as greater than any number (the interpreter's order: a NaN in a
/// pooling window wins). Branchless, so the channel loops vectorize.
#[inline]
fn greater(v: f32, m: f32) -> bool {
    (v > m) | (v.is_nan() & !m.is_nan())
}

/// `y = max_pool2d(x)` over NHWC windows (no padding).
///
/// # Safety
/// Buffers must match the geometry (see [`POOL_GEOMETRY_LEN`]).
pub unsafe extern "C" fn gl_max_pool2d(x: *const f32, y: *mut f32, g: *const i64) {
    let p = Pool::read(g);
    let c = p.c;
    let x = slice::from_raw_parts(x, p.n * p.h * p.w * c);
    let y = slice::from_raw_parts_mut(y, p.n * p.oh * p.ow * c);
    // no argmax needed: a running maximum per channel (vectorizes over channels)
    let mut o = 0;
    for b in 0..p.n {
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                let out = &mut y[o..o + c];
                for ky in 0..p.wh {
                    for kx in 0..p.ww {
                        let s = ((b * p.h + oy * p.sh + ky) * p.w + ox * p.sw + kx) * c;
                        let row = &x[s..s + c];
                        if ky == 0 && kx == 0 {
                            out.copy_from_slice(row);
                        } else {
                            for (m, &v) in out.iter_mut().zip(row) {
                                *m = if greater(v, *m) { v } else { *m };
                            }
                        }
                    }
                }
                o += c;
            }
        }
    }
}

/// `dx = max_pool2d_grad(x, dy)`: each `dy` goes to its window's first maximum.
///
/// # Safety
/// As [`gl_max_pool2d`].
pub unsafe extern "C" fn gl_max_pool2d_grad(
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    g: *const i64,
) {
    let p = Pool::read(g);
    let len = p.n * p.h * p.w * p.c;
    let x = slice::from_raw_parts(x, len);
    let dy = slice::from_raw_parts(dy, p.n * p.oh * p.ow * p.c);
    let dx = slice::from_raw_parts_mut(dx, len);
    if p.sh == p.wh && p.sw == p.ww {
        p.grad_disjoint(x, dy, dx);
    } else {
        // overlapping windows: a pixel may receive from several outputs
        dx.fill(0.0);
        p.for_each_max(x, |o, i, _| dx[i] += dy[o]);
    }
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
pub unsafe extern "C" fn gl_softmax(
    kind: i64,
    x: *const f32,
    y: *mut f32,
    outer: i64,
    len: i64,
    inner: i64,
) {
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

/// `m + ln(sum exp(row - m))` of a row, with `m` its maximum.
fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

/// `loss[i] = -sum_j labels[i,j] * log_softmax(logits)[i,j]` for `[n,c]` operands.
///
/// # Safety
/// `logits` and `labels` must hold `n * c` floats, `loss` `n`.
pub unsafe extern "C" fn gl_softmax_xent(
    logits: *const f32,
    labels: *const f32,
    loss: *mut f32,
    n: i64,
    c: i64,
) {
    let (n, c) = (n as usize, c as usize);
    for i in 0..n {
        let row = slice::from_raw_parts(logits.add(i * c), c);
        let lab = slice::from_raw_parts(labels.add(i * c), c);
        let lse = log_sum_exp(row);
        *loss.add(i) = -row.iter().zip(lab).map(|(x, y)| y * (x - lse)).sum::<f32>();
    }
}

/// `loss[i] = -log_softmax(logits)[i, labels[i]]`; NaN when a label is outside `0..c`.
///
/// # Safety
/// `logits` must hold `n * c` floats, `labels` and `loss` `n` values.
pub unsafe extern "C" fn gl_sparse_softmax_xent(
    logits: *const f32,
    labels: *const i32,
    loss: *mut f32,
    n: i64,
    c: i64,
) {
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

/// Name and address of every kernel, for `JITBuilder::symbol`.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("gl_powf", gl_powf as *const u8),
        ("gl_gemm", gl_gemm as *const u8),
        ("gl_conv2d", gl_conv2d as *const u8),
        ("gl_conv2d_input_grad", gl_conv2d_input_grad as *const u8),
        ("gl_conv2d_filter_grad", gl_conv2d_filter_grad as *const u8),
        ("gl_max_pool2d", gl_max_pool2d as *const u8),
        ("gl_max_pool2d_grad", gl_max_pool2d_grad as *const u8),
        ("gl_softmax", gl_softmax as *const u8),
        ("gl_softmax_xent", gl_softmax_xent as *const u8),
        (
            "gl_sparse_softmax_xent",
            gl_sparse_softmax_xent as *const u8,
        ),
    ]
}
