//! The `gradlift` command line.
//!
//! In: a graph file, in the IR text format (`.ir`, or any other extension) or as JSON (`.json`,
//! as written by `gradlift dump --format json`). Out: a verdict (`check`), the graph printed as
//! text, Graphviz or JSON, or its compiled code as Cranelift IR or machine code (`dump`), the
//! graph extended with its gradient (`grad`), the values of its outputs (`eval`, `run`, on
//! random inputs or those of a safetensors file, optionally written to one), a table of its
//! params and ops (`summary`), a model trained on MNIST (`train`, which reads the dataset
//! and reads and writes checkpoints), or an object file of its compiled code with a C header
//! and its initial values (`compile`), or an ONNX model imported as a graph file and a
//! weights file (`import`). Every command
//! parses and verifies the graph first. Errors (unreadable file, parse error, invalid graph, evaluation
//! failure) are printed to stderr like a compiler's (`FILE:LINE:COL: message`) and give exit
//! code 1; the process never panics on user input.
//!
//! Adding a subcommand: one variant of [`Command`] holding a clap `Args` struct, one
//! `fn cmd_NAME(&Args) -> Result<(), CliError>`, and one arm in [`Command::run`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradlift::autodiff;
use gradlift::checkpoint::NamedTensor;
use gradlift::codegen::{self, CompileOptions, Listing};
use gradlift::data::{self, Dataset};
use gradlift::graph::{Graph, NodeId};
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::onnx;
use gradlift::optim::{Optimizer, Schedule};
use gradlift::passes::Pipeline;
use gradlift::runtime::{self, HostTensor};
use gradlift::shape::{DType, TensorType};
use gradlift::step::StepOptions;
use gradlift::tensor_io;
use gradlift::text;
use gradlift::train::graph::{class_count, GraphModel};
use gradlift::train::{EpochEnd, Plan, Progress, Span, TrainError};
use gradlift::verify::{verify, VerifyErrors};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Compile, inspect and run deep-learning graphs.
#[derive(Parser, Debug)]
#[command(name = "gradlift", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and verify a graph; print a one-line summary.
    Check(CheckArgs),
    /// Print a graph as canonical text, Graphviz dot or JSON, or its compiled function (as
    /// Cranelift IR before or after Cranelift's passes, or as machine code).
    Dump(DumpArgs),
    /// Append the gradient of a scalar loss (symbolic reverse mode) and print the extended
    /// graph; each gradient is also an output `grad_<name>`.
    Grad(GradArgs),
    /// Evaluate a graph with the reference interpreter (f32) on seeded random inputs (or those
    /// of `--inputs`), params at their initializers (or those of `--params`), and print its
    /// outputs (and write them to `--outputs`).
    Eval(EvalArgs),
    /// Compile a graph to native code (optionally with gradients), run it once on the inputs
    /// and params `eval` uses and print its outputs, updates and compile time (and write
    /// them to `--outputs`).
    Run(RunArgs),
    /// Train a model (inputs: images `x` and i32 `labels`; output: `loss`, optionally
    /// `accuracy`) on MNIST: gradients, optimizer and one compiled training step per batch.
    Train(TrainArgs),
    /// Print a model's inputs, params (shapes and counts), outputs and node counts per op.
    Summary(SummaryArgs),
    /// Compile a graph ahead of time (optionally with gradients, or as a training step): an
    /// object file holding the function `run` compiles, a C header describing its table and
    /// a file of initial values (params, state, consts), to link into a C program.
    Compile(CompileArgs),
    /// Import an ONNX model: write its graph as IR text (`-o`) and the values of its
    /// initializers, the params, as a safetensors file that `run` and `eval` read with
    /// `--params`.
    Import(ImportArgs),
}

impl Command {
    /// Runs the subcommand.
    fn run(&self) -> Result<(), CliError> {
        match self {
            Command::Check(a) => cmd_check(a),
            Command::Dump(a) => cmd_dump(a),
            Command::Grad(a) => cmd_grad(a),
            Command::Eval(a) => cmd_eval(a),
            Command::Run(a) => cmd_run(a),
            Command::Train(a) => cmd_train(a),
            Command::Summary(a) => cmd_summary(a),
            Command::Compile(a) => cmd_compile(a),
            Command::Import(a) => cmd_import(a),
        }
    }
}

/// `print!` to stdout that ends the program quietly when the reader has gone away
/// (`gradlift dump FILE | head`) and turns other write errors into a [`CliError`].
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            // a rank other than 0 of `mpirun -n N gradlift train`: rank 0 prints
        } else if let Err(e) = write!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(CliError(format!("cannot write to standard output: {e}")));
        }
    }};
}

/// `println!` with the behaviour of [`out!`].
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            // a rank other than 0 of `mpirun -n N gradlift train`: rank 0 prints
        } else if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(CliError(format!("cannot write to standard output: {e}")));
        }
    }};
}

/// Set on the ranks other than 0 of a data-parallel `train` (`mpirun -n N`): only rank 0
/// prints to stdout.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli.command.run();
    let world = gradlift::dist::world();
    match result {
        Ok(()) => {
            gradlift::dist::finalize();
            ExitCode::SUCCESS
        }
        Err(e) if world.is_distributed() => {
            // the other ranks may be waiting in a collective: end them all
            eprintln!("rank {} of {}: {e}", world.rank, world.size);
            gradlift::dist::abort(1)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// A failed command: the full message printed to stderr (may span several lines).
#[derive(Debug)]
struct CliError(String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.trim_end())
    }
}

/// Formats verifier errors like a compiler: `LOCATION: message` then the printed node line;
/// `file` stands in for nodes without a source location.
fn verify_report(file: &str, errs: &VerifyErrors) -> CliError {
    let mut s = String::new();
    for e in &errs.errors {
        let at = e
            .loc
            .as_ref()
            .map(|l| l.to_string())
            .unwrap_or_else(|| file.to_string());
        s.push_str(&format!("{at}: {}\n", e.message));
        // The context ends with `# at LOC` when the node has a location: already printed.
        let suffix = format!("  # at {at}");
        let context = e.context.strip_suffix(&suffix).unwrap_or(&e.context);
        if !context.is_empty() {
            s.push_str(&format!("    {context}\n"));
        }
    }
    let n = errs.errors.len();
    s.push_str(&format!(
        "{file}: invalid graph: {n} error{}\n",
        if n == 1 { "" } else { "s" }
    ));
    CliError(s)
}

// ---- loading ----------------------------------------------------------------------------------

