//! `scan`, the structured loop, in every stage: the builder and the text format, the
//! interpreter (against the same recurrence unrolled), the gradient (finite differences, the
//! unrolled graph's gradient, second order), the pass pipeline inside the body, and the JIT
//! (one loop whose code does not grow with the trip count).

mod common;

use common::fd::{fd_check, uniform, weighted_sum, Case};
use gradlift::codegen::CompileOptions;
use gradlift::init::Rng;
use gradlift::interp::{self, Array};
use gradlift::passes::Pipeline;
use gradlift::{autodiff, runtime, text, Graph, NodeId, TensorType};
use std::collections::HashMap;

/// A SimpleRNN body: `h' = tanh(x W + h U + b)`, yielding `h'` as carry and as output.
fn rnn_body(b: usize, f: usize, h: usize) -> (Graph, Vec<NodeId>) {
    let mut g = Graph::new("cell");
    let hh = g.input("h", TensorType::f32([b, h])).unwrap();
    let x = g.input("x", TensorType::f32([b, f])).unwrap();
    let w = g.input("w", TensorType::f32([f, h])).unwrap();
    let u = g.input("u", TensorType::f32([h, h])).unwrap();
    let bias = g.input("b", TensorType::f32([h])).unwrap();
    let xw = g.matmul(x, w).unwrap();
    let hu = g.matmul(hh, u).unwrap();
    let s = g.add2(xw, hu).unwrap();
    let s = g.add2(s, bias).unwrap();
    let y = g.tanh(s).unwrap();
    g.add_output("h", y).unwrap();
    g.add_output("y", y).unwrap();
    (g, vec![hh, x, w, u, bias])
}

/// The RNN over `t` steps as a scan (or unrolled with slices), with a weighted-sum loss of
/// the stacked states and the final state. Returns the case (inputs `xs`, `h0`, `w`, `u`,
/// `b`, all differentiated).
fn rnn_case(t: usize, unrolled: bool, reverse: bool, seed: u64) -> Case {
    rnn_case_at(t, unrolled, reverse, 0, seed)
}

/// [`rnn_case`] with the steps along `axis` of the sequence and the stacked states (0:
/// `[t, b, f]`, 1: batch-major `[b, t, f]`).
fn rnn_case_at(t: usize, unrolled: bool, reverse: bool, axis: usize, seed: u64) -> Case {
    let (b, f, h) = (2, 3, 4);
    let mut rng = Rng::new(seed);
    let mut c = Case::new(if unrolled { "rnn_unrolled" } else { "rnn_scan" });
    let xs_shape = if axis == 0 { [t, b, f] } else { [b, t, f] };
    let xs = c.input(
        "xs",
        &xs_shape,
        uniform(&mut rng, t * b * f, -1.0, 1.0),
        true,
    );
    let h0 = c.input("h0", &[b, h], uniform(&mut rng, b * h, -0.5, 0.5), true);
    let w = c.input("w", &[f, h], uniform(&mut rng, f * h, -0.8, 0.8), true);
    let u = c.input("u", &[h, h], uniform(&mut rng, h * h, -0.8, 0.8), true);
    let bias = c.input("b", &[h], uniform(&mut rng, h, -0.2, 0.2), true);
    let (last, stacked) = if unrolled {
        let g = &mut c.g;
        let mut hs = vec![None; t];
        let mut cur = h0;
        let steps: Vec<usize> = match reverse {
            false => (0..t).collect(),
            true => (0..t).rev().collect(),
        };
        for s in steps {
            let xt = match axis {
                0 => g.slice(xs, &[s, 0, 0], &[s + 1, b, f]).unwrap(),
                _ => g.slice(xs, &[0, s, 0], &[b, s + 1, f]).unwrap(),
            };
            let xt = g.reshape(xt, [b, f]).unwrap();
            let xw = g.matmul(xt, w).unwrap();
            let hu = g.matmul(cur, u).unwrap();
            let a = g.add2(xw, hu).unwrap();
            let a = g.add2(a, bias).unwrap();
            cur = g.tanh(a).unwrap();
            let one = if axis == 0 { [1, b, h] } else { [b, 1, h] };
            hs[s] = Some(g.reshape(cur, one).unwrap());
        }
        let hs: Vec<NodeId> = hs.into_iter().flatten().collect();
        (cur, g.concat(&hs, axis).unwrap())
    } else {
        let (body, params) = rnn_body(b, f, h);
        let r =
            c.g.scan(
                &body,
                &params,
                &[h0, xs, w, u, bias],
                scan_loop(reverse, axis),
            )
            .unwrap();
        (r[0], r[1])
    };
    let l1 = weighted_sum(&mut c.g, last, &mut Rng::new(seed + 1));
    let l2 = weighted_sum(&mut c.g, stacked, &mut Rng::new(seed + 2));
    c.loss = c.g.add2(l1, l2).unwrap();
    c.g.add_output("loss", c.loss).unwrap();
    c.g.add_output("hs", stacked).unwrap();
    c
}

