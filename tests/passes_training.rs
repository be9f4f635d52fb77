//! The passes on training steps of the corpus models: each model's loss is differentiated with
//! respect to every param (autodiff) and an SGD update `p <- p - 0.1 * dp` is added; the
//! default pipeline must keep outputs and updates equal (interpreter, f32 as the compiled code computes, 1e-4 relative) and
//! remove nodes (at least the constant chain that seeds the gradient of the mean loss).

mod common;

use common::passes::compare_pipeline;
use gradlift::passes::{plan::plan, Pipeline};
use gradlift::Graph;

/// The SGD training step of `ir/NAME.ir` (learning rate 0.1).
fn training_step(name: &str) -> Graph {
    let (_, g) = common::load(&common::ir_dir().join(format!("{name}.ir")));
    common::sgd_step(g, 0.1)
}

#[test]
fn pipeline_preserves_and_shrinks_training_steps() {
    for name in ["linear_regression", "mlp", "cnn", "rnn"] {
        let g = training_step(name);
        let mut h = g.clone();
        let reports = Pipeline::default()
            .run(&mut h)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = compare_pipeline(&g, &h, 5) {
            panic!("{name}: {e}");
        }
        assert!(
            h.len() < g.len(),
            "{name}: {} -> {} nodes",
            g.len(),
            h.len()
        );
        let (p0, p1) = (plan(&g).unwrap(), plan(&h).unwrap());
        eprintln!("{name}: {} -> {} nodes", g.len(), h.len());
        for r in &reports {
            eprintln!("  {}", r.to_string().replace('\n', "\n  "));
        }
        eprintln!("  plan before: {p0}\n  plan after:  {p1}");
    }
}