/// Reads, parses and verifies the graph in `path` (JSON if the extension is `.json`, else the
/// IR text format).
fn load(path: &Path) -> Result<Graph, CliError> {
    let file = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| CliError(format!("{file}: cannot read the file: {e}")))?;
    let src = String::from_utf8(bytes).map_err(|e| {
        // where the first invalid byte is, as line:column (1-based)
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let before = &bytes[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = 1 + String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count();
        CliError(format!(
            "{file}:{line}:{column}: the file is not valid UTF-8 (byte 0x{:02x})",
            bytes[at]
        ))
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let g = if is_json {
        text::from_json(&src).map_err(|e| json_error(&file, &e))?
    } else {
        text::parse(&src, &file).map_err(|e| CliError(e.to_string()))?
    };
    verify(&g).map_err(|e| verify_report(&file, &e))?;
    Ok(g)
}

/// `FILE:LINE:COL: invalid graph JSON: ...` from a JSON error.
fn json_error(file: &str, e: &text::JsonError) -> CliError {
    use std::error::Error;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<serde_json::Error>())
    {
        Some(j) => {
            let (line, col) = (j.line(), j.column());
            let msg = j.to_string();
            let msg = msg
                .strip_suffix(&format!(" at line {line} column {col}"))
                .unwrap_or(&msg);
            CliError(format!("{file}:{line}:{col}: invalid graph JSON: {msg}"))
        }
        None => CliError(format!("{file}: {e}")),
    }
}

// ---- check ------------------------------------------------------------------------------------

/// Arguments of `gradlift check`.
#[derive(Args, Debug)]
struct CheckArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
}

/// Parses and verifies; prints `FILE: ok: ...` with node, param and parameter counts.
fn cmd_check(a: &CheckArgs) -> Result<(), CliError> {
    let g = load(&a.file)?;
    let params = g.params();
    let numel: usize = params.iter().map(|&p| g[p].ty.shape.numel()).sum();
    outln!(
        "{}: ok: graph {}, {} nodes ({} inputs, {} params, {} state), {} parameters, {} outputs, {} updates",
        a.file.display(),
        g.name,
        g.len(),
        g.inputs().len(),
        params.len(),
        g.states().len(),
        numel,
        g.outputs().len(),
        g.updates().len()
    );
    Ok(())
}

// ---- dump -------------------------------------------------------------------------------------

/// Output formats of `gradlift dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DumpFormat {
    /// The canonical IR text.
    Text,
    /// Graphviz dot.
    Dot,
    /// JSON (readable back by every command).
    Json,
    /// The Cranelift IR of the compiled function, as lowered from the graph.
    Clif,
    /// The Cranelift IR after Cranelift's own IR passes (what it selects instructions from).
    ClifOpt,
    /// The machine code Cranelift emits for the host, as its disassembly.
    Asm,
}

/// Arguments of `gradlift dump`.
#[derive(Args, Debug)]
struct DumpArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
    format: DumpFormat,
    /// Optimization passes to run before printing.
    #[command(flatten)]
    passes: PassArgs,
}

/// Prints the graph in the chosen format to stdout (after the passes, if any).
fn cmd_dump(a: &DumpArgs) -> Result<(), CliError> {
    let mut g = load(&a.file)?;
    a.passes.run(&mut g, &a.file.display().to_string(), false)?;
    print_graph(&g, a.format)
}

// ---- passes -----------------------------------------------------------------------------------

/// The pass options of `dump` and `run`.
#[derive(Args, Debug)]
struct PassArgs {
    /// Run a pass pipeline: `default` (cse, simplify, fold, batch_matmuls, licm, cse, dce, fuse),
    /// `none`, or a comma-separated list of pass names. Default: `default` for `run` (what
    /// training compiles); for `dump`, `none` unless `--dump-after` or `--remarks` is given.
    #[arg(long)]
    passes: Option<String>,
    /// Write the graph after these passes (`all`, or comma-separated pass names) into
    /// `--dump-dir`, one file per pass numbered in order (`00-input.ir`, `01-cse.ir`, ...).
    #[arg(long)]
    dump_after: Option<String>,
    /// The directory of `--dump-after` files (created if missing).
    #[arg(long, default_value = "gradlift-dump")]
    dump_dir: PathBuf,
    /// Print each pass's report (what it changed, and remarks on what it did not do and why,
    /// e.g. what fusion left unfused) to stderr.
    #[arg(long)]
    remarks: bool,
}

impl PassArgs {
    /// Runs the selected pipeline on `g` (nothing when none is selected); `optimize` says
    /// whether the command runs the default pipeline when `--passes` is not given.
    fn run(&self, g: &mut Graph, file: &str, optimize: bool) -> Result<(), CliError> {
        let fail = |e: gradlift::passes::PassError| CliError(format!("{file}: {e}"));
        let implied = optimize || self.dump_after.is_some() || self.remarks;
        let names = match self.passes.as_deref() {
            Some("none") => return Ok(()),
            None if !implied => return Ok(()),
            None | Some("default") => gradlift::passes::DEFAULT_PIPELINE.to_vec(),
            Some(list) => list.split(',').map(str::trim).collect(),
        };
        let mut pipeline = gradlift::passes::Pipeline::new(&names).map_err(fail)?;
        if let Some(after) = &self.dump_after {
            let after = gradlift::passes::DumpAfter::parse(after).map_err(fail)?;
            if let gradlift::passes::DumpAfter::Passes(wanted) = &after {
                if let Some(w) = wanted.iter().find(|w| !names.contains(&w.as_str())) {
                    return Err(CliError(format!(
                        "{file}: --dump-after={w}: the pipeline has no {w} pass (its passes: {})",
                        names.join(",")
                    )));
                }
            }
            pipeline = pipeline.dump_to(&self.dump_dir, after);
        }
        let reports = pipeline.run(g).map_err(fail)?;
        if self.remarks {
            for r in &reports {
                eprintln!("{r}");
            }
        }
        Ok(())
    }
}

/// Prints `g` in `format` to stdout, ending with a newline.
fn print_graph(g: &Graph, format: DumpFormat) -> Result<(), CliError> {
    let out = match format {
        DumpFormat::Text => text::print(g),
        DumpFormat::Dot => text::dot(g),
        DumpFormat::Json => text::to_json(g),
        DumpFormat::Clif => listing(g, Listing::Clif)?,
        DumpFormat::ClifOpt => listing(g, Listing::OptimizedClif)?,
        DumpFormat::Asm => listing(g, Listing::Asm)?,
    };
    out!("{out}");
    if !out.ends_with('\n') {
        outln!();
    }
    Ok(())
}

/// [`codegen::listing`] of `g` with the options `run` compiles with.
fn listing(g: &Graph, what: Listing) -> Result<String, CliError> {
    codegen::listing(g, &CompileOptions::default(), what)
        .map_err(|e| CliError(format!("{}: {e}", g.name)))
}

// ---- grad -------------------------------------------------------------------------------------

/// Arguments of `gradlift grad`.
#[derive(Args, Debug)]
struct GradArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// The loss: the name of an output or a node, of type `f32[]`.
    #[arg(long)]
    loss: String,
    /// Names of the params or f32 inputs to differentiate with respect to, comma-separated
    /// (default: every param).
    #[arg(long, value_delimiter = ',')]
    wrt: Option<Vec<String>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
    format: DumpFormat,
}

