//! What the `autodiff_*` tests share: random values away from kinks, weighted-sum losses,
//! and the central-difference gradient check through the reference interpreter (f64).
//!
//! # Tolerance
//! Central differences with step `h = 1e-6 * max(1, |x|)` in f64 have truncation error
//! `h^2 |f'''| / 6`, about `2e-13 |f'''|`, and roundoff error about `eps * S / h` where
//! `eps = 1.1e-16` and `S` is the sum of the magnitudes of the terms of the loss (at most a few
//! hundred here): about `1e-8` in the worst case, `1e-10` typically. We accept
//! `|analytic - fd| <= ATOL + RTOL * max(|analytic|, |fd|)` with `ATOL = RTOL = 1e-6`: two
//! orders of magnitude above the expected error, and six below the size of the gradients
//! (order 0.1 to 10), so a wrong rule (a missing factor, a wrong sign, a misplaced element)
//! cannot pass. Inputs are drawn away from kinks (relu and abs at 0, ties of max/min, max-pool
//! ties) by more than the step, so the one-sided conventions there are never probed by FD.

use gradlift::autodiff;
use gradlift::init::Rng;
use gradlift::interp::{eval, Array};
use gradlift::{Graph, Literal, NodeId, Shape, TensorType};
use std::collections::HashMap;

/// Absolute part of the tolerance (see the module doc).
pub const ATOL: f64 = 1e-6;
/// Relative part of the tolerance (see the module doc).
pub const RTOL: f64 = 1e-6;
/// Relative step of the central differences.
pub const STEP: f64 = 1e-6;

/// Uniform values in `[lo, hi)`.
pub fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// Values with magnitude in `[0.1, 2)` and random sign: at least 0.1 away from 0.
pub fn away_from_zero(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = 0.1 + 1.9 * rng.uniform();
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect()
}

/// `n` distinct values, a shuffled grid `(2k + parity) * 0.05 - 0.05 n` plus a tiny jitter:
/// two values of one parity differ by about 0.1, values of different parities by 0.05 or more,
/// so maxima are unique and `max(a, b)` with `a` even and `b` odd never ties.
pub fn distinct(rng: &mut Rng, n: usize, parity: usize) -> Vec<f64> {
    let mut k: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        k.swap(i, j);
    }
    k.iter()
        .map(|&k| (2 * k + parity) as f64 * 0.05 - 0.05 * n as f64 + 0.001 * rng.uniform())
        .collect()
}

/// A differentiation problem: a graph, its scalar loss, the nodes to differentiate with
/// respect to, and values for every input (and any param to override).
pub struct Case {
    /// The forward graph.
    pub g: Graph,
    /// The scalar loss.
    pub loss: NodeId,
    /// The nodes to differentiate with respect to.
    pub wrt: Vec<NodeId>,
    /// Values of inputs (and overridden params).
    pub feeds: HashMap<NodeId, Array<f64>>,
}

impl Case {
    /// An empty case.
    pub fn new(name: &str) -> Case {
        Case {
            g: Graph::new(name),
            loss: NodeId(Default::default()),
            wrt: Vec::new(),
            feeds: HashMap::new(),
        }
    }

    /// A fed f32 input called `name` with `data`; differentiated against when `wrt`.
    pub fn input(&mut self, name: &str, shape: &[usize], data: Vec<f64>, wrt: bool) -> NodeId {
        let id = self
            .g
            .input(name, TensorType::f32(shape.to_vec()))
            .expect("input");
        self.feeds
            .insert(id, Array::new(shape.to_vec(), data).expect("data"));
        if wrt {
            self.wrt.push(id);
        }
        id
    }

    /// A fed i32 input (labels) called `name` with values `data`.
    pub fn labels(&mut self, name: &str, shape: &[usize], data: Vec<f64>) -> NodeId {
        let id = self
            .g
            .input(name, TensorType::i32(shape.to_vec()))
            .expect("labels");
        self.feeds
            .insert(id, Array::new(shape.to_vec(), data).expect("data"));
        id
    }

    /// Sets the loss to `sum(y * r)` for a fixed random `r` in `[-1, 1)` of `y`'s shape, so
    /// every output element has its own weight and a misplaced gradient element shows.
    pub fn weighted_sum_loss(&mut self, y: NodeId, rng: &mut Rng) {
        self.loss = weighted_sum(&mut self.g, y, rng);
    }
}

