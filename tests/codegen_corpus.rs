//! Differential tests over whole graphs: every `ir/*.ir` file of the corpus (there may be
//! none), plus an inline training step, compiled and run by the JIT and evaluated by the
//! interpreter: outputs and updated params/state must agree.
//!
//! Forward graphs and, for every file with a scalar output `loss`, forward + gradient graphs
//! (`autodiff::grad_all_params`) are checked.
//!
//! Tolerance: the one of `tests/common` (`common::close`), `n` the longest sum in the graph
//! (matmul `k`, reduced elements, convolution sums).

mod common;

use common::{close, host_inputs, ir_dir, ir_files, jit_options, max_terms, random_feeds, rounded};
use gradlift::codegen::{CompileOptions, MatmulKernel};
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::runtime;
use gradlift::{autodiff, text, Graph, Op};

/// Runs `g` twice in the JIT (the second call sees the first call's updates) and checks
/// every output and updated param/state against the interpreter.
fn differential(g: &Graph, file: &str, seed: u64) {
    let mut rng = Rng::new(seed);
    let terms = max_terms(g);
    for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
        let mut exe =
            runtime::compile(g, &jit_options(kernel)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let feeds = random_feeds(g, &mut rng, 1.0);
        let host = host_inputs(g, &feeds);
        let mut feeds = rounded(g, &feeds);
        let inputs = common::by_name(&host);
        for call in 0..2 {
            // the interpreter starts from the executable's current (f32) params and state
            for id in g.params().into_iter().chain(g.states()) {
                let name = g[id].name.as_deref().unwrap();
                let t = if matches!(g[id].op, Op::Param { .. }) {
                    exe.param(name)
                } else {
                    exe.state(name)
                };
                feeds.insert(
                    id,
                    Array {
                        shape: g[id].ty.shape.clone(),
                        data: t.unwrap().to_f64(),
                    },
                );
            }
            let want = interp::eval::<f64>(g, &feeds).unwrap_or_else(|e| panic!("{file}: {e}"));
            let got = exe.run(&inputs).unwrap();
            for (o, (name, t)) in g.outputs().iter().zip(&got) {
                let w = want.get(o.node).unwrap();
                close(
                    &format!("{file} ({kernel:?}) call {call} output {name}"),
                    &t.to_f64(),
                    &w.data,
                    t.dtype(),
                    terms,
                );
            }
            for (target, w) in want.updates(g) {
                let name = g[target].name.as_deref().unwrap();
                let t = exe.param(name).or_else(|| exe.state(name)).unwrap();
                close(
                    &format!("{file} ({kernel:?}) call {call} update of {name}"),
                    &t.to_f64(),
                    &w.data,
                    t.dtype(),
                    terms,
                );
            }
        }
    }
}

/// A small training step written by hand (forward, gradients, SGD updates, a step counter).
const STEP: &str = "
graph step {
inputs:
  %x: f32[5,7] = input
  %labels: i32[5] = input
params:
  %w: f32[7,3] = param glorot_uniform(seed=1)
  %b: f32[3] = param constant(value=0.1)
state:
  %t: f32[] = state zeros
body:
  %h: f32[5,3] = matmul %x, %w
  %z: f32[5,3] = add %h, %b
  %l: f32[5] = sparse_softmax_cross_entropy %z, %labels
  %loss: f32[] = reduce_mean %l, axes=[0], keepdims=false
  %p: f32[5,3] = softmax %z, axis=1
  %oh: f32[5,3] = one_hot %labels, depth=3
  %d: f32[5,3] = sub %p, %oh
  %s: f32[] = const 0.2
  %dz: f32[5,3] = mul %d, %s
  %xt: f32[7,5] = transpose %x, perm=[1,0]
  %dw: f32[7,3] = matmul %xt, %dz
  %db: f32[3] = reduce_sum %dz, axes=[0], keepdims=false
  %lr: f32[] = const 0.5
  %sw: f32[7,3] = mul %dw, %lr
  %nw: f32[7,3] = sub %w, %sw
  %sb: f32[3] = mul %db, %lr
  %nb: f32[3] = sub %b, %sb
  %one: f32[] = const 1.0
  %t1: f32[] = add %t, %one
outputs:
  loss = %loss
  w_old = %w
updates:
  %w <- %nw
  %b <- %nb
  %t <- %t1
}
";

#[test]
fn inline_training_step_matches_the_interpreter() {
    let g = text::parse(STEP, "step.ir").unwrap();
    differential(&g, "step.ir", 7);
    // %b <- %nb and %t <- %t1 are computed in place; %w is an output, so %nw is copied
    let exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    assert_eq!(exe.report().in_place_updates, 2, "{:?}", exe.report());
}

#[test]
fn corpus_files_match_the_interpreter() {
    let root = ir_dir();
    let mut with_grad = Vec::new();
    for path in ir_files(&root) {
        let file = path.display().to_string();
        let (_, g) = common::load(&path);
        differential(&g, &file, 11);
        let has_loss = g
            .output("loss")
            .is_some_and(|l| g[l].ty == gradlift::TensorType::f32(gradlift::Shape::scalar()));
        if has_loss && !g.params().is_empty() {
            let mut gg = g.clone();
            autodiff::grad_all_params(&mut gg, "loss", None)
                .unwrap_or_else(|e| panic!("{file}: autodiff: {e}"));
            differential(&gg, &format!("{file} (with gradients)"), 13);
            with_grad.push(file);
        }
    }
    // the corpus models all have a loss: their gradients must have been checked
    for model in ["mlp.ir", "cnn.ir"] {
        if root.join(model).exists() {
            assert!(
                with_grad.iter().any(|f| f.ends_with(model)),
                "{model} was not checked with gradients: {with_grad:?}"
            );
        }
    }
}

/// Updates whose target is still read after the new value is computed (here `%late` reads
/// `%p` after `%v`, and `%q <- %p` swaps): the old values must be seen.
const LATE_READERS: &str = "
graph late {
params:
  %p: f32[6] = param uniform(high=1.0, low=-1.0, seed=5)
  %q: f32[6] = param uniform(high=1.0, low=-1.0, seed=6)
body:
  %two: f32[] = const 2.0
  %v: f32[6] = mul %p, %two
  %late: f32[6] = add %p, %two
  %w: f32[6] = sub %q, %v
outputs:
  late = %late
  w = %w
updates:
  %p <- %v
  %q <- %p
}
";

#[test]
fn updates_never_clobber_values_still_read() {
    let g = text::parse(LATE_READERS, "late.ir").unwrap();
    differential(&g, "late.ir", 3);
    let exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    assert_eq!(exe.report().in_place_updates, 0, "{:?}", exe.report());
}

/// Any elementwise update value is computed in place, a `select` as an `add` (it reads the
/// param element for element, at the position it writes).
const SELECT_UPDATE: &str = "
graph select_update {
inputs:
  %mask: f32[6] = input
  %x: f32[6] = input
params:
  %p: f32[6] = param uniform(high=1.0, low=-1.0, seed=2)
body:
  %v: f32[6] = select %mask, %x, %p
  %s: f32[] = reduce_sum %x, axes=[0], keepdims=false
outputs:
  s = %s
updates:
  %p <- %v
}
";

#[test]
fn an_elementwise_select_update_is_computed_in_place() {
    let g = text::parse(SELECT_UPDATE, "select_update.ir").unwrap();
    differential(&g, "select_update.ir", 5);
    let exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    assert_eq!(exe.report().in_place_updates, 1, "{:?}", exe.report());
}