/// Appends to `g` (read from `file`) the gradient of output `loss` with respect to `wrt` (every
/// param when `None`) and verifies the result: what `grad`, `run --grad` and `compile --grad`
/// share.
fn append_gradient(
    g: &mut Graph,
    file: &str,
    loss: &str,
    wrt: Option<&[&str]>,
) -> Result<Vec<autodiff::NamedGrad>, CliError> {
    let named = autodiff::grad_all_params(g, loss, wrt).map_err(|e| match e.loc() {
        Some(_) => CliError(e.to_string()),
        None => CliError(format!("{file}: {e}")),
    })?;
    verify(g).map_err(|e| verify_report(&format!("{file} (with its gradient)"), &e))?;
    Ok(named)
}

/// Appends the gradient nodes (marked `grad(%forward)` in the text) and prints the extended
/// graph. A `wrt` node the loss does not depend on gets an explicit zero and a note on stderr.
fn cmd_grad(a: &GradArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let mut g = load(&a.file)?;
    let wrt: Option<Vec<&str>> = a.wrt.as_ref().map(|v| v.iter().map(|s| s.trim()).collect());
    let named = append_gradient(&mut g, &file, &a.loss, wrt.as_deref())?;
    for n in named.iter().filter(|n| n.independent) {
        eprintln!(
            "{file}: note: the loss {} does not depend on %{}: its gradient is zero",
            a.loss, n.name
        );
    }
    print_graph(&g, a.format)
}

// ---- eval -------------------------------------------------------------------------------------

/// Arguments of `gradlift eval`.
#[derive(Args, Debug)]
struct EvalArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Seed of the random inputs (not used with `--inputs`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Files of inputs, params and outputs.
    #[command(flatten)]
    data: DataArgs,
}

/// The data files of `eval` and `run` (see [`gradlift::tensor_io`]).
#[derive(Args, Debug)]
struct DataArgs {
    /// Read the inputs from this safetensors file instead of drawing them at random: a tensor
    /// per input of the graph, by name, with its dtype and shape; every input, nothing else.
    #[arg(long, value_name = "FILE")]
    inputs: Option<PathBuf>,
    /// Read the params (and state) from this checkpoint (`gradlift train --save`,
    /// `Model::save`) instead of their initializers: every param of the graph by name, with
    /// its dtype and shape (a training checkpoint's optimizer state is skipped).
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// Write every output (by output name) and the new value of every updated param or
    /// state (as `update.NAME`) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    outputs: Option<PathBuf>,
}

impl DataArgs {
    /// The inputs of `g`: read from `--inputs`, or drawn as [`random_feeds`] draws them.
    fn inputs(&self, g: &Graph, seed: u64) -> Result<Vec<NamedTensor>, CliError> {
        match &self.inputs {
            Some(path) => tensor_io::read_inputs(path, g).map_err(io_error),
            None => {
                let feeds = random_feeds(g, seed)?;
                let mut out = Vec::new();
                for id in g.inputs() {
                    let ty = &g[id].ty;
                    let data = feeds.get(&id).map(|f| f.to_f64_vec()).unwrap_or_default();
                    let name = g[id].name.clone().unwrap_or_default();
                    out.push(NamedTensor::from_host(
                        name,
                        HostTensor::from_f64(ty, &data),
                    ));
                }
                Ok(out)
            }
        }
    }

    /// The params and state of `g` from `--params` (none without it).
    fn params(&self, g: &Graph) -> Result<Vec<NamedTensor>, CliError> {
        match &self.params {
            Some(path) => tensor_io::read_params(path, g).map_err(io_error),
            None => Ok(Vec::new()),
        }
    }

    /// Writes `tensors` to `--outputs`, if given.
    fn write(&self, g: &Graph, source: &str, tensors: &[NamedTensor]) -> Result<(), CliError> {
        match &self.outputs {
            Some(path) => tensor_io::write_outputs(path, g, source, tensors).map_err(io_error),
            None => Ok(()),
        }
    }
}

fn io_error(e: tensor_io::TensorIoError) -> CliError {
    CliError(e.to_string())
}

/// The most elements (over all nodes) `eval` computes: 2^28, 1 GiB of f32.
const MAX_EVAL_ELEMENTS: usize = 1 << 28;

/// Evaluates the graph in f32 on seeded random inputs (or `--inputs`), params and state at
/// their initializers (or `--params`); prints every output, then the new value of every
/// update target, after writing them to `--outputs`.
fn cmd_eval(a: &EvalArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let g = load(&a.file)?;
    // The interpreter keeps every node's value: refuse what would not fit in memory.
    let total = g
        .node_ids()
        .iter()
        .fold(0usize, |t, &id| t.saturating_add(g[id].ty.shape.numel()));
    if total > MAX_EVAL_ELEMENTS {
        return Err(CliError(format!(
            "{file}: the graph's values hold {total} elements in all, more than the interpreter's limit of {MAX_EVAL_ELEMENTS}"
        )));
    }
    let inputs = a.data.inputs(&g, a.seed)?;
    let params = a.data.params(&g)?;
    let mut feeds = tensor_io::feeds::<f32>(&g, &inputs);
    feeds.extend(tensor_io::feeds::<f32>(&g, &params));
    let values = interp::eval::<f32>(&g, &feeds)
        .map_err(|e| CliError(format!("{file}: evaluation failed: {e}")))?;
    let mut written = Vec::new();
    for o in g.outputs() {
        let ty = &g[o.node].ty;
        let v = values
            .get(o.node)
            .ok_or_else(|| CliError(format!("{file}: output {} has no value", o.name)))?;
        written.push(tensor_io::tensor_from_value(&g, o.name.clone(), ty, v).map_err(io_error)?);
    }
    for u in g.updates() {
        let ty = &g[u.target].ty;
        let label = gradlift::verify::node_label(&g, u.target);
        let v = values
            .get(u.value)
            .ok_or_else(|| CliError(format!("{file}: update of {label} has no value")))?;
        let name = tensor_io::update_name(g[u.target].name.as_deref().unwrap_or(&label));
        written.push(tensor_io::tensor_from_value(&g, name, ty, v).map_err(io_error)?);
    }
    a.data.write(&g, "interpreter", &written)?;
    print_results(&g, &written)
}

/// Prints every output, then the new value of every update target: `written` holds the
/// outputs in order, then the updates in order.
fn print_results(g: &Graph, written: &[NamedTensor]) -> Result<(), CliError> {
    if g.outputs().is_empty() {
        outln!("(no outputs)");
    }
    let n = g.outputs().len();
    for (i, t) in written.iter().enumerate() {
        let ty = t.ty();
        let host = HostTensor {
            shape: t.shape.clone(),
            data: t.data.clone(),
        };
        let values = format_values(&ty, &host.to_f64());
        match i.checked_sub(n).and_then(|u| g.updates().get(u)) {
            Some(u) => {
                let label = gradlift::verify::node_label(g, u.target);
                outln!("update {label}: {ty} = {values}");
            }
            None => outln!("{}: {ty} = {values}", t.name),
        }
    }
    Ok(())
}

// ---- run --------------------------------------------------------------------------------------

