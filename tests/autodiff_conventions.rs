//! The documented conventions at non-differentiable points, evaluated exactly there:
//! `relu'(0) = 0`, `abs'(0) = 0`, ties of elementwise max/min go to the first operand,
//! `reduce_max` splits among tied maxima, `max_pool2d` routes to the first maximum.

use gradlift::autodiff;
use gradlift::interp::{eval, Array};
use gradlift::{Graph, NodeId, TensorType};
use std::collections::HashMap;

/// The gradient of `sum(f(inputs))` with respect to each input, at the given values.
fn grads(
    inputs: &[(&str, Vec<usize>, Vec<f64>)],
    f: impl Fn(&mut Graph, &[NodeId]) -> NodeId,
) -> Vec<Vec<f64>> {
    let mut g = Graph::new("t");
    let mut ids = Vec::new();
    let mut feeds = HashMap::new();
    for (name, shape, v) in inputs {
        let id = g.input(name, TensorType::f32(shape.clone())).unwrap();
        feeds.insert(id, Array::new(shape.clone(), v.clone()).unwrap());
        ids.push(id);
    }
    let y = f(&mut g, &ids);
    let axes: Vec<usize> = (0..g[y].ty.shape.rank()).collect();
    let loss = g.sum(y, &axes, false).unwrap();
    let d = autodiff::grad(&mut g, loss, &ids).unwrap();
    let v = eval::<f64>(&g, &feeds).unwrap();
    d.iter().map(|&d| v.get(d).unwrap().data.clone()).collect()
}

#[test]
fn relu_and_abs_at_zero() {
    let x = vec![-1.0, 0.0, 2.0];
    let d = grads(&[("x", vec![3], x.clone())], |g, i| g.relu(i[0]).unwrap());
    assert_eq!(d[0], [0.0, 0.0, 1.0]);
    let d = grads(&[("x", vec![3], x)], |g, i| g.abs(i[0]).unwrap());
    assert_eq!(d[0], [-1.0, 0.0, 1.0]);
}

#[test]
fn max_min_ties_go_to_the_first_operand() {
    let a = ("a", vec![3], vec![1.0, 2.0, 3.0]);
    let b = ("b", vec![3], vec![1.0, 5.0, 0.0]);
    let d = grads(&[a.clone(), b.clone()], |g, i| {
        g.maximum(i[0], i[1]).unwrap()
    });
    assert_eq!(d, [vec![1.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]);
    let d = grads(&[a, b], |g, i| g.minimum(i[0], i[1]).unwrap());
    assert_eq!(d, [vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]]);
}

#[test]
fn reduce_max_splits_among_ties() {
    let x = ("x", vec![2, 3], vec![4.0, 1.0, 4.0, 0.0, 7.0, 7.0]);
    let d = grads(&[x], |g, i| {
        g.reduce(gradlift::ReduceOp::Max, i[0], &[1], false)
            .unwrap()
    });
    assert_eq!(d[0], [0.5, 0.0, 0.5, 0.0, 0.5, 0.5]);
}

#[test]
fn max_pool_routes_to_the_first_maximum() {
    // One 2x2 window holding 3, 3, 1, 3: the first maximum in row-major order is (0,0).
    let x = ("x", vec![1, 2, 2, 1], vec![3.0, 3.0, 1.0, 3.0]);
    let d = grads(&[x], |g, i| g.max_pool2d(i[0], [2, 2], [2, 2]).unwrap());
    assert_eq!(d[0], [1.0, 0.0, 0.0, 0.0]);
}
