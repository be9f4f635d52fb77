//! The JIT backend trains exactly like the reference interpreter: same data, seeds and
//! options on both, then the weights, histories and evaluations agree to float rounding.
//! The runs switch between executables (full batch, partial last batch, evaluation), which
//! exercises the hand-over of params and optimizer state between them.

use gradlift::data::load_default;
use gradlift::nn::{
    Activation, Backend, CompileOptions, Conv2D, Dense, Dropout, FitOptions, Flatten, Loss,
    MaxPool2D, Metric, Model, Sequential, Targets,
};
use gradlift::optim::{Clip, Optimizer};

fn quiet(epochs: usize, batch_size: usize, seed: u64) -> FitOptions {
    FitOptions {
        epochs,
        batch_size,
        seed,
        verbose: false,
        ..FitOptions::default()
    }
}

fn max_weight_diff(a: &Model, b: &Model) -> f32 {
    let (wa, wb) = (a.weights(), b.weights());
    assert_eq!(wa.names(), wb.names());
    let mut worst = 0.0f32;
    for name in wa.names() {
        for (x, y) in wa.get(name).unwrap().iter().zip(wb.get(name).unwrap()) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// Trains `model()` on both backends through fit, evaluate, fit, and compares.
fn compare(model: impl Fn() -> Sequential, options: CompileOptions, n: usize, tol: f32) {
    let (train, test) = load_default().unwrap();
    let (x, y) = (&train.images()[..n * 784], &train.labels[..n]);
    let run = |backend| {
        let mut m = model().compile(options.clone().backend(backend)).unwrap();
        let h1 = m.fit(x, Targets::Classes(y), &quiet(2, 32, 7)).unwrap();
        let e = m
            .evaluate(
                &test.images()[..784 * 50],
                Targets::Classes(&test.labels[..50]),
                20,
            )
            .unwrap();
        let h2 = m.fit(x, Targets::Classes(y), &quiet(1, 32, 8)).unwrap();
        (m, h1, e, h2)
    };
    let (jit, h1j, ej, h2j) = run(Backend::Jit);
    let (interp, h1i, ei, h2i) = run(Backend::Interpreter);
    let diff = max_weight_diff(&jit, &interp);
    assert!(diff <= tol, "weights differ by {diff}");
    // Adam's step counter went through every step on both (3 epochs of ceil(n / 32) batches).
    if let Some(t) = jit.weights().get("optimizer.step") {
        assert_eq!(t, &[(3 * n.div_ceil(32)) as f32]);
        assert_eq!(interp.weights().get("optimizer.step").unwrap(), t);
    }
    for (a, b) in [(&h1j, &h1i), (&h2j, &h2i)] {
        for (k, v) in &a.history {
            for (x, y) in v.iter().zip(b.get(k)) {
                assert!((x - y).abs() < 1e-3, "{k}: {x} vs {y}");
            }
        }
    }
    assert!((ej.loss - ei.loss).abs() < 1e-3, "{ej:?} vs {ei:?}");
}

#[test]
fn mlp_with_dropout_and_momentum() {
    compare(
        || {
            Sequential::new([784])
                .seed(5)
                .layer(Dense::new(24).activation(Activation::Relu))
                .layer(Dropout::new(0.3))
                .layer(Dense::new(10).activation(Activation::Softmax))
        },
        CompileOptions::new(
            Optimizer::nesterov(0.9),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        )
        .clip(Clip::GlobalNorm(1.0)),
        100, // 32, 32, 32 and a partial batch of 4
        1e-5,
    );
}

#[test]
fn cnn_with_adam() {
    compare(
        || {
            Sequential::new([28, 28, 1])
                .seed(6)
                .layer(Conv2D::new(4, [3, 3]).activation(Activation::Relu))
                .layer(MaxPool2D::new([2, 2]))
                .layer(Flatten::new())
                .layer(Dense::new(10).activation(Activation::Softmax))
        },
        CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ),
        70, // 32, 32 and 6
        1e-4,
    );
}

/// The optimizers beside SGD and Adam, and a schedule computed in the step (no learning-rate
/// input on either backend).
#[test]
fn mlp_with_each_new_optimizer_and_a_schedule() {
    use gradlift::optim::Schedule;
    for optimizer in [
        Optimizer::rmsprop().with_momentum(0.5).with_centered(true),
        Optimizer::adagrad(),
        Optimizer::adamw().with_schedule(Schedule::piecewise_constant_decay(
            &[2, 5],
            &[0.01, 0.005, 0.001],
        )),
        Optimizer::momentum(0.9).with_schedule(Schedule::exponential_decay(0.1, 4, 0.5, false)),
        Optimizer::adam().with_schedule(Schedule::cosine_decay(0.01, 5, 0.0)),
    ] {
        compare(
            || {
                Sequential::new([784])
                    .seed(5)
                    .layer(Dense::new(16).activation(Activation::Relu))
                    .layer(Dense::new(10).activation(Activation::Softmax))
            },
            CompileOptions::new(
                optimizer,
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                &[Metric::Accuracy],
            ),
            70, // 32, 32 and 6
            1e-4,
        );
    }
}