fn scan_loop(reverse: bool, axis: usize) -> gradlift::scan::Loop {
    gradlift::scan::Loop {
        carries: 1,
        sequences: 1,
        reverse,
        axis,
    }
}

fn values(g: &Graph, feeds: &HashMap<NodeId, Array<f64>>, ids: &[NodeId]) -> Vec<Vec<f64>> {
    let v = interp::eval::<f64>(g, feeds).unwrap();
    ids.iter()
        .map(|&id| v.get(id).unwrap().data.clone())
        .collect()
}

fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// Feeds of `to` keyed like those of `from`, matched by input name.
fn same_feeds(from: &Case, to: &Graph) -> HashMap<NodeId, Array<f64>> {
    from.feeds
        .iter()
        .map(|(&id, a)| {
            (
                to.find(from.g[id].name.as_deref().unwrap()).unwrap(),
                a.clone(),
            )
        })
        .collect()
}

/// The interpreter runs a scan as the same recurrence unrolled: forward and reverse.
#[test]
fn interpreter_matches_the_unrolled_recurrence() {
    for (reverse, axis) in [(false, 0), (true, 0), (false, 1), (true, 1)] {
        let s = rnn_case_at(5, false, reverse, axis, 3);
        let u = rnn_case_at(5, true, reverse, axis, 3);
        let outs = |c: &Case| -> Vec<NodeId> { c.g.outputs().iter().map(|o| o.node).collect() };
        let a = values(&s.g, &s.feeds, &outs(&s));
        let b = values(&u.g, &same_feeds(&s, &u.g), &outs(&u));
        for (x, y) in a.iter().zip(&b) {
            assert_close(&format!("reverse={reverse}"), x, y, 1e-12);
        }
    }
}

/// The gradient of a scan (a reverse scan) agrees with central differences, with respect to
/// the sequence, the initial carry and the invariants, in both directions.
#[test]
fn gradient_agrees_with_finite_differences() {
    for (t, reverse, axis) in [
        (1, false, 0),
        (4, false, 0),
        (3, true, 0),
        (4, false, 1),
        (3, true, 1),
    ] {
        let c = rnn_case_at(t, false, reverse, axis, 7 + t as u64);
        let r = fd_check(&c, 1000, &mut Rng::new(1)).unwrap_or_else(|e| panic!("t={t}: {e}"));
        assert!(r.checked > 40, "{r:?}");
    }
}

/// ... and equals the unrolled graph's gradient.
#[test]
fn gradient_equals_the_unrolled_gradient() {
    let mut s = rnn_case_at(6, false, false, 1, 5);
    let mut u = rnn_case_at(6, true, false, 1, 5);
    let sw = s.wrt.clone();
    let uw = u.wrt.clone();
    let gs = autodiff::grad(&mut s.g, s.loss, &sw).unwrap();
    let gu = autodiff::grad(&mut u.g, u.loss, &uw).unwrap();
    let feeds = same_feeds(&s, &u.g);
    let a = values(&s.g, &s.feeds, &gs);
    let b = values(&u.g, &feeds, &gu);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_close(&format!("gradient {i}"), x, y, 1e-12);
    }
}

/// Second order: the gradient of a gradient through a scan (the backward scan is itself
/// differentiated) agrees with central differences of the first gradient.
#[test]
fn second_order_through_scan() {
    let c = rnn_case(3, false, false, 9);
    let mut g = c.g.clone();
    let w = c.wrt[2];
    let d = autodiff::grad(&mut g, c.loss, &[w]).unwrap()[0];
    // a scalar of the first gradient, differentiated again with respect to the inputs
    let mut c2 = Case {
        g,
        loss: NodeId(Default::default()),
        wrt: c.wrt.clone(),
        feeds: c.feeds.clone(),
    };
    c2.loss = weighted_sum(&mut c2.g, d, &mut Rng::new(4));
    let r = fd_check(&c2, 24, &mut Rng::new(2)).unwrap();
    assert!(r.checked > 20, "{r:?}");
}

/// The JIT gives the interpreter's results for the scan's forward graph and its gradient,
/// with and without the pass pipeline (which optimizes inside the body).
#[test]
fn jit_matches_the_interpreter() {
    for (reverse, axis) in [(false, 0), (true, 0), (false, 1), (true, 1)] {
        let c = rnn_case_at(7, false, reverse, axis, 11);
        common::jit_matches("scan forward", &c.g, &c.g, 1);
        let mut g = c.g.clone();
        let grads = autodiff::grad(&mut g, c.loss, &c.wrt).unwrap();
        for (i, d) in grads.into_iter().enumerate() {
            g.add_output(&format!("d{i}"), d).unwrap();
        }
        common::jit_matches("scan gradient", &g, &g, 2);
        let mut optimized = g.clone();
        Pipeline::default().run(&mut optimized).unwrap();
        common::jit_matches("scan gradient, optimized", &g, &optimized, 3);
    }
}

