//! NaN and infinity localisation (`check_numerics`): which node of a training step first
//! produced a value that is not finite, in which step, from which operand values.
//!
//! The compiled step itself is never changed, so checked and unchecked training compute the
//! same bits. Two levels:
//!
//! - **Always** ([`crate::step::CompiledStep::run_checked`], used by `gradlift train` and
//!   [`crate::nn::Model::fit`]): after each step its outputs (the loss and the metrics, a few
//!   scalars) are scanned; the first non-finite one stops training with a [`NonFiniteError`]
//!   whose `located` is [`Located::NotChecked`] (Keras' `TerminateOnNaN`).
//! - **With the check** ([`crate::step::StepOptions::check_numerics`], `gradlift train
//!   --check-numerics`, [`crate::nn::CompileOptions::check_numerics`]): a [`NumericsCheck`]
//!   also copies the params and optimizer state before every step and scans the outputs and
//!   the updated params and state after it, so a step whose loss is still finite but whose
//!   update is not is caught too. At the first step with a non-finite result it replays that
//!   step (the same inputs, the params and state from before the update) on the reference
//!   interpreter, over the unsplit training-step graph before the pass pipeline, node by node
//!   in canonical order (the forward nodes, then the gradient, then the optimizer) and stops at
//!   the first node with a NaN or infinite element ([`first_non_finite`], built on
//!   [`crate::interp::eval_until`]). The report ([`NodeReport`]) names that node: op, label,
//!   source location (the `.ir` line, or the Rust call that built it), the forward node it is
//!   a gradient of, the param it is the new value of, and the range and NaN/Inf counts of its
//!   value and of each operand, as `jax_debug_nans` and TensorFlow's `check_numerics` do.
//!
//! The replay runs in f32 like the compiled code, but the compiled step sums in other orders
//! (GEMM blocking, shards), flushes denormals to zero and computes `exp` and `log` with
//! polynomials, so at the edge of the f32 range the two can disagree; the report then says
//! that the replay found every value finite ([`Located::AllFinite`]).

use crate::graph::{Graph, NodeId, SourceLoc};
use crate::interp::{eval_until, Array, EvalError, Float};
use crate::op::Op;
use crate::runtime::{HostTensor, TensorData};
use crate::shape::{DType, TensorType};
use std::collections::HashMap;
use std::fmt;

/// Whether every element of `v` is finite (neither NaN nor infinite). Vectorized: a value is
/// not finite when its bits without the sign, as an integer, exceed those of `f32::MAX` (one
/// SSE2 compare per 4 elements); stops after the first block of 1024 elements holding a
/// non-finite one.
pub fn all_finite(v: &[f32]) -> bool {
    const MAX_FINITE: i32 = 0x7f7f_ffff;
    v.chunks(1024).all(|c| {
        c.iter().fold(0u32, |any, x| {
            any | u32::from((x.to_bits() & 0x7fff_ffff) as i32 > MAX_FINITE)
        }) == 0
    })
}

/// Whether every element of `t` is finite (i32 tensors always are).
pub fn tensor_finite(t: &HostTensor) -> bool {
    match &t.data {
        TensorData::F32(v) => all_finite(v),
        TensorData::I32(_) => true,
    }
}

/// The range of a tensor's finite elements and the count of each non-finite kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ValueStats {
    /// Elements.
    pub count: usize,
    /// NaN elements.
    pub nan: usize,
    /// `+inf` elements.
    pub pos_inf: usize,
    /// `-inf` elements.
    pub neg_inf: usize,
    /// The smallest finite element (`None` when no element is finite).
    pub min: Option<f64>,
    /// The largest finite element.
    pub max: Option<f64>,
}

impl ValueStats {
    /// The statistics of `v`.
    pub fn of<T: Float>(v: &[T]) -> ValueStats {
        let mut s = ValueStats {
            count: v.len(),
            ..ValueStats::default()
        };
        for x in v.iter().map(|x| x.to_f64()) {
            if x.is_nan() {
                s.nan += 1;
            } else if x == f64::INFINITY {
                s.pos_inf += 1;
            } else if x == f64::NEG_INFINITY {
                s.neg_inf += 1;
            } else {
                s.min = Some(s.min.map_or(x, |m| m.min(x)));
                s.max = Some(s.max.map_or(x, |m| m.max(x)));
            }
        }
        s
    }

    /// The statistics of a host tensor's elements.
    pub fn of_tensor(t: &HostTensor) -> ValueStats {
        match &t.data {
            TensorData::F32(v) => ValueStats::of(v),
            TensorData::I32(v) => {
                let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                ValueStats::of(&f)
            }
        }
    }

    /// Elements that are NaN or infinite.
    pub fn non_finite(&self) -> usize {
        self.nan + self.pos_inf + self.neg_inf
    }

    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        self.non_finite() == 0
    }
}

