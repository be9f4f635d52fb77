//! The VJP table: one small function per op. A rule gets the cotangent `gy` of the forward
//! node (same type as the node) and which operands want a gradient, and returns one optional
//! contribution per operand (`None`: not wanted, or structurally zero). Rules only use ordinary
//! ops, so their results can be differentiated again; masks enter only through `select`'s mask
//! operand, which carries no gradient, so that second-order gradients never meet a comparison.

use super::{Cx, GradError};
use crate::graph::NodeId;
use crate::op::{BinaryOp, CmpOp, Op, ReduceOp, UnaryOp};
use crate::shape::Shape;

/// One contribution per operand.
type Grads = Result<Vec<Option<NodeId>>, GradError>;

/// Whether operand `i` of `op` can receive a gradient. `false` for the mask of `select`, the
/// integer labels of `sparse_softmax_cross_entropy`, the indices of `gather` and
/// `scatter_add`, and where the gradient is zero almost
/// everywhere: the operand of `sign` and the `x` of `max_pool2d_grad` (which only picks the
/// routing).
/// Non-differentiable ops say `true`, so that reaching one from an active operand is an error.
pub(super) fn carries(op: &Op, i: usize) -> bool {
    match op {
        Op::Select => i != 0,
        Op::SparseSoftmaxCrossEntropy | Op::Gather { .. } | Op::ScatterAdd { .. } => i == 0,
        Op::Unary(UnaryOp::Sign) => false,
        Op::MaxPool2dGrad { .. } => i == 1,
        _ => true,
    }
}

/// Applies the rule of the forward node of `cx` to its cotangent `gy`.
pub(super) fn vjp(cx: &mut Cx<'_>, gy: NodeId, wants: &[bool]) -> Grads {
    let op = cx.node().op.clone();
    match op {
        Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => Ok(vec![]),
        Op::Unary(u) => unary(cx, u, gy).map(|d| vec![d]),
        Op::Binary(b) => binary(cx, b, gy, wants),
        Op::Select => select(cx, gy, wants),
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => reduce(cx, kind, &axes, keepdims, gy),
        Op::Reshape { .. } => reshape(cx, gy),
        Op::Broadcast { .. } => broadcast(cx, gy),
        Op::Transpose { perm } => transpose(cx, &perm, gy),
        Op::Matmul => matmul(cx, gy, wants),
        Op::Conv2d { stride, padding } => conv2d(cx, stride, padding, gy, wants),
        Op::Conv2dInputGrad {
            stride, padding, ..
        } => conv2d_input_grad(cx, stride, padding, gy, wants),
        Op::Conv2dFilterGrad {
            stride, padding, ..
        } => conv2d_filter_grad(cx, stride, padding, gy, wants),
        Op::MaxPool2d { window, stride } => max_pool2d(cx, window, stride, gy),
        Op::MaxPool2dGrad { window, stride } => max_pool2d_grad(cx, window, stride, gy),
        Op::Softmax { axis } => softmax(cx, axis, gy),
        Op::LogSoftmax { axis } => log_softmax(cx, axis, gy),
        Op::SoftmaxCrossEntropy => softmax_cross_entropy(cx, gy, wants),
        Op::SparseSoftmaxCrossEntropy => sparse_softmax_cross_entropy(cx, gy),
        Op::Slice { begin, end } => slice(cx, &begin, &end, gy),
        Op::Concat { axis } => concat(cx, axis, gy),
        Op::Gather { axis } => gather(cx, axis, gy),
        Op::ScatterAdd { axis, .. } => scatter_add(cx, axis, gy),
        // The driver applies `scan::vjp` with the cotangents of all of a scan's results.
        Op::Scan(_) | Op::ScanResult { .. } => Ok(vec![None; wants.len()]),
        Op::AllReduce { mean } => all_reduce(cx, mean, gy),
        // Checked by the driver before anything is built (`Op::not_differentiable`).
        Op::Compare(_)
        | Op::Argmax { .. }
        | Op::Cast { .. }
        | Op::OneHot { .. }
        | Op::Fused(_)
        | Op::FusedResult { .. } => Ok(vec![None; wants.len()]),
    }
}

