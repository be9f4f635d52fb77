//! Linear regression: the symbolic gradient of `mean((x w + b - y)^2)` equals the closed form
//! `d w = 2/n x^T (x w + b - y)`, `d b = 2/n sum(x w + b - y)`, evaluated in plain f64 here.
//! Both sides are exact formulas in f64 that differ only in the order of summation, so the
//! tolerance is roundoff: `1e-12` relative to the size of the terms.

mod common;

use common::fd::uniform;
use gradlift::autodiff;
use gradlift::init::Rng;
use gradlift::interp::{eval, Array};
use gradlift::{Graph, Init, TensorType};
use std::collections::HashMap;

#[test]
fn gradient_equals_closed_form() {
    for (n, d, seed) in [(100, 1, 1), (7, 3, 2), (1, 4, 3)] {
        let mut rng = Rng::new(seed);
        let mut g = Graph::new("linear_regression");
        let x = g.input("x", TensorType::f32([n, d])).unwrap();
        let y = g.input("y", TensorType::f32([n, 1])).unwrap();
        let w = g
            .param("w", [d, 1], Init::GlorotUniform { seed: 1 })
            .unwrap();
        let b = g.param("b", [1], Init::Zeros).unwrap();
        let xw = g.matmul(x, w).unwrap();
        let pred = g.add2(xw, b).unwrap();
        let r = g.sub(pred, y).unwrap();
        let sq = g.mul(r, r).unwrap();
        let loss = g.mean(sq, &[0, 1], false).unwrap();
        let grads = autodiff::grad(&mut g, loss, &[w, b]).unwrap();

        let xs = uniform(&mut rng, n * d, -1.0, 1.0);
        let ys = uniform(&mut rng, n, -3.0, 3.0);
        let ws = uniform(&mut rng, d, -1.0, 1.0);
        let bs = uniform(&mut rng, 1, -1.0, 1.0);
        let mut feeds = HashMap::new();
        feeds.insert(x, Array::new(vec![n, d], xs.clone()).unwrap());
        feeds.insert(y, Array::new(vec![n, 1], ys.clone()).unwrap());
        feeds.insert(w, Array::new(vec![d, 1], ws.clone()).unwrap());
        feeds.insert(b, Array::new(vec![1], bs.clone()).unwrap());
        let v = eval::<f64>(&g, &feeds).unwrap();
        let dw = &v.get(grads[0]).unwrap().data;
        let db = &v.get(grads[1]).unwrap().data;

        // Closed form.
        let res: Vec<f64> = (0..n)
            .map(|i| (0..d).map(|j| xs[i * d + j] * ws[j]).sum::<f64>() + bs[0] - ys[i])
            .collect();
        let scale = 2.0 / n as f64;
        for j in 0..d {
            let expect = scale * (0..n).map(|i| xs[i * d + j] * res[i]).sum::<f64>();
            let size = scale * (0..n).map(|i| (xs[i * d + j] * res[i]).abs()).sum::<f64>();
            assert!(
                (dw[j] - expect).abs() <= 1e-12 * (1.0 + size),
                "n={n} d={d}: dw[{j}] = {} but closed form {expect}",
                dw[j]
            );
        }
        let expect_b = scale * res.iter().sum::<f64>();
        let size_b = scale * res.iter().map(|r| r.abs()).sum::<f64>();
        assert!(
            (db[0] - expect_b).abs() <= 1e-12 * (1.0 + size_b),
            "n={n} d={d}: db = {} but closed form {expect_b}",
            db[0]
        );
    }
}
