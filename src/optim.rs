//! Optimizers, regularization and gradient clipping as graph nodes.
//!
//! In: a [`Graph`] holding params, a scalar loss and the gradient of the loss with respect to
//! each param (from [`crate::autodiff::grad`]). Out: new nodes in the same graph that compute
//! each param's next value and the optimizer's next state, registered as updates
//! ([`Graph::add_update`]) so that one call of the compiled step trains one batch.
//!
//! The learning rate is an input node (`%lr: f32[] = input`, see [`lr_input`]), so a host-side
//! schedule changes it between calls without recompiling; or a [`Schedule`] computes it in the
//! graph from the step counter [`STEP_COUNTER`] ([`Optimizer::with_schedule`]), and the step
//! has no learning-rate input. The formulas and defaults follow Keras 3 exactly:
//!
//! - SGD: `w <- w - lr * g`.
//! - SGD with momentum `mu`: `v <- mu * v - lr * g`; `w <- w + v`, or with Nesterov
//!   `w <- w + mu * v - lr * g` (with the new `v`). One velocity state per param.
//! - Adam: a step counter state `t` (f32, starts at 0) is incremented in the graph;
//!   `alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)`; `m <- m + (g - m) * (1 - b1)`;
//!   `v <- v + (g^2 - v) * (1 - b2)`; `w <- w - alpha * m / (sqrt(v) + eps)`.
//! - AdamW: `w <- w - w * wd * lr`, then Adam's update of that value.
//! - RMSprop: `v <- rho * v + (1 - rho) * g^2`; `w <- w - lr * g / sqrt(v + eps)` (epsilon
//!   under the root, as in Keras 3), optionally with momentum and centered.
//! - Adagrad: `acc <- acc + g^2` (from 0.1); `w <- w - lr * g / sqrt(acc + eps)`.
//!
//! Regularization ([`Regularizer`], [`add_penalties`]) adds `l1 * sum|w| + l2 * sum w^2` to
//! the loss before differentiation; clipping ([`Clip`]) rewrites gradients before the update.
//!
//! Every node made here records the source location of the caller of the public function
//! (`#[track_caller]`), so a dump points at the user's line rather than at this file.

use crate::graph::{is_valid_name, BuildError, Graph, NodeId, SourceLoc};
use crate::op::{BinaryOp, CmpOp, Init, Literal, Op, ReduceOp, UnaryOp};
use crate::shape::{DType, Shape, TensorType};
use std::panic::Location;

/// Name of the learning-rate input made by [`lr_input`].
pub const LR_NAME: &str = "lr";

/// Builds nodes at one fixed source location (the user's call site), so that every node an
/// optimizer or a layer appends points back at the line that asked for it.
pub(crate) struct At<'g> {
    pub(crate) g: &'g mut Graph,
    pub(crate) loc: SourceLoc,
}

