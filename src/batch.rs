//! The batch axis: which values of a forward graph carry one row per example, and the same
//! graph for a smaller batch.
//!
//! A training step can be split along its batch (each shard runs forward and backward on
//! its slice of the examples, the shards' gradients are averaged, the update runs once;
//! see [`crate::optim::sharded_training_step`]) exactly when the loss is the mean over the
//! examples of per-example terms, plus terms that do not depend on the data. [`analyze`]
//! decides this for a forward graph and a batch size `B`:
//!
//! 1. *Batched* values have the batch as axis 0. Each node gets a yes/no unknown; inputs
//!    whose leading dimension is `B` are batched, params, state, dense constants and other
//!    inputs are not, and every op ties its operands' unknowns to its result's (elementwise
//!    ops, matmul's left operand, conv2d's input, pooling, reshapes that keep axis 0 or
//!    keep each example's rows together (`[B, T, F]` to `[B*T, F]`: axis 0 then holds `T`
//!    rows per example, and rebatching scales it),
//!    transposes that fix it, reductions, softmax and argmax over other axes, full-extent
//!    slices of axis 0, cross-entropies, one_hot). Splat constants and broadcasts of
//!    lower-rank values are free: they take whatever their users need (the zero initial
//!    state of an unrolled RNN is batched). A union-find solves the ties; a contradiction
//!    names the node.
//! 2. *Batch means*: a `reduce_mean` whose axes include a batched operand's axis 0, and what
//!    is computed from batch means affinely (add or subtract another batch mean or a
//!    data-independent value, multiply or divide by a data-independent value, negate,
//!    reshape). The mean of the shards' batch means is the batch mean of the whole batch,
//!    so averaging the shards' losses, metrics and gradients gives the full batch's.
//!    Anything else made from a batch mean (a batch statistic feeding the examples, as batch
//!    normalization does, or `reduce_sum`/`reduce_max` over the batch) is refused, as is an
//!    output with one row per example.
//!
//! [`rebatch`] then makes the same graph for batches of `b`: axis 0 of every batched value,
//! the reshape and broadcast targets and slice ends that carry it become `b`.

use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, Literal, Op, ReduceOp, UnaryOp};
use std::collections::{HashMap, HashSet};

/// Why a graph cannot be split along its batch: the node and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot split {graph} along its batch of {batch}: {node}: {message}")]
pub struct BatchError {
    /// The graph's name.
    pub graph: String,
    /// The batch size asked for.
    pub batch: usize,
    /// The node, printed as `%name (op: type)`.
    pub node: String,
    /// What prevents the split.
    pub message: String,
}

/// The result of [`analyze`]: which nodes are batched and which are batch means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchAxes {
    /// The batch size `B`.
    pub batch: usize,
    /// Nodes whose axis 0 is the batch.
    pub batched: HashSet<NodeId>,
    /// Nodes that are batch means or affine in batch means.
    pub means: HashSet<NodeId>,
}

/// Union-find over the nodes' "batched" unknowns, with fixed values.
struct Ties {
    index: HashMap<NodeId, usize>,
    parent: Vec<usize>,
    /// Fixed value of a root, with the node that fixed it.
    fixed: Vec<Option<(bool, NodeId)>>,
}

impl Ties {
    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn fix(&mut self, id: NodeId, value: bool) -> Result<(), NodeId> {
        let r = self.find(self.index[&id]);
        match self.fixed[r] {
            Some((v, by)) if v != value => Err(by),
            Some(_) => Ok(()),
            None => {
                self.fixed[r] = Some((value, id));
                Ok(())
            }
        }
    }

    fn tie(&mut self, a: NodeId, b: NodeId) -> Result<(), NodeId> {
        let (ra, rb) = (self.find(self.index[&a]), self.find(self.index[&b]));
        if ra == rb {
            return Ok(());
        }
        match (self.fixed[ra], self.fixed[rb]) {
            (Some((va, _)), Some((vb, by))) if va != vb => return Err(by),
            (None, f) => self.fixed[ra] = f,
            _ => {}
        }
        self.parent[rb] = ra;
        Ok(())
    }

    fn batched(&mut self, id: NodeId) -> bool {
        let r = self.find(self.index[&id]);
        matches!(self.fixed[r], Some((true, _)))
    }
}

