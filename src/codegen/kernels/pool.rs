//! Max-pooling kernels over NHWC windows, vectorized over channels.

use super::{lanes, widest, LANES};
use crate::op::PoolGeometry;
use std::slice;

/// Number of `i64` in a pooling geometry array ([`PoolGeometry::to_array`]).
pub const POOL_GEOMETRY_LEN: usize = PoolGeometry::LEN;

/// The kernels' view of a pooling geometry.
impl PoolGeometry {
    /// # Safety
    /// `g` points to [`POOL_GEOMETRY_LEN`] values.
    unsafe fn read(g: *const i64) -> PoolGeometry {
        // SAFETY: `g` points to POOL_GEOMETRY_LEN readable i64s (this function's contract), the
        // size and alignment of the array read.
        unsafe { PoolGeometry::from_array(&*(g as *const [i64; POOL_GEOMETRY_LEN])) }
    }

    /// Whether windows tile the input without overlap (stride = window, the usual case).
    fn disjoint(&self) -> bool {
        self.sh == self.wh && self.sw == self.ww
    }

    /// Calls `f` with the offset in `x` of every tap of the window whose first tap is at
    /// `base`, in row-major order.
    #[inline(always)]
    fn for_taps(&self, base: usize, mut f: impl FnMut(usize)) {
        for ky in 0..self.wh {
            for kx in 0..self.ww {
                f(base + (ky * self.w + kx) * self.c);
            }
        }
    }

