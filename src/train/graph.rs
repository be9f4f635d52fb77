//! A graph model trained on a [`Dataset`]: what `gradlift train` runs.
//!
//! In: a verified forward graph (parsed from `.ir` text or JSON) with one f32 images input
//! `[B, ...]`, one i32 labels input `[B]`, a scalar `loss` output and optionally metrics
//! (`accuracy`). Out: its training step ([`GraphModel::compile`]), a [`Session`] over a
//! dataset for [`super::run`], the evaluation of the trained params on a test set
//! ([`GraphModel::evaluate`]) and training checkpoints ([`GraphModel::save`],
//! [`GraphModel::resume`]) in the one schema of [`super::checkpoint`].
//!
//! The batch size is the graph's: the last `n mod B` examples of each shuffled epoch are
//! left out of training ([`LastBatch::Drop`]); evaluation covers every example (the rest
//! as one smaller batch of the rebatched forward graph, see [`crate::batch::rebatch`]).

use super::checkpoint::{self, Contents, TrainingState};
use super::{Evaluate, Evaluated, LastBatch, Outputs, Plan, Session, TrainError};
use crate::checkpoint::NamedTensor;
use crate::codegen::CompileOptions;
use crate::data::Dataset;
use crate::graph::{Graph, NodeId};
use crate::init::Rng;
use crate::op::Op;
use crate::optim::{self, Optimizer};
use crate::passes::Pipeline;
use crate::runtime::{self, Executable};
use crate::shape::{DType, Shape, TensorType};
use crate::step::{compile_training_step, CompiledStep, DataFeed, StepOptions, StepReport};
use crate::verify::{node_label, verify};
use std::collections::HashMap;
use std::path::Path;

/// A model ready to train: its forward graph, its training step graph and its data inputs.
#[derive(Clone, Debug)]
pub struct GraphModel {
    /// The model's file, for messages.
    pub file: String,
    /// The forward graph (loss, metrics): evaluated on the test set.
    pub forward: Graph,
    /// The training step: forward, gradients of `loss` for every param, the optimizer's
    /// updates with the learning-rate input `%lr`; before the pass pipeline. Its params and
    /// state are what a checkpoint holds.
    pub step: Graph,
    /// The images input's name and type.
    pub x: (String, TensorType),
    /// The labels input's name and type.
    pub labels: (String, TensorType),
    /// Examples per step (the leading dimension of both inputs).
    pub batch: usize,
}

/// The number of classes of an i32 labels input: the smallest class dimension among the
/// ops that read it (the logits of a sparse cross-entropy, a `one_hot`'s depth); 10 when
/// none tells.
pub fn class_count(g: &Graph, input: NodeId) -> u64 {
    let mut k: Option<usize> = None;
    for u in g.users(input) {
        let ops = g.operands(u);
        let found = match &g[u].op {
            Op::SparseSoftmaxCrossEntropy if ops.get(1) == Some(&input) => ops
                .first()
                .and_then(|&l| g[l].ty.shape.dims().get(1).copied()),
            Op::OneHot { depth } => Some(*depth),
            _ => None,
        };
        if let Some(f) = found.filter(|&f| f > 0) {
            k = Some(k.map_or(f, |k| k.min(f)));
        }
    }
    k.unwrap_or(10) as u64
}

