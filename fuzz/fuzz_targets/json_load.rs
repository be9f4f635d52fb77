//! The JSON graph loader (`text::from_json`) and the verifier that every command runs after
//! it: any input gives a graph or an error, never a panic (a JSON graph is not checked by
//! construction, so the verifier sees arbitrary node, edge, output and update tables). A
//! graph that verifies must survive the printers (text, JSON and DOT).
#![no_main]

mod common;

use gradlift::{text, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let g = match text::from_json(src) {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if let Err(e) = verify::verify(&g) {
        let _ = e.to_string();
        return;
    }
    common::survives_the_printers(&g, "JSON graph");
});
