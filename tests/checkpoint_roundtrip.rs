//! Checkpoints round trip bit for bit (f32 NaN payloads, -0.0, subnormals, infinities; i32
//! extremes), keep their metadata, are byte-reproducible, interoperate with the `safetensors`
//! crate, and let a graph's training resume with the same next-step results bit for bit.

use gradlift::checkpoint::{
    graph_tensor_types, graph_tensors, load, same_bits, save, to_bytes, Checkpoint, NamedTensor,
    TensorData,
};
use gradlift::init;
use gradlift::interp::{eval, Array};
use gradlift::{Graph, Init, NodeId, TensorType};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint_roundtrip-{test}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn meta(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// f32 values whose bits a careless encoder loses: NaN payloads (quiet and signaling, both
/// signs), -0.0, subnormals, infinities, extremes.
fn tricky_f32() -> Vec<f32> {
    [
        0x7fc0_0000u32, // quiet NaN
        0xffc0_0001,    // negative quiet NaN with payload
        0x7f80_0001,    // signaling NaN, payload 1
        0x7fbf_ffff,    // signaling NaN, largest payload
        0x8000_0000,    // -0.0
        0x0000_0000,    // +0.0
        0x0000_0001,    // smallest subnormal
        0x807f_ffff,    // largest negative subnormal
        0x7f80_0000,    // +inf
        0xff80_0000,    // -inf
        0x7f7f_ffff,    // f32::MAX
        0x0080_0000,    // f32::MIN_POSITIVE
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect()
}

fn bits(t: &NamedTensor) -> Vec<u32> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as u32).collect(),
    }
}

#[test]
fn f32_and_i32_round_trip_bit_exact() {
    let dir = scratch("bits");
    let path = dir.join("c.safetensors");
    let tensors = vec![
        NamedTensor::f32("tricky", [3, 4], tricky_f32()),
        NamedTensor::i32("ints", [5], vec![i32::MIN, -1, 0, 1, i32::MAX]),
        NamedTensor::f32("scalar", [], vec![-0.0]),
        NamedTensor::f32("empty", [0, 3], vec![]),
        NamedTensor::i32("also_empty", [2, 0], vec![]),
        NamedTensor::f32(
            "layer.1.kernel",
            [2, 1, 1, 2],
            vec![1.5, -2.25, 1e-40, 3.0e38],
        ),
        NamedTensor::i32("odd \"name\"/ü\\", [1], vec![9]),
    ];
    let m = meta(&[
        ("graph", "mlp"),
        ("step", "1200"),
        ("optimizer", "adam(lr=0.001)"),
        ("note \"quoted\"", "line\nbreak, ünïcode"),
    ]);
    save(&path, &tensors, &m).expect("save");
    let c = load(&path).expect("load");

    assert_eq!(c.metadata, m);
    assert_eq!(c.path, path);
    let mut names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    want.sort();
    assert_eq!(names, want, "tensors come back sorted by name");
    names.dedup();
    assert_eq!(names.len(), tensors.len());
    for t in &tensors {
        let got = c.get(&t.name).expect("tensor present");
        assert_eq!(got.shape, t.shape, "{}", t.name);
        assert_eq!(got.dtype(), t.dtype(), "{}", t.name);
        assert_eq!(bits(got), bits(t), "bits of {}", t.name);
        assert_eq!(got, t);
    }
}

#[test]
fn bit_equality_distinguishes_zero_signs_and_nan_payloads() {
    // Tensors compare by bits, so the round trip test above is meaningful.
    let a = NamedTensor::f32("x", [1], vec![0.0]);
    let b = NamedTensor::f32("x", [1], vec![-0.0]);
    assert_ne!(a, b);
    assert!(!same_bits(&a.data, &b.data));
    let n1 = NamedTensor::f32("x", [1], vec![f32::from_bits(0x7fc0_0001)]);
    let n2 = NamedTensor::f32("x", [1], vec![f32::from_bits(0x7fc0_0002)]);
    assert_ne!(n1, n2);
    assert_eq!(n1, n1.clone(), "a NaN tensor equals itself");
    assert!(!same_bits(
        &TensorData::F32(vec![]),
        &TensorData::I32(vec![])
    ));
    assert_ne!(a, NamedTensor::f32("y", [1], vec![0.0]));
    assert_ne!(a, NamedTensor::f32("x", [1, 1], vec![0.0]));
}

