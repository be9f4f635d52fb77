//! Declarative rule tests in the style of egg's `tests/math.rs`: a body in IR text => the body
//! expected after `simplify` and `dce`, compared as canonical text. Each case names the rule it
//! exercises; near misses expect the body unchanged.
//!
//! Every case has the inputs below and one output `y`; `expect_out` is the node `y` ends up
//! as (`%y` when the root was rewritten in place or kept, `%x` when it collapsed to `x`).

use gradlift::passes::{dce, simplify};
use gradlift::text;

const INPUTS: &str = "
  %x: f32[2,3] = input
  %r: f32[3] = input
  %cube: f32[2,3,4] = input
  %logits: f32[4,3] = input
  %probs: f32[4,3] = input
  %labels: i32[4] = input
";

fn graph(body: &str, out: &str) -> String {
    let body = if body.trim().is_empty() {
        String::new()
    } else {
        format!("body:\n{body}\n")
    };
    format!("graph t {{\ninputs:\n{INPUTS}\n{body}outputs:\n  y = {out}\n}}\n")
}

/// Parses `body` (with output `y = %y`), runs simplify then dce, and compares with
/// `expect_body` / `expect_out`.
fn check(rule: &str, body: &str, expect_body: &str, expect_out: &str) {
    let mut g = text::parse(&graph(body, "%y"), rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    simplify::run(&mut g);
    dce::run(&mut g);
    let want = text::parse(&graph(expect_body, expect_out), rule)
        .unwrap_or_else(|e| panic!("{rule} (expected): {e}"));
    assert_eq!(
        text::print(&g),
        text::print(&want),
        "rule {rule}: got the left graph, expected the right one"
    );
}

/// A case whose body must come out unchanged.
fn unchanged(rule: &str, body: &str) {
    check(rule, body, body, "%y");
}

#[test]
fn algebraic() {
    let one = "  %one: f32[] = const 1.0\n";
    let zero = "  %zero: f32[] = const 0.0\n";
    check(
        "mul_by_one",
        &format!("{one}  %y: f32[2,3] = mul %x, %one"),
        "",
        "%x",
    );
    check(
        "mul_by_one (1*x)",
        &format!("{one}  %y: f32[2,3] = mul %one, %x"),
        "",
        "%x",
    );
    check(
        "add_zero",
        &format!("{zero}  %y: f32[2,3] = add %x, %zero"),
        "",
        "%x",
    );
    check(
        "add_zero (-0+x)",
        "  %z: f32[3] = const -0.0\n  %y: f32[2,3] = add %z, %x",
        "",
        "%x",
    );
    check(
        "sub_zero",
        &format!("{zero}  %y: f32[2,3] = sub %x, %zero"),
        "",
        "%x",
    );
    check(
        "div_by_one",
        "  %ones: f32[3] = const [1.0, 1.0, 1.0]\n  %y: f32[2,3] = div %x, %ones",
        "",
        "%x",
    );
    check(
        "neg_neg",
        "  %a: f32[2,3] = neg %x\n  %y: f32[2,3] = neg %a",
        "",
        "%x",
    );
    check(
        "finite_const_mul_zero",
        &format!("{zero}  %c: f32[2] = const [3.0, -2.0]\n  %y: f32[2] = mul %c, %zero"),
        "  %y: f32[2] = const 0.0",
        "%y",
    );
    check(
        "pow_one",
        &format!("{one}  %y: f32[2,3] = pow %x, %one"),
        "",
        "%x",
    );
    check(
        "pow_two",
        "  %two: f32[3] = const [2.0, 2.0, 2.0]\n  %y: f32[2,3] = pow %x, %two",
        "  %y: f32[2,3] = mul %x, %x",
        "%y",
    );
}

#[test]
fn algebraic_near_misses() {
    unchanged(
        "x*0 keeps NaN and inf",
        "  %zero: f32[] = const 0.0\n  %y: f32[2,3] = mul %x, %zero",
    );
    unchanged(
        "x*1 that broadcasts",
        "  %ones: f32[2,3] = const 1.0\n  %y: f32[2,3] = mul %r, %ones",
    );
    unchanged(
        "0-x",
        "  %zero: f32[] = const 0.0\n  %y: f32[2,3] = sub %zero, %x",
    );
    unchanged(
        "1/x",
        "  %one: f32[] = const 1.0\n  %y: f32[2,3] = div %one, %x",
    );
    unchanged(
        "x*2",
        "  %two: f32[] = const 2.0\n  %y: f32[2,3] = mul %x, %two",
    );
    unchanged(
        "pow(x, 3) stays a pow",
        "  %three: f32[] = const 3.0\n  %y: f32[2,3] = pow %x, %three",
    );
    unchanged(
        "pow(2, x) is not a square",
        "  %two: f32[] = const 2.0\n  %y: f32[2,3] = pow %two, %x",
    );
    unchanged(
        "pow(r, 2) that broadcasts",
        "  %twos: f32[2,3] = const 2.0\n  %y: f32[2,3] = pow %r, %twos",
    );
    unchanged(
        "x+c with c not all zero",
        "  %c: f32[3] = const [0.0, 1.0, 0.0]\n  %y: f32[2,3] = add %x, %c",
    );
}

#[test]
fn reshape() {
    check(
        "transpose_transpose (identity)",
        "  %a: f32[3,4,2] = transpose %cube, perm=[1,2,0]\n  %y: f32[2,3,4] = transpose %a, perm=[2,0,1]",
        "",
        "%cube",
    );
    check(
        "transpose_transpose (composed)",
        "  %a: f32[3,2,4] = transpose %cube, perm=[1,0,2]\n  %y: f32[3,4,2] = transpose %a, perm=[0,2,1]",
        "  %y: f32[3,4,2] = transpose %cube, perm=[1,2,0]",
        "%y",
    );
    check(
        "transpose_identity",
        "  %y: f32[2,3,4] = transpose %cube, perm=[0,1,2]",
        "",
        "%cube",
    );
    check(
        "reshape_reshape",
        "  %a: f32[6,4] = reshape %cube, shape=[6,4]\n  %y: f32[24] = reshape %a, shape=[24]",
        "  %y: f32[24] = reshape %cube, shape=[24]",
        "%y",
    );
    check(
        "reshape_reshape (back to the start)",
        "  %a: f32[24] = reshape %cube, shape=[24]\n  %y: f32[2,3,4] = reshape %a, shape=[2,3,4]",
        "",
        "%cube",
    );
    check(
        "reshape_same_shape",
        "  %y: f32[2,3] = reshape %x, shape=[2,3]",
        "",
        "%x",
    );
    check(
        "broadcast_same_shape",
        "  %y: f32[2,3] = broadcast %x, shape=[2,3]",
        "",
        "%x",
    );
    check(
        "broadcast_broadcast",
        "  %a: f32[2,3] = broadcast %r, shape=[2,3]\n  %y: f32[5,2,3] = broadcast %a, shape=[5,2,3]",
        "  %y: f32[5,2,3] = broadcast %r, shape=[5,2,3]",
        "%y",
    );
}

#[test]
fn reshape_near_misses() {
    unchanged(
        "transpose then reshape",
        "  %a: f32[3,2] = transpose %x, perm=[1,0]\n  %y: f32[2,3] = reshape %a, shape=[2,3]",
    );
    unchanged(
        "a real transpose",
        "  %y: f32[3,2] = transpose %x, perm=[1,0]",
    );
    unchanged(
        "a real broadcast",
        "  %y: f32[2,3] = broadcast %r, shape=[2,3]",
    );
}

const SPARSE_CE: &str = "  %y: f32[4] = sparse_softmax_cross_entropy %logits, %labels";
const DENSE_CE: &str = "  %y: f32[4] = softmax_cross_entropy %logits, %probs";

#[test]
fn softmax() {
    check(
        "log_softmax",
        "  %s: f32[4,3] = softmax %logits, axis=0\n  %y: f32[4,3] = log %s",
        "  %y: f32[4,3] = log_softmax %logits, axis=0",
        "%y",
    );
    let chain = |a: &str, b: &str, ls: &str| {
        format!(
            "{ls}  %m: f32[4,3] = mul {a}, {b}\n  %s: f32[4] = reduce_sum %m, axes=[1], keepdims=false\n  %y: f32[4] = neg %s"
        )
    };
    let ls = "  %ls: f32[4,3] = log_softmax %logits, axis=1\n";
    let log_sm = "  %sm: f32[4,3] = softmax %logits, axis=1\n  %ls: f32[4,3] = log %sm\n";
    let oh = "  %oh: f32[4,3] = one_hot %labels, depth=3\n";
    for ls_form in [ls, log_sm] {
        check(
            "sparse_softmax_cross_entropy",
            &format!("{oh}{}", chain("%oh", "%ls", ls_form)),
            SPARSE_CE,
            "%y",
        );
        check(
            "sparse_softmax_cross_entropy (swapped)",
            &format!("{oh}{}", chain("%ls", "%oh", ls_form)),
            SPARSE_CE,
            "%y",
        );
        check(
            "softmax_cross_entropy",
            &chain("%probs", "%ls", ls_form),
            DENSE_CE,
            "%y",
        );
    }
}

#[test]
fn softmax_near_misses() {
    let ls = "  %ls: f32[4,3] = log_softmax %logits, axis=1\n";
    unchanged(
        "sum over axis 0",
        &format!("{ls}  %m: f32[4,3] = mul %probs, %ls\n  %s: f32[3] = reduce_sum %m, axes=[0], keepdims=false\n  %y: f32[3] = neg %s"),
    );
    unchanged(
        "keepdims",
        &format!("{ls}  %m: f32[4,3] = mul %probs, %ls\n  %s: f32[4,1] = reduce_sum %m, axes=[1], keepdims=true\n  %y: f32[4,1] = neg %s"),
    );
    unchanged(
        "log_softmax over axis 0",
        "  %ls: f32[4,3] = log_softmax %logits, axis=0\n  %m: f32[4,3] = mul %probs, %ls\n  %s: f32[4] = reduce_sum %m, axes=[1], keepdims=false\n  %y: f32[4] = neg %s",
    );
    unchanged(
        "labels broadcast from one_hot of depth 1",
        &format!("{ls}  %oh: f32[4,1] = one_hot %labels, depth=1\n  %m: f32[4,3] = mul %oh, %ls\n  %s: f32[4] = reduce_sum %m, axes=[1], keepdims=false\n  %y: f32[4] = neg %s"),
    );
    unchanged(
        "no neg",
        &format!("{ls}  %m: f32[4,3] = mul %probs, %ls\n  %y: f32[4] = reduce_sum %m, axes=[1], keepdims=false"),
    );
}

#[test]
fn softmax_chain_with_a_live_shared_mul_is_kept() {
    // The mul is also an output: fusing would compute it and the cross-entropy.
    let body = "  %ls: f32[4,3] = log_softmax %logits, axis=1\n  %m: f32[4,3] = mul %probs, %ls\n  %s: f32[4] = reduce_sum %m, axes=[1], keepdims=false\n  %y: f32[4] = neg %s";
    let src = graph(body, "%y").replace("  y = %y\n", "  y = %y\n  m = %m\n");
    let mut g = text::parse(&src, "shared").unwrap();
    let before = text::print(&g);
    simplify::run(&mut g);
    assert_eq!(text::print(&g), before);
}

/// A node that is the gradient of a value simplify replaces follows the replacement, also
/// through a chain of replacements made in one round (`neg(neg(neg(neg(x))))` becomes `x`;
/// the links move once per round rather than once per rewrite).
#[test]
fn gradient_links_follow_replacements() {
    use gradlift::{Graph, TensorType};
    let mut g = Graph::new("links");
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let mut h = x;
    for _ in 0..4 {
        h = g.neg(h).unwrap();
    }
    let y = g.exp(h).unwrap();
    g.add_output("y", y).unwrap();
    // a node standing for a gradient of the chain's end
    let d = g.exp(x).unwrap();
    g.add_output("d", d).unwrap();
    g.get_mut(d).unwrap().grad_of = Some(h);
    simplify::run(&mut g);
    dce::run(&mut g);
    let y = g.output("y").unwrap();
    assert_eq!(g.operands(y), vec![x], "the chain is gone");
    let d = g.output("d").unwrap();
    assert_eq!(g[d].grad_of, Some(x));
}
