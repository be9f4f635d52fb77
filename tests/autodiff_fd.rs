//! Finite-difference checks of every VJP rule: random shapes and values (proptest), f64
//! central differences through the reference interpreter. The tolerance and why it is right
//! are in `common/fd.rs`. Each case builds `loss = sum(op(...) * r)` for a random
//! constant `r`, differentiates with respect to every f32 operand and compares.

mod common;

use common::fd::*;
use gradlift::init::Rng;
use gradlift::op::{OpClass, OpKind};
use gradlift::{BinaryOp, Op, Padding, ReduceOp, UnaryOp};
use proptest::prelude::*;

/// Coordinates compared per `wrt` node.
const COORDS: usize = 24;

fn check(case: &Case, rng: &mut Rng) -> Result<(), TestCaseError> {
    match fd_check(case, COORDS, rng) {
        Ok(r) => {
            if std::env::var_os("FD_REPORT").is_some() {
                eprintln!("{} {r:?}", case.g.name);
            }
            prop_assert!(r.checked > 0 || case.wrt.is_empty());
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(e)),
    }
}

fn shape_strategy(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 0..=max_rank)
}

/// Values suited to the domain of a unary op (positive for log/sqrt, away from 0 at kinks).
fn unary_values(u: UnaryOp, rng: &mut Rng, n: usize) -> Vec<f64> {
    match u {
        UnaryOp::Log | UnaryOp::Sqrt => uniform(rng, n, 0.5, 2.0),
        UnaryOp::Log1p => uniform(rng, n, -0.5, 2.0),
        UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign => away_from_zero(rng, n),
        _ => uniform(rng, n, -2.0, 2.0),
    }
}

