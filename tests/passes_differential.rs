//! Every pass preserves results: the interpreter gives the same outputs and update values
//! before and after each pass (f64 within 1e-9 relative; constant folding, which folds in
//! f32, exactly in f32) and after the whole default pipeline (f32 within 1e-4), on random
//! inputs, for random graphs.

mod common;

use common::passes::{compare_eval, compare_pass, compare_pipeline, random_graph};
use gradlift::passes::{self, Pipeline};
use proptest::prelude::*;

/// Relative tolerance: the rewrites are exact except the stable softmax forms.
const REL: f64 = 1e-9;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn passes_preserve_results_on_random_graphs(seed in any::<u64>(), steps in 1usize..30) {
        let g = random_graph(seed, steps);
        for p in passes::all() {
            let mut h = g.clone();
            p.apply(&mut h);
            if let Err(e) = compare_pass(p.name, &g, &h, seed ^ 1) {
                return Err(TestCaseError::fail(format!("pass {}: {e}", p.name)));
            }
        }
        let mut h = g.clone();
        Pipeline::default().run(&mut h).expect("pipeline");
        if let Err(e) = compare_pipeline(&g, &h, seed ^ 2) {
            return Err(TestCaseError::fail(format!("default pipeline: {e}")));
        }
    }
}

#[test]
fn the_comparison_detects_a_changed_output() {
    let g = random_graph(11, 10);
    let mut h = g.clone();
    let out = h.output("out0").unwrap();
    let n = h.neg(out).unwrap();
    let t = h.tanh(n).unwrap();
    h.outputs_mut()[0].node = t;
    assert!(compare_eval(&g, &h, 1, REL).is_err());
}

/// The documented exception of the sparse cross-entropy rule: with a label outside `0..c`
/// the hand-written pattern gives 0 (one_hot is a zero row) and the fused op gives NaN.
#[test]
fn out_of_range_labels_are_the_documented_exception() {
    use gradlift::interp::{eval, Array};
    use gradlift::TensorType;
    let mut g = gradlift::Graph::new("t");
    let logits = g.input("logits", TensorType::f32([2, 3])).unwrap();
    let labels = g.input("labels", TensorType::i32([2])).unwrap();
    let oh = g.one_hot(labels, 3).unwrap();
    let ls = g.log_softmax(logits, 1).unwrap();
    let m = g.mul(oh, ls).unwrap();
    let s = g.sum(m, &[1], false).unwrap();
    let ce = g.neg(s).unwrap();
    g.add_output("ce", ce).unwrap();
    let mut h = g.clone();
    passes::simplify::run(&mut h);
    let ce_after = h.output("ce").unwrap();
    assert_eq!(h[ce_after].op.name(), "sparse_softmax_cross_entropy");
    let feeds = std::collections::HashMap::from([
        (
            logits,
            Array::<f64>::new([2, 3], vec![0.5, -1.0, 2.0, 0.0, 1.0, -0.5]).unwrap(),
        ),
        (labels, Array::<f64>::new([2], vec![1.0, 7.0]).unwrap()),
    ]);
    let before = eval(&g, &feeds)
        .unwrap()
        .output(&g, "ce")
        .unwrap()
        .data
        .clone();
    let after = eval(&h, &feeds)
        .unwrap()
        .output(&h, "ce")
        .unwrap()
        .data
        .clone();
    assert!(common::passes::close(before[0], after[0], REL));
    assert_eq!(before[1], 0.0);
    assert!(after[1].is_nan());
}