/// Arguments of `gradlift run`.
#[derive(Args, Debug)]
struct RunArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Seed of the random inputs (not used with `--inputs`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Differentiate the output `loss` with respect to every param first; the gradients are
    /// printed as outputs `grad_<param>`.
    #[arg(long)]
    grad: bool,
    /// Also print the compiled function before the outputs: its Cranelift IR (`clif`), the
    /// IR after Cranelift's own passes (`clif-opt`) or its machine code (`asm`), from a
    /// second compile of the same graph with the same options (the same code).
    #[arg(long, value_enum, value_name = "LISTING")]
    emit: Option<EmitKind>,
    /// Files of inputs, params and outputs.
    #[command(flatten)]
    data: DataArgs,
    /// Optimization passes to run before compiling (after the gradient).
    #[command(flatten)]
    passes: PassArgs,
}

/// What `gradlift run --emit` prints of the compiled function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EmitKind {
    /// The Cranelift IR, as lowered from the graph.
    Clif,
    /// The Cranelift IR after Cranelift's own IR passes.
    ClifOpt,
    /// The machine code, as Cranelift disassembles it.
    Asm,
}

/// Compiles the graph with Cranelift, runs it once on the same inputs as `eval` (seeded
/// random ones, or those of `--inputs`; params from `--params` or their initializers) and
/// prints every output and update like `eval` does, then the compile and run times.
fn cmd_run(a: &RunArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let mut g = load(&a.file)?;
    // no input is drawn that compiled code cannot take
    for id in g.inputs() {
        codegen::check_tensor_size(&g, id).map_err(|e| CliError(format!("{file}: {e}")))?;
    }
    // the inputs are drawn (or read and checked) for the graph as written, as `eval` does
    // (the passes may remove a one_hot that sets a label input's range)
    let given = a.data.inputs(&g, a.seed)?;
    let params = a.data.params(&g)?;
    if a.grad {
        append_gradient(&mut g, &file, "loss", None)?;
    }
    a.passes.run(&mut g, &file, true)?;
    let opts = CompileOptions::default();
    let mut exe = runtime::compile(&g, &opts).map_err(|e| CliError(format!("{file}: {e}")))?;
    for t in params {
        let (name, value) = t.into_host();
        // a param the passes removed (nothing reads it) takes no value
        let set = if exe.param(&name).is_some() {
            exe.set_param(&name, value)
        } else if exe.state(&name).is_some() {
            exe.set_state(&name, value)
        } else {
            Ok(())
        };
        set.map_err(|e| CliError(format!("{file}: {e}")))?;
    }
    let mut inputs: Vec<(&str, HostTensor)> = Vec::new();
    for id in g.inputs() {
        let name = g[id].name.as_deref().unwrap_or_default();
        let t = given.iter().find(|t| t.name == name).ok_or_else(|| {
            CliError(format!(
                "{file}: input {name} is not an input of the graph as written"
            ))
        })?;
        let host = HostTensor {
            shape: t.shape.clone(),
            data: t.data.clone(),
        };
        inputs.push((name, host));
    }
    if let Some(kind) = a.emit {
        let what = match kind {
            EmitKind::Clif => Listing::Clif,
            EmitKind::ClifOpt => Listing::OptimizedClif,
            EmitKind::Asm => Listing::Asm,
        };
        let text =
            codegen::listing(&g, &opts, what).map_err(|e| CliError(format!("{file}: {e}")))?;
        out!("{text}");
        if !text.ends_with('\n') {
            outln!();
        }
    }
    let t0 = std::time::Instant::now();
    let outputs = exe
        .run(&inputs)
        .map_err(|e| CliError(format!("{file}: {e}")))?;
    let run_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut written: Vec<NamedTensor> = outputs
        .into_iter()
        .map(|(name, t)| NamedTensor::from_host(name, t))
        .collect();
    for u in g.updates() {
        let label = gradlift::verify::node_label(&g, u.target);
        let name = g[u.target].name.clone().unwrap_or_default();
        let v = exe
            .param(&name)
            .or_else(|| exe.state(&name))
            .ok_or_else(|| CliError(format!("{file}: update of {label} has no value")))?;
        written.push(NamedTensor::from_host(tensor_io::update_name(&name), v));
    }
    a.data.write(&g, "jit", &written)?;
    print_results(&g, &written)?;
    outln!("{}; ran in {run_ms:.3} ms", exe.report());
    Ok(())
}

/// A random value for every input, from one generator seeded with `seed` and drawn in input
/// order: f32 inputs uniform in `[0, 1)`, i32 inputs uniform in `0..k` (see [`class_count`]).
fn random_feeds(g: &Graph, seed: u64) -> Result<HashMap<NodeId, Array<f32>>, CliError> {
    // sizes first: nothing is allocated for inputs the machine cannot hold
    let bytes: u128 = g
        .inputs()
        .iter()
        .map(|&id| g[id].ty.shape.numel() as u128 * 4)
        .sum();
    let limit = codegen::memory_limit();
    if bytes > limit {
        return Err(CliError(format!(
            "the inputs need {bytes} bytes, more than the limit of {limit} bytes (this \
             machine's memory)"
        )));
    }
    let mut rng = Rng::new(seed);
    let mut feeds = HashMap::new();
    for id in g.inputs() {
        let ty = &g[id].ty;
        let n = ty.shape.numel();
        let data: Vec<f32> = match ty.dtype {
            DType::F32 => (0..n).map(|_| rng.uniform() as f32).collect(),
            DType::I32 => {
                let k = class_count(g, id);
                (0..n).map(|_| rng.below(k) as f32).collect()
            }
        };
        let arr = Array::new(ty.shape.clone(), data)
            .map_err(|e| CliError(format!("cannot build a random input: {e}")))?;
        feeds.insert(id, arr);
    }
    Ok(feeds)
}

/// How many values are printed in full; larger tensors are summarized.
const FULL: usize = 16;
/// How many leading values a summary shows.
const FIRST: usize = 8;

/// A tensor's values for printing: the value of a scalar, `[a, b, ...]` (row-major) up to
/// [`FULL`] elements, else `min=.. max=.. mean=.. first=[...]`. i32 values print as integers
/// (exactly: the values come as f64, which holds every i32), f32 values as f32.
fn format_values(ty: &TensorType, data: &[f64]) -> String {
    let one = |v: f64| match ty.dtype {
        DType::I32 => format!("{}", v as i64),
        DType::F32 => format!("{:?}", v as f32),
    };
    let list = |vs: &[f64]| {
        let items: Vec<String> = vs.iter().map(|&v| one(v)).collect();
        format!("[{}]", items.join(", "))
    };
    if ty.shape.rank() == 0 && data.len() == 1 {
        return one(data[0]);
    }
    if data.len() <= FULL {
        return list(data);
    }
    let min = data.iter().copied().fold(f64::INFINITY, f64::min);
    let max = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = data.iter().sum::<f64>() / data.len() as f64;
    let nan = data.iter().filter(|v| v.is_nan()).count();
    let mut s = format!(
        "min={} max={} mean={} first={}",
        one(min),
        one(max),
        mean as f32,
        list(&data[..FIRST])
    );
    if nan > 0 {
        s.push_str(&format!(" nan={nan}"));
    }
    s
}

