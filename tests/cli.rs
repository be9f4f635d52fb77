//! The `gradlift` binary: exit codes and messages of `check`, `dump` and `eval` on good and
//! bad files (IR text and JSON), run as a subprocess.

use gradlift::op::{Init, Op, UnaryOp};
use gradlift::{Graph, Node, SourceLoc, TensorType};
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
            loc: Some(SourceLoc {
                file: "model.rs".into(),
                line: 3,
                column: 5,
            }),
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
    model.rs:3:5: type mismatch: %bad is declared f32[9] but exp computes f32[2,3]
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

/// Writes `src` to `name` in a fresh scratch directory and runs `gradlift check name` there.
fn check_source(test: &str, name: &str, src: &str) -> (i32, String, String) {
    let dir = scratch(test);
    std::fs::write(dir.join(name), src).unwrap();
    run_in(&dir, &["check", name])
}

#[test]
fn check_corpus_model() {
    let (code, out, err) = run(&["check", "ir/mlp.ir"]);
    assert_eq!((code, err.as_str()), (0, ""));
    insta::assert_snapshot!(out, @"ir/mlp.ir: ok: graph mlp, 16 nodes (2 inputs, 4 params, 0 state), 101770 parameters, 2 outputs, 0 updates");
}

#[test]
fn check_reports_parse_errors_with_position() {
    let (code, out, err) = check_source(
        "parse_error",
        "typo.ir",
        "graph p {\ninputs:\n  %x: f32[4,3] = inptu\n}\n",
    );
    assert_eq!((code, out.as_str()), (1, ""));
    insta::assert_snapshot!(err, @"typo.ir:3:18: unknown op `inptu` (did you mean `input`?)");
}

#[test]
fn check_reports_type_errors_with_position() {
    let src = "graph bad {
inputs:
  %x: f32[4,3] = input
params:
  %w: f32[3,2] = param glorot_uniform(seed=1)
body:
  %2: f32[4,3] = matmul %x, %w
outputs:
  out = %2
}
";
    let (code, out, err) = check_source("type_error", "bad.ir", src);
    assert_eq!((code, out.as_str()), (1, ""));
    insta::assert_snapshot!(err, @"bad.ir:7:7: type mismatch: %2 is declared f32[4,3] but matmul computes f32[4,2]");
}

