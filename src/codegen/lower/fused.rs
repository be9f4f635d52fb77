//! Lowering of fused nodes ([`crate::fused::FusedBody`]): one loop nest per node.
//!
//! In: a fused node's body, the locations of its operands and result. Out: Cranelift code that
//! evaluates the whole body per element of its domain, in registers, with no intermediate
//! buffer: every operand is read through a view broadcast over the domain (stride 0 where it
//! is broadcast), so a row of the domain is `f32x4` vectors plus a scalar tail, like every
//! other elementwise loop ([`Lowerer::map`]).
//! - A trailing reduction accumulates into the output buffer (filled with the reduction's
//!   identity first): the output is read and written through a view with stride 0 on the
//!   reduced axes; `reduce_mean` scales the result at the end. When the innermost axis is
//!   reduced, each row accumulates in `f32x4` registers instead ([`Lowerer::map_reduce`]). A
//!   long sum adds blocks of its terms to f64 running totals in the node's planned scratch
//!   ([`super::sum_scratch_bytes`]).
//! - A leading matmul or conv2d (an epilogue body) writes its result into the output buffer
//!   with the ordinary lowering (GEMM call, convolution kernel); the elementwise loop then
//!   reads it back from there and overwrites it in place.
//! - A multi-result body writes every result from the same loop ([`Lowerer::map_n`]): result 0
//!   to the node's buffer, result `k` to the buffer of its `fused_result` node (a result no node
//!   reads is computed but not stored).
//! - A body that is exactly Adam's update of one param is no loop but a call of a runtime
//!   kernel at the widest vector width ([`super::update`]); a convolution layer's body,
//!   `relu(conv2d(x, w) + bias)`, is one call of the convolution kernel, which adds the bias
//!   and applies relu to each image's output while it is in cache.

use super::update::AdamBody;
use super::{broadcast_strides, float_cc, LowerError, Lowerer, View};
use crate::codegen::kernels::Kernel;
use crate::codegen::plan::{Loc, Plan};
use crate::fused::FusedBody;
use crate::graph::NodeId;
use crate::op::{BinaryOp, Op, OpClass, UnaryOp};
use crate::shape::{DType, Shape};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Value};

/// Where each value the elementwise part reads comes from.
#[derive(Clone, Copy)]
enum Source {
    /// Loaded from the `i`-th view of the map (operands read elementwise, or the matmul
    /// product).
    Loaded(usize),
    /// Not read elementwise (an operand only the matmul reads).
    None,
}

/// Where a fused node's results go: the main result, and `(k, buffer)` for each extra result
/// `k >= 1` that a `fused_result` node reads.
pub(crate) struct FusedOuts<'o> {
    pub main: Loc,
    pub extra: &'o [(usize, Loc)],
}