/// Finds the images input (the only f32 input) and the labels input (the only i32 input, of
/// shape `[B]` with `B` the images' leading dimension) and checks the `loss` output.
fn data_inputs(g: &Graph, file: &str) -> Result<(NodeId, NodeId, usize), TrainError> {
    let inputs = g.inputs();
    let of = |dt: DType| -> Vec<NodeId> {
        inputs
            .iter()
            .copied()
            .filter(|&i| g[i].ty.dtype == dt)
            .collect()
    };
    let (fs, is) = (of(DType::F32), of(DType::I32));
    let list = |ids: &[NodeId]| -> String {
        let v: Vec<String> = ids
            .iter()
            .map(|&i| format!("{}: {}", node_label(g, i), g[i].ty))
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if fs.len() != 1 || is.len() != 1 {
        return Err(TrainError::Model(format!(
            "{file}: train needs exactly two inputs, the images (f32) and the labels (i32); \
             the graph has f32 inputs: {} and i32 inputs: {}",
            list(&fs),
            list(&is)
        )));
    }
    let (x, labels) = (fs[0], is[0]);
    let xd = g[x].ty.shape.dims();
    if xd.len() < 2 {
        return Err(TrainError::Model(format!(
            "{file}: the images input {}: {} must have a batch dimension and at least one more",
            node_label(g, x),
            g[x].ty
        )));
    }
    let batch = xd[0];
    if g[labels].ty.shape.dims() != [batch] {
        return Err(TrainError::Model(format!(
            "{file}: the labels input {}: {} must have shape [{batch}] (one label per image of {}: {})",
            node_label(g, labels),
            g[labels].ty,
            node_label(g, x),
            g[x].ty
        )));
    }
    let loss = g.output("loss").ok_or_else(|| {
        TrainError::Model(format!(
            "{file}: train needs an output called loss (the scalar to minimize)"
        ))
    })?;
    if g[loss].ty != TensorType::f32(Shape::scalar()) {
        return Err(TrainError::Model(format!(
            "{file}: the output loss must be f32[], found {}",
            g[loss].ty
        )));
    }
    Ok((x, labels, batch))
}

impl GraphModel {
    /// Checks the forward graph's data inputs and `loss` output and builds its (unsplit)
    /// training step with `opt`. `file` names the model in messages.
    pub fn new(
        forward: Graph,
        file: impl Into<String>,
        opt: &Optimizer,
    ) -> Result<GraphModel, TrainError> {
        let file = file.into();
        let (x, labels, batch) = data_inputs(&forward, &file)?;
        if forward.params().is_empty() {
            return Err(TrainError::Model(format!(
                "{file}: the model has no params to train"
            )));
        }
        let mut step = forward.clone();
        optim::training_step(&mut step, "loss", opt).map_err(|e| match e {
            optim::TrainingStepError::Grad(e) if e.loc().is_some() => {
                TrainError::Model(e.to_string())
            }
            e => TrainError::Model(format!("{file}: {e}")),
        })?;
        verify(&step).map_err(|errors| TrainError::Verify {
            file: file.clone(),
            errors,
        })?;
        let named = |id: NodeId| {
            let n = &forward[id];
            (n.name.clone().unwrap_or_default(), n.ty.clone())
        };
        Ok(GraphModel {
            x: named(x),
            labels: named(labels),
            file,
            forward,
            step,
            batch,
        })
    }

    /// Checks that the dataset's images and labels fit the model's inputs (`which` names
    /// the set in messages: `training`, `test`): an images input of one value per pixel
    /// (`[B, rows*cols]`) takes images of any `rows x cols` with that many pixels; any
    /// other input must have the images' dimensions (`[B, rows, cols]`, with axes of extent
    /// 1 anywhere, such as a channel axis `[B, rows, cols, 1]`). Labels must be classes of
    /// the model ([`class_count`]).
    pub fn check_data(&self, d: &Dataset, which: &str) -> Result<(), TrainError> {
        let example = &self.x.1.shape.dims()[1..];
        let per_example: usize = example.iter().product();
        let spatial: Vec<usize> = example.iter().copied().filter(|&e| e != 1).collect();
        let fits = if spatial.len() <= 1 {
            per_example == d.example_len()
        } else {
            spatial == [d.rows, d.cols]
        };
        if !fits {
            let expects = if spatial.len() <= 1 {
                format!("{per_example} values per example")
            } else {
                let dims: Vec<String> = spatial.iter().map(|e| e.to_string()).collect();
                format!("images of {}", dims.join("x"))
            };
            return Err(TrainError::Data(format!(
                "{}: the images input %{}: {} expects {expects}, but the {which} images are {}x{} (rows x cols in their IDX header) = {} pixels",
                self.file,
                self.x.0,
                self.x.1,
                d.rows,
                d.cols,
                d.example_len()
            )));
        }
        let labels = self.forward.find(&self.labels.0);
        let classes = labels.map_or(10, |l| class_count(&self.forward, l)) as i32;
        if let Some(bad) = d.labels.iter().find(|&&l| l < 0 || l >= classes) {
            return Err(TrainError::Data(format!(
                "{}: the {which} set has label {bad}, outside the model's {classes} classes",
                self.file
            )));
        }
        Ok(())
    }

    /// The plan of a run over `train` seeded `seed`: shuffled batches of the model's size,
    /// the rest of each epoch left out. At least one batch is needed.
    pub fn plan(&self, train: &Dataset, seed: u64) -> Result<Plan, TrainError> {
        if train.n < self.batch {
            return Err(TrainError::Data(format!(
                "the training set has {} images, fewer than one batch of {}",
                train.n, self.batch
            )));
        }
        Ok(Plan {
            examples: train.n,
            batch_size: self.batch,
            last_batch: LastBatch::Drop,
            shuffle: true,
            seed,
        })
    }

    /// Compiles the training step ([`compile_training_step`]) with the learning rate `lr`
    /// in its `%lr` input (a scheduled optimizer computes its own: `lr` is not used).
    pub fn compile(
        &self,
        opt: &Optimizer,
        lr: f64,
        opts: &StepOptions,
    ) -> Result<(CompiledStep, StepReport), TrainError> {
        let (mut exe, report) =
            compile_training_step(&self.forward, "loss", opt, None, self.batch, opts)
                .map_err(|e| TrainError::Model(format!("{}: {e}", self.file)))?;
        // a scheduled optimizer computes its learning rate in the step
        if opt.schedule().is_none() {
            exe.input_f32_mut("lr").map_err(|e| self.run_error(e))?[0] = lr as f32;
        }
        Ok((exe, report))
    }

    fn run_error(&self, e: impl std::fmt::Display) -> TrainError {
        TrainError::Run {
            graph: self.file.clone(),
            message: e.to_string(),
        }
    }

    /// The session that trains `exe` (this model's compiled step) on `train`.
    pub fn session<'a>(&self, exe: &'a mut CompiledStep, train: &'a Dataset) -> DatasetSession<'a> {
        DatasetSession {
            exe,
            train,
            feed: DataFeed {
                x: self.x.0.clone(),
                labels: self.labels.0.clone(),
            },
            file: self.file.clone(),
        }
    }

    /// The metadata of a checkpoint of this model after `step` steps of `plan` with `opt`
    /// at learning rate `lr`.
    pub fn state(&self, opt: &Optimizer, lr: f64, step: u64, plan: &Plan) -> TrainingState {
        let per_epoch = plan.steps_per_epoch().max(1) as u64;
        let params = self
            .step
            .params()
            .into_iter()
            .filter_map(|id| self.step[id].name.clone())
            .collect();
        TrainingState {
            contents: Contents::Training,
            model: self.forward.name.clone(),
            params,
            optimizer: opt.name().to_string(),
            learning_rate: lr,
            step,
            epoch: step / per_epoch,
            seed: Some(plan.seed),
            batch_size: Some(plan.batch_size),
            examples: Some(plan.examples),
        }
    }

    /// Writes `exe`'s params and optimizer state with `state` to a checkpoint at `path`.
    pub fn save(
        &self,
        path: &Path,
        exe: &CompiledStep,
        state: &TrainingState,
    ) -> Result<(), TrainError> {
        let types = crate::checkpoint::graph_tensor_types(&self.step)?;
        let mut tensors = Vec::with_capacity(types.len());
        for (name, _) in types {
            let t = exe
                .param(&name)
                .or_else(|| exe.state(&name))
                .ok_or_else(|| {
                    TrainError::Model(format!(
                        "{}: the compiled step has no value for {name}",
                        self.file
                    ))
                })?;
            tensors.push(NamedTensor::from_host(name, t));
        }
        checkpoint::save(path, &tensors, state)
    }

    /// Loads the checkpoint at `path` into `exe`'s params and optimizer state; it must hold
    /// exactly the training step's params and state, saved with `opt`. Returns its state.
    pub fn resume(
        &self,
        path: &Path,
        exe: &mut CompiledStep,
        opt: &Optimizer,
    ) -> Result<TrainingState, TrainError> {
        let expected = crate::checkpoint::graph_tensor_types(&self.step)?;
        let (state, tensors) = checkpoint::load(path, &expected, Some(opt.name()))?;
        for t in tensors {
            let (name, value) = t.into_host();
            let is_param = self
                .step
                .find(&name)
                .is_some_and(|id| matches!(self.step[id].op, Op::Param { .. }));
            let r = if is_param {
                exe.set_param(&name, value)
            } else {
                exe.set_state(&name, value)
            };
            r.map_err(|e| TrainError::Model(format!("{}: tensor {name}: {e}", path.display())))?;
        }
        Ok(state)
    }

    /// Evaluates the forward graph with `trained`'s params on every example of `test`, in
    /// order ([`super::evaluate`]): full batches, then the rest as one smaller batch (the
    /// forward graph rebatched; skipped when the graph cannot be rebatched).
    pub fn evaluate(
        &self,
        trained: &CompiledStep,
        test: &Dataset,
    ) -> Result<Evaluated, TrainError> {
        let mut session = Evaluation {
            model: self,
            trained,
            test,
            exes: HashMap::new(),
        };
        super::evaluate(&mut session, test.n, self.batch)
    }

    /// The forward graph for batches of `b` examples, compiled, with `trained`'s params;
    /// `None` when the graph cannot be rebatched to `b`.
    fn inference(
        &self,
        trained: &CompiledStep,
        b: usize,
    ) -> Result<Option<Executable>, TrainError> {
        let in_file = |e: &dyn std::fmt::Display| TrainError::Model(format!("{}: {e}", self.file));
        let mut g = if b == self.batch {
            self.forward.clone()
        } else {
            match crate::batch::analyze(&self.forward, self.batch) {
                Ok(axes) => crate::batch::rebatch(&self.forward, &axes, b),
                Err(_) => return Ok(None),
            }
        };
        Pipeline::default().run(&mut g).map_err(|e| in_file(&e))?;
        let mut exe = runtime::compile(&g, &CompileOptions::default()).map_err(|e| in_file(&e))?;
        for p in g.params() {
            let name = g[p].name.clone().unwrap_or_default();
            let v = trained.param(&name).ok_or_else(|| {
                TrainError::Model(format!(
                    "{}: the training step has no param {name}",
                    self.file
                ))
            })?;
            exe.set_param(&name, v).map_err(|e| in_file(&e))?;
        }
        Ok(Some(exe))
    }
}

/// The [`Session`] of a [`GraphModel`]'s compiled step over a dataset: a step fills the
/// batch straight into the step's input buffers ([`DataFeed`]) and runs it with its
/// numerics check ([`CompiledStep::run_checked`]); it allocates nothing.
pub struct DatasetSession<'a> {
    exe: &'a mut CompiledStep,
    train: &'a Dataset,
    feed: DataFeed,
    file: String,
}

