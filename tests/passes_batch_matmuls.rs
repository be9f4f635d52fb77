//! The `batch_matmuls` pass: independent matmuls that share a weight become one GEMM, sums of
//! products (weight gradients) become one GEMM, and both keep the interpreter's and the JIT's
//! results: on the RNN's forward graph and training step, on graphs where some matmuls depend
//! on others, with left operands of different shapes and transposed operands, and on seeded
//! random RNN-like graphs.

mod common;

use common::passes::{compare_eval, print};
use common::{host_inputs, jit_results, random_feeds};
use gradlift::codegen::MatmulKernel;
use gradlift::init::Rng;
use gradlift::optim::{self, Optimizer};
use gradlift::passes::{self, batch_matmuls, check_graph, dce, PassReport, Pipeline};
use gradlift::{text, Graph, Init, NodeId, Op, TensorType};

fn model(file: &str) -> Graph {
    let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text::parse(&src, &path).unwrap_or_else(|e| panic!("{e}"))
}

/// The GEMMs `g` computes: matmul nodes and fused bodies that start with one.
fn gemms(g: &Graph) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| match &g[id].op {
            Op::Matmul => true,
            Op::Fused(body) => body.insts.iter().any(|i| matches!(i.op, Op::Matmul)),
            _ => false,
        })
        .count()
}

fn count(r: &PassReport, what: &str) -> usize {
    r.counts.get(what).copied().unwrap_or(0)
}

/// Runs the pass; checks the graph is valid and a second run changes nothing.
fn batched(g: &Graph) -> (Graph, PassReport) {
    let mut h = g.clone();
    let report = batch_matmuls::run(&mut h);
    let errors = check_graph(&h);
    assert!(errors.is_empty(), "{}: {errors:?}", g.name);
    let once = print(&h);
    let again = batch_matmuls::run(&mut h);
    assert!(!again.changed(), "{}: second run: {again}", g.name);
    assert_eq!(print(&h), once, "{}: second run changed the text", g.name);
    (h, report)
}

/// The default pipeline without `batch_matmuls`.
fn pipeline_without_batching() -> Pipeline {
    let names: Vec<&str> = passes::DEFAULT_PIPELINE
        .iter()
        .copied()
        .filter(|&n| n != "batch_matmuls")
        .collect();
    Pipeline::new(&names).unwrap()
}

/// `g` compiled (both matmul kernels) agrees with the interpreter on `reference` (the graph
/// before any pass).
fn jit_matches(reference: &Graph, g: &Graph, seed: u64) {
    common::jit_matches(&g.name, reference, g, seed);
}

#[test]
fn the_rnn_forward_has_one_input_projection_gemm_and_exactly_the_same_results() {
    let g = model("rnn_unrolled.ir");
    let (mut h, report) = batched(&g);
    assert_eq!(count(&report, "shared_rhs"), 28, "{report}");
    assert_eq!(count(&report, "sum_terms"), 0, "{report}");
    assert!(
        report
            .remarks
            .iter()
            .any(|r| r.contains("28 of 28 matmuls by %simple_rnn.recurrent_kernel")),
        "{report}"
    );
    dce::run(&mut h);
    // 28 input projections + 28 recurrent products + the dense layer -> 1 + 28 + 1
    assert_eq!((gemms(&g), gemms(&h)), (57, 30));
    // the stack is a view of %x: no slice of %x is left
    let x = h.find("x").unwrap();
    let users: Vec<&str> = h.users(x).iter().map(|&u| h[u].op.name()).collect();
    assert_eq!(users, ["reshape"]);
    // every element is the same dot product: exact in the interpreter
    compare_eval(&g, &h, 3, 0.0).unwrap();
    // and bit for bit in the JIT, with either matmul kernel
    let feeds = random_feeds(&g, &mut Rng::new(4), 2.0);
    let inputs = host_inputs(&g, &feeds);
    for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
        assert_eq!(
            jit_results(&g, &inputs, kernel),
            jit_results(&h, &inputs, kernel),
            "{kernel:?}"
        );
    }
}

