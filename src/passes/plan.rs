//! Memory planning: where every value lives while a step runs (an analysis: the graph is not
//! changed). This is the one planner: the JIT (`codegen::plan`) only maps its result to
//! pointer-table slots, so the figures of a [`MemoryPlan`] are what compiled code allocates.
//!
//! In: a graph and [`PlanOptions`] (what the code generator decided: the transposes it folds
//! into matmuls, the scratch space of each kernel). Out: a [`MemoryPlan`]: the schedule (the
//! canonical topological order), the [`Storage`] of every node, and the arena buffers with
//! their lifetimes over the schedule and their offsets in one arena, such that two buffers
//! whose lifetimes overlap never share a byte.
//!
//! Storage, per node (the first rule that applies):
//! - Leaf: inputs are the caller's buffers, params and state are owned by the executable (and
//!   updated at the end of the step), constants live in its read-only data.
//! - In-place update: an elementwise update value ([`OpClass::Elementwise`], or a fused body
//!   with no leading matmul/conv2d and no trailing reduction, or one of its `fused_result`s) whose
//!   param or state nobody reads at or after the value's position (except the value's own
//!   code, directly, element for element) is computed straight into that param or state
//!   buffer. Not when the target is kept (an output, or the source of an update: its old
//!   value is needed at the end).
//! - Alias: a reshape, or a transpose the code generator folds into its matmul users (read
//!   through swapped strides), shares the bytes of its operand's storage (its root).
//! - Direct output: a node that is an output is computed straight into its output buffer (the
//!   first output it is, if several).
//! - Otherwise an arena buffer of its own ([`BufferKind::Value`]).
//!
//! Arena buffers (sizes: element count times [`ELEMENT_BYTES`], rounded up to [`ALIGN`] =
//! 64 bytes, so every offset is 64-byte aligned: a cache line, enough for any SIMD load):
//! - Value: live from the position where it is written (see `first_position`: its node's,
//!   or for a `fused_result` its fused node's, whose loop writes every result) to the last
//!   position where it or an alias of it is read, both included, so a node's result never
//!   shares bytes with its operands (kernels read operands while writing); a `fused_result`
//!   does not read its fused node. Outputs and update values (through
//!   their aliases) live to the end of the step (position `schedule.len()`): the caller reads
//!   them, or they are copied into their param or state. A value nobody reads lives only at
//!   its own position.
//! - Scratch: temporary space a node's kernel uses while it runs (convolutions' patch
//!   matrices), live only at the node's position.
//! - Staged: an update value whose bytes are another update's param or state (`a <- b`,
//!   `b <- a`) is copied into a staged buffer at the end (position `schedule.len()`), after
//!   the outputs are read and before any update is written.
//!
//! Placement: offline (every lifetime is known), greedy by size, best fit. Buffers are placed
//! largest first (ties: earliest first, then node id, then kind); each goes into the smallest
//! gap between the already placed buffers that overlap it in time where it fits, or after the
//! last of them. On the MLP and CNN Adam training steps the arena equals the peak of live
//! bytes (see ARCHITECTURE.md for the figures against the JIT's former online first-fit
//! planner); ordering by size times lifetime, by lifetime or by start was never better on
//! the corpus steps.

use crate::graph::{Graph, NodeId};
use crate::op::{Op, OpClass};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Alignment of every buffer offset and size, in bytes.
pub const ALIGN: usize = 64;

/// Bytes per element of every dtype (f32 and i32).
pub const ELEMENT_BYTES: usize = 4;

/// What an arena buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufferKind {
    /// The value of its node (and of the aliases rooted at it).
    Value,
    /// Temporary space its node's kernel uses while it runs.
    Scratch,
    /// A copy of the value of update `update` (index into `Graph::updates`) taken at the end
    /// of the step, because the value's bytes are another update's param or state.
    Staged {
        /// Index of the update.
        update: usize,
    },
}

/// One arena buffer of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The node it belongs to: the node whose value it holds (value, staged) or whose kernel
    /// uses it (scratch).
    pub node: NodeId,
    /// What it holds.
    pub kind: BufferKind,
    /// Bytes used (for values: elements times [`ELEMENT_BYTES`]).
    pub bytes: usize,
    /// Bytes reserved in the arena: `bytes` rounded up to [`ALIGN`].
    pub size: usize,
    /// Offset in the arena, a multiple of [`ALIGN`].
    pub offset: usize,
    /// First position in the schedule where it is live (written).
    pub first: usize,
    /// Last position (included) where it is live; `schedule.len()` is the end of the step
    /// (output copies, staging and updates).
    pub last: usize,
}

