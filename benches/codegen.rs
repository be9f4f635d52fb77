//! Code generation benchmarks: compile time of the MLP and CNN training steps (forward,
//! gradient and SGD update in one graph), their step time, and matmul GFLOP/s of both matmul
//! kernels. Run with `cargo bench --bench codegen`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradlift::codegen::{self, CompileOptions, MatmulKernel};
use gradlift::interp::{self, Array};
use gradlift::runtime::HostTensor;
use gradlift::{CmpOp, Graph, Init, NodeId, Padding, TensorType};
use std::collections::HashMap;
use std::time::Duration;

/// Softmax cross-entropy head on `z` `[b,10]` with integer labels: mean loss and `dloss/dz`.
fn head(g: &mut Graph, z: NodeId, y: NodeId, b: usize) -> (NodeId, NodeId) {
    let l = g.sparse_softmax_cross_entropy(z, y).unwrap();
    let loss = g.mean_all(l).unwrap();
    let p = g.softmax(z, 1).unwrap();
    let oh = g.one_hot(y, 10).unwrap();
    let d = g.sub(p, oh).unwrap();
    let s = g.scalar(1.0 / b as f64);
    let dz = g.mul(d, s).unwrap();
    (loss, dz)
}

/// `y = x @ w + b` backward: returns `(dx, dw, db)`; `dx` only when asked.
fn dense_grad(
    g: &mut Graph,
    x: NodeId,
    w: NodeId,
    dy: NodeId,
    want_dx: bool,
) -> (Option<NodeId>, NodeId, NodeId) {
    let xt = g.transpose(x, &[1, 0]).unwrap();
    let dw = g.matmul(xt, dy).unwrap();
    let db = g.sum(dy, &[0], false).unwrap();
    let dx = want_dx.then(|| {
        let wt = g.transpose(w, &[1, 0]).unwrap();
        g.matmul(dy, wt).unwrap()
    });
    (dx, dw, db)
}

/// `dy * (pre > 0)`.
fn relu_grad(g: &mut Graph, pre: NodeId, dy: NodeId) -> NodeId {
    let z = g.scalar(0.0);
    let m = g.compare(CmpOp::Gt, pre, z).unwrap();
    g.mul(dy, m).unwrap()
}

fn sgd(g: &mut Graph, pairs: &[(NodeId, NodeId)]) {
    let lr = g.scalar(0.01);
    for &(p, d) in pairs {
        let s = g.mul(d, lr).unwrap();
        let n = g.sub(p, s).unwrap();
        g.add_update(p, n).unwrap();
    }
}