/// Decides which values of `g` carry a batch of `batch` examples along axis 0 and checks
/// that `g` can be split along it (see the module documentation).
pub fn analyze(g: &Graph, batch: usize) -> Result<BatchAxes, BatchError> {
    analyze_with(g, batch, &HashMap::new(), false)
}

/// The body of a batch-major scan (`axis >= 1`) as a graph, analyzed: its carries and
/// sequence slices batched when the scan's are (`batched`), its invariants not. `operands`
/// are the scan's operand types. The body must map each example's row to the same row
/// (every yield batched exactly when the scan is) and take no batch means.
fn scan_body_axes(
    body: &crate::scan::ScanBody,
    operands: &[&crate::shape::TensorType],
    batched: bool,
    batch: usize,
) -> Result<(Graph, BatchAxes), String> {
    let params = body.param_types(operands).map_err(|e| e.0)?;
    let (bg, inputs) = body.to_graph(&params, &[])?;
    let fixed: HashMap<NodeId, bool> = inputs
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, batched && i < body.carries + body.sequences))
        .collect();
    let axes = analyze_with(&bg, batch, &fixed, true)
        .map_err(|e| format!("in its body: {}: {}", e.node, e.message))?;
    if let Some(m) = axes.means.iter().next() {
        return Err(format!(
            "its body takes a mean over the batch ({})",
            crate::verify::node_label(&bg, *m)
        ));
    }
    for (j, o) in bg.outputs().iter().enumerate() {
        if axes.batched.contains(&o.node) != batched {
            return Err(format!(
                "yield {j} of its body {} one row per example where the scan's carries and sequences {}",
                if batched { "does not have" } else { "has" },
                if batched { "do" } else { "do not" }
            ));
        }
    }
    Ok((bg, axes))
}

