//! Memory plan properties, on random graphs (with extra updates that can be computed in place
//! or must be staged, random folded transposes and random scratch space) and on the Adam
//! training step of every corpus model as the JIT plans it:
//! - structure: the schedule is topological, storage follows the rules (leaves, aliases of
//!   reshapes and folded transposes, direct outputs, in-place updates), lifetimes cover every
//!   read through any alias, buffers live at the same time never share bytes, offsets are
//!   aligned, and the arena lies between the peak of live bytes and the size without reuse;
//! - behaviour: a simulation of the step over the planned bytes (every node writes its
//!   storage and scratch, the end copies outputs, stages and writes updates) finds every value
//!   intact wherever it is read, so no write clobbers a value still needed;
//! - the JIT's compile report shows the planned arena.

mod common;

use gradlift::codegen::{self, CompileOptions, MatmulKernel};
use gradlift::passes::plan::{
    plan, plan_with, BufferKind, MemoryPlan, PlanOptions, Storage, ALIGN, ELEMENT_BYTES,
};
use gradlift::passes::Pipeline;
use gradlift::runtime;
use gradlift::{Graph, NodeId, Op};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

fn check_plan(g: &Graph, p: &MemoryPlan, opts: &PlanOptions) -> Result<(), TestCaseError> {
    let pos: HashMap<_, _> = p
        .schedule
        .iter()
        .enumerate()
        .map(|(i, &n)| (n, i))
        .collect();
    let end = p.schedule.len();
    prop_assert_eq!(end, g.len());
    prop_assert_eq!(p.storage.len(), g.len());
    let kept: HashSet<NodeId> = g
        .outputs()
        .iter()
        .map(|o| o.node)
        .chain(g.updates().iter().map(|u| u.value))
        .collect();
    for &id in &p.schedule {
        for o in g.operands(id) {
            prop_assert!(pos[&o] < pos[&id], "operand scheduled after its user");
        }
        let s = p.storage[&id];
        prop_assert_eq!(
            s == Storage::Leaf,
            g[id].op.is_leaf(),
            "leaf storage iff leaf"
        );
        match s {
            Storage::Alias(root) => {
                let aliasing =
                    matches!(g[id].op, Op::Reshape { .. }) || opts.folded_transposes.contains(&id);
                prop_assert!(aliasing, "only reshapes and folded transposes alias");
                let src = g.operands(id)[0];
                prop_assert_eq!(p.resolve(src).map(|(r, _)| r), Some(root));
                prop_assert!(!matches!(p.storage[&root], Storage::Alias(_)));
            }
            Storage::Output(i) => prop_assert_eq!(g.outputs()[i].node, id),
            Storage::InPlace(t) => {
                prop_assert!(g.updates().iter().any(|u| u.target == t && u.value == id));
            }
            Storage::Arena(i) => {
                prop_assert_eq!(p.buffers[i].node, id);
                prop_assert_eq!(p.buffers[i].kind, BufferKind::Value);
            }
            Storage::Leaf => {}
        }
        // every read of a value in the arena happens while its buffer is live
        if let Some((_, Storage::Arena(i))) = p.resolve(id) {
            let b = &p.buffers[i];
            prop_assert!(b.first <= pos[&id]);
            // (a fused_result or scan_result does not read its node: it is written with it)
            for u in g.users(id).into_iter().filter(|&u| writer(g, u) != id) {
                prop_assert!(pos[&u] <= b.last, "buffer dies before a user");
            }
            if kept.contains(&id) {
                prop_assert_eq!(b.last, end, "output or update value dies before the end");
            }
        }
    }
    for b in &p.buffers {
        match b.kind {
            BufferKind::Value => {
                prop_assert_eq!(b.bytes, g[b.node].ty.shape.numel() * ELEMENT_BYTES);
                prop_assert_eq!(b.first, pos[&writer(g, b.node)]);
            }
            BufferKind::Scratch => {
                prop_assert_eq!(Some(&b.bytes), opts.scratch_bytes.get(&b.node));
                prop_assert_eq!((b.first, b.last), (pos[&b.node], pos[&b.node]));
            }
            BufferKind::Staged { update } => {
                prop_assert_eq!(g.updates()[update].value, b.node);
                prop_assert_eq!((b.first, b.last), (end, end));
            }
        }
        prop_assert!(b.size >= b.bytes && b.size % ALIGN == 0 && b.size < b.bytes + ALIGN);
        prop_assert_eq!(b.offset % ALIGN, 0);
        prop_assert!(b.first <= b.last && b.last <= end);
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
    simulate(g, p).map_err(TestCaseError::fail)
}

/// The node whose code writes `id`'s value: a `fused_result` is written by its fused node.
fn writer(g: &Graph, id: NodeId) -> NodeId {
    match g[id].op {
        Op::FusedResult { .. } | Op::ScanResult { .. } => g.operands(id)[0],
        _ => id,
    }
}

/// A unit of memory in the simulation: a 64-byte chunk of the arena, or a whole buffer
/// outside it (a leaf's, an output's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cell {
    Arena(usize),
    Leaf(NodeId),
    Output(usize),
}

