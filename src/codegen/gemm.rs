//! Single-precision GEMM that never allocates: `c = a x b` (or `c += a x b`) in pure Rust.
//!
//! Why our own GEMM instead of the `gemm` crate: that crate heap-allocates its packing buffers
//! on every call, while a training step must make zero heap allocations. Here every packing
//! buffer lives in a workspace the caller passes in, of [`workspace_len`] `f32`s, a pure
//! function of the shape that the compiler plans in its arena.
//!
//! Structure (BLIS / Goto): for each block of [`NC`] columns and [`KC`] depth, the `k x n`
//! operand `b` is packed into column panels `NR` wide (zero padded to the vector width; AVX
//! 8 x 8 transposes for a transposed `b`), then for each panel of `MR` rows of `a` (packed
//! into `MR x KC` when neither of its strides is 1, else read in place) a register-tiled
//! micro-kernel computes the tile of `c` against every column panel, with FMA: AVX-512
//! (8 x 32, two `zmm` per row; a last panel of up to 12 rows is one tile), AVX2 + FMA
//! (6 x 16) or portable Rust loops (4 x 16, no FMA). Partial tiles use kernels specialized
//! for their row count and masked loads and stores for their columns, so nothing is written
//! outside `c`. A row-major `b` whose rows are at most [`DIRECT_B_MAX_RS`] elements apart is
//! read in place (no packing): at the small shapes of training steps packing costs as much
//! as it saves.
//!
//! Determinism: the micro-kernel loads the tile of `c` (or starts at zero), then adds the
//! products over `k` in increasing order into it, one rounding (FMA) or two (portable) per
//! term, and the next `k` block continues from the stored tile. So every element of `c` is the
//! same sequential chain over `k` whatever `m`, `n`, its position, the tile it falls in or the
//! blocking: a block of rows or columns of `c` computed alone is bitwise equal to the same part
//! of the whole product (GEMMs split across threads give split-independent results). The
//! AVX-512 and AVX2 kernels both use FMA and agree bitwise; the portable kernel (separate
//! multiply and add) differs from them.

use std::sync::atomic::{AtomicU8, Ordering};

/// Depth (`k`) of a packed block: an `MR x KC` panel of `a` stays in L1.
pub const KC: usize = 256;
/// Width (`n`) of a packed block of `b`: a `KC x NC` block stays in L2.
pub const NC: usize = 512;
/// Widest column panel of every kernel family (the workspace is sized for it).
const NR_MAX: usize = 32;
/// Most rows of an `a` panel of every kernel family.
const MR_MAX: usize = 12;
/// Extra elements for aligning the workspace to 64 bytes.
const ALIGN_PAD: usize = 16;

/// Which kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F + FMA, 8 x 32 tiles (up to 12 x 32 for the last rows).
    Avx512,
    /// AVX2 + FMA, 6 x 16 tiles.
    Avx2,
    /// Plain Rust loops (no FMA), 4 x 16 tiles.
    Portable,
}

impl Isa {
    fn rank(self) -> u8 {
        match self {
            Isa::Portable => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
        }
    }
}

static DETECTED: AtomicU8 = AtomicU8::new(0);

/// The best ISA this CPU supports (detected on the first call, then read from a static).
pub fn detected() -> Isa {
    let r = match DETECTED.load(Ordering::Relaxed) {
        0 => {
            let r = detect().rank();
            DETECTED.store(r, Ordering::Relaxed);
            r
        }
        r => r,
    };
    match r {
        3 => Isa::Avx512,
        2 => Isa::Avx2,
        _ => Isa::Portable,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// `f32` elements of workspace [`sgemm`] needs for an `m x k x n` product: a `KC x NC` block
/// of `b` and an `MR x KC` panel of `a` (capped by the shape), plus alignment slack; 0 when
/// there is nothing to multiply. The same for every ISA.
pub fn workspace_len(m: usize, k: usize, n: usize) -> usize {
    if m == 0 || n == 0 || k == 0 {
        return 0;
    }
    let kc = k.min(KC);
    let nc = n.min(NC).next_multiple_of(NR_MAX);
    kc * nc + MR_MAX * kc + ALIGN_PAD
}

/// `c[m,n] = a[m,k] x b[k,n]` (or `c += a x b` when `acc`) with the widest kernels this CPU
/// has ([`detected`]). `a` and `b` are given by element strides (row stride, column stride),
/// so a transposed operand is just swapped strides; `c` is row-major with row stride `c_rs`
/// (column stride 1). Allocates nothing and does not panic.
///
/// # Safety
/// The pointers cover the matrices described (every element `a + i*a_rs + p*a_cs` for
/// `i < m, p < k` is readable, likewise `b`, and `c + i*c_rs + j` for `i < m, j < n` is
/// writable and does not overlap `a`, `b` or the workspace); `ws` points to
/// `workspace_len(m, k, n)` writable `f32`s (any alignment of an `f32`), not used by anyone
/// else during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    acc: bool,
    ws: *mut f32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        sgemm_with(
            detected(),
            m,
            k,
            n,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            c,
            c_rs,
            acc,
            ws,
        )
    }
}