// ---- train ------------------------------------------------------------------------------------

/// Optimizers `gradlift train` can use (Keras' formulas, see [`gradlift::optim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerName {
    /// Adam (beta1 0.9, beta2 0.999, epsilon 1e-7; default learning rate 0.001).
    Adam,
    /// Plain stochastic gradient descent (default learning rate 0.01).
    Sgd,
    /// AdamW: Adam with decoupled weight decay 0.004 (beta1 0.9, beta2 0.999, epsilon 1e-7;
    /// default learning rate 0.001).
    Adamw,
    /// RMSprop (rho 0.9, no momentum, epsilon 1e-7, not centered; default learning rate
    /// 0.001).
    Rmsprop,
    /// Adagrad (initial accumulator value 0.1, epsilon 1e-7; default learning rate 0.001).
    Adagrad,
}

impl OptimizerName {
    /// The optimizer with Keras' default hyper-parameters.
    fn optimizer(self) -> Optimizer {
        match self {
            OptimizerName::Adam => Optimizer::adam(),
            OptimizerName::Sgd => Optimizer::sgd(),
            OptimizerName::Adamw => Optimizer::adamw(),
            OptimizerName::Rmsprop => Optimizer::rmsprop(),
            OptimizerName::Adagrad => Optimizer::adagrad(),
        }
    }
}

/// Arguments of `gradlift train`.
#[derive(Args, Debug)]
struct TrainArgs {
    /// The model (`.ir` text or `.json`): one f32 images input (`[B,784]`, `[B,28,28]`,
    /// `[B,28,28,1]`, ...), one i32 labels input `[B]`, a scalar output `loss` and optionally
    /// `accuracy`.
    file: PathBuf,
    /// Directory of the four MNIST IDX files, plain or gzipped (default: the subset shipped
    /// in `data/mnist-subset/`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Passes over the training set, counted from the start of training (a resumed run
    /// continues until this many epochs are done).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Examples per step: must equal the model's batch dimension (`.ir` shapes are fixed).
    #[arg(long)]
    batch_size: Option<usize>,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    optimizer: OptimizerName,
    /// Learning rate (default: the optimizer's Keras default).
    #[arg(long)]
    lr: Option<f64>,
    /// A learning-rate schedule computed in the step from its step count (Keras'
    /// schedules): `exponential:decay_steps=N,decay_rate=R[,staircase]` or
    /// `cosine:decay_steps=N[,alpha=A][,warmup_target=LR,warmup_steps=N]`, both from the
    /// `--lr` rate, or `piecewise:boundaries=N/N/...,values=LR/LR/...` (its own rates, so
    /// without `--lr`).
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Write the params and optimizer state to this checkpoint at the end.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Start from this checkpoint (params, optimizer state and step count).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start from these weights (every param of the model by name, as `gradlift import`
    /// writes them or a checkpoint holds them) with a fresh optimizer at step 0: fine-tuning.
    #[arg(long, conflicts_with = "resume")]
    params: Option<PathBuf>,
    /// Seed of the per-epoch shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop once this many steps are done in all (counted from the start of training).
    /// Training ends at whichever of `--epochs` and `--steps` comes first (a note says so
    /// when `--epochs` ends it first).
    #[arg(long)]
    steps: Option<usize>,
    /// Train on the first N training images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Threads the training step uses (default: the GRADLIFT_THREADS environment variable,
    /// else every core). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Shards each batch is split into, each computed on one thread (default: chosen from
    /// the model and the batch size; 1 computes the batch whole).
    #[arg(long)]
    shards: Option<usize>,
    /// Check every step for NaN and infinite values: copy the params and optimizer state
    /// before each step, scan the outputs and the updated params and state after it, and at
    /// the first non-finite value replay that step on the reference interpreter to name the
    /// node that computed it (op, name, source line, operand ranges). The trained values are
    /// the same as without it. (Without it, training still stops at the first non-finite
    /// loss or metric.)
    #[arg(long)]
    check_numerics: bool,
    /// Write the per-epoch training logs (the epoch, the mean loss and metrics) to this file
    /// at the end: CSV (as Keras' CSVLogger) for a `.csv` path, JSON for `.json`.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Draw the loss and metric curves per epoch into this SVG file at the end.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Reads the model and builds its training step ([`GraphModel::new`]).
fn graph_model(path: &Path, opt: &Optimizer) -> Result<GraphModel, CliError> {
    let file = path.display().to_string();
    let forward = load(path)?;
    GraphModel::new(forward, file, opt).map_err(train_error)
}

/// A library error of training as the CLI prints it (a training step that fails to verify
/// as a compiler would print it).
fn train_error(e: TrainError) -> CliError {
    match e {
        TrainError::Verify { file, errors } => {
            verify_report(&format!("{file} (training step)"), &errors)
        }
        e => CliError(e.to_string()),
    }
}

/// Loads the training and test sets: `--data DIR` or the shipped subset.
fn load_data(dir: Option<&Path>) -> Result<(Dataset, Dataset), CliError> {
    match dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(CliError(format!(
                    "{}: --data: no such directory (expected the four MNIST files {}, each plain or .gz)",
                    dir.display(),
                    data::MNIST_FILES.join(", ")
                )));
            }
            data::load_mnist(dir)
                .map_err(|e| CliError(format!("{}: --data: cannot load MNIST: {e}", dir.display())))
        }
        None => data::load_default()
            .map_err(|e| CliError(format!("cannot load the shipped MNIST subset: {e}"))),
    }
}

/// `loss 0.1234 - accuracy 0.9876` (every scalar output, in the graph's order).
fn means_line<'a>(means: impl Iterator<Item = (&'a str, f64)>) -> String {
    let parts: Vec<String> = means.map(|(k, v)| format!("{k} {v:.4}")).collect();
    parts.join(" - ")
}

/// `gradlift train`'s progress: one line per epoch on stdout.
struct EpochLines {
    /// `--epochs`.
    epochs: usize,
    /// The first write error (then nothing more is written).
    failed: Option<CliError>,
    /// Every epoch's logs, for `--history`.
    history: gradlift::nn::History,
}

impl Progress for EpochLines {
    fn epoch_end(&mut self, end: &EpochEnd<'_>) {
        if self.failed.is_some() {
            return;
        }
        let s = end.start;
        self.history.push(s.epoch, end.logs);
        let partial = if s.last - s.first < s.per_epoch {
            format!(" (steps {}..{} of {})", s.first + 1, s.last, s.per_epoch)
        } else {
            String::new()
        };
        let logs = means_line(end.logs.iter().map(|(k, v)| (k.as_str(), *v)));
        let r = (|| {
            outln!(
                "epoch {}/{}: {logs} - {} steps{partial} - {:.2} s",
                s.epoch + 1,
                self.epochs,
                s.last - s.first,
                end.seconds
            );
            Ok(())
        })();
        self.failed = r.err();
    }
}

