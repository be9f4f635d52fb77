//! Resuming training from a checkpoint gives the same next-step results bit for bit: an MLP
//! whose gradients come from `autodiff` and whose Adam optimizer (moments and step count) is
//! written in the graph, run on the interpreter. The resumed run uses a graph parsed back from
//! its text form (other node ids), so restoring goes by name.

use gradlift::autodiff;
use gradlift::checkpoint::{graph_tensors, load, save, NamedTensor};
use gradlift::init::Rng;
use gradlift::interp::{eval, Array};
use gradlift::text;
use gradlift::{Graph, Init, NodeId, TensorType};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;

const BATCH: usize = 8;
const FEATURES: usize = 6;
const CLASSES: usize = 3;

/// A two-layer MLP with softmax cross-entropy, its gradients and an Adam step (bias-corrected
/// with the step count `t`, an f32 state).
fn training_graph() -> Graph {
    let mut g = Graph::new("mlp_adam");
    let x = g.input("x", TensorType::f32([BATCH, FEATURES])).expect("x");
    let labels = g.input("labels", TensorType::i32([BATCH])).expect("labels");
    let w1 = g
        .param("w1", [FEATURES, 5], Init::GlorotUniform { seed: 1 })
        .expect("w1");
    let b1 = g.param("b1", [5], Init::Zeros).expect("b1");
    let w2 = g
        .param("w2", [5, CLASSES], Init::HeNormal { seed: 2 })
        .expect("w2");
    let b2 = g
        .param("b2", [CLASSES], Init::Constant { value: 0.1 })
        .expect("b2");
    let h0 = g.matmul(x, w1).expect("h0");
    let h1 = g.add2(h0, b1).expect("h1");
    let h = g.relu(h1).expect("h");
    let l0 = g.matmul(h, w2).expect("l0");
    let logits = g.add2(l0, b2).expect("logits");
    let ce = g.sparse_softmax_cross_entropy(logits, labels).expect("ce");
    let loss = g.mean_all(ce).expect("loss");
    g.add_output("loss", loss).expect("loss out");

    let params = [w1, b1, w2, b2];
    let grads = autodiff::grad(&mut g, loss, &params).expect("grad");

    let t = g.state("t", [], Init::Zeros).expect("t");
    let one = g.scalar(1.0);
    let t_new = g.add2(t, one).expect("t'");
    g.add_update(t, t_new).expect("upd t");
    let (beta1, beta2) = (g.scalar(0.9), g.scalar(0.999));
    let (one_m_b1, one_m_b2) = (g.scalar(0.1), g.scalar(0.001));
    let lr = g.scalar(0.05);
    let eps = g.scalar(1e-7);
    let p1 = g.pow(beta1, t_new).expect("b1^t");
    let bc1 = g.sub(one, p1).expect("bc1");
    let p2 = g.pow(beta2, t_new).expect("b2^t");
    let bc2 = g.sub(one, p2).expect("bc2");
    for (p, d) in params.iter().zip(grads) {
        let name = g[*p].name.clone().expect("named");
        let shape = g[*p].ty.shape.clone();
        let m = g
            .state(&format!("{name}.m"), shape.clone(), Init::Zeros)
            .expect("m");
        let v = g
            .state(&format!("{name}.v"), shape, Init::Zeros)
            .expect("v");
        let m0 = g.mul(m, beta1).expect("m0");
        let m1 = g.mul(d, one_m_b1).expect("m1");
        let m_new = g.add2(m0, m1).expect("m'");
        let v0 = g.mul(v, beta2).expect("v0");
        let dd = g.mul(d, d).expect("dd");
        let v1 = g.mul(dd, one_m_b2).expect("v1");
        let v_new = g.add2(v0, v1).expect("v'");
        let mhat = g.div(m_new, bc1).expect("mhat");
        let vhat = g.div(v_new, bc2).expect("vhat");
        let s = g.sqrt(vhat).expect("sqrt");
        let den = g.add2(s, eps).expect("den");
        let q = g.div(mhat, den).expect("q");
        let stepv = g.mul(q, lr).expect("step");
        let p_new = g.sub(*p, stepv).expect("p'");
        g.add_update(*p, p_new).expect("upd p");
        g.add_update(m, m_new).expect("upd m");
        g.add_update(v, v_new).expect("upd v");
    }
    g
}

