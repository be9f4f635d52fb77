//! Checkpoints: named tensors (params and optimizer state) plus string metadata in a
//! safetensors file, written atomically and read back bit for bit.
//!
//! In: [`NamedTensor`]s (f32 or i32, a name and a shape) and caller metadata (graph name, step
//! count, optimizer, ...). Out: a `.safetensors` file; [`load`] gives back a [`Checkpoint`]
//! with the same tensors (every bit, NaN payloads included) and metadata.
//!
//! - **Atomic writes.** [`save`] writes a temporary file next to the target
//!   (`PATH.tmp-PID-N`), fsyncs it and renames it over the target, so a reader sees either the
//!   old file or the new one, never a mix; on any error the old file is untouched and the
//!   temporary file is removed. A save also removes the temporary files of the same
//!   checkpoint that killed saves left behind (their process no longer runs, or the pid now
//!   belongs to a process started after the file was written).
//! - **Step counts.** [`Checkpoint::step`] reads a training checkpoint's `step` metadata: at
//!   most [`MAX_STEP`], and equal to the optimizer's own count when it keeps one (Adam).
//! - **Ours, and whole.** The safetensors `__metadata__` holds `format = gradlift-checkpoint`,
//!   `version = 1` and `checksums`: a JSON map from every tensor name (and `__metadata__`,
//!   for the caller's metadata) to a 64-bit FNV-1a hash of its contents. [`load`] reads the
//!   file with the `safetensors` crate (which checks the header and that the tensors' data
//!   offsets tile the data section), then checks the format, version, dtypes and every
//!   checksum. A truncated, corrupt or foreign file is a [`CheckpointError`] that says what
//!   is wrong, where, and the numbers expected and found, naming the tensor when one is
//!   involved: when the crate refuses a file, the reader looks at the length prefix, the
//!   header's encoding and JSON, each entry (with the crate's own header types) and the data
//!   layout to say why. Loading never panics on a bad file.
//! - **Matching a model.** [`Checkpoint::check`] compares the file with the names and types a
//!   model expects (e.g. [`graph_tensor_types`] of a [`Graph`]) and reports every missing,
//!   unexpected, dtype- or shape-mismatched tensor by name. [`Checkpoint::feeds`] turns a
//!   checked checkpoint into interpreter feeds that override the params and state.
//! - **Runtime tensors.** Elements are the runtime's [`TensorData`]; [`NamedTensor::from_host`]
//!   and [`NamedTensor::into_host`] convert to and from [`HostTensor`], what a compiled
//!   [`crate::runtime::Executable`] exports (`params`) and takes back (`set_param`).
//! - **Reproducible bytes.** The header is written by this module (sorted keys, compact JSON,
//!   tensors in name order), so the same tensors and metadata always give the same file; every
//!   file written is read back with the `safetensors` crate before it is written, so any
//!   safetensors reader accepts it.
//!
//! ```
//! use gradlift::checkpoint::{graph_tensor_types, graph_tensors, load, save};
//! use gradlift::interp::{eval, Array};
//! use gradlift::{Graph, Init, TensorType};
//! use std::collections::{BTreeMap, HashMap};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.input("x", TensorType::f32([2])).unwrap();
//! let w = g.param("w", [2], Init::Uniform { low: -1.0, high: 1.0, seed: 7 }).unwrap();
//! let y = g.mul(x, w).unwrap();
//! g.add_output("y", y).unwrap();
//!
//! // Params as the interpreter initializes them.
//! let v = eval(&g, &HashMap::from([(x, Array::<f32>::zeros([2]))])).unwrap();
//! let params = HashMap::from([(w, v.get(w).unwrap().clone())]);
//!
//! let path = std::env::temp_dir().join(format!("gradlift-doc-{}.safetensors", std::process::id()));
//! let meta = BTreeMap::from([("graph".to_string(), g.name.clone()), ("step".to_string(), "0".to_string())]);
//! save(&path, &graph_tensors(&g, &params).unwrap(), &meta).unwrap();
//!
//! let c = load(&path).unwrap();
//! assert_eq!(c.metadata["step"], "0");
//! c.check(&graph_tensor_types(&g).unwrap()).unwrap();
//! assert_eq!(c.feeds::<f32>(&g).unwrap(), params);
//! # std::fs::remove_file(&path).unwrap();
//! ```