    /// Calls `f(o, base)` for every output pixel in order: `o` is the offset of its channel 0
    /// in the output (and in `dy`), `base` that of its window's first tap in the input.
    #[inline(always)]
    fn for_each_output(&self, mut f: impl FnMut(usize, usize)) {
        let mut o = 0;
        for b in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    f(o, self.pixel(b, oy, ox, 0, 0));
                    o += self.c;
                }
            }
        }
    }

    /// The maximum (a NaN counting as the greatest, [`greater`]) over the window at `base` of
    /// the `LANES` channels from `ch`: kept in a `[f32; LANES]` the compiler holds in one
    /// vector register, so that the running maximum is never stored and reloaded.
    #[inline(always)]
    fn lanes_max(&self, x: &[f32], base: usize, ch: usize) -> [f32; LANES] {
        let mut m = lanes(x, base + ch);
        self.for_taps(
            base,
            #[inline(always)]
            |t| {
                let v = lanes(x, t + ch);
                for l in 0..LANES {
                    m[l] = if greater(v[l], m[l]) { v[l] } else { m[l] };
                }
            },
        );
        m
    }

    /// As [`Pool::lanes_max`] for one channel.
    #[inline(always)]
    fn channel_max(&self, x: &[f32], base: usize, ch: usize) -> f32 {
        let mut m = x[base + ch];
        self.for_taps(
            base,
            #[inline(always)]
            |t| {
                let v = x[t + ch];
                m = if greater(v, m) { v } else { m };
            },
        );
        m
    }

    /// Whether windows are 2x2 with stride 2 over a whole number of `LANES`-channel blocks:
    /// the usual pooling, which has loops of its own ([`PoolGeometry::forward_2x2`],
    /// [`PoolGeometry::grad_2x2`]) with the window unrolled.
    fn is_2x2(&self) -> bool {
        (self.wh, self.ww, self.sh, self.sw) == (2, 2, 2, 2) && self.c.is_multiple_of(LANES)
    }

    /// `y = max_pool2d(x)`: one pass over every window, `LANES` channels at a time.
    #[inline(always)]
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        if self.is_2x2() {
            return self.forward_2x2(x, y);
        }
        let c = self.c;
        let whole = c - c % LANES;
        self.for_each_output(
            #[inline(always)]
            |o, base| {
                for ch in (0..whole).step_by(LANES) {
                    y[o + ch..o + ch + LANES].copy_from_slice(&self.lanes_max(x, base, ch));
                }
                for ch in whole..c {
                    y[o + ch] = self.channel_max(x, base, ch);
                }
            },
        );
    }

    /// The two input rows of output row `oy` of image `b` (from their first window's first
    /// tap) and the output row, as slices.
    #[inline(always)]
    fn rows_2x2<'x>(&self, x: &'x [f32], b: usize, oy: usize) -> (&'x [f32], &'x [f32], usize) {
        let row = self.w * self.c;
        let r0 = (b * self.h + 2 * oy) * row;
        let o = (b * self.oh + oy) * self.ow * self.c;
        (&x[r0..r0 + row], &x[r0 + row..r0 + 2 * row], o)
    }

    /// The maximum of a 2x2 window's taps `a b / c d` by lane, as [`PoolGeometry::lanes_max`]
    /// computes it in row-major order (a NaN wins, the first of equal values is kept): the
    /// pairs' maxima, then theirs, which picks the same value bit for bit.
    #[inline(always)]
    fn max4(a: [f32; LANES], b: [f32; LANES], c: [f32; LANES], d: [f32; LANES]) -> [f32; LANES] {
        let mut m = [0.0f32; LANES];
        for l in 0..LANES {
            let ab = if greater(b[l], a[l]) { b[l] } else { a[l] };
            let cd = if greater(d[l], c[l]) { d[l] } else { c[l] };
            m[l] = if greater(cd, ab) { cd } else { ab };
        }
        m
    }

    /// [`PoolGeometry::forward`] for 2x2 windows with stride 2 ([`PoolGeometry::is_2x2`]):
    /// per output row, its two input rows are read once, `LANES` channels of a window at a
    /// time, with no loop over the taps.
    #[inline(always)]
    fn forward_2x2(&self, x: &[f32], y: &mut [f32]) {
        let c = self.c;
        for b in 0..self.n {
            for oy in 0..self.oh {
                let (r0, r1, o) = self.rows_2x2(x, b, oy);
                let yr = &mut y[o..o + self.ow * c];
                for ox in 0..self.ow {
                    let i = 2 * ox * c;
                    for ch in (0..c).step_by(LANES) {
                        let m = Self::max4(
                            lanes(r0, i + ch),
                            lanes(r0, i + c + ch),
                            lanes(r1, i + ch),
                            lanes(r1, i + c + ch),
                        );
                        yr[ox * c + ch..ox * c + ch + LANES].copy_from_slice(&m);
                    }
                }
            }
        }
    }

    /// [`PoolGeometry::grad_disjoint`] for 2x2 windows with stride 2: the window's maximum
    /// as in [`PoolGeometry::forward_2x2`], then its four taps get `dy` (the first tap equal to
    /// the maximum in row-major order) or 0, written row by row.
    #[inline(always)]
    fn grad_2x2(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let c = self.c;
        let row = self.w * c;
        for b in 0..self.n {
            for oy in 0..self.oh {
                let (r0, r1, o) = self.rows_2x2(x, b, oy);
                let d0 = (b * self.h + 2 * oy) * row;
                let (top, bottom) = dx[d0..d0 + 2 * row].split_at_mut(row);
                for ox in 0..self.ow {
                    let i = 2 * ox * c;
                    for ch in (0..c).step_by(LANES) {
                        let taps = [
                            lanes(r0, i + ch),
                            lanes(r0, i + c + ch),
                            lanes(r1, i + ch),
                            lanes(r1, i + c + ch),
                        ];
                        let m = Self::max4(taps[0], taps[1], taps[2], taps[3]);
                        let g = lanes(dy, o + ox * c + ch);
                        let mut taken = [false; LANES];
                        let mut out = [[0.0f32; LANES]; 4];
                        for (t, v) in taps.iter().enumerate() {
                            for l in 0..LANES {
                                let hit = same(v[l], m[l]) & !taken[l];
                                out[t][l] = if hit { g[l] } else { 0.0 };
                                taken[l] |= hit;
                            }
                        }
                        top[i + ch..i + ch + LANES].copy_from_slice(&out[0]);
                        top[i + c + ch..i + c + ch + LANES].copy_from_slice(&out[1]);
                        bottom[i + ch..i + ch + LANES].copy_from_slice(&out[2]);
                        bottom[i + c + ch..i + c + ch + LANES].copy_from_slice(&out[3]);
                    }
                }
            }
        }
    }

    /// Max-pool gradient when windows do not overlap: every input pixel is written exactly
    /// once, with no zero fill of covered pixels and no scatter. Per window and `LANES`
    /// channels, the maximum `m` is found first (in registers); then the taps are walked in
    /// row-major order and the first one equal to `m` (NaN matching NaN) takes `dy`, the
    /// others 0: the first maximum, as the interpreter picks it. No argmax is stored.
    #[inline(always)]
    fn grad_disjoint(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let c = self.c;
        // pixels no window covers (the right and bottom edges) get zero
        let (covered_h, covered_w) = (self.oh * self.sh, self.ow * self.sw);
        for b in 0..self.n {
            for iy in 0..self.h {
                let from = if iy < covered_h { covered_w } else { 0 };
                let s = (b * self.h + iy) * self.w;
                dx[(s + from) * c..(s + self.w) * c].fill(0.0);
            }
        }
        if self.is_2x2() {
            return self.grad_2x2(x, dy, dx);
        }
        let whole = c - c % LANES;
        self.for_each_output(
            #[inline(always)]
            |o, base| {
                for ch in (0..whole).step_by(LANES) {
                    let m = self.lanes_max(x, base, ch);
                    let g = lanes(dy, o + ch);
                    let mut taken = [false; LANES];
                    self.for_taps(
                        base,
                        #[inline(always)]
                        |t| {
                            let v = lanes(x, t + ch);
                            let mut d = [0.0f32; LANES];
                            for l in 0..LANES {
                                let hit = same(v[l], m[l]) & !taken[l];
                                d[l] = if hit { g[l] } else { 0.0 };
                                taken[l] |= hit;
                            }
                            dx[t + ch..t + ch + LANES].copy_from_slice(&d);
                        },
                    );
                }
                for ch in whole..c {
                    let m = self.channel_max(x, base, ch);
                    let mut taken = false;
                    self.for_taps(
                        base,
                        #[inline(always)]
                        |t| {
                            let hit = same(x[t + ch], m) & !taken;
                            dx[t + ch] = if hit { dy[o + ch] } else { 0.0 };
                            taken |= hit;
                        },
                    );
                }
            },
        );
    }

    /// Max-pool gradient for overlapping windows: a pixel may receive from several outputs,
    /// so `dx` is zeroed and each `dy` added at its window's first maximum.
    fn grad_overlapping(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        dx.fill(0.0);
        let c = self.c;
        self.for_each_output(
            #[inline(always)]
            |o, base| {
                for ch in 0..c {
                    let m = self.channel_max(x, base, ch);
                    let mut taken = false;
                    self.for_taps(
                        base,
                        #[inline(always)]
                        |t| {
                            if !taken && same(x[t + ch], m) {
                                dx[t + ch] += dy[o + ch];
                                taken = true;
                            }
                        },
                    );
                }
            },
        );
    }
}

