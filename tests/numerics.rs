//! NaN/Inf localisation as a library option: `StepOptions::check_numerics` for compiled
//! steps (split and whole) and `CompileOptions::check_numerics` for `Model::fit` (JIT and
//! interpreter backends). A diverging step is stopped with the step number and, with the
//! check, the first non-finite node (label, op, source location, the forward node of a
//! gradient node, operand ranges); on healthy models the check changes no bit.

use gradlift::data::{load_default, Dataset};
use gradlift::interp::{eval_until, Array};
use gradlift::nn::{
    Activation, Backend, CompileOptions, Dense, FitOptions, Loss, Model, Sequential, Targets,
    TrainError,
};
use gradlift::numerics::{first_non_finite, Located, NonFiniteError, StepPart, ValueStats};
use gradlift::optim::Optimizer;
use gradlift::step::{compile_training_step, CompiledStep, DataFeed, StepOptions};
use gradlift::text::parse;
use gradlift::{Graph, TensorType};
use std::collections::HashMap;

fn mlp_source() -> String {
    std::fs::read_to_string(format!("{}/ir/mlp.ir", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The 1-based line of `src` that starts (after indentation) with `start`.
fn line_of(src: &str, start: &str) -> u32 {
    src.lines()
        .position(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?}")) as u32
        + 1
}

fn step(g: &Graph, opt: &Optimizer, lr: f32, shards: Option<usize>, check: bool) -> CompiledStep {
    let opts = StepOptions {
        threads: 2,
        shards,
        check_numerics: check,
        ..StepOptions::default()
    };
    let (mut s, _) = compile_training_step(g, "loss", opt, None, 64, &opts).unwrap();
    assert_eq!(s.checks_numerics(), check);
    s.input_f32_mut("lr").unwrap()[0] = lr;
    s
}

/// Runs up to `steps` checked steps on consecutive batches of `data`; the losses until the
/// first error, and the error.
fn train(s: &mut CompiledStep, data: &Dataset, steps: usize) -> (Vec<f32>, Option<NonFiniteError>) {
    let feed = DataFeed {
        x: "x".into(),
        labels: "labels".into(),
    };
    let order: Vec<usize> = (0..data.n).collect();
    let mut losses = Vec::new();
    for (i, idx) in order.chunks_exact(64).take(steps).enumerate() {
        feed.fill(s, data, idx).unwrap();
        if let Err(e) = s.run_checked(i as u64 + 1) {
            return (losses, Some(e));
        }
        losses.push(s.output("loss").unwrap().as_f32().unwrap()[0]);
    }
    (losses, None)
}

#[test]
fn an_overflowing_matmul_is_named_with_its_ir_line() {
    let (data, _) = load_default().unwrap();
    let src = mlp_source();
    let g = parse(&src, "ir/mlp.ir").unwrap();
    for shards in [Some(1), Some(2)] {
        // without the check: stopped at the first NaN loss, nothing located
        let mut plain = step(&g, &Optimizer::sgd(), 1e30, shards, false);
        let (losses, e) = train(&mut plain, &data, 10);
        let e = e.expect("a learning rate of 1e30 diverges");
        assert_eq!((e.step, losses.len()), (2, 1), "{e}");
        assert_eq!(e.located, Located::NotChecked);
        assert!(!e.checked());
        assert_eq!(e.results[0].0, "output loss");
        assert!(!e.results[0].1.is_finite());

        let mut checked = step(&g, &Optimizer::sgd(), 1e30, shards, true);
        let (checked_losses, e) = train(&mut checked, &data, 10);
        assert_eq!(
            checked_losses
                .iter()
                .map(|l| l.to_bits())
                .collect::<Vec<_>>(),
            losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
        );
        let e = e.unwrap();
        assert_eq!(e.step, 2);
        let n = e.node().unwrap_or_else(|| panic!("not located: {e}"));
        assert_eq!((n.label.as_str(), n.op.as_str()), ("%9", "matmul"));
        assert_eq!(n.part, StepPart::Forward);
        let loc = n.loc.as_ref().unwrap();
        assert_eq!(
            (loc.file.as_str(), loc.line, loc.column),
            ("ir/mlp.ir", line_of(&src, "%9:"), 3)
        );
        assert_eq!(n.ty, TensorType::f32([64, 10]));
        assert!(n.value.non_finite() > 0 && n.value.count == 640);
        assert_eq!(n.operands.len(), 2);
        assert_eq!(n.operands[0].label, "%hidden");
        assert_eq!(n.operands[1].label, "%dense_1.kernel");
        assert!(n.operands.iter().all(|o| o.value.is_finite()));
        assert_eq!(n.operands[0].value.min, Some(0.0));
        // the big weights that overflow it
        assert!(n.operands[1].value.max.unwrap() > 1e20);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "ir/mlp.ir:{}:3: first non-finite value of step 2: node %9 (matmul)",
                line_of(&src, "%9:")
            )),
            "{msg}"
        );
    }
}