use crate::graph::{Graph, NodeId};
use crate::interp::{Array, Float};
use crate::shape::{DType, Shape, TensorType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Value of the `format` metadata entry of every gradlift checkpoint.
pub const FORMAT: &str = "gradlift-checkpoint";
/// Value of the `version` metadata entry this build writes and reads.
pub const VERSION: &str = "1";
/// Metadata keys this module writes itself; callers may not use them.
pub const RESERVED_KEYS: [&str; 3] = ["format", "version", "checksums"];

/// The largest step count a checkpoint's `step` metadata may hold ([`Checkpoint::step`]):
/// `i64::MAX`, far beyond any run (2^63 steps at one per nanosecond take 292 years), so a
/// step count is exact as a signed 64-bit integer wherever it is read.
pub const MAX_STEP: u64 = i64::MAX as u64;

/// The value of the optimizer's f32 step counter ([`crate::optim::STEP_COUNTER`]) after `step` steps:
/// `step` up to 2^24, where adding 1 in f32 stops changing it (2^24 + 1 rounds to 2^24).
pub fn f32_step_counter(step: u64) -> f32 {
    step.min(1 << 24) as f32
}

/// Key of the safetensors header entry that holds the metadata (not a tensor name).
const METADATA_KEY: &str = "__metadata__";
/// Largest header accepted, as in the `safetensors` crate.
const MAX_HEADER: u64 = 100_000_000;

// ---- tensors ----------------------------------------------------------------------------------

/// The elements of a tensor are the runtime's [`TensorData`]; a [`NamedTensor`] converts to
/// and from the runtime's [`HostTensor`] (what [`crate::runtime::Executable`] takes and gives).
pub use crate::runtime::{HostTensor, TensorData};

/// The element type of `d`.
fn dtype_of(d: &TensorData) -> DType {
    match d {
        TensorData::F32(_) => DType::F32,
        TensorData::I32(_) => DType::I32,
    }
}

/// Number of elements of `d`.
fn len_of(d: &TensorData) -> usize {
    match d {
        TensorData::F32(v) => v.len(),
        TensorData::I32(v) => v.len(),
    }
}

/// The elements as little-endian bytes (the safetensors layout).
fn to_le_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Elements of `dtype` from little-endian bytes (`bytes.len()` a multiple of 4).
fn from_le_bytes(dtype: DType, bytes: &[u8]) -> TensorData {
    let words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    match dtype {
        DType::F32 => TensorData::F32(
            words
                .map(|w| f32::from_bits(u32::from_le_bytes(w)))
                .collect(),
        ),
        DType::I32 => TensorData::I32(words.map(i32::from_le_bytes).collect()),
    }
}

/// Whether `a` and `b` hold the same bits: NaNs with the same payload are equal, `0.0` and
/// `-0.0` are not (unlike `==` on floats).
pub fn same_bits(a: &TensorData, b: &TensorData) -> bool {
    match (a, b) {
        (TensorData::F32(a), TensorData::F32(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        }
        (TensorData::I32(a), TensorData::I32(b)) => a == b,
        _ => false,
    }
}

/// One tensor of a checkpoint: a name, a shape and row-major elements.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    /// The name (a param or state node's name for graph checkpoints).
    pub name: String,
    /// The shape; `shape.numel()` must equal the number of elements.
    pub shape: Shape,
    /// The elements.
    pub data: TensorData,
}

/// Equality of names, shapes and element bits (see [`same_bits`]): a checkpoint equals its
/// reloaded self even when it holds NaNs.
impl PartialEq for NamedTensor {
    fn eq(&self, other: &NamedTensor) -> bool {
        self.name == other.name && self.shape == other.shape && same_bits(&self.data, &other.data)
    }
}

impl NamedTensor {
    /// An f32 tensor (the length is checked by [`save`]).
    pub fn f32(name: impl Into<String>, shape: impl Into<Shape>, data: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.into(),
            data: TensorData::F32(data),
        }
    }

    /// An i32 tensor (the length is checked by [`save`]).
    pub fn i32(name: impl Into<String>, shape: impl Into<Shape>, data: Vec<i32>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.into(),
            data: TensorData::I32(data),
        }
    }

    /// A runtime tensor under `name` (e.g. from [`crate::runtime::Executable::params`]).
    pub fn from_host(name: impl Into<String>, t: HostTensor) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: t.shape,
            data: t.data,
        }
    }

    /// The name and the runtime tensor (e.g. for [`crate::runtime::Executable::set_param`]).
    pub fn into_host(self) -> (String, HostTensor) {
        (
            self.name,
            HostTensor {
                shape: self.shape,
                data: self.data,
            },
        )
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        dtype_of(&self.data)
    }

    /// The dtype and shape.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }
}

// ---- errors -----------------------------------------------------------------------------------

/// How a checkpoint (or another tensor file, see [`crate::tensor_io`]) differs from what a
/// model expects (see [`Checkpoint::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The model has a tensor the checkpoint lacks.
    Missing {
        /// Tensor name.
        name: String,
        /// The type the model expects.
        expected: TensorType,
    },
    /// The checkpoint has a tensor the model does not.
    Unexpected {
        /// Tensor name.
        name: String,
        /// Its type in the checkpoint.
        found: TensorType,
    },
    /// Same name, different element type.
    DType {
        /// Tensor name.
        name: String,
        /// The type the model expects.
        expected: TensorType,
        /// The type in the checkpoint.
        found: TensorType,
    },
    /// Same name and element type, different shape.
    Shape {
        /// Tensor name.
        name: String,
        /// The type the model expects.
        expected: TensorType,
        /// The type in the checkpoint.
        found: TensorType,
    },
    /// The tensor holds NaN or infinite values (a diverged run): loading it would train
    /// from garbage.
    NonFinite {
        /// Tensor name.
        name: String,
        /// How many values are not finite.
        count: usize,
        /// Index of the first one (row-major).
        first: usize,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { name, expected } => {
                write!(f, "missing tensor {name} (the model expects {expected})")
            }
            Mismatch::Unexpected { name, found } => {
                write!(f, "unexpected tensor {name}: {found} (not in the model)")
            }
            Mismatch::DType {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor {name}: dtype mismatch, the model expects {expected}, the file has {found}"
            ),
            Mismatch::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor {name}: shape mismatch, the model expects {expected}, the file has {found}"
            ),
            Mismatch::NonFinite { name, count, first } => write!(
                f,
                "tensor {name}: {count} NaN or infinite value(s), the first at index {first} (a diverged run?)"
            ),
        }
    }
}

/// Why a checkpoint could not be saved, loaded or matched with a model.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// What was being done (`read the checkpoint`, `create the temporary file`, ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a gradlift checkpoint (empty, not safetensors, or another writer's).
    #[error("{path}: not a gradlift checkpoint: {reason}")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file is a checkpoint of another format version.
    #[error("{path}: checkpoint format version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        found: String,
    },
    /// The file is truncated or damaged.
    #[error("{path}: corrupt checkpoint: {}{reason}", tensor.as_ref().map(|t| format!("tensor {t}: ")).unwrap_or_default())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The tensor involved, when one is.
        tensor: Option<String>,
        /// What is wrong, with the numbers found.
        reason: String,
    },
    /// A tensor given to [`save`] cannot be stored.
    #[error("cannot save tensor {name:?}: {reason}")]
    InvalidTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata entry given to [`save`] cannot be stored.
    #[error("cannot save metadata key {key:?}: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The encoder failed (a bug: [`to_bytes`] checks its inputs first).
    #[error("cannot encode the checkpoint: {reason}")]
    Encode {
        /// What failed.
        reason: String,
    },
    /// A graph's params/state cannot be listed or collected (unnamed node, missing or
    /// ill-typed value).
    #[error("graph {graph}: {reason}")]
    Graph {
        /// The graph's name.
        graph: String,
        /// What is wrong, naming the node.
        reason: String,
    },
    /// A metadata entry the reader needs is missing or holds an impossible value.
    #[error("{}: metadata {key}: {reason}", path.display())]
    Metadata {
        /// The checkpoint's file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// The checkpoint does not hold what the model expects.
    #[error("{}", mismatch_message(path, problems))]
    Mismatch {
        /// The checkpoint's file.
        path: PathBuf,
        /// Every difference, in the model's order then unexpected tensors by name.
        problems: Vec<Mismatch>,
    },
}

