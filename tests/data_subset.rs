//! Regenerates the shipped MNIST subset `data/mnist-subset/` from the full MNIST files.
//! Ignored by default (it needs the full data set); run it with
//! `MNIST_DIR=/path/to/mnist cargo test --test data_subset -- --ignored`. Without the full
//! MNIST it is skipped, saying so (`skipped: <reason>` on stderr).

mod optional_data;

use gradlift::data::{Idx, IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES};

/// Examples kept from the training and the test files.
const KEEP: [usize; 2] = [6000, 1000];

#[test]
#[ignore = "needs the full MNIST files (MNIST_DIR, default ../shared/data/mnist)"]
fn make_mnist_subset() {
    let src = match optional_data::full_mnist() {
        Ok(dir) => dir,
        Err(reason) => return optional_data::skip("make_mnist_subset", &reason),
    };
    let dst = gradlift::data::default_dir();
    std::fs::create_dir_all(&dst).expect("create the subset directory");
    for (i, name) in MNIST_FILES.iter().enumerate() {
        let keep = KEEP[i / 2];
        let magic = if i % 2 == 0 {
            IMAGES_MAGIC
        } else {
            LABELS_MAGIC
        };
        let plain = src.join(name);
        let path = if plain.is_file() {
            plain
        } else {
            src.join(format!("{name}.gz"))
        };
        // the files are there: an unreadable one is a real failure
        let full = Idx::read(&path, magic).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            full.dims[0] >= keep,
            "{}: {} examples, fewer than the {keep} the subset keeps",
            path.display(),
            full.dims[0]
        );
        let per_example: usize = full.dims[1..].iter().product();
        let mut dims = full.dims.clone();
        dims[0] = keep;
        let sub = Idx {
            dims,
            data: full.data[..keep * per_example].to_vec(),
        };
        let out = dst.join(format!("{name}.gz"));
        sub.write_gz(&out)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
}
