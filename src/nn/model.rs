//! The Keras-like model: [`Sequential::compile`] gives a [`Model`] with `fit`, `evaluate`,
//! `predict`, and checkpoints ([`Model::save`]/[`Model::load`]: params, optimizer state and
//! counts in the training checkpoint schema of [`crate::train::checkpoint`], the one
//! `gradlift train` also writes and reads, so training resumes bit for bit;
//! [`Model::save_weights`]/[`Model::load_weights`]: params only).
//!
//! In: examples as a flat `&[f32]` (example after example, each of the model's input shape)
//! and [`Targets`]. Out: per-epoch [`History`], [`Evaluation`]s, predictions, trained weights.
//!
//! [`Model::fit`] and [`Model::evaluate`] run the library's one training driver
//! ([`crate::train::run`], [`crate::train::evaluate`]): this module supplies its session (a
//! step on a batch of example indices, the learning-rate schedule, validation at the end of
//! each epoch) and a progress bar.
//!
//! Each call shape gets its own graph, built once and cached by batch size (the last, partial
//! batch of an epoch gets a second variant):
//!
//! - training step: [`Sequential::build_graph`] (training mode) -> [`crate::autodiff::grad`]
//!   of the loss with respect to every param -> optional [`Clip`] -> [`Optimizer::apply`]
//!   with the learning-rate input `%lr` (so a schedule never rebuilds anything);
//! - evaluation: loss and metrics in inference mode; prediction: `predictions` only;
//!
//! then the default pass pipeline ([`crate::passes::DEFAULT_PIPELINE`]) runs on it.
//!
//! Params and optimizer state live in the [`Model`]'s [`Weights`], by node name, and are
//! shared by every variant: each call feeds them and writes the updated values back.

use super::layers::{dropout_mask, fill_dropout_mask};
use super::{GraphOptions, Loss, Metric, ModelGraph, Sequential};
use crate::checkpoint::{CheckpointError, NamedTensor, TensorData};
use crate::graph::{Graph, NodeId};
use crate::init::Rng;
use crate::op::Op;
use crate::optim::{Clip, Optimizer};
use crate::runtime::HostTensor;
use crate::shape::{DType, TensorType};
use crate::step::{compile_training_step, CompiledStep, StepOptions};
use crate::train::checkpoint::{Contents, TrainingState};
pub use crate::train::TrainError;
use crate::train::{
    EpochEnd, EpochStart, Evaluate, LastBatch, Means, Outputs, Plan, Position, Progress, Session,
    Span,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Targets of a batch of examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Targets<'a> {
    /// One class index per example (sparse categorical cross-entropy).
    Classes(&'a [i32]),
    /// Values shaped like the model's output, example after example (other losses).
    Values(&'a [f32]),
}

/// Which engine runs the step graphs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Native code: each step graph is compiled once by Cranelift ([`crate::runtime::compile`])
    /// and run as a [`crate::runtime::Executable`]. The default.
    #[default]
    Jit,
    /// The reference interpreter ([`crate::interp::eval`]): slow, the correctness oracle.
    Interpreter,
}

/// What [`Sequential::compile`] needs: Keras' `compile(optimizer, loss, metrics)`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Initial learning rate (Keras' default of the optimizer when built by [`Self::new`]).
    pub learning_rate: f64,
    /// The loss.
    pub loss: Loss,
    /// Metrics reported with the loss.
    pub metrics: Vec<Metric>,
    /// Gradient clipping, if any.
    pub clip: Option<Clip>,
    /// Whether to run the default pass pipeline ([`crate::passes::DEFAULT_PIPELINE`]) on
    /// every step graph before it runs (default true).
    pub optimize: bool,
    /// The engine that runs the steps (default [`Backend::Jit`]).
    pub backend: Backend,
    /// Threads a training step may use (default: [`crate::step::StepOptions`]'s, i.e.
    /// `GRADLIFT_THREADS` or every core). Results do not depend on it.
    pub threads: Option<usize>,
    /// Shards each training batch is split into (default: chosen from the model and the
    /// batch size, see [`crate::step::default_shards`]).
    pub shards: Option<usize>,
    /// Check every training step for NaN and infinite values and, at the first one, name the
    /// node that computed it (default false; see [`crate::numerics`] and
    /// [`crate::step::StepOptions::check_numerics`]). The trained values are the same either
    /// way; without it, [`Model::fit`] still stops at the first non-finite loss or metric.
    pub check_numerics: bool,
    /// Train data-parallel over the ranks of `mpirun -n N` (default false): the training
    /// steps join MPI's world ([`crate::dist::init`], with the `mpi` feature), each rank
    /// computes its `batch / N` examples of every batch (the same global batches as one
    /// process) and the gradients are all-reduced before the update, so every rank holds the
    /// same weights; [`Model::fit`] draws its bar and writes its checkpoints on rank 0 only.
    /// Every batch, the last smaller one included, must split into `N` equal parts. In a
    /// single process, or without the feature, training is unchanged.
    pub data_parallel: bool,
}

impl CompileOptions {
    /// Options with the optimizer's default learning rate and no clipping.
    pub fn new(optimizer: Optimizer, loss: Loss, metrics: &[Metric]) -> CompileOptions {
        CompileOptions {
            learning_rate: optimizer.default_learning_rate(),
            optimizer,
            loss,
            metrics: metrics.to_vec(),
            clip: None,
            optimize: true,
            backend: Backend::Jit,
            threads: None,
            shards: None,
            check_numerics: false,
            data_parallel: false,
        }
    }

    /// Sets [`CompileOptions::data_parallel`].
    pub fn data_parallel(mut self, on: bool) -> CompileOptions {
        self.data_parallel = on;
        self
    }

    /// Sets whether every training step is checked for NaN and infinite values.
    pub fn check_numerics(mut self, check: bool) -> CompileOptions {
        self.check_numerics = check;
        self
    }

    /// Sets the number of threads a training step may use.
    pub fn threads(mut self, threads: usize) -> CompileOptions {
        self.threads = Some(threads);
        self
    }

    /// Sets the number of shards each training batch is split into.
    pub fn shards(mut self, shards: usize) -> CompileOptions {
        self.shards = Some(shards);
        self
    }

    /// Sets the learning rate.
    pub fn learning_rate(mut self, lr: f64) -> CompileOptions {
        self.learning_rate = lr;
        self
    }

    /// Sets gradient clipping.
    pub fn clip(mut self, clip: Clip) -> CompileOptions {
        self.clip = Some(clip);
        self
    }

    /// Sets the engine that runs the steps.
    pub fn backend(mut self, backend: Backend) -> CompileOptions {
        self.backend = backend;
        self
    }
}

/// Options of [`Model::fit`] (Keras' defaults: batch 32, shuffled, verbose).
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// The epoch to stop before: epochs `initial_epoch..epochs` run (the number of passes
    /// over the data when `initial_epoch` is 0, as in Keras).
    pub epochs: usize,
    /// Examples per step; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Whether to reshuffle the examples at every epoch.
    pub shuffle: bool,
    /// Seed of the shuffling and of the dropout masks.
    pub seed: u64,
    /// Whether to draw a progress bar per epoch.
    pub verbose: bool,
    /// Learning rate for each epoch from the epoch index and the current rate (Keras'
    /// `LearningRateScheduler`); applied through the `%lr` input, without recompiling. An
    /// optimizer with its own [`crate::optim::Schedule`] refuses it (`fit` errs), as Keras does.
    pub schedule: Option<fn(usize, f64) -> f64>,
    /// Epoch at which to start (Keras' `initial_epoch`): epochs `initial_epoch..epochs` run,
    /// so `epochs` is the index of the last epoch, not a count. Each epoch's shuffle and
    /// dropout masks depend only on `seed` and the epoch index, so a run resumed from a
    /// checkpoint ([`Model::save`], [`Model::load`]) with `initial_epoch =`
    /// [`Model::epochs_trained`] repeats the uninterrupted run bit for bit.
    pub initial_epoch: usize,
    /// Fraction in `[0, 1)` of the examples held out for validation, taken from the end of
    /// `x` and `y` before any shuffling (as Keras does); never trained on. Ignored when
    /// validation data is passed to [`Model::fit_with_validation`].
    pub validation_split: f64,
    /// Keras' `EarlyStopping` callback (default none): stop when the monitored log stops
    /// improving, optionally back at the best epoch's params.
    pub early_stopping: Option<crate::train::EarlyStopping>,
    /// Keras' `ModelCheckpoint` callback (default none): [`Model::save`] after every epoch,
    /// or after those that improve the monitored log.
    pub checkpoint: Option<crate::train::ModelCheckpoint>,
}