fn mismatch_message(path: &Path, problems: &[Mismatch]) -> String {
    let mut s = format!(
        "{}: the checkpoint does not match the model ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str(&format!("\n  {p}"));
    }
    s
}

// ---- checksums --------------------------------------------------------------------------------

/// 64-bit FNV-1a: a small, dependency-free hash that detects accidental damage.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(mut self, b: &[u8]) -> Fnv {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// A length-prefixed field, so that field boundaries count.
    fn field(self, b: &[u8]) -> Fnv {
        self.bytes(&(b.len() as u64).to_le_bytes()).bytes(b)
    }

    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Checksum of one tensor: name, dtype, shape and data bytes.
fn tensor_checksum(name: &str, dtype: DType, shape: &[usize], data: &[u8]) -> String {
    let mut h = Fnv::new()
        .field(name.as_bytes())
        .field(dtype.name().as_bytes());
    h = h.bytes(&(shape.len() as u64).to_le_bytes());
    for &d in shape {
        h = h.bytes(&(d as u64).to_le_bytes());
    }
    h.field(data).hex()
}

/// Checksum of the caller's metadata entries (sorted by key).
fn metadata_checksum(meta: &BTreeMap<String, String>) -> String {
    meta.iter()
        .fold(Fnv::new(), |h, (k, v)| {
            h.field(k.as_bytes()).field(v.as_bytes())
        })
        .hex()
}

// ---- writing ----------------------------------------------------------------------------------

/// The safetensors dtype name of a gradlift dtype.
fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::I32 => "I32",
    }
}

/// One entry of the safetensors header, as written.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum HeaderEntry<'a> {
    Metadata(BTreeMap<&'a str, &'a str>),
    Tensor {
        dtype: &'static str,
        shape: &'a [usize],
        data_offsets: [usize; 2],
    },
}

