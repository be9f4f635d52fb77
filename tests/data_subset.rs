//! Regenerates the shipped MNIST subset `data/mnist-subset/` from the full MNIST files.
//! Ignored by default (it needs the full data set); run it with
//! `MNIST_DIR=/path/to/mnist cargo test --test data_subset -- --ignored`.

use gradlift::data::{Idx, IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES};
use std::path::PathBuf;

/// Examples kept from the training and the test files.
const KEEP: [usize; 2] = [6000, 1000];

#[test]
#[ignore = "needs the full MNIST files (MNIST_DIR, default ../shared/data/mnist)"]
fn make_mnist_subset() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = std::env::var("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/data/mnist"));
    let dst = gradlift::data::default_dir();
    std::fs::create_dir_all(&dst).unwrap();
    for (i, name) in MNIST_FILES.iter().enumerate() {
        let keep = KEEP[i / 2];
        let magic = if i % 2 == 0 {
            IMAGES_MAGIC
        } else {
            LABELS_MAGIC
        };
        let full = Idx::read(&src.join(format!("{name}.gz")), magic).unwrap_or_else(|e| {
            panic!(
                "needs the full MNIST in {} (set MNIST_DIR): {e}",
                src.display()
            )
        });
        let per_example: usize = full.dims[1..].iter().product();
        let mut dims = full.dims.clone();
        dims[0] = keep;
        let sub = Idx {
            dims,
            data: full.data[..keep * per_example].to_vec(),
        };
        sub.write_gz(&dst.join(format!("{name}.gz"))).unwrap();
    }
}
