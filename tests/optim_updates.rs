//! Each optimizer's update, run through the reference interpreter on a tiny problem, matches
//! steps computed by hand (and, for Adam, the first three steps of Keras' formulas in f64 to
//! 1e-6). The gradient is an input here, so the optimizer is tested on its own, independently
//! of autodiff. Also: penalties, clipping, and errors for bad arguments.

use gradlift::interp::{eval, Array};
use gradlift::optim::{
    add_penalties, lr_input, Clip, Optimizer, Regularizer, Schedule, STEP_COUNTER,
};
use gradlift::{Graph, Init, NodeId, Shape, TensorType};
use std::collections::HashMap;

const W0: [f32; 3] = [1.0, 2.0, 3.0];
const G: [f32; 3] = [0.5, -1.0, 2.0];

/// A graph with param `w: f32[3]`, its gradient as input `g`, and the optimizer's updates.
struct Problem {
    graph: Graph,
    w: NodeId,
    g: NodeId,
    lr: NodeId,
}

fn problem(opt: &Optimizer) -> Problem {
    let mut graph = Graph::new("opt");
    let w = graph.param("w", [3], Init::Zeros).unwrap();
    let g = graph.input("g", TensorType::f32([3])).unwrap();
    let lr = lr_input(&mut graph).unwrap();
    opt.apply(&mut graph, lr, &[(w, g)]).unwrap();
    Problem { graph, w, g, lr }
}

fn arr(v: &[f32]) -> Array<f32> {
    Array {
        shape: Shape(vec![v.len()]),
        data: v.to_vec(),
    }
}

fn scalar(v: f32) -> Array<f32> {
    Array {
        shape: Shape::scalar(),
        data: vec![v],
    }
}

/// Runs `steps` steps with gradients `grads[i]`, feeding the updated param and state back,
/// and returns the param after each step.
fn run(p: &Problem, lr: f32, grads: &[[f32; 3]]) -> Vec<Vec<f32>> {
    let mut carried: HashMap<NodeId, Array<f32>> = HashMap::new();
    carried.insert(p.w, arr(&W0));
    let mut out = Vec::new();
    for g in grads {
        let mut feeds = carried.clone();
        feeds.insert(p.g, arr(g));
        feeds.insert(p.lr, scalar(lr));
        let values = eval::<f32>(&p.graph, &feeds).unwrap();
        for u in p.graph.updates() {
            carried.insert(u.target, values.get(u.value).unwrap().clone());
        }
        out.push(carried[&p.w].data.clone());
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a as f64 - b).abs() <= tol,
            "element {i}: got {a}, want {b} (tolerance {tol})\n got {got:?}\nwant {want:?}"
        );
    }
}

#[test]
fn sgd_step_by_hand() {
    // w - 0.1 * g
    let steps = run(&problem(&Optimizer::sgd()), 0.1, &[G, G]);
    assert_close(&steps[0], &[0.95, 2.1, 2.8], 1e-6);
    assert_close(&steps[1], &[0.9, 2.2, 2.6], 1e-6);
}

#[test]
fn momentum_steps_by_hand() {
    // v1 = -0.1 g = [-0.05, 0.1, -0.2]; w1 = w0 + v1
    // v2 = 0.9 v1 - 0.1 g = [-0.095, 0.19, -0.38]; w2 = w1 + v2
    let steps = run(&problem(&Optimizer::momentum(0.9)), 0.1, &[G, G]);
    assert_close(&steps[0], &[0.95, 2.1, 2.8], 1e-6);
    assert_close(&steps[1], &[0.855, 2.29, 2.42], 1e-6);
}

#[test]
fn nesterov_steps_by_hand() {
    // v1 = [-0.05, 0.1, -0.2]; w1 = w0 + 0.9 v1 - 0.1 g = w0 + [-0.095, 0.19, -0.38]
    // v2 = [-0.095, 0.19, -0.38]; w2 = w1 + 0.9 v2 - 0.1 g = w1 + [-0.1355, 0.271, -0.542]
    let steps = run(&problem(&Optimizer::nesterov(0.9)), 0.1, &[G, G]);
    assert_close(&steps[0], &[0.905, 2.19, 2.62], 1e-6);
    assert_close(&steps[1], &[0.7695, 2.461, 2.078], 1e-6);
}

/// Keras 3's Adam update, written out in f64: [`adamw_reference`] without weight decay
/// (`w - w * 0 * lr` is `w` exactly).
fn adam_reference(lr: f64, grads: &[[f32; 3]]) -> Vec<Vec<f64>> {
    adamw_reference(lr, 0.0, grads)
}

