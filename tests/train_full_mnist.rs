//! The acceptance check of the overview's CNN (section 4.2) on the full MNIST: Conv2D(32, 3x3,
//! relu), MaxPool 2x2, Flatten, Dense(128, relu), Dense(10, softmax), Adam (lr 0.001), sparse
//! categorical cross-entropy, 5 epochs of batches of 64 over the 60,000 training images must
//! reach at least 98.5% accuracy on the 10,000 test images.
//!
//! Ignored by default (it trains for several minutes per epoch on a small machine). It reads
//! `../shared/data/mnist` relative to the crate root (or `$MNIST_DIR`); without the four IDX
//! files there it is skipped, saying so (`skipped: <reason>` on stderr). Run it with
//!
//! ```sh
//! cargo test --release --test train_full_mnist -- --ignored --nocapture
//! ```

mod optional_data;

use gradlift::data::load_mnist;
use gradlift::nn::{
    Activation, CompileOptions, Conv2D, Dense, FitOptions, Flatten, Loss, MaxPool2D, Metric,
    Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::time::Instant;

#[test]
#[ignore = "trains the CNN for 5 epochs on the full MNIST; needs ../shared/data/mnist"]
fn cnn_reaches_98_5_percent_on_the_full_test_set() {
    let dir = match optional_data::full_mnist() {
        Ok(dir) => dir,
        Err(reason) => {
            return optional_data::skip("cnn_reaches_98_5_percent_on_the_full_test_set", &reason)
        }
    };
    // the files are there: an unreadable one is a real failure
    let (train, test) = load_mnist(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((train.n, test.n), (60_000, 10_000));
    let mut model = Sequential::new([28, 28, 1])
        .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
        .layer(MaxPool2D::new([2, 2]))
        .layer(Flatten::new())
        .layer(Dense::new(128).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap();
    let t = Instant::now();
    let h = model
        .fit(
            &train.images(),
            Targets::Classes(&train.labels),
            &FitOptions {
                epochs: 5,
                batch_size: 64,
                verbose: false,
                ..FitOptions::default()
            },
        )
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let ev = model
        .evaluate(&test.images(), Targets::Classes(&test.labels), 500)
        .unwrap();
    let acc = ev.metric("accuracy").unwrap();
    eprintln!(
        "training accuracy per epoch {:?}; test loss {:.4}, accuracy {acc:.4}; {:.1} s per epoch",
        h.get("accuracy"),
        ev.loss,
        seconds / 5.0
    );
    assert!(acc >= 0.985, "test accuracy {acc} < 0.985");
}
