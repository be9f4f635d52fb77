//! Data-parallel training over MPI: `mpirun -n N gradlift train` against one process on the
//! same global batches. Needs the `mpi` feature and `mpirun` (OpenMPI); without either each
//! test prints why and passes (`.ci/run` installs OpenMPI and runs this file with
//! `--features mpi`). Every run is under a timeout, so a hang fails the test.

mod common;

use common::cli;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Seconds any `mpirun` may take before the test fails (a hang, not a slow machine: each run
/// takes about a second).
const TIMEOUT: u64 = 120;

/// Why the multi-rank tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if !cfg!(feature = "mpi") {
        return Some("built without the `mpi` feature".into());
    }
    match Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `mpirun` on the PATH".into()),
    }
}

macro_rules! require_mpi {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// `mpirun -n ranks gradlift ARGS` on the loopback interface (as root too), under
/// `timeout`: exit code, stdout, stderr.
fn mpirun(ranks: usize, args: &[&str]) -> (i32, String, String) {
    mpirun_apps(&[(ranks, args)])
}

/// `mpirun -n a ARGS_A : -n b ARGS_B ...` (several programs in one world).
fn mpirun_apps(apps: &[(usize, &[&str])]) -> (i32, String, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg(TIMEOUT.to_string())
        .arg("mpirun")
        .args(["--oversubscribe", "--mca", "btl", "self,vader"])
        .args(["--mca", "pml", "ob1", "--mca", "oob_tcp_if_include", "lo"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (i, (ranks, args)) in apps.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-n", &ranks.to_string(), env!("CARGO_BIN_EXE_gradlift")])
            .args(*args);
    }
    let start = std::time::Instant::now();
    let out = cmd.output().expect("timeout and mpirun run");
    assert!(
        start.elapsed() < Duration::from_secs(TIMEOUT),
        "mpirun {apps:?} hung"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The MLP of `ir/mlp.ir` with a batch of `batch` examples, written into `dir`.
fn mlp_with_batch(dir: &Path, batch: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir"))
        .expect("ir/mlp.ir");
    let p = dir.join(format!("mlp{batch}.ir"));
    std::fs::write(&p, text.replace("[64", &format!("[{batch}"))).expect("writes");
    p
}

/// Trains `model` for `steps` steps on one process with `shards` shards and on `ranks`
/// ranks with `shards / ranks` shards each; returns the two checkpoints.
fn both(
    dir: &Path,
    model: &Path,
    steps: usize,
    ranks: usize,
    shards: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let single = dir.join("single.safetensors");
    let dist = dir.join("dist.safetensors");
    let steps = steps.to_string();
    let common = [
        "train",
        path(model),
        "--steps",
        &steps,
        "--threads",
        "1",
        "--save",
    ];
    let shards_s = shards.to_string();
    let mut a = common.to_vec();
    a.extend([path(&single), "--shards", &shards_s]);
    cli::ok(&a);
    let local = (shards / ranks).to_string();
    let mut b = common.to_vec();
    b.extend([path(&dist), "--shards", &local]);
    let (code, out, err) = mpirun(ranks, &b);
    assert_eq!(code, 0, "mpirun -n {ranks} failed:\n{out}\n{err}");
    // rank 0 alone prints
    assert_eq!(out.matches("epoch 1/1").count(), 1, "{out}");
    assert!(
        out.contains(&format!("data-parallel: {ranks} ranks")),
        "{out}"
    );
    (single, dist)
}

/// One shard per rank: each rank's gradient is one shard's, and the all-reduce adds them in
/// rank order as one process adds its shards, so the checkpoints are the same bytes.
#[test]
fn two_ranks_train_the_bits_of_one_process() {
    require_mpi!();
    let dir = cli::scratch("mpi_two_ranks");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir");
    let (single, dist) = both(&dir, &model, 4, 2, 2);
    assert_eq!(cli::checkpoint_bits(&single), cli::checkpoint_bits(&dist));
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(&dist).unwrap()
    );
}

#[test]
fn three_ranks_train_the_bits_of_one_process() {
    require_mpi!();
    let dir = cli::scratch("mpi_three_ranks");
    let model = mlp_with_batch(&dir, 96);
    let (single, dist) = both(&dir, &model, 3, 3, 3);
    assert_eq!(cli::checkpoint_bits(&single), cli::checkpoint_bits(&dist));
}

/// Two shards per rank: the ranks' averages are averaged, a regrouping of one process's
/// sum over four shards, so the params agree to f32 rounding.
#[test]
fn several_shards_per_rank_agree_within_rounding() {
    require_mpi!();
    let dir = cli::scratch("mpi_shards_per_rank");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir");
    let (single, dist) = both(&dir, &model, 4, 2, 4);
    let a = cli::checkpoint_bits(&single);
    let b = cli::checkpoint_bits(&dist);
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let max = x
            .iter()
            .map(|&v| f32::from_bits(v).abs())
            .fold(0.0f32, f32::max);
        for (&p, &q) in x.iter().zip(y) {
            let (p, q) = (f32::from_bits(p), f32::from_bits(q));
            assert!(
                (p - q).abs() <= 1e-5 * max.max(1e-3),
                "{name}: {p} vs {q} (largest {max})"
            );
        }
    }
}

/// A checkpoint written by rank 0 resumes on every rank: 2 + 2 steps equal 4 steps.
#[test]
fn every_rank_resumes_from_rank_0s_checkpoint() {
    require_mpi!();
    let dir = cli::scratch("mpi_resume");
    let model = "ir/mlp.ir";
    let half = dir.join("half.safetensors");
    let resumed = dir.join("resumed.safetensors");
    let whole = dir.join("whole.safetensors");
    let run = |args: &[&str]| {
        let mut a = vec!["train", model, "--threads", "1", "--shards", "1"];
        a.extend(args);
        let (code, out, err) = mpirun(2, &a);
        assert_eq!(code, 0, "{out}\n{err}");
    };
    run(&["--steps", "2", "--save", path(&half)]);
    run(&[
        "--steps",
        "4",
        "--resume",
        path(&half),
        "--save",
        path(&resumed),
    ]);
    run(&["--steps", "4", "--save", path(&whole)]);
    assert_eq!(cli::checkpoint_bits(&resumed), cli::checkpoint_bits(&whole));
}

/// Ranks given different models stop at start-up with an error naming the mismatch.
#[test]
fn mismatched_graphs_end_every_rank_with_an_error() {
    require_mpi!();
    let dir = cli::scratch("mpi_mismatch");
    let other = dir.join("other.ir");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir"))
        .expect("ir/mlp.ir");
    std::fs::write(&other, text.replace("seed=2", "seed=3")).expect("writes");
    let a: &[&str] = &["train", "ir/mlp.ir", "--steps", "2", "--threads", "1"];
    let b: &[&str] = &["train", path(&other), "--steps", "2", "--threads", "1"];
    let (code, out, err) = mpirun_apps(&[(1, a), (1, b)]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("the ranks disagree on"), "{err}");
    assert!(!out.contains("epoch 1/1"), "{out}");
}

/// Ranks given different seeds would train different batches: they stop before training.
#[test]
fn mismatched_seeds_end_every_rank_with_an_error() {
    require_mpi!();
    let a: &[&str] = &["train", "ir/mlp.ir", "--steps", "2", "--threads", "1"];
    let b: &[&str] = &[
        "train",
        "ir/mlp.ir",
        "--steps",
        "2",
        "--threads",
        "1",
        "--seed",
        "7",
    ];
    let (code, out, err) = mpirun_apps(&[(1, a), (1, b)]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("the ranks disagree on the training plan"),
        "{err}"
    );
    assert!(!out.contains("epoch 1/1"), "{out}");
}

/// A rank that fails (here: its data directory is missing) ends the others, which would
/// otherwise wait for it in a collective.
#[test]
fn a_failing_rank_ends_every_rank() {
    require_mpi!();
    let a: &[&str] = &["train", "ir/mlp.ir", "--steps", "2", "--threads", "1"];
    let b: &[&str] = &[
        "train",
        "ir/mlp.ir",
        "--steps",
        "2",
        "--threads",
        "1",
        "--data",
        "no/such/directory",
    ];
    let (code, out, err) = mpirun_apps(&[(1, a), (1, b)]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("rank 1 of 2"), "{err}");
    assert!(!out.contains("epoch 1/1"), "{out}");
}

/// Set in the environment of [`fit_rank`]'s runs under `mpirun`: the checkpoint to write.
const FIT_CHILD: &str = "GRADLIFT_TEST_FIT_SAVE";

/// The `Model::fit` of [`model_fit_is_data_parallel`] on one rank (this test binary runs it
/// under `mpirun`, filtered to this test; without the variable it does nothing): an MLP on
/// 544 examples of the shipped subset, with dropout, batch 64, two epochs, the last batch
/// of each epoch (32 examples) included; the weights saved by rank 0.
#[test]
fn fit_rank() {
    let Ok(save) = std::env::var(FIT_CHILD) else {
        return;
    };
    use gradlift::nn::{
        Activation, CompileOptions, Dense, Dropout, FitOptions, Loss, Sequential, Targets,
    };
    let shards: usize = std::env::var("GRADLIFT_TEST_FIT_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (train, _) = gradlift::data::load_default().unwrap();
    let train = train.slice(0, 544);
    let mut model = Sequential::new([784])
        .seed(1)
        .layer(Dense::new(32).activation(Activation::Relu))
        .layer(Dropout::new(0.25))
        .layer(Dense::new(10))
        .compile(
            CompileOptions::new(
                gradlift::optim::Optimizer::adam(),
                Loss::SparseCategoricalCrossentropy { from_logits: true },
                &[],
            )
            .threads(1)
            .shards(shards)
            .data_parallel(true),
        )
        .unwrap();
    let opts = FitOptions {
        epochs: 2,
        batch_size: 64,
        verbose: false,
        ..FitOptions::default()
    };
    model
        .fit(&train.images(), Targets::Classes(&train.labels), &opts)
        .unwrap();
    if gradlift::dist::world().is_root() {
        model.save(&save).unwrap();
    }
    gradlift::dist::finalize();
}

/// `Model::fit` with `CompileOptions::data_parallel` on two ranks (one shard each) trains
/// the bits of one process with two shards, the epochs' last smaller batch (32 of 544) and
/// the dropout masks (each rank keeps its rows of the whole batch's) included.
#[test]
fn model_fit_is_data_parallel() {
    require_mpi!();
    let dir = cli::scratch("mpi_fit");
    let single = dir.join("single.safetensors");
    let dist = dir.join("dist.safetensors");
    let me = std::env::current_exe().expect("the test binary");
    let out = Command::new(&me)
        .args(["--exact", "fit_rank", "--nocapture"])
        .env(FIT_CHILD, &single)
        .env("GRADLIFT_TEST_FIT_SHARDS", "2")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("timeout")
        .arg(TIMEOUT.to_string())
        .arg("mpirun")
        .args(["--oversubscribe", "--mca", "btl", "self,vader"])
        .args(["--mca", "pml", "ob1", "--mca", "oob_tcp_if_include", "lo"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["-x", FIT_CHILD, "-x", "GRADLIFT_TEST_FIT_SHARDS", "-n", "2"])
        .arg(&me)
        .args(["--exact", "fit_rank", "--nocapture"])
        .env(FIT_CHILD, &dist)
        .env("GRADLIFT_TEST_FIT_SHARDS", "1")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cli::checkpoint_bits(&single), cli::checkpoint_bits(&dist));
}

/// A rank killed outright in the middle of training (`timeout -s KILL`, as the kernel's
/// out-of-memory killer would) ends the job: `mpirun` sees it die and ends the rank that
/// waits for it in the all-reduce.
#[test]
fn a_killed_rank_ends_every_rank() {
    require_mpi!();
    let long: &[&str] = &["train", "ir/mlp.ir", "--epochs", "1000", "--threads", "1"];
    let start = std::time::Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.arg(TIMEOUT.to_string())
        .arg("mpirun")
        .args(["--oversubscribe", "--mca", "btl", "self,vader"])
        .args(["--mca", "pml", "ob1", "--mca", "oob_tcp_if_include", "lo"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-n", "1", env!("CARGO_BIN_EXE_gradlift")])
        .args(long)
        .args([":", "-n", "1", "timeout", "-s", "KILL", "3"])
        .arg(env!("CARGO_BIN_EXE_gradlift"))
        .args(long);
    let out = cmd.output().expect("runs");
    assert!(
        start.elapsed() < Duration::from_secs(TIMEOUT / 2),
        "the job outlived its killed rank: {out:?}"
    );
    assert!(!out.status.success(), "{out:?}");
}
