//! The training loop end to end: linear regression reaches the least-squares fit, an MLP
//! learns the shipped MNIST subset, a small CNN trains, schedules set the learning rate, the
//! last partial batch is trained, and runs (shuffling, dropout) are reproducible by seed.

use gradlift::data::load_default;
use gradlift::init::Rng;
use gradlift::nn::{
    Activation, CompileOptions, Conv2D, Dense, Dropout, FitOptions, Flatten, Loss, MaxPool2D,
    Metric, Sequential, Targets,
};
use gradlift::optim::Optimizer;

/// The overview's data: `x ~ U[0,1)`, `y = 3x + 2 + 0.5 * N(0,1)`, 100 examples.
fn regression_data(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = Rng::new(seed);
    let x: Vec<f32> = (0..100).map(|_| r.uniform() as f32).collect();
    let y = x
        .iter()
        .map(|&x| 3.0 * x + 2.0 + 0.5 * r.normal() as f32)
        .collect();
    (x, y)
}

/// Ordinary least squares `y = w x + b` in f64.
fn least_squares(x: &[f32], y: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mx = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let my = y.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sxy: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - mx) * (b as f64 - my))
        .sum();
    let sxx: f64 = x.iter().map(|&a| (a as f64 - mx).powi(2)).sum();
    let w = sxy / sxx;
    (w, my - w * mx)
}

fn quiet(epochs: usize, batch_size: usize) -> FitOptions {
    FitOptions {
        epochs,
        batch_size,
        verbose: false,
        ..FitOptions::default()
    }
}

fn linear_model(lr: f64) -> gradlift::nn::Model {
    Sequential::new([1])
        .layer(Dense::new(1))
        .compile(
            CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[]).learning_rate(lr),
        )
        .unwrap()
}

/// [`linear_model`] with SGD's default rate and the `mae` metric.
fn linear_mae_model() -> gradlift::nn::Model {
    Sequential::new([1])
        .layer(Dense::new(1))
        .compile(CompileOptions::new(
            Optimizer::sgd(),
            Loss::MeanSquaredError,
            &[Metric::MeanAbsoluteError],
        ))
        .unwrap()
}

fn kernel_and_bias(m: &gradlift::nn::Model) -> (f64, f64) {
    let w = m.weights().get("dense.kernel").unwrap()[0] as f64;
    let b = m.weights().get("dense.bias").unwrap()[0] as f64;
    (w, b)
}

#[test]
fn linear_regression_recovers_the_line() {
    // The overview's program: SGD, mean squared error, 100 epochs of batches of 32.
    let (x, y) = regression_data(1);
    let mut model = linear_model(0.1);
    let h = model.fit(&x, Targets::Values(&y), &quiet(100, 32)).unwrap();
    let losses = h.get("loss");
    assert_eq!(losses.len(), 100);
    assert!(losses[99] < losses[0] / 2.0, "{losses:?}");
    let (w, b) = kernel_and_bias(&model);
    assert!(
        (w - 3.0).abs() < 0.5 && (b - 2.0).abs() < 0.3,
        "w = {w}, b = {b}"
    );
    let p = model.predict(&[0.0, 1.0], 8).unwrap();
    assert!((p[0] as f64 - b).abs() < 1e-5 && (p[1] as f64 - (w + b)).abs() < 1e-5);
}

#[test]
fn full_batch_gradient_descent_reaches_least_squares() {
    let (x, y) = regression_data(1);
    let (w_ls, b_ls) = least_squares(&x, &y);
    let mut model = linear_model(0.5);
    model
        .fit(&x, Targets::Values(&y), &quiet(300, 100))
        .unwrap();
    let (w, b) = kernel_and_bias(&model);
    assert!((w - w_ls).abs() < 1e-3, "w = {w}, least squares {w_ls}");
    assert!((b - b_ls).abs() < 1e-3, "b = {b}, least squares {b_ls}");
}

