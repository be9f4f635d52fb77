//! Algebraic simplification: small local rewrite rules applied until none fires.
//!
//! In: any graph. Out: the same graph with each rule applied wherever it matches, repeated to
//! a fixpoint. The rules are grouped by topic, like Cranelift's `opts/`:
//! - [`algebraic`]: identities of arithmetic: `x*1`, `1*x`, `x+0`, `0+x`, `x-0`, `x/1`,
//!   `neg(neg x)`, `x*0` only for a finite constant `x`, `pow(x, 1)` to `x` and `pow(x, 2)` to
//!   `x*x` (exact; the JIT computes `pow` by a runtime call, `x*x` inline and fusible);
//! - [`reshape`]: layout ops: identity and double transposes, reshape chains, reshapes and
//!   broadcasts to the operand's own shape, broadcast chains;
//! - [`softmax`]: `log(softmax x)` to `log_softmax x`, and the cross-entropy patterns
//!   `-sum(one_hot(labels) * log_softmax(logits), axes=[1])` to
//!   `sparse_softmax_cross_entropy(logits, labels)` and `-sum(y * log_softmax(logits),
//!   axes=[1])` to `softmax_cross_entropy(logits, y)`.
//!
//! # Rulebook (what a rule may and may not do)
//! 1. A rule looks at one node, the *root*, and the producers of its operands (a few levels at
//!    most). It answers either "use this existing node instead" ([`Rewrite::Use`]) or "the
//!    root becomes this op applied to these operands" ([`Rewrite::Op`], done in place, so the
//!    root keeps its id, name, source location and `grad_of`).
//! 2. The result has exactly the root's type (dtype and shape). A rule checks the types it
//!    relies on; the driver also checks and refuses a rewrite that would change the type. So
//!    `x*1` simplifies only when the `1` does not broadcast `x` to a larger shape.
//! 3. Values are preserved, with three documented exceptions, all of the kind compilers accept:
//!    the sign of a zero result (`x + 0 -> x` keeps `-0.0` where IEEE gives `+0.0`; `c * 0`
//!    gives `+0.0` for a negative `c`), rounding (`log_softmax` and the fused cross-entropies
//!    are the numerically stable forms of what they replace: equal in exact arithmetic, more
//!    accurate in floating point, finite where `log(softmax)` underflows to `-inf`), and labels
//!    out of range in the sparse cross-entropy (`one_hot` gives a zero row, so the pattern
//!    gives 0; the fused op gives NaN, which surfaces the data error).
//! 4. Rules never fold `x*0` to `0` for a non-constant `x`: `NaN*0` and `inf*0` are NaN, and
//!    hiding a NaN would change what training reports. `c*0` folds only when every element of
//!    the constant `c` is finite.
//! 5. A rule never touches inputs, params or state, and never changes an output's or update's
//!    name or target (only which node computes the value).
//! 6. A rule makes progress that no other rule undoes: it removes a node from the chain it
//!    matches or replaces an op by a stabler one that no rule rewrites back. So the fixpoint
//!    terminates (the driver also stops after [`MAX_ROUNDS`] rounds, with a remark).
//! 7. A rule that replaces a chain of several nodes (the cross-entropies) fires only when the
//!    chain's inner nodes have no other live users (and are not outputs), so that it removes
//!    work instead of adding some. Dead users do not count, so the result does not depend on
//!    whether `dce` ran before.
//!
//! Replaced nodes are removed at once; operands that become unused are left for `dce`.

pub mod algebraic;
pub mod reshape;
pub mod softmax;

use super::rewrite::{move_uses, redirect_grad_of_all};
use super::PassReport;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashMap;

/// What a rule wants done with its root.
#[derive(Clone, Debug, PartialEq)]
pub enum Rewrite {
    /// Replace every use of the root by this existing node, and remove the root.
    Use(NodeId),
    /// Turn the root into this op applied to these operands (in place).
    Op(Op, Vec<NodeId>),
}

/// A named rewrite rule: `apply(graph, root)` says how to rewrite `root`, or `None`.
#[derive(Clone, Copy)]
pub struct Rule {
    /// Name used in reports (`mul_by_one`, ...).
    pub name: &'static str,
    /// The rule.
    pub apply: fn(&Graph, NodeId) -> Option<Rewrite>,
}

/// After this many rounds without reaching a fixpoint the pass stops (a remark says so).
pub const MAX_ROUNDS: usize = 64;

