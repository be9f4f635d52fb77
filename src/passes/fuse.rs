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
//!   made earlier count as the single nodes they now are; a search from the root bounded by a
//!   topological order kept up to date as kernels are applied, see `Order` and
//!   `Ancestors`, so it costs the group's neighbourhood, not the graph). The kernel
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
//! A second rewrite moves such a mask through a max-pool gradient: `select(gt(x, 0),
//! max_pool2d_grad(x, dy), 0)` where `max_pool2d(x)` exists (same window and stride) becomes
//! `max_pool2d_grad(x, select(gt(max_pool2d(x), 0), dy, 0))`: the gradient reaches only each
//! window's first maximum, whose value is the pooled one, so masking `dy` by the pooled values
//! gives the same bits (NaN and overlapping windows included), on a quarter of the elements
//! for 2x2 windows, and no pass over the full-size activation (count
//! `mask_through_max_pool_grad`). It is what a relu before a max pool differentiates to.
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
use petgraph::graph::NodeIndex;
use std::collections::{BTreeSet, HashMap, HashSet};

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
    let moved = masks_through_max_pool_grads(g);
    report.count("mask_through_max_pool_grad", moved);
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
    let mut topo = Order::new(g, &order);
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
                        ancestors.start(root, &topo);
                        ancestors_of_root = true;
                    }
                    let search = (&mut ancestors, &topo);
                    match extra_blocker(g, p, &in_group, &domain, reduce, search) {
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
        let (fused, results) = apply(g, &group, &mut links);
        topo.contract(g, &group, fused, &results);
        #[cfg(test)]
        tests::order_holds(g, &topo);
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

/// The rewrite `select(gt(x, 0), max_pool2d_grad(x, dy), 0)` ->
/// `max_pool2d_grad(x, select(gt(max_pool2d(x), 0), dy, 0))` of the module documentation,
/// wherever `max_pool2d(x)` with the gradient's window and stride exists and the zero is a
/// scalar constant. The replaced select, and the old gradient and mask when nothing else
/// reads them, are removed. Returns the number of selects rewritten.
fn masks_through_max_pool_grads(g: &mut Graph) -> usize {
    let mut n = 0;
    for s in g.node_ids() {
        let Some(node) = g.get(s) else { continue };
        if !matches!(node.op, Op::Select) {
            continue;
        }
        let ops = g.operands(s);
        let (mask, grad, zero) = (ops[0], ops[1], ops[2]);
        let scalar_zero = |g: &Graph, z: NodeId| {
            splat_value(g, z) == Some(0.0)
                && g[z].ty.shape.rank() == 0
                && g[z].ty.dtype == DType::F32
        };
        if !scalar_zero(g, zero) || !matches!(g[mask].op, Op::Compare(crate::op::CmpOp::Gt)) {
            continue;
        }
        let (x, mask_zero) = (g.operands(mask)[0], g.operands(mask)[1]);
        if splat_value(g, mask_zero) != Some(0.0) || g[mask].ty != g[x].ty {
            continue;
        }
        let Op::MaxPool2dGrad { window, stride } = g[grad].op else {
            continue;
        };
        let (px, dy) = (g.operands(grad)[0], g.operands(grad)[1]);
        if px != x || g[s].ty != g[grad].ty {
            continue;
        }
        let pooled = g.users(x).into_iter().find(|&u| {
            matches!(g[u].op, Op::MaxPool2d { window: w, stride: st } if w == window && st == stride)
                && g[u].ty == g[dy].ty
        });
        let Some(pooled) = pooled else { continue };
        let (loc, grad_of) = (g[s].loc.clone(), g[s].grad_of);
        let node = |op: Op, ty: crate::shape::TensorType| Node {
            op,
            ty,
            name: None,
            loc: loc.clone(),
            grad_of,
        };
        let dy_ty = g[dy].ty.clone();
        let new_mask = g.add_raw(
            node(Op::Compare(crate::op::CmpOp::Gt), dy_ty.clone()),
            &[pooled, zero],
        );
        let masked = g.add_raw(node(Op::Select, dy_ty), &[new_mask, dy, zero]);
        let new_grad = g.add_raw(
            node(Op::MaxPool2dGrad { window, stride }, g[grad].ty.clone()),
            &[x, masked],
        );
        move_uses(g, s, new_grad);
        for dead in [grad, mask] {
            if g.users(dead).is_empty() && !is_root(g, dead) {
                super::rewrite::remove_nodes(g, &HashSet::from([dead]));
            }
        }
        n += 1;
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

/// A topological order of the graph, kept valid while groups become fused nodes, so that
/// the cycle check of multi-output fusion ([`Ancestors`]) can stop searching below a position.
///
/// Invariant: for every edge `a -> b` of the graph as it is now, `pos(a) < pos(b)`, and no
/// two nodes share a position; so a node only reaches nodes at later positions. It starts
/// as the nodes by depth, each as early as its operands allow: in the canonical order a
/// training step's gradient sums come after the whole backward pass, so every node of the
/// sum of a weight's gradients sat between a backward value and the sum's root, and each
/// search crossed all of them. [`Order::contract`] keeps the invariant after each group.
struct Order {
    /// `pos[i]`: the position of the node whose index is `i` (stale for removed nodes).
    pos: Vec<usize>,
    /// Whether the invariant holds. Replacing a group cannot make a cycle (the check that
    /// admits an extra result rules that out), so this stays true; were it ever false, the
    /// search would fall back to not pruning at all, which is slower but still exact.
    valid: bool,
}

impl Order {
    /// Every node of `g` by depth (the longest path from a node without operands), ties in
    /// the order of `order`, a topological order of every node.
    fn new(g: &Graph, order: &[NodeId]) -> Order {
        let len = order.iter().map(|id| id.index() + 1).max().unwrap_or(0);
        let mut depth = vec![0usize; len];
        for &id in order {
            let d = g.operands(id).iter().map(|o| depth[o.index()] + 1).max();
            depth[id.index()] = d.unwrap_or(0);
        }
        let mut by_depth: Vec<(usize, usize, NodeId)> = order
            .iter()
            .enumerate()
            .map(|(i, &id)| (depth[id.index()], i, id))
            .collect();
        by_depth.sort_unstable();
        let mut pos = vec![0; len];
        for (p, &(_, _, id)) in by_depth.iter().enumerate() {
            pos[id.index()] = p;
        }
        Order { pos, valid: true }
    }

    /// The position of `id`, or 0 for every node once the order is not valid (a search then
    /// visits every ancestor).
    fn of(&self, id: NodeId) -> usize {
        match self.pos.get(id.index()) {
            Some(&p) if self.valid => p,
            _ => 0,
        }
    }

    /// Puts `id` at position `p`.
    fn set(&mut self, id: NodeId, p: usize) {
        let i = id.index();
        if i >= self.pos.len() {
            self.pos.resize(i + 1, 0);
        }
        self.pos[i] = p;
    }

    /// Keeps the order after `group` was replaced by the node `fused` and `results` (the
    /// `fused_result` nodes of its extra results, in the order of `group.extra`).
    ///
    /// `fused` takes the root's position and each result its extra's position (the other
    /// members' positions stay free). Every edge but `fused -> result` then goes forward: the
    /// group's outside operands feed members, which are all at or before the root; the
    /// root's users were after it; each extra's users were after it. The `fused -> result`
    /// edges go backward, from position `hi` (the root's) to positions from `lo` (the first
    /// extra's). They are repaired as Pearce and Kelly insert
    /// an edge into a topological order ("A dynamic topological sort algorithm for directed
    /// acyclic graphs", 2006): `later`, the nodes reachable from the results at positions
    /// below `hi`, and `earlier`, the nodes that reach `fused` at positions above `lo`, share
    /// their positions, `earlier` taking the first ones and `later` the rest, each in their
    /// previous order. Why this is valid: the `i`-th node of `earlier` gets the `i`-th
    /// smallest of the shared positions, at most its own, so it only moves back, and a node
    /// left out that feeds it reaches `fused` and is not in `earlier`, so it is before `lo`,
    /// the smallest shared position; `later` symmetrically only moves forward, past nothing
    /// it feeds (its users left out are after `hi`, the largest). No node is in both (it
    /// would be on a cycle through `fused`). The cost is the size of the two sets: the
    /// neighbourhood of the group between its first extra result and its root, not the graph.
    fn contract(&mut self, g: &Graph, group: &Group, fused: NodeId, results: &[NodeId]) {
        // read before setting: the new nodes may have taken ids of removed members
        let hi = self.of(group.root);
        let extra: Vec<usize> = group.extra.iter().map(|&e| self.of(e)).collect();
        self.set(fused, hi);
        for (&r, &p) in results.iter().zip(&extra) {
            self.set(r, p);
        }
        let Some(&lo) = extra.iter().min() else {
            return;
        };
        if !self.valid {
            return;
        }
        let later = self.closure(results, |n| g.users(n), |p| p < hi);
        let earlier = self.closure(&[fused], |n| g.operands(n), |p| p > lo);
        if earlier.iter().any(|n| later.contains(n)) {
            self.valid = false;
            return;
        }
        let mut earlier: Vec<NodeId> = earlier.into_iter().collect();
        let mut later: Vec<NodeId> = later.into_iter().collect();
        earlier.sort_by_key(|&n| self.of(n));
        later.sort_by_key(|&n| self.of(n));
        let mut shared: Vec<usize> = earlier.iter().chain(&later).map(|&n| self.of(n)).collect();
        shared.sort_unstable();
        for (&n, p) in earlier.iter().chain(&later).zip(shared) {
            self.set(n, p);
        }
    }

    /// `from` and every node reached from it through `next` at positions where `keep` holds.
    fn closure(
        &self,
        from: &[NodeId],
        next: impl Fn(NodeId) -> Vec<NodeId>,
        keep: impl Fn(usize) -> bool,
    ) -> HashSet<NodeId> {
        let mut seen: HashSet<NodeId> = from.iter().copied().collect();
        let mut stack = from.to_vec();
        while let Some(n) = stack.pop() {
            for m in next(n) {
                if keep(self.of(m)) && seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen
    }
}

/// The cycle check of multi-output fusion: whether a node reaches the current group's root.
/// A search backwards from the root, resumed by each question about the same root (the
/// graph does not change while a group grows) and pruned by the [`Order`]: a node can only
/// reach the root through nodes at positions between its own and the root's, so a question
/// about nodes from position `b` on only needs the root's ancestors at positions `>= b`,
/// taken lowest position first (towards the nodes asked about) and only until one of them
/// is found. A full walk of the root's ancestors per group instead made the pass quadratic
/// in the graph's size (`cargo bench --bench scaling`).
///
/// Exact: every marked node is an ancestor of the root. When a question ends with no node
/// queued at a position `>= b`, every ancestor `a` at a position `>= b` is marked: on a
/// path from `a` to the root every node is at a position `>= b`, the root is marked, and a
/// marked node's operands are marked when it leaves the queue.
#[derive(Default)]
struct Ancestors {
    /// `mark[i] == stamp`: the node of index `i` is known to be an ancestor of the root.
    mark: Vec<u32>,
    stamp: u32,
    /// The root of the current group.
    root: Option<NodeId>,
    /// Marked nodes whose operands are not marked yet, by position.
    queue: BTreeSet<(usize, NodeId)>,
}

impl Ancestors {
    /// Starts the search from `root` (forgetting the previous root's).
    fn start(&mut self, root: NodeId, order: &Order) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.queue.clear();
        self.root = Some(root);
        self.insert(root, order);
    }

    /// Marks `id` and queues it if it was not marked; returns whether it was not.
    fn insert(&mut self, id: NodeId, order: &Order) -> bool {
        let i = id.index();
        if i >= self.mark.len() {
            self.mark.resize(i + 1, 0);
        }
        if self.mark[i] == self.stamp {
            return false;
        }
        self.mark[i] = self.stamp;
        self.queue.insert((order.of(id), id));
        true
    }

    /// Whether `id` is marked (known to be an ancestor of the root).
    fn contains(&self, id: NodeId) -> bool {
        self.mark.get(id.index()) == Some(&self.stamp)
    }

    /// Whether any of `nodes` reaches the root (is an ancestor of it or the root itself).
    fn any_reaches(&mut self, g: &Graph, order: &Order, nodes: &[NodeId]) -> bool {
        let Some(root) = self.root else {
            return false;
        };
        let at_root = order.of(root);
        // a node after the root cannot reach it (with no valid order, every node is asked)
        let asked: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|&n| n == root || order.of(n) < at_root || !order.valid)
            .collect();
        let Some(bound) = asked.iter().map(|&n| order.of(n)).min() else {
            return false;
        };
        if asked.iter().any(|&n| self.contains(n)) {
            return true;
        }
        let first = (bound, NodeId(NodeIndex::new(0)));
        while let Some(&next) = self.queue.range(first..).next() {
            self.queue.remove(&next);
            // every operand is marked before answering, so a later question resumes here
            let mut found = false;
            for o in g.operands(next.1) {
                found |= self.insert(o, order) && asked.contains(&o);
            }
            if found {
                return true;
            }
        }
        false
    }
}

/// Why operand `p`, blocked by [`blocker`], cannot join as an extra result either (a text that
/// continues the blocker's), or `None` when it can: the group has no reduction, `p` is
/// fusible, has the domain's shape, and none of its outside users is an ancestor of the root
/// (searched with `search`, started from the root).
fn extra_blocker(
    g: &Graph,
    p: NodeId,
    in_group: &HashSet<NodeId>,
    domain: &crate::shape::Shape,
    reduce: bool,
    search: (&mut Ancestors, &Order),
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
    let (ancestors, order) = search;
    let outside: Vec<NodeId> = g
        .users(p)
        .into_iter()
        .filter(|u| !in_group.contains(u))
        .collect();
    let cycle = ancestors.any_reaches(g, order, &outside);
    #[cfg(test)]
    tests::same_as_full_walk(g, ancestors.root, &outside, cycle);
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

/// Replaces the group by one fused node; returns it and the `fused_result` nodes of the
/// extra results (in the order of `group.extra`).
fn apply(g: &mut Graph, group: &Group, links: &mut GradLinks) -> (NodeId, Vec<NodeId>) {
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
    let results = group.extra.iter().map(|e| map[e]).collect();
    (fused, results)
}

#[cfg(test)]
mod tests {
    //! The cycle check against a full walk of the root's ancestors (the definition), and the
    //! order's invariant after every group, on random graphs, the `.ir` corpus with its
    //! training steps, and a deep training step: [`run`] calls both checks in test builds.

    use super::*;
    use crate::init::Rng;
    use crate::optim::{self, Optimizer};
    use crate::passes::{Pipeline, DEFAULT_PIPELINE};
    use crate::shape::TensorType;
    use crate::Init;
    use std::path::Path;

    /// Asserts that `answer` is whether one of `nodes` is `root` or one of its ancestors,
    /// found by walking every ancestor.
    pub(super) fn same_as_full_walk(
        g: &Graph,
        root: Option<NodeId>,
        nodes: &[NodeId],
        answer: bool,
    ) {
        let mut seen: HashSet<NodeId> = root.into_iter().collect();
        let mut stack: Vec<NodeId> = seen.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for o in g.operands(n) {
                if seen.insert(o) {
                    stack.push(o);
                }
            }
        }
        let want = nodes.iter().any(|n| seen.contains(n));
        assert_eq!(
            answer, want,
            "cycle check of {nodes:?} against root {root:?}"
        );
    }

    /// Asserts the invariant of [`Order`]: it is valid, every edge goes to a later position,
    /// and no two nodes share one.
    pub(super) fn order_holds(g: &Graph, order: &Order) {
        assert!(order.valid, "the order was given up");
        let mut taken = HashSet::new();
        for id in g.node_ids() {
            assert!(
                taken.insert(order.of(id)),
                "two nodes at position {}",
                order.of(id)
            );
            for o in g.operands(id) {
                assert!(
                    order.of(o) < order.of(id),
                    "edge {o:?} -> {id:?} goes backwards"
                );
            }
        }
    }

    /// Runs the default pipeline without `fuse`, then `fuse` (which checks itself); returns
    /// the number of extra results and of extra results refused for a cycle.
    fn prefuse_and_fuse(g: &mut Graph) -> (usize, usize) {
        let names: Vec<&str> = DEFAULT_PIPELINE
            .iter()
            .copied()
            .filter(|&n| n != "fuse")
            .collect();
        Pipeline::new(&names).unwrap().run(g).unwrap();
        let report = run(g);
        crate::verify::verify(g).unwrap();
        let refused = report
            .remarks
            .iter()
            .filter(|r| r.contains("feeds the kernel's result"))
            .count();
        (
            report.counts.get("extra_results").copied().unwrap_or(0),
            refused,
        )
    }

    /// A random graph of `steps` elementwise, reduction and matmul nodes over values of
    /// shapes `[4, 8]` and `[8]`, each using recent or older values, with a few outputs.
    fn random_graph(seed: u64, steps: usize) -> Graph {
        let mut rng = Rng::new(seed);
        let mut g = Graph::new("random");
        let x = g.input("x", TensorType::f32([4, 8])).unwrap();
        let v = g.input("v", TensorType::f32([8])).unwrap();
        let w = g.param("w", [8, 8], Init::Ones).unwrap();
        let mut pool = vec![x, v];
        for _ in 0..steps {
            let pick = |rng: &mut Rng| {
                let back = if rng.below(3) == 0 {
                    pool.len()
                } else {
                    4.min(pool.len())
                };
                pool[pool.len() - 1 - rng.below(back as u64) as usize]
            };
            let a = pick(&mut rng);
            let b = pick(&mut rng);
            let n = match rng.below(8) {
                0 => g.neg(a),
                1 => g.exp(a),
                2 => g.tanh(a),
                3 => g.add2(a, b),
                4 => g.mul(a, b),
                5 => g.sub(b, a),
                6 if g[a].ty.shape.dims() == [4, 8] => g.sum(a, &[0], false),
                _ if g[a].ty.shape.dims() == [4, 8] => g.matmul(a, w),
                _ => g.add2(b, a),
            };
            pool.push(n.unwrap());
        }
        for i in 0..1 + rng.below(4) {
            let o = pool[pool.len() - 1 - rng.below(pool.len() as u64 / 2) as usize];
            g.add_output(&format!("out{i}"), o).unwrap();
        }
        g
    }

    #[test]
    fn cycle_check_and_order_on_random_graphs() {
        let (mut extras, mut refused) = (0, 0);
        for seed in 0..400 {
            let mut g = random_graph(seed, 10 + (seed as usize % 60));
            let (e, r) = prefuse_and_fuse(&mut g);
            extras += e;
            refused += r;
        }
        // both answers of the check were exercised
        assert!(
            extras > 100 && refused > 100,
            "{extras} extra results, {refused} refused"
        );
    }

    /// Every `.ir` file under `dir`, recursively.
    fn ir_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                ir_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "ir") {
                out.push(p);
            }
        }
    }

    #[test]
    fn cycle_check_and_order_on_the_corpus_and_training_steps() {
        let mut files = Vec::new();
        ir_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("ir"),
            &mut files,
        );
        assert!(!files.is_empty());
        for path in files {
            let src = std::fs::read_to_string(&path).unwrap();
            let Ok(g) = crate::text::parse(&src, &path.display().to_string()) else {
                continue; // files of parse errors
            };
            if crate::verify::verify(&g).is_err() {
                continue; // files of verifier errors
            }
            let mut step = g.clone();
            prefuse_and_fuse(&mut g.clone());
            if optim::training_step(&mut step, "loss", &Optimizer::sgd()).is_ok() {
                prefuse_and_fuse(&mut step);
            }
        }
    }

    #[test]
    fn cycle_check_and_order_on_a_deep_training_step() {
        let mut g = Graph::new("chain");
        let mut h = g.input("x", TensorType::f32([16])).unwrap();
        let w = g.param("w", [16], Init::Ones).unwrap();
        for _ in 0..300 {
            let m = g.mul(h, w).unwrap();
            h = g.tanh(m).unwrap();
        }
        let loss = g.mean_all(h).unwrap();
        g.add_output("loss", loss).unwrap();
        optim::training_step(&mut g, "loss", &Optimizer::sgd()).unwrap();
        let (extras, refused) = prefuse_and_fuse(&mut g);
        assert!(
            extras > 0 && refused > 0,
            "{extras} extra results, {refused} refused"
        );
    }
}
