//! The IR text format, Graphviz and JSON forms of a [`Graph`].
//!
//! In: a [`Graph`] (to print) or `.ir` source text (to parse). Out: canonical text
//! ([`print`](fn@print), [`print_node`]), a [`Graph`] ([`parse`]), Graphviz DOT ([`dot`]) and JSON
//! ([`to_json`], [`from_json`]). The language itself is described in `ir/README.md`.
//!
//! ```
//! use gradlift::{text, Graph, Init, TensorType};
//! let mut g = Graph::new("tiny");
//! let x = g.input("x", TensorType::f32([2, 3])).unwrap();
//! let w = g.param("w", [3, 4], Init::Zeros).unwrap();
//! let y = g.matmul(x, w).unwrap();
//! g.add_output("y", y).unwrap();
//! let src = text::print(&g);
//! assert_eq!(
//!     src,
//!     "graph tiny {\ninputs:\n  %x: f32[2,3] = input\nparams:\n  %w: f32[3,4] = param zeros\n\
//!      body:\n  %2: f32[2,4] = matmul %x, %w\noutputs:\n  y = %2\n}\n"
//! );
//! let back = text::parse(&src, "tiny.ir").unwrap();
//! assert_eq!(text::print(&back), src);
//! ```
//!
//! Printing is canonical: nodes come in [`Graph::topo_order`], anonymous nodes are numbered by
//! their position in it, attributes are sorted by key, so the same graph always prints the same
//! bytes and `print(parse(print(g))) == print(g)`.

mod attrs;
mod dot;
mod lexer;
mod parse;
mod print;

pub use attrs::{AttrError, AttrValue, MAX_DIM};
pub use dot::dot;
pub use parse::parse;
pub use print::{node_labels, print, print_node, print_node_labelled, print_with, PrintOptions};
pub(crate) use print::{sanitize, Labels};

use crate::graph::Graph;
use std::fmt;

/// A parse error: where (file, 1-based line and column) and what was expected and found,
/// then the further syntax errors of the file, each on a statement line of its own (the
/// parser skips to the next line after an error, as rustc recovers at the next item; at most
/// [`MAX_PARSE_ERRORS`] in all). Displays as `FILE:LINE:COL: message`, one line per error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file name given to [`parse`].
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// What was expected and what was found.
    pub message: String,
    /// Later independent errors, in file order.
    pub also: Vec<ParseError>,
}

/// The most errors one [`ParseError`] reports.
pub const MAX_PARSE_ERRORS: usize = 20;

impl ParseError {
    pub(crate) fn new(file: &str, line: u32, column: u32, message: String) -> ParseError {
        ParseError {
            file: file.to_string(),
            line,
            column,
            message,
            also: Vec::new(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        for e in &self.also {
            write!(f, "\n{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// Error of [`from_json`]: the JSON is malformed or does not describe a graph.
#[derive(Debug, thiserror::Error)]
#[error("invalid graph JSON: {0}")]
pub struct JsonError(#[from] serde_json::Error);

/// The graph as pretty-printed JSON (the serde form of [`Graph`]: nodes with their stable
/// indices, edges with operand indices, outputs and updates). Non-finite floats (a `NaN`
/// constant or initializer value) have no JSON form: serde_json writes them as `null`, which
/// [`from_json`] rejects; use the text format for such graphs.
pub fn to_json(g: &Graph) -> String {
    // Serializing a Graph cannot fail: every key is a string and every value plain data.
    serde_json::to_string_pretty(g).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// A graph from the JSON written by [`to_json`]. The graph is not verified, but every edge
/// joins two nodes (an edge from a vacant node slot is an error, not a later panic).
pub fn from_json(s: &str) -> Result<Graph, JsonError> {
    let g: Graph = serde_json::from_str(s)?;
    if let Some((from, to, missing)) = g.dangling_edge() {
        return Err(JsonError(serde::de::Error::custom(format!(
            "edge {from} -> {to}: node {missing} does not exist (a vacant slot in node_holes or past the node list)"
        ))));
    }
    Ok(g)
}
