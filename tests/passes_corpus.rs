//! The passes on every `.ir` file under `ir/` (the models `ir/*.ir`, the per-op files
//! `ir/ops/*.ir`, the rule files `ir/passes/*.ir`): each pass and the default pipeline preserve
//! the interpreter's results on random inputs (`compare_pass`: each pass in f64
//! within 1e-9 relative, constant folding exactly in f32; `compare_pipeline`: the pipeline in
//! f32 within 1e-4), and each pass is idempotent. Passes with zero files too.

mod common;

use gradlift::passes::{self, check_graph, Pipeline};

use common::corpus;
use common::passes::{compare_pass, compare_pipeline, print};

#[test]
fn passes_preserve_results_on_the_corpus() {
    for (name, g) in corpus() {
        for p in passes::all() {
            let mut h = g.clone();
            p.apply(&mut h);
            assert!(
                check_graph(&h).is_empty(),
                "{name}: {} broke the graph",
                p.name
            );
            if let Err(e) = compare_pass(p.name, &g, &h, 7) {
                panic!("{name}: pass {}: {e}", p.name);
            }
        }
        let mut h = g.clone();
        let reports = Pipeline::default()
            .run(&mut h)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = compare_pipeline(&g, &h, 8) {
            panic!("{name}: default pipeline: {e}");
        }
        let summary: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
        eprintln!(
            "{name}: {} -> {} nodes; {}",
            g.len(),
            h.len(),
            summary.join("; ")
        );
    }
}

#[test]
fn passes_are_idempotent_on_the_corpus() {
    for (name, g) in corpus() {
        for p in passes::all() {
            let mut h = g.clone();
            p.apply(&mut h);
            let once = print(&h);
            let again = p.apply(&mut h);
            assert!(
                !again.changed(),
                "{name}: second run of {}: {again}",
                p.name
            );
            assert_eq!(
                print(&h),
                once,
                "{name}: second run of {} changed the text",
                p.name
            );
        }
    }
}
