//! The body of a fused node ([`Op::Fused`]): a small expression DAG over the node's operands.
//!
//! In: the fusion pass ([`crate::passes::fuse`]) or the text parser builds a [`FusedBody`].
//! Out: its type rule ([`FusedBody::infer`]), used by [`Op::infer`]; the interpreter, the
//! printer and the code generator walk [`FusedBody::insts`].
//!
//! Values of a body are numbered: `0..n_params` are the fused node's operands, in order;
//! `n_params + i` is instruction `i`. The body's result is its last instruction. In the text
//! format a fused node prints as a nested block, each value as `%K`:
//!
//! ```text
//!   %9: f32[64,128] = fused %4, %b1 {
//!     %2: f32[64,128] = add %0, %1
//!     %3: f32[64,128] = relu %2
//!     yield %3
//!   }
//! ```
//!
//! Rules ([`FusedBody::infer`] checks all of them):
//! - every operand is `f32`;
//! - instructions are elementwise ([`OpClass::Elementwise`]: unary, binary, comparison,
//!   `select`, `broadcast`),
//!   except that the first may be a `matmul` or `conv2d` of two operands (the *producer* of an
//!   epilogue: the GEMM or convolution writes the output, the rest of the body runs over it)
//!   and the last may be a `reduce_*` (a reduction fed by the elementwise chain), not both;
//! - the *domain* is the shape of the last elementwise instruction (or of the producer): every
//!   elementwise instruction's shape broadcasts to it, so the whole body can be evaluated
//!   element by element over the domain without intermediate buffers (numpy broadcasting
//!   commutes with elementwise ops);
//! - each instruction's declared type equals the type [`Op::infer`] gives for its arguments.
//!
//! *Multi-result bodies* (multi-output fusion): a body without a reduction may yield further
//! instruction values after its main result, `yield %7, %4, %5`.
//! The fused node's own value is the main result (the last instruction); result `k >= 1` is
//! read through a `fused_result %f, index=k` node ([`Op::FusedResult`]). Every result has the
//! domain's shape, so one loop writes all of them at each element: the Adam update of one
//! parameter (new first moment, new second moment, new parameter, all three update values) is
//! one loop that reads the gradient, both moments and the parameter once.

use crate::op::{InferError, Op, OpClass};
use crate::shape::{DType, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// One instruction of a fused body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedInst {
    /// The op (elementwise, or a leading matmul, or a trailing reduction).
    pub op: Op,
    /// Argument value numbers (operands first, then earlier instructions).
    pub args: Vec<usize>,
    /// The instruction's result type.
    pub ty: TensorType,
}

/// A fused node's body: `n_params` operands and a list of instructions; the last is the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedBody {
    /// Number of operands of the fused node.
    pub n_params: usize,
    /// The instructions, in evaluation order.
    pub insts: Vec<FusedInst>,
    /// Results after the main one (value numbers of instructions, result `1..`); empty for a
    /// single-result body. See the module documentation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<usize>,
}

/// Whether `op` may appear in the elementwise part of a fused body: its class is
/// [`OpClass::Elementwise`].
pub fn is_elementwise(op: &Op) -> bool {
    matches!(op.class(), OpClass::Elementwise { .. })
}

/// Whether `op` may lead a fused body as the producer of an epilogue: its class is
/// [`OpClass::Producer`].
pub fn is_producer(op: &Op) -> bool {
    op.class() == OpClass::Producer
}

/// Whether `op` may end a fused body as its reduction: its class is [`OpClass::Reduction`].
pub fn is_reduction(op: &Op) -> bool {
    op.class() == OpClass::Reduction
}

