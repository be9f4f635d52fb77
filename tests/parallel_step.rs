//! Training steps split along the batch (`step::compile_training_step`): results do not
//! depend on the thread count (bit for bit), agree with the interpreter's unsplit step, and
//! steps that cannot be split say why and still train.

mod common;

use gradlift::init::Rng;
use gradlift::interp::{eval, Array};
use gradlift::optim::{self, Optimizer};
use gradlift::runtime::HostTensor;
use gradlift::step::{compile_training_step, CompiledStep, StepOptions};
use gradlift::text::parse;
use gradlift::DType::F32;
use gradlift::Graph;
use std::collections::HashMap;

fn model(file: &str) -> Graph {
    let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
    parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

/// Seeded images in [0, 1) and labels in 0..10 for `g`'s inputs `x` and `labels`.
fn batch(g: &Graph, seed: u64) -> Vec<(String, HostTensor)> {
    let mut rng = Rng::new(seed);
    let x = &g[g.find("x").unwrap()].ty;
    let l = &g[g.find("labels").unwrap()].ty;
    let xs = (0..x.shape.numel()).map(|_| rng.uniform() as f32).collect();
    let ls = (0..l.shape.numel()).map(|_| rng.below(10) as i32).collect();
    vec![
        ("x".into(), HostTensor::f32(x.shape.clone(), xs)),
        ("labels".into(), HostTensor::i32(l.shape.clone(), ls)),
        ("lr".into(), HostTensor::f32([], vec![0.001])),
    ]
}

fn compiled(g: &Graph, shards: usize, threads: usize) -> CompiledStep {
    let batch = g[g.find("x").unwrap()].ty.shape.dims()[0];
    let opts = StepOptions {
        threads,
        shards: Some(shards),
        ..StepOptions::default()
    };
    let (step, report) =
        compile_training_step(g, "loss", &Optimizer::adam(), None, batch, &opts).unwrap();
    assert_eq!(report.not_split, None);
    assert_eq!(report.shards, shards);
    step
}

/// Params and loss after `steps` steps on seeded batches.
fn train(step: &mut CompiledStep, g: &Graph, steps: u64) -> (Vec<(String, HostTensor)>, f32) {
    train_with(step, g, steps, true)
}

/// [`train`], with or without the learning-rate input (a schedule computes its own).
fn train_with(
    step: &mut CompiledStep,
    g: &Graph,
    steps: u64,
    with_lr: bool,
) -> (Vec<(String, HostTensor)>, f32) {
    let mut loss = 0.0;
    for s in 0..steps {
        let inputs = batch_for(g, s, with_lr);
        let refs: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let outs = step.run(&refs).unwrap();
        loss = outs
            .iter()
            .find(|(n, _)| n == "loss")
            .unwrap()
            .1
            .as_f32()
            .unwrap()[0];
    }
    (step.params(), loss)
}

#[test]
fn results_are_bit_identical_for_every_thread_count() {
    for (file, shards) in [("mlp.ir", 2), ("mlp.ir", 4), ("cnn.ir", 4), ("rnn.ir", 4)] {
        let g = model(file);
        let one = train(&mut compiled(&g, shards, 1), &g, 3);
        for threads in [2, 3] {
            let many = train(&mut compiled(&g, shards, threads), &g, 3);
            assert!(
                one == many,
                "{file}, {shards} shards: {threads} threads differ from 1"
            );
        }
        assert!(one.1.is_finite());
    }
}

#[test]
fn a_split_step_equals_the_interpreters_unsplit_step() {
    for (file, shards) in [("mlp.ir", 4), ("cnn.ir", 2), ("rnn.ir", 4)] {
        let g = model(file);
        let mut step = compiled(&g, shards, 2);
        let inputs = batch(&g, 7);
        let refs: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let outs = step.run(&refs).unwrap();

        let mut whole = g.clone();
        optim::training_step(&mut whole, "loss", &Optimizer::adam()).unwrap();
        let mut feeds = HashMap::new();
        for (name, t) in &inputs {
            let id = whole.find(name).unwrap();
            let data = t.to_f64();
            feeds.insert(
                id,
                Array {
                    shape: t.shape.clone(),
                    data,
                },
            );
        }
        let values = eval::<f64>(&whole, &feeds).unwrap();
        let terms = common::max_terms(&whole);
        let want_loss = values.get(whole.output("loss").unwrap()).unwrap().data[0];
        let got_loss = outs.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64()[0];
        common::close(
            &format!("{file} loss"),
            &[got_loss],
            &[want_loss],
            F32,
            terms,
        );
        for u in whole.updates() {
            let name = whole[u.target].name.clone().unwrap();
            let got = step
                .param(&name)
                .or_else(|| step.state(&name))
                .unwrap_or_else(|| panic!("{file}: no value for {name}"));
            let want = &values.get(u.value).unwrap().data;
            common::close(&format!("{file} {name}"), &got.to_f64(), want, F32, terms);
        }
    }
}

/// The RNN's shard graphs have their matmuls batched (`passes::batch_matmuls`, at the shard
/// batch): three steps on 2 and 4 shards agree with the same steps compiled without the pass
/// pipeline.
#[test]
fn a_split_rnn_step_with_batched_matmuls_equals_the_step_without_passes() {
    let g = model("rnn_unrolled.ir");
    for shards in [2, 4] {
        let run = |optimize: bool| {
            let opts = StepOptions {
                threads: 2,
                shards: Some(shards),
                optimize,
                ..StepOptions::default()
            };
            let (mut step, report) =
                compile_training_step(&g, "loss", &Optimizer::adam(), None, 32, &opts).unwrap();
            assert_eq!((report.shards, report.not_split), (shards, None));
            train(&mut step, &g, 3)
        };
        let (with, loss) = run(true);
        let (without, loss0) = run(false);
        let terms = 32 * 28;
        common::close(
            &format!("{shards} shards: loss"),
            &[loss as f64],
            &[loss0 as f64],
            F32,
            terms,
        );
        for ((name, a), (_, b)) in with.iter().zip(&without) {
            common::close(
                &format!("{shards} shards: {name}"),
                &a.to_f64(),
                &b.to_f64(),
                F32,
                terms,
            );
        }
    }
}

#[test]
fn a_loss_summed_over_the_batch_is_not_split_and_still_trains() {
    let text = "graph summed {
inputs:
  %x: f32[8,3] = input
params:
  %w: f32[3,1] = param glorot_uniform(seed=1)
body:
  %y: f32[8,1] = matmul %x, %w
  %sq: f32[8,1] = mul %y, %y
  %loss: f32[] = reduce_sum %sq, axes=[0,1], keepdims=false
outputs:
  loss = %loss
}";
    let g = parse(text, "summed.ir").unwrap();
    let opts = StepOptions {
        shards: Some(2),
        ..StepOptions::default()
    };
    let (mut step, report) =
        compile_training_step(&g, "loss", &Optimizer::sgd(), None, 8, &opts).unwrap();
    let why = report
        .not_split
        .expect("a summed loss cannot be averaged over shards");
    assert!(why.contains("reduce_sum over the batch"), "{why}");
    assert!(!step.is_split());
    step.input_f32_mut("x").unwrap().fill(1.0);
    step.input_f32_mut("lr").unwrap()[0] = 0.01;
    step.run_bound();
    let first = step.output("loss").unwrap().as_f32().unwrap()[0];
    step.run_bound();
    let second = step.output("loss").unwrap().as_f32().unwrap()[0];
    assert!(second < first, "{second} < {first}");
}

