//! `gradlift grad FILE --loss NAME [--wrt A,B] [--format F]`, run as a subprocess: it prints
//! the same extended graph as the library call, and its errors are compiler-style messages
//! with exit code 1.

mod common;

use common::cli::{run, scratch};
use gradlift::{autodiff, text};
use std::path::Path;

fn load(path: &str) -> gradlift::Graph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let src = std::fs::read_to_string(p).unwrap();
    text::parse(&src, path).unwrap()
}

#[test]
fn grad_prints_the_extended_graph() {
    let (code, out, err) = run(&["grad", "ir/mlp.ir", "--loss", "loss"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    let mut g = load("ir/mlp.ir");
    autodiff::grad_all_params(&mut g, "loss", None).unwrap();
    assert_eq!(out, text::print(&g));
    assert!(out.contains("grad(%loss)") && out.contains("grad_dense.kernel = %"));
    // The printed graph is a valid graph again.
    text::parse(&out, "stdout").unwrap();
}

#[test]
fn grad_with_respect_to_named_nodes_and_other_formats() {
    let (code, out, err) = run(&[
        "grad",
        "ir/mlp.ir",
        "--loss",
        "loss",
        "--wrt",
        "x, dense.bias",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut g = load("ir/mlp.ir");
    autodiff::grad_all_params(&mut g, "loss", Some(&["x", "dense.bias"])).unwrap();
    assert_eq!(out, text::print(&g));
    assert!(out.contains("grad_x = %") && !out.contains("grad_dense.kernel"));

    let (code, out, _) = run(&["grad", "ir/mlp.ir", "--loss", "loss", "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph"));
}

#[test]
fn grad_notes_an_independent_param() {
    let dir = scratch("autodiff-cli");
    let file = dir.join("unused.ir");
    std::fs::write(
        &file,
        "graph unused {
inputs:
  %x: f32[2] = input
params:
  %w: f32[2] = param ones
  %unused: f32[3] = param zeros
body:
  %p: f32[2] = mul %x, %w
  %loss: f32[] = reduce_sum %p, axes=[0], keepdims=false
}
",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = run(&["grad", path, "--loss", "loss"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.trim(),
        format!("{path}: note: the loss loss does not depend on %unused: its gradient is zero")
    );
    assert!(
        out.contains("%8: f32[3] = const 0.0  grad(%unused)"),
        "{out}"
    );
}

#[test]
fn grad_errors() {
    let cases: &[(&str, &[&str])] = &[
        ("non_differentiable", &["--loss", "accuracy"]),
        ("non_scalar", &["--loss", "logits"]),
        ("unknown_loss", &["--loss", "nope"]),
        ("unknown_wrt", &["--loss", "loss", "--wrt", "x,nope"]),
        ("integer_wrt", &["--loss", "loss", "--wrt", "labels"]),
        ("not_a_param", &["--loss", "loss", "--wrt", "hidden"]),
    ];
    for (name, args) in cases {
        let mut all = vec!["grad", "ir/mlp.ir"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&all);
        assert_eq!(code, 1, "{name}: {err}");
        assert_eq!(out, "", "{name}: nothing on stdout");
        insta::assert_snapshot!(format!("grad_error_{name}"), err);
    }
}
