//! Dead-code elimination.
//!
//! In: any graph. Out: the same graph without the nodes that no output and no update needs.
//! A node is live when it is an output, an update's value or target, or an operand of a live
//! node. Inputs, params and state are always kept, used or not: they are the executable's
//! interface (the caller feeds every input and owns every param). `grad_of` links to removed
//! forward nodes are cleared.

use super::rewrite::remove_nodes;
use super::PassReport;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashSet;

/// Removes dead nodes. Counts `removed`.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("dce");
    let live = live_nodes(g);
    let dead: HashSet<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|id| !live.contains(id) && !is_interface(&g[*id].op))
        .collect();
    remove_nodes(g, &dead);
    report.count("removed", dead.len());
    report
}

/// Nodes that some output or update depends on (including the roots themselves).
pub fn live_nodes(g: &Graph) -> HashSet<NodeId> {
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|o| o.node).collect();
    for u in g.updates() {
        stack.push(u.value);
        stack.push(u.target);
    }
    let mut live = HashSet::new();
    while let Some(id) = stack.pop() {
        if g.contains(id) && live.insert(id) {
            stack.extend(g.operands(id));
        }
    }
    live
}

fn is_interface(op: &Op) -> bool {
    matches!(op, Op::Input | Op::Param { .. } | Op::State { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TensorType;

    #[test]
    fn removes_unused_chains_but_keeps_interface() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([3])).unwrap();
        let _unused = g.input("unused", TensorType::f32([3])).unwrap();
        let a = g.neg(x).unwrap();
        let dead1 = g.exp(x).unwrap();
        let _dead2 = g.add2(dead1, a).unwrap();
        g.add_output("a", a).unwrap();
        let r = run(&mut g);
        assert_eq!(r.counts.get("removed"), Some(&2));
        assert_eq!(g.len(), 3);
        assert!(!run(&mut g).changed());
    }
}
