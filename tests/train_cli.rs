//! `gradlift train` and `gradlift summary`, run as a subprocess on the shipped MNIST subset:
//! a short run learns (well above chance), a resumed run replays the uninterrupted one bit for
//! bit, bad arguments give a clear message and exit code 1, and the summary of the corpus
//! models is pinned by snapshots.

mod common;

use common::cli::{checkpoint_bits, fails, ok, run, scratch};
use std::path::Path;

/// The value after `key ` in `line` (`loss 0.1234 - accuracy 0.9` -> `accuracy` -> 0.9).
fn field(line: &str, key: &str) -> f64 {
    let rest = line
        .split(&format!("{key} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("bad {key} in {line:?}"))
}

/// The lines of `out` starting with `prefix`.
fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn train_mlp_on_part_of_the_subset_learns() {
    // Two epochs of 20 steps (1280 images): far less than one pass over the subset.
    let out = ok(&[
        "train",
        "ir/mlp.ir",
        "--limit",
        "1280",
        "--epochs",
        "2",
        "--seed",
        "1",
    ]);
    let epochs = lines(&out, "epoch ");
    assert_eq!(epochs.len(), 2, "{out}");
    assert!(epochs[0].starts_with("epoch 1/2: loss ") && epochs[0].contains(" - 20 steps - "));
    let (l1, l2) = (field(epochs[0], "loss"), field(epochs[1], "loss"));
    assert!(l2 < l1, "the training loss falls: {l1} -> {l2}\n{out}");
    assert!(field(epochs[1], "accuracy") > field(epochs[0], "accuracy"));
    let test = lines(&out, "test: ");
    assert_eq!(test.len(), 1, "{out}");
    assert!(
        test[0].contains("(1000 of 1000 images, 15 batches of 64 and one of 40)"),
        "{}",
        test[0]
    );
    let acc = field(test[0], "accuracy");
    assert!(acc > 0.75, "test accuracy {acc} (chance is 0.1)\n{out}");
    assert!(field(test[0], "loss") < 1.0, "{out}");
}

#[test]
fn sgd_and_learning_rate_options() {
    let out = ok(&[
        "train",
        "ir/mlp.ir",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--steps",
        "20",
    ]);
    assert!(out.contains("sgd lr 0.1"), "{out}");
    let epochs = lines(&out, "epoch ");
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0].contains("20 steps (steps 1..20 of 93)"), "{out}");
    assert!(field(lines(&out, "test: ")[0], "accuracy") > 0.5, "{out}");
}

