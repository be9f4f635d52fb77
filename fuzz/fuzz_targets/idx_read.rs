//! The IDX dataset reader, plain and gzipped (`Idx::read` detects gzip by its magic bytes,
//! reads several members, refuses trailing bytes and checks the header's size before it
//! decompresses), the in-memory decoder for any rank, and a dataset built from what was read
//! (`Dataset::from_idx`, a batch of it). Any file gives data or an error, never a panic; what
//! is read holds exactly the bytes its header declares and encodes back to the plain input.
#![no_main]

use gradlift::data::{Dataset, Idx, IMAGES_MAGIC, LABELS_MAGIC};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A file of this process in the temporary directory (the reader reads files).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("gradlift-fuzz-{}.idx", std::process::id()))
    })
}

/// The largest dataset the target builds from a header (`n` may be huge with 0-pixel images).
const MAX_EXAMPLES: usize = 1 << 16;

fn check(idx: &Idx, plain: Option<&[u8]>) {
    let count: usize = idx.dims.iter().product();
    assert_eq!(
        idx.data.len(),
        count,
        "data length against the header's dimensions"
    );
    if let Some(plain) = plain {
        assert_eq!(
            idx.to_bytes(),
            plain,
            "the decoded file does not encode back to itself"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let gzipped = data.starts_with(&[0x1f, 0x8b]);
    let plain = (!gzipped).then_some(data);
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch file");
    for magic in [IMAGES_MAGIC, LABELS_MAGIC] {
        match Idx::read(path, magic) {
            Ok(idx) => {
                check(&idx, plain);
                if magic == IMAGES_MAGIC && idx.dims[0] <= MAX_EXAMPLES {
                    let n = idx.dims[0];
                    let labels = Idx {
                        dims: vec![n],
                        data: (0..n).map(|i| (i % 10) as u8).collect(),
                    };
                    if let Ok(d) = Dataset::from_idx(&idx, &labels, path, path) {
                        let first: Vec<usize> = (0..d.n.min(4)).collect();
                        let mut out = vec![0.0f32; first.len() * d.example_len()];
                        d.fill_images(&first, &mut out);
                        if let Ok(mut batches) = d.batches(3, Some(1)) {
                            let _ = batches.next();
                        }
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // any rank, decoded in memory
    if data.len() >= 4 && data[..3] == [0, 0, 8] {
        let magic = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        match Idx::from_bytes(data, path, magic) {
            Ok(idx) => check(&idx, Some(data)),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