impl<'g> At<'g> {
    /// A builder recording the location of the caller of the `#[track_caller]` chain.
    #[track_caller]
    pub(crate) fn caller(g: &'g mut Graph) -> At<'g> {
        At {
            g,
            loc: SourceLoc::from_caller(Location::caller()),
        }
    }

    /// An error at this location.
    pub(crate) fn err(&self, message: String) -> BuildError {
        BuildError {
            message,
            loc: Some(self.loc.clone()),
        }
    }

    pub(crate) fn op(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, BuildError> {
        self.g.add_at(op, operands, None, self.loc.clone())
    }

    pub(crate) fn leaf(
        &mut self,
        name: &str,
        op: Op,
        ty: TensorType,
    ) -> Result<NodeId, BuildError> {
        if !is_valid_name(name) {
            return Err(self.err(format!(
                "invalid name {name:?}: expected a letter or '_' then letters, digits, '_' or '.'"
            )));
        }
        if self.g.find(name).is_some() {
            return Err(self.err(format!("duplicate name {name:?}: a node already has it")));
        }
        let id = self.g.add_at(op, &[], Some(ty), self.loc.clone())?;
        self.g.set_name(id, name).map_err(|e| BuildError {
            loc: Some(self.loc.clone()),
            ..e
        })?;
        Ok(id)
    }

    pub(crate) fn scalar(&mut self, v: f64) -> Result<NodeId, BuildError> {
        self.g.add_at(
            Op::Const {
                value: Literal::Splat(v),
            },
            &[],
            Some(TensorType::f32(Shape::scalar())),
            self.loc.clone(),
        )
    }

    /// A constant of type `ty` with `value`.
    pub(crate) fn constant(
        &mut self,
        ty: TensorType,
        value: Literal,
    ) -> Result<NodeId, BuildError> {
        self.g
            .add_at(Op::Const { value }, &[], Some(ty), self.loc.clone())
    }

    pub(crate) fn unary(&mut self, u: UnaryOp, x: NodeId) -> Result<NodeId, BuildError> {
        self.op(Op::Unary(u), &[x])
    }

    pub(crate) fn bin(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> Result<NodeId, BuildError> {
        self.op(Op::Binary(b), &[x, y])
    }

    pub(crate) fn add(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, BuildError> {
        self.bin(BinaryOp::Add, x, y)
    }

    pub(crate) fn sub(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, BuildError> {
        self.bin(BinaryOp::Sub, x, y)
    }

    pub(crate) fn mul(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, BuildError> {
        self.bin(BinaryOp::Mul, x, y)
    }

    pub(crate) fn div(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, BuildError> {
        self.bin(BinaryOp::Div, x, y)
    }

    /// `x * c` for a constant `c`.
    pub(crate) fn scale(&mut self, x: NodeId, c: f64) -> Result<NodeId, BuildError> {
        let c = self.scalar(c)?;
        self.mul(x, c)
    }

    /// Sum over every axis: a scalar.
    pub(crate) fn sum_all(&mut self, x: NodeId) -> Result<NodeId, BuildError> {
        self.reduce_all(ReduceOp::Sum, x)
    }

    /// Mean over every axis: a scalar.
    pub(crate) fn mean_all(&mut self, x: NodeId) -> Result<NodeId, BuildError> {
        self.reduce_all(ReduceOp::Mean, x)
    }

    fn reduce_all(&mut self, kind: ReduceOp, x: NodeId) -> Result<NodeId, BuildError> {
        let rank = self.ty(x)?.shape.rank();
        if rank == 0 {
            return Ok(x);
        }
        self.op(
            Op::Reduce {
                kind,
                axes: (0..rank).collect(),
                keepdims: false,
            },
            &[x],
        )
    }

    /// The type of node `id`, or an error if it is not in the graph.
    pub(crate) fn ty(&self, id: NodeId) -> Result<TensorType, BuildError> {
        self.g
            .get(id)
            .map(|n| n.ty.clone())
            .ok_or_else(|| self.err(format!("unknown node {}", id.index())))
    }

    /// The name of node `id` (`node<index>` when it has none).
    pub(crate) fn name_of(&self, id: NodeId) -> String {
        self.g
            .get(id)
            .and_then(|n| n.name.clone())
            .unwrap_or_else(|| format!("node{}", id.index()))
    }
}

/// The learning-rate input `%lr: f32[] = input`: the existing one if the graph has it, else a
/// new one. Errors if a node called `lr` exists but is not an `f32[]` input.
#[track_caller]
pub fn lr_input(g: &mut Graph) -> Result<NodeId, BuildError> {
    let mut at = At::caller(g);
    if let Some(id) = at.g.find(LR_NAME) {
        let n = &at.g[id];
        if n.op != Op::Input || n.ty != TensorType::f32(Shape::scalar()) {
            return Err(at.err(format!(
                "node {LR_NAME:?} exists but is a {} of type {}, expected an f32[] input",
                n.op.name(),
                n.ty
            )));
        }
        return Ok(id);
    }
    at.leaf(LR_NAME, Op::Input, TensorType::f32(Shape::scalar()))
}

/// Error of [`training_step`].
#[derive(Debug, thiserror::Error)]
pub enum TrainingStepError {
    /// The loss cannot be differentiated with respect to the params.
    #[error(transparent)]
    Grad(#[from] crate::autodiff::GradError),
    /// The learning-rate input or the optimizer's nodes cannot be added.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The step cannot be split along its batch ([`sharded_training_step`]).
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
}

/// A training step split along its batch into `shards` equal shards: made by
/// [`sharded_training_step`], run by [`crate::runtime::sharded::ShardedStep`].
#[derive(Clone, Debug)]
pub struct ShardedTrainingStep {
    /// Forward and backward of one shard (`batch / shards` examples): the forward graph's
    /// outputs (batch means, see [`crate::batch`]) and the gradient of the loss with respect to
    /// every param as outputs named [`grad_output`]. Reads the params, updates nothing.
    pub shard: Graph,
    /// The whole optimizer update: the params (same names and initializers as the forward
    /// graph's), the optimizer's state, the learning-rate input `%lr` and the inputs
    /// [`grad_input`]`(s, param)` (shard `s`'s gradient); averages the shards' gradients in
    /// shard order and updates every param and its state in place. It runs as
    /// [`ShardedTrainingStep::update_parts`], then [`ShardedTrainingStep::update_tail`].
    pub update: Graph,
    /// The update split by rows: part `k` updates its rows of every param and of the
    /// param's own state (momentum, moments), reading the shared state (Adam's step count)
    /// without updating it. The update is elementwise in every param, so the parts compute
    /// exactly what the whole update does, on any number of threads.
    pub update_parts: Vec<UpdatePart>,
    /// The updates of the optimizer's shared state (Adam's step count), run after every part.
    pub update_tail: Graph,
    /// Number of shards.
    pub shards: usize,
    /// Examples per shard.
    pub shard_batch: usize,
    /// The forward graph's inputs: name, type at the full batch, and whether they are
    /// batched (each shard reads its rows) or read whole by every shard.
    pub inputs: Vec<(String, TensorType, bool)>,
}

/// One part of a split update ([`ShardedTrainingStep::update_parts`]).
#[derive(Clone, Debug)]
pub struct UpdatePart {
    /// The update of this part's rows: its params (and their gradient inputs and state)
    /// have the shape of the rows.
    pub graph: Graph,
    /// Each param of the part with the offset, in elements, of its first row in the whole
    /// param (the same offset in the param's gradients and state).
    pub offsets: Vec<(String, usize)>,
}

/// Name of the shard graph's output holding the gradient of `param`.
pub fn grad_output(param: &str) -> String {
    format!("grad.{param}")
}

/// Name of the update graph's input holding shard `s`'s gradient of `param`.
pub fn grad_input(s: usize, param: &str) -> String {
    format!("grad{s}.{param}")
}

/// The update graph of `params` (name, type, initializer) averaging `shards` gradient inputs
/// per param, clipped by `clip`, then `optimizer`'s update.
fn update_graph(
    name: String,
    params: &[(String, TensorType, Init)],
    shards: usize,
    optimizer: &Optimizer,
    clip: Option<&Clip>,
) -> Result<(Graph, Applied), BuildError> {
    let mut update = Graph::new(name);
    let mut pairs = Vec::with_capacity(params.len());
    for (name, ty, init) in params {
        let up = update.param(name, ty.shape.clone(), init.clone())?;
        let mut sum = update.input(&grad_input(0, name), ty.clone())?;
        for s in 1..shards {
            let gs = update.input(&grad_input(s, name), ty.clone())?;
            sum = update.add2(sum, gs)?;
        }
        if shards > 1 {
            let scale = update.scalar(1.0 / shards as f64);
            sum = update.mul(sum, scale)?;
        }
        pairs.push((up, sum));
    }
    let pairs = match clip {
        Some(c) => {
            let grads: Vec<NodeId> = pairs.iter().map(|p| p.1).collect();
            let clipped = c.apply(&mut update, &grads)?;
            pairs.iter().map(|p| p.0).zip(clipped).collect()
        }
        None => pairs,
    };
    let lr = optimizer.learning_rate(&mut update)?;
    let applied = optimizer.apply(&mut update, lr, &pairs)?;
    Ok((update, applied))
}

/// Whether state `id` of `g` belongs to one param (named `<param>.<suffix>`, shaped like it)
/// rather than being shared by all (a step count).
fn per_param_state(g: &Graph, id: NodeId, params: &[(String, TensorType, Init)]) -> bool {
    let name = g[id].name.as_deref().unwrap_or("");
    params
        .iter()
        .any(|(p, ty, _)| name.starts_with(&format!("{p}.")) && g[id].ty == *ty)
}

/// Keeps only the updates of `g` whose target satisfies `keep`, then removes dead nodes.
fn retain_updates(g: &mut Graph, keep: impl Fn(&Graph, NodeId) -> bool) {
    let keep: Vec<bool> = g.updates().iter().map(|u| keep(g, u.target)).collect();
    let mut it = keep.into_iter();
    g.updates_mut().retain(|_| it.next().unwrap_or(true));
    crate::passes::dce::run(g);
}

/// The training step of the forward graph `g` (batch `batch`) split into `shards` shards,
/// the same step as [`training_step`] computed as data-parallel training computes it: each
/// shard runs forward and backward on its `batch / shards` examples
/// ([`crate::batch::rebatch`]), the shards' gradients are averaged in a fixed order, then
/// `clip` (if any) and `optimizer` update the params once, split by rows into at most
/// `update_parts` parts (1 with `clip`, whose global norm needs every gradient). Exact (up
/// to f32 rounding) when the loss is a mean over the examples ([`crate::batch::analyze`]
/// checks it). `shards` 1 is the unsplit step cut between gradients and update.
pub fn sharded_training_step(
    g: &Graph,
    loss: &str,
    optimizer: &Optimizer,
    clip: Option<&Clip>,
    batch: usize,
    shards: usize,
    update_parts: usize,
) -> Result<ShardedTrainingStep, TrainingStepError> {
    let shards = shards.max(1);
    if let Some(u) = g.updates().first() {
        // batch normalization's moving statistics: each shard would see other statistics
        return Err(crate::batch::BatchError {
            graph: g.name.clone(),
            batch,
            node: format!("%{}", g[u.target].name.as_deref().unwrap_or("?")),
            message: "the forward graph updates this state, which shards cannot share".into(),
        }
        .into());
    }
    let axes = crate::batch::analyze(g, batch)?;
    if !batch.is_multiple_of(shards) {
        return Err(crate::batch::BatchError {
            graph: g.name.clone(),
            batch,
            node: "the batch".into(),
            message: format!("{batch} examples do not split into {shards} equal shards"),
        }
        .into());
    }
    let mut shard = crate::batch::rebatch(g, &axes, batch / shards);
    shard.name = format!("{}_shard", g.name);
    let loss_node = shard.output(loss).ok_or_else(|| {
        crate::autodiff::GradError::Unknown(format!("no output called {loss:?} to use as the loss"))
    })?;
    let param_ids = shard.params();
    let grads = crate::autodiff::grad(&mut shard, loss_node, &param_ids)?;
    let mut params = Vec::with_capacity(param_ids.len());
    for (&p, &d) in param_ids.iter().zip(&grads) {
        let n = &g[p];
        let name = n.name.clone().unwrap_or_default();
        shard.add_output(&grad_output(&name), d)?;
        if let Op::Param { init } = &n.op {
            params.push((name, n.ty.clone(), init.clone()));
        }
    }
    let (update, _) = update_graph(
        format!("{}_update", g.name),
        &params,
        shards,
        optimizer,
        clip,
    )?;
    let parts = if clip.is_some() {
        1
    } else {
        update_parts.max(1)
    };
    let mut update_parts = Vec::new();
    for k in 0..parts {
        let mut sliced = Vec::new();
        let mut offsets = Vec::new();
        for (name, ty, init) in &params {
            let dims = ty.shape.dims();
            let rows = dims.first().copied().unwrap_or(1);
            let (lo, hi) = if rows >= parts && !dims.is_empty() {
                (rows * k / parts, rows * (k + 1) / parts)
            } else if k == 0 {
                (0, rows)
            } else {
                continue;
            };
            let mut shape = dims.to_vec();
            if let Some(d) = shape.first_mut() {
                *d = hi - lo;
            }
            let row = ty.shape.numel() / rows.max(1);
            offsets.push((name.clone(), lo * row));
            sliced.push((name.clone(), TensorType::new(ty.dtype, shape), init.clone()));
        }
        if sliced.is_empty() {
            continue;
        }
        let (mut part, _) = update_graph(
            format!("{}_update{k}", g.name),
            &sliced,
            shards,
            optimizer,
            clip,
        )?;
        retain_updates(&mut part, |g, t| {
            per_param_state(g, t, &sliced) || matches!(g[t].op, Op::Param { .. })
        });
        update_parts.push(UpdatePart {
            graph: part,
            offsets,
        });
    }
    let mut update_tail = update.clone();
    update_tail.name = format!("{}_update_tail", g.name);
    retain_updates(&mut update_tail, |g, t| {
        matches!(g[t].op, Op::State { .. }) && !per_param_state(g, t, &params)
    });
    let inputs = g
        .inputs()
        .into_iter()
        .map(|id| {
            let n = &g[id];
            let name = n.name.clone().unwrap_or_default();
            (name, n.ty.clone(), axes.batched.contains(&id))
        })
        .collect();
    Ok(ShardedTrainingStep {
        shard,
        update,
        update_parts,
        update_tail,
        shards,
        shard_batch: batch / shards,
        inputs,
    })
}

/// Extends the forward graph `g` into one training step, the whole of what `jax.jit` of a
/// gradient and an optimizer update would trace: the gradient of the output called `loss`
/// with respect to every param (autodiff), the learning-rate input `%lr: f32[]` ([`lr_input`])
/// and `optimizer`'s updates of every param and of its state. Returns what the optimizer
/// added. On error `g` is unchanged.
pub fn training_step(
    g: &mut Graph,
    loss: &str,
    optimizer: &Optimizer,
) -> Result<Applied, TrainingStepError> {
    training_step_with(g, loss, optimizer, None)
}

/// [`training_step`] with the gradients clipped by `clip` (if any) before the update.
pub fn training_step_with(
    g: &mut Graph,
    loss: &str,
    optimizer: &Optimizer,
    clip: Option<&Clip>,
) -> Result<Applied, TrainingStepError> {
    let mut step = g.clone();
    let loss_node = step.output(loss).ok_or_else(|| {
        crate::autodiff::GradError::Unknown(format!("no output called {loss:?} to use as the loss"))
    })?;
    let params = step.params();
    let grads = crate::autodiff::grad(&mut step, loss_node, &params)?;
    let grads = match clip {
        Some(c) => c.apply(&mut step, &grads)?,
        None => grads,
    };
    let lr = optimizer.learning_rate(&mut step)?;
    let pairs: Vec<(NodeId, NodeId)> = params.into_iter().zip(grads).collect();
    let applied = optimizer.apply(&mut step, lr, &pairs)?;
    *g = step;
    Ok(applied)
}

/// A gradient-descent optimizer. Construct with [`Optimizer::sgd`], [`Optimizer::momentum`],
/// [`Optimizer::nesterov`], [`Optimizer::adam`], [`Optimizer::adamw`],
/// [`Optimizer::rmsprop`] or [`Optimizer::adagrad`] (Keras 3 defaults), change a
/// hyper-parameter with the `with_*` setters, add a learning-rate [`Schedule`] with
/// [`Optimizer::with_schedule`], or fill in the fields.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// Stochastic gradient descent, with optional (Nesterov) momentum.
    Sgd {
        /// Momentum factor in `[0, 1)`; 0 is plain SGD (no velocity state).
        momentum: f64,
        /// Nesterov momentum (only meaningful with `momentum > 0`).
        nesterov: bool,
    },
    /// Adam with Keras' bias correction and epsilon placement.
    Adam {
        /// Decay of the first moment (Keras default 0.9).
        beta1: f64,
        /// Decay of the second moment (Keras default 0.999).
        beta2: f64,
        /// Added to `sqrt(v)` (Keras default 1e-7).
        epsilon: f64,
    },
    /// Adam with decoupled weight decay (Keras 3 `AdamW`): before Adam's update, every param
    /// decays by `w <- w - w * weight_decay * lr`, then Adam's update of the decayed param.
    AdamW {
        /// Decay of the first moment (Keras default 0.9).
        beta1: f64,
        /// Decay of the second moment (Keras default 0.999).
        beta2: f64,
        /// Added to `sqrt(v)` (Keras default 1e-7).
        epsilon: f64,
        /// The decay factor, multiplied by the learning rate (Keras default 0.004).
        weight_decay: f64,
        /// Params that do not decay: those whose name contains one of these strings (Keras'
        /// `exclude_from_weight_decay(var_names=...)`; default none).
        exclude_from_weight_decay: Vec<String>,
    },
    /// RMSprop (Keras 3 `RMSprop`): `v <- rho * v + (1 - rho) * g^2`;
    /// `increment = lr * g / sqrt(v + epsilon)` (epsilon inside the root, as Keras 3 has it);
    /// `w <- w - increment`, or with momentum `mom <- momentum * mom + increment; w <- w - mom`.
    /// Centered: also `a <- rho * a + (1 - rho) * g` and the root of `v - a^2 + epsilon`.
    RmsProp {
        /// Discounting factor of the squared gradients' average (Keras default 0.9).
        rho: f64,
        /// Momentum factor in `[0, 1)` (Keras default 0: no momentum state).
        momentum: f64,
        /// Added to the average under the root (Keras default 1e-7).
        epsilon: f64,
        /// Divide by the estimated variance rather than the second moment (Keras default
        /// false).
        centered: bool,
    },
    /// Adagrad (Keras 3 `Adagrad`): `acc <- acc + g^2`; `w <- w - lr * g / sqrt(acc +
    /// epsilon)`, the accumulator starting at `initial_accumulator_value`.
    Adagrad {
        /// The accumulators' starting value, at least 0 (Keras default 0.1).
        initial_accumulator_value: f64,
        /// Added to the accumulator under the root (Keras default 1e-7).
        epsilon: f64,
    },
    /// `optimizer` with its learning rate computed in the graph by `schedule` from the step
    /// counter [`STEP_COUNTER`], as Keras computes `schedule(iterations)` before each update:
    /// the step has no learning-rate input.
    Scheduled {
        /// The optimizer (not itself scheduled).
        optimizer: Box<Optimizer>,
        /// The learning rate as a function of the steps done before this one.
        schedule: Schedule,
    },
}

/// A learning-rate schedule computed in the training step from the step count `t` (the steps
/// done before this one, the f32 counter [`STEP_COUNTER`], so the first step reads 0), with
/// the formulas of Keras 3's `keras.optimizers.schedules` evaluated in f32 as Keras does.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `initial * decay_rate ^ (t / decay_steps)`; with `staircase`, the exponent is
    /// `floor(t / decay_steps)` (Keras `ExponentialDecay`).
    ExponentialDecay {
        /// The learning rate at step 0.
        initial: f64,
        /// Steps per factor of `decay_rate`, at least 1.
        decay_steps: u64,
        /// The factor per `decay_steps` steps, positive.
        decay_rate: f64,
        /// Decay at whole multiples of `decay_steps` only.
        staircase: bool,
    },
    /// `initial * ((1 - alpha) * 0.5 * (1 + cos(pi * min(t, decay_steps) / decay_steps)) +
    /// alpha)`: from `initial` down to `initial * alpha` over `decay_steps` steps, then
    /// constant (Keras `CosineDecay`). With a warmup (`warmup_target`), the rate first rises
    /// linearly from `initial` to `warmup_target` over `warmup_steps` steps, then decays
    /// from `warmup_target` as above, counting steps from the end of the warmup.
    CosineDecay {
        /// The learning rate at step 0.
        initial: f64,
        /// Steps to decay over, at least 1.
        decay_steps: u64,
        /// The final learning rate as a fraction of the rate decayed from, in `[0, 1]`.
        alpha: f64,
        /// The rate the warmup reaches (Keras `warmup_target`; `None`: no warmup).
        warmup_target: Option<f64>,
        /// Steps of the warmup, at least 1 with a `warmup_target` (ignored without).
        warmup_steps: u64,
    },
    /// `values[0]` while `t <= boundaries[0]`, `values[i]` while `boundaries[i-1] < t <=
    /// boundaries[i]`, and the last value after the last boundary (Keras
    /// `PiecewiseConstantDecay`, computed as Keras does: a sum of the values times the masks of
    /// their intervals). Boundaries are step counts, strictly increasing; there is one value
    /// more than boundaries.
    PiecewiseConstantDecay {
        /// Step counts where the value changes (it changes after the step count).
        boundaries: Vec<u64>,
        /// The learning rates, one per interval.
        values: Vec<f64>,
    },
}

impl Schedule {
    /// Keras `ExponentialDecay(initial, decay_steps, decay_rate, staircase)`.
    pub fn exponential_decay(
        initial: f64,
        decay_steps: u64,
        decay_rate: f64,
        staircase: bool,
    ) -> Schedule {
        Schedule::ExponentialDecay {
            initial,
            decay_steps,
            decay_rate,
            staircase,
        }
    }

    /// Keras `CosineDecay(initial, decay_steps, alpha)` (no warmup).
    pub fn cosine_decay(initial: f64, decay_steps: u64, alpha: f64) -> Schedule {
        Schedule::CosineDecay {
            initial,
            decay_steps,
            alpha,
            warmup_target: None,
            warmup_steps: 0,
        }
    }

    /// Keras `CosineDecay(initial, decay_steps, alpha, warmup_target=target,
    /// warmup_steps=warmup_steps)`: a linear warmup from `initial` to `target`, then the
    /// cosine decay from `target`.
    pub fn cosine_decay_with_warmup(
        initial: f64,
        decay_steps: u64,
        alpha: f64,
        target: f64,
        warmup_steps: u64,
    ) -> Schedule {
        Schedule::CosineDecay {
            initial,
            decay_steps,
            alpha,
            warmup_target: Some(target),
            warmup_steps,
        }
    }

    /// Keras `PiecewiseConstantDecay(boundaries, values)`.
    pub fn piecewise_constant_decay(boundaries: &[u64], values: &[f64]) -> Schedule {
        Schedule::PiecewiseConstantDecay {
            boundaries: boundaries.to_vec(),
            values: values.to_vec(),
        }
    }

    /// A schedule from its command-line form (the CLI's `--lr-schedule`), decaying from
    /// `initial` (piecewise schedules name their own rates):
    /// `exponential:decay_steps=N,decay_rate=R[,staircase]`,
    /// `cosine:decay_steps=N[,alpha=A][,warmup_target=LR,warmup_steps=N]` or
    /// `piecewise:boundaries=N/N/...,values=LR/LR/...`. The values are checked when the
    /// schedule is built into a graph; this checks the syntax and says what is wrong.
    pub fn parse(spec: &str, initial: f64) -> Result<Schedule, String> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for item in rest.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            if keys.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("`{spec}`: `{k}` is given twice"));
            }
            keys.push((k, v));
        }
        let allowed: &[&str] = match kind {
            "exponential" => &["decay_steps", "decay_rate", "staircase"],
            "cosine" => &["decay_steps", "alpha", "warmup_target", "warmup_steps"],
            "piecewise" => &["boundaries", "values"],
            other => {
                return Err(format!(
                    "`{spec}`: unknown schedule `{other}` (expected exponential, cosine or piecewise, then `:` and its settings)"
                ))
            }
        };
        if let Some((k, _)) = keys.iter().find(|(k, _)| !allowed.contains(k)) {
            return Err(format!(
                "`{spec}`: `{k}` is not a setting of the {kind} schedule (expected {})",
                allowed.join(", ")
            ));
        }
        let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let number = |k: &str, v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .map_err(|_| format!("`{spec}`: {k} must be a number, found `{v}`"))
        };
        let count = |k: &str, v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("`{spec}`: {k} must be a whole number of steps, found `{v}`"))
        };
        let required = |k: &str| -> Result<&str, String> {
            get(k).ok_or_else(|| format!("`{spec}`: the {kind} schedule needs `{k}=...`"))
        };
        match kind {
            "exponential" => {
                let staircase = match get("staircase") {
                    None | Some("false") => false,
                    Some("" | "true") => true,
                    Some(v) => {
                        return Err(format!("`{spec}`: staircase is true or false, found `{v}`"))
                    }
                };
                Ok(Schedule::exponential_decay(
                    initial,
                    count("decay_steps", required("decay_steps")?)?,
                    number("decay_rate", required("decay_rate")?)?,
                    staircase,
                ))
            }
            "cosine" => {
                let decay_steps = count("decay_steps", required("decay_steps")?)?;
                let alpha = get("alpha").map_or(Ok(0.0), |v| number("alpha", v))?;
                match (get("warmup_target"), get("warmup_steps")) {
                    (None, None) => Ok(Schedule::cosine_decay(initial, decay_steps, alpha)),
                    (Some(t), Some(w)) => Ok(Schedule::cosine_decay_with_warmup(
                        initial,
                        decay_steps,
                        alpha,
                        number("warmup_target", t)?,
                        count("warmup_steps", w)?,
                    )),
                    _ => Err(format!(
                        "`{spec}`: a warmup needs both warmup_target and warmup_steps"
                    )),
                }
            }
            _ => {
                let list = |k: &str| -> Result<Vec<&str>, String> {
                    Ok(required(k)?.split('/').map(str::trim).collect())
                };
                let boundaries = list("boundaries")?
                    .into_iter()
                    .map(|v| count("boundaries", v))
                    .collect::<Result<Vec<_>, _>>()?;
                let values = list("values")?
                    .into_iter()
                    .map(|v| number("values", v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Schedule::piecewise_constant_decay(&boundaries, &values))
            }
        }
    }