impl Default for FitOptions {
    fn default() -> FitOptions {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: true,
            seed: 0,
            verbose: true,
            schedule: None,
            initial_epoch: 0,
            validation_split: 0.0,
            early_stopping: None,
            checkpoint: None,
        }
    }
}

/// Per-epoch logs of [`Model::fit`]: `history["loss"][epoch]`, `history["accuracy"][epoch]`,
/// `history["lr"][epoch]`, like Keras' `History.history`; with validation data also
/// `history["val_loss"]` and `history["val_<metric>"]`, measured at the end of each epoch.
/// `gradlift train --history FILE` writes the same for a graph model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Each logged quantity, one value per epoch.
    pub history: BTreeMap<String, Vec<f64>>,
    /// The epoch (from 0) of each entry, like Keras' `History.epoch` (a resumed run starts
    /// past 0).
    pub epoch: Vec<usize>,
}

impl History {
    /// The values of `name` per epoch (empty if it was not logged).
    pub fn get(&self, name: &str) -> &[f64] {
        self.history.get(name).map(|v| &v[..]).unwrap_or(&[])
    }

    /// Appends the logs of `epoch`. A name first logged now gets NaN for the epochs before
    /// (so every column keeps one value per epoch).
    pub fn push(&mut self, epoch: usize, logs: &[(String, f64)]) {
        let before = self.epoch.len();
        for (k, v) in logs {
            let col = self.history.entry(k.clone()).or_default();
            col.resize(before, f64::NAN);
            col.push(*v);
        }
        self.epoch.push(epoch);
        for col in self.history.values_mut() {
            col.resize(before + 1, f64::NAN);
        }
    }

    /// The history as CSV, as Keras' `CSVLogger` writes it: a header `epoch,<names>` (names
    /// sorted), then one row per epoch; values in full precision (Rust's shortest round trip),
    /// NaN where a name was not logged.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("epoch");
        for k in self.history.keys() {
            out.push(',');
            out.push_str(k);
        }
        out.push('\n');
        for (row, e) in self.epoch.iter().enumerate() {
            out.push_str(&e.to_string());
            for col in self.history.values() {
                out.push(',');
                out.push_str(&col.get(row).copied().unwrap_or(f64::NAN).to_string());
            }
            out.push('\n');
        }
        out
    }

    /// The history as JSON: `{"epoch": [...], "history": {"loss": [...], ...}}`, non-finite
    /// values as `null`.
    pub fn to_json(&self) -> String {
        let cols: serde_json::Map<String, serde_json::Value> = self
            .history
            .iter()
            .map(|(k, v)| {
                let vals = v
                    .iter()
                    .map(|&x| {
                        serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into)
                    })
                    .collect();
                (k.clone(), serde_json::Value::Array(vals))
            })
            .collect();
        let doc = serde_json::json!({ "epoch": self.epoch, "history": cols });
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Writes [`History::to_csv`] to a `.csv` path, [`History::to_json`] to a `.json` path;
    /// any other extension is an error that says so, as is a failed write (with the path).
    pub fn save(&self, path: &std::path::Path) -> Result<(), String> {
        let text = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => self.to_csv(),
            Some("json") => self.to_json(),
            _ => {
                return Err(format!(
                    "{}: a history file must end in .csv or .json",
                    path.display()
                ))
            }
        };
        std::fs::write(path, text)
            .map_err(|e| format!("{}: cannot write the history: {e}", path.display()))
    }
}

/// Result of [`Model::evaluate`]: the mean loss and metrics over all examples.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss (penalties included, as Keras reports it).
    pub loss: f64,
    /// Each metric, in the compiled order.
    pub metrics: Vec<(String, f64)>,
}

impl Evaluation {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }
}

/// Named f32 tensors: a model's params and optimizer state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// The values of `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(|(_, v)| &v[..])
    }

    /// The shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| &s[..])
    }

    /// Sets `name` to `values` of `shape`; errors if the count does not match the shape.
    pub fn insert(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        values: Vec<f32>,
    ) -> Result<(), TrainError> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(TrainError::Data(format!(
                "weight {name}: shape {shape:?} needs {n} values, found {}",
                values.len()
            )));
        }
        self.tensors.insert(name.to_string(), (shape, values));
        Ok(())
    }

    /// Names in sorted order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(|k| k.as_str()).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Which kind of graph a cached step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Train,
    Evaluate,
    Predict,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Train => "train",
            Kind::Evaluate => "evaluate",
            Kind::Predict => "predict",
        }
    }
}

/// One built graph with the handles a call needs, and its executable on the JIT backend.
struct Step {
    graph: Graph,
    x: NodeId,
    y: Option<NodeId>,
    lr: Option<NodeId>,
    masks: Vec<(NodeId, f64)>,
    /// The compiled step ([`Backend::Jit`] only): a training step split along the batch
    /// when it can be ([`crate::step::compile_training_step`]).
    exe: Option<CompiledStep>,
    /// The outputs of the last interpreted call ([`Backend::Interpreter`]).
    last: Vec<(String, HostTensor)>,
    /// The version of the weights the executable holds ([`Model`] keeps the current one).
    version: u64,
    /// With [`CompileOptions::check_numerics`] on the interpreter backend, a training step's
    /// forward graph and its graph before the pass pipeline: what a replay evaluates.
    reference: Option<(Graph, Graph)>,
}

/// A compiled model: the layers, the compile options, the weights and the built steps.
pub struct Model {
    /// The layers.
    pub model: Sequential,
    /// Optimizer, loss, metrics.
    pub options: CompileOptions,
    /// Current learning rate (fed to `%lr` at each step).
    pub learning_rate: f64,
    /// Params and optimizer state. With the JIT backend, the executables own working copies:
    /// `owner` names the one holding the newest values (then `weights` is stale until
    /// [`Model::sync`]), and each step records which `version` of the weights it holds.
    weights: Weights,
    version: u64,
    owner: Option<(Kind, usize)>,
    steps: HashMap<(Kind, usize), Step>,
    example_len: usize,
    output_shape: Vec<usize>,
    /// Epochs completed (by [`Model::fit`] or restored by [`Model::load`]).
    epochs_trained: usize,
    /// Training steps run (batches), likewise.
    steps_trained: u64,
    /// The plan of the last [`Model::fit`] (or of the run a loaded checkpoint recorded):
    /// its seed, batch size and number of examples go into [`Model::save`]'s metadata.
    last_plan: Option<Plan>,
}

