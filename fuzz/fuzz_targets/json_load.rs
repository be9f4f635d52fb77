//! The JSON graph loader (`text::from_json`) and the verifier that every command runs after
//! it: any input gives a graph or an error, never a panic (a JSON graph is not checked by
//! construction, so the verifier sees arbitrary node, edge, output and update tables). A
//! graph that verifies prints as canonical text that parses back to the same text.
#![no_main]

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
    let printed = text::print(&g);
    let back = text::parse(&printed, "printed.ir").unwrap_or_else(|e| {
        panic!("the canonical text of a verified JSON graph does not parse: {e}\n{printed}")
    });
    assert_eq!(
        text::print(&back),
        printed,
        "print(parse(print(g))) != print(g)"
    );
    let _ = text::dot(&g);
});
