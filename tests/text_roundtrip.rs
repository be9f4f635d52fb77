//! Round trips of the IR text format: print -> parse -> print is the identity on hand-built
//! graphs covering every op and initializer, on random graphs, and on every `ir/**/*.ir` file;
//! the attribute table inverts; JSON round trips; snapshots of printed text and DOT.

mod common;

use gradlift::op::all_op_names;
use gradlift::text::AttrValue;
use gradlift::text::{self, PrintOptions};
use gradlift::{
    BinaryOp, CmpOp, DType, Graph, Init, Literal, NodeId, Op, Padding, ReduceOp, TensorType,
    UnaryOp,
};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

/// Unwraps a builder result, naming the failing step.
fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("building the test graph failed: {e}"),
    }
}

fn const_node(g: &mut Graph, ty: TensorType, value: Literal) -> NodeId {
    ok(g.constant(ty, value))
}

/// A graph that uses every op, every initializer, named and anonymous nodes, gradient marks,
/// outputs and updates.
fn every_op_graph() -> Graph {
    let mut g = Graph::new("every_op");
    let x = ok(g.input("x", TensorType::f32([2, 3])));
    let labels = ok(g.input("labels", TensorType::i32([2])));
    let img = ok(g.input("img", TensorType::f32([1, 4, 4, 2])));
    let w = ok(g.param("w", [3, 4], Init::GlorotUniform { seed: 1 }));
    let b = ok(g.param("b", [4], Init::Zeros));
    let k = ok(g.param("k", [2, 2, 2, 3], Init::HeNormal { seed: 2 }));
    let p_ones = ok(g.param("p.ones", [2, 3], Init::Ones));
    let p_const = ok(g.param("p_const", [3], Init::Constant { value: 0.1 }));
    let p_unif = ok(g.param(
        "p_unif",
        [3],
        Init::Uniform {
            low: -0.05,
            high: 0.05,
            seed: u64::MAX,
        },
    ));
    let p_norm = ok(g.param(
        "p_norm",
        [3],
        Init::Normal {
            mean: 0.0,
            stddev: 1e-7,
            seed: 3,
        },
    ));
    let m = ok(g.state("m", [3, 4], Init::Zeros));

    // Leaves of the body: constants of both dtypes, splat and dense, special floats.
    let half = g.scalar(0.5);
    let dense = const_node(
        &mut g,
        TensorType::f32([2, 3]),
        Literal::Dense(vec![1.0, -2.5, 1e-7, 1e20, -0.0, 3.0]),
    );
    let specials = const_node(
        &mut g,
        TensorType::f32([3]),
        Literal::Dense(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    );
    let i_splat = const_node(&mut g, TensorType::i32([2]), Literal::Splat(1.0));
    let i_dense = const_node(
        &mut g,
        TensorType::i32([2, 2]),
        Literal::Dense(vec![0.0, -1.0, 7.0, 2.0]),
    );

    // Elementwise.
    let mut last = x;
    for u in UnaryOp::ALL {
        last = ok(g.add(Op::Unary(u), &[last]));
    }
    for bop in BinaryOp::ALL {
        last = ok(g.add(Op::Binary(bop), &[last, p_ones]));
    }
    let mut masks = Vec::new();
    for c in CmpOp::ALL {
        masks.push(ok(g.compare(c, last, dense)));
    }
    let icmp = ok(g.compare(CmpOp::Eq, labels, i_splat));
    let sel = ok(g.select(masks[0], last, half));
    let as_int = ok(g.cast(sel, DType::I32));
    let as_float = ok(g.cast(labels, DType::F32));

    // Reductions and shapes.
    let sum = ok(g.sum(sel, &[1], false));
    let mean = ok(g.mean(sel, &[0, 1], true));
    let imax = ok(g.reduce(ReduceOp::Max, i_dense, &[0], false));
    let am = ok(g.argmax(sel, 1));
    let rs = ok(g.reshape(sel, [3, 2]));
    let bc = ok(g.broadcast(b, [2, 4]));
    let tr = ok(g.transpose(rs, &[1, 0]));

    // Dense layer and losses.
    let mm = ok(g.matmul(x, w));
    let h = ok(g.add2(mm, b));
    let sm = ok(g.softmax(h, 1));
    let lsm = ok(g.log_softmax(h, 1));
    let xent = ok(g.softmax_cross_entropy(h, sm));
    let sxent = ok(g.sparse_softmax_cross_entropy(h, labels));
    let loss = ok(g.mean_all(sxent));
    let oh = ok(g.one_hot(labels, 4));

    // Convolution and pooling, with their gradients.
    let conv = ok(g.conv2d(img, k, [1, 1], Padding::Same));
    let conv_v = ok(g.conv2d(img, k, [2, 2], Padding::Valid));
    let dx = ok(g.add(
        Op::Conv2dInputGrad {
            stride: [1, 1],
            padding: Padding::Same,
            shape: [1, 4, 4, 2].into(),
        },
        &[conv, k],
    ));
    let dk = ok(g.add(
        Op::Conv2dFilterGrad {
            stride: [1, 1],
            padding: Padding::Same,
            kernel: [2, 2],
        },
        &[img, conv],
    ));
    let pool = ok(g.max_pool2d(img, [2, 2], [2, 2]));
    let dpool = ok(g.add(
        Op::MaxPool2dGrad {
            window: [2, 2],
            stride: [2, 2],
        },
        &[img, pool],
    ));

    // Slicing and concatenation.
    let sl = ok(g.slice(x, &[0, 1], &[2, 3]));
    let cat = ok(g.concat(&[x, sl, x], 1));

    // Gather (an embedding lookup) and its transpose.
    let gat = ok(g.gather(w, labels, 0));
    let sca = ok(g.scatter_add(gat, labels, 0, [3, 4]));

    // A collective over the ranks (sum and mean).
    let ars = ok(g.all_reduce(x, false));
    let arm = ok(g.all_reduce(ars, true));

    // An optimizer-like update and gradient marks.
    let lr = g.scalar(0.01);
    let step = ok(g.mul(lr, w));
    let w_new = ok(g.sub(w, step));
    let m_new = ok(g.add2(m, step));
    if let Some(n) = g.get_mut(step) {
        n.grad_of = Some(mm);
    }
    ok(g.set_name(w_new, "w_next"));

    for (name, id) in [
        ("loss", loss),
        ("xent", xent),
        ("lsm", lsm),
        ("oh", oh),
        ("icmp", icmp),
        ("as_int", as_int),
        ("as_float", as_float),
        ("sum", sum),
        ("mean", mean),
        ("imax", imax),
        ("am", am),
        ("bc", bc),
        ("tr", tr),
        ("conv_v", conv_v),
        ("dx", dx),
        ("dk", dk),
        ("dpool", dpool),
        ("cat", cat),
        ("gat", gat),
        ("sca", sca),
        ("arm", arm),
        ("specials", specials),
        ("p_const", p_const),
        ("p_unif", p_unif),
        ("p_norm", p_norm),
    ] {
        ok(g.add_output(name, id));
    }
    for mask in &masks[1..] {
        ok(g.add_output(&format!("mask{}", mask.index()), *mask));
    }
    ok(g.add_update(w, w_new));
    ok(g.add_update(m, m_new));
    g
}

/// A two-layer perceptron with a gradient-marked node, for the DOT snapshot.
fn small_mlp() -> Graph {
    let mut g = Graph::new("mlp");
    let x = ok(g.input("x", TensorType::f32([4, 3])));
    let y = ok(g.input("y", TensorType::i32([4])));
    let w = ok(g.param("w", [3, 2], Init::GlorotUniform { seed: 1 }));
    let b = ok(g.param("b", [2], Init::Zeros));
    let v = ok(g.state("v", [3, 2], Init::Zeros));
    let mm = ok(g.matmul(x, w));
    let logits = ok(g.add2(mm, b));
    let xent = ok(g.sparse_softmax_cross_entropy(logits, y));
    let loss = ok(g.mean_all(xent));
    ok(g.set_name(loss, "loss"));
    let xt = ok(g.transpose(x, &[1, 0]));
    let dw = ok(g.matmul(xt, logits));
    if let Some(n) = g.get_mut(dw) {
        n.grad_of = Some(w);
    }
    let v_new = ok(g.add2(v, dw));
    ok(g.add_output("loss", loss));
    ok(g.add_update(v, v_new));
    g
}

/// `print(parse(print(g))) == print(g)`, with and without locations.
fn assert_round_trip(g: &Graph) {
    for opts in [PrintOptions::default(), PrintOptions { locations: true }] {
        let first = text::print_with(g, opts);
        let parsed = text::parse(&first, "roundtrip.ir")
            .unwrap_or_else(|e| panic!("printed text does not parse: {e}\n{first}"));
        let second = text::print_with(&parsed, opts);
        assert_eq!(first, second, "round trip changed the text");
    }
}

#[test]
fn every_op_graph_round_trips() {
    let g = every_op_graph();
    assert_round_trip(&g);
    // The graph really covers every op and every initializer.
    let parsed = ok(text::parse(&text::print(&g), "every_op.ir"));
    let ops: BTreeSet<&str> = parsed
        .node_ids()
        .into_iter()
        .map(|id| parsed[id].op.name())
        .collect();
    let all: BTreeSet<&str> = all_op_names().collect();
    assert_eq!(ops, all);
    let inits: BTreeSet<&str> = parsed
        .node_ids()
        .into_iter()
        .filter_map(|id| match &parsed[id].op {
            Op::Param { init } | Op::State { init } => Some(init.name()),
            _ => None,
        })
        .collect();
    assert_eq!(inits.len(), 7, "initializers covered: {inits:?}");
}

#[test]
fn parsed_graph_keeps_nodes_in_canonical_order() {
    let g = every_op_graph();
    let parsed = ok(text::parse(
        &text::print_with(&g, PrintOptions { locations: true }),
        "every_op.ir",
    ));
    let (Ok(a), Ok(b)) = (g.topo_order(), parsed.topo_order()) else {
        panic!("graphs must be acyclic");
    };
    assert_eq!(a.len(), b.len());
    // The parsed graph's ids are its canonical order.
    assert_eq!(b, parsed.node_ids());
    for (&x, &y) in a.iter().zip(&b) {
        let (nx, ny) = (&g[x], &parsed[y]);
        assert_eq!(nx.ty, ny.ty);
        assert_eq!(nx.name, ny.name);
        assert_eq!(nx.loc, ny.loc, "locations are kept");
        assert_eq!(nx.op.name(), ny.op.name());
        assert_eq!(nx.grad_of.is_some(), ny.grad_of.is_some());
        assert_eq!(g.operands(x).len(), parsed.operands(y).len());
    }
}

#[test]
fn attribute_table_inverts_for_every_op() {
    let g = every_op_graph();
    for id in g.node_ids() {
        let op = &g[id].op;
        if op.is_leaf() {
            continue;
        }
        let attrs: Vec<(String, AttrValue)> = op
            .attrs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let keys: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(Some(keys.as_slice()), Op::attr_names(op.name()));
        assert_eq!(Op::from_attrs(op.name(), &attrs).as_ref(), Ok(op));
    }
}

#[test]
fn nodes_without_location_get_the_ir_line() {
    let src = "graph g {\ninputs:\n  %x: f32[2] = input\nbody:\n  %1: f32[2] = relu %x  # at model.rs:7:9\n}\n";
    let g = ok(text::parse(src, "g.ir"));
    let locs: Vec<String> = g
        .node_ids()
        .into_iter()
        .filter_map(|id| g[id].loc.as_ref().map(|l| l.to_string()))
        .collect();
    assert_eq!(
        locs,
        vec!["g.ir:3:3".to_string(), "model.rs:7:9".to_string()]
    );
}

#[test]
fn forward_references_are_allowed_and_printing_reorders() {
    let src = "graph g {\ninputs:\n  %x: f32[2] = input\nbody:\n  %b: f32[2] = neg %a\n  %a: f32[2] = relu %x\noutputs:\n  y = %b\n}\n";
    let g = ok(text::parse(src, "g.ir"));
    let printed = text::print(&g);
    assert_eq!(
        printed,
        "graph g {\ninputs:\n  %x: f32[2] = input\nbody:\n  %a: f32[2] = relu %x\n  %b: f32[2] = neg %a\noutputs:\n  y = %b\n}\n"
    );
}

#[test]
fn cyclic_graph_prints_without_panicking_and_reparse_reports_it() {
    let mut g = Graph::new("cyc");
    let x = ok(g.input("x", TensorType::f32([2])));
    let a = ok(g.relu(x));
    let b = ok(g.neg(a));
    g.set_operands(a, &[b]);
    let printed = text::print(&g);
    assert!(printed.starts_with("# error: cycle through %1, %2\ngraph cyc {\n"));
    let e = text::parse(&printed, "cyc.ir").err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("cyc.ir:6:3: cycle: %1, %2 depend on each other")
    );
    // print_node works on a cyclic graph too.
    assert_eq!(
        text::print_node(&g, b).split("  # at").next(),
        Some("%2: f32[2] = neg %1")
    );
}

