//! Losses and metrics as graph nodes, with Keras' formulas and clipping (`epsilon = 1e-7`).
//!
//! When the model ends in a softmax (or sigmoid) and the loss is a softmax (or binary)
//! cross-entropy on probabilities, the loss is built from the logits in the fused, stable form
//! instead (`sparse_softmax_cross_entropy`, `softmax_cross_entropy`, or
//! `max(z,0) - z*y + log(1 + e^-|z|)`), exactly as Keras does for its own fused case.

use super::layers::Activation;
use crate::graph::{BuildError, NodeId};
use crate::op::{BinaryOp, CmpOp, Op, ReduceOp, UnaryOp};
use crate::optim::At;
use crate::shape::{DType, TensorType};

/// Keras' `epsilon()`: probabilities are clipped to `[EPSILON, 1 - EPSILON]` before a log.
pub const EPSILON: f64 = 1e-7;

/// A training loss; the batch loss is the mean of the per-example losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean of `(y - p)^2`. Targets: f32, shaped like the output.
    MeanSquaredError,
    /// Binary cross-entropy. Targets: f32 0/1, shaped like the output.
    BinaryCrossentropy {
        /// Whether the model outputs logits rather than probabilities.
        from_logits: bool,
    },
    /// Cross-entropy against one-hot (or probability) targets: f32 `[batch, classes]`.
    CategoricalCrossentropy {
        /// Whether the model outputs logits rather than probabilities.
        from_logits: bool,
    },
    /// Cross-entropy against integer class targets: i32 `[batch]`.
    SparseCategoricalCrossentropy {
        /// Whether the model outputs logits rather than probabilities.
        from_logits: bool,
    },
}

impl Loss {
    /// Parses a Keras loss name (`mse`, `mean_squared_error`, `binary_crossentropy`,
    /// `categorical_crossentropy`, `sparse_categorical_crossentropy`), on probabilities.
    pub fn from_name(s: &str) -> Option<Loss> {
        Some(match s {
            "mse" | "mean_squared_error" => Loss::MeanSquaredError,
            "binary_crossentropy" => Loss::BinaryCrossentropy { from_logits: false },
            "categorical_crossentropy" => Loss::CategoricalCrossentropy { from_logits: false },
            "sparse_categorical_crossentropy" => {
                Loss::SparseCategoricalCrossentropy { from_logits: false }
            }
            _ => return None,
        })
    }

