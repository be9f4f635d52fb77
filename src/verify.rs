//! The verifier: checks that a [`Graph`] is well formed and reports every violation at once.
//! It is the one place graph invariants are checked: the parser (its step 3), the code
//! generator ([`crate::codegen::compile_native`]) and the interpreter call it, each before
//! relying on the graph.
//!
//! In: a `&Graph`, however it was made (builder, parser, JSON, a pass, autodiff). Out: `Ok(())`
//! or [`VerifyErrors`], one [`VerifyError`] per violation, each naming the node (when there is
//! one), saying what is wrong (found and expected) and carrying the printed node line as
//! context. The verifier never stops at the first error and never panics.
//!
//! Invariants checked:
//!
//! 1. **Acyclic.** The operand edges form no cycle; one error per cycle, listing its nodes.
//! 2. **Operand slots.** The operand indices of a node are exactly `0..n`, each once.
//! 3. **Operand count.** Leaf ops (`input`, `param`, `state`, `const`) have no operands; every
//!    other op has as many as [`Op::arity`] allows.
//! 4. **Types.** Each node's type equals what [`Op::infer`] gives for its operands' types
//!    (for leaf ops: the declared type itself is valid: params and state are f32, a dense
//!    const literal has one value per element). A `fused_result` reads an existing result
//!    of a fused node. Not checked for a node with an operand whose own operands or type are
//!    in error: its error would follow from that one.
//! 5. **Literals and initializers.** An i32 const holds integers in range; initializer
//!    parameters are finite, `uniform` has `low < high`, `normal` has `stddev >= 0`.
//! 6. **Names.** Inputs, params and state are named; every name is valid
//!    ([`is_valid_name`]) and unique among nodes.
//! 7. **Gradient marks.** `grad_of` refers to an existing node.
//! 8. **Outputs.** Each output refers to an existing node and has a valid name, unique among
//!    outputs.
//! 9. **Updates.** The target exists and is a param or state, the value exists, both have the
//!    same type, and no target is updated twice.
//!
//! Each error says which invariant it breaks ([`Check`]). Errors come in a deterministic order: cycles; then node by node in printed order, the
//! per-node checks 2-7; then duplicate names, outputs, updates.
//!
//! Nodes are named in messages as in the printed text ([`node_label`]): `%name`, or `%N` with
//! `N` the node's position in [`Graph::topo_order`]. The context is
//! [`crate::text::print_node`]: the node's printed line, with its `# at FILE:LINE:COL`.

use crate::graph::{is_valid_name, Graph, NodeId, SourceLoc};
use crate::op::{Init, Literal, Op};
use crate::shape::DType;
use crate::text;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Which invariant an error violates (numbered as in the module doc), so a caller can point
/// at the right place: the parser puts an operand or inference error under the op, a type
/// mismatch under the declared type, an output or update error under its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// 1: the nodes of a cycle (reported at its first node).
    Cycle,
    /// 2-3: operand slots or count.
    Operands,
    /// 4: type inference rejects the operands (or a leaf's declared type).
    Inference,
    /// 4: the declared type differs from the inferred one.
    DeclaredType,
    /// 4: a `fused_result` does not read an existing result of a fused node.
    FusedResult,
    /// 5: a literal or initializer parameter.
    Literal,
    /// 6: a missing, invalid or duplicate name.
    Name,
    /// 7: `grad_of` refers to an unknown node.
    GradOf,
    /// 8: output `i` (in `Graph::outputs` order).
    Output(usize),
    /// 9: update `i` (in `Graph::updates` order).
    Update(usize),
}

/// One violated invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Which invariant.
    pub check: Check,
    /// The node at fault, if the error is about a node (an output or update error names the
    /// node it refers to when that node exists).
    pub node: Option<NodeId>,
    /// What is wrong, with what was found and what was expected.
    pub message: String,
    /// The offending line as printed: the node's line, or the `outputs`/`updates` entry.
    pub context: String,
    /// Source location of the node at fault, when known.
    pub loc: Option<SourceLoc>,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.loc {
            write!(f, "{l}: ")?;
        }
        f.write_str(&self.message)?;
        if !self.context.is_empty() {
            write!(f, "\n    {}", self.context)?;
        }
        Ok(())
    }
}

