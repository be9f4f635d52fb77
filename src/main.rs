//! The `gradlift` command line.
//!
//! In: a graph file, in the IR text format (`.ir`, or any other extension) or as JSON (`.json`,
//! as written by `gradlift dump --format json`). Out: a verdict (`check`), the graph printed as
//! text, Graphviz or JSON (`dump`), the graph extended with its gradient (`grad`), or the values
//! of its outputs (`eval`). Every command parses
//! and verifies the graph first. Errors (unreadable file, parse error, invalid graph, evaluation
//! failure) are printed to stderr like a compiler's (`FILE:LINE:COL: message`) and give exit
//! code 1; the process never panics on user input.
//!
//! Adding a subcommand: one variant of [`Command`] holding a clap `Args` struct, one
//! `fn cmd_NAME(&Args) -> Result<(), CliError>`, and one arm in [`Command::run`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradlift::autodiff;
use gradlift::codegen::{self, CompileOptions};
use gradlift::graph::{Graph, NodeId};
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::op::Op;
use gradlift::runtime::HostTensor;
use gradlift::shape::{DType, TensorType};
use gradlift::text;
use gradlift::verify::{verify, VerifyErrors};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Print a graph as canonical text, Graphviz dot or JSON.
    Dump(DumpArgs),
    /// Append the gradient of a scalar loss (symbolic reverse mode) and print the extended
    /// graph; each gradient is also an output `grad_<name>`.
    Grad(GradArgs),
    /// Evaluate a graph with the reference interpreter (f32) on seeded random inputs, params
    /// at their initializers, and print its outputs.
    Eval(EvalArgs),
    /// Compile a graph to native code (optionally with gradients), run it once on seeded
    /// random inputs and print its outputs, updates and compile time.
    Run(RunArgs),
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
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
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
    let src = std::fs::read_to_string(path)
        .map_err(|e| CliError(format!("{file}: cannot read the file: {e}")))?;
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
    println!(
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
    /// The Cranelift IR of the compiled function.
    Clif,
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
    a.passes.run(&mut g, &a.file.display().to_string())?;
    print_graph(&g, a.format)
}

// ---- passes -----------------------------------------------------------------------------------