#[test]
fn bound_inputs_and_run_give_the_same_step() {
    let g = model("mlp.ir");
    let inputs = batch(&g, 3);
    let mut a = compiled(&g, 2, 2);
    let mut b = compiled(&g, 2, 2);
    let refs: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let outs = a.run(&refs).unwrap();
    b.input_f32_mut("x")
        .unwrap()
        .copy_from_slice(inputs[0].1.as_f32().unwrap());
    b.input_i32_mut("labels")
        .unwrap()
        .copy_from_slice(inputs[1].1.as_i32().unwrap());
    b.input_f32_mut("lr").unwrap()[0] = 0.001;
    b.run_bound();
    assert_eq!(outs, b.outputs());
    assert_eq!(a.params(), b.params());
    assert!(b.input_i32_mut("x").is_err(), "x is f32");
    assert!(b.input_f32_mut("nope").is_err());
}

#[test]
fn a_split_step_refuses_bad_inputs_and_weights_and_changes_nothing() {
    let g = model("mlp.ir");
    let mut step = compiled(&g, 2, 2);
    let before = step.params();
    let good = batch(&g, 1);
    let with = |name: &str, t: HostTensor| -> Vec<(&str, HostTensor)> {
        good.iter()
            .map(|(n, v)| (n.as_str(), if n == name { t.clone() } else { v.clone() }))
            .collect()
    };
    let cases: Vec<(Vec<(&str, HostTensor)>, &str)> = vec![
        (
            with("x", HostTensor::f32([32, 784], vec![0.0; 32 * 784])),
            "expected f32[64,784]",
        ),
        (
            with("labels", HostTensor::f32([64], vec![0.0; 64])),
            "dtype",
        ),
        (
            with("x", HostTensor::f32([64, 784], vec![0.0; 5])),
            "the buffer holds 5",
        ),
        (
            good[..2]
                .iter()
                .map(|(n, t)| (n.as_str(), t.clone()))
                .collect(),
            "missing input \"lr\"",
        ),
    ];
    for (inputs, needle) in cases {
        let e = step.run(&inputs).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}\nshould say {needle:?}");
    }
    let e = step
        .set_param(
            "dense.kernel",
            HostTensor::f32([784, 127], vec![0.0; 784 * 127]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("dense.kernel"), "{e}");
    assert!(step
        .set_state("nope", HostTensor::f32([], vec![0.0]))
        .is_err());
    assert_eq!(step.params(), before, "nothing ran, nothing changed");
}

