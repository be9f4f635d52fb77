//! ONNX import: an `.onnx` model to a [`Graph`] and the values of its weights.
//!
//! In: the bytes of an ONNX model (protobuf, decoded with `prost`; the messages are in
//! [`proto`]). Out: an [`Imported`] model: the graph (inputs, params, body, outputs) and one
//! f32 tensor per param holding the initializer's values, or an [`ImportError`] that names
//! the node (its name, or its position when unnamed), its op type and what is expected
//! versus found. Nothing read from the file can make the importer panic.
//!
//! - **Initializers** used as data become params (trainable, named after the initializer,
//!   declared `= param zeros` in the graph) whose values are in [`Imported::weights`]: the
//!   text format has no literal initial values for params, so `gradlift import` writes them
//!   to a safetensors file next to the `.ir` that `gradlift run/eval --params` read.
//!   Initializers used as attributes (a Reshape's shape, a Slice's bounds, reduction axes)
//!   are read at import time; `Constant` nodes become consts.
//! - **Layout**: gradlift's convolution and pooling are NHWC with HWIO filters, ONNX's NCHW
//!   with OIHW filters. Graph inputs and outputs keep their ONNX (NCHW) shapes, so a model is
//!   fed the same data as in any ONNX runtime. A 4-D value entering a Conv or a pool is
//!   transposed to NHWC once; the result stays NHWC through elementwise ops (a broadcast
//!   operand such as a `[C,1,1]` bias is moved to NHWC with it), concatenations and further
//!   convs and pools, and is transposed back to NCHW only where an op needs the ONNX layout
//!   (Flatten, Reshape, Gemm, ...: so a flatten after a conv keeps ONNX's C,H,W order) or at
//!   an output. Conv filters are stored HWIO (their values permuted at import time).
//! - **Padding**: explicit pads equal to gradlift's `same` split (the extra pixel after)
//!   become `same`; others, and `SAME_LOWER`, are written as concatenations with zeros (with
//!   the lowest f32 for max pooling, so a padded element never wins), then a `valid` op.
//! - **Shapes are static**: a symbolic leading dimension of an input (the batch) needs
//!   [`ImportOptions::batch`]; other symbolic dimensions are an error.
//! - **Names**: ONNX names that are not gradlift names (`/fc1/Gemm_output_0`,
//!   `onnx::Gemm_7`) have each other character replaced by `_` (and a leading `_` when they
//!   start with a digit); inputs, params and outputs keep their names otherwise.
//!
//! Operators ([`SUPPORTED`]): Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean, Relu,
//! LeakyRelu, Elu, Softplus, HardSigmoid, Gelu, Sigmoid, Tanh, Exp, Log, Sqrt, Reciprocal,
//! Abs, Neg, Erf, Sin, Cos, Sign, Clip, Gemm, MatMul (with batch axes: unrolled), Conv
//! (grouped and depthwise: one conv2d per group; dilated: the filter spread with zeros),
//! ConvTranspose, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Resize and
//! Upsample (nearest, whole factors), Pad (constant), Flatten, Reshape, Expand, Transpose,
//! Concat, Split, Slice (any steps: a gather), Squeeze, Unsqueeze, ReduceMean, ReduceSum,
//! ReduceMax, ReduceMin, Softmax, LogSoftmax, Identity, Dropout (inference), Constant,
//! Shape, Gather, Cast (to float or bool), BatchNormalization and LayerNormalization
//! (inference), Equal, Greater, Less, GreaterOrEqual, LessOrEqual, Not, And, Or, Xor, Where
//! (bools are f32 masks of 0 and 1, as gradlift's comparisons give; a bool output is an f32
//! output).

pub mod proto;

use crate::checkpoint::NamedTensor;
use crate::graph::{is_valid_name, Graph, NodeId, SourceLoc};
use crate::op::{BinaryOp, CmpOp, Literal, Op, Padding, ReduceOp, UnaryOp};
use crate::shape::{DType, Shape, TensorType};
use proto::{AttributeProto, DimensionValue, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The largest number of elements of one tensor the importer accepts (as the text format).
const MAX_ELEMENTS: usize = crate::op::MAX_DIM;

/// The most groups of a grouped Conv (one conv2d each).
const MAX_GROUPS: usize = 1024;

/// The most 2-D products a batched MatMul is unrolled into.
const MAX_UNROLLED_MATMULS: usize = 256;

/// The largest const an AveragePool (its window counts `[1, oh, ow, 1]`, for
/// `count_include_pad=0`) or a Slice with steps (its indices) may make.
const MAX_POOL_FILTER: usize = 1 << 20;

/// The most positions of an AveragePool's overlapping window (one view of the input each).
const MAX_POOL_TAPS: usize = 1024;

/// Options of [`import`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The size given to a symbolic (or unknown) leading dimension of a graph input, usually
    /// the batch; without it such an input is an error.
    pub batch: Option<usize>,
}

/// An imported model: the graph and the values of its params.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The graph: the ONNX graph's inputs (NCHW shapes as in the file), one param per
    /// initializer used as data, the ops, and the ONNX outputs.
    pub graph: Graph,
    /// The initial value of every param of [`Imported::graph`], by param name, in the order
    /// the params were made (conv filters already HWIO).
    pub weights: Vec<NamedTensor>,
    /// The version of the default ONNX operator set the model imports.
    pub opset: i64,
}

/// Why a model cannot be imported: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("{}: cannot read the file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX protobuf message (truncated, or another kind of file).
    #[error("not an ONNX model: the protobuf message does not decode: {0}")]
    Decode(String),
    /// The model as a whole is unusable (no graph, no default operator set, ...).
    #[error("{0}")]
    Model(String),
    /// An initializer cannot be read.
    #[error("initializer {name}: {message}")]
    Initializer {
        /// The initializer's name.
        name: String,
        /// What is wrong, with the numbers found.
        message: String,
    },
    /// A graph input or output cannot be imported.
    #[error("graph {kind} {name}: {message}")]
    Value {
        /// `input` or `output`.
        kind: &'static str,
        /// The value's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An operator gradlift does not import.
    #[error("node {node} ({op_type}): operator {op_type}{} is not supported; supported: {}", domain_note(domain), SUPPORTED.join(", "))]
    UnsupportedOp {
        /// The node's name, or `#N` (its 0-based position) when it has none.
        node: String,
        /// The operator.
        op_type: String,
        /// The operator's domain (empty for the default operator set).
        domain: String,
    },
    /// A node of a supported operator that cannot be imported: an unsupported attribute
    /// value, an operand of the wrong shape, a missing operand.
    #[error("node {node} ({op_type}): {message}")]
    Node {
        /// The node's name, or `#N` (its 0-based position) when it has none.
        node: String,
        /// The operator.
        op_type: String,
        /// What is expected and what was found.
        message: String,
    },
}

fn domain_note(domain: &str) -> String {
    if domain.is_empty() {
        String::new()
    } else {
        format!(" of domain {domain}")
    }
}

/// The operators the importer knows (default domain).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// Imports the ONNX model in `bytes` (see the module doc).
pub fn import(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, ImportError> {
    use prost::Message as _;
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    import_model(&model, opts)
}

/// Imports the ONNX model in the file at `path` (see [`import`]).
pub fn import_file(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import(&bytes, opts)
}

/// Imports an already decoded model (see [`import`]).
pub fn import_model(model: &ModelProto, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let Some(graph) = &model.graph else {
        return Err(ImportError::Model(
            "the model has no graph (ModelProto.graph is missing)".into(),
        ));
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| {
            ImportError::Model(
                "the model does not import the default ONNX operator set (no opset_import entry of domain \"\" or \"ai.onnx\")".into(),
            )
        })?;
    if opset < 7 {
        return Err(ImportError::Model(format!(
            "the model imports ONNX operator set {opset}; gradlift imports version 7 and later (numpy broadcasting)"
        )));
    }
    if let Some(s) = graph.sparse_initializer.first() {
        return Err(ImportError::Model(format!(
            "the graph has sparse initializers (the first of shape {:?}); only dense initializers are supported",
            s.dims
        )));
    }
    let name = sanitize(&graph.name);
    let name = if graph.name.is_empty() {
        "onnx_model".to_string()
    } else {
        name
    };
    let mut im = Importer {
        g: Graph::new(name),
        opset,
        values: HashMap::new(),
        materialized: HashMap::new(),
        params: HashMap::new(),
        weights: Vec::new(),
        loc: SourceLoc {
            file: "onnx".into(),
            line: 0,
            column: 0,
        },
    };
    // initializers: values known at import time, params when used as data
    let mut initializers = HashSet::new();
    for t in &graph.initializer {
        if !initializers.insert(t.name.clone()) {
            return Err(ImportError::Initializer {
                name: t.name.clone(),
                message: "two initializers have this name".into(),
            });
        }
        let value = decode_tensor(t).map_err(|message| ImportError::Initializer {
            name: t.name.clone(),
            message,
        })?;
        im.values.insert(
            t.name.clone(),
            Val::Static {
                t: value,
                initializer: true,
            },
        );
    }
    for vi in &graph.input {
        if initializers.contains(&vi.name) {
            continue; // older files list the initializers among the inputs
        }
        im.graph_input(vi, opts)
            .map_err(|message| ImportError::Value {
                kind: "input",
                name: vi.name.clone(),
                message,
            })?;
    }
    for (index, node) in graph.node.iter().enumerate() {
        let label = if node.name.is_empty() {
            format!("#{index}")
        } else {
            node.name.clone()
        };
        im.loc = SourceLoc {
            file: format!("onnx:{label}"),
            line: index as u32 + 1,
            column: 1,
        };
        let start = im.g.len();
        match im.node(node) {
            Ok(()) => im.name_results(node, start),
            Err(Fail::Unsupported) => {
                return Err(ImportError::UnsupportedOp {
                    node: label,
                    op_type: node.op_type.clone(),
                    domain: node.domain.clone(),
                })
            }
            Err(Fail::Msg(message)) => {
                return Err(ImportError::Node {
                    node: label,
                    op_type: node.op_type.clone(),
                    message,
                })
            }
        }
    }
    if graph.output.is_empty() {
        return Err(ImportError::Model("the graph has no outputs".into()));
    }
    im.loc = SourceLoc {
        file: "onnx:outputs".into(),
        line: 0,
        column: 0,
    };
    for vi in &graph.output {
        im.graph_output(vi).map_err(|message| ImportError::Value {
            kind: "output",
            name: vi.name.clone(),
            message,
        })?;
    }
    Ok(Imported {
        graph: im.g,
        weights: im.weights,
        opset,
    })
}

/// A gradlift name for the ONNX name `s`: every character other than a letter, digit, `_` or
/// `.` becomes `_`, and a name that does not start with a letter or `_` gets a leading `_`.
pub fn sanitize(s: &str) -> String {
    crate::text::sanitize(s)
}

// ---- values ---------------------------------------------------------------------------------

/// A tensor known at import time.
#[derive(Clone, Debug, PartialEq)]
struct Static {
    dims: Vec<usize>,
    data: StaticData,
}

#[derive(Clone, Debug, PartialEq)]
enum StaticData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Static {
    fn f64s(&self) -> Vec<f64> {
        match &self.data {
            StaticData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            StaticData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            StaticData::I64(v) => Some(v),
            StaticData::F32(_) => None,
        }
    }
}

/// An ONNX value during import.
#[derive(Clone, Debug)]
enum Val {
    /// A graph node: in the ONNX layout (`plain`) and, for 4-D values, maybe NHWC; at least
    /// one is set, and the other is made (a transpose) when first needed.
    Node {
        plain: Option<NodeId>,
        nhwc: Option<NodeId>,
    },
    /// Known at import time: an initializer (a param when used as data) or a constant.
    Static { t: Static, initializer: bool },
}

/// How a param holds an initializer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// As in the file.
    Plain,
    /// An OIHW conv filter stored HWIO.
    Hwio,
}

enum Fail {
    Unsupported,
    Msg(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail::Msg(s)
    }
}

type R<T> = Result<T, String>;

/// NCHW to NHWC.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// NHWC to NCHW.
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];
/// The NHWC axis of NCHW axis `a`.
const NHWC_AXIS: [usize; 4] = [0, 3, 1, 2];

struct Importer {
    g: Graph,
    opset: i64,
    values: HashMap<String, Val>,
    /// Static values made into graph nodes (plain layout).
    materialized: HashMap<String, NodeId>,
    /// Initializer name -> its param and how it holds the values.
    params: HashMap<String, (NodeId, Form)>,
    weights: Vec<NamedTensor>,
    loc: SourceLoc,
}

