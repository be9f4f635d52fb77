//! The `BatchNorm` layer (Keras `BatchNormalization`, axis -1, momentum 0.99, epsilon 1e-3):
//! one training step and inference against Keras' formulas computed here in f64 (outputs and
//! the updated moving statistics), the same through a compiled `Model` (fit, then predict
//! with the moving statistics), its gradient against central differences, and a save/load
//! round trip of the moving statistics.

mod common;

use common::fd::{fd_check, Case};
use gradlift::init::Rng;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{
    BatchNorm, CompileOptions, Dense, FitOptions, GraphOptions, Loss, Model, Sequential, Targets,
};
use gradlift::optim::Optimizer;
use std::path::PathBuf;

const EPS: f64 = 1e-3;
const MOMENTUM: f64 = 0.99;

/// BatchNorm then Dense(1) over `f` features, Adam and mean squared error.
fn bn_then_dense(f: usize) -> Model {
    Sequential::new([f])
        .layer(BatchNorm::new())
        .layer(Dense::new(1))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::MeanSquaredError,
            &[],
        ))
        .unwrap()
}

fn random(r: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * r.uniform()).collect()
}

/// Keras' training-mode batch normalization of `x` (`rows` x `f`, every axis but the last
/// flattened into rows), in f64: the outputs, and the batch mean and (biased) variance.
fn reference_train(
    x: &[f64],
    f: usize,
    gamma: &[f64],
    beta: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / f;
    let mut mean = vec![0.0; f];
    let mut var = vec![0.0; f];
    for k in 0..f {
        mean[k] = (0..rows).map(|r| x[r * f + k]).sum::<f64>() / rows as f64;
        var[k] = (0..rows)
            .map(|r| (x[r * f + k] - mean[k]).powi(2))
            .sum::<f64>()
            / rows as f64;
    }
    (reference_infer(x, f, gamma, beta, &mean, &var), mean, var)
}

/// Keras' inference-mode batch normalization with the given statistics.
fn reference_infer(
    x: &[f64],
    f: usize,
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    var: &[f64],
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let k = i % f;
            (v - mean[k]) / (var[k] + EPS).sqrt() * gamma[k] + beta[k]
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, expected {w}"
        );
    }
}

/// One training step (interpreter, f64) on per-example shape `[2, 3]` (statistics over the
/// batch and the first axis), then inference with other moving statistics.
#[test]
fn training_step_and_inference_match_keras_formulas() {
    let (batch, t, f) = (4, 2, 3);
    let m = Sequential::new([t, f]).layer(BatchNorm::new());
    let mut rng = Rng::new(7);
    let x = random(&mut rng, batch * t * f, -3.0, 5.0);
    let gamma = random(&mut rng, f, 0.5, 1.5);
    let beta = random(&mut rng, f, -1.0, 1.0);
    let mm0 = random(&mut rng, f, -0.5, 0.5);
    let mv0 = random(&mut rng, f, 0.5, 2.0);
    let feeds = |mm: &[f64], mv: &[f64]| {
        vec![
            ("x", Array::new(vec![batch, t, f], x.clone()).unwrap()),
            (
                "batch_normalization.gamma",
                Array::new(vec![f], gamma.clone()).unwrap(),
            ),
            (
                "batch_normalization.beta",
                Array::new(vec![f], beta.clone()).unwrap(),
            ),
            (
                "batch_normalization.moving_mean",
                Array::new(vec![f], mm.to_vec()).unwrap(),
            ),
            (
                "batch_normalization.moving_variance",
                Array::new(vec![f], mv.to_vec()).unwrap(),
            ),
        ]
    };
    // training: batch statistics, and the moving statistics' updates
    let mg = m
        .build_graph(&GraphOptions::train(batch, Loss::MeanSquaredError, &[]))
        .unwrap();
    let g = &mg.graph;
    let mut fx = feeds(&mm0, &mv0);
    fx.push((
        "y",
        Array::new(vec![batch, t, f], vec![0.0; batch * t * f]).unwrap(),
    ));
    let v = eval_named(g, &fx).unwrap();
    let (want, mean, var) = reference_train(&x, f, &gamma, &beta);
    assert_close(
        &v.get(mg.predictions).unwrap().data,
        &want,
        1e-12,
        "train output",
    );
    assert_eq!(g.updates().len(), 2);
    for u in g.updates() {
        let name = g[u.target].name.clone().unwrap();
        let (old, batch_stat) = if name.ends_with("moving_mean") {
            (&mm0, &mean)
        } else {
            assert!(name.ends_with("moving_variance"), "{name}");
            (&mv0, &var)
        };
        let want: Vec<f64> = old
            .iter()
            .zip(batch_stat)
            .map(|(o, b)| o * MOMENTUM + b * (1.0 - MOMENTUM))
            .collect();
        assert_close(&v.get(u.value).unwrap().data, &want, 1e-12, &name);
    }
    // inference: the moving statistics, no updates
    let pg = m.build_graph(&GraphOptions::predict(batch)).unwrap().graph;
    assert!(pg.updates().is_empty());
    let v = eval_named(&pg, &feeds(&mm0, &mv0)).unwrap();
    let want = reference_infer(&x, f, &gamma, &beta, &mm0, &mv0);
    assert_close(
        &v.output(&pg, "predictions").unwrap().data,
        &want,
        1e-12,
        "inference",
    );
}