/// [`sgemm`] with the kernels of `isa`; an ISA this CPU lacks (above [`detected`]) falls back
/// to the detected one. Lets tests run the AVX2 and portable kernels on an AVX-512 machine.
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_with(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    acc: bool,
    ws: *mut f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                // SAFETY: row `i` of `c` has `n` writable elements.
                unsafe { std::ptr::write_bytes(c.offset(i as isize * c_rs), 0, n) };
            }
        }
        return;
    }
    let best = detected();
    let isa = if isa.rank() > best.rank() { best } else { isa };
    let p = Problem {
        m,
        k,
        n,
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        b_cs,
        c,
        c_rs,
        acc,
        // SAFETY: `ws` has ALIGN_PAD elements of slack for rounding up to 64 bytes.
        ws: unsafe { ws.add(((ws as usize).wrapping_neg() & 63) / 4) },
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa <= detected()`, so the CPU has AVX-512F and FMA.
        Isa::Avx512 => unsafe { drive::<x86::Avx512>(&p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa <= detected()`, so the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { drive::<x86::Avx2>(&p) },
        // SAFETY: the portable kernel needs no CPU feature.
        _ => unsafe { drive::<Portable>(&p) },
    }
}

/// The arguments of one call, the workspace aligned to 64 bytes.
struct Problem {
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    acc: bool,
    ws: *mut f32,
}

/// A micro-kernel: `c[0..mr, 0..nr] (+)= a x b` over `kc` steps. `a` is read at
/// `a + p*a_ps + i` (a packed panel: `a_ps = mr`), `b` at `b + p*b_rs + j`; `mr` is fixed by
/// the kernel, `nr` is the number of valid columns; `load`: start from `c` instead of zero.
type Kernel = unsafe fn(
    kc: usize,
    a: *const f32,
    a_rs: isize,
    a_ps: isize,
    b: *const f32,
    b_rs: isize,
    c: *mut f32,
    c_rs: isize,
    nr: usize,
    load: bool,
);

/// A kernel family.
trait Arch {
    /// Rows of a full tile.
    const MR: usize;
    /// Most rows of the last panel: a rest of up to this many rows is one panel (a merged
    /// `MR + r` panel rather than a thin `r`-row one; `MR` when the kernels cannot).
    const MR_LAST: usize;
    /// Columns of a full tile.
    const NR: usize;
    /// Columns of one vector (a partial panel is padded to a multiple of it).
    const VEC: usize;
    /// Whether a row-major `b` may be read in place (the kernel masks partial-panel loads).
    const DIRECT_B: bool;
    /// Whether masked loads are cheap enough for the inner loop: if not, `b` is read in
    /// place only when no panel is partial (`n` a multiple of `VEC`) or the partial one is a
    /// small share of the columns (`n >= 4 * NR`).
    const CHEAP_MASKED_LOADS: bool;
    /// The kernel for `mr` rows (`1..=MR_LAST`) and `nr` columns (`1..=NR`); `masked_b`: the last
    /// vector of `b` must be loaded with a mask (in-place `b`, partial panel).
    fn kernel(mr: usize, nr: usize, masked_b: bool) -> Kernel;

    /// Packs a `kc x nc` block of `b` (see [`pack_b`]).
    ///
    /// # Safety
    /// As [`pack_b`], and the CPU supports the family.
    unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, dst: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { pack_b::<Self, false>(kc, nc, b, rs, cs, dst) }
    }
}

/// Largest row stride (elements) of a row-major `b` read in place rather than packed: with
/// longer rows the kernel's `KC` rows of `b` span too many pages (measured: 128 x 512 x 4096
/// runs at about 65 GFLOP/s in place, 90 packed; 512 x 512 x 512 the same either way).
pub const DIRECT_B_MAX_RS: usize = 1024;

