//! The reference interpreter: the project's correctness oracle.
//!
//! In: a [`Graph`] and the values of its inputs (and optionally of its params and state), as
//! row-major [`Array`]s of a [`Float`] type (`f32` or `f64`). Out: the value of every node
//! ([`Values`]), from which outputs and update values are read.
//!
//! The code aims to be obviously correct rather than fast: every op is a plain loop over
//! row-major indices with numpy semantics, one small function per op family, dispatched by one
//! `match` in `eval_op`. i32 tensors (labels, argmax results) are held as `T` too; their
//! values are integers.
//!
//! Semantics worth knowing when comparing another backend against this one:
//! - Every maximum (`max`, `reduce_max`, `argmax`, max pooling, the softmax shift) treats NaN as
//!   larger than any number, so NaN propagates (numpy); `min` propagates NaN too.
//! - `relu(NaN)` is NaN, `sign(±0)` is ±0, `sign(NaN)` is NaN; sigmoid never overflows.
//! - `cast` to i32 truncates toward zero and saturates at the i32 range (NaN gives 0), like
//!   Rust's `as`.
//! - Sums (reductions, matmul, convolutions) accumulate in `T`, in row-major order of the
//!   summed indices.
//! - Softmax-family ops subtract the lane maximum; the cross-entropies use
//!   `logsumexp(x) - x[label]`. A label outside `0..c` gives NaN; a one_hot index outside
//!   `0..depth` gives a row of zeros.
//! - Fed values of i32 inputs must be integers in the i32 range.
//!
//! Before anything runs, the graph is verified ([`crate::verify`]: every node's declared type
//! is what [`Op::infer`] gives for its operands), and fed values are checked against their
//! nodes' types, so a malformed graph (built with `add_raw`, say) gives an
//! [`EvalError::Invalid`] instead of a panic, and every op evaluates on the shapes it
//! declares.
//!
//! ```
//! use gradlift::interp::{eval_named, Array};
//! use gradlift::{Graph, TensorType};
//! let mut g = Graph::new("double");
//! let x = g.input("x", TensorType::f32([2])).unwrap();
//! let y = g.add2(x, x).unwrap();
//! g.add_output("y", y).unwrap();
//! let v = eval_named(&g, &[("x", Array::<f32>::new([2], vec![1.0, 2.5]).unwrap())]).unwrap();
//! assert_eq!(v.output(&g, "y").unwrap().data, vec![2.0, 5.0]);
//! ```

use crate::graph::{Graph, NodeId, SourceLoc};
use crate::op::{
    BinaryOp, CmpOp, ConvGeometry, Literal, Op, Padding, PoolGeometry, ReduceOp, UnaryOp,
};
use crate::shape::{DType, Shape, TensorType};
use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

// ---- element type ---------------------------------------------------------------------------

/// The element type the interpreter computes in: implemented for `f32` and `f64`.
pub trait Float:
    Copy
    + PartialOrd
    + Debug
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// A quiet NaN.
    const NAN: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// Nearest value of this type to `v`.
    fn from_f64(v: f64) -> Self;
    /// The value as f64 (exact).
    fn to_f64(self) -> f64;
    /// The value of an f32 (exact; for `f32` itself every bit, NaN payloads included).
    fn from_f32(v: f32) -> Self;
    /// The nearest f32 (for `f32` itself every bit, NaN payloads included).
    fn to_f32(self) -> f32;
    /// `e^self`
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// `ln(1 + self)`
    fn ln_1p(self) -> Self;
    /// `e^self - 1`
    fn exp_m1(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// sine
    fn sin(self) -> Self;
    /// cosine
    fn cos(self) -> Self;
    /// `self ^ e`
    fn powf(self, e: Self) -> Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
}

macro_rules! impl_float {
    ($t:ty, $erf:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAN: Self = <$t>::NAN;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

impl_float!(f32, libm::erff);
impl_float!(f64, libm::erf);

/// `a > b`, where NaN counts as greater than any number (numpy's `max`/`argmax` propagate
/// NaN). The ordering used by every max in the interpreter.
fn greater<T: Float>(a: T, b: T) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

/// numpy `maximum`: NaN if either is NaN.
fn max2<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// numpy `minimum`: NaN if either is NaN.
fn min2<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

fn bool_to<T: Float>(b: bool) -> T {
    if b {
        T::ONE
    } else {
        T::ZERO
    }
}

// ---- arrays ---------------------------------------------------------------------------------

/// A dense row-major tensor value. i32 tensors hold their (integer) values as `T` too.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    /// The shape.
    pub shape: Shape,
    /// `shape.numel()` elements, row-major.
    pub data: Vec<T>,
}

impl<T: Float> Array<T> {
    /// An array of `shape` holding `data`; fails when the length is not `shape.numel()`.
    pub fn new(shape: impl Into<Shape>, data: Vec<T>) -> Result<Array<T>, EvalError> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(EvalError::DataLength {
                what: "array".to_string(),
                expected: shape.numel(),
                shape,
                found: data.len(),
            });
        }
        Ok(Array { shape, data })
    }

    /// An array of zeros.
    pub fn zeros(shape: impl Into<Shape>) -> Array<T> {
        Array::filled(shape, T::ZERO)
    }

    /// An array with every element equal to `v`.
    pub fn filled(shape: impl Into<Shape>, v: T) -> Array<T> {
        let shape = shape.into();
        let data = vec![v; shape.numel()];
        Array { shape, data }
    }

    /// A scalar (shape `[]`).
    pub fn scalar(v: T) -> Array<T> {
        Array {
            shape: Shape::scalar(),
            data: vec![v],
        }
    }

    /// An array of `shape` from f64 values (rounded to `T`); checked like [`Array::new`].
    pub fn from_f64(shape: impl Into<Shape>, data: &[f64]) -> Result<Array<T>, EvalError> {
        Array::new(shape, data.iter().map(|&v| T::from_f64(v)).collect())
    }

    /// The elements as f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.to_f64() as f32).collect()
    }

    /// The elements as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data.iter().map(|v| v.to_f64()).collect()
    }

    /// The same array in another float type (e.g. f32 to f64).
    pub fn convert<U: Float>(&self) -> Array<U> {
        Array {
            shape: self.shape.clone(),
            data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect(),
        }
    }

    /// The row-major position of the element at `index`, or `None` when out of bounds.
    pub fn flat_index(&self, index: &[usize]) -> Option<usize> {
        if index.len() != self.shape.rank() {
            return None;
        }
        let mut flat = 0;
        for (&i, &d) in index.iter().zip(self.shape.dims()) {
            if i >= d {
                return None;
            }
            flat = flat * d + i;
        }
        Some(flat)
    }

    /// The element at `index` (one entry per dimension), or `None` when out of bounds.
    pub fn get(&self, index: &[usize]) -> Option<T> {
        self.flat_index(index).map(|i| self.data[i])
    }

    /// The largest `|self - other|` over all elements (NaN if any is NaN; 0 when both are
    /// NaN at the same place), or `None` when the shapes differ.
    pub fn max_abs_diff(&self, other: &Array<T>) -> Option<f64> {
        if self.shape != other.shape {
            return None;
        }
        let mut m = 0.0f64;
        for (a, b) in self.data.iter().zip(&other.data) {
            let (a, b) = (a.to_f64(), b.to_f64());
            if (a.is_nan() && b.is_nan()) || a == b {
                continue;
            }
            let d = (a - b).abs();
            if d.is_nan() {
                return Some(f64::NAN);
            }
            m = m.max(d);
        }
        Some(m)
    }
}