/// MNIST MLP 784-128-10 training step (forward, gradients, SGD) at batch `b`.
fn mlp(b: usize) -> Graph {
    let mut g = Graph::new("mlp");
    let x = g.input("x", TensorType::f32([b, 784])).unwrap();
    let y = g.input("labels", TensorType::i32([b])).unwrap();
    let w1 = g
        .param("w1", [784, 128], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let b1 = g.param("b1", [128], Init::Zeros).unwrap();
    let w2 = g
        .param("w2", [128, 10], Init::GlorotUniform { seed: 2 })
        .unwrap();
    let b2 = g.param("b2", [10], Init::Zeros).unwrap();
    let h = g.matmul(x, w1).unwrap();
    let h = g.add2(h, b1).unwrap();
    let a = g.relu(h).unwrap();
    let z = g.matmul(a, w2).unwrap();
    let z = g.add2(z, b2).unwrap();
    let (loss, dz) = head(&mut g, z, y, b);
    g.add_output("loss", loss).unwrap();
    let (da, dw2, db2) = dense_grad(&mut g, a, w2, dz, true);
    let dh = relu_grad(&mut g, h, da.unwrap());
    let (_, dw1, db1) = dense_grad(&mut g, x, w1, dh, false);
    sgd(&mut g, &[(w1, dw1), (b1, db1), (w2, dw2), (b2, db2)]);
    g
}

/// MNIST CNN training step: conv 32 3x3 relu, max-pool 2x2, dense 128 relu, dense 10.
fn cnn(b: usize) -> Graph {
    let mut g = Graph::new("cnn");
    let x = g.input("x", TensorType::f32([b, 28, 28, 1])).unwrap();
    let y = g.input("labels", TensorType::i32([b])).unwrap();
    let k = g
        .param("k", [3, 3, 1, 32], Init::HeNormal { seed: 1 })
        .unwrap();
    let bk = g.param("bk", [32], Init::Zeros).unwrap();
    let w1 = g
        .param("w1", [5408, 128], Init::GlorotUniform { seed: 2 })
        .unwrap();
    let b1 = g.param("b1", [128], Init::Zeros).unwrap();
    let w2 = g
        .param("w2", [128, 10], Init::GlorotUniform { seed: 3 })
        .unwrap();
    let b2 = g.param("b2", [10], Init::Zeros).unwrap();
    let c = g.conv2d(x, k, [1, 1], Padding::Valid).unwrap();
    let c = g.add2(c, bk).unwrap();
    let r = g.relu(c).unwrap();
    let p = g.max_pool2d(r, [2, 2], [2, 2]).unwrap();
    let f = g.reshape(p, [b, 5408]).unwrap();
    let h = g.matmul(f, w1).unwrap();
    let h = g.add2(h, b1).unwrap();
    let a = g.relu(h).unwrap();
    let z = g.matmul(a, w2).unwrap();
    let z = g.add2(z, b2).unwrap();
    let (loss, dz) = head(&mut g, z, y, b);
    g.add_output("loss", loss).unwrap();
    let (da, dw2, db2) = dense_grad(&mut g, a, w2, dz, true);
    let dh = relu_grad(&mut g, h, da.unwrap());
    let (df, dw1, db1) = dense_grad(&mut g, f, w1, dh, true);
    let dp = g.reshape(df.unwrap(), [b, 13, 13, 32]).unwrap();
    let dr = g
        .add(
            gradlift::Op::MaxPool2dGrad {
                window: [2, 2],
                stride: [2, 2],
            },
            &[r, dp],
        )
        .unwrap();
    let dc = relu_grad(&mut g, c, dr);
    let dk = g
        .add(
            gradlift::Op::Conv2dFilterGrad {
                stride: [1, 1],
                padding: Padding::Valid,
                kernel: [3, 3],
            },
            &[x, dc],
        )
        .unwrap();
    let dbk = g.sum(dc, &[0, 1, 2], false).unwrap();
    sgd(
        &mut g,
        &[
            (k, dk),
            (bk, dbk),
            (w1, dw1),
            (b1, db1),
            (w2, dw2),
            (b2, db2),
        ],
    );
    g
}

/// Deterministic inputs for a step graph: pixels in [0,1), labels 0..9.
fn feeds(g: &Graph) -> Vec<(&'static str, HostTensor)> {
    let x = &g[g.find("x").unwrap()].ty;
    let b = x.shape.0[0];
    let xs = (0..x.shape.numel())
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let ys = (0..b).map(|i| (i % 10) as i32).collect();
    vec![
        ("x", HostTensor::f32(x.shape.clone(), xs)),
        ("labels", HostTensor::i32([b], ys)),
    ]
}

fn opts() -> CompileOptions {
    CompileOptions {
        verify: false,
        ..CompileOptions::default()
    }
}

fn compile_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("compile");
    for (name, g) in [("mlp_b64", mlp(64)), ("cnn_b64", cnn(64))] {
        let r = codegen::compile(&g, &opts()).unwrap().report().clone();
        eprintln!("{name}: {r}");
        grp.bench_function(name, |b| b.iter(|| codegen::compile(&g, &opts()).unwrap()));
    }
    grp.finish();
}

fn step_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("step");
    for (name, g) in [
        ("mlp_b64", mlp(64)),
        ("mlp_b8", mlp(8)),
        ("cnn_b64", cnn(64)),
    ] {
        let inputs = feeds(&g);
        for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
            let o = CompileOptions {
                matmul: kernel,
                ..opts()
            };
            let mut exe = codegen::compile(&g, &o).unwrap();
            let id = BenchmarkId::new(format!("{name}/jit"), format!("{kernel:?}"));
            grp.bench_function(id, |b| b.iter(|| exe.run(&inputs).unwrap()));
        }
        // the reference interpreter (f32) on the same graph and inputs
        let feeds: HashMap<NodeId, Array<f32>> = inputs
            .iter()
            .map(|(n, t)| {
                let a = Array::from_f64(t.shape.clone(), &t.to_f64()).unwrap();
                (g.find(n).unwrap(), a)
            })
            .collect();
        grp.bench_function(format!("{name}/interp"), |b| {
            b.iter(|| interp::eval::<f32>(&g, &feeds).unwrap())
        });
    }
    grp.finish();
}

fn matmul(c: &mut Criterion) {
    let mut grp = c.benchmark_group("matmul");
    for (m, k, n) in [
        (64, 784, 128),
        (8, 784, 128),
        (64, 5408, 128),
        (512, 512, 512),
    ] {
        let mut g = Graph::new("mm");
        let a = g.input("a", TensorType::f32([m, k])).unwrap();
        let b = g.input("b", TensorType::f32([k, n])).unwrap();
        let p = g.matmul(a, b).unwrap();
        g.add_output("c", p).unwrap();
        let inputs = [
            (
                "a",
                HostTensor::f32([m, k], (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect()),
            ),
            (
                "b",
                HostTensor::f32([k, n], (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect()),
            ),
        ];
        grp.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
            let o = CompileOptions {
                matmul: kernel,
                ..opts()
            };
            let mut exe = codegen::compile(&g, &o).unwrap();
            let id = BenchmarkId::new(format!("{kernel:?}"), format!("{m}x{k}x{n}"));
            grp.bench_function(id, |b| b.iter(|| exe.run(&inputs).unwrap()));
        }
    }
    grp.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = compile_time, step_time, matmul
}
criterion_main!(benches);