impl Buffer {
    /// Whether the two buffers are live at some common position.
    pub fn overlaps_in_time(&self, other: &Buffer) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether the two buffers share a byte of the arena.
    pub fn overlaps_in_memory(&self, other: &Buffer) -> bool {
        self.size > 0
            && other.size > 0
            && self.offset < other.offset + other.size
            && other.offset < self.offset + self.size
    }
}

/// Where a node's value lives (see the module doc for the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// An input, param, state or constant: its own buffer outside the arena.
    Leaf,
    /// Arena buffer `buffers[i]` of the plan.
    Arena(usize),
    /// Output buffer `i` (index into `Graph::outputs`), written directly.
    Output(usize),
    /// The buffer of this param or state, which the node (an update value) overwrites.
    InPlace(NodeId),
    /// The bytes of this node (the root of a chain of reshapes and folded transposes; never
    /// itself an alias).
    Alias(NodeId),
}

/// What the code generator tells the planner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Transposes that have no code of their own: their users read the operand through
    /// swapped strides, so they alias their operand.
    pub folded_transposes: HashSet<NodeId>,
    /// Scratch bytes each node's kernel needs while it runs (absent or 0: none).
    pub scratch_bytes: HashMap<NodeId, usize>,
}

/// The result of [`plan`] and [`plan_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The order in which nodes run (canonical topological order, every node included).
    pub schedule: Vec<NodeId>,
    /// Where each node's value lives (every node of the schedule).
    pub storage: HashMap<NodeId, Storage>,
    /// The arena buffers: values and scratch in schedule order, then staged copies.
    pub buffers: Vec<Buffer>,
    /// Arena size with reuse: the end of the highest placed buffer.
    pub arena_bytes: usize,
    /// Arena size if every buffer had its own bytes: the sum of all sizes.
    pub arena_bytes_no_reuse: usize,
    /// The largest total size of buffers live at one position: a lower bound of any arena.
    pub peak_live_bytes: usize,
}

impl MemoryPlan {
    /// The value buffer of `node` itself (not of its root if it is an alias), if it has one.
    pub fn buffer(&self, node: NodeId) -> Option<&Buffer> {
        match self.storage.get(&node) {
            Some(&Storage::Arena(i)) => Some(&self.buffers[i]),
            _ => None,
        }
    }

    /// The scratch buffer of `node`, if its kernel has one.
    pub fn scratch(&self, node: NodeId) -> Option<&Buffer> {
        self.buffers
            .iter()
            .find(|b| b.node == node && b.kind == BufferKind::Scratch)
    }

    /// The staged buffer of update `update`, if it is staged.
    pub fn staged(&self, update: usize) -> Option<&Buffer> {
        self.buffers
            .iter()
            .find(|b| b.kind == BufferKind::Staged { update })
    }

    /// Where `node`'s bytes are: its storage with aliases resolved (never [`Storage::Alias`]),
    /// and the node that owns that storage (the root).
    pub fn resolve(&self, node: NodeId) -> Option<(NodeId, Storage)> {
        match *self.storage.get(&node)? {
            Storage::Alias(root) => self.storage.get(&root).map(|&s| (root, s)),
            s => Some((node, s)),
        }
    }

    /// Number of update values computed in place into their param or state buffer.
    pub fn in_place_updates(&self) -> usize {
        self.storage
            .values()
            .filter(|s| matches!(s, Storage::InPlace(_)))
            .count()
    }
}

impl fmt::Display for MemoryPlan {
    /// A short summary: buffer count, arena with and without reuse, peak.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} buffers, arena {} bytes with reuse, {} bytes without, peak live {} bytes",
            self.buffers.len(),
            self.arena_bytes,
            self.arena_bytes_no_reuse,
            self.peak_live_bytes
        )
    }
}

/// Error of [`plan`]: the graph cannot be scheduled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot plan memory: the graph has a cycle through nodes {cycle:?}")]
pub struct PlanError {
    /// Raw indices of the nodes on or after the cycle.
    pub cycle: Vec<usize>,
}

/// [`plan_with`] with no folded transposes and no scratch space (what the JIT does with the
/// Cranelift matmul kernel on a graph without convolutions).
pub fn plan(g: &Graph) -> Result<MemoryPlan, PlanError> {
    plan_with(g, &PlanOptions::default())
}