// ---- errors -----------------------------------------------------------------------------------

/// Why evaluation failed. Never a panic: every user-supplied value is checked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// An input node was not fed.
    #[error("missing input %{name}: expected a value of type {ty}")]
    MissingInput {
        /// The input's name.
        name: String,
        /// Its declared type.
        ty: TensorType,
    },
    /// A fed value has the wrong shape.
    #[error("wrong shape for %{name}: expected {expected}, found {found}")]
    WrongShape {
        /// The fed node's name.
        name: String,
        /// Its declared shape.
        expected: Shape,
        /// The shape of the value fed.
        found: Shape,
    },
    /// An array's data length does not match its shape.
    #[error("{what}: shape {shape} needs {expected} elements, found {found}")]
    DataLength {
        /// Which value (`array`, or the node fed).
        what: String,
        /// The array's shape.
        shape: Shape,
        /// `shape.numel()`.
        expected: usize,
        /// The data length.
        found: usize,
    },
    /// A value was fed for a node that is not an input, param or state.
    #[error("cannot feed {node}: it is a {op} node; only input, param and state nodes can be fed")]
    NotFeedable {
        /// The node (`%name` or `%N`).
        node: String,
        /// Its op name.
        op: &'static str,
    },
    /// A value fed for an i32 node is not an integer in the i32 range.
    #[error("%{name} is i32 but element {index} of the value fed is {value}")]
    NotInteger {
        /// The name of the node fed.
        name: String,
        /// Row-major position of the offending element.
        index: usize,
        /// The element.
        value: f64,
    },
    /// A value was fed for a node id that is not in the graph.
    #[error("cannot feed node index {0}: it is not in the graph")]
    UnknownNode(usize),
    /// [`eval_named`] got a name no node has.
    #[error("cannot feed {0:?}: no node has this name")]
    UnknownName(String),
    /// The graph breaks an invariant of [`crate::verify`] (a cycle, a node whose operands do
    /// not fit its op or its declared type, ...): every violation.
    #[error("{0}")]
    Invalid(#[from] crate::verify::VerifyErrors),
    /// A node cannot be evaluated (an operand without a value, a constant that does not fit
    /// its type): a verified graph never has one.
    #[error("{}{node} = {op}: {message}", loc.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    InvalidNode {
        /// The node (`%name` or `%N`, N its position in the canonical order).
        node: String,
        /// Its op name.
        op: &'static str,
        /// What is wrong.
        message: String,
        /// Where the node was made.
        loc: Option<SourceLoc>,
    },
}

// ---- evaluation -------------------------------------------------------------------------------

/// The value of every node after [`eval`].
#[derive(Clone, Debug)]
pub struct Values<T> {
    map: HashMap<NodeId, Array<T>>,
}

impl<T: Float> Values<T> {
    /// The value of node `id`.
    pub fn get(&self, id: NodeId) -> Option<&Array<T>> {
        self.map.get(&id)
    }

    /// The value of the output called `name`.
    pub fn output(&self, g: &Graph, name: &str) -> Option<&Array<T>> {
        g.output(name).and_then(|id| self.get(id))
    }

    /// The new value of each updated param or state (`target -> value`), ready to feed the
    /// next call.
    pub fn updates(&self, g: &Graph) -> HashMap<NodeId, Array<T>> {
        g.updates()
            .iter()
            .filter_map(|u| self.get(u.value).map(|v| (u.target, v.clone())))
            .collect()
    }

    /// Consumes the values, returning the map from node to value.
    pub fn into_map(self) -> HashMap<NodeId, Array<T>> {
        self.map
    }
}

/// How node `id` is called in messages: `%name`, or `%N` with N its canonical position.
fn node_label(g: &Graph, id: NodeId, order: &[NodeId]) -> String {
    match &g[id].name {
        Some(n) => format!("%{n}"),
        None => match order.iter().position(|&o| o == id) {
            Some(p) => format!("%{p}"),
            None => format!("node index {}", id.index()),
        },
    }
}

/// Evaluates every node of `g` in canonical order ([`Graph::topo_order`]).
///
/// Every input must be fed, with its declared shape; a param or state may be fed to override
/// its initializer (otherwise [`crate::init::values`] gives its value).
pub fn eval<T: Float>(
    g: &Graph,
    feeds: &HashMap<NodeId, Array<T>>,
) -> Result<Values<T>, EvalError> {
    eval_until(g, feeds, |_, _| false).map(|(values, _)| values)
}

