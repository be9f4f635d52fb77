//! Buffer planning: where every node's value lives when the compiled function runs.
//!
//! In: a type-checked graph and its canonical order. Out: a [`Plan`] giving each node a
//! [`Loc`] (a slot of the pointer table the native function receives, plus a byte offset)
//! and the size of the arena. The pointer table is laid out as
//! `[inputs.., params.., states.., consts.., outputs.., arena]`.
//!
//! Inputs are read from the caller's buffers; params, state, constants and outputs live in
//! buffers the executable owns; every other value lives in the arena. The `fused_result` nodes
//! of a multi-result fused node get their buffers when the fused node runs (it writes them). This first planner is a
//! greedy first-fit over liveness intervals in canonical order: a value's bytes are reused once
//! its last user has run. A node's result never overlaps its operands (kernels may read
//! operands while writing). `reshape` aliases its operand (same bytes, new shape). Values that
//! are outputs or update sources live to the end of the call; an output node writes straight
//! into its output buffer, and an elementwise update whose target has no later reader writes
//! straight into the param or state buffer (see `in_place_updates`).

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::{HashMap, HashSet};

/// Alignment of arena allocations, in bytes (a cache line).
pub const ALIGN: usize = 64;

/// Where a value lives: a slot of the pointer table and a byte offset into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Index into the pointer table.
    pub slot: usize,
    /// Byte offset from the slot's base pointer.
    pub offset: usize,
}

/// The buffer plan of one graph.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Input nodes, in table order.
    pub inputs: Vec<NodeId>,
    /// Param nodes, in table order.
    pub params: Vec<NodeId>,
    /// State nodes, in table order.
    pub states: Vec<NodeId>,
    /// Const nodes, in table order.
    pub consts: Vec<NodeId>,
    /// Where each node's value lives.
    pub locs: HashMap<NodeId, Loc>,
    /// Transposes that matmul reads through strides: no buffer, no code of their own.
    pub folded: HashSet<NodeId>,
    /// Scratch space (arena offset) of nodes whose kernel needs it (convolutions).
    pub scratch: HashMap<NodeId, usize>,
    /// For updates whose source is a buffer another update overwrites: an arena copy taken
    /// before any update is written (indexed like `Graph::updates`).
    pub staged: Vec<Option<Loc>>,
    /// Total arena bytes.
    pub arena_bytes: usize,
    /// Number of updates computed directly into their param or state buffer.
    pub in_place: usize,
}

impl Plan {
    /// Table slot of the first output buffer.
    pub fn output_slot(&self, i: usize) -> usize {
        self.inputs.len() + self.params.len() + self.states.len() + self.consts.len() + i
    }

    /// Table slot of the arena.
    pub fn arena_slot(&self, n_outputs: usize) -> usize {
        self.output_slot(n_outputs)
    }
}

/// A first-fit allocator over `[0, ∞)` with explicit frees.
#[derive(Default)]
struct Arena {
    /// Free holes `(offset, len)` sorted by offset, all below `top`.
    free: Vec<(usize, usize)>,
    top: usize,
}

impl Arena {
    fn alloc(&mut self, bytes: usize) -> usize {
        let bytes = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        if let Some(i) = self.free.iter().position(|&(_, len)| len >= bytes) {
            let (off, len) = self.free[i];
            if len == bytes {
                self.free.remove(i);
            } else {
                self.free[i] = (off + bytes, len - bytes);
            }
            return off;
        }
        let off = self.top;
        self.top += bytes;
        off
    }

    fn release(&mut self, off: usize, bytes: usize) {
        let bytes = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, bytes));
        // merge with neighbours
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

/// Bytes of a node's value (every dtype is 4 bytes wide).
fn value_bytes(g: &Graph, id: NodeId) -> usize {
    g[id].ty.shape.numel() * 4
}

