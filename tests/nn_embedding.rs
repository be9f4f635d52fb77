//! The `Embedding` layer: its lookup against the table by hand (ids past either end read the
//! nearest row), its shape and configuration errors, its gradient against central
//! differences, a model that learns through it (JIT and interpreter alike), and the JIT
//! training step against the interpreter's.

mod common;

use common::fd::{fd_check, Case};
use gradlift::init::Rng;
use gradlift::interp::{eval_named, Array};
use gradlift::nn::{
    Backend, CompileOptions, Dense, Embedding, FitOptions, Flatten, GraphOptions, Initializer,
    Loss, Sequential, Targets,
};
use gradlift::optim::Optimizer;

#[test]
fn lookup_returns_the_rows_of_the_ids() {
    let m = Sequential::new([3]).layer(Embedding::new(4, 2));
    assert_eq!(m.output_shape().unwrap(), vec![3, 2]);
    assert_eq!(m.param_count().unwrap(), 8);
    let g = m.build_graph(&GraphOptions::predict(2)).unwrap().graph;
    let table: Vec<f64> = (0..8).map(|v| v as f64 * 1.5).collect();
    // the first layer's ids are the model's i32 input, read directly (no cast)
    let x = g.find("x").unwrap();
    assert_eq!(g[x].ty, gradlift::TensorType::i32([2, 3]));
    assert!(!gradlift::text::print(&g).contains("cast"));
    // 9 and -2 read the last and the first row
    let ids = vec![3.0, 0.0, 1.0, 2.0, 9.0, -2.0];
    let v = eval_named(
        &g,
        &[
            ("x", Array::new(vec![2, 3], ids).unwrap()),
            (
                "embedding.embeddings",
                Array::new(vec![4, 2], table.clone()).unwrap(),
            ),
        ],
    )
    .unwrap();
    let got = &v.output(&g, "predictions").unwrap().data;
    let want: Vec<f64> = [3, 0, 1, 2, 3, 0]
        .iter()
        .flat_map(|&r| [table[2 * r], table[2 * r + 1]])
        .collect();
    assert_eq!(got, &want);
}

/// `Model::predict` converts its f32 ids as `as i32` does (toward zero, saturating), on
/// the JIT and the interpreter alike; after another layer, the layer casts in the graph.
#[test]
fn predict_converts_f32_ids_like_a_cast() {
    for backend in [Backend::Jit, Backend::Interpreter] {
        let mut model = Sequential::new([1])
            .layer(Embedding::new(4, 1))
            .compile(
                CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[]).backend(backend),
            )
            .unwrap();
        model
            .weights_mut()
            .insert(
                "embedding.embeddings",
                vec![4, 1],
                vec![10.0, 20.0, 30.0, 40.0],
            )
            .unwrap();
        let x = [2.7, -0.5, 9.0, 1.0, f32::NAN, -1e10, 3.999];
        let p = model.predict(&x, 7).unwrap();
        assert_eq!(p, [30.0, 10.0, 40.0, 20.0, 10.0, 10.0, 40.0], "{backend:?}");
    }
    let g = Sequential::new([2])
        .layer(Dense::new(3))
        .layer(Embedding::new(4, 2))
        .build_graph(&GraphOptions::predict(1))
        .unwrap()
        .graph;
    let text = gradlift::text::print(&g);
    assert!(text.contains("%x: f32[1,2] = input"), "{text}");
    assert!(text.contains("cast "), "{text}");
}

