//! Inline math of elementwise ops on register values (scalars or vectors): unary ops, the
//! Cephes polynomials of `exp`, `tanh` and `log`, and binary ops.

use super::*;

impl<'a> Lowerer<'a> {
    /// The inline code of an elementwise unary op on a register value (a scalar or `f32x4`),
    /// shared by the plain unary lowering and fused kernels.
    pub(super) fn unary_value(&mut self, u: UnaryOp, x: Value, vector: bool) -> Value {
        match u {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            // relu(NaN) = NaN, as in the interpreter
            UnaryOp::Relu => {
                let z = self.fconst(0.0, vector);
                let keep = self.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, z);
                self.pick(keep, x, z)
            }
            UnaryOp::Sign => {
                let z = self.fconst(0.0, vector);
                let one = self.fconst(1.0, vector);
                let minus = self.fconst(-1.0, vector);
                let neg = self.b.ins().fcmp(FloatCC::LessThan, x, z);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                let r = self.pick(neg, minus, x);
                self.pick(pos, one, r)
            }
            UnaryOp::Exp => self.exp(x, vector),
            UnaryOp::Sigmoid => {
                // 1 / (1 + e^-x)
                let one = self.fconst(1.0, vector);
                let nx = self.b.ins().fneg(x);
                let e = self.exp(nx, vector);
                let d = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, d)
            }
            UnaryOp::Tanh => self.tanh(x, vector),
            UnaryOp::Log => self.log(x, vector),
            UnaryOp::Log1p => self.log1p(x, vector),
            UnaryOp::Expm1 => self.expm1(x, vector),
            UnaryOp::Erf => self.erf(x, vector),
            // calls per element (`OpClass::Elementwise { inline: false }`), lowered by
            // `lower.rs` and never part of a fused body, like `pow`
            UnaryOp::Sin | UnaryOp::Cos => x,
        }
    }

    /// `ln(1 + x)` inline (Goldberg's method): with `u = 1 + x` rounded, `ln(u) * x / (u - 1)`
    /// cancels the rounding of `u` (a few ulps), `x` itself where `u` rounds to 1, `u`'s
    /// logarithm where `u` is infinite; NaN below -1 and for NaN.
    pub(super) fn log1p(&mut self, x: Value, vector: bool) -> Value {
        let one = self.fconst(1.0, vector);
        let u = self.b.ins().fadd(one, x);
        let lu = self.log(u, vector);
        let um1 = self.b.ins().fsub(u, one);
        let q = self.b.ins().fdiv(x, um1);
        let r = self.b.ins().fmul(lu, q);
        let inf = self.fconst(f32::INFINITY, vector);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, u, inf);
        let r = self.pick(is_inf, lu, r);
        let tiny = self.b.ins().fcmp(FloatCC::Equal, u, one);
        self.pick(tiny, x, r)
    }

    /// `e^x - 1` inline (Kahan's method): with `u = e^x`, `(u - 1) * x / ln(u)` cancels the
    /// rounding of `u` (a few ulps), `x` where `u` rounds to 1, -1 where `u - 1` does, `u`
    /// where it is infinite; NaN for NaN.
    pub(super) fn expm1(&mut self, x: Value, vector: bool) -> Value {
        let one = self.fconst(1.0, vector);
        let u = self.exp(x, vector);
        let um1 = self.b.ins().fsub(u, one);
        let lu = self.log(u, vector);
        let q = self.b.ins().fdiv(x, lu);
        let r = self.b.ins().fmul(um1, q);
        let minus_one = self.fconst(-1.0, vector);
        let low = self.b.ins().fcmp(FloatCC::Equal, um1, minus_one);
        let r = self.pick(low, minus_one, r);
        let inf = self.fconst(f32::INFINITY, vector);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, u, inf);
        let r = self.pick(is_inf, u, r);
        let tiny = self.b.ins().fcmp(FloatCC::Equal, u, one);
        self.pick(tiny, x, r)
    }

    /// `erf(x)` inline: the rational minimax approximation `x P(x^2) / Q(x^2)` of Eigen and
    /// XLA on `x` clamped to [-4, 4] (erf is +-1 in f32 beyond). Max relative error 4.2e-7
    /// against f64 (`tests/codegen_math.rs`); NaN stays NaN.
    pub(super) fn erf(&mut self, x: Value, vector: bool) -> Value {
        let xc = self.clamp_above(x, 4.0, vector);
        let xc = self.clamp_below(xc, -4.0, vector);
        let x2 = self.b.ins().fmul(xc, xc);
        let p = self.poly(
            x2,
            &[
                -2.726_142_3e-10,
                2.770_681_4e-8,
                -2.101_024e-6,
                -5.692_506_4e-5,
                -7.349_906_3e-4,
                -2.954_6e-3,
                -1.609_603_3e-2,
            ],
            vector,
        );
        let q = self.poly(
            x2,
            &[
                -1.456_607_2e-5,
                -2.133_740_6e-4,
                -1.682_827e-3,
                -7.373_329_2e-3,
                -1.426_473_9e-2,
            ],
            vector,
        );
        // x * (P / Q): the ratio first, so a tiny x does not make a denormal numerator
        let r = self.b.ins().fdiv(p, q);
        self.b.ins().fmul(xc, r)
    }

    /// Horner evaluation of `c[0] * x^(n-1) + .. + c[n-1]`.
    pub(super) fn poly(&mut self, x: Value, c: &[f32], vector: bool) -> Value {
        let mut y = self.fconst(c[0], vector);
        for &k in &c[1..] {
            let k = self.fconst(k, vector);
            y = self.mul_add(y, x, k);
        }
        y
    }

    /// `e^x` inline (scalar or `f32x4`), Cephes `expf`: `x = n ln2 + r` with `|r| <= ln2/2`,
    /// a degree-6 polynomial for `e^r`, and `2^n` built in the exponent bits. About 1 ulp over
    /// the float range (denormal results included), 0 below -104, inf above `ln(f32::MAX)`,
    /// NaN stays NaN.
    pub(super) fn exp(&mut self, x: Value, vector: bool) -> Value {
        let hi = 88.722_84;
        let xc = self.clamp_above(x, hi, vector);
        let xc = self.clamp_below(xc, -104.0, vector);
        let y = self.exp_clamped(xc, vector, true);
        // beyond the largest finite result
        let hi = self.fconst(hi, vector);
        let over = self.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let inf = self.fconst(f32::INFINITY, vector);
        self.pick(over, inf, y)
    }

    /// `min(x, hi)` for `x` not NaN, `x` when it is NaN: a compare and a blend, where `fmin`
    /// is a 9-instruction sequence exact for NaN and signed zeros on x64.
    fn clamp_above(&mut self, x: Value, hi: f32, vector: bool) -> Value {
        self.clamp(x, hi, FloatCC::GreaterThan, vector)
    }

    /// `max(x, lo)` for `x` not NaN, `x` when it is NaN (see [`Self::clamp_above`]).
    fn clamp_below(&mut self, x: Value, lo: f32, vector: bool) -> Value {
        self.clamp(x, lo, FloatCC::LessThan, vector)
    }

    /// `bound` where `x cc bound`, else `x` (NaN compares false: it stays).
    fn clamp(&mut self, x: Value, bound: f32, cc: FloatCC, vector: bool) -> Value {
        let b = self.fconst(bound, vector);
        let beyond = self.b.ins().fcmp(cc, x, b);
        self.pick(beyond, b, x)
    }

    /// The body of [`Self::exp`] for `xc` in `[-104, ln(f32::MAX)]` (or NaN). `2^n` is applied
    /// in two factors `2^(n>>1) * 2^(n - n>>1)` when `wide` (each a normal float for `n` in
    /// `[-150, 128]`, so results near the float range and denormals come out right), else in
    /// one, which is exact for `n` in `[-126, 127]`, i.e. `xc` in about `[-87, 88]`.
    fn exp_clamped(&mut self, xc: Value, vector: bool, wide: bool) -> Value {
        let (fty, ity) = if vector {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        };
        let log2e = self.fconst(std::f32::consts::LOG2_E, vector);
        let half = self.fconst(0.5, vector);
        let fx = self.mul_add(xc, log2e, half);
        let n = self.b.ins().floor(fx);
        let c1 = self.fconst(-0.693_359_4, vector);
        let c2 = self.fconst(2.121_944_4e-4, vector);
        let r = self.mul_add(n, c1, xc);
        let r = self.mul_add(n, c2, r);
        let z = self.b.ins().fmul(r, r);
        let p = self.poly(
            r,
            &[
                1.987_569_1e-4,
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ],
            vector,
        );
        let y = self.mul_add(p, z, r);
        let one = self.fconst(1.0, vector);
        let mut y = self.b.ins().fadd(y, one);
        let flags = if vector {
            MemFlagsData::new().with_endianness(Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        // n as an integer: adding 1.5 * 2^23 leaves n (an integer, |n| < 2^22) in the low
        // mantissa bits; a plain add and subtract, where `fcvt_to_sint_sat` on `f32x4` is an
        // 8-instruction NaN-saturating sequence on x64 (a NaN `n` gives garbage here, but
        // then `y` is NaN already)
        let magic = self.fconst(12_582_912.0, vector);
        let biased = self.b.ins().fadd(n, magic);
        let biased = self.b.ins().bitcast(ity, flags, biased);
        let magic_bits = self.iconst32(0x4b40_0000, vector);
        let ni = self.b.ins().isub(biased, magic_bits);
        let halves = if wide {
            let n1 = self.b.ins().sshr_imm_s(ni, 1);
            let n2 = self.b.ins().isub(ni, n1);
            vec![n1, n2]
        } else {
            vec![ni]
        };
        let bias = self.b.ins().iconst(types::I32, 127);
        let bias = if vector {
            self.b.ins().splat(ity, bias)
        } else {
            bias
        };
        for h in halves {
            let e = self.b.ins().iadd(h, bias);
            let e = self.b.ins().ishl_imm_s(e, 23);
            let pow2 = self.b.ins().bitcast(fty, flags, e);
            y = self.b.ins().fmul(y, pow2);
        }
        y
    }

    /// `tanh(x)` inline, Cephes `tanhf`: an odd polynomial for `|x| < 0.625`, else
    /// `(1 - e^-2|x|) / (1 + e^-2|x|)` with the sign of `x`.
    pub(super) fn tanh(&mut self, x: Value, vector: bool) -> Value {
        let ax = self.b.ins().fabs(x);
        let m2 = self.fconst(-2.0, vector);
        let t = self.b.ins().fmul(ax, m2);
        // tanh rounds to +-1 for |x| > 9 (e^-18 is below half an ulp of 1), so e^-2|x| is
        // needed only down to e^-20, where 2^n is one normal factor: the result is bit for bit
        // that of the full-range `exp`, with a shorter dependency chain
        let t = self.clamp_below(t, -20.0, vector);
        let e = self.exp_clamped(t, vector, false);
        let one = self.fconst(1.0, vector);
        let num = self.b.ins().fsub(one, e);
        let den = self.b.ins().fadd(one, e);
        let big = self.b.ins().fdiv(num, den);
        // the sign of x, or'ed into `big` >= 0 (fcopysign has no f32x4 lowering on x64)
        let sign_bit = self.fconst(-0.0, vector);
        let sign = self.b.ins().band(x, sign_bit);
        let big = self.b.ins().bor(big, sign);
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(
            z,
            &[
                -5.704_988_7e-3,
                2.063_909e-2,
                -5.373_971_6e-2,
                0.133_314_42,
                -0.333_332_8,
            ],
            vector,
        );
        let xz = self.b.ins().fmul(x, z);
        let small = self.mul_add(xz, p, x);
        let lim = self.fconst(0.625, vector);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, lim);
        self.pick(is_small, small, big)
    }

    /// An `i32` constant, as a scalar or splat over `i32x4`.
    pub(super) fn iconst32(&mut self, v: i32, vector: bool) -> Value {
        let c = self.b.ins().iconst(types::I32, i64::from(v));
        if vector {
            self.b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    /// `ln(x)` inline (scalar or `f32x4`), Cephes `logf`: `x = 2^k m` with `m` in
    /// `[sqrt(1/2), sqrt(2))` read from the bits, `ln(m) = f - f^2/2 + f^3 P(f)` with `f = m - 1`
    /// (degree-8 minimax `P`), plus `k ln2` in two parts. Max relative error 8.2e-8 (1 ulp)
    /// against f64, measured over every positive f32 (`tests/codegen_math.rs`). Denormal inputs are scaled by
    /// 2^23 first; `ln(+-0) = -inf`, `ln(x < 0) = NaN`, `ln(NaN) = NaN`, `ln(inf) = inf`.
    pub(super) fn log(&mut self, x: Value, vector: bool) -> Value {
        let (fty, ity) = if vector {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        };
        let flags = if vector {
            MemFlagsData::new().with_endianness(Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        // denormals (and zero, negatives, NaN: replaced at the end) times 2^23 are normal
        let min_normal = self.fconst(f32::MIN_POSITIVE, vector);
        let tiny = self.b.ins().fcmp(FloatCC::LessThan, x, min_normal);
        let two23 = self.fconst(8_388_608.0, vector);
        let scaled = self.b.ins().fmul(x, two23);
        let xs = self.pick(tiny, scaled, x);
        let m23 = self.fconst(-23.0, vector);
        let zero = self.fconst(0.0, vector);
        let kadj = self.pick(tiny, m23, zero);
        // exponent and mantissa: with the bits offset by 1.0 - sqrt(1/2), the exponent field
        // steps at sqrt(1/2) * 2^k instead of 2^k (musl's `logf` trick)
        const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
        let bits = self.b.ins().bitcast(ity, flags, xs);
        let off = self.iconst32(0x3f80_0000 - SQRT_HALF_BITS, vector);
        let ix = self.b.ins().iadd(bits, off);
        let k = self.b.ins().sshr_imm_s(ix, 23);
        let bias = self.iconst32(127, vector);
        let k = self.b.ins().isub(k, bias);
        let frac = self.iconst32(0x007f_ffff, vector);
        let mbits = self.b.ins().band(ix, frac);
        let sqrt_half = self.iconst32(SQRT_HALF_BITS, vector);
        let mbits = self.b.ins().iadd(mbits, sqrt_half);
        let m = self.b.ins().bitcast(fty, flags, mbits);
        let one = self.fconst(1.0, vector);
        let f = self.b.ins().fsub(m, one);
        let kf = self.b.ins().fcvt_from_sint(fty, k);
        let kf = self.b.ins().fadd(kf, kadj);
        // ln(1 + f) = f - f^2/2 + f^3 P(f)
        let z = self.b.ins().fmul(f, f);
        let p = self.poly(
            f,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_84e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_7e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
            vector,
        );
        let fz = self.b.ins().fmul(f, z);
        let y = self.b.ins().fmul(p, fz);
        // + k ln2 as k (ln2_hi + ln2_lo), ln2_hi exact in 9 bits so k ln2_hi is exact
        let ln2_lo = self.fconst(-2.121_944_4e-4, vector);
        let y = self.mul_add(kf, ln2_lo, y);
        let mhalf = self.fconst(-0.5, vector);
        let y = self.mul_add(z, mhalf, y);
        let r = self.b.ins().fadd(f, y);
        let ln2_hi = self.fconst(0.693_359_4, vector);
        let r = self.mul_add(kf, ln2_hi, r);
        // special values
        let inf = self.fconst(f32::INFINITY, vector);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        let r = self.pick(is_inf, inf, r);
        let ninf = self.fconst(f32::NEG_INFINITY, vector);
        let is_zero = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let r = self.pick(is_zero, ninf, r);
        let nan = self.fconst(f32::NAN, vector);
        let in_domain = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        self.pick(in_domain, r, nan)
    }

    pub(super) fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().fadd(a, b),
            BinaryOp::Sub => self.b.ins().fsub(a, b),
            BinaryOp::Mul => self.b.ins().fmul(a, b),
            BinaryOp::Div => self.b.ins().fdiv(a, b),
            // numpy maximum/minimum: NaN if either operand is NaN, ties to the first operand
            BinaryOp::Max => {
                let ge = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, a, b);
                let m = self.pick(ge, a, b);
                let a_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                self.pick(a_nan, a, m)
            }
            BinaryOp::Min => {
                let le = self.b.ins().fcmp(FloatCC::LessThanOrEqual, a, b);
                let m = self.pick(le, a, b);
                let a_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                self.pick(a_nan, a, m)
            }
            // lowered as a kernel call per element (see `node`)
            BinaryOp::Pow => a,
        }
    }
}
