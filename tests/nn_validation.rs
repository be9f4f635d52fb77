//! `fit` with validation: `validation_split` holds out the last examples (never trained on),
//! `fit_with_validation` evaluates given data; either logs `val_loss` and `val_<metric>` once
//! per epoch, equal to what `evaluate` reports on the same data.

use gradlift::init::Rng;
use gradlift::nn::{
    Activation, CompileOptions, Dense, FitOptions, Loss, Metric, Model, Sequential, Targets,
};
use gradlift::optim::Optimizer;

fn quiet(epochs: usize, batch_size: usize) -> FitOptions {
    FitOptions {
        epochs,
        batch_size,
        verbose: false,
        ..FitOptions::default()
    }
}

fn line_model() -> Model {
    Sequential::new([1])
        .layer(Dense::new(1))
        .compile(
            CompileOptions::new(
                Optimizer::sgd(),
                Loss::MeanSquaredError,
                &[Metric::MeanAbsoluteError],
            )
            .learning_rate(0.3),
        )
        .unwrap()
}

fn kernel_and_bias(m: &Model) -> (f64, f64) {
    let w = m.weights().get("dense.kernel").unwrap()[0] as f64;
    let b = m.weights().get("dense.bias").unwrap()[0] as f64;
    (w, b)
}

#[test]
fn validation_split_holds_out_the_last_examples() {
    // First half on y = 2x + 1, second half on y = -2x - 1: trained on everything, the line
    // would be near y = 0; trained on the first half only, it is y = 2x + 1.
    let mut r = Rng::new(3);
    let x: Vec<f32> = (0..64).map(|_| r.uniform() as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if i < 32 {
                2.0 * v + 1.0
            } else {
                -2.0 * v - 1.0
            }
        })
        .collect();
    let mut m = line_model();
    let opts = FitOptions {
        validation_split: 0.5,
        ..quiet(150, 8)
    };
    let h = m.fit(&x, Targets::Values(&y), &opts).unwrap();
    let (w, b) = kernel_and_bias(&m);
    assert!(
        (w - 2.0).abs() < 0.05 && (b - 1.0).abs() < 0.05,
        "w={w} b={b}"
    );
    for key in ["loss", "mae", "val_loss", "val_mae", "lr"] {
        assert_eq!(h.get(key).len(), 150, "{key}: {:?}", h.history.keys());
    }
    // The held-out half is far off the learned line, the trained half on it.
    let last = |k: &str| *h.get(k).last().unwrap();
    assert!(last("loss") < 1e-3, "{}", last("loss"));
    assert!(last("val_loss") > 1.0, "{}", last("val_loss"));
    // val_loss is what evaluate reports on the held-out examples.
    let e = m.evaluate(&x[32..], Targets::Values(&y[32..]), 8).unwrap();
    assert_eq!(e.loss.to_bits(), last("val_loss").to_bits());
    assert_eq!(
        e.metric("mae").unwrap().to_bits(),
        last("val_mae").to_bits()
    );
}

fn classifier() -> Model {
    Sequential::new([4])
        .seed(5)
        .layer(Dense::new(8).activation(Activation::Relu))
        .layer(Dense::new(3).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap()
}

fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut r = Rng::new(seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..n {
        let c = r.below(3) as usize;
        for j in 0..4 {
            let centre = if j == c { 2.0 } else { 0.0 };
            x.push(centre + r.normal() as f32 * 0.5);
        }
        y.push(c as i32);
    }
    (x, y)
}

#[test]
fn validation_data_is_evaluated_each_epoch_and_not_trained_on() {
    let (x, y) = blobs(40, 1);
    let (vx, vy) = blobs(13, 2); // batches of 8 and a partial one of 5
    let opts = quiet(3, 8);
    let mut m = classifier();
    let h = m
        .fit_with_validation(
            &x,
            Targets::Classes(&y),
            Some((&vx, Targets::Classes(&vy))),
            &opts,
        )
        .unwrap();
    let keys: Vec<&str> = h.history.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]);
    assert!(h.history.values().all(|v| v.len() == 3), "{h:?}");
    assert!(h
        .get("val_accuracy")
        .iter()
        .all(|a| (0.0..=1.0).contains(a)));
    // Validation leaves training alone: same weights as a plain fit.
    let mut plain = classifier();
    let hp = plain.fit(&x, Targets::Classes(&y), &opts).unwrap();
    assert_eq!(hp.get("loss"), h.get("loss"));
    for name in m.weights().names() {
        let bits = |w: &[f32]| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(m.weights().get(name).unwrap()),
            bits(plain.weights().get(name).unwrap()),
            "{name}"
        );
    }
    // The last val_loss is evaluate on the same data after training.
    let e = m.evaluate(&vx, Targets::Classes(&vy), 8).unwrap();
    assert_eq!(e.loss.to_bits(), h.get("val_loss")[2].to_bits());
    assert_eq!(
        e.metric("accuracy").unwrap().to_bits(),
        h.get("val_accuracy")[2].to_bits()
    );
    // Without validation nothing val_ is logged.
    assert!(hp.history.keys().all(|k| !k.starts_with("val_")));
}

#[test]
fn bad_validation_settings_are_clear_errors() {
    let (x, y) = blobs(10, 1);
    let mut m = classifier();
    let before = m.weights().clone();
    let fit = |m: &mut Model, split: f64| {
        let opts = FitOptions {
            validation_split: split,
            ..quiet(1, 4)
        };
        m.fit(&x, Targets::Classes(&y), &opts)
            .unwrap_err()
            .to_string()
    };
    let e = fit(&mut m, 1.0);
    assert!(e.contains("validation_split must be in [0, 1)"), "{e}");
    let e = fit(&mut m, -0.1);
    assert!(e.contains("validation_split"), "{e}");
    let e = fit(&mut m, 0.95); // 10 examples: none left to train
    assert!(e.contains("leaves 0 to train and 10 to validate"), "{e}");
    let e = m
        .fit_with_validation(
            &x,
            Targets::Classes(&y),
            Some((&x[..7], Targets::Classes(&y[..1]))),
            &quiet(1, 4),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation data: x has 7 values"), "{e}");
    let e = m
        .fit_with_validation(
            &x,
            Targets::Classes(&y),
            Some((&x[..8], Targets::Classes(&y[..1]))),
            &quiet(1, 4),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("validation data") && e.contains("expected 2"),
        "{e}"
    );
    assert_eq!(m.weights(), &before, "nothing trained");
}
