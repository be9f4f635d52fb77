//! The fusion pass (`passes::fuse`), fused nodes in the text format, the interpreter and the
//! JIT.
//!
//! Graphs checked: every `ir/**/*.ir` file, and for files with a scalar `loss` and params the
//! training step (autodiff gradients + SGD updates). Each is run through the default pipeline
//! without `fuse`, then `fuse`:
//! - the interpreter gives bit-identical results before and after `fuse` (a fused body is
//!   evaluated op by op, and the relu-mask rewrite is exact);
//! - the JIT on the fused graph matches the interpreter on the unfused graph
//!   (`common::jit_matches`, the tolerance of `tests/common`);
//! - a second `fuse` changes nothing and the fused text parses back to the same text;
//! - snapshots of the fused graphs and the pass's remarks.

mod common;

use common::{close, interp_results, ir_files, jit_matches, random_feeds, sgd_step};
use gradlift::codegen::CompileOptions;
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::passes::{self, Pipeline};
use gradlift::runtime::{self, HostTensor};
use gradlift::{autodiff, text, DType, Graph, NodeId, Op, Shape, TensorType};
use std::collections::HashMap;
use std::path::Path;

/// The forward graph of `path` and, when it has a scalar `loss` and params, its training step
/// (gradients of every param, SGD updates `p <- p - 0.1 dp`, gradients not outputs).
fn graphs_of(path: &Path) -> Vec<(String, Graph)> {
    let rel = common::rel_name(path);
    let (_, g) = common::load(path);
    let mut out = vec![(rel.clone(), g.clone())];
    let scalar_loss = g
        .output("loss")
        .is_some_and(|l| g[l].ty == TensorType::f32(Shape::scalar()));
    let has_fused = g
        .node_ids()
        .iter()
        .any(|&id| matches!(g[id].op, Op::Fused(_)));
    if scalar_loss && !g.params().is_empty() && !has_fused && g.updates().is_empty() {
        out.push((format!("{rel} (training step)"), sgd_step(g, 0.1)));
    }
    out
}

/// The default pipeline without its last pass (`fuse`).
fn prefuse(g: &mut Graph) {
    let names: Vec<&str> = passes::DEFAULT_PIPELINE
        .iter()
        .copied()
        .filter(|&n| n != "fuse")
        .collect();
    Pipeline::new(&names).unwrap().run(g).unwrap();
}

/// Runs `fuse` with the pipeline's checks; returns its report.
fn fuse(g: &mut Graph) -> passes::PassReport {
    let mut r = Pipeline::new(&["fuse"]).unwrap().run(g).unwrap();
    r.remove(0)
}

/// Feeds of `from` for the same-named inputs of `to`.
fn rename(
    from: &Graph,
    to: &Graph,
    f: &HashMap<NodeId, Array<f64>>,
) -> HashMap<NodeId, Array<f64>> {
    f.iter()
        .map(|(id, a)| {
            let name = from[*id].name.as_deref().unwrap();
            (to.find(name).unwrap(), a.clone())
        })
        .collect()
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// Fused nodes of `g`, those inside scan bodies included (the pass fuses there too).
fn fused_count(g: &Graph) -> usize {
    fn in_op(op: &Op) -> usize {
        match op {
            Op::Fused(_) => 1,
            Op::Scan(b) => b.insts.iter().map(|i| in_op(&i.op)).sum(),
            _ => 0,
        }
    }
    g.node_ids().iter().map(|&id| in_op(&g[id].op)).sum()
}

#[test]
fn fusion_keeps_interpreter_results_bit_for_bit_and_is_idempotent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir");
    let mut fused_somewhere = 0;
    for path in ir_files(&root) {
        for (name, mut g) in graphs_of(&path) {
            prefuse(&mut g);
            let before = g.clone();
            let report = fuse(&mut g);
            assert_eq!(
                report.counts.get("fused_kernels").copied().unwrap_or(0),
                fused_count(&g) - fused_count(&before),
                "{name}: {report}"
            );
            fused_somewhere += usize::from(report.changed());
            let f = random_feeds(&before, &mut Rng::new(5), 1.0);
            let want = interp::eval::<f64>(&before, &f).unwrap();
            let got = interp::eval::<f64>(&g, &rename(&before, &g, &f)).unwrap();
            let (want, got) = (interp_results(&before, &want), interp_results(&g, &got));
            assert_eq!(want.len(), got.len(), "{name}");
            for ((n, _, w), (_, _, x)) in want.iter().zip(&got) {
                assert!(same_bits(w, x), "{name}: {n} changed by fusion");
            }
            // idempotence
            let printed = text::print(&g);
            let again = fuse(&mut g);
            assert!(!again.changed(), "{name}: second fuse: {again}");
            assert_eq!(printed, text::print(&g), "{name}");
            // the fused text parses back to the same graph text
            let back = text::parse(&printed, "fused.ir").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(printed, text::print(&back), "{name}");
        }
    }
    assert!(
        fused_somewhere >= 10,
        "fusion fired on {fused_somewhere} graphs"
    );
}

