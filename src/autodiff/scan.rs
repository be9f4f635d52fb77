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
//! parameters is exactly that VJP. What the backward body needs of the forward step is its
//! carry `c_t`: the forward scan is extended to also yield the carry entering each step
//! (stacked `[T, ...]`, written once per step, the only per-step value saved); everything
//! else in the step is recomputed from `c_t`, `x_t` and `w` in the backward body. So the
//! saved memory is the carries' history, not every intermediate of every step.
//!
//! Second order works the same way: a backward scan is an ordinary scan whose body is made of
//! differentiable ops.

use super::{Cx, GradError};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Op, ReduceOp};
use crate::scan::ScanBody;
use crate::shape::{DType, TensorType};

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

    // 1. The carries' history: the forward loop also yields the carry entering each step.
    let history = if k > 0 {
        let n_results = body.yields.len();
        let mut extended = body.clone();
        extended.yields.extend(0..k);
        let result_types = extended.result_types(&refs).map_err(|e| fail(cx, e.0))?;
        if let Some(n) = cx.g.get_mut(cx.node) {
            n.op = Op::Scan(extended);
        }
        let mut hist = Vec::with_capacity(k);
        for (index, ty) in result_types.into_iter().enumerate().skip(n_results) {
            hist.push(cx.leafy(Op::ScanResult { index }, &[cx.node], Some(ty))?);
        }
        hist
    } else {
        Vec::new()
    };

    // 2. The backward body: parameters, the forward step on them, the surrogate loss.
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
    let yields = body
        .inline_into(&mut bg, &step_params)
        .map_err(|e| fail(cx, e))?;
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
    let bparams: Vec<Option<NodeId>> = dc_in
        .iter()
        .chain(&dw_in)
        .chain(&hc_in)
        .chain(&x_in)
        .chain(&dy_in)
        .chain(&w_in)
        .map(|&p| Some(p))
        .collect();
    let carries = k + wanted_inv.len();
    let sequences = k + m + dys.len();
    let (bbody, hoisted) =
        ScanBody::from_graph(&bg, &bparams, carries, sequences, !body.reverse, body.axis)
            .map_err(|e| fail(cx, e))?;

    // 3. The backward scan in the forward graph.
    let mut operands = Vec::with_capacity(bbody.params);
    for i in 0..k {
        operands.push(match cots.get(i).copied().flatten() {
            Some(d) => d,
            None => cx.zeros(&params[i].shape)?,
        });
    }
    for &i in &wanted_inv {
        operands.push(cx.zeros(&params[i].shape)?);
    }
    operands.extend(&history);
    operands.extend(&xs[k..k + m]);
    for &l in &dys {
        operands.extend(cots[k + l]);
    }
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