/// [`eval`], showing each node's value to `stop` as soon as it is computed (in canonical
/// order, leaves included); evaluation ends at the first node for which `stop` returns true.
/// Returns the values computed so far and that node, if any. This is how
/// [`crate::numerics`] finds the first node whose value is not finite.
pub fn eval_until<T: Float>(
    g: &Graph,
    feeds: &HashMap<NodeId, Array<T>>,
    mut stop: impl FnMut(NodeId, &Array<T>) -> bool,
) -> Result<(Values<T>, Option<NodeId>), EvalError> {
    crate::verify::verify(g)?;
    let order = g.topo_order().map_err(|cycle| EvalError::InvalidNode {
        node: format!("node index {}", cycle.first().map_or(0, |n| n.index())),
        op: "graph",
        message: "the graph has a cycle".into(),
        loc: None,
    })?;
    for (&id, a) in feeds {
        let Some(node) = g.get(id) else {
            return Err(EvalError::UnknownNode(id.index()));
        };
        let label = node_label(g, id, &order);
        if !matches!(node.op, Op::Input | Op::Param { .. } | Op::State { .. }) {
            return Err(EvalError::NotFeedable {
                node: label,
                op: node.op.name(),
            });
        }
        let name = label.trim_start_matches('%').to_string();
        if a.shape != node.ty.shape {
            return Err(EvalError::WrongShape {
                name,
                expected: node.ty.shape.clone(),
                found: a.shape.clone(),
            });
        }
        if a.data.len() != a.shape.numel() {
            return Err(EvalError::DataLength {
                what: label,
                shape: a.shape.clone(),
                expected: a.shape.numel(),
                found: a.data.len(),
            });
        }
        if node.ty.dtype == DType::I32 {
            let bad = a
                .data
                .iter()
                .map(|v| v.to_f64())
                .enumerate()
                .find(|(_, v)| {
                    v.fract() != 0.0 || *v < i32::MIN as f64 || *v > i32::MAX as f64 || v.is_nan()
                });
            if let Some((index, value)) = bad {
                return Err(EvalError::NotInteger { name, index, value });
            }
        }
    }
    let mut map: HashMap<NodeId, Array<T>> = HashMap::with_capacity(order.len());
    // results 1.. of multi-result fused nodes, keyed by (fused node, index)
    let mut extra: HashMap<(NodeId, usize), Array<T>> = HashMap::new();
    for &id in &order {
        let node = &g[id];
        let invalid = |message: String| EvalError::InvalidNode {
            node: node_label(g, id, &order),
            op: node.op.name(),
            message,
            loc: node.loc.clone(),
        };
        let value = match &node.op {
            Op::Input => match feeds.get(&id) {
                Some(a) => a.clone(),
                None => {
                    return Err(EvalError::MissingInput {
                        name: node_label(g, id, &order)
                            .trim_start_matches('%')
                            .to_string(),
                        ty: node.ty.clone(),
                    })
                }
            },
            Op::Param { init } | Op::State { init } => match feeds.get(&id) {
                Some(a) => a.clone(),
                None => Array::from_f64(
                    node.ty.shape.clone(),
                    &crate::init::values(init, &node.ty.shape),
                )?,
            },
            Op::Const { value } => constant(value, &node.ty).map_err(invalid)?,
            op => {
                let operand_ids = g.operands(id);
                let mut args = Vec::with_capacity(operand_ids.len());
                for o in &operand_ids {
                    let Some(v) = map.get(o) else {
                        return Err(invalid(format!(
                            "operand node index {} has no value",
                            o.index()
                        )));
                    };
                    args.push(v);
                }
                let ty = &node.ty;
                // a multi-result node: its value is result 0; the others wait for their
                // result nodes
                let multi = match op {
                    Op::Fused(body) if !body.extra.is_empty() => Some(fused(body, &args)),
                    Op::Scan(body) => {
                        let types: Vec<&TensorType> =
                            operand_ids.iter().map(|&o| &g[o].ty).collect();
                        Some(scan(body, &args, &types).map_err(invalid)?)
                    }
                    _ => None,
                };
                match op {
                    _ if multi.is_some() => {
                        let mut results = multi.unwrap_or_default().into_iter();
                        let main = results
                            .next()
                            .unwrap_or_else(|| Array::zeros(Shape(vec![])));
                        for (k, r) in results.enumerate() {
                            extra.insert((id, k + 1), r);
                        }
                        main
                    }
                    Op::ScanResult { index } | Op::FusedResult { index } => extra
                        .get(&(operand_ids[0], *index))
                        .cloned()
                        .ok_or_else(|| {
                            invalid(format!(
                                "its operand is not a fused or scan node with result {index}"
                            ))
                        })?,
                    _ => eval_op(op, &args, &ty.shape),
                }
            }
        };
        let stopped = stop(id, &value);
        map.insert(id, value);
        if stopped {
            return Ok((Values { map }, Some(id)));
        }
    }
    Ok((Values { map }, None))
}

/// [`eval`] with feeds keyed by node name (inputs, params, state).
pub fn eval_named<T: Float>(g: &Graph, feeds: &[(&str, Array<T>)]) -> Result<Values<T>, EvalError> {
    let mut map = HashMap::with_capacity(feeds.len());
    for (name, a) in feeds {
        let id = g
            .find(name)
            .ok_or_else(|| EvalError::UnknownName(name.to_string()))?;
        map.insert(id, a.clone());
    }
    eval(g, &map)
}

/// The value of a constant of type `ty`.
fn constant<T: Float>(value: &Literal, ty: &TensorType) -> Result<Array<T>, String> {
    let n = ty.shape.numel();
    let data: Vec<T> = match value {
        Literal::Splat(v) => vec![T::from_f64(*v); n],
        Literal::Dense(vs) => {
            if vs.len() != n {
                return Err(format!(
                    "const of type {ty} needs {n} values, found {}",
                    vs.len()
                ));
            }
            vs.iter().map(|&v| T::from_f64(v)).collect()
        }
    };
    Ok(Array {
        shape: ty.shape.clone(),
        data,
    })
}