/// [`analyze`] with the inputs in `fixed` batched or not as it says (a scan body's
/// parameters), and for a scan body (`body`) without the checks of a whole step's outputs.
fn analyze_with(
    g: &Graph,
    batch: usize,
    fixed_inputs: &HashMap<NodeId, bool>,
    body: bool,
) -> Result<BatchAxes, BatchError> {
    let label = |id: NodeId| {
        format!(
            "{} ({}: {})",
            crate::verify::node_label(g, id),
            g[id].op.name(),
            g[id].ty
        )
    };
    let fail = |id: NodeId, message: String| BatchError {
        graph: g.name.clone(),
        batch,
        node: label(id),
        message,
    };
    let order = g
        .topo_order()
        .map_err(|cycle| fail(cycle[0], "the graph has a cycle".into()))?;
    let mut t = Ties {
        index: order.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
        parent: (0..order.len()).collect(),
        fixed: vec![None; order.len()],
    };
    let lead = |id: NodeId| g[id].ty.shape.dims().first().copied();
    let rank = |id: NodeId| g[id].ty.shape.rank();
    for &id in &order {
        let ops = g.operands(id);
        let conflict = |by: NodeId| {
            fail(
                id,
                format!(
                    "its axis 0 would have to be the batch and not be it at once (see {})",
                    label(by)
                ),
            )
        };
        let fix = |t: &mut Ties, n: NodeId, v: bool| t.fix(n, v).map_err(conflict);
        let tie = |t: &mut Ties, a: NodeId, b: NodeId| t.tie(a, b).map_err(conflict);
        match &g[id].op {
            Op::Input => match fixed_inputs.get(&id) {
                Some(&b) => fix(&mut t, id, b)?,
                None => fix(&mut t, id, rank(id) >= 1 && lead(id) == Some(batch))?,
            },
            Op::Param { .. } | Op::State { .. } => fix(&mut t, id, false)?,
            Op::Const { value } => {
                if matches!(value, Literal::Dense(_)) || lead(id) != Some(batch) {
                    fix(&mut t, id, false)?;
                }
            }
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Cast { .. } => {
                for &o in &ops {
                    if rank(o) == rank(id) && rank(id) >= 1 && lead(o) == lead(id) {
                        tie(&mut t, o, id)?;
                    } else {
                        // broadcast along axis 0: the operand's axis 0 is not the result's
                        fix(&mut t, o, false)?;
                    }
                }
            }
            Op::Broadcast { .. } => {
                if rank(ops[0]) == rank(id) && lead(ops[0]) == lead(id) {
                    tie(&mut t, ops[0], id)?;
                } else {
                    fix(&mut t, ops[0], false)?;
                }
            }
            // a reshape keeps each example's elements together (row-major) when both axes 0
            // are whole multiples of the batch: [B, T, F] -> [B*T, F] has T rows per example
            Op::Reshape { .. } => {
                let whole = |n: NodeId| lead(n).is_some_and(|d| d > 0 && d % batch == 0);
                if rank(ops[0]) >= 1
                    && rank(id) >= 1
                    && (lead(ops[0]) == lead(id) || (whole(ops[0]) && whole(id)))
                {
                    tie(&mut t, ops[0], id)?;
                } else {
                    fix(&mut t, ops[0], false)?;
                    fix(&mut t, id, false)?;
                }
            }
            Op::Transpose { perm } => {
                if perm.first() == Some(&0) {
                    tie(&mut t, ops[0], id)?;
                } else {
                    fix(&mut t, ops[0], false)?;
                    fix(&mut t, id, false)?;
                }
            }
            Op::Reduce { axes, .. } => {
                if axes.contains(&0) {
                    fix(&mut t, id, false)?;
                } else {
                    tie(&mut t, ops[0], id)?;
                }
            }
            Op::Argmax { axis } | Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                if *axis == 0 {
                    fix(&mut t, ops[0], false)?;
                    fix(&mut t, id, false)?;
                } else {
                    tie(&mut t, ops[0], id)?;
                }
            }
            Op::Matmul | Op::Conv2d { .. } => {
                tie(&mut t, ops[0], id)?;
                fix(&mut t, ops[1], false)?;
            }
            Op::MaxPool2d { .. } | Op::OneHot { .. } => tie(&mut t, ops[0], id)?,
            Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy => {
                tie(&mut t, ops[0], id)?;
                tie(&mut t, ops[1], id)?;
            }
            Op::Slice { begin, end } => {
                let full = begin.first() == Some(&0) && end.first().copied() == lead(ops[0]);
                if full && rank(id) >= 1 {
                    tie(&mut t, ops[0], id)?;
                } else {
                    fix(&mut t, ops[0], false)?;
                    fix(&mut t, id, false)?;
                }
            }
            Op::Concat { axis } => {
                for &o in &ops {
                    if *axis == 0 {
                        fix(&mut t, o, false)?;
                    } else {
                        tie(&mut t, o, id)?;
                    }
                }
                if *axis == 0 {
                    fix(&mut t, id, false)?;
                }
            }
            // an embedding lookup: each example's indices pick rows of a table
            Op::Gather { axis } => {
                if *axis == 0 {
                    fix(&mut t, ops[0], false)?;
                    if rank(ops[1]) >= 1 {
                        tie(&mut t, ops[1], id)?;
                    } else {
                        fix(&mut t, id, false)?;
                    }
                } else {
                    tie(&mut t, ops[0], id)?;
                    fix(&mut t, ops[1], false)?;
                }
            }
            Op::ScatterAdd { axis, .. } if *axis > 0 => {
                tie(&mut t, ops[0], id)?;
                fix(&mut t, ops[1], false)?;
            }
            // a collective over the ranks: its operand is not split along the batch
            Op::AllReduce { .. } => {
                fix(&mut t, ops[0], false)?;
                fix(&mut t, id, false)?;
            }
            Op::ScatterAdd { .. } => return Err(fail(
                id,
                "a scatter_add along axis 0 sums over its indices' rows, which may be the batch"
                    .into(),
            )),
            Op::Conv2dInputGrad { .. }
            | Op::Conv2dFilterGrad { .. }
            | Op::MaxPool2dGrad { .. }
            | Op::Fused(_)
            | Op::FusedResult { .. } => return Err(fail(
                id,
                "only forward graphs are split (gradient and fused ops are made after the split)"
                    .into(),
            )),
            // a batch-major scan: its carries, sequences and results have the batch as axis 0
            // (the body is checked to keep each example's row below, once the ties are solved)
            Op::Scan(body) if body.axis >= 1 => {
                for &o in &ops[..body.carries + body.sequences] {
                    tie(&mut t, o, id)?;
                }
                for &o in &ops[body.carries + body.sequences..] {
                    fix(&mut t, o, false)?;
                }
            }
            Op::Scan(_) => return Err(fail(
                id,
                "a scan over axis 0 runs along the batch axis of its sequences; only batch-major scans (axis=1) are split"
                    .into(),
            )),
            Op::ScanResult { .. } => tie(&mut t, ops[0], id)?,
        }
    }
    let batched: HashSet<NodeId> = order.iter().copied().filter(|&id| t.batched(id)).collect();
    for &id in &order {
        if let Op::Scan(sb) = &g[id].op {
            let types: Vec<_> = g.operands(id).iter().map(|&o| &g[o].ty).collect();
            scan_body_axes(sb, &types, batched.contains(&id), batch).map_err(|m| fail(id, m))?;
        }
    }
    let mut means = HashSet::new();
    for &id in &order {
        let ops = g.operands(id);
        let from_mean: Vec<bool> = ops.iter().map(|o| means.contains(o)).collect();
        if let Op::Reduce { kind, axes, .. } = &g[id].op {
            if axes.contains(&0) && batched.contains(&ops[0]) {
                if *kind != ReduceOp::Mean {
                    return Err(fail(
                        id,
                        format!(
                            "a {} over the batch: only means over the batch can be averaged across shards",
                            g[id].op.name()
                        ),
                    ));
                }
                means.insert(id);
                continue;
            }
        }
        if !from_mean.contains(&true) {
            continue;
        }
        let plain = |i: usize| !batched.contains(&ops[i]) && !from_mean[i];
        let affine = match &g[id].op {
            Op::Binary(BinaryOp::Add | BinaryOp::Sub) => (0..2).all(|i| from_mean[i] || plain(i)),
            Op::Binary(BinaryOp::Mul) => (from_mean[0] && plain(1)) || (plain(0) && from_mean[1]),
            Op::Binary(BinaryOp::Div) => from_mean[0] && plain(1),
            Op::Unary(UnaryOp::Neg) | Op::Reshape { .. } | Op::Broadcast { .. } => true,
            Op::Reduce {
                kind: ReduceOp::Sum | ReduceOp::Mean,
                ..
            } => true,
            _ => false,
        };
        if !affine {
            return Err(fail(
                id,
                "uses a mean over the batch other than affinely, so the mean over shards would differ from the whole batch's".into(),
            ));
        }
        means.insert(id);
    }
    for o in g.outputs().iter().filter(|_| !body) {
        if batched.contains(&o.node) {
            return Err(fail(
                o.node,
                format!(
                    "output {} has one row per example; only batch means and data-independent values can be outputs of a split step",
                    o.name
                ),
            ));
        }
    }
    Ok(BatchAxes {
        batch,
        batched,
        means,
    })
}

