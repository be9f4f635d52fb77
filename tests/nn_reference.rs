//! The two Keras programs of the overview (section 4), reproduced natively: linear regression
//! with SGD on `y = 3x + 2 + noise`, and the MNIST CNN (Conv2D 32 3x3 relu, MaxPooling 2x2,
//! Flatten, Dense 128 relu, Dense 10 softmax; Adam, sparse categorical cross-entropy,
//! accuracy, batch 64). The CNN runs one epoch on the shipped subset here; the full program
//! (5 epochs on the 60,000 images) is the ignored acceptance test in `tests/train_full_mnist.rs`.

use gradlift::data::{load_default, Dataset};
use gradlift::init::Rng;
use gradlift::nn::{
    Activation, CompileOptions, Conv2D, Dense, FitOptions, Flatten, Loss, MaxPool2D, Metric,
    Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::time::Instant;

#[test]
fn overview_linear_regression() {
    // X = rand(100, 1); y = 3X + 2 + 0.5 randn; Dense(1) linear; compile('sgd', 'mse');
    // fit(epochs=100) with Keras' defaults (learning rate 0.01, batch 32, shuffled).
    let mut r = Rng::new(42);
    let x: Vec<f32> = (0..100).map(|_| r.uniform() as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .map(|&v| 3.0 * v + 2.0 + 0.5 * r.normal() as f32)
        .collect();
    let mut model = Sequential::new([1])
        .layer(Dense::new(1).activation(Activation::Linear))
        .compile(CompileOptions::new(
            Optimizer::sgd(),
            Loss::from_name("mean_squared_error").unwrap(),
            &[],
        ))
        .unwrap();
    let h = model
        .fit(
            &x,
            Targets::Values(&y),
            &FitOptions {
                epochs: 100,
                verbose: false,
                ..FitOptions::default()
            },
        )
        .unwrap();
    let loss = h.get("loss");
    // Starting near 0, the first epoch's loss is about E[y^2] ~ 13; the noise floor is 0.25.
    assert!(loss[0] > 2.0, "{loss:?}");
    assert!(loss[99] < 0.75 && loss[99] < loss[0] / 4.0, "{loss:?}");
    // Keras' default rate is too small for 400 steps to reach the line (the slow direction
    // of this problem needs about 800): predictions are near it in the middle of the data.
    let x_test: Vec<f32> = (0..10).map(|_| r.uniform() as f32).collect();
    let p = model.predict(&x_test, 32).unwrap();
    for (&xt, &pt) in x_test.iter().zip(&p) {
        assert!((pt - (3.0 * xt + 2.0)).abs() < 1.0, "predict({xt}) = {pt}");
    }
}

fn reference_cnn() -> gradlift::nn::Model {
    Sequential::new([28, 28, 1])
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
        .unwrap()
}

fn train_and_evaluate(train: &Dataset, test: &Dataset, epochs: usize) -> f64 {
    let mut model = reference_cnn();
    let t = Instant::now();
    let h = model
        .fit(
            &train.images(),
            Targets::Classes(&train.labels),
            &FitOptions {
                epochs,
                batch_size: 64,
                verbose: false,
                ..FitOptions::default()
            },
        )
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let e = model
        .evaluate(&test.images(), Targets::Classes(&test.labels), 64)
        .unwrap();
    eprintln!(
        "{epochs} epoch(s) on {} images: {secs:.2} s ({:.0} images/s); history {:?}; test {e:?}",
        train.n,
        (epochs * train.n) as f64 / secs,
        h.history
    );
    e.metric("accuracy").unwrap()
}

#[test]
fn overview_cnn_one_epoch_on_the_subset() {
    let (train, test) = load_default().unwrap();
    let acc = train_and_evaluate(&train, &test, 1);
    assert!(acc > 0.9, "test accuracy {acc}");
}