/// `sum(y * r)` over all axes, `r` a random constant of `y`'s shape.
pub fn weighted_sum(g: &mut Graph, y: NodeId, rng: &mut Rng) -> NodeId {
    let shape = g[y].ty.shape.clone();
    let r = g
        .constant(
            TensorType::f32(shape.clone()),
            Literal::Dense(uniform(rng, shape.numel(), -1.0, 1.0)),
        )
        .expect("const");
    let p = g.mul(y, r).expect("mul");
    let axes: Vec<usize> = (0..shape.rank()).collect();
    g.sum(p, &axes, false).expect("sum")
}

/// The scalar value of `loss` for `feeds`.
pub fn loss_value(g: &Graph, loss: NodeId, feeds: &HashMap<NodeId, Array<f64>>) -> f64 {
    let v = eval::<f64>(g, feeds).unwrap_or_else(|e| panic!("eval failed: {e}"));
    v.get(loss).expect("loss value").data[0]
}

/// The outcome of a gradient check: the largest error seen relative to the tolerance.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    /// Number of coordinates compared.
    pub checked: usize,
    /// Largest `|analytic - fd|`.
    pub max_abs_err: f64,
    /// Largest `|analytic - fd| / (ATOL + RTOL * max(|analytic|, |fd|))` (must be <= 1).
    pub max_ratio: f64,
}

/// Whether `a` (analytic) and `fd` agree within the tolerance; updates `r`.
pub fn agree(r: &mut Report, a: f64, fd: f64) -> bool {
    let err = (a - fd).abs();
    let ratio = err / (ATOL + RTOL * a.abs().max(fd.abs()));
    r.checked += 1;
    r.max_abs_err = r.max_abs_err.max(err);
    r.max_ratio = r.max_ratio.max(ratio);
    ratio <= 1.0 && a.is_finite()
}

/// Coordinates to check: all of them when there are at most `max`, else `max` random ones.
pub fn coords(rng: &mut Rng, n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        (0..n).collect()
    } else {
        (0..max).map(|_| rng.below(n as u64) as usize).collect()
    }
}

/// Differentiates `case` with `autodiff::grad` and compares every gradient with central
/// differences of the loss on up to `max_coords` coordinates per `wrt` node. Returns the
/// report, or a message naming the first disagreeing coordinate.
pub fn fd_check(case: &Case, max_coords: usize, rng: &mut Rng) -> Result<Report, String> {
    let mut g = case.g.clone();
    let grads = autodiff::grad(&mut g, case.loss, &case.wrt).map_err(|e| e.to_string())?;
    gradlift::verify::verify(&g).map_err(|e| format!("the gradient graph does not verify: {e}"))?;
    let values = eval::<f64>(&g, &case.feeds).map_err(|e| format!("eval: {e}"))?;
    let mut report = Report::default();
    for (&w, &d) in case.wrt.iter().zip(&grads) {
        let analytic = values.get(d).ok_or("no gradient value")?.clone();
        let base = match case.feeds.get(&w) {
            Some(a) => a.clone(),
            None => values.get(w).ok_or("no value for wrt")?.clone(),
        };
        if analytic.shape != base.shape {
            return Err(format!(
                "gradient of {:?} has shape {}, expected {}",
                case.g[w].name, analytic.shape, base.shape
            ));
        }
        for k in coords(rng, base.data.len(), max_coords) {
            let x = base.data[k];
            let h = STEP * x.abs().max(1.0);
            let mut feeds = case.feeds.clone();
            let mut plus = base.clone();
            plus.data[k] = x + h;
            feeds.insert(w, plus);
            let lp = loss_value(&case.g, case.loss, &feeds);
            let mut minus = base.clone();
            minus.data[k] = x - h;
            feeds.insert(w, minus);
            let lm = loss_value(&case.g, case.loss, &feeds);
            let fd = (lp - lm) / (2.0 * h);
            let a = analytic.data[k];
            if !agree(&mut report, a, fd) {
                return Err(format!(
                    "d loss / d {}[{k}]: autodiff {a}, central difference {fd} (|diff| {:e})",
                    case.g[w].name.as_deref().unwrap_or("?"),
                    (a - fd).abs()
                ));
            }
        }
    }
    Ok(report)
}

/// Builds `f(x)`-style helper shapes: the shape `s` with leading `drop` axes removed and the
/// axes flagged in `ones` set to 1 (a shape that broadcasts to `s`).
pub fn broadcastable_from(s: &[usize], drop: usize, ones: &[bool]) -> Vec<usize> {
    let drop = drop.min(s.len());
    s[drop..]
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if ones.get(i + drop).copied().unwrap_or(false) {
                1
            } else {
                d
            }
        })
        .collect()
}

/// Number of elements of a shape given as a slice.
pub fn numel(s: &[usize]) -> usize {
    Shape(s.to_vec()).numel()
}
