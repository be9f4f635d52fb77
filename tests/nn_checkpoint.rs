//! `Model::save` / `Model::load`: a checkpoint holds the params, every optimizer state and
//! the counts, so training resumed in a fresh model ends bit for bit where the uninterrupted
//! run ends (Adam and momentum, shuffling, dropout, a schedule); the same seed gives the same
//! bits twice; truncated, corrupt or mismatched files are errors naming the tensor and leave
//! the model untouched.

use gradlift::checkpoint;
use gradlift::init::Rng;
use gradlift::nn::{
    Activation, CompileOptions, Dense, Dropout, FitOptions, Loss, Metric, Model, Sequential,
    Targets,
};
use gradlift::optim::Optimizer;
use std::collections::BTreeMap;
use std::path::PathBuf;

const N: usize = 50; // batches of 16, 16, 16 and 2

fn data() -> (Vec<f32>, Vec<i32>) {
    let mut r = Rng::new(11);
    let x = (0..N * 4).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect();
    let y = (0..N).map(|_| r.below(3) as i32).collect();
    (x, y)
}

fn model(optimizer: Optimizer, hidden: usize, seed: u64) -> Model {
    Sequential::new([4])
        .seed(seed)
        .layer(Dense::new(hidden).activation(Activation::Relu))
        .layer(Dropout::new(0.25))
        .layer(Dense::new(3).activation(Activation::Softmax))
        .compile(
            CompileOptions::new(
                optimizer,
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                &[Metric::Accuracy],
            )
            .learning_rate(0.05),
        )
        .unwrap()
}

fn halve_after_two(epoch: usize, lr: f64) -> f64 {
    if epoch >= 2 {
        lr * 0.5
    } else {
        lr
    }
}

fn opts(initial_epoch: usize, epochs: usize) -> FitOptions {
    FitOptions {
        epochs,
        initial_epoch,
        batch_size: 16,
        seed: 7,
        verbose: false,
        schedule: Some(halve_after_two),
        ..FitOptions::default()
    }
}

