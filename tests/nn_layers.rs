//! The pooling and normalization layers (AveragePooling2D in both of its forms,
//! GlobalAveragePooling2D, LayerNormalization): forward values (reference interpreter, f64)
//! against the formulas written out here, their shape errors, and a training step through
//! all of them compiled and compared with the interpreter.

mod common;

use gradlift::init::Rng;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{
    AvgPool2D, Conv2D, Dense, GlobalAvgPool2D, GraphOptions, LayerNorm, Loss, Sequential,
};
use gradlift::Padding;

fn random(r: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| 2.0 * r.uniform() - 1.0).collect()
}

/// The predictions of a one-layer model on `x` (batch 2, per-example shape `input`), params
/// fed by name.
fn predict(
    m: Sequential,
    input: &[usize],
    x: &[f64],
    params: &[(&str, Vec<usize>, Vec<f64>)],
) -> Vec<f64> {
    let g = m.build_graph(&GraphOptions::predict(2)).unwrap().graph;
    let mut shape = vec![2];
    shape.extend_from_slice(input);
    let mut feeds = vec![("x", Array::new(shape, x.to_vec()).unwrap())];
    for (name, s, v) in params {
        feeds.push((name, Array::new(s.clone(), v.clone()).unwrap()));
    }
    let v = eval_named(&g, &feeds).unwrap();
    v.output(&g, "predictions").unwrap().data.clone()
}

/// Element `[b, i, j, ch]` of an NHWC buffer of per-example shape `[h, w, c]`.
fn at(x: &[f64], [h, w, c]: [usize; 3], [b, i, j, ch]: [usize; 4]) -> f64 {
    x[((b * h + i) * w + j) * c + ch]
}

/// Average pooling written out: window rows `i*s .. i*s+k` shifted by `-pad_top`, clipped
/// to the input, the mean of what is inside.
#[allow(clippy::too_many_arguments)]
fn avg_pool_formula(
    x: &[f64],
    [h, w, c]: [usize; 3],
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [oh, ow]: [usize; 2],
    [pt, pl]: [usize; 2],
) -> Vec<f64> {
    let mut out = Vec::new();
    for b in 0..2 {
        for i in 0..oh {
            for j in 0..ow {
                for ch in 0..c {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for di in 0..kh {
                        for dj in 0..kw {
                            let (r, q) = (
                                (i * sh + di) as i64 - pt as i64,
                                (j * sw + dj) as i64 - pl as i64,
                            );
                            if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                                sum += at(x, [h, w, c], [b, r as usize, q as usize, ch]);
                                n += 1.0;
                            }
                        }
                    }
                    out.push(sum / n);
                }
            }
        }
    }
    out
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}[{k}]: {g} vs {w}"
        );
    }
}

/// An average pooling case: input, pool, strides, padding, output, top-left padding.
type PoolCase = (
    [usize; 3],
    [usize; 2],
    [usize; 2],
    Padding,
    [usize; 2],
    [usize; 2],
);

#[test]
fn average_pooling_matches_the_formula_in_every_form() {
    let mut r = Rng::new(7);
    // (input, pool, strides, padding, output, top-left padding)
    let cases: [PoolCase; 4] = [
        // windows that tile a cropped input: the reshape form
        ([5, 4, 3], [2, 2], [2, 2], Padding::Valid, [2, 2], [0, 0]),
        // overlapping windows: the convolution form
        ([3, 4, 2], [2, 2], [1, 1], Padding::Valid, [2, 3], [0, 0]),
        // same padding: edge windows average only what is inside (padding at the end)
        ([3, 3, 2], [2, 2], [2, 2], Padding::Same, [2, 2], [0, 0]),
        // same padding on both sides, stride 1
        ([3, 4, 1], [3, 3], [1, 1], Padding::Same, [3, 4], [1, 1]),
    ];
    for (input, pool, strides, padding, out, pad) in cases {
        let x = random(&mut r, 2 * input.iter().product::<usize>());
        let m =
            Sequential::new(input).layer(AvgPool2D::new(pool).strides(strides).padding(padding));
        let got = predict(m, &input, &x, &[]);
        let want = avg_pool_formula(&x, input, pool, strides, out, pad);
        assert_close(
            &got,
            &want,
            &format!("{input:?} pool {pool:?} strides {strides:?} {padding:?}"),
        );
    }
}

#[test]
fn global_average_pooling_is_the_spatial_mean() {
    let mut r = Rng::new(8);
    let (h, w, c) = (3, 4, 5);
    let x = random(&mut r, 2 * h * w * c);
    let got = predict(
        Sequential::new([h, w, c]).layer(GlobalAvgPool2D::new()),
        &[h, w, c],
        &x,
        &[],
    );
    let mut want = Vec::new();
    for b in 0..2 {
        for ch in 0..c {
            let s: f64 = (0..h)
                .flat_map(|i| (0..w).map(move |j| (i, j)))
                .map(|(i, j)| at(&x, [h, w, c], [b, i, j, ch]))
                .sum();
            want.push(s / (h * w) as f64);
        }
    }
    assert_close(&got, &want, "global average");
}

#[test]
fn layer_normalization_matches_the_formula() {
    let mut r = Rng::new(9);
    let (t, f) = (3, 6);
    let x: Vec<f64> = random(&mut r, 2 * t * f)
        .iter()
        .map(|v| 4.0 * v + 1.0)
        .collect();
    let gamma = random(&mut r, f);
    let beta = random(&mut r, f);
    let m = Sequential::new([t, f]).layer(LayerNorm::new());
    let got = predict(
        m,
        &[t, f],
        &x,
        &[
            ("layer_normalization.gamma", vec![f], gamma.clone()),
            ("layer_normalization.beta", vec![f], beta.clone()),
        ],
    );
    let mut want = Vec::new();
    for row in x.chunks(f) {
        let mean = row.iter().sum::<f64>() / f as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f as f64;
        for (k, v) in row.iter().enumerate() {
            want.push((v - mean) / (var + 1e-3).sqrt() * gamma[k] + beta[k]);
        }
    }
    assert_close(&got, &want, "layer norm");
}

#[test]
fn shapes_that_do_not_fit_are_errors() {
    let err = |m: Sequential| {
        m.build_graph(&GraphOptions::predict(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(Sequential::new([2, 2, 1]).layer(AvgPool2D::new([3, 3])));
    assert!(e.contains("does not fit"), "{e}");
    let e = err(Sequential::new([4]).layer(GlobalAvgPool2D::new()));
    assert!(e.contains("image input"), "{e}");
    let e = err(Sequential::new([4]).layer(LayerNorm::new().epsilon(0.0)));
    assert!(e.contains("epsilon"), "{e}");
}

#[test]
fn a_training_step_through_every_layer_compiles_and_matches_the_interpreter() {
    for pool in [
        AvgPool2D::new([2, 2]),
        AvgPool2D::new([2, 2])
            .strides([1, 1])
            .padding(Padding::Same),
    ] {
        let m = Sequential::new([6, 5, 2])
            .layer(Conv2D::new(3, [2, 2]))
            .layer(LayerNorm::new())
            .layer(pool)
            .layer(GlobalAvgPool2D::new())
            .layer(Dense::new(2));
        let g = m
            .build_graph(&GraphOptions::evaluate(4, Loss::MeanSquaredError, &[]))
            .unwrap()
            .graph;
        common::sgd_step_matches("pool and norm sgd step", g, 3);
    }
}
