//! Error cases of `autodiff::grad`: each returns an error (never panics), leaves the graph
//! unchanged, and its message (snapshotted) names the op, the node and the source line.
//! Graphs whose messages are snapshotted are parsed from inline IR text, so the locations in
//! the messages (`FILE.ir:LINE:COL`) do not depend on this file's layout.

use gradlift::autodiff::{self, GradError};
use gradlift::{CmpOp, Graph, Init, NodeId, TensorType};

/// `x: f32[4,3]`, `w: f32[3,2]`, `h = x @ w`.
fn base() -> (Graph, NodeId, NodeId, NodeId) {
    let mut g = Graph::new("t");
    let x = g.input("x", TensorType::f32([4, 3])).unwrap();
    let w = g.param("w", [3, 2], Init::Zeros).unwrap();
    let h = g.matmul(x, w).unwrap();
    (g, x, w, h)
}

/// Runs `grad` and checks the graph did not change on error.
fn grad_err(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> GradError {
    let before = g.len();
    let e = autodiff::grad(g, loss, wrt).expect_err("grad should fail");
    assert_eq!(
        g.len(),
        before,
        "a failing grad must leave the graph unchanged"
    );
    e
}

/// Parses `src` (IR text) as the file `name`: node locations are then `name:LINE:COL`,
/// independent of this file's layout.
fn ir(name: &str, src: &str) -> Graph {
    gradlift::text::parse(src, name).unwrap_or_else(|e| panic!("{e}"))
}

/// The node called `name`.
fn node(g: &Graph, name: &str) -> NodeId {
    g.find(name).unwrap_or_else(|| panic!("no node {name}"))
}

const HEAD: &str = "graph t {
inputs:
  %x: f32[4,3] = input
  %labels: i32[4] = input
params:
  %w: f32[3,2] = param zeros
body:
  %h: f32[4,2] = matmul %x, %w
";

#[test]
fn non_scalar_loss() {
    let mut g = ir("non_scalar.ir", &format!("{HEAD}}}"));
    let (w, h) = (node(&g, "w"), node(&g, "h"));
    let e = grad_err(&mut g, h, &[w]);
    assert!(matches!(e, GradError::NonScalarLoss { .. }));
    insta::assert_snapshot!(e.to_string(), @"non_scalar.ir:8:3: loss %h must be a scalar f32[], found f32[4,2]");
}

#[test]
fn argmax_on_the_path() {
    let src = format!(
        "{HEAD}  %am: i32[4] = argmax %h, axis=1
  %f: f32[4] = cast %am, to=f32
  %loss: f32[] = reduce_sum %f, axes=[0], keepdims=false
}}"
    );
    let mut g = ir("argmax.ir", &src);
    let (loss, w) = (node(&g, "loss"), node(&g, "w"));
    let e = grad_err(&mut g, loss, &[w]);
    // The first non-differentiable op met walking back from the loss is the cast.
    assert!(matches!(e, GradError::NotDifferentiable { op: "cast", .. }));
    insta::assert_snapshot!(e.to_string(), @"argmax.ir:10:3: cast is not differentiable (it converts to or from integers): node %f (cast) lies on the path from %w to the loss %loss");
}

#[test]
fn comparison_on_the_path() {
    let src = format!(
        "{HEAD}  %zero: f32[] = const 0.0
  %m: f32[4,2] = gt %h, %zero
  %p: f32[4,2] = mul %m, %h
  %loss: f32[] = reduce_sum %p, axes=[0,1], keepdims=false
}}"
    );
    let mut g = ir("compare.ir", &src);
    let (loss, w) = (node(&g, "loss"), node(&g, "w"));
    let e = grad_err(&mut g, loss, &[w]);
    assert!(matches!(e, GradError::NotDifferentiable { op: "gt", .. }));
    insta::assert_snapshot!(e.to_string(), @"compare.ir:10:3: gt is not differentiable (a comparison is piecewise constant): node %m (gt) lies on the path from %w to the loss %loss");
}

