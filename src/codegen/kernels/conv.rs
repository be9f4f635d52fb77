//! Convolution kernels: im2col + GEMM, or a direct loop where the patch rows are short.

use super::{gemm_strided, lanes, widest, Kernel, LANES};
use crate::op::ConvGeometry;
use std::slice;

/// Number of `i64` in a convolution geometry array ([`ConvGeometry::to_array`]).
pub const CONV_GEOMETRY_LEN: usize = ConvGeometry::LEN;

/// The kernels' view of a convolution geometry.
impl ConvGeometry {
    unsafe fn read(g: *const i64) -> ConvGeometry {
        // SAFETY: `g` points to CONV_GEOMETRY_LEN readable i64s (this function's contract), the
        // size and alignment of the array read.
        unsafe { ConvGeometry::from_array(&*(g as *const [i64; CONV_GEOMETRY_LEN])) }
    }

    /// The patch matrix `[oh*ow, kh*kw*c]` of one image: the image itself for a pointwise
    /// convolution, else written into `scratch` by [`ConvGeometry::im2col`].
    ///
    /// # Safety
    /// `img` holds `h*w*c` values; `scratch` has room for the patch matrix.
    unsafe fn patches(&self, img: *const f32, scratch: *mut f32) -> *const f32 {
        // SAFETY: by this function's contract `img` holds `h*w*c` values and `scratch` has room
        // for the `rows * cols` patch matrix, the two slices made here.
        unsafe {
            if self.is_pointwise() {
                return img;
            }
            let (rows, cols) = self.patch_dims();
            let s = slice::from_raw_parts_mut(scratch, rows * cols);
            self.im2col(slice::from_raw_parts(img, self.h * self.w * self.c), s);
            scratch
        }
    }

    /// Rows and columns of one image's patch matrix.
    fn patch_dims(&self) -> (usize, usize) {
        (self.oh * self.ow, self.kh * self.kw * self.c)
    }

    /// GEMM workspace (f32) of the largest per-image product of the three conv kernels.
    fn gemm_workspace_len(&self) -> usize {
        let (rows, cols) = self.patch_dims();
        let ws = crate::codegen::gemm::workspace_len;
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

/// Output pixels the direct forward kernel computes together: with two `LANES` blocks of
/// output channels each, 12 accumulator registers (of AVX-512's 32), and every filter row
/// loaded serves 6 pixels. Measured (`cargo bench --bench codegen -- conv/forward/direct`,
/// Zen 4): 71 GFLOP/s at one input channel where 4 pixels of one block reached 38-44; at 7
/// or 8 pixels LLVM no longer unrolls the block and vectorizes it across pixels with
/// gathers and scatters, 20x slower.
const PIXELS: usize = 6;

/// How [`gl_conv2d`] and [`gl_conv2d_filter_grad`] compute a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// Per image, the patch matrix (im2col into scratch; the image itself for a pointwise
    /// convolution) times the filter by GEMM.
    Im2col,
    /// Loops over output pixels and filter taps, vectorized over output channels, with no
    /// patch matrix and no scratch: for short patch rows (few input channels, as in a first
    /// layer over grey or RGB images), where a GEMM with `K = kh*kw*c` is bound by its
    /// packing and im2col writes `kh*kw` times the input.
    Direct,
}

/// Patch rows of at most this many values (`kh*kw*c`) take [`ConvPath::Direct`] in the
/// forward kernel; [`DIRECT_MAX_PATCH_FILTER_GRAD`] in the filter gradient. Measured with
/// `cargo bench --bench codegen -- conv/` (64 images of 28x28, 3x3 kernel, 32 outputs, one
/// thread, Zen 4 with AVX-512, quiet machine, medians): the direct forward ran at 38, 55, 81
/// and 77 GFLOP/s for `c` = 1, 3, 8, 16 against im2col + GEMM's 35, 59, 79 and 82 (even up to
/// `c = 8`, and it needs no scratch); the direct filter gradient at 102, 98, 106 and 104
/// against 37, 60, 78 and 83.
pub const DIRECT_MAX_PATCH: usize = 72;

/// [`DIRECT_MAX_PATCH`] for the filter gradient (its direct loop keeps up to 12 patch
/// columns in registers and passes over `dy` once per block: faster at every measured `c`).
pub const DIRECT_MAX_PATCH_FILTER_GRAD: usize = 144;

impl ConvPath {
    /// The path convolution kernel `kernel` takes for geometry `g` (the input gradient is
    /// always im2col: its patch matrix is `dy x w^T`, then col2im).
    pub fn of(kernel: Kernel, g: &ConvGeometry) -> ConvPath {
        let (_, cols) = g.patch_dims();
        // the direct loops use fused multiply-adds: without FMA, im2col + GEMM is faster
        let fma = super::super::gemm::detected() != super::super::gemm::Isa::Portable;
        let direct = match kernel {
            Kernel::Conv2dFilterGrad => cols <= DIRECT_MAX_PATCH_FILTER_GRAD,
            Kernel::Conv2dInputGrad => false,
            _ => cols <= DIRECT_MAX_PATCH,
        };
        if direct && fma && !g.is_pointwise() {
            ConvPath::Direct
        } else {
            ConvPath::Im2col
        }
    }