/// Checks the tensors and metadata given to [`save`].
fn check_inputs(
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let bad = |name: &str, reason: String| CheckpointError::InvalidTensor {
        name: name.to_string(),
        reason,
    };
    let mut seen = BTreeSet::new();
    for t in tensors {
        if t.name.is_empty() {
            return Err(bad(&t.name, "the name is empty".into()));
        }
        if t.name == METADATA_KEY {
            return Err(bad(
                &t.name,
                format!("{METADATA_KEY} is reserved by safetensors"),
            ));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(bad(&t.name, "the name appears twice".into()));
        }
        let numel = t
            .shape
            .checked_numel()
            .ok_or_else(|| bad(&t.name, format!("shape {} has too many elements", t.shape)))?;
        if numel.checked_mul(4).is_none() {
            return Err(bad(&t.name, format!("shape {} is too large", t.shape)));
        }
        if numel != len_of(&t.data) {
            return Err(bad(
                &t.name,
                format!(
                    "shape {} needs {numel} elements, the data has {}",
                    t.shape,
                    len_of(&t.data)
                ),
            ));
        }
    }
    for key in metadata.keys() {
        if RESERVED_KEYS.contains(&key.as_str()) {
            return Err(CheckpointError::InvalidMetadata {
                key: key.clone(),
                reason: format!(
                    "the key is reserved (written by the checkpoint module: {})",
                    RESERVED_KEYS.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The bytes of a checkpoint file holding `tensors` and `metadata`: a safetensors file with
/// the tensors in name order and the reserved metadata entries added. Deterministic.
pub fn to_bytes(
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    check_inputs(tensors, metadata)?;
    let mut sorted: Vec<&NamedTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let data: Vec<Vec<u8>> = sorted.iter().map(|t| to_le_bytes(&t.data)).collect();

    let mut checksums = BTreeMap::new();
    checksums.insert(METADATA_KEY.to_string(), metadata_checksum(metadata));
    for (t, bytes) in sorted.iter().zip(&data) {
        let c = tensor_checksum(&t.name, t.dtype(), t.shape.dims(), bytes);
        checksums.insert(t.name.clone(), c);
    }
    let checksums = serde_json::to_string(&checksums).map_err(|e| encode_error(e.to_string()))?;

    let mut meta: BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    meta.insert("format", FORMAT);
    meta.insert("version", VERSION);
    meta.insert("checksums", &checksums);

    let mut header: BTreeMap<&str, HeaderEntry> = BTreeMap::new();
    header.insert(METADATA_KEY, HeaderEntry::Metadata(meta));
    let mut offset = 0usize;
    for (t, bytes) in sorted.iter().zip(&data) {
        let end = offset + bytes.len();
        header.insert(
            &t.name,
            HeaderEntry::Tensor {
                dtype: st_dtype(t.dtype()),
                shape: t.shape.dims(),
                data_offsets: [offset, end],
            },
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| encode_error(e.to_string()))?;
    head.resize(head.len().div_ceil(8) * 8, b' ');

    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for bytes in &data {
        out.extend_from_slice(bytes);
    }
    // Any safetensors reader must accept what we write.
    safetensors::SafeTensors::deserialize(&out)
        .map_err(|e| encode_error(format!("the safetensors crate rejects the encoding: {e}")))?;
    Ok(out)
}

fn encode_error(reason: String) -> CheckpointError {
    CheckpointError::Encode { reason }
}

/// Saves `tensors` and `metadata` to `path` atomically: writes `PATH.tmp-PID-N` in the same
/// directory, fsyncs it, renames it over `path`, then fsyncs the directory (best effort). On
/// any error the previous file at `path` is untouched and the temporary file is removed.
///
/// `metadata` holds the caller's entries (graph name, step count, optimizer, ...); the keys in
/// [`RESERVED_KEYS`] are added by this function and may not be used.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = to_bytes(tensors, metadata)?;
    write_atomic(path.as_ref(), |f| f.write_all(&bytes))
}

/// Distinguishes temporary files of concurrent saves in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a fresh temporary file next to `path` (never reusing an existing one).
fn create_temp(path: &Path) -> Result<(PathBuf, File), CheckpointError> {
    let io_err = |action, path: &Path, source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if path.file_name().is_none() {
        return Err(io_err(
            "save a checkpoint there",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
        ));
    }
    let pid = std::process::id();
    let mut attempts = 0;
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".tmp-{pid}-{n}"));
        let tmp = PathBuf::from(name);
        attempts += 1;
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // A stale file of an earlier process with the same pid: try the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => continue,
            Err(e) => return Err(io_err("create the temporary file", &tmp, e)),
        }
    }
}

/// Writes a file atomically: `write` fills a temporary file, which is synced and renamed over
/// `path`. On error the temporary file is removed and `path` is untouched.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    remove_stale_temps(path);
    let (tmp, mut file) = create_temp(path)?;
    let result = (|| {
        let step = |action, r: io::Result<()>| {
            r.map_err(|source| CheckpointError::Io {
                action,
                path: tmp.clone(),
                source,
            })
        };
        step("write the temporary file", write(&mut file))?;
        step("sync the temporary file", file.sync_all())?;
        drop(file);
        fs::rename(&tmp, path).map_err(|source| CheckpointError::Io {
            action: "rename the temporary file over the checkpoint",
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        // Best effort: the error being reported matters more than a failed cleanup.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_parent_dir(path);
    Ok(())
}

/// Removes the temporary files `<path>.tmp-PID-N` that a save killed before its rename left
/// behind: those whose process no longer runs, or runs but started after the file was last
/// written (another process given the same pid). Checked in `/proc`; on systems without it
/// nothing is removed. Files of another name, and of a process that may still be writing
/// them, are left alone. Best effort: a file that cannot be read or removed stays.
fn remove_stale_temps(path: &Path) {
    let proc_fs = Path::new("/proc/self");
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    if !proc_fs.exists() {
        return;
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        // `PID-N`, both numbers
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        if !writer_may_run(pid, &e.path()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Whether process `pid` may still be writing the temporary file `tmp`: it runs, and did not
/// start after the file was last modified. When a time cannot be read, it may.
fn writer_may_run(pid: u32, tmp: &Path) -> bool {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    let written = fs::metadata(tmp).and_then(|m| m.modified());
    match (process_start(pid), written) {
        // whole seconds of boot time, 10 ms ticks: 2 s of slack
        (Some(start), Ok(written)) => start <= written + std::time::Duration::from_secs(2),
        _ => true,
    }
}

/// When process `pid` started: the boot time (`btime` of `/proc/stat`) plus its start time
/// in clock ticks (field 22 of `/proc/PID/stat`, in units of `USER_HZ`, 100 per second on
/// Linux). `None` when either cannot be read.
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let own = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `PID (COMM) STATE ...`: COMM may hold spaces and parentheses; field 3 follows the last ')'
    let after = &own[own.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let since_boot = std::time::Duration::from_millis(ticks.checked_mul(10)?);
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(boot) + since_boot)
}

/// Makes the rename durable where the platform allows it (ignored where directories cannot be
/// synced: the new file is already in place).
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

// ---- reading ----------------------------------------------------------------------------------

/// A loaded checkpoint: the tensors (sorted by name) and the caller's metadata (the reserved
/// entries removed).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The file it was read from (used in messages).
    pub path: PathBuf,
    /// The tensors, sorted by name.
    pub tensors: Vec<NamedTensor>,
    /// The caller's metadata entries as given to [`save`].
    pub metadata: BTreeMap<String, String>,
}

/// Reads and fully checks the checkpoint at `path` (structure, offsets, checksums).
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
    let path = path.as_ref();
    Checkpoint::from_bytes(&read_bytes(path, "read the checkpoint")?, path)
}

/// Reads the safetensors file at `path`, which need not be a gradlift checkpoint (e.g. one
/// written by Python's `safetensors`): a gradlift checkpoint (metadata `format =
/// gradlift-checkpoint`) is checked in full as [`load`] does; another writer's file must be
/// a valid safetensors file of F32 and I32 tensors, its metadata (if any) kept as it is. A
/// file that is not safetensors at all is a [`CheckpointError::NotACheckpoint`].
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
    let path = path.as_ref();
    Checkpoint::from_any_bytes(&read_bytes(path, "read the file")?, path)
}

/// The bytes of the file at `path`; an error says `action` failed there.
fn read_bytes(path: &Path, action: &'static str) -> Result<Vec<u8>, CheckpointError> {
    fs::read(path).map_err(|source| CheckpointError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors header of `bytes` (its length and contents), or why it cannot be read
/// (an empty file; what [`explain`] finds where the crate refuses one).
fn read_header(
    bytes: &[u8],
    path: &Path,
) -> Result<(usize, safetensors::tensor::Metadata), CheckpointError> {
    if bytes.is_empty() {
        return Err(CheckpointError::NotACheckpoint {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    safetensors::SafeTensors::read_metadata(bytes).map_err(|e| explain(bytes, path, e))
}

impl Checkpoint {
    /// Decodes safetensors bytes as [`load_tensors`] does; `path` is only used in messages.
    pub fn from_any_bytes(
        bytes: &[u8],
        path: impl AsRef<Path>,
    ) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let (header_len, header) = read_header(bytes, path)?;
        let foreign =
            header.metadata().as_ref().and_then(|m| m.get("format")) != Some(&FORMAT.to_string());
        if !foreign {
            return Checkpoint::from_bytes(bytes, path);
        }
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            header.tensors().into_iter().collect();
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, info) in &infos {
            let corrupt = |reason: String| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                tensor: Some(name.clone()),
                reason,
            };
            let dtype = gradlift_dtype(info.dtype).map_err(corrupt)?;
            let (start, end) = info.data_offsets;
            let raw = data.get(start..end).ok_or_else(|| {
                corrupt(format!(
                    "data_offsets [{start}, {end}) lie outside the data section"
                ))
            })?;
            tensors.push(NamedTensor {
                name: name.clone(),
                shape: Shape(info.shape.clone()),
                data: from_le_bytes(dtype, raw),
            });
        }
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// Decodes checkpoint bytes as [`load`] does; `path` is only used in messages. The
    /// `safetensors` crate reads the file; when it refuses one, the error says what is
    /// wrong and where.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let corrupt = |tensor: Option<&str>, reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            tensor: tensor.map(str::to_string),
            reason,
        };
        let (header_len, header) = read_header(bytes, path)?;
        let mut metadata = ours(header.metadata().as_ref(), path)?;
        let checksums_text = metadata.remove("checksums");
        metadata.remove("format");
        metadata.remove("version");
        let checksums_text = checksums_text
            .ok_or_else(|| corrupt(None, "the metadata has no checksums entry".into()))?;
        let checksums: BTreeMap<String, String> =
            serde_json::from_str(&checksums_text).map_err(|e| {
                corrupt(
                    None,
                    format!("the checksums entry is not a JSON map of strings: {e}"),
                )
            })?;

        // The crate checked that the tensors' data tile the data section exactly.
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            header.tensors().into_iter().collect();
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, info) in &infos {
            let dtype = gradlift_dtype(info.dtype).map_err(|r| corrupt(Some(name), r))?;
            let (start, end) = info.data_offsets;
            let raw = data.get(start..end).ok_or_else(|| {
                corrupt(
                    Some(name),
                    format!("data_offsets [{start}, {end}) lie outside the data section"),
                )
            })?;
            let stored = checksums.get(name).ok_or_else(|| {
                corrupt(
                    Some(name),
                    "no checksum is recorded for it (was the name changed?)".into(),
                )
            })?;
            let actual = tensor_checksum(name, dtype, &info.shape, raw);
            if *stored != actual {
                return Err(corrupt(
                    Some(name),
                    format!("checksum mismatch: recorded {stored}, the contents hash to {actual}"),
                ));
            }
            tensors.push(NamedTensor {
                name: name.clone(),
                shape: Shape(info.shape.clone()),
                data: from_le_bytes(dtype, raw),
            });
        }
        for name in checksums.keys() {
            if name != METADATA_KEY && !infos.iter().any(|(t, _)| t == name) {
                return Err(corrupt(
                    Some(name),
                    "a checksum is recorded for it but the file holds no such tensor".into(),
                ));
            }
        }
        let stored = checksums
            .get(METADATA_KEY)
            .ok_or_else(|| corrupt(None, format!("no checksum is recorded for {METADATA_KEY}")))?;
        let actual = metadata_checksum(&metadata);
        if *stored != actual {
            return Err(corrupt(
                None,
                format!(
                    "metadata checksum mismatch: recorded {stored}, the entries hash to {actual}"
                ),
            ));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The step count of a training checkpoint: its `step` metadata entry, a whole number from
    /// 0 to [`MAX_STEP`] that agrees with the optimizer's own count when the checkpoint holds
    /// one ([`crate::optim::STEP_COUNTER`] of Adam, AdamW and learning-rate schedules, an f32
    /// equal to [`f32_step_counter`]`(step)`; SGD, momentum, RMSprop and Adagrad without a
    /// schedule count no steps). Anything else is a
    /// [`CheckpointError::Metadata`] with what was expected and found.
    pub fn step(&self) -> Result<u64, CheckpointError> {
        let bad = |reason: String| CheckpointError::Metadata {
            path: self.path.clone(),
            key: "step".to_string(),
            reason,
        };
        let text = self
            .metadata
            .get("step")
            .ok_or_else(|| bad("missing (a training checkpoint records its step count)".into()))?;
        let step: u64 = text.parse().map_err(|_| {
            bad(format!(
                "expected a whole number from 0 to {MAX_STEP}, found {text:?}"
            ))
        })?;
        if step > MAX_STEP {
            return Err(bad(format!(
                "{step} is more than {MAX_STEP}, the most steps a training run counts"
            )));
        }
        let counter = crate::optim::STEP_COUNTER;
        if let Some(t) = self.get(counter) {
            let expected = f32_step_counter(step);
            match &t.data {
                TensorData::F32(v) if v.len() == 1 => {
                    if v[0].to_bits() != expected.to_bits() {
                        return Err(bad(format!(
                            "the metadata says step {step}, but the optimizer's own count {counter} holds {} (expected {expected})",
                            v[0]
                        )));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "the optimizer's own count {counter} must be one f32, found {}",
                        t.ty()
                    )))
                }
            }
        }
        Ok(step)
    }

    /// Every difference between the checkpoint and the `expected` names and types: missing,
    /// dtype and shape mismatches and tensors holding NaN or infinities, in `expected`'s
    /// order, then unexpected tensors by name.
    pub fn mismatches(&self, expected: &[(String, TensorType)]) -> Vec<Mismatch> {
        let mut out = Vec::new();
        for (name, want) in expected {
            let Some(t) = self.get(name) else {
                out.push(Mismatch::Missing {
                    name: name.clone(),
                    expected: want.clone(),
                });
                continue;
            };
            let found = t.ty();
            if found.dtype != want.dtype {
                out.push(Mismatch::DType {
                    name: name.clone(),
                    expected: want.clone(),
                    found,
                });
            } else if found.shape != want.shape {
                out.push(Mismatch::Shape {
                    name: name.clone(),
                    expected: want.clone(),
                    found,
                });
            } else if let TensorData::F32(v) = &t.data {
                let mut bad = v.iter().enumerate().filter(|(_, x)| !x.is_finite());
                if let Some((first, _)) = bad.next() {
                    out.push(Mismatch::NonFinite {
                        name: name.clone(),
                        count: 1 + bad.count(),
                        first,
                    });
                }
            }
        }
        let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for t in &self.tensors {
            if !wanted.contains(t.name.as_str()) {
                out.push(Mismatch::Unexpected {
                    name: t.name.clone(),
                    found: t.ty(),
                });
            }
        }
        out
    }

    /// The [`Checkpoint::mismatches`] that matter when only the model's weights are read
    /// from the file: the optimizer state of a training checkpoint (metadata `contents =
    /// training`; the tensors its `params` entry does not list), whichever optimizer wrote
    /// it, is not unexpected. Every other difference is.
    pub fn weight_mismatches(&self, expected: &[(String, TensorType)]) -> Vec<Mismatch> {
        let file_params: Vec<&str> = self
            .metadata
            .get("params")
            .map(|p| p.split(',').collect())
            .unwrap_or_default();
        let skip_state = self.metadata.get("contents").map(|c| c.as_str()) == Some("training");
        self.mismatches(expected)
            .into_iter()
            .filter(|m| match m {
                Mismatch::Unexpected { name, .. } => {
                    !skip_state || file_params.contains(&name.as_str())
                }
                _ => true,
            })
            .collect()
    }

    /// Checks that the checkpoint holds exactly the `expected` tensors with their types;
    /// otherwise a [`CheckpointError::Mismatch`] listing every difference.
    pub fn check(&self, expected: &[(String, TensorType)]) -> Result<(), CheckpointError> {
        let problems = self.mismatches(expected);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Mismatch {
                path: self.path.clone(),
                problems,
            })
        }
    }

    /// The `expected` tensors in `expected`'s order, after [`Checkpoint::check`].
    pub fn restore(
        &self,
        expected: &[(String, TensorType)],
    ) -> Result<Vec<NamedTensor>, CheckpointError> {
        self.check(expected)?;
        Ok(expected
            .iter()
            .filter_map(|(name, _)| self.get(name).cloned())
            .collect())
    }

    /// Interpreter feeds for `g`'s params and state from this checkpoint, after checking that
    /// it holds exactly [`graph_tensor_types`]`(g)`. With `T = f32` every bit is kept; with
    /// `f64` values are widened exactly. i32 tensors become `T` holding the integers.
    pub fn feeds<T: Float>(&self, g: &Graph) -> Result<HashMap<NodeId, Array<T>>, CheckpointError> {
        let expected = graph_tensor_types(g)?;
        self.check(&expected)?;
        let mut feeds = HashMap::new();
        for id in g.params().into_iter().chain(g.states()) {
            let name = node_name(g, id)?;
            if let Some(t) = self.get(name) {
                feeds.insert(id, to_array(t));
            }
        }
        Ok(feeds)
    }
}

/// An interpreter array with the tensor's values (bit-exact for f32 arrays).
pub(crate) fn to_array<T: Float>(t: &NamedTensor) -> Array<T> {
    let data: Vec<T> = match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| T::from_f32(x)).collect(),
        TensorData::I32(v) => v.iter().map(|&x| T::from_f64(x as f64)).collect(),
    };
    Array {
        shape: t.shape.clone(),
        data,
    }
}

