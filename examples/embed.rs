//! Embedding gradlift as a library: build a small model with the builder API (no layers),
//! differentiate it, compile forward + gradient + SGD update into ONE native function, and
//! call it in a training loop.
//!
//! Run with `cargo run --release --example embed`.

use gradlift::codegen::CompileOptions;
use gradlift::runtime::{self, HostTensor};
use gradlift::{autodiff, Graph, Init, TensorType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A 2-16-1 tanh network fitting y = sin(3 x0) * x1 on a fixed batch of 32 points.
    let batch = 32;
    let mut g = Graph::new("embed");
    let x = g.input("x", TensorType::f32([batch, 2]))?;
    let y = g.input("y", TensorType::f32([batch, 1]))?;
    let w1 = g.param("w1", [2, 16], Init::GlorotUniform { seed: 1 })?;
    let b1 = g.param("b1", [16], Init::Zeros)?;
    let w2 = g.param("w2", [16, 1], Init::GlorotUniform { seed: 2 })?;
    let b2 = g.param("b2", [1], Init::Zeros)?;
    let h = g.matmul(x, w1)?;
    let h = g.add2(h, b1)?;
    let h = g.tanh(h)?;
    let p = g.matmul(h, w2)?;
    let p = g.add2(p, b2)?;
    let e = g.sub(p, y)?;
    let e2 = g.mul(e, e)?;
    let loss = g.mean_all(e2)?;
    g.add_output("loss", loss)?;

    // Reverse-mode autodiff appends the gradient nodes to the same graph ...
    let params = [w1, b1, w2, b2];
    let grads = autodiff::grad(&mut g, loss, &params)?;
    // ... and plain SGD is four more nodes per param, written back in place.
    let lr = g.scalar(0.2);
    for (&p, &dp) in params.iter().zip(&grads) {
        let step = g.mul(dp, lr)?;
        let next = g.sub(p, step)?;
        g.add_update(p, next)?;
    }

    let mut step = runtime::compile(&g, &CompileOptions::default())?;
    println!("{}", step.report());

    let xs: Vec<f32> = (0..batch * 2)
        .map(|i| ((i * 37 % 64) as f32 / 32.0) - 1.0)
        .collect();
    let ys: Vec<f32> = xs.chunks(2).map(|p| (3.0 * p[0]).sin() * p[1]).collect();
    let inputs = [
        ("x", HostTensor::f32([batch, 2], xs)),
        ("y", HostTensor::f32([batch, 1], ys)),
    ];
    let mut first = None;
    let mut last = 0.0;
    let t0 = std::time::Instant::now();
    for epoch in 0..500 {
        let out = step.run(&inputs)?;
        last = out[0].1.as_f32().map_or(f32::NAN, |v| v[0]);
        first.get_or_insert(last);
        if epoch % 100 == 0 {
            println!("step {epoch:4}: loss {last:.5}");
        }
    }
    let elapsed = t0.elapsed();
    println!(
        "loss {:.5} -> {last:.5} in 500 steps ({:.1} us per step, including printing)",
        first.unwrap_or(last),
        elapsed.as_secs_f64() * 1e6 / 500.0
    );
    let w1 = step.param("w1").ok_or("no param w1")?;
    println!("trained w1[0..4] = {:?}", &w1.as_f32().unwrap_or(&[])[..4]);
    Ok(())
}