/// What a cell holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Value(NodeId),
    Scratch(NodeId),
    Staged(usize),
}

fn chunks(offset: usize, size: usize) -> Vec<Cell> {
    (offset / ALIGN..(offset + size).div_ceil(ALIGN))
        .map(Cell::Arena)
        .collect()
}

/// The cells holding `node`'s value, and the node whose value they hold (its root).
fn cells(p: &MemoryPlan, node: NodeId) -> (Vec<Cell>, NodeId) {
    let (root, s) = p.resolve(node).expect("every node has storage");
    let cells = match s {
        Storage::Leaf => vec![Cell::Leaf(root)],
        Storage::Arena(i) => chunks(p.buffers[i].offset, p.buffers[i].size),
        Storage::Output(i) => vec![Cell::Output(i)],
        Storage::InPlace(t) => vec![Cell::Leaf(t)],
        Storage::Alias(_) => unreachable!("resolve returns the root's storage"),
    };
    (cells, root)
}

/// Runs the step over the planned bytes, checking that every value is intact when read (see
/// the module doc).
fn simulate(g: &Graph, p: &MemoryPlan) -> Result<(), String> {
    let mut mem: HashMap<Cell, Content> = HashMap::new();
    let intact = |mem: &HashMap<Cell, Content>, node: NodeId| {
        let (cs, root) = cells(p, node);
        cs.iter().all(|c| mem.get(c) == Some(&Content::Value(root)))
    };
    for &id in &p.schedule {
        if g[id].op.is_leaf() {
            mem.insert(Cell::Leaf(id), Content::Value(id));
        }
    }
    for (t, &id) in p.schedule.iter().enumerate() {
        let no_code = matches!(g[id].op, Op::FusedResult { .. });
        if no_code || matches!(p.storage[&id], Storage::Leaf | Storage::Alias(_)) {
            continue; // no code of their own
        }
        let operands = g.operands(id);
        for &o in &operands {
            if !intact(&mem, o) {
                return Err(format!("position {t}: operand {} clobbered", o.index()));
            }
        }
        // the node's result and, for a multi-result fused node, its other results
        let mut written = vec![id];
        written.extend(
            g.users(id)
                .into_iter()
                .filter(|&u| writer(g, u) == id && u != id),
        );
        for &w in &written {
            for c in cells(p, w).0 {
                mem.insert(c, Content::Value(w));
            }
        }
        if let Some(s) = p.scratch(id) {
            for c in chunks(s.offset, s.size) {
                mem.insert(c, Content::Scratch(id));
            }
        }
        if let Some(w) = written.iter().find(|&&w| !intact(&mem, w)) {
            return Err(format!(
                "position {t}: result {} overlaps the scratch or another result",
                w.index()
            ));
        }
        for &o in &operands {
            // in place: the update value reads its target element for element as it writes
            let in_place_read = written
                .iter()
                .any(|&w| p.storage[&w] == Storage::InPlace(o));
            if !in_place_read && !intact(&mem, o) {
                return Err(format!(
                    "position {t}: node {} overwrites its operand {}",
                    id.index(),
                    o.index()
                ));
            }
        }
    }
    for o in g.outputs() {
        if !intact(&mem, o.node) {
            return Err(format!("output {} clobbered", o.name));
        }
    }
    for (k, u) in g.updates().iter().enumerate() {
        if let Some(b) = p.staged(k) {
            if !intact(&mem, u.value) {
                return Err(format!("update {k}: value clobbered before staging"));
            }
            for c in chunks(b.offset, b.size) {
                mem.insert(c, Content::Staged(k));
            }
        }
    }
    for (k, u) in g.updates().iter().enumerate() {
        let ok = match p.staged(k) {
            Some(b) => chunks(b.offset, b.size)
                .iter()
                .all(|c| mem.get(c) == Some(&Content::Staged(k))),
            None => intact(&mem, u.value),
        };
        if !ok {
            return Err(format!("update {k}: value clobbered before it is written"));
        }
        mem.insert(Cell::Leaf(u.target), Content::Value(u.value));
    }
    Ok(())
}

