//! Error paths of the reference interpreter: every wrong feed and malformed graph gives an
//! [`EvalError`] that says what is wrong (names, expected vs found), never a panic.

use gradlift::interp::{eval, eval_named, Array, EvalError};
use gradlift::verify::Check;
use gradlift::{Graph, Init, Node, Op, TensorType, UnaryOp};
use std::collections::HashMap;

/// `y = relu(x @ w)`, x: f32[2,3] input, w: f32[3,4] param.
fn small() -> Graph {
    let mut g = Graph::new("small");
    let x = g.input("x", TensorType::f32([2, 3])).unwrap();
    let w = g.param("w", [3, 4], Init::Ones).unwrap();
    let h = g.matmul(x, w).unwrap();
    let y = g.relu(h).unwrap();
    g.add_output("y", y).unwrap();
    g
}

#[test]
fn missing_input_is_named() {
    let g = small();
    let err = eval::<f64>(&g, &HashMap::new()).unwrap_err();
    assert_eq!(
        err,
        EvalError::MissingInput {
            name: "x".into(),
            ty: TensorType::f32([2, 3])
        }
    );
    assert_eq!(
        err.to_string(),
        "missing input %x: expected a value of type f32[2,3]"
    );
}

#[test]
fn wrong_input_shape_says_expected_and_found() {
    let g = small();
    let err = eval_named(&g, &[("x", Array::<f32>::zeros([3, 2]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "wrong shape for %x: expected [2,3], found [3,2]"
    );
    // a param fed with the wrong shape too
    let err = eval_named(
        &g,
        &[
            ("x", Array::<f32>::zeros([2, 3])),
            ("w", Array::<f32>::zeros([4, 3])),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(err, EvalError::WrongShape { ref name, .. } if name == "w"),
        "{err}"
    );
}

#[test]
fn wrong_data_length_is_reported() {
    let err = Array::<f64>::new([2, 3], vec![0.0; 5]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "array: shape [2,3] needs 6 elements, found 5"
    );
    assert!(Array::<f32>::from_f64([4], &[1.0; 3]).is_err());
    // An array built field by field can still be inconsistent: eval checks it.
    let g = small();
    let bad = Array::<f64> {
        shape: [2, 3].into(),
        data: vec![0.0; 7],
    };
    let err = eval_named(&g, &[("x", bad)]).unwrap_err();
    assert_eq!(err.to_string(), "%x: shape [2,3] needs 6 elements, found 7");
}

#[test]
fn feeding_a_computed_node_is_refused() {
    let g = small();
    let y = g.output("y").unwrap();
    let mut feeds = HashMap::new();
    feeds.insert(g.find("x").unwrap(), Array::<f64>::zeros([2, 3]));
    feeds.insert(y, Array::<f64>::zeros([2, 4]));
    let err = eval(&g, &feeds).unwrap_err();
    assert!(
        matches!(err, EvalError::NotFeedable { op: "relu", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("only input, param and state"),
        "{err}"
    );
}

#[test]
fn unknown_name_and_unknown_node() {
    let g = small();
    let err = eval_named(&g, &[("nope", Array::<f64>::zeros([1]))]).unwrap_err();
    assert_eq!(err, EvalError::UnknownName("nope".into()));
    let mut other = small();
    let extra = other.input("z", TensorType::f32([1])).unwrap();
    let mut feeds = HashMap::new();
    feeds.insert(extra, Array::<f64>::zeros([1]));
    assert!(matches!(
        eval(&g, &feeds).unwrap_err(),
        EvalError::UnknownNode(_)
    ));
}

#[test]
fn cyclic_graph_is_an_error() {
    let mut g = Graph::new("cycle");
    let node = |op: Op| Node {
        op,
        ty: TensorType::f32([2]),
        name: None,
        loc: None,
        grad_of: None,
    };
    let a = g.add_raw(node(Op::Unary(UnaryOp::Neg)), &[]);
    let b = g.add_raw(node(Op::Unary(UnaryOp::Exp)), &[a]);
    g.set_operands(a, &[b]);
    let err = eval::<f64>(&g, &HashMap::new()).unwrap_err();
    match err {
        EvalError::Invalid(v) => {
            assert_eq!(v.errors.len(), 1, "{v}");
            assert_eq!(v.errors[0].check, Check::Cycle, "{v}");
            assert_eq!(v.errors[0].node, Some(a), "{v}");
            assert!(v.errors[0].message.contains("depend on each other"), "{v}");
        }
        e => panic!("expected a cycle error, found {e}"),
    }
}

#[test]
fn malformed_node_is_an_error_not_a_panic() {
    // A matmul added without checks, with operands whose inner dimensions differ.
    let mut g = Graph::new("bad");
    let a = g.input("a", TensorType::f32([2, 3])).unwrap();
    let b = g.input("b", TensorType::f32([2, 3])).unwrap();
    let m = g.add_raw(
        Node {
            op: Op::Matmul,
            ty: TensorType::f32([2, 3]),
            name: Some("m".into()),
            loc: None,
            grad_of: None,
        },
        &[a, b],
    );
    let feeds = [
        ("a", Array::<f64>::zeros([2, 3])),
        ("b", Array::<f64>::zeros([2, 3])),
    ];
    let err = eval_named(&g, &feeds).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\nmatmul: inner dimensions differ")
            && msg.contains("\n    %m: f32[2,3] = matmul %a, %b"),
        "{msg}"
    );

    // Operands that fit, but a wrong declared type.
    let c = g.input("c", TensorType::f32([3, 2])).unwrap();
    g.set_operands(m, &[a, c]);
    let err = eval_named(&g, &feeds).unwrap_err();
    let EvalError::Invalid(v) = &err else {
        panic!("expected a verifier error, found {err}");
    };
    assert_eq!(v.errors[0].check, Check::DeclaredType, "{err}");
    assert!(
        v.errors[0]
            .message
            .contains("%m is declared f32[2,3] but matmul computes f32[2,2]"),
        "{err}"
    );

    // Wrong operand count.
    g.set_operands(m, &[a]);
    let msg = eval_named(&g, &feeds).unwrap_err().to_string();
    assert!(msg.contains("matmul takes 2, found 1"), "{msg}");

    // A dense constant with the wrong number of values.
    let mut g = Graph::new("c");
    g.add_raw(
        Node {
            op: Op::Const {
                value: gradlift::Literal::Dense(vec![1.0, 2.0]),
            },
            ty: TensorType::f32([3]),
            name: None,
            loc: None,
            grad_of: None,
        },
        &[],
    );
    let msg = eval::<f32>(&g, &HashMap::new()).unwrap_err().to_string();
    assert!(
        msg.ends_with(
            "\nconst of type f32[3] needs 3 values, found 2\n    %0: f32[3] = const [1.0, 2.0]\n"
        ),
        "{msg}"
    );
}

#[test]
fn i32_feeds_must_be_integers() {
    let mut g = Graph::new("labels");
    let y = g.input("labels", TensorType::i32([3])).unwrap();
    let h = g.one_hot(y, 4).unwrap();
    g.add_output("h", h).unwrap();
    let bad = Array::<f32>::new([3], vec![1.0, 2.5, 0.0]).unwrap();
    let err = eval_named(&g, &[("labels", bad)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "%labels is i32 but element 1 of the value fed is 2.5"
    );
    let nan = Array::<f64>::new([3], vec![1.0, 0.0, f64::NAN]).unwrap();
    assert!(matches!(
        eval_named(&g, &[("labels", nan)]).unwrap_err(),
        EvalError::NotInteger { index: 2, .. }
    ));
    let big = Array::<f64>::new([3], vec![1.0, 3e9, 0.0]).unwrap();
    assert!(eval_named(&g, &[("labels", big)]).is_err());
    let ok = Array::<f64>::new([3], vec![-1.0, 3.0, 0.0]).unwrap();
    let v = eval_named(&g, &[("labels", ok)]).unwrap();
    assert_eq!(v.output(&g, "h").unwrap().data.iter().sum::<f64>(), 2.0);
}