// ---- elementwise ----------------------------------------------------------------------------

/// `y = u(x)`, `dx = gy * u'(x)`, written from the output `y` where that is stabler.
fn unary(cx: &mut Cx<'_>, u: UnaryOp, gy: NodeId) -> Result<Option<NodeId>, GradError> {
    let x = cx.xs()[0];
    let y = cx.y();
    let d = match u {
        UnaryOp::Neg => cx.neg(gy)?,
        // d exp(x) = exp(x) = y
        UnaryOp::Exp => cx.mul(gy, y)?,
        UnaryOp::Log => cx.div(gy, x)?,
        // d sqrt(x) = 1 / (2 sqrt(x)) = 0.5 / y
        UnaryOp::Sqrt => {
            let half = cx.scalar(0.5)?;
            let h = cx.mul(gy, half)?;
            cx.div(h, y)?
        }
        // sign(0) = 0: abs'(0) = 0.
        UnaryOp::Abs => {
            let s = cx.op(Op::Unary(UnaryOp::Sign), &[x])?;
            cx.mul(gy, s)?
        }
        UnaryOp::Sign => return Ok(None),
        // 1 - tanh^2
        UnaryOp::Tanh => {
            let one = cx.scalar(1.0)?;
            let y2 = cx.mul(y, y)?;
            let t = cx.sub(one, y2)?;
            cx.mul(gy, t)?
        }
        // y (1 - y)
        UnaryOp::Sigmoid => {
            let one = cx.scalar(1.0)?;
            let t = cx.sub(one, y)?;
            let yt = cx.mul(y, t)?;
            cx.mul(gy, yt)?
        }
        // 1 / (1 + x)
        UnaryOp::Log1p => {
            let one = cx.scalar(1.0)?;
            let d = cx.add(one, x)?;
            cx.div(gy, d)?
        }
        // e^x = y + 1
        UnaryOp::Expm1 => {
            let one = cx.scalar(1.0)?;
            let e = cx.add(y, one)?;
            cx.mul(gy, e)?
        }
        // 2/sqrt(pi) e^(-x^2)
        UnaryOp::Erf => {
            let x2 = cx.mul(x, x)?;
            let n = cx.neg(x2)?;
            let e = cx.op(Op::Unary(UnaryOp::Exp), &[n])?;
            let c = cx.scalar(std::f64::consts::FRAC_2_SQRT_PI)?;
            let ce = cx.mul(e, c)?;
            cx.mul(gy, ce)?
        }
        // cos x
        UnaryOp::Sin => {
            let c = cx.op(Op::Unary(UnaryOp::Cos), &[x])?;
            cx.mul(gy, c)?
        }
        // -sin x
        UnaryOp::Cos => {
            let s = cx.op(Op::Unary(UnaryOp::Sin), &[x])?;
            let n = cx.neg(s)?;
            cx.mul(gy, n)?
        }
        // Flows where x > 0: relu'(0) = 0.
        UnaryOp::Relu => {
            let zero = cx.scalar(0.0)?;
            let m = cx.op(Op::Compare(CmpOp::Gt), &[x, zero])?;
            cx.op(Op::Select, &[m, gy, zero])?
        }
    };
    Ok(Some(d))
}