fn decode_tensor(t: &TensorProto) -> R<Static> {
    if t.data_location == 1 {
        return Err(
            "the data is stored in an external file, which is not supported (save the model with its data inside the .onnx file)".into(),
        );
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        match usize::try_from(d) {
            Ok(d) if d <= MAX_ELEMENTS => dims.push(d),
            _ => {
                return Err(format!(
                    "dimension {d} of shape {:?} is out of range",
                    t.dims
                ))
            }
        }
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {:?} has too many elements", t.dims))?;
    let ty = proto::data_type_name(t.data_type);
    let raw = |size: usize| -> R<Option<Vec<&[u8]>>> {
        if t.raw_data.is_empty() {
            return Ok(None);
        }
        if t.raw_data.len() != n * size {
            return Err(format!(
                "raw_data holds {} bytes, expected {} ({n} {ty} elements of {size} bytes for shape {:?})",
                t.raw_data.len(),
                n * size,
                dims
            ));
        }
        Ok(Some(t.raw_data.chunks_exact(size).collect()))
    };
    let count = |field: &str, len: usize| -> R<()> {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "{field} holds {len} elements, expected {n} for shape {dims:?}"
            ))
        }
    };
    let data = match t.data_type {
        1 => StaticData::F32(match raw(4)? {
            Some(c) => c
                .iter()
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            None => {
                count("float_data", t.float_data.len())?;
                t.float_data.clone()
            }
        }),
        // bool: an f32 mask of 0 and 1, as gradlift's comparisons give
        9 => StaticData::F32(match raw(1)? {
            Some(c) => c.iter().map(|b| f32::from(u8::from(b[0] != 0))).collect(),
            None => {
                count("int32_data", t.int32_data.len())?;
                t.int32_data
                    .iter()
                    .map(|&x| f32::from(u8::from(x != 0)))
                    .collect()
            }
        }),
        11 => StaticData::F32(match raw(8)? {
            Some(c) => c
                .iter()
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            None => {
                count("double_data", t.double_data.len())?;
                t.double_data.iter().map(|&x| x as f32).collect()
            }
        }),
        7 => StaticData::I64(match raw(8)? {
            Some(c) => c
                .iter()
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            None => {
                count("int64_data", t.int64_data.len())?;
                t.int64_data.clone()
            }
        }),
        6 => StaticData::I64(match raw(4)? {
            Some(c) => c
                .iter()
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            None => {
                count("int32_data", t.int32_data.len())?;
                t.int32_data.iter().map(|&x| i64::from(x)).collect()
            }
        }),
        code => {
            return Err(format!(
                "element type {} (data_type {code}) is not supported; supported: FLOAT, DOUBLE (read as f32), BOOL (an f32 mask), INT32, INT64",
                proto::data_type_name(code)
            ))
        }
    };
    Ok(Static { dims, data })
}

// ---- attributes -----------------------------------------------------------------------------

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Every attribute of `node` is one of `known`, at most once, and none refers to a function
/// attribute.
fn check_attrs(node: &NodeProto, known: &[&str]) -> R<()> {
    let mut seen = HashSet::new();
    for a in &node.attribute {
        if !known.contains(&a.name.as_str()) {
            return Err(if known.is_empty() {
                format!(
                    "attribute {} is not supported ({} takes no attributes)",
                    a.name, node.op_type
                )
            } else {
                format!(
                    "attribute {} is not supported (known: {})",
                    a.name,
                    known.join(", ")
                )
            });
        }
        if !seen.insert(a.name.as_str()) {
            return Err(format!("attribute {} is given twice", a.name));
        }
        if !a.ref_attr_name.is_empty() {
            return Err(format!(
                "attribute {} refers to a function attribute ({}), which is not supported",
                a.name, a.ref_attr_name
            ));
        }
    }
    Ok(())
}

fn attr_typed<'n>(node: &'n NodeProto, name: &str, code: i32) -> R<Option<&'n AttributeProto>> {
    match attr(node, name) {
        Some(a) if a.r#type != 0 && a.r#type != code => Err(format!(
            "attribute {name}: expected {}, found {}",
            proto::attribute_type_name(code),
            proto::attribute_type_name(a.r#type)
        )),
        other => Ok(other),
    }
}

fn attr_int(node: &NodeProto, name: &str) -> R<Option<i64>> {
    Ok(attr_typed(node, name, 2)?.map(|a| a.i))
}

fn attr_float(node: &NodeProto, name: &str) -> R<Option<f32>> {
    Ok(attr_typed(node, name, 1)?.map(|a| a.f))
}

fn attr_ints(node: &NodeProto, name: &str) -> R<Option<Vec<i64>>> {
    Ok(attr_typed(node, name, 7)?.map(|a| a.ints.clone()))
}

fn attr_string(node: &NodeProto, name: &str) -> R<Option<String>> {
    match attr_typed(node, name, 3)? {
        None => Ok(None),
        Some(a) => String::from_utf8(a.s.clone())
            .map(Some)
            .map_err(|_| format!("attribute {name}: not UTF-8")),
    }
}

/// A non-negative pair attribute (kernel, strides, dilations) of a 2-D op, or `default`.
fn attr_pair(node: &NodeProto, name: &str, default: [usize; 2], positive: bool) -> R<[usize; 2]> {
    let Some(v) = attr_ints(node, name)? else {
        return Ok(default);
    };
    match v[..] {
        [a, b] if a >= i64::from(positive) && b >= i64::from(positive) => {
            match (usize::try_from(a), usize::try_from(b)) {
                (Ok(a), Ok(b)) if a <= MAX_ELEMENTS && b <= MAX_ELEMENTS => Ok([a, b]),
                _ => Err(format!("attribute {name}: {v:?} is out of range")),
            }
        }
        _ => Err(format!(
            "attribute {name}: expected two {} integers (a 2-D op), found {v:?}",
            if positive { "positive" } else { "non-negative" }
        )),
    }
}

/// Axis `a` (negative counts from the end) of a rank-`rank` value.
fn axis(a: i64, rank: usize, what: &str) -> R<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(format!(
            "{what} {a} is out of range for a value of rank {rank}"
        ));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

fn prod(d: &[usize]) -> usize {
    d.iter().product()
}

// ---- the importer ---------------------------------------------------------------------------

impl Importer {
    fn add(&mut self, op: Op, operands: &[NodeId]) -> R<NodeId> {
        let nhwc = matches!(op, Op::Conv2d { .. } | Op::MaxPool2d { .. });
        self.g
            .add_at(op, operands, None, self.loc.clone())
            .map_err(|e| {
                if nhwc {
                    format!("{} (shapes in gradlift's NHWC layout)", e.message)
                } else {
                    e.message
                }
            })
    }

    fn leaf(&mut self, op: Op, ty: TensorType) -> R<NodeId> {
        self.g
            .add_at(op, &[], Some(ty), self.loc.clone())
            .map_err(|e| e.message)
    }

    fn scalar(&mut self, v: f64) -> R<NodeId> {
        self.leaf(
            Op::Const {
                value: Literal::Splat(v),
            },
            TensorType::f32(Shape::scalar()),
        )
    }

    fn splat(&mut self, dims: Vec<usize>, v: f64) -> R<NodeId> {
        self.leaf(
            Op::Const {
                value: Literal::Splat(v),
            },
            TensorType::f32(dims),
        )
    }

    fn transpose(&mut self, x: NodeId, perm: &[usize]) -> R<NodeId> {
        self.add(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    fn reshape(&mut self, x: NodeId, dims: Vec<usize>) -> R<NodeId> {
        if self.g[x].ty.shape.dims() == dims.as_slice() {
            return Ok(x);
        }
        self.add(Op::Reshape { shape: Shape(dims) }, &[x])
    }

    fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> R<NodeId> {
        self.add(Op::Binary(op), &[a, b])
    }

    fn dims_of(&self, id: NodeId) -> Vec<usize> {
        self.g[id].ty.shape.dims().to_vec()
    }

    /// A name not used by any node: `base` sanitized, then `_1`, `_2`, ... appended.
    fn fresh_name(&self, base: &str) -> String {
        let base = sanitize(base);
        let mut name = base.clone();
        let mut k = 1;
        while self.g.find(&name).is_some() || !is_valid_name(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// Names the nodes `node` made for its results (those at index `start` and after, not
    /// yet named) after the ONNX node (`NAME`, or `NAME_i` for result `i` of several), or
    /// after the result when the node is unnamed, so a printed graph, a summary and an error
    /// point back at the ONNX node.
    fn name_results(&mut self, node: &NodeProto, start: usize) {
        for (i, out) in node.output.iter().enumerate() {
            let Some(Val::Node { plain, nhwc }) = self.values.get(out) else {
                continue;
            };
            let Some(id) = plain.or(*nhwc) else {
                continue;
            };
            if id.index() < start || self.g[id].name.is_some() {
                continue;
            }
            let base = match (node.name.is_empty(), node.output.len()) {
                (true, _) => out.clone(),
                (false, 1) => node.name.clone(),
                (false, _) => format!("{}_{i}", node.name),
            };
            let name = self.fresh_name(&base);
            // `fresh_name` gives a valid, unused name; a refusal would only leave it unnamed
            let _ = self.g.set_name(id, &name);
        }
    }

    fn bind(&mut self, name: &str, v: Val) -> R<()> {
        if name.is_empty() {
            return Ok(());
        }
        if self.values.contains_key(name) {
            return Err(format!(
                "its result {name} is already defined (by an earlier node, an initializer or a graph input)"
            ));
        }
        self.values.insert(name.to_string(), v);
        Ok(())
    }

    fn bind_plain(&mut self, name: &str, id: NodeId) -> R<()> {
        self.bind(
            name,
            Val::Node {
                plain: Some(id),
                nhwc: None,
            },
        )
    }

    fn bind_nhwc(&mut self, name: &str, id: NodeId) -> R<()> {
        self.bind(
            name,
            Val::Node {
                plain: None,
                nhwc: Some(id),
            },
        )
    }

    fn val(&self, name: &str) -> R<&Val> {
        self.values.get(name).ok_or_else(|| {
            format!(
                "operand {name} is not defined by an earlier node, an initializer or a graph input"
            )
        })
    }

    /// The ONNX (logical) dimensions of value `name`.
    fn dims(&self, name: &str) -> R<Vec<usize>> {
        Ok(match self.val(name)? {
            Val::Static { t, .. } => t.dims.clone(),
            Val::Node { plain: Some(p), .. } => self.dims_of(*p),
            Val::Node { nhwc: Some(n), .. } => {
                let d = self.dims_of(*n);
                TO_NCHW.iter().map(|&i| d[i]).collect()
            }
            Val::Node { .. } => return Err(format!("operand {name} has no node")),
        })
    }

    fn has_nhwc(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Val::Node { nhwc: Some(_), .. }))
    }

    fn static_val(&self, name: &str, what: &str) -> R<&Static> {
        match self.val(name)? {
            Val::Static { t, .. } => Ok(t),
            Val::Node { .. } => Err(format!(
                "{what} ({name}) must be known at import time (an initializer or a Constant), found a computed value"
            )),
        }
    }

    fn static_ints(&self, name: &str, what: &str) -> R<Vec<i64>> {
        let t = self.static_val(name, what)?;
        t.ints()
            .map(<[i64]>::to_vec)
            .ok_or_else(|| format!("{what} ({name}) must hold integers, found FLOAT"))
    }

    /// Value `name` as a node in the ONNX layout.
    fn plain(&mut self, name: &str) -> R<NodeId> {
        match self.val(name)?.clone() {
            Val::Node { plain: Some(p), .. } => Ok(p),
            Val::Node {
                nhwc: Some(n),
                plain: None,
            } => {
                let p = self.transpose(n, &TO_NCHW)?;
                self.values.insert(
                    name.to_string(),
                    Val::Node {
                        plain: Some(p),
                        nhwc: Some(n),
                    },
                );
                Ok(p)
            }
            Val::Node { .. } => Err(format!("operand {name} has no node")),
            Val::Static { t, initializer } => {
                if let Some(&id) = self.materialized.get(name) {
                    return Ok(id);
                }
                let id = match (&t.data, initializer) {
                    (StaticData::F32(v), true) => match self.params.get(name).copied() {
                        Some((p, Form::Plain)) => p,
                        Some((p, Form::Hwio)) => self.transpose(p, &[3, 2, 0, 1])?,
                        None => self.param(name, t.dims.clone(), v.clone(), Form::Plain)?,
                    },
                    (StaticData::F32(_), false) => self.leaf(
                        Op::Const {
                            value: Literal::Dense(t.f64s()),
                        },
                        TensorType::f32(t.dims.clone()),
                    )?,
                    (StaticData::I64(v), _) => {
                        if v.iter().any(|&x| i32::try_from(x).is_err()) {
                            return Err(format!(
                                "operand {name} holds integers outside the i32 range, which gradlift cannot hold"
                            ));
                        }
                        self.leaf(
                            Op::Const {
                                value: Literal::Dense(t.f64s()),
                            },
                            TensorType::i32(t.dims.clone()),
                        )?
                    }
                };
                self.materialized.insert(name.to_string(), id);
                Ok(id)
            }
        }
    }

    fn param(
        &mut self,
        onnx_name: &str,
        dims: Vec<usize>,
        data: Vec<f32>,
        form: Form,
    ) -> R<NodeId> {
        let name = self.fresh_name(onnx_name);
        let id = self.leaf(
            Op::Param {
                init: crate::op::Init::Zeros,
            },
            TensorType::f32(dims.clone()),
        )?;
        self.g.set_name(id, &name).map_err(|e| e.message)?;
        self.weights.push(NamedTensor::f32(name, dims, data));
        self.params.insert(onnx_name.to_string(), (id, form));
        Ok(id)
    }

    /// Value `name` (4-D) as an NHWC node.
    fn nhwc(&mut self, name: &str) -> R<NodeId> {
        if let Val::Node { nhwc: Some(n), .. } = self.val(name)? {
            return Ok(*n);
        }
        let d = self.dims(name)?;
        if d.len() != 4 {
            return Err(format!(
                "operand {name} must be 4-D (NCHW), found shape {d:?}"
            ));
        }
        let p = self.plain(name)?;
        let n = self.transpose(p, &TO_NHWC)?;
        if let Some(Val::Node { nhwc, .. }) = self.values.get_mut(name) {
            *nhwc = Some(n);
        }
        Ok(n)
    }

    /// Value `name` as an operand of a 4-D elementwise op computed in NHWC: 4-D values in
    /// NHWC, lower ranks (broadcast from the right in NCHW) made 4-D and moved along.
    fn nhwc_operand(&mut self, name: &str) -> R<NodeId> {
        let d = self.dims(name)?;
        if d.len() == 4 {
            return self.nhwc(name);
        }
        let p = self.plain(name)?;
        if d.is_empty() || prod(&d) == 1 {
            return Ok(p);
        }
        let mut four = vec![1; 4 - d.len()];
        four.extend_from_slice(&d);
        let r = self.reshape(p, four)?;
        self.transpose(r, &TO_NHWC)
    }

    /// An OIHW filter value as an HWIO node.
    fn conv_filter(&mut self, name: &str) -> R<NodeId> {
        if let Val::Static {
            t,
            initializer: true,
        } = self.val(name)?.clone()
        {
            if let StaticData::F32(v) = &t.data {
                if let Some((p, form)) = self.params.get(name).copied() {
                    return match form {
                        Form::Hwio => Ok(p),
                        Form::Plain => self.transpose(p, &[2, 3, 1, 0]),
                    };
                }
                let [o, i, kh, kw] = t.dims[..] else {
                    return Err(format!("filter {name} must be 4-D, found {:?}", t.dims));
                };
                let mut hwio = vec![0f32; v.len()];
                for a in 0..o {
                    for b in 0..i {
                        for y in 0..kh {
                            for x in 0..kw {
                                hwio[((y * kw + x) * i + b) * o + a] =
                                    v[((a * i + b) * kh + y) * kw + x];
                            }
                        }
                    }
                }
                return self.param(name, vec![kh, kw, i, o], hwio, Form::Hwio);
            }
        }
        let p = self.plain(name)?;
        self.transpose(p, &[2, 3, 1, 0])
    }

    fn graph_input(&mut self, vi: &ValueInfoProto, opts: &ImportOptions) -> R<()> {
        let Some(tt) = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
            return Err(
                "its type is not a tensor type (sequences, maps and optionals are not supported)"
                    .into(),
            );
        };
        let dtype = match tt.elem_type {
            1 => DType::F32,
            6 => DType::I32,
            code => {
                return Err(format!(
                "element type {} is not supported; gradlift inputs are FLOAT (f32) or INT32 (i32)",
                proto::data_type_name(code)
            ))
            }
        };
        let Some(shape) = &tt.shape else {
            return Err("its shape is not given; gradlift needs static shapes".into());
        };
        let mut dims = Vec::new();
        for (i, d) in shape.dim.iter().enumerate() {
            let size = match &d.value {
                Some(DimensionValue::DimValue(v))
                    if *v > 0 && (*v as u64) <= MAX_ELEMENTS as u64 =>
                {
                    *v as usize
                }
                Some(DimensionValue::DimValue(v)) => {
                    return Err(format!("dimension {i} is {v}; expected a positive size"))
                }
                other => {
                    let what = match other {
                        Some(DimensionValue::DimParam(p)) => format!("symbolic ({p})"),
                        _ => "unknown".to_string(),
                    };
                    match (i, opts.batch) {
                        (0, Some(b)) if b > 0 => b,
                        (0, _) => {
                            return Err(format!(
                                "dimension 0 is {what}; gradlift needs static shapes: give the batch size (--batch N)"
                            ))
                        }
                        _ => {
                            return Err(format!(
                                "dimension {i} is {what}; gradlift needs static shapes (only a leading batch dimension can be fixed, with --batch)"
                            ))
                        }
                    }
                }
            };
            dims.push(size);
        }
        if Shape(dims.clone())
            .checked_numel()
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(format!("shape {dims:?} has too many elements"));
        }
        let name = self.fresh_name(&vi.name);
        let id = self
            .g
            .add_at(
                Op::Input,
                &[],
                Some(TensorType::new(dtype, dims)),
                self.loc.clone(),
            )
            .map_err(|e| e.message)?;
        self.g.set_name(id, &name).map_err(|e| e.message)?;
        self.bind_plain(&vi.name, id)
    }