/// Evaluates a non-leaf op whose operand shapes have been checked by [`Op::infer`], giving
/// `out` (the inferred shape).
fn eval_op<T: Float>(op: &Op, a: &[&Array<T>], out: &Shape) -> Array<T> {
    let data = match op {
        Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => {
            unreachable!("leaf ops are evaluated by eval")
        }
        Op::Unary(u) => a[0].data.iter().map(|&x| unary(*u, x)).collect(),
        Op::Binary(b) => zip_broadcast(a[0], a[1], out, |x, y| binary(*b, x, y)),
        Op::Compare(c) => zip_broadcast(a[0], a[1], out, |x, y| bool_to(compare(*c, x, y))),
        Op::Select => select(a[0], a[1], a[2], out),
        Op::Cast { to } => a[0].data.iter().map(|&x| cast(x, *to)).collect(),
        Op::Reduce { kind, axes, .. } => reduce(*kind, a[0], axes),
        Op::Argmax { axis } => argmax(a[0], *axis),
        Op::Reshape { .. } => a[0].data.clone(),
        // the interpreter is one process: a world of one rank, where a sum or mean over the
        // ranks is the operand itself
        Op::AllReduce { .. } => a[0].data.clone(),
        Op::Broadcast { .. } => gather(&a[0].data, &broadcast_indices(&a[0].shape, out)),
        Op::Transpose { perm } => transpose(a[0], perm),
        Op::Matmul => matmul(a[0], a[1]),
        Op::Conv2d { stride, padding } => {
            let c = conv_geometry(&a[0].shape, &a[1].shape, *stride, *padding);
            conv2d(&c, &a[0].data, &a[1].data)
        }
        Op::Conv2dInputGrad {
            stride,
            padding,
            shape,
        } => {
            let c = conv_geometry(shape, &a[1].shape, *stride, *padding);
            conv2d_input_grad(&c, &a[0].data, &a[1].data)
        }
        Op::Conv2dFilterGrad {
            stride,
            padding,
            kernel,
        } => {
            let x = &a[0].shape.0;
            let w = Shape(vec![kernel[0], kernel[1], x[3], a[1].shape.0[3]]);
            let c = conv_geometry(&a[0].shape, &w, *stride, *padding);
            conv2d_filter_grad(&c, &a[0].data, &a[1].data)
        }
        Op::MaxPool2d { window, stride } => {
            match PoolGeometry::new(&a[0].shape, *window, *stride) {
                Some(p) => max_pool2d(&p, &a[0].data),
                None => Vec::new(), // type inference rejected it first
            }
        }
        Op::MaxPool2dGrad { window, stride } => {
            match PoolGeometry::new(&a[0].shape, *window, *stride) {
                Some(p) => max_pool2d_grad(&p, &a[0].data, &a[1].data),
                None => Vec::new(), // type inference rejected it first
            }
        }
        Op::Softmax { axis } => softmax(a[0], *axis, false),
        Op::LogSoftmax { axis } => softmax(a[0], *axis, true),
        Op::SoftmaxCrossEntropy => softmax_cross_entropy(a[0], a[1]),
        Op::SparseSoftmaxCrossEntropy => sparse_softmax_cross_entropy(a[0], a[1]),
        Op::OneHot { depth } => one_hot(a[0], *depth),
        Op::Slice { begin, .. } => slice(a[0], begin, out),
        Op::Concat { axis } => concat(a, *axis, out),
        Op::Gather { axis } => gather_op(a[0], a[1], *axis),
        Op::ScatterAdd { axis, shape } => scatter_add(a[0], a[1], *axis, shape),
        Op::Fused(body) => {
            return fused(body, a)
                .into_iter()
                .next()
                .unwrap_or_else(|| Array::zeros(out.clone()))
        }
        Op::FusedResult { .. } | Op::ScanResult { .. } => {
            unreachable!("evaluated by eval, from its fused or scan node")
        }
        Op::Scan(_) => unreachable!("evaluated by eval, which keeps all its results"),
    };
    Array {
        shape: out.clone(),
        data,
    }
}

/// Runs a scan (see [`crate::scan`]): its body, as a graph, once per step on the carries, the
/// step's slices and the invariants. Returns every result: the final carries, then the stacked
/// per-step outputs.
fn scan<T: Float>(
    body: &crate::scan::ScanBody,
    a: &[&Array<T>],
    refs: &[&TensorType],
) -> Result<Vec<Array<T>>, String> {
    let params = body.param_types(refs).map_err(|e| e.0)?;
    let steps = body.length(refs).map_err(|e| e.0)?;
    let (g, inputs) = body.to_graph(&params, &[])?;
    let seqs = body.carries..body.carries + body.sequences;
    let mut carries: Vec<Array<T>> = a[..body.carries].iter().map(|&c| c.clone()).collect();
    let stacked = body.carries..body.yields.len();
    let order: Vec<usize> = match body.reverse {
        false => (0..steps).collect(),
        true => (0..steps).rev().collect(),
    };
    let mut per_step: Vec<Vec<Array<T>>> = vec![Vec::new(); steps];
    for &t in &order {
        let mut feeds = HashMap::with_capacity(inputs.len());
        for (i, &p) in inputs.iter().enumerate() {
            let v = if i < body.carries {
                carries[i].clone()
            } else if seqs.contains(&i) {
                let (outer, n, inner) = crate::scan::step_layout(&a[i].shape, body.axis);
                let mut data = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    let start = (o * n + t) * inner;
                    data.extend_from_slice(&a[i].data[start..start + inner]);
                }
                Array {
                    shape: crate::scan::step_shape(&a[i].shape, body.axis),
                    data,
                }
            } else {
                a[i].clone()
            };
            feeds.insert(p, v);
        }
        let values = eval(&g, &feeds).map_err(|e| format!("step {t}: {e}"))?;
        let mut ys = Vec::with_capacity(g.outputs().len());
        for o in g.outputs() {
            let v = values
                .get(o.node)
                .ok_or_else(|| format!("step {t}: output {} has no value", o.name))?;
            ys.push(v.clone());
        }
        let rest = ys.split_off(body.carries);
        carries = ys;
        per_step[t] = rest;
    }
    let mut results = carries;
    for j in 0..stacked.len() {
        let step = per_step
            .first()
            .map(|ys| ys[j].shape.clone())
            .unwrap_or_default();
        let shape = crate::scan::stacked_shape(&step, body.axis, steps);
        let (outer, _, inner) = crate::scan::step_layout(&shape, body.axis);
        let mut data = Vec::with_capacity(shape.numel());
        for o in 0..outer {
            for ys in &per_step {
                data.extend_from_slice(&ys[j].data[o * inner..(o + 1) * inner]);
            }
        }
        results.push(Array { shape, data });
    }
    Ok(results)
}