#[test]
fn dump_text_is_canonical() {
    let (code, out, err) = run(&["dump", "ir/ops/matmul.ir"]);
    assert_eq!((code, err.as_str()), (0, ""));
    insta::assert_snapshot!(out, @r"
    graph matmul {
    inputs:
      %a: f32[4,3] = input
    params:
      %w: f32[3,5] = param uniform(high=0.05, low=-0.05, seed=3)
    body:
      %y: f32[4,5] = matmul %a, %w
    outputs:
      y = %y
    }
    ");
}

#[test]
fn dump_dot() {
    let (code, out, err) = run(&["dump", "ir/ops/matmul.ir", "--format", "dot"]);
    assert_eq!((code, err.as_str()), (0, ""));
    insta::assert_snapshot!(out, @r##"
    digraph "matmul" {
      node [shape=box, fontname="monospace", fontsize=10];
      edge [fontname="monospace", fontsize=9];
      n0 [label="%a\ninput\nf32[4,3]", shape=invhouse, style="filled", fillcolor="#cfe3ff"];
      n1 [label="%w\nparam\nf32[3,5]", style="filled", fillcolor="#d4f4d4"];
      n2 [label="%y\nmatmul\nf32[4,5]"];
      n0 -> n2 [label="0"];
      n1 -> n2 [label="1"];
      out0 [label="y", shape=oval, style=bold];
      n2 -> out0;
    }
    "##);
}

#[test]
fn json_dump_reads_back_as_the_same_graph() {
    let (code, json, err) = run(&["dump", "ir/cnn.ir", "--format", "json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let dir = scratch("json_dump_reads_back");
    std::fs::write(dir.join("cnn.json"), &json).unwrap();
    let (code, from_json, err) = run_in(&dir, &["dump", "cnn.json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let (_, from_text, _) = run(&["dump", "ir/cnn.ir"]);
    assert_eq!(from_json, from_text);
    let (code, out, _) = run_in(&dir, &["check", "cnn.json"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("cnn.json: ok: graph cnn, 23 nodes"),
        "{out}"
    );
}

/// The value printed for output `name` by `gradlift eval` (a scalar).
fn scalar_output(stdout: &str, name: &str) -> f64 {
    let prefix = format!("{name}: f32[] = ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {stdout}"));
    line[prefix.len()..]
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn eval_cnn_loss_is_about_ln_10() {
    let (code, out, err) = run(&["eval", "ir/cnn.ir"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let loss = scalar_output(&out, "loss");
    assert!(loss.is_finite(), "{out}");
    assert!((loss - 10f64.ln()).abs() < 0.3, "loss {loss}");
    let acc = scalar_output(&out, "accuracy");
    assert!((0.0..=1.0).contains(&acc), "{out}");
    // 64 examples: the accuracy is a multiple of 1/64.
    assert_eq!((acc * 64.0).fract(), 0.0, "{out}");
}

#[test]
fn eval_is_deterministic_per_seed() {
    let a = run(&["eval", "ir/mlp.ir", "--seed", "7"]);
    let b = run(&["eval", "ir/mlp.ir", "--seed", "7"]);
    let c = run(&["eval", "ir/mlp.ir", "--seed", "8"]);
    assert_eq!(a.0, 0, "{}", a.2);
    assert_eq!(a, b);
    assert_ne!(a.1, c.1);
}

#[test]
fn eval_labels_stay_below_the_class_count() {
    // Labels outside 0..5 would make the sparse cross-entropy NaN.
    for seed in 0..8 {
        let seed = seed.to_string();
        let (code, out, err) = run(&["eval", "ir/ops/cross_entropy.ir", "--seed", &seed]);
        assert_eq!((code, err.as_str()), (0, ""));
        let line = out.lines().find(|l| l.starts_with("sparse: ")).unwrap();
        assert!(!line.contains("NaN"), "{line}");
    }
}

#[test]
fn eval_prints_small_tensors_in_full_and_summarizes_large_ones() {
    let (code, out, err) = run(&["eval", "ir/ops/one_hot.ir"]);
    assert_eq!((code, err.as_str()), (0, ""));
    // 6 one-hot rows of depth 4: the mean is 6/24 whatever the labels.
    assert!(out.contains(" mean=0.25 "), "{out}");
    insta::assert_snapshot!(out, @"encoded: f32[6,4] = min=0.0 max=1.0 mean=0.25 first=[0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]");
    let (code, out, err) = run(&["eval", "ir/ops/sgd_step.ir"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("loss: f32[] = "), "{out}");
    assert!(lines[1].starts_with("update %w: f32[3,1] = ["), "{out}");
    assert!(lines[2].starts_with("update %b: f32[1] = ["), "{out}");
    // The step counter starts at zero and the step adds one.
    assert_eq!(lines[3], "update %step: f32[] = 1.0");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = scratch("bad_inputs");
    let cases: &[(&str, &[u8])] = &[
        ("empty.ir", b""),
        ("binary.ir", &[0xff, 0xfe, 0x00, 0x81]),
        ("truncated.ir", b"graph g {\ninputs:\n  %x: f32[2"),
        ("huge.ir", b"graph g {\ninputs:\n  %x: f32[99999999999999999999] = input\n}\n"),
        ("empty.json", b""),
        ("wrong.json", b"{\"name\": \"g\", \"graph\": 1}"),
        ("dangling.json", b"{\"name\":\"g\",\"graph\":{\"nodes\":[],\"node_holes\":[],\"edge_property\":\"directed\",\"edges\":[[0,5,0]]},\"outputs\":[],\"updates\":[]}"),
    ];
    for (name, bytes) in cases {
        std::fs::write(dir.join(name), bytes).unwrap();
        for cmd in ["check", "dump", "eval"] {
            let (code, out, err) = run_in(&dir, &[cmd, name]);
            assert_eq!(code, 1, "{cmd} {name}: {out} {err}");
            assert!(err.starts_with(name), "{cmd} {name}: {err}");
            assert!(!err.contains("panicked"), "{cmd} {name}: {err}");
        }
    }
}

#[test]
fn eval_refuses_graphs_too_large_for_memory() {
    let src = "graph big {\ninputs:\n  %x: f32[16384,32768] = input\noutputs:\n  x = %x\n}\n";
    let dir = scratch("eval_too_large");
    std::fs::write(dir.join("big.ir"), src).unwrap();
    let (code, _, err) = run_in(&dir, &["eval", "big.ir"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(err, @"big.ir: the graph's values hold 536870912 elements in all, more than the interpreter's limit of 268435456");
}

/// `run` checks sizes before it allocates: an input too large for compiled code is refused
/// before its random values are drawn, and a convolution whose scratch exceeds the machine's
/// memory (a SAME 512x512 kernel: 275 GB of patches) is refused at compile time, naming it.
#[test]
fn run_refuses_sizes_before_allocating_them() {
    let dir = scratch("run_too_large");
    let input = "graph big {\ninputs:\n  %x: f32[2147483647] = input\nbody:\n  %y: f32[2147483647] = relu %x\noutputs:\n  y = %y\n}\n";
    std::fs::write(dir.join("input.ir"), input).unwrap();
    let (code, _, err) = run_in(&dir, &["run", "input.ir"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("%x (input: f32[2147483647])"), "{err}");
    assert!(err.contains("too large for compiled code"), "{err}");
    let conv = "graph bigconv {\ninputs:\n  %x: f32[1,512,512,1] = input\nparams:\n  %w: f32[512,512,1,1] = param zeros\nbody:\n  %y: f32[1,512,512,1] = conv2d %x, %w, padding=same, stride=[1,1]\noutputs:\n  y = %y\n}\n";
    std::fs::write(dir.join("conv.ir"), conv).unwrap();
    let (code, _, err) = run_in(&dir, &["run", "conv.ir"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than the limit"), "{err}");
    assert!(
        err.contains("%y (conv2d: f32[1,512,512,1]) at conv.ir:7:3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A reader that goes away (`gradlift dump FILE | head`) ends the program quietly: exit 0, no
/// panic message. The pipe's read end is closed before the program starts, so every write
/// fails with a broken pipe.
#[test]
fn closed_stdout_is_not_a_crash() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .args(["dump", "ir/mlp.ir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(writer)
        .output()
        .expect("the gradlift binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `run` prints i32 outputs exactly: 16777217 is not an f32, and used to print as 16777216.
#[test]
fn run_prints_i32_outputs_exactly() {
    let dir = scratch("i32_exact");
    let file = dir.join("i32.ir");
    std::fs::write(
        &file,
        "graph g {\ninputs:\n  %x: i32[2] = input\nbody:\n  %c: i32[2] = const 16777217\noutputs:\n  c = %c\n}\n",
    )
    .unwrap();
    let (code, out, err) = run(&["run", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("c: i32[2] = [16777217, 16777217]"), "{out}");
}

/// `run` draws its random inputs from the graph as written, like `eval`: a label input's
/// range comes from a one_hot the passes then remove (`run` used to draw 0..10 where `eval`
/// drew 0..3).
#[test]
fn run_and_eval_draw_the_same_inputs() {
    let dir = scratch("same_inputs");
    let file = dir.join("labels.ir");
    std::fs::write(
        &file,
        "graph g {\ninputs:\n  %l: i32[64] = input\nbody:\n  %o: f32[64,3] = one_hot %l, depth=3\n  %c: f32[64] = cast %l, to=f32\noutputs:\n  c = %c\n}\n",
    )
    .unwrap();
    let line = |cmd: &str| {
        let (code, out, err) = run(&[cmd, file.to_str().unwrap()]);
        assert_eq!(code, 0, "{cmd}: {err}");
        out.lines()
            .find(|l| l.starts_with("c: "))
            .unwrap_or_else(|| panic!("{cmd}: {out}"))
            .to_string()
    };
    let (e, r) = (line("eval"), line("run"));
    assert_eq!(e, r);
    assert!(e.contains("max=2.0"), "labels in 0..3: {e}");
}

/// `--dump-after` of a pass the pipeline does not run is an error (it used to write only the
/// input file).
#[test]
fn dump_after_a_pass_not_in_the_pipeline_is_an_error() {
    let dir = scratch("dump_after_missing");
    let (code, _, err) = run(&[
        "dump",
        "ir/mlp.ir",
        "--passes",
        "cse,dce",
        "--dump-after=fuse",
        "--dump-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--dump-after=fuse: the pipeline has no fuse pass (its passes: cse,dce)"),
        "{err}"
    );
}

/// A file that is not UTF-8 is an error with the line and column of the first bad byte.
#[test]
fn invalid_utf8_names_line_and_column() {
    let dir = scratch("invalid_utf8");
    let file = dir.join("bad.ir");
    std::fs::write(&file, b"graph g {\ninputs:\n  %x: f32[2] = in\xffput\n}\n").unwrap();
    let (code, _, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.ir:3:18: the file is not valid UTF-8 (byte 0xff)"),
        "{err}"
    );
}
