//! The recurrent layers (SimpleRNN, LSTM, GRU), each a scan over the steps: their forward
//! values against the Keras formulas written out in f64 (gate orders, `reset_after`,
//! `return_sequences`), their default initializers, their training steps in the JIT against
//! the interpreter, and their steps split along the batch.

mod common;

use gradlift::init::Rng;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{
    Dense, GraphOptions, Initializer, Layer, Loss, Metric, Sequential, SimpleRNN, GRU, LSTM,
};
use gradlift::optim::Optimizer;
use gradlift::step::{compile_training_step, StepOptions};
use gradlift::{Init, Op};

fn random(r: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * r.uniform()).collect()
}

fn arr(shape: &[usize], v: &[f64]) -> Array<f64> {
    Array::new(shape.to_vec(), v.to_vec()).unwrap()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `x [f] @ w [f, g]` plus `h [u] @ r [u, g]`, column `j`.
fn affine(x: &[f64], w: &[f64], h: &[f64], r: &[f64], g: usize, j: usize) -> (f64, f64) {
    let xi: f64 = x.iter().enumerate().map(|(k, v)| v * w[k * g + j]).sum();
    let hi: f64 = h.iter().enumerate().map(|(k, v)| v * r[k * g + j]).sum();
    (xi, hi)
}

/// The layer's predictions on `x [n, t, f]` with the given weights, by the interpreter.
fn predict(
    layer: Layer,
    n: usize,
    t: usize,
    f: usize,
    weights: &[(&str, Vec<usize>, &[f64])],
    x: &[f64],
) -> Vec<f64> {
    let m = Sequential::new([t, f]).layer(layer);
    let g = m.build_graph(&GraphOptions::predict(n)).unwrap().graph;
    let mut feeds = vec![("x", arr(&[n, t, f], x))];
    for (name, shape, v) in weights {
        feeds.push((name, arr(shape, v)));
    }
    let v = eval_named(&g, &feeds).unwrap();
    v.output(&g, "predictions").unwrap().data.clone()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn lstm_matches_the_keras_formula() {
    let (n, t, f, u) = (2, 4, 3, 5);
    let g4 = 4 * u;
    let mut r = Rng::new(3);
    let x = random(&mut r, n * t * f, -1.0, 1.0);
    let w = random(&mut r, f * g4, -0.5, 0.5);
    let rk = random(&mut r, u * g4, -0.5, 0.5);
    let b = random(&mut r, g4, -0.5, 0.5);
    for seqs in [false, true] {
        let got = predict(
            LSTM::new(u).return_sequences(seqs).into(),
            n,
            t,
            f,
            &[
                ("lstm.kernel", vec![f, g4], &w),
                ("lstm.recurrent_kernel", vec![u, g4], &rk),
                ("lstm.bias", vec![g4], &b),
            ],
            &x,
        );
        let mut want = Vec::new();
        for i in 0..n {
            let (mut h, mut c) = (vec![0.0; u], vec![0.0; u]);
            let mut steps = Vec::new();
            for s in 0..t {
                let xs = &x[(i * t + s) * f..(i * t + s + 1) * f];
                let z = |j: usize| {
                    let (a, bb) = affine(xs, &w, &h, &rk, g4, j);
                    a + bb + b[j]
                };
                // Keras' gate order: input, forget, cell, output
                let (mut h2, mut c2) = (vec![0.0; u], vec![0.0; u]);
                for j in 0..u {
                    let ig = sigmoid(z(j));
                    let fg = sigmoid(z(u + j));
                    let cc = z(2 * u + j).tanh();
                    let og = sigmoid(z(3 * u + j));
                    c2[j] = fg * c[j] + ig * cc;
                    h2[j] = og * c2[j].tanh();
                }
                h = h2;
                c = c2;
                steps.push(h.clone());
            }
            match seqs {
                true => steps.into_iter().for_each(|s| want.extend(s)),
                false => want.extend(h),
            }
        }
        assert_close(&format!("lstm return_sequences={seqs}"), &got, &want);
    }
}

#[test]
fn gru_matches_the_keras_formula_with_reset_after() {
    let (n, t, f, u) = (2, 3, 4, 3);
    let g3 = 3 * u;
    let mut r = Rng::new(4);
    let x = random(&mut r, n * t * f, -1.0, 1.0);
    let w = random(&mut r, f * g3, -0.5, 0.5);
    let rk = random(&mut r, u * g3, -0.5, 0.5);
    let b = random(&mut r, 2 * g3, -0.5, 0.5);
    for seqs in [false, true] {
        let got = predict(
            GRU::new(u).return_sequences(seqs).into(),
            n,
            t,
            f,
            &[
                ("gru.kernel", vec![f, g3], &w),
                ("gru.recurrent_kernel", vec![u, g3], &rk),
                ("gru.bias", vec![2, g3], &b),
            ],
            &x,
        );
        let mut want = Vec::new();
        for i in 0..n {
            let mut h = vec![0.0; u];
            let mut steps = Vec::new();
            for s in 0..t {
                let xs = &x[(i * t + s) * f..(i * t + s + 1) * f];
                // x W + b_input and h U + b_recurrent, each in the order z, r, h
                let mx = |j: usize| affine(xs, &w, &h, &rk, g3, j).0 + b[j];
                let mi = |j: usize| affine(xs, &w, &h, &rk, g3, j).1 + b[g3 + j];
                let mut h2 = vec![0.0; u];
                for j in 0..u {
                    let z = sigmoid(mx(j) + mi(j));
                    let rr = sigmoid(mx(u + j) + mi(u + j));
                    let hh = (mx(2 * u + j) + rr * mi(2 * u + j)).tanh();
                    h2[j] = z * h[j] + (1.0 - z) * hh;
                }
                h = h2;
                steps.push(h.clone());
            }
            match seqs {
                true => steps.into_iter().for_each(|s| want.extend(s)),
                false => want.extend(h),
            }
        }
        assert_close(&format!("gru return_sequences={seqs}"), &got, &want);
    }
}

/// Keras' defaults: glorot_uniform kernels, orthogonal recurrent kernels, an LSTM bias of
/// zeros with ones for the forget gate, a GRU bias `[2, 3 units]`.
#[test]
fn defaults_follow_keras() {
    let params = |layer: Layer| {
        let m = Sequential::new([7, 3]).layer(layer);
        let g = m.build_graph(&GraphOptions::predict(2)).unwrap().graph;
        g.params()
            .into_iter()
            .map(|p| {
                (
                    g[p].name.clone().unwrap(),
                    g[p].ty.shape.dims().to_vec(),
                    g[p].op.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let lstm = params(LSTM::new(4).into());
    assert_eq!(lstm[0].1, [3, 16]);
    assert!(matches!(
        lstm[0].2,
        Op::Param {
            init: Init::GlorotUniform { .. }
        }
    ));
    assert!(matches!(
        lstm[1].2,
        Op::Param {
            init: Init::Orthogonal { .. }
        }
    ));
    assert_eq!(
        lstm[2].2,
        Op::Param {
            init: Init::UnitForgetBias { units: 4 }
        }
    );
    let b = gradlift::init::values(&Init::UnitForgetBias { units: 4 }, &[16].into());
    assert_eq!(b[..4], [0.0; 4]);
    assert_eq!(b[4..8], [1.0; 4]);
    assert_eq!(b[8..], [0.0; 8]);
    let gru = params(GRU::new(4).into());
    assert_eq!(
        (gru[1].1.clone(), gru[2].1.clone()),
        (vec![4, 12], vec![2, 12])
    );
    let rnn = params(SimpleRNN::new(4).into());
    assert!(matches!(
        rnn[1].2,
        Op::Param {
            init: Init::Orthogonal { .. }
        }
    ));
    let no_bias = params(
        LSTM::new(4)
            .use_bias(false)
            .kernel_initializer(Initializer::Zeros)
            .into(),
    );
    assert_eq!(no_bias.len(), 2);
}

fn model(layer: Layer) -> Sequential {
    Sequential::new([6, 5]).layer(layer).layer(Dense::new(3))
}

/// Each layer's SGD training step (return_sequences feeding a second layer, too), compiled
/// after the pass pipeline, gives the interpreter's step.
#[test]
fn training_steps_in_the_jit_match_the_interpreter() {
    let layers: Vec<(&str, Sequential)> = vec![
        ("simple_rnn", model(SimpleRNN::new(4).into())),
        ("lstm", model(LSTM::new(4).into())),
        ("gru", model(GRU::new(4).into())),
        (
            "stacked",
            Sequential::new([6, 5])
                .layer(LSTM::new(4).return_sequences(true))
                .layer(GRU::new(3))
                .layer(Dense::new(3)),
        ),
    ];
    for (name, m) in layers {
        let opts = GraphOptions::train(
            4,
            Loss::SparseCategoricalCrossentropy { from_logits: true },
            &[Metric::Accuracy],
        );
        let g = m.build_graph(&opts).unwrap().graph;
        common::sgd_step_matches(name, g, 7);
    }
}

/// The LSTM and GRU steps split along the batch (the scan's body keeps each example's row):
/// 1, 2 and 3 threads give the same bits.
#[test]
fn split_steps_are_bit_identical_for_every_thread_count() {
    for (name, layer) in [
        ("lstm", Layer::from(LSTM::new(8))),
        ("gru", GRU::new(8).into()),
    ] {
        let m = model(layer);
        let opts = GraphOptions::train(
            8,
            Loss::SparseCategoricalCrossentropy { from_logits: true },
            &[],
        );
        let g = m.build_graph(&opts).unwrap().graph;
        let run = |threads: usize| {
            let o = StepOptions {
                threads,
                shards: Some(2),
                ..StepOptions::default()
            };
            let (mut step, report) =
                compile_training_step(&g, "loss", &Optimizer::adam(), None, 8, &o).unwrap();
            assert_eq!(
                (report.shards, report.not_split.clone()),
                (2, None),
                "{name}"
            );
            let mut rng = Rng::new(5);
            for _ in 0..3 {
                let x: Vec<f32> = (0..8 * 30).map(|_| rng.uniform() as f32).collect();
                let y: Vec<i32> = (0..8).map(|_| rng.below(3) as i32).collect();
                let inputs = [
                    ("x", gradlift::runtime::HostTensor::f32([8, 6, 5], x)),
                    ("y", gradlift::runtime::HostTensor::i32([8], y)),
                    ("lr", gradlift::runtime::HostTensor::f32([], vec![0.01])),
                ];
                step.run(&inputs).unwrap();
            }
            step.params()
        };
        let one = run(1);
        assert!(one == run(2) && one == run(3), "{name}");
    }
}