/// `min -3.5 max 2, 4 NaN, 1 +Inf (640 values)`; a single element prints as its value.
impl fmt::Display for ValueStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |v: f64| {
            let (x, a) = (v as f32, v.abs());
            if a != 0.0 && !(1e-4..1e6).contains(&a) {
                format!("{x:e}")
            } else {
                format!("{x}")
            }
        };
        if self.count == 1 {
            return match (self.nan, self.pos_inf, self.neg_inf, self.min) {
                (1, _, _, _) => f.write_str("NaN"),
                (_, 1, _, _) => f.write_str("+Inf"),
                (_, _, 1, _) => f.write_str("-Inf"),
                (_, _, _, Some(v)) => f.write_str(&num(v)),
                _ => f.write_str("?"),
            };
        }
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => write!(f, "min {} max {}", num(lo), num(hi))?,
            _ => f.write_str("no finite element")?,
        }
        for (n, what) in [
            (self.nan, "NaN"),
            (self.pos_inf, "+Inf"),
            (self.neg_inf, "-Inf"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        write!(f, " ({} values)", self.count)
    }
}

/// Which part of the training step a node belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum StepPart {
    /// An input, param or state: it was fed a non-finite value.
    Leaf,
    /// A node of the model as written (the forward graph).
    Forward,
    /// A node of the gradient computation of a forward node.
    Gradient {
        /// The forward node's label (`%logits`, `%7`).
        of: String,
        /// The forward node's op.
        op: String,
        /// The forward node's source location.
        loc: Option<SourceLoc>,
    },
    /// A node added by the optimizer or by gradient clipping.
    Optimizer {
        /// The param or state this node's value is written into, if it is an update value.
        updates: Option<String>,
    },
}

/// One operand of the reported node.
#[derive(Clone, Debug, PartialEq)]
pub struct OperandReport {
    /// Its label (`%x`, `%7`).
    pub label: String,
    /// Its op.
    pub op: String,
    /// Its type.
    pub ty: TensorType,
    /// Its value's range and non-finite counts.
    pub value: ValueStats,
}

/// The first node of a step whose value is not finite.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReport {
    /// Its label: as in the model's text for a forward node (`%logp`, `%7`), else as in the
    /// printed training step.
    pub label: String,
    /// Its op.
    pub op: String,
    /// Its type.
    pub ty: TensorType,
    /// The node as a line of IR text (operands and attributes, with its `grad(...)` mark).
    pub line: String,
    /// Where it was made: the `.ir` line of a parsed model, the Rust call that added the layer
    /// of an `nn` model; a gradient node has its forward node's location.
    pub loc: Option<SourceLoc>,
    /// Forward, gradient, optimizer or leaf.
    pub part: StepPart,
    /// Its value's range and non-finite counts.
    pub value: ValueStats,
    /// Each operand, in operand order.
    pub operands: Vec<OperandReport>,
}

/// What the replay of a step with non-finite results found.
#[derive(Clone, Debug, PartialEq)]
pub enum Located {
    /// No replay: the step was compiled without `check_numerics`.
    NotChecked,
    /// The first node whose value is not finite.
    Node(Box<NodeReport>),
    /// The replay computed every value finite (see the module documentation).
    AllFinite,
    /// The replay could not run.
    Failed(String),
}

/// A training step produced a NaN or infinite value: which step, which of its results, and
/// (with `check_numerics`) the first node that computed one.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFiniteError {
    /// The step (1 is the first step of training, counted across resumed runs).
    pub step: u64,
    /// The step's non-finite results, as `output loss`, `param dense.kernel`,
    /// `state dense.kernel.m`, with their values' statistics.
    pub results: Vec<(String, ValueStats)>,
    /// What the replay found.
    pub located: Located,
}

