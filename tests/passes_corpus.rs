//! The passes on every `.ir` file under `ir/` (the models `ir/*.ir`, the per-op files
//! `ir/ops/*.ir`, the rule files `ir/passes/*.ir`): each pass and the default pipeline preserve
//! the interpreter's results on random inputs (`passes_util::compare_pass`: each pass in f64
//! within 1e-9 relative, constant folding exactly in f32; `compare_pipeline`: the pipeline in
//! f32 within 1e-4), and each pass is idempotent. Passes with zero files too.

mod passes_util;

use gradlift::passes::{self, check_graph, Pipeline};
use gradlift::{text, Graph};
use passes_util::{compare_pass, compare_pipeline, print};
use std::path::{Path, PathBuf};

/// Every `.ir` file under `dir` (recursively), sorted; none if the directory does not exist.
fn ir_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        if p.is_dir() {
            v.extend(ir_files(&p));
        } else if p.extension().is_some_and(|x| x == "ir") {
            v.push(p);
        }
    }
    v.sort();
    v
}

fn corpus() -> Vec<(String, Graph)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir");
    ir_files(&root)
        .into_iter()
        .map(|p| {
            let name = p
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(&p)
                .display()
                .to_string();
            let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            let g = text::parse(&src, &name).unwrap_or_else(|e| panic!("{e}"));
            (name, g)
        })
        .collect()
}

#[test]
fn passes_preserve_results_on_the_corpus() {
    for (name, g) in corpus() {
        for p in passes::all() {
            let mut h = g.clone();
            (p.run)(&mut h);
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
            (p.run)(&mut h);
            let once = print(&h);
            let again = (p.run)(&mut h);
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