#[test]
fn mlp_learns_the_mnist_subset() {
    let (train, test) = load_default().unwrap();
    let train = train.slice(0, 2000);
    let mut model = Sequential::new([784])
        .seed(1)
        .layer(Dense::new(32).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap();
    let before = model
        .evaluate(&test.images(), Targets::Classes(&test.labels), 250)
        .unwrap();
    let h = model
        .fit(
            &train.images(),
            Targets::Classes(&train.labels),
            &quiet(3, 64),
        )
        .unwrap();
    let after = model
        .evaluate(&test.images(), Targets::Classes(&test.labels), 250)
        .unwrap();
    let acc = h.get("accuracy");
    assert!(acc[2] > acc[0], "{acc:?}");
    assert!(after.loss < before.loss / 2.0, "{before:?} -> {after:?}");
    let test_acc = after.metric("accuracy").unwrap();
    assert!(test_acc > 0.8, "test accuracy {test_acc}");
    // predict agrees with evaluate's accuracy.
    let p = model.predict(&test.images(), 128).unwrap();
    let correct = p
        .chunks(10)
        .zip(&test.labels)
        .filter(|(row, &l)| {
            let am = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            am as i32 == l
        })
        .count();
    assert!((correct as f64 / 1000.0 - test_acc).abs() < 1e-6);
}

#[test]
fn small_cnn_trains() {
    let (train, _) = load_default().unwrap();
    let train = train.slice(0, 256);
    let mut model = Sequential::new([28, 28, 1])
        .layer(Conv2D::new(4, [3, 3]).activation(Activation::Relu))
        .layer(MaxPool2D::new([2, 2]))
        .layer(Flatten::new())
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap();
    let h = model
        .fit(
            &train.images(),
            Targets::Classes(&train.labels),
            &quiet(3, 64),
        )
        .unwrap();
    let loss = h.get("loss");
    assert!(loss[2] < loss[0], "{loss:?}");
}

fn mnist_mlp(dropout: f64, seed: u64) -> gradlift::nn::Model {
    Sequential::new([784])
        .seed(seed)
        .layer(Dense::new(16).activation(Activation::Relu))
        .layer(Dropout::new(dropout))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::momentum(0.9),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap()
}

#[test]
fn runs_are_reproducible_and_the_last_partial_batch_trains() {
    let (train, _) = load_default().unwrap();
    let train = train.slice(0, 150); // batches of 64, 64 and 22
    let fit = |seed| {
        let mut m = mnist_mlp(0.25, 3);
        m.fit(
            &train.images(),
            Targets::Classes(&train.labels),
            &FitOptions {
                seed,
                ..quiet(2, 64)
            },
        )
        .unwrap();
        m
    };
    let (a, b, c) = (fit(9), fit(9), fit(10));
    assert_eq!(a.weights(), b.weights(), "same seeds, same weights");
    assert_ne!(a.weights(), c.weights(), "another shuffle and dropout seed");
    // One compiled training step per batch size: 64 and the last, partial batch of 22.
    let names: Vec<String> = a.compile_reports().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["sequential_train_22", "sequential_train_64"]);
    assert!(a.compile_reports().iter().all(|(_, r)| r.code_bytes > 0));
    // One example per epoch in a partial batch still moves the weights.
    let mut m = mnist_mlp(0.0, 3);
    let before = m.weights().get("dense.kernel").unwrap().to_vec();
    m.fit(
        &train.images()[..784],
        Targets::Classes(&train.labels[..1]),
        &quiet(1, 64),
    )
    .unwrap();
    assert_ne!(m.weights().get("dense.kernel").unwrap(), &before[..]);
}

