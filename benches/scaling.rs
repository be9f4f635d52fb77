//! Compile time and memory against graph size: a chain of `n` layers `h = tanh(h * w)` (one
//! param `w: f32[64]`, loss the mean of the last `h`) made into an SGD training step
//! (autodiff + update), run through the default pass pipeline and compiled, for growing `n`.
//! Prints per size the nodes before and after the pipeline, the median time of each stage
//! over a few runs (training step, pipeline, compile), the time per thousand nodes, the peak
//! resident memory of the run and the size of the code, then the growth factor of the total
//! time and of the memory from each size to the next (2.0 per doubling is linear growth), and
//! the time of each pass of the pipeline at the two largest sizes.
//!
//! ```sh
//! cargo bench --bench scaling              # n = 500 .. 8000
//! SCALING_MAX=32000 cargo bench --bench scaling
//! ```

mod common;

use common::{peak_mb, reset_peak};
use gradlift::codegen::CompileOptions;
use gradlift::optim::{self, Optimizer};
use gradlift::passes::Pipeline;
use gradlift::runtime;
use gradlift::{Graph, Init, TensorType};
use std::time::Instant;

/// The forward chain of `n` layers.
fn chain(n: usize) -> Graph {
    let mut g = Graph::new("chain");
    let x = g.input("x", TensorType::f32([64])).expect("input");
    let w = g.param("w", [64], Init::Ones).expect("param");
    let mut h = x;
    for _ in 0..n {
        let m = g.mul(h, w).expect("mul");
        h = g.tanh(m).expect("tanh");
    }
    let loss = g.mean_all(h).expect("mean");
    g.add_output("loss", loss).expect("output");
    g
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One size's figures.
struct Row {
    layers: usize,
    nodes: usize,
    optimized: usize,
    step_ms: f64,
    pipeline_ms: f64,
    compile_ms: f64,
    peak_mb: f64,
    code_kb: f64,
}

fn measure(layers: usize, runs: usize) -> Row {
    let (mut step, mut pipe, mut comp, mut peak) = (vec![], vec![], vec![], vec![]);
    let (mut nodes, mut optimized, mut code) = (0, 0, 0);
    for _ in 0..runs {
        reset_peak();
        let g0 = chain(layers);
        let t = Instant::now();
        let mut g = g0.clone();
        optim::training_step(&mut g, "loss", &Optimizer::sgd()).expect("training step");
        step.push(t.elapsed().as_secs_f64() * 1e3);
        nodes = g.len();
        let t = Instant::now();
        Pipeline::default().run(&mut g).expect("pipeline");
        pipe.push(t.elapsed().as_secs_f64() * 1e3);
        optimized = g.len();
        let t = Instant::now();
        let exe = runtime::compile(&g, &CompileOptions::default()).expect("compile");
        comp.push(t.elapsed().as_secs_f64() * 1e3);
        code = exe.report().code_bytes;
        peak.push(peak_mb());
    }
    Row {
        layers,
        nodes,
        optimized,
        step_ms: median(step),
        pipeline_ms: median(pipe),
        compile_ms: median(comp),
        peak_mb: median(peak),
        code_kb: code as f64 / 1024.0,
    }
}

/// Milliseconds of each pass of the default pipeline on the training step of `layers` layers.
fn pass_times(layers: usize) -> Vec<(&'static str, f64)> {
    let mut g = chain(layers);
    optim::training_step(&mut g, "loss", &Optimizer::sgd()).expect("training step");
    let pipeline = Pipeline::default();
    pipeline
        .passes()
        .iter()
        .map(|p| {
            let t = Instant::now();
            (p.run)(&mut g);
            (p.name, t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

fn main() {
    let max: usize = std::env::var("SCALING_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8000);
    let sizes: Vec<usize> = std::iter::successors(Some(500), |&n| Some(n * 2))
        .take_while(|&n| n <= max)
        .collect();
    println!(
        "{:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8}",
        "layers",
        "nodes",
        "after",
        "step ms",
        "passes",
        "compile",
        "total",
        "ms/1k nd",
        "peak MB",
        "code KB"
    );
    let mut rows: Vec<Row> = Vec::new();
    for &n in &sizes {
        let r = measure(n, 3);
        let total = r.step_ms + r.pipeline_ms + r.compile_ms;
        println!(
            "{:>7} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>8.1} {:>8.0}",
            r.layers,
            r.nodes,
            r.optimized,
            r.step_ms,
            r.pipeline_ms,
            r.compile_ms,
            total,
            total / r.nodes as f64 * 1e3,
            r.peak_mb,
            r.code_kb
        );
        rows.push(r);
    }
    println!("growth per doubling (2.0 = linear):");
    for w in rows.windows(2) {
        let t = |r: &Row| r.step_ms + r.pipeline_ms + r.compile_ms;
        println!(
            "  {:>5} -> {:>5} layers: time x{:.2} (training step x{:.2}, passes x{:.2}, compile x{:.2}), peak memory x{:.2}",
            w[0].layers,
            w[1].layers,
            t(&w[1]) / t(&w[0]),
            w[1].step_ms / w[0].step_ms,
            w[1].pipeline_ms / w[0].pipeline_ms,
            w[1].compile_ms / w[0].compile_ms,
            w[1].peak_mb / w[0].peak_mb
        );
    }
    let last: Vec<usize> = sizes.iter().rev().take(2).rev().copied().collect();
    let times: Vec<Vec<(&str, f64)>> = last.iter().map(|&n| pass_times(n)).collect();
    println!("passes, ms at {last:?} layers:");
    for (i, (name, t)) in times[0].iter().enumerate() {
        let after: Vec<String> = times[1..]
            .iter()
            .map(|ts| format!("{:>9.1}", ts[i].1))
            .collect();
        println!("  {name:>14} {t:>9.1} {}", after.join(" "));
    }
}
