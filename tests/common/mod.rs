//! What the integration tests share: the `ir/` corpus, seeded random feeds, the one
//! JIT-vs-interpreter harness with its one tolerance, and the SGD training step the tests
//! build from a forward graph. The random graph generator and the pass oracles of the
//! `passes_*` tests are in [`passes`]; the finite-difference gradient check of the
//! `autodiff_*` tests in [`fd`].
//!
//! # The JIT tolerance
//! The JIT computes in f32, the interpreter (the oracle) in f64 from the same f32 inputs and
//! params; a result passes when [`gradlift::interp::agrees`] says so (its doc derives the
//! tolerance), with the graph's longest sum ([`max_terms`]).
#![allow(dead_code)]

pub mod cli;
pub mod fd;
pub mod passes;

use gradlift::codegen::{CompileOptions, MatmulKernel};
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::runtime::{self, HostTensor};
use gradlift::{autodiff, text, DType, Graph, NodeId, Op};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// ---- the corpus ----------------------------------------------------------------------------

/// The corpus directory `ir/`.
pub fn ir_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ir")
}

/// Every `.ir` file under `dir`, recursively, sorted; none if `dir` does not exist.
pub fn ir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if p.is_dir() {
            out.extend(ir_files(&p));
        } else if p.extension().is_some_and(|x| x == "ir") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `path` relative to the repository (as messages and parse errors name it).