/// Trains the model: compiles its training step once, then runs the library's training
/// driver ([`gradlift::train::run`]) on shuffled full batches of the training set, printing
/// one line per epoch; finally evaluates the forward graph, with the trained params, on every
/// example of the test set, and saves a checkpoint when asked.
fn cmd_train(a: &TrainArgs) -> Result<(), CliError> {
    // under `mpirun -n N` (built with the `mpi` feature): one of N ranks, which train on
    // their parts of every batch; rank 0 prints and writes files
    let world = gradlift::dist::init().map_err(|e| CliError(e.to_string()))?;
    if !world.is_root() {
        QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(path) = &a.plot {
        if path.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(CliError(format!(
                "--plot {}: the file must end in .svg",
                path.display()
            )));
        }
    }
    if let Some(path) = &a.history {
        // refuse a bad extension before anything runs
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("csv") | Some("json")
        ) {
            return Err(CliError(format!(
                "--history {}: the file must end in .csv or .json",
                path.display()
            )));
        }
    }
    let opt = a.optimizer.optimizer();
    let lr = a.lr.unwrap_or_else(|| opt.default_learning_rate());
    if !(lr.is_finite() && lr > 0.0) {
        return Err(CliError(format!(
            "--lr: the learning rate must be a positive number, found {lr}"
        )));
    }
    // the step computes in f32: a rate that overflows to inf or rounds to 0 there is refused
    let lr32 = lr as f32;
    if !(lr32.is_finite() && lr32 > 0.0) {
        return Err(CliError(format!(
            "--lr: the learning rate {lr} is {lr32} as an f32 (the step's precision); use a value between {:e} and {:e}",
            f32::from_bits(1),
            f32::MAX
        )));
    }
    let opt = match &a.lr_schedule {
        None => opt,
        Some(spec) => {
            let schedule =
                Schedule::parse(spec, lr).map_err(|e| CliError(format!("--lr-schedule {e}")))?;
            if matches!(schedule, Schedule::PiecewiseConstantDecay { .. }) && a.lr.is_some() {
                return Err(CliError(format!(
                    "--lr-schedule {spec}: a piecewise schedule gives its own rates (values=...); omit --lr"
                )));
            }
            let opt = opt.with_schedule(schedule);
            // its values are checked where it is built into a graph: build it once here, so
            // that a bad value is reported against the flag
            opt.learning_rate(&mut Graph::new("schedule"))
                .map_err(|e| CliError(format!("--lr-schedule {spec}: {}", e.message)))?;
            opt
        }
    };
    let t_build = Instant::now();
    let m = graph_model(&a.file, &opt)?;
    let parse_s = t_build.elapsed().as_secs_f64();
    if let Some(b) = a.batch_size.filter(|&b| b != m.batch) {
        return Err(CliError(format!(
            "{}: --batch-size {b} differs from the model's batch dimension {} (%{}: {}); the shapes of an .ir model are fixed: omit --batch-size or write the model for batches of {b}",
            m.file, m.batch, m.x.0, m.x.1
        )));
    }
    let (train, test) = load_data(a.data.as_deref())?;
    let train = train.slice(0, a.limit.unwrap_or(train.n));
    m.check_data(&train, "training").map_err(train_error)?;
    m.check_data(&test, "test").map_err(train_error)?;
    let plan = m.plan(&train, a.seed).map_err(train_error)?;
    let per_epoch = plan.steps_per_epoch();

    let mut opts = StepOptions {
        shards: a.shards,
        check_numerics: a.check_numerics,
        world,
        ..StepOptions::default()
    };
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let (mut exe, report) = m.compile(&opt, lr, &opts).map_err(train_error)?;
    let resumed = match &a.resume {
        Some(path) => {
            let state = m.resume(path, &mut exe, &opt).map_err(train_error)?;
            for (key, saved, now) in state.differences(a.seed, train.n) {
                eprintln!(
                    "{}: note: the checkpoint was saved with {key} {saved}, this run uses {now}: the run will not replay an uninterrupted one",
                    path.display()
                );
            }
            Some(state.step)
        }
        None => None,
    };
    if let Some(path) = &a.params {
        let weights =
            tensor_io::read_params(path, &m.forward).map_err(|e| CliError(e.to_string()))?;
        for t in weights {
            let (name, value) = t.into_host();
            let is_param = m
                .forward
                .find(&name)
                .is_some_and(|id| matches!(m.forward[id].op, gradlift::Op::Param { .. }));
            let r = if is_param {
                exe.set_param(&name, value)
            } else {
                exe.set_state(&name, value)
            };
            r.map_err(|e| CliError(format!("{}: tensor {name}: {e}", path.display())))?;
        }
    }
    let step = resumed.unwrap_or(0);
    let params = m.forward.params();
    let numel: usize = params.iter().map(|&p| m.forward[p].ty.shape.numel()).sum();
    outln!(
        "{}: graph {}, batch {}, {} params ({} parameters), {} lr {lr}",
        m.file,
        m.forward.name,
        m.batch,
        params.len(),
        thousands(numel),
        opt.name()
    );
    outln!(
        "data: {} training images ({per_epoch} steps of {} per epoch; {} images of each shuffled epoch left out), {} test images",
        train.n,
        m.batch,
        train.n % m.batch,
        test.n
    );
    outln!(
        "training step: {} nodes; parsing and checking {:.1} ms, autodiff + optimizer {:.1} ms, passes {:.1} ms, compiled in {:.1} ms",
        report.nodes,
        parse_s * 1e3,
        report.grad_ms,
        report.pass_ms,
        report.compile_ms,
    );
    if report.ranks > 1 {
        outln!(
            "data-parallel: {} ranks of {} examples each, {} bytes all-reduced per step",
            report.ranks,
            m.batch / report.ranks,
            thousands(report.all_reduce_bytes)
        );
    }
    match &report.not_split {
        None => outln!(
            "parallel: {} shards of {} examples on {} threads",
            report.shards,
            m.batch / report.ranks.max(1) / report.shards,
            report.threads
        ),
        Some(why) => outln!("parallel: not split, one thread ({why})"),
    }
    if a.check_numerics {
        outln!("numerics: every step checked for NaN and infinite values (--check-numerics)");
    }

    if let (Some(path), Some(s)) = (&a.resume, resumed) {
        outln!("resumed from {} at step {s}", path.display());
    }
    if let Some(path) = &a.params {
        outln!("params from {}", path.display());
    }
    let epochs_end = (a.epochs as u64).saturating_mul(per_epoch as u64);
    let end = epochs_end.min(a.steps.map_or(u64::MAX, |s| s as u64));
    if let Some(steps) = a.steps.filter(|&s| s as u64 > end) {
        outln!(
            "note: --steps {steps} is beyond --epochs {} ({end} steps of {} per epoch): the epoch limit ends training at step {end}, before the step count (raise --epochs to reach step {steps})",
            a.epochs,
            m.batch
        );
    }
    if step >= end && a.resume.is_some() {
        let limit = if end == epochs_end {
            format!("--epochs {} ({end} steps)", a.epochs)
        } else {
            format!("--steps {end}")
        };
        outln!("note: the checkpoint is at step {step}, already at or beyond {limit}: nothing to train");
    }
    let span = Span {
        start: plan.position(step),
        epochs: a.epochs,
        max_steps: a.steps.map(|s| s as u64),
        steps_done: step,
    };
    let mut lines = EpochLines {
        epochs: a.epochs,
        failed: None,
        history: gradlift::nn::History::default(),
    };
    gradlift::train::check_same_plan(&plan, &span).map_err(train_error)?;
    let t_train = Instant::now();
    let result = gradlift::train::run(&mut m.session(&mut exe, &train), &plan, &span, &mut lines);
    if let Some(e) = lines.failed {
        return Err(e);
    }
    let trained = match result {
        Ok(t) => t,
        Err(TrainError::NonFinite(e)) => return Err(non_finite_error(a, &m.file, &e, &plan)),
        Err(e) => return Err(train_error(e)),
    };
    if a.resume.is_some() || trained.steps > 0 {
        outln!(
            "trained to step {} in {:.2} s",
            trained.steps,
            t_train.elapsed().as_secs_f64()
        );
    }
    if world.is_distributed() {
        let st = gradlift::dist::stats();
        outln!(
            "all_reduce (rank 0): {} calls, {:.1} MB, {:.2} s (waiting for the other ranks included)",
            st.calls,
            st.bytes as f64 / 1e6,
            st.seconds
        );
    }
    if !world.is_root() {
        // every rank holds the same params: rank 0 evaluates and writes the files
        return Ok(());
    }
    if let Some(path) = &a.plot {
        lines.history.plot(path).map_err(CliError)?;
        outln!("plot: {}", path.display());
    }
    if let Some(path) = &a.history {
        lines.history.save(path).map_err(CliError)?;
        outln!(
            "history: {} epochs written to {}",
            lines.history.epoch.len(),
            path.display()
        );
    }

    let t = Instant::now();
    let evaluated = m.evaluate(&exe, &test).map_err(train_error)?;
    let seen = evaluated.examples();
    if seen == 0 {
        outln!("test: skipped (no test images)");
    } else {
        let layout = match (evaluated.full_batches, evaluated.rest) {
            (0, r) => format!("one batch of {r}"),
            (n, 0) => format!("{n} batches of {}", m.batch),
            (n, r) => format!("{n} batches of {} and one of {r}", m.batch),
        };
        outln!(
            "test: {} ({seen} of {} images, {layout}) - {:.2} s",
            means_line(evaluated.means.iter()),
            test.n,
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(path) = &a.save {
        let state = m.state(&opt, lr, trained.steps, &plan);
        m.save(path, &exe, &state).map_err(train_error)?;
        outln!("saved {} (step {})", path.display(), trained.steps);
    }
    if let Some(kb) = peak_rss_kb() {
        outln!("peak memory (resident): {:.1} MB", kb as f64 / 1024.0);
    }
    Ok(())
}

/// The message of a training run stopped by a non-finite value: what the step computed (and,
/// with `--check-numerics`, the first node that computed it), where training stopped, that
/// no checkpoint was written, and the advice to rerun with `--check-numerics` when it was off.
fn non_finite_error(
    a: &TrainArgs,
    file: &str,
    e: &gradlift::numerics::NonFiniteError,
    plan: &Plan,
) -> CliError {
    let at = plan.position(e.step.saturating_sub(1));
    let mut msg = format!(
        "{file}: {e}\ntraining stopped at step {} (epoch {}, batch {} of {})",
        e.step,
        at.epoch + 1,
        at.batch + 1,
        plan.steps_per_epoch()
    );
    if let Some(path) = &a.save {
        msg.push_str(&format!("; no checkpoint written to {}", path.display()));
    }
    if !e.checked() {
        msg.push_str(
            "\nrerun with --check-numerics to find the node that first computed a NaN or infinite value",
        );
    }
    CliError(msg)
}

/// The process's peak resident set size in KiB (`VmHWM` of `/proc/self/status`; Linux only).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---- import -----------------------------------------------------------------------------------

/// Arguments of `gradlift import`.
#[derive(Args, Debug)]
struct ImportArgs {
    /// The ONNX model (`.onnx`).
    file: PathBuf,
    /// Where to write the graph (IR text).
    #[arg(short, long)]
    output: PathBuf,
    /// Where to write the params' values (default: the output path with the extension
    /// `.safetensors`).
    #[arg(long)]
    params: Option<PathBuf>,
    /// The size of a symbolic leading (batch) dimension of the model's inputs.
    #[arg(long)]
    batch: Option<usize>,
}

/// Imports an ONNX model (`gradlift::onnx`), writes the graph as text with a header comment
/// naming its source and weights file, and the weights with `checkpoint::save`.
fn cmd_import(a: &ImportArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let opts = onnx::ImportOptions { batch: a.batch };
    let im = onnx::import_file(&a.file, &opts).map_err(|e| match e {
        onnx::ImportError::Io { .. } => CliError(e.to_string()),
        e => CliError(format!("{file}: {e}")),
    })?;
    let g = &im.graph;
    if let Err(errs) = verify(g) {
        return Err(verify_report(&file, &errs));
    }
    let params = a
        .params
        .clone()
        .unwrap_or_else(|| a.output.with_extension("safetensors"));
    if params == a.output {
        return Err(CliError(format!(
            "{}: the graph and the weights would be written to the same file",
            params.display()
        )));
    }
    if [&a.output, &params].contains(&&a.file) {
        return Err(CliError(format!(
            "{file}: the import would overwrite the model it reads"
        )));
    }
    let mut text = format!("# imported from {file} (ONNX operator set {})\n", im.opset);
    if !im.weights.is_empty() {
        text.push_str(&format!(
            "# params' values: {} (gradlift run {} --params {})\n",
            params.display(),
            a.output.display(),
            params.display()
        ));
    }
    text.push_str(&text::print(g));
    if !im.weights.is_empty() {
        let meta = BTreeMap::from([
            ("graph".to_string(), g.name.clone()),
            ("source".to_string(), format!("onnx import of {file}")),
        ]);
        gradlift::checkpoint::save(&params, &im.weights, &meta)
            .map_err(|e| CliError(e.to_string()))?;
    }
    std::fs::write(&a.output, text).map_err(|e| {
        CliError(format!(
            "{}: cannot write the file: {e}",
            a.output.display()
        ))
    })?;
    let numel: usize = im.weights.iter().map(|w| w.shape.numel()).sum();
    outln!(
        "{file}: imported graph {}: {} nodes ({} inputs, {} params, {} parameters), {} outputs -> {}{}",
        g.name,
        g.len(),
        g.inputs().len(),
        im.weights.len(),
        numel,
        g.outputs().len(),
        a.output.display(),
        if im.weights.is_empty() {
            String::new()
        } else {
            format!(", params' values -> {}", params.display())
        }
    );
    Ok(())
}

// ---- summary ----------------------------------------------------------------------------------

/// Arguments of `gradlift summary`.
#[derive(Args, Debug)]
struct SummaryArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Summarize the training step instead (what `gradlift train` compiles: gradients of
    /// `loss`, the optimizer's updates and state, after the pass pipeline).
    #[arg(long)]
    step: bool,
    /// The optimizer of the training step (with `--step`).
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    optimizer: OptimizerName,
}

/// Prints the graph's inputs, params (shape and element count each, then the totals), state,
/// outputs, updates and the number of nodes of each op, most frequent first.
fn cmd_summary(a: &SummaryArgs) -> Result<(), CliError> {
    let g = if a.step {
        let mut step = graph_model(&a.file, &a.optimizer.optimizer())?.step;
        Pipeline::default()
            .run(&mut step)
            .map_err(|e| CliError(format!("{}: {e}", a.file.display())))?;
        step
    } else {
        load(&a.file)?
    };
    out!("{}", summary_text(&g));
    Ok(())
}

/// The text `gradlift summary` prints for `g`.
fn summary_text(g: &Graph) -> String {
    let label = |id: NodeId| gradlift::verify::node_label(g, id);
    let mut s = format!("graph {}: {} nodes\n", g.name, g.len());
    let mut table = |title: &str, ids: &[NodeId], counts: bool| {
        s.push_str(&format!("{title}:\n"));
        if ids.is_empty() {
            s.push_str("  (none)\n");
            return;
        }
        let w1 = ids.iter().map(|&i| label(i).len()).max().unwrap_or(0);
        let w2 = ids
            .iter()
            .map(|&i| g[i].ty.to_string().len())
            .max()
            .unwrap_or(0);
        for &i in ids {
            let ty = g[i].ty.to_string();
            if counts {
                let n = thousands(g[i].ty.shape.numel());
                s.push_str(&format!("  {:<w1$}  {ty:<w2$}  {n:>11}\n", label(i)));
            } else {
                s.push_str(&format!("  {:<w1$}  {ty}\n", label(i)));
            }
        }
        if counts {
            let total: usize = ids.iter().map(|&i| g[i].ty.shape.numel()).sum();
            s.push_str(&format!(
                "  total: {} tensor{}, {} elements\n",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                thousands(total)
            ));
        }
    };
    table("inputs", &g.inputs(), false);
    table("params", &g.params(), true);
    table("state", &g.states(), true);
    s.push_str("outputs:\n");
    if g.outputs().is_empty() {
        s.push_str("  (none)\n");
    }
    for o in g.outputs() {
        s.push_str(&format!(
            "  {} = {}: {}\n",
            o.name,
            label(o.node),
            g[o.node].ty
        ));
    }
    s.push_str(&format!("updates: {}\n", g.updates().len()));
    let mut ops: BTreeMap<&'static str, usize> = BTreeMap::new();
    for id in g.node_ids() {
        *ops.entry(g[id].op.name()).or_default() += 1;
    }
    let mut ops: Vec<(&str, usize)> = ops.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let w = ops.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    s.push_str(&format!("ops ({} kinds):\n", ops.len()));
    for (name, n) in ops {
        s.push_str(&format!("  {name:<w$}  {n:>5}\n"));
    }
    s
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---- compile ----------------------------------------------------------------------------------

/// What `gradlift compile --emit` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ObjectKind {
    /// A relocatable object file (ELF on Linux) with the C header and initial values.
    Obj,
}

/// Arguments of `gradlift compile`.
#[derive(Args, Debug)]
struct CompileArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Differentiate the output `loss` with respect to every param first, as `run --grad`
    /// does; the gradients are outputs `grad_<param>`.
    #[arg(long, conflicts_with = "train")]
    grad: bool,
    /// Compile the training step of the output `loss`: the gradients of every param and the
    /// updates of `--optimizer` (the learning rate is the input `lr`, as in training).
    #[arg(long)]
    train: bool,
    /// The optimizer of the training step (with `--train`).
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam, requires = "train")]
    optimizer: OptimizerName,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ObjectKind::Obj)]
    emit: ObjectKind,
    /// The object file to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// The C header to write (default: the object file's path with extension `.h`).
    #[arg(long)]
    header: Option<PathBuf>,
    /// The initial values to write (default: the object file's path with extension `.init`).
    #[arg(long)]
    init: Option<PathBuf>,
    /// The exported function's name (default: `gradlift_` and the graph's name).
    #[arg(long)]
    symbol: Option<String>,
    /// Threads a large matrix product may use in the exported code.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Optimization passes to run before compiling (after the gradient).
    #[command(flatten)]
    passes: PassArgs,
}