#[test]
fn defaults_and_errors() {
    let e = Embedding::new(10, 3);
    assert_eq!(
        e.embeddings_initializer,
        Initializer::RandomUniform {
            low: -0.05,
            high: 0.05
        }
    );
    let g = Sequential::new([2])
        .layer(e)
        .build_graph(&GraphOptions::predict(1))
        .unwrap()
        .graph;
    let text = gradlift::text::print(&g);
    assert!(
        text.contains("%embedding.embeddings: f32[10,3] = param uniform(high=0.05, low=-0.05"),
        "{text}"
    );
    assert!(text.contains("gather %embedding.embeddings, "), "{text}");
    for (layer, what) in [
        (Embedding::new(0, 3), "input_dim"),
        (Embedding::new(3, 0), "output_dim"),
    ] {
        let e = Sequential::new([2])
            .layer(layer)
            .build_graph(&GraphOptions::predict(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(what) && e.contains("embedding (Embedding)"),
            "{e}"
        );
    }
}

/// A bag of embeddings: ids `[4]` -> vectors `[4, 3]` -> flat -> one output, mean squared
/// error; the gradient of every param against central differences (the table's rows of
/// repeated ids get the sum of their cotangents, unused rows zero).
#[test]
fn gradient_matches_central_differences() {
    let m = Sequential::new([4])
        .layer(Embedding::new(6, 3))
        .layer(Flatten::new())
        .layer(Dense::new(1))
        .seed(5);
    let mg = m
        .build_graph(&GraphOptions::evaluate(3, Loss::MeanSquaredError, &[]))
        .unwrap();
    let mut c = Case::new("embedding");
    c.g = mg.graph;
    c.loss = mg.loss.unwrap();
    c.wrt = mg.params.clone();
    let ids = vec![0.0, 5.0, 5.0, 2.0, 1.0, 1.0, 1.0, 3.0, 2.0, 0.0, 5.0, 4.0];
    c.feeds.insert(mg.x, Array::new(vec![3, 4], ids).unwrap());
    c.feeds.insert(
        mg.y.unwrap(),
        Array::new(vec![3, 1], vec![0.5, -1.0, 2.0]).unwrap(),
    );
    let mut rng = Rng::new(3);
    let r = fd_check(&c, 1000, &mut rng).unwrap();
    // every element of the table (18), the kernel (12) and the bias (1)
    assert_eq!(r.checked, 31);
}

/// Token ids whose target is the sum of a hidden value per token: the model must learn one
/// number per row of its table. Trained on the JIT and on the interpreter: the loss falls
/// by 100x, the table moves, and both engines end with the same params.
#[test]
fn a_model_learns_through_its_embedding() {
    let vocab = 7;
    let hidden = [0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 1.0];
    let mut rng = Rng::new(9);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        let mut t = 0.0;
        for _ in 0..3 {
            let id = rng.below(vocab as u64) as usize;
            x.push(id as f32);
            t += hidden[id];
        }
        y.push(t as f32);
    }
    let mut finals = Vec::new();
    for backend in [Backend::Jit, Backend::Interpreter] {
        let mut model = Sequential::new([3])
            .layer(Embedding::new(vocab, 2))
            .layer(Flatten::new())
            .layer(Dense::new(1))
            .seed(1)
            .compile(
                CompileOptions::new(Optimizer::adam(), Loss::MeanSquaredError, &[])
                    .learning_rate(0.05)
                    .backend(backend),
            )
            .unwrap();
        let before = model
            .weights()
            .get("embedding.embeddings")
            .unwrap()
            .to_vec();
        let start = model.evaluate(&x, Targets::Values(&y), 64).unwrap().loss;
        let opts = FitOptions {
            epochs: 60,
            batch_size: 16,
            verbose: false,
            ..FitOptions::default()
        };
        let h = model.fit(&x, Targets::Values(&y), &opts).unwrap();
        let end = model.evaluate(&x, Targets::Values(&y), 64).unwrap().loss;
        assert!(end < start / 100.0, "{backend:?}: loss {start} -> {end}");
        assert!(h.get("loss").last().unwrap() < &h.get("loss")[0]);
        let after = model
            .weights()
            .get("embedding.embeddings")
            .unwrap()
            .to_vec();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved,
            before.len(),
            "{backend:?}: every row is used, so every row moves"
        );
        finals.push(after);
    }
    for (a, b) in finals[0].iter().zip(&finals[1]) {
        assert!(
            (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
            "JIT {a} vs interpreter {b}"
        );
    }
}

/// A training step of an embedding model, whole and through the default pipeline, compiled
/// and compared with the interpreter (ids drawn in and past the vocabulary).
#[test]
fn training_step_matches_the_interpreter() {
    let m = Sequential::new([5])
        .layer(Embedding::new(9, 4))
        .layer(Flatten::new())
        .layer(Dense::new(2));
    let g = m
        .build_graph(&GraphOptions::evaluate(4, Loss::MeanSquaredError, &[]))
        .unwrap()
        .graph;
    common::sgd_step_matches_with("embedding sgd step", g, 3, |name, rng| {
        if name == "x" {
            rng.below(12) as f64 - 1.0
        } else {
            2.0 * rng.uniform() - 1.0
        }
    });
}

/// An embedding lookup carries the batch axis (the ids' axis 0 is the result's), so the
/// training step splits into shards; two shards give the params of the whole step.
#[test]
fn the_training_step_splits_along_the_batch() {
    use gradlift::runtime::HostTensor;
    use gradlift::step::{compile_training_step, StepOptions};
    let m = Sequential::new([3])
        .layer(Embedding::new(10, 4))
        .layer(Flatten::new())
        .layer(Dense::new(1))
        .seed(4);
    let g = m
        .build_graph(&GraphOptions::evaluate(8, Loss::MeanSquaredError, &[]))
        .unwrap()
        .graph;
    let mut rng = Rng::new(8);
    let ids: Vec<i32> = (0..24).map(|_| rng.below(10) as i32).collect();
    let y: Vec<f32> = (0..8).map(|i| i as f32 * 0.25).collect();
    let inputs = [
        ("x", HostTensor::i32([8, 3], ids)),
        ("y", HostTensor::f32([8, 1], y)),
        ("lr", HostTensor::f32([], vec![0.5])),
    ];
    let mut params = Vec::new();
    for shards in [1, 2] {
        let opts = StepOptions {
            shards: Some(shards),
            ..StepOptions::default()
        };
        let (mut step, report) =
            compile_training_step(&g, "loss", &Optimizer::sgd(), None, 8, &opts).unwrap();
        assert_eq!(report.not_split, None);
        assert_eq!(report.shards, shards);
        step.run(&inputs).unwrap();
        params.push(step.params());
    }
    let (whole, split) = (&params[0], &params[1]);
    assert_eq!(whole.len(), 3);
    for ((n, a), (m, b)) in whole.iter().zip(split) {
        assert_eq!(n, m);
        let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "{n}: {x} vs {y}");
        }
    }
    let table = |p: &[(String, HostTensor)]| {
        p.iter()
            .find(|(n, _)| n == "embedding.embeddings")
            .unwrap()
            .1
            .as_f32()
            .unwrap()
            .to_vec()
    };
    assert_ne!(table(whole), initial_table(&m), "the step moved the table");
}

/// The initial table of `m`.
fn initial_table(m: &Sequential) -> Vec<f32> {
    let g = m.build_graph(&GraphOptions::predict(1)).unwrap().graph;
    let id = g.find("embedding.embeddings").unwrap();
    let gradlift::Op::Param { init } = &g[id].op else {
        panic!("not a param")
    };
    gradlift::init::values(init, &g[id].ty.shape)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}
