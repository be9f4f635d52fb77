//! The op set: one [`Op`] enum and its per-op rules that do not depend on a stage: name,
//! operand count, type inference (with numpy broadcasting), attributes and differentiability.
//!
//! Every other stage (interpreter, autodiff, codegen, passes) has an exhaustive `match` on
//! [`Op`], so adding a variant makes the compiler list every place that needs a rule.

use crate::shape::{DType, Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Parameter initializers. All random ones are seeded and deterministic (see [`crate::init`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element equal to `value`.
    Constant { value: f64 },
    /// Uniform in `[low, high)`.
    Uniform { low: f64, high: f64, seed: u64 },
    /// Normal with the given mean and standard deviation.
    Normal { mean: f64, stddev: f64, seed: u64 },
    /// Glorot (Xavier) uniform: limit `sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform { seed: u64 },
    /// He normal: stddev `sqrt(2 / fan_in)`.
    HeNormal { seed: u64 },
}

/// The value of a constant: one value repeated (`Splat`) or every element (`Dense`, row-major).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    /// Every element has this value.
    Splat(f64),
    /// All elements in row-major order.
    Dense(Vec<f64>),
}

/// Elementwise unary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// square root
    Sqrt,
    /// `|x|`
    Abs,
    /// -1, 0 or 1 (0 at 0 and NaN stays NaN); its gradient is zero.
    Sign,
    /// hyperbolic tangent
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `max(x, 0)`
    Relu,
}

/// Elementwise binary arithmetic with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// elementwise maximum
    Max,
    /// elementwise minimum
    Min,
    /// `a ^ b`
    Pow,
}

/// Elementwise comparisons with numpy broadcasting; the result is an `f32` mask of 0.0 and 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    /// sum
    Sum,
    /// arithmetic mean
    Mean,
    /// maximum
    Max,
}

/// Spatial padding of conv2d: `Valid` (none) or `Same` (output size `ceil(in / stride)`,
/// padding split as TensorFlow does: the extra pixel goes after).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Zero padding so that `out = ceil(in / stride)`.
    Same,
}

/// One tensor operation. Leaf ops (`Input`, `Param`, `State`, `Const`) take their type from the
/// node; every other op's type is inferred from its operands and attributes by [`Op::infer`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Fed by the caller on every call (data, labels, learning rate).
    Input,
    /// A trainable parameter, owned by the executable across calls.
    Param { init: Init },
    /// Non-trainable state kept across calls (optimizer moments, step counter).
    State { init: Init },
    /// A constant.
    Const { value: Literal },
    /// Elementwise unary op (f32).
    Unary(UnaryOp),
    /// Elementwise binary op with broadcasting (f32).
    Binary(BinaryOp),
    /// Comparison with broadcasting; operands of one dtype, result an f32 mask.
    Compare(CmpOp),
    /// `select(mask, a, b)`: `a` where `mask != 0`, else `b`; broadcasting over all three.
    Select,
    /// Conversion between dtypes (f32 to i32 truncates toward zero).
    Cast { to: DType },
    /// Reduction over `axes` (sorted, unique); `keepdims` keeps them as size 1.
    Reduce {
        kind: ReduceOp,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Index of the maximum along `axis` (first on ties), as i32; the axis is removed.
    Argmax { axis: usize },
    /// Same elements, new shape.
    Reshape { shape: Shape },
    /// numpy broadcast to `shape`.
    Broadcast { shape: Shape },
    /// Permutation of axes: output dim `i` is input dim `perm[i]`.
    Transpose { perm: Vec<usize> },
    /// 2-D matrix product `[m,k] x [k,n] -> [m,n]`.
    Matmul,
    /// 2-D convolution, input NHWC `[n,h,w,c]`, filter HWIO `[kh,kw,c,o]` -> `[n,oh,ow,o]`.
    Conv2d {
        stride: [usize; 2],
        padding: Padding,
    },
    /// Gradient of conv2d with respect to its input: operands `(dy, filter)`, result `shape`.
    Conv2dInputGrad {
        stride: [usize; 2],
        padding: Padding,
        shape: Shape,
    },
    /// Gradient of conv2d with respect to its filter: operands `(x, dy)`, result `[kh,kw,c,o]`.
    Conv2dFilterGrad {
        stride: [usize; 2],
        padding: Padding,
        kernel: [usize; 2],
    },
    /// Max pooling over NHWC windows, no padding (Keras `valid`).
    MaxPool2d {
        window: [usize; 2],
        stride: [usize; 2],
    },
    /// Gradient of max pooling: operands `(x, dy)`; routes each `dy` to its window's first
    /// maximum (row-major order on ties).
    MaxPool2dGrad {
        window: [usize; 2],
        stride: [usize; 2],
    },
    /// Softmax along `axis`.
    Softmax { axis: usize },
    /// `log(softmax(x))` along `axis`, computed stably.
    LogSoftmax { axis: usize },
    /// Per-example cross-entropy of softmax(logits) against probability labels:
    /// operands `(logits [n,c], labels [n,c])` -> `[n]`.
    SoftmaxCrossEntropy,
    /// Per-example cross-entropy against integer labels: `(logits [n,c] f32, labels [n] i32)`
    /// -> `[n]`. Labels outside `0..c` give NaN.
    SparseSoftmaxCrossEntropy,
    /// One-hot encoding of i32 indices `[..]` -> f32 `[.., depth]` (out of range: all zeros).
    OneHot { depth: usize },
    /// The box `begin..end` of every dimension.
    Slice { begin: Vec<usize>, end: Vec<usize> },
    /// Concatenation of one or more operands along `axis`.
    Concat { axis: usize },
    /// A fused kernel made by the fusion pass: its body is a small expression graph over the
    /// node's operands (elementwise ops, optionally a leading matmul and a trailing reduction),
    /// computed in one loop nest without intermediate buffers. See [`crate::fused`]. Not
    /// differentiable (fusion runs after autodiff); printed as a nested block, so it is not in
    /// [`all_op_names`].
    Fused(crate::fused::FusedBody),
    /// Result `index` (>= 1) of a multi-result fused node, its only operand: no computation of
    /// its own, the fused node's loop writes its buffer (see [`crate::fused`]). Every result of
    /// a fused node has the node's type, so this is also the type rule; the verifier checks the
    /// operand is a fused node with that result. Made by the fusion pass, not differentiable,
    /// and not in [`all_op_names`] (it belongs with `fused`).
    FusedResult { index: usize },
}