impl<'a> Lowerer<'a> {
    /// Lowers fused node `id` with operands at `ins` (dense, of types `in_shapes`) into `outs`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fused(
        &mut self,
        id: NodeId,
        body: &FusedBody,
        outs: FusedOuts<'_>,
        ins: &[Loc],
        in_shapes: &[Shape],
        out_shape: &Shape,
        plan: &Plan,
        operands: &[NodeId],
    ) -> Result<(), LowerError> {
        let out = outs.main;
        let domain = body.domain();
        let np = body.n_params;
        let reduce = body.reduction().cloned();
        let start = usize::from(body.producer().is_some());
        let end = body.insts.len() - usize::from(reduce.is_some());
        for inst in &body.insts[start..end] {
            check_supported(&inst.op)?;
        }
        if let Some(adam) = AdamBody::of(body, in_shapes).filter(|_| self.body_kernels) {
            let mut results = [Some(out), None, None];
            for &(k, loc) in outs.extra {
                if let Some(r) = results.get_mut(k) {
                    *r = Some(loc);
                }
            }
            return self.adam_update(&adam, domain.numel(), ins, &results);
        }
        // views read elementwise, after the accumulator view of a reduction
        let mut views: Vec<View> = Vec::new();
        let first_input = usize::from(reduce.is_some());
        let mut sources = vec![Source::None; np + body.insts.len()];
        for inst in &body.insts[start..end] {
            for &a in &inst.args {
                if a < np && matches!(sources[a], Source::None) {
                    sources[a] = Source::Loaded(first_input + views.len());
                    views.push(View {
                        loc: ins[a],
                        dtype: DType::F32,
                        offset: 0,
                        strides: broadcast_strides(&in_shapes[a], &domain),
                    });
                }
            }
        }
        if let Some(p) = body.producer() {
            if reduce.is_some() {
                return Err("a fused body with both a matmul/conv2d and a reduction".into());
            }
            let (a, b) = (p.args[0], p.args[1]);
            match &p.op {
                Op::Conv2d { stride, padding } => {
                    let geo =
                        super::conv_geometry(&in_shapes[a], &in_shapes[b], *stride, *padding)?;
                    if let Some(bias) =
                        bias_relu_epilogue(body, in_shapes).filter(|_| self.body_kernels)
                    {
                        let k = Kernel::Conv2dBiasRelu;
                        let bias = Some(ins[bias]);
                        self.conv_call(k, ins[a], ins[b], bias, out, plan, id, &geo)?;
                        return Ok(());
                    }
                    self.conv_call(Kernel::Conv2d, ins[a], ins[b], None, out, plan, id, &geo)?;
                }
                _ => {
                    let (m, k, n) = (in_shapes[a].0[0], in_shapes[a].0[1], in_shapes[b].0[1]);
                    let ta = plan.folded.contains(&operands[a]);
                    let tb = plan.folded.contains(&operands[b]);
                    let sa = if ta { (1, m) } else { (k, 1) };
                    let sb = if tb { (1, k) } else { (n, 1) };
                    let ws = self.scratch(plan, id);
                    self.matmul(ins[a], sa, ins[b], sb, out, (m, k, n), ws)?;
                }
            }
            if body.insts.len() == 1 {
                return Ok(());
            }
            sources[np] = Source::Loaded(first_input + views.len());
            views.push(View::dense(out, DType::F32, &domain));
        }
        let eval = |lw: &mut Lowerer<'a>, vals: &[Value], vector: bool| -> Vec<Option<Value>> {
            let mut v: Vec<Option<Value>> = sources
                .iter()
                .map(|s| match s {
                    Source::Loaded(i) => Some(vals[*i]),
                    Source::None => None,
                })
                .collect();
            for (i, inst) in body.insts[start..end].iter().enumerate() {
                let args: Vec<Value> = inst.args.iter().filter_map(|&a| v[a]).collect();
                let r = lw.fused_inst(&inst.op, &args, vector);
                v[np + start + i] = Some(r);
            }
            v
        };
        let main = np + end - 1;
        match reduce {
            None if !outs.extra.is_empty() => {
                let results = body.results();
                let mut targets: Vec<View> = vec![View::dense(out, DType::F32, out_shape)];
                let mut which: Vec<usize> = vec![main];
                for &(k, loc) in outs.extra {
                    let Some(&r) = results.get(k) else {
                        return Err(format!(
                            "fused_result index {k} is not a result of the body"
                        ));
                    };
                    targets.push(View::dense(loc, DType::F32, out_shape));
                    which.push(r);
                }
                self.map_n(
                    &targets,
                    domain.dims(),
                    &views,
                    true,
                    &|lw, vals, vector| {
                        let v = eval(lw, vals, vector);
                        which.iter().map(|&r| v[r].unwrap_or(vals[0])).collect()
                    },
                );
            }
            None => {
                let dense = View::dense(out, DType::F32, out_shape);
                self.map(&dense, domain.dims(), &views, true, &|lw, vals, vector| {
                    eval(lw, vals, vector)[main].unwrap_or(vals[0])
                });
            }
            Some(r) => {
                let Op::Reduce { kind, axes, .. } = &r.op else {
                    return Err("the trailing instruction is not a reduction".into());
                };
                let kind = *kind;
                self.fill(out, DType::F32, out_shape, Self::identity(kind, DType::F32));
                let acc = View {
                    loc: out,
                    dtype: DType::F32,
                    offset: 0,
                    strides: reduced_strides(&domain, axes),
                };
                let mut all = vec![acc];
                all.extend(views);
                let totals = self.planned_scratch(plan, id);
                self.map_reduce(&all, domain.dims(), kind, totals, &|lw, vals, vector| {
                    eval(lw, vals, vector)[main].unwrap_or(vals[0])
                });
                self.scale_mean(out, out_shape, axes, &domain, kind);
            }
        }
        Ok(())
    }

    /// One elementwise instruction on register values (scalars or `f32x4`).
    fn fused_inst(&mut self, op: &Op, v: &[Value], vector: bool) -> Value {
        match op {
            Op::Unary(u) => self.unary_value(*u, v[0], vector),
            Op::Binary(b) => self.binary(*b, v[0], v[1]),
            Op::Compare(c) => {
                let m = self.b.ins().fcmp(float_cc(*c), v[0], v[1]);
                let one = self.fconst(1.0, vector);
                let zero = self.fconst(0.0, vector);
                self.pick(m, one, zero)
            }
            Op::Select => {
                let zero = self.fconst(0.0, vector);
                let m = self.b.ins().fcmp(FloatCC::NotEqual, v[0], zero);
                self.pick(m, v[1], v[2])
            }
            // broadcast is the identity in domain space; nothing else reaches here
            _ => v[0],
        }
    }
}

