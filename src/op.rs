//! The op set: one [`Op`] enum and its per-op rules that do not depend on a stage: kind and
//! name ([`OpKind`]), class ([`OpClass`]), operand count, type inference (with numpy
//! broadcasting) and differentiability. How attributes are written in the text format is in
//! `crate::text::attrs`.
//!
//! Every other stage (interpreter, autodiff, codegen, passes) has an exhaustive `match` on
//! [`Op`], so adding a variant makes the compiler list every place that needs a rule.

use crate::shape::{DType, Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

// The attribute tables of the text format live in `crate::text::attrs`; their types stay
// reachable here, where the ops are.
pub use crate::text::{AttrError, AttrValue, MAX_DIM};

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
    /// Orthogonal (Keras' default for recurrent kernels): the tensor as a matrix `[rows,
    /// last axis]` has orthonormal rows or columns (whichever are fewer), from the QR
    /// decomposition of a seeded normal matrix.
    Orthogonal { seed: u64 },
    /// An LSTM bias with Keras' `unit_forget_bias`: zeros but for the forget gate's `units`
    /// elements (the second quarter), which are ones.
    UnitForgetBias { units: usize },
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
    /// `ln(1 + x)`, accurate where `x` is tiny
    Log1p,
    /// `e^x - 1`, accurate where `x` is tiny
    Expm1,
    /// the error function `2/sqrt(pi) * integral_0^x e^(-t^2) dt`
    Erf,
    /// sine (radians)
    Sin,
    /// cosine (radians)
    Cos,
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
    /// Slices of `table` picked along `axis` by i32 `indices` (of any shape): operands
    /// `(table, indices)`, result `table[..axis] ++ indices ++ table[axis+1..]` (for `axis = 0`,
    /// `indices.shape + table.shape[1..]`: an embedding lookup). An index outside
    /// `0..table[axis]` is clamped to the nearest valid one, as JAX clamps out-of-bounds
    /// reads (TensorFlow's CPU kernel raises an error instead); the interpreter and the JIT
    /// clamp alike, and the axis may not be empty.
    Gather { axis: usize },
    /// The transpose of [`Op::Gather`]: operands `(updates, indices)`, result zeros of `shape`
    /// into which each slice of `updates` is added at its (clamped, as by `gather`) index
    /// along `axis`; duplicate indices accumulate. `updates` must have gather's result
    /// shape for a table of `shape`. Gather's gradient with respect to its table.
    ScatterAdd { axis: usize, shape: Shape },
    /// Concatenation of one or more operands along `axis`.
    Concat { axis: usize },
    /// The sum (or, with `mean`, the mean) of its f32 operand over the ranks of the world
    /// communicator, element by element; every rank gets the result. A collective: every
    /// rank must reach it, in the same order as every other collective, with the same
    /// shape. Over a world of one rank (a single process, or a build without the `mpi`
    /// feature) it is the identity, which is what the interpreter computes. See
    /// [`crate::dist`] and the `data_parallel` pass ([`crate::passes::data_parallel`]).
    AllReduce { mean: bool },
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
    /// A structured loop over the leading axis of its sequence operands with a carry, as
    /// `jax.lax.scan`: operands are the initial carries, the sequences and the invariants;
    /// its body (a region graph, [`crate::scan`]) runs once per step. Result 0 (this node's
    /// value) is the first final carry (or the first stacked output when there is no carry);
    /// the others are read through [`Op::ScanResult`]. Printed as a nested block, so it is not
    /// in [`all_op_names`].
    Scan(crate::scan::ScanBody),
    /// Result `index` (>= 1) of a scan node, its only operand: no computation of its own, the
    /// scan's loop writes its buffer. Its type is the one [`crate::scan::ScanBody::result_types`]
    /// gives (checked by the verifier); not in [`all_op_names`] (it belongs with `scan`).
    ScanResult { index: usize },
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

/// Defines [`OpKind`] and, for the op families with a sub-enum ([`UnaryOp`], [`BinaryOp`],
/// [`CmpOp`], [`ReduceOp`]), their `ALL` lists, `kind` and `name`, from one list in which every
/// kind appears once with its text name and attribute keys. `kind` is an exhaustive match, so a
/// sub-enum variant missing from the list does not compile.
macro_rules! op_kinds {
    (
        ops { $( $(#[$doc:meta])* $kind:ident = $name:literal, $keys:expr; )* }
        $(
            family $sub:ident as $getter:ident {
                $( $var:ident => $skind:ident = $sname:literal; )*
            } keys $sub_keys:expr;
        )*
    ) => {
        /// The kind of an op without its attributes: one variant per op name of the text
        /// format (`add` and `reduce_sum` are kinds of their own, not `binary` and `reduce`),
        /// plus `fused` and `fused_result`. [`Op::kind`] maps every op to its kind;
        /// [`OpKind::ALL`] lists them all, so tables and tests derived from it cover every op.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind {
            $( $(#[$doc])* $kind, )*
            $( $(
                #[doc = concat!("`", $sname, "`: [`", stringify!($sub), "::", stringify!($var), "`]")]
                $skind,
            )* )*
        }

        impl OpKind {
            /// Every kind, in the order of the op list in `op.rs`.
            pub const ALL: &'static [OpKind] = &[
                $( OpKind::$kind, )*
                $( $( OpKind::$skind, )* )*
            ];

            /// The op name of the text format.
            pub const fn name(self) -> &'static str {
                match self {
                    $( OpKind::$kind => $name, )*
                    $( $( OpKind::$skind => $sname, )* )*
                }
            }

            /// The sorted `key=value` attribute keys of a statement of this kind, or `None` for
            /// the kinds without `key=value` attributes: leaves (their initializer or literal
            /// has its own syntax) and `fused` (printed as a nested block).
            pub const fn attr_keys(self) -> Option<&'static [&'static str]> {
                match self {
                    $( OpKind::$kind => $keys, )*
                    $( $( OpKind::$skind => $sub_keys, )* )*
                }
            }

            $(
                #[doc = concat!("The [`", stringify!($sub), "`] of this kind, if it is one.")]
                pub const fn $getter(self) -> Option<$sub> {
                    match self {
                        $( OpKind::$skind => Some($sub::$var), )*
                        _ => None,
                    }
                }
            )*
        }

        $(
            impl $sub {
                #[doc = concat!("Every [`", stringify!($sub), "`].")]
                pub const ALL: [$sub; [$( stringify!($var) ),*].len()] = [ $( $sub::$var, )* ];

                /// Its [`OpKind`].
                pub const fn kind(self) -> OpKind {
                    match self {
                        $( $sub::$var => OpKind::$skind, )*
                    }
                }

                /// Text-format name.
                pub const fn name(self) -> &'static str {
                    self.kind().name()
                }
            }
        )*
    };
}

op_kinds! {
    ops {
        /// `input`: [`Op::Input`]
        Input = "input", None;
        /// `param`: [`Op::Param`]
        Param = "param", None;
        /// `state`: [`Op::State`]
        State = "state", None;
        /// `const`: [`Op::Const`]
        Const = "const", None;
        /// `select`: [`Op::Select`]
        Select = "select", Some(&[]);
        /// `cast`: [`Op::Cast`]
        Cast = "cast", Some(&["to"]);
        /// `argmax`: [`Op::Argmax`]
        Argmax = "argmax", Some(&["axis"]);
        /// `reshape`: [`Op::Reshape`]
        Reshape = "reshape", Some(&["shape"]);
        /// `broadcast`: [`Op::Broadcast`]
        Broadcast = "broadcast", Some(&["shape"]);
        /// `transpose`: [`Op::Transpose`]
        Transpose = "transpose", Some(&["perm"]);
        /// `matmul`: [`Op::Matmul`]
        Matmul = "matmul", Some(&[]);
        /// `conv2d`: [`Op::Conv2d`]
        Conv2d = "conv2d", Some(&["padding", "stride"]);
        /// `conv2d_input_grad`: [`Op::Conv2dInputGrad`]
        Conv2dInputGrad = "conv2d_input_grad", Some(&["padding", "shape", "stride"]);
        /// `conv2d_filter_grad`: [`Op::Conv2dFilterGrad`]
        Conv2dFilterGrad = "conv2d_filter_grad", Some(&["kernel", "padding", "stride"]);
        /// `max_pool2d`: [`Op::MaxPool2d`]
        MaxPool2d = "max_pool2d", Some(&["stride", "window"]);
        /// `max_pool2d_grad`: [`Op::MaxPool2dGrad`]
        MaxPool2dGrad = "max_pool2d_grad", Some(&["stride", "window"]);
        /// `softmax`: [`Op::Softmax`]
        Softmax = "softmax", Some(&["axis"]);
        /// `log_softmax`: [`Op::LogSoftmax`]
        LogSoftmax = "log_softmax", Some(&["axis"]);
        /// `softmax_cross_entropy`: [`Op::SoftmaxCrossEntropy`]
        SoftmaxCrossEntropy = "softmax_cross_entropy", Some(&[]);
        /// `sparse_softmax_cross_entropy`: [`Op::SparseSoftmaxCrossEntropy`]
        SparseSoftmaxCrossEntropy = "sparse_softmax_cross_entropy", Some(&[]);
        /// `one_hot`: [`Op::OneHot`]
        OneHot = "one_hot", Some(&["depth"]);
        /// `slice`: [`Op::Slice`]
        Slice = "slice", Some(&["begin", "end"]);
        /// `concat`: [`Op::Concat`]
        Concat = "concat", Some(&["axis"]);
        /// `all_reduce`: [`Op::AllReduce`]
        AllReduce = "all_reduce", Some(&["reduce"]);
        /// `gather`: [`Op::Gather`]
        Gather = "gather", Some(&["axis"]);
        /// `scatter_add`: [`Op::ScatterAdd`]
        ScatterAdd = "scatter_add", Some(&["axis", "shape"]);
        /// `fused`: [`Op::Fused`] (a nested block in the text format, not a `key=value` op)
        Fused = "fused", None;
        /// `fused_result`: [`Op::FusedResult`]
        FusedResult = "fused_result", Some(&["index"]);
        /// `scan`: [`Op::Scan`] (a nested block in the text format)
        Scan = "scan", None;
        /// `scan_result`: [`Op::ScanResult`]
        ScanResult = "scan_result", Some(&["index"]);
    }

    family UnaryOp as unary {
        Neg => Neg = "neg";
        Exp => Exp = "exp";
        Log => Log = "log";
        Sqrt => Sqrt = "sqrt";
        Abs => Abs = "abs";
        Sign => Sign = "sign";
        Tanh => Tanh = "tanh";
        Sigmoid => Sigmoid = "sigmoid";
        Relu => Relu = "relu";
        Log1p => Log1p = "log1p";
        Expm1 => Expm1 = "expm1";
        Erf => Erf = "erf";
        Sin => Sin = "sin";
        Cos => Cos = "cos";
    } keys Some(&[]);
    family BinaryOp as binary {
        Add => Add = "add";
        Sub => Sub = "sub";
        Mul => Mul = "mul";
        Div => Div = "div";
        Max => Max = "max";
        Min => Min = "min";
        Pow => Pow = "pow";
    } keys Some(&[]);
    family CmpOp as compare {
        Eq => Eq = "eq";
        Ne => Ne = "ne";
        Lt => Lt = "lt";
        Le => Le = "le";
        Gt => Gt = "gt";
        Ge => Ge = "ge";
    } keys Some(&[]);
    family ReduceOp as reduce {
        Sum => ReduceSum = "reduce_sum";
        Mean => ReduceMean = "reduce_mean";
        Max => ReduceMax = "reduce_max";
    } keys Some(&["axes", "keepdims"]);
}

impl OpKind {
    /// Why reverse-mode autodiff has no rule for ops of this kind, or `None` when it has one:
    /// the integer-valued ops (comparisons, argmax, cast, one_hot) and fused nodes. Leaves
    /// need no rule (their gradient is what autodiff returns). One exhaustive match.
    pub const fn not_differentiable(self) -> Option<&'static str> {
        use OpKind as K;
        match self {
            K::Eq | K::Ne | K::Lt | K::Le | K::Gt | K::Ge => {
                Some("is not differentiable (a comparison is piecewise constant)")
            }
            K::Argmax => Some("is not differentiable (it returns integer indices)"),
            K::Cast => Some("is not differentiable (it converts to or from integers)"),
            K::OneHot => Some("is not differentiable (its operand is an integer index)"),
            K::Fused | K::FusedResult => Some("is not differentiable; run fusion after autodiff"),
            K::Scan | K::ScanResult => None,
            K::Input | K::Param | K::State | K::Const => None,
            K::Neg
            | K::Exp
            | K::Log
            | K::Sqrt
            | K::Abs
            | K::Sign
            | K::Tanh
            | K::Sigmoid
            | K::Relu
            | K::Log1p
            | K::Expm1
            | K::Erf
            | K::Sin
            | K::Cos => None,
            K::Add | K::Sub | K::Mul | K::Div | K::Max | K::Min | K::Pow => None,
            K::Select
            | K::ReduceSum
            | K::ReduceMean
            | K::ReduceMax
            | K::Reshape
            | K::Broadcast
            | K::Transpose
            | K::Matmul
            | K::Conv2d
            | K::Conv2dInputGrad
            | K::Conv2dFilterGrad
            | K::MaxPool2d
            | K::MaxPool2dGrad
            | K::Softmax
            | K::LogSoftmax
            | K::SoftmaxCrossEntropy
            | K::SparseSoftmaxCrossEntropy
            | K::Slice
            | K::Concat
            | K::Gather
            | K::ScatterAdd
            | K::AllReduce => None,
        }
    }

    /// The kind called `name` in the text format, if any.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// What every op of this kind is, for the stages that treat ops by class (see [`OpClass`]).
    /// One exhaustive match: a new kind does not compile without its class.
    pub const fn class(self) -> OpClass {
        use OpKind as K;
        match self {
            K::Input | K::Param | K::State | K::Const => OpClass::Leaf,
            K::Neg
            | K::Exp
            | K::Log
            | K::Sqrt
            | K::Abs
            | K::Sign
            | K::Tanh
            | K::Sigmoid
            | K::Relu
            | K::Log1p
            | K::Expm1
            | K::Erf => OpClass::Elementwise { inline: true },
            K::Add | K::Sub | K::Mul | K::Div | K::Max | K::Min => {
                OpClass::Elementwise { inline: true }
            }
            // one call of Rust's `powf` (`sinf`, `cosf`) per element in the JIT
            K::Pow | K::Sin | K::Cos => OpClass::Elementwise { inline: false },
            K::Eq | K::Ne | K::Lt | K::Le | K::Gt | K::Ge => OpClass::Elementwise { inline: true },
            K::Select | K::Broadcast => OpClass::Elementwise { inline: true },
            K::Matmul | K::Conv2d => OpClass::Producer,
            K::ReduceSum | K::ReduceMean | K::ReduceMax => OpClass::Reduction,
            K::Cast
            | K::Argmax
            | K::Reshape
            | K::Transpose
            | K::Conv2dInputGrad
            | K::Conv2dFilterGrad
            | K::MaxPool2d
            | K::MaxPool2dGrad
            | K::Softmax
            | K::LogSoftmax
            | K::SoftmaxCrossEntropy
            | K::SparseSoftmaxCrossEntropy
            | K::OneHot
            | K::Slice
            | K::Concat
            | K::Gather
            | K::ScatterAdd
            | K::Scan
            | K::AllReduce => OpClass::Standalone,
            K::Fused | K::FusedResult | K::ScanResult => OpClass::Fused,
        }
    }
}

