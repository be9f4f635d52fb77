//! Small graph-editing helpers shared by the passes: replacing a node by another one (keeping
//! names, outputs, updates and `grad_of` links right) and removing nodes.

use crate::graph::{Graph, NodeId};
use crate::op::{Literal, Op};
use std::collections::{HashMap, HashSet};

/// Makes every use of `old` (operands, outputs, update values) refer to `new`, then removes
/// `old`; `grad_of` links are the caller's to move ([`redirect_grad_of_all`] fixes every link
/// in one pass over the graph). If `old` had a name and `new` has none (and `new` is not a
/// leaf, whose name is part of the interface), the name moves to `new`, so dumps keep the
/// user's names.
pub fn move_uses(g: &mut Graph, old: NodeId, new: NodeId) {
    if old == new {
        return;
    }
    g.replace_all_uses(old, new);
    let name = g.get_mut(old).and_then(|n| n.name.take());
    if let (Some(name), Some(n)) = (name, g.get_mut(new)) {
        if n.name.is_none() && !n.op.is_leaf() {
            n.name = Some(name);
        }
    }
    g.remove(old);
}

/// Removes the nodes `ids`, which no remaining node may use; `grad_of` links to them are
/// cleared (the forward node they pointed at no longer exists). One pass over the graph.
pub fn remove_nodes(g: &mut Graph, ids: &HashSet<NodeId>) {
    for id in g.node_ids() {
        if let Some(n) = g.get_mut(id) {
            if n.grad_of.is_some_and(|f| ids.contains(&f)) {
                n.grad_of = None;
            }
        }
    }
    for &id in ids {
        g.remove(id);
    }
}

/// Points every `grad_of` link to a key of `map` at its value.
pub fn redirect_grad_of_all(g: &mut Graph, map: &HashMap<NodeId, NodeId>) {
    if map.is_empty() {
        return;
    }
    for id in g.node_ids() {
        if let Some(n) = g.get_mut(id) {
            if let Some(to) = n.grad_of.and_then(|f| map.get(&f)) {
                n.grad_of = Some(*to);
            }
        }
    }
}

/// Whether `id` is an output or the value of an update.
pub fn is_root(g: &Graph, id: NodeId) -> bool {
    g.outputs().iter().any(|o| o.node == id) || g.updates().iter().any(|u| u.value == id)
}

/// The value of every element if `id` is a constant whose elements are all equal (a splat, or
/// a dense literal with one repeated value, compared bit for bit).
pub fn splat_value(g: &Graph, id: NodeId) -> Option<f64> {
    match &g.get(id)?.op {
        Op::Const {
            value: Literal::Splat(v),
        } => Some(*v),
        Op::Const {
            value: Literal::Dense(vs),
        } => {
            let first = *vs.first()?;
            vs.iter()
                .all(|v| v.to_bits() == first.to_bits())
                .then_some(first)
        }
        _ => None,
    }
}

/// Every element of constant `id` (a splat expanded to the node's element count).
pub fn const_values(g: &Graph, id: NodeId) -> Option<Vec<f64>> {
    let n = g.get(id)?;
    match &n.op {
        Op::Const {
            value: Literal::Splat(v),
        } => Some(vec![*v; n.ty.shape.numel()]),
        Op::Const {
            value: Literal::Dense(vs),
        } => Some(vs.clone()),
        _ => None,
    }
}
