//! Property tests of the reference interpreter's layout ops on random shapes: broadcasting,
//! transpose, reduce, slice, concat and softmax against independent coordinate-by-coordinate
//! formulas (unravel the flat index, map the coordinates, ravel again).

use gradlift::interp::{eval, Array};
use gradlift::{BinaryOp, Graph, NodeId, Op, ReduceOp, Shape, TensorType};
use proptest::prelude::*;
use std::collections::HashMap;

/// Row-major coordinates of flat index `k` in `dims`.
fn unravel(mut k: usize, dims: &[usize]) -> Vec<usize> {
    let mut c = vec![0; dims.len()];
    for i in (0..dims.len()).rev() {
        c[i] = k % dims[i];
        k /= dims[i];
    }
    c
}

/// Flat index of coordinates `c` in `dims`.
fn ravel(c: &[usize], dims: &[usize]) -> usize {
    c.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// Evaluates `op` (f64) on inputs of the given shapes and values.
fn run(op: Op, operands: &[(Vec<usize>, Vec<f64>)]) -> Array<f64> {
    let mut g = Graph::new("p");
    let mut feeds = HashMap::new();
    let mut ids: Vec<NodeId> = Vec::new();
    for (k, (s, d)) in operands.iter().enumerate() {
        let id = g
            .input(&format!("x{k}"), TensorType::f32(s.clone()))
            .unwrap();
        feeds.insert(id, Array::new(s.clone(), d.clone()).unwrap());
        ids.push(id);
    }
    let y = g.add(op, &ids).unwrap();
    eval(&g, &feeds).unwrap().get(y).unwrap().clone()
}

fn values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-10.0f64..10.0, n)
}

fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 0..=max_rank)
}

/// A shape and values for it.
fn tensor(max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<f64>)> {
    shape(max_rank).prop_flat_map(|s| {
        let n = s.iter().product();
        (Just(s), values(n))
    })
}

/// An output shape and two operand shapes that broadcast to it: each operand is a target
/// shape with some leading dimensions dropped and some others set to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    shape(4)
        .prop_flat_map(|out| {
            let r = out.len();
            let operand = (0..=r, prop::collection::vec(any::<bool>(), r)).prop_map({
                let out = out.clone();
                move |(drop, ones)| {
                    (drop..r)
                        .map(|i| if ones[i] { 1 } else { out[i] })
                        .collect::<Vec<_>>()
                }
            });
            (operand.clone(), operand)
        })
        .prop_map(|(a, b)| {
            // Each dimension is either the target's or 1, so the broadcast takes the larger one.
            let r = a.len().max(b.len());
            let dim = |s: &[usize], i: usize| {
                if i + s.len() >= r {
                    s[i + s.len() - r]
                } else {
                    1
                }
            };
            let out = (0..r).map(|i| dim(&a, i).max(dim(&b, i))).collect();
            (out, a, b)
        })
}