/// [`mlp.ir`] with a scale `sqrt(temperature)` on the logits, the temperature a param at 0:
/// the derivative of `sqrt` at 0 is infinite.
fn temperature_graph() -> (Graph, String) {
    let src = mlp_source()
        .replace(
            "  %dense_1.bias: f32[10] = param zeros\n",
            "  %dense_1.bias: f32[10] = param zeros\n  %temperature: f32[] = param zeros\n",
        )
        .replace(
            "  %logits: f32[64,10] = add %9, %dense_1.bias\n",
            "  %raw: f32[64,10] = add %9, %dense_1.bias\n  %scale: f32[] = sqrt %temperature\n  %logits: f32[64,10] = mul %raw, %scale\n",
        );
    let g = parse(&src, "temperature.ir").unwrap();
    (g, src)
}

#[test]
fn a_gradient_node_is_named_with_its_forward_node() {
    let (data, _) = load_default().unwrap();
    let (g, src) = temperature_graph();
    // split (a mean loss) and whole (a sum over the batch)
    let sum = src.replace(
        "%loss: f32[] = reduce_mean %11",
        "%loss: f32[] = reduce_sum %11",
    );
    assert_ne!(sum, src);
    for (g, src) in [
        (g, src.clone()),
        (parse(&sum, "temperature.ir").unwrap(), sum),
    ] {
        gradient_node_is_named(&g, &src, &data);
    }
}

fn gradient_node_is_named(g: &Graph, src: &str, data: &Dataset) {
    // the loss is finite at step 1 (the scale is 0), so only the scan of the update sees it
    let mut plain = step(g, &Optimizer::adam(), 1e-3, None, false);
    assert_eq!(train(&mut plain, data, 5).1.unwrap().step, 2);
    let mut checked = step(g, &Optimizer::adam(), 1e-3, None, true);
    assert_eq!(checked.is_split(), src.contains("reduce_mean %11"));
    let (losses, e) = train(&mut checked, data, 5);
    let e = e.unwrap();
    assert!(losses.is_empty());
    assert_eq!(e.step, 1, "{e}");
    assert!(
        e.results
            .iter()
            .any(|(what, s)| what == "param temperature" && !s.is_finite()),
        "{e}"
    );
    assert!(
        e.results.iter().all(|(what, _)| what != "output loss"),
        "{e}"
    );
    let n = e.node().unwrap_or_else(|| panic!("not located: {e}"));
    assert_eq!(n.op, "div");
    let line = line_of(src, "%scale:");
    match &n.part {
        StepPart::Gradient { of, op, loc } => {
            assert_eq!((of.as_str(), op.as_str()), ("%scale", "sqrt"));
            assert_eq!(loc.as_ref().map(|l| l.line), Some(line));
        }
        other => panic!("{other:?}\n{e}"),
    }
    assert_eq!(n.loc.as_ref().map(|l| l.line), Some(line));
    // 0.5 * dy / sqrt(0)
    assert_eq!(n.operands[1].label, "%scale");
    assert_eq!(n.operands[1].value.min, Some(0.0));
    assert!(n.line.ends_with("grad(%scale)"), "{}", n.line);
}

#[test]
fn checked_steps_compute_the_same_bits() {
    let (data, _) = load_default().unwrap();
    let src = mlp_source();
    // split along the batch (mean loss), and whole (a sum over the batch cannot be split)
    let sum = src.replace(
        "%loss: f32[] = reduce_mean %11",
        "%loss: f32[] = reduce_sum %11",
    );
    for (text, shards) in [(&src, None), (&src, Some(1)), (&sum, None)] {
        let g = parse(text, "mlp.ir").unwrap();
        let mut a = step(&g, &Optimizer::adam(), 1e-3, shards, false);
        let mut b = step(&g, &Optimizer::adam(), 1e-3, shards, true);
        let (la, ea) = train(&mut a, &data, 30);
        let (lb, eb) = train(&mut b, &data, 30);
        assert!(ea.is_none() && eb.is_none());
        assert_eq!(la.len(), 30);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&la), bits(&lb));
        for ((na, ta), (nb, tb)) in a.params().iter().zip(b.params()) {
            assert_eq!(na, &nb);
            assert_eq!(ta, &tb, "param {na}");
        }
        for name in ["dense.kernel.m", "dense.kernel.v", "optimizer.step"] {
            assert_eq!(a.state(name), b.state(name), "state {name}");
        }
    }
}