/// The blocked loops: for each `NC` block of columns and `KC` block of depth, pack `b` (unless
/// it is read in place), then for each panel of `MR` rows of `a`, pack it (unless one of its
/// strides is 1) and run the kernel over every column panel.
///
/// # Safety
/// The contract of [`sgemm`], `p.ws` aligned, and the CPU supports `A`'s kernels.
unsafe fn drive<A: Arch>(p: &Problem) {
    let direct_b = A::DIRECT_B
        && p.b_cs == 1
        && p.b_rs.unsigned_abs() <= DIRECT_B_MAX_RS
        && (A::CHEAP_MASKED_LOADS || p.n.is_multiple_of(A::VEC) || p.n >= 4 * A::NR);
    let direct_a = p.a_rs == 1 || p.a_cs == 1;
    let (ws_b, ws_a) = {
        let kc = p.k.min(KC);
        let nc = p.n.min(NC).next_multiple_of(NR_MAX);
        // SAFETY: the workspace holds `kc * nc + MR_MAX * kc` elements after alignment.
        (p.ws, unsafe { p.ws.add(kc * nc) })
    };
    for jc in (0..p.n).step_by(NC) {
        let nc = (p.n - jc).min(NC);
        for pc in (0..p.k).step_by(KC) {
            let kc = (p.k - pc).min(KC);
            let load = p.acc || pc > 0;
            // SAFETY: in bounds of `b` (rows pc..pc+kc, columns jc..jc+nc).
            let b0 = unsafe { p.b.offset(pc as isize * p.b_rs + jc as isize * p.b_cs) };
            if !direct_b {
                // SAFETY: `ws_b` holds `kc * round_up(nc, NR_MAX)` elements.
                unsafe { A::pack_b(kc, nc, b0, p.b_rs, p.b_cs, ws_b) };
            }
            let mut ir = 0;
            while ir < p.m {
                let rest = p.m - ir;
                let mr = if rest <= A::MR_LAST { rest } else { A::MR };
                // SAFETY: in bounds of `a` (rows ir..ir+mr, columns pc..pc+kc).
                let a0 = unsafe { p.a.offset(ir as isize * p.a_rs + pc as isize * p.a_cs) };
                let (ap, a_rs, a_ps) = if direct_a {
                    (a0, p.a_rs, p.a_cs)
                } else {
                    // SAFETY: `ws_a` holds `MR_MAX * kc >= mr * kc` elements.
                    unsafe { pack_a(mr, kc, a0, p.a_rs, p.a_cs, ws_a) };
                    (ws_a as *const f32, 1, mr as isize)
                };
                for jr in (0..nc).step_by(A::NR) {
                    let nr = (nc - jr).min(A::NR);
                    let (bp, b_rs) = if direct_b {
                        // SAFETY: column jr of the block is in bounds.
                        (unsafe { b0.add(jr) }, p.b_rs)
                    } else {
                        let pw = if nr == A::NR {
                            A::NR
                        } else {
                            nr.next_multiple_of(A::VEC)
                        };
                        // SAFETY: panel `jr / NR` starts at `jr * kc` in the packed block.
                        (unsafe { ws_b.add(jr * kc) as *const f32 }, pw as isize)
                    };
                    let kern = A::kernel(mr, nr, direct_b && !nr.is_multiple_of(A::VEC));
                    // SAFETY: the tile (rows ir..ir+mr, columns jc+jr..+nr) is inside `c`;
                    // `ap`/`bp` cover `kc` steps of `mr` rows / `nr` columns (packed panels
                    // are zero padded to the kernel's vector width).
                    unsafe {
                        let ct = p.c.offset(ir as isize * p.c_rs + (jc + jr) as isize);
                        kern(kc, ap, a_rs, a_ps, bp, b_rs, ct, p.c_rs, nr, load);
                    }
                }
                ir += mr;
            }
        }
    }
}

/// Packs `b[0..kc, 0..nc]` into panels of `A::NR` columns (`p*NR + j`); the last, partial
/// panel is `round_up(nr, VEC)` wide with zeros in the padding columns. `AVX`: transpose
/// 8 x 8 blocks of a column-major `b` with AVX shuffles (inlined into a caller that enables
/// AVX).
///
/// # Safety
/// `b` covers the block; `dst` holds `kc * round_up(nc, NR_MAX)` elements; the CPU has AVX
/// when `AVX`.
#[inline(always)]
unsafe fn pack_b<A: Arch + ?Sized, const AVX: bool>(
    kc: usize,
    nc: usize,
    b: *const f32,
    rs: isize,
    cs: isize,
    dst: *mut f32,
) {
    for j0 in (0..nc).step_by(A::NR) {
        let nr = (nc - j0).min(A::NR);
        let pw = if nr == A::NR {
            A::NR
        } else {
            nr.next_multiple_of(A::VEC)
        };
        // SAFETY: panels are laid out back to back, panel `j0 / NR` at `j0 * kc`, each
        // `kc * pw` elements, all inside `dst`; reads stay in the block of `b`.
        unsafe {
            let d = dst.add(j0 * kc);
            let s = b.offset(j0 as isize * cs);
            if cs == 1 {
                for p in 0..kc {
                    let (dp, sp) = (d.add(p * pw), s.offset(p as isize * rs));
                    for j in 0..nr {
                        *dp.add(j) = *sp.add(j);
                    }
                    for j in nr..pw {
                        *dp.add(j) = 0.0;
                    }
                }
                continue;
            }
            let mut j = 0;
            #[cfg(target_arch = "x86_64")]
            if AVX && rs == 1 {
                while j + 8 <= nr {
                    let mut p = 0;
                    while p + 8 <= kc {
                        x86::transpose8(
                            s.offset(j as isize * cs + p as isize),
                            cs,
                            d.add(p * pw + j),
                            pw,
                        );
                        p += 8;
                    }
                    for p in p..kc {
                        for jj in j..j + 8 {
                            *d.add(p * pw + jj) = *s.offset(jj as isize * cs + p as isize);
                        }
                    }
                    j += 8;
                }
            }
            for j in j..nr {
                let sj = s.offset(j as isize * cs);
                for p in 0..kc {
                    *d.add(p * pw + j) = *sj.offset(p as isize * rs);
                }
            }
            if pw > nr {
                for p in 0..kc {
                    for j in nr..pw {
                        *d.add(p * pw + j) = 0.0;
                    }
                }
            }
        }
    }
}

