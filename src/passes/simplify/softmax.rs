//! Softmax rules: replace hand-written `log(softmax)` and cross-entropy chains by the fused,
//! numerically stable ops. The cross-entropy patterns must match exactly:
//!
//! ```text
//! neg(reduce_sum(mul(one_hot(labels, depth=c), LS), axes=[1], keepdims=false))
//!     -> sparse_softmax_cross_entropy(logits, labels)
//! neg(reduce_sum(mul(y, LS), axes=[1], keepdims=false))
//!     -> softmax_cross_entropy(logits, y)
//! ```
//!
//! where `LS` is `log_softmax(logits, axis=1)` or `log(softmax(logits, axis=1))`, `logits` is
//! `f32[n,c]`, `labels` is `i32[n]`, `y` is `f32[n,c]`, and the `mul` may have its operands in
//! either order. Both fire only when the `mul` and the `reduce_sum` have no other users (the
//! `log_softmax` may be shared, e.g. with gradient nodes). The sparse rule is tried first; the
//! dense rule would also match it with `y = one_hot(labels)`, but less cheaply.

use super::{op, operand1, operands2, used_only_by, Rewrite, Rule};
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::shape::DType;

/// The softmax rules, in the order they are tried.
pub const RULES: &[Rule] = &[
    Rule {
        name: "log_softmax",
        apply: log_of_softmax,
    },
    Rule {
        name: "sparse_softmax_cross_entropy",
        apply: sparse_softmax_cross_entropy,
    },
    Rule {
        name: "softmax_cross_entropy",
        apply: softmax_cross_entropy,
    },
];

/// `log(softmax(x, axis)) -> log_softmax(x, axis)`: equal in exact arithmetic, and stable
/// where `softmax` underflows to 0 (which `log` turns into `-inf`).
pub fn log_of_softmax(g: &Graph, root: NodeId) -> Option<Rewrite> {
    if op(g, root) != &Op::Unary(UnaryOp::Log) {
        return None;
    }
    let s = operand1(g, root)?;
    let Op::Softmax { axis } = op(g, s) else {
        return None;
    };
    Some(Rewrite::Op(
        Op::LogSoftmax { axis: *axis },
        vec![operand1(g, s)?],
    ))
}

/// If `id` computes `log_softmax(logits, axis=1)` (as that op or as `log(softmax)`) of rank-2
/// f32 logits, the logits.
fn log_softmax_axis1(g: &Graph, id: NodeId) -> Option<NodeId> {
    let logits = match op(g, id) {
        Op::LogSoftmax { axis: 1 } => operand1(g, id)?,
        Op::Unary(UnaryOp::Log) => {
            let s = operand1(g, id)?;
            match op(g, s) {
                Op::Softmax { axis: 1 } => operand1(g, s)?,
                _ => return None,
            }
        }
        _ => return None,
    };
    let t = &g[logits].ty;
    (t.dtype == DType::F32 && t.shape.rank() == 2).then_some(logits)
}

/// Matches `neg(reduce_sum(mul(a, b), axes=[1], keepdims=false))` where the `mul` and the
/// `reduce_sum` are used only by this chain; returns `(logits, other)` where one `mul`
/// operand is a log-softmax of `logits` over axis 1 and `other` is the other operand.
fn neg_sum_mul_log_softmax(g: &Graph, root: NodeId) -> Option<(NodeId, NodeId)> {
    if op(g, root) != &Op::Unary(UnaryOp::Neg) {
        return None;
    }
    let sum = operand1(g, root)?;
    match op(g, sum) {
        Op::Reduce {
            kind: ReduceOp::Sum,
            axes,
            keepdims: false,
        } if axes.as_slice() == [1] => {}
        _ => return None,
    }
    let mul = operand1(g, sum)?;
    if op(g, mul) != &Op::Binary(BinaryOp::Mul)
        || !used_only_by(g, sum, root)
        || !used_only_by(g, mul, sum)
    {
        return None;
    }
    let (a, b) = operands2(g, mul)?;
    if let Some(logits) = log_softmax_axis1(g, b) {
        Some((logits, a))
    } else {
        log_softmax_axis1(g, a).map(|logits| (logits, b))
    }
}

/// `-sum(one_hot(labels, depth=c) * log_softmax(logits, axis=1), axes=[1])
/// -> sparse_softmax_cross_entropy(logits, labels)` for `logits: f32[n,c]`,
/// `labels: i32[n]`. Out-of-range labels give NaN instead of 0 (see the rulebook).
pub fn sparse_softmax_cross_entropy(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (logits, y) = neg_sum_mul_log_softmax(g, root)?;
    let Op::OneHot { depth } = op(g, y) else {
        return None;
    };
    let labels = operand1(g, y)?;
    let (lt, yt) = (&g[logits].ty, &g[labels].ty);
    let (n, c) = (lt.shape.dims()[0], lt.shape.dims()[1]);
    (*depth == c && yt.dtype == DType::I32 && yt.shape.dims() == [n])
        .then(|| Rewrite::Op(Op::SparseSoftmaxCrossEntropy, vec![logits, labels]))
}

