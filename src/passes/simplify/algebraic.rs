//! Arithmetic identities. Each rule fires only when the kept operand already has the result's
//! type (no broadcasting is lost). See the rulebook in [`super`] for the sign-of-zero and `x*0`
//! policies.

use super::{op, operand1, operands2, Rewrite, Rule};
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Literal, Op, UnaryOp};
use crate::passes::rewrite::splat_value;

/// The algebraic rules, in the order they are tried.
pub const RULES: &[Rule] = &[
    Rule {
        name: "mul_by_one",
        apply: mul_by_one,
    },
    Rule {
        name: "add_zero",
        apply: add_zero,
    },
    Rule {
        name: "sub_zero",
        apply: sub_zero,
    },
    Rule {
        name: "div_by_one",
        apply: div_by_one,
    },
    Rule {
        name: "neg_neg",
        apply: neg_neg,
    },
    Rule {
        name: "finite_const_mul_zero",
        apply: finite_const_mul_zero,
    },
    Rule {
        name: "pow_one",
        apply: pow_one,
    },
    Rule {
        name: "pow_two",
        apply: pow_two,
    },
];

/// Whether `id` is a constant whose every element equals `v` (`0.0` also matches `-0.0`).
fn is_const(g: &Graph, id: NodeId, v: f64) -> bool {
    splat_value(g, id) == Some(v)
}

/// Whether `id` has the type of `root`, so it can stand in for it.
fn same_type(g: &Graph, id: NodeId, root: NodeId) -> bool {
    g[id].ty == g[root].ty
}

/// The operands of `root` if it is the binary op `b`.
fn binary(g: &Graph, root: NodeId, b: BinaryOp) -> Option<(NodeId, NodeId)> {
    match op(g, root) {
        Op::Binary(x) if *x == b => operands2(g, root),
        _ => None,
    }
}

/// `x * 1 -> x` and `1 * x -> x`.
pub fn mul_by_one(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Mul)?;
    if is_const(g, b, 1.0) && same_type(g, a, root) {
        Some(Rewrite::Use(a))
    } else if is_const(g, a, 1.0) && same_type(g, b, root) {
        Some(Rewrite::Use(b))
    } else {
        None
    }
}

/// `x + 0 -> x` and `0 + x -> x` (keeps a `-0.0` that IEEE would turn into `+0.0`).
pub fn add_zero(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Add)?;
    if is_const(g, b, 0.0) && same_type(g, a, root) {
        Some(Rewrite::Use(a))
    } else if is_const(g, a, 0.0) && same_type(g, b, root) {
        Some(Rewrite::Use(b))
    } else {
        None
    }
}

/// `x - 0 -> x`.
pub fn sub_zero(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Sub)?;
    (is_const(g, b, 0.0) && same_type(g, a, root)).then_some(Rewrite::Use(a))
}

/// `x / 1 -> x`.
pub fn div_by_one(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Div)?;
    (is_const(g, b, 1.0) && same_type(g, a, root)).then_some(Rewrite::Use(a))
}

/// `neg(neg(x)) -> x`.
pub fn neg_neg(g: &Graph, root: NodeId) -> Option<Rewrite> {
    if op(g, root) != &Op::Unary(UnaryOp::Neg) {
        return None;
    }
    let inner = operand1(g, root)?;
    if op(g, inner) != &Op::Unary(UnaryOp::Neg) {
        return None;
    }
    let x = operand1(g, inner)?;
    same_type(g, x, root).then_some(Rewrite::Use(x))
}

/// `c * 0 -> 0` and `0 * c -> 0` when `c` is a constant whose every element is finite as
/// the compiled code loads it (in f32: `1e300` is infinite) (the result is a splat zero of
/// the root's type, `+0.0`). For anything else `x * 0` stays: it is NaN where `x` is NaN or
/// infinite.
pub fn finite_const_mul_zero(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Mul)?;
    let finite = |id: NodeId| {
        let f32_type = g[id].ty.dtype == crate::shape::DType::F32;
        let ok = |v: f64| {
            if f32_type {
                (v as f32).is_finite()
            } else {
                v.is_finite()
            }
        };
        match op(g, id) {
            Op::Const {
                value: Literal::Splat(v),
            } => ok(*v),
            Op::Const {
                value: Literal::Dense(vs),
            } => vs.iter().all(|&v| ok(v)),
            _ => false,
        }
    };
    if (is_const(g, b, 0.0) && finite(a)) || (is_const(g, a, 0.0) && finite(b)) {
        Some(Rewrite::Op(
            Op::Const {
                value: Literal::Splat(0.0),
            },
            Vec::new(),
        ))
    } else {
        None
    }
}