/// The classes of ops the stages treat alike: the fused-body rule ([`crate::fused`]), the
/// fusion pass, the fused-loop lowering and the memory planner's in-place updates ask
/// [`Op::class`] instead of listing ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// `input`, `param`, `state`, `const`: no operands, the type is the node's own.
    Leaf,
    /// Each result element is a function of the operands' elements at the same index (with
    /// numpy broadcasting): the unary, binary and comparison ops, `select` and `broadcast`.
    /// Allowed in a fused body; it reads every operand at the position it writes.
    Elementwise {
        /// Whether the JIT computes it with inline code (so it can join a fused loop); `false`
        /// for `pow`, a runtime call per element.
        inline: bool,
    },
    /// `matmul` and `conv2d`: may lead a fused body as the producer of an epilogue.
    Producer,
    /// `reduce_sum`, `reduce_mean`, `reduce_max`: may end a fused body.
    Reduction,
    /// Computed by its own loop nest or runtime kernel and never part of a fused body: data
    /// movement (`cast`, `reshape`, `transpose`, `slice`, `concat`, `one_hot`, `gather`,
    /// `scatter_add`), `argmax`, the
    /// convolution gradients, pooling, the softmax family, the cross-entropies and the
    /// collective `all_reduce` (a call into the communication library).
    Standalone,
    /// `fused` and `fused_result`, made by the fusion pass.
    Fused,
}