#[test]
fn eval_until_stops_at_the_first_non_finite_node() {
    let src = "\
graph g {
inputs:
  %x: f32[3] = input
body:
  %l: f32[3] = log %x
  %e: f32[3] = exp %l
outputs:
  y = %e
}
";
    let g = parse(src, "g.ir").unwrap();
    let x = g.find("x").unwrap();
    let feeds = HashMap::from([(x, Array::new([3], vec![1.0f32, 0.0, -1.0]).unwrap())]);
    let (values, hit) =
        eval_until(&g, &feeds, |_, a| a.data.iter().any(|v| !v.is_finite())).unwrap();
    assert_eq!(hit, g.find("l"));
    assert!(
        values.get(g.find("e").unwrap()).is_none(),
        "stopped before %e"
    );
    let n = first_non_finite(&g, &g, &feeds).unwrap().unwrap();
    assert_eq!((n.label.as_str(), n.op.as_str()), ("%l", "log"));
    assert_eq!(
        n.value,
        ValueStats {
            count: 3,
            nan: 1,
            pos_inf: 0,
            neg_inf: 1,
            min: Some(0.0),
            max: Some(0.0),
        }
    );
    assert_eq!(n.operands[0].value.min, Some(-1.0));
    assert_eq!(n.loc.as_ref().map(|l| (l.line, l.column)), Some((5, 3)));
    let ok = HashMap::from([(x, Array::new([3], vec![1.0f32, 2.0, 3.0]).unwrap())]);
    assert_eq!(first_non_finite(&g, &g, &ok).unwrap(), None);
}

/// `y = 3x + 2` on 100 points in [0, 1).
fn regression_data() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
    let y = x.iter().map(|&x| 3.0 * x + 2.0).collect();
    (x, y)
}

/// A one-layer regression model with `opts`; the line of its layer call.
fn regression(lr: f64, check: bool, backend: Backend) -> (Model, u32) {
    let seq = Sequential::new([1]);
    let (seq, line) = (seq.layer(Dense::new(1)), line!());
    let opts = CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[])
        .learning_rate(lr)
        .check_numerics(check)
        .backend(backend);
    (seq.compile(opts).unwrap(), line)
}

fn quiet(epochs: usize) -> FitOptions {
    FitOptions {
        epochs,
        batch_size: 32,
        verbose: false,
        ..FitOptions::default()
    }
}

#[test]
fn model_fit_stops_at_the_first_non_finite_loss() {
    let (x, y) = regression_data();
    for backend in [Backend::Jit, Backend::Interpreter] {
        let (mut m, _) = regression(1e30, false, backend);
        let e = m.fit(&x, Targets::Values(&y), &quiet(3)).unwrap_err();
        let TrainError::NonFinite(nf) = &e else {
            panic!("{e}")
        };
        assert!(!nf.checked());
        assert_eq!(m.steps_trained(), nf.step);
        assert!(nf.step <= 4, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("output loss is"), "{msg}");
        assert!(msg.contains("CompileOptions::check_numerics"), "{msg}");

        let (mut m, line) = regression(1e30, true, backend);
        let e = m.fit(&x, Targets::Values(&y), &quiet(3)).unwrap_err();
        let TrainError::NonFinite(checked) = &e else {
            panic!("{e}")
        };
        assert_eq!(checked.step, nf.step, "{backend:?}: {e}");
        let n = checked
            .node()
            .unwrap_or_else(|| panic!("{backend:?}: not located: {e}"));
        // the node comes from the model's layers: its location is this file's layer call
        let loc = n.loc.as_ref().unwrap();
        assert!(loc.file.ends_with("numerics.rs"), "{loc}");
        assert_eq!(loc.line, line, "{e}");
        assert!(!n.value.is_finite());
        assert!(!e.to_string().contains("CompileOptions::check_numerics"));
    }
}

#[test]
fn model_fit_with_check_numerics_trains_the_same_bits() {
    let (data, _) = load_default().unwrap();
    let n = 640;
    let x: Vec<f32> = {
        let mut v = vec![0.0; n * 784];
        let idx: Vec<usize> = (0..n).collect();
        data.fill_images(&idx, &mut v);
        v
    };
    let labels: Vec<i32> = data.labels[..n].to_vec();
    let fit = |check: bool| {
        let mut m = Sequential::new([784])
            .layer(Dense::new(32).activation(Activation::Relu))
            .layer(Dense::new(10))
            .compile(
                CompileOptions::new(
                    Optimizer::adam(),
                    Loss::SparseCategoricalCrossentropy { from_logits: true },
                    &[],
                )
                .check_numerics(check),
            )
            .unwrap();
        let h = m.fit(&x, Targets::Classes(&labels), &quiet(2)).unwrap();
        (h, m.weights().clone())
    };
    let (ha, wa) = fit(false);
    let (hb, wb) = fit(true);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(ha.get("loss")), bits(hb.get("loss")));
    assert_eq!(wa, wb);
}

#[test]
fn all_finite_sees_every_nan_and_infinity() {
    use gradlift::numerics::all_finite;
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffff_ffff),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let finite = [
        0.0,
        -0.0,
        1.0,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
    ];
    for len in [1, 7, 1024, 1025, 5000] {
        let mut v: Vec<f32> = (0..len).map(|i| finite[i % finite.len()]).collect();
        assert!(all_finite(&v));
        for at in [0, len / 2, len - 1] {
            for s in specials {
                let keep = v[at];
                v[at] = s;
                assert!(!all_finite(&v), "{s} at {at} of {len}");
                v[at] = keep;
            }
        }
    }
    assert!(all_finite(&[]));
}
