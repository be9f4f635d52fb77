//! The `.ir` text parser (`text::parse`), as `gradlift check` runs it: any input gives a graph
//! or a `ParseError`, never a panic. A graph that also verifies must survive the printers:
//! its canonical text parses back to the same text (`print(parse(print(g))) == print(g)`),
//! its JSON loads back to the same graph, and the DOT printer runs.
#![no_main]

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
        let _ = e.to_string();
        return;
    }
    let printed = text::print(&g);
    let back = text::parse(&printed, "printed.ir").unwrap_or_else(|e| {
        panic!("the canonical text of a verified graph does not parse: {e}\n{printed}")
    });
    assert_eq!(
        text::print(&back),
        printed,
        "print(parse(print(g))) != print(g)"
    );
    // JSON has no form for non-finite constants (they are written as null and refused)
    if let Ok(j) = text::from_json(&text::to_json(&g)) {
        assert_eq!(
            text::print(&j),
            printed,
            "the JSON round trip changed the graph"
        );
    }
    let _ = text::dot(&g);
});
