//! Fusion: groups of elementwise ops become one [`Op::Fused`] node (see [`crate::fused`]).
//!
//! In: a graph after autodiff and the optimizer (fused nodes are not differentiable). Out: the
//! same graph where every *group* of two or more nodes is one fused node, computed by the JIT
//! in one loop nest without intermediate buffers, plus remarks naming what was not fused and
//! why (like LLVM's missed-optimization remarks).
//!
//! Groups are grown from a root, visiting nodes in reverse canonical order:
//! - a root is an unfused *fusible* node: an elementwise f32 op the JIT computes inline
//!   ([`OpClass::Elementwise`] with `inline`: every unary, binary and comparison op but
//!   `pow`, `select`, `broadcast`), or a reduction ([`OpClass::Reduction`]) of f32 fed by one
//!   (a reduction fed by an elementwise chain);
//! - an operand of a group member joins the group when it is fusible, every one of its users
//!   is in the group, it is not an output or an update value (those need a buffer of their
//!   own), and its shape is the group's domain (the root's shape, or the reduction's input
//!   shape): a smaller operand would be recomputed for every element of the domain;
//! - epilogues: a group without a reduction may then absorb one `matmul` or `conv2d` operand
//!   whose only users are in the group and whose shape is the domain (bias add, activation,
//!   and in the backward graph the activation's derivative mask, fuse into the GEMM's or the
//!   convolution's output), unless the group computes an update value: the JIT writes those
//!   in place into their param or state, which works for an elementwise loop but not for a
//!   GEMM output (the weight gradient's GEMM writes a buffer, the optimizer's loop then
//!   updates the param and its moments in place);
//! - multi-output fusion: an operand that fails the rule above only because its value is
//!   needed in memory (it has users outside the group, or it is an output or an update value)
//!   still joins a group without a reduction when it is fusible, has the domain's shape, and
//!   none of its outside users depends on the group's root (that would be a cycle; checked on
//!   the graph as it is then: each kernel is applied before the next group grows, so kernels
//!   made earlier count as the single nodes they now are). The kernel
//!   then computes it as an extra result, read through a `fused_result` node that takes over
//!   its name and uses: one Adam update (new moments and new parameter, all update values)
//!   becomes one loop;
//! - a group of one node is left alone (nothing to fuse); a group stops growing at
//!   [`MAX_FUSED_NODES`] (compile time).
//!
//! Before grouping, one rewrite frees activations for their epilogue: a relu derivative mask
//! `gt(x, 0)` where `relu(x)` exists becomes `gt(relu(x), 0)` (equal for every `x`, NaN
//! included: both sides are 0), so that `x` (the matmul + bias) has the relu as its only user
//! and the whole layer fuses into one kernel (count `relu_mask_from_output`).
//!
//! Counts: `fused_kernels` (new fused nodes), `nodes_fused` (nodes they replace) and
//! `extra_results` (results beyond the first, each read by a `fused_result` node).
//! Existing fused nodes are opaque, so a second run changes nothing (idempotence).

use super::rewrite::{is_root, move_uses, splat_value};
use super::PassReport;
use crate::fused::{FusedBody, FusedInst};
use crate::graph::{Graph, Node, NodeId};
use crate::op::{Op, OpClass, UnaryOp};
use crate::shape::DType;
use std::collections::{HashMap, HashSet};

/// The most nodes one fused kernel takes. Cranelift's register allocator takes time that
/// grows faster than linearly with a loop body's size: the gradient of a chain of 2,000
/// `tanh` (one kernel of about 4,000 nodes before this limit) took 12 s to compile, 85% of it
/// in register allocation. Larger groups are split into kernels of this size.
pub const MAX_FUSED_NODES: usize = 128;

/// Why a node cannot be part of a fused kernel, or `None` when it can (as an elementwise op).
fn not_fusible(g: &Graph, id: NodeId) -> Option<String> {
    let n = &g[id];
    let f32_operands = g.operands(id).iter().all(|&o| g[o].ty.dtype == DType::F32);
    match n.op.class() {
        OpClass::Elementwise { inline: false } => Some(format!(
            "{} is a runtime call in the JIT (simplify turns pow(x, 1) and pow(x, 2) into \
             inline code)",
            n.op.name()
        )),
        OpClass::Elementwise { inline: true } => {
            if f32_operands && n.ty.dtype == DType::F32 {
                None
            } else {
                Some("it has i32 operands".into())
            }
        }
        _ => Some(format!("{} is not elementwise", n.op.name())),
    }
}

/// Whether `id` may root a group as a reduction over f32.
fn is_fusible_reduce(g: &Graph, id: NodeId) -> bool {
    crate::fused::is_reduction(&g[id].op) && g[id].ty.dtype == DType::F32
}