#[test]
fn adam_first_three_steps_match_keras() {
    let grads = [G, [-0.2, 0.3, 1.0], [1.5, -0.7, -0.1]];
    let got = run(&problem(&Optimizer::adam()), 0.01, &grads);
    let want = adam_reference(0.01, &grads);
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w, 1e-6);
    }
    // By hand: Adam's first step moves each weight by about lr * sign(g).
    assert_close(&got[0], &[0.99, 2.01, 2.99], 1e-6);
}

#[test]
fn adam_counts_steps_in_state() {
    let p = problem(&Optimizer::adam());
    let g = &p.graph;
    let t = g.find("optimizer.step").unwrap();
    assert_eq!(g[t].ty, TensorType::f32([]));
    assert!(g.find("w.m").is_some() && g.find("w.v").is_some());
    assert_eq!(g.updates().len(), 4, "step, m, v, w");
    // Two runs of the step counter: 0 -> 1 -> 2.
    let mut feeds: HashMap<NodeId, Array<f32>> = HashMap::new();
    feeds.insert(p.g, arr(&G));
    feeds.insert(p.lr, scalar(0.1));
    let v = eval::<f32>(g, &feeds).unwrap();
    let new_t = g.updates().iter().find(|u| u.target == t).unwrap().value;
    assert_eq!(v.get(new_t).unwrap().data, vec![1.0]);
    feeds.insert(t, scalar(1.0));
    let v = eval::<f32>(g, &feeds).unwrap();
    assert_eq!(v.get(new_t).unwrap().data, vec![2.0]);
}

#[test]
fn learning_rate_is_an_input_that_changes_the_step() {
    let p = problem(&Optimizer::sgd());
    assert_eq!(p.graph[p.lr].name.as_deref(), Some("lr"));
    let a = run(&p, 0.1, &[G]);
    let b = run(&p, 0.2, &[G]);
    assert_close(&a[0], &[0.95, 2.1, 2.8], 1e-6);
    assert_close(&b[0], &[0.9, 2.2, 2.6], 1e-6);
}

#[test]
fn penalties_are_added_to_the_loss() {
    let mut g = Graph::new("reg");
    let w = g.param("w", [3], Init::Zeros).unwrap();
    let loss = g.input("loss", TensorType::f32([])).unwrap();
    let total = add_penalties(&mut g, loss, &[(w, Regularizer::l1_l2(0.1, 0.01))]).unwrap();
    let mut feeds = HashMap::new();
    feeds.insert(w, arr(&[1.0, -2.0, 3.0]));
    feeds.insert(loss, scalar(5.0));
    let v = eval::<f32>(&g, &feeds).unwrap();
    // 5 + 0.1 * (1 + 2 + 3) + 0.01 * (1 + 4 + 9) = 5.74
    assert_close(&v.get(total).unwrap().data, &[5.74], 1e-6);
    // Zero factors make no nodes.
    let n = g.len();
    assert_eq!(
        add_penalties(&mut g, loss, &[(w, Regularizer::default())]).unwrap(),
        loss
    );
    assert_eq!(g.len(), n);
}

fn clip(c: Clip, grads: &[&[f32]]) -> Vec<Vec<f32>> {
    let mut g = Graph::new("clip");
    let ids: Vec<NodeId> = grads
        .iter()
        .enumerate()
        .map(|(i, v)| {
            g.input(&format!("g{i}"), TensorType::f32([v.len()]))
                .unwrap()
        })
        .collect();
    let out = c.apply(&mut g, &ids).unwrap();
    let feeds = ids.iter().zip(grads).map(|(&i, v)| (i, arr(v))).collect();
    let v = eval::<f32>(&g, &feeds).unwrap();
    out.iter()
        .map(|&o| v.get(o).unwrap().data.clone())
        .collect()
}

#[test]
fn clipping_by_global_norm_norm_and_value() {
    // Global norm of [3, 4] and [12] is 13: scaled by 6.5 / 13 = 0.5.
    let c = clip(Clip::GlobalNorm(6.5), &[&[3.0, 4.0], &[12.0]]);
    assert_close(&c[0], &[1.5, 2.0], 1e-6);
    assert_close(&c[1], &[6.0], 1e-6);
    // Within the threshold: unchanged.
    let c = clip(Clip::GlobalNorm(20.0), &[&[3.0, 4.0], &[12.0]]);
    assert_close(&c[0], &[3.0, 4.0], 1e-6);
    // Per tensor: [3, 4] has norm 5 -> scaled to norm 1; [0.1] is left alone.
    let c = clip(Clip::Norm(1.0), &[&[3.0, 4.0], &[0.1]]);
    assert_close(&c[0], &[0.6, 0.8], 1e-6);
    assert_close(&c[1], &[0.1], 1e-6);
    let c = clip(Clip::Value(0.5), &[&[-3.0, 0.25, 4.0]]);
    assert_close(&c[0], &[-0.5, 0.25, 0.5], 0.0);
}