/// Adds to a random graph (see `common::passes::random_graph`) updates that exercise the planner:
/// `kind` 0: `w <- w - 0.1 * transpose(x0)` (elementwise, may be computed in place); 1: a swap
/// `w <- reshape(m)`, `m <- reshape(w)` when `m` has no update yet (both staged); else none.
fn add_updates(g: &mut Graph, kind: u8) {
    let w = g.find("w").expect("random graphs have param w");
    let m = g.find("m").expect("random graphs have state m");
    match kind {
        0 => {
            let x = g.find("x0").expect("random graphs have input x0");
            let t = g.transpose(x, &[1, 0]).unwrap();
            let c = g.scalar(0.1);
            let d = g.mul(t, c).unwrap();
            let new = g.sub(w, d).unwrap();
            g.add_update(w, new).unwrap();
        }
        1 if !g.updates().iter().any(|u| u.target == m) => {
            let a = g.reshape(m, [3, 2]).unwrap();
            let b = g.reshape(w, [2, 3]).unwrap();
            g.add_update(w, a).unwrap();
            g.add_update(m, b).unwrap();
        }
        _ => {}
    }
}

/// Options a code generator could pass: some transposes folded, some nodes with scratch.
fn random_options(g: &Graph, seed: u64) -> PlanOptions {
    let mut o = PlanOptions::default();
    for id in g.node_ids() {
        let h = (id.index() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        if matches!(g[id].op, Op::Transpose { .. }) && h.is_multiple_of(2) {
            o.folded_transposes.insert(id);
        }
        if !g[id].op.is_leaf() && h.is_multiple_of(5) {
            o.scratch_bytes.insert(id, (h % 300) as usize + 1);
        }
    }
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn plan_is_sound_on_random_graphs(
        seed in any::<u64>(),
        steps in 1usize..40,
        kind in 0u8..3,
        opt_seed in any::<u64>(),
    ) {
        let mut g = common::passes::random_graph(seed, steps);
        add_updates(&mut g, kind);
        let p = plan(&g).expect("acyclic");
        check_plan(&g, &p, &PlanOptions::default())?;
        let opts = random_options(&g, opt_seed);
        check_plan(&g, &plan_with(&g, &opts).expect("acyclic"), &opts)?;
        Pipeline::default().run(&mut g).expect("pipeline");
        let p = plan(&g).expect("acyclic");
        check_plan(&g, &p, &PlanOptions::default())?;
        let opts = random_options(&g, opt_seed);
        check_plan(&g, &plan_with(&g, &opts).expect("acyclic"), &opts)?;
    }
}

#[test]
fn reuse_pays_off_on_a_long_chain() {
    // 30 big intermediates in a chain (the last is the output): only two need to be live at
    // once in the arena.
    let mut g = common::passes::random_graph(1, 0);
    let mut x = g.find("x0").unwrap();
    for _ in 0..31 {
        x = g.tanh(x).unwrap();
    }
    g.add_output("y", x).unwrap();
    let p = plan(&g).unwrap();
    assert_eq!(p.storage[&x], Storage::Output(g.outputs().len() - 1));
    assert_eq!(p.arena_bytes, 2 * ALIGN);
    assert_eq!(p.arena_bytes_no_reuse, 30 * ALIGN);
}

#[test]
fn swapped_updates_are_staged_and_elementwise_updates_in_place() {
    let graph = |kind| {
        let mut g = Graph::new("swap");
        g.param("w", [3, 2], gradlift::Init::Zeros).unwrap();
        g.state("m", [2, 3], gradlift::Init::Ones).unwrap();
        g.input("x0", gradlift::TensorType::f32([2, 3])).unwrap();
        add_updates(&mut g, kind);
        g
    };
    let g = graph(1);
    let p = plan(&g).unwrap();
    assert!(p.staged(0).is_some() && p.staged(1).is_some(), "{p:?}");
    assert_eq!(p.in_place_updates(), 0);
    check_plan(&g, &p, &PlanOptions::default()).unwrap();

    let g = graph(0);
    let p = plan(&g).unwrap();
    assert_eq!(p.in_place_updates(), 1);
    assert!(p.staged(0).is_none());
    check_plan(&g, &p, &PlanOptions::default()).unwrap();
}

#[test]
fn scratch_is_live_only_at_its_node() {
    let mut g = common::passes::random_graph(1, 0);
    let x = g.find("x0").unwrap();
    let a = g.tanh(x).unwrap();
    let b = g.exp(a).unwrap();
    let c = g.neg(b).unwrap();
    g.add_output("c", c).unwrap();
    let opts = PlanOptions {
        scratch_bytes: [(b, 1000)].into_iter().collect(),
        ..PlanOptions::default()
    };
    let p = plan_with(&g, &opts).unwrap();
    let s = p.scratch(b).unwrap();
    assert_eq!((s.bytes, s.size), (1000, 1024));
    // live with a (operand) and b (result) at b's position, then free for nothing else
    assert_eq!(p.peak_live_bytes, 1024 + 2 * ALIGN);
    assert_eq!(p.arena_bytes, p.peak_live_bytes);
    check_plan(&g, &p, &opts).unwrap();
}

#[test]
fn jit_plans_of_the_corpus_training_steps_are_sound_and_reported() {
    for name in ["linear_regression", "mlp", "cnn", "rnn"] {
        let mut g = common::adam_step(name);
        Pipeline::default().run(&mut g).unwrap();
        // the graph as the JIT compiles it (batch-major scans between transposes)
        let g = gradlift::scan::time_major(&g).unwrap_or(g);
        for matmul in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
            let opts = CompileOptions {
                matmul,
                verify: false,
                ..CompileOptions::default()
            };
            let p = codegen::memory_plan(&g, &opts).unwrap();
            // the options the JIT passed: recover them from the plan
            let plan_opts = PlanOptions {
                folded_transposes: p
                    .schedule
                    .iter()
                    .copied()
                    .filter(|id| {
                        matches!(g[*id].op, Op::Transpose { .. })
                            && matches!(p.storage[id], Storage::Alias(_))
                    })
                    .collect(),
                scratch_bytes: p
                    .buffers
                    .iter()
                    .filter(|b| b.kind == BufferKind::Scratch)
                    .map(|b| (b.node, b.bytes))
                    .collect(),
            };
            assert_eq!(p, plan_with(&g, &plan_opts).unwrap(), "{name}: one planner");
            if let Err(e) = check_plan(&g, &p, &plan_opts) {
                panic!("{name} {matmul:?}: {e}");
            }
            let exe = runtime::compile(&g, &opts).unwrap();
            assert_eq!(exe.report().arena_bytes, p.arena_bytes, "{name} {matmul:?}");
            assert_eq!(exe.report().in_place_updates, p.in_place_updates());
            eprintln!("{name} {matmul:?}: {p}");
        }
    }
}