/// Error from type inference: what is wrong, in words that name shapes found and expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferError(pub String);

impl fmt::Display for InferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest number of elements a tensor may have (2^31 - 1): shapes beyond it are rejected.
pub const MAX_ELEMENTS: usize = i32::MAX as usize;

macro_rules! bail {
    ($($t:tt)*) => { return Err(InferError(format!($($t)*))) };
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many.
    Exact(usize),
    /// At least this many.
    AtLeast(usize),
}

impl Arity {
    /// Whether `n` operands are allowed.
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exact(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exact(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// Every op name of the text format, with an example op, so tests can cover the whole set.
pub fn all_op_names() -> &'static [&'static str] {
    &[
        "input",
        "param",
        "state",
        "const",
        "neg",
        "exp",
        "log",
        "sqrt",
        "abs",
        "sign",
        "tanh",
        "sigmoid",
        "relu",
        "add",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "select",
        "cast",
        "reduce_sum",
        "reduce_mean",
        "reduce_max",
        "argmax",
        "reshape",
        "broadcast",
        "transpose",
        "matmul",
        "conv2d",
        "conv2d_input_grad",
        "conv2d_filter_grad",
        "max_pool2d",
        "max_pool2d_grad",
        "softmax",
        "log_softmax",
        "softmax_cross_entropy",
        "sparse_softmax_cross_entropy",
        "one_hot",
        "slice",
        "concat",
    ]
}

impl UnaryOp {
    /// All unary ops.
    pub const ALL: [UnaryOp; 9] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
    ];

    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
        }
    }
}

impl BinaryOp {
    /// All binary ops.
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];

    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Pow => "pow",
        }
    }

    /// Whether `a op b == b op a`.
    pub fn is_commutative(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min
        )
    }
}

impl CmpOp {
    /// All comparisons.
    pub const ALL: [CmpOp; 6] = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];

    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
}

impl ReduceOp {
    /// Text-format name of the reduction op.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Mean => "reduce_mean",
            ReduceOp::Max => "reduce_max",
        }
    }
}

impl Padding {
    /// Text-format name.
    pub fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }

    /// Output size and padding before, for one spatial dimension.
    pub fn out_and_pad(self, input: usize, kernel: usize, stride: usize) -> Option<(usize, usize)> {
        if stride == 0 || kernel == 0 {
            return None;
        }
        match self {
            Padding::Valid => {
                if input < kernel {
                    None
                } else {
                    Some(((input - kernel) / stride + 1, 0))
                }
            }
            Padding::Same => {
                let out = input.div_ceil(stride);
                let needed = (out.saturating_sub(1) * stride + kernel).saturating_sub(input);
                Some((out, needed / 2))
            }
        }
    }
}

/// The geometry of one conv2d (input `[n,h,w,c]`, filter `[kh,kw,c,o]`, output
/// `[n,oh,ow,o]`, strides, padding before: top, left), shared by the interpreter and the JIT
/// (which passes it to its kernels as `[i64; ConvGeometry::LEN]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub o: usize,
    pub oh: usize,
    pub ow: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl ConvGeometry {
    /// Number of values in [`ConvGeometry::to_array`].
    pub const LEN: usize = 13;

    /// The geometry of input `x` and filter `w` (NHWC, HWIO), or `None` when the kernel does
    /// not fit (type inference rejects such graphs first).
    pub fn new(x: &Shape, w: &Shape, stride: [usize; 2], padding: Padding) -> Option<Self> {
        let (x, f) = (x.dims(), w.dims());
        if x.len() != 4 || f.len() != 4 {
            return None;
        }
        let (oh, ph) = padding.out_and_pad(x[1], f[0], stride[0])?;
        let (ow, pw) = padding.out_and_pad(x[2], f[1], stride[1])?;
        Some(ConvGeometry {
            n: x[0],
            h: x[1],
            w: x[2],
            c: x[3],
            kh: f[0],
            kw: f[1],
            o: f[3],
            oh,
            ow,
            sh: stride[0],
            sw: stride[1],
            ph,
            pw,
        })
    }

    /// `[n,h,w,c,kh,kw,o,oh,ow,sh,sw,ph,pw]`, as compiled code passes it to kernels.
    pub fn to_array(&self) -> [i64; Self::LEN] {
        [
            self.n, self.h, self.w, self.c, self.kh, self.kw, self.o, self.oh, self.ow, self.sh,
            self.sw, self.ph, self.pw,
        ]
        .map(|d| d as i64)
    }

    /// The inverse of [`ConvGeometry::to_array`].
    pub fn from_array(g: &[i64; Self::LEN]) -> Self {
        let u = |i: usize| g[i] as usize;
        ConvGeometry {
            n: u(0),
            h: u(1),
            w: u(2),
            c: u(3),
            kh: u(4),
            kw: u(5),
            o: u(6),
            oh: u(7),
            ow: u(8),
            sh: u(9),
            sw: u(10),
            ph: u(11),
            pw: u(12),
        }
    }
}