/// Evaluates a fused body instruction by instruction with [`eval_op`] (its types were checked
/// by [`Op::infer`], which [`crate::fused::FusedBody::infer`] implements for the body). Returns
/// every result, main result first.
fn fused<T: Float>(body: &crate::fused::FusedBody, a: &[&Array<T>]) -> Vec<Array<T>> {
    let mut vals: Vec<Array<T>> = Vec::with_capacity(body.insts.len());
    for inst in &body.insts {
        let args: Vec<&Array<T>> = inst
            .args
            .iter()
            .map(|&k| {
                if k < body.n_params {
                    a[k]
                } else {
                    &vals[k - body.n_params]
                }
            })
            .collect();
        let v = eval_op(&inst.op, &args, &inst.ty.shape);
        vals.push(v);
    }
    body.results()
        .iter()
        .filter_map(|&r| r.checked_sub(body.n_params))
        .filter_map(|i| vals.get(i).cloned())
        .collect()
}

// ---- index helpers ----------------------------------------------------------------------------

/// `gather %table, %indices, axis`: for each outer position, each index (clamped to the
/// axis, [`crate::op::clamp_index`]) in row-major order, the `inner` elements of its slice.
fn gather_op<T: Float>(table: &Array<T>, indices: &Array<T>, axis: usize) -> Vec<T> {
    let (outer, n, inner) = crate::op::gather_dims(&table.shape, axis);
    let mut out = Vec::with_capacity(outer * indices.data.len() * inner);
    for o in 0..outer {
        for &i in &indices.data {
            let at = (o * n + crate::op::clamp_index(index_of(i), n)) * inner;
            out.extend_from_slice(&table.data[at..at + inner]);
        }
    }
    out
}

/// `scatter_add %updates, %indices, axis, shape`: zeros of `shape`, then each index's slice
/// of `updates` added at its clamped index, outer positions and indices in row-major order
/// (the order the JIT's kernel adds in).
fn scatter_add<T: Float>(
    updates: &Array<T>,
    indices: &Array<T>,
    axis: usize,
    shape: &Shape,
) -> Vec<T> {
    let (outer, n, inner) = crate::op::gather_dims(shape, axis);
    let mut out = vec![T::ZERO; shape.numel()];
    let m = indices.data.len();
    for o in 0..outer {
        for (j, &i) in indices.data.iter().enumerate() {
            let to = (o * n + crate::op::clamp_index(index_of(i), n)) * inner;
            let from = (o * m + j) * inner;
            for k in 0..inner {
                out[to + k] += updates.data[from + k];
            }
        }
    }
    out
}

/// An i32 element (held as a float by the interpreter) as an index.
fn index_of<T: Float>(v: T) -> i64 {
    v.to_f64() as i64
}

/// For each element of a tensor of shape `out` (row-major), the flat index
/// `offset + sum_i coord[i] * strides[i]` into some source tensor. With the source's strides
/// permuted this is a transpose, with strides 0 a broadcast, with an offset a slice.
fn strided_indices(out: &Shape, strides: &[usize], offset: usize) -> Vec<usize> {
    let dims = out.dims();
    let mut result = Vec::with_capacity(out.numel());
    if out.numel() == 0 {
        return result;
    }
    let mut coord = vec![0usize; dims.len()];
    let mut flat = offset;
    loop {
        result.push(flat);
        // Odometer increment from the last dimension.
        let mut d = dims.len();
        loop {
            if d == 0 {
                return result;
            }
            d -= 1;
            coord[d] += 1;
            flat += strides[d];
            if coord[d] < dims[d] {
                break;
            }
            flat -= strides[d] * coord[d];
            coord[d] = 0;
        }
    }
}

/// numpy broadcasting: for each element of `out`, the flat index of the element of a tensor
/// of shape `from` that it reads. `from` must broadcast to `out` (checked by type inference).
fn broadcast_indices(from: &Shape, out: &Shape) -> Vec<usize> {
    let pad = out.rank() - from.rank();
    let from_strides = from.strides();
    let strides: Vec<usize> = (0..out.rank())
        .map(|i| {
            if i < pad || from.0[i - pad] == 1 {
                0
            } else {
                from_strides[i - pad]
            }
        })
        .collect();
    strided_indices(out, &strides, 0)
}

fn gather<T: Float>(data: &[T], indices: &[usize]) -> Vec<T> {
    indices.iter().map(|&i| data[i]).collect()
}

/// Elementwise `f(a, b)` with numpy broadcasting to `out`.
fn zip_broadcast<T: Float>(
    a: &Array<T>,
    b: &Array<T>,
    out: &Shape,
    f: impl Fn(T, T) -> T,
) -> Vec<T> {
    let ia = broadcast_indices(&a.shape, out);
    let ib = broadcast_indices(&b.shape, out);
    ia.iter()
        .zip(&ib)
        .map(|(&i, &j)| f(a.data[i], b.data[j]))
        .collect()
}

/// The lanes of `shape` along `axis`: the flat index of each lane's first element, the
/// distance between consecutive elements of a lane, and its length.
fn lanes(shape: &Shape, axis: usize) -> (Vec<usize>, usize, usize) {
    let strides = shape.strides();
    let mut outer = shape.clone();
    outer.0[axis] = 1;
    (
        strided_indices(&outer, &strides, 0),
        strides[axis],
        shape.0[axis],
    )
}

