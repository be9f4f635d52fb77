//! The verifier: one broken graph per invariant, with the exact messages snapshotted, plus a
//! graph with several violations (all reported) and valid graphs (no error).

use gradlift::op::{BinaryOp, Init, Literal, Op, UnaryOp};
use gradlift::verify::{verify, VerifyErrors};
use gradlift::{DType, Graph, Node, NodeId, TensorType};

/// A node without name, location or gradient mark.
fn node(op: Op, ty: TensorType) -> Node {
    Node {
        op,
        ty,
        name: None,
        loc: None,
        grad_of: None,
    }
}

/// A named leaf node.
fn leaf(name: &str, op: Op, ty: TensorType) -> Node {
    Node {
        name: Some(name.to_string()),
        ..node(op, ty)
    }
}

/// The errors of `g` as `message` + indented context lines (the `# at` locations of the context
/// left out: they are this file's line numbers), asserting that verification failed.
fn errors(g: &Graph) -> String {
    let VerifyErrors { errors } = verify(g).expect_err("graph should be invalid");
    errors
        .iter()
        .map(|e| {
            let context = e.context.split("  # at ").next().unwrap_or_default();
            format!("{}\n    {context}", e.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A graph with an input `x: f32[3]`.
fn with_input() -> (Graph, NodeId) {
    let mut g = Graph::new("t");
    let x = g.input("x", TensorType::f32([3])).unwrap();
    (g, x)
}

#[test]
fn valid_graph_passes() {
    let mut g = Graph::new("mlp");
    let x = g.input("x", TensorType::f32([4, 6])).unwrap();
    let y = g.input("y", TensorType::i32([4])).unwrap();
    let w = g
        .param("w", [6, 3], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let b = g.param("b", [3], Init::Zeros).unwrap();
    let m = g.state("m", [6, 3], Init::Zeros).unwrap();
    let h = g.matmul(x, w).unwrap();
    let logits = g.add2(h, b).unwrap();
    let ce = g.sparse_softmax_cross_entropy(logits, y).unwrap();
    let loss = g.mean_all(ce).unwrap();
    let half = g.scalar(0.5);
    let m2 = g.mul(m, half).unwrap();
    g.add_output("loss", loss).unwrap();
    g.add_update(m, m2).unwrap();
    assert_eq!(verify(&g), Ok(()));
}

#[test]
fn cycle() {
    let (mut g, x) = with_input();
    let a = g.relu(x).unwrap();
    let b = g.neg(a).unwrap();
    let c = g.exp(b).unwrap();
    g.set_operands(a, &[c]);
    let d = g.abs(c).unwrap();
    g.set_operands(d, &[d]);
    insta::assert_snapshot!(errors(&g), @r"
    cycle: %1, %2, %3 depend on each other
        %1: f32[3] = relu %3
    cycle: %4 is its own operand
        %4: f32[3] = abs %4
    ");
}

#[test]
fn wrong_operand_count() {
    let (mut g, x) = with_input();
    g.add_raw(node(Op::Binary(BinaryOp::Add), TensorType::f32([3])), &[x]);
    g.add_raw(node(Op::Concat { axis: 0 }, TensorType::f32([0])), &[]);
    insta::assert_snapshot!(errors(&g), @r"
    wrong number of operands: add takes 2, found 1
        %1: f32[3] = add %x
    wrong number of operands: concat takes at least 1, found 0
        %2: f32[0] = concat axis=0
    ");
}

#[test]
fn leaf_with_operands() {
    let (mut g, x) = with_input();
    g.add_raw(
        node(
            Op::Const {
                value: Literal::Splat(1.0),
            },
            TensorType::f32([3]),
        ),
        &[x],
    );
    insta::assert_snapshot!(errors(&g), @r"
    const is a leaf and takes no operands, found 1
        %1: f32[3] = const 1.0 %x
    ");
}

#[test]
fn type_mismatch() {
    let (mut g, x) = with_input();
    g.add_raw(node(Op::Unary(UnaryOp::Relu), TensorType::f32([4])), &[x]);
    g.add_raw(node(Op::Unary(UnaryOp::Relu), TensorType::i32([3])), &[x]);
    insta::assert_snapshot!(errors(&g), @r"
    type mismatch: %1 is declared f32[4] but relu computes f32[3]
        %1: f32[4] = relu %x
    type mismatch: %2 is declared i32[3] but relu computes f32[3]
        %2: i32[3] = relu %x
    ");
}

#[test]
fn inference_error() {
    let (mut g, x) = with_input();
    let w = g.param("w", [4, 2], Init::Zeros).unwrap();
    g.add_raw(node(Op::Matmul, TensorType::f32([3, 2])), &[x, w]);
    let y = g.input("y", TensorType::f32([2, 3])).unwrap();
    g.add_raw(node(Op::Matmul, TensorType::f32([2, 2])), &[y, w]);
    insta::assert_snapshot!(errors(&g), @r"
    matmul: operands must be 2-D, found f32[3] and f32[4,2]
        %3: f32[3,2] = matmul %x, %w
    matmul: inner dimensions differ: lhs f32[2,3] and rhs f32[4,2] (expected rhs[0] = 3)
        %4: f32[2,2] = matmul %y, %w
    ");
}

#[test]
fn bad_leaves() {
    let mut g = Graph::new("t");
    g.add_raw(
        leaf("p", Op::Param { init: Init::Zeros }, TensorType::i32([2])),
        &[],
    );
    g.add_raw(
        node(
            Op::Const {
                value: Literal::Dense(vec![1.0, 2.0]),
            },
            TensorType::f32([3]),
        ),
        &[],
    );
    g.add_raw(
        node(
            Op::Const {
                value: Literal::Splat(0.5),
            },
            TensorType::i32([]),
        ),
        &[],
    );
    g.add_raw(
        leaf(
            "s",
            Op::State {
                init: Init::Uniform {
                    low: 1.0,
                    high: 0.0,
                    seed: 3,
                },
            },
            TensorType::f32([2]),
        ),
        &[],
    );
    g.add_raw(
        leaf(
            "q",
            Op::Param {
                init: Init::Normal {
                    mean: 0.0,
                    stddev: -1.0,
                    seed: 3,
                },
            },
            TensorType::f32([2]),
        ),
        &[],
    );
    insta::assert_snapshot!(errors(&g), @r"
    param must be f32, found i32[2]
        %p: i32[2] = param zeros
    param initializer Normal { mean: 0.0, stddev: -1.0, seed: 3 }: expected finite mean and stddev >= 0, found mean 0.0, stddev -1.0
        %q: f32[2] = param normal(mean=0.0, seed=3, stddev=-1.0)
    state initializer Uniform { low: 1.0, high: 0.0, seed: 3 }: expected finite low < high, found low 1.0, high 0.0
        %s: f32[2] = state uniform(high=0.0, low=1.0, seed=3)
    const of type f32[3] needs 3 values, found 2
        %3: f32[3] = const [1.0, 2.0]
    i32 const holds 0.5, which is not an i32 integer
        %4: i32[] = const 0.5
    ");
}

#[test]
fn names() {
    let mut g = Graph::new("t");
    g.add_raw(node(Op::Input, TensorType::f32([2])), &[]);
    g.add_raw(leaf("1x", Op::Input, TensorType::f32([2])), &[]);
    let x = g.input("x", TensorType::f32([2])).unwrap();
    let r = g.relu(x).unwrap();
    g.get_mut(r).unwrap().name = Some("x".to_string());
    insta::assert_snapshot!(errors(&g), @r#"
    input has no name (inputs, params and state are named)
        %0: f32[2] = input
    invalid name "1x": expected a letter or '_' then letters, digits, '_' or '.'
        %1: f32[2] = input
    duplicate name "x": an input node already has it
        %3: f32[2] = relu %x
    "#);
}

#[test]
fn unknown_grad_of() {
    let (mut g, x) = with_input();
    let gone = g.neg(x).unwrap();
    let r = g.relu(x).unwrap();
    g.remove(gone);
    g.get_mut(r).unwrap().grad_of = Some(gone);
    insta::assert_snapshot!(errors(&g), @r"
    grad_of refers to unknown node #1
        %1: f32[3] = relu %x  grad(%<missing 1>)
    ");
}

#[test]
fn outputs() {
    let (mut g, x) = with_input();
    let r = g.relu(x).unwrap();
    let gone = g.neg(x).unwrap();
    g.remove(gone);
    g.push_output("out", r);
    g.push_output("out", x);
    g.push_output("bad name", r);
    g.push_output("lost", gone);
    insta::assert_snapshot!(errors(&g), @r#"
    duplicate output name "out"
        output out = %x
    invalid output name "bad name"
        output bad name = %1
    output "lost" refers to unknown node #2
        output lost = unknown node #2
    "#);
}

#[test]
fn updates() {
    let (mut g, x) = with_input();
    let w = g.param("w", [3], Init::Zeros).unwrap();
    let m = g.state("m", [2], Init::Zeros).unwrap();
    let r = g.relu(w).unwrap();
    let gone = g.neg(x).unwrap();
    g.remove(gone);
    g.push_update(x, r); // target is an input
    g.push_update(m, r); // f32[2] <- f32[3]
    g.push_update(w, r);
    g.push_update(w, w); // second update of w
    g.push_update(m, gone); // unknown value, and m updated twice
    insta::assert_snapshot!(errors(&g), @r"
    update target %x is an input, expected a param or state
        update %x <- %3
    update of %m (f32[2]) with %3 of type f32[3]
        update %m <- %3
    %w is updated more than once
        update %w <- %w
    update value is unknown node #4
        update %m <- unknown node #4
    %m is updated more than once
        update %m <- unknown node #4
    ");
}

#[test]
fn several_violations_are_all_reported() {
    let (mut g, x) = with_input();
    let w = g.param("w", [2], Init::Zeros).unwrap();
    let a = g.add_raw(node(Op::Unary(UnaryOp::Exp), TensorType::f32([3])), &[x, w]);
    g.add_raw(
        node(Op::Cast { to: DType::I32 }, TensorType::i32([2])),
        &[a],
    );
    let dup = g.neg(a).unwrap();
    g.get_mut(dup).unwrap().name = Some("w".to_string());
    g.push_output("loss", NodeId(petgraph::graph::NodeIndex::new(99)));
    g.push_update(w, a);
    g.push_update(x, w);
    let VerifyErrors { errors: list } = verify(&g).unwrap_err();
    // the cast's type is not checked: its operand's type is in doubt (wrong operand count)
    assert_eq!(list.len(), 6, "{list:#?}");
    assert_eq!(list[0].node, Some(a));
    insta::assert_snapshot!(errors(&g), @r#"
    wrong number of operands: exp takes 1, found 2
        %2: f32[3] = exp %x, %w
    duplicate name "w": a param node already has it
        %4: f32[3] = neg %2
    output "loss" refers to unknown node #99
        output loss = unknown node #99
    update of %w (f32[2]) with %2 of type f32[3]
        update %w <- %2
    update target %x is an input, expected a param or state
        update %x <- %w
    update of %x (f32[3]) with %w of type f32[2]
        update %x <- %w
    "#);
}

#[test]
fn operand_indices_with_gaps() {
    // Only a graph read from JSON can have operand indices other than 0..n.
    let (mut g, x) = with_input();
    let y = g.input("y", TensorType::f32([3])).unwrap();
    g.add2(x, y).unwrap();
    let mut json = serde_json::to_value(&g).unwrap();
    let edges = json["graph"]["edges"].as_array_mut().unwrap();
    assert_eq!(edges.len(), 2, "{edges:?}");
    edges[1][2] = serde_json::json!(2);
    let g: Graph = serde_json::from_value(json).unwrap();
    insta::assert_snapshot!(errors(&g), @r"
    add: operand indices are [0, 2], expected 0..2 each once
        %2: f32[3] = add %x, %y
    ");
}
