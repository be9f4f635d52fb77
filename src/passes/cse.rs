//! Common-subexpression elimination.
//!
//! In: any graph. Out: the same graph where two nodes with the same op, the same attributes,
//! the same type and the same operands (in order; sorted for commutative binary ops, see
//! [`BinaryOp::is_commutative`]) are one node. Constants are merged by type and value,
//! compared bit for bit (so `0.0` and `-0.0` stay apart, and a splat equals a dense literal
//! with one repeated value). Inputs, params and state are never merged: each is a separate
//! slot of the interface even when declared alike.
//!
//! Nodes are visited in canonical order, so operands are merged before their users and one
//! run finds every duplicate. The first node (in that order) is kept; the duplicate's users,
//! outputs, updates and `grad_of` links move to it, and so does the duplicate's name when the
//! kept node has none.

use super::rewrite::{const_values, move_uses, redirect_grad_of_all, splat_value};
use super::PassReport;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Op};
use crate::shape::TensorType;
use std::collections::HashMap;

/// What makes two nodes the same computation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// The op with its attributes (`Debug` text, which spells every attribute; `const` for
    /// constants, whose value is in `value`).
    op: String,
    ty: TensorType,
    operands: Vec<NodeId>,
    /// A constant's value bits: one entry for a splat, every element otherwise.
    value: Vec<u64>,
}

/// Merges duplicate nodes. Counts `merged`.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("cse");
    let Ok(order) = g.topo_order() else {
        report.remark("graph has a cycle: nothing done");
        return report;
    };
    let mut seen: HashMap<Key, NodeId> = HashMap::new();
    let mut merged: HashMap<NodeId, NodeId> = HashMap::new();
    for id in order {
        let Some(key) = key(g, id) else { continue };
        match seen.get(&key) {
            Some(&first) => {
                move_uses(g, id, first);
                merged.insert(id, first);
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    // A kept node is never merged later, so one lookup gives the final node.
    redirect_grad_of_all(g, &merged);
    report.count("merged", merged.len());
    report
}

/// The key of `id`, or `None` for nodes that are never merged (inputs, params, state).
fn key(g: &Graph, id: NodeId) -> Option<Key> {
    let node = &g[id];
    let mut operands = g.operands(id);
    let (op, value) = match &node.op {
        Op::Input | Op::Param { .. } | Op::State { .. } => return None,
        Op::Const { .. } => {
            let value = match splat_value(g, id) {
                Some(v) => vec![v.to_bits()],
                None => const_values(g, id)?.iter().map(|v| v.to_bits()).collect(),
            };
            ("const".to_string(), value)
        }
        Op::Binary(b) if BinaryOp::is_commutative(*b) => {
            operands.sort();
            (format!("{:?}", node.op), Vec::new())
        }
        op => (format!("{op:?}"), Vec::new()),
    };
    Some(Key {
        op,
        ty: node.ty.clone(),
        operands,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Literal;

    #[test]
    fn merges_commutative_and_consts_but_not_inputs() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2])).unwrap();
        let y = g.input("y", TensorType::f32([2])).unwrap();
        let c1 = g.scalar(2.0);
        let c2 = g
            .constant(TensorType::f32([]), Literal::Dense(vec![2.0]))
            .unwrap();
        let a = g.mul(x, c1).unwrap();
        let b = g.mul(c2, x).unwrap();
        let s = g.sub(x, y).unwrap();
        let t = g.sub(y, x).unwrap();
        let out = g.concat(&[a, b, s, t], 0).unwrap();
        g.add_output("out", out).unwrap();
        let r = run(&mut g);
        // c2 into c1, then b into a; sub is not commutative.
        assert_eq!(r.counts.get("merged"), Some(&2));
        assert_eq!(g.operands(out), vec![a, a, s, t]);
        assert!(g.contains(x) && g.contains(y));
        assert!(!run(&mut g).changed());
    }
}

#[cfg(test)]
mod grad_link_tests {
    use super::*;
    use crate::passes::{check_graph, dce};

    #[test]
    fn grad_of_links_follow_merges_and_are_cleared_by_dce() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2])).unwrap();
        let a = g.exp(x).unwrap();
        let b = g.exp(x).unwrap(); // duplicate of a
        let ga = g.neg(b).unwrap();
        g.get_mut(ga).unwrap().grad_of = Some(b);
        let dead = g.tanh(x).unwrap();
        let gd = g.sigmoid(x).unwrap();
        g.get_mut(gd).unwrap().grad_of = Some(dead);
        let out = g.add2(a, ga).unwrap();
        let out = g.add2(out, gd).unwrap();
        g.add_output("out", out).unwrap();
        run(&mut g);
        assert_eq!(g[ga].grad_of, Some(a));
        assert!(!g.contains(b));
        dce::run(&mut g);
        assert!(!g.contains(dead));
        assert_eq!(g[gd].grad_of, None);
        assert!(check_graph(&g).is_empty(), "{:?}", check_graph(&g));
    }
}