// ---- elementwise ------------------------------------------------------------------------------

fn unary<T: Float>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                x * T::ZERO // 0 (sign kept) for ±0, NaN for NaN
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Log1p => x.ln_1p(),
        UnaryOp::Expm1 => x.exp_m1(),
        UnaryOp::Erf => x.erf(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Sigmoid => {
            // Never exponentiates a positive number, so it cannot overflow.
            if x >= T::ZERO {
                T::ONE / (T::ONE + (-x).exp())
            } else {
                let e = x.exp();
                e / (T::ONE + e)
            }
        }
        UnaryOp::Relu => {
            if x > T::ZERO || x.is_nan() {
                x
            } else {
                T::ZERO
            }
        }
    }
}

fn binary<T: Float>(op: BinaryOp, x: T, y: T) -> T {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => max2(x, y),
        BinaryOp::Min => min2(x, y),
        BinaryOp::Pow => x.powf(y),
    }
}

fn compare<T: Float>(op: CmpOp, x: T, y: T) -> bool {
    match op {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
    }
}

/// `mask != 0 ? a : b` with broadcasting over all three.
fn select<T: Float>(mask: &Array<T>, a: &Array<T>, b: &Array<T>, out: &Shape) -> Vec<T> {
    let im = broadcast_indices(&mask.shape, out);
    let ia = broadcast_indices(&a.shape, out);
    let ib = broadcast_indices(&b.shape, out);
    (0..out.numel())
        .map(|k| {
            if mask.data[im[k]] != T::ZERO {
                a.data[ia[k]]
            } else {
                b.data[ib[k]]
            }
        })
        .collect()
}

/// Conversion to `to`: to i32 truncates toward zero, saturating at the i32 range, NaN to 0
/// (Rust's `as`); to f32 keeps the value.
fn cast<T: Float>(x: T, to: DType) -> T {
    match to {
        DType::F32 => x,
        DType::I32 => T::from_f64(x.to_f64() as i32 as f64),
    }
}

// ---- reductions and layout ----------------------------------------------------------------------

/// Reduction over `axes`; the output is row-major over the kept axes (with or without
/// keepdims the data is the same).
fn reduce<T: Float>(kind: ReduceOp, x: &Array<T>, axes: &[usize]) -> Vec<T> {
    let strides = x.shape.strides();
    let mut kept = x.shape.clone();
    let mut reduced = x.shape.clone();
    for i in 0..x.shape.rank() {
        if axes.contains(&i) {
            kept.0[i] = 1;
        } else {
            reduced.0[i] = 1;
        }
    }
    let starts = strided_indices(&kept, &strides, 0);
    let offsets = strided_indices(&reduced, &strides, 0);
    let count = T::from_f64(offsets.len() as f64);
    starts
        .iter()
        .map(|&s| match kind {
            ReduceOp::Sum | ReduceOp::Mean => {
                let acc = pairwise_sum(&offsets, &|o| x.data[s + o]);
                if kind == ReduceOp::Mean {
                    acc / count
                } else {
                    acc
                }
            }
            ReduceOp::Max => {
                let mut m = T::NEG_INFINITY;
                for &o in &offsets {
                    if greater(x.data[s + o], m) {
                        m = x.data[s + o];
                    }
                }
                m
            }
        })
        .collect()
}

/// The sum of `value(o)` over `offsets`, pairwise: halves summed separately down to blocks
/// of 32 summed in order. The rounding error grows with the logarithm of the length, not the
/// length: an f32 running sum stops growing at 2^24 ones, this one does not (the oracle must
/// not be less accurate than the code it checks).
fn pairwise_sum<T: Float>(offsets: &[usize], value: &dyn Fn(usize) -> T) -> T {
    if offsets.len() <= 32 {
        let mut acc = T::ZERO;
        for &o in offsets {
            acc += value(o);
        }
        return acc;
    }
    let (a, b) = offsets.split_at(offsets.len() / 2);
    pairwise_sum(a, value) + pairwise_sum(b, value)
}

/// Index of the first maximum along `axis` (a NaN counts as the maximum).
fn argmax<T: Float>(x: &Array<T>, axis: usize) -> Vec<T> {
    let (starts, step, len) = lanes(&x.shape, axis);
    starts
        .iter()
        .map(|&s| {
            let mut best = 0;
            for k in 1..len {
                if greater(x.data[s + k * step], x.data[s + best * step]) {
                    best = k;
                }
            }
            T::from_f64(best as f64)
        })
        .collect()
}

/// Output dimension `i` is input dimension `perm[i]`.
fn transpose<T: Float>(x: &Array<T>, perm: &[usize]) -> Vec<T> {
    let strides = x.shape.strides();
    let out = Shape(perm.iter().map(|&p| x.shape.0[p]).collect());
    let out_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    gather(&x.data, &strided_indices(&out, &out_strides, 0))
}

/// The box starting at `begin` with shape `out`.
fn slice<T: Float>(x: &Array<T>, begin: &[usize], out: &Shape) -> Vec<T> {
    let strides = x.shape.strides();
    let offset = begin.iter().zip(&strides).map(|(b, s)| b * s).sum();
    gather(&x.data, &strided_indices(out, &strides, offset))
}

/// Concatenation along `axis`: each operand is scattered into its box of the output.
fn concat<T: Float>(xs: &[&Array<T>], axis: usize, out: &Shape) -> Vec<T> {
    let out_strides = out.strides();
    let mut data = vec![T::ZERO; out.numel()];
    let mut start = 0;
    for x in xs {
        let idx = strided_indices(&x.shape, &out_strides, start * out_strides[axis]);
        for (&i, &v) in idx.iter().zip(&x.data) {
            data[i] = v;
        }
        start += x.shape.0[axis];
    }
    data
}

// ---- linear algebra -----------------------------------------------------------------------------