/// `pow(x, 1) -> x`. Exact for every `x`: IEEE 754 `pown`/`pow` and numpy's `power` give
/// `x` itself for an exponent of 1 (`-0.0`, infinities and NaN included).
pub fn pow_one(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Pow)?;
    (is_const(g, b, 1.0) && same_type(g, a, root)).then_some(Rewrite::Use(a))
}

/// `pow(x, 2) -> x * x`, which the JIT computes inline (and can fuse) where `pow` is a runtime
/// call per element. Exact: the correctly rounded `x^2` is the one rounding of `x * x`, and
/// the special values agree (`pow(-0, 2) = +0 = -0 * -0`, `pow(+-inf, 2) = inf`,
/// `pow(NaN, 2) = NaN`, overflow to `inf`); numpy's `power(x, 2)` is `square(x)`.
pub fn pow_two(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let (a, b) = binary(g, root, BinaryOp::Pow)?;
    (is_const(g, b, 2.0) && same_type(g, a, root))
        .then(|| Rewrite::Op(Op::Binary(BinaryOp::Mul), vec![a, a]))
}

#[cfg(test)]
mod tests {
    use crate::passes::simplify::run;
    use crate::shape::TensorType;
    use crate::{Graph, Literal, Op};

    /// `x: f32[2,3]`, `r: f32[3]`, and an output of whatever `build` makes; returns the graph
    /// after simplify and the output node.
    fn simplified(
        build: impl Fn(&mut Graph, crate::NodeId, crate::NodeId) -> crate::NodeId,
    ) -> (Graph, crate::NodeId, crate::NodeId, crate::NodeId) {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2, 3])).unwrap();
        let r = g.input("r", TensorType::f32([3])).unwrap();
        let out = build(&mut g, x, r);
        g.add_output("out", out).unwrap();
        let report = run(&mut g);
        assert!(!run(&mut g).changed(), "second run changed: {report}");
        let out = g.output("out").unwrap();
        (g, x, r, out)
    }

    #[test]
    fn identities_collapse_to_the_operand() {
        type Build = fn(&mut Graph, crate::NodeId, crate::NodeId) -> crate::NodeId;
        let cases: &[(&str, Build)] = &[
            ("x*1", |g, x, _| {
                let c = g.scalar(1.0);
                g.mul(x, c).unwrap()
            }),
            ("1*x", |g, x, _| {
                let c = g.scalar(1.0);
                g.mul(c, x).unwrap()
            }),
            ("x+0", |g, x, _| {
                let c = g.scalar(0.0);
                g.add2(x, c).unwrap()
            }),
            ("0+x", |g, x, _| {
                let c = g.scalar(-0.0);
                g.add2(c, x).unwrap()
            }),
            ("x-0", |g, x, _| {
                let c = g.scalar(0.0);
                g.sub(x, c).unwrap()
            }),
            ("x/1", |g, x, _| {
                let c = g
                    .constant(TensorType::f32([3]), Literal::Dense(vec![1.0; 3]))
                    .unwrap();
                g.div(x, c).unwrap()
            }),
            ("neg(neg(x))", |g, x, _| {
                let n = g.neg(x).unwrap();
                g.neg(n).unwrap()
            }),
        ];
        for (what, build) in cases {
            let (_, x, _, out) = simplified(*build);
            assert_eq!(out, x, "{what} should simplify to x");
        }
    }

    #[test]
    fn broadcasting_identity_is_kept() {
        // r * ones[2,3] broadcasts r: the result is not r's type.
        let (g, _, _, out) = simplified(|g, _, r| {
            let c = g
                .constant(TensorType::f32([2, 3]), Literal::Splat(1.0))
                .unwrap();
            g.mul(r, c).unwrap()
        });
        assert_eq!(g[out].op.name(), "mul");
    }

    #[test]
    fn x_times_zero_is_kept_unless_x_is_a_finite_constant() {
        let (g, _, _, out) = simplified(|g, x, _| {
            let z = g.scalar(0.0);
            g.mul(x, z).unwrap()
        });
        assert_eq!(g[out].op.name(), "mul");
        let (g, _, _, out) = simplified(|g, _, _| {
            let c = g
                .constant(TensorType::f32([2]), Literal::Dense(vec![3.0, -1.5]))
                .unwrap();
            let z = g.scalar(0.0);
            g.mul(z, c).unwrap()
        });
        assert_eq!(
            g[out].op,
            Op::Const {
                value: Literal::Splat(0.0)
            }
        );
        assert_eq!(g[out].ty, TensorType::f32([2]));
        let (g, _, _, out) = simplified(|g, _, _| {
            let c = g
                .constant(
                    TensorType::f32([2]),
                    Literal::Dense(vec![f64::INFINITY, 1.0]),
                )
                .unwrap();
            let z = g.scalar(0.0);
            g.mul(c, z).unwrap()
        });
        assert_eq!(g[out].op.name(), "mul");
    }
}