#[test]
fn jit_on_fused_graphs_matches_the_interpreter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir");
    for path in ir_files(&root) {
        for (name, g0) in graphs_of(&path) {
            let mut g = g0.clone();
            Pipeline::default().run(&mut g).unwrap();
            if fused_count(&g) == 0 {
                continue;
            }
            jit_matches(&name, &g0, &g, 21);
        }
    }
}

/// `y` itself (variant 0), or a reduction of it: sum over axis 1, mean over axis 0 (kept),
/// max over axis 1, max over every axis (variants 1-4).
fn reduced(g: &mut Graph, y: NodeId, variant: usize) -> NodeId {
    match variant {
        0 => y,
        1 => g.sum(y, &[1], false).unwrap(),
        2 => g.mean(y, &[0], true).unwrap(),
        3 => g.reduce(gradlift::ReduceOp::Max, y, &[1], false).unwrap(),
        _ => g
            .reduce(gradlift::ReduceOp::Max, y, &[0, 1], false)
            .unwrap(),
    }
}

/// Elementwise trees and reductions at sizes around the vector width (scalar tails, rows
/// shorter than a vector, broadcast operands, reductions over either axis).
#[test]
fn jit_fused_kernels_at_odd_sizes() {
    for rows in [1, 3] {
        for cols in [1, 2, 3, 4, 5, 7, 8, 9, 13, 17] {
            for variant in [0, 1, 2, 4] {
                let mut g = Graph::new("odd");
                let x = g.input("x", TensorType::f32([rows, cols])).unwrap();
                let b = g.input("b", TensorType::f32([cols])).unwrap();
                let half = g.scalar(0.5);
                let a = g.add2(x, b).unwrap();
                let t = g.tanh(a).unwrap();
                let e = g.mul(t, half).unwrap();
                let m = g.compare(gradlift::CmpOp::Gt, e, half).unwrap();
                let s = g.select(m, x, e).unwrap();
                let y = g.sigmoid(s).unwrap();
                let out = reduced(&mut g, y, variant);
                g.add_output("y", out).unwrap();
                let mut fused = g.clone();
                let r = fuse(&mut fused);
                assert_eq!(fused_count(&fused), 1, "{rows}x{cols} v{variant}: {r}");
                jit_matches(&format!("{rows}x{cols} variant {variant}"), &g, &fused, 3);
            }
        }
    }
}

/// Snapshots of every corpus graph (and training step) after the default pipeline, with the
/// fuse pass's report and remarks.
#[test]
fn snapshot_fused_corpus() {
    insta::glob!("../ir", "**/*.ir", |path| {
        let mut out = String::new();
        for (name, mut g) in graphs_of(path) {
            let before = g.len();
            let reports = Pipeline::default().run(&mut g).unwrap();
            let fuse = reports.last().unwrap();
            out.push_str(&format!(
                "=== {name}: {before} nodes before the pipeline, {} after, {} fused kernels\n{fuse}\n{}\n",
                g.len(),
                fused_count(&g),
                text::print(&g)
            ));
        }
        insta::assert_snapshot!(out);
    });
}

#[test]
fn epilogues_fuse_into_matmul_in_the_mlp_training_step() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/mlp.ir");
    let (_, mut g) = graphs_of(&path).pop().unwrap();
    Pipeline::default().run(&mut g).unwrap();
    let epilogues: Vec<Vec<&str>> = g
        .node_ids()
        .into_iter()
        .filter_map(|id| match &g[id].op {
            Op::Fused(b) if b.matmul().is_some() => {
                Some(b.insts.iter().map(|i| i.op.name()).collect())
            }
            _ => None,
        })
        .collect();
    // forward: matmul + bias + relu; backward: matmul + relu derivative mask
    assert!(
        epilogues.contains(&vec!["matmul", "add", "relu"]),
        "{epilogues:?}"
    );
    assert!(
        epilogues
            .iter()
            .any(|e| e[0] == "matmul" && e.contains(&"select")),
        "{epilogues:?}"
    );
}

#[test]
fn conv_epilogue_fuses_in_the_cnn() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/cnn.ir");
    let (_, mut g) = graphs_of(&path).pop().unwrap();
    Pipeline::default().run(&mut g).unwrap();
    let conv = g.find("conv").unwrap();
    let Op::Fused(body) = &g[conv].op else {
        panic!("%conv is not fused: {}", text::print(&g));
    };
    let names: Vec<&str> = body.insts.iter().map(|i| i.op.name()).collect();
    assert_eq!(names, ["conv2d", "add", "relu"]);
}

