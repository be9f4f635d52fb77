//! Checkpoints of compiled executables: params exported from one `Executable` (as
//! `HostTensor`s), saved, loaded and set into a freshly compiled one continue bit for bit.

use gradlift::checkpoint::{graph_tensor_types, load, same_bits, save, NamedTensor};
use gradlift::codegen::CompileOptions;
use gradlift::runtime::compile;
use gradlift::runtime::{Executable, HostTensor};
use gradlift::{Graph, Init, TensorType};
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

/// `y = x w + b`; each call also moves the params (`w <- 0.9 w + 0.01`, `b <- b - 0.01`), so
/// after a few calls they differ from their initial values.
fn graph() -> Graph {
    let mut g = Graph::new("affine");
    let x = g.input("x", TensorType::f32([2, 3])).expect("x");
    let w = g
        .param("w", [3, 2], Init::GlorotUniform { seed: 3 })
        .expect("w");
    let b = g
        .param(
            "b",
            [2],
            Init::Uniform {
                low: -1.0,
                high: 1.0,
                seed: 4,
            },
        )
        .expect("b");
    let xw = g.matmul(x, w).expect("xw");
    let y = g.add2(xw, b).expect("y");
    g.add_output("y", y).expect("out");
    let decay = g.scalar(0.9);
    let shift = g.scalar(0.01);
    let w0 = g.mul(w, decay).expect("w0");
    let w_new = g.add2(w0, shift).expect("w'");
    let b_new = g.sub(b, shift).expect("b'");
    g.add_update(w, w_new).expect("upd w");
    g.add_update(b, b_new).expect("upd b");
    g
}

fn run(exe: &mut Executable, k: usize) -> Vec<u32> {
    let x: Vec<f32> = (0..6).map(|i| (i + k) as f32 * 0.25 - 0.5).collect();
    let out = exe.run(&[("x", HostTensor::f32([2, 3], x))]).expect("run");
    out[0]
        .1
        .as_f32()
        .expect("f32")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn executable_params_round_trip_through_a_checkpoint() {
    let g = graph();
    let types = graph_tensor_types(&g).expect("types");
    let mut a = compile(&g, &CompileOptions::default()).expect("compile");
    for k in 0..3 {
        run(&mut a, k);
    }
    let tensors: Vec<NamedTensor> = types
        .iter()
        .map(|(name, _)| NamedTensor::from_host(name, a.param(name).expect("param")))
        .collect();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoint_runtime");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("affine.safetensors");
    let meta = BTreeMap::from([("step".to_string(), "3".to_string())]);
    save(&path, &tensors, &meta).expect("save");

    let mut b = compile(&g, &CompileOptions::default()).expect("compile");
    let fresh_w = b.param("w").expect("w");
    assert!(
        !same_bits(&fresh_w.data, &a.param("w").expect("w").data),
        "params moved"
    );
    for t in load(&path).expect("load").restore(&types).expect("restore") {
        let (name, host) = t.into_host();
        b.set_param(&name, host).expect("set");
    }
    for k in 3..6 {
        assert_eq!(run(&mut b, k), run(&mut a, k), "outputs of call {k}");
    }
    for (name, _) in &types {
        let (pa, pb) = (a.param(name).expect("a"), b.param(name).expect("b"));
        assert!(same_bits(&pa.data, &pb.data), "{name}");
    }
}
