//! Compiled training steps, what the training driver ([`crate::train::run`]) runs for
//! `gradlift train` and [`crate::nn::Model::fit`]: from a forward graph with a scalar `loss`
//! output to native code that trains it, on every core.
//!
//! [`compile_training_step`] splits the step along its batch when it can
//! ([`crate::optim::sharded_training_step`]: each shard's forward and backward on a thread
//! of the pool, the shards' gradients averaged in a fixed order, one update, itself split by
//! rows over the threads when there are several shards), runs the pass pipeline on each
//! graph and compiles it; a step that cannot be split (a loss that is not
//! a mean over the examples, see [`crate::batch`]) is compiled whole and runs on one thread,
//! and [`StepReport::not_split`] says why. Over several ranks ([`StepOptions::world`], under
//! `mpirun`) the step is data-parallel: each rank splits its `batch / N` examples the same
//! way, and the `data_parallel` pass ([`crate::passes::data_parallel`]) all-reduces the
//! gradients before the update (see [`crate::dist`]). [`CompiledStep`] is the result either way: fill
//! its bound inputs, call [`CompiledStep::run_bound`] (or [`CompiledStep::run_checked`], which
//! also stops at non-finite results, see [`crate::numerics`]), read its outputs.

use crate::codegen::{self, CompileError, CompileOptions};
use crate::data::Dataset;
use crate::graph::Graph;
use crate::numerics::{self, NonFiniteError, NumericsCheck};
use crate::optim::{self, Clip, Optimizer, TrainingStepError};
use crate::passes::{PassError, Pipeline};
use crate::runtime::pool::{default_threads, Pool};
use crate::runtime::sharded::ShardedStep;
use crate::runtime::{Executable, HostTensor, NamedTensors, RunError};
use crate::shape::TensorType;

/// Options of [`compile_training_step`].
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Threads a step may use (default: [`default_threads`], i.e. `GRADLIFT_THREADS` or
    /// every core). Results do not depend on it.
    pub threads: usize,
    /// Shards the batch is split into (default: [`default_shards`], which depends only on the
    /// model and the batch size, never on the thread count). 1 computes the whole batch at
    /// once.
    pub shards: Option<usize>,
    /// Run the default pass pipeline on the step's graphs (default true).
    pub optimize: bool,
    /// Code generation options.
    pub compile: CompileOptions,
    /// Check every step's numerics (default false): [`CompiledStep::run_checked`] then also
    /// copies the params and state before each step and scans the updated ones, and at the
    /// first non-finite value replays the step on the reference interpreter to name the node
    /// that produced it (see [`crate::numerics`]). The compiled code is the same either way.
    pub check_numerics: bool,
    /// The ranks the step is shared by (default: a single rank; [`crate::dist::init`] joins
    /// the world under `mpirun`, and `gradlift train` passes it). With more than one, the
    /// step is data-parallel: this rank computes its `batch / size` examples (its
    /// [`CompiledStep`]'s inputs have that leading dimension), the `data_parallel` pass
    /// all-reduces the gradients before the update, and the outputs are means over every
    /// rank's examples.
    pub world: crate::dist::World,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            threads: default_threads(),
            shards: None,
            optimize: true,
            compile: CompileOptions::default(),
            check_numerics: false,
            world: crate::dist::World::SINGLE,
        }
    }
}

/// Why building or compiling a training step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Autodiff, the optimizer or the split.
    #[error(transparent)]
    Step(#[from] TrainingStepError),
    /// The pass pipeline.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// Code generation.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Data-parallel training over several ranks.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// A step that cannot be data-parallel.
    #[error(
        "data-parallel training over {ranks} ranks needs a step split along the batch: {reason}"
    )]
    NotDataParallel {
        /// The ranks.
        ranks: usize,
        /// Why the step cannot be split.
        reason: String,
    },
}

/// What [`compile_training_step`] built.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// Shards the batch is split into (1: not split).
    pub shards: usize,
    /// Threads a call uses.
    pub threads: usize,
    /// Why the step was not split, when it could not be.
    pub not_split: Option<String>,
    /// Graph nodes compiled (all functions).
    pub nodes: usize,
    /// Milliseconds spent in autodiff and the optimizer, in the pass pipeline, and in code
    /// generation.
    pub grad_ms: f64,
    /// See `grad_ms`.
    pub pass_ms: f64,
    /// See `grad_ms`.
    pub compile_ms: f64,
    /// Ranks the step is shared by (1: a single process).
    pub ranks: usize,
    /// Bytes each rank all-reduces per step (0 in a single process).
    pub all_reduce_bytes: usize,
}