/// The graph `g` analyzed as `axes` for batches of `b` examples: axis 0 of every batched
/// value, and the reshape/broadcast targets and slice ends that carry it, become `b`.
pub fn rebatch(g: &Graph, axes: &BatchAxes, b: usize) -> Graph {
    let mut out = g.clone();
    // axis 0 holds `k` rows per example (k = 1 but after a reshape that merged axes)
    let rows = |d: &mut usize| *d = *d / axes.batch.max(1) * b;
    for &id in &axes.batched {
        let Some(n) = out.get_mut(id) else { continue };
        if let Some(d) = n.ty.shape.0.first_mut() {
            rows(d);
        }
        match &mut n.op {
            Op::Reshape { shape } | Op::Broadcast { shape } => {
                if let Some(d) = shape.0.first_mut() {
                    rows(d);
                }
            }
            Op::Slice { end, .. } => {
                if let Some(d) = end.first_mut() {
                    rows(d);
                }
            }
            Op::ScatterAdd { shape, .. } => {
                if let Some(d) = shape.0.first_mut() {
                    rows(d);
                }
            }
            _ => {}
        }
    }
    // a batched scan's body: the same body for rows of `b`
    for &id in &axes.batched {
        let Op::Scan(sb) = &g[id].op else { continue };
        let types: Vec<_> = g.operands(id).iter().map(|&o| &g[o].ty).collect();
        let Ok((bg, body_axes)) = scan_body_axes(sb, &types, true, axes.batch) else {
            continue; // analyze accepted it, so this does not happen
        };
        let smaller = rebatch(&bg, &body_axes, b);
        let params = sb.param_nodes(&smaller);
        if let Ok((new_body, _)) = crate::scan::ScanBody::from_graph(
            &smaller,
            &params,
            sb.carries,
            sb.sequences,
            sb.reverse,
            sb.axis,
        ) {
            if let Some(n) = out.get_mut(id) {
                n.op = Op::Scan(new_body);
            }
        }
    }
    out
}
