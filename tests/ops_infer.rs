//! Shape and dtype inference of every op, through the builder API: the inferred type of each
//! op on a valid example (the set of ops covered is checked against `all_op_names`), and the
//! error cases, whose message must name the op and the shapes involved and whose location
//! must point at the builder call in this file.

use gradlift::op::all_op_names;
use gradlift::{
    BinaryOp, BuildError, CmpOp, DType, Graph, Init, Literal, NodeId, Op, Padding, ReduceOp, Shape,
    SourceLoc, TensorType, UnaryOp,
};
use std::collections::BTreeSet;

fn f32t(s: &[usize]) -> TensorType {
    TensorType::f32(s.to_vec())
}

fn i32t(s: &[usize]) -> TensorType {
    TensorType::i32(s.to_vec())
}

/// Adds one input per type to `g`.
fn inputs(g: &mut Graph, types: &[TensorType]) -> Vec<NodeId> {
    let base = g.len();
    types
        .iter()
        .enumerate()
        .map(|(k, t)| g.input(&format!("in{}", base + k), t.clone()).unwrap())
        .collect()
}

/// The type `op` infers for operands of the given types, built through `Graph::add`.
fn infer(op: Op, types: &[TensorType]) -> Result<TensorType, BuildError> {
    let mut g = Graph::new("t");
    let ids = inputs(&mut g, types);
    g.add(op, &ids).map(|id| g[id].ty.clone())
}

fn conv(stride: [usize; 2], padding: Padding) -> Op {
    Op::Conv2d { stride, padding }
}