#[test]
fn same_contents_give_the_same_bytes_whatever_the_order() {
    let t1 = NamedTensor::f32("b", [2], vec![1.0, 2.0]);
    let t2 = NamedTensor::i32("a", [1], vec![7]);
    let m1 = meta(&[("x", "1"), ("y", "2"), ("z", "3")]);
    let first = to_bytes(&[t1.clone(), t2.clone()], &m1).expect("encode");
    for _ in 0..5 {
        let m2: BTreeMap<String, String> = m1
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            to_bytes(&[t2.clone(), t1.clone()], &m2).expect("encode"),
            first
        );
    }
    let other = to_bytes(&[NamedTensor::f32("b", [2], vec![1.0, 2.5]), t2], &m1).expect("encode");
    assert_ne!(other, first);
}

#[test]
fn saving_over_an_existing_checkpoint_replaces_it() {
    let dir = scratch("overwrite");
    let path = dir.join("c.safetensors");
    save(
        &path,
        &[NamedTensor::f32("w", [1], vec![1.0])],
        &meta(&[("step", "1")]),
    )
    .expect("save 1");
    save(
        &path,
        &[NamedTensor::f32("w", [2], vec![2.0, 3.0])],
        &meta(&[("step", "2")]),
    )
    .expect("save 2");
    let c = load(&path).expect("load");
    assert_eq!(c.metadata, meta(&[("step", "2")]));
    assert_eq!(c.tensors, vec![NamedTensor::f32("w", [2], vec![2.0, 3.0])]);
    let files: Vec<_> = fs::read_dir(&dir).expect("dir").collect();
    assert_eq!(files.len(), 1, "no temporary file is left behind");
}

#[test]
fn the_safetensors_crate_reads_our_files() {
    let tensors = [
        NamedTensor::f32(
            "w",
            [2, 2],
            vec![1.0, -0.0, f32::from_bits(0x7f80_0001), 4.0],
        ),
        NamedTensor::i32("steps", [], vec![42]),
    ];
    let bytes = to_bytes(&tensors, &meta(&[("graph", "g")])).expect("encode");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("the crate reads it");
    let w = st.tensor("w").expect("w");
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert_eq!(w.shape(), &[2, 2]);
    let want: Vec<u8> = [1.0f32, -0.0, f32::from_bits(0x7f80_0001), 4.0]
        .iter()
        .flat_map(|x| x.to_bits().to_le_bytes())
        .collect();
    assert_eq!(w.data(), &want[..]);
    let s = st.tensor("steps").expect("steps");
    assert_eq!(s.dtype(), safetensors::Dtype::I32);
    assert_eq!(s.data(), &42i32.to_le_bytes());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let m = header.metadata().as_ref().expect("metadata");
    assert_eq!(
        m.get("format").map(String::as_str),
        Some("gradlift-checkpoint")
    );
    assert_eq!(m.get("version").map(String::as_str), Some("1"));
    assert_eq!(m.get("graph").map(String::as_str), Some("g"));
}

/// A tiny training graph written by hand: linear regression with momentum.
/// `w <- w - 0.1 * m'`, `m' = 0.9 m + grad_w`, `b <- b - 0.1 * grad_b`.
fn regression_graph() -> Graph {
    let mut g = Graph::new("regression");
    let x = g.input("x", TensorType::f32([4, 3])).expect("x");
    let y = g.input("y", TensorType::f32([4, 1])).expect("y");
    let w = g
        .param("w", [3, 1], Init::GlorotUniform { seed: 5 })
        .expect("w");
    let b = g
        .param(
            "b",
            [1],
            Init::Uniform {
                low: -0.5,
                high: 0.5,
                seed: 9,
            },
        )
        .expect("b");
    let m = g.state("m_w", [3, 1], Init::Zeros).expect("m");
    let xw = g.matmul(x, w).expect("xw");
    let pred = g.add2(xw, b).expect("pred");
    let err = g.sub(pred, y).expect("err");
    let sq = g.mul(err, err).expect("sq");
    let loss = g.mean_all(sq).expect("loss");
    g.add_output("loss", loss).expect("out");
    let xt = g.transpose(x, &[1, 0]).expect("xt");
    let gw0 = g.matmul(xt, err).expect("gw0");
    let half = g.scalar(0.5);
    let grad_w = g.mul(gw0, half).expect("grad_w");
    let gb0 = g.mean(err, &[0], false).expect("gb0");
    let two = g.scalar(2.0);
    let grad_b = g.mul(gb0, two).expect("grad_b");
    let beta = g.scalar(0.9);
    let mb = g.mul(m, beta).expect("mb");
    let m_new = g.add2(mb, grad_w).expect("m_new");
    let lr = g.scalar(0.1);
    let step_w = g.mul(m_new, lr).expect("step_w");
    let w_new = g.sub(w, step_w).expect("w_new");
    let step_b = g.mul(grad_b, lr).expect("step_b");
    let b_new = g.sub(b, step_b).expect("b_new");
    g.add_update(w, w_new).expect("upd w");
    g.add_update(b, b_new).expect("upd b");
    g.add_update(m, m_new).expect("upd m");
    g
}