/// The geometry of one valid max pooling (input `[n,h,w,c]`, window `[wh,ww]`, strides
/// `[sh,sw]`, output `[n,oh,ow,c]`), shared by the interpreter and the JIT (which passes it to
/// its kernels as `[i64; PoolGeometry::LEN]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub wh: usize,
    pub ww: usize,
    pub sh: usize,
    pub sw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeometry {
    /// Number of values in [`PoolGeometry::to_array`].
    pub const LEN: usize = 10;

    /// The geometry of pooling `x` (NHWC), or `None` when the window does not fit (type
    /// inference rejects such graphs first).
    pub fn new(x: &Shape, window: [usize; 2], stride: [usize; 2]) -> Option<Self> {
        let x = x.dims();
        if x.len() != 4 {
            return None;
        }
        let (oh, _) = Padding::Valid.out_and_pad(x[1], window[0], stride[0])?;
        let (ow, _) = Padding::Valid.out_and_pad(x[2], window[1], stride[1])?;
        Some(PoolGeometry {
            n: x[0],
            h: x[1],
            w: x[2],
            c: x[3],
            wh: window[0],
            ww: window[1],
            sh: stride[0],
            sw: stride[1],
            oh,
            ow,
        })
    }

    /// `[n,h,w,c,wh,ww,sh,sw,oh,ow]`, as compiled code passes it to kernels.
    pub fn to_array(&self) -> [i64; Self::LEN] {
        [
            self.n, self.h, self.w, self.c, self.wh, self.ww, self.sh, self.sw, self.oh, self.ow,
        ]
        .map(|d| d as i64)
    }

    /// The inverse of [`PoolGeometry::to_array`].
    pub fn from_array(g: &[i64; Self::LEN]) -> Self {
        let u = |i: usize| g[i] as usize;
        PoolGeometry {
            n: u(0),
            h: u(1),
            w: u(2),
            c: u(3),
            wh: u(4),
            ww: u(5),
            sh: u(6),
            sw: u(7),
            oh: u(8),
            ow: u(9),
        }
    }

    /// Offset of channel 0 of tap `(ky, kx)` of output pixel `(b, oy, ox)`'s window in the
    /// input.
    #[inline(always)]
    pub fn pixel(&self, b: usize, oy: usize, ox: usize, ky: usize, kx: usize) -> usize {
        ((b * self.h + oy * self.sh + ky) * self.w + ox * self.sw + kx) * self.c
    }
}

