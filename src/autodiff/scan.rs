//! The gradient of a `scan` ([`crate::scan`]): a reverse scan.
//!
//! For a forward loop `(c_{t+1}, y_t) = f(c_t, x_t, w)` the backward loop runs the steps in
//! the other direction with the carry cotangent `dc` (starting from the final carries'
//! cotangent) and one accumulator per invariant that wants a gradient:
//!
//! ```text
//!   dc_t, dx_t, dw_t = vjp(f at (c_t, x_t, w))(dc, dy_t);   dc <- dc_t;   dw_acc += dw_t
//! ```
//!
//! Its body is the forward body followed by its gradient, built by [`super::gradients`] on
//! the surrogate loss `sum(c' * dc) + sum(y * dy_t)`, whose gradient with respect to the step's
//! parameters is exactly that VJP. What the backward body reads of the forward step is saved
//! by the forward loop, which is extended to also yield, stacked along its axis, the carries
//! entering each step that the backward body reads and every other forward value it reads
//! (the *residuals*: for a SimpleRNN the step's `tanh`, whose derivative is `1 - y^2`);
//! values computed from the invariants alone are recomputed instead (`licm` hoists them out
//! of the backward loop), and the rest of the forward step is not computed again.
//!
//! Second order works the same way: a backward scan is an ordinary scan whose body is made of
//! differentiable ops.

use super::{Cx, GradError};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Op, ReduceOp};
use crate::scan::ScanBody;
use crate::shape::{DType, TensorType};
use std::collections::HashMap;

