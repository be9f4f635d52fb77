//! The reference interpreter, op by op: values against hand computations on small tensors,
//! broadcasting patterns, conv2d/max-pool geometry, the conv adjoint identities, and the
//! agreement of the f32 and f64 evaluations.

// Operands are passed as owned slices `&[x.clone()]` for uniform call sites.
#![allow(clippy::cloned_ref_to_slice_refs)]

use gradlift::init::Rng;
use gradlift::interp::{eval, eval_named, Array, Float};
use gradlift::{BinaryOp, CmpOp, DType, Graph, Init, Literal, Op, Padding, ReduceOp};
use gradlift::{Shape, TensorType, UnaryOp};
use std::collections::HashMap;

/// An f32 operand: shape and values.
fn f(shape: &[usize], data: &[f64]) -> (TensorType, Vec<f64>) {
    (TensorType::f32(shape.to_vec()), data.to_vec())
}

/// An i32 operand: shape and values.
fn i(shape: &[usize], data: &[i32]) -> (TensorType, Vec<f64>) {
    (
        TensorType::i32(shape.to_vec()),
        data.iter().map(|&v| v as f64).collect(),
    )
}

/// `0, 1, 2, ...` of a shape.
fn iota(shape: &[usize]) -> (TensorType, Vec<f64>) {
    let n: usize = shape.iter().product();
    f(shape, &(0..n).map(|v| v as f64).collect::<Vec<_>>())
}

/// Evaluates `op` on fed operands in precision `T`; returns the result node's type and value.
fn eval_in<T: Float>(op: &Op, operands: &[(TensorType, Vec<f64>)]) -> (TensorType, Array<T>) {
    let mut g = Graph::new("t");
    let mut feeds = HashMap::new();
    let mut ids = Vec::new();
    for (k, (ty, data)) in operands.iter().enumerate() {
        let id = g.input(&format!("x{k}"), ty.clone()).unwrap();
        feeds.insert(id, Array::<T>::from_f64(ty.shape.clone(), data).unwrap());
        ids.push(id);
    }
    let y = g.add(op.clone(), &ids).unwrap();
    let v = eval(&g, &feeds).unwrap();
    (g[y].ty.clone(), v.get(y).unwrap().clone())
}

/// Evaluates `op` in f64 and in f32, checks that they agree (relative 1e-5, NaN where NaN)
/// and that the value has the node's shape; returns the f64 result.
fn run(op: Op, operands: &[(TensorType, Vec<f64>)]) -> (TensorType, Array<f64>) {
    let (ty, y64) = eval_in::<f64>(&op, operands);
    let (_, y32) = eval_in::<f32>(&op, operands);
    assert_eq!(y64.shape, ty.shape, "{op:?}: value shape vs node type");
    assert_eq!(y32.shape, ty.shape);
    assert_eq!(y64.data.len(), ty.shape.numel());
    for (a, b) in y64.data.iter().zip(y32.to_f64_vec()) {
        let same =
            (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= 1e-5 * a.abs().max(1.0);
        assert!(same, "{op:?}: f64 {a} vs f32 {b}");
    }
    (ty, y64)
}

/// The f64 value of `op` on `operands`.
fn val(op: Op, operands: &[(TensorType, Vec<f64>)]) -> Array<f64> {
    run(op, operands).1
}

#[track_caller]
fn assert_close(found: &Array<f64>, shape: &[usize], expected: &[f64]) {
    assert_eq!(found.shape, Shape(shape.to_vec()), "shape");
    assert_eq!(found.data.len(), expected.len(), "length");
    for (k, (a, b)) in found.data.iter().zip(expected).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            ok,
            "element {k}: found {a}, expected {b}\nfound    {:?}\nexpected {expected:?}",
            found.data
        );
    }
}

fn un(u: UnaryOp) -> Op {
    Op::Unary(u)
}
fn bin(b: BinaryOp) -> Op {
    Op::Binary(b)
}

// ---- elementwise ----------------------------------------------------------------------------

#[test]
fn unary_ops_by_hand() {
    let x = f(&[2, 3], &[-2.0, -0.5, 0.0, 0.5, 2.0, 3.0]);
    let s = [2, 3];
    assert_close(
        &val(un(UnaryOp::Neg), &[x.clone()]),
        &s,
        &[2.0, 0.5, 0.0, -0.5, -2.0, -3.0],
    );
    assert_close(
        &val(un(UnaryOp::Abs), &[x.clone()]),
        &s,
        &[2.0, 0.5, 0.0, 0.5, 2.0, 3.0],
    );
    assert_close(
        &val(un(UnaryOp::Sign), &[x.clone()]),
        &s,
        &[-1.0, -1.0, 0.0, 1.0, 1.0, 1.0],
    );
    assert_close(
        &val(un(UnaryOp::Relu), &[x.clone()]),
        &s,
        &[0.0, 0.0, 0.0, 0.5, 2.0, 3.0],
    );
    let e = std::f64::consts::E;
    let ex = [
        1.0 / (e * e),
        1.0 / e.sqrt(),
        1.0,
        e.sqrt(),
        e * e,
        e * e * e,
    ];
    assert_close(&val(un(UnaryOp::Exp), &[x.clone()]), &s, &ex);
    let p = f(&[4], &[1.0, 4.0, e, 0.25]);
    assert_close(
        &val(un(UnaryOp::Log), &[p.clone()]),
        &[4],
        &[0.0, 4f64.ln(), 1.0, -(4f64.ln())],
    );
    assert_close(
        &val(un(UnaryOp::Sqrt), &[p]),
        &[4],
        &[1.0, 2.0, e.sqrt(), 0.5],
    );
    // tanh(x) = (e^2x - 1) / (e^2x + 1)
    let t = |v: f64| ((2.0 * v).exp() - 1.0) / ((2.0 * v).exp() + 1.0);
    let th: Vec<f64> = [-2.0, -0.5, 0.0, 0.5, 2.0, 3.0]
        .iter()
        .map(|&v| t(v))
        .collect();
    assert_close(&val(un(UnaryOp::Tanh), &[x]), &s, &th);
}