#[test]
fn keras_models_with_dropout_and_clipping_train_the_same_on_any_thread_count() {
    use gradlift::data::load_default;
    use gradlift::nn::{
        Activation, CompileOptions, Dense, Dropout, FitOptions, Loss, Metric, Sequential, Targets,
    };
    use gradlift::optim::Clip;
    let (train, _) = load_default().unwrap();
    let x = train.slice(0, 512).images();
    let y = &train.labels[..512];
    for clip in [None, Some(Clip::GlobalNorm(1.0))] {
        let run = |threads: usize| {
            let mut o = CompileOptions::new(
                Optimizer::adam(),
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                &[Metric::Accuracy],
            )
            .threads(threads)
            .shards(4);
            if let Some(c) = clip {
                o = o.clip(c);
            }
            let mut m = Sequential::new([784])
                .layer(Dense::new(32).activation(Activation::Relu))
                .layer(Dropout::new(0.3))
                .layer(Dense::new(10).activation(Activation::Softmax))
                .compile(o)
                .unwrap();
            let opts = FitOptions {
                epochs: 2,
                batch_size: 64,
                verbose: false,
                ..FitOptions::default()
            };
            let h = m.fit(&x, Targets::Classes(y), &opts).unwrap();
            (
                h.get("loss").to_vec(),
                m.weights().get("dense.kernel").unwrap().to_vec(),
            )
        };
        let one = run(1);
        assert!(one.0[1] < one.0[0], "{clip:?}: trains: {:?}", one.0);
        assert!(
            one == run(2) && one == run(3),
            "{clip:?}: thread counts differ"
        );
    }
}

