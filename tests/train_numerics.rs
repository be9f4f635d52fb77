//! `gradlift train` on models whose training diverges, run as a subprocess on the shipped
//! MNIST subset: without `--check-numerics` training stops at the first non-finite loss with
//! exit code 1 and the advice to rerun with the flag; with it, the message names the first
//! node that computed a non-finite value (op, label, `.ir` line, the forward node of a
//! gradient node, operand ranges). No checkpoint is written either way, and on a healthy
//! model the flag changes no trained bit.

mod common;

use common::cli::{run, scratch};
use std::path::Path;

/// The 1-based line of `src` that starts (after indentation) with `start`.
fn line_of(src: &str, start: &str) -> usize {
    src.lines()
        .position(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?}"))
        + 1
}

/// Runs a training that must fail with exit code 1; returns stdout and stderr.
fn diverges(args: &[&str]) -> (String, String) {
    let (code, out, err) = run(args);
    assert_eq!(code, 1, "gradlift {args:?} should fail:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    (out, err)
}

/// A classifier with a learnable scale `sqrt(temperature)` whose temperature starts at 0:
/// the forward pass is finite (the scale is 0), but the derivative of `sqrt` at 0 is
/// infinite, so the first step's update is not finite and the second step's loss is NaN.
const TEMPERATURE: &str = "\
# a learnable scale sqrt(temperature), initialized at temperature 0
graph temperature {
inputs:
  %x: f32[64,784] = input
  %labels: i32[64] = input
params:
  %dense.kernel: f32[784,10] = param glorot_uniform(seed=1)
  %dense.bias: f32[10] = param zeros
  %temperature: f32[] = param zeros
body:
  %scores: f32[64,10] = matmul %x, %dense.kernel
  %raw: f32[64,10] = add %scores, %dense.bias
  %scale: f32[] = sqrt %temperature
  %logits: f32[64,10] = mul %raw, %scale
  %per_example: f32[64] = sparse_softmax_cross_entropy %logits, %labels
  %loss: f32[] = reduce_mean %per_example, axes=[0], keepdims=false
outputs:
  loss = %loss
}
";

#[test]
fn a_huge_learning_rate_stops_training_without_a_checkpoint() {
    let d = scratch("train-numerics-huge-lr");
    let ckpt = d.join("mlp.st");
    let ck = ckpt.display().to_string();
    let base = [
        "train",
        "ir/mlp.ir",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--steps",
        "10",
        "--save",
        &ck,
    ];
    let (out, err) = diverges(&base);
    // step 1 makes the weights about 1e30; step 2's second matmul overflows
    assert!(
        err.contains("ir/mlp.ir: step 2: output loss is NaN"),
        "{err}"
    );
    assert!(
        err.contains("training stopped at step 2 (epoch 1, batch 2 of 93)"),
        "{err}"
    );
    assert!(err.contains("no checkpoint written to"), "{err}");
    assert!(err.contains("rerun with --check-numerics"), "{err}");
    assert!(!out.contains("saved"), "{out}");
    assert!(!ckpt.exists(), "a checkpoint of NaN weights was written");

    // with the check: the node, its line in ir/mlp.ir, its value and its operands' ranges
    let mut checked = base.to_vec();
    checked.push("--check-numerics");
    let (out, err) = diverges(&checked);
    assert!(out.contains("numerics: every step checked"), "{out}");
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir")).unwrap();
    let line = line_of(&src, "%9:");
    let at = format!("ir/mlp.ir:{line}:3: first non-finite value of step 2: node %9 (matmul)");
    assert!(err.contains(&at), "expected {at:?} in:\n{err}");
    assert!(
        err.contains("%9: f32[64,10] = matmul %hidden, %dense_1.kernel"),
        "{err}"
    );
    let value = err
        .lines()
        .find(|l| l.trim_start().starts_with("value:"))
        .unwrap_or_else(|| panic!("no value line in:\n{err}"));
    assert!(
        (value.contains("Inf") || value.contains("NaN")) && value.contains("(640 values)"),
        "{value}"
    );
    // both operands are finite: the overflow happens in this node
    let operands: Vec<&str> = err
        .lines()
        .filter(|l| l.trim_start().starts_with("operand "))
        .collect();
    assert_eq!(operands.len(), 2, "{err}");
    assert!(
        operands[0].contains("operand 0: %hidden (relu, f32[64,128]): min 0 max "),
        "{err}"
    );
    assert!(
        operands[1].contains("operand 1: %dense_1.kernel (param, f32[128,10]): min "),
        "{err}"
    );
    assert!(
        operands
            .iter()
            .all(|o| !o.contains("NaN") && !o.contains("Inf")),
        "{err}"
    );
    assert!(!err.contains("rerun with --check-numerics"), "{err}");
    assert!(!ckpt.exists());
}

#[test]
fn check_numerics_names_the_gradient_node_and_its_ir_line() {
    let d = scratch("train-numerics-temperature");
    let file = d.join("temperature.ir");
    std::fs::write(&file, TEMPERATURE).unwrap();
    let f = file.display().to_string();
    let ckpt = d.join("t.st");
    let ck = ckpt.display().to_string();

    // without the check the first step's loss is finite: training stops at step 2
    let (_, err) = diverges(&["train", &f, "--steps", "5", "--save", &ck]);
    assert!(
        err.contains(&format!("{f}: step 2: output loss is")),
        "{err}"
    );
    assert!(err.contains("rerun with --check-numerics"), "{err}");
    assert!(!ckpt.exists());

    // with it, step 1's update is caught and the replay names sqrt's gradient
    let (_, err) = diverges(&[
        "train",
        &f,
        "--steps",
        "5",
        "--save",
        &ck,
        "--check-numerics",
    ]);
    let line = line_of(TEMPERATURE, "%scale:");
    assert!(
        err.contains(&format!("{f}: step 1: param temperature is")),
        "{err}"
    );
    let at = format!("{f}:{line}:3: first non-finite value of step 1: gradient node %");
    assert!(err.contains(&at), "expected {at:?} in:\n{err}");
    assert!(err.contains("(div)"), "{err}");
    assert!(
        err.contains("part of the gradient of %scale (sqrt)\n"),
        "{err}"
    );
    assert!(err.contains("grad(%scale)"), "{err}");
    // the divisor is sqrt(0) = 0
    assert!(err.contains(": %scale (sqrt, f32[]): 0"), "{err}");
    assert!(
        err.contains("training stopped at step 1 (epoch 1, batch 1 of 93)"),
        "{err}"
    );
    assert!(!ckpt.exists());
}

/// The lines of `out` starting with `prefix`, without their timings (`- 1.23 s`).
fn untimed(out: &str, prefix: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| match l.rfind(" - ") {
            Some(i) => l[..i].to_string(),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn check_numerics_changes_no_trained_bit() {
    let d = scratch("train-numerics-identical");
    let (a, b) = (d.join("plain.st"), d.join("checked.st"));
    let run_with = |ck: &Path, check: bool| -> String {
        let ck = ck.display().to_string();
        let mut args = vec![
            "train",
            "ir/mlp.ir",
            "--limit",
            "640",
            "--epochs",
            "2",
            "--save",
            &ck,
        ];
        if check {
            args.push("--check-numerics");
        }
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{out}\n{err}");
        out
    };
    let (plain, checked) = (run_with(&a, false), run_with(&b, true));
    assert_eq!(untimed(&plain, "epoch "), untimed(&checked, "epoch "));
    assert_eq!(untimed(&plain, "test: "), untimed(&checked, "test: "));
    assert_eq!(untimed(&plain, "epoch ").len(), 2, "{plain}");
    // checkpoints are deterministic: equal files are equal params and optimizer state
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