    /// The learning rate at step 0.
    pub fn initial_learning_rate(&self) -> f64 {
        match self {
            Schedule::ExponentialDecay { initial, .. } | Schedule::CosineDecay { initial, .. } => {
                *initial
            }
            Schedule::PiecewiseConstantDecay { values, .. } => {
                values.first().copied().unwrap_or(0.0)
            }
        }
    }

    /// The learning rate after `step` steps, in f64 (the graph computes the same formula in
    /// f32).
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        let t = step as f64;
        match self {
            Schedule::ExponentialDecay {
                initial,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = t / *decay_steps as f64;
                if *staircase {
                    p = p.floor();
                }
                initial * decay_rate.powf(p)
            }
            Schedule::CosineDecay {
                initial,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let d = *decay_steps as f64;
                let decay = |from: f64, t: f64| {
                    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * t / d).cos());
                    from * ((1.0 - alpha) * cosine + alpha)
                };
                match warmup_target {
                    None => decay(*initial, t.min(d)),
                    Some(target) => {
                        let w = *warmup_steps as f64;
                        let t = t.min(d + w);
                        if t < w {
                            (target - initial) * (t / w) + initial
                        } else {
                            decay(*target, t - w)
                        }
                    }
                }
            }
            Schedule::PiecewiseConstantDecay { boundaries, values } => {
                let i = boundaries.iter().take_while(|&&b| step > b).count();
                values.get(i).copied().unwrap_or(0.0)
            }
        }
    }

    fn check(&self, at: &At<'_>) -> Result<(), BuildError> {
        let positive = |what: &str, v: f64| -> Result<(), BuildError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(at.err(format!(
                    "learning-rate schedule: {what} must be a positive number, found {v}"
                )))
            }
        };
        match self {
            Schedule::ExponentialDecay {
                initial,
                decay_steps,
                decay_rate,
                ..
            } => {
                positive("the initial learning rate", *initial)?;
                positive("decay_rate", *decay_rate)?;
                if *decay_steps == 0 {
                    return Err(at.err(
                        "learning-rate schedule: decay_steps must be at least 1, found 0".into(),
                    ));
                }
            }
            Schedule::CosineDecay {
                initial,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                positive("the initial learning rate", *initial)?;
                if let Some(target) = warmup_target {
                    positive("warmup_target", *target)?;
                    if *warmup_steps == 0 {
                        return Err(at.err(
                            "learning-rate schedule: warmup_steps must be at least 1 with a warmup_target, found 0"
                                .into(),
                        ));
                    }
                }
                if *decay_steps == 0 {
                    return Err(at.err(
                        "learning-rate schedule: decay_steps must be at least 1, found 0".into(),
                    ));
                }
                if !(0.0..=1.0).contains(alpha) {
                    return Err(at.err(format!(
                        "learning-rate schedule: alpha must be in [0, 1], found {alpha}"
                    )));
                }
            }
            Schedule::PiecewiseConstantDecay { boundaries, values } => {
                if values.len() != boundaries.len() + 1 {
                    return Err(at.err(format!(
                        "learning-rate schedule: {} boundaries need {} values, found {}",
                        boundaries.len(),
                        boundaries.len() + 1,
                        values.len()
                    )));
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(at.err(format!(
                        "learning-rate schedule: boundaries must be strictly increasing, found {boundaries:?}"
                    )));
                }
                for &v in values {
                    positive("every value", v)?;
                }
            }
        }
        Ok(())
    }

    /// The schedule's learning rate at the step count `t` (an f32 scalar node).
    fn build(&self, at: &mut At<'_>, t: NodeId) -> Result<NodeId, BuildError> {
        match self {
            Schedule::ExponentialDecay {
                initial,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let steps = at.scalar(*decay_steps as f64)?;
                let mut p = at.div(t, steps)?;
                if *staircase {
                    // floor of a non-negative value: truncation by a round trip through i32
                    let i = at.op(Op::Cast { to: DType::I32 }, &[p])?;
                    p = at.op(Op::Cast { to: DType::F32 }, &[i])?;
                }
                let rate = at.scalar(*decay_rate)?;
                let factor = at.bin(BinaryOp::Pow, rate, p)?;
                let initial = at.scalar(*initial)?;
                at.mul(initial, factor)
            }
            Schedule::CosineDecay {
                initial,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                // Keras' operations in order: min, divide, multiply by pi, cos, ...
                let steps = at.scalar(*decay_steps as f64)?;
                let decay = |at: &mut At<'_>, from: f64, t: NodeId| -> Result<NodeId, BuildError> {
                    let p = at.div(t, steps)?;
                    let pi = at.scalar(std::f64::consts::PI)?;
                    let angle = at.mul(pi, p)?;
                    let c = at.unary(UnaryOp::Cos, angle)?;
                    let one = at.scalar(1.0)?;
                    let c1 = at.add(one, c)?;
                    let cosine = at.scale(c1, 0.5)?;
                    let keep = at.scalar(1.0 - alpha)?;
                    let kept = at.mul(keep, cosine)?;
                    let alpha = at.scalar(*alpha)?;
                    let decayed = at.add(kept, alpha)?;
                    let from = at.scalar(from)?;
                    at.mul(from, decayed)
                };
                let Some(target) = warmup_target else {
                    let t = at.bin(BinaryOp::Min, t, steps)?;
                    return decay(at, *initial, t);
                };
                // Keras: t = min(t, decay_steps + warmup_steps), then the warmup's line while
                // t < warmup_steps, else the decay from the target at t - warmup_steps
                let w = at.scalar(*warmup_steps as f64)?;
                let end = at.scalar((*decay_steps + *warmup_steps) as f64)?;
                let t = at.bin(BinaryOp::Min, t, end)?;
                let fraction = at.div(t, w)?;
                let delta = at.scalar(target - initial)?;
                let rise = at.mul(delta, fraction)?;
                let start = at.scalar(*initial)?;
                let warm = at.add(rise, start)?;
                let after = at.sub(t, w)?;
                let decayed = decay(at, *target, after)?;
                let warming = at.op(Op::Compare(CmpOp::Lt), &[t, w])?;
                at.op(Op::Select, &[warming, warm, decayed])
            }
            Schedule::PiecewiseConstantDecay { boundaries, values } => {
                let (Some(&first), Some(&last)) = (boundaries.first(), boundaries.last()) else {
                    // no boundary: the one value throughout
                    return at.scalar(values.first().copied().unwrap_or(0.0));
                };
                let mask = |at: &mut At<'_>, c: CmpOp, b: u64| -> Result<NodeId, BuildError> {
                    let b = at.scalar(b as f64)?;
                    at.op(Op::Compare(c), &[t, b])
                };
                let term = |at: &mut At<'_>, m: NodeId, v: f64| -> Result<NodeId, BuildError> {
                    let v = at.scalar(v)?;
                    at.mul(m, v)
                };
                let below = mask(at, CmpOp::Le, first)?;
                let mut total = term(at, below, values[0])?;
                let above = mask(at, CmpOp::Gt, last)?;
                let above = term(at, above, values[values.len() - 1])?;
                total = at.add(total, above)?;
                for (i, w) in boundaries.windows(2).enumerate() {
                    let lo = mask(at, CmpOp::Gt, w[0])?;
                    let hi = mask(at, CmpOp::Le, w[1])?;
                    let both = at.mul(lo, hi)?;
                    let v = term(at, both, values[i + 1])?;
                    total = at.add(total, v)?;
                }
                Ok(total)
            }
        }
    }
}