impl Sequential {
    /// Keras' `compile`: checks that the model builds with this loss and these metrics and
    /// initializes the params from their seeded initializers.
    pub fn compile(self, options: CompileOptions) -> Result<Model, TrainError> {
        let probe = self.build_graph(&GraphOptions::evaluate(1, options.loss, &options.metrics))?;
        let mut weights = Weights::default();
        // params and the layers' state (batch normalization's moving statistics)
        for p in probe.graph.params().into_iter().chain(probe.graph.states()) {
            init_weight(&mut weights, &probe.graph, p)?;
        }
        let output_shape = self.output_shape()?;
        Ok(Model {
            example_len: self.input_shape.iter().product(),
            learning_rate: options.learning_rate,
            model: self,
            options,
            weights,
            version: 0,
            owner: None,
            steps: HashMap::new(),
            output_shape,
            epochs_trained: 0,
            steps_trained: 0,
            last_plan: None,
        })
    }
}

/// Sets `weights[name of p]` from the param's or state's initializer, if not set yet.
fn init_weight(weights: &mut Weights, g: &Graph, p: NodeId) -> Result<(), TrainError> {
    let n = &g[p];
    let name = n.name.clone().unwrap_or_default();
    if weights.get(&name).is_some() {
        return Ok(());
    }
    let init = match &n.op {
        Op::Param { init } | Op::State { init } => init,
        other => {
            return Err(TrainError::Data(format!(
                "{name} is a {}, not a param or state",
                other.name()
            )))
        }
    };
    let values = crate::init::values(init, &n.ty.shape)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    weights.insert(&name, n.ty.shape.dims().to_vec(), values)
}

impl Model {
    /// The params and optimizer state, by node name.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Mutable access to the weights (shapes are checked when a step runs).
    pub fn weights_mut(&mut self) -> &mut Weights {
        self.version += 1;
        &mut self.weights
    }

    /// A copy of the params alone (no optimizer state), as the compiled steps name them.
    fn params_only(&self) -> Weights {
        let mut w = Weights::default();
        let names: Vec<String> = self
            .steps
            .values()
            .flat_map(|s| {
                s.graph
                    .params()
                    .into_iter()
                    .map(|id| s.graph[id].name.clone())
            })
            .flatten()
            .collect();
        for name in names {
            if let (Some(shape), Some(v)) = (self.weights.shape(&name), self.weights.get(&name)) {
                // the names and shapes come from the model's own weights: cannot fail
                let _ = w.insert(&name, shape.to_vec(), v.to_vec());
            }
        }
        w
    }

    /// Copies the newest params and state out of the executable that holds them (JIT backend)
    /// into [`Model::weights`]. Every public method leaves the model synced.
    fn sync(&mut self) -> Result<(), TrainError> {
        let Some(key) = self.owner.take() else {
            return Ok(());
        };
        let Some(step) = self.steps.get(&key) else {
            return Ok(());
        };
        let Some(exe) = &step.exe else {
            return Ok(());
        };
        for id in step.graph.params().into_iter().chain(step.graph.states()) {
            let name = step.graph[id].name.clone().unwrap_or_default();
            let t = match step.graph[id].op {
                Op::Param { .. } => exe.param(&name),
                _ => exe.state(&name),
            };
            let Some(values) = t.as_ref().and_then(|t| t.as_f32()) else {
                return Err(TrainError::Run {
                    graph: step.graph.name.clone(),
                    message: format!("the executable has no f32 value for {name}"),
                });
            };
            let shape = step.graph[id].ty.shape.dims().to_vec();
            self.weights.insert(&name, shape, values.to_vec())?;
        }
        Ok(())
    }

