//! Real data in and out of one run of a graph (`gradlift run` and `gradlift eval`): inputs
//! and params read from safetensors files, outputs written to one.
//!
//! In: a graph and the files a user gives. Out: the tensors, checked against the graph, in
//! the graph's order; or a [`TensorIoError`] naming every tensor that is missing, not in the
//! graph, or of the wrong dtype or shape (what the graph expects and what the file holds).
//! Reading never panics on a bad file.
//!
//! - **Inputs** ([`read_inputs`]): any safetensors file (written by gradlift, or by Python's
//!   `safetensors` from numpy or torch arrays), F32 and I32 tensors named after the graph's
//!   inputs. The file holds exactly the graph's inputs: none missing, none extra. Values are
//!   taken as they are (NaN and infinities included).
//! - **Params** ([`read_params`]): a checkpoint of `gradlift train --save` or
//!   [`crate::nn::Model::save`] (or any safetensors file of the same tensors); every param and
//!   state node of the graph by name, with its dtype and shape. The optimizer state of a
//!   training checkpoint is skipped when the graph has no node of that name (a forward graph
//!   run on trained weights); any other tensor the graph lacks is an error, as are NaN and
//!   infinite values ([`crate::checkpoint::Checkpoint::weight_mismatches`], the rule of
//!   [`crate::nn::Model::load_weights`]).
//! - **Outputs** ([`write_outputs`]): every output under its output name, then the new value
//!   of every update target under `update.<node name>`, in a gradlift checkpoint file
//!   ([`crate::checkpoint::save`]: atomic, checksummed, deterministic; any safetensors reader
//!   reads it, and [`read_inputs`] too). The JIT (`gradlift run`) and the interpreter
//!   (`gradlift eval`) write the same names, so their files compare tensor by tensor.
//!
//! The files are read with the checkpoint reader ([`crate::checkpoint::load_tensors`]) and
//! matched with its comparison ([`crate::checkpoint::Checkpoint::mismatches`]).

use crate::checkpoint::{self, CheckpointError, Mismatch, NamedTensor};
use crate::graph::{Graph, NodeId};
use crate::interp::{Array, Float};
use crate::shape::TensorType;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The prefix of an updated param's or state's name in an outputs file.
pub const UPDATE_PREFIX: &str = "update.";

/// Why a tensor file cannot be used for a run of a graph.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// The file is not a safetensors file (empty, or its header says it is something else).
    #[error("{}: not a safetensors file: {reason}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file is a safetensors file gradlift cannot use: truncated or damaged (a checksum of
    /// a gradlift checkpoint fails), or holding a dtype other than F32 and I32.
    #[error("{}: unusable safetensors file: {}{reason}", path.display(), tensor.as_ref().map(|t| format!("tensor {t}: ")).unwrap_or_default())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// The tensor involved, when one is.
        tensor: Option<String>,
        /// What is wrong, with the numbers found.
        reason: String,
    },
    /// The file cannot be read or written, or a checkpoint's own entries are wrong.
    #[error(transparent)]
    File(#[from] CheckpointError),
    /// The file does not hold the tensors the graph expects.
    #[error("{}", mismatch_message(path, what, problems))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What the file was read as: `inputs` or `params`.
        what: &'static str,
        /// Every difference, in the graph's order, then the tensors the graph lacks by name.
        problems: Vec<Mismatch>,
    },
    /// The graph cannot be matched by name (an unnamed input, two inputs of one name) or a
    /// value cannot be written.
    #[error("graph {graph}: {reason}")]
    Graph {
        /// The graph's name.
        graph: String,
        /// What is wrong, naming the node.
        reason: String,
    },
}

fn mismatch_message(path: &Path, what: &str, problems: &[Mismatch]) -> String {
    let mut s = format!(
        "{}: the file does not hold the model's {what} ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str(&format!("\n  {p}"));
    }
    s
}

/// Reads any safetensors file, saying "not a safetensors file" rather than "not a gradlift
/// checkpoint" when it is none, and "unusable safetensors file" rather than "corrupt
/// checkpoint" when it is damaged or holds a dtype gradlift has no tensors of.
fn load(path: &Path) -> Result<checkpoint::Checkpoint, TensorIoError> {
    checkpoint::load_tensors(path).map_err(|e| match e {
        CheckpointError::NotACheckpoint { path, reason } => {
            TensorIoError::NotSafetensors { path, reason }
        }
        CheckpointError::Corrupt {
            path,
            tensor,
            reason,
        } => TensorIoError::Unusable {
            path,
            tensor,
            reason,
        },
        other => TensorIoError::File(other),
    })
}

