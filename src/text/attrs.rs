//! The text format's attribute tables: how an op's attributes and an initializer's arguments
//! are written (`key=value`) and read back.
//!
//! In: an [`Op`] or [`Init`] (to print) or a name with its parsed `key=value` pairs (to
//! build). Out: the sorted pairs ([`Op::attrs`], [`Init::args`]) or the op or initializer
//! ([`Op::from_attrs`], [`Init::from_args`]). The printer and the parser are generic over ops:
//! which keys an op has comes from [`OpKind::attr_keys`], which value each key holds from the
//! one match arm per op here. The same for initializers.

use crate::op::{Init, Op, OpKind, Padding, MAX_ELEMENTS};
use crate::shape::{DType, Shape};
use std::fmt;

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
            Init::Orthogonal { .. } => "orthogonal",
            Init::UnitForgetBias { .. } => "unit_forget_bias",
        }
    }

    /// The argument keys of the initializer called `name` (sorted), or `None` if unknown.
    pub fn arg_names(name: &str) -> Option<&'static [&'static str]> {
        Some(match name {
            "zeros" | "ones" => &[],
            "constant" => &["value"],
            "uniform" => &["high", "low", "seed"],
            "normal" => &["mean", "seed", "stddev"],
            "glorot_uniform" | "he_normal" | "orthogonal" => &["seed"],
            "unit_forget_bias" => &["units"],
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
            Init::GlorotUniform { seed: s }
            | Init::HeNormal { seed: s }
            | Init::Orthogonal { seed: s } => {
                vec![("seed", seed(s))]
            }
            Init::UnitForgetBias { units } => vec![("units", AttrValue::Int(units as i128))],
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
            "orthogonal" => Init::Orthogonal {
                seed: r.u64("seed")?,
            },
            "unit_forget_bias" => Init::UnitForgetBias {
                units: r.usize("units")?,
            },
            _ => return Err(AttrError::UnknownName),
        })
    }
}