#[test]
fn node_labels_match_the_printed_text() {
    let g = every_op_graph();
    let printed = text::print(&g);
    let labels = text::node_labels(&g);
    assert_eq!(labels.len(), g.len());
    for id in g.node_ids() {
        let label = &labels[&id];
        let line = format!("  {label}: {} = {}", g[id].ty, g[id].op.name());
        assert!(printed.contains(&line), "{line}");
        assert!(text::print_node(&g, id).starts_with(&line[2..]));
    }
}

#[test]
fn print_node_prints_one_line_with_location() {
    let g = small_mlp();
    let Some(loss) = g.find("loss") else {
        panic!("no loss node")
    };
    let line = text::print_node(&g, loss);
    assert!(
        line.starts_with("%loss: f32[] = reduce_mean %7, axes=[0], keepdims=false  # at "),
        "{line}"
    );
    assert!(line.contains("tests/text_roundtrip.rs:"), "{line}");
    assert!(!line.contains('\n'));
}

/// JSON round trip: same nodes under the same ids, same operands, outputs, updates and text.
fn assert_json_round_trip(g: &Graph) {
    let back = text::from_json(&text::to_json(g)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text::print(&back), text::print(g));
    assert_eq!(back.name, g.name);
    assert_eq!(back.node_ids(), g.node_ids());
    for id in g.node_ids() {
        assert_eq!(back[id], g[id]);
        assert_eq!(back.operands(id), g.operands(id));
    }
    assert_eq!(back.outputs(), g.outputs());
    assert_eq!(back.updates(), g.updates());
}