pub fn rel_name(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The source text and the parsed graph of `path` (named relative to the repository).
pub fn load(path: &Path) -> (String, Graph) {
    let name = rel_name(path);
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let g = text::parse(&src, &name).unwrap_or_else(|e| panic!("{e}"));
    (src, g)
}

/// Every file of the corpus, parsed: `(name relative to the repository, graph)`.
pub fn corpus() -> Vec<(String, Graph)> {
    ir_files(&ir_dir())
        .into_iter()
        .map(|p| (rel_name(&p), load(&p).1))
        .collect()
}

// ---- random feeds --------------------------------------------------------------------------

/// The largest label an i32 input may hold for the graph to be well defined, plus one: the
/// smallest `depth` of a `one_hot`, class count of a sparse cross-entropy and axis length of a
/// `gather` or `scatter_add` that read it (`default` when nothing constrains it).
pub fn label_range(g: &Graph, input: NodeId, default: usize) -> usize {
    g.users(input)
        .into_iter()
        .filter_map(|u| match &g[u].op {
            Op::OneHot { depth } => Some(*depth),
            Op::SparseSoftmaxCrossEntropy => {
                g.operands(u).first().map(|&l| g[l].ty.shape.dims()[1])
            }
            Op::Gather { axis } => g
                .operands(u)
                .first()
                .and_then(|&t| g[t].ty.shape.dims().get(*axis).copied()),
            Op::ScatterAdd { axis, shape } => shape.dims().get(*axis).copied(),
            _ => None,
        })
        .min()
        .unwrap_or(default)
        .max(1)
}

/// Values for every input of `g`, element by element from `draw(input, rng)`, inputs in the
/// order of [`Graph::inputs`]. Params and state keep their initializers.
pub fn feeds_with(
    g: &Graph,
    rng: &mut Rng,
    mut draw: impl FnMut(NodeId, &mut Rng) -> f64,
) -> HashMap<NodeId, Array<f64>> {
    let mut feeds = HashMap::new();
    for id in g.inputs() {
        let shape = g[id].ty.shape.clone();
        let data: Vec<f64> = (0..shape.numel()).map(|_| draw(id, rng)).collect();
        feeds.insert(id, Array::new(shape, data).expect("one value per element"));
    }
    feeds
}

/// Random values for every input of `g`: f32 inputs uniform in `[-half_width, half_width)`,
/// i32 inputs labels in `0..label_range` (2 when nothing constrains them).
pub fn random_feeds(g: &Graph, rng: &mut Rng, half_width: f64) -> HashMap<NodeId, Array<f64>> {
    feeds_with(g, rng, |id, rng| match g[id].ty.dtype {
        DType::F32 => rng.uniform() * (2.0 * half_width) - half_width,
        DType::I32 => rng.below(label_range(g, id, 2) as u64) as f64,
    })
}

/// The inputs of `g` as the JIT takes them: `feeds` rounded to the input types.
pub fn host_inputs(g: &Graph, feeds: &HashMap<NodeId, Array<f64>>) -> Vec<(String, HostTensor)> {
    g.inputs()
        .into_iter()
        .map(|id| {
            let n = &g[id];
            let name = n.name.clone().expect("inputs are named");
            (name, HostTensor::from_f64(&n.ty, &feeds[&id].data))
        })
        .collect()
}

/// `feeds` rounded to the input types, as the JIT sees them (so the interpreter computes
/// from the same values).
pub fn rounded(g: &Graph, feeds: &HashMap<NodeId, Array<f64>>) -> HashMap<NodeId, Array<f64>> {
    feeds
        .iter()
        .map(|(&id, a)| {
            let t = HostTensor::from_f64(&g[id].ty, &a.data);
            (
                id,
                Array::new(a.shape.clone(), t.to_f64()).expect("same shape"),
            )
        })
        .collect()
}

/// Borrowed `(name, tensor)` pairs, as [`gradlift::runtime::Executable::run`] takes them.
pub fn by_name(inputs: &[(String, HostTensor)]) -> Vec<(&str, HostTensor)> {
    inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect()
}

// ---- the JIT against the interpreter -------------------------------------------------------

/// The longest sum any node (or fused instruction) of `g` computes
/// ([`gradlift::interp::longest_sum`]).
pub fn max_terms(g: &Graph) -> usize {
    interp::longest_sum(g)
}

/// Asserts `got` (one JIT result of type `dtype`) equals `want` (the interpreter's f64 result)
/// within the tolerance of [`gradlift::interp::agrees`], `terms` the longest sum.
pub fn close(what: &str, got: &[f64], want: &[f64], dtype: DType, terms: usize) {
    if let Err(e) = interp::agrees(got, want, dtype, terms) {
        panic!("{what}: jit against interpreter: {e}");
    }
}

/// Outputs (by name) then updated params and state (`update NAME`), sorted by name, with the
/// dtype of each.
pub type Results = Vec<(String, DType, Vec<f64>)>;

/// The results of `g` in the interpreter's values `v`.
pub fn interp_results(g: &Graph, v: &interp::Values<f64>) -> Results {
    let mut out: Results = g
        .outputs()
        .iter()
        .map(|o| {
            let a = v.get(o.node).expect("output value");
            (o.name.clone(), g[o.node].ty.dtype, a.data.clone())
        })
        .collect();
    for u in g.updates() {
        let name = g[u.target]
            .name
            .clone()
            .expect("params and state are named");
        let a = v.get(u.value).expect("update value");
        out.push((format!("update {name}"), DType::F32, a.data.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Compile options of the harness: the Cranelift verifier on, buffers poisoned with NaN (a
/// value read before it is written shows), IEEE denormals as the interpreter computes them.
pub fn jit_options(kernel: MatmulKernel) -> CompileOptions {
    CompileOptions {
        matmul: kernel,
        verify: true,
        poison: true,
        flush_denormals: false,
        ..CompileOptions::default()
    }
}

/// The results of one call of `g` compiled with `kernel` on `inputs`.
pub fn jit_results(g: &Graph, inputs: &[(String, HostTensor)], kernel: MatmulKernel) -> Results {
    let mut exe =
        runtime::compile(g, &jit_options(kernel)).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    let mut out: Results = exe
        .run(&by_name(inputs))
        .unwrap_or_else(|e| panic!("{}: {e}", g.name))
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.to_f64()))
        .collect();
    for u in g.updates() {
        let name = g[u.target]
            .name
            .clone()
            .expect("params and state are named");
        let t = exe
            .param(&name)
            .or_else(|| exe.state(&name))
            .expect("a param or state");
        out.push((format!("update {name}"), DType::F32, t.to_f64()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The differential harness: `g` compiled with both matmul kernels and called once on random
/// inputs (from `seed`, f32 in `[-1, 1)`) gives the results of the interpreter on `reference`
/// (the same graph before some passes, or `g` itself; its inputs, outputs and updates are
/// matched by name) within the tolerance of [`gradlift::interp::agrees`].
pub fn jit_matches(name: &str, reference: &Graph, g: &Graph, seed: u64) {
    let feeds = random_feeds(reference, &mut Rng::new(seed), 1.0);
    jit_matches_on(name, reference, g, feeds);
}

/// [`jit_matches`] on the inputs `feeds` of `reference`.
pub fn jit_matches_on(
    name: &str,
    reference: &Graph,
    g: &Graph,
    feeds: HashMap<NodeId, Array<f64>>,
) {
    let inputs = host_inputs(reference, &feeds);
    let v = interp::eval::<f64>(reference, &rounded(reference, &feeds))
        .unwrap_or_else(|e| panic!("{name}: interpreter: {e}"));
    let want = interp_results(reference, &v);
    let terms = max_terms(reference).max(max_terms(g));
    for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
        let got = jit_results(g, &inputs, kernel);
        let names = |r: &Results| r.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&got), names(&want), "{name}: results");
        for ((n, dtype, x), (_, _, w)) in got.iter().zip(&want) {
            close(&format!("{name} ({kernel:?}) {n}"), x, w, *dtype, terms);
        }
    }
}

/// [`jit_matches`] on the SGD training step ([`sgd_step`], rate 0.1) of the forward graph
/// `forward` (a scalar output `loss`): the step as autodiff builds it is the reference, the
/// step after the default pass pipeline is compiled.
pub fn sgd_step_matches(name: &str, forward: Graph, seed: u64) {
    let step = sgd_step(forward, 0.1);
    let mut optimized = step.clone();
    gradlift::passes::Pipeline::default()
        .run(&mut optimized)
        .unwrap_or_else(|e| panic!("{name}: passes: {e}"));
    jit_matches(name, &step, &optimized, seed);
}

/// [`sgd_step_matches`] with each input element drawn by `draw(input name, rng)`.
pub fn sgd_step_matches_with(
    name: &str,
    forward: Graph,
    seed: u64,
    draw: impl Fn(&str, &mut Rng) -> f64,
) {
    let step = sgd_step(forward, 0.1);
    let mut optimized = step.clone();
    gradlift::passes::Pipeline::default()
        .run(&mut optimized)
        .unwrap_or_else(|e| panic!("{name}: passes: {e}"));
    let feeds = feeds_with(&step, &mut Rng::new(seed), |id, rng| {
        draw(step[id].name.as_deref().unwrap_or_default(), rng)
    });
    jit_matches_on(name, &step, &optimized, feeds);
}

// ---- training steps ------------------------------------------------------------------------

/// The Adam training step of the model `ir/NAME.ir`, as training builds it
/// (`gradlift::optim::training_step`: autodiff gradients of every param, Keras' Adam, the
/// learning rate as the input `lr`; only `loss` and `accuracy` stay outputs).
pub fn adam_step(name: &str) -> Graph {
    let path = ir_dir().join(format!("{name}.ir"));
    let (_, mut g) = load(&path);
    gradlift::optim::training_step(&mut g, "loss", &gradlift::optim::Optimizer::adam())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

/// The SGD training step of a forward graph with a scalar `loss` output: the gradient of
/// `loss` with respect to every param (autodiff) and the updates `p <- p - lr * dp` with the
/// constant `lr`; the gradients are not outputs. (`gradlift::optim::training_step` builds the
/// same with the learning rate as an input and any optimizer.)
pub fn sgd_step(mut g: Graph, lr: f64) -> Graph {
    let grads = autodiff::grad_all_params(&mut g, "loss", None)
        .unwrap_or_else(|e| panic!("{}: autodiff: {e}", g.name));
    let lr = g.scalar(lr);
    for n in &grads {
        let s = g.mul(n.grad, lr).expect("lr * grad");
        let next = g.sub(n.wrt, s).expect("param - step");
        g.add_update(n.wrt, next).expect("update");
    }
    g.outputs_mut().retain(|o| !o.name.starts_with("grad_"));
    g
}