    /// The compile report of every compiled step (JIT backend), by graph name
    /// (`sequential_train_64`, ...), sorted by name.
    pub fn compile_reports(&self) -> Vec<(String, crate::codegen::CompileReport)> {
        let mut v: Vec<_> = self
            .steps
            .values()
            .filter_map(|s| {
                let r = s.exe.as_ref()?.reports().into_iter().next()?;
                Some((s.graph.name.clone(), r))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The graph of the training step for batches of `batch` examples (built if needed):
    /// forward, loss, gradients and optimizer updates, after the pass pipeline. The JIT runs
    /// it split along the batch when it can ([`crate::step::compile_training_step`]).
    pub fn train_graph(&mut self, batch: usize) -> Result<&Graph, TrainError> {
        Ok(&self.step(Kind::Train, batch)?.graph)
    }

    fn step(&mut self, kind: Kind, batch: usize) -> Result<&Step, TrainError> {
        if !self.steps.contains_key(&(kind, batch)) {
            let s = self.build_step(kind, batch)?;
            for id in s.graph.params().into_iter().chain(s.graph.states()) {
                init_weight(&mut self.weights, &s.graph, id)?;
            }
            self.steps.insert((kind, batch), s);
        }
        Ok(&self.steps[&(kind, batch)])
    }

    fn build_step(&self, kind: Kind, batch: usize) -> Result<Step, TrainError> {
        let o = &self.options;
        let (forward, mut graph, x, y, lr, masks) = self.step_graph(kind, batch)?;
        let reference =
            (o.check_numerics && kind == Kind::Train && o.backend == Backend::Interpreter)
                .then(|| (forward.clone(), graph.clone()));
        if o.optimize {
            crate::passes::Pipeline::default().run(&mut graph)?;
        }
        let exe = match (o.backend, kind) {
            (Backend::Interpreter, _) => None,
            (Backend::Jit, Kind::Train) => {
                let world = if o.data_parallel {
                    crate::dist::init().map_err(|e| TrainError::Run {
                        graph: forward.name.clone(),
                        message: e.to_string(),
                    })?
                } else {
                    crate::dist::World::SINGLE
                };
                let mut opts = StepOptions {
                    shards: o.shards,
                    optimize: o.optimize,
                    check_numerics: o.check_numerics,
                    world,
                    ..StepOptions::default()
                };
                if let Some(t) = o.threads {
                    opts.threads = t.max(1);
                }
                let (exe, _) = compile_training_step(
                    &forward,
                    "loss",
                    &o.optimizer,
                    o.clip.as_ref(),
                    batch,
                    &opts,
                )
                .map_err(|e| {
                    use crate::optim::TrainingStepError as T;
                    use crate::step::StepError as S;
                    match e {
                        S::Step(T::Grad(e)) => TrainError::Grad(e),
                        S::Step(T::Build(e)) => TrainError::Build(e),
                        S::Step(e @ T::Batch(_)) => TrainError::Run {
                            graph: forward.name.clone(),
                            message: e.to_string(),
                        },
                        S::Pass(e) => TrainError::Pass(e),
                        S::Compile(e) => TrainError::Compile(e),
                        e @ (S::Dist(_) | S::NotDataParallel { .. }) => TrainError::Run {
                            graph: forward.name.clone(),
                            message: e.to_string(),
                        },
                    }
                })?;
                Some(exe)
            }
            (Backend::Jit, _) => {
                let exe =
                    crate::runtime::compile(&graph, &crate::codegen::CompileOptions::default())?;
                Some(CompiledStep::whole(exe))
            }
        };
        Ok(Step {
            graph,
            x,
            y,
            lr,
            masks,
            exe,
            last: Vec::new(),
            version: u64::MAX,
            reference,
        })
    }

    /// The forward graph and the unoptimized graph of step `kind` for `batch` examples, with
    /// its input handles (`x`, targets, learning rate, dropout masks).
    #[allow(clippy::type_complexity)]
    fn step_graph(
        &self,
        kind: Kind,
        batch: usize,
    ) -> Result<
        (
            Graph,
            Graph,
            NodeId,
            Option<NodeId>,
            Option<NodeId>,
            Vec<(NodeId, f64)>,
        ),
        TrainError,
    > {
        let o = &self.options;
        let gopts = match kind {
            Kind::Train => GraphOptions::train(batch, o.loss, &o.metrics),
            Kind::Evaluate => GraphOptions::evaluate(batch, o.loss, &o.metrics),
            Kind::Predict => GraphOptions::predict(batch),
        };
        let ModelGraph {
            mut graph,
            x,
            y,
            loss,
            params,
            dropout_masks,
            ..
        } = self.model.build_graph(&gopts)?;
        graph.name = format!("{}_{}_{batch}", self.model.name, kind.name());
        let forward = graph.clone();
        let mut lr = None;
        if let (Kind::Train, Some(loss)) = (kind, loss) {
            let grads = crate::autodiff::grad(&mut graph, loss, &params)?;
            let grads = match &o.clip {
                Some(c) => c.apply(&mut graph, &grads)?,
                None => grads,
            };
            let lr_node = o.optimizer.learning_rate(&mut graph)?;
            let pairs: Vec<(NodeId, NodeId)> = params.iter().copied().zip(grads).collect();
            o.optimizer.apply(&mut graph, lr_node, &pairs)?;
            // with a schedule the graph computes its learning rate: no input to feed
            lr = (graph[lr_node].op == Op::Input).then_some(lr_node);
        }
        Ok((forward, graph, x, y, lr, dropout_masks))
    }

    fn check_x(&self, x: &[f32]) -> Result<usize, TrainError> {
        if self.example_len == 0 || !x.len().is_multiple_of(self.example_len) {
            return Err(TrainError::Data(format!(
                "x has {} values, which is not a whole number of examples of shape {:?} ({} values each)",
                x.len(),
                self.model.input_shape,
                self.example_len
            )));
        }
        Ok(x.len() / self.example_len)
    }

    fn check_targets(&self, y: Targets<'_>, n: usize) -> Result<(), TrainError> {
        let out_len: usize = self.output_shape.iter().product();
        match (y, self.options.loss) {
            (Targets::Classes(c), Loss::SparseCategoricalCrossentropy { .. }) => {
                if c.len() != n {
                    return Err(TrainError::Data(format!(
                        "expected {n} class targets (one per example), found {}",
                        c.len()
                    )));
                }
                let classes = self.output_shape.last().copied().unwrap_or(0) as i32;
                if let Some(bad) = c.iter().find(|&&k| k < 0 || k >= classes) {
                    return Err(TrainError::Data(format!(
                        "class target {bad} is out of range 0..{classes}"
                    )));
                }
            }
            (Targets::Values(v), loss)
                if !matches!(loss, Loss::SparseCategoricalCrossentropy { .. }) =>
            {
                if v.len() != n * out_len {
                    return Err(TrainError::Data(format!(
                        "expected {} target values ({n} examples of shape {:?}), found {}",
                        n * out_len,
                        self.output_shape,
                        v.len()
                    )));
                }
            }
            (Targets::Classes(_), loss) => {
                return Err(TrainError::Data(format!(
                "class targets need the loss sparse_categorical_crossentropy, the model uses {}",
                loss.name()
            )))
            }
            (Targets::Values(_), loss) => {
                return Err(TrainError::Data(format!(
                    "the loss {} needs class targets (Targets::Classes)",
                    loss.name()
                )))
            }
        }
        Ok(())
    }

    /// Keras' `fit`: epochs `opts.initial_epoch..opts.epochs` over `(x, y)` in (shuffled)
    /// mini-batches, one training step per batch. Returns the per-epoch mean loss and metrics
    /// (weighted by batch size) and the learning rate used; with `opts.validation_split > 0`
    /// the last examples are held out and `val_loss`, `val_<metric>` are logged too.
    ///
    /// Training stops at the first step whose loss or a metric is NaN or infinite (with
    /// [`CompileOptions::check_numerics`]: also a param or optimizer state) with
    /// [`TrainError::NonFinite`]; the weights then hold that step's results and
    /// [`Model::steps_trained`] counts it. With the check, the error names the first node
    /// that computed a non-finite value (see [`crate::numerics`]).
    pub fn fit(
        &mut self,
        x: &[f32],
        y: Targets<'_>,
        opts: &FitOptions,
    ) -> Result<History, TrainError> {
        self.fit_with_validation(x, y, None, opts)
    }

    /// [`Model::fit`] with Keras' `validation_data`: when `validation` is given, it is
    /// evaluated ([`Model::evaluate`], inference mode, batches of `opts.batch_size`) at the
    /// end of every epoch and logged as `val_loss` and `val_<metric>`; `opts.validation_split`
    /// is then ignored. Every example of `(x, y)` is trained on.
    pub fn fit_with_validation(
        &mut self,
        x: &[f32],
        y: Targets<'_>,
        validation: Option<(&[f32], Targets<'_>)>,
        opts: &FitOptions,
    ) -> Result<History, TrainError> {
        let n = self.check_x(x)?;
        self.check_targets(y, n)?;
        if opts.batch_size == 0 {
            return Err(TrainError::Data("batch size must be at least 1".into()));
        }
        if n == 0 {
            return Err(TrainError::Data("no examples to fit".into()));
        }
        let (x, y, validation) = match validation {
            Some((vx, vy)) => {
                let in_validation = |e| TrainError::Data(format!("validation data: {e}"));
                let vn = self.check_x(vx).map_err(in_validation)?;
                self.check_targets(vy, vn).map_err(in_validation)?;
                if vn == 0 {
                    return Err(TrainError::Data("validation data has no examples".into()));
                }
                (x, y, Some((vx, vy)))
            }
            None => self.split_validation(x, y, n, opts.validation_split)?,
        };
        let result = self.fit_epochs(x, y, validation, opts);
        // Even after an error, the weights reflect every step that ran.
        self.sync()?;
        result
    }

    /// Splits off the last `split` fraction of the examples as validation data (Keras: the
    /// first `floor(n * (1 - split))` examples train).
    #[allow(clippy::type_complexity)]
    fn split_validation<'x>(
        &self,
        x: &'x [f32],
        y: Targets<'x>,
        n: usize,
        split: f64,
    ) -> Result<(&'x [f32], Targets<'x>, Option<(&'x [f32], Targets<'x>)>), TrainError> {
        if split == 0.0 {
            return Ok((x, y, None));
        }
        if !(0.0..1.0).contains(&split) {
            return Err(TrainError::Data(format!(
                "validation_split must be in [0, 1), found {split}"
            )));
        }
        let train = (n as f64 * (1.0 - split)).floor() as usize;
        if train == 0 || train == n {
            return Err(TrainError::Data(format!(
                "validation_split {split} of {n} examples leaves {train} to train and {} to validate; both need at least one",
                n - train
            )));
        }
        let (xt, xv) = x.split_at(train * self.example_len);
        let (yt, yv) = match y {
            Targets::Classes(c) => {
                let (a, b) = c.split_at(train);
                (Targets::Classes(a), Targets::Classes(b))
            }
            Targets::Values(v) => {
                let (a, b) = v.split_at(train * self.output_shape.iter().product::<usize>());
                (Targets::Values(a), Targets::Values(b))
            }
        };
        Ok((xt, yt, Some((xv, yv))))
    }

    /// Runs the driver ([`crate::train::run`]) over epochs `opts.initial_epoch..opts.epochs`.
    fn fit_epochs(
        &mut self,
        x: &[f32],
        y: Targets<'_>,
        validation: Option<(&[f32], Targets<'_>)>,
        opts: &FitOptions,
    ) -> Result<History, TrainError> {
        if opts.schedule.is_some() && self.options.optimizer.schedule().is_some() {
            // Keras refuses to set the learning rate of an optimizer built with a schedule
            return Err(TrainError::Model(format!(
                "FitOptions::schedule sets the learning rate each epoch, but the optimizer computes it with its own schedule ({:?}): use one of the two",
                self.options.optimizer.schedule()
            )));
        }
        let n = x.len() / self.example_len.max(1);
        let plan = Plan {
            examples: n,
            batch_size: opts.batch_size,
            last_batch: LastBatch::Train,
            shuffle: opts.shuffle,
            seed: opts.seed,
        };
        let span = Span {
            start: Position {
                epoch: opts.initial_epoch,
                batch: 0,
            },
            epochs: opts.epochs,
            max_steps: None,
            steps_done: self.steps_trained,
        };
        self.last_plan = Some(plan.clone());
        // data-parallel: every rank trains, rank 0 alone draws the bar
        let root = if self.options.data_parallel {
            let w = crate::dist::init().map_err(|e| TrainError::Data(e.to_string()))?;
            crate::train::check_same_plan(&plan, &span)?;
            w.is_root()
        } else {
            true
        };
        let mut session = FitSession {
            model: self,
            x,
            y,
            validation,
            batch_size: opts.batch_size,
            schedule: opts.schedule,
            history: History::default(),
            early: opts
                .early_stopping
                .clone()
                .map(|r| (crate::train::Watch::new(r), None)),
            stop: false,
            checkpoint: opts.checkpoint.clone().map(|c| {
                let w = c.watch();
                (c, w)
            }),
        };
        let mut bar = Bar {
            verbose: opts.verbose && root,
            epochs: opts.epochs,
            bar: None,
        };
        if let Err(e) = crate::train::run(&mut session, &plan, &span, &mut bar) {
            bar.abandon();
            return Err(e);
        }
        Ok(session.history)
    }

    /// Keras' `evaluate`: the mean loss and metrics over `(x, y)`, in inference mode.
    pub fn evaluate(
        &mut self,
        x: &[f32],
        y: Targets<'_>,
        batch_size: usize,
    ) -> Result<Evaluation, TrainError> {
        let n = self.check_x(x)?;
        self.check_targets(y, n)?;
        if batch_size == 0 || n == 0 {
            return Err(TrainError::Data(
                "evaluate needs a batch size and examples".into(),
            ));
        }
        let mut session = EvalSession { model: self, x, y };
        let means = crate::train::evaluate(&mut session, n, batch_size)?.means;
        let loss = means.get("loss").unwrap_or(f64::NAN);
        let metrics = self
            .options
            .metrics
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    means.get(m.name()).unwrap_or(f64::NAN),
                )
            })
            .collect();
        Ok(Evaluation { loss, metrics })
    }

    /// Keras' `predict`: the model's outputs for every example, example after example.
    pub fn predict(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<f32>, TrainError> {
        let n = self.check_x(x)?;
        if batch_size == 0 {
            return Err(TrainError::Data("batch size must be at least 1".into()));
        }
        let mut out = Vec::new();
        let order: Vec<usize> = (0..n).collect();
        for idx in order.chunks(batch_size) {
            self.run(Kind::Predict, x, None, idx, None)?;
            let outs = self.outputs((Kind::Predict, idx.len()));
            if let Some((_, p)) = outs.iter().find(|(n, _)| n == "predictions") {
                out.extend(p.to_f64().into_iter().map(|v| v as f32));
            }
        }
        Ok(out)
    }

    /// Epochs completed by [`Model::fit`] (restored by [`Model::load`]): pass it as
    /// [`FitOptions::initial_epoch`] to resume.
    pub fn epochs_trained(&self) -> usize {
        self.epochs_trained
    }

    /// Training steps (batches) run by [`Model::fit`] (restored by [`Model::load`]).
    pub fn steps_trained(&self) -> u64 {
        self.steps_trained
    }

    /// Saves everything training needs to resume exactly where it stopped, as a training
    /// checkpoint ([`crate::train::checkpoint`]: safetensors, written atomically, with
    /// checksums, in the schema `gradlift train` also reads): every param and every
    /// optimizer state of the training graph (moments, velocities, step counter), by node
    /// name, plus the metadata of [`TrainingState`] (`contents = training`, the epoch and
    /// step counts, the exact learning rate, and the last fit's seed, batch size and
    /// number of examples).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let g = self.checkpoint_graph()?;
        let ids: Vec<NodeId> = g.params().into_iter().chain(g.states()).collect();
        self.write_checkpoint(path.as_ref(), &g, &ids, Contents::Training)
    }

    /// Restores a training checkpoint written by [`Model::save`] or `gradlift train --save`
    /// (one schema, [`crate::train::checkpoint`]): params, optimizer state, epoch and step
    /// counts and learning rate. The file must hold exactly the tensors of this model's
    /// training graph with their dtypes and shapes, saved with this model's optimizer;
    /// otherwise the error lists every missing, unexpected or mismatched tensor by name. A
    /// truncated or corrupt file is an error naming the tensor involved. On any error the
    /// model is left untouched. Every compiled variant (each batch size, training and
    /// inference) runs with the restored values from its next call on.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let path = path.as_ref();
        let g = self.checkpoint_graph()?;
        let expected = crate::checkpoint::graph_tensor_types(&g)?;
        let (state, tensors) =
            crate::train::checkpoint::load(path, &expected, Some(self.options.optimizer.name()))?;
        let epoch = usize::try_from(state.epoch).map_err(|_| {
            TrainError::Data(format!(
                "{}: metadata epoch {} is more than this machine counts",
                path.display(),
                state.epoch
            ))
        })?;
        self.sync()?;
        let mut weights = self.weights.clone();
        for t in &tensors {
            weights.insert(&t.name, t.shape.dims().to_vec(), tensor_values(t))?;
        }
        self.weights = weights;
        self.version += 1;
        self.epochs_trained = epoch;
        self.steps_trained = state.step;
        self.learning_rate = state.learning_rate;
        self.last_plan = match (state.seed, state.batch_size, state.examples) {
            (Some(seed), Some(batch_size), Some(examples)) => Some(Plan {
                examples,
                batch_size,
                last_batch: LastBatch::Train,
                shuffle: true,
                seed,
            }),
            _ => None,
        };
        Ok(())
    }