/// Packs `a[0..mr, 0..kc]` as `p*mr + i`.
///
/// # Safety
/// `a` covers the block; `dst` holds `mr * kc` elements.
unsafe fn pack_a(mr: usize, kc: usize, a: *const f32, rs: isize, cs: isize, dst: *mut f32) {
    // SAFETY: indices stay inside the block of `a` and the `mr * kc` elements of `dst`.
    unsafe {
        for i in 0..mr {
            let si = a.offset(i as isize * rs);
            for p in 0..kc {
                *dst.add(p * mr + i) = *si.offset(p as isize * cs);
            }
        }
    }
}

/// The portable kernels: plain loops, `MR x NR = 4 x 16`, multiply then add (no FMA).
struct Portable;

const P_MR: usize = 4;
const P_NR: usize = 16;

impl Arch for Portable {
    const MR: usize = P_MR;
    const MR_LAST: usize = P_MR;
    const NR: usize = P_NR;
    const VEC: usize = P_NR;
    const DIRECT_B: bool = false;
    const CHEAP_MASKED_LOADS: bool = false;
    fn kernel(mr: usize, _nr: usize, _masked_b: bool) -> Kernel {
        match mr {
            1 => portable_kernel::<1>,
            2 => portable_kernel::<2>,
            3 => portable_kernel::<3>,
            _ => portable_kernel::<4>,
        }
    }
}