/// One contribution per operand of the scan node of `cx`, given the cotangent of each of its
/// results (`None`: no gradient reaches that result).
pub(super) fn vjp(
    cx: &mut Cx<'_>,
    cots: &[Option<NodeId>],
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let Op::Scan(body) = cx.node().op.clone() else {
        return Ok(vec![None; wants.len()]);
    };
    let fail = |cx: &Cx<'_>, message: String| GradError::Scan {
        node: cx.names.get(cx.node),
        message,
        loc: cx.node().loc.clone(),
    };
    let xs = cx.xs();
    let types: Vec<TensorType> = xs.iter().map(|&o| cx.g[o].ty.clone()).collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    let params = body.param_types(&refs).map_err(|e| fail(cx, e.0))?;
    let (k, m) = (body.carries, body.sequences);
    let q = body.yields.len() - k;
    if let Some(i) = (0..k).find(|&i| params[i].dtype != DType::F32) {
        return Err(fail(
            cx,
            format!(
                "carry {i} is {}: only f32 carries are differentiated",
                params[i]
            ),
        ));
    }
    let differentiable =
        |i: usize| wants.get(i).copied().unwrap_or(false) && params[i].dtype == DType::F32;

    // 1. The backward body: parameters, the forward step on them, the surrogate loss.
    let mut bg = Graph::new("scan_grad");
    let input = |bg: &mut Graph, name: String, ty: &TensorType| {
        bg.add_raw(
            Node {
                op: Op::Input,
                ty: ty.clone(),
                name: Some(name),
                loc: None,
                grad_of: None,
            },
            &[],
        )
    };
    let invariants: Vec<usize> = (k + m..body.params).collect();
    let wanted_inv: Vec<usize> = invariants
        .iter()
        .copied()
        .filter(|&i| differentiable(i))
        .collect();
    let wanted_seq: Vec<usize> = (k..k + m).filter(|&i| differentiable(i)).collect();
    let dys: Vec<usize> = (0..q)
        .filter(|&l| cots.get(k + l).copied().flatten().is_some())
        .collect();
    let dc_in: Vec<NodeId> = (0..k)
        .map(|i| input(&mut bg, format!("dc{i}"), &params[i]))
        .collect();
    let dw_in: Vec<NodeId> = wanted_inv
        .iter()
        .map(|&i| input(&mut bg, format!("dw{i}"), &params[i]))
        .collect();
    let hc_in: Vec<NodeId> = (0..k)
        .map(|i| input(&mut bg, format!("c{i}"), &params[i]))
        .collect();
    let x_in: Vec<NodeId> = (k..k + m)
        .map(|i| input(&mut bg, format!("x{i}"), &params[i]))
        .collect();
    let step_types = body.step_output_types(&params).map_err(|e| fail(cx, e))?;
    let dy_in: Vec<NodeId> = dys
        .iter()
        .map(|&l| input(&mut bg, format!("dy{l}"), &step_types[l]))
        .collect();
    let w_in: Vec<NodeId> = invariants
        .iter()
        .map(|&i| input(&mut bg, format!("w{i}"), &params[i]))
        .collect();
    let step_params: Vec<NodeId> = hc_in.iter().chain(&x_in).chain(&w_in).copied().collect();
    let values = body
        .inline_values(&mut bg, &step_params)
        .map_err(|e| fail(cx, e))?;
    let yields: Vec<NodeId> = body.yields.iter().map(|&v| values[v]).collect();
    let build = |r: Result<NodeId, crate::graph::BuildError>| r.map_err(GradError::Build);
    let mut terms = Vec::new();
    let pairs = (0..k)
        .map(|i| (yields[i], dc_in[i]))
        .chain(dys.iter().zip(&dy_in).map(|(&l, &d)| (yields[k + l], d)));
    for (v, d) in pairs {
        let p = build(bg.mul(v, d))?;
        let rank = bg[p].ty.shape.rank();
        let axes: Vec<usize> = (0..rank).collect();
        terms.push(build(bg.reduce(ReduceOp::Sum, p, &axes, false))?);
    }
    let Some((&first, rest)) = terms.split_first() else {
        return Ok(vec![None; wants.len()]);
    };
    let mut loss = first;
    for &t in rest {
        loss = build(bg.add2(loss, t))?;
    }
    let wrt: Vec<NodeId> = hc_in
        .iter()
        .copied()
        .chain(wanted_seq.iter().map(|&i| x_in[i - k]))
        .chain(wanted_inv.iter().map(|&i| w_in[i - k - m]))
        .collect();
    let grads =
        super::grad(&mut bg, loss, &wrt).map_err(|e| fail(cx, format!("in its body: {e}")))?;
    let (d_carry, rest) = grads.split_at(k);
    let (d_seq, d_inv) = rest.split_at(wanted_seq.len());
    for &d in d_carry {
        bg.push_output(format!("dc{}", bg.outputs().len()), d);
    }
    for (j, &d) in d_inv.iter().enumerate() {
        let acc = build(bg.add2(dw_in[j], d))?;
        bg.push_output(format!("dw{j}"), acc);
    }
    for (j, &d) in d_seq.iter().enumerate() {
        bg.push_output(format!("dx{j}"), d);
    }

    // 2. What the backward body reads of the forward step: saved per step (residuals) rather
    //    than recomputed, except what reads only invariants (recomputed; licm hoists it).
    crate::passes::dce::run(&mut bg);
    let invariant = body.invariant_values();
    let forward: HashMap<NodeId, usize> = values
        .iter()
        .enumerate()
        .skip(body.params)
        .filter(|&(_, &n)| bg.contains(n))
        .map(|(v, &n)| (n, v))
        .collect();
    let mut residuals: Vec<(usize, NodeId)> = Vec::new();
    for n in bg.node_ids() {
        if forward.contains_key(&n) {
            continue;
        }
        for o in bg.operands(n) {
            if let Some(&v) = forward.get(&o) {
                if !invariant[v] && !residuals.iter().any(|r| r.1 == o) {
                    residuals.push((v, o));
                }
            }
        }
    }
    residuals.sort();
    let mut res_in = Vec::with_capacity(residuals.len());
    for (j, &(_, r)) in residuals.iter().enumerate() {
        let ty = bg[r].ty.clone();
        let saved = input(&mut bg, format!("r{j}"), &ty);
        for u in bg.users(r) {
            if !forward.contains_key(&u) {
                let ops: Vec<NodeId> = bg
                    .operands(u)
                    .into_iter()
                    .map(|o| if o == r { saved } else { o })
                    .collect();
                bg.set_operands(u, &ops);
            }
        }
        for o in bg.outputs_mut() {
            if o.node == r {
                o.node = saved;
            }
        }
        res_in.push(saved);
    }
    crate::passes::dce::run(&mut bg);
    // the carries entering each step, where the backward body still reads them
    let used =
        |bg: &Graph, n: NodeId| !bg.users(n).is_empty() || bg.outputs().iter().any(|o| o.node == n);
    let hist_carries: Vec<usize> = (0..k).filter(|&i| used(&bg, hc_in[i])).collect();
    // and the sequences it still reads (the others are not operands of the backward loop)
    let seqs_read: Vec<usize> = (0..m).filter(|&j| used(&bg, x_in[j])).collect();
    for &n in hc_in.iter().chain(&x_in) {
        if !used(&bg, n) {
            bg.remove(n);
        }
    }

    // the forward loop also yields them, and the residuals, stacked
    let n_results = body.yields.len();
    let mut extended = body.clone();
    extended.yields.extend(hist_carries.iter().copied());
    extended.yields.extend(residuals.iter().map(|&(v, _)| v));
    let mut saved = Vec::new();
    if extended.yields.len() > n_results {
        let result_types = extended.result_types(&refs).map_err(|e| fail(cx, e.0))?;
        if let Some(n) = cx.g.get_mut(cx.node) {
            n.op = Op::Scan(extended);
        }
        for (index, ty) in result_types.into_iter().enumerate().skip(n_results) {
            saved.push(cx.leafy(Op::ScanResult { index }, &[cx.node], Some(ty))?);
        }
    }
    let bparams: Vec<Option<NodeId>> = dc_in
        .iter()
        .chain(&dw_in)
        .chain(hist_carries.iter().map(|&i| &hc_in[i]))
        .chain(seqs_read.iter().map(|&j| &x_in[j]))
        .chain(&dy_in)
        .chain(&res_in)
        .chain(&w_in)
        .map(|&p| bg.contains(p).then_some(p))
        .collect();
    let carries = k + wanted_inv.len();
    let sequences = hist_carries.len() + seqs_read.len() + dys.len() + res_in.len();
    let (bbody, hoisted) =
        ScanBody::from_graph(&bg, &bparams, carries, sequences, !body.reverse, body.axis)
            .map_err(|e| fail(cx, e))?;

    // 3. The backward scan in the forward graph.
    let (history, res_out) = saved.split_at(hist_carries.len());
    let mut operands = Vec::with_capacity(bbody.params);
    for (i, p) in params.iter().enumerate().take(k) {
        operands.push(match cots.get(i).copied().flatten() {
            Some(d) => d,
            None => cx.zeros(&p.shape)?,
        });
    }
    for &i in &wanted_inv {
        operands.push(cx.zeros(&params[i].shape)?);
    }
    operands.extend(history);
    operands.extend(seqs_read.iter().map(|&j| xs[k + j]));
    for &l in &dys {
        operands.extend(cots[k + l]);
    }
    operands.extend(res_out);
    operands.extend(&xs[k + m..]);
    for (ty, value) in hoisted {
        operands.push(cx.leafy(Op::Const { value }, &[], Some(ty))?);
    }
    let op_types: Vec<TensorType> = operands.iter().map(|&o| cx.g[o].ty.clone()).collect();
    let op_refs: Vec<&TensorType> = op_types.iter().collect();
    let result_types = bbody.result_types(&op_refs).map_err(|e| fail(cx, e.0))?;
    let s = cx.op(Op::Scan(bbody), &operands)?;
    let mut results = vec![s];
    for (index, ty) in result_types.into_iter().enumerate().skip(1) {
        results.push(cx.leafy(Op::ScanResult { index }, &[s], Some(ty))?);
    }

    // 4. Each operand's contribution.
    let mut out = vec![None; wants.len()];
    for (i, slot) in out.iter_mut().enumerate().take(k) {
        if differentiable(i) {
            *slot = Some(results[i]);
        }
    }
    for (j, &i) in wanted_inv.iter().enumerate() {
        out[i] = Some(results[k + j]);
    }
    for (j, &i) in wanted_seq.iter().enumerate() {
        out[i] = Some(results[k + wanted_inv.len() + j]);
    }
    Ok(out)
}
