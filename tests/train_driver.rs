//! One training driver, one checkpoint schema: `gradlift train` on a model's graph (printed
//! as `.ir` text) and `Model::fit` on the same model and data compute the same bits, and each
//! loads the other's checkpoint and continues bit for bit as if it had written it.

mod common;

use common::cli::{checkpoint_bits, ok, scratch};
use gradlift::checkpoint;
use gradlift::data::load_default;
use gradlift::nn::{
    Activation, CompileOptions, Dense, FitOptions, GraphOptions, Loss, Metric, Model, Sequential,
    Targets,
};
use gradlift::optim::Optimizer;
use gradlift::train::checkpoint::SCHEMA;

/// Training examples used: 5 steps of 64 per epoch.
const N: usize = 320;

fn model(seed: u64) -> Model {
    Sequential::new([784])
        .seed(seed)
        .layer(Dense::new(16).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(CompileOptions::new(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap()
}

/// The model's training-mode forward graph at batch 64 (inputs `x`, `y`; outputs `loss`,
/// `accuracy`) as `.ir` text: what `gradlift train` trains.
fn model_ir(m: &Model) -> String {
    let o = &m.options;
    let g = m
        .model
        .build_graph(&GraphOptions::train(64, o.loss, &o.metrics))
        .unwrap()
        .graph;
    gradlift::text::print(&g)
}

/// Every param and optimizer state of a model as raw bits, by name.
fn model_bits(m: &Model) -> Vec<(String, Vec<u32>)> {
    let w = m.weights();
    w.names()
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                w.get(n).unwrap().iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

fn fit(m: &mut Model, initial_epoch: usize, epochs: usize) {
    let (train, _) = load_default().unwrap();
    let train = train.slice(0, N);
    let opts = FitOptions {
        epochs,
        initial_epoch,
        batch_size: 64,
        seed: 3,
        verbose: false,
        ..FitOptions::default()
    };
    m.fit(&train.images(), Targets::Classes(&train.labels), &opts)
        .unwrap();
}

#[test]
fn the_cli_and_model_fit_train_alike_and_read_each_others_checkpoints() {
    let d = scratch("train-driver");
    let p = |n: &str| d.join(n).display().to_string();
    let mut lib = model(5);
    std::fs::write(d.join("model.ir"), model_ir(&lib)).unwrap();
    let cli = |extra: &[&str]| {
        let mut args = vec!["train", &p("model.ir")[..], "--limit", "320", "--seed", "3"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ok(&args)
    };

    // Two epochs each way: the same driver, plan and step give the same bits.
    let out = cli(&["--epochs", "2", "--save", &p("cli.st")]);
    assert!(out.contains("saved") && out.contains("(step 10)"), "{out}");
    fit(&mut lib, 0, 2);
    lib.save(d.join("lib.st")).unwrap();
    let cli_bits = checkpoint_bits(&d.join("cli.st"));
    assert_eq!(
        cli_bits.len(),
        13,
        "4 params, their 8 Adam moments, the step count"
    );
    assert_eq!(cli_bits, checkpoint_bits(&d.join("lib.st")));

    // One schema: the same metadata, whoever wrote the file.
    let (a, b) = (
        checkpoint::load(d.join("cli.st")).unwrap(),
        checkpoint::load(d.join("lib.st")).unwrap(),
    );
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.metadata["schema"], SCHEMA);
    assert_eq!(a.metadata["step"], "10");
    assert_eq!(a.metadata["epoch"], "2");

    // Model::load reads the CLI's file: a fresh model (other initial weights) holds its bits
    // and counts, and a third epoch ends where the CLI's third epoch from its own file does.
    let mut from_cli = model(99);
    from_cli.load(d.join("cli.st")).unwrap();
    assert_eq!(model_bits(&from_cli), cli_bits);
    assert_eq!(
        (from_cli.epochs_trained(), from_cli.steps_trained()),
        (2, 10)
    );
    assert_eq!(from_cli.learning_rate.to_bits(), 0.001f64.to_bits());
    fit(&mut from_cli, 2, 3);
    from_cli.save(d.join("lib3.st")).unwrap();

    // gradlift train resumes the library's file.
    let out = cli(&[
        "--epochs",
        "3",
        "--resume",
        &p("lib.st"),
        "--save",
        &p("cli3.st"),
    ]);
    assert!(
        out.contains("resumed from") && out.contains("at step 10"),
        "{out}"
    );
    assert!(
        out.contains("epoch 3/3: ") && out.contains("(step 15)"),
        "{out}"
    );
    let third = checkpoint_bits(&d.join("cli3.st"));
    assert_ne!(third, cli_bits, "the third epoch trains");
    assert_eq!(third, checkpoint_bits(&d.join("lib3.st")));
}

/// A checkpoint without the schema entry (the metadata `gradlift train` wrote before the
/// two front ends shared one schema) is refused by both, naming what was found and what is
/// expected.
#[test]
fn a_checkpoint_of_an_earlier_schema_is_refused_by_both() {
    let d = scratch("train-driver-old-schema");
    let mut m = model(5);
    std::fs::write(d.join("model.ir"), model_ir(&m)).unwrap();
    fit(&mut m, 0, 1);
    m.save(d.join("new.st")).unwrap();
    let c = checkpoint::load(d.join("new.st")).unwrap();
    let old = std::collections::BTreeMap::from([
        ("graph".to_string(), "sequential".to_string()),
        ("optimizer".to_string(), "adam".to_string()),
        ("lr".to_string(), "0.001".to_string()),
        ("seed".to_string(), "3".to_string()),
        ("batch_size".to_string(), "64".to_string()),
        ("step".to_string(), "5".to_string()),
        ("train_images".to_string(), "320".to_string()),
    ]);
    let path = d.join("old.st");
    checkpoint::save(&path, &c.tensors, &old).unwrap();
    let expected = format!(
        "metadata schema: missing: expected schema \"{SCHEMA}\", found the schema of earlier `gradlift train` checkpoints"
    );
    let e = model(7).load(&path).unwrap_err().to_string();
    assert!(e.contains("old.st") && e.contains(&expected), "{e}");
    let err = common::cli::fails(&[
        "train",
        d.join("model.ir").to_str().unwrap(),
        "--limit",
        "320",
        "--resume",
        path.to_str().unwrap(),
    ]);
    assert!(err.contains("old.st") && err.contains(&expected), "{err}");

    // The metadata `Model::save` wrote before: refused too, naming it.
    let old = std::collections::BTreeMap::from([
        ("model".to_string(), "sequential".to_string()),
        ("params".to_string(), c.metadata["params"].clone()),
        ("contents".to_string(), "training".to_string()),
        ("optimizer".to_string(), "Adam { .. }".to_string()),
        (
            "loss".to_string(),
            "sparse_categorical_crossentropy".to_string(),
        ),
        ("epoch".to_string(), "1".to_string()),
        ("step".to_string(), "5".to_string()),
        ("learning_rate".to_string(), "0.001".to_string()),
    ]);
    checkpoint::save(&path, &c.tensors, &old).unwrap();
    let e = model(7).load(&path).unwrap_err().to_string();
    assert!(
        e.contains("found the schema of earlier `Model::save` checkpoints"),
        "{e}"
    );

    // A weights file (params only) is not a training checkpoint: resuming from it is refused.
    let weights = d.join("weights.st");
    m.save_weights(&weights).unwrap();
    let e = model(7).load(&weights).unwrap_err().to_string();
    assert!(
        e.contains("weights.st: metadata contents: expected \"training\" (params and optimizer state), found \"weights\""),
        "{e}"
    );
}
