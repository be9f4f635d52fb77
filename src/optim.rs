//! Optimizers, regularization and gradient clipping as graph nodes.
//!
//! In: a [`Graph`] holding params, a scalar loss and the gradient of the loss with respect to
//! each param (from [`crate::autodiff::grad`]). Out: new nodes in the same graph that compute
//! each param's next value and the optimizer's next state, registered as updates
//! ([`Graph::add_update`]) so that one call of the compiled step trains one batch.
//!
//! The learning rate is an input node (`%lr: f32[] = input`, see [`lr_input`]), so a schedule
//! changes it between calls without recompiling. The formulas follow Keras 3 exactly:
//!
//! - SGD: `w <- w - lr * g`.
//! - SGD with momentum `mu`: `v <- mu * v - lr * g`; `w <- w + v`, or with Nesterov
//!   `w <- w + mu * v - lr * g` (with the new `v`). One velocity state per param.
//! - Adam: a step counter state `t` (f32, starts at 0) is incremented in the graph;
//!   `alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)`; `m <- m + (g - m) * (1 - b1)`;
//!   `v <- v + (g^2 - v) * (1 - b2)`; `w <- w - alpha * m / (sqrt(v) + eps)`.
//!
//! Regularization ([`Regularizer`], [`add_penalties`]) adds `l1 * sum|w| + l2 * sum w^2` to
//! the loss before differentiation; clipping ([`Clip`]) rewrites gradients before the update.
//!
//! Every node made here records the source location of the caller of the public function
//! (`#[track_caller]`), so a dump points at the user's line rather than at this file.

use crate::graph::{is_valid_name, BuildError, Graph, NodeId, SourceLoc};
use crate::op::{BinaryOp, Init, Literal, Op, ReduceOp, UnaryOp};
use crate::shape::{Shape, TensorType};
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
    let lr = lr_input(&mut update)?;
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
    let lr = lr_input(&mut step)?;
    let pairs: Vec<(NodeId, NodeId)> = params.into_iter().zip(grads).collect();
    let applied = optimizer.apply(&mut step, lr, &pairs)?;
    *g = step;
    Ok(applied)
}

/// A gradient-descent optimizer. Construct with [`Optimizer::sgd`], [`Optimizer::momentum`],
/// [`Optimizer::nesterov`] or [`Optimizer::adam`] (Keras defaults), or fill in the fields.
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

    /// Keras' default learning rate for this optimizer (0.01 for SGD, 0.001 for Adam).
    pub fn default_learning_rate(&self) -> f64 {
        match self {
            Optimizer::Sgd { .. } => 0.01,
            Optimizer::Adam { .. } => 0.001,
        }
    }

    /// Keras' name of the optimizer (`sgd`, `adam`).
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
        }
    }

    /// Appends the update of every `(param, grad)` pair, reading the learning rate from `lr`
    /// (an `f32[]` node, normally [`lr_input`]), and registers the updates in `g`. State nodes
    /// are named after their param: `<param>.velocity`, `<param>.m`, `<param>.v`, and Adam's
    /// step counter `optimizer.step`.
    ///
    /// Errors when a target is not a param, a gradient's type differs from its param's, `lr`
    /// is not `f32[]`, a hyper-parameter is out of range, or a param is already updated.
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
        let mut out = Applied::default();
        match *self {
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
                    adam_update(&mut at, &mut out, alpha, w, grad, beta1, beta2, epsilon)?;
                }
            }
        }
        for &(target, value) in &out.updates {
            at.g.add_update(target, value).map_err(|e| BuildError {
                loc: Some(at.loc.clone()),
                ..e
            })?;
        }
        Ok(out)
    }

    fn check(&self, at: &At<'_>) -> Result<(), BuildError> {
        let bad =
            |what: &str, v: f64| at.err(format!("{}: {what} = {v} is out of range", self.name()));
        match *self {
            Optimizer::Sgd { momentum, .. } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(bad("momentum (expected 0 <= momentum < 1)", momentum));
                }
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                if !(0.0..1.0).contains(&beta1) {
                    return Err(bad("beta1 (expected 0 <= beta1 < 1)", beta1));
                }
                if !(0.0..1.0).contains(&beta2) {
                    return Err(bad("beta2 (expected 0 <= beta2 < 1)", beta2));
                }
                if epsilon.is_nan() || epsilon < 0.0 {
                    return Err(bad("epsilon (expected >= 0)", epsilon));
                }
            }
        }
        Ok(())
    }
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
    let name = format!("{}.{suffix}", at.name_of(w));
    let ty = at.ty(w)?;
    let s = at.leaf(&name, Op::State { init: Init::Zeros }, ty)?;
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

/// The name of Adam's step counter: an f32 state, 0 before the first step, incremented by 1
/// at each step (for the bias correction). SGD and momentum count no steps.
pub const STEP_COUNTER: &str = "optimizer.step";

/// Increments the step counter and returns `lr * sqrt(1 - b2^t) / (1 - b1^t)` (a scalar).
fn adam_step_size(
    at: &mut At<'_>,
    out: &mut Applied,
    lr: NodeId,
    beta1: f64,
    beta2: f64,
) -> Result<NodeId, BuildError> {
    let t = at.leaf(
        STEP_COUNTER,
        Op::State { init: Init::Zeros },
        TensorType::f32(Shape::scalar()),
    )?;
    out.state.push(t);
    let one = at.scalar(1.0)?;
    let t1 = at.add(t, one)?;
    out.updates.push((t, t1));
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

#[allow(clippy::too_many_arguments)]
fn adam_update(
    at: &mut At<'_>,
    out: &mut Applied,
    alpha: NodeId,
    w: NodeId,
    grad: NodeId,
    beta1: f64,
    beta2: f64,
    epsilon: f64,
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
    let new_w = at.sub(w, step)?;
    out.updates.push((m, new_m));
    out.updates.push((v, new_v));
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