impl Op {
    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Const { .. } => "const",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(c) => c.name(),
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { kind, .. } => kind.name(),
            Op::Argmax { .. } => "argmax",
            Op::Reshape { .. } => "reshape",
            Op::Broadcast { .. } => "broadcast",
            Op::Transpose { .. } => "transpose",
            Op::Matmul => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::Conv2dInputGrad { .. } => "conv2d_input_grad",
            Op::Conv2dFilterGrad { .. } => "conv2d_filter_grad",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::MaxPool2dGrad { .. } => "max_pool2d_grad",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Op::SparseSoftmaxCrossEntropy => "sparse_softmax_cross_entropy",
            Op::OneHot { .. } => "one_hot",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Fused(_) => "fused",
            Op::FusedResult { .. } => "fused_result",
        }
    }

    /// Whether this is a leaf (`input`, `param`, `state`, `const`): no operands, type given.
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. }
        )
    }

    /// Number of operands the op takes.
    pub fn arity(&self) -> Arity {
        match self {
            Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => Arity::Exact(0),
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::Argmax { .. }
            | Op::Reshape { .. }
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::MaxPool2d { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::OneHot { .. }
            | Op::Slice { .. }
            | Op::FusedResult { .. } => Arity::Exact(1),
            Op::Binary(_)
            | Op::Compare(_)
            | Op::Matmul
            | Op::Conv2d { .. }
            | Op::Conv2dInputGrad { .. }
            | Op::Conv2dFilterGrad { .. }
            | Op::MaxPool2dGrad { .. }
            | Op::SoftmaxCrossEntropy
            | Op::SparseSoftmaxCrossEntropy => Arity::Exact(2),
            Op::Select => Arity::Exact(3),
            Op::Concat { .. } => Arity::AtLeast(1),
            Op::Fused(body) => Arity::Exact(body.n_params),
        }
    }

    /// Whether reverse-mode autodiff has a rule for this op ([`Op::not_differentiable`] gives
    /// the reason when not).
    pub fn is_differentiable(&self) -> bool {
        self.not_differentiable().is_none()
    }

    /// Why reverse-mode autodiff has no rule for this op, or `None` when it has one: the
    /// integer-valued ops (comparisons, argmax, cast, one_hot) and fused nodes. The one fact
    /// both autodiff and [`Op::is_differentiable`] ask.
    pub fn not_differentiable(&self) -> Option<&'static str> {
        match self {
            Op::Compare(_) => Some("is not differentiable (a comparison is piecewise constant)"),
            Op::Argmax { .. } => Some("is not differentiable (it returns integer indices)"),
            Op::Cast { .. } => Some("is not differentiable (it converts to or from integers)"),
            Op::OneHot { .. } => Some("is not differentiable (its operand is an integer index)"),
            Op::Fused(_) | Op::FusedResult { .. } => {
                Some("is not differentiable; run fusion after autodiff")
            }
            _ => None,
        }
    }

    /// Infers the result type from the operand types. `declared` is the node's own type; it is
    /// required by leaf ops (which have no operands to infer from) and ignored otherwise.
    pub fn infer(
        &self,
        operands: &[&TensorType],
        declared: Option<&TensorType>,
    ) -> Result<TensorType, InferError> {
        let name = self.name();
        if !self.arity().accepts(operands.len()) {
            bail!(
                "{name} takes {} operand(s), found {}",
                self.arity(),
                operands.len()
            );
        }
        let f32_operand = |i: usize| -> Result<&Shape, InferError> {
            let t = operands[i];
            if t.dtype != DType::F32 {
                bail!("{name} operand {i} must be f32, found {t}");
            }
            Ok(&t.shape)
        };
        let broadcast_all = |shapes: &[&Shape]| -> Result<Shape, InferError> {
            let mut out = shapes[0].clone();
            for s in &shapes[1..] {
                match Shape::broadcast(&out, s) {
                    Some(b) => out = b,
                    None => {
                        let list: Vec<String> = operands.iter().map(|t| t.to_string()).collect();
                        bail!(
                            "{name}: shapes cannot be broadcast together: {}",
                            list.join(", ")
                        )
                    }
                }
            }
            Ok(out)
        };
        let ty = match self {
            Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => {
                let Some(t) = declared else {
                    bail!("{name} needs a declared type");
                };
                if t.shape.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
                    bail!("{name} of type {t} has more than {MAX_ELEMENTS} elements");
                }
                if matches!(self, Op::Param { .. } | Op::State { .. }) && t.dtype != DType::F32 {
                    bail!("{name} must be f32, found {t}");
                }
                if let Op::Const {
                    value: Literal::Dense(v),
                } = self
                {
                    if v.len() != t.shape.numel() {
                        bail!(
                            "const of type {t} needs {} values, found {}",
                            t.shape.numel(),
                            v.len()
                        );
                    }
                }
                t.clone()
            }
            Op::Unary(_) => TensorType::f32(f32_operand(0)?.clone()),
            Op::Binary(_) => {
                let a = f32_operand(0)?;
                let b = f32_operand(1)?;
                TensorType::f32(broadcast_all(&[a, b])?)
            }
            Op::Compare(_) => {
                if operands[0].dtype != operands[1].dtype {
                    bail!(
                        "{name}: operands must have the same dtype, found {} and {}",
                        operands[0],
                        operands[1]
                    );
                }
                TensorType::f32(broadcast_all(&[&operands[0].shape, &operands[1].shape])?)
            }
            Op::Select => {
                let m = f32_operand(0)?;
                if operands[1].dtype != operands[2].dtype {
                    bail!(
                        "select: branches must have the same dtype, found {} and {}",
                        operands[1],
                        operands[2]
                    );
                }
                let s = broadcast_all(&[m, &operands[1].shape, &operands[2].shape])?;
                TensorType::new(operands[1].dtype, s)
            }
            Op::Cast { to } => TensorType::new(*to, operands[0].shape.clone()),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let t = operands[0];
                if *kind != ReduceOp::Max && t.dtype != DType::F32 {
                    bail!("{name} operand must be f32, found {t}");
                }
                check_axes(name, axes, t)?;
                let mut out = Vec::new();
                for (i, &d) in t.shape.0.iter().enumerate() {
                    if axes.contains(&i) {
                        if *keepdims {
                            out.push(1);
                        }
                    } else {
                        out.push(d);
                    }
                }
                TensorType::new(t.dtype, out)
            }
            Op::Argmax { axis } => {
                let t = operands[0];
                check_axes(name, &[*axis], t)?;
                if t.shape.0[*axis] == 0 {
                    bail!("argmax over an empty axis {axis} of {t}");
                }
                let mut out = t.shape.0.clone();
                out.remove(*axis);
                TensorType::i32(out)
            }
            Op::Reshape { shape } => {
                let t = operands[0];
                if shape.numel() != t.shape.numel() {
                    bail!(
                        "reshape: cannot reshape {t} ({} elements) to {shape} ({} elements)",
                        t.shape.numel(),
                        shape.numel()
                    );
                }
                TensorType::new(t.dtype, shape.clone())
            }
            Op::Broadcast { shape } => {
                let t = operands[0];
                if !t.shape.broadcasts_to(shape) {
                    bail!("broadcast: {t} cannot be broadcast to {shape}");
                }
                TensorType::new(t.dtype, shape.clone())
            }
            Op::Transpose { perm } => {
                let t = operands[0];
                let mut seen = vec![false; t.shape.rank()];
                if perm.len() != t.shape.rank() {
                    bail!(
                        "transpose: perm {perm:?} has {} entries, operand {t} has rank {}",
                        perm.len(),
                        t.shape.rank()
                    );
                }
                for &p in perm {
                    if p >= seen.len() || seen[p] {
                        bail!(
                            "transpose: perm {perm:?} is not a permutation of 0..{}",
                            seen.len()
                        );
                    }
                    seen[p] = true;
                }
                TensorType::new(
                    t.dtype,
                    perm.iter().map(|&p| t.shape.0[p]).collect::<Vec<_>>(),
                )
            }
            Op::Matmul => {
                let a = f32_operand(0)?;
                let b = f32_operand(1)?;
                if a.rank() != 2 || b.rank() != 2 {
                    bail!(
                        "matmul: operands must be 2-D, found {} and {}",
                        operands[0],
                        operands[1]
                    );
                }
                if a.0[1] != b.0[0] {
                    bail!(
                        "matmul: inner dimensions differ: lhs {} and rhs {} (expected rhs[0] = {})",
                        operands[0],
                        operands[1],
                        a.0[1]
                    );
                }
                TensorType::f32([a.0[0], b.0[1]])
            }
            Op::Conv2d { stride, padding } => {
                let x = f32_operand(0)?;
                let w = f32_operand(1)?;
                conv_out(name, x, w, *stride, *padding, operands)?
            }
            Op::Conv2dInputGrad {
                stride,
                padding,
                shape,
            } => {
                let dy = f32_operand(0)?;
                let w = f32_operand(1)?;
                let expect = conv_out(name, shape, w, *stride, *padding, operands)?;
                if &expect.shape != dy {
                    bail!(
                        "{name}: dy is {}, expected f32{} for an input of shape {shape}",
                        operands[0],
                        expect.shape
                    );
                }
                TensorType::f32(shape.clone())
            }
            Op::Conv2dFilterGrad {
                stride,
                padding,
                kernel,
            } => {
                let x = f32_operand(0)?;
                let dy = f32_operand(1)?;
                if x.rank() != 4 || dy.rank() != 4 {
                    bail!(
                        "{name}: x and dy must be 4-D (NHWC), found {} and {}",
                        operands[0],
                        operands[1]
                    );
                }
                let w = Shape(vec![kernel[0], kernel[1], x.0[3], dy.0[3]]);
                let expect = conv_out(name, x, &w, *stride, *padding, operands)?;
                if &expect.shape != dy {
                    bail!(
                        "{name}: dy is {}, expected f32{}",
                        operands[1],
                        expect.shape
                    );
                }
                TensorType::f32(w)
            }
            Op::MaxPool2d { window, stride } => {
                let x = f32_operand(0)?;
                TensorType::f32(pool_out(name, x, *window, *stride)?)
            }
            Op::MaxPool2dGrad { window, stride } => {
                let x = f32_operand(0)?;
                let dy = f32_operand(1)?;
                let expect = pool_out(name, x, *window, *stride)?;
                if &expect != dy {
                    bail!("{name}: dy is {}, expected f32{expect}", operands[1]);
                }
                TensorType::f32(x.clone())
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let x = f32_operand(0)?;
                check_axes(name, &[*axis], operands[0])?;
                TensorType::f32(x.clone())
            }
            Op::SoftmaxCrossEntropy => {
                let l = f32_operand(0)?;
                let y = f32_operand(1)?;
                if l.rank() != 2 || l != y {
                    bail!(
                        "{name}: logits and labels must both be [n,c], found {} and {}",
                        operands[0],
                        operands[1]
                    );
                }
                TensorType::f32([l.0[0]])
            }
            Op::SparseSoftmaxCrossEntropy => {
                let l = f32_operand(0)?;
                let y = operands[1];
                if l.rank() != 2 || y.dtype != DType::I32 || y.shape.0 != [l.0[0]] {
                    bail!(
                        "{name}: expected logits f32[n,c] and labels i32[n], found {} and {}",
                        operands[0],
                        operands[1]
                    );
                }
                TensorType::f32([l.0[0]])
            }
            Op::OneHot { depth } => {
                let t = operands[0];
                if t.dtype != DType::I32 {
                    bail!("one_hot operand must be i32, found {t}");
                }
                let mut s = t.shape.0.clone();
                s.push(*depth);
                TensorType::f32(s)
            }
            Op::Slice { begin, end } => {
                let t = operands[0];
                if begin.len() != t.shape.rank() || end.len() != t.shape.rank() {
                    bail!(
                        "slice: begin {begin:?} and end {end:?} must have one entry per dimension of {t}"
                    );
                }
                let mut out = Vec::new();
                for i in 0..begin.len() {
                    if begin[i] > end[i] || end[i] > t.shape.0[i] {
                        bail!(
                            "slice: range {}..{} is out of bounds for dimension {i} of {t}",
                            begin[i],
                            end[i]
                        );
                    }
                    out.push(end[i] - begin[i]);
                }
                TensorType::new(t.dtype, out)
            }
            Op::Concat { axis } => {
                let first = operands[0];
                check_axes(name, &[*axis], first)?;
                let mut total = 0;
                for (i, t) in operands.iter().enumerate() {
                    let same_rest = t.shape.rank() == first.shape.rank()
                        && t.shape
                            .0
                            .iter()
                            .zip(&first.shape.0)
                            .enumerate()
                            .all(|(d, (a, b))| d == *axis || a == b);
                    if t.dtype != first.dtype || !same_rest {
                        bail!(
                            "concat: operand {i} is {t}, expected {}{} with any size on axis {axis}",
                            first.dtype,
                            first.shape
                        );
                    }
                    total += t.shape.0[*axis];
                }
                let mut s = first.shape.0.clone();
                s[*axis] = total;
                TensorType::new(first.dtype, s)
            }
            Op::Fused(body) => body.infer(operands)?,
            Op::FusedResult { index } => {
                f32_operand(0)?;
                if *index == 0 {
                    bail!("fused_result: index must be at least 1 (result 0 is the fused node itself)");
                }
                operands[0].clone()
            }
        };
        if ty.shape.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
            bail!("{name}: result type {ty} has more than {MAX_ELEMENTS} elements");
        }
        Ok(ty)
    }
}

