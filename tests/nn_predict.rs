//! Compiled models without training: `compile` initializes the weights from the seeded
//! initializers, `predict` and `evaluate` run in inference mode (dropout off) and agree across
//! batch sizes, weights round-trip through safetensors, and bad data is a clear error.

use gradlift::data::load_default;
use gradlift::nn::{
    param_seed, Activation, CompileOptions, Dense, Dropout, FitOptions, Loss, Metric, Model,
    Sequential, Targets, TrainError,
};
use gradlift::optim::Optimizer;
use gradlift::{init, Init, Shape};

fn mnist_mlp(dropout: f64, seed: u64) -> Model {
    Sequential::new([28, 28])
        .seed(seed)
        .layer(gradlift::nn::Flatten::new())
        .layer(Dense::new(16).activation(Activation::Relu))
        .layer(Dropout::new(dropout))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap()
}

#[test]
fn compile_initializes_params_from_their_seeds() {
    let m = mnist_mlp(0.0, 5);
    let w = m.weights();
    assert_eq!(
        w.names(),
        [
            "dense.bias",
            "dense.kernel",
            "dense_1.bias",
            "dense_1.kernel"
        ]
    );
    assert_eq!(w.shape("dense.kernel"), Some(&[784, 16][..]));
    let want: Vec<f32> = init::values(
        &Init::GlorotUniform {
            seed: param_seed(5, 1, 0),
        },
        &Shape(vec![784, 16]),
    )
    .into_iter()
    .map(|v| v as f32)
    .collect();
    assert_eq!(w.get("dense.kernel").unwrap(), &want[..]);
    assert!(w.get("dense.bias").unwrap().iter().all(|&b| b == 0.0));
}

#[test]
fn predict_and_evaluate_ignore_dropout_and_batching() {
    let (_, test) = load_default().unwrap();
    let x = &test.images()[..784 * 10];
    let y = &test.labels[..10];
    let mut m = mnist_mlp(0.5, 4);
    let p1 = m.predict(x, 10).unwrap();
    let p2 = m.predict(x, 3).unwrap();
    assert_eq!(p1.len(), 100);
    for row in p1.chunks(10) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "softmax rows sum to 1, found {s}");
    }
    for (a, b) in p1.iter().zip(&p2) {
        assert!(
            (a - b).abs() < 1e-6,
            "prediction depends on batching: {a} vs {b}"
        );
    }
    let e1 = m.evaluate(x, Targets::Classes(y), 10).unwrap();
    let e2 = m.evaluate(x, Targets::Classes(y), 4).unwrap();
    assert!((e1.loss - e2.loss).abs() < 1e-6, "{e1:?} vs {e2:?}");
    // The loss is the mean of -log p[label] over the examples.
    let want: f64 = p1
        .chunks(10)
        .zip(y)
        .map(|(row, &l)| -(row[l as usize] as f64).ln())
        .sum::<f64>()
        / 10.0;
    assert!((e1.loss - want).abs() < 1e-5, "{} vs {want}", e1.loss);
    let acc = e1.metric("accuracy").unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!((acc - e2.metric("accuracy").unwrap()).abs() < 1e-6);
}

#[test]
fn weights_round_trip_through_safetensors() {
    let dir = std::env::temp_dir().join(format!("gradlift-nn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let a = mnist_mlp(0.0, 1);
    a.save_weights(&path).unwrap();
    let mut b = mnist_mlp(0.0, 2);
    assert_ne!(
        a.weights().get("dense.kernel"),
        b.weights().get("dense.kernel")
    );
    b.load_weights(&path).unwrap();
    assert_eq!(a.weights(), b.weights());
    // A model with other shapes refuses the file, naming the tensor and both shapes.
    let mut c = Sequential::new([28, 28])
        .layer(gradlift::nn::Flatten::new())
        .layer(Dense::new(8))
        .compile(CompileOptions::new(
            Optimizer::sgd(),
            Loss::MeanSquaredError,
            &[],
        ))
        .unwrap();
    let e = c.load_weights(&path).unwrap_err().to_string();
    assert!(
        e.contains("dense.kernel") && e.contains("f32[784,16]") && e.contains("f32[784,8]"),
        "{e}"
    );
    let mut d = Sequential::new([3])
        .layer(Dense::new(1).name("other"))
        .compile(CompileOptions::new(
            Optimizer::sgd(),
            Loss::MeanSquaredError,
            &[],
        ))
        .unwrap();
    let e = d.load_weights(&path).unwrap_err().to_string();
    assert!(e.contains("missing tensor other.kernel"), "{e}");
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = b.load_weights(&path).unwrap_err().to_string();
    assert!(e.contains("not a gradlift checkpoint"), "{e}");
    assert!(e.contains("w.safetensors"), "{e}");
}

#[test]
fn bad_data_is_a_clear_error() {
    let mut m = mnist_mlp(0.0, 1);
    let x = vec![0.0f32; 784 * 2];
    let quiet = |batch_size| FitOptions {
        batch_size,
        verbose: false,
        ..FitOptions::default()
    };
    let data = |e: TrainError| match e {
        TrainError::Data(m) => m,
        other => panic!("expected a data error, found {other}"),
    };
    let e = data(
        m.fit(&x[..100], Targets::Classes(&[1]), &quiet(2))
            .unwrap_err(),
    );
    assert!(e.contains("not a whole number of examples"), "{e}");
    let e = data(m.fit(&x, Targets::Classes(&[1]), &quiet(2)).unwrap_err());
    assert!(e.contains("expected 2 class targets"), "{e}");
    let e = data(
        m.fit(&x, Targets::Classes(&[1, 10]), &quiet(2))
            .unwrap_err(),
    );
    assert!(e.contains("out of range 0..10"), "{e}");
    let e = data(
        m.fit(&x, Targets::Values(&[0.0; 20]), &quiet(2))
            .unwrap_err(),
    );
    assert!(e.contains("needs class targets"), "{e}");
    let e = data(m.fit(&x, Targets::Classes(&[1, 2]), &quiet(0)).unwrap_err());
    assert!(e.contains("batch size"), "{e}");
    let e = data(m.evaluate(&x, Targets::Classes(&[1, 2]), 0).unwrap_err());
    assert!(e.contains("batch size"), "{e}");
    let mut r = Sequential::new([1])
        .layer(Dense::new(1))
        .compile(CompileOptions::new(
            Optimizer::sgd(),
            Loss::MeanSquaredError,
            &[],
        ))
        .unwrap();
    let e = data(
        r.evaluate(&[1.0, 2.0], Targets::Classes(&[1, 2]), 2)
            .unwrap_err(),
    );
    assert!(e.contains("sparse_categorical_crossentropy"), "{e}");
    let e = data(
        r.evaluate(&[1.0, 2.0], Targets::Values(&[1.0]), 2)
            .unwrap_err(),
    );
    assert!(e.contains("expected 2 target values"), "{e}");
}