#[test]
fn bad_arguments_are_errors() {
    let mut g = Graph::new("bad");
    let w = g.param("w", [3], Init::Zeros).unwrap();
    let g2 = g.input("g2", TensorType::f32([2])).unwrap();
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let lr = lr_input(&mut g).unwrap();
    let e = Optimizer::sgd().apply(&mut g, lr, &[(w, g2)]).unwrap_err();
    assert!(
        e.message.contains("f32[2]") && e.message.contains("f32[3]"),
        "{e}"
    );
    assert!(e.loc.unwrap().file.ends_with("optim_updates.rs"));
    let e = Optimizer::sgd().apply(&mut g, lr, &[(x, x)]).unwrap_err();
    assert!(e.message.contains("expected a param"), "{e}");
    let e = Optimizer::sgd().apply(&mut g, x, &[(w, x)]).unwrap_err();
    assert!(e.message.contains("must be f32[]"), "{e}");
    let e = Optimizer::momentum(1.5)
        .apply(&mut g, lr, &[(w, x)])
        .unwrap_err();
    assert!(e.message.contains("momentum"), "{e}");
    let e = Clip::GlobalNorm(0.0).apply(&mut g, &[x]).unwrap_err();
    assert!(e.message.contains("positive"), "{e}");
    // The same lr input is found again; a non-input "lr" is refused.
    assert_eq!(lr_input(&mut g).unwrap(), lr);
    let mut h = Graph::new("h");
    h.param("lr", [1], Init::Zeros).unwrap();
    assert!(lr_input(&mut h).is_err());
    // A param updated twice is an error.
    Optimizer::sgd().apply(&mut g, lr, &[(w, x)]).unwrap();
    assert!(Optimizer::sgd().apply(&mut g, lr, &[(w, x)]).is_err());
}

#[test]
fn adam_graph_prints() {
    let p = problem(&Optimizer::adam());
    insta::assert_snapshot!(gradlift::text::print(&p.graph));
}

/// `training_step` adds the gradient of `loss` w.r.t. every param, the `lr` input and the
/// optimizer's updates (here SGD on `loss = sum(w * x)`, whose gradient is `x`: one step
/// gives `w - lr * x` exactly); on error the graph is unchanged and the message says why.
#[test]
fn training_step_differentiates_and_updates_every_param() {
    let mut g = Graph::new("step");
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let w = g.param("w", [3], Init::Constant { value: 1.0 }).unwrap();
    let p = g.mul(w, x).unwrap();
    let loss = g.sum(p, &[0], false).unwrap();
    g.add_output("loss", loss).unwrap();
    let forward = g.clone();
    let applied = gradlift::optim::training_step(&mut g, "loss", &Optimizer::sgd()).unwrap();
    assert_eq!(applied.updates.len(), 1);
    gradlift::verify::verify(&g).unwrap();
    let lr = g.find("lr").unwrap();
    let feeds = HashMap::from([
        (
            g.find("x").unwrap(),
            Array::new([3], vec![0.5, -1.0, 2.0]).unwrap(),
        ),
        (lr, Array::new(Shape::scalar(), vec![0.1]).unwrap()),
    ]);
    let v = eval::<f64>(&g, &feeds).unwrap();
    let new_w = &v.get(g.updates()[0].value).unwrap().data;
    assert_eq!(new_w, &vec![1.0 - 0.1 * 0.5, 1.0 + 0.1, 1.0 - 0.1 * 2.0]);

    let mut h = forward.clone();
    let err = gradlift::optim::training_step(&mut h, "cost", &Optimizer::adam()).unwrap_err();
    assert!(
        err.to_string().contains("no output called \"cost\""),
        "{err}"
    );
    assert_eq!(gradlift::text::print(&h), gradlift::text::print(&forward));
}

// ---- RMSprop, Adagrad, AdamW (Keras 3's formulas, written out in f64) ----------------------

const GRADS: [[f32; 3]; 3] = [G, [-0.2, 0.3, 1.0], [1.5, -0.7, -0.1]];