/// The caller's metadata of a safetensors header, after checking that it is ours
/// (`format`) and of the supported `version`.
fn ours(
    metadata: Option<&std::collections::HashMap<String, String>>,
    path: &Path,
) -> Result<BTreeMap<String, String>, CheckpointError> {
    let not_ours = |reason: String| CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let Some(map) = metadata else {
        return Err(not_ours(format!(
            "the safetensors header has no {METADATA_KEY} (format = {FORMAT} is expected)"
        )));
    };
    let out: BTreeMap<String, String> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    match out.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(not_ours(format!(
                "its metadata says format = {f:?}, expected {FORMAT:?}"
            )))
        }
        None => {
            return Err(not_ours(format!(
                "its metadata has no format entry (format = {FORMAT} is expected)"
            )))
        }
    }
    match out.get("version") {
        Some(v) if v == VERSION => Ok(out),
        Some(v) => Err(CheckpointError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: v.clone(),
        }),
        None => Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            tensor: None,
            reason: "the metadata has no version entry".into(),
        }),
    }
}

/// The gradlift dtype of a safetensors dtype, or why it has none.
fn gradlift_dtype(d: safetensors::Dtype) -> Result<DType, String> {
    match d {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::I32 => Ok(DType::I32),
        other => Err(format!(
            "dtype {other:?} is not supported (checkpoints hold F32 and I32)"
        )),
    }
}

