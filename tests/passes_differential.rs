//! Every pass preserves results: the interpreter (f64) gives the same outputs and update values
//! before and after each pass and after the whole default pipeline, within 1e-9 relative, on
//! random inputs, for random graphs.

mod passes_util;

use gradlift::passes::{self, Pipeline};
use passes_util::{compare_eval, random_graph};
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
            (p.run)(&mut h);
            if let Err(e) = compare_eval(&g, &h, seed ^ 1, REL) {
                return Err(TestCaseError::fail(format!("pass {}: {e}", p.name)));
            }
        }
        let mut h = g.clone();
        Pipeline::default().run(&mut h).expect("pipeline");
        if let Err(e) = compare_eval(&g, &h, seed ^ 2, REL) {
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