/// Keras 3's `RMSprop.update_step` in f64: `v = rho v + (1-rho) g^2`; with `centered`,
/// `a = rho a + (1-rho) g` and the denominator `sqrt(v - a^2 + eps)`, else `sqrt(v + eps)`;
/// `inc = lr g / den`; with momentum `mom = momentum mom + inc`, `w -= mom`, else `w -= inc`.
fn rmsprop_reference(
    lr: f64,
    rho: f64,
    momentum: f64,
    centered: bool,
    grads: &[[f32; 3]],
) -> Vec<Vec<f64>> {
    let eps = 1e-7;
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let (mut v, mut a, mut mom) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
    let mut out = Vec::new();
    for g in grads {
        for i in 0..3 {
            let gi = g[i] as f64;
            v[i] = rho * v[i] + (1.0 - rho) * gi * gi;
            let den = if centered {
                a[i] = rho * a[i] + (1.0 - rho) * gi;
                v[i] - a[i] * a[i] + eps
            } else {
                v[i] + eps
            };
            let inc = lr * gi / den.sqrt();
            if momentum > 0.0 {
                mom[i] = momentum * mom[i] + inc;
                w[i] -= mom[i];
            } else {
                w[i] -= inc;
            }
        }
        out.push(w.clone());
    }
    out
}

#[test]
fn rmsprop_steps_match_keras() {
    // By hand, first step with the defaults: v = 0.1 g^2, so w -= lr g / sqrt(0.1 g^2 + 1e-7),
    // about lr * sqrt(10) * sign(g).
    let got = run(&problem(&Optimizer::rmsprop()), 0.01, &GRADS);
    let s = 0.01 * 10f64.sqrt();
    assert_close(&got[0], &[1.0 - s, 2.0 + s, 3.0 - s], 1e-5);
    for (opt, momentum, centered) in [
        (Optimizer::rmsprop(), 0.0, false),
        (Optimizer::rmsprop().with_momentum(0.5), 0.5, false),
        (Optimizer::rmsprop().with_centered(true), 0.0, true),
        (
            Optimizer::rmsprop()
                .with_rho(0.8)
                .with_momentum(0.9)
                .with_centered(true),
            0.9,
            true,
        ),
    ] {
        let rho = match opt {
            Optimizer::RmsProp { rho, .. } => rho,
            _ => unreachable!(),
        };
        let got = run(&problem(&opt), 0.01, &GRADS);
        let want = rmsprop_reference(0.01, rho, momentum, centered, &GRADS);
        for (g, w) in got.iter().zip(&want) {
            assert_close(g, w, 2e-6);
        }
    }
}

#[test]
fn rmsprop_state_is_named_as_in_keras() {
    let p = problem(&Optimizer::rmsprop());
    assert!(p.graph.find("w.velocity").is_some());
    assert_eq!(p.graph.updates().len(), 2, "velocity, w");
    assert!(
        p.graph.find(STEP_COUNTER).is_none(),
        "RMSprop counts no steps"
    );
    let opt = Optimizer::rmsprop().with_momentum(0.9).with_centered(true);
    let p = problem(&opt);
    for s in ["w.velocity", "w.momentum", "w.average_gradient"] {
        assert!(p.graph.find(s).is_some(), "{s}");
    }
    assert_eq!(p.graph.updates().len(), 4);
}

/// Keras 3's `Adagrad.update_step` in f64.
fn adagrad_reference(lr: f64, init: f64, grads: &[[f32; 3]]) -> Vec<Vec<f64>> {
    let eps = 1e-7;
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let mut acc = [init; 3];
    let mut out = Vec::new();
    for g in grads {
        for i in 0..3 {
            let gi = g[i] as f64;
            acc[i] += gi * gi;
            w[i] -= lr * gi / (acc[i] + eps).sqrt();
        }
        out.push(w.clone());
    }
    out
}

#[test]
fn adagrad_steps_match_keras() {
    // By hand, first step: acc = 0.1 + g^2 = [0.35, 1.1, 4.1]
    let got = run(&problem(&Optimizer::adagrad()), 0.1, &GRADS);
    let by_hand: Vec<f64> = [0.35f64, 1.1, 4.1]
        .iter()
        .zip(W0.iter().zip(G))
        .map(|(a, (&w, g))| w as f64 - 0.1 * g as f64 / (a + 1e-7).sqrt())
        .collect();
    assert_close(&got[0], &by_hand, 1e-6);
    for init in [0.1, 0.0, 2.5] {
        let opt = Optimizer::adagrad().with_initial_accumulator_value(init);
        let got = run(&problem(&opt), 0.1, &GRADS);
        let want = adagrad_reference(0.1, init, &GRADS);
        for (g, w) in got.iter().zip(&want) {
            assert_close(g, w, 2e-6);
        }
    }
    let p = problem(&Optimizer::adagrad());
    let acc = p.graph.find("w.accumulator").unwrap();
    assert_eq!(
        p.graph[acc].op,
        gradlift::Op::State {
            init: Init::Constant { value: 0.1 }
        }
    );
}