    /// Keras' name of the loss.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::BinaryCrossentropy { .. } => "binary_crossentropy",
            Loss::CategoricalCrossentropy { .. } => "categorical_crossentropy",
            Loss::SparseCategoricalCrossentropy { .. } => "sparse_categorical_crossentropy",
        }
    }

    /// The type of the targets for a batch of outputs of type `out`: i32 `[batch]` for the
    /// sparse loss, else f32 shaped like the output.
    pub fn target_type(&self, out: &TensorType) -> TensorType {
        match self {
            Loss::SparseCategoricalCrossentropy { .. } => {
                TensorType::i32(out.shape.dims()[..1].to_vec())
            }
            _ => out.clone(),
        }
    }

    /// Appends the mean loss of the batch. `pred` is the model's output, `logits` the values
    /// before its final softmax/sigmoid (if it has one), `last` that activation.
    pub(crate) fn build(
        &self,
        at: &mut At<'_>,
        pred: NodeId,
        logits: Option<NodeId>,
        last: Option<Activation>,
        y: NodeId,
    ) -> Result<NodeId, BuildError> {
        let rank = at.ty(pred)?.shape.rank();
        if rank < 1 {
            return Err(at.err(format!(
                "{}: the output must have a batch axis",
                self.name()
            )));
        }
        let last_axis = rank - 1;
        let per_example = match *self {
            Loss::MeanSquaredError => {
                let d = at.sub(y, pred)?;
                let sq = at.mul(d, d)?;
                return at.mean_all(sq);
            }
            Loss::SparseCategoricalCrossentropy { from_logits } => {
                let z = match (from_logits, last, logits) {
                    (true, _, _) => pred,
                    (false, Some(Activation::Softmax), Some(z)) => z,
                    (false, _, _) => log_clipped(at, pred)?,
                };
                check_classes(at, self, z, 2)?;
                at.op(Op::SparseSoftmaxCrossEntropy, &[z, y])?
            }
            Loss::CategoricalCrossentropy { from_logits } => {
                let z = match (from_logits, last, logits) {
                    (true, _, _) => Some(pred),
                    (false, Some(Activation::Softmax), Some(z)) => Some(z),
                    (false, _, _) => None,
                };
                match z {
                    Some(z) => {
                        check_classes(at, self, z, 2)?;
                        at.op(Op::SoftmaxCrossEntropy, &[z, y])?
                    }
                    None => {
                        // Keras: p /= sum(p); p = clip(p); -sum(y * log p) over the last axis.
                        let s = reduce(at, ReduceOp::Sum, pred, last_axis, true)?;
                        let p = at.div(pred, s)?;
                        let lp = log_clipped(at, p)?;
                        let ylp = at.mul(y, lp)?;
                        let s = reduce(at, ReduceOp::Sum, ylp, last_axis, false)?;
                        at.unary(UnaryOp::Neg, s)?
                    }
                }
            }
            Loss::BinaryCrossentropy { from_logits } => {
                let z = match (from_logits, last, logits) {
                    (true, _, _) => Some(pred),
                    (false, Some(Activation::Sigmoid), Some(z)) => Some(z),
                    (false, _, _) => None,
                };
                let e = match z {
                    // max(z, 0) - z*y + log1p(exp(-|z|)): stable for any |z|, and exact
                    // where exp(-|z|) is below f32's epsilon
                    Some(z) => {
                        let zero = at.scalar(0.0)?;
                        let relu = at.bin(BinaryOp::Max, z, zero)?;
                        let zy = at.mul(z, y)?;
                        let a = at.sub(relu, zy)?;
                        let abs = at.unary(UnaryOp::Abs, z)?;
                        let neg = at.unary(UnaryOp::Neg, abs)?;
                        let ex = at.unary(UnaryOp::Exp, neg)?;
                        let l = at.unary(UnaryOp::Log1p, ex)?;
                        at.add(a, l)?
                    }
                    // -(y log p + (1 - y) log(1 - p)) with p clipped
                    None => {
                        let p = clip(at, pred)?;
                        let lp = at.unary(UnaryOp::Log, p)?;
                        let one = at.scalar(1.0)?;
                        let q = at.sub(one, p)?;
                        let lq = at.unary(UnaryOp::Log, q)?;
                        let oy = at.sub(one, y)?;
                        let a = at.mul(y, lp)?;
                        let b = at.mul(oy, lq)?;
                        let s = at.add(a, b)?;
                        at.unary(UnaryOp::Neg, s)?
                    }
                };
                return at.mean_all(e);
            }
        };
        at.mean_all(per_example)
    }
}

fn check_classes(at: &At<'_>, loss: &Loss, z: NodeId, rank: usize) -> Result<(), BuildError> {
    let t = at.ty(z)?;
    if t.shape.rank() != rank {
        return Err(at.err(format!(
            "{} expects model outputs [batch, classes], found {t}",
            loss.name()
        )));
    }
    Ok(())
}

fn reduce(
    at: &mut At<'_>,
    kind: ReduceOp,
    x: NodeId,
    axis: usize,
    keepdims: bool,
) -> Result<NodeId, BuildError> {
    at.op(
        Op::Reduce {
            kind,
            axes: vec![axis],
            keepdims,
        },
        &[x],
    )
}

/// `clip(p, eps, 1 - eps)`.
fn clip(at: &mut At<'_>, p: NodeId) -> Result<NodeId, BuildError> {
    let lo = at.scalar(EPSILON)?;
    let hi = at.scalar(1.0 - EPSILON)?;
    let a = at.bin(BinaryOp::Max, p, lo)?;
    at.bin(BinaryOp::Min, a, hi)
}