/// FLOPs below which a shard is too small to be worth a thread's wake-up (measured: a
/// dispatch to the pool costs a few microseconds).
pub const MIN_SHARD_FLOPS: u64 = 3_000_000;

/// Forward FLOPs per parameter below which a further shard costs more than it gains: every
/// shard writes a whole gradient, which the update then reads back. Measured (whole-process
/// A/B, 5 pairs, `SHARDS` in `cargo bench --bench workloads`, 2 threads): the CNN (118
/// MFLOP, 694 K params at batch 64: 43 FLOPs per param in each of 4 shards) ran 1.15x faster
/// on 2 shards than on 4; the MLP (33 per param on 4) was even; the RNN (800 per param on 4)
/// 1.1x slower on 2.
pub const MIN_SHARD_FLOPS_PER_PARAM: u64 = 64;

/// The shard count for `g` (forward graph) at batch `batch`: 4, 2 or 1, the largest that
/// divides the batch into shards of at least 4 examples, [`MIN_SHARD_FLOPS`] of forward work
/// and [`MIN_SHARD_FLOPS_PER_PARAM`] per parameter each (2 even when the last fails, so that
/// the work is still shared between threads). Depends on the model only, so results are the
/// same on every machine and for every thread count.
pub fn default_shards(g: &Graph, batch: usize) -> usize {
    let flops = forward_flops(g);
    let params: u64 = g
        .params()
        .into_iter()
        .map(|p| g[p].ty.shape.numel() as u64)
        .sum();
    let fits =
        |s: usize| batch.is_multiple_of(s) && batch / s >= 4 && flops / s as u64 >= MIN_SHARD_FLOPS;
    let dense = |s: usize| flops / s as u64 >= MIN_SHARD_FLOPS_PER_PARAM * params;
    if fits(4) && dense(4) {
        4
    } else if fits(2) {
        2
    } else {
        1
    }
}

/// Approximate FLOPs of one evaluation of `g`: 2 per multiply-add of matmuls and
/// convolutions, a scan's body once per step, one per element of everything else.
pub fn forward_flops(g: &Graph) -> u64 {
    use crate::op::Op;
    g.node_ids()
        .into_iter()
        .map(|id| {
            let n = &g[id];
            let ops = g.operands(id);
            let out = n.ty.shape.numel() as u64;
            match &n.op {
                Op::Matmul => {
                    let k = g[ops[0]].ty.shape.dims().last().copied().unwrap_or(1) as u64;
                    2 * out * k
                }
                Op::Conv2d { .. } => {
                    let w = g[ops[1]].ty.shape.dims();
                    let taps: usize = w.iter().take(3).product();
                    2 * out * taps as u64
                }
                // the body's work, once per step
                Op::Scan(body) => {
                    let types: Vec<_> = ops.iter().map(|&o| &g[o].ty).collect();
                    let steps = body.length(&types).unwrap_or(1) as u64;
                    body.param_types(&types)
                        .ok()
                        .and_then(|p| body.to_graph(&p, &[]).ok())
                        .map_or(out, |(bg, _)| steps * forward_flops(&bg))
                }
                _ => out,
            }
        })
        .sum()
}

/// A compiled training step: whole, or split along the batch over threads; with
/// [`StepOptions::check_numerics`], also what replaying a step needs.
#[derive(Debug)]
pub struct CompiledStep {
    exec: Exec,
    check: Option<Box<NumericsCheck>>,
    /// The ranks sharing the step (a single rank unless data-parallel).
    world: crate::dist::World,
}

/// The native code of a [`CompiledStep`].
#[derive(Debug)]
enum Exec {
    /// One native function computing the whole step on the calling thread.
    Whole(Box<Executable>),
    /// Shards on the pool's threads, then the update.
    Sharded(Box<ShardedStep>),
}

