//! The training driver: the one loop that `gradlift train` and [`crate::nn::Model::fit`] run.
//!
//! In: a [`Session`] (something that runs one compiled training step on a batch of example
//! indices and exposes the step's outputs), a [`Plan`] (how the training set is walked:
//! examples, batch size, what happens to the last partial batch, shuffling seed) and a
//! [`Span`] (where to start, when to stop, the step counter so far). Out: a [`Trained`]
//! summary, progress events on a [`Progress`] reporter, or the first error.
//!
//! What the loop does, once for both front ends:
//!
//! - **Batching and seeds.** Epoch `e` visits the examples in the order
//!   [`Plan::order`]`(e)`: shuffled with [`epoch_seed`]`(seed, e)`, which depends only on the
//!   run's seed and the epoch index. Each step gets its own random generator
//!   ([`Plan::step_rng`]: seed, epoch, batch index) for its random inputs (dropout masks).
//!   So a run resumed at any step (even inside an epoch) draws exactly what the
//!   uninterrupted run drew, and the two end bit for bit alike.
//! - **Running means** ([`Means`]) of the step's scalar outputs (loss, accuracy, ...), each
//!   step weighted by its number of examples (the outputs are batch means).
//! - **Non-finite results** (Keras' `TerminateOnNaN`): the session's step is
//!   [`crate::step::CompiledStep::run_checked`]; its [`crate::numerics::NonFiniteError`]
//!   ends the run as [`TrainError::NonFinite`] at once, before anything else is written, so a
//!   caller that saves after a successful run never writes a checkpoint of NaN weights.
//!   With `check_numerics` the error names the node that first computed such a value.
//! - **Evaluation** ([`evaluate`]): every example in order, in full batches and then the
//!   rest as one smaller batch.
//! - **Checkpoints** ([`checkpoint`]): the one metadata schema ([`checkpoint::TrainingState`])
//!   both front ends write and read, on top of the file format of [`crate::checkpoint`].
//!
//! Nothing here prints: progress goes to a [`Progress`] implementation (the CLI prints a
//! line per epoch, [`crate::nn::Model::fit`] draws a progress bar when verbose).
//!
//! [`graph`] is the session of a graph model (an `.ir` or JSON file with an images and a
//! labels input) trained on a [`crate::data::Dataset`]: what `gradlift train` runs. The
//! session of a [`crate::nn::Model`] lives with the model (`nn/model.rs`).

pub mod checkpoint;
pub mod graph;

use crate::graph::BuildError;
use crate::init::Rng;
use crate::runtime::HostTensor;
use std::time::Instant;

/// An error of building, compiling, training, evaluating, predicting or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model could not be turned into a graph (layer shapes, loss, optimizer).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// Differentiation of the loss failed.
    #[error("gradient: {0}")]
    Grad(#[from] crate::autodiff::GradError),
    /// Cranelift could not compile a step graph.
    #[error("compiling: {0}")]
    Compile(#[from] crate::codegen::CompileError),
    /// The pass pipeline failed on a step graph.
    #[error("passes: {0}")]
    Pass(#[from] crate::passes::PassError),
    /// Running a step failed.
    #[error("running {graph}: {message}")]
    Run {
        /// Which graph (`train_64`, `evaluate_32`, ...).
        graph: String,
        /// What went wrong.
        message: String,
    },
    /// The data passed in does not fit the model (lengths, shapes, target kind).
    #[error("{0}")]
    Data(String),
    /// A graph model cannot be trained as given (its inputs, its `loss` output, its
    /// training step); the message names the model's file and what is wrong.
    #[error("{0}")]
    Model(String),
    /// The training step built from a graph model is not a valid graph (a bug of a stage
    /// that built it): the verifier's errors.
    #[error("{file} (training step): {errors}")]
    Verify {
        /// The model's file.
        file: String,
        /// Every violation.
        errors: crate::verify::VerifyErrors,
    },
    /// A checkpoint or weights file could not be written or read, or does not match the
    /// model (the message names the file and every mismatched tensor).
    #[error("{0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A training step computed a NaN or infinite loss or metric (or, with
    /// `check_numerics`, param or optimizer state): training stopped there. With the check,
    /// the error names the first node that computed such a value.
    #[error("{0}{advice}", advice = if .0.checked() { "" } else {
        "\ncompile with CompileOptions::check_numerics to find the node that first computed a NaN or infinite value"
    })]
    NonFinite(#[from] crate::numerics::NonFiniteError),
}