/// The bias operand of a convolution layer's body, `relu(add(conv2d(x, w), bias))` (the
/// add's operands in either order) with `bias` one value per output channel and no other
/// result: the body [`crate::codegen::kernels::gl_conv2d_bias_relu`] computes in one call.
fn bias_relu_epilogue(body: &FusedBody, in_shapes: &[Shape]) -> Option<usize> {
    let np = body.n_params;
    let [conv, add, relu] = &body.insts[..] else {
        return None;
    };
    if !matches!(conv.op, Op::Conv2d { .. })
        || add.op != Op::Binary(BinaryOp::Add)
        || relu.op != Op::Unary(UnaryOp::Relu)
        || relu.args != [np + 1]
        || !body.extra.is_empty()
    {
        return None;
    }
    let bias = match add.args[..] {
        [c, b] | [b, c] if c == np && b < np => b,
        _ => return None,
    };
    let channels = conv.ty.shape.dims().last().copied();
    let shape = in_shapes.get(bias)?;
    (shape.dims().last().copied() == channels && Some(shape.numel()) == channels).then_some(bias)
}

/// Whether `user` is a fused node that reads its operand `id` only as an operand of its
/// leading matmul (so a transpose `id` can be read through strides, like a plain matmul does).
pub(crate) fn fused_reads_only_in_matmul(
    g: &crate::graph::Graph,
    user: NodeId,
    id: NodeId,
) -> bool {
    let Op::Fused(body) = &g[user].op else {
        return false;
    };
    let Some(mm) = body.matmul() else {
        return false;
    };
    let params: Vec<usize> = g
        .operands(user)
        .iter()
        .enumerate()
        .filter(|(_, &o)| o == id)
        .map(|(i, _)| i)
        .collect();
    let in_matmul = params.iter().all(|p| mm.args.contains(p));
    let elsewhere = body.insts[1..]
        .iter()
        .any(|inst| inst.args.iter().any(|a| params.contains(a)));
    !params.is_empty() && in_matmul && !elsewhere
}