/// Keras 3's AdamW in f64: `w -= w * wd * lr`, then Adam's update.
fn adamw_reference(lr: f64, wd: f64, grads: &[[f32; 3]]) -> Vec<Vec<f64>> {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-7f64);
    let mut w: Vec<f64> = W0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let mut out = Vec::new();
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as f64;
        let alpha = lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
        for i in 0..3 {
            w[i] -= w[i] * wd * lr;
            let gi = g[i] as f64;
            m[i] += (gi - m[i]) * (1.0 - b1);
            v[i] += (gi * gi - v[i]) * (1.0 - b2);
            w[i] -= alpha * m[i] / (v[i].sqrt() + eps);
        }
        out.push(w.clone());
    }
    out
}

/// A param whose name contains an excluded string takes Adam's steps; the others still decay.
#[test]
fn adamw_excludes_params_from_weight_decay() {
    let opt = Optimizer::adamw().with_weight_decay(0.5);
    let excluded = run(
        &problem(&opt.clone().exclude_from_weight_decay(&["w"])),
        0.01,
        &GRADS,
    );
    for (g, w) in excluded.iter().zip(&adam_reference(0.01, &GRADS)) {
        assert_close(g, w, 1e-6);
    }
    let kept = run(
        &problem(&opt.exclude_from_weight_decay(&["bias"])),
        0.01,
        &GRADS,
    );
    for (g, w) in kept.iter().zip(&adamw_reference(0.01, 0.5, &GRADS)) {
        assert_close(g, w, 1e-6);
    }
    assert_ne!(excluded, kept, "the decay of 0.5 shows");
}

#[test]
fn adamw_steps_match_keras() {
    for wd in [0.004, 0.5] {
        let opt = Optimizer::adamw().with_weight_decay(wd);
        let got = run(&problem(&opt), 0.01, &GRADS);
        let want = adamw_reference(0.01, wd, &GRADS);
        for (g, w) in got.iter().zip(&want) {
            assert_close(g, w, 1e-6);
        }
    }
    // By hand, first step with weight decay 0.5 at lr 0.01: w * (1 - 0.005), then Adam's
    // step of about lr * sign(g).
    let got = run(
        &problem(&Optimizer::adamw().with_weight_decay(0.5)),
        0.01,
        &[G],
    );
    assert_close(&got[0], &[0.985, 2.0, 2.975], 1e-6);
    // Without decay, AdamW is Adam.
    let a = run(
        &problem(&Optimizer::adamw().with_weight_decay(0.0)),
        0.01,
        &GRADS,
    );
    let b = run(&problem(&Optimizer::adam()), 0.01, &GRADS);
    assert_eq!(a, b);
}

#[test]
fn optimizer_names_and_defaults_are_keras() {
    for (name, lr) in [
        ("sgd", 0.01),
        ("adam", 0.001),
        ("adamw", 0.001),
        ("rmsprop", 0.001),
        ("adagrad", 0.001),
    ] {
        let o = Optimizer::from_name(name).unwrap();
        assert_eq!(o.name(), name);
        assert_eq!(o.default_learning_rate(), lr, "{name}");
    }
    assert!(Optimizer::from_name("adadelta").is_none());
    assert_eq!(
        Optimizer::adamw(),
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.004,
            exclude_from_weight_decay: vec![],
        }
    );
    assert_eq!(
        Optimizer::rmsprop(),
        Optimizer::RmsProp {
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false
        }
    );
    assert_eq!(
        Optimizer::adagrad(),
        Optimizer::Adagrad {
            initial_accumulator_value: 0.1,
            epsilon: 1e-7
        }
    );
}

#[test]
fn bad_hyper_parameters_of_the_new_optimizers_are_errors() {
    for (opt, what) in [
        (Optimizer::rmsprop().with_rho(1.0), "rho"),
        (Optimizer::rmsprop().with_momentum(-0.1), "momentum"),
        (Optimizer::rmsprop().with_epsilon(f64::NAN), "epsilon"),
        (
            Optimizer::adagrad().with_initial_accumulator_value(-1.0),
            "initial_accumulator_value",
        ),
        (Optimizer::adamw().with_weight_decay(-0.1), "weight_decay"),
        (Optimizer::adamw().with_betas(0.9, 1.0), "beta2"),
    ] {
        let mut g = Graph::new("bad");
        let w = g.param("w", [3], Init::Zeros).unwrap();
        let x = g.input("x", TensorType::f32([3])).unwrap();
        let lr = lr_input(&mut g).unwrap();
        let e = opt.apply(&mut g, lr, &[(w, x)]).unwrap_err();
        assert!(e.message.contains(what), "{what}: {e}");
        assert!(e.message.contains(opt.name()), "{what}: {e}");
    }
}