/// `v > m`, where a NaN counts as greater than any number (the interpreter's order: a NaN in a
/// pooling window wins). Branchless, so the channel loops vectorize.
#[inline(always)]
fn greater(v: f32, m: f32) -> bool {
    (v > m) | (v.is_nan() & !m.is_nan())
}

/// `v` is the window's maximum `m` (both NaN counts as equal). Branchless.
#[inline(always)]
fn same(v: f32, m: f32) -> bool {
    (v == m) | (v.is_nan() & m.is_nan())
}

/// `y = max_pool2d(x)` over NHWC windows (no padding).
///
/// # Safety
/// Buffers must match the geometry (see [`POOL_GEOMETRY_LEN`]).
#[no_mangle]
pub unsafe extern "C" fn gl_max_pool2d(x: *const f32, y: *mut f32, g: *const i64) {
    // SAFETY: the compiled code passes a geometry array and buffers `x` of `n*h*w*c` and `y` of
    // `n*oh*ow*c` floats (this function's contract): the slices made here.
    unsafe {
        let p = PoolGeometry::read(g);
        let x = slice::from_raw_parts(x, p.n * p.h * p.w * p.c);
        let y = slice::from_raw_parts_mut(y, p.n * p.oh * p.ow * p.c);
        widest(
            #[inline(always)]
            || p.forward(x, y),
        )
    }
}

