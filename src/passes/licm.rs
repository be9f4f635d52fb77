//! Loop-invariant code motion: an instruction of a scan body that reads only the loop's
//! invariants (and other such instructions) computes the same value at every step, so it
//! moves out of the loop into the enclosing graph, and its value enters the body as a
//! further invariant. Typical: the `concat` of the input and recurrent weights that
//! `batch_matmuls` makes, and the transposed weights of a gradient loop. Counts
//! `hoisted_from_loop`.
//!
//! The same pass moves *accumulated products* out of a loop: a carry `acc` (not the first)
//! whose new value is `acc + matmul(transpose(x), y)` and that nothing else reads is the sum
//! over the steps of `x_t^T y_t`, which is one GEMM after the loop, `X^T Y` with `X` and `Y`
//! the steps' `x` and `y` stacked (and reshaped to rows: every row of every step). The loop
//! yields `x` and `y` per step instead (a sequence's slice is its operand, already stacked;
//! a value the loop already yields per step is reused) and drops the carry. A gradient loop
//! accumulates the gradient of each weight this way (a recurrent kernel's `h_t^T dz_t`), so
//! its T small GEMMs become one. Counts `accumulation_out_of_loop`.

use super::PassReport;
use crate::fused::FusedInst;
use crate::graph::{Graph, Node, NodeId};
use crate::op::Op;
use crate::scan::ScanBody;

/// Hoists the loop-invariant instructions of every scan body of `g` (see the module
/// documentation).
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("licm");
    for id in g.node_ids() {
        // (moving an accumulation out removes the node of its result)
        let Some(Op::Scan(body)) = g.get(id).map(|n| &n.op) else {
            continue;
        };
        let body = body.clone();
        let n = hoist(g, id, &body);
        report.count("hoisted_from_loop", n);
        while let Op::Scan(body) = &g[id].op {
            let body = body.clone();
            if !accumulation_out_of_loop(g, id, &body) {
                break;
            }
            report.count("accumulation_out_of_loop", 1);
        }
    }
    report
}

