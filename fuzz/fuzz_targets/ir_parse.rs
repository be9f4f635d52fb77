//! The `.ir` text parser (`text::parse`), as `gradlift check` runs it: any input gives a graph
//! or a `ParseError`, never a panic. The parser runs the verifier, so a graph it returns
//! verifies, and it must survive the printers: its canonical text parses back to the same
//! text, its JSON loads back to the same graph, and the DOT printer runs.
#![no_main]

mod common;

use gradlift::{text, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let g = match text::parse(src, "fuzz.ir") {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Err(e) = verify::verify(&g) {
        panic!("the parser returned a graph the verifier refuses: {e}");
    }
    common::survives_the_printers(&g, "parsed graph");
});
