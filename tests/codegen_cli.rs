//! The CLI's code generation commands: `gradlift run FILE [--seed N]` prints the same outputs
//! as `gradlift eval` (within f32 tolerance) plus compile time; `gradlift dump --format clif`
//! prints the Cranelift IR.

use std::process::Command;

fn gradlift(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `name: type = value` lines with a scalar value, as (name, value).
fn scalars(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let (_, v) = rest.split_once(" = ")?;
            Some((name.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn run_prints_the_interpreters_outputs_and_compile_time() {
    for file in ["ir/mlp.ir", "ir/cnn.ir", "ir/linear_regression.ir"] {
        if !std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(file)
            .exists()
        {
            continue;
        }
        let (ok, run, err) = gradlift(&["run", file, "--seed", "3"]);
        assert!(ok, "{file}: {err}");
        assert!(
            run.contains("compiled") && run.contains("Cranelift"),
            "{run}"
        );
        let (ok, eval, err) = gradlift(&["eval", file, "--seed", "3"]);
        assert!(ok, "{file}: {err}");
        let (r, e) = (scalars(&run), scalars(&eval));
        assert!(!e.is_empty(), "{eval}");
        assert_eq!(r.len(), e.len(), "{run}\n{eval}");
        for ((n1, v1), (n2, v2)) in r.iter().zip(&e) {
            assert_eq!(n1, n2);
            assert!(
                (v1 - v2).abs() <= 1e-4 * (1.0 + v2.abs()),
                "{file} {n1}: {v1} vs {v2}"
            );
        }
    }
}

#[test]
fn dump_clif_prints_the_function() {
    let (ok, out, err) = gradlift(&["dump", "ir/ops/matmul.ir", "--format", "clif"]);
    if !std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ir/ops/matmul.ir")
        .exists()
    {
        return;
    }
    assert!(ok, "{err}");
    assert!(out.contains("function u0:0(i64)"), "{out}");
    assert!(out.contains(" = gl_gemm"), "{out}");
}

#[test]
fn run_reports_bad_files_as_errors() {
    let dir = std::env::temp_dir().join("gradlift_codegen_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.ir");
    std::fs::write(&f, "graph g {\nbody:\n  %a: f32[] = nonsense\n}\n").unwrap();
    let (ok, _, err) = gradlift(&["run", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.ir:3"), "{err}");
}

/// `run` compiles what training compiles: the default pipeline unless `--passes` says
/// otherwise; the printed outputs and updates are the same either way (the fused Adam kernel of
/// `fuse_adam.ir` agrees with the 22 plain nodes to the printed digits).
#[test]
fn run_optimizes_by_default() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/ir/passes/fuse_adam.ir");
    let (ok, fused, err) = gradlift(&["run", file]);
    assert!(ok, "{err}");
    let (ok, plain, err) = gradlift(&["run", file, "--passes", "none"]);
    assert!(ok, "{err}");
    assert!(fused.contains("compiled 13 nodes"), "{fused}");
    assert!(plain.contains("compiled 22 nodes"), "{plain}");
    let values = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("compiled"))
            .map(String::from)
            .collect()
    };
    assert_eq!(values(&fused), values(&plain));
}