fn batch(g: &Graph, k: usize) -> HashMap<NodeId, Array<f32>> {
    let x: Vec<f32> = (0..12)
        .map(|i| ((i * 7 + k * 3) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let y: Vec<f32> = (0..4).map(|i| ((i + k) % 3) as f32 - 0.7).collect();
    let mut feeds = HashMap::new();
    feeds.insert(g.find("x").expect("x"), Array::new([4, 3], x).expect("x"));
    feeds.insert(g.find("y").expect("y"), Array::new([4, 1], y).expect("y"));
    feeds
}

/// One step from `state` (None: initializers); the loss and the updated params/state.
fn step(
    g: &Graph,
    k: usize,
    state: &HashMap<NodeId, Array<f32>>,
) -> (u32, HashMap<NodeId, Array<f32>>) {
    let mut feeds = batch(g, k);
    feeds.extend(state.iter().map(|(id, a)| (*id, a.clone())));
    let v = eval(g, &feeds).expect("eval");
    let loss = v.output(g, "loss").expect("loss").data[0].to_bits();
    (loss, v.updates(g))
}

#[test]
fn graph_params_initialized_by_interp_round_trip() {
    let g = regression_graph();
    let v = eval(&g, &batch(&g, 0)).expect("eval");
    let initial: HashMap<NodeId, Array<f32>> = g
        .params()
        .into_iter()
        .chain(g.states())
        .map(|id| (id, v.get(id).expect("value").clone()))
        .collect();
    let tensors = graph_tensors(&g, &initial).expect("collect");
    let types = graph_tensor_types(&g).expect("types");
    assert_eq!(
        types,
        vec![
            ("w".to_string(), TensorType::f32([3, 1])),
            ("b".to_string(), TensorType::f32([1])),
            ("m_w".to_string(), TensorType::f32([3, 1])),
        ]
    );
    // The interpreter's initial values are the initializers' (rounded to f32).
    for (t, id) in tensors.iter().zip(g.params().into_iter().chain(g.states())) {
        let (gradlift::Op::Param { init } | gradlift::Op::State { init }) = &g[id].op else {
            panic!("not a param or state");
        };
        let want: Vec<f32> = init::values(init, &g[id].ty.shape)
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert!(same_bits(&t.data, &TensorData::F32(want)), "{}", t.name);
    }

    let dir = scratch("graph");
    let path = dir.join("init.safetensors");
    save(&path, &tensors, &meta(&[("graph", &g.name), ("step", "0")])).expect("save");
    let c = load(&path).expect("load");
    assert_eq!(c.restore(&types).expect("restore"), tensors);
    let feeds: HashMap<NodeId, Array<f32>> = c.feeds(&g).expect("feeds");
    assert_eq!(feeds, initial);
    // f64 feeds widen exactly.
    let feeds64: HashMap<NodeId, Array<f64>> = c.feeds(&g).expect("feeds");
    for (id, a) in &initial {
        assert_eq!(feeds64[id], a.convert::<f64>());
    }
}

#[test]
fn training_resumes_bit_for_bit_from_a_checkpoint() {
    let g = regression_graph();
    let dir = scratch("resume");
    let path = dir.join("step2.safetensors");

    // Uninterrupted: 5 steps.
    let mut state = HashMap::new();
    let mut losses = Vec::new();
    for k in 0..5 {
        let (loss, next) = step(&g, k, &state);
        losses.push(loss);
        state = next;
    }
    let final_state = state;

    // Interrupted after 2 steps, saved, loaded into a fresh run, 3 more steps.
    let mut state = HashMap::new();
    for k in 0..2 {
        state = step(&g, k, &state).1;
    }
    let tensors = graph_tensors(&g, &state).expect("collect");
    save(&path, &tensors, &meta(&[("graph", &g.name), ("step", "2")])).expect("save");
    drop(state);

    let c = load(&path).expect("load");
    assert_eq!(c.metadata.get("step").map(String::as_str), Some("2"));
    let mut state = c.feeds::<f32>(&g).expect("feeds");
    let mut resumed = Vec::new();
    for k in 2..5 {
        let (loss, next) = step(&g, k, &state);
        resumed.push(loss);
        state = next;
    }
    assert_eq!(
        resumed,
        losses[2..].to_vec(),
        "losses after resuming (bits)"
    );
    for (id, a) in &final_state {
        let got: Vec<u32> = state[id].data.iter().map(|x| x.to_bits()).collect();
        let want: Vec<u32> = a.data.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "final value of {:?}", g[*id].name);
    }
    // The losses change from step to step, so the comparison above is not vacuous.
    assert!(losses.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn from_bytes_equals_load() {
    let dir = scratch("from_bytes");
    let path = dir.join("c.safetensors");
    let t = [NamedTensor::i32("labels", [3], vec![1, 2, 3])];
    save(&path, &t, &BTreeMap::new()).expect("save");
    let bytes = fs::read(&path).expect("read");
    assert_eq!(bytes, to_bytes(&t, &BTreeMap::new()).expect("encode"));
    let a = load(&path).expect("load");
    let b = Checkpoint::from_bytes(&bytes, &path).expect("decode");
    assert_eq!(a, b);
    assert!(b.metadata.is_empty());
}

#[test]
fn we_read_the_same_checkpoint_laid_out_by_the_safetensors_crate() {
    // The crate orders tensors by dtype, then name, and writes metadata in hash order; our
    // checks (offsets, checksums over contents) do not depend on our own layout.
    let tensors = [
        NamedTensor::f32("b", [2], vec![1.0, f32::from_bits(0xffc0_1234)]),
        NamedTensor::i32("a", [3], vec![1, 2, 3]),
        NamedTensor::f32("c", [], vec![-0.0]),
    ];
    let ours = to_bytes(&tensors, &meta(&[("graph", "g"), ("step", "3")])).expect("encode");
    let (_, header) = safetensors::SafeTensors::read_metadata(&ours).expect("header");
    let metadata = header.metadata().clone();
    let raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(v) => (
                t.name.clone(),
                safetensors::Dtype::F32,
                t.shape.0.clone(),
                v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            ),
            TensorData::I32(v) => (
                t.name.clone(),
                safetensors::Dtype::I32,
                t.shape.0.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
            (n.clone(), view)
        })
        .collect();
    let theirs = safetensors::serialize(views, &metadata).expect("serialize");
    assert_ne!(theirs, ours, "a different layout");
    let a = Checkpoint::from_bytes(&ours, "ours").expect("ours");
    let b = Checkpoint::from_bytes(&theirs, "ours").expect("theirs");
    assert_eq!(a, b);
}

fn arb_tensor() -> impl proptest::strategy::Strategy<Value = NamedTensor> {
    use proptest::prelude::*;
    (
        "[a-z][a-z0-9_.]{0,6}",
        proptest::collection::vec(0usize..4, 0..4),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(name, dims, is_f32, seed)| {
            let n: usize = dims.iter().product();
            let mut r = gradlift::init::Rng::new(seed);
            if is_f32 {
                // Any bit pattern: NaN payloads, subnormals, infinities included.
                let v = (0..n)
                    .map(|_| f32::from_bits(r.next_u64() as u32))
                    .collect();
                NamedTensor::f32(name, dims, v)
            } else {
                let v = (0..n).map(|_| r.next_u64() as i32).collect();
                NamedTensor::i32(name, dims, v)
            }
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any set of distinctly named tensors and any metadata round trip exactly.
    #[test]
    fn random_checkpoints_round_trip(
        tensors in proptest::collection::vec(arb_tensor(), 0..6),
        metadata in proptest::collection::btree_map("[a-z ]{1,8}", ".{0,12}", 0..4),
    ) {
        let mut seen = std::collections::BTreeSet::new();
        let tensors: Vec<NamedTensor> =
            tensors.into_iter().filter(|t| seen.insert(t.name.clone())).collect();
        let metadata: BTreeMap<String, String> = metadata
            .into_iter()
            .filter(|(k, _)| !["format", "version", "checksums"].contains(&k.as_str()))
            .collect();
        let bytes = to_bytes(&tensors, &metadata).expect("encode");
        let c = Checkpoint::from_bytes(&bytes, "p.safetensors").expect("decode");
        let mut want = tensors.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        proptest::prop_assert_eq!(c.tensors, want);
        proptest::prop_assert_eq!(c.metadata, metadata);
    }
}