/// A valid example of every non-leaf op with its expected type.
fn valid_cases() -> Vec<(Op, Vec<TensorType>, TensorType)> {
    let mut cases = Vec::new();
    for u in UnaryOp::ALL {
        cases.push((Op::Unary(u), vec![f32t(&[2, 3])], f32t(&[2, 3])));
    }
    for b in BinaryOp::ALL {
        cases.push((
            Op::Binary(b),
            vec![f32t(&[2, 1, 3]), f32t(&[4, 1])],
            f32t(&[2, 4, 3]),
        ));
    }
    for c in CmpOp::ALL {
        cases.push((
            Op::Compare(c),
            vec![i32t(&[3]), i32t(&[2, 1])],
            f32t(&[2, 3]),
        ));
    }
    let red = |kind, axes: &[usize], keepdims| Op::Reduce {
        kind,
        axes: axes.to_vec(),
        keepdims,
    };
    cases.extend([
        (
            Op::Select,
            vec![f32t(&[2, 1]), i32t(&[3]), i32t(&[])],
            i32t(&[2, 3]),
        ),
        (Op::Cast { to: DType::I32 }, vec![f32t(&[2])], i32t(&[2])),
        (Op::Cast { to: DType::F32 }, vec![i32t(&[2])], f32t(&[2])),
        (
            red(ReduceOp::Sum, &[0, 2], false),
            vec![f32t(&[2, 3, 4])],
            f32t(&[3]),
        ),
        (
            red(ReduceOp::Mean, &[1], true),
            vec![f32t(&[2, 3, 4])],
            f32t(&[2, 1, 4]),
        ),
        (
            red(ReduceOp::Max, &[0, 1], false),
            vec![i32t(&[2, 3])],
            i32t(&[]),
        ),
        (
            Op::Argmax { axis: 1 },
            vec![f32t(&[2, 3, 4])],
            i32t(&[2, 4]),
        ),
        (
            Op::Reshape {
                shape: Shape(vec![4, 6]),
            },
            vec![i32t(&[2, 3, 4])],
            i32t(&[4, 6]),
        ),
        (
            Op::Broadcast {
                shape: Shape(vec![5, 2, 3]),
            },
            vec![f32t(&[2, 1])],
            f32t(&[5, 2, 3]),
        ),
        (
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            vec![f32t(&[2, 3, 4])],
            f32t(&[4, 2, 3]),
        ),
        (
            Op::Matmul,
            vec![f32t(&[2, 3]), f32t(&[3, 5])],
            f32t(&[2, 5]),
        ),
        (
            conv([2, 2], Padding::Same),
            vec![f32t(&[8, 28, 27, 3]), f32t(&[3, 3, 3, 16])],
            f32t(&[8, 14, 14, 16]),
        ),
        (
            conv([1, 2], Padding::Valid),
            vec![f32t(&[1, 5, 6, 2]), f32t(&[3, 2, 2, 4])],
            f32t(&[1, 3, 3, 4]),
        ),
        (
            Op::Conv2dInputGrad {
                stride: [1, 2],
                padding: Padding::Valid,
                shape: Shape(vec![1, 5, 6, 2]),
            },
            vec![f32t(&[1, 3, 3, 4]), f32t(&[3, 2, 2, 4])],
            f32t(&[1, 5, 6, 2]),
        ),
        (
            Op::Conv2dFilterGrad {
                stride: [1, 2],
                padding: Padding::Valid,
                kernel: [3, 2],
            },
            vec![f32t(&[1, 5, 6, 2]), f32t(&[1, 3, 3, 4])],
            f32t(&[3, 2, 2, 4]),
        ),
        (
            Op::MaxPool2d {
                window: [2, 2],
                stride: [2, 2],
            },
            vec![f32t(&[4, 27, 26, 8])],
            f32t(&[4, 13, 13, 8]),
        ),
        (
            Op::MaxPool2dGrad {
                window: [3, 3],
                stride: [1, 1],
            },
            vec![f32t(&[1, 5, 5, 2]), f32t(&[1, 3, 3, 2])],
            f32t(&[1, 5, 5, 2]),
        ),
        (Op::Softmax { axis: 0 }, vec![f32t(&[2, 3])], f32t(&[2, 3])),
        (
            Op::LogSoftmax { axis: 1 },
            vec![f32t(&[2, 3])],
            f32t(&[2, 3]),
        ),
        (
            Op::SoftmaxCrossEntropy,
            vec![f32t(&[4, 10]), f32t(&[4, 10])],
            f32t(&[4]),
        ),
        (
            Op::SparseSoftmaxCrossEntropy,
            vec![f32t(&[4, 10]), i32t(&[4])],
            f32t(&[4]),
        ),
        (
            Op::OneHot { depth: 10 },
            vec![i32t(&[2, 3])],
            f32t(&[2, 3, 10]),
        ),
        (
            Op::Slice {
                begin: vec![1, 0],
                end: vec![3, 0],
            },
            vec![f32t(&[4, 5])],
            f32t(&[2, 0]),
        ),
        (
            Op::Concat { axis: 1 },
            vec![f32t(&[2, 1, 3]), f32t(&[2, 4, 3]), f32t(&[2, 0, 3])],
            f32t(&[2, 5, 3]),
        ),
        (
            Op::Gather { axis: 0 },
            vec![f32t(&[10, 4]), i32t(&[2, 3])],
            f32t(&[2, 3, 4]),
        ),
        (
            Op::Gather { axis: 1 },
            vec![f32t(&[2, 5, 3]), i32t(&[])],
            f32t(&[2, 3]),
        ),
        (
            Op::ScatterAdd {
                axis: 1,
                shape: Shape(vec![2, 5, 3]),
            },
            vec![f32t(&[2, 4, 7, 3]), i32t(&[4, 7])],
            f32t(&[2, 5, 3]),
        ),
        (
            Op::AllReduce { mean: true },
            vec![f32t(&[2, 5])],
            f32t(&[2, 5]),
        ),
    ]);
    cases
}

#[test]
fn every_op_infers_its_type() {
    let mut covered = BTreeSet::new();
    for (op, operands, expected) in valid_cases() {
        let found = infer(op.clone(), &operands)
            .unwrap_or_else(|e| panic!("{} on {operands:?}: {e}", op.name()));
        assert_eq!(found, expected, "{} on {operands:?}", op.name());
        covered.insert(op.name());
    }
    // Leaves take their declared type.
    let mut g = Graph::new("leaves");
    let x = g.input("x", i32t(&[3])).unwrap();
    let p = g.param("p", [2, 2], Init::Zeros).unwrap();
    let s = g.state("s", [], Init::Ones).unwrap();
    let c = g
        .constant(f32t(&[2]), Literal::Dense(vec![1.0, 2.0]))
        .unwrap();
    assert_eq!(g[x].ty, i32t(&[3]));
    assert_eq!(g[p].ty, f32t(&[2, 2]));
    assert_eq!(g[s].ty, f32t(&[]));
    assert_eq!(g[c].ty, f32t(&[2]));
    for id in [x, p, s, c] {
        covered.insert(g[id].op.name());
    }
    let all: BTreeSet<&str> = all_op_names().collect();
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "ops without an inference test: {missing:?}"
    );
}