/// Broadcasting binary ops; each operand's contribution is reduced back to its shape.
fn binary(cx: &mut Cx<'_>, b: BinaryOp, gy: NodeId, wants: &[bool]) -> Grads {
    let xs = cx.xs();
    let (a, bb) = (xs[0], xs[1]);
    let (sa, sb) = (cx.shape(a), cx.shape(bb));
    let y = cx.y();
    let (da, db) = match b {
        BinaryOp::Add => (Some(gy), Some(gy)),
        BinaryOp::Sub => {
            let db = if wants[1] { Some(cx.neg(gy)?) } else { None };
            (Some(gy), db)
        }
        BinaryOp::Mul => {
            let da = if wants[0] {
                Some(cx.mul(gy, bb)?)
            } else {
                None
            };
            let db = if wants[1] { Some(cx.mul(gy, a)?) } else { None };
            (da, db)
        }
        // da = gy / b; db = -gy * a / b^2 = -(gy / b) * y
        BinaryOp::Div => {
            let t = cx.div(gy, bb)?;
            let db = if wants[1] {
                let ty = cx.mul(t, y)?;
                Some(cx.neg(ty)?)
            } else {
                None
            };
            (Some(t), db)
        }
        // Ties go to `a` (`a >= b` for max, `a <= b` for min).
        BinaryOp::Max | BinaryOp::Min => {
            let cmp = if b == BinaryOp::Max {
                CmpOp::Ge
            } else {
                CmpOp::Le
            };
            let m = cx.op(Op::Compare(cmp), &[a, bb])?;
            let zero = cx.scalar(0.0)?;
            let da = if wants[0] {
                Some(cx.op(Op::Select, &[m, gy, zero])?)
            } else {
                None
            };
            let db = if wants[1] {
                Some(cx.op(Op::Select, &[m, zero, gy])?)
            } else {
                None
            };
            (da, db)
        }
        // da = gy * b * a^(b-1); db = gy * y * log(a)
        BinaryOp::Pow => {
            let da = if wants[0] {
                let one = cx.scalar(1.0)?;
                let bm1 = cx.sub(bb, one)?;
                let p = cx.bin(BinaryOp::Pow, a, bm1)?;
                let bp = cx.mul(bb, p)?;
                Some(cx.mul(gy, bp)?)
            } else {
                None
            };
            let db = if wants[1] {
                let la = cx.op(Op::Unary(UnaryOp::Log), &[a])?;
                let yl = cx.mul(y, la)?;
                Some(cx.mul(gy, yl)?)
            } else {
                None
            };
            (da, db)
        }
    };
    let da = match (wants[0], da) {
        (true, Some(d)) => Some(cx.unbroadcast(d, &sa)?),
        _ => None,
    };
    let db = match (wants[1], db) {
        (true, Some(d)) => Some(cx.unbroadcast(d, &sb)?),
        _ => None,
    };
    Ok(vec![da, db])
}

/// `select(m, a, b)`: the gradient goes to `a` where `m != 0`, to `b` elsewhere; none to `m`.
fn select(cx: &mut Cx<'_>, gy: NodeId, wants: &[bool]) -> Grads {
    let xs = cx.xs();
    let zero = cx.scalar(0.0)?;
    let mut out = vec![None];
    for (i, &x) in xs.iter().enumerate().skip(1) {
        if !wants[i] {
            out.push(None);
            continue;
        }
        let branches = if i == 1 { [gy, zero] } else { [zero, gy] };
        let d = cx.op(Op::Select, &[xs[0], branches[0], branches[1]])?;
        let s = cx.shape(x);
        out.push(Some(cx.unbroadcast(d, &s)?));
    }
    Ok(out)
}

// ---- reductions and shape ops --------------------------------------------------------------

/// The operand shape with the reduced axes kept as size 1.
fn kept_shape(x: &Shape, axes: &[usize]) -> Shape {
    Shape(
        x.0.iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect(),
    )
}

