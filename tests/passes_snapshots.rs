//! For each focused file `ir/passes/*.ir` (one per rule or pass), a snapshot of the graph text
//! after the pass its first line names (`# test: simplify`, as Cranelift's filetests name
//! theirs), with the pass's report: a change to another pass does not change the file's
//! snapshot. The model and per-op files go through the whole default pipeline, and end with
//! the memory plan summary of the result.

use gradlift::passes::{self, check_graph, plan::plan, Pipeline};
use gradlift::text;
use std::fmt::Write;

/// The passes named by the `# test: a, b` first line of an `ir/passes` file.
fn tested_passes(src: &str, file: &str) -> Vec<String> {
    let first = src.lines().next().unwrap_or_default();
    let Some(names) = first.strip_prefix("# test:") else {
        panic!("{file}: the first line must be `# test: PASS` (found `{first}`)");
    };
    let names: Vec<String> = names.split(',').map(|n| n.trim().to_string()).collect();
    for n in &names {
        assert!(
            passes::by_name(n).is_some(),
            "{file}: `# test: {n}` names no pass"
        );
    }
    names
}

#[test]
fn rule_files_through_their_pass() {
    insta::glob!("../ir/passes", "*.ir", |path| {
        let src = std::fs::read_to_string(path).expect("readable .ir file");
        let file = format!(
            "ir/passes/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let names = tested_passes(&src, &file);
        let mut g = text::parse(&src, &file).unwrap_or_else(|e| panic!("{e}"));
        assert!(check_graph(&g).is_empty(), "{file}: {:?}", check_graph(&g));
        let mut out = String::new();
        let _ = writeln!(out, "=== input ({} nodes)\n{}", g.len(), text::print(&g));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for p in Pipeline::new(&names).expect("known passes").passes() {
            let report = p.apply(&mut g);
            let errors = check_graph(&g);
            assert!(errors.is_empty(), "{file} after {}: {errors:?}", p.name);
            let _ = writeln!(
                out,
                "=== after {} ({} nodes): {report}\n{}",
                p.name,
                g.len(),
                text::print(&g)
            );
        }
        insta::assert_snapshot!(out);
    });
}

/// Every pass is the `# test:` pass of some file in `ir/passes`.
#[test]
fn every_pass_has_a_rule_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/passes");
    let mut tested = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&dir).expect("ir/passes") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "ir") {
            let src = std::fs::read_to_string(&path).expect("readable .ir file");
            tested.extend(tested_passes(&src, &path.display().to_string()));
        }
    }
    for p in passes::all() {
        assert!(
            tested.contains(p.name),
            "no ir/passes file tests {}",
            p.name
        );
    }
}

/// Every simplify rule has its file `ir/passes/RULE.ir` on which `simplify` fires that rule;
/// `cse.ir`, `dce.ir`, `fold.ir` and `batch_matmuls.ir` make their passes change something.
#[test]
fn every_rule_and_pass_has_a_file_that_exercises_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/passes");
    let load = |stem: &str| {
        let path = dir.join(format!("{stem}.ir"));
        let src =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text::parse(&src, stem).unwrap_or_else(|e| panic!("{e}"))
    };
    for rule in gradlift::passes::simplify::rules() {
        let mut g = load(rule.name);
        let report = gradlift::passes::simplify::run(&mut g);
        assert!(
            report.counts.get(rule.name).is_some_and(|&n| n > 0),
            "{}.ir does not fire {}: {report}",
            rule.name,
            rule.name
        );
    }
    for pass in ["cse", "dce", "fold", "batch_matmuls"] {
        let mut g = load(pass);
        let p = gradlift::passes::by_name(pass).unwrap();
        let report = p.apply(&mut g);
        assert!(report.changed(), "{pass}.ir: {report}");
    }
}

/// Every other `.ir` file under `ir/` (the models and the per-op files), and the Adam training
/// step of each model but the unrolled RNN (forward + autodiff gradients + `optim` Adam, the
/// graphs the closing figures are about): the report of each pass of the default pipeline and
/// the graph after each pass that changed it (a pass that changed nothing prints only its
/// report), then the memory plan of the result.
#[test]
fn corpus_files_through_the_default_pipeline() {
    insta::glob!("../ir", "{*.ir,ops/*.ir}", |path| {
        let src = std::fs::read_to_string(path).expect("readable .ir file");
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path)
            .display()
            .to_string();
        let g = text::parse(&src, &rel).unwrap_or_else(|e| panic!("{e}"));
        let mut graphs = vec![("forward", g.clone())];
        let is_model = g.output("loss").is_some() && !g.params().is_empty();
        if is_model && !rel.ends_with("rnn_unrolled.ir") && g.updates().is_empty() {
            graphs.push(("adam training step", adam_step(g)));
        }
        let mut out = String::new();
        for (what, mut g) in graphs {
            let _ = writeln!(
                out,
                "##### {rel}, {what}\n=== input ({} nodes)\n{}",
                g.len(),
                text::print(&g)
            );
            for p in Pipeline::default().passes() {
                let report = p.apply(&mut g);
                let errors = check_graph(&g);
                assert!(errors.is_empty(), "{rel} after {}: {errors:?}", p.name);
                if report.changed() {
                    let _ = writeln!(
                        out,
                        "=== after {} ({} nodes): {report}\n{}",
                        p.name,
                        g.len(),
                        text::print(&g)
                    );
                } else {
                    let _ = writeln!(out, "=== after {}: {report}", p.name);
                }
            }
            let _ = writeln!(out, "=== plan: {}\n", plan(&g).expect("acyclic"));
        }
        insta::assert_snapshot!(out);
    });
}

/// `g` with the gradient of `loss` w.r.t. every param and Adam updates (learning rate input
/// `lr`); gradients are not outputs.
fn adam_step(mut g: gradlift::Graph) -> gradlift::Graph {
    let adam = gradlift::optim::Optimizer::adam();
    gradlift::optim::training_step(&mut g, "loss", &adam).expect("training step");
    g
}