/// The pass options of `dump` and `run`.
#[derive(Args, Debug)]
struct PassArgs {
    /// Run a pass pipeline: `default` (cse, simplify, fold, cse, dce, fuse), `none`, or a
    /// comma-separated list of pass names. Default: `none`, or `default` when `--dump-after`
    /// or `--remarks` is given.
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
    /// Runs the selected pipeline on `g` (nothing when none is selected).
    fn run(&self, g: &mut Graph, file: &str) -> Result<(), CliError> {
        let fail = |e: gradlift::passes::PassError| CliError(format!("{file}: {e}"));
        let implied = self.dump_after.is_some() || self.remarks;
        let names = match self.passes.as_deref() {
            Some("none") => return Ok(()),
            None if !implied => return Ok(()),
            None | Some("default") => gradlift::passes::DEFAULT_PIPELINE.to_vec(),
            Some(list) => list.split(',').map(str::trim).collect(),
        };
        let mut pipeline = gradlift::passes::Pipeline::new(&names).map_err(fail)?;
        if let Some(after) = &self.dump_after {
            let after = gradlift::passes::DumpAfter::parse(after).map_err(fail)?;
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
        DumpFormat::Clif => codegen::clif(g, &CompileOptions::default())
            .map_err(|e| CliError(format!("{}: {e}", g.name)))?,
    };
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
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

/// Appends the gradient nodes (marked `grad(%forward)` in the text) and prints the extended
/// graph. A `wrt` node the loss does not depend on gets an explicit zero and a note on stderr.
fn cmd_grad(a: &GradArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let mut g = load(&a.file)?;
    let wrt: Option<Vec<&str>> = a.wrt.as_ref().map(|v| v.iter().map(|s| s.trim()).collect());
    let named =
        autodiff::grad_all_params(&mut g, &a.loss, wrt.as_deref()).map_err(|e| match e.loc() {
            Some(_) => CliError(e.to_string()),
            None => CliError(format!("{file}: {e}")),
        })?;
    verify(&g).map_err(|e| verify_report(&format!("{file} (with its gradient)"), &e))?;
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
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The most elements (over all nodes) `eval` computes: 2^28, 1 GiB of f32.
const MAX_EVAL_ELEMENTS: usize = 1 << 28;

/// Evaluates the graph in f32 on seeded random inputs, params and state at their
/// initializers; prints every output, then the new value of every update target.
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
    let feeds = random_feeds(&g, a.seed)?;
    let values = interp::eval::<f32>(&g, &feeds)
        .map_err(|e| CliError(format!("{file}: evaluation failed: {e}")))?;
    if g.outputs().is_empty() {
        println!("(no outputs)");
    }
    for o in g.outputs() {
        let ty = &g[o.node].ty;
        let v = values
            .get(o.node)
            .ok_or_else(|| CliError(format!("{file}: output {} has no value", o.name)))?;
        println!("{}: {ty} = {}", o.name, format_values(ty, &v.data));
    }
    for u in g.updates() {
        let ty = &g[u.target].ty;
        let label = gradlift::verify::node_label(&g, u.target);
        let v = values
            .get(u.value)
            .ok_or_else(|| CliError(format!("{file}: update of {label} has no value")))?;
        println!("update {label}: {ty} = {}", format_values(ty, &v.data));
    }
    Ok(())
}

// ---- run --------------------------------------------------------------------------------------

/// Arguments of `gradlift run`.
#[derive(Args, Debug)]
struct RunArgs {
    /// The graph file (`.ir` text or `.json`).
    file: PathBuf,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Differentiate the output `loss` with respect to every param first; the gradients are
    /// printed as outputs `grad_<param>`.
    #[arg(long)]
    grad: bool,
    /// Optimization passes to run before compiling (after the gradient).
    #[command(flatten)]
    passes: PassArgs,
}

/// Compiles the graph with Cranelift, runs it once on the same seeded inputs as `eval` and
/// prints every output and update like `eval` does, then the compile and run times.
fn cmd_run(a: &RunArgs) -> Result<(), CliError> {
    let file = a.file.display().to_string();
    let mut g = load(&a.file)?;
    if a.grad {
        autodiff::grad_all_params(&mut g, "loss", None).map_err(|e| match e.loc() {
            Some(_) => CliError(e.to_string()),
            None => CliError(format!("{file}: {e}")),
        })?;
        verify(&g).map_err(|e| verify_report(&format!("{file} (with its gradient)"), &e))?;
    }
    a.passes.run(&mut g, &file)?;
    let feeds = random_feeds(&g, a.seed)?;
    let mut exe = codegen::compile(&g, &CompileOptions::default())
        .map_err(|e| CliError(format!("{file}: {e}")))?;
    let inputs: Vec<(String, HostTensor)> = g
        .inputs()
        .into_iter()
        .map(|id| {
            let n = &g[id];
            let name = n.name.clone().unwrap_or_default();
            let data = feeds.get(&id).map(|f| f.to_f64_vec()).unwrap_or_default();
            (name, HostTensor::from_f64(&n.ty, &data))
        })
        .collect();
    let refs: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let t0 = std::time::Instant::now();
    let outputs = exe
        .run(&refs)
        .map_err(|e| CliError(format!("{file}: {e}")))?;
    let run_ms = t0.elapsed().as_secs_f64() * 1e3;
    if outputs.is_empty() {
        println!("(no outputs)");
    }
    let as_f32 = |t: &HostTensor| -> Vec<f32> { t.to_f64().iter().map(|&v| v as f32).collect() };
    for (name, t) in &outputs {
        println!(
            "{name}: {} = {}",
            t.ty(),
            format_values(&t.ty(), &as_f32(t))
        );
    }
    for u in g.updates() {
        let ty = &g[u.target].ty;
        let label = gradlift::verify::node_label(&g, u.target);
        let name = g[u.target].name.clone().unwrap_or_default();
        let v = exe
            .param(&name)
            .or_else(|| exe.state(&name))
            .ok_or_else(|| CliError(format!("{file}: update of {label} has no value")))?;
        println!("update {label}: {ty} = {}", format_values(ty, &as_f32(&v)));
    }
    println!("{}; ran in {run_ms:.3} ms", exe.report());
    Ok(())
}

/// A random value for every input, from one generator seeded with `seed` and drawn in input
/// order: f32 inputs uniform in `[0, 1)`, i32 inputs uniform in `0..k` (see [`class_count`]).
fn random_feeds(g: &Graph, seed: u64) -> Result<HashMap<NodeId, Array<f32>>, CliError> {
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

/// The number of classes an i32 input ranges over: the class dimension of the logits when it
/// is the labels of a sparse cross-entropy, the depth when it feeds a one_hot (the smallest if
/// several), else 10.
fn class_count(g: &Graph, input: NodeId) -> u64 {
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

/// How many values are printed in full; larger tensors are summarized.
const FULL: usize = 16;
/// How many leading values a summary shows.
const FIRST: usize = 8;

/// A tensor's values for printing: the value of a scalar, `[a, b, ...]` (row-major) up to
/// [`FULL`] elements, else `min=.. max=.. mean=.. first=[...]`. i32 values print as integers.
fn format_values(ty: &TensorType, data: &[f32]) -> String {
    let one = |v: f32| match ty.dtype {
        DType::I32 => format!("{}", v as i64),
        DType::F32 => format!("{v:?}"),
    };
    let list = |vs: &[f32]| {
        let items: Vec<String> = vs.iter().map(|&v| one(v)).collect();
        format!("[{}]", items.join(", "))
    };
    if ty.shape.rank() == 0 && data.len() == 1 {
        return one(data[0]);
    }
    if data.len() <= FULL {
        return list(data);
    }
    let min = data.iter().copied().fold(f32::INFINITY, f32::min);
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64;
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
