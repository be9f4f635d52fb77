//! The optimizers' updates compiled: the JIT's params and state after each of three steps equal
//! the reference interpreter's bit for bit (IEEE mode, no flushing). Adam's and AdamW's
//! updates run as a runtime kernel at the widest vector width, the others as JIT loops; both
//! are covered, with 1 to 3 shards' gradients and param sizes that leave vector tails
//! (37 x 13 = 481 = 30 x 16 + 1 elements, and 13).

use gradlift::codegen::CompileOptions;
use gradlift::interp::{eval, Array};
use gradlift::optim::{sharded_training_step, Optimizer};
use gradlift::passes::Pipeline;
use gradlift::runtime::{compile, HostTensor};
use gradlift::{text, Graph, NodeId};
use std::collections::HashMap;

const TINY: &str = "graph tiny {
inputs:
  %x: f32[6,37] = input
  %labels: i32[6] = input
params:
  %w: f32[37,13] = param glorot_uniform(seed=1)
  %b: f32[13] = param uniform(high=0.1, low=-0.1, seed=2)
body:
  %h: f32[6,13] = matmul %x, %w
  %logits: f32[6,13] = add %h, %b
  %xe: f32[6] = sparse_softmax_cross_entropy %logits, %labels
  %loss: f32[] = reduce_mean %xe, axes=[0], keepdims=false
outputs:
  loss = %loss
}
";

/// Deterministic values in about [-0.5, 0.5) (gradients) for step `step`, input `k`.
fn values(n: usize, step: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + step * 11 + k * 5) % 101) as f32 / 101.0 - 0.5)
        .collect()
}

/// Runs the update of `opt` over `shards` shards' gradients three times, compiled (with Adam's
/// kernel or without, `body_kernels`) and interpreted, and asserts equal params and state after
/// every step.
fn check(opt: &Optimizer, shards: usize, body_kernels: bool) {
    let g = text::parse(TINY, "tiny").expect("the graph parses");
    let step = sharded_training_step(&g, "loss", opt, None, 6, shards, 1).expect("it splits");
    let mut u: Graph = step.update_parts[0].graph.clone();
    Pipeline::default().run(&mut u).expect("the pipeline runs");
    let opts = CompileOptions {
        flush_denormals: false,
        body_kernels,
        ..CompileOptions::default()
    };
    let mut exe = compile(&u, &opts).expect("the update compiles");
    // the interpreter's params and state, carried from step to step
    let mut carried: HashMap<NodeId, Array<f32>> = HashMap::new();
    for id in u.params().into_iter().chain(u.states()) {
        let name = u[id].name.clone().unwrap_or_default();
        let t = exe
            .param(&name)
            .or_else(|| exe.state(&name))
            .expect("a value");
        let data = t.as_f32().expect("f32").to_vec();
        carried.insert(
            id,
            Array::from_f64(t.shape.clone(), &t.to_f64()).expect("an array"),
        );
        assert_eq!(carried[&id].data, data);
    }
    for s in 0..3 {
        let mut inputs = Vec::new();
        let mut feeds = carried.clone();
        for (k, id) in u.inputs().into_iter().enumerate() {
            let ty = &u[id].ty;
            let name = u[id].name.clone().unwrap_or_default();
            let data = if name == "lr" {
                vec![0.01]
            } else {
                values(ty.shape.numel(), s, k)
            };
            let a = Array {
                shape: ty.shape.clone(),
                data: data.clone(),
            };
            feeds.insert(id, a);
            inputs.push((name, HostTensor::f32(ty.shape.clone(), data)));
        }
        let named: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        exe.run(&named).expect("the update runs");
        let values = eval::<f32>(&u, &feeds).expect("the interpreter runs");
        for up in u.updates() {
            carried.insert(up.target, values.get(up.value).expect("a value").clone());
        }
        for (&id, want) in &carried {
            let name = u[id].name.clone().unwrap_or_default();
            let got = exe
                .param(&name)
                .or_else(|| exe.state(&name))
                .expect("a value");
            let got = got.as_f32().expect("f32");
            let same = got
                .iter()
                .zip(&want.data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && got.len() == want.data.len(),
                "{opt:?}, {shards} shard(s), kernel {body_kernels}, step {s}: {name} differs\n \
                 jit {got:?}\nwant {:?}",
                want.data
            );
        }
    }
}

#[test]
fn adam_and_adamw_kernels_and_loops_equal_the_interpreter_bit_for_bit() {
    for shards in 1..=3 {
        for kernel in [true, false] {
            check(&Optimizer::adam(), shards, kernel);
            check(&Optimizer::adamw(), shards, kernel);
            let excluded = Optimizer::adamw().exclude_from_weight_decay(&["b"]);
            check(&excluded, shards, kernel);
            let other = Optimizer::adam().with_epsilon(1e-3).with_betas(0.8, 0.99);
            check(&other, shards, kernel);
        }
    }
}

#[test]
fn the_other_optimizers_loops_equal_the_interpreter_bit_for_bit() {
    for shards in [1, 2] {
        for opt in [
            Optimizer::sgd(),
            Optimizer::momentum(0.9),
            Optimizer::nesterov(0.9),
            Optimizer::rmsprop(),
            Optimizer::adagrad(),
        ] {
            check(&opt, shards, true);
        }
    }
}