impl NonFiniteError {
    /// The first non-finite node, when the replay found one.
    pub fn node(&self) -> Option<&NodeReport> {
        match &self.located {
            Located::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the step was compiled with `check_numerics` (a replay was attempted).
    pub fn checked(&self) -> bool {
        !matches!(self.located, Located::NotChecked)
    }
}

impl std::error::Error for NonFiniteError {}

impl fmt::Display for NonFiniteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Results listed; the rest are counted.
        const SHOWN: usize = 8;
        write!(f, "step {}: ", self.step)?;
        for (i, (what, s)) in self.results.iter().take(SHOWN).enumerate() {
            let sep = if i == 0 { "" } else { "\n  " };
            if s.count == 1 {
                write!(f, "{sep}{what} is {s}")?;
            } else {
                write!(f, "{sep}{what}: {s}")?;
            }
        }
        if self.results.len() > SHOWN {
            write!(f, "\n  and {} more", self.results.len() - SHOWN)?;
        }
        let replay = format!(
            "the replay of step {} on the reference interpreter (same inputs, params and state from before the update)",
            self.step
        );
        match &self.located {
            Located::NotChecked => Ok(()),
            Located::AllFinite => write!(
                f,
                "\n{replay} computes every value finite: the compiled step rounds differently (summation order, flushed denormals, polynomial exp/log) at the edge of the f32 range"
            ),
            Located::Failed(e) => write!(f, "\n{replay} failed: {e}"),
            Located::Node(n) => {
                let at = n.loc.as_ref().map(|l| format!("{l}: ")).unwrap_or_default();
                let kind = match &n.part {
                    StepPart::Leaf => "the value fed to",
                    StepPart::Forward => "node",
                    StepPart::Gradient { .. } => "gradient node",
                    StepPart::Optimizer { .. } => "optimizer node",
                };
                write!(
                    f,
                    "\n{at}first non-finite value of step {}: {kind} {} ({})\n  {}",
                    self.step, n.label, n.op, n.line
                )?;
                match &n.part {
                    StepPart::Gradient { of, op, loc } => {
                        let at = match loc {
                            Some(l) if Some(l) != n.loc.as_ref() => format!(" at {l}"),
                            _ => String::new(),
                        };
                        write!(f, "\n  part of the gradient of {of} ({op}){at}")?;
                    }
                    StepPart::Optimizer {
                        updates: Some(target),
                    } => write!(f, "\n  the optimizer's new value of {target}")?,
                    _ => {}
                }
                write!(f, "\n  value: {}", n.value)?;
                for (i, o) in n.operands.iter().enumerate() {
                    write!(
                        f,
                        "\n  operand {i}: {} ({}, {}): {}",
                        o.label, o.op, o.ty, o.value
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Scans a step's outputs; the error (with [`Located::NotChecked`]) names every non-finite one.
/// Allocates nothing when all are finite.
pub fn check_outputs(step: u64, outputs: &[(String, HostTensor)]) -> Result<(), NonFiniteError> {
    if outputs.iter().all(|(_, t)| tensor_finite(t)) {
        return Ok(());
    }
    Err(NonFiniteError {
        step,
        results: non_finite("output", outputs),
        located: Located::NotChecked,
    })
}

/// `(KIND NAME, stats)` of every non-finite tensor of `list`.
fn non_finite(kind: &str, list: &[(String, HostTensor)]) -> Vec<(String, ValueStats)> {
    list.iter()
        .filter(|(_, t)| !tensor_finite(t))
        .map(|(n, t)| (format!("{kind} {n}"), ValueStats::of_tensor(t)))
        .collect()
}

/// Evaluates `g` (a training step before the pass pipeline) on the reference interpreter with
/// `feeds` (every input, and the params and state) and reports its first f32 node, in
/// canonical order, with a NaN or infinite element; `None` if every value is finite.
/// `forward` is the model the step was built from: its nodes are labelled as in it (a parsed
/// model's `%7` keeps its number) and are reported as [`StepPart::Forward`].
pub fn first_non_finite(
    g: &Graph,
    forward: &Graph,
    feeds: &HashMap<NodeId, Array<f32>>,
) -> Result<Option<NodeReport>, EvalError> {
    let (values, hit) = eval_until(g, feeds, |id, a| {
        g[id].ty.dtype == DType::F32 && !all_finite(&a.data)
    })?;
    let Some(id) = hit else {
        return Ok(None);
    };
    let step_labels = crate::text::node_labels(g);
    let forward_labels = crate::text::node_labels(forward);
    let in_forward = |id: NodeId| {
        forward.get(id).is_some_and(|n| {
            let m = &g[id];
            n.op == m.op && n.name == m.name && n.ty == m.ty
        })
    };
    let label = |id: NodeId| -> String {
        let labels = if in_forward(id) {
            &forward_labels
        } else {
            &step_labels
        };
        labels
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("%<node index {}>", id.index()))
    };
    let n = &g[id];
    let operands = g.operands(id);
    let part =
        if operands.is_empty() && matches!(n.op, Op::Input | Op::Param { .. } | Op::State { .. }) {
            StepPart::Leaf
        } else if in_forward(id) {
            StepPart::Forward
        } else if let Some(of) = n.grad_of.filter(|&f| g.contains(f)) {
            StepPart::Gradient {
                of: label(of),
                op: g[of].op.name().to_string(),
                loc: g[of].loc.clone(),
            }
        } else {
            StepPart::Optimizer {
                updates: g
                    .updates()
                    .iter()
                    .find(|u| u.value == id)
                    .map(|u| label(u.target)),
            }
        };
    let stats = |id: NodeId| {
        values
            .get(id)
            .map(|a| ValueStats::of(&a.data))
            .unwrap_or_default()
    };
    Ok(Some(NodeReport {
        label: label(id),
        op: n.op.name().to_string(),
        ty: n.ty.clone(),
        line: crate::text::print_node_labelled(g, id, &label),
        loc: n.loc.clone(),
        part,
        value: stats(id),
        operands: operands
            .iter()
            .map(|&o| OperandReport {
                label: label(o),
                op: g[o].op.name().to_string(),
                ty: g[o].ty.clone(),
                value: stats(o),
            })
            .collect(),
    }))
}

/// The replay side of `check_numerics` for one compiled training step: the unsplit step graph
/// before the pass pipeline, the forward graph it was built from, and a copy of the params
/// and state from before the current step (see the module documentation).
pub struct NumericsCheck {
    graph: Graph,
    forward: Graph,
    /// Params then state, by name, as before the step that runs now.
    before: Vec<(String, HostTensor)>,
}

impl fmt::Debug for NumericsCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumericsCheck")
            .field("graph", &self.graph.name)
            .field("nodes", &self.graph.len())
            .finish()
    }
}

impl NumericsCheck {
    /// A check replaying `step` (a training step built from `forward`, before the pass
    /// pipeline, with the compiled step's input, param and state names).
    pub fn new(forward: Graph, step: Graph) -> NumericsCheck {
        NumericsCheck {
            graph: step,
            forward,
            before: Vec::new(),
        }
    }

    /// The training-step graph the replay evaluates.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Copies the params and state before a step runs. Allocates only on the first call
    /// (later calls copy into the same buffers).
    pub fn save(&mut self, params: &[(String, HostTensor)], states: &[(String, HostTensor)]) {
        let same = self.before.len() == params.len() + states.len()
            && self
                .before
                .iter()
                .zip(params.iter().chain(states))
                .all(|((a, x), (b, y))| {
                    a == b && x.shape == y.shape && x.dtype() == y.dtype() && x.len() == y.len()
                });
        if !same {
            self.before = params.iter().chain(states).cloned().collect();
            return;
        }
        for ((_, dst), (_, src)) in self.before.iter_mut().zip(params.iter().chain(states)) {
            match (&mut dst.data, &src.data) {
                (TensorData::F32(d), TensorData::F32(s)) => d.copy_from_slice(s),
                (TensorData::I32(d), TensorData::I32(s)) => d.copy_from_slice(s),
                (d, s) => d.clone_from(s),
            }
        }
    }

    /// Checks step `step` after it ran: its outputs and its updated params and state. On a
    /// non-finite value, replays the step from the copy [`NumericsCheck::save`] made and the
    /// bound inputs (`input` gives each by name) and reports its first non-finite node.
    pub fn check<'a>(
        &self,
        step: u64,
        outputs: &[(String, HostTensor)],
        params: &[(String, HostTensor)],
        states: &[(String, HostTensor)],
        input: &dyn Fn(&str) -> Option<&'a HostTensor>,
    ) -> Result<(), NonFiniteError> {
        let finite = |l: &[(String, HostTensor)]| l.iter().all(|(_, t)| tensor_finite(t));
        if finite(outputs) && finite(params) && finite(states) {
            return Ok(());
        }
        let mut results = non_finite("output", outputs);
        results.extend(non_finite("param", params));
        results.extend(non_finite("state", states));
        let located = match self.replay(input) {
            Ok(Some(node)) => Located::Node(Box::new(node)),
            Ok(None) => Located::AllFinite,
            Err(e) => Located::Failed(e),
        };
        Err(NonFiniteError {
            step,
            results,
            located,
        })
    }

    /// Runs the replay: feeds every leaf of the step graph (inputs from `input`, params and
    /// state from the copy) and finds the first non-finite node.
    fn replay<'a>(
        &self,
        input: &dyn Fn(&str) -> Option<&'a HostTensor>,
    ) -> Result<Option<NodeReport>, String> {
        let g = &self.graph;
        let mut feeds = HashMap::new();
        for id in g.inputs().into_iter().chain(g.params()).chain(g.states()) {
            let n = &g[id];
            let name = n.name.clone().unwrap_or_default();
            let t = match n.op {
                Op::Input => input(&name),
                _ => self.before.iter().find(|(k, _)| *k == name).map(|(_, t)| t),
            };
            let t = t.ok_or_else(|| format!("the compiled step has no value for {name}"))?;
            let data: Vec<f32> = match &t.data {
                TensorData::F32(v) => v.clone(),
                TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            };
            let a = Array::new(n.ty.shape.clone(), data).map_err(|e| e.to_string())?;
            feeds.insert(id, a);
        }
        first_non_finite(g, &self.forward, &feeds).map_err(|e| e.to_string())
    }
}
