//! The pipeline machinery: pass lookup, dumps numbered in order, the check after each pass.

mod common;

use gradlift::passes::{self, by_name, DumpAfter, Pass, PassError, PassReport, Pipeline};
use gradlift::Graph;
use std::path::Path;

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gradlift-passes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn lookup_by_name() {
    for p in passes::all() {
        assert_eq!(by_name(p.name).map(|q| q.name), Some(p.name));
    }
    assert!(by_name("nope").is_none());
    let err = Pipeline::new(&["cse", "nope"]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"nope\"") && msg.contains("cse"), "{msg}");
    let d = Pipeline::default();
    let names: Vec<&str> = d.passes().iter().map(|p| p.name).collect();
    assert_eq!(names, passes::DEFAULT_PIPELINE);
}

#[test]
fn dump_after_all_writes_one_file_per_pass_in_order() {
    let dir = scratch_dir("all");
    let mut g = common::passes::random_graph(3, 20);
    let before = common::passes::print(&g);
    let reports = Pipeline::default()
        .dump_to(&dir, DumpAfter::All)
        .run(&mut g)
        .unwrap();
    let mut want = vec!["00-input.ir".to_string()];
    for (i, name) in passes::DEFAULT_PIPELINE.iter().enumerate() {
        want.push(format!("{:02}-{name}.ir", i + 1));
    }
    assert_eq!(files(&dir), want);
    assert_eq!(reports.len(), passes::DEFAULT_PIPELINE.len());
    let input = std::fs::read_to_string(dir.join("00-input.ir")).unwrap();
    assert_eq!(input, format!("# input\n{before}"));
    let last = std::fs::read_to_string(dir.join(want.last().unwrap())).unwrap();
    let header = reports.last().unwrap().to_string();
    assert!(last.starts_with(&format!("# {}", header.lines().next().unwrap())));
    assert!(last.ends_with(&common::passes::print(&g)));
    // A dump parses back to the graph it shows.
    let parsed = gradlift::text::parse(&last, "dump").unwrap();
    assert_eq!(common::passes::print(&parsed), common::passes::print(&g));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dump_after_selected_passes() {
    let dir = scratch_dir("some");
    let mut g = common::passes::random_graph(4, 10);
    let after = DumpAfter::parse("cse").unwrap();
    Pipeline::new(&["cse", "dce", "cse"])
        .unwrap()
        .dump_to(&dir, after)
        .run(&mut g)
        .unwrap();
    assert_eq!(files(&dir), ["00-input.ir", "01-cse.ir", "03-cse.ir"]);
    assert!(DumpAfter::parse("cse,bogus").is_err());
    assert_eq!(DumpAfter::parse("all").unwrap(), DumpAfter::All);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn breaks_types(g: &mut Graph) -> PassReport {
    // Claims the first body node has a wrong shape.
    let id = g
        .node_ids()
        .into_iter()
        .find(|&id| !g[id].op.is_leaf())
        .unwrap();
    g.get_mut(id).unwrap().ty.shape.0.push(7);
    let mut r = PassReport::new("breaks_types");
    r.count("broken", 1);
    r
}

#[test]
fn a_pass_that_breaks_the_graph_is_caught_and_named() {
    let mut g = common::passes::random_graph(5, 10);
    let p = Pipeline::with_passes(vec![
        by_name("cse").unwrap(),
        Pass {
            name: "breaks_types",
            summary: "test pass",
            run: breaks_types,
        },
        by_name("dce").unwrap(),
    ]);
    assert!(p.verify, "tests run with the check on");
    match p.run(&mut g) {
        Err(PassError::Invalid { pass, errors }) => {
            assert_eq!(pass, "breaks_types");
            assert!(!errors.is_empty());
        }
        other => panic!("expected an invalid-graph error, got {other:?}"),
    }
}

#[test]
fn an_invalid_input_graph_is_refused_before_any_pass() {
    let mut g = common::passes::random_graph(6, 5);
    let id = g.find("x0").unwrap();
    g.get_mut(id).unwrap().name = Some("bad name".to_string());
    match Pipeline::default().run(&mut g) {
        Err(PassError::InvalidInput { errors }) => assert!(!errors.is_empty()),
        other => panic!("expected an invalid-input error, got {other:?}"),
    }
}

#[test]
fn report_display() {
    let mut r = PassReport::new("cse");
    assert_eq!(r.to_string(), "cse: no change");
    r.count("merged", 2);
    r.count("nothing", 0);
    r.remark("kept %x");
    assert!(r.changed());
    assert_eq!(r.total(), 2);
    assert_eq!(r.to_string(), "cse: merged=2\n  kept %x");
}