/// Moves one accumulated product of `body`, the body of scan node `id`, out of the loop
/// (see the module documentation); whether it found one.
fn accumulation_out_of_loop(graph: &mut Graph, id: NodeId, body: &ScanBody) -> bool {
    // rewritten on a copy, kept only when every step succeeds
    let mut copy = graph.clone();
    let g = &mut copy;
    let Some((i, x, y)) = accumulation(body) else {
        return false;
    };
    let operands = g.operands(id);
    let fixed = body.carries + body.sequences;
    // the result nodes of the scan, by index (the accumulator is not result 0)
    let results: Vec<(usize, NodeId)> = g
        .users(id)
        .into_iter()
        .filter_map(|u| match g[u].op {
            Op::ScanResult { index } => Some((index, u)),
            _ => None,
        })
        .collect();
    // the new body: carry i and its sum gone (values above them shift down), x and y yielded
    // per step unless the loop has them stacked already
    let a = body.yields[i];
    let shift = |v: usize| v - usize::from(v > i) - usize::from(v > a);
    let stacked_at = |v: usize| body.yields[body.carries..].iter().position(|&w| w == v);
    let mut yields: Vec<usize> = body.yields.iter().map(|&v| shift(v)).collect();
    yields.remove(i);
    let mut extra = Vec::new();
    for v in [x, y] {
        let is_seq = (body.carries..fixed).contains(&v);
        if !is_seq && stacked_at(v).is_none() && !extra.contains(&v) {
            extra.push(v);
            yields.push(shift(v));
        }
    }
    let new_body = ScanBody {
        params: body.params - 1,
        carries: body.carries - 1,
        sequences: body.sequences,
        reverse: body.reverse,
        axis: body.axis,
        insts: body
            .insts
            .iter()
            .enumerate()
            .filter(|&(k, _)| body.params + k != a)
            .map(|(_, inst)| FusedInst {
                op: inst.op.clone(),
                args: inst.args.iter().map(|&a| shift(a)).collect(),
                ty: inst.ty.clone(),
            })
            .collect(),
        yields,
    };
    let mut new_operands = operands.clone();
    let init = new_operands.remove(i);
    let types: Vec<&crate::shape::TensorType> = new_operands.iter().map(|&o| &g[o].ty).collect();
    let Ok(new_types) = new_body.result_types(&types) else {
        return false;
    };
    let node = |op: Op, ty: crate::shape::TensorType, g: &Graph| Node {
        op,
        ty,
        name: None,
        loc: g[id].loc.clone(),
        grad_of: g[id].grad_of,
    };
    if let Some(n) = g.get_mut(id) {
        n.op = Op::Scan(new_body.clone());
        n.ty = new_types[0].clone();
    }
    g.set_operands(id, &new_operands);
    // old result index -> new: the carries above i shift down, the stacked outputs too
    let renumber = |k: usize| if k > i { k - 1 } else { k };
    let mut accumulated = None;
    for &(k, r) in &results {
        if k == i {
            accumulated = Some(r);
        } else if let (Some(n), Some(t)) = (g.get_mut(r), new_types.get(renumber(k))) {
            n.op = Op::ScanResult { index: renumber(k) };
            n.ty = t.clone();
        }
    }
    // the stacked x and y
    let stacked = |v: usize, g: &mut Graph| -> Option<NodeId> {
        if (body.carries..fixed).contains(&v) {
            return Some(operands[v]);
        }
        let index = match stacked_at(v) {
            Some(j) => body.carries - 1 + j,
            // the new per-step outputs come last
            None => new_body.yields.len() - extra.len() + extra.iter().position(|&e| e == v)?,
        };
        if index == 0 {
            return Some(id);
        }
        if let Some(&(_, r)) = results
            .iter()
            .find(|&&(k, _)| renumber(k) == index && k != i)
        {
            return Some(r);
        }
        let ty = new_types.get(index)?.clone();
        Some(g.add_raw(node(Op::ScanResult { index }, ty, g), &[id]))
    };
    let (Some(xs), Some(ys)) = (stacked(x, g), stacked(y, g)) else {
        return false;
    };
    let Some(acc) = accumulated else {
        // nothing reads the sum: the loop just drops the carry
        *graph = copy;
        return true;
    };
    let rows = |g: &mut Graph, s: NodeId| -> Option<NodeId> {
        let t = g[s].ty.clone();
        let cols = *t.shape.dims().last()?;
        let op = Op::Reshape {
            shape: crate::shape::Shape(vec![t.shape.numel() / cols.max(1), cols]),
        };
        let ty = op.infer(&[&t], None).ok()?;
        Some(g.add_raw(node(op, ty, g), &[s]))
    };
    let (Some(x2), Some(y2)) = (rows(g, xs), rows(g, ys)) else {
        return false;
    };
    let add = |g: &mut Graph, op: Op, args: &[NodeId]| -> Option<NodeId> {
        let types: Vec<&crate::shape::TensorType> = args.iter().map(|&a| &g[a].ty).collect();
        let ty = op.infer(&types, None).ok()?;
        Some(g.add_raw(node(op, ty, g), args))
    };
    let Some(xt) = add(g, Op::Transpose { perm: vec![1, 0] }, &[x2]) else {
        return false;
    };
    let Some(p) = add(g, Op::Matmul, &[xt, y2]) else {
        return false;
    };
    let Some(sum) = add(g, Op::Binary(crate::op::BinaryOp::Add), &[init, p]) else {
        return false;
    };
    g.replace_all_uses(acc, sum);
    g.remove(acc);
    *graph = copy;
    true
}