// ---- the plan -----------------------------------------------------------------------------------

/// What happens to the examples left after the last full batch of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastBatch {
    /// They are trained on as one smaller batch (Keras; [`crate::nn::Model::fit`], which
    /// compiles a step per batch size).
    Train,
    /// They are left out of that epoch (a step compiled for one batch size, as an `.ir`
    /// model's); the next epoch's shuffle visits them.
    Drop,
}

/// How a run walks its training set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Examples in the training set.
    pub examples: usize,
    /// Examples per step (the last step of an epoch may have fewer, see `last_batch`).
    pub batch_size: usize,
    /// What happens to the examples after the last full batch.
    pub last_batch: LastBatch,
    /// Whether every epoch visits the examples in a fresh shuffled order (else in order).
    pub shuffle: bool,
    /// The run's seed: of the shuffles and of each step's random inputs.
    pub seed: u64,
}

/// Checks that every rank of a data-parallel run walks the same batches: `plan` and `span`
/// (examples, batch size, seed, where the run starts and stops) compared across the ranks
/// ([`crate::dist::check_same`], a collective every rank must call; nothing in a single
/// process).
pub fn check_same_plan(plan: &Plan, span: &Span) -> Result<(), TrainError> {
    let text = format!("{plan:?} {span:?}");
    crate::dist::check_same(
        "the training plan (examples, batch size, seed, start and end)",
        crate::dist::fingerprint(text.as_bytes()),
    )
    .map_err(|e| TrainError::Data(e.to_string()))
}

/// The shuffling seed of epoch `epoch` of a run seeded `seed`.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
}

impl Plan {
    /// Steps in one epoch: `examples / batch_size`, rounded up when the last partial batch
    /// is trained, down when it is dropped (0 for a batch size of 0).
    pub fn steps_per_epoch(&self) -> usize {
        if self.batch_size == 0 {
            return 0;
        }
        match self.last_batch {
            LastBatch::Train => self.examples.div_ceil(self.batch_size),
            LastBatch::Drop => self.examples / self.batch_size,
        }
    }

    /// The order in which epoch `epoch` visits the examples.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        if self.shuffle {
            crate::data::shuffled(self.examples, epoch_seed(self.seed, epoch))
        } else {
            (0..self.examples).collect()
        }
    }

    /// The examples of batch `batch` of an epoch visiting them in `order` (empty past the
    /// end).
    pub fn batch<'o>(&self, order: &'o [usize], batch: usize) -> &'o [usize] {
        let start = batch.saturating_mul(self.batch_size).min(order.len());
        let end = start.saturating_add(self.batch_size).min(order.len());
        &order[start..end]
    }

    /// The random generator of step `batch` of epoch `epoch` (its dropout masks): a function
    /// of the seed, the epoch and the batch only.
    pub fn step_rng(&self, epoch: usize, batch: usize) -> Rng {
        let mix = (batch as u64)
            .wrapping_add(1)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Rng::new(Rng::new(epoch_seed(self.seed, epoch) ^ mix).next_u64())
    }

    /// Where a run that trained `steps` steps on this plan from the start is: the epoch and
    /// the batch its next step trains.
    pub fn position(&self, steps: u64) -> Position {
        let per_epoch = self.steps_per_epoch().max(1) as u64;
        Position {
            epoch: usize::try_from(steps / per_epoch).unwrap_or(usize::MAX),
            batch: (steps % per_epoch) as usize,
        }
    }
}

/// A place in a run: an epoch and a batch index within it (both from 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The epoch.
    pub epoch: usize,
    /// The batch within the epoch.
    pub batch: usize,
}

/// The part of a plan one call of [`run`] trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// The first step to run.
    pub start: Position,
    /// The epoch to stop before: training ends when epoch `epochs - 1` is complete.
    pub epochs: usize,
    /// Training also ends once the step counter reaches this (counted like `steps_done`).
    pub max_steps: Option<u64>,
    /// Steps trained before this call (the model's or the checkpoint's step counter): the
    /// first step of the call is step `steps_done + 1` in messages and numerics reports.
    pub steps_done: u64,
}

// ---- sessions and progress ------------------------------------------------------------------------

/// The outputs of a step, by name (scalars are averaged by [`Means`]).
pub type Outputs = [(String, HostTensor)];

