//! Pass-pipeline benchmarks: the corpus MLP and CNN training steps (`ir/mlp.ir`, `ir/cnn.ir`,
//! batch 64: forward + autodiff gradients + Adam updates, one graph each) compiled with and
//! without the default pass pipeline (which ends with fusion): compile time (the pipeline
//! included) and training-step time, measured in one run. Before the measurements it prints,
//! per model, the node count before and after the pipeline, the number of fused kernels, the
//! bytes before planning (every non-leaf value in a 64-byte aligned buffer of its own), the
//! memory plan the JIT uses (`codegen::memory_plan`: arena bytes without reuse, i.e. every
//! arena buffer its own bytes, and with reuse, which is the executable's arena, and the peak
//! live bytes, a lower bound), and the compile report.
//!
//! Run with `cargo bench --bench passes`.

mod common;

use common::{feeds, opts};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gradlift::codegen;
use gradlift::passes::Pipeline;
use gradlift::runtime;
use gradlift::{optim, text, Graph, Op};
use std::time::{Duration, Instant};

/// A training step from the corpus: `ir/NAME.ir`, the gradient of `loss` w.r.t. every param
/// (autodiff) and Adam updates (`gradlift::optim`, Keras defaults; the learning rate is the
/// input `lr`). Only `loss` and `accuracy` stay outputs.
fn adam_step(name: &str) -> Graph {
    let path = format!("{}/ir/{name}.ir", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut g = text::parse(&src, &path).unwrap_or_else(|e| panic!("{e}"));
    optim::training_step(&mut g, "loss", &optim::Optimizer::adam()).unwrap();
    g
}

/// The pipeline run without its between-pass checks (as a release build runs it).
fn pipeline() -> Pipeline {
    let mut p = Pipeline::default();
    p.verify = false;
    p
}

fn optimized(g: &Graph) -> Graph {
    let mut g = g.clone();
    pipeline().run(&mut g).unwrap();
    g
}

fn fused_kernels(g: &Graph) -> usize {
    g.node_ids()
        .iter()
        .filter(|&&id| matches!(g[id].op, Op::Fused(_)))
        .count()
}

/// Prints the figures of one model (see the module documentation).
fn report(name: &str, g: &Graph) {
    let t0 = Instant::now();
    let opt = optimized(g);
    let pipeline_ms = t0.elapsed().as_secs_f64() * 1e3;
    for (label, graph) in [("without pipeline", g), ("with pipeline", &opt)] {
        let p = codegen::memory_plan(graph, &opts()).unwrap();
        let exe = runtime::compile(graph, &opts()).unwrap();
        let r = exe.report();
        assert_eq!(
            r.arena_bytes, p.arena_bytes,
            "the report shows the planned arena"
        );
        // before planning: every non-leaf node's value in a buffer of its own
        let unplanned: usize = graph
            .node_ids()
            .iter()
            .filter(|&&id| !graph[id].op.is_leaf())
            .map(|&id| (graph[id].ty.shape.numel() * 4).div_ceil(64) * 64)
            .sum();
        eprintln!(
            "{name} {label}: {} nodes, {} fused kernels; before planning (a buffer per \
             value) {unplanned} bytes; memory plan: {} arena buffers, \
             {} bytes without reuse, {} bytes with reuse (the JIT's arena), peak live {}; \
             {} in-place updates; {r}",
            graph.len(),
            fused_kernels(graph),
            p.buffers.len(),
            p.arena_bytes_no_reuse,
            p.arena_bytes,
            p.peak_live_bytes,
            r.in_place_updates,
        );
    }
    eprintln!("{name}: pipeline ran in {pipeline_ms:.2} ms");
}

fn compile_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("passes_compile");
    for name in ["mlp", "cnn"] {
        let g = adam_step(name);
        report(name, &g);
        grp.bench_function(BenchmarkId::new(name, "no_pipeline"), |b| {
            b.iter(|| runtime::compile(&g, &opts()).unwrap())
        });
        grp.bench_function(BenchmarkId::new(name, "pipeline"), |b| {
            b.iter(|| runtime::compile(&optimized(&g), &opts()).unwrap())
        });
    }
    grp.finish();
}

fn step_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("passes_step");
    for name in ["mlp", "cnn"] {
        let g = adam_step(name);
        let inputs = feeds(&g);
        let opt = optimized(&g);
        let mut plain = runtime::compile(&g, &opts()).unwrap();
        let mut fused = runtime::compile(&opt, &opts()).unwrap();
        grp.bench_function(BenchmarkId::new(name, "no_pipeline"), |b| {
            b.iter(|| plain.run(&inputs).unwrap())
        });
        grp.bench_function(BenchmarkId::new(name, "pipeline"), |b| {
            b.iter(|| fused.run(&inputs).unwrap())
        });
    }
    grp.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = compile_time, step_time
}
criterion_main!(benches);
