//! Constant folding.
//!
//! In: any graph. Out: the same graph where every non-leaf node whose operands are all
//! constants is itself a constant, computed by the reference interpreter ([`crate::interp`])
//! in f64. Nodes are visited in canonical order, so whole constant chains fold in one run. The
//! folded node keeps its id, name, source location and `grad_of`; its operands, if now unused,
//! are left for `dce`.
//!
//! Limits, so that folding never bloats the graph or the compile time:
//! - a result whose elements are all equal is stored as a splat (one number) whatever its
//!   size, but only results of at most [`MAX_EVAL_ELEMENTS`] elements are evaluated at all;
//! - any other result is stored element by element, so it folds only if it has at most
//!   [`MAX_FOLD_ELEMENTS`] = 1024 elements (4 KiB as f32): a `broadcast` of a constant to a
//!   `[64,784]` batch stays a broadcast instead of becoming 50 000 numbers in the graph;
//! - a result with a NaN or an infinity is not folded (the text format prints finite
//!   numbers, and a non-finite constant usually means a bug better seen in its original form).
//!
//! Precision: the value is computed in f64 and stored as f64; an f32 backend rounds it once
//! when it loads the constant, which is at least as accurate as computing it in f32.

use super::PassReport;
use crate::graph::{Graph, Node, NodeId};
use crate::interp::{eval, Array};
use crate::op::{Literal, Op};
use std::collections::HashMap;

/// Largest non-splat result that is folded, in elements.
pub const MAX_FOLD_ELEMENTS: usize = 1024;

/// Largest result that is evaluated at all (to find out whether it is a splat), in elements.
pub const MAX_EVAL_ELEMENTS: usize = 1 << 16;

/// Folds constant subexpressions. Counts `folded`.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("fold");
    let Ok(order) = g.topo_order() else {
        report.remark("graph has a cycle: nothing done");
        return report;
    };
    let mut folded = 0;
    for id in order {
        // a multi-result fused node stays: its fused_result nodes read it
        let multi = matches!(&g[id].op, Op::Fused(b) if !b.extra.is_empty());
        if g[id].op.is_leaf() || multi {
            continue;
        }
        let operands = g.operands(id);
        if !operands
            .iter()
            .all(|&o| matches!(g[o].op, Op::Const { .. }))
        {
            continue;
        }
        match fold_one(g, id, &operands) {
            Ok(value) => {
                if let Some(n) = g.get_mut(id) {
                    n.op = Op::Const { value };
                }
                g.set_operands(id, &[]);
                folded += 1;
            }
            Err(why) => report.remark(format!("kept {}: {why}", crate::text::print_node(g, id))),
        }
    }
    report.count("folded", folded);
    report
}

/// The value of `id` (whose operands are the constants `operands`), or why it is not folded.
fn fold_one(g: &Graph, id: NodeId, operands: &[NodeId]) -> Result<Literal, String> {
    let n = g[id].ty.shape.numel();
    if n > MAX_EVAL_ELEMENTS {
        return Err(format!(
            "{n} elements, more than {MAX_EVAL_ELEMENTS} to evaluate"
        ));
    }
    // A graph of the constant operands and the op alone.
    let mut mini = Graph::new("fold");
    let leaf_ids: Vec<NodeId> = operands
        .iter()
        .map(|&o| mini.add_raw(bare(&g[o]), &[]))
        .collect();
    let root = mini.add_raw(bare(&g[id]), &leaf_ids);
    let values = eval::<f64>(&mini, &HashMap::new()).map_err(|e| e.to_string())?;
    let Some(Array { data, .. }) = values.get(root) else {
        return Err("the interpreter gave no value".to_string());
    };
    if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
        return Err(format!("the result contains {bad}"));
    }
    match data.first() {
        Some(&first) if data.iter().all(|v| v.to_bits() == first.to_bits()) => {
            Ok(Literal::Splat(first))
        }
        _ if n <= MAX_FOLD_ELEMENTS => Ok(Literal::Dense(data.clone())),
        _ => Err(format!(
            "{n} elements, not all equal, more than {MAX_FOLD_ELEMENTS}"
        )),
    }
}

/// A copy of `n`'s op and type, without name, location or gradient link.
fn bare(n: &Node) -> Node {
    Node {
        op: n.op.clone(),
        ty: n.ty.clone(),
        name: None,
        loc: None,
        grad_of: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TensorType;

    fn consts(g: &Graph) -> usize {
        g.node_ids()
            .into_iter()
            .filter(|&id| matches!(g[id].op, Op::Const { .. }))
            .count()
    }

    #[test]
    fn folds_chains_small_results_and_big_splats_only() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2])).unwrap();
        let a = g
            .constant(TensorType::f32([2]), Literal::Dense(vec![1.0, 4.0]))
            .unwrap();
        let s = g.sqrt(a).unwrap();
        let h = g.scalar(0.5);
        let m = g.mul(s, h).unwrap(); // [0.5, 1.0]
        let y = g.add2(x, m).unwrap();
        let big = g.broadcast(h, [100, 100]).unwrap(); // a splat: folds
        let ramp = g
            .constant(TensorType::f32([2]), Literal::Dense(vec![1.0, 2.0]))
            .unwrap();
        let wide = g.broadcast(ramp, [1000, 2]).unwrap(); // 2000 distinct-ish: kept
        let inf = g.scalar(1e300);
        let over = g.mul(inf, inf).unwrap(); // inf: kept
        for (n, id) in [("y", y), ("big", big), ("wide", wide), ("over", over)] {
            g.add_output(n, id).unwrap();
        }
        let r = run(&mut g);
        assert_eq!(r.counts.get("folded"), Some(&3), "{r}");
        assert_eq!(
            g[m].op,
            Op::Const {
                value: Literal::Dense(vec![0.5, 1.0])
            }
        );
        assert_eq!(
            g[big].op,
            Op::Const {
                value: Literal::Splat(0.5)
            }
        );
        assert_eq!(g[wide].op.name(), "broadcast");
        assert_eq!(g[over].op.name(), "mul");
        assert_eq!(g[y].op.name(), "add");
        assert_eq!(r.remarks.len(), 2, "{r}");
        let before = consts(&g);
        assert!(!run(&mut g).changed());
        assert_eq!(consts(&g), before);
    }
}