/// The portable micro-kernel for `MR` rows (`b` is a packed panel, `P_NR` wide).
///
/// # Safety
/// As [`Kernel`]: `a`, `b` cover `kc` steps, `c` the `MR x nr` tile.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn portable_kernel<const MR: usize>(
    kc: usize,
    a: *const f32,
    a_rs: isize,
    a_ps: isize,
    b: *const f32,
    b_rs: isize,
    c: *mut f32,
    c_rs: isize,
    nr: usize,
    load: bool,
) {
    let nr = nr.min(P_NR);
    let mut acc = [[0.0f32; P_NR]; MR];
    // SAFETY: the caller's contract: the tile, `kc` rows of the panel and of `a` are valid.
    unsafe {
        if load {
            for i in 0..MR {
                for j in 0..nr {
                    acc[i][j] = *c.offset(i as isize * c_rs + j as isize);
                }
            }
        }
        for p in 0..kc {
            let bp = &*(b.offset(p as isize * b_rs) as *const [f32; P_NR]);
            let ap = a.offset(p as isize * a_ps);
            for i in 0..MR {
                let ai = *ap.offset(i as isize * a_rs);
                for j in 0..P_NR {
                    acc[i][j] += ai * bp[j];
                }
            }
        }
        for i in 0..MR {
            for j in 0..nr {
                *c.offset(i as isize * c_rs + j as isize) = acc[i][j];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX-512 and AVX2 micro-kernels.

    use super::{Arch, Kernel};
    use std::arch::x86_64::*;

    /// AVX-512F + FMA kernels, `8 x 32` (two `zmm` per row, 16 accumulators), and up to
    /// `12 x 32` for the last panel of rows (24 accumulators of the 32 registers).
    pub struct Avx512;

    /// Picks the `MR x NV` instance.
    macro_rules! pick {
        ($f:ident, $mr:expr, $nv:expr, $mask:expr, [$($m:literal)*]) => {
            match ($mr, $nv, $mask) {
                $(
                    ($m, 1, false) => $f::<$m, 1, false>,
                    ($m, 1, true) => $f::<$m, 1, true>,
                    ($m, _, false) => $f::<$m, 2, false>,
                    ($m, _, true) => $f::<$m, 2, true>,
                )*
                (_, 1, false) => $f::<1, 1, false>,
                (_, 1, true) => $f::<1, 1, true>,
                (_, _, false) => $f::<1, 2, false>,
                (_, _, true) => $f::<1, 2, true>,
            }
        };
    }

    impl Arch for Avx512 {
        const MR: usize = 8;
        const MR_LAST: usize = 12;
        const NR: usize = 32;
        const VEC: usize = 16;
        const DIRECT_B: bool = true;
        const CHEAP_MASKED_LOADS: bool = true;
        fn kernel(mr: usize, nr: usize, masked_b: bool) -> Kernel {
            let nv = nr.div_ceil(16);
            pick!(k512, mr, nv, masked_b, [2 3 4 5 6 7 8 9 10 11 12])
        }
        unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, d: *mut f32) {
            // SAFETY: forwarded contract; the family implies AVX-512F.
            unsafe { pack_b512(kc, nc, b, rs, cs, d) }
        }
    }

    /// [`super::pack_b`] with AVX-512 copies and AVX transposes.
    ///
    /// # Safety
    /// As [`super::pack_b`], and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_b512(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, d: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { super::pack_b::<Avx512, true>(kc, nc, b, rs, cs, d) }
    }

    /// Transposes the 8 x 8 block at `s` (rows `ss` apart) into `d` (rows `ds` apart).
    ///
    /// # Safety
    /// Both blocks are in bounds; the CPU has AVX.
    #[target_feature(enable = "avx")]
    #[inline]
    pub(super) unsafe fn transpose8(s: *const f32, ss: isize, d: *mut f32, ds: usize) {
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, x) in r.iter_mut().enumerate() {
            // SAFETY: row `i` of the source block is in bounds.
            *x = unsafe { _mm256_loadu_ps(s.offset(i as isize * ss)) };
        }
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (q, &x) in out.iter().enumerate() {
            // SAFETY: row `q` of the destination block is in bounds.
            unsafe { _mm256_storeu_ps(d.add(q * ds), x) };
        }
    }

    /// The AVX-512 micro-kernel: `MR` rows, `NV` vectors of 16 columns; `MASKB`: load the
    /// last vector of `b` with the column mask (in-place `b` whose panel is partial).
    ///
    /// # Safety
    /// As [`Kernel`], and the CPU has AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn k512<const MR: usize, const NV: usize, const MASKB: bool>(
        kc: usize,
        a: *const f32,
        a_rs: isize,
        a_ps: isize,
        b: *const f32,
        b_rs: isize,
        c: *mut f32,
        c_rs: isize,
        nr: usize,
        load: bool,
    ) {
        let rem = nr - (NV - 1) * 16;
        let mask: __mmask16 = if rem >= 16 { !0 } else { (1u16 << rem) - 1 };
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        // SAFETY: the caller's contract: the tile (masked in its last vector), `kc` steps of
        // `a` (`MR` values each) and of `b` (`NV` vectors, the last masked when `MASKB`).
        unsafe {
            if load {
                for (i, row) in acc.iter_mut().enumerate() {
                    let ci = c.offset(i as isize * c_rs);
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = if v + 1 == NV {
                            _mm512_maskz_loadu_ps(mask, ci.add(v * 16))
                        } else {
                            _mm512_loadu_ps(ci.add(v * 16))
                        };
                    }
                }
            }
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if MASKB && v + 1 == NV {
                        _mm512_maskz_loadu_ps(mask, b.add(v * 16))
                    } else {
                        _mm512_loadu_ps(b.add(v * 16))
                    };
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.offset(i as isize * a_rs));
                    for (x, &bx) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(ai, bx, *x);
                    }
                }
                a = a.offset(a_ps);
                b = b.offset(b_rs);
            }
            for (i, row) in acc.iter().enumerate() {
                let ci = c.offset(i as isize * c_rs);
                for (v, &x) in row.iter().enumerate() {
                    if v + 1 == NV {
                        _mm512_mask_storeu_ps(ci.add(v * 16), mask, x);
                    } else {
                        _mm512_storeu_ps(ci.add(v * 16), x);
                    }
                }
            }
        }
    }

    /// AVX2 + FMA kernels, `6 x 16` (two `ymm` per row, 12 accumulators).
    pub struct Avx2;

    impl Arch for Avx2 {
        const MR: usize = 6;
        const MR_LAST: usize = 6;
        const NR: usize = 16;
        const VEC: usize = 8;
        const DIRECT_B: bool = true;
        // `vmaskmovps` in the inner loop (Zen 4): 64 x 128 x 10 runs at 31 GFLOP/s with `b` in
        // place, 53 packed; 13 x 300 x 77 at 74 in place, 60 packed.
        const CHEAP_MASKED_LOADS: bool = false;
        fn kernel(mr: usize, nr: usize, masked_b: bool) -> Kernel {
            let nv = nr.div_ceil(8);
            pick!(k256, mr, nv, masked_b, [2 3 4 5 6])
        }
        unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, d: *mut f32) {
            // SAFETY: forwarded contract; the family implies AVX2.
            unsafe { pack_b256(kc, nc, b, rs, cs, d) }
        }
    }

    /// [`super::pack_b`] with AVX2 copies and transposes.
    ///
    /// # Safety
    /// As [`super::pack_b`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn pack_b256(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, d: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { super::pack_b::<Avx2, true>(kc, nc, b, rs, cs, d) }
    }

    /// `-1` then `0` lanes: 8 lanes from `8 - rem` are the mask of the first `rem` lanes.
    static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// The AVX2 micro-kernel: `MR` rows, `NV` vectors of 8 columns; `MASKB` as [`k512`].
    ///
    /// # Safety
    /// As [`Kernel`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn k256<const MR: usize, const NV: usize, const MASKB: bool>(
        kc: usize,
        a: *const f32,
        a_rs: isize,
        a_ps: isize,
        b: *const f32,
        b_rs: isize,
        c: *mut f32,
        c_rs: isize,
        nr: usize,
        load: bool,
    ) {
        let rem = (nr - (NV - 1) * 8).min(8);
        // SAFETY: `8 - rem + 8 <= 16` elements of MASKS.
        let mask = unsafe { _mm256_loadu_si256(MASKS.as_ptr().add(8 - rem) as *const __m256i) };
        let full = rem == 8;
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        // SAFETY: as in `k512`.
        unsafe {
            if load {
                for (i, row) in acc.iter_mut().enumerate() {
                    let ci = c.offset(i as isize * c_rs);
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = if v + 1 == NV && !full {
                            _mm256_maskload_ps(ci.add(v * 8), mask)
                        } else {
                            _mm256_loadu_ps(ci.add(v * 8))
                        };
                    }
                }
            }
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if MASKB && v + 1 == NV {
                        _mm256_maskload_ps(b.add(v * 8), mask)
                    } else {
                        _mm256_loadu_ps(b.add(v * 8))
                    };
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(*a.offset(i as isize * a_rs));
                    for (x, &bx) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(ai, bx, *x);
                    }
                }
                a = a.offset(a_ps);
                b = b.offset(b_rs);
            }
            for (i, row) in acc.iter().enumerate() {
                let ci = c.offset(i as isize * c_rs);
                for (v, &x) in row.iter().enumerate() {
                    if v + 1 == NV && !full {
                        _mm256_maskstore_ps(ci.add(v * 8), mask, x);
                    } else {
                        _mm256_storeu_ps(ci.add(v * 8), x);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.f32()).collect()
        }
    }

    /// Every ISA this machine runs.
    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.rank() <= detected().rank())
            .collect()
    }

    /// How an operand is laid out in its buffer.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Row-major, rows padded by `pad` elements.
        Rows { pad: usize },
        /// Column-major (a transposed row-major matrix), columns padded by `pad`.
        Cols { pad: usize },
        /// Neither stride is 1: every other element of a row-major matrix of double width.
        Strided,
    }

    impl Layout {
        fn random(rng: &mut Rng) -> Layout {
            match rng.below(5) {
                0 | 1 => Layout::Rows { pad: rng.below(3) },
                2 | 3 => Layout::Cols { pad: rng.below(3) },
                _ => Layout::Strided,
            }
        }
        /// (buffer length, row stride, column stride) of an `r x c` matrix.
        fn strides(self, r: usize, c: usize) -> (usize, isize, isize) {
            match self {
                Layout::Rows { pad } => (r * (c + pad), (c + pad) as isize, 1),
                Layout::Cols { pad } => (c * (r + pad), 1, (r + pad) as isize),
                Layout::Strided => (r * (2 * c + 1), 2 * c as isize + 1, 2),
            }
        }
    }

    /// A matrix in a buffer.
    struct Mat {
        buf: Vec<f32>,
        rs: isize,
        cs: isize,
    }

    impl Mat {
        fn random(rng: &mut Rng, r: usize, c: usize, layout: Layout) -> Mat {
            let (len, rs, cs) = layout.strides(r, c);
            Mat {
                buf: rng.vec(len.max(1)),
                rs,
                cs,
            }
        }
        fn at(&self, i: usize, j: usize) -> f32 {
            self.buf[(i as isize * self.rs + j as isize * self.cs) as usize]
        }
    }

    /// `c` computed by `sgemm_with`, `c` starting as `c0` (row stride `c_rs`).
    #[allow(clippy::too_many_arguments)]
    fn run(
        isa: Isa,
        m: usize,
        k: usize,
        n: usize,
        a: &Mat,
        b: &Mat,
        c0: &[f32],
        c_rs: usize,
        acc: bool,
    ) -> Vec<f32> {
        let mut c = c0.to_vec();
        let mut ws = vec![f32::NAN; workspace_len(m, k, n)];
        // SAFETY: the buffers cover the matrices their strides describe.
        unsafe {
            sgemm_with(
                isa,
                m,
                k,
                n,
                a.buf.as_ptr(),
                a.rs,
                a.cs,
                b.buf.as_ptr(),
                b.rs,
                b.cs,
                c.as_mut_ptr(),
                c_rs as isize,
                acc,
                ws.as_mut_ptr(),
            )
        };
        c
    }

    /// Checks one random product against an f64 reference, with the error bound of a
    /// sequential f32 sum, `(k + 2) * 2^-24 * sum |terms|`; elements of `c` outside the
    /// matrix (the row padding) must be untouched.
    fn check(rng: &mut Rng, isa: Isa, m: usize, k: usize, n: usize) {
        let (la, lb) = (Layout::random(rng), Layout::random(rng));
        let acc = rng.below(2) == 1;
        let a = Mat::random(rng, m, k, la);
        let b = Mat::random(rng, k, n, lb);
        let c_rs = n + rng.below(3);
        let c0 = rng.vec(m * c_rs);
        let c = run(isa, m, k, n, &a, &b, &c0, c_rs, acc);
        let what = format!("{isa:?} m={m} k={k} n={n} a={la:?} b={lb:?} acc={acc}");
        for i in 0..m {
            for j in 0..c_rs {
                let at = i * c_rs + j;
                if j >= n {
                    assert_eq!(c[at].to_bits(), c0[at].to_bits(), "{what}: padding");
                    continue;
                }
                let (mut s, mut abs) = if acc {
                    (c0[at] as f64, c0[at].abs() as f64)
                } else {
                    (0.0, 0.0)
                };
                for p in 0..k {
                    let t = a.at(i, p) as f64 * b.at(p, j) as f64;
                    s += t;
                    abs += t.abs();
                }
                let tol = (k + 2) as f64 * 2f64.powi(-24) * abs + 1e-30;
                let d = (c[at] as f64 - s).abs();
                assert!(
                    d <= tol,
                    "{what}: c[{i},{j}] = {} want {s} (tol {tol})",
                    c[at]
                );
            }
        }
    }

    /// Every `m, n` in `0..=40` (all tails of every tile), `k` cycling through `0..=40`, random
    /// layouts and `acc`, for every ISA.
    #[test]
    fn small_shapes_match_the_reference() {
        let mut rng = Rng(1);
        for isa in isas() {
            for m in 0..=40 {
                for n in 0..=40 {
                    let k = (m * 7 + n * 3 + 1) % 41;
                    check(&mut rng, isa, m, k, n);
                }
            }
        }
    }

    /// Depths across the `KC` blocks (`k` up to `2 * KC + 1`) for a few small tiles.
    #[test]
    fn depth_sweep_matches_the_reference() {
        let mut rng = Rng(2);
        for isa in isas() {
            for k in (0..=2 * KC + 1)
                .step_by(7)
                .chain([KC - 1, KC, KC + 1, 2 * KC])
            {
                let m = 1 + rng.below(13);
                let n = 1 + rng.below(40);
                check(&mut rng, isa, m, k, n);
            }
        }
    }

    /// Larger shapes: several `KC` and `NC` blocks, the workload shapes' layouts.
    #[test]
    fn large_shapes_match_the_reference() {
        let mut rng = Rng(3);
        for isa in isas() {
            for (m, k, n) in [
                (64, 784, 128),
                (17, 300, 1100),
                (100, 600, 70),
                (9, 676, 32),
                (130, 9, 33),
                (33, 64, 530),
                (64, 128, 10),
            ] {
                check(&mut rng, isa, m, k, n);
            }
        }
    }

    /// `k == 0`: `c = 0`, or unchanged when accumulating; `m == 0` or `n == 0`: untouched.
    #[test]
    fn empty_products() {
        for isa in isas() {
            let mut c = vec![5.0f32; 12];
            let none: *const f32 = std::ptr::null();
            // SAFETY: nothing of `a`, `b` or the workspace is read when `k == 0`.
            unsafe {
                sgemm_with(
                    isa,
                    3,
                    0,
                    4,
                    none,
                    0,
                    0,
                    none,
                    0,
                    0,
                    c.as_mut_ptr(),
                    4,
                    true,
                    std::ptr::null_mut(),
                );
                assert_eq!(c, [5.0; 12]);
                sgemm_with(
                    isa,
                    3,
                    0,
                    4,
                    none,
                    0,
                    0,
                    none,
                    0,
                    0,
                    c.as_mut_ptr(),
                    4,
                    false,
                    std::ptr::null_mut(),
                );
                assert_eq!(c, [0.0; 12]);
                c.fill(5.0);
                sgemm_with(
                    isa,
                    0,
                    5,
                    4,
                    none,
                    0,
                    0,
                    none,
                    0,
                    0,
                    c.as_mut_ptr(),
                    4,
                    false,
                    std::ptr::null_mut(),
                );
                sgemm_with(
                    isa,
                    3,
                    5,
                    0,
                    none,
                    0,
                    0,
                    none,
                    0,
                    0,
                    c.as_mut_ptr(),
                    4,
                    false,
                    std::ptr::null_mut(),
                );
                assert_eq!(c, [5.0; 12]);
            }
        }
        assert_eq!(workspace_len(0, 5, 5), 0);
        assert_eq!(workspace_len(5, 0, 5), 0);
        assert_eq!(workspace_len(5, 5, 0), 0);
    }

    /// Blocks of rows and of columns of `c` computed alone are bitwise equal to the same
    /// elements of the whole product, for every ISA, both layouts of `a` and `b`, with and
    /// without `acc`; AVX-512 and AVX2 (both FMA) agree bitwise.
    #[test]
    fn row_and_column_blocks_are_bitwise_equal_to_the_whole() {
        let mut rng = Rng(4);
        for (m, k, n) in [(64, 784, 128), (37, 300, 45), (13, 9, 70), (50, 600, 530)] {
            for (la, lb) in [
                (Layout::Rows { pad: 0 }, Layout::Rows { pad: 0 }),
                (Layout::Cols { pad: 0 }, Layout::Cols { pad: 1 }),
                (Layout::Strided, Layout::Rows { pad: 0 }),
            ] {
                let a = Mat::random(&mut rng, m, k, la);
                let b = Mat::random(&mut rng, k, n, lb);
                let c0 = rng.vec(m * n);
                for acc in [false, true] {
                    let mut fma_result: Option<Vec<f32>> = None;
                    for isa in isas() {
                        let whole = run(isa, m, k, n, &a, &b, &c0, n, acc);
                        if isa != Isa::Portable {
                            if let Some(r) = &fma_result {
                                assert!(bitwise_eq(r, &whole), "{isa:?} vs another FMA ISA");
                            }
                            fma_result = Some(whole.clone());
                        }
                        // row blocks: a[lo..hi] x b into c[lo..hi]
                        let cuts = [0, 1, 5, m / 3, m / 2 + 1, m - 1, m];
                        for w in cuts.windows(2) {
                            let (lo, hi) = (w[0].min(m), w[1].min(m));
                            if lo >= hi {
                                continue;
                            }
                            let sub = Mat {
                                buf: a.buf[(lo as isize * a.rs) as usize..].to_vec(),
                                rs: a.rs,
                                cs: a.cs,
                            };
                            let part =
                                run(isa, hi - lo, k, n, &sub, &b, &c0[lo * n..hi * n], n, acc);
                            assert!(
                                bitwise_eq(&part, &whole[lo * n..hi * n]),
                                "{isa:?} {m}x{k}x{n} {la:?} {lb:?} acc={acc}: rows {lo}..{hi}"
                            );
                        }
                        // column blocks: a x b[:, lo..hi] into c[:, lo..hi] (row stride n)
                        let cuts = [0, 3, 17, n / 2 + 1, n - 1, n];
                        for w in cuts.windows(2) {
                            let (lo, hi) = (w[0].min(n), w[1].min(n));
                            if lo >= hi {
                                continue;
                            }
                            let sub = Mat {
                                buf: b.buf[(lo as isize * b.cs) as usize..].to_vec(),
                                rs: b.rs,
                                cs: b.cs,
                            };
                            let mut c = c0[lo..].to_vec();
                            let mut ws = vec![0.0f32; workspace_len(m, k, hi - lo)];
                            // SAFETY: `c` holds rows of stride `n` starting at column `lo`.
                            unsafe {
                                sgemm_with(
                                    isa,
                                    m,
                                    k,
                                    hi - lo,
                                    a.buf.as_ptr(),
                                    a.rs,
                                    a.cs,
                                    sub.buf.as_ptr(),
                                    sub.rs,
                                    sub.cs,
                                    c.as_mut_ptr(),
                                    n as isize,
                                    acc,
                                    ws.as_mut_ptr(),
                                )
                            };
                            for i in 0..m {
                                assert!(
                                    bitwise_eq(&c[i * n..i * n + hi - lo], &whole[i * n + lo..i * n + hi]),
                                    "{isa:?} {m}x{k}x{n} {la:?} {lb:?} acc={acc}: columns {lo}..{hi}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn bitwise_eq(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// The kernels write nothing past `workspace_len` (sentinels after it stay intact), at
    /// every alignment of the workspace pointer.
    #[test]
    fn workspace_bound_is_respected() {
        let mut rng = Rng(5);
        for isa in isas() {
            for (m, k, n) in [
                (1, 1, 1),
                (7, 3, 33),
                (64, 784, 128),
                (300, 257, 10),
                (9, 676, 32),
                (20, 40, 1100),
                (5, 600, 513),
            ] {
                for (la, lb) in [
                    (Layout::Rows { pad: 0 }, Layout::Rows { pad: 0 }),
                    (Layout::Cols { pad: 0 }, Layout::Cols { pad: 0 }),
                    (Layout::Rows { pad: 0 }, Layout::Strided),
                ] {
                    let a = Mat::random(&mut rng, m, k, la);
                    let b = Mat::random(&mut rng, k, n, lb);
                    let len = workspace_len(m, k, n);
                    assert!(len <= KC * NC + MR_MAX * KC + ALIGN_PAD);
                    for shift in 0..16 {
                        let mut ws = vec![0.0f32; shift + len + 64];
                        let sentinel = f32::from_bits(0x7fc0_1234);
                        ws[..shift].fill(sentinel);
                        ws[shift + len..].fill(sentinel);
                        let mut c = vec![0.0f32; m * n];
                        // SAFETY: the buffers cover the matrices; `len` elements of workspace.
                        unsafe {
                            sgemm_with(
                                isa,
                                m,
                                k,
                                n,
                                a.buf.as_ptr(),
                                a.rs,
                                a.cs,
                                b.buf.as_ptr(),
                                b.rs,
                                b.cs,
                                c.as_mut_ptr(),
                                n as isize,
                                false,
                                ws.as_mut_ptr().add(shift),
                            )
                        };
                        let untouched = ws[..shift]
                            .iter()
                            .chain(&ws[shift + len..])
                            .all(|x| x.to_bits() == sentinel.to_bits());
                        assert!(untouched, "{isa:?} {m}x{k}x{n} shift {shift}");
                    }
                }
            }
        }
    }

    /// `detected` is stable, and asking for an ISA above it runs the detected one.
    #[test]
    fn isa_fallback() {
        assert_eq!(detected(), detected());
        let mut rng = Rng(6);
        let a = Mat::random(&mut rng, 5, 7, Layout::Rows { pad: 0 });
        let b = Mat::random(&mut rng, 7, 9, Layout::Rows { pad: 0 });
        let want = run(detected(), 5, 7, 9, &a, &b, &[0.0; 45], 9, false);
        let got = run(Isa::Avx512, 5, 7, 9, &a, &b, &[0.0; 45], 9, false);
        assert!(bitwise_eq(&want, &got));
    }
}