fn check_axes(name: &str, axes: &[usize], t: &TensorType) -> Result<(), InferError> {
    for (i, &a) in axes.iter().enumerate() {
        if a >= t.shape.rank() {
            bail!(
                "{name}: axis {a} is out of range for {t} (rank {})",
                t.shape.rank()
            );
        }
        if i > 0 && axes[i - 1] >= a {
            bail!("{name}: axes {axes:?} must be sorted and unique");
        }
    }
    Ok(())
}

fn conv_out(
    name: &str,
    x: &Shape,
    w: &Shape,
    stride: [usize; 2],
    padding: Padding,
    operands: &[&TensorType],
) -> Result<TensorType, InferError> {
    if x.rank() != 4 || w.rank() != 4 {
        bail!(
            "{name}: expected input [n,h,w,c] and filter [kh,kw,c,o], found {} and {}",
            operands[0],
            operands[1]
        );
    }
    if x.0[3] != w.0[2] {
        bail!(
            "{name}: input has {} channels but the filter expects {} (input {x}, filter {w})",
            x.0[3],
            w.0[2]
        );
    }
    if stride.contains(&0) {
        bail!("{name}: stride {stride:?}: every stride must be at least 1");
    }
    let (oh, _) = padding
        .out_and_pad(x.0[1], w.0[0], stride[0])
        .ok_or_else(|| {
            InferError(format!(
                "{name}: kernel {}x{} with stride {stride:?} does not fit input {x}",
                w.0[0], w.0[1]
            ))
        })?;
    let (ow, _) = padding
        .out_and_pad(x.0[2], w.0[1], stride[1])
        .ok_or_else(|| {
            InferError(format!(
                "{name}: kernel {}x{} with stride {stride:?} does not fit input {x}",
                w.0[0], w.0[1]
            ))
        })?;
    Ok(TensorType::f32([x.0[0], oh, ow, w.0[3]]))
}

