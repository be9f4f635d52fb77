//! Helpers shared by the tests that compare whole JIT-compiled graphs with the interpreter
//! (`codegen_corpus`, `fusion`): the tolerance and the longest sum it scales with.

use gradlift::{Graph, Op};

/// The longest sum any node (or fused instruction) computes.
pub fn max_terms(g: &Graph) -> usize {
    let of = |op: &Op, shapes: &[Vec<usize>]| match op {
        Op::Matmul => shapes[0][1],
        Op::Reduce { axes, .. } => axes.iter().map(|&a| shapes[0][a]).product(),
        Op::Conv2d { .. } => shapes[1][..3].iter().product(),
        Op::Conv2dInputGrad { .. } | Op::Conv2dFilterGrad { .. } => shapes[0]
            .iter()
            .product::<usize>()
            .max(shapes[1].iter().product()),
        Op::Softmax { axis } | Op::LogSoftmax { axis } => shapes[0][*axis],
        Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy => shapes[0][1],
        _ => 1,
    };
    let mut m = 1;
    for id in g.node_ids() {
        let shapes: Vec<Vec<usize>> = g
            .operands(id)
            .iter()
            .map(|&o| g[o].ty.shape.0.clone())
            .collect();
        if let Op::Fused(body) = &g[id].op {
            let mut vals = shapes.clone();
            for inst in &body.insts {
                let s: Vec<Vec<usize>> = inst.args.iter().map(|&a| vals[a].clone()).collect();
                m = m.max(of(&inst.op, &s));
                vals.push(inst.ty.shape.0.clone());
            }
        } else {
            m = m.max(of(&g[id].op, &shapes));
        }
    }
    m
}

/// Asserts `got` (the JIT's f32 results) equals `want` (the interpreter's f64 results):
/// `|jit - ref| <= 1e-3 * |ref| + 1e-5 * sqrt(terms) * max(1, max|ref|)` per element (see
/// `tests/codegen_corpus.rs` for why); NaN must match NaN and infinities exactly.
pub fn close(what: &str, got: &[f64], want: &[f64], terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    let atol = 1e-5 * (terms as f64).sqrt() * scale;
    for (i, (&x, &y)) in got.iter().zip(want).enumerate() {
        let ok = if y.is_nan() {
            x.is_nan()
        } else if y.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= 1e-3 * y.abs() + atol
        };
        assert!(ok, "{what} element {i}: jit {x} vs interpreter {y}");
    }
}