/// A carry `i >= 1` of `body` whose new value is `carry + matmul(transpose(x), y)` and that
/// nothing else reads: `(i, x, y)` (body values).
fn accumulation(body: &ScanBody) -> Option<(usize, usize, usize)> {
    let uses = |v: usize| {
        body.insts
            .iter()
            .flat_map(|i| &i.args)
            .filter(|&&a| a == v)
            .count()
            + body.yields.iter().filter(|&&w| w == v).count()
    };
    let inst = |v: usize| v.checked_sub(body.params).and_then(|k| body.insts.get(k));
    let invariant = body.invariant_values();
    (1..body.carries).find_map(|i| {
        let a = body.yields[i];
        let add = inst(a)?;
        if add.op != Op::Binary(crate::op::BinaryOp::Add) || uses(i) != 1 || uses(a) != 1 {
            return None;
        }
        let prod = match add.args[..] {
            [c, p] if c == i => p,
            [p, c] if c == i => p,
            _ => return None,
        };
        let mm = inst(prod)?;
        if mm.op != Op::Matmul || mm.ty != add.ty {
            return None;
        }
        let (tx, y) = (mm.args[0], mm.args[1]);
        let t = inst(tx)?;
        if t.op != (Op::Transpose { perm: vec![1, 0] }) {
            return None;
        }
        let x = t.args[0];
        (!invariant[x] && !invariant[y]).then_some((i, x, y))
    })
}

/// Hoists the invariant instructions of `body`, the body of scan node `id`; returns how many.
fn hoist(g: &mut Graph, id: NodeId, body: &ScanBody) -> usize {
    let n_values = body.params + body.insts.len();
    let invariant = body.invariant_values();
    let hoisted: Vec<usize> = (0..body.insts.len())
        .filter(|&i| invariant[body.params + i])
        .collect();
    if hoisted.is_empty() {
        return 0;
    }
    // the hoisted instructions as nodes of the enclosing graph
    let operands = g.operands(id);
    let mut outer: Vec<Option<NodeId>> = vec![None; n_values];
    for (p, &o) in operands.iter().enumerate() {
        outer[p] = Some(o);
    }
    for &i in &hoisted {
        let inst = &body.insts[i];
        let args: Option<Vec<NodeId>> = inst.args.iter().map(|&a| outer[a]).collect();
        let Some(args) = args else {
            return 0;
        };
        let node = Node {
            op: inst.op.clone(),
            ty: inst.ty.clone(),
            name: None,
            loc: g[id].loc.clone(),
            grad_of: g[id].grad_of,
        };
        outer[body.params + i] = Some(g.add_raw(node, &args));
    }
    // the body without them: hoisted values the rest reads become further invariants
    let mut read = vec![false; n_values];
    for (i, inst) in body.insts.iter().enumerate() {
        if !invariant[body.params + i] {
            for &a in &inst.args {
                read[a] = true;
            }
        }
    }
    for &y in &body.yields {
        read[y] = true;
    }
    let new_params: Vec<usize> = hoisted
        .iter()
        .map(|&i| body.params + i)
        .filter(|&v| read[v])
        .collect();
    let n_params = body.params + new_params.len();
    let mut renum = vec![usize::MAX; n_values];
    for (p, slot) in renum.iter_mut().enumerate().take(body.params) {
        *slot = p;
    }
    for (j, &v) in new_params.iter().enumerate() {
        renum[v] = body.params + j;
    }
    let mut insts = Vec::new();
    for (i, inst) in body.insts.iter().enumerate() {
        if invariant[body.params + i] {
            continue;
        }
        renum[body.params + i] = n_params + insts.len();
        insts.push(FusedInst {
            op: inst.op.clone(),
            args: inst.args.iter().map(|&a| renum[a]).collect(),
            ty: inst.ty.clone(),
        });
    }
    let new_body = ScanBody {
        params: n_params,
        carries: body.carries,
        sequences: body.sequences,
        reverse: body.reverse,
        axis: body.axis,
        insts,
        yields: body.yields.iter().map(|&v| renum[v]).collect(),
    };
    let mut all = operands;
    all.extend(new_params.iter().filter_map(|&v| outer[v]));
    // invariants only the hoisted instructions read are no longer operands; hoisted values
    // nothing reads any more (only other hoisted ones did) stay until dce
    let (pruned, kept) = new_body.prune_invariants();
    let new_operands: Vec<NodeId> = kept.iter().map(|&i| all[i]).collect();
    if let Some(n) = g.get_mut(id) {
        n.op = Op::Scan(pruned);
    }
    g.set_operands(id, &new_operands);
    hoisted.len()
}
