//! An LSTM on MNIST that reads each image row by row: LSTM(128) over the 28 rows (28 time
//! steps of 28 pixels), then Dense(10, softmax) on the last state; Adam, sparse categorical
//! cross-entropy, accuracy; 5 epochs of batches of 32, then `evaluate`. The recurrence is a
//! `scan` over the rows: one loop in the compiled step, whose gradient is a reverse loop, so
//! the compile time does not depend on the number of rows.
//!
//! In: MNIST, the subset shipped in `data/mnist-subset/` by default, or the four standard IDX
//! files (plain or gzipped) of `--data DIR`. Out: the model summary, the compile time of the
//! training step, one line per epoch (mean loss and accuracy, seconds), the test loss and
//! accuracy (on the full MNIST after 5 epochs: 98.30% and 98.41% with seeds 0 and 1; with
//! batches of 64, 97.6-98.4% over three seeds).
//!
//! ```sh
//! cargo run --release --example mnist_lstm
//! cargo run --release --example mnist_lstm -- --data ../shared/data/mnist
//! ```

mod common;

use common::Example;
use gradlift::nn::{Activation, Dense, Sequential, LSTM};
use std::process::ExitCode;

fn main() -> ExitCode {
    let example = Example {
        name: "mnist_lstm",
        about: "Train an LSTM on MNIST rows",
        detailed: false,
        batch_size: "32",
    };
    common::main(&example, |a, train| {
        // One time step per image row: input [timesteps = rows, features = columns].
        Sequential::new([train.rows, train.cols])
            .seed(a.seed)
            .layer(LSTM::new(128))
            .layer(Dense::new(10).activation(Activation::Softmax))
    })
}