/// `[m,k] x [k,n] -> [m,n]`, summing over `k` in order (the loop order i, p, j only makes the
/// memory access sequential; each `c[i,j]` still adds its terms for p = 0, 1, ...).
fn matmul<T: Float>(a: &Array<T>, b: &Array<T>) -> Vec<T> {
    let (m, k, n) = (a.shape.0[0], a.shape.0[1], b.shape.0[1]);
    let mut c = vec![T::ZERO; m * n];
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let aip = a.data[i * k + p];
            for (cij, &bpj) in row.iter_mut().zip(&b.data[p * n..(p + 1) * n]) {
                *cij += aip * bpj;
            }
        }
    }
    c
}

/// The geometry of a conv2d whose shapes type inference has checked (the interpreter
/// re-infers every node's type before evaluating it, so the kernel always fits).
fn conv_geometry(x: &Shape, w: &Shape, stride: [usize; 2], padding: Padding) -> ConvGeometry {
    ConvGeometry::new(x, w, stride, padding)
        .unwrap_or_else(|| unreachable!("conv2d types are checked before evaluation"))
}

/// The interpreter's loop nest over a conv2d geometry.
impl ConvGeometry {
    /// Calls `f(x_index, w_index, y_index)` for every term `x * w` that contributes to an
    /// output element (padding positions are skipped: they read zeros). conv2d and both of
    /// its gradients are this one loop nest, so they are exact adjoints of each other.
    fn for_each_term(&self, mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    for ky in 0..self.kh {
                        let iy = (oy * self.sh + ky) as isize - self.ph as isize;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        for kx in 0..self.kw {
                            let ix = (ox * self.sw + kx) as isize - self.pw as isize;
                            if ix < 0 || ix >= self.w as isize {
                                continue;
                            }
                            let (iy, ix) = (iy as usize, ix as usize);
                            for ci in 0..self.c {
                                let xi = ((b * self.h + iy) * self.w + ix) * self.c + ci;
                                for co in 0..self.o {
                                    let wi = ((ky * self.kw + kx) * self.c + ci) * self.o + co;
                                    let yi = ((b * self.oh + oy) * self.ow + ox) * self.o + co;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[b,oy,ox,co] = sum x[b, oy*sh+ky-ph, ox*sw+kx-pw, ci] * w[ky,kx,ci,co]`.
fn conv2d<T: Float>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; g.n * g.oh * g.ow * g.o];
    g.for_each_term(|xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

/// The adjoint of conv2d in `x`: `dx[xi] += dy[yi] * w[wi]` over the same terms.
fn conv2d_input_grad<T: Float>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; g.n * g.h * g.w * g.c];
    g.for_each_term(|xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

/// The adjoint of conv2d in `w`: `dw[wi] += x[xi] * dy[yi]` over the same terms.
fn conv2d_filter_grad<T: Float>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let mut dw = vec![T::ZERO; g.kh * g.kw * g.c * g.o];
    g.for_each_term(|xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
    dw
}

/// The interpreter's pooling loop.
impl PoolGeometry {
    /// Calls `f(y_index, argmax_x_index)` for every output element, with the flat input index
    /// of its window's first maximum in row-major window order.
    fn for_each_window<T: Float>(&self, x: &[T], mut f: impl FnMut(usize, usize)) {
        for b in 0..self.n {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    for ch in 0..self.c {
                        let at = |ky: usize, kx: usize| self.pixel(b, oy, ox, ky, kx) + ch;
                        let mut best = at(0, 0);
                        for ky in 0..self.wh {
                            for kx in 0..self.ww {
                                if greater(x[at(ky, kx)], x[best]) {
                                    best = at(ky, kx);
                                }
                            }
                        }
                        let yi = ((b * self.oh + oy) * self.ow + ox) * self.c + ch;
                        f(yi, best);
                    }
                }
            }
        }
    }
}

fn max_pool2d<T: Float>(p: &PoolGeometry, x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; p.n * p.oh * p.ow * p.c];
    p.for_each_window(x, |yi, xi| y[yi] = x[xi]);
    y
}

/// Routes each `dy` to its window's first maximum; overlapping windows accumulate.
fn max_pool2d_grad<T: Float>(p: &PoolGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    p.for_each_window(x, |yi, xi| dx[xi] += dy[yi]);
    dx
}

// ---- softmax family ---------------------------------------------------------------------------

/// The maximum and `log(sum(exp(x - max)))` of one lane.
fn max_and_log_sum_exp<T: Float>(lane: impl Iterator<Item = T> + Clone) -> (T, T) {
    let mut m = T::NEG_INFINITY;
    for v in lane.clone() {
        if greater(v, m) {
            m = v;
        }
    }
    let mut s = T::ZERO;
    for v in lane {
        s += (v - m).exp();
    }
    (m, s.ln())
}

/// Softmax (or log-softmax) along `axis`, subtracting the lane maximum first.
fn softmax<T: Float>(x: &Array<T>, axis: usize, log: bool) -> Vec<T> {
    let (starts, step, len) = lanes(&x.shape, axis);
    let mut y = vec![T::ZERO; x.data.len()];
    for s in starts {
        let lane = (0..len).map(|k| x.data[s + k * step]);
        let (m, lse) = max_and_log_sum_exp(lane);
        for k in 0..len {
            let z = x.data[s + k * step] - m - lse;
            y[s + k * step] = if log { z } else { z.exp() };
        }
    }
    y
}

/// `loss[i] = sum_j labels[i,j] * (logsumexp(logits[i]) - logits[i,j])`.
fn softmax_cross_entropy<T: Float>(logits: &Array<T>, labels: &Array<T>) -> Vec<T> {
    let (n, c) = (logits.shape.0[0], logits.shape.0[1]);
    (0..n)
        .map(|i| {
            let row = &logits.data[i * c..(i + 1) * c];
            let (m, lse) = max_and_log_sum_exp(row.iter().copied());
            let mut loss = T::ZERO;
            for (j, &l) in row.iter().enumerate() {
                loss += labels.data[i * c + j] * (m + lse - l);
            }
            loss
        })
        .collect()
}

/// `loss[i] = logsumexp(logits[i]) - logits[i, labels[i]]`; NaN when the label is not in
/// `0..c`.
fn sparse_softmax_cross_entropy<T: Float>(logits: &Array<T>, labels: &Array<T>) -> Vec<T> {
    let (n, c) = (logits.shape.0[0], logits.shape.0[1]);
    (0..n)
        .map(|i| {
            let row = &logits.data[i * c..(i + 1) * c];
            match class_index(labels.data[i], c) {
                Some(k) => {
                    let (m, lse) = max_and_log_sum_exp(row.iter().copied());
                    m + lse - row[k]
                }
                None => T::NAN,
            }
        })
        .collect()
}

/// The integer `v` as an index in `0..n`, or `None` when it is not one.
fn class_index<T: Float>(v: T, n: usize) -> Option<usize> {
    let f = v.to_f64();
    if f >= 0.0 && f < n as f64 && f.fract() == 0.0 {
        Some(f as usize)
    } else {
        None
    }
}

/// `[..] -> [.., depth]`, 1 at each index, all zeros when the index is out of range.
fn one_hot<T: Float>(x: &Array<T>, depth: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; x.data.len() * depth];
    for (i, &v) in x.data.iter().enumerate() {
        if let Some(k) = class_index(v, depth) {
            y[i * depth + k] = T::ONE;
        }
    }
    y
}

// ---- compiled results against the reference ----------------------------------------------------

/// Values whose handling compiled code must get exactly as the interpreter does (NaN,
/// infinities, signed zeros, a denormal, ties): inputs that differential tests mix in.
pub const SPECIAL_VALUES: [f64; 10] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    1.0,
    -1.0,
    0.5,
];

/// The longest sum any node of `g` (or instruction of a fused node) computes
/// ([`Op::longest_sum`]); the `terms` of [`agrees`].
pub fn longest_sum(g: &Graph) -> usize {
    g.node_ids()
        .into_iter()
        .map(|id| {
            let operands = g.operands(id);
            let shapes: Vec<&Shape> = operands.iter().map(|&o| &g[o].ty.shape).collect();
            g[id].op.longest_sum(&shapes)
        })
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Whether `got` (a result computed in f32, as f64 values) agrees with `want` (the
/// interpreter's f64 result) for a result of type `dtype` whose longest sum has `terms`
/// terms ([`longest_sum`]); `Err` names the first element that does not.
///
/// The reference is the f64 result rounded to f32 (beyond f32's range: infinite). An f32
/// element agrees when
///
/// `|got - ref| <= 1e-4 * |ref| + 1e-5 * sqrt(n) * min(sqrt(n), max(1, max|ref|))`
///
/// with `n = terms` and `max|ref|` over the finite elements of the result. The relative part
/// covers the f32 rounding of each op along a chain (6e-8 per op, and the compiled
/// exp/log/tanh/sigmoid polynomials' 1.2e-7). The absolute part covers sums: the rounding
/// error of an `n`-term f32 sum grows like `sqrt(n)` times the size of its terms, which the
/// largest value of the result bounds (the terms of a softmax or a mean are not larger than
/// its inputs); with terms of size at most 1, `n` itself bounds it. Without sums (`n = 1`)
/// it is `1e-5`, for results that cancel to nearly zero. NaN must match NaN, infinities
/// exactly, i32 results exactly.
pub fn agrees(got: &[f64], want: &[f64], dtype: DType, terms: usize) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, expected {}", got.len(), want.len()));
    }
    let want: Vec<f64> = match dtype {
        DType::F32 => want.iter().map(|&y| y as f32 as f64).collect(),
        DType::I32 => want.to_vec(),
    };
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    let n = (terms.max(1) as f64).sqrt();
    let atol = 1e-5 * n * n.min(scale);
    for (i, (&x, &y)) in got.iter().zip(&want).enumerate() {
        let ok = match dtype {
            DType::I32 => x == y,
            DType::F32 if y.is_nan() => x.is_nan(),
            DType::F32 if y.is_infinite() => x == y,
            DType::F32 => (x - y).abs() <= 1e-4 * y.abs() + atol,
        };
        if !ok {
            return Err(format!("element {i}: {x}, expected {y}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_allows_f32_rounding_and_no_more() {
        let f = DType::F32;
        assert!(agrees(&[100.009], &[100.0], f, 1).is_ok());
        assert!(agrees(&[100.02], &[100.0], f, 1).is_err());
        // a long sum allows an absolute error growing with it
        assert!(agrees(&[0.0005], &[0.0], f, 1).is_err());
        assert!(agrees(&[0.0005], &[0.0], f, 10_000).is_ok());
        assert!(agrees(&[f64::NAN, f64::INFINITY], &[f64::NAN, f64::INFINITY], f, 1).is_ok());
        assert!(agrees(&[1.0], &[f64::NAN], f, 1).is_err());
        assert!(agrees(&[f64::MAX], &[f64::INFINITY], f, 1).is_err());
        // the reference is rounded to f32 first: 1e39 is infinite in f32
        assert!(agrees(&[f64::INFINITY], &[1e39], f, 1).is_ok());
        assert!(agrees(&[3.0], &[3.0], DType::I32, 1).is_ok());
        assert!(agrees(&[3.0], &[4.0], DType::I32, 1_000_000).is_err());
        let e = agrees(&[1.0, 2.5], &[1.0, 2.0], f, 1).unwrap_err();
        assert_eq!(e, "element 1: 2.5, expected 2");
        assert!(agrees(&[1.0], &[1.0, 2.0], f, 1).is_err());
    }

    #[test]
    fn the_longest_sum_is_the_largest_over_nodes_and_fused_bodies() {
        let mut g = Graph::new("sums");
        let x = g.input("x", TensorType::f32([4, 30])).unwrap();
        let w = g.param("w", [30, 5], crate::op::Init::Ones).unwrap();
        let m = g.matmul(x, w).unwrap();
        let s = g.sum(m, &[0], false).unwrap();
        g.add_output("s", s).unwrap();
        assert_eq!(longest_sum(&g), 30);
        crate::passes::Pipeline::default().run(&mut g).unwrap();
        assert_eq!(longest_sum(&g), 30, "after fusion too");
    }
}
