//! The safe entry point: every bad input is an error with a clear message and no native call;
//! repeated calls give identical results; params can be read and written; compile errors
//! name the node.

use gradlift::codegen::{self, CompileError, CompileOptions};
use gradlift::runtime::{self, Executable, HostTensor, RunError};
use gradlift::{DType, Graph, Init, Node, Op, TensorType};

/// `y = x @ w + counter`, with `counter <- counter + 1` on every call: a failed call must
/// leave the counter untouched (proof that no native code ran).
fn counter_graph() -> Graph {
    let mut g = Graph::new("counter");
    let x = g.input("x", TensorType::f32([2, 3])).unwrap();
    let l = g.input("labels", TensorType::i32([2])).unwrap();
    let w = g
        .param("w", [3, 4], Init::GlorotUniform { seed: 3 })
        .unwrap();
    let c = g.state("counter", [], Init::Zeros).unwrap();
    let y = g.matmul(x, w).unwrap();
    let y = g.add2(y, c).unwrap();
    let loss = g.sparse_softmax_cross_entropy(y, l).unwrap();
    g.add_output("y", y).unwrap();
    g.add_output("loss", loss).unwrap();
    let one = g.scalar(1.0);
    let c1 = g.add2(c, one).unwrap();
    g.add_update(c, c1).unwrap();
    g
}

fn exe() -> Executable {
    runtime::compile(&counter_graph(), &CompileOptions::default()).unwrap()
}

fn x() -> HostTensor {
    HostTensor::f32([2, 3], vec![0.5, -1.0, 2.0, 0.25, 3.0, -0.5])
}

fn labels() -> HostTensor {
    HostTensor::i32([2], vec![1, 3])
}

fn counter(e: &Executable) -> f32 {
    e.state("counter").unwrap().as_f32().unwrap()[0]
}

/// Runs `inputs`, expects an error whose message contains every part of `needles`, and checks
/// that nothing ran.
fn refused(inputs: &[(&str, HostTensor)], needles: &[&str]) -> RunError {
    let mut e = exe();
    let err = e.run(inputs).unwrap_err();
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should contain {n:?}");
    }
    assert_eq!(counter(&e), 0.0, "native code ran despite {msg}");
    err
}

#[test]
fn good_inputs_run_and_update_state() {
    let mut e = exe();
    e.run(&[("x", x()), ("labels", labels())]).unwrap();
    assert_eq!(counter(&e), 1.0);
}

#[test]
fn wrong_shape_is_refused() {
    let err = refused(
        &[
            ("x", HostTensor::f32([3, 2], vec![0.0; 6])),
            ("labels", labels()),
        ],
        &["\"x\"", "f32[2,3]", "[3,2]"],
    );
    assert!(matches!(err, RunError::WrongShape { .. }));
}

#[test]
fn wrong_dtype_is_refused() {
    let err = refused(
        &[("x", x()), ("labels", HostTensor::f32([2], vec![1.0, 3.0]))],
        &["\"labels\"", "i32[2]", "f32"],
    );
    assert!(matches!(err, RunError::WrongDType { .. }));
}

#[test]
fn missing_input_is_refused() {
    let err = refused(&[("x", x())], &["missing input \"labels\"", "i32[2]"]);
    assert!(matches!(err, RunError::MissingInput { .. }));
}

#[test]
fn extra_input_is_refused() {
    let err = refused(
        &[("x", x()), ("labels", labels()), ("bogus", x())],
        &["unknown input \"bogus\"", "x, labels"],
    );
    assert!(matches!(err, RunError::Unknown { .. }));
}

#[test]
fn duplicate_input_is_refused() {
    let err = refused(
        &[("x", x()), ("labels", labels()), ("x", x())],
        &["\"x\"", "more than once"],
    );
    assert!(matches!(err, RunError::Duplicate { .. }));
}

#[test]
fn wrong_buffer_length_is_refused() {
    for len in [5, 7, 0] {
        let err = refused(
            &[
                ("x", HostTensor::f32([2, 3], vec![1.0; len])),
                ("labels", labels()),
            ],
            &["\"x\"", "needs 6 elements", &format!("holds {len}")],
        );
        assert!(matches!(err, RunError::WrongLength { .. }));
    }
}

#[test]
fn repeated_runs_are_identical_except_declared_updates() {
    let mut e = exe();
    let first = e.run(&[("x", x()), ("labels", labels())]).unwrap();
    for call in 1..50 {
        let out = e.run(&[("x", x()), ("labels", labels())]).unwrap();
        assert_eq!(counter(&e), (call + 1) as f32);
        // y = x@w + counter (the value before this call's update): only the counter moved
        let (a, b) = (first[0].1.as_f32().unwrap(), out[0].1.as_f32().unwrap());
        for (p, q) in a.iter().zip(b) {
            assert_eq!(q.to_bits(), (p + call as f32).to_bits(), "call {call}");
        }
    }
    // a graph without updates gives bit-identical outputs on every call
    let mut g = counter_graph();
    g.updates_mut().clear();
    let mut e = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let first = e.run(&[("x", x()), ("labels", labels())]).unwrap();
    for _ in 0..50 {
        assert_eq!(e.run(&[("x", x()), ("labels", labels())]).unwrap(), first);
    }
}