/// The scan of `ir/ops/scan.ir` (two scans, one reverse, with constants) prints back to its
/// file and runs in the JIT as in the interpreter, before and after the pipeline, with its
/// SGD step.
#[test]
fn the_op_file_round_trips_and_runs() {
    let path = common::ir_dir().join("ops/scan.ir");
    let (_, g) = common::load(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(text::print(&g), body);
    common::jit_matches("scan.ir", &g, &g, 5);
    common::sgd_step_matches("scan.ir step", g, 6);
}

/// The compiled loop does not depend on the trip count: the same instructions and code size
/// at T = 7 and T = 448, for the final state and for its gradient with respect to the
/// weights and the initial state (values whose size does not depend on T either).
#[test]
fn code_does_not_grow_with_the_trip_count() {
    let report = |t: usize, grad: bool| {
        let (b, f, h) = (2, 3, 4);
        let mut g = Graph::new("rnn");
        let xs = g.input("xs", TensorType::f32([t, b, f])).unwrap();
        let h0 = g.input("h0", TensorType::f32([b, h])).unwrap();
        let w = g.input("w", TensorType::f32([f, h])).unwrap();
        let u = g.input("u", TensorType::f32([h, h])).unwrap();
        let bias = g.input("b", TensorType::f32([h])).unwrap();
        let (body, params) = rnn_body(b, f, h);
        let r = g
            .scan(&body, &params, &[h0, xs, w, u, bias], scan_loop(false, 0))
            .unwrap();
        let loss = weighted_sum(&mut g, r[0], &mut Rng::new(1));
        g.add_output("loss", loss).unwrap();
        if grad {
            let gs = autodiff::grad(&mut g, loss, &[h0, w, u, bias]).unwrap();
            for (i, d) in gs.into_iter().enumerate() {
                g.add_output(&format!("d{i}"), d).unwrap();
            }
        }
        Pipeline::default().run(&mut g).unwrap();
        let exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
        (exe.report().clif_insts, exe.report().code_bytes)
    };
    for grad in [false, true] {
        let (short, long) = (report(7, grad), report(448, grad));
        // the same instructions; the machine code differs only in the width of immediates
        assert_eq!(short.0, long.0, "grad={grad}: CLIF instructions");
        assert!(
            short.1.abs_diff(long.1) <= 64,
            "grad={grad}: {short:?} vs {long:?}"
        );
    }
}

/// Malformed scans are refused with the reason: a new carry of the wrong type, a body that
/// reads a value after the one it defines, sequences of different lengths, a missing yield.
#[test]
fn malformed_scans_are_refused() {
    let header = "graph s {\ninputs:\n  %xs: f32[4,2] = input\n  %ys: f32[3,2] = input\n  %c: f32[2] = input\nbody:\n";
    let cases = [
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[] = reduce_sum %1, axes=[0], keepdims=false\n    yield %2\n  }\n",
            "new carry 0",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, %ys, axis=0, carries=1, reverse=false, sequences=2 {\n    %3: f32[2] = add %0, %1\n    yield %3\n  }\n",
            "expected an axis 0 of 4 steps",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[2] = add %0, %3\n    yield %2\n  }\n",
            "is not a value of the body",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, sequences=1 {\n    %2: f32[2] = add %0, %1\n    yield %2\n  }\n",
            "reverse",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[2] = add %0, %1\n  }\n",
            "yield",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[2] = const 1.0\n    yield %2\n  }\n",
            "constants and weights are operands",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[2] = add %0, %1\n    yield %2, %2\n  }\n  %q: f32[4,3] = scan_result %r, index=1\n",
            "result 1 of the scan is f32[4,2]",
        ),
        (
            "  %r: f32[2] = scan %c, %xs, axis=0, carries=1, reverse=false, sequences=1 {\n    %2: f32[2] = add %0, %1\n    yield %2\n  }\n  %q: f32[4,2] = scan_result %r, index=1\n",
            "at least 2 results",
        ),
    ];
    for (stmt, want) in cases {
        let src = format!("{header}{stmt}outputs:\n  r = %r\n}}\n");
        let err = text::parse(&src, "s.ir")
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{src}"));
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "expected {want:?} in:\n{msg}\nfor:\n{src}"
        );
    }
}

/// The builder refuses a body whose parameters do not match the operands, naming both.
#[test]
fn builder_checks_the_body_against_the_operands() {
    let (body, params) = rnn_body(2, 3, 4);
    let mut g = Graph::new("bad");
    let xs = g.input("xs", TensorType::f32([5, 2, 7])).unwrap();
    let h0 = g.input("h0", TensorType::f32([2, 4])).unwrap();
    let w = g.input("w", TensorType::f32([3, 4])).unwrap();
    let u = g.input("u", TensorType::f32([4, 4])).unwrap();
    let b = g.input("b", TensorType::f32([4])).unwrap();
    let e = g
        .scan(&body, &params, &[h0, xs, w, u, b], scan_loop(false, 0))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("body parameter 1 is f32[2,3], but operand 1 gives it f32[2,7]"),
        "{e}"
    );
    let e = g
        .scan(&body, &params, &[h0, xs], scan_loop(false, 0))
        .unwrap_err();
    assert!(e.to_string().contains("5 parameters but 2 operands"), "{e}");
}