#[test]
fn schedule_sets_the_learning_rate_per_epoch() {
    let (x, y) = regression_data(2);
    let mut model = linear_mae_model();
    let h = model
        .fit(
            &x,
            Targets::Values(&y),
            &FitOptions {
                schedule: Some(|epoch, lr| if epoch == 0 { lr } else { lr * 0.5 }),
                ..quiet(3, 50)
            },
        )
        .unwrap();
    assert_eq!(h.get("lr"), &[0.01, 0.005, 0.0025]);
    assert_eq!(h.get("mae").len(), 3);
    // Keras' History.epoch, and the CSV of Keras' CSVLogger: a header, a row per epoch
    assert_eq!(h.epoch, [0, 1, 2]);
    let csv = h.to_csv();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "epoch,loss,lr,mae");
    assert_eq!(rows.len(), 4);
    assert!(
        rows[2].starts_with("1,") && rows[2].contains(",0.005,"),
        "{csv}"
    );
    let json: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
    assert_eq!(
        json["history"]["lr"],
        serde_json::json!([0.01, 0.005, 0.0025])
    );
}

#[test]
fn training_step_graph_is_forward_gradient_and_update() {
    let mut model = linear_model(0.1);
    let g = model.train_graph(32).unwrap().clone();
    let text = gradlift::text::print(&g);
    insta::assert_snapshot!(text);
    // Every param is updated, the learning rate is an input, and the text parses back.
    assert_eq!(g.updates().len(), 2);
    assert!(g.find("lr").is_some());
    let back = gradlift::text::parse(&text, "step.ir").unwrap();
    assert_eq!(gradlift::text::print(&back), text);
}