/// sum: broadcast back; mean: also divide by the count; max: split equally among ties.
fn reduce(cx: &mut Cx<'_>, kind: ReduceOp, axes: &[usize], _keepdims: bool, gy: NodeId) -> Grads {
    let x = cx.xs()[0];
    let sx = cx.shape(x);
    // Reduced leading axes need no reshape: numpy broadcasting adds them back on the left.
    let leading = axes.iter().enumerate().all(|(i, &a)| i == a);
    let kept = kept_shape(&sx, axes);
    let align = |cx: &mut Cx<'_>, v: NodeId| {
        if leading {
            Ok(v)
        } else {
            cx.reshape(v, &kept)
        }
    };
    let gk = align(cx, gy)?;
    let d = match kind {
        ReduceOp::Sum => cx.broadcast(gk, &sx)?,
        ReduceOp::Mean => {
            let count: usize = axes.iter().map(|&a| sx.0[a]).product();
            let scaled = if count > 1 {
                let inv = cx.scalar(1.0 / count as f64)?;
                cx.mul(gk, inv)?
            } else {
                gk
            };
            cx.broadcast(scaled, &sx)?
        }
        ReduceOp::Max => {
            let y = cx.y();
            let yk = align(cx, y)?;
            let is_max = cx.op(Op::Compare(CmpOp::Eq), &[x, yk])?;
            let (one, zero) = (cx.scalar(1.0)?, cx.scalar(0.0)?);
            let ind = cx.op(Op::Select, &[is_max, one, zero])?;
            let count = cx.sum(ind, axes, true)?;
            let share = cx.div(gk, count)?;
            cx.op(Op::Select, &[is_max, share, zero])?
        }
    };
    Ok(vec![Some(d)])
}

/// An all-reduce is linear and its own transpose: every rank's operand reaches every
/// rank's result (with weight `1/N` for the mean), so the cotangent is the all-reduce of
/// the result's cotangents over the ranks.
fn all_reduce(cx: &mut Cx<'_>, mean: bool, gy: NodeId) -> Grads {
    Ok(vec![Some(cx.op(Op::AllReduce { mean }, &[gy])?)])
}

fn reshape(cx: &mut Cx<'_>, gy: NodeId) -> Grads {
    let s = cx.shape(cx.xs()[0]);
    Ok(vec![Some(cx.reshape(gy, &s)?)])
}

fn broadcast(cx: &mut Cx<'_>, gy: NodeId) -> Grads {
    let s = cx.shape(cx.xs()[0]);
    Ok(vec![Some(cx.unbroadcast(gy, &s)?)])
}

/// Transposes back with the inverse permutation.
fn transpose(cx: &mut Cx<'_>, perm: &[usize], gy: NodeId) -> Grads {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Ok(vec![Some(cx.op(Op::Transpose { perm: inv }, &[gy])?)])
}

/// Pads the cotangent with zeros back to the operand's shape, one axis at a time (concat).
fn slice(cx: &mut Cx<'_>, begin: &[usize], end: &[usize], gy: NodeId) -> Grads {
    let full = cx.shape(cx.xs()[0]);
    let mut cur = gy;
    let mut shape = cx.shape(gy);
    for axis in 0..full.rank() {
        let mut parts = Vec::new();
        if begin[axis] > 0 {
            let mut s = shape.clone();
            s.0[axis] = begin[axis];
            parts.push(cx.zeros(&s)?);
        }
        parts.push(cur);
        if end[axis] < full.0[axis] {
            let mut s = shape.clone();
            s.0[axis] = full.0[axis] - end[axis];
            parts.push(cx.zeros(&s)?);
        }
        if parts.len() > 1 {
            cur = cx.op(Op::Concat { axis }, &parts)?;
            shape.0[axis] = full.0[axis];
        }
    }
    Ok(vec![Some(cur)])
}

/// Each operand gets its slice of the cotangent.
fn concat(cx: &mut Cx<'_>, axis: usize, gy: NodeId) -> Grads {
    let sy = cx.shape(gy);
    let mut out = Vec::new();
    let mut offset = 0;
    for x in cx.xs() {
        let sx = cx.shape(x);
        let mut begin = vec![0; sy.rank()];
        let mut end = sy.0.clone();
        begin[axis] = offset;
        end[axis] = offset + sx.0[axis];
        offset = end[axis];
        out.push(Some(cx.op(Op::Slice { begin, end }, &[gy])?));
    }
    Ok(out)
}

