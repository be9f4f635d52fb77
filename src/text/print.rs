//! The printer: a [`Graph`] to canonical IR text.
//!
//! Nodes are printed in [`Graph::topo_order`]; a named node is `%NAME`, an anonymous one `%N`
//! with N its 0-based position in that order. A graph with a cycle still prints: the first
//! line is a comment `# error: cycle through ...`, nodes follow in a fallback order (inputs,
//! params, state, then the rest by id), and parsing the text reports the cycle. Invalid
//! references (an operand, output, update or `grad` naming a removed node) print as
//! `%<missing N>`, which does not parse. A node name that is not a valid name, or is used by an
//! earlier node, is dropped (the node prints as anonymous); an invalid graph or output name is
//! printed with each bad character replaced by `_`.

use crate::graph::{is_valid_name, Graph, NodeId};
use crate::op::{Init, Literal, Op};
use crate::shape::DType;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Printing options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrintOptions {
    /// Append `# at FILE:LINE:COL` to each node that has a source location.
    pub locations: bool,
}

/// The canonical text of `g`, without source locations (see [`print_with`]).
pub fn print(g: &Graph) -> String {
    print_with(g, PrintOptions::default())
}

/// The canonical text of `g` with `opts`.
pub fn print_with(g: &Graph, opts: PrintOptions) -> String {
    let names = Labels::new(g);
    let mut out = String::new();
    if let Some(cycle) = &names.cycle {
        let list: Vec<String> = cycle.iter().map(|&id| names.get(id)).collect();
        let _ = writeln!(out, "# error: cycle through {}", list.join(", "));
    }
    let _ = writeln!(out, "graph {} {{", sanitize(&g.name));
    for section in [
        Section::Inputs,
        Section::Params,
        Section::State,
        Section::Body,
    ] {
        let ids: Vec<NodeId> = names
            .order
            .iter()
            .copied()
            .filter(|&id| section_of(g, id) == section)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}:", section.name());
        for id in ids {
            let _ = writeln!(out, "  {}", node_line(g, id, &names, opts));
        }
    }
    if !g.outputs().is_empty() {
        out.push_str("outputs:\n");
        for o in g.outputs() {
            let _ = writeln!(out, "  {} = {}", sanitize(&o.name), names.get(o.node));
        }
    }
    if !g.updates().is_empty() {
        out.push_str("updates:\n");
        for u in g.updates() {
            let _ = writeln!(out, "  {} <- {}", names.get(u.target), names.get(u.value));
        }
    }
    out.push_str("}\n");
    out
}

/// One node's line, as in [`print`](fn@print) but without indentation and with its source location
/// (`# at FILE:LINE:COL`) when it has one: the context line of verifier errors. Numbers of
/// anonymous nodes are those of the whole graph's canonical order.
pub fn print_node(g: &Graph, id: NodeId) -> String {
    let names = Labels::new(g);
    if !g.contains(id) {
        return names.get(id);
    }
    node_line(g, id, &names, PrintOptions { locations: true })
}

/// One node's line as in [`print`](fn@print), without indentation or source location, with
/// every node (the node itself, its operands, its `grad` mark) called by `label`: for messages
/// that mix the labels of two graphs (see [`crate::numerics`]).
pub fn print_node_labelled(g: &Graph, id: NodeId, label: &dyn Fn(NodeId) -> String) -> String {
    if !g.contains(id) {
        return label(id);
    }
    node_line_by(g, id, label, PrintOptions::default())
}

/// The printed label (`%name` or `%N`) of every node, exactly as [`print`](fn@print) writes it: for
/// tools (the verifier, the CLI) that name nodes in messages the way dumps show them.
pub fn node_labels(g: &Graph) -> HashMap<NodeId, String> {
    Labels::new(g).label
}

/// The sections of the text format that hold nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Inputs,
    Params,
    State,
    Body,
}

impl Section {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Section::Inputs => "inputs",
            Section::Params => "params",
            Section::State => "state",
            Section::Body => "body",
        }
    }
}

/// Where a node prints: leaves without operands in their own section, everything else in the
/// body (this matches the grouping of [`Graph::topo_order`], so sections never reorder nodes).
fn section_of(g: &Graph, id: NodeId) -> Section {
    let leaf = g.operands(id).is_empty();
    match g[id].op {
        Op::Input if leaf => Section::Inputs,
        Op::Param { .. } if leaf => Section::Params,
        Op::State { .. } if leaf => Section::State,
        _ => Section::Body,
    }
}

/// The canonical order and the printed label (`%x`, `%7`) of every node.
pub(crate) struct Labels {
    /// Canonical order (or the fallback order of a cyclic graph).
    pub(crate) order: Vec<NodeId>,
    /// The nodes on or after a cycle, when there is one.
    pub(crate) cycle: Option<Vec<NodeId>>,
    label: HashMap<NodeId, String>,
}