#[test]
fn params_are_read_written_and_exported_by_name() {
    let mut e = exe();
    let w = e.param("w").unwrap();
    assert_eq!(w.ty(), TensorType::f32([3, 4]));
    assert_eq!(e.params().len(), 1);
    e.set_param("w", HostTensor::f32([3, 4], vec![0.0; 12]))
        .unwrap();
    let out = e.run(&[("x", x()), ("labels", labels())]).unwrap();
    assert!(out[0].1.as_f32().unwrap().iter().all(|&v| v == 0.0));
    let err = e
        .set_param("w", HostTensor::f32([4, 3], vec![0.0; 12]))
        .unwrap_err();
    assert!(err.to_string().contains("f32[3,4]"), "{err}");
    let err = e.set_param("nope", w).unwrap_err();
    assert!(err.to_string().contains("unknown param \"nope\""), "{err}");
    assert!(e.param("nope").is_none());
}

#[test]
fn executables_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Executable>();
    let mut e = exe();
    let h = std::thread::spawn(move || {
        e.run(&[("x", x()), ("labels", labels())]).unwrap();
        counter(&e)
    });
    assert_eq!(h.join().unwrap(), 1.0);
}

#[test]
fn malformed_graphs_are_compile_errors_naming_the_node() {
    // a node whose declared type disagrees with its operands
    let mut g = Graph::new("bad");
    let a = g.input("a", TensorType::f32([2, 3])).unwrap();
    let bad = g.add_raw(
        Node {
            op: Op::Unary(gradlift::UnaryOp::Relu),
            ty: TensorType::f32([3, 2]),
            name: Some("oops".into()),
            loc: None,
            grad_of: None,
        },
        &[a],
    );
    g.add_output("o", bad).unwrap();
    let err = runtime::compile(&g, &CompileOptions::default()).unwrap_err();
    assert!(matches!(err, CompileError::Verify(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("%oops is declared f32[3,2] but relu computes f32[2,3]"),
        "{msg}"
    );
    // an i32 param is rejected by type inference
    let mut g = Graph::new("bad2");
    let p = g.add_raw(
        Node {
            op: Op::Param { init: Init::Zeros },
            ty: TensorType::new(DType::I32, [2]),
            name: Some("p".into()),
            loc: None,
            grad_of: None,
        },
        &[],
    );
    g.add_output("p", p).unwrap();
    let msg = runtime::compile(&g, &CompileOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("param must be f32, found i32[2]\n    %p: i32[2] = param zeros"),
        "{msg}"
    );
}

#[test]
fn compile_report_and_clif_dump() {
    let g = counter_graph();
    let e = exe();
    let r = e.report();
    assert!(r.lower_ms > 0.0 && r.cranelift_ms > 0.0, "{r:?}");
    assert!(
        r.clif_insts > 0 && r.code_bytes > 0 && r.arena_bytes > 0,
        "{r:?}"
    );
    let text = codegen::clif(&g, &CompileOptions::default()).unwrap();
    assert!(text.starts_with("; graph counter"), "{text}");
    assert!(text.contains("table[0] = input x"), "{text}");
    assert!(text.contains("\nfunction "), "{text}");
    assert!(
        text.contains("call fn"),
        "matmul calls the GEMM kernel: {text}"
    );
}

/// `run_bound` reuses its pointer table between calls; replacing a param or a state, or a
/// call of `run` with the caller's own inputs in between, must not leave it pointing at old
/// buffers.
#[test]
fn run_bound_sees_replaced_params_and_state() {
    let mut g = Graph::new("scaled");
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let w = g.param("w", [3], Init::Ones).unwrap();
    let s = g.state("s", [3], Init::Zeros).unwrap();
    let xw = g.mul(x, w).unwrap();
    let y = g.add2(xw, s).unwrap();
    g.add_output("y", y).unwrap();
    let mut e = runtime::compile(&g, &CompileOptions::default()).unwrap();
    e.input_f32_mut("x")
        .unwrap()
        .copy_from_slice(&[1.0, 2.0, 3.0]);
    let y = |e: &Executable| e.output("y").unwrap().clone();
    e.run_bound();
    assert_eq!(y(&e), HostTensor::f32([3], vec![1.0, 2.0, 3.0]));
    e.set_param("w", HostTensor::f32([3], vec![2.0; 3]))
        .unwrap();
    e.run_bound();
    assert_eq!(y(&e), HostTensor::f32([3], vec![2.0, 4.0, 6.0]));
    e.set_state("s", HostTensor::f32([3], vec![10.0; 3]))
        .unwrap();
    e.run_bound();
    assert_eq!(y(&e), HostTensor::f32([3], vec![12.0, 14.0, 16.0]));
    let other = e
        .run(&[("x", HostTensor::f32([3], vec![0.0, 0.0, 1.0]))])
        .unwrap();
    assert_eq!(other[0].1, HostTensor::f32([3], vec![10.0, 10.0, 12.0]));
    // back to the bound input, written in place
    e.input_f32_mut("x").unwrap()[0] = 5.0;
    e.run_bound();
    assert_eq!(y(&e), HostTensor::f32([3], vec![20.0, 14.0, 16.0]));
}
