//! A checkpoint that does not fit the model, and tensors or graphs that cannot be saved, are
//! errors naming the tensor (expected vs found).

use gradlift::checkpoint::{
    graph_tensor_types, graph_tensors, to_bytes, Checkpoint, CheckpointError, Mismatch, NamedTensor,
};
use gradlift::interp::Array;
use gradlift::{Graph, Init, Node, NodeId, Op, TensorType};
use std::collections::{BTreeMap, HashMap};

fn checkpoint(tensors: &[NamedTensor]) -> Checkpoint {
    let bytes = to_bytes(tensors, &BTreeMap::new()).expect("encode");
    Checkpoint::from_bytes(&bytes, "run/step100.safetensors").expect("decode")
}

fn expected(list: &[(&str, TensorType)]) -> Vec<(String, TensorType)> {
    list.iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

#[test]
fn every_mismatch_is_reported_by_name() {
    let c = checkpoint(&[
        NamedTensor::f32("w1", [4, 3], vec![0.0; 12]),
        NamedTensor::f32("b1", [3], vec![0.0; 3]),
        NamedTensor::i32("step", [], vec![5]),
        NamedTensor::f32("old_layer", [2], vec![0.0; 2]),
    ]);
    let want = expected(&[
        ("w1", TensorType::f32([3, 4])),
        ("b1", TensorType::f32([3])),
        ("step", TensorType::f32([])),
        ("w2", TensorType::f32([3, 1])),
    ]);
    assert_eq!(
        c.mismatches(&want),
        vec![
            Mismatch::Shape {
                name: "w1".into(),
                expected: TensorType::f32([3, 4]),
                found: TensorType::f32([4, 3]),
            },
            Mismatch::DType {
                name: "step".into(),
                expected: TensorType::f32([]),
                found: TensorType::i32([]),
            },
            Mismatch::Missing {
                name: "w2".into(),
                expected: TensorType::f32([3, 1]),
            },
            Mismatch::Unexpected {
                name: "old_layer".into(),
                found: TensorType::f32([2]),
            },
        ]
    );
    let e = c.check(&want).expect_err("mismatch");
    insta::assert_snapshot!("mismatch_report", e.to_string());
    assert!(c.restore(&want).is_err());
}

#[test]
fn a_matching_checkpoint_restores_in_the_model_order() {
    let c = checkpoint(&[
        NamedTensor::f32("a", [1], vec![1.0]),
        NamedTensor::i32("z", [2], vec![3, 4]),
    ]);
    let want = expected(&[("z", TensorType::i32([2])), ("a", TensorType::f32([1]))]);
    c.check(&want).expect("matches");
    let got = c.restore(&want).expect("restore");
    let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["z", "a"]);
    assert_eq!(got[0], NamedTensor::i32("z", [2], vec![3, 4]));
    let one = c.check(&want[..1]).expect_err("a is unexpected");
    assert!(
        one.to_string().contains("unexpected tensor a: f32[1]"),
        "{one}"
    );
}

fn small_graph() -> Graph {
    let mut g = Graph::new("small");
    let x = g.input("x", TensorType::f32([2, 3])).expect("x");
    let w = g
        .param("w", [3, 2], Init::GlorotUniform { seed: 1 })
        .expect("w");
    g.state("velocity", [3, 2], Init::Zeros).expect("v");
    let y = g.matmul(x, w).expect("y");
    g.add_output("y", y).expect("out");
    g
}

#[test]
fn feeds_check_the_graph_params_and_state() {
    let g = small_graph();
    let c = checkpoint(&[NamedTensor::f32("w", [2, 3], vec![0.0; 6])]);
    let e = c.feeds::<f32>(&g).expect_err("mismatch");
    insta::assert_snapshot!("feeds_mismatch", e.to_string());
}

#[test]
fn invalid_saves_are_refused_with_the_tensor_named() {
    let reserved: BTreeMap<String, String> = [("format".to_string(), "mine".to_string())].into();
    let cases: Vec<(&str, Vec<NamedTensor>, BTreeMap<String, String>)> = vec![
        (
            "length",
            vec![NamedTensor::f32("w", [2, 3], vec![0.0; 5])],
            BTreeMap::new(),
        ),
        (
            "duplicate",
            vec![
                NamedTensor::f32("w", [1], vec![0.0]),
                NamedTensor::i32("w", [1], vec![0]),
            ],
            BTreeMap::new(),
        ),
        (
            "empty name",
            vec![NamedTensor::f32("", [1], vec![0.0])],
            BTreeMap::new(),
        ),
        (
            "metadata name",
            vec![NamedTensor::f32("__metadata__", [1], vec![0.0])],
            BTreeMap::new(),
        ),
        (
            "huge shape",
            vec![NamedTensor::f32("w", [usize::MAX, 2], vec![])],
            BTreeMap::new(),
        ),
        ("reserved key", vec![], reserved),
    ];
    let mut out = String::new();
    for (what, tensors, meta) in cases {
        let e = to_bytes(&tensors, &meta).expect_err(what);
        out.push_str(&format!("{what}: {e}\n"));
    }
    insta::assert_snapshot!("invalid_saves", out);
}

