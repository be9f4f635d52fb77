//! The five workloads of the JAX baseline (`../shared/peers/`), timed as it times them and
//! printed in its units, so the two can be set side by side from one sitting:
//!
//! | workload | model | batch | figure |
//! |---|---|---|---|
//! | W1 | `ir/linear_regression.ir` (Dense(1), MSE, SGD 0.01), 100 points | 32 | median us/step over 100 epochs |
//! | W2 | `ir/cnn.ir` (Adam) | 64 | s/epoch, steady = mean of epochs 2.. |
//! | W3 | `ir/mlp.ir` (Adam) | 64 | s/epoch, steady |
//! | W4 | `ir/mlp.ir` rebatched to 8 | 8 | mean us/step over an epoch |
//! | W5 | `ir/rnn.ir` rebatched to 64 | 64 | s/epoch, steady |
//! | W5u | `ir/rnn_unrolled.ir` rebatched to 64 (only when named) | 64 | s/epoch, steady |
//!
//! plus the compile time (autodiff + passes + Cranelift, ms), the peak resident memory of
//! the workload (the peak is reset before each), CPU time over wall time (2 = both cores
//! busy) and the test accuracy. An epoch is every full batch of a shuffled training set
//! (JAX also runs the last partial batch: 1 of 938 steps).
//!
//! ```sh
//! cargo bench --bench workloads              # all five
//! cargo bench --bench workloads -- W2 W4     # some
//! cargo bench --bench workloads -- W5 W5u    # the RNN as a scan and unrolled
//! ```
//!
//! MNIST is read from `GRADLIFT_MNIST` (default `../shared/data/mnist`), else the subset in
//! `data/mnist-subset/` (then the figures are not comparable: say so). `EPOCHS` overrides the
//! epoch count of W2, W3 and W5; `GRADLIFT_THREADS` the thread count; `SHARDS` the shard
//! count (default: `step::default_shards`).

mod common;

use common::{peak_mb, reset_peak};
use gradlift::batch::{analyze, rebatch};
use gradlift::codegen::CompileOptions;
use gradlift::data::{self, Dataset};
use gradlift::init::Rng;
use gradlift::optim::Optimizer;
use gradlift::passes::Pipeline;
use gradlift::runtime::compile;
use gradlift::step::{compile_training_step, CompiledStep, DataFeed, StepOptions, StepReport};
use gradlift::text::parse;
use gradlift::Graph;
use std::path::Path;
use std::time::Instant;

fn model(file: &str, batch: usize) -> Graph {
    let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
    let g = parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let x = g.find("x").unwrap();
    let b = g[x].ty.shape.dims()[0];
    if b == batch {
        return g;
    }
    let axes = analyze(&g, b).unwrap();
    rebatch(&g, &axes, batch)
}

fn step(g: &Graph, opt: Optimizer, batch: usize) -> (CompiledStep, StepReport, f64) {
    let t = Instant::now();
    let opts = StepOptions {
        shards: std::env::var("SHARDS").ok().and_then(|v| v.parse().ok()),
        ..StepOptions::default()
    };
    let (s, r) = compile_training_step(g, "loss", &opt, None, batch, &opts).unwrap();
    (s, r, t.elapsed().as_secs_f64() * 1e3)
}

/// User + system CPU seconds of the process.
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Mean test accuracy of `forward` with `trained`'s params over the full batches of `test`.
fn accuracy(forward: &Graph, trained: &CompiledStep, test: &Dataset, batch: usize) -> f64 {
    let mut g = forward.clone();
    Pipeline::default().run(&mut g).unwrap();
    let mut exe = compile(&g, &CompileOptions::default()).unwrap();
    for (name, v) in trained.params() {
        exe.set_param(&name, v).unwrap();
    }
    let order: Vec<usize> = (0..test.n).collect();
    let (mut sum, mut n) = (0.0, 0);
    for idx in order.chunks_exact(batch) {
        test.fill_images(idx, exe.input_f32_mut("x").unwrap());
        test.fill_labels(idx, exe.input_i32_mut("labels").unwrap());
        exe.run_bound();
        sum += exe.output("accuracy").unwrap().as_f32().unwrap()[0] as f64;
        n += 1;
    }
    sum / n.max(1) as f64
}

