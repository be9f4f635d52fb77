//! The training checkpoint schema: what `gradlift train --save` and
//! [`crate::nn::Model::save`] write and what `gradlift train --resume` and
//! [`crate::nn::Model::load`] read, so each loads the other's files.
//!
//! A training checkpoint is a [`crate::checkpoint`] file (safetensors, atomic, checksummed)
//! holding every param and optimizer state of the training step by node name, and these
//! metadata entries ([`TrainingState`]):
//!
//! | key | value |
//! |---|---|
//! | `schema` | [`SCHEMA`] |
//! | `contents` | `training` (params and optimizer state) or `weights` (params only) |
//! | `model` | the graph's or model's name |
//! | `params` | the param names, comma-separated (the other tensors are optimizer state) |
//! | `optimizer` | the optimizer's name (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`, see [`crate::optim::Optimizer::name`]) |
//! | `learning_rate` | the learning rate, the shortest decimal that reads back to the same f64 |
//! | `step` | training steps run, checked by [`crate::checkpoint::Checkpoint::step`] |
//! | `epoch` | epochs completed |
//! | `seed`, `batch_size`, `examples` | the plan of the run that wrote it, when known |
//!
//! Files of the schemas used before this one (`gradlift train` wrote `graph`, `lr` and
//! `train_images`; `Model::save` wrote `loss` and the optimizer's debug form) are not read:
//! [`TrainingState::from_checkpoint`] names the schema it found and the one expected.

use super::TrainError;
use crate::checkpoint::{self, Checkpoint, CheckpointError, Mismatch, NamedTensor};
use crate::shape::TensorType;
use std::collections::BTreeMap;
use std::path::Path;

/// The value of the `schema` metadata entry this build writes and reads.
pub const SCHEMA: &str = "gradlift-training-2";

/// What a training checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Params and optimizer state: training resumes from it.
    Training,
    /// Params only (for inference or fine-tuning).
    Weights,
}

impl Contents {
    /// The metadata value (`training`, `weights`).
    pub fn name(self) -> &'static str {
        match self {
            Contents::Training => "training",
            Contents::Weights => "weights",
        }
    }
}

/// The metadata of a training checkpoint (see the module doc for the keys).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingState {
    /// What the file holds.
    pub contents: Contents,
    /// The graph's or model's name.
    pub model: String,
    /// The param names (the file's other tensors are optimizer state).
    pub params: Vec<String>,
    /// The optimizer's name.
    pub optimizer: String,
    /// The learning rate when the file was written.
    pub learning_rate: f64,
    /// Training steps run.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// The seed of the run that wrote it, when known.
    pub seed: Option<u64>,
    /// Its batch size, when known.
    pub batch_size: Option<usize>,
    /// Its number of training examples, when known.
    pub examples: Option<usize>,
}