/// Every op name of the text format statement syntax (every [`OpKind`] but `fused` and `scan`,
/// nested blocks, and `fused_result` and `scan_result`, which belong with them), so tests can
/// cover the whole set.
pub fn all_op_names() -> impl Iterator<Item = &'static str> {
    OpKind::ALL
        .iter()
        .filter(|k| k.class() != OpClass::Fused && **k != OpKind::Scan)
        .map(|k| k.name())
}

impl BinaryOp {
    /// Whether `a op b == b op a`.
    pub fn is_commutative(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min
        )
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
    /// The op's kind (its name without attributes).
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input => OpKind::Input,
            Op::Param { .. } => OpKind::Param,
            Op::State { .. } => OpKind::State,
            Op::Const { .. } => OpKind::Const,
            Op::Unary(u) => u.kind(),
            Op::Binary(b) => b.kind(),
            Op::Compare(c) => c.kind(),
            Op::Select => OpKind::Select,
            Op::Cast { .. } => OpKind::Cast,
            Op::Reduce { kind, .. } => kind.kind(),
            Op::Argmax { .. } => OpKind::Argmax,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Broadcast { .. } => OpKind::Broadcast,
            Op::Transpose { .. } => OpKind::Transpose,
            Op::Matmul => OpKind::Matmul,
            Op::Conv2d { .. } => OpKind::Conv2d,
            Op::Conv2dInputGrad { .. } => OpKind::Conv2dInputGrad,
            Op::Conv2dFilterGrad { .. } => OpKind::Conv2dFilterGrad,
            Op::MaxPool2d { .. } => OpKind::MaxPool2d,
            Op::MaxPool2dGrad { .. } => OpKind::MaxPool2dGrad,
            Op::Softmax { .. } => OpKind::Softmax,
            Op::LogSoftmax { .. } => OpKind::LogSoftmax,
            Op::SoftmaxCrossEntropy => OpKind::SoftmaxCrossEntropy,
            Op::SparseSoftmaxCrossEntropy => OpKind::SparseSoftmaxCrossEntropy,
            Op::OneHot { .. } => OpKind::OneHot,
            Op::Slice { .. } => OpKind::Slice,
            Op::Concat { .. } => OpKind::Concat,
            Op::AllReduce { .. } => OpKind::AllReduce,
            Op::Gather { .. } => OpKind::Gather,
            Op::ScatterAdd { .. } => OpKind::ScatterAdd,
            Op::Fused(_) => OpKind::Fused,
            Op::FusedResult { .. } => OpKind::FusedResult,
            Op::Scan(_) => OpKind::Scan,
            Op::ScanResult { .. } => OpKind::ScanResult,
        }
    }

    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The op's class (see [`OpClass`]).
    pub fn class(&self) -> OpClass {
        self.kind().class()
    }

    /// Whether this is a leaf (`input`, `param`, `state`, `const`): no operands, type given.
    pub fn is_leaf(&self) -> bool {
        self.class() == OpClass::Leaf
    }

    /// The most terms one element of the result sums, given the operands' shapes (each
    /// valid for the op): a matmul's `k`, a reduction's length, a convolution's `kh*kw*c`
    /// (its gradients: at most an operand's size), a softmax's axis; 1 for ops without sums.
    /// The f32 rounding error of a result grows with it ([`crate::interp::agrees`]).
    pub fn longest_sum(&self, shapes: &[&Shape]) -> usize {
        let dim = |i: usize, d: usize| shapes[i].0[d];
        match self {
            Op::Matmul => dim(0, 1),
            Op::Reduce { axes, .. } => axes.iter().map(|&a| dim(0, a)).product(),
            Op::Conv2d { .. } => shapes[1].0[..3].iter().product(),
            Op::Conv2dInputGrad { .. } | Op::Conv2dFilterGrad { .. } => {
                shapes[0].numel().max(shapes[1].numel())
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => dim(0, *axis),
            Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy => dim(0, 1),
            // every index may name the same slice
            Op::ScatterAdd { .. } => shapes[1].numel().max(1),
            Op::Fused(body) => {
                let mut vals: Vec<Shape> = shapes.iter().map(|&s| s.clone()).collect();
                let mut m = 1;
                for inst in &body.insts {
                    let args: Vec<&Shape> = inst.args.iter().map(|&a| &vals[a]).collect();
                    m = m.max(inst.op.longest_sum(&args));
                    vals.push(inst.ty.shape.clone());
                }
                m
            }
            // each step's rounding feeds the next: the body's longest sum, once per step
            Op::Scan(body) => {
                let seq = body.carries..body.carries + body.sequences;
                let t = shapes
                    .get(body.carries)
                    .and_then(|s| s.0.get(body.axis).copied());
                let mut vals: Vec<Shape> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match seq.contains(&i) {
                        true => crate::scan::step_shape(s, body.axis),
                        false => (*s).clone(),
                    })
                    .collect();
                let mut m = 1;
                for inst in &body.insts {
                    let args: Vec<&Shape> = inst.args.iter().filter_map(|&a| vals.get(a)).collect();
                    if args.len() == inst.args.len() {
                        m = m.max(inst.op.longest_sum(&args));
                    }
                    vals.push(inst.ty.shape.clone());
                }
                m * t.unwrap_or(1)
            }
            Op::Input
            | Op::Param { .. }
            | Op::State { .. }
            | Op::Const { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::Cast { .. }
            | Op::Argmax { .. }
            | Op::Reshape { .. }
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::MaxPool2d { .. }
            | Op::MaxPool2dGrad { .. }
            | Op::OneHot { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Gather { .. }
            | Op::AllReduce { .. }
            | Op::FusedResult { .. }
            | Op::ScanResult { .. } => 1,
        }
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
            | Op::AllReduce { .. }
            | Op::FusedResult { .. }
            | Op::ScanResult { .. } => Arity::Exact(1),
            Op::Binary(_)
            | Op::Compare(_)
            | Op::Matmul
            | Op::Conv2d { .. }
            | Op::Conv2dInputGrad { .. }
            | Op::Conv2dFilterGrad { .. }
            | Op::MaxPool2dGrad { .. }
            | Op::SoftmaxCrossEntropy
            | Op::SparseSoftmaxCrossEntropy
            | Op::Gather { .. }
            | Op::ScatterAdd { .. } => Arity::Exact(2),
            Op::Select => Arity::Exact(3),
            Op::Concat { .. } => Arity::AtLeast(1),
            Op::Fused(body) => Arity::Exact(body.n_params),
            Op::Scan(body) => Arity::Exact(body.params),
        }
    }

    /// Whether reverse-mode autodiff has a rule for this op ([`Op::not_differentiable`] gives
    /// the reason when not).
    pub fn is_differentiable(&self) -> bool {
        self.not_differentiable().is_none()
    }

    /// Why reverse-mode autodiff has no rule for this op, or `None` when it has one (see
    /// [`OpKind::not_differentiable`]). The one fact both autodiff and
    /// [`Op::is_differentiable`] ask.
    pub fn not_differentiable(&self) -> Option<&'static str> {
        self.kind().not_differentiable()
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
            Op::AllReduce { .. } => {
                let t = operands[0];
                if t.dtype != DType::F32 {
                    bail!("all_reduce: expected an f32 operand, found {t}");
                }
                t.clone()
            }
            Op::Gather { axis } => {
                let t = operands[0];
                let idx = operands[1];
                if t.dtype != DType::F32 || idx.dtype != DType::I32 {
                    bail!(
                        "gather: expected an f32 table and i32 indices, found {} and {}",
                        t,
                        idx
                    );
                }
                check_axes(name, &[*axis], t)?;
                if t.shape.0[*axis] == 0 {
                    bail!("gather: axis {axis} of the table {t} is empty, so no index can name a slice of it");
                }
                TensorType::f32(gather_shape(&t.shape, &idx.shape, *axis))
            }
            Op::ScatterAdd { axis, shape } => {
                let u = operands[0];
                let idx = operands[1];
                if u.dtype != DType::F32 || idx.dtype != DType::I32 {
                    bail!(
                        "scatter_add: expected f32 updates and i32 indices, found {} and {}",
                        u,
                        idx
                    );
                }
                if *axis >= shape.rank() {
                    bail!(
                        "scatter_add: axis {axis} is out of range for shape {shape} (rank {})",
                        shape.rank()
                    );
                }
                if shape.0[*axis] == 0 {
                    bail!("scatter_add: axis {axis} of shape {shape} is empty, so no index can name a slice of it");
                }
                let expect = gather_shape(shape, &idx.shape, *axis);
                if u.shape != expect {
                    bail!(
                        "scatter_add: updates are {u}, expected f32{expect} (indices {idx} into shape {shape} along axis {axis})"
                    );
                }
                TensorType::f32(shape.clone())
            }
            Op::Fused(body) => body.infer(operands)?,
            Op::FusedResult { index } => {
                f32_operand(0)?;
                if *index == 0 {
                    bail!("fused_result: index must be at least 1 (result 0 is the fused node itself)");
                }
                operands[0].clone()
            }
            Op::Scan(body) => body.infer(operands)?,
            // the verifier checks it against the scan's result types
            Op::ScanResult { index } => match declared {
                Some(t) if *index >= 1 => t.clone(),
                Some(_) => bail!(
                    "scan_result: index must be at least 1 (result 0 is the scan node itself)"
                ),
                None => bail!(
                    "scan_result: its type comes from its scan node (build it with Graph::scan)"
                ),
            },
        };
        if ty.shape.checked_numel().is_none_or(|n| n > MAX_ELEMENTS) {
            bail!("{name}: result type {ty} has more than {MAX_ELEMENTS} elements");
        }
        Ok(ty)
    }
}

