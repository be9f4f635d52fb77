//! Training benchmarks at the Keras level: `Model::fit` of the overview's CNN and of an MLP
//! (Adam, sparse categorical cross-entropy, accuracy) for one pass over 640 images of the
//! shipped MNIST subset (10 steps of 64: gather the batch, run the compiled step, write the
//! weights back at the end), and the time to build and compile the CNN's training step.
//! Criterion's "elements" are images. Run with `cargo bench --bench train`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradlift::data::load_default;
use gradlift::nn::{
    Activation, CompileOptions, Conv2D, Dense, FitOptions, Flatten, Loss, MaxPool2D, Metric, Model,
    Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::time::Duration;

/// Images per benchmarked pass.
const IMAGES: usize = 640;
/// Examples per step.
const BATCH: usize = 64;

/// The overview's CNN (section 4.2).
fn cnn() -> Sequential {
    Sequential::new([28, 28, 1])
        .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
        .layer(MaxPool2D::new([2, 2]))
        .layer(Flatten::new())
        .layer(Dense::new(128).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
}

/// Flatten, Dense(128, relu), Dense(10, softmax).
fn mlp() -> Sequential {
    Sequential::new([28, 28])
        .layer(Flatten::new())
        .layer(Dense::new(128).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
}

/// `model` compiled with Adam and the sparse loss.
fn compiled(model: Sequential) -> Model {
    model
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .expect("the model compiles")
}

fn bench_fit(c: &mut Criterion) {
    let (train, _) = load_default().expect("the shipped subset loads");
    let train = train.slice(0, IMAGES);
    let opts = FitOptions {
        epochs: 1,
        batch_size: BATCH,
        verbose: false,
        ..FitOptions::default()
    };
    let mut group = c.benchmark_group("fit_640_images");
    group.throughput(Throughput::Elements(IMAGES as u64));
    for (name, model) in [("cnn", cnn()), ("mlp", mlp())] {
        let mut m = compiled(model);
        // Build and compile the step outside the measurement.
        m.train_graph(BATCH).expect("the training step builds");
        group.bench_function(BenchmarkId::new("jit", name), |b| {
            b.iter(|| {
                m.fit(&train.images(), Targets::Classes(&train.labels), &opts)
                    .expect("fit runs")
            })
        });
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    c.bench_function("compile_training_step/cnn", |b| {
        b.iter(|| {
            let mut m = compiled(cnn());
            m.train_graph(BATCH)
                .expect("the training step builds")
                .len()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_fit, bench_compile
}
criterion_main!(benches);
