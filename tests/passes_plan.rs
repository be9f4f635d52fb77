//! Memory plan properties on random graphs: the schedule is topological, lifetimes cover every
//! use, buffers live at the same time never share bytes, offsets are aligned, and the arena
//! lies between the peak of live bytes and the size without reuse.

mod passes_util;

use gradlift::passes::plan::{plan, MemoryPlan, ALIGN, ELEMENT_BYTES};
use gradlift::passes::Pipeline;
use gradlift::Graph;
use proptest::prelude::*;
use std::collections::HashMap;

fn check_plan(g: &Graph, p: &MemoryPlan) -> Result<(), TestCaseError> {
    let pos: HashMap<_, _> = p
        .schedule
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i))
        .collect();
    prop_assert_eq!(p.schedule.len(), g.len());
    for &id in &p.schedule {
        for o in g.operands(id) {
            prop_assert!(pos[&o] < pos[&id], "operand scheduled after its user");
        }
        let has = p.buffer(id).is_some();
        prop_assert_eq!(has, !g[id].op.is_leaf(), "buffer iff not a leaf");
    }
    for b in &p.buffers {
        prop_assert_eq!(b.bytes, g[b.node].ty.shape.numel() * ELEMENT_BYTES);
        prop_assert!(b.size >= b.bytes && b.size % ALIGN == 0 && b.size < b.bytes + ALIGN);
        prop_assert_eq!(b.offset % ALIGN, 0);
        // a fused_result's buffer is written by its fused node
        let writer = match g[b.node].op {
            gradlift::Op::FusedResult { .. } => g.operands(b.node)[0],
            _ => b.node,
        };
        prop_assert_eq!(b.first, pos[&writer]);
        for u in g.users(b.node) {
            prop_assert!(pos[&u] <= b.last, "buffer dies before a user");
        }
        let is_root = g.outputs().iter().any(|o| o.node == b.node)
            || g.updates().iter().any(|u| u.value == b.node);
        if is_root {
            prop_assert_eq!(b.last, p.schedule.len());
        }
        prop_assert!(b.offset + b.size <= p.arena_bytes);
    }
    for (i, a) in p.buffers.iter().enumerate() {
        for b in &p.buffers[i + 1..] {
            prop_assert!(
                !(a.overlaps_in_time(b) && a.overlaps_in_memory(b)),
                "buffers of nodes {} and {} are live together and share bytes: {:?} {:?}",
                a.node.index(),
                b.node.index(),
                a,
                b
            );
        }
    }
    prop_assert!(p.arena_bytes >= p.peak_live_bytes);
    prop_assert!(p.arena_bytes <= p.arena_bytes_no_reuse);
    prop_assert_eq!(
        p.arena_bytes_no_reuse,
        p.buffers.iter().map(|b| b.size).sum::<usize>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn plan_is_sound_on_random_graphs(seed in any::<u64>(), steps in 1usize..40) {
        let mut g = passes_util::random_graph(seed, steps);
        let p = plan(&g).expect("acyclic");
        check_plan(&g, &p)?;
        Pipeline::default().run(&mut g).expect("pipeline");
        let p = plan(&g).expect("acyclic");
        check_plan(&g, &p)?;
    }
}

#[test]
fn reuse_pays_off_on_a_long_chain() {
    // 30 big intermediates in a chain: only two need to be live at once.
    let mut g = passes_util::random_graph(1, 0);
    let mut x = g.find("x0").unwrap();
    for _ in 0..30 {
        x = g.tanh(x).unwrap();
    }
    g.add_output("y", x).unwrap();
    let p = plan(&g).unwrap();
    assert_eq!(p.arena_bytes, 2 * ALIGN);
    assert_eq!(p.arena_bytes_no_reuse, 30 * ALIGN);
}