/// The table's gradient is the cotangent's slices added back at their indices (duplicates
/// accumulate); the indices carry none.
fn gather(cx: &mut Cx<'_>, axis: usize, gy: NodeId) -> Grads {
    let xs = cx.xs();
    let shape = cx.shape(xs[0]);
    let d = cx.op(Op::ScatterAdd { axis, shape }, &[gy, xs[1]])?;
    Ok(vec![Some(d), None])
}

/// The updates' gradient is the cotangent gathered at the same indices (scatter_add is
/// linear in its updates and is gather's transpose).
fn scatter_add(cx: &mut Cx<'_>, axis: usize, gy: NodeId) -> Grads {
    let xs = cx.xs();
    let d = cx.op(Op::Gather { axis }, &[gy, xs[1]])?;
    Ok(vec![Some(d), None])
}

// ---- linear algebra and convolution ----------------------------------------------------------

/// `y = a b`: `da = gy b^T`, `db = a^T gy`.
fn matmul(cx: &mut Cx<'_>, gy: NodeId, wants: &[bool]) -> Grads {
    let xs = cx.xs();
    let t = |cx: &mut Cx<'_>, x| cx.op(Op::Transpose { perm: vec![1, 0] }, &[x]);
    let da = if wants[0] {
        let bt = t(cx, xs[1])?;
        Some(cx.op(Op::Matmul, &[gy, bt])?)
    } else {
        None
    };
    let db = if wants[1] {
        let at = t(cx, xs[0])?;
        Some(cx.op(Op::Matmul, &[at, gy])?)
    } else {
        None
    };
    Ok(vec![da, db])
}

/// Uses the dedicated backward ops. With `T(x, w, dy) = <conv2d(x, w), dy>` (trilinear),
/// `conv2d_input_grad(dy, w) = dT/dx` and `conv2d_filter_grad(x, dy) = dT/dw`.
fn conv2d(
    cx: &mut Cx<'_>,
    stride: [usize; 2],
    padding: crate::op::Padding,
    gy: NodeId,
    wants: &[bool],
) -> Grads {
    let xs = cx.xs();
    let (sx, sw) = (cx.shape(xs[0]), cx.shape(xs[1]));
    let dx = if wants[0] {
        let op = Op::Conv2dInputGrad {
            stride,
            padding,
            shape: sx,
        };
        Some(cx.op(op, &[gy, xs[1]])?)
    } else {
        None
    };
    let dw = if wants[1] {
        let op = Op::Conv2dFilterGrad {
            stride,
            padding,
            kernel: [sw.0[0], sw.0[1]],
        };
        Some(cx.op(op, &[xs[0], gy])?)
    } else {
        None
    };
    Ok(vec![dx, dw])
}

/// `z = dT/dx (dy, w)` is linear in `dy` and in `w`: `<gz, z> = T(gz, w, dy)`, so
/// `d dy = conv2d(gz, w)` and `d w = conv2d_filter_grad(gz, dy)`.
fn conv2d_input_grad(
    cx: &mut Cx<'_>,
    stride: [usize; 2],
    padding: crate::op::Padding,
    gz: NodeId,
    wants: &[bool],
) -> Grads {
    let xs = cx.xs();
    let (dy, w) = (xs[0], xs[1]);
    let sw = cx.shape(w);
    let d_dy = if wants[0] {
        Some(cx.op(Op::Conv2d { stride, padding }, &[gz, w])?)
    } else {
        None
    };
    let d_w = if wants[1] {
        let op = Op::Conv2dFilterGrad {
            stride,
            padding,
            kernel: [sw.0[0], sw.0[1]],
        };
        Some(cx.op(op, &[gz, dy])?)
    } else {
        None
    };
    Ok(vec![d_dy, d_w])
}