#[test]
fn sign_of_nan_is_nan_and_log_of_negative_is_nan() {
    let x = f(&[2], &[f64::NAN, -1.0]);
    let s = val(un(UnaryOp::Sign), &[x.clone()]);
    assert!(s.data[0].is_nan());
    assert_eq!(s.data[1], -1.0);
    assert!(val(un(UnaryOp::Log), &[x]).data[1].is_nan());
}

#[test]
fn sigmoid_is_stable_for_large_magnitudes() {
    let x = f(&[5], &[-1000.0, -30.0, 0.0, 2.0, 1000.0]);
    let y = val(un(UnaryOp::Sigmoid), &[x]);
    let e2 = 1.0 / (1.0 + (-2.0f64).exp());
    assert_close(&y, &[5], &[0.0, 1.0 / (1.0 + 30f64.exp()), 0.5, e2, 1.0]);
    assert!(y.data.iter().all(|v| v.is_finite()));
    // In f32 too: no NaN from inf/inf.
    let (_, y32) = eval_in::<f32>(&un(UnaryOp::Sigmoid), &[f(&[2], &[-200.0, 200.0])]);
    assert_eq!(y32.data, vec![0.0, 1.0]);
}

#[test]
fn binary_ops_same_shape() {
    let a = f(&[2, 2], &[1.0, -2.0, 3.0, 4.0]);
    let b = f(&[2, 2], &[2.0, 2.0, -1.0, 0.5]);
    let ab = [a, b];
    let s = [2, 2];
    assert_close(&val(bin(BinaryOp::Add), &ab), &s, &[3.0, 0.0, 2.0, 4.5]);
    assert_close(&val(bin(BinaryOp::Sub), &ab), &s, &[-1.0, -4.0, 4.0, 3.5]);
    assert_close(&val(bin(BinaryOp::Mul), &ab), &s, &[2.0, -4.0, -3.0, 2.0]);
    assert_close(&val(bin(BinaryOp::Div), &ab), &s, &[0.5, -1.0, -3.0, 8.0]);
    assert_close(&val(bin(BinaryOp::Max), &ab), &s, &[2.0, 2.0, 3.0, 4.0]);
    assert_close(&val(bin(BinaryOp::Min), &ab), &s, &[1.0, -2.0, -1.0, 0.5]);
    assert_close(
        &val(bin(BinaryOp::Pow), &ab),
        &s,
        &[1.0, 4.0, 1.0 / 3.0, 2.0],
    );
}

#[test]
fn max_and_min_propagate_nan() {
    let ab = [f(&[2], &[f64::NAN, 1.0]), f(&[2], &[1.0, f64::NAN])];
    for op in [BinaryOp::Max, BinaryOp::Min] {
        assert!(val(bin(op), &ab).data.iter().all(|v| v.is_nan()), "{op:?}");
    }
}