/// What [`Optimizer::apply`] added: the state nodes it made and the updates it registered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// State nodes made by the optimizer (velocities, moments, step counter), in creation order.
    pub state: Vec<NodeId>,
    /// `(target, new value)` of every update it registered: params and state.
    pub updates: Vec<(NodeId, NodeId)>,
}

impl Optimizer {
    /// Plain SGD (Keras `SGD()`, whose default learning rate is 0.01).
    pub fn sgd() -> Optimizer {
        Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
        }
    }

    /// SGD with classical momentum `momentum`.
    pub fn momentum(momentum: f64) -> Optimizer {
        Optimizer::Sgd {
            momentum,
            nesterov: false,
        }
    }

    /// SGD with Nesterov momentum `momentum`.
    pub fn nesterov(momentum: f64) -> Optimizer {
        Optimizer::Sgd {
            momentum,
            nesterov: true,
        }
    }

    /// Adam with Keras' defaults: beta1 0.9, beta2 0.999, epsilon 1e-7 (learning rate 0.001).
    pub fn adam() -> Optimizer {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }

    /// AdamW with Keras 3's defaults: weight decay 0.004, beta1 0.9, beta2 0.999, epsilon 1e-7
    /// (learning rate 0.001).
    pub fn adamw() -> Optimizer {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.004,
            exclude_from_weight_decay: Vec::new(),
        }
    }

    /// RMSprop with Keras 3's defaults: rho 0.9, momentum 0, epsilon 1e-7, not centered
    /// (learning rate 0.001).
    pub fn rmsprop() -> Optimizer {
        Optimizer::RmsProp {
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
        }
    }

    /// Adagrad with Keras 3's defaults: initial accumulator value 0.1, epsilon 1e-7 (learning
    /// rate 0.001).
    pub fn adagrad() -> Optimizer {
        Optimizer::Adagrad {
            initial_accumulator_value: 0.1,
            epsilon: 1e-7,
        }
    }

    /// This optimizer with its learning rate computed by `schedule` in the graph (replacing
    /// an earlier schedule).
    pub fn with_schedule(self, schedule: Schedule) -> Optimizer {
        Optimizer::Scheduled {
            optimizer: Box::new(self.unscheduled().clone()),
            schedule,
        }
    }

    /// The learning-rate schedule, if any.
    pub fn schedule(&self) -> Option<&Schedule> {
        match self {
            Optimizer::Scheduled { schedule, .. } => Some(schedule),
            _ => None,
        }
    }

    /// The optimizer without its schedule.
    pub fn unscheduled(&self) -> &Optimizer {
        match self {
            Optimizer::Scheduled { optimizer, .. } => optimizer.unscheduled(),
            o => o,
        }
    }

    fn unscheduled_mut(&mut self) -> &mut Optimizer {
        match self {
            Optimizer::Scheduled { optimizer, .. } => optimizer.unscheduled_mut(),
            o => o,
        }
    }

    /// Sets epsilon (Adam, AdamW, RMSprop, Adagrad; SGD has none and is unchanged).
    pub fn with_epsilon(mut self, value: f64) -> Optimizer {
        match self.unscheduled_mut() {
            Optimizer::Adam { epsilon, .. }
            | Optimizer::AdamW { epsilon, .. }
            | Optimizer::RmsProp { epsilon, .. }
            | Optimizer::Adagrad { epsilon, .. } => *epsilon = value,
            Optimizer::Sgd { .. } | Optimizer::Scheduled { .. } => {}
        }
        self
    }

    /// Sets the moments' decays beta1 and beta2 (Adam, AdamW; others are unchanged).
    pub fn with_betas(mut self, b1: f64, b2: f64) -> Optimizer {
        if let Optimizer::Adam { beta1, beta2, .. } | Optimizer::AdamW { beta1, beta2, .. } =
            self.unscheduled_mut()
        {
            (*beta1, *beta2) = (b1, b2);
        }
        self
    }

    /// Sets the momentum factor (SGD, RMSprop; others are unchanged).
    pub fn with_momentum(mut self, value: f64) -> Optimizer {
        if let Optimizer::Sgd { momentum, .. } | Optimizer::RmsProp { momentum, .. } =
            self.unscheduled_mut()
        {
            *momentum = value;
        }
        self
    }

    /// Sets RMSprop's rho (others are unchanged).
    pub fn with_rho(mut self, value: f64) -> Optimizer {
        if let Optimizer::RmsProp { rho, .. } = self.unscheduled_mut() {
            *rho = value;
        }
        self
    }

    /// Sets whether RMSprop is centered (others are unchanged).
    pub fn with_centered(mut self, value: bool) -> Optimizer {
        if let Optimizer::RmsProp { centered, .. } = self.unscheduled_mut() {
            *centered = value;
        }
        self
    }

    /// AdamW: the params whose name contains one of `names` do not decay (Keras'
    /// `exclude_from_weight_decay(var_names=...)`, e.g. `&["bias"]`; others are unchanged).
    pub fn exclude_from_weight_decay(mut self, names: &[&str]) -> Optimizer {
        if let Optimizer::AdamW {
            exclude_from_weight_decay,
            ..
        } = self.unscheduled_mut()
        {
            *exclude_from_weight_decay = names.iter().map(|n| n.to_string()).collect();
        }
        self
    }

    /// Sets AdamW's weight decay (others are unchanged).
    pub fn with_weight_decay(mut self, value: f64) -> Optimizer {
        if let Optimizer::AdamW { weight_decay, .. } = self.unscheduled_mut() {
            *weight_decay = value;
        }
        self
    }

    /// Sets Adagrad's initial accumulator value (others are unchanged).
    pub fn with_initial_accumulator_value(mut self, value: f64) -> Optimizer {
        if let Optimizer::Adagrad {
            initial_accumulator_value,
            ..
        } = self.unscheduled_mut()
        {
            *initial_accumulator_value = value;
        }
        self
    }

    /// The optimizer of Keras name `name` (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`,
    /// as [`Optimizer::name`] gives them) with Keras' defaults.
    pub fn from_name(name: &str) -> Option<Optimizer> {
        Some(match name {
            "sgd" => Optimizer::sgd(),
            "adam" => Optimizer::adam(),
            "adamw" => Optimizer::adamw(),
            "rmsprop" => Optimizer::rmsprop(),
            "adagrad" => Optimizer::adagrad(),
            _ => return None,
        })
    }

    /// Keras' default learning rate for this optimizer (0.01 for SGD, 0.001 for the others);
    /// with a schedule, the schedule's learning rate at step 0.
    pub fn default_learning_rate(&self) -> f64 {
        match self {
            Optimizer::Sgd { .. } => 0.01,
            Optimizer::Adam { .. }
            | Optimizer::AdamW { .. }
            | Optimizer::RmsProp { .. }
            | Optimizer::Adagrad { .. } => 0.001,
            Optimizer::Scheduled { schedule, .. } => schedule.initial_learning_rate(),
        }
    }

    /// Keras' name of the optimizer (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`; a scheduled
    /// optimizer has its optimizer's name).
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
            Optimizer::AdamW { .. } => "adamw",
            Optimizer::RmsProp { .. } => "rmsprop",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::Scheduled { optimizer, .. } => optimizer.name(),
        }
    }

    /// The learning-rate node of a training step of `g`: the input [`lr_input`] (fed by the
    /// caller at each call), or with a schedule the schedule's value at the step counter
    /// [`STEP_COUNTER`] (made here with its increment when `g` has none yet), so the step has no
    /// learning-rate input. Pass it to [`Optimizer::apply`].
    #[track_caller]
    pub fn learning_rate(&self, g: &mut Graph) -> Result<NodeId, BuildError> {
        let Optimizer::Scheduled { schedule, .. } = self else {
            return lr_input(g);
        };
        let mut at = At::caller(g);
        schedule.check(&at)?;
        let mut out = Applied::default();
        let (t, _, _) = step_counter(&mut at, &mut out)?;
        register(&mut at, &out)?;
        schedule.build(&mut at, t)
    }

    /// Appends the update of every `(param, grad)` pair, reading the learning rate from `lr`
    /// (an `f32[]` node: [`Optimizer::learning_rate`], normally [`lr_input`]), and registers
    /// the updates in `g`. State nodes are named after their param: `<param>.velocity`
    /// (momentum; RMSprop's average of squares), `<param>.m`, `<param>.v` (Adam, AdamW),
    /// `<param>.momentum`, `<param>.average_gradient` (RMSprop), `<param>.accumulator`
    /// (Adagrad), and the step counter [`STEP_COUNTER`] (Adam, AdamW, schedules).
    ///
    /// Errors when a target is not a param, a gradient's type differs from its param's, `lr`
    /// is not `f32[]` (or, with a schedule, is an input rather than the schedule's value), a
    /// hyper-parameter is out of range, or a param is already updated.
    #[track_caller]
    pub fn apply(
        &self,
        g: &mut Graph,
        lr: NodeId,
        params_and_grads: &[(NodeId, NodeId)],
    ) -> Result<Applied, BuildError> {
        let mut at = At::caller(g);
        self.check(&at)?;
        check_pairs(&at, lr, params_and_grads)?;
        if self.schedule().is_some() && at.g[lr].op == Op::Input {
            return Err(at.err(format!(
                "a scheduled optimizer computes its learning rate in the graph, but the input {} was given: pass Optimizer::learning_rate",
                at.name_of(lr)
            )));
        }
        let mut out = Applied::default();
        match *self.unscheduled() {
            Optimizer::Sgd { momentum, nesterov } => {
                for &(w, grad) in params_and_grads {
                    sgd_update(&mut at, &mut out, lr, w, grad, momentum, nesterov)?;
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let alpha = adam_step_size(&mut at, &mut out, lr, beta1, beta2)?;
                for &(w, grad) in params_and_grads {
                    let hp = (beta1, beta2, epsilon);
                    adam_update(&mut at, &mut out, alpha, w, w, grad, hp)?;
                }
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                ref exclude_from_weight_decay,
            } => {
                let alpha = adam_step_size(&mut at, &mut out, lr, beta1, beta2)?;
                let wd = at.scalar(weight_decay)?;
                for &(w, grad) in params_and_grads {
                    let name = at.g[w].name.as_deref().unwrap_or("");
                    let excluded = exclude_from_weight_decay
                        .iter()
                        .any(|e| name.contains(e.as_str()));
                    // Keras: variable.assign(variable - variable * wd * lr), then Adam
                    let decayed = if excluded {
                        w
                    } else {
                        let wwd = at.mul(w, wd)?;
                        let decay = at.mul(wwd, lr)?;
                        at.sub(w, decay)?
                    };
                    let hp = (beta1, beta2, epsilon);
                    adam_update(&mut at, &mut out, alpha, w, decayed, grad, hp)?;
                }
            }
            Optimizer::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            } => {
                for &(w, grad) in params_and_grads {
                    let hp = RmsProp {
                        rho,
                        momentum,
                        epsilon,
                        centered,
                    };
                    rmsprop_update(&mut at, &mut out, lr, w, grad, hp)?;
                }
            }
            Optimizer::Adagrad {
                initial_accumulator_value,
                epsilon,
            } => {
                for &(w, grad) in params_and_grads {
                    let init = initial_accumulator_value;
                    adagrad_update(&mut at, &mut out, lr, w, grad, init, epsilon)?;
                }
            }
            Optimizer::Scheduled { .. } => {
                return Err(at.err("internal: a schedule of a scheduled optimizer".into()))
            }
        }
        register(&mut at, &out)?;
        Ok(out)
    }

    fn check(&self, at: &At<'_>) -> Result<(), BuildError> {
        let bad =
            |what: &str, v: f64| at.err(format!("{}: {what} = {v} is out of range", self.name()));
        let unit = |what: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(bad(&format!("{what} (expected 0 <= {what} < 1)"), v))
            }
        };
        let non_negative = |what: &str, v: f64| {
            if v >= 0.0 {
                Ok(())
            } else {
                Err(bad(&format!("{what} (expected >= 0)"), v))
            }
        };
        match self {
            Optimizer::Sgd { momentum, .. } => unit("momentum", *momentum)?,
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                unit("beta1", *beta1)?;
                unit("beta2", *beta2)?;
                non_negative("epsilon", *epsilon)?;
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                ..
            } => {
                unit("beta1", *beta1)?;
                unit("beta2", *beta2)?;
                non_negative("epsilon", *epsilon)?;
                non_negative("weight_decay", *weight_decay)?;
            }
            Optimizer::RmsProp {
                rho,
                momentum,
                epsilon,
                ..
            } => {
                unit("rho", *rho)?;
                unit("momentum", *momentum)?;
                non_negative("epsilon", *epsilon)?;
            }
            Optimizer::Adagrad {
                initial_accumulator_value,
                epsilon,
            } => {
                non_negative("initial_accumulator_value", *initial_accumulator_value)?;
                non_negative("epsilon", *epsilon)?;
            }
            Optimizer::Scheduled {
                optimizer,
                schedule,
            } => {
                if optimizer.schedule().is_some() {
                    return Err(at.err("a scheduled optimizer cannot be scheduled again".into()));
                }
                optimizer.check(at)?;
                schedule.check(at)?;
            }
        }
        Ok(())
    }
}