impl Labels {
    pub(crate) fn new(g: &Graph) -> Labels {
        let (order, cycle) = match g.topo_order() {
            Ok(order) => (order, None),
            Err(cycle) => {
                let mut ids = g.node_ids();
                ids.sort_by_key(|&id| (leaf_rank(g, id), id));
                (ids, Some(cycle))
            }
        };
        let mut used = HashSet::new();
        let mut label = HashMap::new();
        for (i, &id) in order.iter().enumerate() {
            let text = match &g[id].name {
                Some(n) if is_valid_name(n) && used.insert(n.as_str()) => format!("%{n}"),
                _ => format!("%{i}"),
            };
            label.insert(id, text);
        }
        Labels {
            order,
            cycle,
            label,
        }
    }

    /// The label of `id`, if it is in the graph.
    pub(crate) fn label(&self, id: NodeId) -> Option<String> {
        self.label.get(&id).cloned()
    }

    /// The label of `id`, or `%<missing N>` for a node that is not in the graph.
    pub(crate) fn get(&self, id: NodeId) -> String {
        self.label
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("%<missing {}>", id.index()))
    }
}

fn leaf_rank(g: &Graph, id: NodeId) -> u8 {
    match section_of(g, id) {
        Section::Inputs => 0,
        Section::Params => 1,
        Section::State => 2,
        Section::Body => 3,
    }
}

/// `%ID: TYPE = OP rest[  grad(%G)][  # at FILE:LINE:COL]`
fn node_line(g: &Graph, id: NodeId, names: &Labels, opts: PrintOptions) -> String {
    node_line_by(g, id, &|o| names.get(o), opts)
}

/// [`node_line`] with the labels given by `label`.
fn node_line_by(
    g: &Graph,
    id: NodeId,
    label: &dyn Fn(NodeId) -> String,
    opts: PrintOptions,
) -> String {
    let n = &g[id];
    let mut s = format!("{}: {} = {}", label(id), n.ty, n.op.name());
    match &n.op {
        Op::Param { init } | Op::State { init } => {
            s.push(' ');
            s.push_str(&init_text(init));
        }
        Op::Const { value } => {
            s.push(' ');
            s.push_str(&literal_text(value, n.ty.dtype));
        }
        _ => {}
    }
    let mut items: Vec<String> = g.operands(id).into_iter().map(label).collect();
    items.extend(n.op.attrs().into_iter().map(|(k, v)| format!("{k}={v}")));
    if !items.is_empty() {
        s.push(' ');
        s.push_str(&items.join(", "));
    }
    s.push_str(&nested_block(&n.op, 1));
    if let Some(f) = n.grad_of {
        let _ = write!(s, "  grad({})", label(f));
    }
    if let (true, Some(loc)) = (opts.locations, &n.loc) {
        let _ = write!(s, "  # at {loc}");
    }
    s
}

/// The nested block of a `fused` or `scan` node (empty for other ops) at nesting `depth`
/// (1 for a node of the graph's body): ` {`, one line per instruction (`%K: TYPE = OP %A,
/// %B, key=value`, values numbered operands first; an instruction with a block of its own
/// prints it one level deeper), `yield %R, ..` (a fused body's main result first, a scan's
/// new carries then its per-step outputs) and `}`.
fn nested_block(op: &Op, depth: usize) -> String {
    let (n_params, insts, results) = match op {
        Op::Fused(body) => (body.n_params, &body.insts, body.results()),
        Op::Scan(body) => (body.params, &body.insts, body.yields.clone()),
        _ => return String::new(),
    };
    let pad = "  ".repeat(depth + 1);
    let mut s = String::from(" {");
    for (i, inst) in insts.iter().enumerate() {
        let _ = write!(
            s,
            "\n{pad}%{}: {} = {}",
            n_params + i,
            inst.ty,
            inst.op.name()
        );
        let mut items: Vec<String> = inst.args.iter().map(|a| format!("%{a}")).collect();
        items.extend(inst.op.attrs().into_iter().map(|(k, v)| format!("{k}={v}")));
        if !items.is_empty() {
            s.push(' ');
            s.push_str(&items.join(", "));
        }
        s.push_str(&nested_block(&inst.op, depth + 1));
    }
    let results: Vec<String> = results.iter().map(|r| format!("%{r}")).collect();
    let _ = write!(
        s,
        "\n{pad}yield {}\n{}}}",
        results.join(", "),
        "  ".repeat(depth)
    );
    s
}

/// `zeros`, `constant(value=0.1)`, `uniform(high=0.05, low=-0.05, seed=3)`.
pub(crate) fn init_text(init: &Init) -> String {
    let args = init.args();
    if args.is_empty() {
        return init.name().to_string();
    }
    let list: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}({})", init.name(), list.join(", "))
}

/// `0.5` or `[1.0, 2.0]`; i32 constants print integral values as integers.
fn literal_text(value: &Literal, dtype: DType) -> String {
    match value {
        Literal::Splat(v) => number(*v, dtype),
        Literal::Dense(vs) => {
            let list: Vec<String> = vs.iter().map(|&v| number(v, dtype)).collect();
            format!("[{}]", list.join(", "))
        }
    }
}

fn number(v: f64, dtype: DType) -> String {
    if dtype == DType::I32 && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

/// `name` if it is a valid name, else with every bad character replaced by `_` (`_` if empty).
pub(crate) fn sanitize(name: &str) -> String {
    if is_valid_name(name) {
        return name.to_string();
    }
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}
