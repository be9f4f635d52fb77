//! The `ir/` corpus models (each outputs a scalar `loss`): the gradient graph with respect to
//! every param is snapshotted as text (so a change to any VJP rule shows as a readable diff),
//! it verifies and round-trips through the text format, and its values agree with central
//! differences of the loss (f64, through the interpreter) on a few random coordinates of
//! every param. Tolerance: see `common/fd.rs`.

mod common;

use common::fd::{agree, coords, loss_value, Report, STEP};
use gradlift::autodiff;
use gradlift::init::Rng;
use gradlift::interp::eval;
use gradlift::text;

/// Coordinates checked per param.
const COORDS_PER_PARAM: usize = 3;

#[test]
fn gradient_graph_snapshots() {
    insta::glob!("../ir", "*.ir", |path| {
        let (_, mut g) = common::load(path);
        let forward = g.len();
        let named = autodiff::grad_all_params(&mut g, "loss", None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(e) = gradlift::verify::verify(&g) {
            panic!(
                "{}: the gradient graph does not verify: {e}",
                path.display()
            );
        }
        assert_eq!(named.len(), g.params().len());
        assert!(named.iter().all(|n| !n.independent));
        let printed = text::print(&g);
        let again = text::parse(&printed, "printed").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            text::print(&again),
            printed,
            "the gradient graph round-trips"
        );
        let header = format!(
            "# {} nodes forward, {} with the gradient\n",
            forward,
            g.len()
        );
        insta::assert_snapshot!(header + &printed);
    });
}

#[test]
fn whole_model_gradient_checks() {
    insta::glob!("../ir", "*.ir", |path| {
        let (_, forward) = common::load(path);
        let loss = forward.output("loss").expect("loss output");
        let mut g = forward.clone();
        let named = autodiff::grad_all_params(&mut g, "loss", None).unwrap();
        let mut rng = Rng::new(2024);
        let base_feeds = common::random_feeds(&forward, &mut rng, 1.0);
        let values = eval::<f64>(&g, &base_feeds).unwrap_or_else(|e| panic!("{e}"));
        let mut report = Report::default();
        for n in &named {
            let analytic = &values.get(n.grad).expect("gradient value").data;
            let base = values.get(n.wrt).expect("param value").clone();
            for k in coords(&mut rng, base.data.len(), COORDS_PER_PARAM) {
                let x = base.data[k];
                let h = STEP * x.abs().max(1.0);
                let mut f = base_feeds.clone();
                let mut p = base.clone();
                p.data[k] = x + h;
                f.insert(n.wrt, p.clone());
                let lp = loss_value(&forward, loss, &f);
                p.data[k] = x - h;
                f.insert(n.wrt, p);
                let lm = loss_value(&forward, loss, &f);
                let fd = (lp - lm) / (2.0 * h);
                assert!(
                    agree(&mut report, analytic[k], fd),
                    "{}: d loss / d {}[{k}]: autodiff {} vs central difference {fd}",
                    path.display(),
                    n.name,
                    analytic[k]
                );
            }
        }
        let expected: usize = named
            .iter()
            .map(|n| g[n.wrt].ty.shape.numel().min(COORDS_PER_PARAM))
            .sum();
        assert_eq!(report.checked, expected);
        if std::env::var_os("FD_REPORT").is_some() {
            eprintln!("{}: {report:?}", path.display());
        }
    });
}

/// The gradient of an embedding lookup: the table's gradient is one `scatter_add` of the
/// cotangent rows at the token ids (the ids get none); printed as a snapshot.
#[test]
fn embedding_gradient_snapshot() {
    let src = "graph embedding {
inputs:
  %ids: i32[2,3] = input
  %y: f32[2,4] = input
params:
  %table: f32[5,4] = param uniform(high=0.05, low=-0.05, seed=1)
body:
  %rows: f32[2,3,4] = gather %table, %ids, axis=0
  %bag: f32[2,4] = reduce_mean %rows, axes=[1], keepdims=false
  %d: f32[2,4] = sub %bag, %y
  %d2: f32[2,4] = mul %d, %d
  %loss: f32[] = reduce_mean %d2, axes=[0,1], keepdims=false
outputs:
  loss = %loss
}
";
    let mut g = text::parse(src, "embedding.ir").unwrap_or_else(|e| panic!("{e}"));
    let named = autodiff::grad_all_params(&mut g, "loss", None).unwrap();
    gradlift::verify::verify(&g).unwrap();
    assert_eq!(named.len(), 1);
    let scatters: Vec<_> = g
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(g[id].op, gradlift::Op::ScatterAdd { .. }))
        .collect();
    assert_eq!(scatters.len(), 1, "{}", text::print(&g));
    insta::assert_snapshot!(text::print(&g));
}