/// Registers the updates of `out` in the graph.
fn register(at: &mut At<'_>, out: &Applied) -> Result<(), BuildError> {
    for &(target, value) in &out.updates {
        at.g.add_update(target, value).map_err(|e| BuildError {
            loc: Some(at.loc.clone()),
            ..e
        })?;
    }
    Ok(())
}

fn check_pairs(at: &At<'_>, lr: NodeId, pairs: &[(NodeId, NodeId)]) -> Result<(), BuildError> {
    let lr_ty = at.ty(lr)?;
    if lr_ty != TensorType::f32(Shape::scalar()) {
        return Err(at.err(format!(
            "learning rate {} must be f32[], found {lr_ty}",
            at.name_of(lr)
        )));
    }
    for &(w, grad) in pairs {
        let (wt, gt) = (at.ty(w)?, at.ty(grad)?);
        if !matches!(at.g[w].op, Op::Param { .. }) {
            return Err(at.err(format!(
                "optimizer target {} is a {}, expected a param",
                at.name_of(w),
                at.g[w].op.name()
            )));
        }
        if wt != gt {
            return Err(at.err(format!(
                "gradient of {} has type {gt}, expected {wt} like the param",
                at.name_of(w)
            )));
        }
        if at.g.updates().iter().any(|u| u.target == w) {
            return Err(at.err(format!(
                "param {} already has an update (is the optimizer applied twice?)",
                at.name_of(w)
            )));
        }
    }
    Ok(())
}