    /// f32 of scratch the path needs: none for [`ConvPath::Direct`]; for
    /// [`ConvPath::Im2col`], one image's patches, then the GEMM workspace of the largest
    /// per-image product.
    pub fn scratch_len(self, g: &ConvGeometry) -> usize {
        match self {
            ConvPath::Direct => 0,
            ConvPath::Im2col => {
                let (rows, cols) = g.patch_dims();
                rows * cols + g.gemm_workspace_len()
            }
        }
    }
}

/// The direct path ([`ConvPath::Direct`]).
impl ConvGeometry {
    /// Calls `f(x_offset, w_row)` for every tap `(ky, kx)` of output pixel `(oy, ox)` that
    /// falls inside the image (padding contributes nothing): the offset of the tap's pixel
    /// in the image and the filter row `(ky*kw + kx)*c` of its channel 0.
    #[inline(always)]
    fn for_inside_taps(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                if let Some((iy, ix)) = self.source(oy, ox, ky, kx) {
                    f((iy * self.w + ix) * self.c, (ky * self.kw + kx) * self.c);
                }
            }
        }
    }

    /// The output columns `lo..hi` of row `oy` whose every tap falls inside the image (none
    /// when a kernel row of `oy` falls in the padding).
    #[inline(always)]
    fn interior(&self, oy: usize) -> (usize, usize) {
        let top = oy * self.sh;
        if top < self.ph || top - self.ph + self.kh > self.h || self.w + self.pw < self.kw {
            return (0, 0);
        }
        let lo = self.pw.div_ceil(self.sw);
        let hi = ((self.w + self.pw - self.kw) / self.sw + 1).min(self.ow);
        (lo, hi.max(lo))
    }

    /// Offset in the image of the first value of patch row `ky` of interior pixel `(oy, ox)`:
    /// the row is the `kw*c` contiguous values from there.
    #[inline(always)]
    fn patch_row(&self, oy: usize, ox: usize, ky: usize) -> usize {
        ((oy * self.sh + ky - self.ph) * self.w + ox * self.sw - self.pw) * self.c
    }

    /// `y[p, o] = sum over taps and input channels of x * w` for every output pixel `p` of
    /// one image, summed in patch order with fused multiply-adds. Interior pixels go
    /// [`PIXELS`] at a time (the last block of a row overlaps the one before it when the row
    /// is not a whole number of blocks: its pixels are computed twice, to the same bits), two
    /// `LANES` blocks of output channels each in registers, so every filter row loaded serves
    /// [`PIXELS`] pixels and every input value two registers; rows shorter than a block and
    /// channels past the last whole `LANES` go one pixel at a time.
    #[inline(always)]
    fn direct_forward(&self, img: &[f32], w: &[f32], y: &mut [f32]) {
        let o = self.o;
        let whole = o - o % LANES;
        for oy in 0..self.oh {
            let (lo, hi) = self.interior(oy);
            let blocked = hi - lo >= PIXELS;
            if blocked {
                let mut ox = lo;
                loop {
                    let mut ob = 0;
                    while ob + 2 * LANES <= whole {
                        self.forward_block::<2>(img, w, (oy, ox, ob), y);
                        ob += 2 * LANES;
                    }
                    if ob < whole {
                        self.forward_block::<1>(img, w, (oy, ox, ob), y);
                    }
                    if ox + PIXELS == hi {
                        break;
                    }
                    ox = (ox + PIXELS).min(hi - PIXELS);
                }
                if whole < o {
                    for p in lo..hi {
                        self.pixel_forward(img, w, (oy, p), whole, y);
                    }
                }
            }
            let (edge_lo, edge_hi) = if blocked { (lo, hi) } else { (0, 0) };
            for ox in (0..edge_lo).chain(edge_hi..self.ow) {
                self.pixel_forward(img, w, (oy, ox), 0, y);
            }
        }
    }

    /// Output channels `ob..ob + B * LANES` of the [`PIXELS`] interior pixels from
    /// `(oy, ox)`: `PIXELS * B` accumulators in registers, each one fused multiply-add chain
    /// in patch order.
    #[inline(always)]
    fn forward_block<const B: usize>(
        &self,
        img: &[f32],
        w: &[f32],
        (oy, ox, ob): (usize, usize, usize),
        y: &mut [f32],
    ) {
        let (c, o) = (self.c, self.o);
        let run = self.kw * c;
        let step = self.sw * c;
        // accumulator `p * B + b`: pixel `p`, channels `ob + b * LANES..`
        let mut acc = [[0.0f32; LANES]; 2 * PIXELS];
        for ky in 0..self.kh {
            let s = self.patch_row(oy, ox, ky);
            // the PIXELS patch rows, each `run` values from `s + p * step`
            let xs = &img[s..s + (PIXELS - 1) * step + run];
            let ws = &w[ky * run * o..(ky + 1) * run * o];
            for j in 0..run {
                let mut wr = [[0.0f32; LANES]; 2];
                for (b, wr) in wr.iter_mut().take(B).enumerate() {
                    *wr = lanes(ws, j * o + ob + b * LANES);
                }
                for p in 0..PIXELS {
                    // SAFETY: p * step + j < xs.len() (p < PIXELS, j < run)
                    let v = unsafe { *xs.get_unchecked(p * step + j) };
                    for b in 0..B {
                        let a = &mut acc[p * B + b];
                        for l in 0..LANES {
                            a[l] = v.mul_add(wr[b][l], a[l]);
                        }
                    }
                }
            }
        }
        for p in 0..PIXELS {
            let at = (oy * self.ow + ox + p) * o + ob;
            for b in 0..B {
                y[at + b * LANES..at + (b + 1) * LANES].copy_from_slice(&acc[p * B + b]);
            }
        }
    }

    /// Output channels `from..o` of pixel `(oy, ox)` (any pixel: taps in the padding are
    /// skipped), `LANES` at a time while whole, then one by one.
    #[inline(always)]
    fn pixel_forward(
        &self,
        img: &[f32],
        w: &[f32],
        (oy, ox): (usize, usize),
        from: usize,
        y: &mut [f32],
    ) {
        let (c, o) = (self.c, self.o);
        let out = &mut y[(oy * self.ow + ox) * o..][..o];
        let mut ob = from;
        while ob + LANES <= o {
            let mut acc = [0.0f32; LANES];
            self.for_inside_taps(
                oy,
                ox,
                #[inline(always)]
                |xi, k| {
                    for ci in 0..c {
                        let (v, wr) = (img[xi + ci], lanes(w, (k + ci) * o + ob));
                        for l in 0..LANES {
                            acc[l] = v.mul_add(wr[l], acc[l]);
                        }
                    }
                },
            );
            out[ob..ob + LANES].copy_from_slice(&acc);
            ob += LANES;
        }
        for oc in ob..o {
            let mut acc = 0.0f32;
            self.for_inside_taps(
                oy,
                ox,
                #[inline(always)]
                |xi, k| {
                    for ci in 0..c {
                        acc = img[xi + ci].mul_add(w[(k + ci) * o + oc], acc);
                    }
                },
            );
            out[oc] = acc;
        }
    }

    /// `dw[k, o] = sum over images and output pixels of x * dy` for patch column
    /// `k = (ky*kw + kx)*c + ci`, summed in image then pixel order with fused multiply-adds.
    /// Images outermost (one image's `dy` stays in cache while every column reads it); then
    /// blocks of up to 12 columns, `LANES` output channels each in a register, so every `dy`
    /// vector loaded serves the whole block (a 3x3 kernel over one channel is one block).
    #[inline(always)]
    fn direct_filter_grad(&self, x: &[f32], dy: &[f32], dw: &mut [f32]) {
        let (c, o) = (self.c, self.o);
        let whole = o - o % LANES;
        let cols = self.kh * self.kw * c;
        let (img_len, out_len) = (self.h * self.w * c, self.oh * self.ow * o);
        dw.fill(0.0);
        for i in 0..self.n {
            let (img, d) = (&x[i * img_len..][..img_len], &dy[i * out_len..][..out_len]);
            let mut k0 = 0;
            // blocks of up to COLUMNS columns: a 3x3 kernel over one channel is one block
            while k0 < cols {
                macro_rules! block {
                    ($($q:literal)*) => {
                        match cols - k0 {
                            $(r if r >= $q => {
                                self.filter_columns::<$q>(img, d, k0, whole, dw);
                                k0 += $q;
                            })*
                            _ => {
                                self.filter_columns::<1>(img, d, k0, whole, dw);
                                k0 += 1;
                            }
                        }
                    };
                }
                block!(12 9 8 4 3 2);
            }
        }
    }

    /// Adds one image's share to patch columns `k0..k0 + Q` of `dw` (`LANES` output channels
    /// at a time while whole, then one by one).
    #[inline(always)]
    fn filter_columns<const Q: usize>(
        &self,
        img: &[f32],
        d: &[f32],
        k0: usize,
        whole: usize,
        dw: &mut [f32],
    ) {
        let (c, o) = (self.c, self.o);
        // the tap (ky, kx, ci) of each column, and its offset from an interior patch's start
        let tap = |q: usize| {
            let k = k0 + q;
            (k / (self.kw * c), k / c % self.kw, k % c)
        };
        let mut offset = [0usize; Q];
        for (q, off) in offset.iter_mut().enumerate() {
            let (ky, kx, ci) = tap(q);
            *off = (ky * self.w + kx) * c + ci;
        }
        let span = offset[Q - 1] + 1;
        for ob in (0..whole).step_by(LANES) {
            let mut acc = [[0.0f32; LANES]; Q];
            for (q, acc) in acc.iter_mut().enumerate() {
                *acc = lanes(dw, (k0 + q) * o + ob);
            }
            for oy in 0..self.oh {
                let (lo, hi) = self.interior(oy);
                let row = &d[oy * self.ow * o..(oy + 1) * self.ow * o];
                let edge = |ox: usize, acc: &mut [[f32; LANES]; Q]| {
                    let g = lanes(row, ox * o + ob);
                    for (q, acc) in acc.iter_mut().enumerate() {
                        let (ky, kx, ci) = tap(q);
                        if let Some((iy, ix)) = self.source(oy, ox, ky, kx) {
                            let v = img[(iy * self.w + ix) * c + ci];
                            for l in 0..LANES {
                                acc[l] = v.mul_add(g[l], acc[l]);
                            }
                        }
                    }
                };
                for ox in 0..lo {
                    edge(ox, &mut acc);
                }
                if lo < hi {
                    // interior pixels: column q reads `offset[q]` past the patch's start
                    let step = self.sw * c;
                    let s = self.patch_row(oy, lo, 0);
                    let xs = &img[s..s + (hi - lo - 1) * step + span];
                    let gs = &row[lo * o..hi * o];
                    for p in 0..hi - lo {
                        let g = lanes(gs, p * o + ob);
                        for (acc, &off) in acc.iter_mut().zip(&offset) {
                            // SAFETY: p * step + off < xs.len() (p < hi - lo, off < span)
                            let v = unsafe { *xs.get_unchecked(p * step + off) };
                            for l in 0..LANES {
                                acc[l] = v.mul_add(g[l], acc[l]);
                            }
                        }
                    }
                }
                for ox in hi..self.ow {
                    edge(ox, &mut acc);
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                let at = (k0 + q) * o + ob;
                dw[at..at + LANES].copy_from_slice(acc);
            }
        }
        for q in 0..Q {
            let (ky, kx, ci) = tap(q);
            for oc in whole..o {
                let at = (k0 + q) * o + oc;
                let mut acc = dw[at];
                self.for_tap_pixels(
                    ky,
                    kx,
                    #[inline(always)]
                    |xi, p| acc = img[xi + ci].mul_add(d[p * o + oc], acc),
                );
                dw[at] = acc;
            }
        }
    }

    /// Calls `f(x_offset, p)` for every output pixel `p` (row-major) whose tap `(ky, kx)`
    /// falls inside the image, with the offset of that input pixel's channel 0.
    #[inline(always)]
    fn for_tap_pixels(&self, ky: usize, kx: usize, mut f: impl FnMut(usize, usize)) {
        for oy in 0..self.oh {
            let Some(iy) = (oy * self.sh + ky)
                .checked_sub(self.ph)
                .filter(|&iy| iy < self.h)
            else {
                continue;
            };
            for ox in 0..self.ow {
                if let Some(ix) = (ox * self.sw + kx)
                    .checked_sub(self.pw)
                    .filter(|&ix| ix < self.w)
                {
                    f((iy * self.w + ix) * self.c, oy * self.ow + ox);
                }
            }
        }
    }
}

