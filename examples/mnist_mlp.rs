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

mod common;

use common::Example;
use gradlift::nn::{Activation, Dense, Flatten, Sequential};
use std::process::ExitCode;

fn main() -> ExitCode {
    let example = Example {
        name: "mnist_mlp",
        about: "Train an MLP on MNIST",
        detailed: false,
        batch_size: "64",
    };
    common::main(&example, |a, _train| {
        Sequential::new([28, 28])
            .seed(a.seed)
            .layer(Flatten::new())
            .layer(Dense::new(128).activation(Activation::Relu))
            .layer(Dense::new(10).activation(Activation::Softmax))
    })
}