/// Fuses every group (see the module documentation). Counts `fused_kernels` and `nodes_fused`.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("fuse");
    let rewritten = relu_masks_from_output(g);
    report.count("relu_mask_from_output", rewritten);
    let Ok(order) = g.topo_order() else {
        report.remark("not fused: the graph has a cycle");
        return report;
    };
    let labels = crate::text::node_labels(g);
    let label = |g: &Graph, id: NodeId| -> String {
        format!(
            "{} ({})",
            labels.get(&id).cloned().unwrap_or_default(),
            g[id].op.name()
        )
    };
    let position: HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut taken: HashSet<NodeId> = HashSet::new();
    let mut links = GradLinks::new(g);
    let mut ancestors = Ancestors::default();
    let mut remarks: Vec<String> = Vec::new();
    let (mut fused_kernels, mut nodes_fused, mut extra_results) = (0, 0, 0);
    for &root in order.iter().rev() {
        // removed members' ids may be reused by the fused nodes made so far: all are taken
        if taken.contains(&root) || !g.contains(root) {
            continue;
        }
        let reduce = is_fusible_reduce(g, root);
        if !reduce && not_fusible(g, root).is_some() {
            continue;
        }
        let domain = if reduce {
            g[g.operands(root)[0]].ty.shape.clone()
        } else {
            g[root].ty.shape.clone()
        };
        let mut members: Vec<NodeId> = vec![root];
        let mut in_group: HashSet<NodeId> = HashSet::from([root]);
        // members whose value is also needed in memory (extra results of the kernel)
        let mut extra: Vec<NodeId> = Vec::new();
        let mut ancestors_of_root = false;
        let mut frontier = vec![root];
        let mut candidates_matmul: Vec<NodeId> = Vec::new();
        let mut local_remarks = Vec::new();
        while let Some(m) = frontier.pop() {
            for p in g.operands(m) {
                if in_group.contains(&p) || taken.contains(&p) || g[p].op.is_leaf() {
                    continue;
                }
                if crate::fused::is_producer(&g[p].op) {
                    candidates_matmul.push(p);
                    continue;
                }
                if let Some(why) = not_fusible(g, p) {
                    if !matches!(
                        g[p].op,
                        Op::Fused(_)
                            | Op::FusedResult { .. }
                            | Op::Reshape { .. }
                            | Op::Transpose { .. }
                    ) {
                        local_remarks.push(format!(
                            "not fused: {} into {}: {why}",
                            label(g, p),
                            label(g, root)
                        ));
                    }
                    continue;
                }
                if members.len() >= MAX_FUSED_NODES {
                    local_remarks.push(format!(
                        "not fused: {} into {}: the kernel has {MAX_FUSED_NODES} nodes already",
                        label(g, p),
                        label(g, root)
                    ));
                    continue;
                }
                if let Some(why) = blocker(g, p, &in_group, &domain) {
                    if !ancestors_of_root {
                        ancestors.collect(g, root);
                        ancestors_of_root = true;
                    }
                    match extra_blocker(g, p, &in_group, &domain, reduce, &ancestors) {
                        None => extra.push(p),
                        Some(also) => {
                            local_remarks.push(format!(
                                "not fused: {} into {}: {why}{also}",
                                label(g, p),
                                label(g, root)
                            ));
                            continue;
                        }
                    }
                }
                in_group.insert(p);
                members.push(p);
                frontier.push(p);
            }
        }
        // a trailing reduction needs elementwise work to fuse with
        if reduce && members.len() == 1 {
            remarks.extend(local_remarks);
            continue;
        }
        let mut matmul = None;
        let writes_update = std::iter::once(&root)
            .chain(&extra)
            .any(|&m| g.updates().iter().any(|u| u.value == m));
        if !reduce {
            for mm in candidates_matmul {
                if matmul.is_some() || in_group.contains(&mm) {
                    continue;
                }
                if writes_update {
                    local_remarks.push(format!(
                        "epilogue not fused: {} into {}: the kernel computes update values in \
                         place, which a GEMM or convolution output cannot be",
                        label(g, mm),
                        label(g, root)
                    ));
                    continue;
                }
                match blocker(g, mm, &in_group, &domain) {
                    None => {
                        matmul = Some(mm);
                        in_group.insert(mm);
                    }
                    Some(why) => local_remarks.push(format!(
                        "epilogue not fused: {} into {}: {why}",
                        label(g, mm),
                        label(g, root)
                    )),
                }
            }
        }
        remarks.extend(local_remarks);
        if members.len() + usize::from(matmul.is_some()) < 2 {
            continue;
        }
        members.sort_by_key(|id| position[id]);
        if let Some(mm) = matmul {
            members.insert(0, mm);
        }
        taken.extend(members.iter().copied());
        extra.sort_by_key(|id| position[id]);
        // applied at once, so the next group's cycle check sees this fused node
        let group = Group {
            root,
            members,
            extra,
        };
        nodes_fused += group.members.len();
        extra_results += group.extra.len();
        fused_kernels += 1;
        apply(g, &group, &mut links);
    }
    let mut seen = HashSet::new();
    for r in remarks {
        if seen.insert(r.clone()) {
            report.remark(r);
        }
    }
    report.count("fused_kernels", fused_kernels);
    report.count("nodes_fused", nodes_fused);
    report.count("extra_results", extra_results);
    report
}