#[test]
fn json_round_trip_keeps_nodes_and_text() {
    assert_json_round_trip(&small_mlp());
    // Every op; the NaN/inf constant has no JSON form, so it is made finite first.
    let mut g = every_op_graph();
    let Some(specials) = g.output("specials") else {
        panic!("no specials output")
    };
    assert!(
        text::from_json(&text::to_json(&g)).is_err(),
        "NaN has no JSON form"
    );
    if let Some(n) = g.get_mut(specials) {
        n.op = Op::Const {
            value: Literal::Dense(vec![1.5, -2.0, 3e30]),
        };
    }
    assert_json_round_trip(&g);
    // Removed nodes leave holes in the indices; JSON keeps them.
    let mut g = small_mlp();
    let x = g.find("x").unwrap_or_else(|| panic!("no x"));
    let extra = ok(g.relu(x));
    let after = ok(g.neg(x));
    g.remove(extra);
    assert_json_round_trip(&g);
    assert!(g.contains(after));
    assert!(text::from_json("{\"name\": 3}").is_err());
}

#[test]
fn invalid_names_and_missing_nodes_print_without_panicking() {
    let mut g = Graph::new("my model");
    let x = ok(g.input("x", TensorType::f32([2])));
    let y = ok(g.relu(x));
    let z = ok(g.neg(y));
    if let Some(n) = g.get_mut(z) {
        n.name = Some("not a name".to_string());
    }
    ok(g.add_output("z", z));
    let printed = text::print(&g);
    assert_eq!(
        printed,
        "graph my_model {\ninputs:\n  %x: f32[2] = input\nbody:\n  %1: f32[2] = relu %x\n  %2: f32[2] = neg %1\noutputs:\n  z = %2\n}\n"
    );
    assert_round_trip(&g);
    // An output of a removed node prints as `%<missing N>`, which does not parse.
    g.push_output("gone", y);
    g.remove(y);
    let printed = text::print(&g);
    assert!(printed.contains("  gone = %<missing 1>\n"), "{printed}");
    assert!(text::parse(&printed, "g.ir").is_err());
}