/// Computes the schedule, the storage of every node and the arena layout of `g`.
pub fn plan_with(g: &Graph, opts: &PlanOptions) -> Result<MemoryPlan, PlanError> {
    let schedule = g.topo_order().map_err(|c| PlanError {
        cycle: c.iter().map(|id| id.index()).collect(),
    })?;
    let end = schedule.len();
    let pos: HashMap<NodeId, usize> = schedule.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let root = roots(g, &schedule, &opts.folded_transposes);
    let last = last_reads(g, &schedule, &root, &pos);
    let in_place = in_place_updates(g, &schedule, &root, &pos);
    let mut direct: HashMap<NodeId, usize> = HashMap::new();
    for (i, o) in g.outputs().iter().enumerate() {
        direct.entry(o.node).or_insert(i);
    }

    let mut storage = HashMap::new();
    let mut buffers = Vec::new();
    for (i, &id) in schedule.iter().enumerate() {
        let s = if g[id].op.is_leaf() {
            Storage::Leaf
        } else if let Some(&t) = in_place.get(&id) {
            Storage::InPlace(t)
        } else if root[&id] != id {
            Storage::Alias(root[&id])
        } else if let Some(&o) = direct.get(&id) {
            Storage::Output(o)
        } else {
            let first = first_position(g, id, &pos);
            let bytes = g[id].ty.shape.numel() * ELEMENT_BYTES;
            buffers.push(new_buffer(
                id,
                BufferKind::Value,
                bytes,
                first,
                last.get(&id).copied().unwrap_or(first),
            ));
            Storage::Arena(buffers.len() - 1)
        };
        storage.insert(id, s);
        let scratch = opts.scratch_bytes.get(&id).copied().unwrap_or(0);
        if scratch > 0 {
            buffers.push(new_buffer(id, BufferKind::Scratch, scratch, i, i));
        }
    }
    // An update whose value's bytes are another update's target is staged (rare).
    let targets: HashSet<NodeId> = g.updates().iter().map(|u| u.target).collect();
    for (k, u) in g.updates().iter().enumerate() {
        let r = root[&u.value];
        if r != u.target && targets.contains(&r) {
            let bytes = g[u.value].ty.shape.numel() * ELEMENT_BYTES;
            buffers.push(new_buffer(
                u.value,
                BufferKind::Staged { update: k },
                bytes,
                end,
                end,
            ));
        }
    }

    place(&mut buffers);
    let arena_bytes = buffers.iter().map(|b| b.offset + b.size).max().unwrap_or(0);
    let arena_bytes_no_reuse = buffers.iter().map(|b| b.size).sum();
    let peak_live_bytes = peak(&buffers, end);
    Ok(MemoryPlan {
        schedule,
        storage,
        buffers,
        arena_bytes,
        arena_bytes_no_reuse,
        peak_live_bytes,
    })
}

fn new_buffer(node: NodeId, kind: BufferKind, bytes: usize, first: usize, last: usize) -> Buffer {
    Buffer {
        node,
        kind,
        bytes,
        size: bytes.div_ceil(ALIGN) * ALIGN,
        offset: 0,
        first,
        last,
    }
}

/// The node whose code writes node `id`'s buffer: the node itself, except for a result of a
/// multi-result fused node (`fused_result`, no code of its own), which the fused node's loop
/// writes.
fn writer(g: &Graph, id: NodeId) -> NodeId {
    match g[id].op {
        Op::FusedResult { .. } | Op::ScanResult { .. } => {
            g.operands(id).first().copied().unwrap_or(id)
        }
        _ => id,
    }
}

/// Position in the schedule where the buffer of node `id` is written: its writer's position.
/// So a multi-result fused node defines its result nodes' buffers at its own position: they
/// are live while it runs and never overlap its operands.
fn first_position(g: &Graph, id: NodeId, pos: &HashMap<NodeId, usize>) -> usize {
    pos[&writer(g, id)]
}

/// The operands whose bytes node `id`'s code reads: all, except for a `fused_result`, whose
/// operand (its fused node) writes it rather than being read by it.
fn reads(g: &Graph, id: NodeId) -> Vec<NodeId> {
    match g[id].op {
        Op::FusedResult { .. } | Op::ScanResult { .. } => vec![],
        _ => g.operands(id),
    }
}

/// Whether node `id` shares the bytes of its (only) operand.
fn is_alias(g: &Graph, id: NodeId, folded: &HashSet<NodeId>) -> bool {
    matches!(g[id].op, Op::Reshape { .. }) || folded.contains(&id)
}

/// The root of each node's storage: itself, or for an alias the root of its operand.
fn roots(g: &Graph, schedule: &[NodeId], folded: &HashSet<NodeId>) -> HashMap<NodeId, NodeId> {
    let mut root: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in schedule {
        let r = match g.operands(id).first() {
            Some(src) if is_alias(g, id, folded) => root[src],
            _ => id,
        };
        root.insert(id, r);
    }
    root
}