/// f32 of scratch `kernel` needs for convolution geometry `geometry` ([`ConvPath::scratch_len`]).
pub fn conv_scratch_len(kernel: Kernel, geometry: &[i64; CONV_GEOMETRY_LEN]) -> usize {
    let g = ConvGeometry::from_array(geometry);
    ConvPath::of(kernel, &g).scratch_len(&g)
}

/// `y = conv2d(x, w)` (NHWC input, HWIO filter) along `path`, then, with `bias`,
/// `y = relu(y + bias)` (`bias` per output channel) image by image, while the image's output
/// is still in cache.
///
/// # Safety
/// Buffers must match the geometry `g`; `scratch` must hold `path.scratch_len(g)` floats;
/// `bias`, when given, holds `g.o` floats.
pub unsafe fn conv2d(
    path: ConvPath,
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    scratch: *mut f32,
    g: &ConvGeometry,
    bias: Option<&[f32]>,
) {
    // SAFETY: by this function's contract `x`, `w` and `y` hold the `n*h*w*c`, `kh*kw*c*o` and
    // `n*oh*ow*o` floats of the geometry and `scratch` the path's scratch: every slice and
    // image offset below stays inside them, and `patches`/`gemm_strided` get blocks of them.
    unsafe {
        let (rows, cols) = g.patch_dims();
        let img_len = g.h * g.w * g.c;
        if path == ConvPath::Direct {
            let x = slice::from_raw_parts(x, g.n * img_len);
            let w = slice::from_raw_parts(w, cols * g.o);
            let y = slice::from_raw_parts_mut(y, g.n * rows * g.o);
            return widest(
                #[inline(always)]
                || {
                    for i in 0..g.n {
                        let out = &mut y[i * rows * g.o..][..rows * g.o];
                        g.direct_forward(&x[i * img_len..][..img_len], w, out);
                        if let Some(b) = bias {
                            bias_relu(out, b);
                        }
                    }
                },
            );
        }
        let ws = g.workspace(scratch);
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
            if let Some(b) = bias {
                let out = slice::from_raw_parts_mut(out, rows * g.o);
                widest(
                    #[inline(always)]
                    || bias_relu(out, b),
                );
            }
        }
    }
}

