//! A recurrent network on MNIST that reads each image row by row: SimpleRNN(64, tanh) over
//! the 28 rows (28 time steps of 28 pixels), then Dense(10, softmax) on the last state; Adam,
//! sparse categorical cross-entropy, accuracy; 5 epochs of batches of 64, then `evaluate`.
//! The recurrence is a `scan` over the 28 rows (the input projections of all rows are one
//! product before it), and the training step (backpropagation through time included) is one
//! compiled function.
//!
//! In: MNIST, the subset shipped in `data/mnist-subset/` by default, or the four standard IDX
//! files (plain or gzipped) of `--data DIR`. Out: the model summary, the compile time of the
//! training step, one line per epoch (mean loss and accuracy, seconds), the test loss and
//! accuracy.
//!
//! ```sh
//! cargo run --release --example mnist_rnn
//! cargo run --release --example mnist_rnn -- --data ../shared/data/mnist
//! ```

mod common;

use common::Example;
use gradlift::nn::{Activation, Dense, Sequential, SimpleRNN};
use std::process::ExitCode;

fn main() -> ExitCode {
    let example = Example {
        name: "mnist_rnn",
        about: "Train a SimpleRNN on MNIST rows",
        detailed: false,
        batch_size: "64",
    };
    common::main(&example, |a, train| {
        // One time step per image row: input [timesteps = rows, features = columns].
        Sequential::new([train.rows, train.cols])
            .seed(a.seed)
            .layer(SimpleRNN::new(64))
            .layer(Dense::new(10).activation(Activation::Softmax))
    })
}