/// Scratch bytes of a fused node whose producer is a convolution (its patch matrix), as for
/// a plain `conv2d` node.
pub(crate) fn fused_conv_geometry(
    g: &crate::graph::Graph,
    id: NodeId,
) -> Option<[i64; crate::codegen::kernels::CONV_GEOMETRY_LEN]> {
    let Op::Fused(body) = &g[id].op else {
        return None;
    };
    let p = body.producer()?;
    let Op::Conv2d { stride, padding } = &p.op else {
        return None;
    };
    let ops = g.operands(id);
    let (x, w) = (&g[ops[p.args[0]]].ty.shape, &g[ops[p.args[1]]].ty.shape);
    super::conv_geometry(x, w, *stride, *padding).ok()
}

/// `(m, k, n)` of the matmul producer of fused node `id`, if it has one.
pub(crate) fn fused_matmul_dims(
    g: &crate::graph::Graph,
    id: NodeId,
) -> Option<(usize, usize, usize)> {
    let Op::Fused(body) = &g[id].op else {
        return None;
    };
    let p = body.producer()?;
    if !matches!(p.op, Op::Matmul) {
        return None;
    }
    let ops = g.operands(id);
    let (a, b) = (
        g[ops[p.args[0]]].ty.shape.dims(),
        g[ops[p.args[1]]].ty.shape.dims(),
    );
    Some((a[0], a[1], b[1]))
}

/// Whether the JIT has inline code for `op` inside a fused loop.
fn check_supported(op: &Op) -> Result<(), LowerError> {
    match op.class() {
        OpClass::Elementwise { inline: false } => Err(format!(
            "{} inside a fused body is not supported by the JIT (it is a runtime call; the \
             fusion pass leaves it out)",
            op.name()
        )),
        OpClass::Elementwise { inline: true } => Ok(()),
        _ => Err(format!(
            "{} is not elementwise inside a fused body",
            op.name()
        )),
    }
}

/// Element strides, over `domain`, of the dense result of reducing `domain` over `axes`: 0 on
/// the reduced axes.
fn reduced_strides(domain: &Shape, axes: &[usize]) -> Vec<i64> {
    let kept: Vec<usize> = (0..domain.rank()).filter(|d| !axes.contains(d)).collect();
    let kept_shape = Shape(kept.iter().map(|&d| domain.0[d]).collect());
    let ks = kept_shape.strides();
    let mut s = vec![0i64; domain.rank()];
    for (k, &d) in kept.iter().enumerate() {
        s[d] = ks[k] as i64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::bias_relu_epilogue;
    use crate::op::{Op, UnaryOp};
    use crate::passes::Pipeline;
    use crate::shape::Shape;

    #[test]
    fn the_cnns_convolution_layer_is_one_kernel_call_and_other_bodies_are_not() {
        let path = format!("{}/ir/cnn.ir", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).expect("the corpus file");
        let mut g = crate::text::parse(&src, &path).expect("a valid corpus file");
        Pipeline::default().run(&mut g).expect("the pipeline runs");
        let conv = g.find("conv").expect("%conv");
        let Op::Fused(body) = &g[conv].op else {
            panic!("%conv is fused")
        };
        let operands = g.operands(conv);
        let shapes: Vec<Shape> = operands.iter().map(|&o| g[o].ty.shape.clone()).collect();
        let bias = bias_relu_epilogue(body, &shapes).expect("recognized");
        assert_eq!(g[operands[bias]].name.as_deref(), Some("conv2d.bias"));
        // tanh for relu, a bias per pixel, one more result: the loop stays
        let mut b = body.clone();
        b.insts[2].op = Op::Unary(UnaryOp::Tanh);
        assert!(bias_relu_epilogue(&b, &shapes).is_none());
        let mut s = shapes.clone();
        s[bias] = Shape(vec![26, 26, 32]);
        assert!(bias_relu_epilogue(body, &s).is_none());
        let mut b = body.clone();
        b.extra.push(body.n_params + 1);
        assert!(bias_relu_epilogue(&b, &shapes).is_none());
    }
}