impl Session for DatasetSession<'_> {
    fn train_step(
        &mut self,
        batch: &[usize],
        _rng: &mut Rng,
        step: u64,
    ) -> Result<&Outputs, TrainError> {
        if let Err(e) = self.feed.fill(self.exe, self.train, batch) {
            return Err(TrainError::Run {
                graph: self.file.clone(),
                message: e.to_string(),
            });
        }
        self.exe.run_checked(step)?;
        Ok(self.exe.outputs())
    }
}

/// The [`Evaluate`] session of [`GraphModel::evaluate`]: one inference executable per batch
/// size, built on first use.
struct Evaluation<'a> {
    model: &'a GraphModel,
    trained: &'a CompiledStep,
    test: &'a Dataset,
    exes: HashMap<usize, Option<Executable>>,
}

impl Evaluate for Evaluation<'_> {
    fn eval_batch(&mut self, batch: &[usize]) -> Result<Option<&Outputs>, TrainError> {
        let b = batch.len();
        if !self.exes.contains_key(&b) {
            let exe = self.model.inference(self.trained, b)?;
            self.exes.insert(b, exe);
        }
        let Some(Some(exe)) = self.exes.get_mut(&b) else {
            return Ok(None);
        };
        let run_error =
            |e: crate::runtime::RunError| TrainError::Model(format!("{}: {e}", self.model.file));
        self.test.fill_images(
            batch,
            exe.input_f32_mut(&self.model.x.0).map_err(run_error)?,
        );
        self.test.fill_labels(
            batch,
            exe.input_i32_mut(&self.model.labels.0).map_err(run_error)?,
        );
        exe.run_bound();
        Ok(Some(exe.outputs()))
    }
}