#[test]
fn one_hot_of_argmax_on_the_path() {
    let src = format!(
        "{HEAD}  %am: i32[4] = argmax %h, axis=1
  %oh: f32[4,5] = one_hot %am, depth=5
  %loss: f32[] = reduce_sum %oh, axes=[0,1], keepdims=false
}}"
    );
    let mut g = ir("one_hot.ir", &src);
    let (loss, w, x) = (node(&g, "loss"), node(&g, "w"), node(&g, "x"));
    let e = grad_err(&mut g, loss, &[w, x]);
    assert!(matches!(
        e,
        GradError::NotDifferentiable { op: "one_hot", .. }
    ));
    insta::assert_snapshot!(e.to_string(), @"one_hot.ir:10:3: one_hot is not differentiable (its operand is an integer index): node %oh (one_hot) lies on the path from %w, %x to the loss %loss");
}

#[test]
fn wrt_not_a_param_or_input() {
    let src = format!(
        "{HEAD}  %loss: f32[] = reduce_sum %h, axes=[0,1], keepdims=false
}}"
    );
    let mut g = ir("wrt.ir", &src);
    let (loss, h) = (node(&g, "loss"), node(&g, "h"));
    let e = grad_err(&mut g, loss, &[h]);
    assert!(matches!(e, GradError::NotParamOrInput { op: "matmul", .. }));
    insta::assert_snapshot!(e.to_string(), @"wrt.ir:8:3: cannot differentiate with respect to %h: it is a matmul, expected a param or an input");

    let s = g.state("s", [4, 2], Init::Zeros).unwrap();
    let hs = g.add2(h, s).unwrap();
    let loss2 = g.sum(hs, &[0, 1], false).unwrap();
    let e = grad_err(&mut g, loss2, &[s]);
    assert!(matches!(e, GradError::NotParamOrInput { op: "state", .. }));
}

#[test]
fn integer_wrt() {
    let src = format!(
        "{HEAD}  %ce: f32[4] = sparse_softmax_cross_entropy %h, %labels
  %loss: f32[] = reduce_mean %ce, axes=[0], keepdims=false
}}"
    );
    let mut g = ir("labels.ir", &src);
    let (loss, labels) = (node(&g, "loss"), node(&g, "labels"));
    let e = grad_err(&mut g, loss, &[labels]);
    assert!(matches!(e, GradError::IntegerWrt { .. }));
    insta::assert_snapshot!(e.to_string(), @"labels.ir:4:3: cannot differentiate with respect to %labels: it is i32[4], expected an f32 tensor");
}

#[test]
fn unknown_nodes() {
    let (mut g, _, w, h) = base();
    let loss = g.sum(h, &[0, 1], false).unwrap();
    // A removed node's id is no longer in the graph (stable ids are not reused here).
    let extra = g.param("extra", [1], Init::Zeros).unwrap();
    g.remove(extra);
    let e = grad_err(&mut g, loss, &[w, extra]);
    assert!(matches!(e, GradError::Unknown(_)));
    let e = grad_err(&mut g, extra, &[w]);
    assert!(matches!(e, GradError::Unknown(_)));
}

#[test]
fn independent_wrt_gets_an_explicit_zero() {
    let (mut g, x, w, h) = base();
    let unused = g.param("unused", [2, 5], Init::Ones).unwrap();
    let loss = g.sum(h, &[0, 1], false).unwrap();
    let r = autodiff::gradients(&mut g, loss, &[w, unused, x]).unwrap();
    assert_eq!(r.independent, vec![unused]);
    let z = &g[r.grads[1]];
    assert_eq!(z.ty, TensorType::f32([2, 5]));
    assert_eq!(z.grad_of, Some(unused));
    assert_eq!(
        z.op,
        gradlift::Op::Const {
            value: gradlift::Literal::Splat(0.0)
        }
    );
    // Gradients through a mask or sign only: also independent, not an error.
    let zero = g.scalar(0.0);
    let m = g.compare(CmpOp::Gt, h, zero).unwrap();
    let one = g.scalar(1.0);
    let sel = g.select(m, one, zero).unwrap();
    let sg = g.sign(h).unwrap();
    let both = g.add2(sel, sg).unwrap();
    let loss2 = g.sum(both, &[0, 1], false).unwrap();
    let r = autodiff::gradients(&mut g, loss2, &[w]).unwrap();
    assert_eq!(r.independent, vec![w]);
}