/// A convolution layer's fused body, `relu(conv2d(x, w) + b)`, computed by the convolution
/// kernel with its bias and relu (`body_kernels`) equals the fused JIT loop bit for bit, and
/// the interpreter within tolerance: on the direct path (1 input channel) and im2col (16),
/// with a channel tail (37 filters), stride 2 and SAME padding.
#[test]
fn conv_bias_relu_kernel_equals_the_fused_loop() {
    for (c, stride, padding) in [
        (1, [1, 1], gradlift::Padding::Valid),
        (16, [2, 2], gradlift::Padding::Same),
    ] {
        let mut g = Graph::new("conv_layer");
        let x = g.input("x", TensorType::f32([3, 9, 10, c])).unwrap();
        let w = g.input("w", TensorType::f32([3, 3, c, 37])).unwrap();
        let b = g.input("b", TensorType::f32([37])).unwrap();
        let y = g.conv2d(x, w, stride, padding).unwrap();
        let y = g.add2(y, b).unwrap();
        let y = g.relu(y).unwrap();
        g.add_output("y", y).unwrap();
        let mut fused = g.clone();
        Pipeline::default().run(&mut fused).unwrap();
        assert_eq!(fused_count(&fused), 1, "one fused node");
        let feeds = random_feeds(&g, &mut Rng::new(5), 1.0);
        let inputs: Vec<(String, HostTensor)> = g
            .inputs()
            .into_iter()
            .map(|id| {
                let a = &feeds[&id];
                let data = a.data.iter().map(|&v| v as f32).collect();
                let name = g[id].name.clone().unwrap();
                (name, HostTensor::f32(a.shape.clone(), data))
            })
            .collect();
        let named: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let run = |body_kernels: bool| {
            let opts = CompileOptions {
                flush_denormals: false,
                body_kernels,
                ..CompileOptions::default()
            };
            let mut exe = runtime::compile(&fused, &opts).unwrap();
            let out = exe.run(&named).unwrap();
            out[0].1.as_f32().unwrap().to_vec()
        };
        let (kernel, lp) = (run(true), run(false));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&kernel), bits(&lp), "c = {c}");
        assert!(kernel.iter().any(|&v| v > 0.0) && kernel.contains(&0.0));
        jit_matches(&format!("conv layer c = {c}"), &g, &fused, 5);
    }
}

#[test]
fn remarks_say_what_was_not_fused_and_why() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/passes");
    let mut g = graphs_of(&dir.join("fuse_cycle.ir")).remove(0).1;
    let r = fuse(&mut g);
    assert_eq!(
        r.counts.get("fused_kernels").copied().unwrap_or(0),
        0,
        "{r}"
    );
    assert!(
        r.remarks
            .iter()
            .any(|m| m.contains("%e (exp) into %y (div)")
                && m.contains("feeds 2 users")
                && m.contains("feeds the kernel's result")),
        "{r}"
    );
    assert!(
        r.remarks
            .iter()
            .any(|m| m.contains("%e (exp) into %s (reduce_sum)")
                && m.contains("a kernel with a reduction has one result")),
        "{r}"
    );
    // across kernels: the cycle check sees the kernels made before
    let mut g = graphs_of(&dir.join("fuse_cross_cycle.ir")).remove(0).1;
    let r = fuse(&mut g);
    assert_eq!(r.counts.get("fused_kernels"), Some(&2), "{r}");
    assert!(gradlift::verify::verify(&g).is_ok(), "{}", text::print(&g));
    assert!(
        r.remarks
            .iter()
            .any(|m| m.contains("%e (exp) into %root_a (mul)")
                && m.contains("feeds the kernel's result")),
        "{r}"
    );
    // pow stays a runtime call (pow(x, 1) and pow(x, 2) are simplified away before)
    let mut g = graphs_of(&dir.join("pow_one.ir")).remove(0).1;
    let r = fuse(&mut g);
    assert!(
        r.remarks
            .iter()
            .any(|m| m.contains("%b (pow)") && m.contains("runtime call")),
        "{r}"
    );
}

#[test]
fn autodiff_refuses_fused_nodes() {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/passes/fused_block.ir"),
    )
    .unwrap();
    let mut g = text::parse(&src, "fused_block.ir").unwrap();
    let s = g.output("s").unwrap();
    let loss = g.sum(s, &[0], false).unwrap();
    g.add_output("loss", loss).unwrap();
    let err = autodiff::grad_all_params(&mut g, "loss", Some(&["x"])).unwrap_err();
    assert!(
        err.to_string().contains("run fusion after autodiff"),
        "{err}"
    );
}