    /// Writes the model's weights, the params and the layers' non-trainable state (batch
    /// normalization's moving statistics, as Keras' `save_weights` writes them), not the
    /// optimizer state, as a [`crate::checkpoint`] with `contents = weights`, for inference or
    /// fine-tuning.
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let g = self.checkpoint_graph()?;
        let ids = self.model_weight_ids(&g)?;
        self.write_checkpoint(path.as_ref(), &g, &ids, Contents::Weights)
    }

    /// The nodes of `g` (a step graph) that [`Model::save_weights`] writes: every param, then
    /// the state the model's layers declare (not the optimizer's).
    fn model_weight_ids(&self, g: &Graph) -> Result<Vec<NodeId>, TrainError> {
        let forward = self.model.build_graph(&GraphOptions::predict(1))?.graph;
        let own: Vec<String> = forward
            .states()
            .into_iter()
            .filter_map(|id| forward[id].name.clone())
            .collect();
        let states = g
            .states()
            .into_iter()
            .filter(|&id| g[id].name.as_ref().is_some_and(|n| own.contains(n)));
        Ok(g.params().into_iter().chain(states).collect())
    }

    /// Reads the params, and the layers' non-trainable state (batch normalization's moving
    /// statistics), from a file of [`Model::save_weights`], [`Model::save`] or
    /// `gradlift train --save` (the optimizer state of a training checkpoint, whichever
    /// optimizer wrote it, is then skipped: its `params` metadata says which tensors are
    /// params); every param and layer state of the model must be in the file with its dtype
    /// and shape, and the file may hold no other param. The optimizer state, counts and learning rate are
    /// left as they are; on any error the model is untouched.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        let path = path.as_ref();
        let g = self.checkpoint_graph()?;
        let all = crate::checkpoint::graph_tensor_types(&g)?;
        let wanted: Vec<String> = self
            .model_weight_ids(&g)?
            .into_iter()
            .filter_map(|id| g[id].name.clone())
            .collect();
        let params: Vec<(String, TensorType)> = all
            .into_iter()
            .filter(|(name, _)| wanted.contains(name))
            .collect();
        let params = &params[..];
        let ckpt = crate::checkpoint::load(path)?;
        // In a file of `Model::save`, the tensors not listed as params are optimizer state
        // (of whatever optimizer wrote it): skipped here.
        let problems = ckpt.weight_mismatches(params);
        if !problems.is_empty() {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                problems,
            }
            .into());
        }
        self.sync()?;
        let mut weights = self.weights.clone();
        for (name, _) in params {
            if let Some(t) = ckpt.get(name) {
                weights.insert(name, t.shape.dims().to_vec(), tensor_values(t))?;
            }
        }
        self.weights = weights;
        self.version += 1;
        Ok(())
    }

    /// The training graph (batch 1, unoptimized): its params and states are exactly what a
    /// checkpoint holds (the batch size changes no param or state).
    fn checkpoint_graph(&self) -> Result<Graph, TrainError> {
        Ok(self.step_graph(Kind::Train, 1)?.1)
    }

    /// Saves the nodes `ids` of `g` with their current values (the initializer's for a state
    /// no step has created yet) and the model's metadata.
    fn write_checkpoint(
        &self,
        path: &Path,
        g: &Graph,
        ids: &[NodeId],
        contents: Contents,
    ) -> Result<(), TrainError> {
        let mut tensors = Vec::with_capacity(ids.len());
        for &id in ids {
            let n = &g[id];
            let name = n.name.clone().unwrap_or_default();
            let values = match self.weights.get(&name) {
                Some(v) => v.to_vec(),
                None => {
                    let mut w = Weights::default();
                    init_weight(&mut w, g, id)?;
                    w.get(&name).map(|v| v.to_vec()).unwrap_or_default()
                }
            };
            tensors.push(match n.ty.dtype {
                DType::F32 => NamedTensor::f32(name, n.ty.shape.clone(), values),
                DType::I32 => NamedTensor::i32(
                    name,
                    n.ty.shape.clone(),
                    values.iter().map(|&v| v as i32).collect(),
                ),
            });
        }
        let params = g
            .params()
            .into_iter()
            .filter_map(|id| g[id].name.clone())
            .collect();
        let plan = self.last_plan.as_ref();
        let state = TrainingState {
            contents,
            model: self.model.name.clone(),
            params,
            optimizer: self.options.optimizer.name().to_string(),
            learning_rate: self.learning_rate,
            step: self.steps_trained,
            epoch: self.epochs_trained as u64,
            seed: plan.map(|p| p.seed),
            batch_size: plan.map(|p| p.batch_size),
            examples: plan.map(|p| p.examples),
        };
        crate::train::checkpoint::save(path, &tensors, &state)
    }

    /// Runs the step `kind` on the examples `idx` of `x`: gathers the batch into the step's
    /// inputs with the weights, the learning rate and fresh dropout masks, and writes the
    /// updates back into the weights; the outputs are then read with [`Model::outputs`]. On
    /// the JIT backend the batch goes straight into the compiled step's input buffers and a
    /// call allocates nothing.
    fn run(
        &mut self,
        kind: Kind,
        x: &[f32],
        y: Option<Targets<'_>>,
        idx: &[usize],
        rng: Option<&mut Rng>,
    ) -> Result<(), TrainError> {
        let k = self.example_len;
        let out_len: usize = self.output_shape.iter().product();
        let lr = self.learning_rate;
        let key = (kind, idx.len());
        let step_number = self.steps_trained + 1;
        self.step(kind, idx.len())?;
        if self.steps[&key].exe.is_some() {
            self.sync_into(key)?;
        }
        let step = self
            .steps
            .get_mut(&key)
            .ok_or_else(|| TrainError::Data("internal: step not built".into()))?;
        let graph = &step.graph;
        let run_err = |message: String| TrainError::Run {
            graph: graph.name.clone(),
            message,
        };
        let name = |id: NodeId| graph[id].name.as_deref().unwrap_or("");
        let Some(exe) = step.exe.as_mut() else {
            return self.run_interpreted(key, x, y, idx, rng);
        };
        let e = |e: crate::runtime::RunError| run_err(e.to_string());
        // a data-parallel step's buffers hold this rank's part of the batch
        let idx = exe.local(idx);
        if graph[step.x].ty.dtype == DType::I32 {
            // token ids: truncated toward zero and saturated, as the `cast` op converts
            let buf = exe.input_i32_mut(name(step.x)).map_err(e)?;
            for (dst, &i) in buf.chunks_exact_mut(k).zip(idx) {
                for (d, &v) in dst.iter_mut().zip(&x[i * k..(i + 1) * k]) {
                    *d = v as i32;
                }
            }
        } else {
            let buf = exe.input_f32_mut(name(step.x)).map_err(e)?;
            for (dst, &i) in buf.chunks_exact_mut(k).zip(idx) {
                dst.copy_from_slice(&x[i * k..(i + 1) * k]);
            }
        }
        if let (Some(yn), Some(t)) = (step.y, y) {
            match (t, graph[yn].ty.dtype) {
                (Targets::Classes(c), DType::I32) => {
                    let buf = exe.input_i32_mut(name(yn)).map_err(e)?;
                    for (d, &i) in buf.iter_mut().zip(idx) {
                        *d = c[i];
                    }
                }
                (Targets::Classes(c), DType::F32) => {
                    let buf = exe.input_f32_mut(name(yn)).map_err(e)?;
                    for (d, &i) in buf.iter_mut().zip(idx) {
                        *d = c[i] as f32;
                    }
                }
                (Targets::Values(v), _) => {
                    let buf = exe.input_f32_mut(name(yn)).map_err(e)?;
                    for (dst, &i) in buf.chunks_exact_mut(out_len).zip(idx) {
                        dst.copy_from_slice(&v[i * out_len..(i + 1) * out_len]);
                    }
                }
            }
        }
        if let Some(l) = step.lr {
            exe.input_f32_mut(name(l)).map_err(e)?[0] = lr as f32;
        }
        if let Some(rng) = rng {
            // a data-parallel rank draws the whole batch's masks, as one process does, and
            // keeps the rows of its examples (a mask's axis 0 is the batch)
            let w = exe.world();
            let skip = |rng: &mut Rng, n: usize| {
                for _ in 0..n {
                    let _ = rng.uniform();
                }
            };
            for &(m, rate) in &step.masks {
                let buf = exe.input_f32_mut(name(m)).map_err(e)?;
                let n = buf.len();
                skip(rng, n * w.rank);
                fill_dropout_mask(rng, buf, rate);
                skip(rng, n * (w.size - 1 - w.rank));
            }
        }
        let checked = match kind {
            Kind::Train => exe.run_checked(step_number),
            _ => {
                exe.run_bound();
                Ok(())
            }
        };
        if !graph.updates().is_empty() {
            self.version += 1;
            step.version = self.version;
            self.owner = Some(key);
        }
        Ok(checked?)
    }

    /// The outputs of the last call of step `(kind, batch)`.
    fn outputs(&self, key: (Kind, usize)) -> &[(String, HostTensor)] {
        match self.steps.get(&key) {
            Some(Step { exe: Some(e), .. }) => e.outputs(),
            Some(s) => &s.last,
            None => &[],
        }
    }

    /// [`Model::run`] on the reference interpreter.
    fn run_interpreted(
        &mut self,
        key: (Kind, usize),
        x: &[f32],
        y: Option<Targets<'_>>,
        idx: &[usize],
        rng: Option<&mut Rng>,
    ) -> Result<(), TrainError> {
        let k = self.example_len;
        let out_len: usize = self.output_shape.iter().product();
        let lr = self.learning_rate;
        let step_number = self.steps_trained + 1;
        let Some(step) = self.steps.get(&key) else {
            return Err(TrainError::Data("internal: step not built".into()));
        };
        let mut feeds: Vec<(NodeId, Vec<f32>)> = Vec::new();
        let mut xb = Vec::with_capacity(idx.len() * k);
        for &i in idx {
            xb.extend_from_slice(&x[i * k..(i + 1) * k]);
        }
        if step.graph[step.x].ty.dtype == DType::I32 {
            // the ids the JIT gets (`as i32`), held as floats by the interpreter
            for v in &mut xb {
                *v = *v as i32 as f32;
            }
        }
        feeds.push((step.x, xb));
        if let (Some(yn), Some(t)) = (step.y, y) {
            let yb: Vec<f32> = match t {
                Targets::Classes(c) => idx.iter().map(|&i| c[i] as f32).collect(),
                Targets::Values(v) => idx
                    .iter()
                    .flat_map(|&i| v[i * out_len..(i + 1) * out_len].iter().copied())
                    .collect(),
            };
            feeds.push((yn, yb));
        }
        if let Some(l) = step.lr {
            feeds.push((l, vec![lr as f32]));
        }
        if let Some(rng) = rng {
            for &(m, rate) in &step.masks {
                let n = step.graph[m].ty.shape.numel();
                feeds.push((m, dropout_mask(rng, n, rate)));
            }
        }
        let (outs, updates) = execute(&step.graph, &feeds, &self.weights)?;
        let non_finite = match key.0 {
            Kind::Train => {
                interpreted_numerics(step, &feeds, &self.weights, &outs, &updates, step_number)
            }
            _ => Ok(()),
        };
        let last = step
            .graph
            .outputs()
            .iter()
            .filter_map(|o| {
                let v = outs.get(&o.name)?.clone();
                let shape = step.graph[o.node].ty.shape.clone();
                Some((o.name.clone(), HostTensor::f32(shape, v)))
            })
            .collect();
        for (name, values) in updates {
            let shape = self
                .weights
                .shape(&name)
                .map(|s| s.to_vec())
                .unwrap_or_default();
            self.weights.insert(&name, shape, values)?;
        }
        if let Some(step) = self.steps.get_mut(&key) {
            step.last = last;
        }
        Ok(non_finite?)
    }

    /// Brings the compiled step `key` up to date before it runs: the newest params and state
    /// may be in another executable, or changed by the user.
    fn sync_into(&mut self, key: (Kind, usize)) -> Result<(), TrainError> {
        if self.owner.is_some() && self.owner != Some(key) {
            self.sync()?;
        }
        let version = self.version;
        let owned = self.owner == Some(key);
        let Some(step) = self.steps.get_mut(&key) else {
            return Err(TrainError::Data("internal: step not built".into()));
        };
        let graph = &step.graph;
        let run_err = |message: String| TrainError::Run {
            graph: graph.name.clone(),
            message,
        };
        let Some(exe) = step.exe.as_mut() else {
            return Err(run_err("not compiled".into()));
        };
        if !owned && step.version != version {
            for id in graph.params().into_iter().chain(graph.states()) {
                let n = &graph[id];
                let name = n.name.clone().unwrap_or_default();
                let Some(values) = self.weights.get(&name) else {
                    return Err(run_err(format!("no value for {name}")));
                };
                let t = HostTensor::f32(n.ty.shape.clone(), values.to_vec());
                let r = match n.op {
                    Op::Param { .. } => exe.set_param(&name, t),
                    _ => exe.set_state(&name, t),
                };
                r.map_err(|e| run_err(e.to_string()))?;
            }
            step.version = version;
        }
        Ok(())
    }
}