// ---- learning-rate schedules -------------------------------------------------------------

/// The learning rate a scheduled SGD step computes at each of `steps` steps (read from the
/// graph's learning-rate node, an output here), the step counter carried from step to step;
/// also checks that the param moves by exactly `lr * g` (g = 1).
fn schedule_rates(schedule: Schedule, steps: usize) -> Vec<f32> {
    let opt = Optimizer::sgd().with_schedule(schedule);
    let mut graph = Graph::new("sched");
    let w = graph.param("w", [1], Init::Zeros).unwrap();
    let g = graph.input("g", TensorType::f32([1])).unwrap();
    let lr = opt.learning_rate(&mut graph).unwrap();
    assert_ne!(graph[lr].op, gradlift::Op::Input);
    assert!(graph.find("lr").is_none(), "no learning-rate input");
    opt.apply(&mut graph, lr, &[(w, g)]).unwrap();
    graph.add_output("rate", lr).unwrap();
    let t = graph.find(STEP_COUNTER).unwrap();
    let mut carried: HashMap<NodeId, Array<f32>> = HashMap::new();
    carried.insert(w, arr(&[0.0]));
    carried.insert(t, scalar(0.0));
    let mut rates = Vec::new();
    for step in 0..steps {
        let mut feeds = carried.clone();
        feeds.insert(g, arr(&[1.0]));
        let values = eval::<f32>(&graph, &feeds).unwrap();
        let rate = values.get(lr).unwrap().data[0];
        for u in graph.updates() {
            carried.insert(u.target, values.get(u.value).unwrap().clone());
        }
        assert_eq!(carried[&t].data, vec![(step + 1) as f32]);
        assert_eq!(carried[&w].data, vec![feeds[&w].data[0] - rate]);
        rates.push(rate);
    }
    rates
}

#[test]
fn exponential_decay_follows_keras() {
    let s = Schedule::exponential_decay(0.1, 3, 0.5, false);
    let got = schedule_rates(s.clone(), 8);
    for (t, &r) in got.iter().enumerate() {
        let want = 0.1 * 0.5f64.powf(t as f64 / 3.0);
        assert!(
            (r as f64 - want).abs() <= 1e-7 * want.max(1e-3),
            "step {t}: {r} vs {want}"
        );
        assert!((r as f64 - s.learning_rate_at(t as u64)).abs() <= 1e-8);
    }
    assert_eq!(got[0], 0.1);
    assert_eq!(got[3], 0.05);
    assert_eq!(got[6], 0.025);
    // staircase: 0.1 for steps 0-2, 0.05 for 3-5, 0.025 for 6-7
    let s = Schedule::exponential_decay(0.1, 3, 0.5, true);
    let got = schedule_rates(s.clone(), 8);
    assert_eq!(got, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]);
    for (t, &r) in got.iter().enumerate() {
        assert_eq!(r, s.learning_rate_at(t as u64) as f32);
    }
}

#[test]
fn piecewise_constant_decay_follows_keras() {
    // Keras: values[0] while t <= 2, values[1] while 2 < t <= 4, values[2] after
    let s = Schedule::piecewise_constant_decay(&[2, 4], &[0.5, 0.25, 0.125]);
    let got = schedule_rates(s.clone(), 7);
    assert_eq!(got, [0.5, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]);
    for (t, &r) in got.iter().enumerate() {
        assert_eq!(r, s.learning_rate_at(t as u64) as f32);
    }
    let s = Schedule::piecewise_constant_decay(&[0], &[1.0, 0.1]);
    assert_eq!(schedule_rates(s, 3), [1.0, 0.1, 0.1]);
    let s = Schedule::piecewise_constant_decay(&[], &[0.3]);
    assert_eq!(schedule_rates(s, 2), [0.3, 0.3]);
}