fn pool_out(
    name: &str,
    x: &Shape,
    window: [usize; 2],
    stride: [usize; 2],
) -> Result<Shape, InferError> {
    if x.rank() != 4 {
        bail!("{name}: expected input [n,h,w,c], found f32{x}");
    }
    if stride.contains(&0) {
        bail!("{name}: stride {stride:?}: every stride must be at least 1");
    }
    let oh = Padding::Valid.out_and_pad(x.0[1], window[0], stride[0]);
    let ow = Padding::Valid.out_and_pad(x.0[2], window[1], stride[1]);
    match (oh, ow) {
        (Some((oh, _)), Some((ow, _))) => Ok(Shape(vec![x.0[0], oh, ow, x.0[3]])),
        _ => bail!("{name}: window {window:?} with stride {stride:?} does not fit input f32{x}"),
    }
}

// ---- text-format attribute table (added by the text helper) ---------------------------------
//
// The printer and the parser in `crate::text` are generic: they ask an op for its attributes
// (`Op::attrs`) and build an op back from a name and attributes (`Op::from_attrs`). The per-op
// rules (which keys, which value kinds) live here, one match arm per op. Same for initializers.

/// An attribute value as written in the text format: `3`, `0.5`, `[1,2]` or an identifier
/// (`valid`, `same`, `true`, `false`, `f32`, `i32`, and `NaN`/`inf` for floats).
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// An integer literal (wide enough for every `u64` seed and negative numbers).
    Int(i128),
    /// A float literal (printed as Rust's `{:?}` of `f64`, shortest round-trip form).
    Float(f64),
    /// A bracketed list `[a,b,...]`.
    List(Vec<AttrValue>),
    /// An identifier.
    Ident(String),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => write!(f, "{x:?}"),
            AttrValue::Ident(s) => f.write_str(s),
            AttrValue::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Largest integer accepted for a dimension, axis, stride, window or depth in the text format.
/// Keeps every shape computation of [`Op::infer`] far from `usize` overflow.
pub const MAX_DIM: usize = i32::MAX as usize;

/// Error from building an op or initializer out of text attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrError {
    /// The op or initializer name is not known.
    UnknownName,
    /// `key` is not an attribute of this op; `expected` lists the ones it has.
    Unknown {
        /// The offending key.
        key: String,
        /// The keys the op accepts.
        expected: &'static [&'static str],
    },
    /// `key` was given twice.
    Duplicate {
        /// The repeated key.
        key: String,
    },
    /// The required attribute `key` is absent.
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// The value of `key` has the wrong kind or range; `message` says what was expected.
    Bad {
        /// The key whose value is wrong.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
}

/// Reads typed values out of `key=value` attributes, checking them against a key list.
struct AttrReader<'a> {
    attrs: &'a [(String, AttrValue)],
}

impl<'a> AttrReader<'a> {
    /// Checks that every key is in `expected` and appears once.
    fn new(
        attrs: &'a [(String, AttrValue)],
        expected: &'static [&'static str],
    ) -> Result<Self, AttrError> {
        for (i, (k, _)) in attrs.iter().enumerate() {
            if !expected.contains(&k.as_str()) {
                return Err(AttrError::Unknown {
                    key: k.clone(),
                    expected,
                });
            }
            if attrs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(AttrError::Duplicate { key: k.clone() });
            }
        }
        Ok(AttrReader { attrs })
    }

    fn get(&self, key: &'static str) -> Result<&'a AttrValue, AttrError> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or(AttrError::Missing { key })
    }

    fn bad(key: &str, expected: &str, found: &AttrValue) -> AttrError {
        AttrError::Bad {
            key: key.to_string(),
            message: format!("expected {expected}, found {found}"),
        }
    }

    fn usize(&self, key: &'static str) -> Result<usize, AttrError> {
        let v = self.get(key)?;
        as_dim(v).ok_or_else(|| Self::bad(key, &format!("an integer in 0..={MAX_DIM}"), v))
    }

    fn u64(&self, key: &'static str) -> Result<u64, AttrError> {
        let v = self.get(key)?;
        match v {
            AttrValue::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
        .ok_or_else(|| Self::bad(key, "an integer in 0..=18446744073709551615", v))
    }

    fn f64(&self, key: &'static str) -> Result<f64, AttrError> {
        let v = self.get(key)?;
        match v {
            AttrValue::Float(x) => Some(*x),
            AttrValue::Int(i) => Some(*i as f64),
            AttrValue::Ident(s) if matches!(s.as_str(), "NaN" | "inf") => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| Self::bad(key, "a number", v))
    }

    fn list(&self, key: &'static str) -> Result<Vec<usize>, AttrError> {
        let v = self.get(key)?;
        let expected = || Self::bad(key, &format!("a list of integers in 0..={MAX_DIM}"), v);
        let AttrValue::List(items) = v else {
            return Err(expected());
        };
        items
            .iter()
            .map(|x| as_dim(x).ok_or_else(expected))
            .collect()
    }

    fn pair(&self, key: &'static str) -> Result<[usize; 2], AttrError> {
        let v = self.get(key)?;
        match self.list(key)?.as_slice() {
            [a, b] => Ok([*a, *b]),
            _ => Err(Self::bad(key, "a list of two integers", v)),
        }
    }

    fn shape(&self, key: &'static str) -> Result<Shape, AttrError> {
        let dims = self.list(key)?;
        let shape = Shape(dims);
        if shape.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
            let expected = format!("a shape with at most {MAX_ELEMENTS} elements");
            return Err(Self::bad(key, &expected, self.get(key)?));
        }
        Ok(shape)
    }

    fn ident(&self, key: &'static str, choices: &[&str]) -> Result<&'a str, AttrError> {
        let v = self.get(key)?;
        match v {
            AttrValue::Ident(s) if choices.contains(&s.as_str()) => Ok(s),
            _ => Err(Self::bad(key, &choices.join(" or "), v)),
        }
    }

    fn bool(&self, key: &'static str) -> Result<bool, AttrError> {
        Ok(self.ident(key, &["true", "false"])? == "true")
    }

    fn dtype(&self, key: &'static str) -> Result<DType, AttrError> {
        let s = self.ident(key, &["f32", "i32"])?;
        Ok(if s == "f32" { DType::F32 } else { DType::I32 })
    }

    fn padding(&self, key: &'static str) -> Result<Padding, AttrError> {
        let s = self.ident(key, &["valid", "same"])?;
        Ok(if s == "valid" {
            Padding::Valid
        } else {
            Padding::Same
        })
    }
}