/// The numerics check of an interpreted training step (see [`crate::numerics`]): its outputs
/// must be finite, and with a replay graph (`check_numerics`) its updates too; on a
/// non-finite value the step is evaluated again, node by node, on its graph before the pass
/// pipeline with the same feeds and weights (from before the update), to find the first node
/// that computed one.
fn interpreted_numerics(
    step: &Step,
    feeds: &[(NodeId, Vec<f32>)],
    weights: &Weights,
    outs: &HashMap<String, Vec<f32>>,
    updates: &[(String, Vec<f32>)],
    step_number: u64,
) -> Result<(), crate::numerics::NonFiniteError> {
    use crate::numerics::{all_finite, Located, NonFiniteError, ValueStats};
    let outputs: Vec<(&str, &[f32])> = step
        .graph
        .outputs()
        .iter()
        .filter_map(|o| outs.get(&o.name).map(|v| (o.name.as_str(), &v[..])))
        .collect();
    let checked = step.reference.is_some();
    let bad_updates = checked && updates.iter().any(|(_, v)| !all_finite(v));
    if outputs.iter().all(|(_, v)| all_finite(v)) && !bad_updates {
        return Ok(());
    }
    let mut results: Vec<(String, ValueStats)> = outputs
        .iter()
        .filter(|(_, v)| !all_finite(v))
        .map(|(n, v)| (format!("output {n}"), ValueStats::of(v)))
        .collect();
    let Some((forward, reference)) = &step.reference else {
        return Err(NonFiniteError {
            step: step_number,
            results,
            located: Located::NotChecked,
        });
    };
    for (name, v) in updates.iter().filter(|(_, v)| !all_finite(v)) {
        let kind = match step.graph.find(name).map(|id| &step.graph[id].op) {
            Some(Op::Param { .. }) => "param",
            _ => "state",
        };
        results.push((format!("{kind} {name}"), ValueStats::of(v)));
    }
    // the same feeds, by name, for the graph before the pipeline
    let named: Vec<(String, Vec<f32>)> = feeds
        .iter()
        .map(|(id, v)| (step.graph[*id].name.clone().unwrap_or_default(), v.clone()))
        .collect();
    let located = match reference_feeds(reference, &named, weights) {
        Ok(map) => match crate::numerics::first_non_finite(reference, forward, &map) {
            Ok(Some(node)) => Located::Node(Box::new(node)),
            Ok(None) => Located::AllFinite,
            Err(e) => Located::Failed(e.to_string()),
        },
        Err(e) => Located::Failed(e.to_string()),
    };
    Err(NonFiniteError {
        step: step_number,
        results,
        located,
    })
}