#[test]
fn broadcast_row_vector() {
    // [2,3] + [3]
    let a = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f(&[3], &[10.0, 20.0, 30.0]);
    let y = val(bin(BinaryOp::Add), &[a.clone(), b.clone()]);
    assert_close(&y, &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    // and the other operand order, with a non-commutative op
    let y = val(bin(BinaryOp::Sub), &[b, a]);
    assert_close(&y, &[2, 3], &[9.0, 18.0, 27.0, 6.0, 15.0, 24.0]);
}

#[test]
fn broadcast_column_by_row() {
    // [2,1] + [1,3] -> [2,3]
    let a = f(&[2, 1], &[1.0, 2.0]);
    let b = f(&[1, 3], &[10.0, 20.0, 30.0]);
    let y = val(bin(BinaryOp::Add), &[a, b]);
    assert_close(&y, &[2, 3], &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
}

#[test]
fn broadcast_scalar() {
    let s = f(&[], &[1.0]);
    let m = f(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let y = val(bin(BinaryOp::Sub), &[s.clone(), m.clone()]);
    assert_close(&y, &[2, 2], &[0.0, -1.0, -2.0, -3.0]);
    let y = val(bin(BinaryOp::Sub), &[m, s]);
    assert_close(&y, &[2, 2], &[0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn broadcast_rank3_against_formula() {
    // a [3,1,2] * b [4,1] -> [3,4,2]: y[i,j,k] = a[i,0,k] * b[j,0]
    let a = iota(&[3, 1, 2]);
    let b = f(&[4, 1], &[1.0, 10.0, 100.0, 1000.0]);
    let y = val(bin(BinaryOp::Mul), &[a.clone(), b.clone()]);
    let mut expected = Vec::new();
    for ii in 0..3 {
        for j in 0..4 {
            for k in 0..2 {
                expected.push(a.1[ii * 2 + k] * b.1[j]);
            }
        }
    }
    assert_close(&y, &[3, 4, 2], &expected);
}

#[test]
fn compare_ops_give_masks() {
    let ab = [f(&[3], &[1.0, 2.0, 3.0]), f(&[3], &[2.0, 2.0, 2.0])];
    let cases = [
        (CmpOp::Eq, [0.0, 1.0, 0.0]),
        (CmpOp::Ne, [1.0, 0.0, 1.0]),
        (CmpOp::Lt, [1.0, 0.0, 0.0]),
        (CmpOp::Le, [1.0, 1.0, 0.0]),
        (CmpOp::Gt, [0.0, 0.0, 1.0]),
        (CmpOp::Ge, [0.0, 1.0, 1.0]),
    ];
    for (c, expected) in cases {
        let (ty, y) = run(Op::Compare(c), &ab);
        assert_eq!(ty.dtype, DType::F32);
        assert_close(&y, &[3], &expected);
    }
    // i32 operands, broadcast [2,1] against [2]
    let (ty, y) = run(
        Op::Compare(CmpOp::Eq),
        &[i(&[2, 1], &[3, 4]), i(&[2], &[4, 3])],
    );
    assert_eq!(ty, TensorType::f32([2, 2]));
    assert_close(&y, &[2, 2], &[0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn select_broadcasts_all_three() {
    // mask [2,1], a [3], b scalar -> [2,3]
    let mask = f(&[2, 1], &[1.0, 0.0]);
    let a = f(&[3], &[1.0, 2.0, 3.0]);
    let b = f(&[], &[-1.0]);
    let y = val(Op::Select, &[mask, a, b]);
    assert_close(&y, &[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    // any nonzero mask value selects `a`
    let y = val(
        Op::Select,
        &[
            f(&[3], &[-2.0, 0.0, 0.5]),
            f(&[3], &[1.0, 1.0, 1.0]),
            f(&[3], &[9.0, 9.0, 9.0]),
        ],
    );
    assert_close(&y, &[3], &[1.0, 9.0, 1.0]);
}

#[test]
fn cast_truncates_toward_zero() {
    let x = f(&[6], &[-1.7, -0.5, 0.5, 1.9, 2.0, -3.0]);
    let (ty, y) = run(Op::Cast { to: DType::I32 }, &[x]);
    assert_eq!(ty, TensorType::i32([6]));
    assert_close(&y, &[6], &[-1.0, 0.0, 0.0, 1.0, 2.0, -3.0]);
    let (ty, y) = run(Op::Cast { to: DType::F32 }, &[i(&[2], &[-4, 7])]);
    assert_eq!(ty, TensorType::f32([2]));
    assert_close(&y, &[2], &[-4.0, 7.0]);
}

// ---- reductions and layout ------------------------------------------------------------------

fn reduce(kind: ReduceOp, axes: &[usize], keepdims: bool) -> Op {
    Op::Reduce {
        kind,
        axes: axes.to_vec(),
        keepdims,
    }
}

#[test]
fn reductions_by_hand() {
    let x = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let x1 = [x];
    assert_close(
        &val(reduce(ReduceOp::Sum, &[0], false), &x1),
        &[3],
        &[5.0, 7.0, 9.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Sum, &[1], false), &x1),
        &[2],
        &[6.0, 15.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Sum, &[1], true), &x1),
        &[2, 1],
        &[6.0, 15.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Sum, &[0, 1], false), &x1),
        &[],
        &[21.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Sum, &[0, 1], true), &x1),
        &[1, 1],
        &[21.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Mean, &[1], false), &x1),
        &[2],
        &[2.0, 5.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Mean, &[0], true), &x1),
        &[1, 3],
        &[2.5, 3.5, 4.5],
    );
    assert_close(
        &val(reduce(ReduceOp::Max, &[0], false), &x1),
        &[3],
        &[4.0, 5.0, 6.0],
    );
    assert_close(
        &val(reduce(ReduceOp::Max, &[1], false), &x1),
        &[2],
        &[3.0, 6.0],
    );
    // no axes: the identity
    assert_close(
        &val(reduce(ReduceOp::Sum, &[], false), &x1),
        &[2, 3],
        &x1[0].1,
    );
}

#[test]
fn reduce_over_outer_and_inner_axes() {
    // x[i,j,k] = 6i + 2j + k over [2,3,2]; sum over i and k: sum = 14 + 8j
    let x = iota(&[2, 3, 2]);
    let y = val(reduce(ReduceOp::Sum, &[0, 2], false), &[x.clone()]);
    assert_close(&y, &[3], &[14.0, 22.0, 30.0]);
    let y = val(reduce(ReduceOp::Max, &[0, 2], true), &[x]);
    assert_close(&y, &[1, 3, 1], &[7.0, 9.0, 11.0]);
}

#[test]
fn reduce_max_of_i32_and_negative_values() {
    let (ty, y) = run(
        reduce(ReduceOp::Max, &[1], false),
        &[i(&[2, 2], &[-5, -3, -7, -9])],
    );
    assert_eq!(ty, TensorType::i32([2]));
    assert_close(&y, &[2], &[-3.0, -7.0]);
}

#[test]
fn argmax_takes_the_first_maximum() {
    let x = f(&[2, 3], &[1.0, 3.0, 3.0, 5.0, 0.0, 5.0]);
    let (ty, y) = run(Op::Argmax { axis: 1 }, &[x.clone()]);
    assert_eq!(ty, TensorType::i32([2]));
    assert_close(&y, &[2], &[1.0, 0.0]);
    let (ty, y) = run(Op::Argmax { axis: 0 }, &[x]);
    assert_eq!(ty, TensorType::i32([3]));
    assert_close(&y, &[3], &[1.0, 0.0, 1.0]);
}

#[test]
fn reshape_keeps_data() {
    let x = iota(&[2, 3]);
    let y = val(
        Op::Reshape {
            shape: Shape(vec![3, 2]),
        },
        &[x.clone()],
    );
    assert_close(&y, &[3, 2], &x.1);
    let y = val(
        Op::Reshape {
            shape: Shape(vec![6]),
        },
        &[x.clone()],
    );
    assert_close(&y, &[6], &x.1);
}

#[test]
fn broadcast_op() {
    let y = val(
        Op::Broadcast {
            shape: Shape(vec![2, 3]),
        },
        &[f(&[3], &[1.0, 2.0, 3.0])],
    );
    assert_close(&y, &[2, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let y = val(
        Op::Broadcast {
            shape: Shape(vec![2, 3]),
        },
        &[f(&[2, 1], &[1.0, 2.0])],
    );
    assert_close(&y, &[2, 3], &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    let y = val(
        Op::Broadcast {
            shape: Shape(vec![2, 2]),
        },
        &[f(&[], &[7.0])],
    );
    assert_close(&y, &[2, 2], &[7.0; 4]);
}

#[test]
fn transpose_2d_and_3d() {
    let y = val(
        Op::Transpose { perm: vec![1, 0] },
        &[f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
    );
    assert_close(&y, &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // x[a,b,c] = 12a + 4b + c over [2,3,4]; perm [2,0,1]: y[i,j,k] = x[j,k,i] = 12j + 4k + i
    let y = val(
        Op::Transpose {
            perm: vec![2, 0, 1],
        },
        &[iota(&[2, 3, 4])],
    );
    let mut expected = Vec::new();
    for ii in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                expected.push((12 * j + 4 * k + ii) as f64);
            }
        }
    }
    assert_close(&y, &[4, 2, 3], &expected);
    // identity perm
    let y = val(
        Op::Transpose {
            perm: vec![0, 1, 2],
        },
        &[iota(&[2, 3, 4])],
    );
    assert_close(&y, &[2, 3, 4], &iota(&[2, 3, 4]).1);
}

#[test]
fn slice_and_concat() {
    let x = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = val(
        Op::Slice {
            begin: vec![0, 1],
            end: vec![2, 3],
        },
        &[x.clone()],
    );
    assert_close(&y, &[2, 2], &[2.0, 3.0, 5.0, 6.0]);
    let y = val(
        Op::Slice {
            begin: vec![1, 0],
            end: vec![2, 2],
        },
        &[x.clone()],
    );
    assert_close(&y, &[1, 2], &[4.0, 5.0]);
    let y = val(
        Op::Slice {
            begin: vec![1, 1],
            end: vec![1, 3],
        },
        &[x],
    );
    assert_close(&y, &[0, 2], &[]);

    let a = f(&[2, 1], &[1.0, 2.0]);
    let b = f(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    let y = val(Op::Concat { axis: 1 }, &[a.clone(), b.clone()]);
    assert_close(&y, &[2, 3], &[1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    let c = f(&[1, 2], &[7.0, 8.0]);
    let y = val(Op::Concat { axis: 0 }, &[b.clone(), c, b]);
    assert_close(
        &y,
        &[5, 2],
        &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 6.0],
    );
    let y = val(Op::Concat { axis: 0 }, &[a.clone()]);
    assert_close(&y, &[2, 1], &a.1);
}

// ---- matmul, conv, pool ---------------------------------------------------------------------

#[test]
fn matmul_by_hand() {
    let a = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f(&[3, 2], &[7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let y = val(Op::Matmul, &[a, b]);
    assert_close(&y, &[2, 2], &[58.0, 64.0, 139.0, 154.0]);
}

fn conv(stride: [usize; 2], padding: Padding) -> Op {
    Op::Conv2d { stride, padding }
}

#[test]
fn conv2d_valid_by_hand() {
    // x 3x3 = 1..9, w 2x2 = [[1,2],[3,4]]
    let x = f(
        &[1, 3, 3, 1],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let w = f(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
    let y = val(conv([1, 1], Padding::Valid), &[x.clone(), w.clone()]);
    assert_close(&y, &[1, 2, 2, 1], &[37.0, 47.0, 67.0, 77.0]);
    // stride 2: only the top-left window fits
    let y = val(conv([2, 2], Padding::Valid), &[x, w]);
    assert_close(&y, &[1, 1, 1, 1], &[37.0]);
}

#[test]
fn conv2d_same_stride1_pads_both_sides() {
    // 3x3 ones kernel on 1..9: pad 1 on each side
    let x = f(
        &[1, 3, 3, 1],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let w = f(&[3, 3, 1, 1], &[1.0; 9]);
    let y = val(conv([1, 1], Padding::Same), &[x, w]);
    assert_close(
        &y,
        &[1, 3, 3, 1],
        &[12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0],
    );
}

#[test]
fn conv2d_same_stride2_puts_the_extra_pixel_after() {
    // x[r][c] = 4r + c + 1 on 4x4, 3x3 ones kernel, stride 2: out 2x2, total padding 1 per
    // dimension, all of it after (TF). Window (oy,ox) covers rows 2oy..2oy+2, cols 2ox..2ox+2.
    let x = f(
        &[1, 4, 4, 1],
        &(1..=16).map(|v| v as f64).collect::<Vec<_>>(),
    );
    let w = f(&[3, 3, 1, 1], &[1.0; 9]);
    let y = val(conv([2, 2], Padding::Same), &[x, w]);
    assert_close(&y, &[1, 2, 2, 1], &[54.0, 45.0, 72.0, 54.0]);
}

#[test]
fn conv2d_channels_follow_nhwc_hwio() {
    // A 1x1 conv is a matmul of the pixels [n*h*w, c] by the filter [c, o].
    let x = iota(&[2, 2, 2, 3]);
    let w = f(&[1, 1, 3, 2], &[1.0, -1.0, 2.0, 0.5, -3.0, 1.0]);
    let y = val(conv([1, 1], Padding::Valid), &[x.clone(), w.clone()]);
    let m = val(Op::Matmul, &[f(&[8, 3], &x.1), f(&[3, 2], &w.1)]);
    assert_close(&y, &[2, 2, 2, 2], &m.data);
    // Pixel (0,0,1) has channels [3,4,5]: outputs 3 + 8 - 15 = -4 and -3 + 2 + 5 = 4.
    assert_eq!(&y.data[2..4], &[-4.0, 4.0]);
}

/// An independent conv2d: pad the input with zeros explicitly (TF split of the padding),
/// then slide the window.
fn reference_conv(
    x: &[f64],
    xs: [usize; 4],
    w: &[f64],
    ws: [usize; 4],
    stride: [usize; 2],
    padding: Padding,
) -> (Vec<f64>, [usize; 4]) {
    let [n, h, wd, c] = xs;
    let [kh, kw, _, o] = ws;
    let geom = |size: usize, k: usize, s: usize| -> (usize, usize, usize) {
        match padding {
            Padding::Valid => ((size - k) / s + 1, 0, 0),
            Padding::Same => {
                let out = size.div_ceil(s);
                let total = ((out - 1) * s + k).saturating_sub(size);
                (out, total / 2, total - total / 2)
            }
        }
    };
    let (oh, pt, pb) = geom(h, kh, stride[0]);
    let (ow, pl, pr) = geom(wd, kw, stride[1]);
    let (hp, wp) = (h + pt + pb, wd + pl + pr);
    let mut padded = vec![0.0; n * hp * wp * c];
    for b in 0..n {
        for r in 0..h {
            for q in 0..wd {
                for ch in 0..c {
                    padded[((b * hp + r + pt) * wp + q + pl) * c + ch] =
                        x[((b * h + r) * wd + q) * c + ch];
                }
            }
        }
    }
    let mut y = vec![0.0; n * oh * ow * o];
    for b in 0..n {
        for r in 0..oh {
            for q in 0..ow {
                for co in 0..o {
                    let mut acc = 0.0;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            for ch in 0..c {
                                acc += padded[((b * hp + r * stride[0] + ky) * wp
                                    + q * stride[1]
                                    + kx)
                                    * c
                                    + ch]
                                    * w[((ky * kw + kx) * c + ch) * o + co];
                            }
                        }
                    }
                    y[((b * oh + r) * ow + q) * o + co] = acc;
                }
            }
        }
    }
    (y, [n, oh, ow, o])
}

fn random_vec(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Random small conv geometries (both paddings, strides 1 and 2): conv2d matches the
/// explicitly padded reference, and its two gradients are its exact adjoints:
/// `<conv2d(x,w), dy> == <x, input_grad(dy,w)> == <w, filter_grad(x,dy)>`.
#[test]
fn conv2d_and_its_gradients_are_adjoint_on_random_shapes() {
    let mut rng = Rng::new(42);
    let mut cases = 0;
    while cases < 48 {
        let n = 1 + rng.below(2) as usize;
        let h = 1 + rng.below(6) as usize;
        let wd = 1 + rng.below(6) as usize;
        let c = 1 + rng.below(3) as usize;
        let o = 1 + rng.below(3) as usize;
        let kh = 1 + rng.below(3) as usize;
        let kw = 1 + rng.below(3) as usize;
        let stride = [1 + rng.below(2) as usize, 1 + rng.below(2) as usize];
        let padding = if rng.below(2) == 0 {
            Padding::Valid
        } else {
            Padding::Same
        };
        if padding == Padding::Valid && (h < kh || wd < kw) {
            continue;
        }
        cases += 1;
        let xs = [n, h, wd, c];
        let ws = [kh, kw, c, o];
        let x = random_vec(&mut rng, xs.iter().product());
        let w = random_vec(&mut rng, ws.iter().product());
        let (yr, ys) = reference_conv(&x, xs, &w, ws, stride, padding);
        let what = format!("x {xs:?} w {ws:?} stride {stride:?} {padding:?}");

        let y = val(conv(stride, padding), &[f(&xs, &x), f(&ws, &w)]);
        assert_eq!(y.shape.0, ys.to_vec(), "{what}");
        for (a, b) in y.data.iter().zip(&yr) {
            assert!((a - b).abs() < 1e-12, "{what}: {a} vs reference {b}");
        }

        let dy = random_vec(&mut rng, ys.iter().product());
        let dx = val(
            Op::Conv2dInputGrad {
                stride,
                padding,
                shape: Shape(xs.to_vec()),
            },
            &[f(&ys, &dy), f(&ws, &w)],
        );
        assert_eq!(dx.shape.0, xs.to_vec(), "{what}");
        let dw = val(
            Op::Conv2dFilterGrad {
                stride,
                padding,
                kernel: [kh, kw],
            },
            &[f(&xs, &x), f(&ys, &dy)],
        );
        assert_eq!(dw.shape.0, ws.to_vec(), "{what}");
        let lhs = dot(&y.data, &dy);
        let via_x = dot(&x, &dx.data);
        let via_w = dot(&w, &dw.data);
        let tol = 1e-10 * (1.0 + lhs.abs());
        assert!(
            (lhs - via_x).abs() < tol,
            "{what}: <y,dy> {lhs} vs <x,dx> {via_x}"
        );
        assert!(
            (lhs - via_w).abs() < tol,
            "{what}: <y,dy> {lhs} vs <w,dw> {via_w}"
        );
    }
}

#[test]
fn conv2d_input_grad_by_hand() {
    // Valid 2x2 kernel on 3x3, dy = 1 at output (0,1) only: dx is the kernel placed at (0,1).
    let w = f(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
    let dy = f(&[1, 2, 2, 1], &[0.0, 1.0, 0.0, 0.0]);
    let dx = val(
        Op::Conv2dInputGrad {
            stride: [1, 1],
            padding: Padding::Valid,
            shape: Shape(vec![1, 3, 3, 1]),
        },
        &[dy, w],
    );
    assert_close(
        &dx,
        &[1, 3, 3, 1],
        &[0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0],
    );
}

#[test]
fn conv2d_filter_grad_by_hand() {
    // Valid 2x2 kernel on 3x3 x = 1..9 with dy all ones: dw[ky,kx] = sum of the 2x2 block of x
    // starting at (ky,kx).
    let x = f(
        &[1, 3, 3, 1],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let dy = f(&[1, 2, 2, 1], &[1.0; 4]);
    let dw = val(
        Op::Conv2dFilterGrad {
            stride: [1, 1],
            padding: Padding::Valid,
            kernel: [2, 2],
        },
        &[x, dy],
    );
    assert_close(&dw, &[2, 2, 1, 1], &[12.0, 16.0, 24.0, 28.0]);
}

fn pool(window: [usize; 2], stride: [usize; 2]) -> Op {
    Op::MaxPool2d { window, stride }
}

#[test]
fn max_pool_by_hand() {
    // 4x4 with 2 channels: channel 0 = 0..15 row-major, channel 1 = its negation.
    let mut data = Vec::new();
    for v in 0..16 {
        data.push(v as f64);
        data.push(-(v as f64));
    }
    let x = f(&[1, 4, 4, 2], &data);
    let y = val(pool([2, 2], [2, 2]), &[x.clone()]);
    assert_close(
        &y,
        &[1, 2, 2, 2],
        &[5.0, 0.0, 7.0, -2.0, 13.0, -8.0, 15.0, -10.0],
    );
    // window 3 stride 1 (valid): 2x2 outputs, overlapping
    let y = val(pool([3, 3], [1, 1]), &[x]);
    assert_close(
        &y,
        &[1, 2, 2, 2],
        &[10.0, 0.0, 11.0, -1.0, 14.0, -4.0, 15.0, -5.0],
    );
}

#[test]
fn max_pool_grad_routes_to_the_first_maximum_on_ties() {
    // One 2x2 window [[1,3],[3,3]]: the max 3 first appears at (0,1).
    let x = f(&[1, 2, 2, 1], &[1.0, 3.0, 3.0, 3.0]);
    let y = val(pool([2, 2], [2, 2]), &[x.clone()]);
    assert_close(&y, &[1, 1, 1, 1], &[3.0]);
    let dx = val(
        Op::MaxPool2dGrad {
            window: [2, 2],
            stride: [2, 2],
        },
        &[x, f(&[1, 1, 1, 1], &[5.0])],
    );
    assert_close(&dx, &[1, 2, 2, 1], &[0.0, 5.0, 0.0, 0.0]);
    // All equal: the top-left element gets it.
    let dx = val(
        Op::MaxPool2dGrad {
            window: [2, 2],
            stride: [2, 2],
        },
        &[f(&[1, 2, 2, 1], &[2.0; 4]), f(&[1, 1, 1, 1], &[1.5])],
    );
    assert_close(&dx, &[1, 2, 2, 1], &[1.5, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool_grad_accumulates_over_overlapping_windows() {
    // 1x3 input [1,9,2], window 1x2 stride 1: both windows pick the 9.
    let x = f(&[1, 1, 3, 1], &[1.0, 9.0, 2.0]);
    let dx = val(
        Op::MaxPool2dGrad {
            window: [1, 2],
            stride: [1, 1],
        },
        &[x, f(&[1, 1, 2, 1], &[10.0, 20.0])],
    );
    assert_close(&dx, &[1, 1, 3, 1], &[0.0, 30.0, 0.0]);
}

// ---- softmax family -------------------------------------------------------------------------

#[test]
fn softmax_by_hand_and_rows_sum_to_one() {
    let x = f(&[2, 3], &[1.0, 2.0, 3.0, 1000.0, 1000.0, -1000.0]);
    let y = val(Op::Softmax { axis: 1 }, &[x.clone()]);
    let e = std::f64::consts::E;
    let z = 1.0 + e + e * e;
    assert_close(&y, &[2, 3], &[1.0 / z, e / z, e * e / z, 0.5, 0.5, 0.0]);
    for row in y.data.chunks(3) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    // along axis 0: columns sum to 1
    let y = val(Op::Softmax { axis: 0 }, &[iota(&[3, 4])]);
    for col in 0..4 {
        let s: f64 = (0..3).map(|r| y.data[r * 4 + col]).sum();
        assert!((s - 1.0).abs() < 1e-12, "column {col} sums to {s}");
    }
    // every lane of a 3-D tensor along the middle axis
    let y = val(Op::Softmax { axis: 1 }, &[iota(&[2, 3, 2])]);
    for b in 0..2 {
        for k in 0..2 {
            let s: f64 = (0..3).map(|j| y.data[b * 6 + j * 2 + k]).sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn log_softmax_is_stable() {
    let x = f(&[2, 2], &[1000.0, 0.0, 3.0, 3.0]);
    let y = val(Op::LogSoftmax { axis: 1 }, &[x]);
    let l = -(2f64.ln());
    // log(1 + e^-1000) underflows to 0 in f64
    assert_close(&y, &[2, 2], &[0.0, -1000.0, l, l]);
    let x = f(&[1, 3], &[1.0, 2.0, 3.0]);
    let ls = val(Op::LogSoftmax { axis: 1 }, &[x.clone()]);
    let s = val(Op::Softmax { axis: 1 }, &[x]);
    for (a, b) in ls.data.iter().zip(&s.data) {
        assert!((a - b.ln()).abs() < 1e-12);
    }
}

#[test]
fn cross_entropy_by_hand() {
    // row 0: logits [1,2,3], lse = 3 + ln(1 + e^-1 + e^-2); row 1: logits 0, lse = ln 3
    let lse0 = 3.0 + (1.0 + (-1f64).exp() + (-2f64).exp()).ln();
    let logits = f(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
    let labels = f(&[2, 3], &[0.0, 0.0, 1.0, 0.5, 0.5, 0.0]);
    let y = val(Op::SoftmaxCrossEntropy, &[logits.clone(), labels]);
    assert_close(&y, &[2], &[lse0 - 3.0, 3f64.ln()]);
    let y = val(
        Op::SparseSoftmaxCrossEntropy,
        &[logits.clone(), i(&[2], &[2, 0])],
    );
    assert_close(&y, &[2], &[lse0 - 3.0, 3f64.ln()]);
    // dense labels that are not one-hot: 0.25*(lse-1) + 0.75*(lse-2)
    let y = val(
        Op::SoftmaxCrossEntropy,
        &[f(&[1, 3], &[1.0, 2.0, 3.0]), f(&[1, 3], &[0.25, 0.75, 0.0])],
    );
    assert_close(&y, &[1], &[0.25 * (lse0 - 1.0) + 0.75 * (lse0 - 2.0)]);
    // large logits do not overflow
    let y = val(
        Op::SparseSoftmaxCrossEntropy,
        &[f(&[1, 2], &[1000.0, 0.0]), i(&[1], &[1])],
    );
    assert_close(&y, &[1], &[1000.0]);
}

#[test]
fn sparse_cross_entropy_out_of_range_label_is_nan() {
    let logits = f(&[3, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let y = val(
        Op::SparseSoftmaxCrossEntropy,
        &[logits, i(&[3], &[3, -1, 1])],
    );
    assert!(y.data[0].is_nan() && y.data[1].is_nan());
    assert!((y.data[2] - 3f64.ln()).abs() < 1e-12);
}

#[test]
fn one_hot_by_hand() {
    let (ty, y) = run(Op::OneHot { depth: 3 }, &[i(&[4], &[0, 2, -1, 3])]);
    assert_eq!(ty, TensorType::f32([4, 3]));
    assert_close(
        &y,
        &[4, 3],
        &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    );
    let y = val(Op::OneHot { depth: 2 }, &[i(&[2, 1], &[1, 0])]);
    assert_close(&y, &[2, 1, 2], &[0.0, 1.0, 1.0, 0.0]);
}

/// Embedding rows by hand, with a repeated index and indices past either end (clamped to the
/// first and last row, as JAX clamps out-of-bounds reads); along axis 1, a scalar index
/// drops the axis.
#[test]
fn gather_by_hand() {
    let table = f(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    let (ty, y) = run(
        Op::Gather { axis: 0 },
        &[table.clone(), i(&[2, 2], &[2, 0, 2, -5])],
    );
    assert_eq!(ty, TensorType::f32([2, 2, 2]));
    assert_close(
        &y,
        &[2, 2, 2],
        &[20.0, 21.0, 0.0, 1.0, 20.0, 21.0, 0.0, 1.0],
    );
    let y = val(Op::Gather { axis: 0 }, &[table.clone(), i(&[1], &[3])]);
    assert_close(&y, &[1, 2], &[20.0, 21.0]);
    let y = val(Op::Gather { axis: 1 }, &[table, i(&[], &[1])]);
    assert_close(&y, &[3], &[1.0, 11.0, 21.0]);
}

/// Scatter-add by hand: duplicates accumulate, untouched rows stay zero, out-of-range
/// indices add to the clamped row (gather's transpose).
#[test]
fn scatter_add_by_hand() {
    let updates = f(&[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let (ty, y) = run(
        Op::ScatterAdd {
            axis: 0,
            shape: Shape(vec![4, 2]),
        },
        &[updates.clone(), i(&[4], &[1, 1, 9, -1])],
    );
    assert_eq!(ty, TensorType::f32([4, 2]));
    assert_close(&y, &[4, 2], &[7.0, 8.0, 4.0, 6.0, 0.0, 0.0, 5.0, 6.0]);
    let y = val(
        Op::ScatterAdd {
            axis: 1,
            shape: Shape(vec![4, 3]),
        },
        &[updates, i(&[2], &[2, 2])],
    );
    assert_close(
        &y,
        &[4, 3],
        &[0.0, 0.0, 3.0, 0.0, 0.0, 7.0, 0.0, 0.0, 11.0, 0.0, 0.0, 15.0],
    );
}

// ---- whole graphs ---------------------------------------------------------------------------

/// A small MLP with a cross-entropy loss; params from their initializers.
fn mlp() -> Graph {
    let mut g = Graph::new("mlp");
    let x = g.input("x", TensorType::f32([4, 5])).unwrap();
    let labels = g.input("labels", TensorType::i32([4])).unwrap();
    let w1 = g
        .param("w1", [5, 6], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let b1 = g.param("b1", [6], Init::Constant { value: 0.1 }).unwrap();
    let w2 = g.param("w2", [6, 3], Init::HeNormal { seed: 2 }).unwrap();
    let h = g.matmul(x, w1).unwrap();
    let h = g.add2(h, b1).unwrap();
    let h = g.tanh(h).unwrap();
    let logits = g.matmul(h, w2).unwrap();
    let ce = g.sparse_softmax_cross_entropy(logits, labels).unwrap();
    let loss = g.mean_all(ce).unwrap();
    let pred = g.argmax(logits, 1).unwrap();
    g.add_output("loss", loss).unwrap();
    g.add_output("pred", pred).unwrap();
    g.add_output("logits", logits).unwrap();
    g
}

fn mlp_feeds<T: Float>() -> Vec<(&'static str, Array<T>)> {
    let mut rng = Rng::new(7);
    let x: Vec<f64> = (0..20).map(|_| rng.normal()).collect();
    vec![
        ("x", Array::from_f64([4, 5], &x).unwrap()),
        (
            "labels",
            Array::from_f64([4], &[0.0, 2.0, 1.0, 2.0]).unwrap(),
        ),
    ]
}

#[test]
fn f32_and_f64_agree_on_a_small_graph() {
    let g = mlp();
    let v64 = eval_named::<f64>(&g, &mlp_feeds()).unwrap();
    let v32 = eval_named::<f32>(&g, &mlp_feeds()).unwrap();
    for name in ["loss", "pred", "logits"] {
        let a = v64.output(&g, name).unwrap();
        let b = v32.output(&g, name).unwrap().convert::<f64>();
        let d = a.max_abs_diff(&b).unwrap();
        assert!(d < 1e-5, "{name}: f32 and f64 differ by {d}");
    }
    let loss = v64.output(&g, "loss").unwrap();
    assert_eq!(loss.shape, Shape::scalar());
    assert!(loss.data[0].is_finite() && loss.data[0] > 0.0);
}

#[test]
fn params_use_their_initializer_unless_fed() {
    let g = mlp();
    let w1 = g.find("w1").unwrap();
    let b1 = g.find("b1").unwrap();
    let v = eval_named::<f64>(&g, &mlp_feeds()).unwrap();
    let expected = gradlift::init::values(&Init::GlorotUniform { seed: 1 }, &Shape(vec![5, 6]));
    assert_eq!(v.get(w1).unwrap().data, expected);
    assert_eq!(v.get(b1).unwrap().data, vec![0.1; 6]);
    // Feeding w2 = 0 makes the logits 0, so the loss is ln 3 and argmax picks class 0.
    let mut feeds = mlp_feeds::<f64>();
    feeds.push(("w2", Array::zeros([6, 3])));
    let v = eval_named(&g, &feeds).unwrap();
    assert!((v.output(&g, "loss").unwrap().data[0] - 3f64.ln()).abs() < 1e-12);
    assert_eq!(v.output(&g, "pred").unwrap().data, vec![0.0; 4]);
}

#[test]
fn updates_give_the_new_param_values() {
    // w <- w - 0.5 * x: two steps from the initializer 1.0.
    let mut g = Graph::new("sgd");
    let x = g.input("x", TensorType::f32([2])).unwrap();
    let w = g.param("w", [2], Init::Ones).unwrap();
    let lr = g.scalar(0.5);
    let step = g.mul(lr, x).unwrap();
    let w2 = g.sub(w, step).unwrap();
    g.add_update(w, w2).unwrap();
    let mut feeds = HashMap::new();
    feeds.insert(x, Array::<f64>::new([2], vec![1.0, -2.0]).unwrap());
    let v = eval(&g, &feeds).unwrap();
    let new = v.updates(&g);
    assert_eq!(new[&w].data, vec![0.5, 2.0]);
    feeds.insert(w, new[&w].clone());
    let v = eval(&g, &feeds).unwrap();
    assert_eq!(v.updates(&g)[&w].data, vec![0.0, 3.0]);
}

#[test]
fn constants_splat_and_dense() {
    let mut g = Graph::new("c");
    let a = g
        .constant(
            TensorType::f32([2, 2]),
            Literal::Dense(vec![1.0, 2.0, 3.0, 4.0]),
        )
        .unwrap();
    let b = g
        .constant(TensorType::f32([2]), Literal::Splat(0.5))
        .unwrap();
    let y = g.mul(a, b).unwrap();
    let v = eval::<f64>(&g, &HashMap::new()).unwrap();
    assert_eq!(v.get(y).unwrap().data, vec![0.5, 1.0, 1.5, 2.0]);
    assert_eq!(v.get(b).unwrap().shape, Shape(vec![2]));
}

#[test]
fn array_helpers() {
    let a = Array::<f32>::from_f64([2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!(a.get(&[1, 2]), Some(5.0));
    assert_eq!(a.get(&[0, 1]), Some(1.0));
    assert_eq!(a.get(&[2, 0]), None);
    assert_eq!(a.get(&[0]), None);
    assert_eq!(a.flat_index(&[1, 0]), Some(3));
    assert_eq!(a.to_f32_vec(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(Array::<f64>::zeros([3]).data, vec![0.0; 3]);
    assert_eq!(Array::<f64>::scalar(2.0).shape, Shape::scalar());
    let b = Array::<f32>::new([2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.5, 5.0]).unwrap();
    assert_eq!(a.max_abs_diff(&b), Some(0.5));
    assert_eq!(a.max_abs_diff(&Array::zeros([3, 2])), None);
    assert!(Array::<f64>::new([2, 2], vec![1.0; 3]).is_err());
}

/// Sums are pairwise in the interpreter: in f32, `2^24 + 2^20` ones sum to their count (a
/// running f32 sum stops at 2^24, where adding 1 no longer changes it), and the mean is 1.
#[test]
fn long_f32_sums_do_not_stall() {
    let n = (1usize << 24) + (1 << 20);
    let ones = (TensorType::f32([n]), vec![1.0; n]);
    for (kind, want) in [(ReduceOp::Sum, n as f32), (ReduceOp::Mean, 1.0)] {
        let op = Op::Reduce {
            kind,
            axes: vec![0],
            keepdims: false,
        };
        let (_, got) = eval_in::<f32>(&op, std::slice::from_ref(&ones));
        assert_eq!(got.data, vec![want], "{kind:?}");
    }
}