/// Every rule, in the order they are tried on a node (the first that matches wins).
pub fn rules() -> Vec<Rule> {
    let mut v = Vec::new();
    v.extend_from_slice(algebraic::RULES);
    v.extend_from_slice(reshape::RULES);
    v.extend_from_slice(softmax::RULES);
    v
}

/// Applies the rules to a fixpoint. Counts each rule by name.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("simplify");
    let rules = rules();
    for _ in 0..MAX_ROUNDS {
        let Ok(order) = g.topo_order() else {
            report.remark("graph has a cycle: nothing done");
            return report;
        };
        let mut changed = false;
        // replaced node -> its replacement; `grad_of` links follow once per round (one scan
        // of the graph per replacement made a long chain quadratic)
        let mut moved: HashMap<NodeId, NodeId> = HashMap::new();
        for id in order {
            if !g.contains(id) {
                continue;
            }
            for rule in &rules {
                if let Some(rw) = (rule.apply)(g, id) {
                    if apply(g, id, rw, &mut moved) {
                        report.count(rule.name, 1);
                        changed = true;
                        break;
                    } else {
                        report.remark(format!(
                            "rule {} proposed a rewrite that changes the type of {}; refused",
                            rule.name,
                            crate::text::print_node(g, id)
                        ));
                    }
                }
            }
        }
        // a node replaced by one replaced later in the round points at the last
        let last: HashMap<NodeId, NodeId> = moved
            .keys()
            .map(|&from| {
                let mut to = moved[&from];
                let mut steps = 0;
                while let Some(&next) = moved.get(&to) {
                    to = next;
                    steps += 1;
                    if steps > moved.len() {
                        break;
                    }
                }
                (from, to)
            })
            .collect();
        redirect_grad_of_all(g, &last);
        if !changed {
            return report;
        }
    }
    report.remark(format!(
        "stopped after {MAX_ROUNDS} rounds without a fixpoint"
    ));
    report
}

/// Applies `rw` to `root` if it keeps the root's type; returns whether it did. A replaced
/// root is recorded in `moved` (its `grad_of` links are redirected at the end of the round).
fn apply(g: &mut Graph, root: NodeId, rw: Rewrite, moved: &mut HashMap<NodeId, NodeId>) -> bool {
    let ty = g[root].ty.clone();
    match rw {
        Rewrite::Use(new) => {
            if g.get(new).map(|n| &n.ty) != Some(&ty) || new == root {
                return false;
            }
            move_uses(g, root, new);
            moved.insert(root, new);
        }
        Rewrite::Op(op, operands) => {
            let types: Vec<_> = operands.iter().map(|&o| &g[o].ty).collect();
            if op.infer(&types, Some(&ty)).as_ref() != Ok(&ty) {
                return false;
            }
            if let Some(n) = g.get_mut(root) {
                n.op = op;
            }
            g.set_operands(root, &operands);
        }
    }
    true
}

// ---- matching helpers shared by the rule groups ---------------------------------------

/// The op of `id`.
fn op(g: &Graph, id: NodeId) -> &Op {
    &g[id].op
}

/// The single operand of a unary-shaped node.
fn operand1(g: &Graph, id: NodeId) -> Option<NodeId> {
    match g.operands(id).as_slice() {
        [a] => Some(*a),
        _ => None,
    }
}

/// The two operands of a binary-shaped node.
fn operands2(g: &Graph, id: NodeId) -> Option<(NodeId, NodeId)> {
    match g.operands(id).as_slice() {
        [a, b] => Some((*a, *b)),
        _ => None,
    }
}

/// Whether `user` is the only live user of `id` and `id` is neither an output nor an update
/// value. Dead users (whose values reach no output or update) do not count: `dce` removes
/// them, and counting them would make the result depend on whether `dce` ran first.
fn used_only_by(g: &Graph, id: NodeId, user: NodeId) -> bool {
    !super::rewrite::is_root(g, id)
        && g.users(id).contains(&user)
        && g.users(id).into_iter().all(|u| u == user || is_dead(g, u))
}

/// Whether no output or update depends on `id` (a search over its transitive users; only
/// called on the few nodes a pattern has matched so far).
fn is_dead(g: &Graph, id: NodeId) -> bool {
    let mut stack = vec![id];
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        if super::rewrite::is_root(g, n) || g.updates().iter().any(|u| u.target == n) {
            return false;
        }
        stack.extend(g.users(n));
    }
    true
}
