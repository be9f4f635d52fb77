//! Data parallelism: an all-reduce (mean over the ranks) between every gradient and the
//! optimizer update that reads it, so that a training step becomes data-parallel with no
//! change to the model.
//!
//! In: an update graph as [`crate::optim::sharded_training_step`] builds it, whose gradients
//! are the inputs `grad<s>.<param>` ([`crate::optim::grad_input`]: shard `s`'s gradient of
//! `param`). Out: the same graph where the gradient of each param (the average of its
//! shards: the largest value made from its gradient inputs by sums and by products and
//! quotients with constants, before clipping and the optimizer) reaches its readers through
//! an [`Op::AllReduce`] with `reduce=mean`.
//!
//! Small gradients share one collective, as Horovod's tensor fusion and PyTorch DDP's
//! buckets do: in param order, gradients under [`SMALL_ELEMENTS`] are flattened and
//! concatenated into buckets of at most [`BUCKET_ELEMENTS`] elements, each bucket is
//! all-reduced once and sliced back; a larger gradient is all-reduced alone, without the
//! copies. One call per bucket saves the per-message latency of the small bias gradients.
//! Buckets appear in the graph's canonical order at the position of their last gradient.
//!
//! Over a world of one rank an all-reduce is the identity, so the pass preserves results as
//! every pass does. It is idempotent: a graph that already holds a collective is left as it
//! is. Collectives must run in the same order on every rank: every rank builds and rewrites
//! the same graph with the same passes, whose results depend on the graph alone, and the
//! code generator follows the graph's canonical order ([`Graph::topo_order`]), so the calls
//! come in the same order everywhere; no pass merges an all-reduce into a fused loop (it is
//! [`crate::op::OpClass::Standalone`]), `fold` never folds one, and CSE merges two only
//! where every rank merges them.

use super::PassReport;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Op};
use crate::optim::grad_input;
use std::collections::HashSet;

/// Largest bucket, in f32 elements (4 MiB): small gradients are packed into buckets up to
/// this size.
pub const BUCKET_ELEMENTS: usize = 1 << 20;

/// Gradients of this many f32 elements (256 KiB) or more are all-reduced on their own: the
/// per-call latency is small beside their transfer, and bucketing them would copy them in and
/// out of the bucket.
pub const SMALL_ELEMENTS: usize = 1 << 16;

/// Inserts the all-reduces. Counts `all_reduce` (collectives inserted) and `bucketed`
/// (gradients that share a bucket with others); remarks on the bytes reduced per call.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("data_parallel");
    if g.node_ids()
        .into_iter()
        .any(|id| matches!(g[id].op, Op::AllReduce { .. }))
    {
        report.remark("the graph already has collectives: left as it is");
        return report;
    }
    let Ok(order) = g.topo_order() else {
        return report;
    };
    // per param: the frontier of its gradient region, with the users outside it
    let mut grads: Vec<(NodeId, Vec<NodeId>)> = Vec::new();
    for p in g.params() {
        let Some(name) = g[p].name.clone() else {
            continue;
        };
        let mut region: HashSet<NodeId> = (0..)
            .map_while(|s| g.find(&grad_input(s, &name)))
            .filter(|&id| g[id].op == Op::Input)
            .collect();
        if region.is_empty() {
            continue;
        }
        for &id in &order {
            if g[id].op.is_leaf() || region.contains(&id) {
                continue;
            }
            // the shards' average: sums of gradients, scaled by constants (linear, so
            // it commutes with the mean over the ranks)
            let ops = g.operands(id);
            let inside = |o: &NodeId| region.contains(o);
            let constant = |o: &NodeId| matches!(g[*o].op, Op::Const { .. });
            let average = match g[id].op {
                Op::Binary(BinaryOp::Add) => ops.iter().all(inside),
                Op::Binary(BinaryOp::Mul) => ops.iter().any(inside) && ops.iter().any(constant),
                Op::Binary(BinaryOp::Div) => inside(&ops[0]) && constant(&ops[1]),
                _ => false,
            };
            if average {
                region.insert(id);
            }
        }
        for &id in &order {
            if !region.contains(&id) {
                continue;
            }
            let outside: Vec<NodeId> = g
                .users(id)
                .into_iter()
                .filter(|u| !region.contains(u))
                .collect();
            let root = g.outputs().iter().any(|o| o.node == id)
                || g.updates().iter().any(|u| u.value == id);
            if !outside.is_empty() || root {
                grads.push((id, outside));
            }
        }
    }
    // buckets, in param order
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut open: Option<usize> = None;
    let mut fill = 0;
    for (i, (id, _)) in grads.iter().enumerate() {
        let n = g[*id].ty.shape.numel();
        if n >= SMALL_ELEMENTS {
            buckets.push(vec![i]);
            continue;
        }
        match open {
            Some(b) if fill + n <= BUCKET_ELEMENTS => buckets[b].push(i),
            _ => {
                open = Some(buckets.len());
                buckets.push(vec![i]);
                fill = 0;
            }
        }
        fill += n;
    }
    let mut reduced = vec![None; grads.len()];
    for b in &buckets {
        match reduce_bucket(g, &grads, b) {
            Ok(r) => {
                for (&i, r) in b.iter().zip(r) {
                    reduced[i] = Some(r);
                }
            }
            Err(e) => {
                report.remark(format!("not rewritten: {e}"));
                return report;
            }
        }
        let elements: usize = b.iter().map(|&i| g[grads[i].0].ty.shape.numel()).sum();
        report.count("all_reduce", 1);
        if b.len() > 1 {
            report.count("bucketed", b.len());
        }
        report.remark(format!(
            "{} gradient(s), {} bytes in one all_reduce",
            b.len(),
            elements * 4
        ));
    }
    for ((id, users), r) in grads.iter().zip(reduced) {
        let Some(r) = r else { continue };
        for &u in users {
            let ops: Vec<NodeId> = g
                .operands(u)
                .into_iter()
                .map(|o| if o == *id { r } else { o })
                .collect();
            g.set_operands(u, &ops);
        }
        for o in g.outputs_mut() {
            if o.node == *id {
                o.node = r;
            }
        }
        for u in g.updates_mut() {
            if u.value == *id {
                u.value = r;
            }
        }
    }
    report
}