/// What the driver trains: a model with its compiled training step(s) and its training data.
pub trait Session {
    /// Called before each epoch's first step (a learning-rate schedule goes here).
    fn begin_epoch(&mut self, epoch: usize) -> Result<(), TrainError> {
        let _ = epoch;
        Ok(())
    }

    /// Runs one training step on the training examples `batch` (indices into the training
    /// set), drawing its random inputs from `rng`; `step` is its number (from 1, counted
    /// over the whole training). Returns the step's outputs. A non-finite result is
    /// [`TrainError::NonFinite`] (see [`crate::step::CompiledStep::run_checked`]).
    fn train_step(
        &mut self,
        batch: &[usize],
        rng: &mut Rng,
        step: u64,
    ) -> Result<&Outputs, TrainError>;

    /// Whether training should stop after the epoch that just ended (asked after
    /// [`Session::end_epoch`]; an early-stopping rule answers here).
    fn stop_requested(&self) -> bool {
        false
    }

    /// Called after each epoch (also one that `max_steps` cut short: `complete` is then
    /// false) with the epoch's means, which it may extend (validation results).
    fn end_epoch(
        &mut self,
        epoch: usize,
        logs: &mut Vec<(String, f64)>,
        complete: bool,
    ) -> Result<(), TrainError> {
        let _ = (epoch, logs, complete);
        Ok(())
    }
}

/// The start of an epoch, as [`Progress`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch (from 0).
    pub epoch: usize,
    /// The first batch this call trains (from 0; more than 0 in a resumed epoch).
    pub first: usize,
    /// The batch to stop before.
    pub last: usize,
    /// Steps in a whole epoch.
    pub per_epoch: usize,
}

/// The end of an epoch, as [`Progress`] sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochEnd<'a> {
    /// Which batches ran.
    pub start: EpochStart,
    /// The means of the step outputs over the epoch's examples (graph order), followed by
    /// whatever the session added (validation).
    pub logs: &'a [(String, f64)],
    /// Wall-clock seconds of the epoch's steps.
    pub seconds: f64,
}

/// Receives the driver's progress. Every method does nothing by default.
pub trait Progress {
    /// An epoch starts.
    fn epoch_start(&mut self, start: &EpochStart) {
        let _ = start;
    }

    /// A step ended; `means` are the running means of the epoch so far.
    fn step_end(&mut self, means: &Means) {
        let _ = means;
    }

    /// An epoch ended.
    fn epoch_end(&mut self, end: &EpochEnd<'_>) {
        let _ = end;
    }
}

/// A [`Progress`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {}

/// Running means of the scalar outputs of steps, each step weighted by its number of
/// examples (the outputs are batch means). Allocates only when a name is first seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Means {
    sums: Vec<(String, f64)>,
    examples: usize,
}

impl Means {
    /// Adds the scalar outputs (f32 or i32, one element) of one step over `n` examples;
    /// other outputs are skipped.
    pub fn add(&mut self, outs: &Outputs, n: usize) {
        for (name, t) in outs {
            let v = match (t.as_f32(), t.as_i32()) {
                (Some([v]), _) => *v as f64,
                (_, Some([v])) => *v as f64,
                _ => continue,
            } * n as f64;
            match self.sums.iter_mut().find(|(k, _)| k == name) {
                Some((_, s)) => *s += v,
                None => self.sums.push((name.clone(), v)),
            }
        }
        self.examples += n;
    }

    /// Examples added so far.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// The mean of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        let n = self.examples.max(1) as f64;
        self.sums
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, s)| s / n)
    }

    /// Every mean, in the order the names were first seen (the step's output order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        let n = self.examples.max(1) as f64;
        self.sums.iter().map(move |(k, s)| (k.as_str(), s / n))
    }

    /// [`Means::iter`], collected.
    pub fn to_vec(&self) -> Vec<(String, f64)> {
        self.iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// What a call of [`run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trained {
    /// The step counter at the end (`span.steps_done` plus the steps run).
    pub steps: u64,
    /// Steps run by this call.
    pub ran: u64,
    /// Epochs completed by this call.
    pub epochs: usize,
}

