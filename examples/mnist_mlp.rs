//! A multilayer perceptron on MNIST: Flatten, Dense(128, relu), Dense(10, softmax); Adam,
//! sparse categorical cross-entropy, accuracy; 5 epochs of batches of 64, then `evaluate`.
//!
//! In: MNIST, the subset shipped in `data/mnist-subset/` by default, or the four standard IDX
//! files (plain or gzipped) of `--data DIR`. Out: the model summary, the compile time of the
//! training step, one line per epoch (mean loss and accuracy, seconds), the test loss and
//! accuracy.
//!
//! ```sh
//! cargo run --release --example mnist_mlp
//! cargo run --release --example mnist_mlp -- --data ../shared/data/mnist
//! ```

use clap::Parser;
use gradlift::data::{load_default, load_mnist};
use gradlift::nn::{
    Activation, CompileOptions, Dense, FitOptions, Flatten, Loss, Metric, Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Train an MLP on MNIST.
#[derive(Parser, Debug)]
struct Args {
    /// Directory of the four MNIST IDX files (default: the shipped subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Examples per training step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam's learning rate (Keras' default).
    #[arg(long, default_value_t = 0.001)]
    lr: f64,
    /// Seed of the initializers and of the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only (all by default).
    #[arg(long)]
    limit: Option<usize>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mnist_mlp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (train, test) = match &a.data {
        Some(dir) => load_mnist(dir)?,
        None => load_default()?,
    };
    let train = train.slice(0, a.limit.unwrap_or(train.n));
    println!(
        "data: {} training and {} test images of {}x{}",
        train.n, test.n, train.rows, train.cols
    );

    let model = Sequential::new([28, 28])
        .seed(a.seed)
        .layer(Flatten::new())
        .layer(Dense::new(128).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax));
    print!("{}", model.summary()?);
    let mut model = model.compile(
        CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        )
        .learning_rate(a.lr),
    )?;

    let t = Instant::now();
    let nodes = model.train_graph(a.batch_size)?.len();
    println!(
        "built and compiled the training step ({nodes} nodes, batch {}) in {:.1} ms",
        a.batch_size,
        t.elapsed().as_secs_f64() * 1e3
    );

    for epoch in 0..a.epochs {
        let t = Instant::now();
        let h = model.fit(
            &train.images,
            Targets::Classes(&train.labels),
            &FitOptions {
                epochs: 1,
                batch_size: a.batch_size,
                seed: a.seed.wrapping_add(epoch as u64),
                verbose: false,
                ..FitOptions::default()
            },
        )?;
        println!(
            "epoch {}/{}: loss {:.4} - accuracy {:.4} - {:.1} s",
            epoch + 1,
            a.epochs,
            h.get("loss").first().copied().unwrap_or(f64::NAN),
            h.get("accuracy").first().copied().unwrap_or(f64::NAN),
            t.elapsed().as_secs_f64()
        );
    }

    let ev = model.evaluate(&test.images, Targets::Classes(&test.labels), 500)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} ({} images)",
        ev.loss,
        ev.metric("accuracy").unwrap_or(f64::NAN),
        test.n
    );
    Ok(())
}