/// The default shard count depends on the model only: 4 shards where each has plenty of
/// forward work per parameter (the RNN), 2 where a shard's whole gradient would cost more
/// than its share of work (the CNN's 694 K params, the MLP), 1 for a small step.
#[test]
fn default_shard_counts_follow_the_work_per_parameter() {
    use gradlift::batch::{analyze, rebatch};
    use gradlift::step::default_shards;
    let at = |file: &str, b: usize| {
        let g = model(file);
        let x = g.find("x").unwrap();
        let b0 = g[x].ty.shape.dims()[0];
        let g = if b0 == b {
            g
        } else {
            rebatch(&g, &analyze(&g, b0).unwrap(), b)
        };
        default_shards(&g, b)
    };
    assert_eq!(at("cnn.ir", 64), 2);
    assert_eq!(at("mlp.ir", 64), 2);
    assert_eq!(at("rnn.ir", 64), 4);
    assert_eq!(at("mlp.ir", 8), 1);
}

/// The optimizers beside Adam and the learning-rate schedules (computed in the step from the
/// shared step counter, which the update tail increments after every part has read it): 1, 2
/// and 3 threads give the same bits over three steps, and the split step equals the
/// interpreter's unsplit step.
#[test]
fn every_optimizer_and_schedule_splits_bit_identically() {
    use gradlift::optim::Schedule;
    let g = model("mlp.ir");
    let batch = g[g.find("x").unwrap()].ty.shape.dims()[0];
    let optimizers = [
        Optimizer::adamw(),
        Optimizer::rmsprop(),
        Optimizer::rmsprop().with_momentum(0.9).with_centered(true),
        Optimizer::adagrad(),
        Optimizer::adam().with_schedule(Schedule::exponential_decay(0.01, 2, 0.5, true)),
        Optimizer::momentum(0.9).with_schedule(Schedule::piecewise_constant_decay(
            &[0, 1],
            &[0.1, 0.05, 0.01],
        )),
        Optimizer::adagrad().with_schedule(Schedule::cosine_decay(0.01, 2, 0.1)),
    ];
    for opt in optimizers {
        let compiled = |threads: usize| {
            let opts = StepOptions {
                threads,
                shards: Some(2),
                ..StepOptions::default()
            };
            let (step, report) =
                compile_training_step(&g, "loss", &opt, None, batch, &opts).unwrap();
            assert_eq!(report.not_split, None);
            step
        };
        let with_lr = opt.schedule().is_none();
        let one = train_with(&mut compiled(1), &g, 3, with_lr);
        assert!(one.1.is_finite(), "{opt:?}");
        for threads in [2, 3] {
            let many = train_with(&mut compiled(threads), &g, 3, with_lr);
            assert!(one == many, "{opt:?}: {threads} threads differ from 1");
        }

        let mut step = compiled(2);
        let inputs = batch_for(&g, 7, with_lr);
        let refs: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let outs = step.run(&refs).unwrap();
        let mut whole = g.clone();
        optim::training_step(&mut whole, "loss", &opt).unwrap();
        let mut feeds = HashMap::new();
        for (name, t) in &inputs {
            let Some(id) = whole.find(name) else {
                panic!("{opt:?}: no input {name}");
            };
            feeds.insert(
                id,
                Array {
                    shape: t.shape.clone(),
                    data: t.to_f64(),
                },
            );
        }
        let values = eval::<f64>(&whole, &feeds).unwrap();
        let terms = common::max_terms(&whole);
        let want = values.get(whole.output("loss").unwrap()).unwrap().data[0];
        let got = outs.iter().find(|(n, _)| n == "loss").unwrap().1.to_f64()[0];
        common::close(&format!("{opt:?} loss"), &[got], &[want], F32, terms);
        for u in whole.updates() {
            let name = whole[u.target].name.clone().unwrap();
            let got = step
                .param(&name)
                .or_else(|| step.state(&name))
                .unwrap_or_else(|| panic!("{opt:?}: no value for {name}"));
            let want = &values.get(u.value).unwrap().data;
            common::close(&format!("{opt:?} {name}"), &got.to_f64(), want, F32, terms);
        }
    }
}

/// [`batch`] without the learning rate when the step computes its own.
fn batch_for(g: &Graph, seed: u64, with_lr: bool) -> Vec<(String, HostTensor)> {
    let mut b = batch(g, seed);
    if !with_lr {
        b.retain(|(n, _)| n != "lr");
    }
    b
}