/// Builds the graph (`--grad`: as `run --grad`; `--train`: the training step), runs the
/// passes, compiles it into an object file with [`gradlift::aot::export`] and writes the
/// object, the header and the initial values; prints what it wrote.
fn cmd_compile(a: &CompileArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let ObjectKind::Obj = a.emit;
    if a.threads == 0 {
        return Err(CliError(
            "--threads: at least one thread is needed, found 0".into(),
        ));
    }
    let mut g = load(&a.file)?;
    if a.grad {
        append_gradient(&mut g, &file, "loss", None)?;
    }
    if a.train {
        gradlift::optim::training_step(&mut g, "loss", &a.optimizer.optimizer())
            .map_err(|e| CliError(format!("{file}: training step: {e}")))?;
        verify(&g).map_err(|e| verify_report(&format!("{file} (training step)"), &e))?;
    }
    a.passes.run(&mut g, &file, true)?;
    let symbol = a
        .symbol
        .clone()
        .unwrap_or_else(|| gradlift::aot::default_symbol(&g));
    let header = a
        .header
        .clone()
        .unwrap_or_else(|| a.output.with_extension("h"));
    let init = a
        .init
        .clone()
        .unwrap_or_else(|| a.output.with_extension("init"));
    // three different files: none may overwrite another
    for (flag, path) in [("--header", &header), ("--init", &init)] {
        if path == &a.output {
            return Err(CliError(format!(
                "{flag} {}: the same file as the object file (-o); give another path",
                path.display()
            )));
        }
    }
    if header == init {
        return Err(CliError(format!(
            "--header and --init are the same file {}; give two paths",
            header.display()
        )));
    }
    let init_name = init.file_name().map_or_else(
        || init.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let opts = CompileOptions {
        threads: a.threads,
        ..CompileOptions::default()
    };
    let export = gradlift::aot::export(&g, &opts, &symbol, &init_name)
        .map_err(|e| CliError(format!("{file}: {e}")))?;
    let write = |path: &Path, what: &str, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|e| CliError(format!("{}: cannot write the {what}: {e}", path.display())))
    };
    write(&a.output, "object file", &export.object)?;
    write(&header, "C header", export.header.as_bytes())?;
    write(&init, "initial values", &export.init)?;
    let r = &export.report;
    outln!(
        "{file}: wrote {} ({} bytes, function {}), {} and {} ({} bytes); compiled {} nodes in \
         {:.2} ms: {} IR instructions, {} bytes of code, {} bytes of arena",
        a.output.display(),
        export.object.len(),
        export.symbol,
        header.display(),
        init.display(),
        export.init.len(),
        r.nodes,
        r.lower_ms + r.cranelift_ms + r.setup_ms,
        r.clif_insts,
        r.code_bytes,
        r.arena_bytes
    );
    Ok(())
}