#[test]
fn fused_block_parse_errors() {
    let wrap = |body: &str| {
        format!(
            "graph e {{\ninputs:\n  %x: f32[3] = input\nbody:\n  %y: f32[3] = fused %x {{\n{body}  }}\noutputs:\n  y = %y\n}}\n"
        )
    };
    let cases = [
        ("    %1: f32[3] = neg %0\n", "`yield %K`"),
        ("    %2: f32[3] = neg %0\n    yield %2\n", "expected `%1`"),
        (
            "    %1: f32[3] = neg %1\n    yield %1\n",
            "not a value of the body",
        ),
        (
            "    %1: f32[3] = neg %0\n    yield %0\n",
            "must name the last instruction",
        ),
        ("    %1: f32[4] = neg %0\n    yield %1\n", "declared f32[4]"),
        ("    %1: f32[3] = matmul %0, %0\n    yield %1\n", "matmul"),
        ("    %1: f32[3] = frob %0\n    yield %1\n", "frob"),
        // multi-result bodies
        (
            "    %1: f32[3] = neg %0\n    %2: f32[3] = exp %1\n    yield %2, %5\n",
            "`%5` is not a value of the body",
        ),
        (
            "    %1: f32[3] = neg %0\n    %2: f32[3] = exp %1\n    yield %2, %0\n",
            "result 1 must be an instruction before the main result %2, found %0",
        ),
        (
            "    %1: f32[3] = neg %0\n    %2: f32[3] = exp %1\n    yield %2, %1, %1\n",
            "%1 is yielded twice",
        ),
        (
            "    %1: f32[3] = neg %0\n    %2: f32[] = reduce_sum %1, axes=[0], keepdims=false\n    yield %2, %1\n",
            "a body with a reduction yields one result",
        ),
        ("    %1: f32[3] = neg %0\n    yield %1,\n", "a further result"),
    ];
    for (body, want) in cases {
        let src = wrap(body);
        let err = text::parse(&src, "e.ir").unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
}

/// `gradlift dump --passes default --dump-after=all --dump-dir DIR --remarks`: one file per
/// pass, numbered in order, each parsing back; the remarks on stderr.
#[test]
fn cli_dumps_after_every_pass_and_prints_remarks() {
    let dir = std::env::temp_dir().join(format!("gradlift-fusion-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/passes/fuse_chain.ir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .arg("dump")
        .arg(&file)
        .args([
            "--passes",
            "default",
            "--dump-after=all",
            "--remarks",
            "--dump-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fuse: extra_results=2, fused_kernels=2"),
        "{stderr}"
    );
    let cycle = file.with_file_name("fuse_cycle.ir");
    let remarks = std::process::Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .arg("dump")
        .arg(&cycle)
        .args(["--passes", "fuse", "--remarks"])
        .output()
        .unwrap();
    let remarks_err = String::from_utf8_lossy(&remarks.stderr);
    assert!(remarks.status.success(), "{remarks_err}");
    assert!(
        remarks_err.contains("not fused: %e (exp) into %y (div)"),
        "{remarks_err}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = std::iter::once("00-input.ir".to_string())
        .chain(
            passes::DEFAULT_PIPELINE
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{:02}-{p}.ir", i + 1)),
        )
        .collect();
    assert_eq!(names, want);
    let last = std::fs::read_to_string(dir.join(want.last().unwrap())).unwrap();
    let g = text::parse(&last, "dump.ir").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fused_count(&g), 2);
    assert_eq!(text::print(&g), String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(&dir);
    // an unknown pass name is an error naming the known ones
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .arg("dump")
        .arg(&file)
        .args(["--passes", "fuse,frob"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pass \"frob\""));
}

/// Multi-output fusion: after the default pipeline, the whole Adam update of each param of the
/// MLP and CNN training steps is one fused node; its results are the new param (the node
/// itself) and the new first and second moments (`fused_result` 1 and 2), all update values.
#[test]
fn adam_update_of_each_param_is_one_kernel() {
    for name in ["mlp", "cnn"] {
        let mut g = common::adam_step(name);
        Pipeline::default().run(&mut g).unwrap();
        let updates = g.updates().to_vec();
        for p in g.params() {
            let pname = g[p].name.clone().unwrap();
            let value = updates.iter().find(|u| u.target == p).unwrap().value;
            let Op::Fused(body) = &g[value].op else {
                panic!(
                    "{name}: the update of {pname} is not fused:\n{}",
                    text::print(&g)
                );
            };
            assert_eq!(body.n_results(), 3, "{name} {pname}");
            for (moment, index) in [("m", 1), ("v", 2)] {
                let state = g.find(&format!("{pname}.{moment}")).unwrap();
                let u = updates.iter().find(|u| u.target == state).unwrap();
                assert_eq!(g[u.value].op, Op::FusedResult { index }, "{name} {pname}");
                assert_eq!(g.operands(u.value), vec![value], "{name} {pname}");
            }
        }
        // the result is a valid graph that prints and parses back to the same text
        let printed = text::print(&g);
        let back = text::parse(&printed, "adam.ir").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text::print(&back), printed);
        // and through JSON (multi-result bodies and fused_result nodes included)
        let json = text::from_json(&text::to_json(&g)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text::print(&json), printed);
    }
}

/// The fused Adam kernel (three results written in place into the param and both moments) run
/// for several steps by the JIT equals the interpreter running the unfused graph, on shapes
/// around the vector width. Gradients are fed with magnitudes in [0.1, 1], so every value is
/// well conditioned; every element of the param and both moments must agree to
/// `1e-5 |ref| + 1e-6 max|ref|` (f32 rounding of about 10 operations per step over a few steps,
/// and the cancellation in `w - step` where `w` is near 0), while a wrong update rule is off by
/// the size of a step (1e-2) or of a moment.
#[test]
fn jit_fused_adam_matches_the_interpreter_over_steps() {
    for shape in [vec![13], vec![3, 7], vec![4, 8], vec![2, 33]] {
        let mut g = Graph::new("adam");
        let ty = TensorType::f32(shape.as_slice());
        let grad = g.input("grad", ty.clone()).unwrap();
        let w = g
            .param(
                "w",
                ty.shape.clone(),
                gradlift::Init::Uniform {
                    low: -1.0,
                    high: 1.0,
                    seed: 5,
                },
            )
            .unwrap();
        let lr = gradlift::optim::lr_input(&mut g).unwrap();
        gradlift::optim::Optimizer::adam()
            .apply(&mut g, lr, &[(w, grad)])
            .unwrap();
        let mut fused = g.clone();
        Pipeline::default().run(&mut fused).unwrap();
        let wu = fused
            .updates()
            .iter()
            .find(|u| u.target == fused.find("w").unwrap())
            .unwrap()
            .value;
        assert!(
            matches!(&fused[wu].op, Op::Fused(b) if b.n_results() == 3),
            "{}",
            text::print(&fused)
        );
        let opts = CompileOptions {
            verify: true,
            poison: true,
            ..CompileOptions::default()
        };
        let mut exe = runtime::compile(&fused, &opts).unwrap();
        // the interpreter state: every param and state fed explicitly, updated by hand
        let mut state: HashMap<NodeId, Array<f64>> = HashMap::new();
        let init = interp::eval::<f64>(&g, &{
            let mut f = HashMap::new();
            f.insert(
                grad,
                Array::new(ty.shape.clone(), vec![0.5; ty.shape.numel()]).unwrap(),
            );
            f.insert(lr, Array::new(Shape::scalar(), vec![0.01]).unwrap());
            f
        })
        .unwrap();
        for id in g.params().into_iter().chain(g.states()) {
            state.insert(id, init.get(id).unwrap().clone());
        }
        let mut rng = Rng::new(9);
        for step in 0..4 {
            let gv: Vec<f64> = (0..ty.shape.numel())
                .map(|_| {
                    let m = 0.1 + 0.9 * rng.uniform();
                    if rng.uniform() < 0.5 {
                        -m
                    } else {
                        m
                    }
                })
                .collect();
            let mut f = state.clone();
            f.insert(grad, Array::new(ty.shape.clone(), gv.clone()).unwrap());
            f.insert(lr, Array::new(Shape::scalar(), vec![0.01]).unwrap());
            let want = interp::eval::<f64>(&g, &f).unwrap();
            for u in g.updates() {
                state.insert(u.target, want.get(u.value).unwrap().clone());
            }
            exe.run(&[
                ("grad", HostTensor::from_f64(&ty, &gv)),
                (
                    "lr",
                    HostTensor::from_f64(&TensorType::f32(Shape::scalar()), &[0.01]),
                ),
            ])
            .unwrap();
            for id in g.params().into_iter().chain(g.states()) {
                let n = g[id].name.clone().unwrap();
                let got = exe.param(&n).or_else(|| exe.state(&n)).unwrap().to_f64();
                let want = &state[&id].data;
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (x, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (x - w).abs() <= 1e-5 * w.abs() + 1e-6 * scale,
                        "{shape:?} step {step}: {n}[{i}] = {x}, interpreter {w}"
                    );
                }
            }
        }
    }
}

/// `fused_result` must read an existing result of a fused node: the verifier says which, the
/// interpreter and the JIT refuse such a graph with an error instead of panicking.
#[test]
fn fused_result_errors() {
    let graph = |body: &str| {
        format!("graph e {{\ninputs:\n  %x: f32[3] = input\nbody:\n{body}outputs:\n  r = %r\n}}\n")
    };
    let not_fused = graph("  %r: f32[3] = fused_result %x, index=1\n");
    let needs = "fused_result index=1 needs a fused node with at least 2 results, found input (not a fused node)";
    // the parser runs the verifier: the error is at the op
    let err = text::parse(&not_fused, "e.ir").unwrap_err();
    assert_eq!((err.line, err.column), (5, 16), "{err}");
    assert!(err.message.contains(needs), "{err}");
    // the same graph built without the parser
    let mut g = Graph::new("e");
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let r = g.add_raw(
        gradlift::Node {
            op: Op::FusedResult { index: 1 },
            ty: TensorType::f32([3]),
            name: Some("r".into()),
            loc: None,
            grad_of: None,
        },
        &[x],
    );
    g.add_output("r", r).unwrap();
    let err = gradlift::verify::verify(&g).unwrap_err().to_string();
    assert!(err.contains(needs), "{err}");
    let f = HashMap::from([(x, Array::new([3], vec![1.0; 3]).unwrap())]);
    let err = interp::eval::<f64>(&g, &f).unwrap_err().to_string();
    assert!(err.contains(needs), "{err}");
    let err = runtime::compile(&g, &CompileOptions::default()).unwrap_err();
    assert!(err.to_string().contains(needs), "{err}");

    let one_result = graph(
        "  %f: f32[3] = fused %x {\n    %1: f32[3] = neg %0\n    yield %1\n  }\n  %r: f32[3] = fused_result %f, index=1\n",
    );
    let err = text::parse(&one_result, "e.ir").unwrap_err().to_string();
    assert!(err.contains("found a fused node with 1 result(s)"), "{err}");

    let zero = graph("  %r: f32[3] = fused_result %x, index=0\n");
    let err = text::parse(&zero, "e.ir").unwrap_err().to_string();
    assert!(err.contains("index must be at least 1"), "{err}");
}

/// Fused bodies containing `log` (inline code in the JIT) at sizes around the vector width,
/// with a broadcast operand, NaN lanes that a `select` discards, and every kind of trailing
/// reduction over either axis.
#[test]
fn jit_fused_log_at_odd_sizes() {
    for rows in [1, 3] {
        for cols in [1, 3, 4, 5, 17] {
            for variant in 0..5 {
                let mut g = Graph::new("log");
                let x = g.input("x", TensorType::f32([rows, cols])).unwrap();
                let b = g.input("b", TensorType::f32([cols])).unwrap();
                let eps = g.scalar(1e-3);
                let one = g.scalar(1.0);
                let zero = g.scalar(0.0);
                // log(|x - b| + eps) + log(1 - sigmoid(x)), and log(x) where x > 0 (NaN lanes
                // for x < 0 computed and discarded)
                let d = g.sub(x, b).unwrap();
                let a = g.abs(d).unwrap();
                let ae = g.add2(a, eps).unwrap();
                let l1 = g.log(ae).unwrap();
                let s = g.sigmoid(x).unwrap();
                let q = g.sub(one, s).unwrap();
                let l2 = g.log(q).unwrap();
                let l = g.add2(l1, l2).unwrap();
                let pos = g.compare(gradlift::CmpOp::Gt, x, zero).unwrap();
                let lx = g.log(x).unwrap();
                let y = g.select(pos, lx, l).unwrap();
                let out = reduced(&mut g, y, variant);
                g.add_output("y", out).unwrap();
                let mut fused = g.clone();
                let r = fuse(&mut fused);
                assert_eq!(fused_count(&fused), 1, "{rows}x{cols} v{variant}: {r}");
                let kernels = fused
                    .node_ids()
                    .into_iter()
                    .filter(|&id| !fused[id].op.is_leaf())
                    .count();
                assert_eq!(kernels, 1, "{rows}x{cols} v{variant}: {r}");
                jit_matches(
                    &format!("log {rows}x{cols} variant {variant}"),
                    &g,
                    &fused,
                    7,
                );
            }
        }
    }
}

/// Every reduction kind over the innermost axis (accumulated in `f32x4` registers per row),
/// over a leading or middle axis (accumulated in the output row) and over all axes, of a fused
/// product with a broadcast bias, at sizes 1, 3, 5 and 17 (and rows of 51, 85 and 255 when
/// axes merge: several groups of four vectors, leftover vectors and a scalar tail). Sums in
/// registers add in another order than the interpreter (four `f32x4` partial sums per row):
/// the worst-case rounding bound of an n-term f32 sum (`(n-1) 2^-24 sum|x|`) does not depend
/// on the order, and the typical error (`~ sqrt(n) 2^-24` times the partial sums) stays well
/// inside this file's unchanged tolerance, `1e-3 |ref| + 1e-5 sqrt(n) max(1, max|ref|)`.
#[test]
fn jit_fused_reductions_of_every_kind_at_odd_sizes() {
    use gradlift::ReduceOp;
    let sizes = [1, 3, 5, 17];
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    for &r in &sizes {
        for &c in &sizes {
            shapes.push(vec![r, c]);
        }
    }
    shapes.extend([vec![3, 5, 17], vec![5, 17, 3], vec![1, 3, 5]]);
    for shape in shapes {
        let rank = shape.len();
        let mut axes_sets: Vec<Vec<usize>> = vec![vec![rank - 1], vec![0], (0..rank).collect()];
        if rank == 3 {
            axes_sets.push(vec![1]);
            axes_sets.push(vec![1, 2]);
            axes_sets.push(vec![0, 2]);
        }
        for axes in axes_sets {
            for kind in ReduceOp::ALL {
                fused_reduction_matches(&shape, &axes, kind, 11);
            }
        }
    }
}

/// `reduce(kind, x * y + b)` over `axes` of `shape` (`b` broadcast along the last axis) fuses
/// into one kernel whose compiled result matches the interpreter (inputs from `seed`).
fn fused_reduction_matches(shape: &[usize], axes: &[usize], kind: gradlift::ReduceOp, seed: u64) {
    let mut g = Graph::new("reduce");
    let x = g.input("x", TensorType::f32(shape.to_vec())).unwrap();
    let y = g.input("y", TensorType::f32(shape.to_vec())).unwrap();
    let b = g
        .input("b", TensorType::f32([shape[shape.len() - 1]]))
        .unwrap();
    let p = g.mul(x, y).unwrap();
    let v = g.add2(p, b).unwrap();
    let out = g.reduce(kind, v, axes, false).unwrap();
    g.add_output("r", out).unwrap();
    let mut fused = g.clone();
    let r = fuse(&mut fused);
    let what = format!("{} {shape:?} axes {axes:?}", kind.name());
    assert_eq!(fused_count(&fused), 1, "{what}: {r}");
    jit_matches(&what, &g, &fused, seed);
}

/// Fused trailing reductions long enough over outer axes to add in blocks (more than 1024
/// rows per output element: a remainder block, kept axes outside and inside the split axis,
/// rows summed in registers with blocks of outer rows) match the interpreter, every kind.
#[test]
fn jit_fused_outer_reductions_in_blocks() {
    use gradlift::ReduceOp;
    for (shape, axes) in [
        (vec![1500, 5], vec![0]),
        (vec![2, 1100, 3], vec![1]),
        (vec![40, 3, 30, 5], vec![0, 2]),
        (vec![1100, 2, 7], vec![0, 2]),
        (vec![3, 1100, 2, 7], vec![1, 3]),
        (vec![2, 33, 3, 40, 5], vec![1, 3]),
    ] {
        for kind in ReduceOp::ALL {
            fused_reduction_matches(&shape, &axes, kind, 13);
        }
    }
}

/// Hand-written fused bodies: `log` compiles (inline code) and matches the interpreter,
/// including its special values; `pow` is refused by the JIT with an error naming it.
#[test]
fn hand_written_fused_log_compiles_and_pow_is_refused() {
    let src = |op: &str| {
        format!(
            "graph h {{\ninputs:\n  %x: f32[7] = input\nbody:\n  %two: f32[] = const 2.0\n  \
             %y: f32[7] = fused %x, %two {{\n    %2: f32[7] = {op} %0{}\n    %3: f32[7] = mul %2, %1\n    \
             yield %3\n  }}\noutputs:\n  y = %y\n}}\n",
            if op == "pow" { ", %1" } else { "" }
        )
    };
    let g = text::parse(&src("log"), "h.ir").unwrap_or_else(|e| panic!("{e}"));
    let xs = [0.0f32, -0.0, -1.0, f32::INFINITY, f32::NAN, 1e-40, 3.5];
    let x = g.find("x").unwrap();
    let f = HashMap::from([(
        x,
        Array::new([7], xs.iter().map(|&v| v as f64).collect()).unwrap(),
    )]);
    let want = interp::eval::<f64>(&g, &f).unwrap();
    let want = &want.get(g.output("y").unwrap()).unwrap().data;
    // IEEE denormals (1e-40), as the interpreter computes
    let ieee = CompileOptions {
        flush_denormals: false,
        ..CompileOptions::default()
    };
    let mut exe = runtime::compile(&g, &ieee).unwrap();
    let got = exe
        .run(&[("x", HostTensor::f32([7], xs.to_vec()))])
        .unwrap();
    let got = got[0].1.to_f64();
    close("hand-written log", &got, want, DType::F32, 1);
    let g = text::parse(&src("pow"), "h.ir").unwrap_or_else(|e| panic!("{e}"));
    let Err(err) = runtime::compile(&g, &CompileOptions::default()) else {
        panic!("pow in a fused body compiled");
    };
    let err = err.to_string();
    assert!(
        err.contains("pow inside a fused body is not supported"),
        "{err}"
    );
}

/// A fused body whose trailing reduction reads something other than the instruction before
/// it is refused when parsed (it used to compile to the wrong values: the loop reduces over
/// the elementwise result's domain).
#[test]
fn a_reduction_of_anything_but_the_last_elementwise_value_is_refused() {
    let text = "graph g {
inputs:
  %y: f32[2,3] = input
  %x: f32[2,3] = input
body:
  %s: f32[2] = fused %y, %x {
    %2: f32[2,3] = sub %0, %1
    %3: f32[2] = reduce_sum %0, axes=[1], keepdims=false
    yield %3
  }
outputs:
  s = %s
}";
    let e = gradlift::text::parse(text, "dead.ir")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the trailing reduction must reduce %2") && e.contains("found %0"),
        "{e}"
    );
}