/// Trains `session` on the `span` of `plan`: epoch after epoch, batch after batch (see the
/// module doc), reporting to `progress`. Stops at the end of epoch `span.epochs - 1`, when
/// the step counter reaches `span.max_steps`, or at the first error (a non-finite result is
/// [`TrainError::NonFinite`]); steps before an error have updated the model.
pub fn run(
    session: &mut dyn Session,
    plan: &Plan,
    span: &Span,
    progress: &mut dyn Progress,
) -> Result<Trained, TrainError> {
    let per_epoch = plan.steps_per_epoch();
    let mut trained = Trained {
        steps: span.steps_done,
        ..Trained::default()
    };
    if per_epoch == 0 {
        return Err(TrainError::Data(format!(
            "the training set has {} examples, fewer than one batch of {}",
            plan.examples, plan.batch_size
        )));
    }
    let (mut epoch, mut first) = (span.start.epoch, span.start.batch.min(per_epoch));
    while epoch < span.epochs {
        let left = span
            .max_steps
            .map_or(u64::MAX, |m| m.saturating_sub(trained.steps));
        if left == 0 {
            break;
        }
        let last = usize::try_from(left)
            .map_or(per_epoch, |l| first.saturating_add(l))
            .min(per_epoch);
        session.begin_epoch(epoch)?;
        let order = plan.order(epoch);
        let start = EpochStart {
            epoch,
            first,
            last,
            per_epoch,
        };
        progress.epoch_start(&start);
        let mut means = Means::default();
        let t = Instant::now();
        for b in first..last {
            let batch = plan.batch(&order, b);
            let mut rng = plan.step_rng(epoch, b);
            let outs = session.train_step(batch, &mut rng, trained.steps + 1)?;
            means.add(outs, batch.len());
            trained.steps += 1;
            trained.ran += 1;
            progress.step_end(&means);
        }
        let seconds = t.elapsed().as_secs_f64();
        let mut logs = means.to_vec();
        let complete = last == per_epoch;
        session.end_epoch(epoch, &mut logs, complete)?;
        progress.epoch_end(&EpochEnd {
            start,
            logs: &logs,
            seconds,
        });
        if complete {
            trained.epochs += 1;
        }
        if session.stop_requested() {
            break;
        }
        epoch += 1;
        first = 0;
    }
    Ok(trained)
}

/// Keras' `EarlyStopping` rule: stop when the monitored log has not improved for `patience`
/// epochs. Watched by [`Watch`]; [`crate::nn::FitOptions::early_stopping`] applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// The log to watch (default `val_loss`).
    pub monitor: String,
    /// The smallest change that counts as an improvement (default 0).
    pub min_delta: f64,
    /// Epochs without improvement before training stops (default 0: the first epoch after
    /// the first that does not improve).
    pub patience: usize,
    /// Whether larger is better; `None` (the default) decides by the name, as Keras' `auto`:
    /// larger for names ending in `acc`, `accuracy` or `auc`, else smaller.
    pub maximize: Option<bool>,
    /// On stopping, set the model's params back to those of the best epoch (default false).
    pub restore_best_weights: bool,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "val_loss".into(),
            min_delta: 0.0,
            patience: 0,
            maximize: None,
            restore_best_weights: false,
        }
    }
}

impl EarlyStopping {
    /// Whether larger values of the monitored log are better.
    pub fn maximizes(&self) -> bool {
        self.maximize.unwrap_or_else(|| {
            ["acc", "accuracy", "auc"]
                .iter()
                .any(|s| self.monitor.ends_with(s))
        })
    }
}

/// Keras' `ModelCheckpoint` callback: save the model at the end of each epoch, or only when
/// the monitored log improves (`save_best_only`). `{epoch}` in the path is replaced by the
/// epoch number from 1, as Keras formats it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCheckpoint {
    /// Where to save (`{epoch}` is replaced by the epoch from 1).
    pub filepath: String,
    /// The log to watch with `save_best_only` (default `val_loss`).
    pub monitor: String,
    /// Save only when the monitored log improves (default false: every epoch).
    pub save_best_only: bool,
    /// Whether larger is better (`None`: by the name, as [`EarlyStopping::maximize`]).
    pub maximize: Option<bool>,
}

impl ModelCheckpoint {
    /// Saving to `filepath` every epoch, Keras' defaults otherwise.
    pub fn new(filepath: &str) -> ModelCheckpoint {
        ModelCheckpoint {
            filepath: filepath.into(),
            monitor: "val_loss".into(),
            save_best_only: false,
            maximize: None,
        }
    }

    /// The path of `epoch`'s checkpoint (from 0; written from 1).
    pub fn path(&self, epoch: usize) -> std::path::PathBuf {
        self.filepath
            .replace("{epoch}", &(epoch + 1).to_string())
            .into()
    }