#[test]
fn linear_regression_recovers_w_3_and_b_2_within_0_1() {
    // The overview's line and noise (y = 3x + 2 + 0.5 N(0,1)) with 10,000 points, so the
    // least-squares fit itself is within ~0.02 of (3, 2) (standard error 0.5 / sqrt(n var x)),
    // trained with minibatch SGD from zero knowledge of the answer.
    let mut r = Rng::new(7);
    let x: Vec<f32> = (0..10_000).map(|_| r.uniform() as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .map(|&x| 3.0 * x + 2.0 + 0.5 * r.normal() as f32)
        .collect();
    let mut model = linear_model(0.1);
    model.fit(&x, Targets::Values(&y), &quiet(10, 100)).unwrap();
    let (w, b) = kernel_and_bias(&model);
    assert!((w - 3.0).abs() < 0.1, "w = {w}");
    assert!((b - 2.0).abs() < 0.1, "b = {b}");
}

/// Keras' `EarlyStopping`: the wait counts epochs without an improvement of more than
/// `min_delta`, training stops when it reaches `patience` (never at the first epoch), a
/// stopped run can go back to the best epoch's params, and a monitored name the logs do not
/// have is an error naming the ones they have.
#[test]
fn early_stopping_follows_keras() {
    use gradlift::nn::EarlyStopping;
    let (x, y) = regression_data(3);
    let fit = |rule: EarlyStopping, epochs: usize| {
        let mut m = linear_model(0.05);
        let r = m.fit(
            &x,
            Targets::Values(&y),
            &FitOptions {
                early_stopping: Some(rule),
                ..quiet(epochs, 32)
            },
        );
        (m, r)
    };
    // a min_delta no loss change can reach: only the first epoch improves
    let never = |patience| EarlyStopping {
        monitor: "loss".into(),
        min_delta: 1e9,
        patience,
        ..EarlyStopping::default()
    };
    let (_, h) = fit(never(0), 10);
    assert_eq!(h.unwrap().epoch, [0, 1]);
    let (_, h) = fit(never(2), 10);
    assert_eq!(h.unwrap().epoch, [0, 1, 2]);
    // a falling loss with the default min_delta never stops
    let falling = EarlyStopping {
        monitor: "loss".into(),
        ..EarlyStopping::default()
    };
    let (_, h) = fit(falling.clone(), 5);
    assert_eq!(h.unwrap().epoch, [0, 1, 2, 3, 4]);
    // "larger is better" on a falling loss: epoch 0 stays the best; restored on stopping,
    // the params are those of one epoch of training, bit for bit
    let backwards = EarlyStopping {
        maximize: Some(true),
        restore_best_weights: true,
        patience: 1,
        ..falling
    };
    let (stopped, h) = fit(backwards, 10);
    assert_eq!(h.unwrap().epoch, [0, 1]);
    let mut one = linear_model(0.05);
    one.fit(&x, Targets::Values(&y), &quiet(1, 32)).unwrap();
    for name in ["dense.kernel", "dense.bias"] {
        assert_eq!(
            stopped.weights().get(name),
            one.weights().get(name),
            "{name}"
        );
    }
    // val_loss without validation data
    let (_, h) = fit(EarlyStopping::default(), 3);
    let e = h.unwrap_err().to_string();
    assert!(
        e.contains("early stopping monitors \"val_loss\"") && e.contains("they have loss"),
        "{e}"
    );
}

/// Keras' `ModelCheckpoint`: a file per epoch (`{epoch}` from 1) holding that epoch's params,
/// or, with `save_best_only`, only the epochs that improve the monitored log.
#[test]
fn model_checkpoint_saves_every_epoch_or_the_best() {
    use gradlift::nn::ModelCheckpoint;
    let d = std::env::temp_dir().join(format!("gradlift-nn-ckpt-cb-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let (x, y) = regression_data(4);
    let every = d.join("e{epoch}.safetensors");
    let mut m = linear_model(0.05);
    m.fit(
        &x,
        Targets::Values(&y),
        &FitOptions {
            checkpoint: Some(ModelCheckpoint {
                monitor: "loss".into(),
                ..ModelCheckpoint::new(every.to_str().unwrap())
            }),
            ..quiet(3, 32)
        },
    )
    .unwrap();
    for e in 1..=3 {
        assert!(d.join(format!("e{e}.safetensors")).exists(), "epoch {e}");
    }
    // the last file holds the trained params
    let mut last = linear_model(0.05);
    last.load(d.join("e3.safetensors")).unwrap();
    for name in ["dense.kernel", "dense.bias"] {
        assert_eq!(last.weights().get(name), m.weights().get(name), "{name}");
    }
    // best only, larger loss counted as better: only epoch 1 is ever the best
    let best = d.join("b{epoch}.safetensors");
    let mut m = linear_model(0.05);
    m.fit(
        &x,
        Targets::Values(&y),
        &FitOptions {
            checkpoint: Some(ModelCheckpoint {
                monitor: "loss".into(),
                save_best_only: true,
                maximize: Some(true),
                ..ModelCheckpoint::new(best.to_str().unwrap())
            }),
            ..quiet(3, 32)
        },
    )
    .unwrap();
    let saved: Vec<bool> = (1..=3)
        .map(|e| d.join(format!("b{e}.safetensors")).exists())
        .collect();
    assert_eq!(saved, [true, false, false]);
    std::fs::remove_dir_all(&d).ok();
}

/// `History::plot`: with validation data every panel has a training and a validation curve
/// (a marker per epoch each); an empty history or another extension is an error.
#[test]
fn history_plots_training_and_validation_curves() {
    let (x, y) = regression_data(5);
    let mut m = linear_mae_model();
    let h = m
        .fit(
            &x,
            Targets::Values(&y),
            &FitOptions {
                validation_split: 0.2,
                ..quiet(4, 16)
            },
        )
        .unwrap();
    let path = std::env::temp_dir().join(format!("gradlift-plot-{}.svg", std::process::id()));
    h.plot(&path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    // panels loss and mae, each with loss/val_loss or mae/val_mae: 2 x 2 curves of 4 epochs
    assert_eq!(svg.matches("<circle").count(), 2 * 2 * 4);
    for label in ["loss", "val_loss", "mae", "val_mae"] {
        assert!(svg.contains(&format!("\n{label}\n</text>")), "{label}");
    }
    let e = gradlift::nn::History::default().plot(&path).unwrap_err();
    assert!(e.contains("no epochs to plot"), "{e}");
    let e = h.plot(std::path::Path::new("p.png")).unwrap_err();
    assert!(e.contains("must end in .svg"), "{e}");
}
