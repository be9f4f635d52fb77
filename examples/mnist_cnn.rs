//! The overview's convolutional network (section 4.2), natively: Conv2D(32, 3x3, relu),
//! MaxPooling2D(2x2), Flatten, Dense(128, relu), Dense(10, softmax); Adam, sparse categorical
//! cross-entropy, accuracy; 5 epochs of batches of 64, then `evaluate` on the test set.
//!
//! In: MNIST, the subset shipped in `data/mnist-subset/` (6000 training, 1000 test images) by
//! default, or the four standard IDX files (plain or gzipped) of `--data DIR`. Out: the model
//! summary, the compile time of the training step, one line per epoch (mean loss and accuracy
//! over the epoch, seconds) and the test loss and accuracy.
//!
//! ```sh
//! cargo run --release --example mnist_cnn                                  # shipped subset
//! cargo run --release --example mnist_cnn -- --data ../shared/data/mnist   # full MNIST
//! ```
//!
//! The training step (forward, loss, gradients, Adam updates) is one graph compiled by
//! Cranelift before the first epoch; a last partial batch gets its own compiled variant.

use clap::Parser;
use gradlift::data::{load_default, load_mnist};
use gradlift::nn::{
    Activation, CompileOptions, Conv2D, Dense, FitOptions, Flatten, Loss, MaxPool2D, Metric,
    Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Train the overview's MNIST CNN.
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
            eprintln!("mnist_cnn: {e}");
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

    let model = Sequential::new([28, 28, 1])
        .seed(a.seed)
        .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
        .layer(MaxPool2D::new([2, 2]))
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

    // Build, differentiate, optimize and compile the training step now, to time it apart
    // from the epochs.
    let t = Instant::now();
    let nodes = model.train_graph(a.batch_size)?.len();
    println!(
        "built and compiled the training step ({nodes} nodes, batch {}) in {:.1} ms",
        a.batch_size,
        t.elapsed().as_secs_f64() * 1e3
    );
    for (graph, report) in model.compile_reports() {
        println!("  {graph}: {report}");
    }

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

    let t = Instant::now();
    let ev = model.evaluate(&test.images, Targets::Classes(&test.labels), 500)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} ({} images, {:.1} s)",
        ev.loss,
        ev.metric("accuracy").unwrap_or(f64::NAN),
        test.n,
        t.elapsed().as_secs_f64()
    );
    println!(
        "Test accuracy: {}",
        ev.metric("accuracy").unwrap_or(f64::NAN)
    );
    Ok(())
}
