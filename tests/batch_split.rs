//! The batch analysis and the split of a training step (`batch`, `optim::sharded_training_step`):
//! which graphs split, the refusals with their reasons, and the printed shard and update
//! graphs (snapshots).

use gradlift::batch::{analyze, rebatch};
use gradlift::optim::{sharded_training_step, Optimizer};
use gradlift::passes::Pipeline;
use gradlift::text::{parse, print};
use gradlift::verify::verify;
use gradlift::Graph;

fn model(file: &str) -> Graph {
    let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
    parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

fn graph(body: &str) -> Graph {
    let text = format!(
        "graph g {{\ninputs:\n  %x: f32[8,3] = input\nparams:\n  %w: f32[3,2] = param glorot_uniform(seed=1)\nbody:\n{body}\n}}"
    );
    parse(&text, "g.ir").unwrap()
}

#[test]
fn the_corpus_models_rebatch_to_valid_graphs() {
    for (file, batch) in [("cnn.ir", 64), ("mlp.ir", 64), ("rnn.ir", 32)] {
        let g = model(file);
        let axes = analyze(&g, batch).unwrap();
        let small = rebatch(&g, &axes, batch / 4);
        verify(&small).unwrap_or_else(|e| panic!("{file}: {e}"));
        let x = small.find("x").unwrap();
        assert_eq!(small[x].ty.shape.dims()[0], batch / 4);
        // the params keep their shapes (the RNN's recurrent kernel is [64,64] at batch 64 too)
        for p in small.params() {
            assert_eq!(small[p].ty, g[p].ty);
        }
    }
}

#[test]
fn the_rnn_zero_state_follows_the_batch() {
    let g = model("rnn_unrolled.ir");
    let axes = analyze(&g, 32).unwrap();
    let h0 = g.find("h0").unwrap();
    assert!(
        axes.batched.contains(&h0),
        "the splat const h0 feeds batched rows"
    );
    assert!(axes.means.contains(&g.output("loss").unwrap()));
}

#[test]
fn refusals_name_the_node_and_the_reason() {
    let cases = [
        (
            "  %y: f32[8,2] = matmul %x, %w\n  %s: f32[] = reduce_sum %y, axes=[0,1], keepdims=false\noutputs:\n  loss = %s",
            "reduce_sum over the batch",
        ),
        (
            "  %y: f32[8,2] = matmul %x, %w\n  %m: f32[] = reduce_mean %y, axes=[0,1], keepdims=false\n  %c: f32[8,2] = sub %y, %m\n  %s: f32[] = reduce_mean %c, axes=[0,1], keepdims=false\noutputs:\n  loss = %s",
            "other than affinely",
        ),
        (
            "  %y: f32[8,2] = matmul %x, %w\n  %m: f32[] = reduce_mean %y, axes=[0,1], keepdims=false\noutputs:\n  loss = %m\n  y = %y",
            "one row per example",
        ),
        (
            "  %t: f32[3,8] = transpose %x, perm=[1,0]\n  %y: f32[3,3] = matmul %t, %x\n  %m: f32[] = reduce_mean %y, axes=[0,1], keepdims=false\noutputs:\n  loss = %m",
            "axis 0 would have to be the batch",
        ),
    ];
    for (body, needle) in cases {
        let g = graph(body);
        let e = analyze(&g, 8).expect_err(body).to_string();
        assert!(e.contains(needle), "{e}\nshould say {needle:?}");
        assert!(e.contains("cannot split g along its batch of 8"), "{e}");
    }
}

#[test]
fn an_l2_penalty_is_data_independent_and_splits() {
    let g = graph(
        "  %y: f32[8,2] = matmul %x, %w\n  %sq: f32[8,2] = mul %y, %y\n  %m: f32[] = reduce_mean %sq, axes=[0,1], keepdims=false\n  %w2: f32[3,2] = mul %w, %w\n  %p: f32[] = reduce_sum %w2, axes=[0,1], keepdims=false\n  %c: f32[] = const 0.01\n  %pc: f32[] = mul %p, %c\n  %loss: f32[] = add %m, %pc\noutputs:\n  loss = %loss",
    );
    let axes = analyze(&g, 8).unwrap();
    assert!(axes.means.contains(&g.output("loss").unwrap()));
}

#[test]
fn uneven_shards_are_refused() {
    let g = model("mlp.ir");
    let e = sharded_training_step(&g, "loss", &Optimizer::sgd(), None, 64, 3, 1).unwrap_err();
    assert!(
        e.to_string().contains("do not split into 3 equal shards"),
        "{e}"
    );
}

#[test]
fn shard_and_update_graphs_of_the_mlp() {
    let g = model("mlp.ir");
    let step = sharded_training_step(&g, "loss", &Optimizer::sgd(), None, 64, 2, 2).unwrap();
    verify(&step.shard).unwrap();
    verify(&step.update).unwrap();
    assert_eq!(step.shard_batch, 32);
    insta::assert_snapshot!("mlp_shard", print(&step.shard));
    insta::assert_snapshot!("mlp_update_sgd_2_shards", print(&step.update));
}

#[test]
fn the_adam_update_splits_by_rows_and_its_step_count_is_the_tail() {
    let g = model("mlp.ir");
    let step = sharded_training_step(&g, "loss", &Optimizer::adam(), None, 64, 2, 3).unwrap();
    assert_eq!(step.update_parts.len(), 3);
    // rows 0..261, 261..522, 522..784 of the first kernel; 128 rows of the bias in thirds
    let offsets: Vec<Vec<(String, usize)>> = step
        .update_parts
        .iter()
        .map(|p| p.offsets.clone())
        .collect();
    assert_eq!(offsets[1][0], ("dense.kernel".to_string(), 261 * 128));
    assert_eq!(offsets[2][1], ("dense.bias".to_string(), 85));
    for p in &step.update_parts {
        verify(&p.graph).unwrap();
        let targets: Vec<String> = p
            .graph
            .updates()
            .iter()
            .map(|u| p.graph[u.target].name.clone().unwrap())
            .collect();
        assert!(
            !targets.contains(&"optimizer.step".to_string()),
            "{targets:?}"
        );
        assert_eq!(targets.len(), 12, "4 params, their m and v: {targets:?}");
    }
    verify(&step.update_tail).unwrap();
    let tail: Vec<&str> = step
        .update_tail
        .updates()
        .iter()
        .map(|u| step.update_tail[u.target].name.as_deref().unwrap())
        .collect();
    assert_eq!(tail, ["optimizer.step"]);
    insta::assert_snapshot!(
        "mlp_adam_update_part_1_of_3",
        print(&step.update_parts[1].graph)
    );
    insta::assert_snapshot!("mlp_adam_update_tail", print(&step.update_tail));
}

/// The pass pipeline runs on the shard graph, after the split: the RNN's shard (8 of 32
/// examples) gets its 28 input projections as one GEMM of the shard's `x` viewed as
/// `[8*28, 28]` rows, and its two recurrent weight gradients as one GEMM each.
#[test]
fn the_rnn_shard_batches_its_matmuls_at_the_shard_batch() {
    let g = model("rnn_unrolled.ir");
    let mut step = sharded_training_step(&g, "loss", &Optimizer::adam(), None, 32, 4, 1).unwrap();
    let reports = Pipeline::default().run(&mut step.shard).unwrap();
    let r = reports.iter().find(|r| r.pass == "batch_matmuls").unwrap();
    assert_eq!(r.counts.get("shared_rhs"), Some(&28), "{r}");
    assert_eq!(r.counts.get("sum_terms"), Some(&56), "{r}");
    let shard = &step.shard;
    let x = shard.find("x").unwrap();
    assert_eq!(shard[x].ty.shape.dims(), [8, 28, 28]);
    let views: Vec<&[usize]> = shard
        .users(x)
        .into_iter()
        .map(|u| shard[u].ty.shape.dims())
        .collect();
    assert_eq!(
        views,
        [&[224usize, 28][..]],
        "x is read only as one [224,28] view"
    );
    verify(shard).unwrap();
}

/// Each optimizer's per-param state is updated by the parts, row for row; the shared step
/// counter (Adam's, AdamW's, a schedule's) only by the tail, and a scheduled update reads no
/// learning-rate input.
#[test]
fn every_optimizer_splits_its_per_param_state_by_rows() {
    use gradlift::optim::{Schedule, STEP_COUNTER};
    let g = model("mlp.ir");
    let decay = Schedule::exponential_decay(0.01, 100, 0.9, false);
    for (opt, per_param, counter) in [
        (Optimizer::adamw(), 3, true),
        (Optimizer::rmsprop(), 2, false),
        (
            Optimizer::rmsprop().with_momentum(0.5).with_centered(true),
            4,
            false,
        ),
        (Optimizer::adagrad(), 2, false),
        (Optimizer::sgd().with_schedule(decay.clone()), 1, true),
        (Optimizer::rmsprop().with_schedule(decay), 2, true),
    ] {
        let step = sharded_training_step(&g, "loss", &opt, None, 64, 2, 3).unwrap();
        assert_eq!(step.update_parts.len(), 3);
        for p in &step.update_parts {
            verify(&p.graph).unwrap();
            let targets: Vec<&str> = p
                .graph
                .updates()
                .iter()
                .map(|u| p.graph[u.target].name.as_deref().unwrap())
                .collect();
            assert!(!targets.contains(&STEP_COUNTER), "{opt:?}: {targets:?}");
            assert_eq!(targets.len(), 4 * per_param, "{opt:?}: {targets:?}");
            assert_eq!(
                p.graph.find("lr").is_some(),
                opt.schedule().is_none(),
                "{opt:?}"
            );
        }
        verify(&step.update_tail).unwrap();
        let tail: Vec<&str> = step
            .update_tail
            .updates()
            .iter()
            .map(|u| step.update_tail[u.target].name.as_deref().unwrap())
            .collect();
        let want: &[&str] = if counter { &[STEP_COUNTER] } else { &[] };
        assert_eq!(tail, want, "{opt:?}");
    }
}

/// Gather and scatter_add along axis 1 of the batched input keep the batch on axis 0: the
/// graph splits, and rebatching resizes the scatter_add's `shape`. Refused, each with its
/// reason: a gather of rows of the batch itself, and a scatter_add along axis 0 (a sum over
/// rows that may be examples).
#[test]
fn gather_and_scatter_add_carry_the_batch() {
    let text = "graph g {
inputs:
  %x: f32[8,5] = input
  %ids: i32[3] = input
body:
  %y: f32[8,3] = gather %x, %ids, axis=1
  %s: f32[8,5] = scatter_add %y, %ids, axis=1, shape=[8,5]
  %l: f32[] = reduce_mean %s, axes=[0,1], keepdims=false
outputs:
  loss = %l
}";
    let g = parse(text, "g.ir").unwrap();
    let axes = analyze(&g, 8).unwrap();
    let small = rebatch(&g, &axes, 2);
    verify(&small).unwrap();
    let s = small.find("s").unwrap();
    assert_eq!(small[s].ty.shape.dims(), [2, 5]);
    assert!(print(&small).contains("scatter_add %y, %ids, axis=1, shape=[2,5]"));
    let ids = small.find("ids").unwrap();
    assert_eq!(
        small[ids].ty.shape.dims(),
        [3],
        "the indices are not examples"
    );
    // picking rows of the batch itself: its axis 0 is the batch and the table's at once
    let rows = text
        .replace(
            "%y: f32[8,3] = gather %x, %ids, axis=1",
            "%y: f32[3,5] = gather %x, %ids, axis=0",
        )
        .replace(
            "scatter_add %y, %ids, axis=1",
            "scatter_add %y, %ids, axis=0",
        );
    let e = analyze(&parse(&rows, "g.ir").unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("%y (gather") && e.contains("would have to be the batch"),
        "{e}"
    );
    // a scatter_add of per-example rows along axis 0 sums over the batch
    let scatter = "graph g {
inputs:
  %x: f32[8,5] = input
  %ids: i32[8] = input
params:
  %t: f32[4,5] = param zeros
body:
  %y: f32[8,5] = gather %t, %ids, axis=0
  %s: f32[4,5] = scatter_add %x, %ids, axis=0, shape=[4,5]
  %l1: f32[] = reduce_mean %y, axes=[0,1], keepdims=false
  %l2: f32[] = reduce_mean %s, axes=[0,1], keepdims=false
  %l: f32[] = add %l1, %l2
outputs:
  loss = %l
}";
    let e = analyze(&parse(scatter, "g.ir").unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("%s (scatter_add") && e.contains("scatter_add along axis 0"),
        "{e}"
    );
}