#[test]
fn snapshot_every_op_graph() {
    insta::assert_snapshot!(text::print(&every_op_graph()));
}

#[test]
fn snapshot_dot_of_small_mlp() {
    insta::assert_snapshot!(text::dot(&small_mlp()));
}

// ---- the corpus ----------------------------------------------------------------------------

#[test]
fn every_corpus_file_round_trips() {
    let files = common::corpus();
    assert!(files.len() >= 4, "the corpus has the models");
    for (_, g) in &files {
        assert_round_trip(g);
    }
}

#[test]
fn snapshot_corpus_files() {
    let mut settings = insta::Settings::clone_current();
    settings.set_allow_empty_glob(true);
    settings.bind(|| {
        insta::glob!("../ir", "**/*.ir", |path| {
            let src = ok(std::fs::read_to_string(path));
            let ir_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir");
            let name = path
                .strip_prefix(&ir_dir)
                .unwrap_or(path)
                .display()
                .to_string();
            let g = text::parse(&src, &name).unwrap_or_else(|e| panic!("{e}"));
            insta::assert_snapshot!(text::print(&g));
        });
    });
}

// ---- random graphs -------------------------------------------------------------------------

/// One random construction step: an op kind and three choice numbers.
type Step = (u8, u16, u16, u16);