/// A zero-initialized state tensor shaped like `w`, called `<w>.<suffix>`.
fn state_like(
    at: &mut At<'_>,
    out: &mut Applied,
    w: NodeId,
    suffix: &str,
) -> Result<NodeId, BuildError> {
    state_like_init(at, out, w, suffix, Init::Zeros)
}

/// A state tensor shaped like `w` starting at `init`, called `<w>.<suffix>`.
fn state_like_init(
    at: &mut At<'_>,
    out: &mut Applied,
    w: NodeId,
    suffix: &str,
    init: Init,
) -> Result<NodeId, BuildError> {
    let name = format!("{}.{suffix}", at.name_of(w));
    let ty = at.ty(w)?;
    let s = at.leaf(&name, Op::State { init }, ty)?;
    out.state.push(s);
    Ok(s)
}

fn sgd_update(
    at: &mut At<'_>,
    out: &mut Applied,
    lr: NodeId,
    w: NodeId,
    grad: NodeId,
    momentum: f64,
    nesterov: bool,
) -> Result<(), BuildError> {
    let step = at.mul(grad, lr)?; // lr * g
    if momentum == 0.0 {
        let new_w = at.sub(w, step)?;
        out.updates.push((w, new_w));
        return Ok(());
    }
    let v = state_like(at, out, w, "velocity")?;
    let mv = at.scale(v, momentum)?;
    let new_v = at.sub(mv, step)?; // mu * v - lr * g
    let delta = if nesterov {
        let mnv = at.scale(new_v, momentum)?;
        at.sub(mnv, step)? // mu * v_new - lr * g
    } else {
        new_v
    };
    let new_w = at.add(w, delta)?;
    out.updates.push((v, new_v));
    out.updates.push((w, new_w));
    Ok(())
}