/// The compiled model: one step of `fit` (a whole batch, learning rate 0, so gamma and
/// beta stay) moves the moving statistics by Keras' rule, and `predict` then normalizes
/// with them.
#[test]
fn fit_updates_the_moving_statistics_and_predict_uses_them() {
    let (n, f) = (8, 3);
    let mut rng = Rng::new(3);
    let x = random(&mut rng, n * f, -2.0, 6.0);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let xr: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    let y = vec![0.0f32; n * f];
    let mut model = Sequential::new([f])
        .layer(BatchNorm::new())
        .compile(
            CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[]).learning_rate(0.0),
        )
        .unwrap();
    let w = model.weights();
    assert_eq!(w.get("batch_normalization.moving_mean").unwrap(), &[0.0; 3]);
    assert_eq!(
        w.get("batch_normalization.moving_variance").unwrap(),
        &[1.0; 3]
    );
    let opts = FitOptions {
        epochs: 1,
        batch_size: n,
        shuffle: false,
        verbose: false,
        ..FitOptions::default()
    };
    model.fit(&x32, Targets::Values(&y), &opts).unwrap();
    let (_, mean, var) = reference_train(&xr, f, &[1.0; 3], &[0.0; 3]);
    let mm: Vec<f64> = mean.iter().map(|m| m * (1.0 - MOMENTUM)).collect();
    let mv: Vec<f64> = var
        .iter()
        .map(|v| MOMENTUM + v * (1.0 - MOMENTUM))
        .collect();
    let got = |name: &str| -> Vec<f64> {
        model
            .weights()
            .get(name)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    assert_close(
        &got("batch_normalization.moving_mean"),
        &mm,
        1e-5,
        "moving mean",
    );
    assert_close(
        &got("batch_normalization.moving_variance"),
        &mv,
        1e-5,
        "moving variance",
    );
    let p: Vec<f64> = model
        .predict(&x32, 4)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let want = reference_infer(&xr, f, &[1.0; 3], &[0.0; 3], &mm, &mv);
    assert_close(&p, &want, 1e-5, "predict with the moving statistics");
    // the training output used the batch statistics: far from the inference output
    let (train_out, _, _) = reference_train(&xr, f, &[1.0; 3], &[0.0; 3]);
    assert!(train_out
        .iter()
        .zip(&want)
        .any(|(a, b)| (a - b).abs() > 0.5));
}