/// Every tensor of the model's weights (params and optimizer state) as raw bits.
fn bits(m: &Model) -> BTreeMap<String, Vec<u32>> {
    let w = m.weights();
    w.names()
        .into_iter()
        .map(|n| {
            let v = w.get(n).unwrap().iter().map(|x| x.to_bits()).collect();
            (n.to_string(), v)
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradlift-nn-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn check_resume(optimizer: Optimizer, file: &str) {
    check_resume_with(optimizer, file, Some(halve_after_two));
}

/// [`check_resume`] with the per-epoch host schedule `schedule`.
fn check_resume_with(optimizer: Optimizer, file: &str, schedule: Option<fn(usize, f64) -> f64>) {
    let opts = |initial_epoch, epochs| FitOptions {
        schedule,
        ..opts(initial_epoch, epochs)
    };
    let (x, y) = data();
    let y = Targets::Classes(&y);
    let mut whole = model(optimizer.clone(), 8, 1);
    whole.fit(&x, y, &opts(0, 4)).unwrap();

    // Same seed, same bits: determinism of a whole run.
    let mut again = model(optimizer.clone(), 8, 1);
    again.fit(&x, y, &opts(0, 4)).unwrap();
    assert_eq!(bits(&whole), bits(&again), "same seed, same final weights");

    let mut first = model(optimizer.clone(), 8, 1);
    first.fit(&x, y, &opts(0, 2)).unwrap();
    assert_eq!((first.epochs_trained(), first.steps_trained()), (2, 8));
    let path = scratch(file);
    first.save(&path).unwrap();

    // The file holds every param and optimizer state, and the counts.
    let c = checkpoint::load(&path).unwrap();
    assert_eq!(c.tensors.len(), first.weights().len());
    assert!(c.tensors.len() > 4, "optimizer state is saved too");
    assert_eq!(c.metadata["epoch"], "2");
    assert_eq!(c.metadata["step"], "8");
    assert_eq!(c.metadata["contents"], "training");

    // A fresh model with other initial weights continues from the file.
    let mut resumed = model(optimizer, 8, 99);
    assert_ne!(bits(&resumed), bits(&first));
    resumed.load(&path).unwrap();
    assert_eq!(bits(&resumed), bits(&first), "load restores every tensor");
    assert_eq!(resumed.epochs_trained(), 2);
    assert_eq!(
        resumed.learning_rate.to_bits(),
        first.learning_rate.to_bits()
    );
    let h = resumed
        .fit(&x, y, &opts(resumed.epochs_trained(), 4))
        .unwrap();
    assert_eq!(h.get("loss").len(), 2, "epochs 2 and 3 ran");
    assert_eq!(bits(&resumed), bits(&whole), "resumed run ends bit for bit");
    assert_eq!(resumed.steps_trained(), whole.steps_trained());
    assert_eq!(
        resumed.learning_rate.to_bits(),
        whole.learning_rate.to_bits()
    );
    // And so do the next results of the compiled inference variants.
    let p1 = whole.predict(&x, 16).unwrap();
    let p2 = resumed.predict(&x, 16).unwrap();
    assert_eq!(
        p1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        p2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn adam_resumes_bit_for_bit() {
    check_resume(Optimizer::adam(), "adam.safetensors");
}

#[test]
fn momentum_resumes_bit_for_bit() {
    check_resume(Optimizer::momentum(0.9), "momentum.safetensors");
}

/// Snapshot of what a failed load must not change.
fn snapshot(m: &mut Model, x: &[f32]) -> (BTreeMap<String, Vec<u32>>, usize, u64, u64, Vec<u32>) {
    let p = m.predict(x, 16).unwrap();
    (
        bits(m),
        m.epochs_trained(),
        m.steps_trained(),
        m.learning_rate.to_bits(),
        p.iter().map(|v| v.to_bits()).collect(),
    )
}

#[test]
fn bad_files_are_errors_naming_the_tensor_and_leave_the_model_untouched() {
    let (x, y) = data();
    let y = Targets::Classes(&y);
    let mut a = model(Optimizer::adam(), 8, 1);
    a.fit(&x, y, &opts(0, 1)).unwrap();
    let path = scratch("bad.safetensors");
    a.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut m = model(Optimizer::adam(), 8, 2);
    m.fit(&x, y, &opts(0, 1)).unwrap();
    let before = snapshot(&mut m, &x);

    // Truncated: the last tensor in the data section (the last name) loses its tail.
    let last = checkpoint::load(&path)
        .unwrap()
        .tensors
        .last()
        .unwrap()
        .name
        .clone();
    std::fs::write(&path, &good[..good.len() - 2]).unwrap();
    let e = m.load(&path).unwrap_err().to_string();
    assert!(e.contains(&last) && e.contains("bad.safetensors"), "{e}");
    assert_eq!(snapshot(&mut m, &x), before);

    // One flipped bit in a tensor's data: the checksum names it.
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let e = m.load(&path).unwrap_err().to_string();
    assert!(e.contains(&last) && e.contains("checksum"), "{e}");
    assert_eq!(snapshot(&mut m, &x), before);

    // Not a checkpoint at all.
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = m.load(&path).unwrap_err().to_string();
    assert!(e.contains("not a gradlift checkpoint"), "{e}");
    assert_eq!(snapshot(&mut m, &x), before);

    // Another layer width: the mismatch names the tensor and both shapes.
    std::fs::write(&path, &good).unwrap();
    let mut narrow = model(Optimizer::adam(), 5, 1);
    let e = narrow.load(&path).unwrap_err().to_string();
    assert!(
        e.contains("tensor dense.kernel: shape mismatch")
            && e.contains("f32[4,5]")
            && e.contains("f32[4,8]"),
        "{e}"
    );

    // Another optimizer: its state is missing, Adam's is unexpected.
    let mut sgd = model(Optimizer::momentum(0.9), 8, 2);
    sgd.fit(&x, y, &opts(0, 1)).unwrap();
    let before = snapshot(&mut sgd, &x);
    let e = sgd.load(&path).unwrap_err().to_string();
    assert!(
        e.contains("missing tensor") && e.contains("unexpected tensor"),
        "{e}"
    );
    assert_eq!(snapshot(&mut sgd, &x), before);

    // The params of a full checkpoint still load alone, the state staying as it was.
    let state_before: Vec<(String, Vec<u32>)> = bits(&sgd)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("kernel") && !k.ends_with("bias"))
        .collect();
    assert!(!state_before.is_empty());
    sgd.load_weights(&path).unwrap();
    let after = bits(&sgd);
    for (k, v) in &state_before {
        assert_eq!(&after[k], v, "{k} is untouched by load_weights");
    }
    assert_eq!(after["dense.kernel"], bits(&a)["dense.kernel"]);
}

/// `Model::load` bounds the step count and checks it against the optimizer's own count, as
/// `gradlift train --resume` does (a step of 2^64-1 used to load), leaving the model as it was.
#[test]
fn impossible_step_counts_are_refused() {
    let (x, y) = data();
    let y = Targets::Classes(&y);
    for (opt, file) in [
        (Optimizer::adam(), "step-adam.safetensors"),
        (Optimizer::momentum(0.9), "step-momentum.safetensors"),
    ] {
        let mut a = model(opt.clone(), 8, 1);
        a.fit(&x, y, &opts(0, 1)).unwrap();
        let path = scratch(file);
        a.save(&path).unwrap();
        let c = checkpoint::load(&path).unwrap();
        let mut m = model(opt, 8, 2);
        let before = snapshot(&mut m, &x);
        for (step, expected) in [
            (u64::MAX.to_string(), "is more than 9223372036854775807"),
            ("4x".to_string(), "expected a whole number"),
        ] {
            let mut meta = c.metadata.clone();
            meta.insert("step".into(), step);
            checkpoint::save(&path, &c.tensors, &meta).unwrap();
            let e = m.load(&path).unwrap_err().to_string();
            assert!(e.contains("metadata step: ") && e.contains(expected), "{e}");
            assert_eq!(snapshot(&mut m, &x), before);
        }
    }
}

#[test]
fn rmsprop_resumes_bit_for_bit() {
    check_resume(
        Optimizer::rmsprop().with_momentum(0.5).with_centered(true),
        "rmsprop.safetensors",
    );
}

#[test]
fn adagrad_resumes_bit_for_bit() {
    check_resume(Optimizer::adagrad(), "adagrad.safetensors");
}

#[test]
fn adamw_resumes_bit_for_bit() {
    check_resume(Optimizer::adamw(), "adamw.safetensors");
}

/// A per-epoch host schedule and an optimizer's own schedule are not combined: `fit` says so
/// and trains nothing (Keras refuses to set a scheduled optimizer's learning rate).
#[test]
fn a_host_schedule_and_an_optimizer_schedule_are_refused_together() {
    use gradlift::optim::Schedule;
    let (x, y) = data();
    let opt = Optimizer::adam().with_schedule(Schedule::cosine_decay(0.01, 10, 0.0));
    let mut m = model(opt, 8, 1);
    let before = bits(&m);
    let e = m.fit(&x, Targets::Classes(&y), &opts(0, 1)).unwrap_err();
    assert!(e.to_string().contains("use one of the two"), "{e}");
    assert_eq!(bits(&m), before);
    assert_eq!(m.steps_trained(), 0);
}

/// A schedule's learning rate comes from the saved step counter, so a resumed run continues
/// the schedule where it stopped.
#[test]
fn scheduled_optimizers_resume_bit_for_bit() {
    use gradlift::optim::Schedule;
    check_resume_with(
        Optimizer::adam().with_schedule(Schedule::exponential_decay(0.05, 3, 0.7, true)),
        "adam-exponential.safetensors",
        None,
    );
    check_resume_with(
        Optimizer::sgd().with_schedule(Schedule::piecewise_constant_decay(
            &[5, 10],
            &[0.1, 0.05, 0.01],
        )),
        "sgd-piecewise.safetensors",
        None,
    );
    check_resume_with(
        Optimizer::rmsprop().with_schedule(Schedule::cosine_decay(0.01, 12, 0.1)),
        "rmsprop-cosine.safetensors",
        None,
    );
}