/// The interpreter's feeds of `graph`: each input from `named` by node name, each param and
/// state from `weights`.
fn reference_feeds(
    graph: &Graph,
    named: &[(String, Vec<f32>)],
    weights: &Weights,
) -> Result<HashMap<NodeId, crate::interp::Array<f32>>, TrainError> {
    let feeds: Vec<(NodeId, Vec<f32>)> = graph
        .inputs()
        .into_iter()
        .filter_map(|id| {
            let name = graph[id].name.as_deref()?;
            let v = named.iter().find(|(n, _)| n == name)?;
            Some((id, v.1.clone()))
        })
        .collect();
    feed_map(graph, &feeds, weights)
}

/// Runs `graph` once with `feeds` and the params and state from `weights`; returns the named
/// outputs and the new value of every update target, by name.
#[allow(clippy::type_complexity)]
fn execute(
    graph: &Graph,
    feeds: &[(NodeId, Vec<f32>)],
    weights: &Weights,
) -> Result<(HashMap<String, Vec<f32>>, Vec<(String, Vec<f32>)>), TrainError> {
    let run_err = |message: String| TrainError::Run {
        graph: graph.name.clone(),
        message,
    };
    let map = feed_map(graph, feeds, weights)?;
    let values = crate::interp::eval::<f32>(graph, &map).map_err(|e| run_err(e.to_string()))?;
    let mut outs = HashMap::new();
    for o in graph.outputs() {
        let v = values
            .get(o.node)
            .ok_or_else(|| run_err(format!("output {} was not computed", o.name)))?;
        outs.insert(o.name.clone(), v.data.clone());
    }
    let mut updates = Vec::new();
    for u in graph.updates() {
        let v = values
            .get(u.value)
            .ok_or_else(|| run_err("an update value was not computed".to_string()))?;
        let name = graph[u.target].name.clone().unwrap_or_default();
        updates.push((name, v.data.clone()));
    }
    Ok((outs, updates))
}

