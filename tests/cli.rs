//! The `gradlift` binary: exit codes and messages of `check`, `dump` and `eval` on good and
//! bad files (IR text and JSON), run as a subprocess.

use gradlift::op::{Init, Op, UnaryOp};
use gradlift::{Graph, Node, TensorType};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit code, stdout and stderr of `gradlift ARGS` run in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the gradlift binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gradlift ARGS` run at the repository root (so `ir/...` paths work).
fn run(args: &[&str]) -> (i32, String, String) {
    run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// A fresh scratch directory for this test.
fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small valid graph: `loss = mean(relu(x w))`.
fn small_graph() -> Graph {
    let mut g = Graph::new("small");
    let x = g.input("x", TensorType::f32([2, 3])).unwrap();
    let w = g
        .param("w", [3, 4], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let h = g.matmul(x, w).unwrap();
    let r = g.relu(h).unwrap();
    let loss = g.mean_all(r).unwrap();
    g.add_output("loss", loss).unwrap();
    g
}

#[test]
fn missing_file_is_an_error() {
    let (code, out, err) = run(&["check", "no/such/file.ir"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    insta::assert_snapshot!(err, @"no/such/file.ir: cannot read the file: No such file or directory (os error 2)");
}

#[test]
fn usage_error_exits_with_clap_code() {
    let (code, _, err) = run(&["check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FILE"), "{err}");
}

#[test]
fn check_json_graph() {
    let dir = scratch("check_json_graph");
    std::fs::write(
        dir.join("small.json"),
        serde_json::to_string(&small_graph()).unwrap(),
    )
    .unwrap();
    let (code, out, err) = run_in(&dir, &["check", "small.json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    insta::assert_snapshot!(out, @"small.json: ok: graph small, 5 nodes (1 inputs, 1 params, 0 state), 12 parameters, 1 outputs, 0 updates");
}

#[test]
fn check_invalid_json_graph_reports_every_error() {
    let mut g = small_graph();
    let x = g.find("x").unwrap();
    g.add_raw(
        Node {
            op: Op::Unary(UnaryOp::Exp),
            ty: TensorType::f32([9]),
            name: Some("bad".into()),
            loc: None,
            grad_of: None,
        },
        &[x],
    );
    let loss = g.find("x").unwrap();
    g.push_update(loss, x);
    let dir = scratch("check_invalid_json_graph");
    std::fs::write(dir.join("bad.json"), serde_json::to_string(&g).unwrap()).unwrap();
    let (code, out, err) = run_in(&dir, &["check", "bad.json"]);
    assert_eq!((code, out.as_str()), (1, ""));
    // Builder-made nodes carry this test file's line numbers: blank them out.
    let err = redact_lines(&err);
    insta::assert_snapshot!(err, @r"
    bad.json: type mismatch: node is declared f32[9], but exp of its operands gives f32[2,3]
        %bad: f32[9] = exp %x
    tests/cli.rs:L:C: update target %x is an input, expected a param or state
        update %x <- %x
    bad.json: invalid graph: 2 errors
    ");
}

#[test]
fn malformed_json_points_at_line_and_column() {
    let dir = scratch("malformed_json");
    std::fs::write(dir.join("broken.json"), "{\n  \"name\": 3\n}").unwrap();
    let (code, out, err) = run_in(&dir, &["dump", "broken.json", "--format", "json"]);
    assert_eq!((code, out.as_str()), (1, ""));
    insta::assert_snapshot!(err, @"broken.json:2:11: invalid graph JSON: invalid type: integer `3`, expected a string");
}

#[test]
fn dump_json_round_trips() {
    let dir = scratch("dump_json_round_trips");
    let g = small_graph();
    std::fs::write(dir.join("a.json"), serde_json::to_string(&g).unwrap()).unwrap();
    let (code, out, err) = run_in(&dir, &["dump", "a.json", "--format", "json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let back: Graph = serde_json::from_str(&out).expect("dump --format json is a graph");
    assert_eq!(back.len(), g.len());
    for id in g.node_ids() {
        assert_eq!(back.get(id), g.get(id));
        assert_eq!(back.operands(id), g.operands(id));
    }
    assert_eq!(back.outputs(), g.outputs());
}

/// Replaces the line and column of `tests/cli.rs:LINE:COL` with `L:C`.
fn redact_lines(s: &str) -> String {
    let key = "tests/cli.rs:";
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ':'))
            .unwrap_or(rest.len());
        out.push_str("L:C:");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