/// Rewrites `gt(x, 0)` into `gt(relu(x), 0)` where a `relu(x)` node exists and `x` has other
/// users than the relu and such masks. Returns the number of masks rewritten.
fn relu_masks_from_output(g: &mut Graph) -> usize {
    let mut n = 0;
    for id in g.node_ids() {
        if !matches!(g[id].op, Op::Compare(crate::op::CmpOp::Gt)) {
            continue;
        }
        let ops = g.operands(id);
        let (x, zero) = (ops[0], ops[1]);
        if splat_value(g, zero) != Some(0.0) || g[x].ty.dtype != DType::F32 {
            continue;
        }
        let relu = g
            .users(x)
            .into_iter()
            .find(|&u| matches!(g[u].op, Op::Unary(UnaryOp::Relu)) && g[u].ty == g[x].ty);
        if let Some(r) = relu {
            if g[id].ty.shape == g[x].ty.shape {
                g.set_operands(id, &[r, zero]);
                n += 1;
            }
        }
    }
    n
}

/// The `grad_of` links of the graph by target: which nodes say they are the gradient of each
/// node. Kept up to date as groups are applied, so that moving the links of a group's
/// members costs their number, not the graph's size (a scan of every node per group made
/// the pass quadratic in the graph's size).
struct GradLinks(HashMap<NodeId, Vec<NodeId>>);

impl GradLinks {
    fn new(g: &Graph) -> GradLinks {
        let mut links = GradLinks(HashMap::new());
        for id in g.node_ids() {
            if let Some(f) = g[id].grad_of {
                links.add(id, f);
            }
        }
        links
    }

    /// Records that `node` says it is the gradient of `of`.
    fn add(&mut self, node: NodeId, of: NodeId) {
        self.0.entry(of).or_default().push(node);
    }

    /// Every node whose `grad_of` is `from` gets `to` instead. (A list may name a node that
    /// was removed, or whose id a newer node took: only nodes still linked to `from` move.)
    fn redirect(&mut self, g: &mut Graph, from: NodeId, to: NodeId) {
        let Some(nodes) = self.0.remove(&from) else {
            return;
        };
        for n in nodes {
            if let Some(node) = g.get_mut(n) {
                if node.grad_of == Some(from) {
                    node.grad_of = Some(to);
                    self.add(n, to);
                }
            }
        }
    }
}

/// A group: its root (the value it computes), its members in evaluation order, and the
/// members that are also extra results (in evaluation order).
struct Group {
    root: NodeId,
    members: Vec<NodeId>,
    extra: Vec<NodeId>,
}

/// Every node a group's root depends on, the root included, for the cycle check of
/// multi-output fusion: marks in a vector indexed by node, reused by every group (a search
/// per group is linear in the root's ancestors, so fusion of a graph of tens of thousands of
/// nodes grows faster than linearly; marks instead of a hash set built per group keep that
/// cheap: `cargo bench --bench scaling`).
#[derive(Default)]
struct Ancestors {
    /// `mark[i] == stamp`: node index `i` is an ancestor of the current root.
    mark: Vec<u32>,
    stamp: u32,
    stack: Vec<NodeId>,
}

impl Ancestors {
    /// Marks every node `root` depends on, `root` included (forgetting the previous root's).
    fn collect(&mut self, g: &Graph, root: NodeId) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.stack.clear();
        self.insert(root);
        while let Some(n) = self.stack.pop() {
            for o in g.operands(n) {
                self.insert(o);
            }
        }
    }

    /// Marks `id` and queues it for a visit if it was not marked.
    fn insert(&mut self, id: NodeId) {
        let i = id.index();
        if i >= self.mark.len() {
            self.mark.resize(i + 1, 0);
        }
        if self.mark[i] != self.stamp {
            self.mark[i] = self.stamp;
            self.stack.push(id);
        }
    }

    /// Whether `id` is an ancestor of the last root collected.
    fn contains(&self, id: NodeId) -> bool {
        self.mark.get(id.index()) == Some(&self.stamp)
    }
}

