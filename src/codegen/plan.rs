//! Buffer locations: where every node's value lives when the compiled function runs.
//!
//! In: a type-checked graph and its [`MemoryPlan`] (from [`crate::passes::plan`], the one
//! planner: liveness, aliases, in-place updates, direct outputs, scratch, staging and arena
//! placement all happen there). Out: a [`Plan`] giving each node a [`Loc`] (a slot of the
//! pointer table the native function receives, plus a byte offset). The table's [`Layout`]
//! is the one description of what each slot holds: the lowering addresses buffers through
//! it, the runtime fills tables from it ([`Layout::for_each_slot`]).

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::passes::plan::{BufferKind, MemoryPlan, Storage};
use std::collections::{HashMap, HashSet};

pub use crate::passes::plan::ALIGN;

/// Where a value lives: a slot of the pointer table and a byte offset into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Index into the pointer table.
    pub slot: usize,
    /// Byte offset from the slot's base pointer.
    pub offset: usize,
}

/// What one slot of the pointer table points at; the index counts within its kind
/// (`Param(2)` is the third param of [`Layout::params`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// An input buffer (the caller's data).
    Input(usize),
    /// A param buffer.
    Param(usize),
    /// A state buffer.
    State(usize),
    /// A constant's buffer.
    Const(usize),
    /// The buffer of output `i` (in `Graph::outputs` order).
    Output(usize),
    /// The arena of intermediates ([`Layout::arena_bytes`] bytes, [`ALIGN`]-aligned).
    Arena,
}

/// The pointer table a compiled function receives: one base pointer per slot, in the order
/// inputs, params, states, consts, outputs, arena. Built once, by [`locate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Input nodes, in table order.
    pub inputs: Vec<NodeId>,
    /// Param nodes, in table order.
    pub params: Vec<NodeId>,
    /// State nodes, in table order.
    pub states: Vec<NodeId>,
    /// Const nodes, in table order.
    pub consts: Vec<NodeId>,
    /// Number of outputs.
    pub outputs: usize,
    /// Size of the arena in bytes.
    pub arena_bytes: usize,
}

impl Layout {
    /// The table index of slot `s`.
    pub fn index(&self, s: Slot) -> usize {
        let (ni, np, ns, nc) = (
            self.inputs.len(),
            self.params.len(),
            self.states.len(),
            self.consts.len(),
        );
        match s {
            Slot::Input(i) => i,
            Slot::Param(i) => ni + i,
            Slot::State(i) => ni + np + i,
            Slot::Const(i) => ni + np + ns + i,
            Slot::Output(i) => ni + np + ns + nc + i,
            Slot::Arena => ni + np + ns + nc + self.outputs,
        }
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.index(Slot::Arena) + 1
    }

    /// Calls `f` with every slot, in table order (plain loops: the runtime fills its tables
    /// this way).
    #[inline]
    pub fn for_each_slot(&self, mut f: impl FnMut(Slot)) {
        (0..self.inputs.len()).for_each(|i| f(Slot::Input(i)));
        (0..self.params.len()).for_each(|i| f(Slot::Param(i)));
        (0..self.states.len()).for_each(|i| f(Slot::State(i)));
        (0..self.consts.len()).for_each(|i| f(Slot::Const(i)));
        (0..self.outputs).for_each(|i| f(Slot::Output(i)));
        f(Slot::Arena);
    }
}

/// The buffer locations of one graph.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What each slot of the pointer table holds.
    pub layout: Layout,
    /// Where each node's value lives.
    pub locs: HashMap<NodeId, Loc>,
    /// Transposes that matmul reads through strides: no buffer, no code of their own.
    pub folded: HashSet<NodeId>,
    /// Scratch space (arena offset) of nodes whose code needs it: a kernel's workspace
    /// (GEMM packing, convolution patches), the f64 totals of a long sum.
    pub scratch: HashMap<NodeId, usize>,
    /// For updates whose source is a buffer another update overwrites: an arena copy taken
    /// before any update is written (indexed like `Graph::updates`).
    pub staged: Vec<Option<Loc>>,
    /// The memory plan the locations come from.
    pub memory: MemoryPlan,
}

/// Maps `memory` (planned for `g` with `folded` as its folded transposes) to table slots.
pub fn locate(g: &Graph, memory: MemoryPlan, folded: HashSet<NodeId>) -> Plan {
    let layout = Layout {
        inputs: g.inputs(),
        params: g.params(),
        states: g.states(),
        consts: memory
            .schedule
            .iter()
            .copied()
            .filter(|&id| matches!(g[id].op, Op::Const { .. }))
            .collect(),
        outputs: g.outputs().len(),
        arena_bytes: memory.arena_bytes,
    };
    let mut p = Plan {
        layout,
        locs: HashMap::new(),
        folded,
        scratch: HashMap::new(),
        staged: vec![None; g.updates().len()],
        memory,
    };
    let lay = &p.layout;
    let arena = lay.index(Slot::Arena);
    let leaves: Vec<(NodeId, Slot)> = (lay.inputs.iter().enumerate())
        .map(|(i, &id)| (id, Slot::Input(i)))
        .chain(
            lay.params
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, Slot::Param(i))),
        )
        .chain(
            lay.states
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, Slot::State(i))),
        )
        .chain(
            lay.consts
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, Slot::Const(i))),
        )
        .collect();
    for (id, s) in leaves {
        let slot = p.layout.index(s);
        p.locs.insert(id, Loc { slot, offset: 0 });
    }
    let in_arena = |offset| Loc {
        slot: arena,
        offset,
    };
    // roots first (schedule order), so that an alias finds its root's location
    for &id in &p.memory.schedule {
        let loc = match p.memory.storage[&id] {
            Storage::Leaf | Storage::Alias(_) => continue,
            Storage::Arena(i) => in_arena(p.memory.buffers[i].offset),
            Storage::Output(i) => Loc {
                slot: p.layout.index(Slot::Output(i)),
                offset: 0,
            },
            Storage::InPlace(target) => p.locs[&target],
        };
        p.locs.insert(id, loc);
    }
    for &id in &p.memory.schedule {
        if let Storage::Alias(root) = p.memory.storage[&id] {
            let loc = p.locs[&root];
            p.locs.insert(id, loc);
        }
    }
    for b in &p.memory.buffers {
        match b.kind {
            BufferKind::Value => {}
            BufferKind::Scratch => {
                p.scratch.insert(b.node, b.offset);
            }
            BufferKind::Staged { update } => {
                p.staged[update] = Some(in_arena(b.offset));
            }
        }
    }
    p
}
