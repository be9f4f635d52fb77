//! The `ir/` corpus: every file parses and verifies, is written in canonical form (so its
//! `%N` numbers are the printed ones), and together the files use every op.

mod common;

use common::load;
use gradlift::op::all_op_names;
use gradlift::text;
use gradlift::verify::verify;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `.ir` file under `ir/`, sorted.
fn corpus() -> Vec<PathBuf> {
    common::ir_files(&common::ir_dir())
}

#[test]
fn corpus_has_the_models() {
    let names: Vec<String> = corpus()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for model in ["linear_regression.ir", "mlp.ir", "cnn.ir", "rnn.ir"] {
        assert!(
            names.iter().any(|n| n == model),
            "{model} missing: {names:?}"
        );
    }
}

#[test]
fn every_file_parses_and_verifies() {
    for path in corpus() {
        let (_, g) = load(&path);
        if let Err(e) = verify(&g) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn every_file_is_canonical() {
    for path in corpus() {
        let (src, g) = load(&path);
        let without_comments: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            text::print(&g),
            without_comments,
            "{} is not in canonical form",
            path.display()
        );
    }
}

#[test]
fn corpus_uses_every_op() {
    let mut used = BTreeSet::new();
    for path in corpus() {
        let (_, g) = load(&path);
        for id in g.node_ids() {
            used.insert(g[id].op.name());
        }
    }
    let missing: Vec<&str> = all_op_names().filter(|n| !used.contains(n)).collect();
    assert!(missing.is_empty(), "ops used by no .ir file: {missing:?}");
}

#[test]
fn models_have_the_keras_parameter_counts() {
    // Keras `model.summary()` totals of the reference programs.
    for (file, count) in [
        ("linear_regression.ir", 2),
        ("mlp.ir", 784 * 128 + 128 + 128 * 10 + 10),
        ("cnn.ir", 3 * 3 * 32 + 32 + 5408 * 128 + 128 + 128 * 10 + 10),
        ("rnn.ir", 28 * 64 + 64 * 64 + 64 + 64 * 10 + 10),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ir").join(file);
        let (_, g) = load(&path);
        let n: usize = g.params().iter().map(|&p| g[p].ty.shape.numel()).sum();
        assert_eq!(n, count, "{file}");
        let loss = g
            .output("loss")
            .unwrap_or_else(|| panic!("{file}: no loss"));
        assert_eq!(g[loss].ty.to_string(), "f32[]", "{file}");
    }
}