    fn graph_output(&mut self, vi: &ValueInfoProto) -> R<()> {
        let id = self.plain(&vi.name)?;
        // a declared static shape must be the one computed
        if let Some(shape) = vi
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
        {
            let got = self.dims_of(id);
            let fixed = shape.dim.len() == got.len()
                && shape.dim.iter().zip(&got).all(|(d, &g)| match d.value {
                    Some(DimensionValue::DimValue(v)) => v == g as i64,
                    _ => true,
                });
            if !fixed {
                let want: Vec<String> = shape
                    .dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimensionValue::DimValue(v)) => v.to_string(),
                        Some(DimensionValue::DimParam(p)) => p.clone(),
                        None => "?".into(),
                    })
                    .collect();
                return Err(format!(
                    "the model declares shape [{}], the imported graph computes {got:?}",
                    want.join(", ")
                ));
            }
        }
        let mut name = sanitize(&vi.name);
        let base = name.clone();
        let mut k = 1;
        while self.g.output(&name).is_some() {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.g.add_output(&name, id).map_err(|e| e.message)
    }

    /// The `i`th operand name of `node`, if given (an empty name is an omitted operand).
    fn opt_input(node: &NodeProto, i: usize) -> Option<&str> {
        node.input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn input(node: &NodeProto, i: usize) -> R<&str> {
        Self::opt_input(node, i).ok_or_else(|| {
            format!(
                "operand {i} is missing ({} operand{} given)",
                node.input.len(),
                if node.input.len() == 1 { "" } else { "s" }
            )
        })
    }

    /// `node` has at most `n` results that are used (named).
    fn check_outputs(node: &NodeProto, n: usize) -> R<&str> {
        if let Some((i, name)) = node
            .output
            .iter()
            .enumerate()
            .skip(n)
            .find(|(_, s)| !s.is_empty())
        {
            return Err(format!(
                "result {i} ({name}) is not supported; only the first {n} result{} can be used",
                if n == 1 { "" } else { "s" }
            ));
        }
        node.output
            .first()
            .map(String::as_str)
            .ok_or_else(|| "the node has no result".to_string())
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), Fail> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(Fail::Unsupported);
        }
        let op = node.op_type.as_str();
        let unary = match op {
            "Relu" => Some(UnaryOp::Relu),
            "Sigmoid" => Some(UnaryOp::Sigmoid),
            "Tanh" => Some(UnaryOp::Tanh),
            "Exp" => Some(UnaryOp::Exp),
            "Log" => Some(UnaryOp::Log),
            "Sqrt" => Some(UnaryOp::Sqrt),
            "Abs" => Some(UnaryOp::Abs),
            "Neg" => Some(UnaryOp::Neg),
            "Erf" => Some(UnaryOp::Erf),
            "Sin" => Some(UnaryOp::Sin),
            "Cos" => Some(UnaryOp::Cos),
            "Sign" => Some(UnaryOp::Sign),
            _ => None,
        };
        let binary = match op {
            "Add" => Some(BinaryOp::Add),
            "Sub" => Some(BinaryOp::Sub),
            "Mul" => Some(BinaryOp::Mul),
            "Div" => Some(BinaryOp::Div),
            "Pow" => Some(BinaryOp::Pow),
            "Max" => Some(BinaryOp::Max),
            "Min" => Some(BinaryOp::Min),
            _ => None,
        };
        let compare = match op {
            "Equal" => Some(CmpOp::Eq),
            "Greater" => Some(CmpOp::Gt),
            "Less" => Some(CmpOp::Lt),
            "GreaterOrEqual" => Some(CmpOp::Ge),
            "LessOrEqual" => Some(CmpOp::Le),
            "Xor" => Some(CmpOp::Ne),
            _ => None,
        };
        if let Some(c) = compare {
            // bools are f32 masks of 0 and 1
            check_attrs(node, &[])?;
            let out = Self::check_outputs(node, 1)?;
            let ins = [Self::input(node, 0)?, Self::input(node, 1)?];
            return Ok(self.elementwise(out, &ins, |s, xs| s.add(Op::Compare(c), xs))?);
        }
        if let Some(u) = unary {
            check_attrs(node, &[])?;
            let out = Self::check_outputs(node, 1)?;
            let x = Self::input(node, 0)?;
            return Ok(self.elementwise(out, &[x], |s, xs| s.add(Op::Unary(u), xs))?);
        }
        if let Some(b) = binary {
            check_attrs(node, &[])?;
            let out = Self::check_outputs(node, 1)?;
            let ins: Vec<&str> = node.input.iter().map(String::as_str).collect();
            let variadic = matches!(op, "Max" | "Min");
            if (!variadic && ins.len() != 2) || ins.is_empty() || ins.iter().any(|s| s.is_empty()) {
                return Err(format!(
                    "expected {} operands, found {}",
                    if variadic { "one or more" } else { "2" },
                    ins.len()
                )
                .into());
            }
            return Ok(self.elementwise(out, &ins, |s, xs| {
                let mut acc = xs[0];
                for &x in &xs[1..] {
                    acc = s.binary(b, acc, x)?;
                }
                Ok(acc)
            })?);
        }
        match op {
            "LeakyRelu" => Ok(self.leaky_relu(node)?),
            "Clip" => Ok(self.clip(node)?),
            "Gemm" => Ok(self.gemm(node)?),
            "MatMul" => Ok(self.matmul(node)?),
            "Conv" => Ok(self.conv(node)?),
            "ConvTranspose" => Ok(self.conv_transpose(node)?),
            "MaxPool" => Ok(self.max_pool(node)?),
            "AveragePool" => Ok(self.average_pool(node)?),
            "GlobalAveragePool" | "GlobalMaxPool" => Ok(self.global_pool(node)?),
            "Flatten" => Ok(self.flatten(node)?),
            "Reshape" => Ok(self.reshape_op(node)?),
            "Transpose" => Ok(self.transpose_op(node)?),
            "Concat" => Ok(self.concat(node)?),
            "Slice" => Ok(self.slice(node)?),
            "Squeeze" | "Unsqueeze" => Ok(self.squeeze(node)?),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => Ok(self.reduce(node)?),
            "Softmax" | "LogSoftmax" => Ok(self.softmax(node)?),
            "Identity" => Ok(self.identity(node)?),
            "Dropout" => Ok(self.dropout(node)?),
            "Constant" => Ok(self.constant(node)?),
            "Shape" => Ok(self.shape(node)?),
            "Gather" => Ok(self.gather(node)?),
            "Cast" => Ok(self.cast(node)?),
            "BatchNormalization" => Ok(self.batch_norm(node)?),
            "Elu" | "Softplus" | "Reciprocal" | "HardSigmoid" | "Gelu" => {
                Ok(self.activation(node)?)
            }
            "Sum" | "Mean" => Ok(self.sum_mean(node)?),
            "Not" | "And" | "Or" | "Where" => Ok(self.logic(node)?),
            "Pad" => Ok(self.pad(node)?),
            "Expand" => Ok(self.expand(node)?),
            "Split" => Ok(self.split(node)?),
            "LayerNormalization" => Ok(self.layer_norm(node)?),
            "Resize" | "Upsample" => Ok(self.resize(node)?),
            _ => Err(Fail::Unsupported),
        }
    }

    /// An elementwise op over `ins` (broadcasting): computed in NHWC when the result is 4-D
    /// and an operand already is NHWC, else in the ONNX layout.
    fn elementwise(
        &mut self,
        out: &str,
        ins: &[&str],
        f: impl FnOnce(&mut Self, &[NodeId]) -> R<NodeId>,
    ) -> R<()> {
        let mut rank = 0;
        for x in ins {
            rank = rank.max(self.dims(x)?.len());
        }
        let nhwc = rank == 4 && ins.iter().any(|x| self.has_nhwc(x));
        let mut xs = Vec::with_capacity(ins.len());
        for x in ins {
            xs.push(if nhwc {
                self.nhwc_operand(x)?
            } else {
                self.plain(x)?
            });
        }
        let y = f(self, &xs)?;
        if nhwc {
            self.bind_nhwc(out, y)
        } else {
            self.bind_plain(out, y)
        }
    }

    fn leaky_relu(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["alpha"])?;
        let out = Self::check_outputs(node, 1)?;
        let alpha = f64::from(attr_float(node, "alpha")?.unwrap_or(0.01));
        let x = Self::input(node, 0)?;
        self.elementwise(out, &[x], |s, xs| {
            let zero = s.scalar(0.0)?;
            let a = s.scalar(alpha)?;
            let mask = s.add(Op::Compare(CmpOp::Gt), &[xs[0], zero])?;
            let neg = s.binary(BinaryOp::Mul, xs[0], a)?;
            s.add(Op::Select, &[mask, xs[0], neg])
        })
    }

    fn clip(&mut self, node: &NodeProto) -> R<()> {
        let out = Self::check_outputs(node, 1)?;
        let x = Self::input(node, 0)?;
        let (lo, hi) = if self.opset < 11 {
            check_attrs(node, &["min", "max"])?;
            (
                attr_float(node, "min")?.map(f64::from),
                attr_float(node, "max")?.map(f64::from),
            )
        } else {
            check_attrs(node, &[])?;
            let bound = |i: usize| -> R<Option<f64>> {
                match Self::opt_input(node, i) {
                    None => Ok(None),
                    Some(n) => {
                        let t = self.static_val(n, if i == 1 { "min" } else { "max" })?;
                        match t.f64s()[..] {
                            [v] => Ok(Some(v)),
                            _ => Err(format!(
                                "bound {n} must be a scalar, found shape {:?}",
                                t.dims
                            )),
                        }
                    }
                }
            };
            (bound(1)?, bound(2)?)
        };
        self.elementwise(out, &[x], |s, xs| {
            let mut y = xs[0];
            if let Some(lo) = lo {
                let c = s.scalar(lo)?;
                y = s.binary(BinaryOp::Max, y, c)?;
            }
            if let Some(hi) = hi {
                let c = s.scalar(hi)?;
                y = s.binary(BinaryOp::Min, y, c)?;
            }
            Ok(y)
        })
    }

    fn gemm(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["alpha", "beta", "transA", "transB"])?;
        let out = Self::check_outputs(node, 1)?;
        let alpha = f64::from(attr_float(node, "alpha")?.unwrap_or(1.0));
        let beta = f64::from(attr_float(node, "beta")?.unwrap_or(1.0));
        let ta = attr_int(node, "transA")?.unwrap_or(0) != 0;
        let tb = attr_int(node, "transB")?.unwrap_or(0) != 0;
        let (an, bn) = (Self::input(node, 0)?, Self::input(node, 1)?);
        for (n, what) in [(an, "A"), (bn, "B")] {
            let d = self.dims(n)?;
            if d.len() != 2 {
                return Err(format!(
                    "operand {what} ({n}) must be 2-D, found shape {d:?}"
                ));
            }
        }
        let mut a = self.plain(an)?;
        if ta {
            a = self.transpose(a, &[1, 0])?;
        }
        let mut b = self.plain(bn)?;
        if tb {
            b = self.transpose(b, &[1, 0])?;
        }
        let mut y = self.add(Op::Matmul, &[a, b])?;
        if alpha != 1.0 {
            let s = self.scalar(alpha)?;
            y = self.binary(BinaryOp::Mul, y, s)?;
        }
        if let Some(cn) = Self::opt_input(node, 2) {
            if beta != 0.0 {
                let mut c = self.plain(cn)?;
                if beta != 1.0 {
                    let s = self.scalar(beta)?;
                    c = self.binary(BinaryOp::Mul, c, s)?;
                }
                y = self.binary(BinaryOp::Add, y, c)?;
            }
        }
        self.bind_plain(out, y)
    }

    fn matmul(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        let (an, bn) = (Self::input(node, 0)?, Self::input(node, 1)?);
        let (da, db) = (self.dims(an)?, self.dims(bn)?);
        if da.is_empty() || db.is_empty() {
            return Err(format!(
                "operands of shapes {da:?} and {db:?}: MatMul needs operands of rank 1 or more"
            ));
        }
        if db.len() > 2 {
            return self.batched_matmul(out, an, bn, da, db);
        }
        let mut a = self.plain(an)?;
        let mut b = self.plain(bn)?;
        let k = da[da.len() - 1];
        let lead = &da[..da.len() - 1];
        a = self.reshape(a, vec![prod(lead), k])?;
        if db.len() == 1 {
            b = self.reshape(b, vec![db[0], 1])?;
        }
        let y = self.add(Op::Matmul, &[a, b])?;
        let mut dims = lead.to_vec();
        if db.len() == 2 {
            dims.push(db[1]);
        }
        let y = self.reshape(y, dims)?;
        self.bind_plain(out, y)
    }

    /// A MatMul whose B has batch axes: the batch axes of A and B broadcast (numpy), and
    /// each of the (at most [`MAX_UNROLLED_MATMULS`]) products is a 2-D matmul of slices,
    /// concatenated back (gradlift's matmul is 2-D; `passes::batch_matmuls` may merge them).
    fn batched_matmul(
        &mut self,
        out: &str,
        an: &str,
        bn: &str,
        mut da: Vec<usize>,
        db: Vec<usize>,
    ) -> R<()> {
        let a_vector = da.len() == 1;
        if a_vector {
            da.insert(0, 1);
        }
        let (ra, rb) = (da.len(), db.len());
        let (m, k, kb, n) = (da[ra - 2], da[ra - 1], db[rb - 2], db[rb - 1]);
        if k != kb {
            return Err(format!(
                "inner dimensions differ: A {da:?} and B {db:?} (expected B's axis {} = {k})",
                rb - 2
            ));
        }
        let batch = Shape::broadcast(&Shape(da[..ra - 2].to_vec()), &Shape(db[..rb - 2].to_vec()))
            .ok_or_else(|| format!("the batch axes of A {da:?} and B {db:?} do not broadcast"))?;
        let nb = batch.numel();
        if nb == 0 || m == 0 || k == 0 || n == 0 {
            return Err(format!(
                "A {da:?} x B {db:?} is empty, which gradlift cannot hold"
            ));
        }
        if nb > MAX_UNROLLED_MATMULS {
            return Err(format!(
                "a batched MatMul of {nb} products ({da:?} x {db:?}) is not supported: gradlift's matmul is 2-D and at most {MAX_UNROLLED_MATMULS} products are unrolled"
            ));
        }
        let operand = |s: &mut Self, name: &str, dims: &[usize], rows: usize, cols: usize| {
            let mut x = s.plain(name)?;
            x = s.reshape(x, dims.to_vec())?;
            let mut full = batch.0.clone();
            full.extend([rows, cols]);
            if dims != full.as_slice() {
                x = s.add(Op::Broadcast { shape: Shape(full) }, &[x])?;
            }
            s.reshape(x, vec![nb, rows, cols])
        };
        let a = operand(self, an, &da, m, k)?;
        let b = operand(self, bn, &db, k, n)?;
        let mut parts = Vec::with_capacity(nb);
        for i in 0..nb {
            let ai = self.add(
                Op::Slice {
                    begin: vec![i, 0, 0],
                    end: vec![i + 1, m, k],
                },
                &[a],
            )?;
            let ai = self.reshape(ai, vec![m, k])?;
            let bi = self.add(
                Op::Slice {
                    begin: vec![i, 0, 0],
                    end: vec![i + 1, k, n],
                },
                &[b],
            )?;
            let bi = self.reshape(bi, vec![k, n])?;
            let yi = self.add(Op::Matmul, &[ai, bi])?;
            parts.push(self.reshape(yi, vec![1, m, n])?);
        }
        let y = if parts.len() == 1 {
            parts[0]
        } else {
            self.add(Op::Concat { axis: 0 }, &parts)?
        };
        let mut dims = batch.0.clone();
        if !a_vector {
            dims.push(m);
        }
        dims.push(n);
        let y = self.reshape(y, dims)?;
        self.bind_plain(out, y)
    }

    /// Explicit pads `[top, left, bottom, right]` of a 2-D window op on `input` (`[h, w]`).
    fn pads(
        node: &NodeProto,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
    ) -> R<[usize; 4]> {
        let auto = attr_string(node, "auto_pad")?.unwrap_or_default();
        let given = attr_ints(node, "pads")?;
        let same = |upper: bool| -> [usize; 4] {
            let mut p = [0; 4];
            for ax in 0..2 {
                let out = input[ax].div_ceil(stride[ax]);
                let need =
                    ((out.saturating_sub(1)) * stride[ax] + kernel[ax]).saturating_sub(input[ax]);
                let (before, after) = if upper {
                    (need / 2, need - need / 2)
                } else {
                    (need - need / 2, need / 2)
                };
                p[ax] = before;
                p[ax + 2] = after;
            }
            p
        };
        match auto.as_str() {
            "" | "NOTSET" => match given {
                None => Ok([0; 4]),
                Some(v) => match v[..] {
                    [a, b, c, d] if v.iter().all(|&x| (0..=MAX_ELEMENTS as i64).contains(&x)) => {
                        Ok([a as usize, b as usize, c as usize, d as usize])
                    }
                    _ => Err(format!(
                        "attribute pads: expected four non-negative integers [top, left, bottom, right], found {v:?}"
                    )),
                },
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" => Ok(same(true)),
            "SAME_LOWER" => Ok(same(false)),
            other => Err(format!(
                "attribute auto_pad: {other:?} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"
            )),
        }
    }

    /// `x` (NHWC) padded by `[top, left, bottom, right]` with `value`.
    fn pad_nhwc(&mut self, x: NodeId, p: [usize; 4], value: f64) -> R<NodeId> {
        let mut y = x;
        for (ax, before, after) in [(1, p[0], p[2]), (2, p[1], p[3])] {
            if before == 0 && after == 0 {
                continue;
            }
            let d = self.dims_of(y);
            let mut parts = Vec::new();
            for (n, is_x) in [(before, false), (0, true), (after, false)] {
                if is_x {
                    parts.push(y);
                } else if n > 0 {
                    let mut pd = d.clone();
                    pd[ax] = n;
                    parts.push(self.splat(pd, value)?);
                }
            }
            y = self.add(Op::Concat { axis: ax }, &parts)?;
        }
        Ok(y)
    }

    fn check_dilations(node: &NodeProto) -> R<()> {
        let d = attr_pair(node, "dilations", [1, 1], true)?;
        if d != [1, 1] {
            return Err(format!(
                "attribute dilations: {d:?} is not supported (gradlift's windows are dense: [1, 1])"
            ));
        }
        Ok(())
    }

    /// HWIO filter `f` with `dilation - 1` zeros between its taps (concatenations of its
    /// column and row slices with zeros), so gradients still reach only the taps.
    fn dilate_filter(&mut self, f: NodeId, dilation: [usize; 2]) -> R<NodeId> {
        let mut y = f;
        for (ax, d) in [(1, dilation[1]), (0, dilation[0])] {
            if d == 1 {
                continue;
            }
            let dims = self.dims_of(y);
            let mut parts = Vec::new();
            for t in 0..dims[ax] {
                if t > 0 {
                    let mut z = dims.clone();
                    z[ax] = d - 1;
                    parts.push(self.splat(z, 0.0)?);
                }
                let mut begin = vec![0; 4];
                let mut end = dims.clone();
                begin[ax] = t;
                end[ax] = t + 1;
                parts.push(self.add(Op::Slice { begin, end }, &[y])?);
            }
            y = if parts.len() == 1 {
                parts[0]
            } else {
                self.add(Op::Concat { axis: ax }, &parts)?
            };
        }
        Ok(y)
    }

    /// The NCHW dims of a 2-D window op's input, checked 4-D.
    fn dims4(&self, name: &str) -> R<[usize; 4]> {
        let d = self.dims(name)?;
        match d[..] {
            [n, c, h, w] if d.contains(&0) => Err(format!(
                "operand {name} of shape {:?} is empty",
                [n, c, h, w]
            )),
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(format!(
                "operand {name} has shape {d:?}; only 2-D windows over a 4-D NCHW input are supported"
            )),
        }
    }

    fn conv(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        let (xn, wn) = (Self::input(node, 0)?, Self::input(node, 1)?);
        let [_, c, h, w] = self.dims4(xn)?;
        let wd = self.dims(wn)?;
        let [o, ci, kh, kw] = wd[..] else {
            return Err(format!(
                "filter {wn} must be 4-D [O, C, kH, kW], found {wd:?}"
            ));
        };
        let group = attr_int(node, "group")?.unwrap_or(1);
        let groups = match usize::try_from(group) {
            Ok(g) if (1..=MAX_GROUPS).contains(&g) && c % g == 0 && o % g == 0 => g,
            _ => {
                return Err(format!(
                    "attribute group: {group} is not supported (it must divide the {c} input and {o} output channels, at most {MAX_GROUPS} groups)"
                ))
            }
        };
        if ci * groups != c {
            return Err(format!(
                "filter {wn} of shape {wd:?} expects {} input channels in {groups} group{}, the input has {c}",
                ci * groups,
                if groups == 1 { "" } else { "s" }
            ));
        }
        let dil = attr_pair(node, "dilations", [1, 1], true)?;
        if let Some(k) = attr_ints(node, "kernel_shape")? {
            if k != [kh as i64, kw as i64] {
                return Err(format!(
                    "attribute kernel_shape {k:?} differs from the filter's [{kh}, {kw}]"
                ));
            }
        }
        let stride = attr_pair(node, "strides", [1, 1], true)?;
        // a dilated kernel is a dense one with zeros between the taps
        let (kh, kw) = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1);
        let pads = Self::pads(node, [h, w], [kh, kw], stride)?;
        let same_pads = {
            let mut p = [0; 4];
            for ax in 0..2 {
                let (i, k) = ([h, w][ax], [kh, kw][ax]);
                if let Some((out, before)) = Padding::Same.out_and_pad(i, k, stride[ax]) {
                    let need = ((out.saturating_sub(1)) * stride[ax] + k).saturating_sub(i);
                    p[ax] = before;
                    p[ax + 2] = need - before;
                }
            }
            p
        };
        let mut x = self.nhwc(xn)?;
        let padding = if pads == [0; 4] {
            Padding::Valid
        } else if pads == same_pads {
            Padding::Same
        } else {
            x = self.pad_nhwc(x, pads, 0.0)?;
            Padding::Valid
        };
        let f = self.conv_filter(wn)?;
        let f = self.dilate_filter(f, dil)?;
        let mut y = if groups == 1 {
            self.add(Op::Conv2d { stride, padding }, &[x, f])?
        } else {
            // one conv2d per group: its input channels, its slice of the HWIO filter's
            // outputs; concatenated along the channels
            let xd = self.dims_of(x);
            let og = o / groups;
            let mut parts = Vec::with_capacity(groups);
            for g in 0..groups {
                let xg = self.add(
                    Op::Slice {
                        begin: vec![0, 0, 0, g * ci],
                        end: vec![xd[0], xd[1], xd[2], (g + 1) * ci],
                    },
                    &[x],
                )?;
                let fg = self.add(
                    Op::Slice {
                        begin: vec![0, 0, 0, g * og],
                        end: vec![kh, kw, ci, (g + 1) * og],
                    },
                    &[f],
                )?;
                parts.push(self.add(Op::Conv2d { stride, padding }, &[xg, fg])?);
            }
            self.add(Op::Concat { axis: 3 }, &parts)?
        };
        if let Some(bn) = Self::opt_input(node, 2) {
            let bd = self.dims(bn)?;
            if bd != [o] {
                return Err(format!("bias {bn} must have shape [{o}], found {bd:?}"));
            }
            let b = self.plain(bn)?;
            y = self.binary(BinaryOp::Add, y, b)?;
        }
        self.bind_nhwc(out, y)
    }

    /// The adjoint of a convolution: gradlift's `conv2d_input_grad` of `x` (as the output
    /// gradient) with the `[Cin, Cout, kH, kW]` weights read as an HWIO filter `[kH, kW,
    /// Cout, Cin]` (no flip: ONNX's ConvTranspose is the adjoint of its cross-correlation),
    /// then the pads cropped and the bias added.
    fn conv_transpose(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "output_padding",
                "output_shape",
                "pads",
                "strides",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        let (xn, wn) = (Self::input(node, 0)?, Self::input(node, 1)?);
        let [n, c, h, w] = self.dims4(xn)?;
        let wd = self.dims(wn)?;
        let [ci, co, kh, kw] = wd[..] else {
            return Err(format!(
                "weights {wn} must be 4-D [Cin, Cout, kH, kW], found {wd:?}"
            ));
        };
        let group = attr_int(node, "group")?.unwrap_or(1);
        if group != 1 {
            return Err(format!(
                "attribute group: {group} is not supported (gradlift's convolutions have group 1)"
            ));
        }
        if ci != c {
            return Err(format!(
                "weights {wn} of shape {wd:?} expect {ci} input channels, the input has {c}"
            ));
        }
        Self::check_dilations(node)?;
        if let Some(k) = attr_ints(node, "kernel_shape")? {
            if k != [kh as i64, kw as i64] {
                return Err(format!(
                    "attribute kernel_shape {k:?} differs from the weights' [{kh}, {kw}]"
                ));
            }
        }
        if attr_ints(node, "output_shape")?.is_some() {
            return Err(
                "attribute output_shape is not supported (give pads and output_padding)".into(),
            );
        }
        let auto = attr_string(node, "auto_pad")?.unwrap_or_default();
        if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") {
            return Err(format!(
                "attribute auto_pad: {auto:?} is not supported for ConvTranspose (NOTSET with pads, or VALID)"
            ));
        }
        let stride = attr_pair(node, "strides", [1, 1], true)?;
        let extra = attr_pair(node, "output_padding", [0, 0], false)?;
        if extra[0] >= stride[0] || extra[1] >= stride[1] {
            return Err(format!(
                "attribute output_padding {extra:?} must be smaller than the strides {stride:?}"
            ));
        }
        let pads = if auto == "VALID" {
            [0; 4]
        } else {
            Self::pads(node, [h, w], [kh, kw], stride)?
        };
        let full = [
            (h - 1) * stride[0] + kh + extra[0],
            (w - 1) * stride[1] + kw + extra[1],
        ];
        if Shape(vec![n, full[0], full[1], co])
            .checked_numel()
            .is_none_or(|e| e > MAX_ELEMENTS)
        {
            return Err(format!(
                "the output of {n}x{}x{}x{co} elements is too large",
                full[0], full[1]
            ));
        }
        if pads[0] + pads[2] >= full[0] || pads[1] + pads[3] >= full[1] {
            return Err(format!(
                "pads {pads:?} leave nothing of the {}x{} output",
                full[0], full[1]
            ));
        }
        let x = self.nhwc(xn)?;
        let f = self.conv_filter(wn)?;
        let mut y = self.add(
            Op::Conv2dInputGrad {
                stride,
                padding: Padding::Valid,
                shape: Shape(vec![n, full[0], full[1], co]),
            },
            &[x, f],
        )?;
        if pads != [0; 4] {
            y = self.add(
                Op::Slice {
                    begin: vec![0, pads[0], pads[1], 0],
                    end: vec![n, full[0] - pads[2], full[1] - pads[3], co],
                },
                &[y],
            )?;
        }
        if let Some(bn) = Self::opt_input(node, 2) {
            let bd = self.dims(bn)?;
            if bd != [co] {
                return Err(format!("bias {bn} must have shape [{co}], found {bd:?}"));
            }
            let b = self.plain(bn)?;
            y = self.binary(BinaryOp::Add, y, b)?;
        }
        self.bind_nhwc(out, y)
    }

    /// Kernel, strides and explicit pads of a pool; ceil_mode adds padding at the end.
    fn pool_geometry(
        &self,
        node: &NodeProto,
        xn: &str,
        allow_ceil: bool,
    ) -> R<([usize; 2], [usize; 2], [usize; 4])> {
        let [_, _, h, w] = self.dims4(xn)?;
        let Some(k) = attr_ints(node, "kernel_shape")? else {
            return Err("attribute kernel_shape is missing".into());
        };
        let kernel = attr_pair(node, "kernel_shape", [1, 1], true).map_err(|_| {
            format!("attribute kernel_shape: expected two positive integers, found {k:?}")
        })?;
        let stride = attr_pair(node, "strides", [1, 1], true)?;
        Self::check_dilations(node)?;
        let mut pads = Self::pads(node, [h, w], kernel, stride)?;
        for ax in 0..2 {
            if pads[ax] >= kernel[ax] || pads[ax + 2] >= kernel[ax] {
                return Err(format!(
                    "pads {pads:?} are not smaller than the kernel {kernel:?}"
                ));
            }
        }
        if attr_int(node, "ceil_mode")?.unwrap_or(0) != 0 {
            if !allow_ceil {
                return Err("attribute ceil_mode: 1 is not supported for this op".into());
            }
            for ax in 0..2 {
                let i = [h, w][ax] + pads[ax] + pads[ax + 2];
                if i < kernel[ax] {
                    continue;
                }
                let mut out = (i - kernel[ax]).div_ceil(stride[ax]) + 1;
                // the last window must start inside the input or its leading padding
                if (out - 1) * stride[ax] >= [h, w][ax] + pads[ax] {
                    out -= 1;
                }
                let need = (out - 1) * stride[ax] + kernel[ax];
                pads[ax + 2] += need.saturating_sub(i);
            }
        }
        Ok((kernel, stride, pads))
    }

    fn max_pool(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let (window, stride, pads) = self.pool_geometry(node, xn, true)?;
        let x = self.nhwc(xn)?;
        let x = self.pad_nhwc(x, pads, f64::from(f32::MIN))?;
        let y = self.add(Op::MaxPool2d { window, stride }, &[x])?;
        self.bind_nhwc(out, y)
    }

    fn average_pool(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let [n, c, h, w] = self.dims4(xn)?;
        let (k, s, pads) = self.pool_geometry(node, xn, false)?;
        let include_pad = attr_int(node, "count_include_pad")?.unwrap_or(0) != 0;
        let x = self.nhwc(xn)?;
        let x = self.pad_nhwc(x, pads, 0.0)?;
        let (hp, wp) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        if hp < k[0] || wp < k[1] {
            return Err(format!(
                "the kernel {k:?} is larger than the padded input [{hp}, {wp}]"
            ));
        }
        let (oh, ow) = ((hp - k[0]) / s[0] + 1, (wp - k[1]) / s[1] + 1);
        let sum = if k == s {
            // non-overlapping windows: [n, oh, kh, ow, kw, c] summed over the windows
            let cut = self.add(
                Op::Slice {
                    begin: vec![0; 4],
                    end: vec![n, oh * k[0], ow * k[1], c],
                },
                &[x],
            )?;
            let cut = if self.dims_of(cut) == self.dims_of(x) {
                x
            } else {
                cut
            };
            let r = self.reshape(cut, vec![n, oh, k[0], ow, k[1], c])?;
            self.add(
                Op::Reduce {
                    kind: ReduceOp::Sum,
                    axes: vec![2, 4],
                    keepdims: false,
                },
                &[r],
            )?
        } else {
            // overlapping windows: the sum of the window's shifted views of the input, each
            // taking every s-th row and column (a gather when s > 1); no const filter
            let taps = k[0]
                .checked_mul(k[1])
                .filter(|&t| t <= MAX_POOL_TAPS)
                .ok_or_else(|| {
                    format!(
                        "a {k:?} window with stride {s:?} has more than {MAX_POOL_TAPS} positions (overlapping windows are summed view by view)"
                    )
                })?;
            let every = |me: &mut Self, axis: usize, step: usize, count: usize| {
                if step == 1 {
                    return Ok(None);
                }
                let idx: Vec<f64> = (0..count).map(|i| (i * step) as f64).collect();
                me.leaf(
                    Op::Const {
                        value: Literal::Dense(idx),
                    },
                    TensorType::i32(vec![count]),
                )
                .map(|id| Some((axis, id)))
            };
            let rows = every(self, 1, s[0], oh)?;
            let cols = every(self, 2, s[1], ow)?;
            let mut acc: Option<NodeId> = None;
            for t in 0..taps {
                let (i, j) = (t / k[1], t % k[1]);
                let mut v = self.add(
                    Op::Slice {
                        begin: vec![0, i, j, 0],
                        end: vec![n, i + (oh - 1) * s[0] + 1, j + (ow - 1) * s[1] + 1, c],
                    },
                    &[x],
                )?;
                for (axis, idx) in [rows, cols].into_iter().flatten() {
                    v = self.add(Op::Gather { axis }, &[v, idx])?;
                }
                acc = Some(match acc {
                    None => v,
                    Some(a) => self.binary(BinaryOp::Add, a, v)?,
                });
            }
            acc.ok_or("the window is empty")?
        };
        let y = if include_pad || pads == [0; 4] {
            let d = self.scalar((k[0] * k[1]) as f64)?;
            self.binary(BinaryOp::Div, sum, d)?
        } else {
            // each window's count of input (not padding) elements
            if oh * ow > MAX_POOL_FILTER {
                return Err(format!(
                    "an output of {oh}x{ow} positions is too large for the window counts of count_include_pad=0 (at most {MAX_POOL_FILTER})"
                ));
            }
            let mut counts = Vec::with_capacity(oh * ow);
            for i in 0..oh {
                for j in 0..ow {
                    let rows = (i * s[0]..i * s[0] + k[0])
                        .filter(|&r| r >= pads[0] && r < pads[0] + h)
                        .count();
                    let cols = (j * s[1]..j * s[1] + k[1])
                        .filter(|&q| q >= pads[1] && q < pads[1] + w)
                        .count();
                    counts.push((rows * cols) as f64);
                }
            }
            let d = self.leaf(
                Op::Const {
                    value: Literal::Dense(counts),
                },
                TensorType::f32(vec![1, oh, ow, 1]),
            )?;
            self.binary(BinaryOp::Div, sum, d)?
        };
        self.bind_nhwc(out, y)
    }

    fn global_pool(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        self.dims4(xn)?;
        let x = self.nhwc(xn)?;
        let kind = if node.op_type == "GlobalMaxPool" {
            ReduceOp::Max
        } else {
            ReduceOp::Mean
        };
        let y = self.add(
            Op::Reduce {
                kind,
                axes: vec![1, 2],
                keepdims: true,
            },
            &[x],
        )?;
        self.bind_nhwc(out, y)
    }

    fn flatten(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["axis"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let a = attr_int(node, "axis")?.unwrap_or(1);
        let a = if a == d.len() as i64 {
            d.len()
        } else {
            axis(a, d.len(), "axis")?
        };
        let x = self.plain(xn)?;
        let y = self.reshape(x, vec![prod(&d[..a]), prod(&d[a..])])?;
        self.bind_plain(out, y)
    }

    fn reshape_op(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["allowzero", "shape"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let target = match attr_ints(node, "shape")? {
            Some(s) if self.opset < 5 => s,
            _ => self.static_ints(Self::input(node, 1)?, "the shape operand")?,
        };
        let allow_zero = attr_int(node, "allowzero")?.unwrap_or(0) != 0;
        let d = self.dims(xn)?;
        let dims = reshape_dims(&d, &target, allow_zero)?;
        self.reshape_to(out, xn, dims)
    }

    /// Binds `out` to `xn` reshaped to `dims`: at import time for integer values known then
    /// (shapes, axes), else as a reshape node.
    fn reshape_to(&mut self, out: &str, xn: &str, dims: Vec<usize>) -> R<()> {
        if let Val::Static { t, .. } = self.val(xn)?.clone() {
            if t.ints().is_some() {
                return self.bind(
                    out,
                    Val::Static {
                        t: Static { dims, data: t.data },
                        initializer: false,
                    },
                );
            }
        }
        let x = self.plain(xn)?;
        let y = self.reshape(x, dims)?;
        self.bind_plain(out, y)
    }

    fn transpose_op(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["perm"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let r = self.dims(xn)?.len();
        let perm: Vec<usize> = match attr_ints(node, "perm")? {
            None => (0..r).rev().collect(),
            Some(p) => {
                let mut seen = vec![false; r];
                let mut out = Vec::with_capacity(r);
                for &a in &p {
                    match usize::try_from(a) {
                        Ok(a) if a < r && !seen[a] => {
                            seen[a] = true;
                            out.push(a);
                        }
                        _ => {
                            return Err(format!(
                                "attribute perm {p:?} is not a permutation of the {r} axes"
                            ))
                        }
                    }
                }
                if out.len() != r {
                    return Err(format!(
                        "attribute perm {p:?} is not a permutation of the {r} axes"
                    ));
                }
                out
            }
        };
        if r == 4 && perm == TO_NCHW && !self.has_nhwc(xn) {
            // an NHWC tensor made NCHW (as tf2onnx writes before a Conv): the operand is
            // the result's NHWC form, and no transpose is needed until one asks for NCHW
            let x = self.plain(xn)?;
            return self.bind_nhwc(out, x);
        }
        let y = if r == 4
            && self.has_nhwc(xn)
            && !matches!(self.val(xn)?, Val::Node { plain: Some(_), .. })
        {
            // one transpose of the NHWC node: plain axis a is NHWC axis NHWC_AXIS[a] (none
            // for a transpose to NHWC)
            let x = self.nhwc(xn)?;
            let p: Vec<usize> = perm.iter().map(|&a| NHWC_AXIS[a]).collect();
            if p == [0, 1, 2, 3] {
                x
            } else {
                self.transpose(x, &p)?
            }
        } else {
            let x = self.plain(xn)?;
            self.transpose(x, &perm)?
        };
        self.bind_plain(out, y)
    }

    fn concat(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["axis"])?;
        let out = Self::check_outputs(node, 1)?;
        if node.input.is_empty() || node.input.iter().any(String::is_empty) {
            return Err("expected one or more operands".into());
        }
        let ins: Vec<&str> = node.input.iter().map(String::as_str).collect();
        let Some(a) = attr_int(node, "axis")? else {
            return Err("attribute axis is missing".into());
        };
        let r = self.dims(ins[0])?.len();
        let ax = axis(a, r, "axis")?;
        // shape arithmetic: integer constants concatenate at import time
        let statics: Vec<Option<Static>> = ins
            .iter()
            .map(|n| match self.values.get(*n) {
                Some(Val::Static { t, .. }) if t.ints().is_some() && t.dims.len() == 1 => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect();
        if statics.iter().all(Option::is_some) {
            let mut v = Vec::new();
            for t in statics.into_iter().flatten() {
                v.extend_from_slice(t.ints().unwrap_or(&[]));
            }
            return self.bind(
                out,
                Val::Static {
                    t: Static {
                        dims: vec![v.len()],
                        data: StaticData::I64(v),
                    },
                    initializer: false,
                },
            );
        }
        let nhwc = r == 4 && ins.iter().all(|n| self.has_nhwc(n));
        let mut xs = Vec::new();
        for n in &ins {
            xs.push(if nhwc { self.nhwc(n)? } else { self.plain(n)? });
        }
        if nhwc {
            let y = self.add(
                Op::Concat {
                    axis: NHWC_AXIS[ax],
                },
                &xs,
            )?;
            self.bind_nhwc(out, y)
        } else {
            let y = self.add(Op::Concat { axis: ax }, &xs)?;
            self.bind_plain(out, y)
        }
    }

    fn slice(&mut self, node: &NodeProto) -> R<()> {
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let (starts, ends, axes, steps) = if self.opset < 10 {
            check_attrs(node, &["axes", "ends", "starts"])?;
            let get = |k: &str| -> R<Vec<i64>> {
                attr_ints(node, k)?.ok_or_else(|| format!("attribute {k} is missing"))
            };
            (get("starts")?, get("ends")?, attr_ints(node, "axes")?, None)
        } else {
            check_attrs(node, &[])?;
            let starts = self.static_ints(Self::input(node, 1)?, "starts")?;
            let ends = self.static_ints(Self::input(node, 2)?, "ends")?;
            let axes = match Self::opt_input(node, 3) {
                Some(n) => Some(self.static_ints(n, "axes")?),
                None => None,
            };
            let steps = match Self::opt_input(node, 4) {
                Some(n) => Some(self.static_ints(n, "steps")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if starts.len() != ends.len() || axes.len() != starts.len() {
            return Err(format!(
                "starts {starts:?}, ends {ends:?} and axes {axes:?} differ in length"
            ));
        }
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if steps.len() != starts.len() || steps.contains(&0) {
            return Err(format!(
                "steps {steps:?}: expected {} non-zero steps, one per axis",
                starts.len()
            ));
        }
        // per axis: a box (steps of 1), or the indices a gather picks (other steps)
        let mut begin = vec![0; d.len()];
        let mut end = d.clone();
        let mut picks: Vec<(usize, Vec<i64>)> = Vec::new();
        let mut seen = HashSet::new();
        for (((&s, &e), &a), &st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            let ax = axis(a, d.len(), "axis")?;
            if !seen.insert(ax) {
                return Err(format!("axis {a} is sliced twice"));
            }
            let n = d[ax] as i64;
            let wrap = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
            if st == 1 {
                begin[ax] = wrap(s).clamp(0, n) as usize;
                end[ax] = (wrap(e).clamp(0, n) as usize).max(begin[ax]);
                continue;
            }
            if d[ax] > MAX_POOL_FILTER {
                return Err(format!(
                    "axis {ax} of size {n} is too long for a slice with step {st} (at most {MAX_POOL_FILTER})"
                ));
            }
            // ONNX's clamping: [0, n] for positive steps, start in [0, n-1] and end in
            // [-1, n-1] for negative ones
            let (start, stop) = if st > 0 {
                (wrap(s).clamp(0, n), wrap(e).clamp(0, n))
            } else {
                (wrap(s).clamp(0, n - 1), wrap(e).clamp(-1, n - 1))
            };
            let mut idx = Vec::new();
            let mut i = start;
            while (st > 0 && i < stop) || (st < 0 && i > stop) {
                idx.push(i);
                match i.checked_add(st) {
                    Some(next) => i = next,
                    None => break,
                }
            }
            if idx.is_empty() {
                end[ax] = 0;
            } else {
                picks.push((ax, idx));
            }
        }
        if begin.iter().zip(&end).any(|(b, e)| b == e) {
            return Err(format!(
                "the slice of shape {d:?} (starts {starts:?}, ends {ends:?}, steps {steps:?}) is empty, which gradlift cannot hold"
            ));
        }
        if let Val::Static { t, .. } = self.val(xn)?.clone() {
            if let (Some(v), 1) = (t.ints(), d.len()) {
                let v: Vec<i64> = match picks.first() {
                    Some((_, idx)) => idx.iter().map(|&i| v[i as usize]).collect(),
                    None => v[begin[0]..end[0]].to_vec(),
                };
                return self.bind(
                    out,
                    Val::Static {
                        t: Static {
                            dims: vec![v.len()],
                            data: StaticData::I64(v),
                        },
                        initializer: false,
                    },
                );
            }
        }
        let x = self.plain(xn)?;
        let mut y = if begin.iter().all(|&b| b == 0) && end == d {
            x
        } else {
            self.add(Op::Slice { begin, end }, &[x])?
        };
        for (ax, idx) in picks {
            let len = idx.len();
            let i = self.leaf(
                Op::Const {
                    value: Literal::Dense(idx.iter().map(|&v| v as f64).collect()),
                },
                TensorType::i32(vec![len]),
            )?;
            y = self.add(Op::Gather { axis: ax }, &[y, i])?;
        }
        self.bind_plain(out, y)
    }

    /// The axes of a Squeeze, Unsqueeze or reduction: the attribute, or operand 1 from the
    /// opset where they became one.
    fn axes_operand(&self, node: &NodeProto, input_from: i64) -> R<Option<Vec<i64>>> {
        if self.opset >= input_from {
            match Self::opt_input(node, 1) {
                Some(n) => Ok(Some(self.static_ints(n, "the axes operand")?)),
                None => Ok(None),
            }
        } else {
            attr_ints(node, "axes")
        }
    }

    fn squeeze(&mut self, node: &NodeProto) -> R<()> {
        let out = Self::check_outputs(node, 1)?;
        if self.opset >= 13 {
            check_attrs(node, &[])?;
        } else {
            check_attrs(node, &["axes"])?;
        }
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let axes = self.axes_operand(node, 13)?;
        let dims = if node.op_type == "Squeeze" {
            match axes {
                None => d.iter().copied().filter(|&x| x != 1).collect(),
                Some(a) => {
                    let mut drop = HashSet::new();
                    for &x in &a {
                        let ax = axis(x, d.len(), "axis")?;
                        if d[ax] != 1 {
                            return Err(format!(
                                "axis {x} of shape {d:?} has size {}, not 1",
                                d[ax]
                            ));
                        }
                        drop.insert(ax);
                    }
                    d.iter()
                        .enumerate()
                        .filter(|(i, _)| !drop.contains(i))
                        .map(|(_, &x)| x)
                        .collect()
                }
            }
        } else {
            let Some(a) = axes else {
                return Err("the axes are missing".into());
            };
            let r = d.len() + a.len();
            let mut ones = HashSet::new();
            for &x in &a {
                if !ones.insert(axis(x, r, "axis")?) {
                    return Err(format!("axis {x} is given twice"));
                }
            }
            let mut it = d.iter();
            (0..r)
                .map(|i| {
                    if ones.contains(&i) {
                        1
                    } else {
                        it.next().copied().unwrap_or(1)
                    }
                })
                .collect()
        };
        self.reshape_to(out, xn, dims)
    }

    fn reduce(&mut self, node: &NodeProto) -> R<()> {
        let out = Self::check_outputs(node, 1)?;
        let from = if node.op_type == "ReduceSum" { 13 } else { 18 };
        if self.opset >= from {
            check_attrs(node, &["keepdims", "noop_with_empty_axes"])?;
        } else {
            check_attrs(node, &["axes", "keepdims"])?;
        }
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let keepdims = attr_int(node, "keepdims")?.unwrap_or(1) != 0;
        let noop = attr_int(node, "noop_with_empty_axes")?.unwrap_or(0) != 0;
        let axes = self.axes_operand(node, from)?.unwrap_or_default();
        let x = self.plain(xn)?;
        if axes.is_empty() && noop {
            return self.bind_plain(out, x);
        }
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..d.len()).collect()
        } else {
            axes.iter()
                .map(|&a| axis(a, d.len(), "axis"))
                .collect::<R<_>>()?
        };
        ax.sort_unstable();
        ax.dedup();
        let kind = match node.op_type.as_str() {
            "ReduceSum" => ReduceOp::Sum,
            "ReduceMax" | "ReduceMin" => ReduceOp::Max,
            _ => ReduceOp::Mean,
        };
        // the minimum is minus the maximum of minus x
        let min = node.op_type == "ReduceMin";
        let x = if min {
            self.add(Op::Unary(UnaryOp::Neg), &[x])?
        } else {
            x
        };
        let mut y = self.add(
            Op::Reduce {
                kind,
                axes: ax,
                keepdims,
            },
            &[x],
        )?;
        if min {
            y = self.add(Op::Unary(UnaryOp::Neg), &[y])?;
        }
        self.bind_plain(out, y)
    }

    fn softmax(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["axis"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let log = node.op_type == "LogSoftmax";
        let x = self.plain(xn)?;
        let make = |s: &mut Self, x: NodeId, axis: usize| {
            s.add(
                if log {
                    Op::LogSoftmax { axis }
                } else {
                    Op::Softmax { axis }
                },
                &[x],
            )
        };
        let y = if self.opset < 13 {
            // the input is seen as 2-D: axes before `axis`, then the rest
            let a = axis(attr_int(node, "axis")?.unwrap_or(1), d.len(), "axis")?;
            if a + 1 == d.len() {
                make(self, x, a)?
            } else {
                let flat = self.reshape(x, vec![prod(&d[..a]), prod(&d[a..])])?;
                let y = make(self, flat, 1)?;
                self.reshape(y, d.clone())?
            }
        } else {
            let a = axis(attr_int(node, "axis")?.unwrap_or(-1), d.len(), "axis")?;
            make(self, x, a)?
        };
        self.bind_plain(out, y)
    }

    /// Binds `out` to the value of `x`: the same node, or the same param for a float
    /// initializer (weights stay tied), or the same constant.
    fn alias(&mut self, out: &str, x: &str) -> R<()> {
        let v = match self.val(x)?.clone() {
            Val::Static {
                t:
                    Static {
                        data: StaticData::F32(_),
                        ..
                    },
                initializer: true,
            } => Val::Node {
                plain: Some(self.plain(x)?),
                nhwc: None,
            },
            v => v,
        };
        self.bind(out, v)
    }

    fn identity(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        let x = Self::input(node, 0)?;
        self.alias(out, x)
    }

    fn dropout(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["is_test", "ratio", "seed"])?;
        let out = Self::check_outputs(node, 1)?;
        if let Some(n) = Self::opt_input(node, 2) {
            let t = self.static_val(n, "training_mode")?;
            if t.f64s().iter().any(|&v| v != 0.0) {
                return Err(
                    "training_mode is true; only inference dropout (the identity) is supported"
                        .into(),
                );
            }
        }
        let x = Self::input(node, 0)?;
        self.alias(out, x)
    }

    fn constant(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "value",
                "value_float",
                "value_floats",
                "value_int",
                "value_ints",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        if node.attribute.len() != 1 {
            return Err(format!(
                "expected exactly one value attribute, found {}",
                node.attribute.len()
            ));
        }
        let t = if let Some(a) = attr_typed(node, "value", 4)? {
            let Some(t) = &a.t else {
                return Err("attribute value holds no tensor".into());
            };
            decode_tensor(t).map_err(|m| format!("attribute value: {m}"))?
        } else if let Some(f) = attr_float(node, "value_float")? {
            Static {
                dims: vec![],
                data: StaticData::F32(vec![f]),
            }
        } else if let Some(a) = attr_typed(node, "value_floats", 6)? {
            Static {
                dims: vec![a.floats.len()],
                data: StaticData::F32(a.floats.clone()),
            }
        } else if let Some(i) = attr_int(node, "value_int")? {
            Static {
                dims: vec![],
                data: StaticData::I64(vec![i]),
            }
        } else if let Some(v) = attr_ints(node, "value_ints")? {
            Static {
                dims: vec![v.len()],
                data: StaticData::I64(v),
            }
        } else {
            return Err("no value attribute".into());
        };
        self.bind(
            out,
            Val::Static {
                t,
                initializer: false,
            },
        )
    }

    fn shape(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["end", "start"])?;
        let out = Self::check_outputs(node, 1)?;
        let d = self.dims(Self::input(node, 0)?)?;
        let r = d.len() as i64;
        let bound = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
        let s = bound(attr_int(node, "start")?.unwrap_or(0));
        let e = bound(attr_int(node, "end")?.unwrap_or(r)).max(s);
        let v: Vec<i64> = d[s..e].iter().map(|&x| x as i64).collect();
        self.bind(
            out,
            Val::Static {
                t: Static {
                    dims: vec![v.len()],
                    data: StaticData::I64(v),
                },
                initializer: false,
            },
        )
    }

    fn gather(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["axis"])?;
        let out = Self::check_outputs(node, 1)?;
        let (xn, in_) = (Self::input(node, 0)?, Self::input(node, 1)?);
        let d = self.dims(xn)?;
        let ax = axis(attr_int(node, "axis")?.unwrap_or(0), d.len(), "axis")?;
        let n = d[ax] as i64;
        let idx = match self.val(in_)? {
            Val::Static { t, .. } => {
                let Some(v) = t.ints() else {
                    return Err(format!("indices {in_} must be integers, found FLOAT"));
                };
                let mut fixed = Vec::with_capacity(v.len());
                for &i in v {
                    if i < -n || i >= n {
                        return Err(format!(
                            "index {i} is out of range for axis {ax} of size {n}"
                        ));
                    }
                    fixed.push(if i < 0 { i + n } else { i });
                }
                Some(Static {
                    dims: t.dims.clone(),
                    data: StaticData::I64(fixed),
                })
            }
            Val::Node { .. } => None,
        };
        // shape arithmetic on integer constants
        if let (Some(i), Val::Static { t, .. }) = (&idx, self.val(xn)?.clone()) {
            if let (Some(v), 1) = (t.ints(), d.len()) {
                let picked: Vec<i64> = i
                    .ints()
                    .unwrap_or(&[])
                    .iter()
                    .map(|&k| v[k as usize])
                    .collect();
                return self.bind(
                    out,
                    Val::Static {
                        t: Static {
                            dims: i.dims.clone(),
                            data: StaticData::I64(picked),
                        },
                        initializer: false,
                    },
                );
            }
        }
        let x = self.plain(xn)?;
        let i = match idx {
            Some(t) => self.leaf(
                Op::Const {
                    value: Literal::Dense(t.f64s()),
                },
                TensorType::i32(t.dims),
            )?,
            None => self.plain(in_)?,
        };
        let y = self.add(Op::Gather { axis: ax }, &[x, i])?;
        self.bind_plain(out, y)
    }

    fn cast(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["saturate", "to"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let to = attr_int(node, "to")?.ok_or("attribute to is missing")?;
        let v = self.val(xn)?.clone();
        match (v, to) {
            (Val::Static { t, .. }, 7 | 6) => {
                let data = match t.data {
                    StaticData::I64(v) => v,
                    StaticData::F32(v) => v.iter().map(|&x| x as i64).collect(),
                };
                self.bind(
                    out,
                    Val::Static {
                        t: Static {
                            dims: t.dims,
                            data: StaticData::I64(data),
                        },
                        initializer: false,
                    },
                )
            }
            (_, 9) => {
                // a bool is an f32 mask: x != 0
                self.elementwise(out, &[xn], |s, xs| {
                    let zero = s.scalar(0.0)?;
                    s.add(Op::Compare(CmpOp::Ne), &[xs[0], zero])
                })
            }
            (_, 1) => {
                let x = self.plain(xn)?;
                if self.g[x].ty.dtype == DType::F32 {
                    // a float, or a bool (already an f32 mask)
                    self.alias(out, xn)
                } else {
                    let y = self.add(Op::Cast { to: DType::F32 }, &[x])?;
                    self.bind_plain(out, y)
                }
            }
            (_, to) => Err(format!(
                "a cast to {} of a computed value is not supported (only to FLOAT)",
                proto::data_type_name(to as i32)
            )),
        }
    }

    /// Activations composed of primitives (as `jax.nn` composes them), elementwise in the
    /// operand's layout.
    fn activation(&mut self, node: &NodeProto) -> R<()> {
        let op = node.op_type.as_str();
        let known: &[&str] = match op {
            "Elu" => &["alpha"],
            "HardSigmoid" => &["alpha", "beta"],
            "Gelu" => &["approximate"],
            _ => &[],
        };
        check_attrs(node, known)?;
        let out = Self::check_outputs(node, 1)?;
        let x = Self::input(node, 0)?;
        let alpha = attr_float(node, "alpha")?.map(f64::from);
        let beta = attr_float(node, "beta")?.map(f64::from);
        let approximate = attr_string(node, "approximate")?.unwrap_or_else(|| "none".into());
        if !matches!(approximate.as_str(), "none" | "tanh") {
            return Err(format!(
                "attribute approximate: {approximate:?} is not one of none, tanh"
            ));
        }
        use BinaryOp::{Add, Max, Min, Mul};
        self.elementwise(out, &[x], |s, xs| {
            let x = xs[0];
            let u = |s: &mut Self, op: UnaryOp, x: NodeId| s.add(Op::Unary(op), &[x]);
            match op {
                "Elu" => {
                    // alpha * expm1(min(x, 0)) where x <= 0: the other branch is fed a
                    // value that cannot overflow
                    let zero = s.scalar(0.0)?;
                    let neg = s.binary(Min, x, zero)?;
                    let e = u(s, UnaryOp::Expm1, neg)?;
                    let a = s.scalar(alpha.unwrap_or(1.0))?;
                    let ae = s.binary(Mul, e, a)?;
                    let mask = s.add(Op::Compare(CmpOp::Gt), &[x, zero])?;
                    s.add(Op::Select, &[mask, x, ae])
                }
                "Softplus" => {
                    // max(x, 0) + log1p(exp(-|x|)), which does not overflow
                    let zero = s.scalar(0.0)?;
                    let pos = s.binary(Max, x, zero)?;
                    let abs = u(s, UnaryOp::Abs, x)?;
                    let nabs = u(s, UnaryOp::Neg, abs)?;
                    let e = u(s, UnaryOp::Exp, nabs)?;
                    let l = u(s, UnaryOp::Log1p, e)?;
                    s.binary(Add, pos, l)
                }
                "Reciprocal" => {
                    let one = s.scalar(1.0)?;
                    s.binary(BinaryOp::Div, one, x)
                }
                "HardSigmoid" => {
                    let a = s.scalar(alpha.unwrap_or(0.2))?;
                    let b = s.scalar(beta.unwrap_or(0.5))?;
                    let ax = s.binary(Mul, x, a)?;
                    let y = s.binary(Add, ax, b)?;
                    let one = s.scalar(1.0)?;
                    let y = s.binary(Min, y, one)?;
                    let zero = s.scalar(0.0)?;
                    s.binary(Max, y, zero)
                }
                _ => {
                    // Gelu: x/2 * (1 + erf(x / sqrt 2)), or with tanh(sqrt(2/pi) (x + 0.044715 x^3))
                    let inner = if approximate == "tanh" {
                        let x2 = s.binary(Mul, x, x)?;
                        let x3 = s.binary(Mul, x2, x)?;
                        let c = s.scalar(0.044715)?;
                        let cx3 = s.binary(Mul, x3, c)?;
                        let sum = s.binary(Add, x, cx3)?;
                        let k = s.scalar((2.0 / std::f64::consts::PI).sqrt())?;
                        let ks = s.binary(Mul, sum, k)?;
                        u(s, UnaryOp::Tanh, ks)?
                    } else {
                        let r = s.scalar(std::f64::consts::FRAC_1_SQRT_2)?;
                        let xr = s.binary(Mul, x, r)?;
                        u(s, UnaryOp::Erf, xr)?
                    };
                    let one = s.scalar(1.0)?;
                    let p = s.binary(Add, inner, one)?;
                    let half = s.scalar(0.5)?;
                    let hx = s.binary(Mul, x, half)?;
                    s.binary(Mul, hx, p)
                }
            }
        })
    }

    /// Boolean ops on f32 masks (0 and 1): `not x = 1 - x`, `and = a * b`, `or = max(a, b)`,
    /// `where(c, x, y) = select(c, x, y)`.
    fn logic(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        let op = node.op_type.as_str();
        let arity = match op {
            "Not" => 1,
            "Where" => 3,
            _ => 2,
        };
        let ins: Vec<&str> = (0..arity).map(|i| Self::input(node, i)).collect::<R<_>>()?;
        self.elementwise(out, &ins, |s, xs| match op {
            "Not" => {
                let one = s.scalar(1.0)?;
                s.binary(BinaryOp::Sub, one, xs[0])
            }
            "And" => s.binary(BinaryOp::Mul, xs[0], xs[1]),
            "Or" => s.binary(BinaryOp::Max, xs[0], xs[1]),
            _ => s.add(Op::Select, xs),
        })
    }

    fn sum_mean(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        if node.input.is_empty() || node.input.iter().any(String::is_empty) {
            return Err("expected one or more operands".into());
        }
        let ins: Vec<&str> = node.input.iter().map(String::as_str).collect();
        let mean = node.op_type == "Mean";
        self.elementwise(out, &ins, |s, xs| {
            let mut acc = xs[0];
            for &x in &xs[1..] {
                acc = s.binary(BinaryOp::Add, acc, x)?;
            }
            if mean && xs.len() > 1 {
                let n = s.scalar(xs.len() as f64)?;
                acc = s.binary(BinaryOp::Div, acc, n)?;
            }
            Ok(acc)
        })
    }

    /// `x` padded along each `(axis, before, after)` with `value` (concatenations).
    fn pad_axes(&mut self, x: NodeId, pads: &[(usize, usize, usize)], value: f64) -> R<NodeId> {
        let mut y = x;
        for &(ax, before, after) in pads {
            if before == 0 && after == 0 {
                continue;
            }
            let d = self.dims_of(y);
            let mut parts = Vec::new();
            if before > 0 {
                let mut pd = d.clone();
                pd[ax] = before;
                parts.push(self.splat(pd, value)?);
            }
            parts.push(y);
            if after > 0 {
                let mut pd = d;
                pd[ax] = after;
                parts.push(self.splat(pd, value)?);
            }
            y = self.add(Op::Concat { axis: ax }, &parts)?;
        }
        Ok(y)
    }

    fn pad(&mut self, node: &NodeProto) -> R<()> {
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let (pads, value, axes) = if self.opset < 11 {
            check_attrs(node, &["mode", "pads", "value"])?;
            let pads = attr_ints(node, "pads")?.ok_or("attribute pads is missing")?;
            let value = attr_float(node, "value")?.map_or(0.0, f64::from);
            (pads, value, None)
        } else {
            check_attrs(node, &["mode"])?;
            let pads = self.static_ints(Self::input(node, 1)?, "the pads operand")?;
            let value = match Self::opt_input(node, 2) {
                None => 0.0,
                Some(n) => {
                    let t = self.static_val(n, "the constant_value operand")?;
                    match t.f64s()[..] {
                        [v] => v,
                        _ => {
                            return Err(format!(
                                "constant_value {n} must hold one value, found shape {:?}",
                                t.dims
                            ))
                        }
                    }
                }
            };
            let axes = match Self::opt_input(node, 3) {
                Some(n) => Some(self.static_ints(n, "the axes operand")?),
                None => None,
            };
            (pads, value, axes)
        };
        let mode = attr_string(node, "mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(format!(
                "attribute mode: {mode:?} is not supported (only constant padding)"
            ));
        }
        let axes: Vec<usize> = match axes {
            None => (0..d.len()).collect(),
            Some(a) => a
                .iter()
                .map(|&a| axis(a, d.len(), "axis"))
                .collect::<R<_>>()?,
        };
        if pads.len() != 2 * axes.len() {
            return Err(format!(
                "pads {pads:?} should hold {} values (before and after each of {} axes)",
                2 * axes.len(),
                axes.len()
            ));
        }
        let mut per_axis = Vec::new();
        let mut padded = d.clone();
        for (i, &ax) in axes.iter().enumerate() {
            let (b, a) = (pads[i], pads[i + axes.len()]);
            match (usize::try_from(b), usize::try_from(a)) {
                (Ok(b), Ok(a)) if b <= MAX_ELEMENTS && a <= MAX_ELEMENTS => {
                    padded[ax] += b + a;
                    per_axis.push((ax, b, a));
                }
                _ => {
                    return Err(format!(
                        "pads {pads:?}: negative pads (cropping) are not supported"
                    ))
                }
            }
        }
        if Shape(padded.clone())
            .checked_numel()
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(format!("the padded shape {padded:?} has too many elements"));
        }
        if d.len() == 4 && self.has_nhwc(xn) {
            let x = self.nhwc(xn)?;
            let p: Vec<_> = per_axis
                .iter()
                .map(|&(ax, b, a)| (NHWC_AXIS[ax], b, a))
                .collect();
            let y = self.pad_axes(x, &p, value)?;
            self.bind_nhwc(out, y)
        } else {
            let x = self.plain(xn)?;
            let y = self.pad_axes(x, &per_axis, value)?;
            self.bind_plain(out, y)
        }
    }

    fn expand(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &[])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let shape = self.static_ints(Self::input(node, 1)?, "the shape operand")?;
        let d = self.dims(xn)?;
        let r = d.len().max(shape.len());
        let mut dims = vec![0; r];
        for (i, slot) in dims.iter_mut().enumerate() {
            let a = (i + d.len()).checked_sub(r).map_or(1, |j| d[j]);
            let b = (i + shape.len()).checked_sub(r).map_or(1, |j| shape[j]);
            *slot = match (a, b) {
                (a, 1) => a,
                (1, b) if b > 0 && b as u64 <= MAX_ELEMENTS as u64 => b as usize,
                (a, b) if a as i64 == b => a,
                _ => {
                    return Err(format!(
                        "shape {shape:?} does not broadcast with the operand's {d:?}"
                    ))
                }
            };
        }
        if Shape(dims.clone())
            .checked_numel()
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(format!("the expanded shape {dims:?} has too many elements"));
        }
        if dims == d {
            return self.alias(out, xn);
        }
        let x = self.plain(xn)?;
        let y = self.add(Op::Broadcast { shape: Shape(dims) }, &[x])?;
        self.bind_plain(out, y)
    }

    fn split(&mut self, node: &NodeProto) -> R<()> {
        if self.opset >= 18 {
            check_attrs(node, &["axis", "num_outputs"])?;
        } else if self.opset >= 13 {
            check_attrs(node, &["axis"])?;
        } else {
            check_attrs(node, &["axis", "split"])?;
        }
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let ax = axis(attr_int(node, "axis")?.unwrap_or(0), d.len(), "axis")?;
        let k = node.output.len();
        if k == 0 {
            return Err("the node has no result".into());
        }
        let given = if self.opset >= 13 {
            match Self::opt_input(node, 1) {
                Some(n) => Some(self.static_ints(n, "the split operand")?),
                None => None,
            }
        } else {
            attr_ints(node, "split")?
        };
        let n = d[ax];
        let sizes: Vec<usize> = match given {
            Some(v) => {
                if v.len() != k || v.iter().any(|&x| x < 0 || x > n as i64) {
                    return Err(format!(
                        "split {v:?}: expected {k} sizes in 0..={n}, one per result"
                    ));
                }
                v.iter().map(|&x| x as usize).collect()
            }
            None => {
                if let Some(m) = attr_int(node, "num_outputs")? {
                    if m != k as i64 {
                        return Err(format!(
                            "attribute num_outputs is {m}, the node has {k} results"
                        ));
                    }
                }
                let chunk = n.div_ceil(k);
                if self.opset < 18 && n % k != 0 {
                    return Err(format!(
                        "axis {ax} of size {n} does not split into {k} equal parts"
                    ));
                }
                (0..k)
                    .map(|i| chunk.min(n.saturating_sub(i * chunk)))
                    .collect()
            }
        };
        if sizes.iter().sum::<usize>() != n {
            return Err(format!(
                "the sizes {sizes:?} do not add up to axis {ax}'s {n}"
            ));
        }
        let x = self.plain(xn)?;
        let mut start = 0;
        for (name, &size) in node.output.iter().zip(&sizes) {
            if size == 0 {
                return Err(format!(
                    "result {name} would be empty, which gradlift cannot hold"
                ));
            }
            let mut begin = vec![0; d.len()];
            let mut end = d.clone();
            begin[ax] = start;
            end[ax] = start + size;
            start += size;
            if name.is_empty() {
                continue;
            }
            let y = if size == n {
                x
            } else {
                self.add(Op::Slice { begin, end }, &[x])?
            };
            self.bind_plain(name, y)?;
        }
        Ok(())
    }

    /// Nearest-neighbour upsampling of the two spatial axes by integer factors (what
    /// U-Nets and feature pyramids use): each pixel repeated, as a reshape, a broadcast and
    /// a reshape in NHWC. For integer factors, the `asymmetric`, `half_pixel` and
    /// `pytorch_half_pixel` coordinates with either rounding pick the same pixels.
    fn resize(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(
            node,
            &[
                "antialias",
                "coordinate_transformation_mode",
                "cubic_coeff_a",
                "exclude_outside",
                "extrapolation_value",
                "keep_aspect_ratio_policy",
                "mode",
                "nearest_mode",
                "scales",
            ],
        )?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let [n, c, h, w] = self.dims4(xn)?;
        let mode = attr_string(node, "mode")?.unwrap_or_else(|| "nearest".into());
        if mode != "nearest" {
            return Err(format!(
                "attribute mode: {mode:?} is not supported (only nearest)"
            ));
        }
        let coords = attr_string(node, "coordinate_transformation_mode")?
            .unwrap_or_else(|| "half_pixel".into());
        if !matches!(
            coords.as_str(),
            "half_pixel" | "asymmetric" | "pytorch_half_pixel"
        ) {
            return Err(format!(
                "attribute coordinate_transformation_mode: {coords:?} is not supported (half_pixel, asymmetric or pytorch_half_pixel)"
            ));
        }
        if attr_int(node, "antialias")?.unwrap_or(0) != 0 {
            return Err("attribute antialias: 1 is not supported".into());
        }
        // the target size: scales (an attribute of Upsample before opset 9, else operand 1 of
        // Upsample or 2 of Resize) or sizes (operand 3 of Resize)
        let scales_at = if node.op_type == "Upsample" { 1 } else { 2 };
        let scales: Option<Vec<f64>> = match attr_typed(node, "scales", 6)? {
            Some(a) => Some(a.floats.iter().map(|&x| f64::from(x)).collect()),
            None => match Self::opt_input(node, scales_at) {
                Some(sn) => {
                    let t = self.static_val(sn, "the scales operand")?;
                    if t.f64s().is_empty() {
                        None
                    } else {
                        Some(t.f64s())
                    }
                }
                None => None,
            },
        };
        let dims = [n, c, h, w];
        let factors: Vec<f64> = match (scales, Self::opt_input(node, 3)) {
            (Some(sc), _) => sc,
            (None, Some(zn)) if node.op_type == "Resize" => {
                let sizes = self.static_ints(zn, "the sizes operand")?;
                sizes
                    .iter()
                    .zip(&dims)
                    .map(|(&z, &d)| z as f64 / d as f64)
                    .collect()
            }
            _ => return Err("neither scales nor sizes are given".into()),
        };
        let f: Vec<usize> = factors
            .iter()
            .map(|&x| {
                if x >= 1.0 && x.fract() == 0.0 && x <= 1024.0 {
                    Some(x as usize)
                } else {
                    None
                }
            })
            .collect::<Option<_>>()
            .filter(|f: &Vec<usize>| f.len() == 4 && f[0] == 1 && f[1] == 1)
            .ok_or_else(|| {
                format!(
                    "scales {factors:?} are not supported: only whole upsampling factors (at most 1024) of the two spatial axes"
                )
            })?;
        let (sh, sw) = (f[2], f[3]);
        if Shape(vec![n, h * sh, w * sw, c])
            .checked_numel()
            .is_none_or(|e| e > MAX_ELEMENTS)
        {
            return Err("the upsampled tensor has too many elements".into());
        }
        let x = self.nhwc(xn)?;
        let r = self.reshape(x, vec![n, h, 1, w, 1, c])?;
        let b = self.add(
            Op::Broadcast {
                shape: Shape(vec![n, h, sh, w, sw, c]),
            },
            &[r],
        )?;
        let y = self.reshape(b, vec![n, h * sh, w * sw, c])?;
        self.bind_nhwc(out, y)
    }

    fn layer_norm(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["axis", "epsilon", "stash_type"])?;
        let out = Self::check_outputs(node, 1)?;
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        let a = axis(attr_int(node, "axis")?.unwrap_or(-1), d.len(), "axis")?;
        let eps = f64::from(attr_float(node, "epsilon")?.unwrap_or(1e-5));
        let axes: Vec<usize> = (a..d.len()).collect();
        let x = self.plain(xn)?;
        let mean_of = |s: &mut Self, v: NodeId| {
            s.add(
                Op::Reduce {
                    kind: ReduceOp::Mean,
                    axes: axes.clone(),
                    keepdims: true,
                },
                &[v],
            )
        };
        // (x - mean) / sqrt(mean((x - mean)^2) + eps) * scale + bias over the axes from `axis`
        let mean = mean_of(self, x)?;
        let centered = self.binary(BinaryOp::Sub, x, mean)?;
        let sq = self.binary(BinaryOp::Mul, centered, centered)?;
        let var = mean_of(self, sq)?;
        let e = self.scalar(eps)?;
        let ve = self.binary(BinaryOp::Add, var, e)?;
        let sd = self.add(Op::Unary(UnaryOp::Sqrt), &[ve])?;
        let normed = self.binary(BinaryOp::Div, centered, sd)?;
        let scale = self.plain(Self::input(node, 1)?)?;
        let mut y = self.binary(BinaryOp::Mul, normed, scale)?;
        if let Some(bn) = Self::opt_input(node, 2) {
            let b = self.plain(bn)?;
            y = self.binary(BinaryOp::Add, y, b)?;
        }
        self.bind_plain(out, y)
    }

    fn batch_norm(&mut self, node: &NodeProto) -> R<()> {
        check_attrs(node, &["epsilon", "momentum", "training_mode", "spatial"])?;
        if attr_int(node, "training_mode")?.unwrap_or(0) != 0 {
            return Err("attribute training_mode: 1 is not supported (inference only)".into());
        }
        let out = Self::check_outputs(node, 1)?;
        let eps = f64::from(attr_float(node, "epsilon")?.unwrap_or(1e-5));
        let xn = Self::input(node, 0)?;
        let d = self.dims(xn)?;
        if d.len() < 2 {
            return Err(format!(
                "the input must have a channel axis, found shape {d:?}"
            ));
        }
        let c = d[1];
        let names: Vec<&str> = (1..5).map(|i| Self::input(node, i)).collect::<R<_>>()?;
        for n in &names {
            let pd = self.dims(n)?;
            if pd != [c] {
                return Err(format!("operand {n} must have shape [{c}], found {pd:?}"));
            }
        }
        // (x - mean) / sqrt(var + eps) * scale + bias, per channel; mean and var stay consts
        let nhwc = d.len() == 4 && self.has_nhwc(xn);
        let x = if nhwc {
            self.nhwc(xn)?
        } else {
            self.plain(xn)?
        };
        let per_channel = |s: &mut Self, n: &str, param: bool| -> R<NodeId> {
            let v = if param {
                s.plain(n)?
            } else {
                let t = s.static_val(n, "the running statistics")?.clone();
                s.leaf(
                    Op::Const {
                        value: Literal::Dense(t.f64s()),
                    },
                    TensorType::f32(vec![c]),
                )?
            };
            if nhwc {
                Ok(v)
            } else {
                let mut dims = vec![c];
                dims.extend(std::iter::repeat_n(1, d.len() - 2));
                s.reshape(v, dims)
            }
        };
        let scale = per_channel(self, names[0], true)?;
        let bias = per_channel(self, names[1], true)?;
        let mean = per_channel(self, names[2], false)?;
        let var = per_channel(self, names[3], false)?;
        let e = self.scalar(eps)?;
        let ve = self.binary(BinaryOp::Add, var, e)?;
        let sd = self.add(Op::Unary(UnaryOp::Sqrt), &[ve])?;
        let centered = self.binary(BinaryOp::Sub, x, mean)?;
        let normed = self.binary(BinaryOp::Div, centered, sd)?;
        let scaled = self.binary(BinaryOp::Mul, normed, scale)?;
        let y = self.binary(BinaryOp::Add, scaled, bias)?;
        if nhwc {
            self.bind_nhwc(out, y)
        } else {
            self.bind_plain(out, y)
        }
    }
}