/// Adam with a schedule shares one step counter: the schedule reads the steps done (t), the
/// bias correction the step being done (t + 1), as in Keras.
#[test]
fn a_scheduled_adam_shares_the_step_counter() {
    let s = Schedule::piecewise_constant_decay(&[0], &[0.01, 0.001]);
    let opt = Optimizer::adam().with_schedule(s);
    assert_eq!(opt.name(), "adam");
    assert_eq!(opt.default_learning_rate(), 0.01);
    let mut graph = Graph::new("sched");
    let w = graph.param("w", [3], Init::Zeros).unwrap();
    let g = graph.input("g", TensorType::f32([3])).unwrap();
    let lr = opt.learning_rate(&mut graph).unwrap();
    opt.apply(&mut graph, lr, &[(w, g)]).unwrap();
    let counters = graph
        .states()
        .into_iter()
        .filter(|&s| graph[s].name.as_deref() == Some(STEP_COUNTER))
        .count();
    assert_eq!(counters, 1);
    assert_eq!(graph.updates().len(), 4, "step, m, v, w");
    // two steps: lr 0.01 then 0.001, against Keras' Adam in f64 with those rates
    let mut carried: HashMap<NodeId, Array<f32>> = HashMap::new();
    carried.insert(w, arr(&W0));
    let mut got = Vec::new();
    for grad in &GRADS[..2] {
        let mut feeds = carried.clone();
        feeds.insert(g, arr(grad));
        let values = eval::<f32>(&graph, &feeds).unwrap();
        for u in graph.updates() {
            carried.insert(u.target, values.get(u.value).unwrap().clone());
        }
        got.push(carried[&w].data.clone());
    }
    let first = adam_reference(0.01, &GRADS[..1]);
    assert_close(&got[0], &first[0], 1e-6);
    // the second step by hand from the first step's moments
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-7f64);
    let alpha = 0.001 * (1.0 - b2 * b2).sqrt() / (1.0 - b1 * b1);
    let want: Vec<f64> = (0..3)
        .map(|i| {
            let (g0, g1) = (GRADS[0][i] as f64, GRADS[1][i] as f64);
            let m = (g0 * (1.0 - b1)) * b1 + g1 * (1.0 - b1);
            let v = (g0 * g0 * (1.0 - b2)) * b2 + g1 * g1 * (1.0 - b2);
            first[0][i] - alpha * m / (v.sqrt() + eps)
        })
        .collect();
    assert_close(&got[1], &want, 1e-6);
}

#[test]
fn bad_schedules_are_errors() {
    for (s, what) in [
        (
            Schedule::exponential_decay(0.1, 0, 0.5, false),
            "decay_steps",
        ),
        (Schedule::exponential_decay(-0.1, 10, 0.5, false), "initial"),
        (
            Schedule::exponential_decay(0.1, 10, 0.0, false),
            "decay_rate",
        ),
        (
            Schedule::piecewise_constant_decay(&[3, 3], &[0.1, 0.2, 0.3]),
            "increasing",
        ),
        (Schedule::piecewise_constant_decay(&[3], &[0.1]), "2 values"),
        (
            Schedule::piecewise_constant_decay(&[3], &[0.1, f64::NAN]),
            "positive",
        ),
    ] {
        let mut g = Graph::new("bad");
        let e = Optimizer::sgd()
            .with_schedule(s)
            .learning_rate(&mut g)
            .unwrap_err();
        assert!(e.message.contains(what), "{what}: {e}");
    }
    // A scheduled optimizer refuses a learning-rate input: it would ignore the schedule.
    let mut g = Graph::new("bad");
    let w = g.param("w", [3], Init::Zeros).unwrap();
    let x = g.input("x", TensorType::f32([3])).unwrap();
    let lr = lr_input(&mut g).unwrap();
    let opt = Optimizer::sgd().with_schedule(Schedule::exponential_decay(0.1, 10, 0.5, false));
    let e = opt.apply(&mut g, lr, &[(w, x)]).unwrap_err();
    assert!(e.message.contains("Optimizer::learning_rate"), "{e}");
}