/// Found by the `jit_vs_interp` fuzz target: an epilogue body whose leading matmul has
/// another shape than the body's domain (here `[7,1]`, broadcast by the add to `[7,0]` or
/// `[7,3]`) was accepted, and the GEMM wrote its `[7,1]` result into the node's smaller
/// output buffer (a segmentation fault at `[7,0]`). The GEMM or convolution writes the output
/// and the loop runs over it in place, so the producer must have the domain's shape: such a
/// body is refused when parsed and when built.
#[test]
fn an_epilogue_whose_producer_is_not_the_domain_is_refused() {
    for (k, n) in [(0, 0), (3, 3)] {
        let text = format!(
            "graph g {{
inputs:
  %a: f32[7,{k}] = input
  %b: f32[{k},1] = input
body:
  %f: f32[7,{n}] = fused %a, %b {{
    %2: f32[7,1] = matmul %0, %1
    %3: f32[7,{n}] = add %0, %2
    yield %3
  }}
outputs:
  f = %f
}}"
        );
        let e = text::parse(&text, "epilogue.ir").unwrap_err().to_string();
        assert!(
            e.contains("%2: the leading matmul computes shape [7,1]")
                && e.contains(&format!("the body's domain [7,{n}]")),
            "{e}"
        );
        // the builder checks the same rule
        let mut g = Graph::new("g");
        let a = g.input("a", TensorType::f32([7, k])).unwrap();
        let b = g.input("b", TensorType::f32([k, 1])).unwrap();
        let body = gradlift::fused::FusedBody {
            n_params: 2,
            insts: vec![
                gradlift::fused::FusedInst {
                    op: Op::Matmul,
                    args: vec![0, 1],
                    ty: TensorType::f32([7, 1]),
                },
                gradlift::fused::FusedInst {
                    op: Op::Binary(gradlift::BinaryOp::Add),
                    args: vec![0, 2],
                    ty: TensorType::f32([7, n]),
                },
            ],
            extra: vec![],
        };
        let e = g.add(Op::Fused(body), &[a, b]).unwrap_err().to_string();
        assert!(e.contains("must have the body's domain"), "{e}");
    }
}