impl FusedBody {
    /// The result type of the body for operands of types `operands`, checking every rule of the
    /// module documentation.
    pub fn infer(&self, operands: &[&TensorType]) -> Result<TensorType, InferError> {
        let err = |m: String| Err(InferError(format!("fused: {m}")));
        if operands.len() != self.n_params {
            return err(format!(
                "the body takes {} operand(s), found {}",
                self.n_params,
                operands.len()
            ));
        }
        if self.insts.is_empty() {
            return err("the body is empty (it needs at least one instruction)".into());
        }
        for (i, t) in operands.iter().enumerate() {
            if t.dtype != DType::F32 {
                return err(format!("operand {i} must be f32, found {t}"));
            }
        }
        let mut types: Vec<TensorType> = operands.iter().map(|&t| t.clone()).collect();
        let last = self.insts.len() - 1;
        for (i, inst) in self.insts.iter().enumerate() {
            let k = self.n_params + i;
            let allowed = is_elementwise(&inst.op)
                || (i == 0 && is_producer(&inst.op))
                || (i == last && i > 0 && is_reduction(&inst.op));
            if !allowed {
                return err(format!(
                    "%{k}: {} is not allowed here (elementwise ops, a leading matmul or conv2d, \
                     or a trailing reduction only)",
                    inst.op.name()
                ));
            }
            if matches!(inst.op, Op::Matmul) && inst.args.iter().any(|&a| a >= self.n_params) {
                return err(format!(
                    "%{k}: matmul must take two operands of the fused node"
                ));
            }
            if let Some(&a) = inst.args.iter().find(|&&a| a >= k) {
                return err(format!("%{k}: argument %{a} is not defined before it"));
            }
            let arg_tys: Vec<&TensorType> = inst.args.iter().map(|&a| &types[a]).collect();
            let ty = inst
                .op
                .infer(&arg_tys, None)
                .map_err(|e| InferError(format!("fused: %{k}: {e}")))?;
            if ty != inst.ty {
                return err(format!(
                    "%{k} is declared {} but {} computes {ty}",
                    inst.ty,
                    inst.op.name()
                ));
            }
            types.push(ty);
        }
        if self.producer().is_some() && self.reduction().is_some() {
            return err("a body cannot have both a leading matmul/conv2d and a reduction".into());
        }
        if let Some(r) = self.reduction() {
            // the loop runs over the elementwise result and reduces it: any other operand
            // would be reduced over the wrong domain
            let (k, prev) = (self.n_params + last, self.n_params + last - 1);
            if r.args.first() != Some(&prev) {
                return err(format!(
                    "%{k}: the trailing reduction must reduce %{prev}, the instruction before it (the \
                     body's elementwise result), found {}",
                    r.args
                        .first()
                        .map_or("no operand".to_string(), |a| format!("%{a}"))
                ));
            }
        }
        let domain = self.domain();
        if let Some(p) = self.producer() {
            // the GEMM or convolution writes the node's output buffer and the elementwise
            // loop runs over it in place: a producer of another shape is written out of bounds
            if p.ty.shape != domain {
                return err(format!(
                    "%{}: the leading {} computes shape {}, but an epilogue runs over its \
                     output, so it must have the body's domain {domain}",
                    self.n_params,
                    p.op.name(),
                    p.ty.shape
                ));
            }
        }
        for (i, inst) in self.insts.iter().enumerate() {
            if is_elementwise(&inst.op) && !inst.ty.shape.broadcasts_to(&domain) {
                return err(format!(
                    "%{}: shape {} does not broadcast to the body's domain {domain}",
                    self.n_params + i,
                    inst.ty.shape
                ));
            }
        }
        if !self.extra.is_empty() {
            if self.reduction().is_some() {
                return err("a body with a reduction yields one result".into());
            }
            let main = self.n_params + last;
            for (j, &v) in self.extra.iter().enumerate() {
                if v < self.n_params || v >= main {
                    return err(format!(
                        "result {} must be an instruction before the main result %{main}, \
                         found %{v}",
                        j + 1
                    ));
                }
                if self.extra[..j].contains(&v) {
                    return err(format!("%{v} is yielded twice"));
                }
                let t = &types[v];
                if t.shape != domain {
                    return err(format!(
                        "result {} (%{v}) has shape {}, every result must have the domain's \
                         shape {domain}",
                        j + 1,
                        t.shape
                    ));
                }
            }
        }
        Ok(self.insts[last].ty.clone())
    }

    /// Number of results (1 + the extra results).
    pub fn n_results(&self) -> usize {
        1 + self.extra.len()
    }

    /// Value numbers of every result, main result first.
    pub fn results(&self) -> Vec<usize> {
        let main = self.n_params + self.insts.len().saturating_sub(1);
        std::iter::once(main)
            .chain(self.extra.iter().copied())
            .collect()
    }

    /// The trailing reduction, if any.
    pub fn reduction(&self) -> Option<&FusedInst> {
        self.insts
            .last()
            .filter(|i| is_reduction(&i.op) && self.insts.len() > 1)
    }

    /// The leading matmul (an epilogue body), if any.
    pub fn matmul(&self) -> Option<&FusedInst> {
        self.insts.first().filter(|i| matches!(i.op, Op::Matmul))
    }

    /// The leading matmul or conv2d (the producer of an epilogue body), if any.
    pub fn producer(&self) -> Option<&FusedInst> {
        self.insts.first().filter(|i| is_producer(&i.op))
    }

    /// The shape the elementwise part iterates over: the input of the trailing reduction, or
    /// the result.
    pub fn domain(&self) -> Shape {
        match (self.reduction(), self.insts.len()) {
            (Some(_), n) => self.insts[n - 2].ty.shape.clone(),
            (None, n) if n > 0 => self.insts[n - 1].ty.shape.clone(),
            _ => Shape(vec![]),
        }
    }

    /// Number of instructions (the "size" of the fused kernel).
    pub fn len(&self) -> usize {
        self.insts.len()
    }

    /// Whether the body has no instruction (never true for a valid body).
    pub fn is_empty(&self) -> bool {
        self.insts.is_empty()
    }
}
