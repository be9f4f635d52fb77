//! What the `ir_parse` and `json_load` targets assert of a graph that verifies.

use gradlift::{text, Graph};

/// A verified graph survives the printers: its canonical text parses back to the same text
/// (`print(parse(print(g))) == print(g)`), its JSON loads back to the same graph, and the DOT
/// printer runs. `what` says where the graph came from, for the failure message.
pub fn survives_the_printers(g: &Graph, what: &str) {
    let printed = text::print(g);
    let back = text::parse(&printed, "printed.ir").unwrap_or_else(|e| {
        panic!("the canonical text of a verified {what} does not parse: {e}\n{printed}")
    });
    assert_eq!(
        text::print(&back),
        printed,
        "print(parse(print(g))) != print(g)"
    );
    // JSON has no form for non-finite constants (they are written as null and refused)
    if let Ok(j) = text::from_json(&text::to_json(g)) {
        assert_eq!(
            text::print(&j),
            printed,
            "the JSON round trip changed the graph"
        );
    }
    let _ = text::dot(g);
}