/// All-reduces the gradients `bucket` (indices into `grads`) as one flat buffer (alone
/// when there is one) and returns the node that replaces each.
fn reduce_bucket(
    g: &mut Graph,
    grads: &[(NodeId, Vec<NodeId>)],
    bucket: &[usize],
) -> Result<Vec<NodeId>, crate::graph::BuildError> {
    let mean = Op::AllReduce { mean: true };
    if let [i] = bucket {
        return Ok(vec![g.add(mean, &[grads[*i].0])?]);
    }
    let mut flat = Vec::with_capacity(bucket.len());
    for &i in bucket {
        let id = grads[i].0;
        let n = g[id].ty.shape.numel();
        flat.push(if g[id].ty.shape.dims() == [n] {
            id
        } else {
            g.reshape(id, [n])?
        });
    }
    let joined = g.concat(&flat, 0)?;
    let all = g.add(mean, &[joined])?;
    let mut out = Vec::with_capacity(bucket.len());
    let mut at = 0;
    for &i in bucket {
        let shape = g[grads[i].0].ty.shape.clone();
        let n = shape.numel();
        let part = g.slice(all, &[at], &[at + n])?;
        at += n;
        out.push(if shape.dims() == [n] {
            part
        } else {
            g.reshape(part, shape)?
        });
    }
    Ok(out)
}

/// Bytes all-reduced by one run of `g` (4 per f32 element of every all-reduce).
pub fn bytes_reduced(g: &Graph) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| matches!(g[id].op, Op::AllReduce { .. }))
        .map(|id| g[id].ty.shape.numel() * 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{sharded_training_step, Optimizer};

    fn mlp() -> Graph {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ir/mlp.ir"))
            .expect("ir/mlp.ir");
        crate::text::parse(&text, "mlp.ir").expect("parses")
    }

    #[test]
    fn every_gradient_is_reduced_once() {
        let step = sharded_training_step(&mlp(), "loss", &Optimizer::adam(), None, 64, 2, 1)
            .expect("splits");
        let mut g = step.update_parts[0].graph.clone();
        let r = run(&mut g);
        // the 784x128 kernel alone, the three others in one bucket
        assert_eq!(r.counts.get("all_reduce"), Some(&2), "{r}");
        assert_eq!(r.counts.get("bucketed"), Some(&3), "{r}");
        assert_eq!(bytes_reduced(&g), 101_770 * 4);
        assert!(!run(&mut g).changed());
    }

    /// With global-norm clipping the norm is of the averaged gradients: every all-reduce
    /// comes before the clip, which reads only all-reduced values.
    #[test]
    fn gradients_are_reduced_before_clipping() {
        let clip = crate::optim::Clip::GlobalNorm(1.0);
        let step = sharded_training_step(&mlp(), "loss", &Optimizer::sgd(), Some(&clip), 64, 2, 4)
            .expect("splits");
        assert_eq!(
            step.update_parts.len(),
            1,
            "clipping keeps the update whole"
        );
        let mut g = step.update_parts[0].graph.clone();
        assert!(run(&mut g).changed());
        assert_eq!(bytes_reduced(&g), 101_770 * 4);
        // no value computed from a gradient input reaches a non-linear op except through
        // an all_reduce
        for id in g.node_ids() {
            if let Op::Unary(_) = g[id].op {
                let mut stack = g.operands(id);
                let mut seen = HashSet::new();
                while let Some(o) = stack.pop() {
                    if !seen.insert(o) || matches!(g[o].op, Op::AllReduce { .. }) {
                        continue;
                    }
                    let name = g[o].name.as_deref().unwrap_or("");
                    assert!(!name.starts_with("grad"), "{name} reaches {:?}", g[id].op);
                    stack.extend(g.operands(o));
                }
            }
        }
    }

    /// A graph without gradient inputs (any forward graph) is left as it is.
    #[test]
    fn a_graph_without_gradient_inputs_is_unchanged() {
        let mut g = mlp();
        let before = crate::text::print(&g);
        assert!(!run(&mut g).changed());
        assert_eq!(crate::text::print(&g), before);
    }
}