/// `log(clip(p, eps, 1 - eps))`.
fn log_clipped(at: &mut At<'_>, p: NodeId) -> Result<NodeId, BuildError> {
    let c = clip(at, p)?;
    at.unary(UnaryOp::Log, c)
}

/// A metric reported by training and evaluation (an output of the graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Fraction of correct predictions, chosen by the loss as Keras does: argmax against the
    /// class (sparse), argmax against argmax (categorical), `p > 0.5` against the 0/1 target
    /// (binary).
    Accuracy,
    /// Mean absolute error.
    MeanAbsoluteError,
    /// Mean squared error.
    MeanSquaredError,
}

impl Metric {
    /// The output name (`accuracy`, `mae`, `mse`).
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MeanAbsoluteError => "mae",
            Metric::MeanSquaredError => "mse",
        }
    }

    /// Parses a Keras metric name.
    pub fn from_name(s: &str) -> Option<Metric> {
        Some(match s {
            "accuracy" | "acc" => Metric::Accuracy,
            "mae" | "mean_absolute_error" => Metric::MeanAbsoluteError,
            "mse" | "mean_squared_error" => Metric::MeanSquaredError,
            _ => return None,
        })
    }

    /// Appends the metric of the batch (a scalar). `logits` (before a final softmax or sigmoid)
    /// give the same argmax and the same `> 0.5` decision as `pred` and spare an activation.
    pub(crate) fn build(
        &self,
        at: &mut At<'_>,
        loss: &Loss,
        pred: NodeId,
        logits: Option<NodeId>,
        last: Option<Activation>,
        y: NodeId,
    ) -> Result<NodeId, BuildError> {
        let rank = at.ty(pred)?.shape.rank();
        // what the class accuracies take the argmax of: the logits before a final softmax
        let class_scores = match (last, logits) {
            (Some(Activation::Softmax), Some(z)) => z,
            _ => pred,
        };
        let hits = match (self, loss) {
            (Metric::MeanAbsoluteError, _) | (Metric::MeanSquaredError, _) => {
                if at.ty(y)?.dtype != DType::F32 {
                    return Err(at.err(format!(
                        "metric {} needs f32 targets shaped like the output, but the loss {} uses class indices",
                        self.name(),
                        loss.name()
                    )));
                }
                let d = at.sub(pred, y)?;
                let e = match self {
                    Metric::MeanAbsoluteError => at.unary(UnaryOp::Abs, d)?,
                    _ => at.mul(d, d)?,
                };
                return at.mean_all(e);
            }
            (Metric::Accuracy, Loss::SparseCategoricalCrossentropy { .. }) => {
                let am = at.op(Op::Argmax { axis: rank - 1 }, &[class_scores])?;
                at.op(Op::Compare(CmpOp::Eq), &[am, y])?
            }
            (Metric::Accuracy, Loss::CategoricalCrossentropy { .. }) => {
                let a = at.op(Op::Argmax { axis: rank - 1 }, &[class_scores])?;
                let b = at.op(Op::Argmax { axis: rank - 1 }, &[y])?;
                at.op(Op::Compare(CmpOp::Eq), &[a, b])?
            }
            (Metric::Accuracy, Loss::BinaryCrossentropy { from_logits }) => {
                // p > 0.5, or z > 0 on logits.
                let (src, threshold) = match (from_logits, last, logits) {
                    (true, _, _) => (pred, 0.0),
                    (false, Some(Activation::Sigmoid), Some(z)) => (z, 0.0),
                    _ => (pred, 0.5),
                };
                let t = at.scalar(threshold)?;
                let decided = at.op(Op::Compare(CmpOp::Gt), &[src, t])?;
                at.op(Op::Compare(CmpOp::Eq), &[decided, y])?
            }
            (Metric::Accuracy, Loss::MeanSquaredError) => return Err(at.err(
                "metric accuracy is not defined for the loss mean_squared_error (use mae or mse)"
                    .to_string(),
            )),
        };
        at.mean_all(hits)
    }
}