/// The interpreter's feeds of `graph`: `feeds`, and every param and state from `weights`.
fn feed_map(
    graph: &Graph,
    feeds: &[(NodeId, Vec<f32>)],
    weights: &Weights,
) -> Result<HashMap<NodeId, crate::interp::Array<f32>>, TrainError> {
    use crate::interp::Array;
    let run_err = |message: String| TrainError::Run {
        graph: graph.name.clone(),
        message,
    };
    let mut map: HashMap<NodeId, Array<f32>> = HashMap::new();
    for (id, v) in feeds {
        map.insert(
            *id,
            Array {
                shape: graph[*id].ty.shape.clone(),
                data: v.clone(),
            },
        );
    }
    for id in graph.params().into_iter().chain(graph.states()) {
        let n = &graph[id];
        let name = n.name.clone().unwrap_or_default();
        let v = weights
            .get(&name)
            .ok_or_else(|| run_err(format!("no value for {name}")))?;
        map.insert(
            id,
            Array {
                shape: n.ty.shape.clone(),
                data: v.to_vec(),
            },
        );
    }
    Ok(map)
}

/// A checkpoint tensor's values as the f32 the model's weights hold (i32 values exactly
/// when below 2^24, which covers counters and class indices).
fn tensor_values(t: &NamedTensor) -> Vec<f32> {
    match &t.data {
        TensorData::F32(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

/// The [`Session`] of [`Model::fit`]: a step on a batch of the examples, the learning-rate
/// schedule at the start of each epoch, the logs (validation included) at its end.
struct FitSession<'m, 'x> {
    model: &'m mut Model,
    x: &'x [f32],
    y: Targets<'x>,
    validation: Option<(&'x [f32], Targets<'x>)>,
    batch_size: usize,
    schedule: Option<fn(usize, f64) -> f64>,
    history: History,
    /// The early-stopping watch and, with `restore_best_weights`, the best epoch's params.
    early: Option<(crate::train::Watch, Option<Weights>)>,
    /// Set when early stopping ends training.
    stop: bool,
    /// The checkpoint callback and its watch.
    checkpoint: Option<(crate::train::ModelCheckpoint, crate::train::Watch)>,
}

impl Session for FitSession<'_, '_> {
    fn stop_requested(&self) -> bool {
        self.stop
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<(), TrainError> {
        if let Some(f) = self.schedule {
            self.model.learning_rate = f(epoch, self.model.learning_rate);
        }
        Ok(())
    }

    fn train_step(
        &mut self,
        batch: &[usize],
        rng: &mut Rng,
        _step: u64,
    ) -> Result<&Outputs, TrainError> {
        let r = self
            .model
            .run(Kind::Train, self.x, Some(self.y), batch, Some(rng));
        // A step stopped by a non-finite result ran: its updates are in the weights.
        if matches!(r, Ok(()) | Err(TrainError::NonFinite(_))) {
            self.model.steps_trained += 1;
        }
        r?;
        Ok(self.model.outputs((Kind::Train, batch.len())))
    }

    fn end_epoch(
        &mut self,
        epoch: usize,
        logs: &mut Vec<(String, f64)>,
        _complete: bool,
    ) -> Result<(), TrainError> {
        sort_logs(logs);
        if let Some((vx, vy)) = self.validation {
            let e = self.model.evaluate(vx, vy, self.batch_size)?;
            logs.push(("val_loss".into(), e.loss));
            for (k, v) in e.metrics {
                logs.push((format!("val_{k}"), v));
            }
        }
        self.model.epochs_trained = epoch + 1;
        let mut entry = logs.clone();
        entry.push(("lr".into(), self.model.learning_rate));
        self.history.push(epoch, &entry);
        if let Some((c, watch)) = &mut self.checkpoint {
            let save =
                !c.save_best_only || watch.observe(epoch, logs)? == crate::train::Verdict::Improved;
            // data-parallel: every rank holds the same weights, rank 0 writes them
            let root = !self.model.options.data_parallel || crate::dist::world().is_root();
            if save && root {
                // the newest params are in the compiled step
                self.model.sync()?;
                self.model.save(c.path(epoch))?;
            }
        }
        if let Some((watch, best)) = &mut self.early {
            let restore = watch.rule.restore_best_weights;
            match watch.observe(epoch, logs)? {
                crate::train::Verdict::Improved if restore => {
                    self.model.sync()?;
                    *best = Some(self.model.params_only());
                }
                crate::train::Verdict::Stop => {
                    self.stop = true;
                    if let Some(b) = best.take() {
                        self.model.sync()?;
                        let w = self.model.weights_mut();
                        for name in b.names() {
                            if let (Some(shape), Some(v)) = (b.shape(name), b.get(name)) {
                                w.insert(name, shape.to_vec(), v.to_vec())?;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The [`Evaluate`] session of [`Model::evaluate`].
struct EvalSession<'m, 'x> {
    model: &'m mut Model,
    x: &'x [f32],
    y: Targets<'x>,
}

impl Evaluate for EvalSession<'_, '_> {
    fn eval_batch(&mut self, batch: &[usize]) -> Result<Option<&Outputs>, TrainError> {
        self.model
            .run(Kind::Evaluate, self.x, Some(self.y), batch, None)?;
        Ok(Some(self.model.outputs((Kind::Evaluate, batch.len()))))
    }
}

/// Logs in Keras' order: `loss` first, then by name.
fn sort_logs(logs: &mut [(String, f64)]) {
    logs.sort_by(|a, b| (a.0 != "loss", &a.0).cmp(&(b.0 != "loss", &b.0)));
}

/// `loss: 0.1234 - accuracy: 0.9876` (in Keras' order).
fn log_line(logs: impl Iterator<Item = (String, f64)>) -> String {
    let mut logs: Vec<(String, f64)> = logs.collect();
    sort_logs(&mut logs);
    logs.iter()
        .map(|(k, v)| format!("{k}: {v:.4}"))
        .collect::<Vec<_>>()
        .join(" - ")
}

/// [`Model::fit`]'s progress: with `verbose`, a bar per epoch with the running means.
struct Bar {
    verbose: bool,
    epochs: usize,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    /// Leaves the current bar as it is (training stopped).
    fn abandon(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}

impl Progress for Bar {
    fn epoch_start(&mut self, start: &EpochStart) {
        if !self.verbose {
            return;
        }
        let bar = indicatif::ProgressBar::new((start.last - start.first) as u64);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta} - {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("Epoch {}/{}", start.epoch + 1, self.epochs));
        self.bar = Some(bar);
    }

    fn step_end(&mut self, means: &Means) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(log_line(means.iter().map(|(k, v)| (k.to_string(), v))));
        }
    }

    fn epoch_end(&mut self, end: &EpochEnd<'_>) {
        if let Some(b) = self.bar.take() {
            b.set_message(log_line(end.logs.iter().cloned()));
            b.finish();
        }
    }
}