/// The name of the optimizer's step counter: an f32 state, 0 before the first step,
/// incremented by 1 at each step, made by Adam and AdamW (for the bias correction) and by a
/// learning-rate [`Schedule`]; one counter per graph. Plain SGD, momentum, RMSprop and Adagrad
/// without a schedule count no steps.
pub const STEP_COUNTER: &str = "optimizer.step";

/// The step counter `t` (steps done before this one) and `t + 1`, its new value: the graph's
/// counter when it has one with its increment registered, else a new counter whose increment
/// is added to `out` (then also the constant 1 it adds, for the caller to reuse).
fn step_counter(
    at: &mut At<'_>,
    out: &mut Applied,
) -> Result<(NodeId, NodeId, Option<NodeId>), BuildError> {
    if let Some(t) = at.g.find(STEP_COUNTER) {
        let t1 =
            at.g.updates()
                .iter()
                .find(|u| u.target == t)
                .map(|u| u.value);
        return match (&at.g[t].op, t1) {
            (Op::State { .. }, Some(t1)) if at.g[t].ty == TensorType::f32(Shape::scalar()) => {
                Ok((t, t1, None))
            }
            _ => Err(at.err(format!(
                "node {STEP_COUNTER:?} exists but is not an f32[] step counter state with its increment"
            ))),
        };
    }
    let t = at.leaf(
        STEP_COUNTER,
        Op::State { init: Init::Zeros },
        TensorType::f32(Shape::scalar()),
    )?;
    out.state.push(t);
    let one = at.scalar(1.0)?;
    let t1 = at.add(t, one)?;
    out.updates.push((t, t1));
    Ok((t, t1, Some(one)))
}

/// Increments the step counter and returns `lr * sqrt(1 - b2^t) / (1 - b1^t)` (a scalar).
fn adam_step_size(
    at: &mut At<'_>,
    out: &mut Applied,
    lr: NodeId,
    beta1: f64,
    beta2: f64,
) -> Result<NodeId, BuildError> {
    let (_, t1, one) = step_counter(at, out)?;
    let one = match one {
        Some(one) => one,
        None => at.scalar(1.0)?,
    };
    let b1 = at.scalar(beta1)?;
    let b2 = at.scalar(beta2)?;
    let b1t = at.bin(BinaryOp::Pow, b1, t1)?;
    let b2t = at.bin(BinaryOp::Pow, b2, t1)?;
    let c1 = at.sub(one, b1t)?;
    let c2 = at.sub(one, b2t)?;
    let sc2 = at.unary(UnaryOp::Sqrt, c2)?;
    let num = at.mul(lr, sc2)?;
    at.div(num, c1)
}

/// Adam's update of param `w` whose value before the update is `w0` (`w` itself, or
/// AdamW's decayed `w`); `hp` is `(beta1, beta2, epsilon)`.
fn adam_update(
    at: &mut At<'_>,
    out: &mut Applied,
    alpha: NodeId,
    w: NodeId,
    w0: NodeId,
    grad: NodeId,
    (beta1, beta2, epsilon): (f64, f64, f64),
) -> Result<(), BuildError> {
    let m = state_like(at, out, w, "m")?;
    let v = state_like(at, out, w, "v")?;
    // m <- m + (g - m) * (1 - b1)
    let gm = at.sub(grad, m)?;
    let gm = at.scale(gm, 1.0 - beta1)?;
    let new_m = at.add(m, gm)?;
    // v <- v + (g^2 - v) * (1 - b2)
    let g2 = at.mul(grad, grad)?;
    let gv = at.sub(g2, v)?;
    let gv = at.scale(gv, 1.0 - beta2)?;
    let new_v = at.add(v, gv)?;
    // w <- w - alpha * m / (sqrt(v) + eps)
    let sv = at.unary(UnaryOp::Sqrt, new_v)?;
    let eps = at.scalar(epsilon)?;
    let den = at.add(sv, eps)?;
    let am = at.mul(new_m, alpha)?;
    let step = at.div(am, den)?;
    let new_w = at.sub(w0, step)?;
    out.updates.push((m, new_m));
    out.updates.push((v, new_v));
    out.updates.push((w, new_w));
    Ok(())
}

/// RMSprop's hyper-parameters ([`Optimizer::RmsProp`]).
#[derive(Clone, Copy)]
struct RmsProp {
    rho: f64,
    momentum: f64,
    epsilon: f64,
    centered: bool,
}