/// The element of `x` (shape `xs`) that numpy broadcasting maps to coordinates `c` of `out`.
fn broadcast_read(x: &[f64], xs: &[usize], c: &[usize]) -> f64 {
    let pad = c.len() - xs.len();
    let xc: Vec<usize> = (0..xs.len())
        .map(|i| if xs[i] == 1 { 0 } else { c[pad + i] })
        .collect();
    x[ravel(&xc, xs)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn binary_broadcasting_matches_numpy(
        (out, sa, sb) in broadcast_pair(),
        seed in values(200),
    ) {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let a: Vec<f64> = seed.iter().cycle().take(na).copied().collect();
        let b: Vec<f64> = seed.iter().rev().cycle().take(nb).copied().collect();
        let y = run(Op::Binary(BinaryOp::Sub), &[(sa.clone(), a.clone()), (sb.clone(), b.clone())]);
        prop_assert_eq!(&y.shape.0, &out);
        for (k, &v) in y.data.iter().enumerate() {
            let c = unravel(k, &out);
            prop_assert_eq!(v, broadcast_read(&a, &sa, &c) - broadcast_read(&b, &sb, &c));
        }
        // The broadcast op agrees with the same rule.
        let y = run(Op::Broadcast { shape: Shape(out.clone()) }, &[(sa.clone(), a.clone())]);
        for (k, &v) in y.data.iter().enumerate() {
            prop_assert_eq!(v, broadcast_read(&a, &sa, &unravel(k, &out)));
        }
    }

    #[test]
    fn transpose_matches_formula(
        (xs, x, perm) in tensor(4).prop_flat_map(|(s, d)| {
            let r = s.len();
            (Just(s), Just(d), Just((0..r).collect::<Vec<_>>()).prop_shuffle())
        })
    ) {
        let y = run(Op::Transpose { perm: perm.clone() }, &[(xs.clone(), x.clone())]);
        let ys: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
        prop_assert_eq!(&y.shape.0, &ys);
        for (k, &v) in y.data.iter().enumerate() {
            let c = unravel(k, &ys);
            let mut xc = vec![0; xs.len()];
            for (i, &p) in perm.iter().enumerate() {
                xc[p] = c[i];
            }
            prop_assert_eq!(v, x[ravel(&xc, &xs)]);
        }
    }

    #[test]
    fn reductions_match_naive_accumulation(
        (xs, x, mask) in tensor(4).prop_flat_map(|(s, d)| {
            let r = s.len();
            (Just(s), Just(d), prop::collection::vec(any::<bool>(), r))
        }),
        keepdims in any::<bool>(),
    ) {
        let axes: Vec<usize> = (0..xs.len()).filter(|&i| mask[i]).collect();
        let kept: Vec<usize> = (0..xs.len()).map(|i| if mask[i] { 1 } else { xs[i] }).collect();
        let n_out: usize = kept.iter().product();
        let mut sum = vec![0.0; n_out];
        let mut max = vec![f64::NEG_INFINITY; n_out];
        for (k, &v) in x.iter().enumerate() {
            let mut c = unravel(k, &xs);
            for &a in &axes {
                c[a] = 0;
            }
            let o = ravel(&c, &kept);
            sum[o] += v;
            max[o] = max[o].max(v);
        }
        let count = (x.len() / n_out) as f64;
        let out_shape: Vec<usize> = if keepdims {
            kept.clone()
        } else {
            (0..xs.len()).filter(|&i| !mask[i]).map(|i| xs[i]).collect()
        };
        for (kind, expected) in [
            (ReduceOp::Sum, sum.clone()),
            (ReduceOp::Mean, sum.iter().map(|s| s / count).collect()),
            (ReduceOp::Max, max.clone()),
        ] {
            let op = Op::Reduce { kind, axes: axes.clone(), keepdims };
            let y = run(op, &[(xs.clone(), x.clone())]);
            prop_assert_eq!(&y.shape.0, &out_shape);
            for (a, b) in y.data.iter().zip(&expected) {
                prop_assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn slice_matches_formula(
        (xs, x, bounds) in tensor(4).prop_flat_map(|(s, d)| {
            let b = s.iter().map(|&n| (0..=n, 0..=n)).collect::<Vec<_>>();
            (Just(s), Just(d), b)
        })
    ) {
        let begin: Vec<usize> = bounds.iter().map(|&(a, b)| a.min(b)).collect();
        let end: Vec<usize> = bounds.iter().map(|&(a, b)| a.max(b)).collect();
        let y = run(Op::Slice { begin: begin.clone(), end: end.clone() }, &[(xs.clone(), x.clone())]);
        let ys: Vec<usize> = begin.iter().zip(&end).map(|(b, e)| e - b).collect();
        prop_assert_eq!(&y.shape.0, &ys);
        for (k, &v) in y.data.iter().enumerate() {
            let c: Vec<usize> = unravel(k, &ys).iter().zip(&begin).map(|(c, b)| c + b).collect();
            prop_assert_eq!(v, x[ravel(&c, &xs)]);
        }
    }

    #[test]
    fn concat_then_slice_gives_the_operands_back(
        (base, axis, sizes) in prop::collection::vec(1usize..4, 1..=3).prop_flat_map(|s| {
            let r = s.len();
            (Just(s), 0..r, prop::collection::vec(0usize..3, 1..=3))
        }),
        seed in values(300),
    ) {
        let mut operands = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let mut s = base.clone();
            s[axis] = n;
            let len: usize = s.iter().product();
            let d: Vec<f64> = seed.iter().skip(k * 7).cycle().take(len).copied().collect();
            operands.push((s, d));
        }
        let y = run(Op::Concat { axis }, &operands);
        let total: usize = sizes.iter().sum();
        prop_assert_eq!(y.shape.0[axis], total);
        let mut start = 0;
        for (s, d) in &operands {
            for (k, &v) in d.iter().enumerate() {
                let mut c = unravel(k, s);
                c[axis] += start;
                prop_assert_eq!(y.data[ravel(&c, &y.shape.0)], v);
            }
            start += s[axis];
        }
    }

    #[test]
    fn softmax_matches_formula_on_any_axis(
        (xs, x, axis) in tensor(3).prop_filter("rank >= 1", |(s, _)| !s.is_empty())
            .prop_flat_map(|(s, d)| { let r = s.len(); (Just(s), Just(d), 0..r) })
    ) {
        let y = run(Op::Softmax { axis }, &[(xs.clone(), x.clone())]);
        let ly = run(Op::LogSoftmax { axis }, &[(xs.clone(), x.clone())]);
        for k in 0..x.len() {
            let c = unravel(k, &xs);
            let denom: f64 = (0..xs[axis])
                .map(|j| {
                    let mut cj = c.clone();
                    cj[axis] = j;
                    x[ravel(&cj, &xs)].exp()
                })
                .sum();
            let expected = x[k].exp() / denom;
            prop_assert!((y.data[k] - expected).abs() < 1e-12);
            prop_assert!((ly.data[k] - expected.ln()).abs() < 1e-12);
        }
    }
}

/// A random max-pool geometry that fits: (x shape, window, stride).
fn pool_geometry() -> impl Strategy<Value = (Vec<usize>, [usize; 2], [usize; 2])> {
    (
        1usize..3,
        1usize..7,
        1usize..7,
        1usize..3,
        1usize..4,
        1usize..4,
        1usize..3,
        1usize..3,
    )
        .prop_filter("window fits", |&(_, h, w, _, wh, ww, _, _)| {
            wh <= h && ww <= w
        })
        .prop_map(|(n, h, w, c, wh, ww, sh, sw)| (vec![n, h, w, c], [wh, ww], [sh, sw]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `<max_pool2d(x), dy> == <x, max_pool2d_grad(x, dy)>`: each dy goes to an element equal
    /// to its window's maximum. Small integer values make ties frequent.
    #[test]
    fn max_pool_grad_is_the_adjoint_of_the_selection(
        (xs, window, stride) in pool_geometry(),
        seed in prop::collection::vec(-3i32..3, 300),
    ) {
        let n: usize = xs.iter().product();
        let x: Vec<f64> = seed.iter().cycle().take(n).map(|&v| v as f64).collect();
        let y = run(Op::MaxPool2d { window, stride }, &[(xs.clone(), x.clone())]);
        let dy: Vec<f64> = (0..y.data.len()).map(|k| 1.0 + (k % 5) as f64).collect();
        let dx = run(
            Op::MaxPool2dGrad { window, stride },
            &[(xs.clone(), x.clone()), (y.shape.0.clone(), dy.clone())],
        );
        prop_assert_eq!(&dx.shape.0, &xs);
        let lhs: f64 = y.data.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx.data).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() < 1e-9, "{lhs} vs {rhs}");
        // All of dy is routed somewhere.
        let total: f64 = dx.data.iter().sum();
        prop_assert!((total - dy.iter().sum::<f64>()).abs() < 1e-9);
        // Every pooled value is the maximum of its window, computed directly.
        let [_, h, w, c] = [xs[0], xs[1], xs[2], xs[3]];
        let ys = &y.shape.0;
        for (k, &v) in y.data.iter().enumerate() {
            let [b, oy, ox, ch] = [0, 1, 2, 3].map(|i| unravel(k, ys)[i]);
            let mut m = f64::NEG_INFINITY;
            for ky in 0..window[0] {
                for kx in 0..window[1] {
                    let r = oy * stride[0] + ky;
                    let q = ox * stride[1] + kx;
                    m = m.max(x[((b * h + r) * w + q) * c + ch]);
                }
            }
            prop_assert_eq!(v, m);
        }
    }

    /// The fused cross-entropies equal their definitions written with log_softmax and one_hot.
    #[test]
    fn cross_entropies_match_their_compositions(
        (n, c) in (1usize..4, 1usize..5),
        seed in values(64),
        raw_labels in prop::collection::vec(0usize..5, 4),
    ) {
        let logits: Vec<f64> = seed.iter().cycle().take(n * c).map(|v| v * 3.0).collect();
        let labels: Vec<f64> = raw_labels.iter().take(n).map(|&l| (l % c) as f64).collect();
        let mut g = Graph::new("ce");
        let x = g.input("x", TensorType::f32([n, c])).unwrap();
        let y = g.input("y", TensorType::i32([n])).unwrap();
        let sparse = g.sparse_softmax_cross_entropy(x, y).unwrap();
        let onehot = g.one_hot(y, c).unwrap();
        let dense = g.softmax_cross_entropy(x, onehot).unwrap();
        let ls = g.log_softmax(x, 1).unwrap();
        let prod = g.mul(onehot, ls).unwrap();
        let s = g.sum(prod, &[1], false).unwrap();
        let manual = g.neg(s).unwrap();
        let mut feeds = HashMap::new();
        feeds.insert(x, Array::<f64>::new([n, c], logits).unwrap());
        feeds.insert(y, Array::<f64>::new([n], labels).unwrap());
        let v = eval(&g, &feeds).unwrap();
        let m = v.get(manual).unwrap();
        for id in [sparse, dense] {
            let d = v.get(id).unwrap().max_abs_diff(m).unwrap();
            prop_assert!(d < 1e-12, "differs by {d}");
        }
    }
}