/// Every violation found in a graph (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct VerifyErrors {
    /// The violations, in the order described in the module doc.
    pub errors: Vec<VerifyError>,
}

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "graph is invalid: {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Checks every invariant listed in the module doc; returns all violations.
pub fn verify(g: &Graph) -> Result<(), VerifyErrors> {
    verify_labeled(g, &HashMap::new())
}

/// [`verify`], naming the nodes in `labels` as given there (the parser passes the `%ID`s as
/// written) and every other node by [`node_label`].
pub fn verify_labeled(g: &Graph, labels: &HashMap<NodeId, String>) -> Result<(), VerifyErrors> {
    let mut v = Verifier::new(g, labels);
    v.check_acyclic();
    for id in v.order.clone() {
        v.check_node(id);
    }
    v.check_names();
    v.check_outputs();
    v.check_updates();
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors { errors: v.errors })
    }
}

/// How a node is named in messages and printed text: `%name`, or `%N` with `N` its position in
/// the canonical order (in a cyclic graph: the printer's fallback order, inputs, params, state,
/// then the rest by index). A name that is invalid or already used by an earlier node is not
/// used (the printer drops it too).
pub fn node_label(g: &Graph, id: NodeId) -> String {
    Labels::new(g).get(id)
}

/// The label of every node, as [`crate::text::print`] numbers them (one rule, owned by `text`).
struct Labels(text::Labels);

impl Labels {
    fn new(g: &Graph) -> Labels {
        Labels(text::Labels::new(g))
    }

    fn get(&self, id: NodeId) -> String {
        self.0
            .label(id)
            .unwrap_or_else(|| format!("unknown node #{}", id.index()))
    }
}

/// The canonical order, or for a cyclic graph the printer's fallback order (inputs, params,
/// state, then the rest by index).
fn print_order(g: &Graph) -> Vec<NodeId> {
    text::Labels::new(g).order
}

struct Verifier<'g> {
    g: &'g Graph,
    /// How nodes are named in messages.
    labels: Labels,
    /// Labels the caller chose, used before `labels`.
    given: &'g HashMap<NodeId, String>,
    /// Nodes whose type is in doubt (an operand, inference or type error, or an operand in
    /// doubt): their users' types are not checked, since an error there would follow from
    /// the first one.
    doubtful: HashSet<NodeId>,
    /// Nodes in the order they are checked: [`print_order`].
    order: Vec<NodeId>,
    errors: Vec<VerifyError>,
}