/// Keras 3's `RMSprop.update_step`, operation for operation.
fn rmsprop_update(
    at: &mut At<'_>,
    out: &mut Applied,
    lr: NodeId,
    w: NodeId,
    grad: NodeId,
    hp: RmsProp,
) -> Result<(), BuildError> {
    let v = state_like(at, out, w, "velocity")?;
    let mom = if hp.momentum > 0.0 {
        Some(state_like(at, out, w, "momentum")?)
    } else {
        None
    };
    let avg = if hp.centered {
        Some(state_like(at, out, w, "average_gradient")?)
    } else {
        None
    };
    let rho = at.scalar(hp.rho)?;
    let one_minus_rho = at.scalar(1.0 - hp.rho)?;
    // v <- rho * v + (1 - rho) * g^2
    let rv = at.mul(rho, v)?;
    let g2 = at.mul(grad, grad)?;
    let g2 = at.mul(one_minus_rho, g2)?;
    let new_v = at.add(rv, g2)?;
    out.updates.push((v, new_v));
    let eps = at.scalar(hp.epsilon)?;
    let den = match avg {
        Some(a) => {
            // a <- rho * a + (1 - rho) * g; den = v - a^2 + eps
            let ra = at.mul(rho, a)?;
            let ga = at.mul(one_minus_rho, grad)?;
            let new_a = at.add(ra, ga)?;
            out.updates.push((a, new_a));
            let a2 = at.mul(new_a, new_a)?;
            let d = at.sub(new_v, a2)?;
            at.add(d, eps)?
        }
        None => at.add(new_v, eps)?,
    };
    // increment = lr * g / sqrt(den)
    let root = at.unary(UnaryOp::Sqrt, den)?;
    let lg = at.mul(lr, grad)?;
    let increment = at.div(lg, root)?;
    let step = match mom {
        Some(m) => {
            // mom <- momentum * mom + increment; w <- w - mom
            let mm = at.scale(m, hp.momentum)?;
            let new_m = at.add(mm, increment)?;
            out.updates.push((m, new_m));
            new_m
        }
        None => increment,
    };
    let new_w = at.sub(w, step)?;
    out.updates.push((w, new_w));
    Ok(())
}

/// Keras 3's `Adagrad.update_step`: `acc <- acc + g^2`; `w <- w - lr * g / sqrt(acc + eps)`.
fn adagrad_update(
    at: &mut At<'_>,
    out: &mut Applied,
    lr: NodeId,
    w: NodeId,
    grad: NodeId,
    initial_accumulator_value: f64,
    epsilon: f64,
) -> Result<(), BuildError> {
    let init = if initial_accumulator_value == 0.0 {
        Init::Zeros
    } else {
        Init::Constant {
            value: initial_accumulator_value,
        }
    };
    let acc = state_like_init(at, out, w, "accumulator", init)?;
    let g2 = at.mul(grad, grad)?;
    let new_acc = at.add(acc, g2)?;
    let eps = at.scalar(epsilon)?;
    let den = at.add(new_acc, eps)?;
    let root = at.unary(UnaryOp::Sqrt, den)?;
    let lg = at.mul(lr, grad)?;
    let step = at.div(lg, root)?;
    let new_w = at.sub(w, step)?;
    out.updates.push((acc, new_acc));
    out.updates.push((w, new_w));
    Ok(())
}

/// A weight penalty added to the loss: `l1 * sum|w| + l2 * sum w^2` (Keras `L1L2`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Regularizer {
    /// L1 factor.
    pub l1: f64,
    /// L2 factor.
    pub l2: f64,
}

impl Regularizer {
    /// Keras `l1(factor)`.
    pub fn l1(factor: f64) -> Regularizer {
        Regularizer {
            l1: factor,
            l2: 0.0,
        }
    }

    /// Keras `l2(factor)`.
    pub fn l2(factor: f64) -> Regularizer {
        Regularizer {
            l1: 0.0,
            l2: factor,
        }
    }

    /// Keras `l1_l2(l1, l2)`.
    pub fn l1_l2(l1: f64, l2: f64) -> Regularizer {
        Regularizer { l1, l2 }
    }

    /// Whether both factors are zero (no nodes are made).
    pub fn is_zero(&self) -> bool {
        self.l1 == 0.0 && self.l2 == 0.0
    }

    /// The penalty of `w` as a scalar node, or `None` when both factors are zero.
    #[track_caller]
    pub fn penalty(&self, g: &mut Graph, w: NodeId) -> Result<Option<NodeId>, BuildError> {
        let mut at = At::caller(g);
        self.penalty_at(&mut at, w)
    }

    pub(crate) fn penalty_at(
        &self,
        at: &mut At<'_>,
        w: NodeId,
    ) -> Result<Option<NodeId>, BuildError> {
        let mut total = None;
        if self.l1 != 0.0 {
            let a = at.unary(UnaryOp::Abs, w)?;
            let s = at.sum_all(a)?;
            total = Some(at.scale(s, self.l1)?);
        }
        if self.l2 != 0.0 {
            let sq = at.mul(w, w)?;
            let s = at.sum_all(sq)?;
            let p = at.scale(s, self.l2)?;
            total = Some(match total {
                Some(t) => at.add(t, p)?,
                None => p,
            });
        }
        Ok(total)
    }
}

/// `loss + sum of the penalties of each (param, regularizer)`; returns `loss` itself when
/// every regularizer is zero. `loss` must be a scalar.
#[track_caller]
pub fn add_penalties(
    g: &mut Graph,
    loss: NodeId,
    regs: &[(NodeId, Regularizer)],
) -> Result<NodeId, BuildError> {
    let mut at = At::caller(g);
    add_penalties_at(&mut at, loss, regs)
}

pub(crate) fn add_penalties_at(
    at: &mut At<'_>,
    loss: NodeId,
    regs: &[(NodeId, Regularizer)],
) -> Result<NodeId, BuildError> {
    let lt = at.ty(loss)?;
    if lt != TensorType::f32(Shape::scalar()) {
        return Err(at.err(format!("the loss must be f32[], found {lt}")));
    }
    let mut total = loss;
    for &(w, r) in regs {
        if let Some(p) = r.penalty_at(at, w)? {
            total = at.add(total, p)?;
        }
    }
    Ok(total)
}

/// Gradient clipping applied before the optimizer (Keras' `global_clipnorm`, `clipnorm`,
/// `clipvalue`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clip {
    /// Scale all gradients by `c / max(global_norm, c)`, where `global_norm` is the L2 norm
    /// of all gradients together.
    GlobalNorm(f64),
    /// Scale each gradient by `c / max(norm, c)` with its own L2 norm.
    Norm(f64),
    /// Clamp each element to `[-c, c]`.
    Value(f64),
}

impl Clip {
    /// The clipped gradients, one per input gradient, in order. Errors if `c` is not positive.
    #[track_caller]
    pub fn apply(&self, g: &mut Graph, grads: &[NodeId]) -> Result<Vec<NodeId>, BuildError> {
        let mut at = At::caller(g);
        self.apply_at(&mut at, grads)
    }

    pub(crate) fn apply_at(
        &self,
        at: &mut At<'_>,
        grads: &[NodeId],
    ) -> Result<Vec<NodeId>, BuildError> {
        let c = match *self {
            Clip::GlobalNorm(c) | Clip::Norm(c) | Clip::Value(c) => c,
        };
        if c.is_nan() || c <= 0.0 {
            return Err(at.err(format!("clip threshold must be positive, found {c}")));
        }
        match *self {
            Clip::GlobalNorm(c) => {
                let mut total: Option<NodeId> = None;
                for &gr in grads {
                    let sq = at.mul(gr, gr)?;
                    let s = at.sum_all(sq)?;
                    total = Some(match total {
                        Some(t) => at.add(t, s)?,
                        None => s,
                    });
                }
                let Some(total) = total else {
                    return Ok(Vec::new());
                };
                let norm = at.unary(UnaryOp::Sqrt, total)?;
                let factor = norm_factor(at, norm, c)?;
                grads.iter().map(|&gr| at.mul(gr, factor)).collect()
            }
            Clip::Norm(c) => grads
                .iter()
                .map(|&gr| {
                    let sq = at.mul(gr, gr)?;
                    let s = at.sum_all(sq)?;
                    let norm = at.unary(UnaryOp::Sqrt, s)?;
                    let factor = norm_factor(at, norm, c)?;
                    at.mul(gr, factor)
                })
                .collect(),
            Clip::Value(c) => {
                let hi = at.scalar(c)?;
                let lo = at.scalar(-c)?;
                grads
                    .iter()
                    .map(|&gr| {
                        let a = at.bin(BinaryOp::Max, gr, lo)?;
                        at.bin(BinaryOp::Min, a, hi)
                    })
                    .collect()
            }
        }
    }
}

/// `c / max(norm, c)`: 1 when the norm is within `c`, else the factor that brings it to `c`.
fn norm_factor(at: &mut At<'_>, norm: NodeId, c: f64) -> Result<NodeId, BuildError> {
    let cn = at.scalar(c)?;
    let m = at.bin(BinaryOp::Max, norm, cn)?;
    at.div(cn, m)
}
