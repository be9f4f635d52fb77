//! The overview's first program (section 4.1), natively: 100 points `x ~ U[0, 1)`,
//! `y = 3x + 2 + 0.5 * N(0, 1)`; one Dense(1) unit (linear), SGD with learning rate 0.01,
//! mean squared error, 100 epochs (Keras' default batch of 32); then the predictions for 10
//! new points.
//!
//! In: nothing (the data is drawn from a seeded generator; `--seed` changes it). Out: the loss
//! every 10 epochs, the learned weight and bias (compare with 3 and 2: after 100 epochs at
//! this learning rate SGD has not fully converged, as in Keras), and `predict` on 10 new
//! points next to the noiseless line.
//!
//! ```sh
//! cargo run --release --example linear_regression
//! ```

use clap::Parser;
use gradlift::init::Rng;
use gradlift::nn::{CompileOptions, Dense, FitOptions, Loss, Sequential, Targets};
use gradlift::optim::Optimizer;
use std::process::ExitCode;

/// Fit y = 3x + 2 + noise with one linear unit.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the 100 points.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// SGD's learning rate (Keras' default).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Seed of the data, the initializer and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linear_regression: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // X_train = np.random.rand(100, 1); y_train = 3 * X_train + 2 + np.random.randn(100, 1) * 0.5
    let mut rng = Rng::new(a.seed);
    let x: Vec<f32> = (0..100).map(|_| rng.uniform() as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .map(|&x| 3.0 * x + 2.0 + 0.5 * rng.normal() as f32)
        .collect();

    // Sequential([Dense(units=1, activation='linear', input_shape=(1,))])
    let model = Sequential::new([1]).seed(a.seed).layer(Dense::new(1));
    print!("{}", model.summary()?);
    // compile(optimizer='sgd', loss='mean_squared_error')
    let mut model = model.compile(
        CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[]).learning_rate(a.lr),
    )?;

    // fit(X_train, y_train, epochs=100)
    let h = model.fit(
        &x,
        Targets::Values(&y),
        &FitOptions {
            epochs: a.epochs,
            seed: a.seed,
            verbose: false,
            ..FitOptions::default()
        },
    )?;
    for (epoch, loss) in h.get("loss").iter().enumerate() {
        if epoch % 10 == 9 || epoch == 0 {
            println!("epoch {}/{}: loss {loss:.4}", epoch + 1, a.epochs);
        }
    }
    let w = model.weights().get("dense.kernel").unwrap_or(&[f32::NAN])[0];
    let b = model.weights().get("dense.bias").unwrap_or(&[f32::NAN])[0];
    println!("learned y = {w:.4} x + {b:.4} (data drawn from y = 3 x + 2 + noise)");

    // X_test = np.random.rand(10, 1); y_pred = model.predict(X_test)
    let x_test: Vec<f32> = (0..10).map(|_| rng.uniform() as f32).collect();
    let y_pred = model.predict(&x_test, 32)?;
    println!("predictions:");
    for (x, p) in x_test.iter().zip(&y_pred) {
        println!("  x = {x:.4}: {p:.4} (3 x + 2 = {:.4})", 3.0 * x + 2.0);
    }
    Ok(())
}