impl Op {
    /// The attribute keys of the non-leaf op called `name` (sorted), or `None` if `name` is not
    /// a non-leaf op. Leaf ops (`input`, `param`, `state`, `const`) have no `key=value`
    /// attributes: their initializer or literal has its own syntax (see [`OpKind::attr_keys`]).
    pub fn attr_names(name: &str) -> Option<&'static [&'static str]> {
        OpKind::from_name(name)?.attr_keys()
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
            | Op::Concat { axis }
            | Op::Gather { axis } => vec![("axis", int(*axis))],
            Op::ScatterAdd { axis, shape } => {
                vec![("axis", int(*axis)), ("shape", ints(&shape.0))]
            }
            Op::AllReduce { mean } => {
                vec![("reduce", ident(if *mean { "mean" } else { "sum" }))]
            }
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
            Op::FusedResult { index } | Op::ScanResult { index } => vec![("index", int(*index))],
            // the body is a nested block; the operand split and direction are attributes
            Op::Scan(body) => vec![
                ("axis", int(body.axis)),
                ("carries", int(body.carries)),
                ("reverse", AttrValue::Ident(body.reverse.to_string())),
                ("sequences", int(body.sequences)),
            ],
        }
    }

    /// The attributes of a `scan` (its body is a nested block the parser reads):
    /// `(axis, carries, sequences, reverse)`.
    pub(crate) fn scan_attrs(
        attrs: &[(String, AttrValue)],
    ) -> Result<(usize, usize, usize, bool), AttrError> {
        let r = AttrReader::new(attrs, &["axis", "carries", "reverse", "sequences"])?;
        Ok((
            r.usize("axis")?,
            r.usize("carries")?,
            r.usize("sequences")?,
            r.bool("reverse")?,
        ))
    }

    /// Builds the non-leaf op called `name` from its attributes (the inverse of [`Op::name`]
    /// and [`Op::attrs`]). Integers must lie in `0..=`[`MAX_DIM`].
    pub fn from_attrs(name: &str, attrs: &[(String, AttrValue)]) -> Result<Op, AttrError> {
        let kind = OpKind::from_name(name).ok_or(AttrError::UnknownName)?;
        let keys = kind.attr_keys().ok_or(AttrError::UnknownName)?;
        let r = AttrReader::new(attrs, keys)?;
        if let Some(u) = kind.unary() {
            return Ok(Op::Unary(u));
        }
        if let Some(b) = kind.binary() {
            return Ok(Op::Binary(b));
        }
        if let Some(c) = kind.compare() {
            return Ok(Op::Compare(c));
        }
        if let Some(kind) = kind.reduce() {
            return Ok(Op::Reduce {
                kind,
                axes: r.list("axes")?,
                keepdims: r.bool("keepdims")?,
            });
        }
        use OpKind as K;
        Ok(match kind {
            K::Select => Op::Select,
            K::Matmul => Op::Matmul,
            K::SoftmaxCrossEntropy => Op::SoftmaxCrossEntropy,
            K::SparseSoftmaxCrossEntropy => Op::SparseSoftmaxCrossEntropy,
            K::Cast => Op::Cast { to: r.dtype("to")? },
            K::Argmax => Op::Argmax {
                axis: r.usize("axis")?,
            },
            K::Softmax => Op::Softmax {
                axis: r.usize("axis")?,
            },
            K::LogSoftmax => Op::LogSoftmax {
                axis: r.usize("axis")?,
            },
            K::Concat => Op::Concat {
                axis: r.usize("axis")?,
            },
            K::AllReduce => Op::AllReduce {
                mean: r.ident("reduce", &["sum", "mean"])? == "mean",
            },
            K::Gather => Op::Gather {
                axis: r.usize("axis")?,
            },
            K::ScatterAdd => Op::ScatterAdd {
                axis: r.usize("axis")?,
                shape: r.shape("shape")?,
            },
            K::Reshape => Op::Reshape {
                shape: r.shape("shape")?,
            },
            K::Broadcast => Op::Broadcast {
                shape: r.shape("shape")?,
            },
            K::Transpose => Op::Transpose {
                perm: r.list("perm")?,
            },
            K::Conv2d => Op::Conv2d {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
            },
            K::Conv2dInputGrad => Op::Conv2dInputGrad {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
                shape: r.shape("shape")?,
            },
            K::Conv2dFilterGrad => Op::Conv2dFilterGrad {
                stride: r.pair("stride")?,
                padding: r.padding("padding")?,
                kernel: r.pair("kernel")?,
            },
            K::MaxPool2d => Op::MaxPool2d {
                window: r.pair("window")?,
                stride: r.pair("stride")?,
            },
            K::MaxPool2dGrad => Op::MaxPool2dGrad {
                window: r.pair("window")?,
                stride: r.pair("stride")?,
            },
            K::OneHot => Op::OneHot {
                depth: r.usize("depth")?,
            },
            K::FusedResult => Op::FusedResult {
                index: r.usize("index")?,
            },
            K::ScanResult => Op::ScanResult {
                index: r.usize("index")?,
            },
            K::Slice => Op::Slice {
                begin: r.list("begin")?,
                end: r.list("end")?,
            },
            // the kinds read above, and those without `key=value` attributes (`attr_keys` is
            // `None`, so they returned before)
            K::Input | K::Param | K::State | K::Const | K::Fused | K::Scan => {
                return Err(AttrError::UnknownName)
            }
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
            | K::Cos
            | K::Add
            | K::Sub
            | K::Mul
            | K::Div
            | K::Max
            | K::Min
            | K::Pow
            | K::Eq
            | K::Ne
            | K::Lt
            | K::Le
            | K::Gt
            | K::Ge
            | K::ReduceSum
            | K::ReduceMean
            | K::ReduceMax => return Err(AttrError::UnknownName),
        })
    }
}
