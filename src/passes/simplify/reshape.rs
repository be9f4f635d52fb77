//! Layout rules: transposes, reshapes and broadcasts that cancel or chain. All of them are
//! exact (they only move elements).

use super::{op, operand1, Rewrite, Rule};
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// The layout rules, in the order they are tried.
pub const RULES: &[Rule] = &[
    Rule {
        name: "transpose_identity",
        apply: transpose_identity,
    },
    Rule {
        name: "transpose_transpose",
        apply: transpose_transpose,
    },
    Rule {
        name: "reshape_same_shape",
        apply: reshape_same_shape,
    },
    Rule {
        name: "reshape_reshape",
        apply: reshape_reshape,
    },
    Rule {
        name: "broadcast_same_shape",
        apply: broadcast_same_shape,
    },
    Rule {
        name: "broadcast_broadcast",
        apply: broadcast_broadcast,
    },
];

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// `transpose(x, perm=[0,1,..])` (the identity permutation) `-> x`.
pub fn transpose_identity(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Transpose { perm } = op(g, root) else {
        return None;
    };
    is_identity(perm).then_some(Rewrite::Use(operand1(g, root)?))
}

/// `transpose(transpose(x, p1), p2) -> transpose(x, p)` with `p[i] = p1[p2[i]]` (output dim
/// `i` is the inner result's dim `p2[i]`, which is `x`'s dim `p1[p2[i]]`); `-> x` when `p` is
/// the identity.
pub fn transpose_transpose(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Transpose { perm: p2 } = op(g, root) else {
        return None;
    };
    let inner = operand1(g, root)?;
    let Op::Transpose { perm: p1 } = op(g, inner) else {
        return None;
    };
    let x = operand1(g, inner)?;
    let p: Vec<usize> = p2
        .iter()
        .map(|&i| p1.get(i).copied())
        .collect::<Option<_>>()?;
    if is_identity(&p) {
        Some(Rewrite::Use(x))
    } else {
        Some(Rewrite::Op(Op::Transpose { perm: p }, vec![x]))
    }
}

/// `reshape(x, shape)` where `x` already has `shape` `-> x`.
pub fn reshape_same_shape(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Reshape { shape } = op(g, root) else {
        return None;
    };
    let x = operand1(g, root)?;
    (&g[x].ty.shape == shape).then_some(Rewrite::Use(x))
}

/// `reshape(reshape(x, s1), s2) -> reshape(x, s2)` (row-major order is unchanged by either),
/// `-> x` when `x` has shape `s2`.
pub fn reshape_reshape(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Reshape { shape } = op(g, root) else {
        return None;
    };
    let inner = operand1(g, root)?;
    let Op::Reshape { .. } = op(g, inner) else {
        return None;
    };
    let x = operand1(g, inner)?;
    if &g[x].ty.shape == shape {
        Some(Rewrite::Use(x))
    } else {
        Some(Rewrite::Op(
            Op::Reshape {
                shape: shape.clone(),
            },
            vec![x],
        ))
    }
}

/// `broadcast(x, shape)` where `x` already has `shape` `-> x`.
pub fn broadcast_same_shape(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Broadcast { shape } = op(g, root) else {
        return None;
    };
    let x = operand1(g, root)?;
    (&g[x].ty.shape == shape).then_some(Rewrite::Use(x))
}

/// `broadcast(broadcast(x, s1), s2) -> broadcast(x, s2)` (numpy broadcasting composes: each
/// output element reads the same element of `x` either way).
pub fn broadcast_broadcast(g: &Graph, root: NodeId) -> Option<Rewrite> {
    let Op::Broadcast { shape } = op(g, root) else {
        return None;
    };
    let inner = operand1(g, root)?;
    let Op::Broadcast { .. } = op(g, inner) else {
        return None;
    };
    let x = operand1(g, inner)?;
    g[x].ty.shape.broadcasts_to(shape).then(|| {
        Rewrite::Op(
            Op::Broadcast {
                shape: shape.clone(),
            },
            vec![x],
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::passes::simplify::run;
    use crate::shape::TensorType;
    use crate::{Graph, NodeId, Op};

    fn simplified(build: impl Fn(&mut Graph, NodeId) -> NodeId) -> (Graph, NodeId, NodeId) {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2, 3, 4])).unwrap();
        let out = build(&mut g, x);
        g.add_output("out", out).unwrap();
        run(&mut g);
        assert!(!run(&mut g).changed());
        let out = g.output("out").unwrap();
        (g, x, out)
    }

    #[test]
    fn double_transpose_composes() {
        // [2,3,4] -perm [1,2,0]-> [3,4,2] -perm [2,0,1]-> [2,3,4]: the identity.
        let (_, x, out) = simplified(|g, x| {
            let t = g.transpose(x, &[1, 2, 0]).unwrap();
            g.transpose(t, &[2, 0, 1]).unwrap()
        });
        assert_eq!(out, x);
        // [2,3,4] -[1,0,2]-> [3,2,4] -[0,2,1]-> [3,4,2] == transpose(x, [1,2,0]).
        let (g, x, out) = simplified(|g, x| {
            let t = g.transpose(x, &[1, 0, 2]).unwrap();
            g.transpose(t, &[0, 2, 1]).unwrap()
        });
        assert_eq!(
            g[out].op,
            Op::Transpose {
                perm: vec![1, 2, 0]
            }
        );
        assert_eq!(g.operands(out), vec![x]);
    }

    #[test]
    fn reshape_and_broadcast_chains() {
        let (g, x, out) = simplified(|g, x| {
            let a = g.reshape(x, [6, 4]).unwrap();
            let b = g.reshape(a, [24]).unwrap();
            g.reshape(b, [4, 6]).unwrap()
        });
        assert_eq!(g[out].op.name(), "reshape");
        assert_eq!(g.operands(out), vec![x]);
        let (_, x, out) = simplified(|g, x| {
            let a = g.reshape(x, [24]).unwrap();
            let b = g.reshape(a, [2, 3, 4]).unwrap();
            g.broadcast(b, [2, 3, 4]).unwrap()
        });
        assert_eq!(out, x);
        let (g, x, out) = simplified(|g, x| {
            let a = g.broadcast(x, [1, 2, 3, 4]).unwrap();
            g.broadcast(a, [5, 2, 3, 4]).unwrap()
        });
        assert_eq!(g.operands(out), vec![x]);
        assert_eq!(g[out].ty, TensorType::f32([5, 2, 3, 4]));
    }
}
