//! The passes on training steps of the corpus models: each model's loss is differentiated with
//! respect to every param (autodiff) and an SGD update `p <- p - 0.1 * dp` is added; the
//! default pipeline must keep outputs and updates equal (interpreter, f32 as the compiled code computes, 1e-4 relative) and
//! remove nodes (at least the constant chain that seeds the gradient of the mean loss).

mod passes_util;

use gradlift::passes::{plan::plan, Pipeline};
use gradlift::{autodiff, text, Graph};
use passes_util::compare_pipeline;

/// The SGD training step of `ir/NAME.ir`.
fn training_step(name: &str) -> Graph {
    let path = format!("{}/ir/{name}.ir", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut g = text::parse(&src, &path).unwrap_or_else(|e| panic!("{e}"));
    let loss = g.output("loss").expect("the model has a loss output");
    let params = g.params();
    let grads = autodiff::grad(&mut g, loss, &params).unwrap_or_else(|e| panic!("{e}"));
    let lr = g.scalar(0.1);
    for (&p, d) in params.iter().zip(grads) {
        let step = g.mul(d, lr).unwrap();
        let new = g.sub(p, step).unwrap();
        g.add_update(p, new).unwrap();
    }
    g
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
