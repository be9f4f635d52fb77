//! Running the `gradlift` binary in tests: its exit code and output, the common success and
//! failure checks, and fresh scratch directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit code, stdout and stderr of `gradlift ARGS` run at the repository root.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradlift"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the gradlift binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stdout of `gradlift ARGS`, which must succeed.
pub fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "gradlift {args:?} failed:\n{out}\n{err}");
    out
}

/// The stderr of `gradlift ARGS`, which must fail with exit code 1, without a panic and
/// before printing anything on stdout.
pub fn fails(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 1, "gradlift {args:?} should fail:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.is_empty(), "nothing on stdout before the error: {out}");
    err
}

/// A fresh, empty scratch directory called `name` in the build's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every tensor of the checkpoint at `path` as raw bits, by name (for bit-for-bit
/// comparisons of trained weights).
pub fn checkpoint_bits(path: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    use gradlift::checkpoint::{self, TensorData};
    let c = checkpoint::load(path).unwrap();
    c.tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(v) => (t.name.clone(), v.iter().map(|x| x.to_bits()).collect()),
            TensorData::I32(v) => (t.name.clone(), v.iter().map(|&x| x as u32).collect()),
        })
        .collect()
}
