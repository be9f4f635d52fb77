//! Loop-invariant code motion: an instruction of a scan body that reads only the loop's
//! invariants (and other such instructions) computes the same value at every step, so it
//! moves out of the loop into the enclosing graph, and its value enters the body as a
//! further invariant. Typical: the `concat` of the input and recurrent weights that
//! `batch_matmuls` makes, and the transposed weights of a gradient loop. Counts
//! `hoisted_from_loop`.

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
        let Op::Scan(body) = &g[id].op else {
            continue;
        };
        let body = body.clone();
        let n = hoist(g, id, &body);
        report.count("hoisted_from_loop", n);
    }
    report
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
