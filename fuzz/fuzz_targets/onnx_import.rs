//! The ONNX importer: `onnx::import` on the input bytes (with and without a batch size for
//! symbolic dimensions). Any bytes give a model or an error naming what is wrong, never a
//! panic; an imported graph verifies, and its printed text parses back to the same text.
#![no_main]

use gradlift::onnx::{self, ImportOptions};
use gradlift::{text, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for batch in [None, Some(2)] {
        match onnx::import(data, &ImportOptions { batch }) {
            Ok(im) => {
                verify::verify(&im.graph).expect("an imported graph verifies");
                let printed = text::print(&im.graph);
                let back = text::parse(&printed, "imported.ir").expect("the printed graph parses");
                assert_eq!(text::print(&back), printed, "print, parse, print");
                for w in &im.weights {
                    let p = im.graph.find(&w.name).expect("every weight is a param");
                    assert_eq!(im.graph[p].ty.shape, w.shape, "weight {}", w.name);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