#[test]
fn the_rnn_training_step_has_81_fewer_gemms_and_the_same_results() {
    let mut step = model("rnn_unrolled.ir");
    optim::training_step(&mut step, "loss", &Optimizer::adam()).unwrap();
    let mut with = step.clone();
    let reports = Pipeline::default().run(&mut with).unwrap();
    let mut without = step.clone();
    pipeline_without_batching().run(&mut without).unwrap();
    let report = reports.iter().find(|r| r.pass == "batch_matmuls").unwrap();
    // forward: the 28 input projections; backward: the two weight gradients' 28 products each
    assert_eq!(count(report, "shared_rhs"), 28, "{report}");
    assert_eq!(count(report, "sum_terms"), 56, "{report}");
    assert_eq!((gemms(&without), gemms(&with)), (142, 142 - 27 * 3));
    compare_eval(&step, &with, 5, 1e-9).unwrap();
    jit_matches(&step, &with, 6);
}

/// `h_t = tanh(h_(t-1) w)`: each product needs the one before.
#[test]
fn matmuls_that_depend_on_one_another_are_not_batched() {
    let mut g = Graph::new("chain");
    let x = g.input("x", TensorType::f32([2, 4])).unwrap();
    let w = g
        .param("w", [4, 4], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let mut h = x;
    for _ in 0..4 {
        let p = g.matmul(h, w).unwrap();
        h = g.tanh(p).unwrap();
    }
    g.add_output("h", h).unwrap();
    let (after, report) = batched(&g);
    assert!(!report.changed(), "{report}");
    assert_eq!(print(&after), print(&g));
    assert!(
        report.remarks[0].contains("4 of 4 matmuls by %w: they depend on one another (4 levels)"),
        "{report}"
    );

    // two chains of two: the first products of both are one GEMM, the second ones another
    let mut g = Graph::new("two_chains");
    let w = g
        .param("w", [3, 3], Init::GlorotUniform { seed: 1 })
        .unwrap();
    for (name, rows) in [("a", 2), ("b", 5)] {
        let x = g.input(name, TensorType::f32([rows, 3])).unwrap();
        let p = g.matmul(x, w).unwrap();
        let t = g.tanh(p).unwrap();
        let q = g.matmul(t, w).unwrap();
        g.add_output(&format!("{name}2"), q).unwrap();
    }
    let (mut after, report) = batched(&g);
    assert_eq!(count(&report, "shared_rhs"), 4, "{report}");
    dce::run(&mut after);
    assert_eq!((gemms(&g), gemms(&after)), (4, 2));
    compare_eval(&g, &after, 1, 0.0).unwrap();
    jit_matches(&g, &after, 2);
}

/// `ir/passes/batch_matmuls_concat.ir`: left operands of different row counts, transposed
/// left operands, a sum of products with other terms, a dependent matmul and a shared operand
/// that is data (not a weight).
#[test]
fn concatenated_stacks_of_different_and_transposed_operands() {
    let g = model("passes/batch_matmuls_concat.ir");
    let (mut h, report) = batched(&g);
    assert_eq!(count(&report, "shared_rhs"), 4, "{report}");
    assert_eq!(count(&report, "sum_terms"), 2, "{report}");
    dce::run(&mut h);
    let op_of = |name: &str| h[h.output(name).unwrap()].op.name();
    for (out, op) in [
        ("ya", "slice"),
        ("yb", "slice"),
        ("yc", "slice"),
        ("yd", "slice"),
    ] {
        assert_eq!(op_of(out), op, "{out}");
    }
    // %e reads %ya: it stays a matmul of its own; %yq and %yr share data, not a weight
    for out in ["e", "yq", "yr"] {
        assert_eq!(op_of(out), "matmul", "{out}");
    }
    // ya, yb: one [6,3] x [3,5]; yc, yd: transpose(concat(%c, %d, axis=1)) x %v
    let yc = h.operands(h.output("yc").unwrap())[0];
    let [lhs, _] = h.operands(yc)[..] else {
        panic!()
    };
    assert_eq!(h[lhs].op, Op::Transpose { perm: vec![1, 0] });
    let inner = h.operands(lhs)[0];
    assert_eq!(h[inner].op, Op::Concat { axis: 1 });
    // the sum: one product of [%f %k] and [%g; %n], plus %c0
    let sum = h.output("sum").unwrap();
    let [p, c0] = h.operands(sum)[..] else {
        panic!()
    };
    assert_eq!(h[c0].name.as_deref(), Some("c0"));
    let [l, r] = h.operands(p)[..] else { panic!() };
    assert_eq!(
        (h[l].ty.clone(), h[r].ty.clone()),
        (TensorType::f32([4, 5]), TensorType::f32([5, 5]))
    );
    compare_eval(&g, &h, 9, 1e-12).unwrap();
    jit_matches(&g, &h, 10);
    let mut piped = g.clone();
    Pipeline::default().run(&mut piped).unwrap();
    jit_matches(&g, &piped, 11);
}

// ---- seeded random RNN-like graphs ------------------------------------------------------

/// A random graph around the RNN pattern: an input `x: [B,T,F]` cut into slices along axis 1
/// (single steps or runs of steps, sometimes not all of them), other inputs, the weights
/// `w: [F,H]`, `u: [H,H]`, `v: [H,F]`, random chains of matmuls by them (independent and
/// dependent ones), transposed left operands, and sums of products `f^T h` (weight-gradient
/// shapes), plus some of the values as outputs.
fn random_rnn_like(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut below = |n: usize| rng.below(n as u64) as usize;
    let (b, t, f, hh) = (1 + below(3), 2 + below(3), 1 + below(4), 1 + below(4));
    let mut g = Graph::new(format!("rnn_like_{seed}"));
    let x = g.input("x", TensorType::f32([b, t, f])).unwrap();
    let w = g
        .param("w", [f, hh], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let u = g
        .param("u", [hh, hh], Init::GlorotUniform { seed: 2 })
        .unwrap();
    let v = g
        .param("v", [hh, f], Init::GlorotUniform { seed: 3 })
        .unwrap();
    // values of width F and of width H
    let mut pool_f: Vec<NodeId> = Vec::new();
    let mut pool_h: Vec<NodeId> = Vec::new();
    // a partition of 0..T into runs, created in a random order, some left out
    let mut cuts = vec![0];
    for s in 1..t {
        if below(3) > 0 {
            cuts.push(s);
        }
    }
    cuts.push(t);
    let mut runs: Vec<(usize, usize)> = cuts.windows(2).map(|c| (c[0], c[1])).collect();
    for i in (1..runs.len()).rev() {
        runs.swap(i, below(i + 1));
    }
    let skip_one = below(4) == 0 && runs.len() > 1;
    let mut pieces = Vec::new();
    for (k, &(s, e)) in runs.iter().enumerate() {
        if skip_one && k == 0 {
            continue;
        }
        let sl = g.slice(x, &[0, s, 0], &[b, e, f]).unwrap();
        let r = g.reshape(sl, [b * (e - s), f]).unwrap();
        pool_f.push(r);
        pieces.push(r);
    }
    for i in 0..below(3) {
        let m = 1 + below(4);
        let a = g.input(&format!("a{i}"), TensorType::f32([m, f])).unwrap();
        pool_f.push(a);
        if below(2) == 0 {
            // a transposed left operand
            let c = g.input(&format!("c{i}"), TensorType::f32([f, m])).unwrap();
            let ct = g.transpose(c, &[1, 0]).unwrap();
            pool_f.push(ct);
        }
    }
    let mut outputs = Vec::new();
    for _ in 0..4 + below(10) {
        match below(8) {
            6 => {
                // every piece of x times w, in a random order (the input projections)
                let mut order = pieces.clone();
                for i in (1..order.len()).rev() {
                    order.swap(i, below(i + 1));
                }
                for a in order {
                    let y = g.matmul(a, w).unwrap();
                    pool_h.push(y);
                }
            }
            7 if !pool_h.is_empty() => {
                // sum over the pieces of piece^T h (the input weight's gradient)
                let mut s = None;
                for &a in &pieces {
                    let rows = g[a].ty.shape.dims()[0];
                    let same: Vec<NodeId> = pool_h
                        .iter()
                        .copied()
                        .filter(|&h| g[h].ty.shape.dims()[0] == rows)
                        .collect();
                    let h = match same.get(below(same.len().max(1))) {
                        Some(&h) => h,
                        None => g.matmul(a, w).unwrap(),
                    };
                    let at = g.transpose(a, &[1, 0]).unwrap();
                    let p = g.matmul(at, h).unwrap();
                    s = Some(match s {
                        None => p,
                        Some(s) => g.add2(s, p).unwrap(),
                    });
                }
                outputs.extend(s);
            }
            0 | 1 => {
                let a = pool_f[below(pool_f.len())];
                let y = g.matmul(a, w).unwrap();
                pool_h.push(y);
            }
            2 if !pool_h.is_empty() => {
                let h = pool_h[below(pool_h.len())];
                let y = g.matmul(h, u).unwrap();
                let y = g.tanh(y).unwrap();
                pool_h.push(y);
            }
            3 if !pool_h.is_empty() => {
                let h = pool_h[below(pool_h.len())];
                let y = g.matmul(h, v).unwrap();
                pool_f.push(y);
            }
            4 if !pool_h.is_empty() => {
                // h_(t) = tanh(a w + h u): a step of a recurrence
                let h = pool_h[below(pool_h.len())];
                let rows = g[h].ty.shape.dims()[0];
                let same: Vec<NodeId> = pool_f
                    .iter()
                    .copied()
                    .filter(|&a| g[a].ty.shape.dims()[0] == rows)
                    .collect();
                if let Some(&a) = same.get(below(same.len().max(1))) {
                    let p = g.matmul(a, w).unwrap();
                    let r = g.matmul(h, u).unwrap();
                    let z = g.add2(p, r).unwrap();
                    let y = g.tanh(z).unwrap();
                    pool_h.push(y);
                }
            }
            _ if !pool_h.is_empty() => {
                // sum_i f_i^T h_i (+ w): the shape of a weight gradient
                let mut terms = Vec::new();
                for _ in 0..2 + below(3) {
                    let h = pool_h[below(pool_h.len())];
                    let rows = g[h].ty.shape.dims()[0];
                    let same: Vec<NodeId> = pool_f
                        .iter()
                        .copied()
                        .filter(|&a| g[a].ty.shape.dims()[0] == rows)
                        .collect();
                    if let Some(&a) = same.get(below(same.len().max(1))) {
                        let at = g.transpose(a, &[1, 0]).unwrap();
                        terms.push(g.matmul(at, h).unwrap());
                    }
                }
                if below(3) == 0 {
                    terms.push(w);
                }
                if let Some((&first, rest)) = terms.split_first() {
                    let mut s = first;
                    for &t in rest {
                        s = g.add2(s, t).unwrap();
                    }
                    outputs.push(s);
                }
            }
            _ => {}
        }
    }
    for (i, &o) in outputs.iter().enumerate() {
        g.add_output(&format!("sum{i}"), o).unwrap();
    }
    let pools: Vec<NodeId> = pool_h.iter().chain(&pool_f).copied().collect();
    for i in 0..1 + below(3) {
        let o = pools[below(pools.len())];
        g.add_output(&format!("out{i}"), o).unwrap();
    }
    if let Some(&last) = pool_h.last() {
        g.add_output("last", last).unwrap();
    }
    g
}

#[test]
fn random_rnn_like_graphs_keep_their_results() {
    let (mut shared, mut summed, mut viewed) = (0, 0, 0);
    for seed in 0..96 {
        let g = random_rnn_like(seed);
        assert!(
            check_graph(&g).is_empty(),
            "seed {seed}: {:?}",
            check_graph(&g)
        );
        let (h, report) = batched(&g);
        shared += count(&report, "shared_rhs");
        summed += count(&report, "sum_terms");
        // a stack that is a view of x: a reshape of x to [B*T, F]
        let x = h.find("x").unwrap();
        let rows = h[x].ty.shape.dims()[..2].iter().product::<usize>();
        viewed +=
            usize::from(h.users(x).iter().any(|&u| {
                matches!(h[u].op, Op::Reshape { .. }) && h[u].ty.shape.dims()[0] == rows
            }));
        if let Err(e) = compare_eval(&g, &h, seed, 1e-9) {
            panic!("seed {seed}: {e}\n{report}\n{}", print(&g));
        }
        let mut piped = g.clone();
        Pipeline::default().run(&mut piped).unwrap();
        compare_eval(&g, &piped, seed + 1, 1e-9).unwrap();
        if seed % 4 == 0 {
            jit_matches(&g, &piped, seed);
        }
    }
    eprintln!("shared_rhs {shared}, sum_terms {summed}, stacks viewing x in {viewed} graphs");
    assert!(
        shared >= 200 && summed >= 60 && viewed >= 12,
        "the pass fired too rarely: {shared} {summed} {viewed}"
    );
}

/// When the RNN's input is computed from a param (here a [5,5] projection `e` of the raw
/// input), its gradient needs `dx_t = dz_t w^T` at every step: independent matmuls by the
/// weight's transpose (one node after `cse`), which become one GEMM too.
#[test]
fn input_gradients_by_the_transposed_weight_are_one_gemm() {
    let (b, t, f, h) = (4, 3, 5, 6);
    let mut g = Graph::new("rnn_dx");
    let raw = g.input("raw", TensorType::f32([b, t, f])).unwrap();
    let e = g
        .param("e", [f, f], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let w = g
        .param("w", [f, h], Init::GlorotUniform { seed: 2 })
        .unwrap();
    let u = g
        .param("u", [h, h], Init::GlorotUniform { seed: 3 })
        .unwrap();
    let flat = g.reshape(raw, [b * t, f]).unwrap();
    let proj = g.matmul(flat, e).unwrap();
    let x = g.reshape(proj, [b, t, f]).unwrap();
    let mut state: Option<NodeId> = None;
    for step in 0..t {
        let s = g.slice(x, &[0, step, 0], &[b, step + 1, f]).unwrap();
        let xt = g.reshape(s, [b, f]).unwrap();
        let mut z = g.matmul(xt, w).unwrap();
        if let Some(prev) = state {
            let r = g.matmul(prev, u).unwrap();
            z = g.add2(z, r).unwrap();
        }
        state = Some(g.tanh(z).unwrap());
    }
    let loss = g.mean_all(state.unwrap()).unwrap();
    g.add_output("loss", loss).unwrap();
    let params = g.params();
    let grads = gradlift::autodiff::grad(&mut g, loss, &params).unwrap();
    for (p, d) in params.iter().zip(grads) {
        g.add_output(&format!("d_{}", g[*p].name.clone().unwrap()), d)
            .unwrap();
    }
    let mut with = g.clone();
    let reports = Pipeline::default().run(&mut with).unwrap();
    let report = reports.iter().find(|r| r.pass == "batch_matmuls").unwrap();
    // forward x_t w (3) and backward dz_t w^T (3)
    assert_eq!(count(report, "shared_rhs"), 2 * t, "{report}");
    let mut without = g.clone();
    pipeline_without_batching().run(&mut without).unwrap();
    // 3 -> 1 forward, 3 -> 1 for dx, and the sums of w's and u's gradients 3 -> 1, 2 -> 1
    assert_eq!(gemms(&without) - gemms(&with), 2 + 2 + 2 + 1);
    // the two pipelines fold alike (in f32); they differ only by the batching
    compare_eval(&without, &with, 12, 1e-9).unwrap();
    jit_matches(&g, &with, 13);
}