/// `z = dT/dw (x, dy)`: `<gz, z> = T(x, gz, dy)`, so `d x = conv2d_input_grad(dy, gz)` and
/// `d dy = conv2d(x, gz)`.
fn conv2d_filter_grad(
    cx: &mut Cx<'_>,
    stride: [usize; 2],
    padding: crate::op::Padding,
    gz: NodeId,
    wants: &[bool],
) -> Grads {
    let xs = cx.xs();
    let (x, dy) = (xs[0], xs[1]);
    let sx = cx.shape(x);
    let d_x = if wants[0] {
        let op = Op::Conv2dInputGrad {
            stride,
            padding,
            shape: sx,
        };
        Some(cx.op(op, &[dy, gz])?)
    } else {
        None
    };
    let d_dy = if wants[1] {
        Some(cx.op(Op::Conv2d { stride, padding }, &[x, gz])?)
    } else {
        None
    };
    Ok(vec![d_x, d_dy])
}

/// Routes each window's cotangent to its first maximum (row-major order on ties).
fn max_pool2d(cx: &mut Cx<'_>, window: [usize; 2], stride: [usize; 2], gy: NodeId) -> Grads {
    let x = cx.xs()[0];
    Ok(vec![Some(
        cx.op(Op::MaxPool2dGrad { window, stride }, &[x, gy])?,
    )])
}

/// `z = max_pool2d_grad(x, dy)` is linear in `dy`: each window sends its `dy` to its first
/// maximum. The transpose gathers: `d dy[window] = gz[first maximum of the window]`. Built
/// from ordinary ops, one window offset `(i, j)` at a time in row-major order: the strided
/// sub-grids `x_ij` and `gz_ij` of the elements at that offset in every window; the offset
/// wins where `x_ij` equals the pooled maximum and no earlier offset did. (`x` only selects
/// the routing: its gradient is zero almost everywhere and it carries none.)
fn max_pool2d_grad(cx: &mut Cx<'_>, window: [usize; 2], stride: [usize; 2], gz: NodeId) -> Grads {
    let x = cx.xs()[0];
    let dy_shape = cx.shape(cx.xs()[1]);
    let (oh, ow) = (dy_shape.0[1], dy_shape.0[2]);
    let y = cx.op(Op::MaxPool2d { window, stride }, &[x])?;
    let (zero, one) = (cx.scalar(0.0)?, cx.scalar(1.0)?);
    let grid = |cx: &mut Cx<'_>, t: NodeId, i: usize, j: usize| -> Result<NodeId, GradError> {
        let rows = every_nth(cx, t, 1, i, stride[0], oh)?;
        every_nth(cx, rows, 2, j, stride[1], ow)
    };
    let mut taken: Option<NodeId> = None;
    let mut acc: Option<NodeId> = None;
    for i in 0..window[0] {
        for j in 0..window[1] {
            let xij = grid(cx, x, i, j)?;
            let is_max = cx.op(Op::Compare(CmpOp::Eq), &[xij, y])?;
            let first = match taken {
                None => is_max,
                Some(t) => cx.op(Op::Select, &[t, zero, is_max])?,
            };
            let gij = grid(cx, gz, i, j)?;
            let part = cx.op(Op::Select, &[first, gij, zero])?;
            acc = Some(match acc {
                None => part,
                Some(a) => cx.add(a, part)?,
            });
            taken = Some(match taken {
                None => is_max,
                Some(t) => cx.op(Op::Select, &[is_max, one, t])?,
            });
        }
    }
    Ok(vec![None, acc])
}