fn as_dim(v: &AttrValue) -> Option<usize> {
    match v {
        AttrValue::Int(i) if (0..=MAX_DIM as i128).contains(i) => Some(*i as usize),
        _ => None,
    }
}

fn int(x: usize) -> AttrValue {
    AttrValue::Int(x as i128)
}

fn ints(xs: &[usize]) -> AttrValue {
    AttrValue::List(xs.iter().map(|&x| int(x)).collect())
}

fn ident(s: &str) -> AttrValue {
    AttrValue::Ident(s.to_string())
}

impl Init {
    /// Text-format name of the initializer.
    pub fn name(&self) -> &'static str {
        match self {
            Init::Zeros => "zeros",
            Init::Ones => "ones",
            Init::Constant { .. } => "constant",
            Init::Uniform { .. } => "uniform",
            Init::Normal { .. } => "normal",
            Init::GlorotUniform { .. } => "glorot_uniform",
            Init::HeNormal { .. } => "he_normal",
        }
    }

    /// The argument keys of the initializer called `name` (sorted), or `None` if unknown.
    pub fn arg_names(name: &str) -> Option<&'static [&'static str]> {
        Some(match name {
            "zeros" | "ones" => &[],
            "constant" => &["value"],
            "uniform" => &["high", "low", "seed"],
            "normal" => &["mean", "seed", "stddev"],
            "glorot_uniform" | "he_normal" => &["seed"],
            _ => return None,
        })
    }

    /// The arguments, sorted by key, as printed: `uniform(high=0.05, low=-0.05, seed=3)`.
    pub fn args(&self) -> Vec<(&'static str, AttrValue)> {
        let f = AttrValue::Float;
        let seed = |s: u64| AttrValue::Int(s as i128);
        match *self {
            Init::Zeros | Init::Ones => vec![],
            Init::Constant { value } => vec![("value", f(value))],
            Init::Uniform { low, high, seed: s } => {
                vec![("high", f(high)), ("low", f(low)), ("seed", seed(s))]
            }
            Init::Normal {
                mean,
                stddev,
                seed: s,
            } => vec![("mean", f(mean)), ("seed", seed(s)), ("stddev", f(stddev))],
            Init::GlorotUniform { seed: s } | Init::HeNormal { seed: s } => {
                vec![("seed", seed(s))]
            }
        }
    }

    /// Builds the initializer `name` from its arguments (the inverse of `name` and `args`).
    pub fn from_args(name: &str, args: &[(String, AttrValue)]) -> Result<Init, AttrError> {
        let keys = Init::arg_names(name).ok_or(AttrError::UnknownName)?;
        let r = AttrReader::new(args, keys)?;
        Ok(match name {
            "zeros" => Init::Zeros,
            "ones" => Init::Ones,
            "constant" => Init::Constant {
                value: r.f64("value")?,
            },
            "uniform" => Init::Uniform {
                low: r.f64("low")?,
                high: r.f64("high")?,
                seed: r.u64("seed")?,
            },
            "normal" => Init::Normal {
                mean: r.f64("mean")?,
                stddev: r.f64("stddev")?,
                seed: r.u64("seed")?,
            },
            "glorot_uniform" => Init::GlorotUniform {
                seed: r.u64("seed")?,
            },
            "he_normal" => Init::HeNormal {
                seed: r.u64("seed")?,
            },
            _ => return Err(AttrError::UnknownName),
        })
    }
}