impl TrainingState {
    /// The metadata entries of a checkpoint holding this state.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            ("schema".to_string(), SCHEMA.to_string()),
            ("contents".to_string(), self.contents.name().to_string()),
            ("model".to_string(), self.model.clone()),
            ("params".to_string(), self.params.join(",")),
            ("optimizer".to_string(), self.optimizer.clone()),
            // `{:?}` of an f64 is the shortest string that parses back to the same bits.
            (
                "learning_rate".to_string(),
                format!("{:?}", self.learning_rate),
            ),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
        ]);
        let optional = [
            ("seed", self.seed.map(|v| v.to_string())),
            ("batch_size", self.batch_size.map(|v| v.to_string())),
            ("examples", self.examples.map(|v| v.to_string())),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        m
    }

    /// Reads the state from a loaded checkpoint's metadata: the schema must be [`SCHEMA`],
    /// every required entry present and valid, and the step count agree with the optimizer's
    /// own ([`Checkpoint::step`]). Errors name the file, the key, what was expected and what
    /// was found.
    pub fn from_checkpoint(c: &Checkpoint) -> Result<TrainingState, CheckpointError> {
        let bad = |key: &str, reason: String| CheckpointError::Metadata {
            path: c.path.clone(),
            key: key.to_string(),
            reason,
        };
        match c.metadata.get("schema") {
            Some(s) if s == SCHEMA => {}
            Some(s) => {
                return Err(bad(
                    "schema",
                    format!(
                    "expected {SCHEMA:?}, found {s:?} (written by another version of gradlift?)"
                ),
                ))
            }
            None => {
                let keys: Vec<&str> = c.metadata.keys().map(|k| k.as_str()).collect();
                let found = if c.metadata.contains_key("train_images") {
                    "the schema of earlier `gradlift train` checkpoints".to_string()
                } else if c.metadata.contains_key("loss") && c.metadata.contains_key("epoch") {
                    "the schema of earlier `Model::save` checkpoints".to_string()
                } else {
                    "no schema".to_string()
                };
                return Err(bad(
                    "schema",
                    format!(
                        "missing: expected schema {SCHEMA:?}, found {found} (metadata keys: {}); these files are not read: train again, or load the params alone with Model::load_weights",
                        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
                    ),
                ));
            }
        }
        let get = |key: &str| -> Result<&str, CheckpointError> {
            c.metadata
                .get(key)
                .map(|s| s.as_str())
                .ok_or_else(|| bad(key, format!("missing (schema {SCHEMA} requires it)")))
        };
        fn parse<T: std::str::FromStr>(
            bad: &dyn Fn(&str, String) -> CheckpointError,
            key: &str,
            text: &str,
            expected: &str,
        ) -> Result<T, CheckpointError> {
            text.parse()
                .map_err(|_| bad(key, format!("expected {expected}, found {text:?}")))
        }
        let contents = match get("contents")? {
            "training" => Contents::Training,
            "weights" => Contents::Weights,
            other => {
                return Err(bad(
                    "contents",
                    format!("expected \"training\" or \"weights\", found {other:?}"),
                ))
            }
        };
        let learning_rate: f64 = parse(&bad, "learning_rate", get("learning_rate")?, "a number")?;
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(bad(
                "learning_rate",
                format!("expected a positive number, found {learning_rate}"),
            ));
        }
        let epoch = parse(&bad, "epoch", get("epoch")?, "a whole number")?;
        let optional = |key: &str| c.metadata.get(key).map(|s| s.as_str());
        let seed = match optional("seed") {
            Some(s) => Some(parse(&bad, "seed", s, "a whole number")?),
            None => None,
        };
        let batch_size = match optional("batch_size") {
            Some(s) => Some(parse(&bad, "batch_size", s, "a whole number")?),
            None => None,
        };
        let examples = match optional("examples") {
            Some(s) => Some(parse(&bad, "examples", s, "a whole number")?),
            None => None,
        };
        let params = get("params")?;
        Ok(TrainingState {
            contents,
            model: get("model")?.to_string(),
            params: if params.is_empty() {
                Vec::new()
            } else {
                params.split(',').map(str::to_string).collect()
            },
            optimizer: get("optimizer")?.to_string(),
            learning_rate,
            step: c.step()?,
            epoch,
            seed,
            batch_size,
            examples,
        })
    }

    /// The entries of the run's plan that differ from `seed` and `examples` (key, saved
    /// value, this run's value): a run resumed with other ones does not replay an
    /// uninterrupted one.
    pub fn differences(&self, seed: u64, examples: usize) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.seed.filter(|&s| s != seed) {
            out.push(("seed", s.to_string(), seed.to_string()));
        }
        if let Some(n) = self.examples.filter(|&n| n != examples) {
            out.push(("examples", n.to_string(), examples.to_string()));
        }
        out
    }
}

/// Saves `tensors` with `state`'s metadata to `path` ([`crate::checkpoint::save`]: atomic,
/// checksummed, deterministic).
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[NamedTensor],
    state: &TrainingState,
) -> Result<(), TrainError> {
    checkpoint::save(path, tensors, &state.metadata())?;
    Ok(())
}

/// Reads the training checkpoint at `path` for a model whose training step holds exactly
/// the `expected` params and optimizer state: the file must be whole and of [`SCHEMA`]
/// ([`TrainingState::from_checkpoint`]), hold params and optimizer state
/// ([`Contents::Training`]) and, when `optimizer` is given, come from that optimizer.
/// Returns the state and the `expected` tensors in `expected`'s order. Every missing,
/// unexpected or mismatched tensor is named (with the optimizers when they differ).
pub fn load(
    path: impl AsRef<Path>,
    expected: &[(String, TensorType)],
    optimizer: Option<&str>,
) -> Result<(TrainingState, Vec<NamedTensor>), TrainError> {
    let c = checkpoint::load(path)?;
    let state = TrainingState::from_checkpoint(&c)?;
    if state.contents != Contents::Training {
        return Err(CheckpointError::Metadata {
            path: c.path.clone(),
            key: "contents".into(),
            reason: format!(
                "expected \"training\" (params and optimizer state), found {:?}: load a weights file with Model::load_weights",
                state.contents.name()
            ),
        }
        .into());
    }
    if let Some(now) = optimizer.filter(|&o| o != state.optimizer) {
        let problems: Vec<Mismatch> = c.mismatches(expected);
        let mut reason = format!(
            "the checkpoint was saved with optimizer {:?}, this run uses {now}",
            state.optimizer
        );
        if !problems.is_empty() {
            reason.push_str(&format!(
                "; its tensors differ ({} problem{}):",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ));
            for p in &problems {
                reason.push_str(&format!("\n  {p}"));
            }
        }
        return Err(CheckpointError::Metadata {
            path: c.path.clone(),
            key: "optimizer".into(),
            reason,
        }
        .into());
    }
    let tensors = c.restore(expected)?;
    Ok((state, tensors))
}
