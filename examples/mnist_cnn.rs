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

mod common;

use common::Example;
use gradlift::nn::{Activation, Conv2D, Dense, Flatten, MaxPool2D, Sequential};
use std::process::ExitCode;

fn main() -> ExitCode {
    let example = Example {
        name: "mnist_cnn",
        about: "Train the overview's MNIST CNN",
        detailed: true,
        batch_size: "64",
    };
    common::main(&example, |a, _train| {
        Sequential::new([28, 28, 1])
            .seed(a.seed)
            .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
            .layer(MaxPool2D::new([2, 2]))
            .layer(Flatten::new())
            .layer(Dense::new(128).activation(Activation::Relu))
            .layer(Dense::new(10).activation(Activation::Softmax))
    })
}
