//! Deterministic parameter initialization: a small seeded generator (SplitMix64) and the
//! values of each [`Init`]. The same init, seed and shape give the same values on every
//! machine and in every version (no dependency on an external RNG's stream).

use crate::op::Init;
use crate::shape::Shape;

/// SplitMix64: a tiny, well-mixed, seedable generator. Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Keras' fan-in and fan-out of a weight shape: `[in, out]` for dense kernels, `[kh, kw, in,
/// out]` (HWIO) for conv filters (times the receptive field), `n` for vectors, 1 for scalars.
pub fn fans(shape: &Shape) -> (f64, f64) {
    let d = shape.dims();
    match d.len() {
        0 => (1.0, 1.0),
        1 => (d[0] as f64, d[0] as f64),
        2 => (d[0] as f64, d[1] as f64),
        _ => {
            let receptive: usize = d[..d.len() - 2].iter().product();
            (
                (receptive * d[d.len() - 2]) as f64,
                (receptive * d[d.len() - 1]) as f64,
            )
        }
    }
}

/// The initial values of a tensor of `shape` under `init`, row-major, in f64.
pub fn values(init: &Init, shape: &Shape) -> Vec<f64> {
    let n = shape.numel();
    let (fan_in, fan_out) = fans(shape);
    match *init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Constant { value } => vec![value; n],
        Init::Uniform { low, high, seed } => {
            let mut r = Rng::new(seed);
            (0..n).map(|_| low + (high - low) * r.uniform()).collect()
        }
        Init::Normal { mean, stddev, seed } => {
            let mut r = Rng::new(seed);
            (0..n).map(|_| mean + stddev * r.normal()).collect()
        }
        Init::GlorotUniform { seed } => {
            let limit = (6.0 / (fan_in + fan_out).max(1.0)).sqrt();
            let mut r = Rng::new(seed);
            (0..n).map(|_| limit * (2.0 * r.uniform() - 1.0)).collect()
        }
        Init::HeNormal { seed } => {
            let stddev = (2.0 / fan_in.max(1.0)).sqrt();
            let mut r = Rng::new(seed);
            (0..n).map(|_| stddev * r.normal()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_inits_are_deterministic_and_scaled() {
        let s = Shape(vec![300, 200]);
        let a = values(&Init::GlorotUniform { seed: 7 }, &s);
        assert_eq!(a, values(&Init::GlorotUniform { seed: 7 }, &s));
        assert_ne!(a, values(&Init::GlorotUniform { seed: 8 }, &s));
        let limit = (6.0f64 / 500.0).sqrt();
        assert!(a.iter().all(|v| v.abs() <= limit));
        let h = values(&Init::HeNormal { seed: 1 }, &s);
        let var = h.iter().map(|v| v * v).sum::<f64>() / h.len() as f64;
        assert!(
            (var - 2.0 / 300.0).abs() < 0.1 * 2.0 / 300.0,
            "variance {var}"
        );
        let u = values(
            &Init::Uniform {
                low: 2.0,
                high: 3.0,
                seed: 3,
            },
            &s,
        );
        assert!(u.iter().all(|v| (2.0..3.0).contains(v)));
    }
}