/// The elements `offset, offset + step, ..., offset + (count - 1) step` of `t` along `axis`
/// (which must exist): a slice, zero padding to `count * step`, a reshape that splits the axis
/// into `[count, step]`, and the first of each `step`.
fn every_nth(
    cx: &mut Cx<'_>,
    t: NodeId,
    axis: usize,
    offset: usize,
    step: usize,
    count: usize,
) -> Result<NodeId, GradError> {
    let s = cx.shape(t);
    let span = count * step;
    let end = (offset + span).min(s.0[axis]);
    let mut begin_v = vec![0; s.rank()];
    let mut end_v = s.0.clone();
    begin_v[axis] = offset;
    end_v[axis] = end;
    let mut cur = if offset == 0 && end == s.0[axis] {
        t
    } else {
        cx.op(
            Op::Slice {
                begin: begin_v,
                end: end_v,
            },
            &[t],
        )?
    };
    if step == 1 {
        return Ok(cur);
    }
    if end - offset < span {
        let mut pad = s.clone();
        pad.0[axis] = span - (end - offset);
        let z = cx.zeros(&pad)?;
        cur = cx.op(Op::Concat { axis }, &[cur, z])?;
    }
    let mut split = s.0.clone();
    split[axis] = count;
    split.insert(axis + 1, step);
    let r = cx.reshape(cur, &Shape(split.clone()))?;
    let mut first = split.clone();
    first[axis + 1] = 1;
    let begin = vec![0; split.len()];
    let picked = cx.op(Op::Slice { begin, end: first }, &[r])?;
    let mut out = s.0.clone();
    out[axis] = count;
    cx.reshape(picked, &Shape(out))
}

// ---- softmax family ---------------------------------------------------------------------------

/// `dx = y * (gy - sum(gy * y))` along `axis`.
fn softmax(cx: &mut Cx<'_>, axis: usize, gy: NodeId) -> Grads {
    let y = cx.y();
    let gyy = cx.mul(gy, y)?;
    let s = cx.sum(gyy, &[axis], true)?;
    let c = cx.sub(gy, s)?;
    Ok(vec![Some(cx.mul(y, c)?)])
}

/// `dx = gy - softmax(x) * sum(gy)` along `axis` (softmax recomputed stably).
fn log_softmax(cx: &mut Cx<'_>, axis: usize, gy: NodeId) -> Grads {
    let x = cx.xs()[0];
    let p = cx.op(Op::Softmax { axis }, &[x])?;
    let s = cx.sum(gy, &[axis], true)?;
    let ps = cx.mul(p, s)?;
    Ok(vec![Some(cx.sub(gy, ps)?)])
}

/// The per-example cotangent `[n]` as a column `[n,1]`.
fn column(cx: &mut Cx<'_>, gy: NodeId) -> Result<NodeId, GradError> {
    let n = cx.shape(gy).0[0];
    cx.reshape(gy, &Shape(vec![n, 1]))
}

/// `loss_i = -sum_j labels_ij log_softmax(logits)_ij`:
/// `d logits = g * (softmax(logits) * rowsum(labels) - labels)` (`softmax - labels` for
/// probability labels), `d labels = -g * log_softmax(logits)`.
fn softmax_cross_entropy(cx: &mut Cx<'_>, gy: NodeId, wants: &[bool]) -> Grads {
    let xs = cx.xs();
    let (logits, labels) = (xs[0], xs[1]);
    let g = column(cx, gy)?;
    let d_logits = if wants[0] {
        let p = cx.op(Op::Softmax { axis: 1 }, &[logits])?;
        let mass = cx.sum(labels, &[1], true)?;
        let pm = cx.mul(p, mass)?;
        let diff = cx.sub(pm, labels)?;
        Some(cx.mul(g, diff)?)
    } else {
        None
    };
    let d_labels = if wants[1] {
        let ls = cx.op(Op::LogSoftmax { axis: 1 }, &[logits])?;
        let gl = cx.mul(g, ls)?;
        Some(cx.neg(gl)?)
    } else {
        None
    };
    Ok(vec![d_logits, d_labels])
}

/// `d logits = g * (softmax(logits) - one_hot(labels))`; the integer labels get nothing.
fn sparse_softmax_cross_entropy(cx: &mut Cx<'_>, gy: NodeId) -> Grads {
    let xs = cx.xs();
    let (logits, labels) = (xs[0], xs[1]);
    let depth = cx.shape(logits).0[1];
    let g = column(cx, gy)?;
    let p = cx.op(Op::Softmax { axis: 1 }, &[logits])?;
    let oh = cx.op(Op::OneHot { depth }, &[labels])?;
    let diff = cx.sub(p, oh)?;
    Ok(vec![Some(cx.mul(g, diff)?), None])
}