/// The dims of a Reshape of `d` to `target` (`0` copies a dim unless `allow_zero`, `-1` is
/// inferred).
fn reshape_dims(d: &[usize], target: &[i64], allow_zero: bool) -> R<Vec<usize>> {
    let total = prod(d);
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allow_zero => match d.get(i) {
                Some(&x) => dims.push(x),
                None => {
                    return Err(format!(
                        "shape {target:?}: dim {i} copies an axis the input {d:?} lacks"
                    ))
                }
            },
            t if t >= 0 && t as u64 <= MAX_ELEMENTS as u64 => dims.push(t as usize),
            _ => return Err(format!("shape {target:?} is not a valid target shape")),
        }
    }
    let known = dims
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or_else(|| format!("shape {target:?} is too large"))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!(
                "cannot reshape {d:?} ({total} elements) to {target:?}"
            ));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {d:?} ({total} elements) to {target:?}"
        ));
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_gradlift_names() {
        assert_eq!(sanitize("fc1.weight"), "fc1.weight");
        assert_eq!(sanitize("/conv1/Conv_output_0"), "_conv1_Conv_output_0");
        assert_eq!(sanitize("onnx::Gemm_7"), "onnx__Gemm_7");
        assert_eq!(sanitize("0"), "_0");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("dense:0"), "dense_0");
        for s in ["a", "/x", "1.2", "é"] {
            assert!(is_valid_name(&sanitize(s)), "{s}");
        }
    }

    #[test]
    fn reshape_dims_follow_onnx() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false), Ok(vec![2, 12]));
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1], false), Ok(vec![24]));
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[4, 0, 2], false),
            Ok(vec![4, 3, 2])
        );
        assert!(reshape_dims(&[2, 3, 4], &[0, 5], true).is_err());
        assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
        assert!(reshape_dims(&[2, 3], &[0, 0, 0], false).is_err());
        assert!(reshape_dims(&[2, 3], &[-2, 3], false).is_err());
        assert!(reshape_dims(&[2, 3], &[i64::MAX, i64::MAX], false).is_err());
    }

    #[test]
    fn tensors_decode_from_raw_and_typed_fields() {
        let t = TensorProto {
            dims: vec![2],
            data_type: 1,
            raw_data: [1.5f32, -2.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            decode_tensor(&t).unwrap().data,
            StaticData::F32(vec![1.5, -2.0])
        );
        let t = TensorProto {
            dims: vec![],
            data_type: 7,
            int64_data: vec![-3],
            ..Default::default()
        };
        let s = decode_tensor(&t).unwrap();
        assert_eq!((s.dims, s.data), (vec![], StaticData::I64(vec![-3])));
        let t = TensorProto {
            dims: vec![3],
            data_type: 9,
            raw_data: vec![1, 0, 7],
            ..Default::default()
        };
        assert_eq!(
            decode_tensor(&t).unwrap().data,
            StaticData::F32(vec![1.0, 0.0, 1.0])
        );
        let t = TensorProto {
            dims: vec![1 << 40],
            data_type: 1,
            ..Default::default()
        };
        assert!(decode_tensor(&t).is_err());
    }
}