/// Batch `k`: seeded features and labels.
fn batch(g: &Graph, k: u64) -> HashMap<NodeId, Array<f32>> {
    let mut r = Rng::new(100 + k);
    let x: Vec<f32> = (0..BATCH * FEATURES).map(|_| r.normal() as f32).collect();
    let labels: Vec<f32> = (0..BATCH).map(|_| r.below(CLASSES as u64) as f32).collect();
    HashMap::from([
        (
            g.find("x").expect("x"),
            Array::new([BATCH, FEATURES], x).expect("x"),
        ),
        (
            g.find("labels").expect("labels"),
            Array::new([BATCH], labels).expect("labels"),
        ),
    ])
}

/// One training step from `state` (empty: initializers); the loss bits and the new state.
fn step(
    g: &Graph,
    k: u64,
    state: &HashMap<NodeId, Array<f32>>,
) -> (u32, HashMap<NodeId, Array<f32>>) {
    let mut feeds = batch(g, k);
    feeds.extend(state.iter().map(|(id, a)| (*id, a.clone())));
    let v = eval(g, &feeds).expect("eval");
    (
        v.output(g, "loss").expect("loss").data[0].to_bits(),
        v.updates(g),
    )
}

fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoint_resume");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    dir
}

fn meta(g: &Graph, step: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("graph".to_string(), g.name.clone()),
        ("step".to_string(), step.to_string()),
        ("optimizer".to_string(), "adam(lr=0.05)".to_string()),
    ])
}

#[test]
fn adam_training_resumes_bit_for_bit_in_a_reparsed_graph() {
    let dir = scratch();
    let g = training_graph();
    // Every param and state is updated each step, so the updates are the whole state.
    assert_eq!(g.updates().len(), g.params().len() + g.states().len());

    // Uninterrupted: 6 steps, checkpointing at step 3 and 6.
    let mut state = HashMap::new();
    let mut losses = Vec::new();
    for k in 0..6 {
        let (loss, next) = step(&g, k, &state);
        losses.push(loss);
        state = next;
        if k == 2 {
            save(
                dir.join("a3.safetensors"),
                &graph_tensors(&g, &state).expect("collect"),
                &meta(&g, 3),
            )
            .expect("save");
        }
    }
    save(
        dir.join("a6.safetensors"),
        &graph_tensors(&g, &state).expect("collect"),
        &meta(&g, 6),
    )
    .expect("save");

    // A new process: the graph comes back from its text form, with other node ids.
    let g2 = text::parse(&text::print(&g), "mlp_adam.ir").expect("parse");
    let moved = ["t", "w1.m", "b2.v"]
        .iter()
        .filter(|n| g.find(n) != g2.find(n))
        .count();
    assert!(
        moved > 0,
        "the reparsed graph numbers its nodes differently"
    );
    let c = load(dir.join("a3.safetensors")).expect("load");
    assert_eq!(c.metadata, meta(&g, 3));
    let t = c.get("t").expect("t");
    assert_eq!(t, &NamedTensor::f32("t", [], vec![3.0]));
    let mut state = c.feeds::<f32>(&g2).expect("feeds");
    let mut resumed = Vec::new();
    for k in 3..6 {
        let (loss, next) = step(&g2, k, &state);
        resumed.push(loss);
        state = next;
    }
    assert_eq!(resumed, losses[3..].to_vec(), "losses of steps 4-6 (bits)");
    save(
        dir.join("b6.safetensors"),
        &graph_tensors(&g2, &state).expect("collect"),
        &meta(&g2, 6),
    )
    .expect("save");
    // Same tensors and metadata give the same bytes: the resumed run ends exactly where the
    // uninterrupted one did.
    assert_eq!(
        fs::read(dir.join("b6.safetensors")).expect("b6"),
        fs::read(dir.join("a6.safetensors")).expect("a6")
    );
    // Training moved: the losses differ between steps, the step-6 state from step 3's.
    assert!(losses.windows(2).all(|w| w[0] != w[1]), "{losses:?}");
    assert_ne!(
        load(dir.join("a3.safetensors")).expect("a3").tensors,
        load(dir.join("a6.safetensors")).expect("a6").tensors
    );
}
