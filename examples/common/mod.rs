//! What the MNIST examples (`mnist_mlp`, `mnist_cnn`, `mnist_rnn`) share: the command line,
//! loading the data, compiling and timing the training step, the epochs and the evaluation.
//!
//! In: an [`Example`] (its name, `--help` text and how much to report) and a function that
//! builds the uncompiled model from the arguments and the training set. Out: the same lines on
//! stdout for every example (data sizes, model summary, compile time, one line per epoch, test
//! loss and accuracy); an error is printed on stderr as `NAME: error` with a failing exit code.

use clap::{CommandFactory, FromArgMatches, Parser};
use gradlift::data::{load_default, load_mnist, Dataset};
use gradlift::nn::{CompileOptions, FitOptions, Loss, Metric, Sequential, Targets};
use gradlift::optim::Optimizer;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// The command line of every MNIST example.
#[derive(Parser, Debug)]
pub struct Args {
    /// Directory of the four MNIST IDX files (default: the shipped subset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Examples per training step (each example sets its default: `Example::batch_size`).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam's learning rate (Keras' default).
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// Seed of the initializers and of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only (all by default).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// How one example differs from the others, apart from its model.
pub struct Example {
    /// Prefix of the error message (the example's name).
    pub name: &'static str,
    /// The one-line description `--help` shows.
    pub about: &'static str,
    /// Also print the compiler's report on each compiled graph, time the evaluation and end
    /// with a Keras-style `Test accuracy: ...` line.
    pub detailed: bool,
    /// The default of `--batch-size`, as written on the command line.
    pub batch_size: &'static str,
}

/// Parses the command line, then loads MNIST, builds the model with `build` (given the
/// arguments and the training set), compiles it with Adam and sparse categorical
/// cross-entropy, trains it epoch by epoch and evaluates it on the test set.
pub fn main(ex: &Example, build: impl FnOnce(&Args, &Dataset) -> Sequential) -> ExitCode {
    let matches = Args::command()
        .about(ex.about)
        .mut_arg("batch_size", |a| a.default_value(ex.batch_size))
        .get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match run(ex, &args, build) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", ex.name);
            ExitCode::FAILURE
        }
    }
}

fn run(
    ex: &Example,
    a: &Args,
    build: impl FnOnce(&Args, &Dataset) -> Sequential,
) -> Result<(), Box<dyn std::error::Error>> {
    let (train, test) = match &a.data {
        Some(dir) => load_mnist(dir)?,
        None => load_default()?,
    };
    let train = train.slice(0, a.limit.unwrap_or(train.n));
    println!(
        "data: {} training and {} test images of {}x{}",
        train.n, test.n, train.rows, train.cols
    );

    let model = build(a, &train);
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
    if ex.detailed {
        for (graph, report) in model.compile_reports() {
            println!("  {graph}: {report}");
        }
    }

    for epoch in 0..a.epochs {
        let t = Instant::now();
        let h = model.fit(
            &train.images(),
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
            "epoch {}/{}: loss {:.4} - accuracy {:.4} - {}",
            epoch + 1,
            a.epochs,
            h.get("loss").first().copied().unwrap_or(f64::NAN),
            h.get("accuracy").first().copied().unwrap_or(f64::NAN),
            duration(t.elapsed())
        );
    }

    let t = Instant::now();
    let ev = model.evaluate(&test.images(), Targets::Classes(&test.labels), 500)?;
    let accuracy = ev.metric("accuracy").unwrap_or(f64::NAN);
    if ex.detailed {
        println!(
            "test: loss {:.4} - accuracy {:.4} ({} images, {})",
            ev.loss,
            accuracy,
            test.n,
            duration(t.elapsed())
        );
        println!("Test accuracy: {accuracy}");
    } else {
        println!(
            "test: loss {:.4} - accuracy {:.4} ({} images)",
            ev.loss, accuracy, test.n
        );
    }
    Ok(())
}

/// A duration for the report: milliseconds under a second (`340 ms`, `4.2 ms`), else seconds
/// with one decimal (`12.3 s`), so a short epoch does not print as `0.0 s`.
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 0.9995 {
        format!("{s:.1} s")
    } else if s >= 0.01 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}