/// Trains `file` at `batch` for `epochs` epochs on MNIST; prints one line.
fn mnist(
    name: &str,
    file: &str,
    batch: usize,
    epochs: usize,
    data: &(Dataset, Dataset),
    per_step: bool,
) {
    reset_peak();
    let (train, test) = data;
    let g = model(file, batch);
    let (mut s, report, compile_ms) = step(&g, Optimizer::adam(), batch);
    s.input_f32_mut("lr").unwrap()[0] = 0.001;
    let feed = DataFeed {
        x: "x".into(),
        labels: "labels".into(),
    };
    let steps = train.n / batch;
    let (wall0, cpu0) = (Instant::now(), cpu_s());
    let mut times = Vec::new();
    let mut loss = 0.0;
    for e in 0..epochs {
        let order = data::shuffled(train.n, e as u64 + 1);
        let t = Instant::now();
        for b in 0..steps {
            feed.step(&mut s, train, &order[b * batch..(b + 1) * batch])
                .unwrap();
        }
        times.push(t.elapsed().as_secs_f64());
        loss = s.output("loss").unwrap().as_f32().unwrap()[0];
    }
    let cpu = (cpu_s() - cpu0) / wall0.elapsed().as_secs_f64();
    let acc = accuracy(&g, &s, test, batch);
    let steady = if times.len() > 1 {
        times[1..].iter().sum::<f64>() / (times.len() - 1) as f64
    } else {
        times[0]
    };
    let epochs_s: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    let figure = if per_step {
        format!("{:.1} us/step (mean)", steady / steps as f64 * 1e6)
    } else {
        format!("{steady:.3} s/epoch (steady)")
    };
    println!(
        "{name} {file} batch {batch}: {figure}; epochs [{}] s; compile {compile_ms:.1} ms; {} shards x {} threads; cpu/wall {cpu:.2}; peak {:.0} MB; last loss {loss:.4}; test accuracy {acc:.4}",
        epochs_s.join(", "),
        report.shards,
        report.threads,
        peak_mb(),
    );
}

/// W1: linear regression on 100 points, batch 32, SGD 0.01, 100 epochs of 3 full batches.
fn w1() {
    reset_peak();
    let g = model("linear_regression.ir", 32);
    let (mut s, report, compile_ms) = step(&g, Optimizer::sgd(), 32);
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..100).map(|_| rng.uniform() as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .map(|&x| 3.0 * x + 2.0 + 0.5 * rng.normal() as f32)
        .collect();
    s.input_f32_mut("lr").unwrap()[0] = 0.01;
    let mut times = Vec::with_capacity(300);
    for e in 0..100 {
        let order = data::shuffled(100, e);
        for idx in order.chunks_exact(32) {
            let t = Instant::now();
            for (d, &i) in s.input_f32_mut("x").unwrap().iter_mut().zip(idx) {
                *d = x[i];
            }
            for (d, &i) in s.input_f32_mut("y").unwrap().iter_mut().zip(idx) {
                *d = y[i];
            }
            s.run_bound();
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let w = s.param("dense.kernel").unwrap().as_f32().unwrap()[0];
    let b = s.param("dense.bias").unwrap().as_f32().unwrap()[0];
    println!(
        "W1 linear_regression.ir batch 32: {:.3} us/step (median of {}); compile {compile_ms:.1} ms; {} shards x {} threads; peak {:.0} MB; w {w:.3} b {b:.3}",
        times[times.len() / 2] * 1e6,
        times.len(),
        report.shards,
        report.threads,
        peak_mb()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.starts_with('W'))
        .collect();
    let want = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    let epochs = |default: usize| {
        std::env::var("EPOCHS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if want("W1") {
        w1();
    }
    if !["W2", "W3", "W4", "W5", "W5u"].iter().any(|w| want(w)) {
        return;
    }
    let dir = std::env::var("GRADLIFT_MNIST")
        .unwrap_or_else(|_| format!("{}/../shared/data/mnist", env!("CARGO_MANIFEST_DIR")));
    let data = match data::load_mnist(Path::new(&dir)) {
        Ok(d) => d,
        Err(e) => {
            println!("note: full MNIST not found ({e}); using the shipped subset: figures are not comparable with the baseline");
            data::load_default().unwrap()
        }
    };
    println!(
        "MNIST: {} training, {} test images; {} threads available",
        data.0.n,
        data.1.n,
        gradlift::runtime::pool::default_threads()
    );
    if want("W2") {
        mnist("W2", "cnn.ir", 64, epochs(3), &data, false);
    }
    if want("W3") {
        mnist("W3", "mlp.ir", 64, epochs(3), &data, false);
    }
    if want("W4") {
        mnist("W4", "mlp.ir", 8, 1, &data, true);
    }
    if want("W5") {
        mnist("W5", "rnn.ir", 64, epochs(2), &data, false);
    }
    if args.iter().any(|a| a == "W5u") {
        mnist("W5u", "rnn_unrolled.ir", 64, epochs(2), &data, false);
    }
}
