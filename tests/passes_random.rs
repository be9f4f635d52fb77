//! Passes on random graphs: each pass is idempotent (a second run reports no change and the
//! graph prints identically), the pipeline keeps the graph valid, and the generator really
//! produces the patterns the rules look for.

mod common;

use common::passes::{print, random_graph};
use gradlift::passes::{self, check_graph, Pipeline};
use proptest::prelude::*;
use std::collections::BTreeMap;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_pass_is_idempotent(seed in any::<u64>(), steps in 1usize..30) {
        let g0 = random_graph(seed, steps);
        for p in passes::all() {
            let mut g = g0.clone();
            p.apply(&mut g);
            prop_assert!(check_graph(&g).is_empty(), "{} broke the graph: {:?}", p.name, check_graph(&g));
            let once = print(&g);
            let again = p.apply(&mut g);
            prop_assert!(!again.changed(), "second run of {} changed: {}", p.name, again);
            prop_assert_eq!(print(&g), once, "second run of {} changed the text", p.name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn one_run_of_the_default_pipeline_reaches_a_fixpoint(seed in any::<u64>(), steps in 1usize..30) {
        let mut g = random_graph(seed, steps);
        Pipeline::default().run(&mut g).expect("pipeline");
        let once = print(&g);
        let again = Pipeline::default().run(&mut g).expect("pipeline");
        for r in &again {
            prop_assert!(!r.changed(), "second pipeline run: {}", r);
        }
        prop_assert_eq!(print(&g), once);
    }
}

#[test]
fn random_graphs_exercise_the_rules() {
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..32 {
        let mut g = random_graph(seed, 30);
        for r in Pipeline::default()
            .run(&mut g)
            .expect("pipeline keeps the graph valid")
        {
            for (k, n) in r.counts {
                *fired.entry(format!("{}.{k}", r.pass)).or_insert(0) += n;
            }
        }
    }
    for want in [
        "simplify.mul_by_one",
        "simplify.add_zero",
        "simplify.sub_zero",
        "simplify.div_by_one",
        "simplify.neg_neg",
        "simplify.finite_const_mul_zero",
        "simplify.transpose_identity",
        "simplify.transpose_transpose",
        "simplify.reshape_reshape",
        "simplify.broadcast_same_shape",
        "simplify.broadcast_broadcast",
        "simplify.log_softmax",
        "simplify.sparse_softmax_cross_entropy",
        "simplify.softmax_cross_entropy",
        "fold.folded",
        "cse.merged",
        "dce.removed",
    ] {
        assert!(
            fired.contains_key(want),
            "{want} never fired; fired: {fired:?}"
        );
    }
}