/// A long elementwise chain is split into kernels of at most `fuse::MAX_FUSED_NODES` nodes
/// (one kernel of thousands made Cranelift's register allocation take seconds), with a remark
/// where it was cut, and still computes the chain's values.
#[test]
fn long_chains_are_cut_into_kernels_of_bounded_size() {
    let n = 300;
    let mut g = Graph::new("chain");
    let x = g.input("x", TensorType::f32([5])).unwrap();
    let mut h = x;
    for _ in 0..n {
        h = g.tanh(h).unwrap();
    }
    g.add_output("y", h).unwrap();
    let mut f = g.clone();
    let report = fuse(&mut f);
    let max = passes::fuse::MAX_FUSED_NODES;
    let sizes: Vec<usize> = f
        .node_ids()
        .into_iter()
        .filter_map(|id| match &f[id].op {
            Op::Fused(b) => Some(b.insts.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), n, "every tanh is in a kernel");
    assert!(sizes.iter().all(|&s| s <= max), "{sizes:?}");
    assert_eq!(sizes.len(), n.div_ceil(max), "{sizes:?}");
    assert!(
        report.remarks.iter().any(|r| r.contains("nodes already")),
        "{report}"
    );
    let feeds = random_feeds(&g, &mut Rng::new(3), 1.0);
    let want = interp_results(&g, &interp::eval::<f64>(&g, &feeds).unwrap());
    let got = interp_results(&f, &interp::eval::<f64>(&f, &feeds).unwrap());
    assert_eq!(want, got);
}

/// RMSprop (plain, with momentum, centered), Adagrad and AdamW, with a constant or a scheduled
/// learning rate, fuse like Adam: after the default pipeline each param's whole update is one
/// fused node whose further results are its new optimizer state, every one an update value;
/// and the fused step, compiled, agrees with the interpreter on the unfused step
/// ([`jit_matches`]).
#[test]
fn every_optimizers_update_of_each_param_is_one_kernel() {
    use gradlift::optim::{Optimizer, Schedule};
    let decay = Schedule::exponential_decay(0.01, 10, 0.5, true);
    for (opt, state) in [
        (Optimizer::rmsprop(), &["velocity"][..]),
        (
            Optimizer::rmsprop().with_momentum(0.9).with_centered(true),
            &["velocity", "average_gradient", "momentum"][..],
        ),
        (Optimizer::adagrad(), &["accumulator"][..]),
        (Optimizer::adamw(), &["m", "v"][..]),
        (
            Optimizer::adamw().with_schedule(decay.clone()),
            &["m", "v"][..],
        ),
        (Optimizer::rmsprop().with_schedule(decay), &["velocity"][..]),
        (
            Optimizer::adagrad().with_schedule(Schedule::cosine_decay(0.01, 5, 0.1)),
            &["accumulator"][..],
        ),
    ] {
        let (_, forward) = common::load(&common::ir_dir().join("mlp.ir"));
        let mut step = forward.clone();
        gradlift::optim::training_step(&mut step, "loss", &opt).unwrap();
        let mut g = step.clone();
        Pipeline::default().run(&mut g).unwrap();
        let updates = g.updates().to_vec();
        for p in g.params() {
            let pname = g[p].name.clone().unwrap();
            let value = updates.iter().find(|u| u.target == p).unwrap().value;
            let Op::Fused(body) = &g[value].op else {
                panic!(
                    "{opt:?}: the update of {pname} is not fused:\n{}",
                    text::print(&g)
                );
            };
            assert_eq!(body.n_results(), 1 + state.len(), "{opt:?} {pname}");
            for s in state {
                let id = g.find(&format!("{pname}.{s}")).unwrap();
                let u = updates.iter().find(|u| u.target == id).unwrap();
                assert!(
                    matches!(g[u.value].op, Op::FusedResult { .. }),
                    "{opt:?} {pname}.{s}"
                );
                assert_eq!(g.operands(u.value), vec![value], "{opt:?} {pname}.{s}");
            }
        }
        jit_matches(&format!("{opt:?}"), &step, &g, 3);
    }
}
