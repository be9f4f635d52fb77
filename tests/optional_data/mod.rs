//! Helpers shared by the tests that need data the repository does not ship (the full MNIST):
//! where to find it, and how to say that a test is skipped without it. A skipped test passes
//! and prints `skipped: <reason>` on stderr (past the test harness's capture, so it is seen
//! without `--nocapture`); missing optional data never makes a test panic.

use std::io::Write;
use std::path::PathBuf;

/// The directory of the full MNIST: `$MNIST_DIR`, else `../shared/data/mnist` next to the
/// crate root.
pub fn mnist_dir() -> PathBuf {
    std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist"))
}

/// The full MNIST directory when it holds the four IDX files (each plain or gzipped), else
/// the reason it cannot be used.
pub fn full_mnist() -> Result<PathBuf, String> {
    let dir = mnist_dir();
    if !dir.is_dir() {
        return Err(format!(
            "no MNIST directory at {} (set MNIST_DIR to a directory of the four IDX files)",
            dir.display()
        ));
    }
    for name in gradlift::data::MNIST_FILES {
        let (plain, gz) = (dir.join(name), dir.join(format!("{name}.gz")));
        if !plain.is_file() && !gz.is_file() {
            return Err(format!(
                "{} has no {name} (nor {name}.gz); set MNIST_DIR to a directory of the four IDX files",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

/// Reports that the calling test is skipped, and why: `skipped: <reason>` on stderr.
pub fn skip(test: &str, reason: &str) {
    // written to the stderr handle itself, which the harness does not capture
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {reason}");
}
