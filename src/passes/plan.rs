//! Memory planning (an analysis: the graph is not changed).
//!
//! In: a graph. Out: a [`MemoryPlan`]: the schedule (the canonical topological order), the
//! lifetime of every intermediate buffer over that schedule, and an offset for each buffer in
//! one arena, such that two buffers whose lifetimes overlap never share a byte.
//!
//! - Buffers: one per node that is not an input, param, state or constant (inputs are the
//!   caller's buffers, params and state are owned by the executable and updated in place,
//!   constants live in its read-only data). Size: element count times 4 bytes (f32 and i32),
//!   rounded up to [`ALIGN`] = 64 bytes, so every offset is 64-byte aligned (a cache line, and
//!   enough for any SIMD load).
//! - Lifetimes: a buffer is live from its node's position in the schedule to the position of
//!   its last user, both included, so a node's result never shares bytes with its operands
//!   (no in-place reuse yet). Outputs and update values live to the end of the step (position
//!   `schedule.len()`): the caller reads them, or they are copied into their param or state.
//!   A node nobody uses lives only at its own position.
//! - Placement: greedy by size, best fit. Buffers are placed largest first (ties: earliest
//!   first, then node id); each goes into the smallest gap between the already placed buffers
//!   that overlap it in time where it fits, or after the last of them.
//!
//! Not done yet: reshapes aliasing their operand, in-place elementwise ops, and the codegen
//! use of the plan.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashMap;
use std::fmt;

/// Alignment of every buffer offset and size, in bytes.
pub const ALIGN: usize = 64;

/// Bytes per element of every dtype (f32 and i32).
pub const ELEMENT_BYTES: usize = 4;

/// One intermediate buffer of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The node whose value it holds.
    pub node: NodeId,
    /// Bytes of the value (elements times [`ELEMENT_BYTES`]).
    pub bytes: usize,
    /// Bytes reserved in the arena: `bytes` rounded up to [`ALIGN`].
    pub size: usize,
    /// Offset in the arena, a multiple of [`ALIGN`].
    pub offset: usize,
    /// Position in the schedule where the value is computed.
    pub first: usize,
    /// Last position (included) where the value is read; `schedule.len()` for outputs and
    /// update values.
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

/// The result of [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The order in which nodes run (canonical topological order, every node included).
    pub schedule: Vec<NodeId>,
    /// One buffer per intermediate, in schedule order.
    pub buffers: Vec<Buffer>,
    /// Arena size with reuse: the end of the highest placed buffer.
    pub arena_bytes: usize,
    /// Arena size if every buffer had its own bytes: the sum of all sizes.
    pub arena_bytes_no_reuse: usize,
    /// The largest total size of buffers live at one position: a lower bound of any arena.
    pub peak_live_bytes: usize,
}

impl MemoryPlan {
    /// The buffer of `node`, if it has one.
    pub fn buffer(&self, node: NodeId) -> Option<&Buffer> {
        self.buffers.iter().find(|b| b.node == node)
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

/// Whether `op` gets an arena buffer (see the module doc).
fn needs_buffer(op: &Op) -> bool {
    !op.is_leaf()
}

/// Computes the schedule, lifetimes and arena offsets of `g`'s intermediates.
pub fn plan(g: &Graph) -> Result<MemoryPlan, PlanError> {
    let schedule = g.topo_order().map_err(|c| PlanError {
        cycle: c.iter().map(|id| id.index()).collect(),
    })?;
    let end = schedule.len();
    let pos: HashMap<NodeId, usize> = schedule.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut buffers = Vec::new();
    for (i, &id) in schedule.iter().enumerate() {
        if !needs_buffer(&g[id].op) {
            continue;
        }
        let is_root =
            g.outputs().iter().any(|o| o.node == id) || g.updates().iter().any(|u| u.value == id);
        let last = if is_root {
            end
        } else {
            g.users(id).iter().map(|u| pos[u]).max().unwrap_or(i)
        };
        let bytes = g[id].ty.shape.numel() * ELEMENT_BYTES;
        // a fused_result's buffer is written when its fused node runs
        let first = match g[id].op {
            Op::FusedResult { .. } => g.operands(id).first().map_or(i, |f| pos[f]),
            _ => i,
        };
        buffers.push(Buffer {
            node: id,
            bytes,
            size: bytes.div_ceil(ALIGN) * ALIGN,
            offset: 0,
            first,
            last,
        });
    }
    place(&mut buffers);
    let arena_bytes = buffers.iter().map(|b| b.offset + b.size).max().unwrap_or(0);
    let arena_bytes_no_reuse = buffers.iter().map(|b| b.size).sum();
    let peak_live_bytes = peak(&buffers, end);
    Ok(MemoryPlan {
        schedule,
        buffers,
        arena_bytes,
        arena_bytes_no_reuse,
        peak_live_bytes,
    })
}

/// Greedy best-fit placement, largest buffers first (see the module doc).
fn place(buffers: &mut [Buffer]) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| {
        (
            std::cmp::Reverse(buffers[i].size),
            buffers[i].first,
            buffers[i].node,
        )
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
        // x -> a -> b -> c -> d: a and c can share, b and d can share.
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([16])).unwrap();
        let a = g.neg(x).unwrap();
        let b = g.exp(a).unwrap();
        let c = g.neg(b).unwrap();
        let d = g.exp(c).unwrap();
        g.add_output("d", d).unwrap();
        let p = plan(&g).unwrap();
        assert_eq!(p.buffers.len(), 4);
        assert_eq!(p.arena_bytes_no_reuse, 4 * 64);
        assert_eq!(p.arena_bytes, 2 * 64);
        assert_eq!(p.peak_live_bytes, 2 * 64);
        assert_eq!(p.buffer(d).unwrap().last, p.schedule.len());
        assert_eq!(p.buffer(a).unwrap().offset, p.buffer(c).unwrap().offset);
    }
}