/// The shape `table[..axis] ++ indices ++ table[axis+1..]` of a gather (and of the updates of
/// a scatter_add into `table`).
pub fn gather_shape(table: &Shape, indices: &Shape, axis: usize) -> Shape {
    let t = table.dims();
    let mut s = t[..axis.min(t.len())].to_vec();
    s.extend_from_slice(indices.dims());
    if axis < t.len() {
        s.extend_from_slice(&t[axis + 1..]);
    }
    Shape(s)
}

/// The sizes `(outer, n, inner)` of a gather from `table` along `axis`: the product of the
/// dimensions before it, its length, and the product of those after it. A gather copies
/// `inner` contiguous elements per (outer, index) pair.
pub fn gather_dims(table: &Shape, axis: usize) -> (usize, usize, usize) {
    let t = table.dims();
    let axis = axis.min(t.len().saturating_sub(1));
    let outer = t[..axis].iter().product();
    let n = t.get(axis).copied().unwrap_or(1);
    let inner = t.get(axis + 1..).map_or(1, |r| r.iter().product());
    (outer, n, inner)
}

/// Index `i` clamped to `0..n` (`n >= 1`), the rule `gather` and `scatter_add` apply to
/// out-of-range indices.
pub fn clamp_index(i: i64, n: usize) -> usize {
    i.clamp(0, n.saturating_sub(1) as i64) as usize
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        let mut names = std::collections::HashSet::new();
        for &k in OpKind::ALL {
            assert_eq!(OpKind::from_name(k.name()), Some(k), "{k:?}");
            assert!(names.insert(k.name()), "two kinds are called {}", k.name());
        }
        assert_eq!(OpKind::from_name("no_such_op"), None);
        // the families' kinds are in ALL and map back to their family
        for u in UnaryOp::ALL {
            assert!(OpKind::ALL.contains(&u.kind()));
            assert_eq!(u.kind().unary(), Some(u));
        }
        for b in BinaryOp::ALL {
            assert_eq!(b.kind().binary(), Some(b));
        }
        for c in CmpOp::ALL {
            assert_eq!(c.kind().compare(), Some(c));
        }
        for r in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            assert_eq!(r.kind().reduce(), Some(r));
        }
        assert_eq!(ReduceOp::ALL.len(), 3);
        let leaves: Vec<&str> = OpKind::ALL
            .iter()
            .filter(|k| k.class() == OpClass::Leaf)
            .map(|k| k.name())
            .collect();
        assert_eq!(leaves, ["input", "param", "state", "const"]);
        for &k in OpKind::ALL {
            // leaves and fused have no `key=value` attributes; every other kind has a list
            let none =
                matches!(k.class(), OpClass::Leaf) || k == OpKind::Fused || k == OpKind::Scan;
            assert_eq!(k.attr_keys().is_none(), none, "{k:?}");
        }
    }

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
