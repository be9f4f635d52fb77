//! Constant folding.
//!
//! In: any graph. Out: the same graph where every non-leaf node whose operands are all
//! constants is itself a constant, computed by the reference interpreter ([`crate::interp`])
//! as the compiled code would (f32; see "Precision" below). Nodes are visited in canonical order, so whole constant chains fold in one run. The
//! folded node keeps its id, name, source location and `grad_of`; its operands, if now unused,
//! are left for `dce`.
//!
//! A collective (`all_reduce`) is never folded: its value depends on the other ranks.
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
//! Precision: folding computes what the compiled code would. An f32 result is evaluated by
//! the interpreter in f32 (each constant rounded to f32, as the compiled code loads it, then
//! every op in f32): `(16777216 + 1) - 16777216` folds to 0 and `1e300 * 0` (infinity times
//! zero in f32) is not folded, as the unfolded code gives 0 and NaN. Ops that IEEE 754
//! defines exactly fold to the compiled code's bits; `exp`, `log`, `tanh` and `sigmoid` to
//! the interpreter's f32 results, within an ulp or two of the compiled polynomials; a sum
//! to the interpreter's pairwise sum, which rounds differently from (and less than) the
//! compiled loop's four running sums. An all-i32 computation is evaluated in f64, where every
//! i32 is exact.

use super::PassReport;
use crate::graph::{Graph, Node, NodeId};
use crate::interp::{eval, Array};
use crate::op::{Literal, Op};
use crate::shape::DType;
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
        // a multi-result fused node or a scan stays: its result nodes read it
        let multi = matches!(&g[id].op, Op::Fused(b) if !b.extra.is_empty())
            || matches!(&g[id].op, Op::Scan(_) | Op::ScanResult { .. });
        // a collective's value depends on the other ranks, not only on its operand
        let collective = matches!(g[id].op, Op::AllReduce { .. });
        if g[id].op.is_leaf() || multi || collective {
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
    let data = if integer_only(g, id, operands) {
        // i32 arithmetic: exact in f64 (an f32 holds integers only up to 2^24)
        let values = eval::<f64>(&mini, &HashMap::new()).map_err(|e| e.to_string())?;
        let Some(Array { data, .. }) = values.get(root) else {
            return Err("the interpreter gave no value".to_string());
        };
        data.clone()
    } else {
        // what the compiled f32 code computes: constants rounded to f32 when loaded, every
        // op in f32; stored as the shortest decimal of the f32 result, which reads back as
        // the same f32 (and prints as such)
        let values = eval::<f32>(&mini, &HashMap::new()).map_err(|e| e.to_string())?;
        let Some(Array { data, .. }) = values.get(root) else {
            return Err("the interpreter gave no value".to_string());
        };
        data.iter().map(|&v| shortest(v)).collect()
    };
    let data = &data;
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

/// Whether node `id` and its operands are all i32 (integer arithmetic, folded in f64).
fn integer_only(g: &Graph, id: NodeId, operands: &[NodeId]) -> bool {
    std::iter::once(id)
        .chain(operands.iter().copied())
        .all(|n| g[n].ty.dtype == DType::I32)
}

/// The f64 of the shortest decimal that reads back as `v` in f32 (`0.1` rather than
/// `0.10000000149011612`), so that a folded constant prints as the f32 it is.
fn shortest(v: f32) -> f64 {
    if v.is_finite() {
        format!("{v:?}").parse().unwrap_or(v as f64)
    } else {
        v as f64
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
