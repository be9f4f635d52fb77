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

    /// `y = max_pool2d(x)`: one pass over every window, `LANES` channels at a time.
    #[inline(always)]
    fn forward(&self, x: &[f32], y: &mut [f32]) {
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

    /// Max-pool gradient when windows do not overlap: every input pixel is written exactly
    /// once, with no zero fill of covered pixels and no scatter. Per window and `LANES`
    /// channels, the maximum `m` is found first (in registers); then the taps are walked in
    /// row-major order and the first one equal to `m` (NaN matching NaN) takes `dy`, the
    /// others 0: the first maximum, as the interpreter picks it. No argmax is stored.
    #[inline(always)]
    fn grad_disjoint(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let c = self.c;
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

    /// Every ISA level the CPU has gives the portable build's bits (the wide levels are what
    /// runs; the portable one is the fallback for CPUs without AVX2).
    #[test]
    fn every_isa_level_pools_alike() {
        // 37 channels: two 16-lane blocks and a tail; 7x9 leaves uncovered edges
        let (n, h, w, c) = (2, 7, 9, 37);
        let p = PoolGeometry {
            n,
            h,
            w,
            c,
            wh: 2,
            ww: 2,
            sh: 2,
            sw: 2,
            oh: 3,
            ow: 4,
        };
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
}