/// `dx = max_pool2d_grad(x, dy)`: each `dy` goes to its window's first maximum.
///
/// # Safety
/// As [`gl_max_pool2d`].
#[no_mangle]
pub unsafe extern "C" fn gl_max_pool2d_grad(
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    g: *const i64,
) {
    // SAFETY: the compiled code passes a geometry array and buffers `x` and `dx` of `n*h*w*c`
    // and `dy` of `n*oh*ow*c` floats (this function's contract): the slices made here.
    unsafe {
        let p = PoolGeometry::read(g);
        let len = p.n * p.h * p.w * p.c;
        let x = slice::from_raw_parts(x, len);
        let dy = slice::from_raw_parts(dy, p.n * p.oh * p.ow * p.c);
        let dx = slice::from_raw_parts_mut(dx, len);
        if p.disjoint() {
            widest(
                #[inline(always)]
                || p.grad_disjoint(x, dy, dx),
            )
        } else {
            p.grad_overlapping(x, dy, dx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{isa_levels, widest_with};
    use crate::op::PoolGeometry;

    /// 2x2 windows, stride 2, over 2 images of 7x9 (uncovered right and bottom edges) with `c`
    /// channels.
    fn two_by_two(c: usize) -> PoolGeometry {
        PoolGeometry {
            n: 2,
            h: 7,
            w: 9,
            c,
            wh: 2,
            ww: 2,
            sh: 2,
            sw: 2,
            oh: 3,
            ow: 4,
        }
    }

    /// Every ISA level the CPU has gives the portable build's bits (the wide levels are what
    /// runs; the portable one is the fallback for CPUs without AVX2).
    #[test]
    fn every_isa_level_pools_alike() {
        // 37 channels: two 16-lane blocks and a tail; 7x9 leaves uncovered edges
        let p = two_by_two(37);
        let (n, h, w, c) = (p.n, p.h, p.w, p.c);
        let x: Vec<f32> = (0..n * h * w * c)
            .map(|i| match i % 23 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => ((i * 7) % 11) as f32 - 5.0, // many ties
            })
            .collect();
        let dy: Vec<f32> = (0..n * p.oh * p.ow * c).map(|i| i as f32 + 0.5).collect();
        let run = |isa| {
            let (mut y, mut dx) = (vec![0.0f32; dy.len()], vec![9.0f32; x.len()]);
            widest_with(isa, || p.forward(&x, &mut y));
            widest_with(isa, || p.grad_disjoint(&x, &dy, &mut dx));
            (y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), dx)
        };
        let (y0, dx0) = run(isa_levels()[0]);
        assert!(dx0.iter().all(|&v| v != 9.0), "every dx element is written");
        for isa in isa_levels() {
            let (y, dx) = run(isa);
            assert_eq!(y, y0, "{isa:?} forward");
            assert_eq!(dx, dx0, "{isa:?} gradient");
        }
    }

    /// The unrolled 2x2 loops (32 channels: two whole blocks) give the bits of the general
    /// window loops at every ISA level: NaNs win, the first of equal values (0 and -0 too)
    /// takes the gradient, uncovered edges get zero.
    #[test]
    fn two_by_two_windows_match_the_general_loops() {
        let p = two_by_two(32);
        let (n, h, w, c) = (p.n, p.h, p.w, p.c);
        assert!(p.is_2x2());
        let x: Vec<f32> = (0..n * h * w * c)
            .map(|i| match i % 29 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => -0.0,
                3 => 0.0,
                _ => ((i * 7) % 5) as f32 - 2.0, // many ties
            })
            .collect();
        let dy: Vec<f32> = (0..n * p.oh * p.ow * c).map(|i| i as f32 + 0.5).collect();
        // the general loops: one channel at a time, and the scatter of overlapping windows
        let mut want_y = vec![0.0f32; dy.len()];
        let mut o = 0;
        for b in 0..n {
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    for ch in 0..c {
                        want_y[o + ch] = p.channel_max(&x, p.pixel(b, oy, ox, 0, 0), ch);
                    }
                    o += c;
                }
            }
        }
        let mut want_dx = vec![0.0f32; x.len()];
        p.grad_overlapping(&x, &dy, &mut want_dx);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for isa in isa_levels() {
            let (mut y, mut dx) = (vec![0.0f32; dy.len()], vec![9.0f32; x.len()]);
            widest_with(isa, || p.forward(&x, &mut y));
            widest_with(isa, || p.grad_disjoint(&x, &dy, &mut dx));
            assert_eq!(bits(&y), bits(&want_y), "{isa:?} forward");
            assert_eq!(bits(&dx), bits(&want_dx), "{isa:?} gradient");
        }
    }
}