/// `y = relu(y + bias)` over rows of `bias.len()` channels, as the fused loop computes it:
/// the sum rounded to f32, then kept when greater than zero or NaN, else +0.
#[inline(always)]
fn bias_relu(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            let s = *v + b;
            *v = if s > 0.0 || s.is_nan() { s } else { 0.0 };
        }
    }
}

/// `y = conv2d(x, w)`: NHWC input, HWIO filter, along [`ConvPath::of`] (im2col + GEMM, or
/// direct for short patch rows).
///
/// # Safety
/// Buffers must match the geometry `g` (see [`CONV_GEOMETRY_LEN`]); `scratch` must hold
/// [`conv_scratch_len`] floats.
#[no_mangle]
pub unsafe extern "C" fn gl_conv2d(
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    // SAFETY: the compiled code passes buffers of the geometry `g` points to and the
    // planned scratch (this function's contract), which is `conv2d`'s contract.
    unsafe {
        let g = ConvGeometry::read(g);
        conv2d(ConvPath::of(Kernel::Conv2d, &g), x, w, y, scratch, &g, None)
    }
}

/// `y = relu(conv2d(x, w) + bias)` (`bias` per output channel): a convolution layer's
/// forward as one call, the fused body `relu(add(conv2d(x, w), bias))` that the lowering
/// recognizes, with the sum and relu applied to each image's output while it is in cache
/// rather than by a second pass over the whole activation. Same bits as the fused loop.
///
/// # Safety
/// As [`gl_conv2d`], and `bias` holds the geometry's `o` floats.
#[no_mangle]
pub unsafe extern "C" fn gl_conv2d_bias_relu(
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    // SAFETY: as `gl_conv2d`, and `bias` holds `o` floats (this function's contract).
    unsafe {
        let g = ConvGeometry::read(g);
        let bias = slice::from_raw_parts(bias, g.o);
        conv2d(
            ConvPath::of(Kernel::Conv2d, &g),
            x,
            w,
            y,
            scratch,
            &g,
            Some(bias),
        )
    }
}
/// `dx = conv2d_input_grad(dy, w)`: per image `dcols = dy x w^T`, then col2im into `dx`.
///
/// # Safety
/// As [`gl_conv2d`].
#[no_mangle]
pub unsafe extern "C" fn gl_conv2d_input_grad(
    dy: *const f32,
    w: *const f32,
    dx: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    // SAFETY: by this function's contract `dy`, `w` and `dx` hold `n*oh*ow*o`, `kh*kw*c*o` and
    // `n*h*w*c` floats and `scratch` the patch matrix plus the GEMM workspace: image `i`'s
    // offsets and the `rows x cols` block of `scratch` stay inside them.
    unsafe {
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
}

/// `dw = conv2d_filter_grad(x, dy)` along `path`: `dw = sum over images of cols^T x dy`.
///
/// # Safety
/// As [`conv2d`].
pub unsafe fn conv2d_filter_grad(
    path: ConvPath,
    x: *const f32,
    dy: *const f32,
    dw: *mut f32,
    scratch: *mut f32,
    g: &ConvGeometry,
) {
    // SAFETY: by this function's contract `x`, `dy` and `dw` hold the `n*h*w*c`, `n*oh*ow*o`
    // and `kh*kw*c*o` floats of the geometry and `scratch` the path's scratch: every slice
    // and image offset below stays inside them.
    unsafe {
        let (rows, cols) = g.patch_dims();
        let img_len = g.h * g.w * g.c;
        if path == ConvPath::Direct {
            let x = slice::from_raw_parts(x, g.n * img_len);
            let dy = slice::from_raw_parts(dy, g.n * rows * g.o);
            let dw = slice::from_raw_parts_mut(dw, cols * g.o);
            return widest(
                #[inline(always)]
                || g.direct_filter_grad(x, dy, dw),
            );
        }
        let ws = g.workspace(scratch);
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
}

/// `dw = conv2d_filter_grad(x, dy)` along [`ConvPath::of`].
///
/// # Safety
/// As [`gl_conv2d`].
#[no_mangle]
pub unsafe extern "C" fn gl_conv2d_filter_grad(
    x: *const f32,
    dy: *const f32,
    dw: *mut f32,
    scratch: *mut f32,
    g: *const i64,
) {
    // SAFETY: the compiled code passes buffers of the geometry `g` points to and the
    // planned scratch (this function's contract), which is `conv2d_filter_grad`'s.
    unsafe {
        let g = ConvGeometry::read(g);
        conv2d_filter_grad(
            ConvPath::of(Kernel::Conv2dFilterGrad, &g),
            x,
            dy,
            dw,
            scratch,
            &g,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{isa_levels, widest_with};
    use crate::op::{ConvGeometry, Padding};
    use crate::Shape;

    /// The convolution with its bias and relu equals the convolution followed by them, bit
    /// for bit, on both paths, with a channel tail, negative zeros and NaNs.
    #[test]
    fn the_bias_and_relu_epilogue_equals_a_second_pass() {
        for c in [1, 9] {
            let (n, h, w, o) = (2, 7, 8, 37);
            let g = ConvGeometry::new(
                &Shape(vec![n, h, w, c]),
                &Shape(vec![3, 3, c, o]),
                [1, 1],
                Padding::Same,
            )
            .unwrap();
            let mut x: Vec<f32> = (0..n * h * w * c)
                .map(|i| (i % 17) as f32 / 7.0 - 1.1)
                .collect();
            x[5] = f32::NAN;
            let f: Vec<f32> = (0..9 * c * o)
                .map(|i| (i % 13) as f32 / 5.0 - 1.3)
                .collect();
            let mut bias: Vec<f32> = (0..o).map(|i| (i % 5) as f32 / 4.0 - 0.5).collect();
            bias[3] = -0.0;
            bias[4] = f32::NAN;
            for path in [super::ConvPath::Im2col, super::ConvPath::Direct] {
                let mut scratch = vec![0.0f32; path.scratch_len(&g)];
                let len = n * g.oh * g.ow * o;
                let (mut want, mut got) = (vec![0.0f32; len], vec![0.0f32; len]);
                // SAFETY: the buffers have the geometry's sizes, the scratch the path's.
                unsafe {
                    let s = scratch.as_mut_ptr();
                    super::conv2d(path, x.as_ptr(), f.as_ptr(), want.as_mut_ptr(), s, &g, None);
                    let b = Some(&bias[..]);
                    super::conv2d(path, x.as_ptr(), f.as_ptr(), got.as_mut_ptr(), s, &g, b);
                }
                for (k, v) in want.iter_mut().enumerate() {
                    let s = *v + bias[k % o];
                    *v = if s > 0.0 || s.is_nan() { s } else { 0.0 };
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "c = {c}, {path:?}");
            }
        }
    }

    /// The direct kernels give the same bits at every ISA level the CPU has (fused
    /// multiply-adds everywhere), on shapes with padding, stride 2, an output-channel tail
    /// and several column blocks.
    #[test]
    fn every_isa_level_convolves_alike() {
        for (c, stride, padding) in [
            (1, [1, 1], Padding::Same),
            (3, [2, 1], Padding::Valid),
            (2, [2, 2], Padding::Same),
        ] {
            let (n, h, w, o) = (2, 9, 10, 37);
            let g = ConvGeometry::new(
                &Shape(vec![n, h, w, c]),
                &Shape(vec![3, 3, c, o]),
                stride,
                padding,
            )
            .unwrap();
            let x: Vec<f32> = (0..n * h * w * c)
                .map(|i| (i % 17) as f32 / 7.0 - 1.1)
                .collect();
            let f: Vec<f32> = (0..9 * c * o)
                .map(|i| (i % 13) as f32 / 5.0 - 1.3)
                .collect();
            let dy: Vec<f32> = (0..n * g.oh * g.ow * o)
                .map(|i| (i % 11) as f32 / 3.0 - 1.7)
                .collect();
            let run = |isa| {
                let mut y = vec![0.0f32; dy.len()];
                let img = h * w * c;
                for i in 0..n {
                    let out = &mut y[i * g.oh * g.ow * o..][..g.oh * g.ow * o];
                    widest_with(isa, || g.direct_forward(&x[i * img..][..img], &f, out));
                }
                let mut dw = vec![0.0f32; f.len()];
                widest_with(isa, || g.direct_filter_grad(&x, &dy, &mut dw));
                (y, dw)
            };
            let first = run(isa_levels()[0]);
            for isa in isa_levels() {
                assert_eq!(
                    run(isa),
                    first,
                    "{isa:?} c={c} stride={stride:?} {padding:?}"
                );
            }
        }
    }
}