#[test]
fn inferred_types_match_interpreter_values() {
    // Every valid case evaluates to an array of exactly the inferred shape.
    use gradlift::interp::{eval, Array};
    use std::collections::HashMap;
    for (op, operands, expected) in valid_cases() {
        let mut g = Graph::new("t");
        let ids = inputs(&mut g, &operands);
        let y = g.add(op.clone(), &ids).unwrap();
        let feeds: HashMap<NodeId, Array<f32>> = ids
            .iter()
            .zip(&operands)
            .map(|(&id, t)| (id, Array::zeros(t.shape.clone())))
            .collect();
        let v = eval(&g, &feeds).unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        assert_eq!(v.get(y).unwrap().shape, expected.shape, "{}", op.name());
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// Checks that `r` failed with a message containing every `needle`, at `line` of this file.
#[track_caller]
fn check_err<T: std::fmt::Debug>(r: Result<T, BuildError>, line: u32, needles: &[&str]) {
    let e = match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    };
    for n in needles {
        assert!(
            e.message.contains(n),
            "message {:?} does not mention {n:?}",
            e.message
        );
    }
    let loc: SourceLoc = e.loc.clone().expect("error without a location");
    assert!(loc.file.ends_with("ops_infer.rs"), "location {loc}");
    assert_eq!(loc.line, line, "location {loc}");
    // The Display form starts with the location.
    assert!(e.to_string().starts_with(&format!("{loc}: ")), "{e}");
}

#[test]
fn matmul_errors() {
    let mut g = Graph::new("t");
    let v = inputs(
        &mut g,
        &[f32t(&[2, 3]), f32t(&[4, 5]), f32t(&[3]), i32t(&[3, 5])],
    );
    let (r, l) = (g.matmul(v[0], v[1]), line!());
    check_err(
        r,
        l,
        &["matmul", "inner dimensions", "f32[2,3]", "f32[4,5]"],
    );
    let (r, l) = (g.matmul(v[0], v[2]), line!());
    check_err(r, l, &["matmul", "2-D", "f32[2,3]", "f32[3]"]);
    let (r, l) = (g.matmul(v[0], v[3]), line!());
    check_err(r, l, &["matmul", "must be f32", "i32[3,5]"]);
}

#[test]
fn broadcast_errors() {
    let mut g = Graph::new("t");
    let v = inputs(
        &mut g,
        &[f32t(&[2, 3]), f32t(&[4]), i32t(&[3]), f32t(&[2, 1])],
    );
    let (r, l) = (g.add2(v[0], v[1]), line!());
    check_err(r, l, &["add", "cannot be broadcast", "f32[2,3]", "f32[4]"]);
    let (r, l) = (g.compare(CmpOp::Lt, v[1], v[0]), line!());
    check_err(r, l, &["lt", "f32[4]", "f32[2,3]"]);
    let (r, l) = (g.compare(CmpOp::Eq, v[0], v[2]), line!());
    check_err(r, l, &["eq", "same dtype", "f32[2,3]", "i32[3]"]);
    let (r, l) = (g.select(v[3], v[0], v[1]), line!());
    check_err(r, l, &["select", "f32[2,1]", "f32[2,3]", "f32[4]"]);
    let (r, l) = (g.select(v[3], v[0], v[2]), line!());
    check_err(r, l, &["select", "same dtype", "f32[2,3]", "i32[3]"]);
    let (r, l) = (g.select(v[2], v[0], v[0]), line!());
    check_err(r, l, &["select", "must be f32", "i32[3]"]);
    let (r, l) = (g.broadcast(v[0], [3, 3]), line!());
    check_err(r, l, &["broadcast", "f32[2,3]", "[3,3]"]);
    let (r, l) = (g.broadcast(v[0], [3]), line!());
    check_err(r, l, &["broadcast", "f32[2,3]", "[3]"]);
}

#[test]
fn axis_errors() {
    let mut g = Graph::new("t");
    let v = inputs(&mut g, &[f32t(&[2, 3]), f32t(&[2, 0]), f32t(&[3, 3])]);
    let (r, l) = (g.sum(v[0], &[2], false), line!());
    check_err(r, l, &["reduce_sum", "axis 2", "f32[2,3]"]);
    let (r, l) = (g.mean(v[0], &[1, 0], false), line!());
    check_err(r, l, &["reduce_mean", "sorted and unique", "[1, 0]"]);
    let (r, l) = (g.reduce(ReduceOp::Max, v[0], &[1, 1], true), line!());
    check_err(r, l, &["reduce_max", "sorted and unique"]);
    let (r, l) = (g.argmax(v[0], 2), line!());
    check_err(r, l, &["argmax", "axis 2", "f32[2,3]"]);
    let (r, l) = (g.argmax(v[1], 1), line!());
    check_err(r, l, &["argmax", "empty", "f32[2,0]"]);
    let (r, l) = (g.softmax(v[0], 5), line!());
    check_err(r, l, &["softmax", "axis 5", "f32[2,3]"]);
    let (r, l) = (g.log_softmax(v[0], 2), line!());
    check_err(r, l, &["log_softmax", "axis 2", "f32[2,3]"]);
    let (r, l) = (g.concat(&[v[0], v[2]], 2), line!());
    check_err(r, l, &["concat", "axis 2", "f32[2,3]"]);
    let (r, l) = (g.concat(&[v[0], v[2]], 1), line!());
    check_err(r, l, &["concat", "operand 1", "f32[3,3]", "f32[2,3]"]);
    let (r, l) = (g.transpose(v[0], &[0]), line!());
    check_err(r, l, &["transpose", "[0]", "f32[2,3]"]);
    let (r, l) = (g.transpose(v[0], &[1, 1]), line!());
    check_err(r, l, &["transpose", "[1, 1]", "not a permutation"]);
}

#[test]
fn conv_and_pool_errors() {
    let mut g = Graph::new("t");
    let v = inputs(
        &mut g,
        &[
            f32t(&[1, 5, 5, 3]),
            f32t(&[3, 3, 2, 4]),
            f32t(&[3, 3, 3, 4]),
            f32t(&[1, 2, 2, 4]),
            f32t(&[5, 5, 3]),
            f32t(&[6, 6, 3, 4]),
        ],
    );
    let (r, l) = (g.conv2d(v[0], v[1], [1, 1], Padding::Valid), line!());
    check_err(
        r,
        l,
        &[
            "conv2d",
            "3 channels",
            "expects 2",
            "[1,5,5,3]",
            "[3,3,2,4]",
        ],
    );
    let (r, l) = (g.conv2d(v[4], v[2], [1, 1], Padding::Valid), line!());
    check_err(r, l, &["conv2d", "f32[5,5,3]", "f32[3,3,3,4]"]);
    let (r, l) = (g.conv2d(v[0], v[5], [1, 1], Padding::Valid), line!());
    check_err(r, l, &["conv2d", "6x6", "does not fit", "[1,5,5,3]"]);
    let (r, l) = (g.conv2d(v[0], v[2], [0, 1], Padding::Same), line!());
    check_err(r, l, &["conv2d", "stride [0, 1]"]);
    let op = Op::Conv2dInputGrad {
        stride: [1, 1],
        padding: Padding::Valid,
        shape: Shape(vec![1, 5, 5, 3]),
    };
    let (r, l) = (g.add(op, &[v[3], v[2]]), line!());
    check_err(r, l, &["conv2d_input_grad", "f32[1,2,2,4]", "[1,3,3,4]"]);
    let op = Op::Conv2dFilterGrad {
        stride: [1, 1],
        padding: Padding::Valid,
        kernel: [3, 3],
    };
    let (r, l) = (g.add(op, &[v[0], v[3]]), line!());
    check_err(r, l, &["conv2d_filter_grad", "f32[1,2,2,4]", "[1,3,3,4]"]);
    let (r, l) = (g.max_pool2d(v[0], [6, 2], [1, 1]), line!());
    check_err(r, l, &["max_pool2d", "[6, 2]", "f32[1,5,5,3]"]);
    let (r, l) = (g.max_pool2d(v[4], [2, 2], [2, 2]), line!());
    check_err(r, l, &["max_pool2d", "f32[5,5,3]"]);
    let op = Op::MaxPool2dGrad {
        window: [2, 2],
        stride: [2, 2],
    };
    let (r, l) = (g.add(op, &[v[0], v[3]]), line!());
    check_err(r, l, &["max_pool2d_grad", "f32[1,2,2,4]", "[1,2,2,3]"]);
}

#[test]
fn all_reduce_keeps_the_type_of_an_f32_operand() {
    let mut g = Graph::new("t");
    let v = inputs(&mut g, &[f32t(&[3, 4]), i32t(&[3])]);
    for mean in [false, true] {
        let y = g.all_reduce(v[0], mean).unwrap();
        assert_eq!(g[y].ty, f32t(&[3, 4]));
    }
    let (r, l) = (g.all_reduce(v[1], true), line!());
    check_err(r, l, &["all_reduce", "f32 operand", "i32[3]"]);
}

#[test]
fn gather_and_scatter_add_errors() {
    let mut g = Graph::new("t");
    let v = inputs(
        &mut g,
        &[
            f32t(&[5, 4]),
            i32t(&[3]),
            f32t(&[3]),
            f32t(&[0, 4]),
            f32t(&[3, 4]),
            f32t(&[2, 4]),
        ],
    );
    let (r, l) = (g.gather(v[0], v[2], 0), line!());
    check_err(r, l, &["gather", "i32 indices", "f32[5,4]", "f32[3]"]);
    let (r, l) = (g.gather(v[1], v[1], 0), line!());
    check_err(r, l, &["gather", "f32 table", "i32[3]"]);
    let (r, l) = (g.gather(v[0], v[1], 2), line!());
    check_err(r, l, &["gather", "axis 2", "out of range", "f32[5,4]"]);
    let (r, l) = (g.gather(v[3], v[1], 0), line!());
    check_err(r, l, &["gather", "axis 0", "f32[0,4]", "empty"]);
    let (r, l) = (g.scatter_add(v[5], v[1], 0, [5, 4]), line!());
    check_err(
        r,
        l,
        &[
            "scatter_add",
            "updates are f32[2,4]",
            "expected f32[3,4]",
            "i32[3]",
            "[5,4]",
        ],
    );
    let (r, l) = (g.scatter_add(v[4], v[2], 0, [5, 4]), line!());
    check_err(r, l, &["scatter_add", "i32 indices", "f32[3]"]);
    let (r, l) = (g.scatter_add(v[4], v[1], 2, [5, 4]), line!());
    check_err(r, l, &["scatter_add", "axis 2", "out of range", "[5,4]"]);
    let (r, l) = (g.scatter_add(v[4], v[1], 0, [0, 4]), line!());
    check_err(r, l, &["scatter_add", "axis 0", "[0,4]", "empty"]);
}

#[test]
fn reshape_and_slice_errors() {
    let mut g = Graph::new("t");
    let v = inputs(&mut g, &[f32t(&[2, 3])]);
    let (r, l) = (g.reshape(v[0], [4]), line!());
    check_err(
        r,
        l,
        &["reshape", "f32[2,3]", "6 elements", "[4]", "4 elements"],
    );
    let (r, l) = (g.slice(v[0], &[0, 1], &[2, 4]), line!());
    check_err(r, l, &["slice", "1..4", "dimension 1", "f32[2,3]"]);
    let (r, l) = (g.slice(v[0], &[2, 0], &[1, 3]), line!());
    check_err(r, l, &["slice", "2..1", "dimension 0", "f32[2,3]"]);
    let (r, l) = (g.slice(v[0], &[0], &[1]), line!());
    check_err(r, l, &["slice", "[0]", "[1]", "f32[2,3]"]);
}

#[test]
fn dtype_errors() {
    let mut g = Graph::new("t");
    let v = inputs(
        &mut g,
        &[
            i32t(&[3]),
            f32t(&[3]),
            f32t(&[2, 3]),
            f32t(&[2]),
            i32t(&[2, 3]),
        ],
    );
    let (r, l) = (g.relu(v[0]), line!());
    check_err(r, l, &["relu", "must be f32", "i32[3]"]);
    let (r, l) = (g.mul(v[1], v[0]), line!());
    check_err(r, l, &["mul", "operand 1", "must be f32", "i32[3]"]);
    let (r, l) = (g.sum(v[0], &[0], false), line!());
    check_err(r, l, &["reduce_sum", "must be f32", "i32[3]"]);
    let (r, l) = (g.one_hot(v[1], 4), line!());
    check_err(r, l, &["one_hot", "must be i32", "f32[3]"]);
    let (r, l) = (g.sparse_softmax_cross_entropy(v[2], v[3]), line!());
    check_err(
        r,
        l,
        &["sparse_softmax_cross_entropy", "f32[2,3]", "f32[2]"],
    );
    let (r, l) = (g.softmax_cross_entropy(v[2], v[4]), line!());
    check_err(r, l, &["softmax_cross_entropy", "must be f32", "i32[2,3]"]);
    let (r, l) = (g.softmax_cross_entropy(v[2], v[1]), line!());
    check_err(
        r,
        l,
        &["softmax_cross_entropy", "[n,c]", "f32[2,3]", "f32[3]"],
    );
    let (r, l) = (g.softmax(v[4], 0), line!());
    check_err(r, l, &["softmax", "must be f32", "i32[2,3]"]);
    let (r, l) = (g.concat(&[v[2], v[4]], 0), line!());
    check_err(r, l, &["concat", "i32[2,3]", "f32[2,3]"]);
}

#[test]
fn operand_count_errors() {
    let mut g = Graph::new("t");
    let v = inputs(&mut g, &[f32t(&[2, 2])]);
    let (r, l) = (g.add(Op::Matmul, &[v[0]]), line!());
    check_err(r, l, &["matmul takes 2 operand(s), found 1"]);
    let (r, l) = (g.add(Op::Select, &[v[0], v[0]]), line!());
    check_err(r, l, &["select takes 3 operand(s), found 2"]);
    let (r, l) = (g.add(Op::Unary(UnaryOp::Exp), &[v[0], v[0]]), line!());
    check_err(r, l, &["exp takes 1 operand(s), found 2"]);
    let (r, l) = (g.concat(&[], 0), line!());
    check_err(r, l, &["concat takes at least 1 operand(s), found 0"]);
    let (r, l) = (g.add(Op::Input, &[v[0]]), line!());
    check_err(r, l, &["input takes 0 operand(s), found 1"]);
}

#[test]
fn leaf_errors() {
    let mut g = Graph::new("t");
    let lit = Literal::Dense(vec![1.0, 2.0]);
    let (r, l) = (g.constant(f32t(&[3]), lit), line!());
    check_err(r, l, &["const", "f32[3]", "3 values, found 2"]);
    let (r, l) = (g.add(Op::Input, &[]), line!());
    check_err(r, l, &["input", "declared type"]);
    let (r, l) = (g.input("1x", f32t(&[1])), line!());
    check_err(r, l, &["invalid name", "1x"]);
    g.input("x", f32t(&[1])).unwrap();
    let (r, l) = (g.param("x", [1], Init::Zeros), line!());
    check_err(r, l, &["duplicate name", "x"]);
}

/// A stride of 0 is named as such (it used to be reported as "does not fit input").
#[test]
fn a_zero_stride_is_named() {
    let x = f32t(&[1, 8, 8, 2]);
    let e = infer(
        conv([0, 1], Padding::Valid),
        &[x.clone(), f32t(&[3, 3, 2, 4])],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("every stride must be at least 1"), "{e}");
    let pool = Op::MaxPool2d {
        window: [2, 2],
        stride: [2, 0],
    };
    let e = infer(pool, &[x]).unwrap_err().to_string();
    assert!(e.contains("every stride must be at least 1"), "{e}");
}
