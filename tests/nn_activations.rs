//! Every activation of the layer API in every stage: its forward values (reference
//! interpreter, f64) against the formula written out here, its autodiff derivative against the
//! derivative written out here (finite at +-1000, where a careless composition gives
//! `0 * inf = NaN`), and the compiled forward and SGD training step against the interpreter.

mod common;

use gradlift::autodiff;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{Activation, Dense, GraphOptions, Loss, Sequential};
use gradlift::op::{Op, ReduceOp};
use gradlift::Graph;

/// Points from both tails (beyond f64's `exp` range at +-1000), around 0 and in between.
const XS: [f64; 16] = [
    -1000.0, -100.0, -20.0, -5.0, -1.5, -1.0, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 5.0, 20.0, 100.0,
    1000.0,
];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// sqrt(2/pi), the scale inside the tanh GELU.
fn k() -> f64 {
    (2.0 / std::f64::consts::PI).sqrt()
}

/// The activation, written out.
fn formula(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Linear | Activation::Softmax => unreachable!("not elementwise here"),
        Activation::Sigmoid => sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu => {
            if x >= 0.0 {
                x
            } else {
                0.2 * x
            }
        }
        Activation::Elu => {
            if x > 0.0 {
                x
            } else {
                x.exp_m1()
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
        Activation::GeluTanh => 0.5 * x * (1.0 + (k() * (x + 0.044715 * x.powi(3))).tanh()),
        // ln(1 + e^x) without overflow
        Activation::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        Activation::Silu => x * sigmoid(x),
    }
}

/// Its derivative, written out (relu'(0) = 0 as everywhere in gradlift; leaky_relu'(0) = 1
/// and elu'(0) = 1 as in JAX).
fn derivative(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Linear | Activation::Softmax => unreachable!("not elementwise here"),
        Activation::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Relu => f64::from(x > 0.0),
        Activation::LeakyRelu => {
            if x >= 0.0 {
                1.0
            } else {
                0.2
            }
        }
        Activation::Elu => {
            if x > 0.0 {
                1.0
            } else {
                x.exp()
            }
        }
        Activation::Gelu => {
            let phi = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            0.5 * (1.0 + libm::erf(x / 2f64.sqrt())) + x * phi
        }
        Activation::GeluTanh => {
            let t = (k() * (x + 0.044715 * x.powi(3))).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k() * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Softplus => sigmoid(x),
        Activation::Silu => sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
    }
}

/// The elementwise activations (all but linear and softmax).
fn elementwise() -> impl Iterator<Item = Activation> {
    Activation::ALL
        .into_iter()
        .filter(|a| !matches!(a, Activation::Linear | Activation::Softmax))
}

/// A Dense(n) layer with activation `a` over n = [`XS`].len() inputs; with the identity
/// kernel and a zero bias its predictions are `a(x)`.
fn layer(a: Activation) -> Sequential {
    Sequential::new([XS.len()]).layer(Dense::new(XS.len()).activation(a))
}

/// The identity kernel, zero bias and `XS` as a batch of one, by name.
fn feeds() -> Vec<(&'static str, Array<f64>)> {
    let n = XS.len();
    let mut eye = vec![0.0; n * n];
    for i in 0..n {
        eye[i * n + i] = 1.0;
    }
    vec![
        ("x", Array::new(vec![1, n], XS.to_vec()).unwrap()),
        ("dense.kernel", Array::new(vec![n, n], eye).unwrap()),
        ("dense.bias", Array::new(vec![n], vec![0.0; n]).unwrap()),
    ]
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-12 * (1.0 + want.abs())
}

#[test]
fn names_round_trip_and_swish_is_silu() {
    for a in Activation::ALL {
        assert_eq!(Activation::from_name(a.name()), Some(a));
    }
    assert_eq!(Activation::from_name("swish"), Some(Activation::Silu));
    assert_eq!(Activation::from_name("gelu"), Some(Activation::Gelu));
    assert_eq!(Activation::from_name("mish"), None);
}

#[test]
fn every_activation_matches_its_formula() {
    for a in elementwise() {
        let g = layer(a)
            .build_graph(&GraphOptions::predict(1))
            .unwrap()
            .graph;
        let v = eval_named(&g, &feeds()).unwrap();
        let p = &v.output(&g, "predictions").unwrap().data;
        for (&x, &y) in XS.iter().zip(p) {
            let want = formula(a, x);
            assert!(close(y, want), "{}({x}) = {y}, want {want}", a.name());
        }
    }
}

#[test]
fn every_activation_has_the_derivative_of_its_formula() {
    for a in elementwise() {
        let mut g: Graph = layer(a)
            .build_graph(&GraphOptions::predict(1))
            .unwrap()
            .graph;
        let p = g.outputs()[0].node;
        let loss = g
            .add(
                Op::Reduce {
                    kind: ReduceOp::Sum,
                    axes: vec![0, 1],
                    keepdims: false,
                },
                &[p],
            )
            .unwrap();
        let x = g.find("x").unwrap();
        let dx = autodiff::grad(&mut g, loss, &[x]).unwrap()[0];
        g.add_output("dx", dx).unwrap();
        let v = eval_named(&g, &feeds()).unwrap();
        let d = &v.output(&g, "dx").unwrap().data;
        for (&x, &dy) in XS.iter().zip(d) {
            let want = derivative(a, x);
            assert!(
                dy.is_finite() && (dy - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{}'({x}) = {dy}, want {want}",
                a.name()
            );
        }
    }
}

#[test]
fn every_activation_compiles_and_matches_the_interpreter() {
    for a in elementwise() {
        let m = layer(a);
        let predict = m.build_graph(&GraphOptions::predict(3)).unwrap().graph;
        common::jit_matches(&format!("{} predict", a.name()), &predict, &predict, 1);
        let eval = m
            .build_graph(&GraphOptions::evaluate(3, Loss::MeanSquaredError, &[]))
            .unwrap()
            .graph;
        common::sgd_step_matches(&format!("{} sgd step", a.name()), eval, 2);
    }
}

/// Binary cross-entropy from logits of confident, correct predictions (|z| = 30, where
/// `e^-|z|` = 9.4e-14 is far below f32's epsilon): `log1p(e^-|z|)` keeps the loss, where
/// `log(1 + e^-|z|)` rounds it to 0, in the f32 interpreter and in compiled code alike.
#[test]
fn binary_cross_entropy_from_logits_keeps_tiny_losses() {
    use gradlift::codegen::CompileOptions;
    use gradlift::interp::eval;
    use gradlift::runtime::{self, HostTensor};
    let m = Sequential::new([1]).layer(Dense::new(1));
    let g = m
        .build_graph(&GraphOptions::evaluate(
            2,
            Loss::BinaryCrossentropy { from_logits: true },
            &[],
        ))
        .unwrap()
        .graph;
    let want = (-30f64).exp().ln_1p();
    let x = [-30.0f32, 30.0];
    let y = [0.0f32, 1.0];
    // the interpreter in f32
    let feed = |name: &str, shape: Vec<usize>, v: &[f32]| {
        (
            g.find(name).unwrap(),
            Array::new(shape, v.to_vec()).unwrap(),
        )
    };
    let feeds = [
        feed("x", vec![2, 1], &x),
        feed("y", vec![2, 1], &y),
        feed("dense.kernel", vec![1, 1], &[1.0]),
        feed("dense.bias", vec![1], &[0.0]),
    ]
    .into_iter()
    .collect();
    let v = eval::<f32>(&g, &feeds).unwrap();
    let loss = v.output(&g, "loss").unwrap().data[0] as f64;
    assert!(
        (loss - want).abs() <= 1e-6 * want,
        "interpreter: {loss:e}, want {want:e}"
    );
    // compiled
    let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    exe.set_param("dense.kernel", HostTensor::f32([1, 1], vec![1.0]))
        .unwrap();
    exe.set_param("dense.bias", HostTensor::f32([1], vec![0.0]))
        .unwrap();
    let out = exe
        .run(&[
            ("x", HostTensor::f32([2, 1], x.to_vec())),
            ("y", HostTensor::f32([2, 1], y.to_vec())),
        ])
        .unwrap();
    let loss = out
        .iter()
        .find(|o| o.0 == "loss")
        .unwrap()
        .1
        .as_f32()
        .unwrap()[0] as f64;
    assert!(
        (loss - want).abs() <= 1e-5 * want,
        "compiled: {loss:e}, want {want:e}"
    );
}