/// Builds a random DAG whose shapes are consistent by construction: each step picks existing
/// nodes and attributes that fit their shapes; a step the builder rejects is skipped.
fn random_graph(steps: &[Step]) -> Graph {
    let mut g = Graph::new("random");
    let mut pool = vec![
        ok(g.input("x", TensorType::f32([2, 3]))),
        ok(g.input("y", TensorType::f32([3]))),
        ok(g.param("w", [3, 2], Init::GlorotUniform { seed: 5 })),
    ];
    let mut n_params = 0;
    for (i, &(kind, a, b, c)) in steps.iter().enumerate() {
        let pick = |k: u16| pool[k as usize % pool.len()];
        let x = pick(a);
        let dims = g[x].ty.shape.0.clone();
        let rank = dims.len();
        let r = match kind % 11 {
            0 => g.add(
                Op::Unary(UnaryOp::ALL[b as usize % UnaryOp::ALL.len()]),
                &[x],
            ),
            1 => {
                let op = Op::Binary(BinaryOp::ALL[c as usize % BinaryOp::ALL.len()]);
                g.add(op.clone(), &[x, pick(b)])
                    .or_else(|_| g.add(op, &[x, x]))
            }
            2 => g.compare(CmpOp::ALL[c as usize % CmpOp::ALL.len()], x, x),
            3 => {
                let axes: Vec<usize> = (0..rank).filter(|d| b >> d & 1 == 1).collect();
                let kind = ReduceOp::ALL[c as usize % ReduceOp::ALL.len()];
                g.reduce(kind, x, &axes, c & 4 != 0)
            }
            4 => {
                let numel: usize = dims.iter().product();
                if b % 2 == 0 {
                    g.reshape(x, [numel])
                } else {
                    let rev: Vec<usize> = dims.iter().rev().copied().collect();
                    g.reshape(x, rev)
                }
            }
            5 => {
                let perm: Vec<usize> = (0..rank).map(|d| (d + b as usize) % rank).collect();
                g.transpose(x, &perm)
            }
            6 if rank == 2 => {
                let k = dims[1];
                let rhs = pool
                    .iter()
                    .copied()
                    .find(|&p| g[p].ty.shape.0.len() == 2 && g[p].ty.shape.0[0] == k);
                let rhs = match rhs {
                    Some(p) if c % 3 != 0 => p,
                    _ => {
                        n_params += 1;
                        let init = Init::Uniform {
                            low: -0.5,
                            high: 0.5,
                            seed: u64::from(c),
                        };
                        ok(g.param(&format!("p{n_params}"), [k, 1 + c as usize % 3], init))
                    }
                };
                g.matmul(x, rhs)
            }
            7 if rank > 0 => {
                let axis = c as usize % rank;
                g.concat(&[x, pick(b)], axis)
                    .or_else(|_| g.concat(&[x, x], axis))
            }
            8 => {
                let begin: Vec<usize> = dims.iter().map(|&d| (b as usize) % d.max(1)).collect();
                let end: Vec<usize> = dims
                    .iter()
                    .zip(&begin)
                    .map(|(&d, &s)| s + (c as usize % (d - s + 1)))
                    .collect();
                g.slice(x, &begin, &end)
            }
            9 => {
                let mut target = vec![1 + c as usize % 3];
                target.extend(&dims);
                g.broadcast(x, target)
            }
            _ => {
                let ty = g[x].ty.clone();
                let n: usize = ty.shape.0.iter().product();
                let value = if b % 2 == 0 {
                    Literal::Splat(f64::from(c) / 8.0 - 3.0)
                } else {
                    Literal::Dense((0..n).map(|j| (j as f64 - f64::from(c)) * 0.25).collect())
                };
                g.constant(ty, value)
            }
        };
        let Ok(id) = r else { continue };
        if c % 4 == 0 {
            ok(g.set_name(id, &format!("n{i}")));
        }
        if c % 5 == 1 {
            let f = pick(b);
            if let Some(n) = g.get_mut(id) {
                n.grad_of = Some(f);
            }
        }
        pool.push(id);
    }
    if let Some(&last) = pool.last() {
        ok(g.add_output("out", last));
        if g[last].ty.dtype == DType::F32 {
            let s = ok(g.state("s", g[last].ty.shape.clone(), Init::Ones));
            ok(g.add_update(s, last));
        }
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Constants and initializer arguments keep every bit through text and through JSON (an
    /// initializer must be finite: the parser's verifier refuses any other, at its line).
    #[test]
    fn floats_round_trip_exactly(
        v in prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        w in prop::num::f64::ANY,
    ) {
        let mut g = Graph::new("floats");
        if !w.is_finite() {
            let mut bad = Graph::new("floats");
            let p = ok(bad.param("p", [2], Init::Constant { value: w }));
            ok(bad.add_output("p", p));
            let e = text::parse(&text::print(&bad), "floats.ir").err();
            prop_assert!(
                e.as_ref().is_some_and(|e| e.line == 3 && e.message.contains("is not finite")),
                "{:?}",
                e
            );
        }
        let init = if w.is_finite() { w } else { v };
        let p = ok(g.param("p", [2], Init::Constant { value: init }));
        let c = ok(g.constant(TensorType::f32([2]), Literal::Dense(vec![v, w])));
        let s = g.scalar(v);
        ok(g.add_output("c", c));
        ok(g.add_output("s", s));
        let back = text::parse(&text::print(&g), "floats.ir")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Every NaN reads back as the canonical NaN: compare NaN-ness, other values bit by bit.
        let key = |x: &f64| if x.is_nan() { u64::MAX } else { x.to_bits() };
        let bits = |g: &Graph, name: &str| -> Vec<u64> {
            let id = g.output(name).or_else(|| g.find(name));
            match id.map(|id| &g[id].op) {
                Some(Op::Const { value: Literal::Dense(xs) }) => xs.iter().map(key).collect(),
                Some(Op::Const { value: Literal::Splat(x) }) => vec![key(x)],
                Some(Op::Param { init: Init::Constant { value } }) => vec![key(value)],
                _ => vec![],
            }
        };
        for name in ["c", "s", "p"] {
            prop_assert_eq!(bits(&g, name), bits(&back, name));
        }
        prop_assert!(g.contains(p));
        if v.is_finite() && w.is_finite() {
            let json = text::from_json(&text::to_json(&g))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for name in ["c", "s", "p"] {
                prop_assert_eq!(bits(&g, name), bits(&json, name));
            }
        }
    }

    #[test]
    fn random_graphs_round_trip(steps in prop::collection::vec(any::<Step>(), 1..24)) {
        let g = random_graph(&steps);
        assert_round_trip(&g);
        let parsed = text::parse(&text::print(&g), "random.ir").map_err(|e| {
            TestCaseError::fail(e.to_string())
        })?;
        let (Ok(a), Ok(b)) = (g.topo_order(), parsed.topo_order()) else {
            return Err(TestCaseError::fail("cycle"));
        };
        prop_assert_eq!(a.len(), b.len());
        for (&x, &y) in a.iter().zip(&b) {
            prop_assert_eq!(&g[x].op, &parsed[y].op);
            prop_assert_eq!(&g[x].ty, &parsed[y].ty);
            prop_assert_eq!(&g[x].name, &parsed[y].name);
        }
    }
}

#[test]
fn empty_spatial_dimensions_parse_without_panicking() {
    let src = "graph e {\ninputs:\n  %i: f32[1,0,0,1] = input\nparams:\n  %k: f32[3,3,1,1] = param zeros\nbody:\n  %c: f32[1,0,0,1] = conv2d %i, %k, padding=same, stride=[2,2]\n  %d: f32[1,0,0,1] = conv2d_input_grad %c, %k, padding=same, shape=[1,0,0,1], stride=[2,2]\n}\n";
    let g = text::parse(src, "e.ir").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text::print(&g), src);
}

/// The ```ir blocks of the language reference: each parses and is already canonical, and
/// together they use every op.
#[test]
fn readme_examples_parse_and_are_canonical() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/README.md");
    let readme = ok(std::fs::read_to_string(path));
    let mut ops = BTreeSet::new();
    let mut blocks = 0;
    for chunk in readme.split("```ir\n").skip(1) {
        let Some(block) = chunk.split("```").next() else {
            continue;
        };
        blocks += 1;
        let g = text::parse(block, "README.md").unwrap_or_else(|e| panic!("{e}\n{block}"));
        let body = block
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        assert_eq!(text::print(&g), body, "README example is not canonical");
        ops.extend(g.node_ids().into_iter().map(|id| g[id].op.name()));
    }
    assert!(blocks >= 4, "found {blocks} examples");
    let all: BTreeSet<&str> = all_op_names().collect();
    assert_eq!(ops, all);
}

/// A JSON graph whose edge comes from a vacant node slot (`node_holes`) is an error naming
/// the edge, not a panic in the verifier.
#[test]
fn json_edge_from_a_node_hole_is_an_error() {
    let json = r#"{"name":"g","graph":{"nodes":[{"op":"Input","ty":{"dtype":"F32","shape":[2]},"name":"x","grad_of":null},{"op":{"Unary":"Relu"},"ty":{"dtype":"F32","shape":[2]},"name":"y","grad_of":null}],"node_holes":[0],"edge_property":"directed","edges":[[0,2,0]]},"outputs":[{"name":"y","node":2}],"updates":[]}"#;
    let e = gradlift::text::from_json(json).unwrap_err().to_string();
    assert!(e.contains("edge 0 -> 2: node 0 does not exist"), "{e}");
}