#[test]
fn graph_collection_errors_name_the_node() {
    let g = small_graph();
    let w = g.find("w").expect("w");
    let v = g.find("velocity").expect("velocity");
    let mut out = String::new();

    // Missing value.
    let mut values: HashMap<NodeId, Array<f32>> = HashMap::new();
    values.insert(w, Array::zeros([3, 2]));
    out.push_str(&format!(
        "{}\n",
        graph_tensors(&g, &values).expect_err("missing")
    ));
    // Wrong shape.
    values.insert(v, Array::zeros([2, 3]));
    out.push_str(&format!(
        "{}\n",
        graph_tensors(&g, &values).expect_err("shape")
    ));
    values.insert(v, Array::zeros([3, 2]));
    assert_eq!(graph_tensors(&g, &values).expect("ok").len(), 2);

    // An i32 state holding a non-integer.
    let mut gi = Graph::new("counts");
    let count = gi.add_raw(
        Node {
            op: Op::State { init: Init::Zeros },
            ty: TensorType::i32([2]),
            name: Some("count".into()),
            loc: None,
            grad_of: None,
        },
        &[],
    );
    let mut vals = HashMap::new();
    vals.insert(
        count,
        Array::<f64>::new([2], vec![3.0, 2.5]).expect("array"),
    );
    out.push_str(&format!(
        "{}\n",
        graph_tensors(&gi, &vals).expect_err("fraction")
    ));
    vals.insert(
        count,
        Array::<f64>::new([2], vec![3.0, -4.0]).expect("array"),
    );
    let t = graph_tensors(&gi, &vals).expect("integers");
    assert_eq!(t, vec![NamedTensor::i32("count", [2], vec![3, -4])]);

    // An unnamed param.
    let mut gu = Graph::new("unnamed");
    gu.add_raw(
        Node {
            op: Op::Param { init: Init::Zeros },
            ty: TensorType::f32([1]),
            name: None,
            loc: None,
            grad_of: None,
        },
        &[],
    );
    out.push_str(&format!(
        "{}\n",
        graph_tensor_types(&gu).expect_err("unnamed")
    ));
    insta::assert_snapshot!("graph_errors", out);
}

#[test]
fn corrupt_errors_expose_the_tensor() {
    let bytes = to_bytes(
        &[NamedTensor::f32("w", [2], vec![1.0, 2.0])],
        &BTreeMap::new(),
    )
    .expect("encode");
    let e = Checkpoint::from_bytes(&bytes[..bytes.len() - 1], "c.safetensors").expect_err("cut");
    match e {
        CheckpointError::Corrupt { tensor, .. } => assert_eq!(tensor.as_deref(), Some("w")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Weights holding NaN or infinities (a diverged run) are refused with the tensor named and
/// the count of such values (they used to load silently).
#[test]
fn non_finite_weights_are_refused_by_name() {
    let c = checkpoint(&[
        NamedTensor::f32("w", [2, 2], vec![1.0, f32::NAN, 2.0, f32::INFINITY]),
        NamedTensor::f32("b", [2], vec![0.0, 1.0]),
    ]);
    let want = expected(&[("w", TensorType::f32([2, 2])), ("b", TensorType::f32([2]))]);
    assert_eq!(
        c.mismatches(&want),
        vec![Mismatch::NonFinite {
            name: "w".into(),
            count: 2,
            first: 1,
        }]
    );
    let e = c.restore(&want).unwrap_err().to_string();
    assert!(
        e.contains("tensor w: 2 NaN or infinite value(s), the first at index 1"),
        "{e}"
    );
}

/// A checkpoint with `step` metadata `step` and, when given, Adam's step counter.
fn with_step(step: Option<&str>, counter: Option<f32>) -> Checkpoint {
    let mut tensors = vec![NamedTensor::f32("w", [1], vec![1.0])];
    if let Some(c) = counter {
        tensors.push(NamedTensor::f32(gradlift::optim::STEP_COUNTER, [], vec![c]));
    }
    let meta: BTreeMap<String, String> = step
        .map(|s| BTreeMap::from([("step".to_string(), s.to_string())]))
        .unwrap_or_default();
    let bytes = to_bytes(&tensors, &meta).expect("encode");
    Checkpoint::from_bytes(&bytes, "c.safetensors").expect("decode")
}

/// The step count is a whole number of at most `MAX_STEP` (a step of 2^64-1 used to be
/// accepted) that agrees with Adam's own f32 counter when there is one; the counter stops at
/// 2^24, where f32 stops counting.
#[test]
fn step_counts_are_bounded_and_agree_with_the_optimizer() {
    use gradlift::checkpoint::{f32_step_counter, MAX_STEP};
    let err = |c: Checkpoint| c.step().expect_err("refused").to_string();
    assert_eq!(with_step(Some("7"), None).step().expect("sgd"), 7);
    assert_eq!(with_step(Some("3"), Some(3.0)).step().expect("adam"), 3);
    let late = (1u64 << 24) + 5;
    assert_eq!(f32_step_counter(late), 16_777_216.0);
    assert_eq!(
        with_step(Some(&late.to_string()), Some(16_777_216.0))
            .step()
            .expect("past 2^24"),
        late
    );
    assert_eq!(
        with_step(Some(&MAX_STEP.to_string()), None)
            .step()
            .expect("max"),
        i64::MAX as u64
    );
    assert_eq!(
        err(with_step(Some(&u64::MAX.to_string()), None)),
        "c.safetensors: metadata step: 18446744073709551615 is more than 9223372036854775807, the most steps a training run counts"
    );
    assert_eq!(
        err(with_step(Some("1e3"), None)),
        "c.safetensors: metadata step: expected a whole number from 0 to 9223372036854775807, found \"1e3\""
    );
    assert_eq!(
        err(with_step(None, None)),
        "c.safetensors: metadata step: missing (a training checkpoint records its step count)"
    );
    assert_eq!(
        err(with_step(Some("5"), Some(3.0))),
        "c.safetensors: metadata step: the metadata says step 5, but the optimizer's own count optimizer.step holds 3 (expected 5)"
    );
    // before this bound, 2^64-1 passed: its f32 counter rounds to the same 2^64
    assert!(
        with_step(Some(&u64::MAX.to_string()), Some(u64::MAX as f32))
            .step()
            .is_err()
    );
}