#[test]
fn gradient_nodes_record_their_forward_node_and_location() {
    let (mut g, x, w, h) = base();
    let t = g.tanh(h).unwrap();
    let loss = g.mean_all(t).unwrap();
    let forward: Vec<NodeId> = g.node_ids();
    let grads = autodiff::grad(&mut g, loss, &[w, x]).unwrap();
    assert_eq!(grads.len(), 2);
    assert_eq!(g[grads[0]].ty, g[w].ty);
    assert_eq!(g[grads[1]].ty, g[x].ty);
    let new: Vec<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|n| !forward.contains(n))
        .collect();
    assert!(!new.is_empty());
    for n in new {
        let of = g[n].grad_of.expect("every new node is a gradient node");
        assert!(forward.contains(&of), "grad_of points at a forward node");
        assert_eq!(
            g[n].loc, g[of].loc,
            "a gradient node has its forward node's location"
        );
    }
    for n in forward {
        assert_eq!(g[n].grad_of, None);
    }
}

#[test]
fn grad_all_params_by_name() {
    let (mut g, _, w, h) = base();
    let b = g.param("b", [2], Init::Zeros).unwrap();
    let hb = g.add2(h, b).unwrap();
    let loss = g.mean_all(hb).unwrap();
    g.add_output("loss", loss).unwrap();
    let mut g2 = g.clone();

    // Default: every param, in creation order, exposed as outputs `grad_<name>`.
    let named = autodiff::grad_all_params(&mut g, "loss", None).unwrap();
    let names: Vec<&str> = named.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["w", "b"]);
    assert_eq!(named[0].wrt, w);
    assert_eq!(g.output("grad_w"), Some(named[0].grad));
    assert_eq!(g.output("grad_b"), Some(named[1].grad));
    assert!(!named[0].independent);

    // Explicit wrt list, including an input.
    let named = autodiff::grad_all_params(&mut g2, "loss", Some(&["x"])).unwrap();
    assert_eq!(named.len(), 1);
    assert_eq!(g2[named[0].grad].ty, TensorType::f32([4, 3]));

    // Unknown names and a taken output name are errors that say so.
    let e = autodiff::grad_all_params(&mut g2, "nope", None).unwrap_err();
    insta::assert_snapshot!("unknown_loss_name", e.to_string());
    let e = autodiff::grad_all_params(&mut g2, "loss", Some(&["w", "zz"])).unwrap_err();
    insta::assert_snapshot!("unknown_wrt_name", e.to_string());
    let e = autodiff::grad_all_params(&mut g2, "loss", Some(&["x"])).unwrap_err();
    insta::assert_snapshot!("gradient_output_name_taken", e.to_string());
}

#[test]
fn loss_that_is_the_wrt_node_and_repeated_wrt() {
    let mut g = Graph::new("t");
    let p = g.param("p", [], Init::Ones).unwrap();
    let d = autodiff::grad(&mut g, p, &[p, p]).unwrap();
    assert_eq!(
        d[0], d[1],
        "a repeated wrt node gets the same gradient node"
    );
    assert_eq!(
        g[d[0]].op,
        gradlift::Op::Const {
            value: gradlift::Literal::Splat(1.0)
        }
    );
    assert_eq!(g[d[0]].grad_of, Some(p));
}

#[test]
fn cycle_is_an_error() {
    let (mut g, x, w, h) = base();
    let t = g.tanh(h).unwrap();
    let loss = g.mean_all(t).unwrap();
    // Corrupt the graph: h now depends on t, which depends on h.
    g.set_operands(h, &[x, w]);
    let u = g.add2(t, t).unwrap();
    g.set_operands(t, &[u]);
    let e = grad_err(&mut g, loss, &[w]);
    assert!(matches!(e, GradError::Cycle(_)), "{e}");
    assert!(
        e.to_string().starts_with("the graph has a cycle through %"),
        "{e}"
    );
}