/// The names and types of `g`'s inputs, in declaration order.
pub fn input_types(g: &Graph) -> Result<Vec<(String, TensorType)>, TensorIoError> {
    let mut out: Vec<(String, TensorType)> = Vec::new();
    for id in g.inputs() {
        let Some(name) = g[id].name.clone() else {
            return Err(TensorIoError::Graph {
                graph: g.name.clone(),
                reason: format!(
                    "input node {} has no name; input files hold tensors by name",
                    id.index()
                ),
            });
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(TensorIoError::Graph {
                graph: g.name.clone(),
                reason: format!("two inputs are called {name}"),
            });
        }
        out.push((name, g[id].ty.clone()));
    }
    Ok(out)
}

/// Reads the inputs of `g` from the safetensors file at `path`: exactly `g`'s inputs by
/// name, each of its dtype and shape, in `g`'s input order. Every problem is reported at
/// once ([`TensorIoError::Mismatch`]).
pub fn read_inputs(path: impl AsRef<Path>, g: &Graph) -> Result<Vec<NamedTensor>, TensorIoError> {
    let path = path.as_ref();
    let expected = input_types(g)?;
    let file = load(path)?;
    // inputs are data: NaN and infinities are values like any other
    let problems: Vec<Mismatch> = file
        .mismatches(&expected)
        .into_iter()
        .filter(|m| !matches!(m, Mismatch::NonFinite { .. }))
        .collect();
    take(&file, &expected, "inputs", problems)
}

/// Reads the params and state of `g` from the checkpoint at `path` (see the module doc for
/// what the file may hold), in [`checkpoint::graph_tensor_types`] order.
pub fn read_params(path: impl AsRef<Path>, g: &Graph) -> Result<Vec<NamedTensor>, TensorIoError> {
    let path = path.as_ref();
    let expected = checkpoint::graph_tensor_types(g)?;
    let file = load(path)?;
    let problems = file.weight_mismatches(&expected);
    take(&file, &expected, "params", problems)
}

/// The `expected` tensors of `file`, or the `problems` as an error.
fn take(
    file: &checkpoint::Checkpoint,
    expected: &[(String, TensorType)],
    what: &'static str,
    problems: Vec<Mismatch>,
) -> Result<Vec<NamedTensor>, TensorIoError> {
    if !problems.is_empty() {
        return Err(TensorIoError::Mismatch {
            path: file.path.clone(),
            what,
            problems,
        });
    }
    Ok(expected
        .iter()
        .filter_map(|(name, _)| file.get(name).cloned())
        .collect())
}

/// Interpreter feeds of `g` from `tensors` named after its inputs, params or state (as
/// [`read_inputs`] and [`read_params`] return them; other names are skipped). With `T = f32`
/// every bit is kept; i32 tensors become `T` holding the integers.
pub fn feeds<T: Float>(g: &Graph, tensors: &[NamedTensor]) -> HashMap<NodeId, Array<T>> {
    let mut out = HashMap::new();
    for id in g.inputs().into_iter().chain(g.params()).chain(g.states()) {
        let Some(name) = g[id].name.as_deref() else {
            continue;
        };
        if let Some(t) = tensors.iter().find(|t| t.name == name) {
            out.insert(id, checkpoint::to_array(t));
        }
    }
    out
}

/// A tensor of an outputs file from an interpreter value: `name`, of `ty` (i32 values must be
/// integers in the i32 range).
pub fn tensor_from_value<T: Float>(
    g: &Graph,
    name: String,
    ty: &TensorType,
    value: &Array<T>,
) -> Result<NamedTensor, TensorIoError> {
    checkpoint::tensor_from_array(name, ty, value).map_err(|reason| TensorIoError::Graph {
        graph: g.name.clone(),
        reason,
    })
}

/// The name of the new value of update target `name` in an outputs file.
pub fn update_name(name: &str) -> String {
    format!("{UPDATE_PREFIX}{name}")
}

/// Writes `tensors` (the outputs by name, then the updated params and state under
/// [`update_name`]) to `path` as a checkpoint file, with the metadata `graph` (`g`'s name)
/// and `source` (what computed them, e.g. `jit` or `interpreter`).
pub fn write_outputs(
    path: impl AsRef<Path>,
    g: &Graph,
    source: &str,
    tensors: &[NamedTensor],
) -> Result<(), TensorIoError> {
    let meta = BTreeMap::from([
        ("graph".to_string(), g.name.clone()),
        ("source".to_string(), source.to_string()),
    ]);
    checkpoint::save(path, tensors, &meta)?;
    Ok(())
}