#[test]
fn cosine_decay_with_warmup_follows_keras() {
    // Keras 3: t = min(t, decay_steps + warmup_steps); while t < warmup_steps the rate is
    // (target - initial) * t / warmup_steps + initial, then target times the cosine factor
    // at t - warmup_steps
    let (initial, target, warmup, decay, alpha) = (0.001, 0.1, 3u64, 4u64, 0.2);
    let s = Schedule::cosine_decay_with_warmup(initial, decay, alpha, target, warmup);
    let got = schedule_rates(s.clone(), 10);
    for (t, &r) in got.iter().enumerate() {
        let t = (t as u64).min(decay + warmup) as f64;
        let want = if t < warmup as f64 {
            (target - initial) * t / warmup as f64 + initial
        } else {
            let p = (t - warmup as f64) / decay as f64;
            target * ((1.0 - alpha) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) + alpha)
        };
        assert!(
            (r as f64 - want).abs() <= 3e-7 * want,
            "step {t}: {r} vs {want}"
        );
        assert!((r as f64 - s.learning_rate_at(t as u64)).abs() <= 3e-7 * want);
    }
    assert_eq!(got[0], initial as f32);
    // the warmup's end is the decay's start: the target itself
    assert!((got[3] - 0.1).abs() <= 1e-8, "{}", got[3]);
    assert_eq!(&got[7..], &[got[7]; 3], "constant after the decay");
    for (s, what) in [
        (
            Schedule::cosine_decay_with_warmup(0.1, 10, 0.0, 0.0, 5),
            "warmup_target",
        ),
        (
            Schedule::cosine_decay_with_warmup(0.1, 10, 0.0, 0.5, 0),
            "warmup_steps",
        ),
    ] {
        let e = Optimizer::sgd()
            .with_schedule(s)
            .learning_rate(&mut Graph::new("bad"))
            .unwrap_err();
        assert!(e.message.contains(what), "{what}: {e}");
    }
}

/// The command-line form of each schedule parses to the schedule it names.
#[test]
fn schedules_parse_from_their_command_line_form() {
    assert_eq!(
        Schedule::parse("exponential:decay_steps=10,decay_rate=0.5,staircase", 0.1),
        Ok(Schedule::exponential_decay(0.1, 10, 0.5, true))
    );
    assert_eq!(
        Schedule::parse("exponential: decay_rate=0.5, decay_steps=10", 0.1),
        Ok(Schedule::exponential_decay(0.1, 10, 0.5, false))
    );
    assert_eq!(
        Schedule::parse("cosine:decay_steps=100", 0.01),
        Ok(Schedule::cosine_decay(0.01, 100, 0.0))
    );
    assert_eq!(
        Schedule::parse(
            "cosine:decay_steps=100,alpha=0.1,warmup_target=0.1,warmup_steps=7",
            0.01
        ),
        Ok(Schedule::cosine_decay_with_warmup(0.01, 100, 0.1, 0.1, 7))
    );
    assert_eq!(
        Schedule::parse("piecewise:boundaries=10/20,values=0.1/0.01/0.001", 0.5),
        Ok(Schedule::piecewise_constant_decay(
            &[10, 20],
            &[0.1, 0.01, 0.001]
        ))
    );
    for (spec, want) in [
        ("cosine", "needs `decay_steps=...`"),
        (
            "exponential:decay_steps=1,decay_rate=x",
            "decay_rate must be a number, found `x`",
        ),
        (
            "exponential:decay_steps=1,decay_rate=2,staircase=maybe",
            "staircase is true or false",
        ),
        (
            "piecewise:boundaries=a,values=1/2",
            "boundaries must be a whole number",
        ),
        ("step:x=1", "unknown schedule `step`"),
    ] {
        let e = Schedule::parse(spec, 0.1).unwrap_err();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn cosine_decay_follows_keras() {
    // Keras: initial * ((1 - alpha) * 0.5 * (1 + cos(pi * min(t, d) / d)) + alpha)
    let s = Schedule::cosine_decay(0.1, 4, 0.2);
    let got = schedule_rates(s.clone(), 7);
    for (t, &r) in got.iter().enumerate() {
        let p = (t.min(4) as f64) / 4.0;
        let want = 0.1 * (0.8 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) + 0.2);
        // f32 rounding of about six operations: a few ulps (6e-8 of the value each)
        assert!(
            (r as f64 - want).abs() <= 3e-7 * want,
            "step {t}: {r} vs {want}"
        );
        assert!((r as f64 - s.learning_rate_at(t as u64)).abs() <= 3e-7 * want);
    }
    assert_eq!(got[0], 0.1);
    // halfway: 0.1 * (0.8 * 0.5 + 0.2) = 0.06; from step 4 on: 0.1 * alpha = 0.02
    assert!((got[2] - 0.06).abs() <= 1e-8, "{}", got[2]);
    assert_eq!(&got[4..], &[got[4]; 3]);
    assert!((got[4] - 0.02).abs() <= 1e-8, "{}", got[4]);
    let mut g = Graph::new("bad");
    let e = Optimizer::sgd()
        .with_schedule(Schedule::cosine_decay(0.1, 10, 1.5))
        .learning_rate(&mut g)
        .unwrap_err();
    assert!(e.message.contains("alpha"), "{e}");
}