impl<'g> Verifier<'g> {
    fn new(g: &'g Graph, given: &'g HashMap<NodeId, String>) -> Verifier<'g> {
        let order = print_order(g);
        Verifier {
            g,
            labels: Labels::new(g),
            given,
            doubtful: HashSet::new(),
            order,
            errors: Vec::new(),
        }
    }

    fn label(&self, id: NodeId) -> String {
        match self.given.get(&id) {
            Some(l) => l.clone(),
            None => self.labels.get(id),
        }
    }

    /// The printed line of `id` (with its `# at` location, if any), used as error context.
    fn context(&self, id: NodeId) -> String {
        if self.g.contains(id) {
            crate::text::print_node(self.g, id)
        } else {
            String::new()
        }
    }

    fn node_error(&mut self, check: Check, id: NodeId, message: String) {
        let loc = self.g.get(id).and_then(|n| n.loc.clone());
        let context = self.context(id);
        self.errors.push(VerifyError {
            check,
            node: Some(id),
            message,
            context,
            loc,
        });
    }

    /// An error about an `outputs`/`updates` entry, attached to `node` when it exists.
    fn entry_error(&mut self, check: Check, node: NodeId, message: String, context: String) {
        let existing = self.g.get(node);
        self.errors.push(VerifyError {
            check,
            node: existing.map(|_| node),
            message,
            context,
            loc: existing.and_then(|n| n.loc.clone()),
        });
    }

    // ---- 1. acyclic ---------------------------------------------------------------------

    fn check_acyclic(&mut self) {
        let Err(blocked) = self.g.topo_order() else {
            return;
        };
        // The nodes that never became ready are the cycles and everything downstream of one;
        // the cycles are the strongly connected components with a loop.
        let blocked: HashSet<NodeId> = blocked.into_iter().collect();
        let mut dg = petgraph::graph::DiGraph::<NodeId, ()>::new();
        let mut ix = BTreeMap::new();
        let mut sorted: Vec<NodeId> = blocked.iter().copied().collect();
        sorted.sort();
        for &id in &sorted {
            ix.insert(id, dg.add_node(id));
        }
        for &id in &sorted {
            for o in self.g.operands(id) {
                if let (Some(&a), Some(&b)) = (ix.get(&o), ix.get(&id)) {
                    dg.add_edge(a, b, ());
                }
            }
        }
        let mut cycles: Vec<Vec<NodeId>> = petgraph::algo::tarjan_scc(&dg)
            .into_iter()
            .map(|scc| {
                let mut c: Vec<NodeId> = scc.into_iter().map(|i| dg[i]).collect();
                c.sort();
                c
            })
            .filter(|c| c.len() > 1 || self.g.operands(c[0]).contains(&c[0]))
            .collect();
        cycles.sort();
        for c in cycles {
            let names: Vec<String> = c.iter().map(|&id| self.label(id)).collect();
            let msg = if c.len() == 1 {
                format!("cycle: {} is its own operand", names[0])
            } else {
                format!("cycle: {} depend on each other", names.join(", "))
            };
            self.node_error(Check::Cycle, c[0], msg);
        }
    }

    // ---- 2-7. per node --------------------------------------------------------------------

    fn check_node(&mut self, id: NodeId) {
        let g = self.g;
        let node = &g[id];
        let op = &node.op;
        let slots = g.operand_slots(id);
        let slots_ok = slots
            .iter()
            .enumerate()
            .all(|(i, &(slot, _))| slot as usize == i);
        if !slots_ok {
            let found: Vec<u32> = slots.iter().map(|s| s.0).collect();
            self.node_error(
                Check::Operands,
                id,
                format!(
                    "{}: operand indices are {found:?}, expected 0..{} each once",
                    op.name(),
                    slots.len()
                ),
            );
        }
        let n = slots.len();
        let count_ok = if op.is_leaf() && n != 0 {
            self.node_error(
                Check::Operands,
                id,
                format!("{} is a leaf and takes no operands, found {n}", op.name()),
            );
            false
        } else if !op.arity().accepts(n) {
            self.node_error(
                Check::Operands,
                id,
                format!(
                    "wrong number of operands: {} takes {}, found {n}",
                    op.name(),
                    op.arity()
                ),
            );
            false
        } else {
            true
        };
        let operand_in_doubt = g.operands(id).iter().any(|o| self.doubtful.contains(o));
        if !(count_ok && slots_ok) || operand_in_doubt {
            self.doubtful.insert(id);
        } else {
            let before = self.errors.len();
            self.check_type(id);
            self.check_fused_result(id);
            if self.errors.len() > before {
                self.doubtful.insert(id);
            }
        }
        self.check_literal_and_init(id);
        if let Some(name) = &node.name {
            if !is_valid_name(name) {
                self.node_error(
                    Check::Name,
                    id,
                    format!(
                        "invalid name {name:?}: expected a letter or '_' then letters, digits, '_' or '.'"
                    ),
                );
            }
        } else if matches!(op, Op::Input | Op::Param { .. } | Op::State { .. }) {
            self.node_error(
                Check::Name,
                id,
                format!(
                    "{} has no name (inputs, params and state are named)",
                    op.name()
                ),
            );
        }
        if let Some(f) = node.grad_of {
            if !g.contains(f) {
                self.node_error(
                    Check::GradOf,
                    id,
                    format!("grad_of refers to unknown node #{}", f.index()),
                );
            }
        }
    }

    /// A `fused_result` reads a result its operand, a multi-result fused node, has; a
    /// `scan_result` one its scan node has, of the type the scan gives it.
    fn check_fused_result(&mut self, id: NodeId) {
        let g = self.g;
        if let Op::ScanResult { index } = g[id].op {
            return self.check_scan_result(id, index);
        }
        let Op::FusedResult { index } = g[id].op else {
            return;
        };
        let Some(&operand) = g.operands(id).first() else {
            return;
        };
        let results = match &g[operand].op {
            Op::Fused(body) => body.n_results(),
            _ => 0,
        };
        if index >= results {
            let found = match results {
                0 => format!("{} (not a fused node)", g[operand].op.name()),
                n => format!("a fused node with {n} result(s)"),
            };
            let message = format!(
                "fused_result index={index} needs a fused node with at least {} results, found {found}",
                index + 1
            );
            self.node_error(Check::FusedResult, id, message);
        }
    }

    fn check_scan_result(&mut self, id: NodeId, index: usize) {
        let g = self.g;
        let Some(&operand) = g.operands(id).first() else {
            return;
        };
        let Op::Scan(body) = &g[operand].op else {
            let message = format!(
                "scan_result index={index} needs a scan node, found {}",
                g[operand].op.name()
            );
            return self.node_error(Check::FusedResult, id, message);
        };
        let types: Vec<_> = g.operands(operand).iter().map(|&o| &g[o].ty).collect();
        let Ok(mut results) = body.result_types(&types) else {
            return; // the scan node's own error
        };
        if index >= results.len() {
            let message = format!(
                "scan_result index={index} needs a scan with at least {} results, found one with {}",
                index + 1,
                results.len()
            );
            return self.node_error(Check::FusedResult, id, message);
        }
        let want = results.swap_remove(index);
        if g[id].ty != want {
            let message = format!(
                "type mismatch: {} is declared {} but result {index} of the scan is {want}",
                self.label(id),
                g[id].ty
            );
            self.node_error(Check::DeclaredType, id, message);
        }
    }

    fn check_type(&mut self, id: NodeId) {
        let g = self.g;
        let node = &g[id];
        let operands = g.operands(id);
        let types: Vec<_> = operands.iter().map(|&o| &g[o].ty).collect();
        match node.op.infer(&types, Some(&node.ty)) {
            Err(e) => self.node_error(Check::Inference, id, e.0),
            Ok(t) if t != node.ty => self.node_error(
                Check::DeclaredType,
                id,
                format!(
                    "type mismatch: {} is declared {} but {} computes {t}",
                    self.label(id),
                    node.ty,
                    node.op.name()
                ),
            ),
            Ok(_) => {}
        }
    }

    fn check_literal_and_init(&mut self, id: NodeId) {
        let node = &self.g[id];
        let problem = match &node.op {
            Op::Const { value } if node.ty.dtype == DType::I32 => {
                let values: &[f64] = match value {
                    Literal::Splat(v) => std::slice::from_ref(v),
                    Literal::Dense(v) => v,
                };
                values
                    .iter()
                    .find(|v| v.fract() != 0.0 || **v < i32::MIN as f64 || **v > i32::MAX as f64)
                    .map(|v| format!("i32 const holds {v:?}, which is not an i32 integer"))
            }
            Op::Param { init } | Op::State { init } => {
                init_problem(init).map(|p| format!("{} initializer {init:?}: {p}", node.op.name()))
            }
            _ => None,
        };
        if let Some(p) = problem {
            self.node_error(Check::Literal, id, p);
        }
    }

    // ---- 6. unique names ------------------------------------------------------------------

    fn check_names(&mut self) {
        let mut first: HashMap<&str, NodeId> = HashMap::new();
        let mut dups = Vec::new();
        for &id in &self.order {
            if let Some(name) = self.g[id].name.as_deref() {
                match first.get(name) {
                    Some(&other) => dups.push((id, name.to_string(), other)),
                    None => {
                        first.insert(name, id);
                    }
                }
            }
        }
        for (id, name, other) in dups {
            let other_op = self.g[other].op.name();
            self.node_error(
                Check::Name,
                id,
                format!(
                    "duplicate name {name:?}: {} {other_op} node already has it",
                    article(other_op)
                ),
            );
        }
    }

    // ---- 8. outputs -------------------------------------------------------------------------

    fn check_outputs(&mut self) {
        let mut seen = HashSet::new();
        for (i, o) in self.g.outputs().iter().enumerate() {
            let check = Check::Output(i);
            let context = format!("output {} = {}", o.name, self.label(o.node));
            if !is_valid_name(&o.name) {
                self.entry_error(
                    check,
                    o.node,
                    format!("invalid output name {:?}", o.name),
                    context.clone(),
                );
            }
            if !seen.insert(o.name.as_str()) {
                self.entry_error(
                    check,
                    o.node,
                    format!("duplicate output name {:?}", o.name),
                    context.clone(),
                );
            }
            if !self.g.contains(o.node) {
                self.entry_error(
                    check,
                    o.node,
                    format!(
                        "output {:?} refers to unknown node #{}",
                        o.name,
                        o.node.index()
                    ),
                    context,
                );
            }
        }
    }

    // ---- 9. updates -------------------------------------------------------------------------

    fn check_updates(&mut self) {
        let mut seen = HashSet::new();
        for (i, u) in self.g.updates().iter().enumerate() {
            let check = Check::Update(i);
            let context = format!("update {} <- {}", self.label(u.target), self.label(u.value));
            let target = self.g.get(u.target);
            let value = self.g.get(u.value);
            match target {
                None => self.entry_error(
                    check,
                    u.target,
                    format!("update target is unknown node #{}", u.target.index()),
                    context.clone(),
                ),
                Some(t) if !matches!(t.op, Op::Param { .. } | Op::State { .. }) => self
                    .entry_error(
                        check,
                        u.target,
                        format!(
                            "update target {} is {} {}, expected a param or state",
                            self.label(u.target),
                            article(t.op.name()),
                            t.op.name()
                        ),
                        context.clone(),
                    ),
                Some(_) => {}
            }
            if value.is_none() {
                self.entry_error(
                    check,
                    u.target,
                    format!("update value is unknown node #{}", u.value.index()),
                    context.clone(),
                );
            }
            if let (Some(t), Some(v)) = (target, value) {
                if t.ty != v.ty {
                    self.entry_error(
                        check,
                        u.target,
                        format!(
                            "update of {} ({}) with {} of type {}",
                            self.label(u.target),
                            t.ty,
                            self.label(u.value),
                            v.ty
                        ),
                        context.clone(),
                    );
                }
            }
            if !seen.insert(u.target) {
                self.entry_error(
                    check,
                    u.target,
                    format!("{} is updated more than once", self.label(u.target)),
                    context,
                );
            }
        }
    }
}

/// What is wrong with an initializer's parameters, if anything.
fn init_problem(init: &Init) -> Option<String> {
    match *init {
        Init::Zeros
        | Init::Ones
        | Init::GlorotUniform { .. }
        | Init::HeNormal { .. }
        | Init::Orthogonal { .. }
        | Init::UnitForgetBias { .. } => None,
        Init::Constant { value } if !value.is_finite() => {
            Some(format!("value {value:?} is not finite"))
        }
        Init::Uniform { low, high, .. } if !(low.is_finite() && high.is_finite() && low < high) => {
            Some(format!(
                "expected finite low < high, found low {low:?}, high {high:?}"
            ))
        }
        Init::Normal { mean, stddev, .. }
            if !(mean.is_finite() && stddev.is_finite() && stddev >= 0.0) =>
        {
            Some(format!(
                "expected finite mean and stddev >= 0, found mean {mean:?}, stddev {stddev:?}"
            ))
        }
        _ => None,
    }
}

/// "an" before a vowel, else "a".
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}