/// `v` as string slices.
fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn resuming_replays_the_uninterrupted_run() {
    let d = scratch("train-cli-resume");
    let p = |n: &str| d.join(n).display().to_string();
    // 320 images: 5 steps per epoch; step 7 is inside the second (differently shuffled) epoch.
    let common = ["train", "ir/mlp.ir", "--limit", "320", "--epochs", "2"];
    let with = |extra: &[&str]| -> Vec<String> {
        common
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let whole = with(&["--steps", "7", "--save", &p("whole.st")]);
    let out = ok(&args(&whole));
    assert!(out.contains("saved") && out.contains("(step 7)"), "{out}");
    let first = with(&["--steps", "3", "--save", &p("first.st")]);
    ok(&args(&first));
    let rest = with(&[
        "--resume",
        &p("first.st"),
        "--steps",
        "7",
        "--save",
        &p("rest.st"),
    ]);
    let out = ok(&args(&rest));
    assert!(
        out.contains("resumed from") && out.contains("at step 3"),
        "{out}"
    );
    let epochs = lines(&out, "epoch ");
    assert_eq!(epochs.len(), 2, "{out}");
    assert!(epochs[0].contains("2 steps (steps 4..5 of 5)"), "{out}");
    assert!(epochs[1].contains("2 steps (steps 1..2 of 5)"), "{out}");

    let (w, f, r) = (
        checkpoint_bits(&d.join("whole.st")),
        checkpoint_bits(&d.join("first.st")),
        checkpoint_bits(&d.join("rest.st")),
    );
    // Params and Adam's state (m, v, step count): 4 + 2 * 4 + 1 tensors.
    assert_eq!(w.len(), 13);
    assert!(w.iter().any(|(n, _)| n == "optimizer.step"));
    assert_ne!(w, f, "3 more steps change the weights");
    assert_eq!(w, r, "resumed run differs from the uninterrupted one");
}

#[test]
fn resume_checks_the_checkpoint() {
    let d = scratch("train-cli-resume-check");
    let ck = d.join("adam.st").display().to_string();
    ok(&["train", "ir/mlp.ir", "--steps", "1", "--save", &ck]);
    let err = fails(&["train", "ir/mlp.ir", "--optimizer", "sgd", "--resume", &ck]);
    assert!(
        err.contains("saved with optimizer \"adam\", this run uses sgd"),
        "{err}"
    );
    // A checkpoint of another model: every mismatched tensor is named.
    let err = fails(&["train", "ir/cnn.ir", "--steps", "1", "--resume", &ck]);
    assert!(err.contains("conv2d.kernel"), "{err}");
    let missing = d.join("none.st").display().to_string();
    let err = fails(&["train", "ir/mlp.ir", "--resume", &missing]);
    assert!(
        err.contains("none.st") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn bad_data_directory_is_a_clear_error() {
    let err = fails(&["train", "ir/mlp.ir", "--data", "no/such/dir"]);
    assert!(
        err.contains("no/such/dir: --data: no such directory"),
        "{err}"
    );
    let d = scratch("train-cli-empty-data");
    let err = fails(&["train", "ir/mlp.ir", "--data", d.to_str().unwrap()]);
    assert!(
        err.contains("cannot load MNIST") && err.contains("train-images-idx3-ubyte: not found"),
        "{err}"
    );
    // Files that are not IDX.
    for f in gradlift::data::MNIST_FILES {
        std::fs::write(d.join(f), b"hello").unwrap();
    }
    let err = fails(&["train", "ir/mlp.ir", "--data", d.to_str().unwrap()]);
    assert!(
        err.contains("train-images-idx3-ubyte: bad magic number"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let err = fails(&["train", "ir/mlp.ir", "--batch-size", "32"]);
    assert!(
        err.contains(
            "--batch-size 32 differs from the model's batch dimension 64 (%x: f32[64,784])"
        ),
        "{err}"
    );
    let err = fails(&["train", "ir/mlp.ir", "--lr=-1"]);
    assert!(
        err.contains("--lr: the learning rate must be a positive number, found -1"),
        "{err}"
    );
    // finite in f64, but inf or 0 in the step's f32
    for (lr, as_f32) in [("1e39", "inf"), ("1e-50", "0")] {
        let err = fails(&["train", "ir/mlp.ir", "--lr", lr]);
        assert!(
            err.contains(&format!("is {as_f32} as an f32")),
            "--lr {lr}: {err}"
        );
    }
    // A model without the images and labels inputs.
    let err = fails(&["train", "ir/linear_regression.ir"]);
    assert!(
        err.contains("exactly two inputs, the images (f32) and the labels (i32)"),
        "{err}"
    );
    let err = fails(&["train", "ir/mlp.ir", "--limit", "10"]);
    assert!(
        err.contains("10 images, fewer than one batch of 64"),
        "{err}"
    );
}

#[test]
fn summary_of_corpus_models() {
    insta::assert_snapshot!("summary_mlp", ok(&["summary", "ir/mlp.ir"]));
    insta::assert_snapshot!("summary_cnn", ok(&["summary", "ir/cnn.ir"]));
}

#[test]
fn summary_of_the_training_step() {
    let out = ok(&["summary", "ir/mlp.ir", "--step"]);
    // Adam: m and v per param, a step counter; every param and state is updated.
    assert!(out.contains("  %lr      f32[]\n"), "{out}");
    assert!(
        out.contains("  total: 9 tensors, 203,541 elements\n"),
        "{out}"
    );
    assert!(out.contains("updates: 13\n"), "{out}");
    let sgd = ok(&["summary", "ir/mlp.ir", "--step", "--optimizer", "sgd"]);
    assert!(sgd.contains("state:\n  (none)\n"), "{sgd}");
    assert!(sgd.contains("updates: 4\n"), "{sgd}");
}

/// `--steps` beyond the end of `--epochs` says that the epoch limit ends training first (it
/// stopped silently).
#[test]
fn steps_beyond_the_epochs_are_noted() {
    let (code, out, err) = run(&["train", "ir/mlp.ir", "--limit", "640", "--steps", "500"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("note: --steps 500 is beyond --epochs 1 (10 steps of 64 per epoch): the epoch limit ends training at step 10, before the step count (raise --epochs to reach step 500)"),
        "{out}"
    );
    assert!(out.contains("trained to step 10 "), "{out}");
}

/// A checkpoint's step count must be a whole number of at most `i64::MAX` (a checkpoint at
/// step 2^64-1 used to be accepted: "trained to step 18446744073709551615"), with either
/// optimizer, and must agree with Adam's own step count.
#[test]
fn a_step_count_out_of_range_or_disagreeing_with_the_optimizer_is_refused() {
    let d = scratch("train-cli-bad_step");
    for opt in ["adam", "sgd"] {
        let good = d.join(format!("{opt}.st"));
        let (code, _, err) = run(&[
            "train",
            "ir/mlp.ir",
            "--optimizer",
            opt,
            "--limit",
            "192",
            "--save",
            good.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let c = gradlift::checkpoint::load(&good).unwrap();
        let with_step = |step: &str| {
            let mut meta = c.metadata.clone();
            meta.insert("step".into(), step.into());
            let bad = d.join(format!("{opt}-{step}.st"));
            gradlift::checkpoint::save(&bad, &c.tensors, &meta).unwrap();
            fails(&[
                "train",
                "ir/mlp.ir",
                "--optimizer",
                opt,
                "--limit",
                "192",
                "--resume",
                bad.to_str().unwrap(),
            ])
        };
        let err = with_step(&u64::MAX.to_string());
        assert!(
            err.contains("metadata step: 18446744073709551615 is more than 9223372036854775807, the most steps a training run counts"),
            "{err}"
        );
        let err = with_step("-1");
        assert!(
            err.contains("metadata step: expected a whole number from 0 to 9223372036854775807, found \"-1\""),
            "{err}"
        );
        if opt == "adam" {
            let err = with_step("5");
            assert!(
                err.contains("metadata step: the metadata says step 5, but the optimizer's own count optimizer.step holds 3 (expected 5)"),
                "{err}"
            );
        }
    }
}

/// Resuming a checkpoint that is already at the end of `--epochs` says that nothing is left
/// to train.
#[test]
fn resuming_at_the_end_says_nothing_is_left_to_train() {
    let d = scratch("train-cli-resume_at_end");
    let ck = d.join("c.st");
    let ck = ck.to_str().unwrap();
    ok(&["train", "ir/mlp.ir", "--limit", "192", "--save", ck]);
    let out = ok(&["train", "ir/mlp.ir", "--limit", "192", "--resume", ck]);
    assert!(
        out.contains("note: the checkpoint is at step 3, already at or beyond --epochs 1 (3 steps): nothing to train"),
        "{out}"
    );
    assert!(lines(&out, "epoch ").is_empty(), "{out}");
}

/// Writes the four MNIST files into `dir`: `n` images of `rows x cols` and `n` labels.
fn write_mnist(dir: &Path, n: usize, rows: usize, cols: usize) {
    use gradlift::data::{Idx, MNIST_FILES};
    for (i, name) in MNIST_FILES.iter().enumerate() {
        let idx = if i % 2 == 0 {
            Idx {
                dims: vec![n, rows, cols],
                data: (0..n * rows * cols).map(|k| (k * 7 % 256) as u8).collect(),
            }
        } else {
            Idx {
                dims: vec![n],
                data: (0..n).map(|k| (k % 10) as u8).collect(),
            }
        };
        idx.write_gz(&dir.join(format!("{name}.gz"))).unwrap();
    }
}

/// Images whose IDX dimensions differ from the model's input are refused even when the pixel
/// counts agree (56x14 images used to train the 28x28 CNN); a model of flat pixel vectors
/// takes any image of its pixel count.
#[test]
fn images_must_have_the_dimensions_the_model_expects() {
    let d = scratch("train-cli-image_dims");
    write_mnist(&d, 128, 56, 14);
    let dir = d.to_str().unwrap();
    let err = fails(&["train", "ir/cnn.ir", "--data", dir]);
    assert!(
        err.contains("ir/cnn.ir: the images input %x: f32[64,28,28,1] expects images of 28x28, but the training images are 56x14 (rows x cols in their IDX header) = 784 pixels"),
        "{err}"
    );
    let out = ok(&["train", "ir/mlp.ir", "--data", dir]);
    assert!(out.contains("trained to step 2 "), "{out}");
    // the same images at 28x28 fit the CNN
    let d = scratch("train-cli-image_dims_ok");
    write_mnist(&d, 64, 28, 28);
    let out = ok(&["train", "ir/cnn.ir", "--data", d.to_str().unwrap()]);
    assert!(out.contains("trained to step 1 "), "{out}");
}

/// `--optimizer` takes RMSprop, Adagrad and AdamW by their Keras names; their state (the
/// velocities, accumulators, moments and step count, by node name) is saved, and a resumed
/// run replays the uninterrupted one bit for bit.
#[test]
fn new_optimizers_train_save_and_resume_exactly() {
    let d = scratch("train-cli-optimizers");
    for (name, tensors, per_param) in [
        ("rmsprop", 8, "velocity"),
        ("adagrad", 8, "accumulator"),
        ("adamw", 13, "m"),
    ] {
        let p = |n: &str| d.join(format!("{name}-{n}")).display().to_string();
        let with = |extra: &[&str]| -> Vec<String> {
            ["train", "ir/mlp.ir", "--limit", "320", "--optimizer", name]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let out = ok(&args(&with(&["--steps", "4", "--save", &p("whole.st")])));
        assert!(out.contains(&format!("{name} lr 0.001")), "{out}");
        ok(&args(&with(&["--steps", "2", "--save", &p("first.st")])));
        let rest = with(&[
            "--resume",
            &p("first.st"),
            "--steps",
            "4",
            "--save",
            &p("rest.st"),
        ]);
        let out = ok(&args(&rest));
        assert!(out.contains("at step 2"), "{name}: {out}");
        let w = checkpoint_bits(Path::new(&p("whole.st")));
        let f = checkpoint_bits(Path::new(&p("first.st")));
        let r = checkpoint_bits(Path::new(&p("rest.st")));
        assert_eq!(
            w.len(),
            tensors,
            "{name}: {:?}",
            w.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        assert!(
            w.iter()
                .any(|(n, _)| *n == format!("dense.kernel.{per_param}")),
            "{name}"
        );
        assert_ne!(w, f, "{name}: 2 more steps change the weights");
        assert_eq!(
            w, r,
            "{name}: resumed run differs from the uninterrupted one"
        );
    }
    // an unknown name is a usage error listing the names
    let (code, _, err) = run(&["train", "ir/mlp.ir", "--optimizer", "adadelta"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("possible values: adam, sgd, adamw, rmsprop, adagrad"),
        "{err}"
    );
}

/// `--history` writes every epoch's logs, as CSV or JSON by the extension, with the values
/// the epoch lines print; any other extension is refused before training.
#[test]
fn history_is_written_as_csv_or_json() {
    let d = scratch("train-cli-history");
    let csv = d.join("h.csv");
    let json = d.join("h.json");
    let base = ["train", "ir/mlp.ir", "--limit", "320", "--epochs", "3"];
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["--history", csv.to_str().unwrap()]);
    let out = ok(&a);
    assert!(out.contains("history: 3 epochs written to"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "epoch,accuracy,loss", "{text}");
    assert_eq!(rows.len(), 4, "{text}");
    let epochs = lines(&out, "epoch ");
    for (i, row) in rows[1..].iter().enumerate() {
        let cells: Vec<f64> = row.split(',').map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells[0], i as f64);
        // the epoch line prints 4 decimals of the same means
        assert!(
            (cells[1] - field(epochs[i], "accuracy")).abs() < 1e-4,
            "{row} / {}",
            epochs[i]
        );
        assert!(
            (cells[2] - field(epochs[i], "loss")).abs() < 1e-4,
            "{row} / {}",
            epochs[i]
        );
    }
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["--history", json.to_str().unwrap()]);
    ok(&a);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["epoch"], serde_json::json!([0, 1, 2]));
    assert_eq!(doc["history"]["loss"].as_array().unwrap().len(), 3);
    // a resumed run logs only its own epochs, numbered from where it starts
    let ck = d.join("c.st");
    ok(&[
        "train",
        "ir/mlp.ir",
        "--limit",
        "320",
        "--save",
        ck.to_str().unwrap(),
    ]);
    let mut a: Vec<&str> = base.to_vec();
    a.extend([
        "--resume",
        ck.to_str().unwrap(),
        "--history",
        csv.to_str().unwrap(),
    ]);
    ok(&a);
    let text = std::fs::read_to_string(&csv).unwrap();
    let firsts: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(firsts, ["1", "2"], "{text}");
    let err = fails(&["train", "ir/mlp.ir", "--limit", "64", "--history", "h.txt"]);
    assert!(
        err.contains("--history h.txt: the file must end in .csv or .json"),
        "{err}"
    );
}

/// `--plot` draws one panel per quantity (loss, accuracy) with a point per epoch.
#[test]
fn plot_is_an_svg_with_a_point_per_epoch() {
    let d = scratch("train-cli-plot");
    let svg = d.join("curves.svg");
    let out = ok(&[
        "train",
        "ir/mlp.ir",
        "--limit",
        "320",
        "--epochs",
        "3",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.contains("plot: "), "{out}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
    assert!(
        text.contains("\nloss\n</text>") && text.contains("\naccuracy\n</text>"),
        "panel titles"
    );
    // two panels, each with a marker per epoch
    assert_eq!(text.matches("<circle").count(), 2 * 3, "markers");
    let err = fails(&["train", "ir/mlp.ir", "--limit", "64", "--plot", "c.png"]);
    assert!(
        err.contains("--plot c.png: the file must end in .svg"),
        "{err}"
    );
}

/// `--lr-schedule`: a piecewise schedule constant over the run trains exactly as `--lr` with
/// that rate; a schedule that decays trains differently; bad specs are named errors.
#[test]
fn learning_rate_schedules() {
    let run_with = |extra: &[&str]| -> String {
        let mut a = vec!["train", "ir/mlp.ir", "--steps", "12", "--optimizer", "sgd"];
        a.extend_from_slice(extra);
        ok(&a)
    };
    let loss = |out: &str| field(lines(out, "epoch ")[0], "loss");
    let constant = run_with(&["--lr", "0.05"]);
    let piecewise = run_with(&[
        "--lr-schedule",
        "piecewise:boundaries=1000,values=0.05/0.01",
    ]);
    assert_eq!(loss(&constant), loss(&piecewise), "{constant}\n{piecewise}");
    // from 0.05 down to 0.05 * 1e-6 within two steps: it learns less than the constant rate
    let decayed = run_with(&[
        "--lr",
        "0.05",
        "--lr-schedule",
        "exponential:decay_steps=1,decay_rate=0.000001",
    ]);
    assert!(loss(&decayed) > loss(&constant), "{decayed}\n{constant}");
    // a warmup from a tiny rate to 0.05 over 6 steps, then a cosine decay
    let warm = run_with(&[
        "--lr",
        "1e-6",
        "--lr-schedule",
        "cosine:decay_steps=100,warmup_target=0.05,warmup_steps=6",
    ]);
    let l = loss(&warm);
    assert!(l.is_finite() && l != loss(&constant), "{warm}");
    for (spec, want) in [
        ("linear:decay_steps=3", "unknown schedule `linear`"),
        (
            "cosine:alpha=0.1",
            "the cosine schedule needs `decay_steps=...`",
        ),
        (
            "cosine:decay_steps=ten",
            "decay_steps must be a whole number of steps, found `ten`",
        ),
        (
            "cosine:decay_steps=5,warmup_steps=2",
            "needs both warmup_target and warmup_steps",
        ),
        (
            "exponential:decay_steps=5,rate=0.5",
            "`rate` is not a setting of the exponential schedule",
        ),
        (
            "exponential:decay_steps=5,decay_rate=0",
            "decay_rate must be a positive number, found 0",
        ),
        (
            "piecewise:boundaries=5/3,values=1/2/3",
            "boundaries must be strictly increasing",
        ),
        (
            "cosine:decay_steps=5,decay_steps=6",
            "`decay_steps` is given twice",
        ),
    ] {
        let err = fails(&["train", "ir/mlp.ir", "--steps", "1", "--lr-schedule", spec]);
        assert!(
            err.contains("--lr-schedule") && err.contains(want),
            "{spec}: {err}"
        );
    }
    let err = fails(&[
        "train",
        "ir/mlp.ir",
        "--lr",
        "0.1",
        "--lr-schedule",
        "piecewise:boundaries=5,values=0.1/0.01",
    ]);
    assert!(err.contains("omit --lr"), "{err}");
}
