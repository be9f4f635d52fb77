//! The forward graphs of layers and the values of losses and metrics, evaluated by the
//! reference interpreter and compared with the formulas written out in f64: Dense, SimpleRNN,
//! the fused and the probability forms of every loss, and accuracy.

use gradlift::init::Rng;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{Activation, Dense, GraphOptions, Loss, Metric, Sequential, SimpleRNN};

fn random(r: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * r.uniform()).collect()
}

fn arr(shape: &[usize], v: &[f64]) -> Array<f64> {
    Array::new(shape.to_vec(), v.to_vec()).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn dense_forward_matches_the_formula() {
    let mut r = Rng::new(1);
    let (x, w, b) = (
        random(&mut r, 6, -1.0, 1.0),
        random(&mut r, 12, -1.0, 1.0),
        random(&mut r, 4, -1.0, 1.0),
    );
    let m = Sequential::new([3]).layer(Dense::new(4).activation(Activation::Tanh));
    let g = m.build_graph(&GraphOptions::predict(2)).unwrap().graph;
    let v = eval_named(
        &g,
        &[
            ("x", arr(&[2, 3], &x)),
            ("dense.kernel", arr(&[3, 4], &w)),
            ("dense.bias", arr(&[4], &b)),
        ],
    )
    .unwrap();
    let p = &v.output(&g, "predictions").unwrap().data;
    for i in 0..2 {
        for j in 0..4 {
            let z: f64 = (0..3).map(|k| x[i * 3 + k] * w[k * 4 + j]).sum::<f64>() + b[j];
            assert!(close(p[i * 4 + j], z.tanh(), 1e-12), "({i},{j})");
        }
    }
}

#[test]
fn simple_rnn_matches_the_recurrence() {
    let (n, t, f, u) = (2, 4, 3, 5);
    let mut r = Rng::new(2);
    let x = random(&mut r, n * t * f, -1.0, 1.0);
    let w = random(&mut r, f * u, -0.5, 0.5);
    let rk = random(&mut r, u * u, -0.5, 0.5);
    let b = random(&mut r, u, -0.5, 0.5);
    let m = Sequential::new([t, f]).layer(SimpleRNN::new(u));
    let g = m.build_graph(&GraphOptions::predict(n)).unwrap().graph;
    let v = eval_named(
        &g,
        &[
            ("x", arr(&[n, t, f], &x)),
            ("simple_rnn.kernel", arr(&[f, u], &w)),
            ("simple_rnn.recurrent_kernel", arr(&[u, u], &rk)),
            ("simple_rnn.bias", arr(&[u], &b)),
        ],
    )
    .unwrap();
    let p = &v.output(&g, "predictions").unwrap().data;
    for i in 0..n {
        let mut h = vec![0.0; u];
        for s in 0..t {
            h = (0..u)
                .map(|j| {
                    let xin: f64 = (0..f).map(|k| x[(i * t + s) * f + k] * w[k * u + j]).sum();
                    let rec: f64 = (0..u).map(|k| h[k] * rk[k * u + j]).sum();
                    (xin + rec + b[j]).tanh()
                })
                .collect();
        }
        for j in 0..u {
            assert!(close(p[i * u + j], h[j], 1e-12), "example {i} unit {j}");
        }
    }
}

/// Evaluates `loss` and `accuracy` of a one-layer model whose kernel is the identity and bias
/// zero, so that the pre-activation values are `x` itself.
fn loss_of(act: Activation, loss: Loss, metrics: &[Metric], x: &[f64], y: Array<f64>) -> Vec<f64> {
    let c = 3;
    let n = x.len() / c;
    let m = Sequential::new([c]).layer(Dense::new(c).activation(act));
    let g = m
        .build_graph(&GraphOptions::evaluate(n, loss, metrics))
        .unwrap()
        .graph;
    let mut eye = vec![0.0; c * c];
    for i in 0..c {
        eye[i * c + i] = 1.0;
    }
    let v = eval_named(
        &g,
        &[
            ("x", arr(&[n, c], x)),
            ("y", y),
            ("dense.kernel", arr(&[c, c], &eye)),
            ("dense.bias", arr(&[c], &[0.0; 3])),
        ],
    )
    .unwrap();
    g.outputs()
        .iter()
        .map(|o| v.output(&g, &o.name).unwrap().data[0])
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn categorical_losses_fused_and_from_probabilities() {
    let mut r = Rng::new(3);
    let z = random(&mut r, 12, -3.0, 3.0);
    let labels = [2.0, 0.0, 1.0, 1.0];
    let probs: Vec<f64> = z.chunks(3).flat_map(softmax).collect();
    let want: f64 = probs
        .chunks(3)
        .zip(&labels)
        .map(|(p, &l)| -p[l as usize].ln())
        .sum::<f64>()
        / 4.0;
    let correct = probs
        .chunks(3)
        .zip(&labels)
        .filter(|(p, &l)| (0..3).all(|k| p[k] <= p[l as usize]))
        .count() as f64
        / 4.0;
    let sparse = |from_logits| Loss::SparseCategoricalCrossentropy { from_logits };
    let y = || arr(&[4], &labels);
    let acc = [Metric::Accuracy];
    let fused = loss_of(Activation::Softmax, sparse(false), &acc, &z, y());
    let logits = loss_of(Activation::Linear, sparse(true), &acc, &z, y());
    let from_probs = loss_of(Activation::Linear, sparse(false), &acc, &probs, y());
    for got in [&fused, &logits, &from_probs] {
        assert!(close(got[0], want, 1e-9), "{got:?} vs {want}");
        assert_eq!(got[1], correct);
    }
    // Dense targets: one-hot rows give the same loss.
    let onehot: Vec<f64> = labels
        .iter()
        .flat_map(|&l| (0..3).map(move |k| if k == l as usize { 1.0 } else { 0.0 }))
        .collect();
    let cat = |from_logits| Loss::CategoricalCrossentropy { from_logits };
    let y = || arr(&[4, 3], &onehot);
    let fused = loss_of(Activation::Softmax, cat(false), &acc, &z, y());
    let logits = loss_of(Activation::Linear, cat(true), &acc, &z, y());
    let from_probs = loss_of(Activation::Linear, cat(false), &acc, &probs, y());
    for got in [&fused, &logits, &from_probs] {
        assert!(close(got[0], want, 1e-9), "{got:?} vs {want}");
        assert_eq!(got[1], correct);
    }
}

#[test]
fn binary_and_squared_losses() {
    let mut r = Rng::new(4);
    let z = random(&mut r, 12, -4.0, 4.0);
    let t: Vec<f64> = (0..12).map(|i| (i % 2) as f64).collect();
    let sig: Vec<f64> = z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let want: f64 = sig
        .iter()
        .zip(&t)
        .map(|(p, y)| -(y * p.ln() + (1.0 - y) * (1.0 - p).ln()))
        .sum::<f64>()
        / 12.0;
    let acc_want = sig
        .iter()
        .zip(&t)
        .filter(|(p, &y)| (**p > 0.5) == (y == 1.0))
        .count() as f64
        / 12.0;
    let bce = |from_logits| Loss::BinaryCrossentropy { from_logits };
    let y = || arr(&[4, 3], &t);
    let acc = [Metric::Accuracy];
    let fused = loss_of(Activation::Sigmoid, bce(false), &acc, &z, y());
    let logits = loss_of(Activation::Linear, bce(true), &acc, &z, y());
    let from_probs = loss_of(Activation::Linear, bce(false), &acc, &sig, y());
    for got in [&fused, &logits, &from_probs] {
        assert!(close(got[0], want, 1e-9), "{got:?} vs {want}");
        assert_eq!(got[1], acc_want);
    }
    // MSE, with mae and mse metrics.
    let mse: f64 = z.iter().zip(&t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / 12.0;
    let mae: f64 = z.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f64>() / 12.0;
    let got = loss_of(
        Activation::Linear,
        Loss::MeanSquaredError,
        &[Metric::MeanAbsoluteError, Metric::MeanSquaredError],
        &z,
        y(),
    );
    assert!(
        close(got[0], mse, 1e-12) && close(got[2], mse, 1e-12),
        "{got:?}"
    );
    assert!(close(got[1], mae, 1e-12), "{got:?}");
}

#[test]
fn probabilities_are_clipped_before_the_log() {
    // A zero probability on the true class gives -log(1e-7), not infinity.
    let p = [0.0, 1.0, 0.0];
    let got = loss_of(
        Activation::Linear,
        Loss::SparseCategoricalCrossentropy { from_logits: false },
        &[],
        &p,
        arr(&[1], &[0.0]),
    );
    assert!(got[0].is_finite());
    assert!(close(got[0], -(1e-7f64).ln(), 1e-6), "{got:?}");
}