/// Plans the buffers of `g`, visiting nodes in `order` (the canonical order). `scratch_bytes`
/// says how much temporary space a node's kernel needs while it runs; `folded` lists the
/// transposes that alias their operand (their users read it through strides).
pub fn plan(
    g: &Graph,
    order: &[NodeId],
    scratch_bytes: impl Fn(NodeId) -> usize,
    folded: HashSet<NodeId>,
) -> Plan {
    let mut p = Plan {
        inputs: g.inputs(),
        params: g.params(),
        states: g.states(),
        consts: order
            .iter()
            .copied()
            .filter(|&id| matches!(g[id].op, Op::Const { .. }))
            .collect(),
        locs: HashMap::new(),
        folded,
        scratch: HashMap::new(),
        staged: vec![None; g.updates().len()],
        arena_bytes: 0,
        in_place: 0,
    };
    let arena = p.arena_slot(g.outputs().len());
    let leaf_slots: Vec<NodeId> = p
        .inputs
        .iter()
        .chain(&p.params)
        .chain(&p.states)
        .chain(&p.consts)
        .copied()
        .collect();
    for (slot, &id) in leaf_slots.iter().enumerate() {
        p.locs.insert(id, Loc { slot, offset: 0 });
    }

    // Root of each value's storage (reshape and folded transposes alias their operand).
    let mut root: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in order {
        let r = if matches!(g[id].op, Op::Reshape { .. }) || p.folded.contains(&id) {
            let src = g.operands(id)[0];
            root.get(&src).copied().unwrap_or(src)
        } else {
            id
        };
        root.insert(id, r);
    }
    // Last position at which each root is read; outputs and update sources: the end.
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let end = order.len();
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for &id in order {
        for o in g.operands(id) {
            let r = root[&o];
            let e = last.entry(r).or_insert(0);
            *e = (*e).max(pos[&id]);
        }
    }
    for n in g
        .outputs()
        .iter()
        .map(|o| o.node)
        .chain(g.updates().iter().map(|u| u.value))
    {
        if let Some(&r) = root.get(&n) {
            last.insert(r, end);
        }
    }

    let mut a = Arena::default();
    // Update sources held in a buffer another update overwrites are staged first (rare).
    let targets: Vec<NodeId> = g.updates().iter().map(|u| u.target).collect();
    for (i, u) in g.updates().iter().enumerate() {
        let r = root.get(&u.value).copied().unwrap_or(u.value);
        if r != u.target && targets.contains(&r) {
            let off = a.alloc(value_bytes(g, u.value));
            p.staged[i] = Some(Loc {
                slot: arena,
                offset: off,
            });
        }
    }

    let inplace = in_place_updates(g, order, &root, &pos);
    p.in_place = inplace.len();
    // An output computed by its own node is written straight into its output buffer.
    let mut direct: HashMap<NodeId, usize> = HashMap::new();
    for (i, o) in g.outputs().iter().enumerate() {
        let n = o.node;
        if root[&n] == n && !g[n].op.is_leaf() && !inplace.contains_key(&n) {
            direct.entry(n).or_insert(i);
        }
    }
    let mut dying: HashMap<usize, Vec<NodeId>> = HashMap::new();
    for (t, &id) in order.iter().enumerate() {
        if p.locs.contains_key(&id) {
            continue;
        }
        // a multi-result fused node writes its fused_result nodes' buffers when it runs
        let results: Vec<NodeId> = match &g[id].op {
            Op::Fused(b) if !b.extra.is_empty() => g
                .users(id)
                .into_iter()
                .filter(|&u| matches!(g[u].op, Op::FusedResult { .. }))
                .collect(),
            _ => vec![],
        };
        for id in std::iter::once(id).chain(results) {
            let r = root[&id];
            if let Some(target) = inplace.get(&id) {
                let l = p.locs[target];
                p.locs.insert(id, l);
            } else if let Some(&i) = direct.get(&id) {
                let slot = p.output_slot(i);
                p.locs.insert(id, Loc { slot, offset: 0 });
            } else if r != id {
                let l = p.locs[&r];
                p.locs.insert(id, l);
            } else {
                let off = a.alloc(value_bytes(g, id));
                p.locs.insert(
                    id,
                    Loc {
                        slot: arena,
                        offset: off,
                    },
                );
                match last.get(&id) {
                    Some(&l) if l < end => dying.entry(l).or_default().push(id),
                    Some(_) => {}
                    // never read: free right after it is written
                    None => dying.entry(t).or_default().push(id),
                }
            }
        }
        let s = scratch_bytes(id);
        if s > 0 {
            let off = a.alloc(s);
            p.scratch.insert(id, off);
            a.release(off, s);
        }
        for d in dying.remove(&t).unwrap_or_default() {
            a.release(p.locs[&d].offset, value_bytes(g, d));
        }
    }
    p.arena_bytes = a.top;
    p
}

/// Updates `target <- value` whose value can be computed directly into the target's buffer,
/// as `value -> target`. Safe when the value is an elementwise op (or a result of a
/// multi-result elementwise fused node, which then plays its part below) that reads the target
/// (if at all) only directly, at the same position of the same shape; no other node reads the
/// target at or after the value's position; the target is not an output or another update's source;
/// and the value has its own storage (not an alias, not a leaf).
fn in_place_updates(
    g: &Graph,
    order: &[NodeId],
    root: &HashMap<NodeId, NodeId>,
    pos: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, NodeId> {
    let mut kept: HashSet<NodeId> = g.outputs().iter().map(|o| root[&o.node]).collect();
    for u in g.updates() {
        kept.insert(root[&u.value]);
    }
    // last position at which each root buffer is read, and by whom
    let mut readers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in order {
        for o in g.operands(id) {
            readers.entry(root[&o]).or_default().push(id);
        }
    }
    let mut out = HashMap::new();
    for u in g.updates() {
        let (t, v) = (u.target, u.value);
        // the node whose loop writes v: v itself, or the fused node of a fused_result
        let w = match g[v].op {
            Op::FusedResult { .. } => g.operands(v)[0],
            _ => v,
        };
        // a fused elementwise body reads every operand at the position it writes (a leading
        // matmul/conv2d or a trailing reduction would not: they stay out)
        let elementwise = match &g[w].op {
            Op::Unary(_) | Op::Binary(_) => true,
            Op::Fused(b) => b.producer().is_none() && b.reduction().is_none(),
            _ => false,
        };
        if !elementwise || root[&v] != v || kept.contains(&t) || out.contains_key(&v) {
            continue;
        }
        let pw = pos[&w];
        let ok = readers.get(&t).is_none_or(|rs| {
            rs.iter().all(|&r| {
                pos[&r] < pw || (r == w && g.operands(w).iter().all(|&o| root[&o] != t || o == t))
            })
        });
        if ok {
            out.insert(v, t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_reuses_freed_space_first_fit() {
        let mut a = Arena::default();
        let x = a.alloc(100);
        let y = a.alloc(64);
        assert_eq!((x, y), (0, 128));
        a.release(x, 100);
        assert_eq!(a.alloc(64), 0);
        assert_eq!(a.alloc(64), 64);
        assert_eq!(a.alloc(64), 192);
        a.release(0, 64);
        a.release(64, 64);
        a.release(128, 64);
        assert_eq!(a.free, vec![(0, 192)]);
    }
}