/// Dense -> BatchNorm -> Dense, mean squared error in training mode: the gradient of every
/// param (through the batch mean and variance) against central differences.
#[test]
fn gradient_matches_central_differences() {
    let m = Sequential::new([3])
        .layer(Dense::new(4))
        .layer(BatchNorm::new())
        .layer(Dense::new(1))
        .seed(2);
    let mg = m
        .build_graph(&GraphOptions::train(5, Loss::MeanSquaredError, &[]))
        .unwrap();
    let mut c = Case::new("batchnorm");
    c.g = mg.graph;
    c.loss = mg.loss.unwrap();
    c.wrt = mg.params.clone();
    let mut rng = Rng::new(4);
    c.feeds.insert(
        mg.x,
        Array::new(vec![5, 3], random(&mut rng, 15, -2.0, 2.0)).unwrap(),
    );
    c.feeds.insert(
        mg.y.unwrap(),
        Array::new(vec![5, 1], random(&mut rng, 5, -1.0, 1.0)).unwrap(),
    );
    let r = fd_check(&c, 1000, &mut rng).unwrap();
    // dense kernel 12 + bias 4, gamma 4 + beta 4, dense_1 kernel 4 + bias 1
    assert_eq!(r.checked, 29);
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradlift-nn-bn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `save` writes the moving statistics with the params and optimizer state; `load` into a
/// fresh model restores them, so its predictions are the trained model's bit for bit.
#[test]
fn save_and_load_round_trip_the_moving_statistics() {
    let (n, f) = (12, 2);
    let mut rng = Rng::new(5);
    let x: Vec<f32> = random(&mut rng, n * f, -1.0, 3.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let y: Vec<f32> = x.chunks(f).map(|r| r[0] - r[1]).collect();
    let build = || bn_then_dense(f);
    let mut model = build();
    let opts = FitOptions {
        epochs: 3,
        batch_size: 4,
        verbose: false,
        ..FitOptions::default()
    };
    model.fit(&x, Targets::Values(&y), &opts).unwrap();
    let mm = model
        .weights()
        .get("batch_normalization.moving_mean")
        .unwrap()
        .to_vec();
    assert!(mm.iter().all(|&v| v != 0.0), "trained moving mean {mm:?}");
    let path = scratch("bn.safetensors");
    model.save(&path).unwrap();
    let want = model.predict(&x, 5).unwrap();
    let mut fresh = build();
    assert_ne!(fresh.predict(&x, 5).unwrap(), want);
    fresh.load(&path).unwrap();
    for name in [
        "batch_normalization.moving_mean",
        "batch_normalization.moving_variance",
    ] {
        assert_eq!(
            fresh.weights().get(name),
            model.weights().get(name),
            "{name}"
        );
    }
    assert_eq!(fresh.predict(&x, 5).unwrap(), want);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn summary_counts_the_moving_statistics_as_non_trainable_and_errors_name_the_layer() {
    let m = Sequential::new([4]).layer(BatchNorm::new());
    let s = m.summary().unwrap();
    assert!(s.contains("Total params: 16"), "{s}");
    assert!(s.contains("Trainable params: 8"), "{s}");
    assert!(s.contains("Non-trainable params: 8"), "{s}");
    assert_eq!(m.param_count().unwrap(), 8);
    for (layer, what) in [
        (BatchNorm::new().epsilon(0.0), "epsilon"),
        (BatchNorm::new().momentum(1.5), "momentum"),
    ] {
        let e = Sequential::new([4])
            .layer(layer)
            .build_graph(&GraphOptions::predict(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(what) && e.contains("(BatchNormalization)"),
            "{e}"
        );
    }
    let g = Sequential::new([4])
        .layer(BatchNorm::new().center(false).scale(false))
        .build_graph(&GraphOptions::predict(1))
        .unwrap()
        .graph;
    assert!(g.params().is_empty());
    assert_eq!(g.states().len(), 2);
}

/// `save_weights` writes the moving statistics with the params (Keras' `save_weights` keeps
/// non-trainable weights), not the optimizer state; `load_weights` restores them.
#[test]
fn save_weights_keeps_the_moving_statistics() {
    let (n, f) = (8, 2);
    let mut rng = Rng::new(6);
    let x: Vec<f32> = random(&mut rng, n * f, 0.0, 4.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let y: Vec<f32> = x.chunks(f).map(|r| r[0] + r[1]).collect();
    let build = || bn_then_dense(f);
    let mut model = build();
    let opts = FitOptions {
        epochs: 2,
        batch_size: 4,
        verbose: false,
        ..FitOptions::default()
    };
    model.fit(&x, Targets::Values(&y), &opts).unwrap();
    let path = scratch("bn_weights.safetensors");
    model.save_weights(&path).unwrap();
    let names: Vec<String> = gradlift::checkpoint::load(&path)
        .unwrap()
        .tensors
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "batch_normalization.beta",
            "batch_normalization.gamma",
            "batch_normalization.moving_mean",
            "batch_normalization.moving_variance",
            "dense.bias",
            "dense.kernel",
        ]
    );
    let mut fresh = build();
    fresh.load_weights(&path).unwrap();
    assert_eq!(
        fresh.weights().get("batch_normalization.moving_variance"),
        model.weights().get("batch_normalization.moving_variance")
    );
    assert_eq!(fresh.predict(&x, 8).unwrap(), model.predict(&x, 8).unwrap());
    let _ = std::fs::remove_file(&path);
}

/// A training step with batch statistics is compiled whole (shards would each see other
/// statistics), and its outputs, param updates and moving-statistics updates equal the
/// interpreter's, before and after the pass pipeline.
#[test]
fn training_step_is_whole_and_matches_the_interpreter() {
    use gradlift::step::{compile_training_step, StepOptions};
    let m = Sequential::new([3])
        .layer(Dense::new(4))
        .layer(BatchNorm::new())
        .layer(Dense::new(2));
    let g = m
        .build_graph(&GraphOptions::train(8, Loss::MeanSquaredError, &[]))
        .unwrap()
        .graph;
    let opts = StepOptions {
        shards: Some(2),
        ..StepOptions::default()
    };
    let (_, report) = compile_training_step(&g, "loss", &Optimizer::sgd(), None, 8, &opts).unwrap();
    let why = report.not_split.unwrap_or_default();
    assert!(why.contains("%batch_normalization.moving_"), "{why}");
    assert_eq!(report.shards, 1);
    common::sgd_step_matches("batch norm sgd step", g, 5);
}