/// `-sum(y * log_softmax(logits, axis=1), axes=[1]) -> softmax_cross_entropy(logits, y)` for
/// `logits` and `y` both `f32[n,c]` (no broadcasting).
pub fn softmax_cross_entropy(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (logits, y) = neg_sum_mul_log_softmax(g, root)?;
    (g[y].ty == g[logits].ty).then(|| Rewrite::Op(Op::SoftmaxCrossEntropy, vec![logits, y]))
}

#[cfg(test)]
mod tests {
    use crate::passes::simplify::run;
    use crate::shape::TensorType;
    use crate::{Graph, NodeId, Op};

    struct Case {
        g: Graph,
        logits: NodeId,
        labels: NodeId,
        probs: NodeId,
    }

    fn case() -> Case {
        let mut g = Graph::new("t");
        let logits = g.input("logits", TensorType::f32([4, 3])).unwrap();
        let labels = g.input("labels", TensorType::i32([4])).unwrap();
        let probs = g.input("probs", TensorType::f32([4, 3])).unwrap();
        Case {
            g,
            logits,
            labels,
            probs,
        }
    }

    fn finish(mut c: Case, out: NodeId) -> (Graph, NodeId) {
        c.g.add_output("out", out).unwrap();
        run(&mut c.g);
        assert!(!run(&mut c.g).changed());
        let out = c.g.output("out").unwrap();
        (c.g, out)
    }

    #[test]
    fn log_of_softmax_becomes_log_softmax() {
        let mut c = case();
        let s = c.g.softmax(c.logits, 0).unwrap();
        let l = c.g.log(s).unwrap();
        let logits = c.logits;
        let (g, out) = finish(c, l);
        assert_eq!(g[out].op, Op::LogSoftmax { axis: 0 });
        assert_eq!(g.operands(out), vec![logits]);
    }

    #[test]
    fn sparse_pattern_in_both_operand_orders() {
        for swap in [false, true] {
            let mut c = case();
            let oh = c.g.one_hot(c.labels, 3).unwrap();
            let s = c.g.softmax(c.logits, 1).unwrap();
            let ls = c.g.log(s).unwrap();
            let m = if swap {
                c.g.mul(ls, oh).unwrap()
            } else {
                c.g.mul(oh, ls).unwrap()
            };
            let sum = c.g.sum(m, &[1], false).unwrap();
            let neg = c.g.neg(sum).unwrap();
            let (logits, labels) = (c.logits, c.labels);
            let (g, out) = finish(c, neg);
            assert_eq!(g[out].op, Op::SparseSoftmaxCrossEntropy);
            assert_eq!(g.operands(out), vec![logits, labels]);
        }
    }

    #[test]
    fn dense_pattern() {
        let mut c = case();
        let ls = c.g.log_softmax(c.logits, 1).unwrap();
        let m = c.g.mul(c.probs, ls).unwrap();
        let sum = c.g.sum(m, &[1], false).unwrap();
        let neg = c.g.neg(sum).unwrap();
        let (logits, probs) = (c.logits, c.probs);
        let (g, out) = finish(c, neg);
        assert_eq!(g[out].op, Op::SoftmaxCrossEntropy);
        assert_eq!(g.operands(out), vec![logits, probs]);
    }

    #[test]
    fn near_misses_are_left_alone() {
        // Wrong axis, keepdims, a shared mul, and a log_softmax over axis 0.
        let mut c = case();
        let ls = c.g.log_softmax(c.logits, 1).unwrap();
        let ls0 = c.g.log_softmax(c.logits, 0).unwrap();
        let m = c.g.mul(c.probs, ls).unwrap();
        let s0 = c.g.sum(m, &[0], false).unwrap();
        let a = c.g.neg(s0).unwrap();
        let mk = c.g.mul(c.probs, ls).unwrap();
        let sk = c.g.sum(mk, &[1], true).unwrap();
        let b = c.g.neg(sk).unwrap();
        let m0 = c.g.mul(c.probs, ls0).unwrap();
        let s1 = c.g.sum(m0, &[1], false).unwrap();
        let d = c.g.neg(s1).unwrap();
        let shared = c.g.mul(ls, c.probs).unwrap();
        let s2 = c.g.sum(shared, &[1], false).unwrap();
        let e = c.g.neg(s2).unwrap();
        c.g.add_output("shared", shared).unwrap();
        let b = c.g.reshape(b, [4]).unwrap();
        let out = c.g.concat(&[a, d, e], 0).unwrap();
        c.g.add_output("b", b).unwrap();
        let (g, _) = finish(c, out);
        for id in g.node_ids() {
            assert!(
                !matches!(
                    g[id].op,
                    Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy
                ),
                "unexpected fusion"
            );
        }
    }
}