/// Builds `a op b` on inputs of shapes `sa`, `sb` (values suited to the op).
fn binary_case(b: BinaryOp, sa: &[usize], sb: &[usize], seed: u64) -> (Case, Rng) {
    let mut rng = Rng::new(seed);
    let (na, nb) = (numel(sa), numel(sb));
    let (va, vb) = match b {
        BinaryOp::Max | BinaryOp::Min => (distinct(&mut rng, na, 0), distinct(&mut rng, nb, 1)),
        BinaryOp::Div => (
            uniform(&mut rng, na, -2.0, 2.0),
            away_from_zero(&mut rng, nb),
        ),
        BinaryOp::Pow => (
            uniform(&mut rng, na, 0.5, 2.0),
            uniform(&mut rng, nb, -2.0, 2.0),
        ),
        _ => (
            uniform(&mut rng, na, -2.0, 2.0),
            uniform(&mut rng, nb, -2.0, 2.0),
        ),
    };
    let mut c = Case::new("binary");
    let a = c.input("a", sa, va, true);
    let bb = c.input("b", sb, vb, true);
    let y = c.g.add(Op::Binary(b), &[a, bb]).unwrap();
    c.weighted_sum_loss(y, &mut rng);
    (c, rng)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn unary_ops(k in 0..UnaryOp::ALL.len(), shape in shape_strategy(3), seed in any::<u64>()) {
        let u = UnaryOp::ALL[k];
        let mut rng = Rng::new(seed);
        let mut c = Case::new("unary");
        let x = c.input("x", &shape, unary_values(u, &mut rng, numel(&shape)), true);
        let y = c.g.add(Op::Unary(u), &[x]).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn binary_ops_with_broadcasting(
        k in 0..BinaryOp::ALL.len(),
        out in shape_strategy(3),
        drop_a in 0usize..4,
        ones_a in prop::collection::vec(any::<bool>(), 3),
        drop_b in 0usize..4,
        ones_b in prop::collection::vec(any::<bool>(), 3),
        seed in any::<u64>(),
    ) {
        let sa = broadcastable_from(&out, drop_a, &ones_a);
        let sb = broadcastable_from(&out, drop_b, &ones_b);
        let (c, mut rng) = binary_case(BinaryOp::ALL[k], &sa, &sb, seed);
        check(&c, &mut rng)?;
    }

    #[test]
    fn select_with_broadcasting(
        out in shape_strategy(3),
        drops in prop::collection::vec(0usize..4, 3),
        ones in prop::collection::vec(prop::collection::vec(any::<bool>(), 3), 3),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let s: Vec<Vec<usize>> = (0..3).map(|i| broadcastable_from(&out, drops[i], &ones[i])).collect();
        let mut c = Case::new("select");
        let mask_vals = (0..numel(&s[0])).map(|_| if rng.uniform() < 0.5 { 0.0 } else { 1.0 }).collect();
        let m = c.input("m", &s[0], mask_vals, false);
        let a = c.input("a", &s[1], uniform(&mut rng, numel(&s[1]), -2.0, 2.0), true);
        let b = c.input("b", &s[2], uniform(&mut rng, numel(&s[2]), -2.0, 2.0), true);
        let y = c.g.select(m, a, b).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn reductions_over_any_axes(
        kind in 0..ReduceOp::ALL.len(),
        shape in prop::collection::vec(1usize..4, 1..=3),
        axes_mask in 0usize..8,
        keepdims in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let kind = ReduceOp::ALL[kind];
        let axes: Vec<usize> = (0..shape.len()).filter(|i| axes_mask & (1 << i) != 0).collect();
        let mut rng = Rng::new(seed);
        let vals = if kind == ReduceOp::Max {
            distinct(&mut rng, numel(&shape), 0)
        } else {
            uniform(&mut rng, numel(&shape), -2.0, 2.0)
        };
        let mut c = Case::new("reduce");
        let x = c.input("x", &shape, vals, true);
        let y = c.g.reduce(kind, x, &axes, keepdims).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn reshape_broadcast_transpose(
        shape in prop::collection::vec(1usize..4, 1..=3),
        perm_seed in any::<u64>(),
        lead in 1usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut c = Case::new("shape_ops");
        let x = c.input("x", &shape, uniform(&mut rng, numel(&shape), -2.0, 2.0), true);
        // transpose by a random permutation
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        let mut prng = Rng::new(perm_seed);
        for i in (1..perm.len()).rev() {
            perm.swap(i, prng.below(i as u64 + 1) as usize);
        }
        let t = c.g.transpose(x, &perm).unwrap();
        // reshape to 1-D and back to a 2-D shape
        let n = numel(&shape);
        let flat = c.g.reshape(t, [n]).unwrap();
        let r = c.g.reshape(flat, [1, n]).unwrap();
        // broadcast with new leading axis and the size-1 axis expanded
        let b = c.g.broadcast(r, [lead, 2, n]).unwrap();
        // a second use of x (fan-out) through a broadcast of a size-1-axis shape
        let x2 = c.g.reshape(x, [n, 1]).unwrap();
        let b2 = c.g.broadcast(x2, [n, 3]).unwrap();
        let y1 = c.g.tanh(b).unwrap();
        let l1 = weighted_sum(&mut c.g, y1, &mut rng);
        let l2 = weighted_sum(&mut c.g, b2, &mut rng);
        c.loss = c.g.add2(l1, l2).unwrap();
        check(&c, &mut rng)?;
    }

    #[test]
    fn matmul(m in 1usize..5, k in 1usize..5, n in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut c = Case::new("matmul");
        let a = c.input("a", &[m, k], uniform(&mut rng, m * k, -2.0, 2.0), true);
        let b = c.input("b", &[k, n], uniform(&mut rng, k * n, -2.0, 2.0), true);
        let y = c.g.matmul(a, b).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn conv2d_input_and_filter(
        n in 1usize..3, h in 3usize..7, w in 3usize..7, ci in 1usize..3, co in 1usize..3,
        kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..3,
        same in any::<bool>(), seed in any::<u64>(),
    ) {
        let padding = if same { Padding::Same } else { Padding::Valid };
        let mut rng = Rng::new(seed);
        let mut c = Case::new("conv");
        let x = c.input("x", &[n, h, w, ci], uniform(&mut rng, n * h * w * ci, -2.0, 2.0), true);
        let f = c.input("f", &[kh, kw, ci, co], uniform(&mut rng, kh * kw * ci * co, -1.0, 1.0), true);
        let y = c.g.conv2d(x, f, [sh, sw], padding).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    /// The backward ops are differentiable too (needed for second order through conv2d).
    #[test]
    fn conv2d_backward_ops(
        h in 3usize..6, w in 3usize..6, ci in 1usize..3, co in 1usize..3,
        kh in 1usize..3, kw in 1usize..3, sh in 1usize..3, sw in 1usize..3,
        same in any::<bool>(), seed in any::<u64>(),
    ) {
        let padding = if same { Padding::Same } else { Padding::Valid };
        let stride = [sh, sw];
        let mut rng = Rng::new(seed);
        let (oh, _) = padding.out_and_pad(h, kh, sh).unwrap();
        let (ow, _) = padding.out_and_pad(w, kw, sw).unwrap();
        let mut c = Case::new("conv_backward");
        let x = c.input("x", &[1, h, w, ci], uniform(&mut rng, h * w * ci, -2.0, 2.0), true);
        let f = c.input("f", &[kh, kw, ci, co], uniform(&mut rng, kh * kw * ci * co, -1.0, 1.0), true);
        let dy = c.input("dy", &[1, oh, ow, co], uniform(&mut rng, oh * ow * co, -1.0, 1.0), true);
        let dx = c.g.add(Op::Conv2dInputGrad { stride, padding, shape: vec![1, h, w, ci].into() }, &[dy, f]).unwrap();
        let dw = c.g.add(Op::Conv2dFilterGrad { stride, padding, kernel: [kh, kw] }, &[x, dy]).unwrap();
        let l1 = weighted_sum(&mut c.g, dx, &mut rng);
        let l2 = weighted_sum(&mut c.g, dw, &mut rng);
        c.loss = c.g.add2(l1, l2).unwrap();
        check(&c, &mut rng)?;
    }

    #[test]
    fn max_pool2d(
        n in 1usize..3, h in 2usize..7, w in 2usize..7, ch in 1usize..3,
        wh in 1usize..4, ww in 1usize..4, sh in 1usize..4, sw in 1usize..4,
        seed in any::<u64>(),
    ) {
        prop_assume!(wh <= h && ww <= w);
        let mut rng = Rng::new(seed);
        let mut c = Case::new("pool");
        let x = c.input("x", &[n, h, w, ch], distinct(&mut rng, n * h * w * ch, 0), true);
        let y = c.g.max_pool2d(x, [wh, ww], [sh, sw]).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    /// The backward op of max pooling, differentiated with respect to `dy` (needed for second
    /// order through max_pool2d; `x` only routes and has zero gradient).
    #[test]
    fn max_pool2d_grad_wrt_dy(
        h in 2usize..7, w in 2usize..7, ch in 1usize..3,
        wh in 1usize..4, ww in 1usize..4, sh in 1usize..4, sw in 1usize..4,
        seed in any::<u64>(),
    ) {
        prop_assume!(wh <= h && ww <= w);
        let (oh, ow) = ((h - wh) / sh + 1, (w - ww) / sw + 1);
        let mut rng = Rng::new(seed);
        let mut c = Case::new("pool_grad");
        let x = c.input("x", &[1, h, w, ch], distinct(&mut rng, h * w * ch, 0), false);
        let dy = c.input("dy", &[1, oh, ow, ch], uniform(&mut rng, oh * ow * ch, -1.0, 1.0), true);
        let z = c.g.add(Op::MaxPool2dGrad { window: [wh, ww], stride: [sh, sw] }, &[x, dy]).unwrap();
        c.weighted_sum_loss(z, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn softmax_and_log_softmax(
        log in any::<bool>(),
        shape in prop::collection::vec(1usize..5, 1..=3),
        axis_pick in 0usize..3,
        seed in any::<u64>(),
    ) {
        let axis = axis_pick % shape.len();
        let mut rng = Rng::new(seed);
        let mut c = Case::new("softmax");
        let x = c.input("x", &shape, uniform(&mut rng, numel(&shape), -3.0, 3.0), true);
        let y = if log { c.g.log_softmax(x, axis) } else { c.g.softmax(x, axis) }.unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn softmax_cross_entropy_dense(n in 1usize..5, k in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut c = Case::new("sce");
        let logits = c.input("logits", &[n, k], uniform(&mut rng, n * k, -3.0, 3.0), true);
        // Labels need not sum to 1: the rule is exact for any labels.
        let labels = c.input("labels", &[n, k], uniform(&mut rng, n * k, 0.0, 1.0), true);
        let y = c.g.softmax_cross_entropy(logits, labels).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn sparse_softmax_cross_entropy(n in 1usize..5, k in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let mut c = Case::new("sparse_sce");
        let logits = c.input("logits", &[n, k], uniform(&mut rng, n * k, -3.0, 3.0), true);
        let labels_vals = (0..n).map(|_| rng.below(k as u64) as f64).collect();
        let labels = c.labels("labels", &[n], labels_vals);
        let y = c.g.sparse_softmax_cross_entropy(logits, labels).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        check(&c, &mut rng)?;
    }

    #[test]
    fn slice_and_concat(
        shape in prop::collection::vec(1usize..5, 1..=3),
        cuts in prop::collection::vec((0usize..5, 0usize..5), 3),
        axis_pick in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut c = Case::new("slice_concat");
        let x = c.input("x", &shape, uniform(&mut rng, numel(&shape), -2.0, 2.0), true);
        let (mut begin, mut end) = (vec![], vec![]);
        for (i, &d) in shape.iter().enumerate() {
            let (p, q) = (cuts[i].0 % (d + 1), cuts[i].1 % (d + 1));
            begin.push(p.min(q));
            end.push(p.max(q));
        }
        let s = c.g.slice(x, &begin, &end).unwrap();
        let axis = axis_pick % shape.len();
        let yv = {
            let mut sy = shape.clone();
            sy[axis] = 2;
            sy
        };
        let y = c.input("y", &yv, uniform(&mut rng, numel(&yv), -2.0, 2.0), true);
        let cat = c.g.concat(&[x, y, x], axis).unwrap();
        let l1 = weighted_sum(&mut c.g, s, &mut rng);
        let l2 = weighted_sum(&mut c.g, cat, &mut rng);
        c.loss = c.g.add2(l1, l2).unwrap();
        check(&c, &mut rng)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Gather from a table and scatter_add of updates along any axis, with repeated and
    /// out-of-range (clamped) indices of rank 0 to 2; the indices carry no gradient.
    #[test]
    fn gather_and_scatter_add(
        table in prop::collection::vec(1usize..4, 1..=3),
        idx_shape in prop::collection::vec(1usize..4, 0..=2),
        axis_pick in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let axis = axis_pick % table.len();
        let n = table[axis] as f64;
        let mut c = Case::new("gather");
        let t = c.input("table", &table, uniform(&mut rng, numel(&table), -2.0, 2.0), true);
        // indices in -1..=n: duplicates and one past either end
        let idx_vals = (0..numel(&idx_shape))
            .map(|_| (rng.uniform() * (n + 2.0)).floor() - 1.0)
            .collect();
        let idx = c.labels("idx", &idx_shape, idx_vals);
        let y = c.g.gather(t, idx, axis).unwrap();
        let us = c.g[y].ty.shape.0.clone();
        let u = c.input("u", &us, uniform(&mut rng, numel(&us), -2.0, 2.0), true);
        let s = c.g.scatter_add(u, idx, axis, table.clone()).unwrap();
        let l1 = weighted_sum(&mut c.g, y, &mut rng);
        let l2 = weighted_sum(&mut c.g, s, &mut rng);
        c.loss = c.g.add2(l1, l2).unwrap();
        check(&c, &mut rng)?;
    }
}

/// `all_reduce` (sum and mean) in one process, a world of one rank: the identity, whose
/// gradient (the all-reduce of the cotangent) the interpreter evaluates as the identity too.
#[test]
fn all_reduce_over_one_rank() {
    for mean in [false, true] {
        let mut rng = Rng::new(5);
        let mut c = Case::new("all_reduce");
        let x = c.input("x", &[3, 4], uniform(&mut rng, 12, -2.0, 2.0), true);
        let y = c.g.add(gradlift::Op::AllReduce { mean }, &[x]).unwrap();
        let y = c.g.tanh(y).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        let r = fd_check(&c, 1000, &mut rng).unwrap();
        assert_eq!(r.checked, 12);
    }
}

/// The gradient of a gather with repeated and out-of-range indices adds the cotangent rows
/// at each repeat (and at the clamped rows), checked on every coordinate.
#[test]
fn gather_with_repeated_indices_all_coordinates() {
    let mut rng = Rng::new(11);
    let mut c = Case::new("gather_repeats");
    let t = c.input("table", &[5, 3], uniform(&mut rng, 15, -2.0, 2.0), true);
    let idx = c.labels("idx", &[2, 3], vec![4.0, 0.0, 4.0, 4.0, 7.0, -3.0]);
    let y = c.g.gather(t, idx, 0).unwrap();
    c.weighted_sum_loss(y, &mut rng);
    let r = fd_check(&c, 1000, &mut rng).unwrap();
    assert_eq!(r.checked, 15);
}

/// Every broadcasting pattern, spelled out, for every binary op.
#[test]
fn binary_ops_every_broadcast_pattern() {
    let patterns: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[], &[3, 4]),
        (&[3, 4], &[]),
        (&[3, 1], &[1, 4]),
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[3, 4], &[3, 1]),
        (&[1, 4], &[3, 4]),
        (&[2, 3, 4], &[3, 1]),
        (&[2, 1, 4], &[3, 1]),
        (&[1], &[2, 3]),
        (&[2, 1, 1], &[1, 3, 1]),
    ];
    for (i, (sa, sb)) in patterns.iter().enumerate() {
        for b in BinaryOp::ALL {
            let (c, mut rng) = binary_case(b, sa, sb, 1000 + i as u64);
            if let Err(e) = fd_check(&c, 64, &mut rng) {
                panic!("{} with shapes {sa:?} and {sb:?}: {e}", b.name());
            }
        }
    }
}

/// Reductions over each single axis of a rank-3 tensor, with and without keepdims.
#[test]
fn reductions_over_each_axis() {
    for kind in ReduceOp::ALL {
        for axis in 0..3 {
            for keepdims in [false, true] {
                let mut rng = Rng::new(7 + axis as u64);
                let mut c = Case::new("reduce");
                let x = c.input("x", &[2, 3, 4], distinct(&mut rng, 24, 0), true);
                let y = c.g.reduce(kind, x, &[axis], keepdims).unwrap();
                c.weighted_sum_loss(y, &mut rng);
                if let Err(e) = fd_check(&c, 64, &mut rng) {
                    panic!("{} axis {axis} keepdims {keepdims}: {e}", kind.name());
                }
            }
        }
    }
}

/// Conv2d with stride 2 and both paddings on an input whose size is not a multiple of the
/// stride (Same padding then has an extra pixel after), checked on every coordinate.
#[test]
fn conv2d_stride_and_both_paddings_all_coordinates() {
    for padding in [Padding::Valid, Padding::Same] {
        let mut rng = Rng::new(3);
        let mut c = Case::new("conv");
        let x = c.input("x", &[2, 5, 6, 2], uniform(&mut rng, 120, -2.0, 2.0), true);
        let f = c.input("f", &[3, 2, 2, 3], uniform(&mut rng, 36, -1.0, 1.0), true);
        let y = c.g.conv2d(x, f, [2, 2], padding).unwrap();
        c.weighted_sum_loss(y, &mut rng);
        let r = fd_check(&c, 1000, &mut rng).unwrap_or_else(|e| panic!("{padding:?}: {e}"));
        assert_eq!(r.checked, 156);
    }
}

/// The stable forms stay finite where the naive ones overflow: logits of size 1000.
#[test]
fn losses_are_stable_for_large_logits() {
    let mut rng = Rng::new(5);
    let mut c = Case::new("big");
    let vals: Vec<f64> = uniform(&mut rng, 6, -1.0, 1.0)
        .iter()
        .map(|v| 1000.0 * v)
        .collect();
    let logits = c.input("logits", &[2, 3], vals, true);
    let labels = c.labels("labels", &[2], vec![0.0, 2.0]);
    let ce = c.g.sparse_softmax_cross_entropy(logits, labels).unwrap();
    let ls = c.g.log_softmax(logits, 1).unwrap();
    let sg = c.g.sigmoid(logits).unwrap();
    let th = c.g.tanh(logits).unwrap();
    let l1 = weighted_sum(&mut c.g, ce, &mut rng);
    let l2 = weighted_sum(&mut c.g, ls, &mut rng);
    let l3 = weighted_sum(&mut c.g, sg, &mut rng);
    let l4 = weighted_sum(&mut c.g, th, &mut rng);
    let a = c.g.add2(l1, l2).unwrap();
    let b = c.g.add2(l3, l4).unwrap();
    c.loss = c.g.add2(a, b).unwrap();
    let mut g = c.g.clone();
    let d = gradlift::autodiff::grad(&mut g, c.loss, &c.wrt).unwrap()[0];
    let v = gradlift::interp::eval::<f32>(
        &g,
        &c.feeds.iter().map(|(k, a)| (*k, a.convert())).collect(),
    )
    .unwrap();
    let grad = v.get(d).unwrap();
    assert!(grad.data.iter().all(|x| x.is_finite()), "{:?}", grad.data);
}

/// The finite-difference check of each op kind's VJP rule (the test that builds it), or
/// `None` for the kinds autodiff has no rule for. An exhaustive match: a new op does not
/// compile here until it names its check.
fn fd_check_of(k: OpKind) -> Option<&'static str> {
    use OpKind as K;
    match k {
        K::Neg
        | K::Exp
        | K::Log
        | K::Sqrt
        | K::Abs
        | K::Sign
        | K::Tanh
        | K::Sigmoid
        | K::Relu
        | K::Log1p
        | K::Expm1
        | K::Erf
        | K::Sin
        | K::Cos => Some("unary_ops (every UnaryOp)"),
        K::Add | K::Sub | K::Mul | K::Div | K::Max | K::Min | K::Pow => {
            Some("binary_ops_with_broadcasting (every BinaryOp)")
        }
        K::Select => Some("select_with_broadcasting"),
        K::ReduceSum | K::ReduceMean | K::ReduceMax => {
            Some("reductions_over_any_axes (every ReduceOp)")
        }
        K::Reshape | K::Broadcast | K::Transpose => Some("reshape_broadcast_transpose"),
        K::Matmul => Some("matmul"),
        K::Conv2d => Some("conv2d_input_and_filter"),
        K::Conv2dInputGrad | K::Conv2dFilterGrad => Some("conv2d_backward_ops"),
        K::MaxPool2d => Some("max_pool2d"),
        K::MaxPool2dGrad => Some("max_pool2d_grad_wrt_dy"),
        K::Softmax | K::LogSoftmax => Some("softmax_and_log_softmax"),
        K::SoftmaxCrossEntropy => Some("softmax_cross_entropy_dense"),
        K::SparseSoftmaxCrossEntropy => Some("sparse_softmax_cross_entropy"),
        K::Slice | K::Concat => Some("slice_and_concat"),
        K::Gather | K::ScatterAdd => Some("gather_and_scatter_add"),
        K::Scan | K::ScanResult => Some("scan.rs: gradient_agrees_with_finite_differences"),
        K::AllReduce => Some("all_reduce_over_one_rank"),
        // leaves (their gradient is the result) and the ops without a rule
        K::Input | K::Param | K::State | K::Const => None,
        K::Eq | K::Ne | K::Lt | K::Le | K::Gt | K::Ge => None,
        K::Argmax | K::Cast | K::OneHot | K::Fused | K::FusedResult => None,
    }
}

/// Exactly the ops autodiff has a rule for have a finite-difference check.
#[test]
fn every_differentiable_op_has_a_finite_difference_check() {
    for &k in OpKind::ALL {
        let has_rule = k.class() != OpClass::Leaf && k.not_differentiable().is_none();
        assert_eq!(
            fd_check_of(k).is_some(),
            has_rule,
            "{}: {:?}",
            k.name(),
            fd_check_of(k)
        );
    }
}