impl Op {
    /// The attribute keys of the non-leaf op called `name` (sorted), or `None` if `name` is not
    /// a non-leaf op. Leaf ops (`input`, `param`, `state`, `const`) have no `key=value`
    /// attributes: their initializer or literal has its own syntax.
    pub fn attr_names(name: &str) -> Option<&'static [&'static str]> {
        let unary = UnaryOp::ALL.iter().any(|u| u.name() == name);
        let binary = BinaryOp::ALL.iter().any(|b| b.name() == name);
        let cmp = CmpOp::ALL.iter().any(|c| c.name() == name);
        if unary || binary || cmp {
            return Some(&[]);
        }
        Some(match name {
            "select" | "matmul" | "softmax_cross_entropy" | "sparse_softmax_cross_entropy" => &[],
            "cast" => &["to"],
            "reduce_sum" | "reduce_mean" | "reduce_max" => &["axes", "keepdims"],
            "argmax" | "softmax" | "log_softmax" | "concat" => &["axis"],
            "reshape" | "broadcast" => &["shape"],
            "transpose" => &["perm"],
            "conv2d" => &["padding", "stride"],
            "conv2d_input_grad" => &["padding", "shape", "stride"],
            "conv2d_filter_grad" => &["kernel", "padding", "stride"],
            "max_pool2d" | "max_pool2d_grad" => &["stride", "window"],
            "one_hot" => &["depth"],
            "slice" => &["begin", "end"],
            "fused_result" => &["index"],
            _ => return None,
        })
    }

    /// The op's `key=value` attributes sorted by key, as the text format prints them. Leaf ops
    /// return none (see [`Op::attr_names`]).
    pub fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        match self {
            Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => vec![],
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Matmul => vec![],
            Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy => vec![],
            Op::Cast { to } => vec![("to", ident(to.name()))],
            Op::Reduce { axes, keepdims, .. } => vec![
                ("axes", ints(axes)),
                ("keepdims", ident(if *keepdims { "true" } else { "false" })),
            ],
            Op::Argmax { axis }
            | Op::Softmax { axis }
            | Op::LogSoftmax { axis }
            | Op::Concat { axis } => vec![("axis", int(*axis))],
            Op::Reshape { shape } | Op::Broadcast { shape } => vec![("shape", ints(&shape.0))],
            Op::Transpose { perm } => vec![("perm", ints(perm))],
            Op::Conv2d { stride, padding } => {
                vec![("padding", ident(padding.name())), ("stride", ints(stride))]
            }
            Op::Conv2dInputGrad {
                stride,
                padding,
                shape,
            } => vec![
                ("padding", ident(padding.name())),
                ("shape", ints(&shape.0)),
                ("stride", ints(stride)),
            ],
            Op::Conv2dFilterGrad {
                stride,
                padding,
                kernel,
            } => vec![
                ("kernel", ints(kernel)),
                ("padding", ident(padding.name())),
                ("stride", ints(stride)),
            ],
            Op::MaxPool2d { window, stride } | Op::MaxPool2dGrad { window, stride } => {
                vec![("stride", ints(stride)), ("window", ints(window))]
            }
            Op::OneHot { depth } => vec![("depth", int(*depth))],
            Op::Slice { begin, end } => vec![("begin", ints(begin)), ("end", ints(end))],
            // the body is printed as a nested block, not as attributes
            Op::Fused(_) => vec![],
            Op::FusedResult { index } => vec![("index", int(*index))],
        }
    }

    /// Builds the non-leaf op called `name` from its attributes (the inverse of [`Op::name`]
    /// and [`Op::attrs`]). Integers must lie in `0..=`[`MAX_DIM`].
    pub fn from_attrs(name: &str, attrs: &[(String, AttrValue)]) -> Result<Op, AttrError> {
        let keys = Op::attr_names(name).ok_or(AttrError::UnknownName)?;
        let r = AttrReader::new(attrs, keys)?;
        if let Some(&u) = UnaryOp::ALL.iter().find(|u| u.name() == name) {
            return Ok(Op::Unary(u));
        }
        if let Some(&b) = BinaryOp::ALL.iter().find(|b| b.name() == name) {
            return Ok(Op::Binary(b));
        }
        if let Some(&c) = CmpOp::ALL.iter().find(|c| c.name() == name) {
            return Ok(Op::Compare(c));
        }
        let reduce = |kind| -> Result<Op, AttrError> {
            Ok(Op::Reduce {
                kind,
                axes: r.list("axes")?,
                keepdims: r.bool("keepdims")?,
            })
        };
        Ok(match name {
            "select" => Op::Select,
            "matmul" => Op::Matmul,
            "softmax_cross_entropy" => Op::SoftmaxCrossEntropy,
            "sparse_softmax_cross_entropy" => Op::SparseSoftmaxCrossEntropy,
            "cast" => Op::Cast { to: r.dtype("to")? },
            "reduce_sum" => reduce(ReduceOp::Sum)?,
            "reduce_mean" => reduce(ReduceOp::Mean)?,
            "reduce_max" => reduce(ReduceOp::Max)?,
            "argmax" => Op::Argmax {
                axis: r.usize("axis")?,
            },
            "softmax" => Op::Softmax {
                axis: r.usize("axis")?,
            },
            "log_softmax" => Op::LogSoftmax {
                axis: r.usize("axis")?,
            },
            "concat" => Op::Concat {
                axis: r.usize("axis")?,
            },
            "reshape" => Op::Reshape {
                shape: r.shape("shape")?,
            },
            "broadcast" => Op::Broadcast {
                shape: r.shape("shape")?,
            },
            "transpose" => Op::Transpose {
                perm: r.list("perm")?,
            },
            "conv2d" => Op::Conv2d {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
            },
            "conv2d_input_grad" => Op::Conv2dInputGrad {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
                shape: r.shape("shape")?,
            },
            "conv2d_filter_grad" => Op::Conv2dFilterGrad {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
                kernel: r.pair("kernel")?,
            },
            "max_pool2d" => Op::MaxPool2d {
                window: r.pair("window")?,
                stride: r.pair("stride")?,
            },
            "max_pool2d_grad" => Op::MaxPool2dGrad {
                window: r.pair("window")?,
                stride: r.pair("stride")?,
            },
            "one_hot" => Op::OneHot {
                depth: r.usize("depth")?,
            },
            "fused_result" => Op::FusedResult {
                index: r.usize("index")?,
            },
            "slice" => Op::Slice {
                begin: r.list("begin")?,
                end: r.list("end")?,
            },
            _ => return Err(AttrError::UnknownName),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_and_huge_shapes_are_errors_not_panics() {
        let x = TensorType::f32([1, 0, 5, 1]);
        let w = TensorType::f32([3, 3, 1, 2]);
        let conv = Op::Conv2d {
            stride: [1, 1],
            padding: Padding::Same,
        };
        assert_eq!(
            conv.infer(&[&x, &w], None).unwrap().shape.0,
            vec![1, 0, 5, 2]
        );
        let huge = TensorType::f32([1 << 40, 1 << 40]);
        let err = Op::Input.infer(&[], Some(&huge)).unwrap_err();
        assert!(err.0.contains("more than"), "{err}");
        let b = Op::Broadcast {
            shape: Shape(vec![1 << 20, 1 << 20]),
        };
        assert!(b.infer(&[&TensorType::f32([1])], None).is_err());
    }
}