/// The last position at which each root's bytes are read (through any alias); the end of the
/// step for the roots of outputs and update values. Roots never read are absent.
fn last_reads(
    g: &Graph,
    schedule: &[NodeId],
    root: &HashMap<NodeId, NodeId>,
    pos: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, usize> {
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for &id in schedule {
        for o in reads(g, id) {
            let e = last.entry(root[&o]).or_insert(0);
            *e = (*e).max(pos[&id]);
        }
    }
    let kept = g
        .outputs()
        .iter()
        .map(|o| o.node)
        .chain(g.updates().iter().map(|u| u.value));
    for n in kept {
        last.insert(root[&n], schedule.len());
    }
    last
}

/// Updates `target <- value` whose value can be computed directly into the target's buffer,
/// as `value -> target`. Safe when the value's writer (the value, or the fused node of a
/// `fused_result`) is an elementwise op that reads the target (if at all) only directly, at
/// the same position of the same shape; no other node reads the target at or after the
/// writer's position; the target is not an output or another update's source; and the value
/// has its own storage (not an alias, not a leaf).
fn in_place_updates(
    g: &Graph,
    schedule: &[NodeId],
    root: &HashMap<NodeId, NodeId>,
    pos: &HashMap<NodeId, usize>,
) -> HashMap<NodeId, NodeId> {
    let mut kept: HashSet<NodeId> = g.outputs().iter().map(|o| root[&o.node]).collect();
    for u in g.updates() {
        kept.insert(root[&u.value]);
    }
    // who reads each root's bytes
    let mut readers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in schedule {
        for o in reads(g, id) {
            readers.entry(root[&o]).or_default().push(id);
        }
    }
    let mut out = HashMap::new();
    for u in g.updates() {
        let (t, v) = (u.target, u.value);
        // the code that computes v: v, or the fused node of a fused_result
        let w = writer(g, v);
        // a fused elementwise body reads every operand at the position it writes (a leading
        // matmul/conv2d or a trailing reduction would not: they stay out)
        let elementwise = match &g[w].op {
            Op::Fused(b) => b.producer().is_none() && b.reduction().is_none(),
            op => matches!(op.class(), OpClass::Elementwise { .. }),
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

/// Greedy best-fit placement, largest buffers first (see the module doc).
fn place(buffers: &mut [Buffer]) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| {
        let b = &buffers[i];
        (std::cmp::Reverse(b.size), b.first, b.node, b.kind)
    });
    let mut placed: Vec<usize> = Vec::new();
    for i in order {
        let b = &buffers[i];
        let mut live: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &buffers[j])
            .filter(|p| p.overlaps_in_time(b) && p.size > 0)
            .map(|p| (p.offset, p.size))
            .collect();
        live.sort();
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut cursor = 0;
        for (offset, size) in live {
            if offset >= cursor {
                let gap = offset - cursor;
                if gap >= b.size && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(offset + size);
        }
        buffers[i].offset = best.map_or(cursor, |(_, o)| o);
        placed.push(i);
    }
}

/// The largest sum of sizes live at one position in `0..=end`.
fn peak(buffers: &[Buffer], end: usize) -> usize {
    let mut delta = vec![0isize; end + 2];
    for b in buffers {
        delta[b.first] += b.size as isize;
        delta[b.last + 1] -= b.size as isize;
    }
    let mut live = 0isize;
    let mut peak = 0isize;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TensorType;

    #[test]
    fn chain_reuses_buffers() {
        // x -> a -> b -> c -> d -> e: a and c can share, b and d can share; e is the output.
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([16])).unwrap();
        let a = g.neg(x).unwrap();
        let b = g.exp(a).unwrap();
        let c = g.neg(b).unwrap();
        let d = g.exp(c).unwrap();
        let e = g.neg(d).unwrap();
        g.add_output("e", e).unwrap();
        let p = plan(&g).unwrap();
        assert_eq!(p.buffers.len(), 4);
        assert_eq!(p.storage[&e], Storage::Output(0));
        assert_eq!(p.arena_bytes_no_reuse, 4 * 64);
        assert_eq!(p.arena_bytes, 2 * 64);
        assert_eq!(p.peak_live_bytes, 2 * 64);
        assert_eq!(p.buffer(a).unwrap().offset, p.buffer(c).unwrap().offset);
    }

    #[test]
    fn reshape_aliases_and_extends_its_root() {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([16])).unwrap();
        let a = g.neg(x).unwrap();
        let r = g.reshape(a, [4, 4]).unwrap();
        let b = g.exp(x).unwrap();
        let c = g.neg(r).unwrap();
        g.add_output("c", c).unwrap();
        let p = plan(&g).unwrap();
        assert_eq!(p.storage[&r], Storage::Alias(a));
        assert_eq!(p.resolve(r), Some((a, Storage::Arena(0))));
        let pos = |n| p.schedule.iter().position(|&m| m == n).unwrap();
        assert_eq!(p.buffer(a).unwrap().last, pos(c));
        // b is never read: live only where it is written, so it cannot share a's bytes
        assert_eq!(p.buffer(b).unwrap().last, pos(b));
        assert!(!p
            .buffer(a)
            .unwrap()
            .overlaps_in_memory(p.buffer(b).unwrap()));
    }
}