    /// The watch that decides `save_best_only` (it never stops training).
    pub fn watch(&self) -> Watch {
        Watch::new(EarlyStopping {
            monitor: self.monitor.clone(),
            min_delta: 0.0,
            patience: usize::MAX,
            maximize: self.maximize,
            restore_best_weights: false,
        })
    }
}

/// What [`Watch::observe`] concluded from an epoch's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The monitored value is the best so far.
    Improved,
    /// No improvement, patience left.
    Waiting,
    /// No improvement for `patience` epochs: stop.
    Stop,
}

/// The state of an [`EarlyStopping`] rule over a training run, as Keras keeps it: the best
/// value so far, its epoch, and the epochs waited since.
#[derive(Clone, Debug, PartialEq)]
pub struct Watch {
    /// The rule.
    pub rule: EarlyStopping,
    /// The best value so far (infinitely bad before the first epoch).
    pub best: f64,
    /// The epoch of `best`.
    pub best_epoch: Option<usize>,
    /// Epochs since the last improvement.
    pub wait: usize,
}

impl Watch {
    /// A watch of `rule` before the first epoch.
    pub fn new(rule: EarlyStopping) -> Watch {
        let best = if rule.maximizes() {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        Watch {
            rule,
            best,
            best_epoch: None,
            wait: 0,
        }
    }

    /// Looks at the end of `epoch`: Keras' `on_epoch_end` (an improvement by more than
    /// `min_delta` resets the wait; otherwise the wait grows and reaches `patience` to stop,
    /// never at the first epoch). A monitored name missing from the logs is an error that
    /// lists the names there are (Keras only warns, and a misspelt name then never stops).
    pub fn observe(&mut self, epoch: usize, logs: &[(String, f64)]) -> Result<Verdict, TrainError> {
        let Some(&(_, current)) = logs.iter().find(|(k, _)| *k == self.rule.monitor) else {
            let names: Vec<&str> = logs.iter().map(|(k, _)| k.as_str()).collect();
            return Err(TrainError::Data(format!(
                "early stopping monitors {:?}, which the epoch logs do not have (they have {}){}",
                self.rule.monitor,
                names.join(", "),
                if self.rule.monitor.starts_with("val_") {
                    "; pass validation data or set validation_split"
                } else {
                    ""
                }
            )));
        };
        self.wait += 1;
        let delta = self.rule.min_delta.abs();
        let improved = if self.rule.maximizes() {
            current - delta > self.best
        } else {
            current + delta < self.best
        };
        if improved {
            self.best = current;
            self.best_epoch = Some(epoch);
            self.wait = 0;
            return Ok(Verdict::Improved);
        }
        if self.wait >= self.rule.patience && epoch > 0 {
            return Ok(Verdict::Stop);
        }
        Ok(Verdict::Waiting)
    }
}

// ---- evaluation -----------------------------------------------------------------------------------

/// What [`evaluate`] runs: inference on a batch of examples.
pub trait Evaluate {
    /// Runs the model in inference mode on the examples `batch` (indices, in order) and
    /// returns its outputs, or `None` when batches of this size cannot be evaluated (they
    /// are then skipped and not counted).
    fn eval_batch(&mut self, batch: &[usize]) -> Result<Option<&Outputs>, TrainError>;
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluated {
    /// The means over the evaluated examples.
    pub means: Means,
    /// Full batches evaluated.
    pub full_batches: usize,
    /// Examples of the last, smaller batch evaluated (0 if none).
    pub rest: usize,
}

impl Evaluated {
    /// Examples evaluated.
    pub fn examples(&self) -> usize {
        self.means.examples()
    }
}

/// Evaluates every one of `examples` examples in order, in batches of `batch_size` and then
/// the rest as one smaller batch (Keras' `evaluate`), and averages the scalar outputs over
/// the examples.
pub fn evaluate(
    session: &mut dyn Evaluate,
    examples: usize,
    batch_size: usize,
) -> Result<Evaluated, TrainError> {
    if batch_size == 0 {
        return Err(TrainError::Data(
            "evaluation needs a batch size of at least 1".into(),
        ));
    }
    let order: Vec<usize> = (0..examples).collect();
    let mut out = Evaluated::default();
    for batch in order.chunks(batch_size) {
        if let Some(outs) = session.eval_batch(batch)? {
            out.means.add(outs, batch.len());
            if batch.len() == batch_size {
                out.full_batches += 1;
            } else {
                out.rest = batch.len();
            }
        }
    }
    Ok(out)
}
