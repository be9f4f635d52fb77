//! The `ir/` corpus models (each outputs a scalar `loss`): the gradient graph with respect to
//! every param is snapshotted as text (so a change to any VJP rule shows as a readable diff),
//! it verifies and round-trips through the text format, and its values agree with central
//! differences of the loss (f64, through the interpreter) on a few random coordinates of
//! every param. Tolerance: see `autodiff_common/mod.rs`.

mod autodiff_common;

use autodiff_common::{agree, coords, loss_value, uniform, Report, STEP};
use gradlift::autodiff;
use gradlift::init::Rng;
use gradlift::interp::{eval, Array};
use gradlift::{text, DType, Graph, NodeId, Op};
use std::collections::HashMap;

/// Coordinates checked per param.
const COORDS_PER_PARAM: usize = 3;

fn load(path: &std::path::Path) -> Graph {
    let src = std::fs::read_to_string(path).expect("read");
    let name = format!(
        "ir/{}",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("?")
    );
    text::parse(&src, &name).unwrap_or_else(|e| panic!("{e}"))
}

/// Random feeds for every input: f32 inputs uniform in `[-1, 1)`, i32 inputs are labels in
/// `0..classes`, where `classes` is the width of the logits they are compared with.
fn feeds(g: &Graph, rng: &mut Rng) -> HashMap<NodeId, Array<f64>> {
    let mut f = HashMap::new();
    for id in g.inputs() {
        let ty = &g[id].ty;
        let n = ty.shape.numel();
        let data = match ty.dtype {
            DType::F32 => uniform(rng, n, -1.0, 1.0),
            DType::I32 => {
                let classes = g
                    .users(id)
                    .into_iter()
                    .find(|&u| matches!(g[u].op, Op::SparseSoftmaxCrossEntropy))
                    .map(|u| g[g.operands(u)[0]].ty.shape.0[1])
                    .unwrap_or(2);
                (0..n).map(|_| rng.below(classes as u64) as f64).collect()
            }
        };
        f.insert(id, Array::new(ty.shape.clone(), data).expect("feed"));
    }
    f
}

/// Whether the corpus models are present (they land from another branch; until then the
/// corpus tests have nothing to check and say so).
fn corpus_present() -> bool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir");
    let found = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "ir"))
        })
        .unwrap_or(false);
    if !found {
        eprintln!("no ir/*.ir model yet: nothing to check");
    }
    found
}

#[test]
fn gradient_graph_snapshots() {
    if !corpus_present() {
        return;
    }
    insta::glob!("../ir", "*.ir", |path| {
        let mut g = load(path);
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
    if !corpus_present() {
        return;
    }
    insta::glob!("../ir", "*.ir", |path| {
        let forward = load(path);
        let loss = forward.output("loss").expect("loss output");
        let mut g = forward.clone();
        let named = autodiff::grad_all_params(&mut g, "loss", None).unwrap();
        let mut rng = Rng::new(2024);
        let base_feeds = feeds(&forward, &mut rng);
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
