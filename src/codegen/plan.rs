//! Buffer locations: where every node's value lives when the compiled function runs.
//!
//! In: a type-checked graph and its [`MemoryPlan`] (from [`crate::passes::plan`], the one
//! planner: liveness, aliases, in-place updates, direct outputs, scratch, staging and arena
//! placement all happen there). Out: a [`Plan`] giving each node a [`Loc`] (a slot of the
//! pointer table the native function receives, plus a byte offset). The pointer table is laid
//! out as `[inputs.., params.., states.., consts.., outputs.., arena]`; the arena has
//! `MemoryPlan::arena_bytes` bytes.

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

/// The buffer locations of one graph.
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
    /// The memory plan the locations come from.
    pub memory: MemoryPlan,
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

/// Maps `memory` (planned for `g` with `folded` as its folded transposes) to table slots.
pub fn locate(g: &Graph, memory: MemoryPlan, folded: HashSet<NodeId>) -> Plan {
    let mut p = Plan {
        inputs: g.inputs(),
        params: g.params(),
        states: g.states(),
        consts: memory
            .schedule
            .iter()
            .copied()
            .filter(|&id| matches!(g[id].op, Op::Const { .. }))
            .collect(),
        locs: HashMap::new(),
        folded,
        scratch: HashMap::new(),
        staged: vec![None; g.updates().len()],
        memory,
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
                slot: p.output_slot(i),
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
