//! Graphviz DOT output: one box per node labelled with its printed name, op (with attributes)
//! and type; inputs, params, state and constants are coloured by role; gradient nodes are red
//! and dashed and say which forward node they belong to; an edge is labelled with the operand
//! index when its user has more than one operand. Outputs are ovals; updates are dashed blue
//! edges from the new value to the param or state it overwrites. Render with
//! `dot -Tsvg graph.dot -o graph.svg`.

use super::print::Labels;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashMap;
use std::fmt::Write;

/// The graph in Graphviz DOT (nodes in canonical order, named `n0`, `n1`, ... by position).
pub fn dot(g: &Graph) -> String {
    let names = Labels::new(g);
    let position: HashMap<NodeId, usize> = names
        .order
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let node_id = |id: NodeId| match position.get(&id) {
        Some(i) => format!("n{i}"),
        None => format!("missing{}", id.index()),
    };
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&g.name));
    out.push_str("  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"monospace\", fontsize=9];\n");
    for &id in &names.order {
        let n = &g[id];
        let mut label = format!("{}\\n{}", escape(&names.get(id)), n.op.name());
        let attrs: Vec<String> =
            n.op.attrs()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
        if !attrs.is_empty() {
            let _ = write!(label, " {}", escape(&attrs.join(", ")));
        }
        let _ = write!(label, "\\n{}", n.ty);
        let (shape, fill) = match n.op {
            Op::Input => ("invhouse", Some("#cfe3ff")),
            Op::Param { .. } => ("box", Some("#d4f4d4")),
            Op::State { .. } => ("cylinder", Some("#fff0b8")),
            Op::Const { .. } => ("ellipse", Some("#eeeeee")),
            _ => ("box", None),
        };
        let mut style = Vec::new();
        if shape != "box" {
            style.push(format!("shape={shape}"));
        }
        let mut look: Vec<&str> = Vec::new();
        if fill.is_some() {
            look.push("filled");
        }
        if let Some(f) = n.grad_of {
            let _ = write!(label, "\\ngrad({})", escape(&names.get(f)));
            look.push("dashed");
            style.push("color=red, fontcolor=red".to_string());
        }
        if !look.is_empty() {
            style.push(format!("style=\"{}\"", look.join(",")));
        }
        if let Some(c) = fill {
            style.push(format!("fillcolor=\"{c}\""));
        }
        let style: String = style.iter().map(|s| format!(", {s}")).collect();
        let _ = writeln!(out, "  {} [label=\"{label}\"{style}];", node_id(id));
    }
    for &id in &names.order {
        let operands = g.operands(id);
        for (i, &o) in operands.iter().enumerate() {
            let label = if operands.len() > 1 {
                format!(" [label=\"{i}\"]")
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {} -> {}{label};", node_id(o), node_id(id));
        }
    }
    for (i, o) in g.outputs().iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [label=\"{}\", shape=oval, style=bold];",
            escape(&o.name)
        );
        let _ = writeln!(out, "  {} -> out{i};", node_id(o.node));
    }
    for u in g.updates() {
        let _ = writeln!(
            out,
            "  {} -> {} [style=dashed, color=blue, fontcolor=blue, label=\"update\", constraint=false];",
            node_id(u.value),
            node_id(u.target)
        );
    }
    out.push_str("}\n");
    out
}

/// Escapes a string for a double-quoted DOT string.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