/// Builds the training step of the forward graph `forward` (inputs with leading dimension
/// `batch`, a scalar output `loss`): gradients of the loss with respect to every param,
/// `clip`, `optimizer`'s updates with the learning-rate input `lr`; split and compiled as the
/// module documentation says.
pub fn compile_training_step(
    forward: &Graph,
    loss: &str,
    optimizer: &Optimizer,
    clip: Option<&Clip>,
    batch: usize,
    opts: &StepOptions,
) -> Result<(CompiledStep, StepReport), StepError> {
    let world = opts.world;
    if world.is_distributed() {
        return compile_data_parallel(forward, loss, optimizer, clip, batch, opts);
    }
    let mut report = StepReport {
        shards: 1,
        threads: 1,
        ranks: 1,
        ..Default::default()
    };
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let shards = opts
        .shards
        .unwrap_or_else(|| default_shards(forward, batch))
        .max(1);
    let t = std::time::Instant::now();
    let threads = opts.threads.max(1);
    // the update is split by rows when the shards already run on several threads; with one
    // shard, moving half of the params to another core each step cost more than it saved
    // (MLP at batch 8: 101 us a step on one thread, 117-123 us with the update on two)
    let parts = if shards > 1 { threads } else { 1 };
    let split = optim::sharded_training_step(forward, loss, optimizer, clip, batch, shards, parts);
    // the replay graph of `check_numerics`: the unsplit step before the pipeline
    let check = |whole: Option<&Graph>| -> Result<Option<Box<NumericsCheck>>, StepError> {
        if !opts.check_numerics {
            return Ok(None);
        }
        let g = match whole {
            Some(g) => g.clone(),
            None => {
                let mut g = forward.clone();
                optim::training_step_with(&mut g, loss, optimizer, clip)?;
                g
            }
        };
        Ok(Some(Box::new(NumericsCheck::new(forward.clone(), g))))
    };
    match split {
        Ok(mut step) => {
            let check = check(None)?;
            report.grad_ms = ms(t);
            let exe = optimize_and_compile(&mut step, opts, threads, &mut report)?;
            let exec = Exec::Sharded(Box::new(exe));
            Ok((
                CompiledStep {
                    exec,
                    check,
                    world: crate::dist::World::SINGLE,
                },
                report,
            ))
        }
        Err(TrainingStepError::Batch(e)) => {
            report.not_split = Some(e.to_string());
            let t = std::time::Instant::now();
            let mut g = forward.clone();
            optim::training_step_with(&mut g, loss, optimizer, clip)?;
            let check = check(Some(&g))?;
            report.grad_ms = ms(t);
            let t = std::time::Instant::now();
            if opts.optimize {
                Pipeline::default().run(&mut g)?;
            }
            report.pass_ms = ms(t);
            report.nodes = g.len();
            let t = std::time::Instant::now();
            let exe = crate::runtime::compile(&g, &opts.compile)?;
            report.compile_ms = ms(t);
            let exec = Exec::Whole(Box::new(exe));
            Ok((
                CompiledStep {
                    exec,
                    check,
                    world: crate::dist::World::SINGLE,
                },
                report,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// [`compile_training_step`] over several ranks ([`StepOptions::world`]): the forward graph
/// rebatched to this rank's `batch / size` examples, split into shards as a single process
/// splits its batch, the update whole (one part, on one thread at a time, since its
/// collectives must run in the same order on every rank) with the `data_parallel` pass's
/// all-reduces; the graphs' fingerprint is compared across the ranks before anything runs.
fn compile_data_parallel(
    forward: &Graph,
    loss: &str,
    optimizer: &Optimizer,
    clip: Option<&Clip>,
    batch: usize,
    opts: &StepOptions,
) -> Result<(CompiledStep, StepReport), StepError> {
    let world = opts.world;
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let refuse = |reason: String| StepError::NotDataParallel {
        ranks: world.size,
        reason,
    };
    if opts.check_numerics {
        return Err(refuse(
            "the numerics check replays one process's step, not every rank's".into(),
        ));
    }
    if !batch.is_multiple_of(world.size) || batch < world.size {
        return Err(crate::dist::DistError::Batch {
            batch,
            ranks: world.size,
        }
        .into());
    }
    let local_batch = batch / world.size;
    let t = std::time::Instant::now();
    let axes = crate::batch::analyze(forward, batch).map_err(|e| refuse(e.to_string()))?;
    let mut local = crate::batch::rebatch(forward, &axes, local_batch);
    local.name.clone_from(&forward.name);
    let shards = opts
        .shards
        .unwrap_or_else(|| default_shards(&local, local_batch))
        .max(1);
    let threads = opts.threads.max(1);
    let mut step =
        optim::sharded_training_step(&local, loss, optimizer, clip, local_batch, shards, 1)
            .map_err(|e| match e {
                TrainingStepError::Batch(e) => refuse(e.to_string()),
                e => StepError::Step(e),
            })?;
    crate::passes::data_parallel::run(&mut step.update);
    for part in &mut step.update_parts {
        crate::passes::data_parallel::run(&mut part.graph);
    }
    let mut text = crate::text::print(&step.shard);
    for part in &step.update_parts {
        text.push_str(&crate::text::print(&part.graph));
    }
    text.push_str(&crate::text::print(&step.update_tail));
    crate::dist::check_same(
        "the training step's graphs",
        crate::dist::fingerprint(text.as_bytes()),
    )?;
    let all_reduce_bytes = step
        .update_parts
        .iter()
        .map(|p| crate::passes::data_parallel::bytes_reduced(&p.graph))
        .sum();
    let mut report = StepReport {
        ranks: world.size,
        all_reduce_bytes,
        grad_ms: ms(t),
        ..Default::default()
    };
    let mut exe = optimize_and_compile(&mut step, opts, threads, &mut report)?;
    exe.set_ranks(world.size);
    let exec = Exec::Sharded(Box::new(exe));
    Ok((
        CompiledStep {
            exec,
            check: None,
            world,
        },
        report,
    ))
}

/// The pass pipeline on every graph of a split step (unless `opts.optimize` is off), then the
/// step compiled on the shared pool; fills the report's pass and compile times, node count,
/// shards and threads. The one way both the threaded and the data-parallel step are built.
fn optimize_and_compile(
    step: &mut optim::ShardedTrainingStep,
    opts: &StepOptions,
    threads: usize,
    report: &mut StepReport,
) -> Result<ShardedStep, StepError> {
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    if opts.optimize {
        Pipeline::default().run(&mut step.shard)?;
        for part in &mut step.update_parts {
            Pipeline::default().run(&mut part.graph)?;
        }
        Pipeline::default().run(&mut step.update_tail)?;
    }
    report.pass_ms = ms(t);
    report.nodes = step.shard.len()
        + step
            .update_parts
            .iter()
            .map(|p| p.graph.len())
            .sum::<usize>()
        + step.update_tail.len();
    let t = std::time::Instant::now();
    let exe = ShardedStep::compile(step, &opts.compile, Pool::shared(threads), threads)?;
    report.compile_ms = ms(t);
    report.shards = exe.shards();
    report.threads = exe.threads();
    Ok(exe)
}

impl Exec {
    fn run_bound(&mut self) {
        match self {
            Exec::Whole(e) => e.run_bound(),
            Exec::Sharded(e) => e.run_bound(),
        }
    }

    fn outputs(&self) -> &[(String, HostTensor)] {
        match self {
            Exec::Whole(e) => e.outputs(),
            Exec::Sharded(e) => e.outputs(),
        }
    }

    fn leaves(&self) -> (&NamedTensors, &NamedTensors) {
        match self {
            Exec::Whole(e) => e.leaves(),
            Exec::Sharded(e) => e.leaves(),
        }
    }

    fn bound_input(&self, name: &str) -> Option<&HostTensor> {
        match self {
            Exec::Whole(e) => e.bound_input(name),
            Exec::Sharded(e) => e.bound_input(name),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $e:ident => $body:expr) => {
        match &$self.exec {
            Exec::Whole($e) => $body,
            Exec::Sharded($e) => $body,
        }
    };
    (mut $self:ident, $e:ident => $body:expr) => {
        match &mut $self.exec {
            Exec::Whole($e) => $body,
            Exec::Sharded($e) => $body,
        }
    };
}

impl CompiledStep {
    /// A step that is one compiled function (no numerics check).
    pub fn whole(exe: Executable) -> CompiledStep {
        CompiledStep {
            exec: Exec::Whole(Box::new(exe)),
            check: None,
            world: crate::dist::World::SINGLE,
        }
    }

    /// The ranks sharing the step ([`StepOptions::world`]; one unless data-parallel).
    pub fn world(&self) -> crate::dist::World {
        self.world
    }

    /// This rank's examples of the global batch `idx`: its contiguous `idx.len() / size`
    /// of them (rank `r` takes part `r`), which its input buffers hold; all of `idx` in a
    /// single process.
    pub fn local<'a>(&self, idx: &'a [usize]) -> &'a [usize] {
        let w = self.world;
        if !w.is_distributed() {
            return idx;
        }
        let n = idx.len() / w.size;
        &idx[(w.rank * n).min(idx.len())..((w.rank + 1) * n).min(idx.len())]
    }

    /// Whether the step is split along the batch ([`ShardedStep`]) rather than one function.
    pub fn is_split(&self) -> bool {
        matches!(self.exec, Exec::Sharded(_))
    }

    /// Whether the step was compiled with [`StepOptions::check_numerics`].
    pub fn checks_numerics(&self) -> bool {
        self.check.is_some()
    }

    /// Runs step number `step` (1 for the first step of training) on the bound inputs and
    /// checks its numerics: every f32 output must be finite. Compiled with
    /// [`StepOptions::check_numerics`], it also copies the params and state before the step
    /// and checks the updated ones, and on a non-finite value replays the step on the
    /// reference interpreter to find the first node that produced one
    /// ([`crate::numerics`]). The step's values are the same as [`CompiledStep::run_bound`]'s;
    /// after an error the params and state are those the step computed. Without the check it
    /// allocates nothing.
    pub fn run_checked(&mut self, step: u64) -> Result<(), NonFiniteError> {
        let CompiledStep { exec, check, .. } = self;
        let Some(check) = check.as_mut() else {
            exec.run_bound();
            return numerics::check_outputs(step, exec.outputs());
        };
        let (params, states) = exec.leaves();
        check.save(params, states);
        exec.run_bound();
        let (params, states) = exec.leaves();
        check.check(step, exec.outputs(), params, states, &|name| {
            exec.bound_input(name)
        })
    }

    /// The bound buffer of f32 input `name` (full batch; the learning rate `lr` too).
    pub fn input_f32_mut(&mut self, name: &str) -> Result<&mut [f32], RunError> {
        delegate!(mut self, e => e.input_f32_mut(name))
    }

    /// The bound buffer of i32 input `name`.
    pub fn input_i32_mut(&mut self, name: &str) -> Result<&mut [i32], RunError> {
        delegate!(mut self, e => e.input_i32_mut(name))
    }

    /// Runs one step on the bound inputs; allocates nothing and checks nothing (see
    /// [`CompiledStep::run_checked`]).
    pub fn run_bound(&mut self) {
        delegate!(mut self, e => e.run_bound())
    }

    /// Runs one step on `inputs` (all of them, by name, full batch) and returns the outputs.
    pub fn run(
        &mut self,
        inputs: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        delegate!(mut self, e => e.run(inputs))
    }

    /// The step's inputs with their types.
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        match &self.exec {
            Exec::Whole(e) => e.inputs().to_vec(),
            Exec::Sharded(e) => e.inputs(),
        }
    }

    /// The outputs of the last call, by name.
    pub fn outputs(&self) -> &[(String, HostTensor)] {
        delegate!(self, e => e.outputs())
    }

    /// Output `name` of the last call.
    pub fn output(&self, name: &str) -> Option<&HostTensor> {
        delegate!(self, e => e.output(name))
    }

    /// The current value of param `name`.
    pub fn param(&self, name: &str) -> Option<HostTensor> {
        delegate!(self, e => e.param(name))
    }

    /// Every param with its current value.
    pub fn params(&self) -> Vec<(String, HostTensor)> {
        delegate!(self, e => e.params())
    }

    /// Overwrites param `name`.
    pub fn set_param(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        delegate!(mut self, e => e.set_param(name, value))
    }

    /// The current value of state tensor `name`.
    pub fn state(&self, name: &str) -> Option<HostTensor> {
        delegate!(self, e => e.state(name))
    }

    /// Overwrites state tensor `name`.
    pub fn set_state(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        delegate!(mut self, e => e.set_state(name, value))
    }

    /// The compile reports of the compiled functions (one, or the shard's and the update's).
    pub fn reports(&self) -> Vec<codegen::CompileReport> {
        match &self.exec {
            Exec::Whole(e) => vec![e.report().clone()],
            Exec::Sharded(e) => e.reports().into_iter().cloned().collect(),
        }
    }
}

/// The data inputs of a classifier's training step: images (f32, `[B, ...]`) and integer
/// labels (i32, `[B]`), by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFeed {
    /// Name of the images input.
    pub x: String,
    /// Name of the labels input.
    pub labels: String,
}

impl DataFeed {
    /// Writes examples `idx` of `data` (a full batch; of a data-parallel step, this rank's
    /// part of it, [`CompiledStep::local`]) straight into the step's input buffers.
    /// Allocates nothing.
    pub fn fill(
        &self,
        step: &mut CompiledStep,
        data: &Dataset,
        idx: &[usize],
    ) -> Result<(), RunError> {
        let idx = step.local(idx);
        data.fill_images(idx, step.input_f32_mut(&self.x)?);
        data.fill_labels(idx, step.input_i32_mut(&self.labels)?);
        Ok(())
    }

    /// [`DataFeed::fill`], then runs one step ([`CompiledStep::run_bound`]). Allocates
    /// nothing.
    pub fn step(
        &self,
        step: &mut CompiledStep,
        data: &Dataset,
        idx: &[usize],
    ) -> Result<(), RunError> {
        self.fill(step, data, idx)?;
        step.run_bound();
        Ok(())
    }
}
