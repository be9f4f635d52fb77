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
        Init::Orthogonal { seed } => orthogonal(shape, seed),
        Init::UnitForgetBias { units } => (0..n)
            .map(|i| {
                if (units..2 * units).contains(&i) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect(),
    }
}

/// Keras' `Orthogonal(gain=1)`: the shape as a matrix `[rows, cols]` (`cols` the last axis),
/// a seeded standard normal matrix of shape `[max, min]` made orthonormal column by column
/// (modified Gram-Schmidt, which is the Q of its QR decomposition with R's diagonal positive,
/// as Keras' sign correction makes it), transposed when `rows < cols`.
fn orthogonal(shape: &Shape, seed: u64) -> Vec<f64> {
    let d = shape.dims();
    let cols = d.last().copied().unwrap_or(1).max(1);
    let rows = (shape.numel() / cols).max(1);
    let (big, small) = (rows.max(cols), rows.min(cols));
    let mut r = Rng::new(seed);
    // column-major: column j is q[j * big..(j + 1) * big]
    let mut q: Vec<f64> = (0..big * small).map(|_| r.normal()).collect();
    for j in 0..small {
        for k in 0..j {
            let dot: f64 = (0..big).map(|i| q[j * big + i] * q[k * big + i]).sum();
            for i in 0..big {
                q[j * big + i] -= dot * q[k * big + i];
            }
        }
        let norm = (0..big).map(|i| q[j * big + i].powi(2)).sum::<f64>().sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        for i in 0..big {
            q[j * big + i] /= norm;
        }
    }
    let mut out = vec![0.0; shape.numel()];
    for i in 0..rows {
        for j in 0..cols {
            // element (i, j): q[i][j] when rows >= cols, else q^T
            out[i * cols + j] = if rows >= cols {
                q[j * big + i]
            } else {
                q[i * big + j]
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_rows_or_columns_are_orthonormal() {
        for dims in [vec![4, 4], vec![3, 12], vec![12, 3], vec![2, 3, 5]] {
            let s = Shape(dims.clone());
            let v = values(&Init::Orthogonal { seed: 3 }, &s);
            let cols = *dims.last().unwrap();
            let rows = s.numel() / cols;
            // the fewer of rows and columns, as vectors: they are orthonormal
            let vectors: Vec<Vec<f64>> = if rows >= cols {
                (0..cols)
                    .map(|j| (0..rows).map(|i| v[i * cols + j]).collect())
                    .collect()
            } else {
                (0..rows)
                    .map(|i| v[i * cols..(i + 1) * cols].to_vec())
                    .collect()
            };
            for (a, va) in vectors.iter().enumerate() {
                for (b, vb) in vectors.iter().enumerate() {
                    let dot: f64 = va.iter().zip(vb).map(|(x, y)| x * y).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12, "{dims:?}: <{a},{b}> = {dot}");
                }
            }
            assert_ne!(v, values(&Init::Orthogonal { seed: 4 }, &s));
        }
    }

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