/// What is wrong with a file the `safetensors` crate refused (`e`), with the numbers found:
/// the length prefix against the file, the header's encoding and JSON, each tensor entry
/// (read with the crate's own header types), and how the tensors' data offsets tile the data
/// section.
fn explain(bytes: &[u8], path: &Path, e: safetensors::SafeTensorError) -> CheckpointError {
    use safetensors::SafeTensorError as E;
    let not_ours = |reason: String| CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let corrupt = |tensor: Option<&str>, reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_string),
        reason,
    };
    let len = bytes.len();
    let Some(prefix) = bytes.get(..8) else {
        return corrupt(
            None,
            format!("the file is {len} bytes long, shorter than the 8-byte header length: it is truncated"),
        );
    };
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(prefix);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER {
        return not_ours(format!(
            "the header length prefix is {n}, more than the {MAX_HEADER} bytes a safetensors header may have (not a safetensors file)"
        ));
    }
    // n <= MAX_HEADER, so it fits a usize and the sum does not overflow.
    let header_end = 8 + n as usize;
    let Some(head) = bytes.get(8..header_end) else {
        return corrupt(
            None,
            format!(
                "the header length prefix says {n} bytes but only {} follow it: the file is truncated",
                len - 8
            ),
        );
    };
    if head.first() != Some(&b'{') {
        return not_ours("the header does not start with '{' (not a safetensors file)".into());
    }
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) => {
            return corrupt(
                None,
                format!("the header is not UTF-8 (at byte {})", 8 + e.valid_up_to()),
            )
        }
    };
    let data_len = len - header_end;
    match e {
        E::InvalidOffset(_)
        | E::TensorInvalidInfo
        | E::MetadataIncompleteBuffer
        | E::ValidationOverflow => {
            match serde_json::from_str::<safetensors::tensor::Metadata>(text) {
                Ok(header) => layout_error(&header, data_len, &corrupt).unwrap_or_else(|| {
                    corrupt(None, format!("the safetensors reader rejects it: {e}"))
                }),
                Err(_) => header_error(text, &corrupt),
            }
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            header_error(text, &corrupt)
        }
        other => corrupt(None, format!("the safetensors reader rejects it: {other}")),
    }
}