/// Why operand `p`, blocked by [`blocker`], cannot join as an extra result either (a text that
/// continues the blocker's), or `None` when it can: the group has no reduction, `p` is
/// fusible, has the domain's shape, and none of its outside users is an ancestor of the root.
fn extra_blocker(
    g: &Graph,
    p: NodeId,
    in_group: &HashSet<NodeId>,
    domain: &crate::shape::Shape,
    reduce: bool,
    root_ancestors: &Ancestors,
) -> Option<String> {
    if &g[p].ty.shape != domain {
        return Some(String::new());
    }
    if reduce {
        return Some(", and a kernel with a reduction has one result".into());
    }
    if let Some(why) = not_fusible(g, p) {
        return Some(format!(", and {why}"));
    }
    let cycle = g
        .users(p)
        .into_iter()
        .any(|u| !in_group.contains(&u) && root_ancestors.contains(u));
    cycle.then(|| ", and a user outside the kernel feeds the kernel's result".into())
}

/// Why operand `p` cannot join a group with members `in_group` and domain `domain`.
fn blocker(
    g: &Graph,
    p: NodeId,
    in_group: &HashSet<NodeId>,
    domain: &crate::shape::Shape,
) -> Option<String> {
    let users = g.users(p);
    let outside = users.iter().filter(|u| !in_group.contains(u)).count();
    if outside > 0 {
        let n = users.len();
        return Some(format!(
            "it feeds {n} users, {outside} outside the kernel (its value is needed in memory)"
        ));
    }
    if is_root(g, p) {
        return Some("it is an output or an update value".into());
    }
    if &g[p].ty.shape != domain {
        return Some(format!(
            "its shape {} differs from the kernel's domain {domain} (it would be recomputed \
             per element)",
            g[p].ty.shape
        ));
    }
    None
}

/// Replaces the group by one fused node.
fn apply(g: &mut Graph, group: &Group, links: &mut GradLinks) {
    let members: HashSet<NodeId> = group.members.iter().copied().collect();
    let mut params: Vec<NodeId> = Vec::new();
    let mut index: HashMap<NodeId, usize> = HashMap::new();
    for &m in &group.members {
        for o in g.operands(m) {
            if !members.contains(&o) && !params.contains(&o) {
                params.push(o);
            }
        }
    }
    for (i, &p) in params.iter().enumerate() {
        index.insert(p, i);
    }
    let mut insts = Vec::new();
    for (i, &m) in group.members.iter().enumerate() {
        insts.push(FusedInst {
            op: g[m].op.clone(),
            args: g.operands(m).iter().map(|o| index[o]).collect(),
            ty: g[m].ty.clone(),
        });
        index.insert(m, params.len() + i);
    }
    let body = FusedBody {
        n_params: params.len(),
        insts,
        extra: group.extra.iter().map(|e| index[e]).collect(),
    };
    let root = &g[group.root];
    let node = Node {
        op: Op::Fused(body),
        ty: root.ty.clone(),
        name: None,
        loc: root.loc.clone(),
        grad_of: root.grad_of,
    };
    let fused = g.add_raw(node, &params);
    if let Some(f) = g[fused].grad_of {
        links.add(fused, f);
    }
    links.redirect(g, group.root, fused);
    move_uses(g, group.root, fused);
    // extra results: a fused_result node takes over each one's name, uses and updates
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for (k, &e) in group.extra.iter().enumerate() {
        let n = &g[e];
        let result = Node {
            op: Op::FusedResult { index: k + 1 },
            ty: n.ty.clone(),
            name: None,
            loc: n.loc.clone(),
            grad_of: n.grad_of,
        };
        let r = g.add_raw(result, &[fused]);
        if let Some(f) = g[r].grad_of {
            links.add(r, f);
        }
        map.insert(e, r);
    }
    for &e in &group.extra {
        links.redirect(g, e, map[&e]);
        move_uses(g, e, map[&e]);
    }
    let others: HashSet<NodeId> = members
        .iter()
        .copied()
        .filter(|&m| m != group.root && !group.extra.contains(&m))
        .collect();
    for &m in &others {
        links.redirect(g, m, fused);
    }
    // removed in a fixed order: freed ids are reused by later nodes, and ids break ties in
    // the canonical order, so the printed graph must not depend on hash order
    let mut others: Vec<NodeId> = others.into_iter().collect();
    others.sort();
    for m in others {
        g.remove(m);
    }
}