/// Why a header is not a safetensors header: not a JSON object, metadata that is not a map
/// of strings, or the first tensor entry that the crate's `TensorInfo` does not read.
fn header_error(
    text: &str,
    corrupt: &dyn Fn(Option<&str>, String) -> CheckpointError,
) -> CheckpointError {
    let entries: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return corrupt(None, format!("the header is not valid JSON: {e}"))
        }
        Err(e) => return corrupt(None, format!("the header is not a JSON object: {e}")),
    };
    if let Some(meta) = entries.get(METADATA_KEY) {
        let Some(map) = meta.as_object() else {
            return corrupt(None, format!("{METADATA_KEY} is not a JSON object"));
        };
        if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
            return corrupt(None, format!("metadata entry {k:?} is not a string"));
        }
    }
    for (name, entry) in entries.iter().filter(|(k, _)| *k != METADATA_KEY) {
        if let Err(reason) = entry_error(entry) {
            return corrupt(Some(name), reason);
        }
    }
    corrupt(
        None,
        "the safetensors reader rejects the header (its entries read one by one)".into(),
    )
}

/// Why the crate's `TensorInfo` does not read a tensor's header entry
/// `{"dtype": .., "shape": [..], "data_offsets": [start, end]}`: the field and what it holds,
/// each field read with the crate's type for it.
fn entry_error(entry: &serde_json::Value) -> Result<(), String> {
    let Some(fields) = entry.as_object() else {
        return Err("its header entry is not a JSON object".into());
    };
    let field = |key: &str| {
        fields
            .get(key)
            .cloned()
            .ok_or_else(|| format!("its header entry has no {key}"))
    };
    serde_json::from_value::<safetensors::Dtype>(field("dtype")?)
        .map_err(|e| format!("dtype: {e}"))?;
    serde_json::from_value::<Vec<usize>>(field("shape")?).map_err(|e| format!("shape: {e}"))?;
    let offsets = serde_json::from_value::<Vec<usize>>(field("data_offsets")?)
        .map_err(|e| format!("data_offsets: {e}"))?;
    if offsets.len() != 2 {
        return Err(format!(
            "data_offsets has {} numbers, expected 2",
            offsets.len()
        ));
    }
    serde_json::from_value::<safetensors::tensor::TensorInfo>(entry.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The first problem of the tensors' data layout: an unsupported dtype, a byte range that
/// does not match the dtype and shape, a gap or overlap between tensors, data beyond the end
/// of the file or bytes after the last tensor. `None` when the layout is fine.
fn layout_error(
    header: &safetensors::tensor::Metadata,
    data_len: usize,
    corrupt: &dyn Fn(Option<&str>, String) -> CheckpointError,
) -> Option<CheckpointError> {
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
        header.tensors().into_iter().collect();
    tensors.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    for (name, info) in &tensors {
        let dtype = match gradlift_dtype(info.dtype) {
            Ok(d) => d,
            Err(reason) => return Some(corrupt(Some(name), reason)),
        };
        let ty = TensorType::new(dtype, info.shape.clone());
        let (start, end) = info.data_offsets;
        let Some(nbytes) = ty.shape.checked_numel().and_then(|n| n.checked_mul(4)) else {
            return Some(corrupt(Some(name), format!("{ty} is too large")));
        };
        if end < start || end - start != nbytes {
            return Some(corrupt(
                Some(name),
                format!(
                    "{ty} needs {nbytes} bytes but data_offsets [{start}, {end}) hold {}",
                    end.saturating_sub(start)
                ),
            ));
        }
    }
    let mut at = 0usize;
    for (name, info) in &tensors {
        let (start, end) = info.data_offsets;
        if start != at {
            return Some(corrupt(
                Some(name),
                format!(
                    "data_offsets [{start}, {end}) do not start where the previous tensor ends ({at})"
                ),
            ));
        }
        if end > data_len {
            return Some(corrupt(
                Some(name),
                format!(
                    "its data occupies bytes [{start}, {end}) of the data section, which has only {data_len} bytes: the file is truncated"
                ),
            ));
        }
        at = end;
    }
    if at != data_len {
        let last = tensors
            .last()
            .map(|(name, _)| format!("tensor {name}"))
            .unwrap_or_else(|| "the header".into());
        return Some(corrupt(
            None,
            format!(
                "{} unexpected bytes follow the data of the last tensor ({last}): the data section has {data_len} bytes, the tensors {at}",
                data_len.saturating_sub(at)
            ),
        ));
    }
    None
}

// ---- graphs -----------------------------------------------------------------------------------

/// The name of param/state `id`, or an error (checkpoints store tensors by name).
fn node_name(g: &Graph, id: NodeId) -> Result<&str, CheckpointError> {
    g[id].name.as_deref().ok_or_else(|| CheckpointError::Graph {
        graph: g.name.clone(),
        reason: format!(
            "a {} node (index {}) has no name; checkpoints store tensors by name",
            g[id].op.name(),
            id.index()
        ),
    })
}

/// The names and types a checkpoint of `g` holds: its params, then its state, each in creation
/// order. Fails when one is unnamed or two share a name.
pub fn graph_tensor_types(g: &Graph) -> Result<Vec<(String, TensorType)>, CheckpointError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for id in g.params().into_iter().chain(g.states()) {
        let name = node_name(g, id)?;
        if !seen.insert(name) {
            return Err(CheckpointError::Graph {
                graph: g.name.clone(),
                reason: format!("two params or states are called {name}"),
            });
        }
        out.push((name.to_string(), g[id].ty.clone()));
    }
    Ok(out)
}

/// The checkpoint tensors of `g`'s params and state, taken from `values` (e.g. interpreter
/// values, or [`crate::interp::Values::updates`] after a step), in [`graph_tensor_types`]
/// order. With `T = f32` every bit is kept. Each value must have the node's shape; values of
/// i32 nodes must be integers in the i32 range.
pub fn graph_tensors<T: Float>(
    g: &Graph,
    values: &HashMap<NodeId, Array<T>>,
) -> Result<Vec<NamedTensor>, CheckpointError> {
    let types = graph_tensor_types(g)?;
    let ids = g.params().into_iter().chain(g.states());
    let bad = |reason: String| CheckpointError::Graph {
        graph: g.name.clone(),
        reason,
    };
    let mut out = Vec::with_capacity(types.len());
    for (id, (name, ty)) in ids.zip(types) {
        let a = values
            .get(&id)
            .ok_or_else(|| bad(format!("no value is given for {name}: {ty}")))?;
        out.push(tensor_from_array(name, &ty, a).map_err(bad)?);
    }
    Ok(out)
}

/// A tensor `name` of type `ty` holding the interpreter value `a` (every bit kept with
/// `T = f32`); `a` must have `ty`'s shape, and the values of an i32 `ty` must be integers in
/// the i32 range. The error says what is wrong, naming the tensor.
pub(crate) fn tensor_from_array<T: Float>(
    name: String,
    ty: &TensorType,
    a: &Array<T>,
) -> Result<NamedTensor, String> {
    if a.shape != ty.shape || a.data.len() != ty.shape.numel() {
        return Err(format!(
            "the value of {name} has shape {} and {} elements, expected {ty}",
            a.shape,
            a.data.len()
        ));
    }
    let data = match ty.dtype {
        DType::F32 => TensorData::F32(a.data.iter().map(|v| v.to_f32()).collect()),
        DType::I32 => {
            let mut v = Vec::with_capacity(a.data.len());
            for (i, x) in a.data.iter().enumerate() {
                let x = x.to_f64();
                if x.fract() != 0.0 || x < i32::MIN as f64 || x > i32::MAX as f64 {
                    return Err(format!(
                        "the value of {name} ({ty}) holds {x} at element {i}, not an i32"
                    ));
                }
                v.push(x as i32);
            }
            TensorData::I32(v)
        }
    };
    Ok(NamedTensor {
        name,
        shape: ty.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gradlift-ckpt-unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A write that fails halfway leaves the old file as it was and no temporary file.
    #[test]
    fn failing_write_midway_keeps_the_old_file() {
        let dir = scratch("midway");
        let path = dir.join("c.safetensors");
        let old = [NamedTensor::f32("w", [2], vec![1.0, 2.0])];
        save(&path, &old, &BTreeMap::new()).expect("save");
        let before = fs::read(&path).expect("read");
        let new = to_bytes(
            &[NamedTensor::f32("w", [2], vec![3.0, 4.0])],
            &BTreeMap::new(),
        )
        .expect("encode");
        let err = write_atomic(&path, |f| {
            f.write_all(&new[..new.len() / 2])?;
            Err(io::Error::other("disk full (simulated)"))
        })
        .expect_err("the write fails");
        let msg = err.to_string();
        assert!(msg.contains("cannot write the temporary file"), "{msg}");
        assert!(msg.contains("disk full (simulated)"), "{msg}");
        assert_eq!(fs::read(&path).expect("read"), before);
        assert_eq!(entries(&dir), vec!["c.safetensors".to_string()]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Temporary files with the names this process would use next (written after it started,
    /// so possibly its own) are skipped, not reused or deleted.
    #[test]
    fn stale_temporary_files_are_left_alone() {
        let dir = scratch("stale");
        let path = dir.join("c.safetensors");
        let next = TEMP_COUNTER.load(Ordering::SeqCst);
        let pid = std::process::id();
        let stale: Vec<String> = (next..next + 3)
            .map(|n| format!("c.safetensors.tmp-{pid}-{n}"))
            .collect();
        for s in &stale {
            fs::write(dir.join(s), b"stale").expect("write");
        }
        let t = [NamedTensor::i32("n", [1], vec![1])];
        save(&path, &t, &BTreeMap::new()).expect("save");
        assert_eq!(load(&path).expect("load").tensors, t.to_vec());
        for s in &stale {
            assert_eq!(fs::read(dir.join(s)).expect("still there"), b"stale");
        }
        assert_eq!(entries(&dir).len(), 4);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Another writer's file (no gradlift metadata) reads back as its tensors; every prefix
    /// of it and every single-byte change of its header is read or refused, never a panic.
    #[test]
    fn foreign_files_read_and_damaged_ones_are_errors() {
        let x: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let n: Vec<u8> = 7i32.to_le_bytes().to_vec();
        let views = vec![
            (
                "x",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &x)
                    .expect("view"),
            ),
            (
                "n",
                safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![], &n)
                    .expect("view"),
            ),
        ];
        let bytes = safetensors::serialize(views, &None).expect("serialize");
        let c = Checkpoint::from_any_bytes(&bytes, "f.safetensors").expect("read");
        assert_eq!(
            c.tensors,
            [
                NamedTensor::i32("n", Vec::<usize>::new(), vec![7]),
                NamedTensor::f32("x", [2], vec![1.5, -2.0])
            ]
        );
        assert!(c.metadata.is_empty());
        // not a gradlift checkpoint: `load` refuses what `load_tensors` reads
        let e = Checkpoint::from_bytes(&bytes, "f.safetensors").expect_err("not ours");
        assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{e}");
        for len in 0..bytes.len() {
            assert!(
                Checkpoint::from_any_bytes(&bytes[..len], "f").is_err(),
                "prefix {len}"
            );
        }
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        for i in 0..header_end {
            for v in [0u8, b'9', b'"', 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Checkpoint::from_any_bytes(&b, "f");
            }
        }
    }

    #[test]
    fn fnv_matches_reference_values() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(Fnv::new().bytes(b"").hex(), "cbf29ce484222325");
        assert_eq!(Fnv::new().bytes(b"a").hex(), "af63dc4c8601ec8c");
        assert_eq!(Fnv::new().bytes(b"foobar").hex(), "85944171f73967e8");
    }
}
